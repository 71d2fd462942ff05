"""Faults injected for real into booted guests, and what kitl makes of them.

One `kitl run` on debian-6.1 (tests/data/faults/faults.yaml) meets, between cells that
pass: a kernel panic, a drive that never ends, a frozen guest (its qemu SIGSTOPped by this
test), qemu SIGKILLed by this test, and the OOM killer.  Then `kitl run` itself is stopped
by SIGTERM, resumed, stopped by SIGINT, resumed to the end; and `kitl exec` on debian-7.2
panics its guest.

Every kitl runs as a child process with a marker in its environment, which every process
it starts (pytest, vng, virtme-run, qemu) inherits: once a run is over, no live process
may carry its marker.  Nothing here skips; the figures each test measured are printed
("faults:" lines, visible with -s) and are the ones docs/reliability.md quotes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from harness.vm import console
from tests.vm.conftest import VM_KERNELS

DATA = Path(__file__).parents[1] / "data"
FAULTS = DATA / "faults" / "faults.yaml"
STEADY = DATA / "faults" / "steady.yaml"
MARKER = "KITL_FAULT_TEST"
CELL_TIMEOUT = 30.0  # small, so the hang and the frozen guest cost half a minute each
RUN_LIMIT = 1800.0  # no run here comes near this: reaching it is a hang of kitl itself
RESTART_LIMIT = 300.0  # a fresh boot under TCG on a busy 2-core host, and its agent


def figures(test: str, **values: Any) -> None:
    print(f"faults: {test}: " + json.dumps(values, sort_keys=True))


def marked(token: str) -> dict[int, str]:
    """pid -> command line of every live process whose environment carries the marker."""
    needle = f"{MARKER}={token}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if cmdline:  # a zombie has none: it is dead, only not reaped yet
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def qemus(token: str) -> list[int]:
    return [p for p, cmd in marked(token).items() if "qemu-system" in cmd.split(" ", 1)[0]]


def leftovers(token: str, grace: float = 15.0) -> dict[int, str]:
    """The run's processes still alive `grace` seconds after it ended (none, or orphans)."""
    deadline = time.monotonic() + grace
    while (left := marked(token)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@dataclass
class Kitl:
    """One kitl command running as a child, its output in files."""

    proc: subprocess.Popen[bytes]
    token: str
    out: Path
    err: Path
    started: float
    status: int | None = None
    ended: float = 0.0

    @classmethod
    def start(cls, args: list[str], tmp: Path, name: str) -> Kitl:
        token = uuid.uuid4().hex
        out, err = tmp / f"{name}.out", tmp / f"{name}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "harness.cli.main", *args],
                stdout=stdout,
                stderr=stderr,
                env={**os.environ, MARKER: token},
                cwd=tmp,  # no kitl-expect.yaml of the repository applies
            )
        return cls(proc, token, out, err, time.monotonic())

    def wait(self, timeout: float = RUN_LIMIT) -> int:
        try:
            self.status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"kitl did not end within {timeout:g}s: {self.text()}")
        self.ended = time.monotonic()
        return self.status

    def text(self) -> str:
        """stdout and stderr, white space folded (rich wraps long lines at 80 columns)."""
        text = self.out.read_text(errors="replace") + self.err.read_text(errors="replace")
        return " ".join(text.split())


def records(run_dir: Path) -> list[dict[str, Any]]:
    """Every line of results.jsonl, each of which must be one whole JSON object."""
    path = run_dir / "results.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_records(kitl: Kitl, run_dir: Path, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + RUN_LIMIT
    while len(found := records(run_dir)) < count:
        assert kitl.proc.poll() is None, f"kitl ended early: {kitl.text()}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.2)
    return found


class Injector(threading.Thread):
    """Watches results.jsonl (when each record appears) and does the test's own faults: a
    SIGSTOP of qemu 3 s into `frozen`, a SIGKILL of qemu 5 s into `killed` (each starts
    when the record before it appears)."""

    FAULTS: ClassVar[dict[str, tuple[str, int, float]]] = {
        "after-hang": ("frozen", signal.SIGSTOP, 3.0),
        "after-frozen": ("killed", signal.SIGKILL, 5.0),
    }

    def __init__(self, kitl: Kitl, run_dir: Path) -> None:
        super().__init__(daemon=True)
        self.kitl, self.run_dir = kitl, run_dir
        self.seen: list[tuple[str, str, float]] = []  # (case, outcome, when it appeared)
        self.injected: dict[str, float] = {}
        self.stopped: list[int] = []
        self.problems: list[str] = []

    def run(self) -> None:
        while self.kitl.proc.poll() is None:
            self.read()
            for before, (case, sig, delay) in self.FAULTS.items():
                if case not in self.injected and any(c == before for c, _, _ in self.seen):
                    time.sleep(delay)
                    self.inject(case, sig)
            time.sleep(0.2)
        self.read()

    def read(self) -> None:
        with contextlib.suppress(json.JSONDecodeError):  # a line being written
            found = records(self.run_dir)
            now = time.monotonic()
            self.seen += [(r["case"], r["outcome"], now) for r in found[len(self.seen) :]]

    def inject(self, case: str, sig: int) -> None:
        pids = qemus(self.kitl.token)
        self.injected[case] = time.monotonic()
        if len(pids) != 1:
            self.problems.append(f"{case}: expected the one qemu of the run, found {pids}")
            return
        os.kill(pids[0], sig)
        if sig == signal.SIGSTOP:
            self.stopped.append(pids[0])

    def when(self, case: str, nth: int = 0) -> float:
        return [t for c, _, t in self.seen if c == case][nth]

    def release(self) -> None:
        """Cleanup whatever happened: a stopped qemu that kitl did not kill is woken up
        and killed (only if it is still this run's)."""
        for pid in self.stopped:
            if pid in marked(self.kitl.token):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)


@dataclass
class FaultRun:
    kitl: Kitl
    run_dir: Path
    injector: Injector
    records: list[dict[str, Any]]
    cells: dict[str, dict[str, Any]]  # by case: the final record (results.json)
    left: dict[int, str] = field(default_factory=dict)

    def outcomes(self, case: str) -> list[str]:
        return [r["outcome"] for r in self.records if r["case"] == case]


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory: pytest.TempPathFactory) -> FaultRun:
    tmp = tmp_path_factory.mktemp("faults")
    run_dir = tmp / "run"
    kitl = Kitl.start(
        ["run", str(FAULTS), "--output", str(run_dir), "--cell-timeout", str(CELL_TIMEOUT)],
        tmp,
        "faults",
    )
    injector = Injector(kitl, run_dir)
    injector.start()
    try:
        kitl.wait()
        injector.join(timeout=30)
    finally:
        injector.release()
    left = leftovers(kitl.token)
    body = json.loads((run_dir / "results.json").read_text())
    run = FaultRun(
        kitl,
        run_dir,
        injector,
        records(run_dir),
        {c["case"]: c for c in body["cells"]},
        left,
    )
    figures("matrix", wall_s=round(kitl.ended - kitl.started, 1), status=kitl.status)
    return run


def test_the_matrix_survives_every_fault_and_reports_each(fault_run: FaultRun) -> None:
    run = fault_run
    assert not run.injector.problems, run.injector.problems
    assert run.kitl.status == 1, run.kitl.text()  # some cells failed, on purpose
    text = run.kitl.text()
    assert "Traceback" not in text, text
    outcomes = {case: cell["outcome"] for case, cell in run.cells.items()}
    assert outcomes == {
        "before": "PASSED",
        "panic": "KERNEL_CRASH",
        "after-panic": "PASSED",
        "hang": "TIMED_OUT",
        "after-hang": "PASSED",
        "frozen": "TIMED_OUT",
        "after-frozen": "PASSED",
        "killed": "PASSED",  # its retry, on a fresh VM
        "after-killed": "PASSED",
        "oom": "FAILED",
        "after-oom": "PASSED",
        "bpf-loop-hang": "TIMED_OUT",
        "after-bpf-loop": "PASSED",
        "ssh-dropped": "VM_LOST",  # the retry dropped its SSH too
        "after-ssh-dropped": "PASSED",
    }, text
    assert not run.left, f"processes of the run outlived it: {run.left}"
    # every record is whole JSON (records() parsed each), in run order, and the records
    # written before each fault are still there, unchanged, in results.json
    assert [r["case"] for r in run.records] == [
        "before", "panic", "after-panic", "hang", "after-hang", "frozen", "after-frozen",
        "killed", "killed", "after-killed", "oom", "after-oom", "bpf-loop-hang",
        "after-bpf-loop", "ssh-dropped", "ssh-dropped", "after-ssh-dropped",
    ]  # fmt: skip
    for record in run.records:
        if record["case"] not in ("killed", "ssh-dropped"):  # a retry's record wins
            assert record == run.cells[record["case"]]


def test_a_guest_panic_is_a_kernel_crash_with_its_splat_and_fingerprint(
    fault_run: FaultRun,
) -> None:
    cell = fault_run.cells["panic"]
    saved = console.first_crash((DATA / "console" / "panic-debian-6.1.log").read_text())
    assert saved is not None
    crash = cell["crash"]
    assert crash["title"] == "Kernel panic - not syncing: sysrq triggered crash"
    assert crash["fingerprint"] == saved.fingerprint, "the same crash fingerprints the same"
    assert "write_sysrq_trigger" in crash["functions"]
    assert "sysrq_handle_crash" in crash["text"]
    assert f"fingerprint {saved.fingerprint}" in cell["reason"]
    # the crash is in the console of the first boot; the next cell ran on a second one
    assert cell["console_path"] == "guest/debian-6.1.console.log"
    after = fault_run.cells["after-panic"]
    assert after["console_path"] == "guest/debian-6.1.boot2.console.log"
    assert "sysrq triggered crash" in (fault_run.run_dir / cell["console_path"]).read_text()
    summary = (fault_run.run_dir / "report" / "summary.md").read_text()
    assert saved.fingerprint in summary
    injector = fault_run.injector
    figures(
        "panic",
        detect_s=round(cell["timings"]["case_s"], 1),
        recover_s=round(injector.when("after-panic") - injector.when("panic"), 1),
    )


def test_a_drive_that_never_ends_times_out_and_the_next_cell_runs_on_a_fresh_vm(
    fault_run: FaultRun,
) -> None:
    cell = fault_run.cells["hang"]
    assert "no result within the cell timeout of 30s" in cell["reason"]
    assert "sleep" in cell["reason"]
    assert CELL_TIMEOUT - 1 <= cell["timings"]["case_s"] <= CELL_TIMEOUT + 10
    after = fault_run.cells["after-hang"]
    assert after["console_path"] == "guest/debian-6.1.boot3.console.log"
    injector = fault_run.injector
    took = injector.when("hang") - injector.when("after-panic")
    assert took <= CELL_TIMEOUT + 30, "bounded by the timeout (and a teardown)"
    recover = injector.when("after-hang") - injector.when("hang")
    assert recover <= RESTART_LIMIT
    figures("hang", detect_s=round(took, 1), recover_s=round(recover, 1))


def test_a_frozen_guest_times_out_and_is_killed(fault_run: FaultRun) -> None:
    cell = fault_run.cells["frozen"]
    assert "no result within the cell timeout of 30s" in cell["reason"]
    injector = fault_run.injector
    started = injector.when("after-hang")
    took = injector.when("frozen") - started
    # the host waits the budget and a grace for the answer, then kills the stopped qemu
    assert CELL_TIMEOUT <= took <= CELL_TIMEOUT + 30, took
    assert fault_run.cells["after-frozen"]["console_path"] == "guest/debian-6.1.boot4.console.log"
    recover = injector.when("after-frozen") - injector.when("frozen")
    assert recover <= RESTART_LIMIT
    figures(
        "frozen",
        detect_after_sigstop_s=round(injector.when("frozen") - injector.injected["frozen"], 1),
        cell_s=round(took, 1),
        recover_s=round(recover, 1),
    )


def test_qemu_killed_from_outside_is_vm_lost_then_retried_once_on_a_fresh_vm(
    fault_run: FaultRun,
) -> None:
    assert fault_run.outcomes("killed") == ["VM_LOST", "PASSED"]
    lost = next(r for r in fault_run.records if r["case"] == "killed")
    assert lost["reason"], "a lost VM says what broke"
    retried = fault_run.cells["killed"]
    assert "retried once on a fresh VM; the first attempt: VM_LOST" in retried["reason"]
    assert "the guest agent is gone" in lost["reason"]
    assert retried["console_path"] == "guest/debian-6.1.boot5.console.log"
    injector = fault_run.injector
    detect = injector.when("killed", 0) - injector.injected["killed"]
    assert detect < 30, "a dead qemu breaks the channel at once"
    figures(
        "killed",
        detect_s=round(detect, 1),
        retry_s=round(injector.when("killed", 1) - injector.when("killed", 0), 1),
    )


def test_a_program_spinning_in_bpf_loop_times_out(fault_run: FaultRun) -> None:
    """The hang is inside the kernel (BPF_PROG_TEST_RUN of a bpf_loop program), not in a
    command: the agent cannot answer, the watchdog gives up and the VM is replaced."""
    cell = fault_run.cells["bpf-loop-hang"]
    assert "no result within the cell timeout of 30s" in cell["reason"], cell["reason"]
    assert CELL_TIMEOUT - 1 <= cell["timings"]["case_s"] <= CELL_TIMEOUT + 10
    after = fault_run.cells["after-bpf-loop"]
    assert after["console_path"] != cell["console_path"], "the next cell runs on a fresh VM"
    injector = fault_run.injector
    recover = injector.when("after-bpf-loop") - injector.when("bpf-loop-hang")
    assert recover <= RESTART_LIMIT
    figures("bpf_loop", detect_s=round(cell["timings"]["case_s"], 1), recover_s=round(recover, 1))


def test_ssh_dropped_is_vm_lost_after_one_retry(fault_run: FaultRun) -> None:
    """The guest's sshd killed mid-cell (by the cell's own command, so the retry does it
    again): VM_LOST, retried once on a fresh VM, then reported; the run goes on."""
    assert fault_run.outcomes("ssh-dropped") == ["VM_LOST", "VM_LOST"]
    final = fault_run.cells["ssh-dropped"]
    assert "retried once on a fresh VM; the first attempt: VM_LOST" in final["reason"]
    first = next(r for r in fault_run.records if r["case"] == "ssh-dropped")
    assert first["console_path"] != final["console_path"]
    after = fault_run.cells["after-ssh-dropped"]
    assert after["console_path"] != final["console_path"]
    injector = fault_run.injector
    figures(
        "ssh_dropped",
        detect_s=round(first["timings"]["case_s"], 1),
        retry_s=round(injector.when("ssh-dropped", 1) - injector.when("ssh-dropped", 0), 1),
    )


def test_the_oom_killer_is_named_in_the_reason(fault_run: FaultRun) -> None:
    cell = fault_run.cells["oom"]
    assert cell["observed"]["syscall"]["status"] == -9  # SIGKILLed
    assert "ran out of memory" in cell["reason"]
    assert "Killed process" in cell["reason"]
    assert "(tail)" in cell["reason"]
    assert cell["observed"]["oom_kills"]
    # the guest lived on: no restart for the next cell
    assert fault_run.cells["after-oom"]["console_path"] == cell["console_path"]
    figures("oom", detect_s=round(cell["timings"]["case_s"], 1))


def test_kitl_run_stopped_by_sigterm_and_sigint_keeps_what_finished_and_resumes(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    args = ["run", str(STEADY), "--output", str(run_dir)]
    total = 6

    def stop(kitl: Kitl, after: int, sig: int) -> tuple[int, float, float]:
        """Send `sig` once `after` more cells have a result; (records then, seconds until
        the run's qemu is gone, seconds until kitl exited)."""
        before = len(records(run_dir))
        done = len(wait_records(kitl, run_dir, before + after))
        assert qemus(kitl.token), "a guest is up when the signal comes"
        sent = time.monotonic()
        kitl.proc.send_signal(sig)
        while qemus(kitl.token) and time.monotonic() - sent < 120:
            time.sleep(0.1)
        vm_gone = time.monotonic() - sent
        kitl.wait(timeout=120)
        text = kitl.text()
        assert kitl.status == 128 + sig, text
        assert "Traceback" not in text, text
        assert f"stopped by {signal.Signals(sig).name}" in text
        assert f"kitl run --resume {run_dir}" in text
        assert not (left := leftovers(kitl.token)), f"orphans: {left}"
        return done, vm_gone, kitl.ended - sent

    first = Kitl.start(args, tmp_path, "sigterm")
    done_term, qemu_term, exit_term = stop(first, 2, signal.SIGTERM)
    kept = records(run_dir)  # each line whole JSON
    assert len(kept) >= done_term
    assert all(r["outcome"] == "PASSED" for r in kept)
    assert json.loads((run_dir / "results.json").read_text())["cells"] == kept

    second = Kitl.start(["run", str(STEADY), "--resume", str(run_dir)], tmp_path, "sigint")
    done_int, qemu_int, exit_int = stop(second, 1, signal.SIGINT)
    assert f"{len(kept)} of {total} cells have a result, {total - len(kept)} to run" in (
        second.text()
    )
    rest = total - len(kept)  # a failure's "[ 1/N]" or the status line's "1/N cells"
    assert re.search(rf"/{rest}(\]| cells)", second.text()), "the resumed run has only the rest"

    kept = records(run_dir)
    third = Kitl.start(["run", str(STEADY), "--resume", str(run_dir)], tmp_path, "resume")
    assert third.wait() == 0, third.text()
    again = records(run_dir)
    assert f"{len(kept)} of {total} cells have a result, {total - len(kept)} to run" in (
        third.text()
    )
    ids = [r["id"] for r in again]
    assert len(ids) == total == len(set(ids)), "every cell ran exactly once in all"
    assert not leftovers(third.token)
    figures(
        "interrupt",
        sigterm_qemu_gone_s=round(qemu_term, 1),
        sigterm_exit_s=round(exit_term, 1),
        sigint_qemu_gone_s=round(qemu_int, 1),
        sigint_exit_s=round(exit_int, 1),
        cells_kept=[done_term, done_int],
    )


def test_kitl_exec_reports_a_guest_panic_promptly_with_its_fingerprint(tmp_path: Path) -> None:
    saved = console.first_crash((DATA / "console" / "panic-debian-7.2.log").read_text())
    assert saved is not None
    kitl = Kitl.start(
        [
            "exec",
            VM_KERNELS[1],
            "--",
            "sh",
            "-c",
            "echo kitl-trigger; echo c > /proc/sysrq-trigger",
        ],
        tmp_path,
        "exec",
    )
    triggered = 0.0
    while kitl.proc.poll() is None:
        if not triggered and "kitl-trigger" in kitl.out.read_text(errors="replace"):
            triggered = time.monotonic()
        time.sleep(0.05)
        assert time.monotonic() - kitl.started < RUN_LIMIT
    kitl.wait()
    err = kitl.err.read_text()
    assert kitl.status == 1, kitl.text()
    assert "kernel crash" in err
    assert f"fingerprint {saved.fingerprint}" in err
    assert "write_sysrq_trigger" in err  # the splat follows
    assert "Traceback" not in err
    assert triggered, "the command ran in the guest"
    exit_s = kitl.ended - triggered
    assert exit_s < 30, "a panicking guest is reported at once, not after a timeout"
    assert not (left := leftovers(kitl.token)), f"orphans: {left}"
    figures(
        "exec", exit_after_trigger_s=round(exit_s, 1), wall_s=round(kitl.ended - kitl.started, 1)
    )
