"""The user's own loader as a cell, without a VM: its scenario form, the guest side run on
the host with a fake view of the kernel's programs (marker files stand for program ids, so
the real process handling, polling and unpinning run), the verdict, the engine's cell with
a stub agent, the record and the reports."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from harness.guest import protocol, userloader
from harness.guest.replies import LoaderProgram, LoaderReply
from harness.outcome import Outcome
from harness.report.markdown import render_summary as render_markdown
from harness.report.model import build_report
from harness.results.record import CellRecord
from harness.results.rundir import CellResult, RunDir
from harness.run.engine import Engine
from harness.run.loader_cell import judge_loader, loader_log, loader_request
from harness.scenario.expect import Expect, ProgramExpect
from harness.scenario.loader import load_scenario
from harness.scenario.model import LoaderCase, RunConfig, UserLoader

DATA = Path(__file__).parents[1] / "data" / "scenarios"


# --- the scenario ------------------------------------------------------------------------


def test_loader_cases_parse_with_their_command_resolved() -> None:
    scenario = load_scenario(DATA / "good_user_loader.yaml")
    assert scenario.cases == ()  # no case loads a program itself
    bpftool, daemon = scenario.loader_cases
    assert [c.name for c in scenario.every_case] == ["bpftool-loadall", "daemon"]
    assert bpftool.loader.argv[0] == "bpftool"  # a name: the guest's PATH finds it
    assert bpftool.objects == ("progs",)
    assert bpftool.loader.cwd == DATA.resolve()
    assert bpftool.loader.timeout == 120
    assert bpftool.expect.programs == (
        ProgramExpect("xdp_pass"),
        ProgramExpect("tc_shot", "sched_cls", True),
    )
    assert daemon.loader.run_for == 2
    assert daemon.loader.env == (("LIBBPF_LOG_LEVEL", "debug"),)
    assert daemon.loader.shown == "sh -c 'echo attached; sleep 3600'"
    assert daemon.expect_for("6.1.0-56-amd64", "default").exit_status == 0
    assert daemon.expect_for("5.4.0-1-amd64", "default").exit_status == 1


def test_a_loader_given_as_a_path_is_made_absolute(tmp_path: Path) -> None:
    script = tmp_path / "build" / "loader"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\ncases:\n  - name: c\n    loader: {command: [./build/loader, -v]}\n"
        "    expect: {}\n"
    )
    (case,) = load_scenario(path).loader_cases
    assert case.loader.argv == (str(script), "-v")
    assert case.loader.command == ("./build/loader", "-v")
    assert case.expect == Expect()  # exit status 0 is what judge_loader expects then


def test_run_for_must_come_before_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\ncases:\n  - name: c\n"
        "    loader: {command: [sh, -c, 'sleep 9'], timeout: 5, run_for: 5}\n    expect: {}\n"
    )
    with pytest.raises(Exception, match=r"s.yaml:4:\d+: cases\[0\].loader.run_for: 5 s is not"):
        load_scenario(path)


# --- the guest side ----------------------------------------------------------------------


class MarkerPrograms:
    """The kernel's programs as marker files: a file named N in `ids_dir` is program N
    (named prog_N); a pin is a file whose text is the id it holds."""

    def __init__(self, ids_dir: Path) -> None:
        self.dir = ids_dir

    def ids(self) -> frozenset[int]:
        return frozenset(int(p.name) for p in self.dir.iterdir())

    def info(self, prog_id: int) -> LoaderProgram | None:
        if not (self.dir / str(prog_id)).exists():
            return None
        return LoaderProgram(prog_id, f"prog_{prog_id}", "xdp", 10 + prog_id, 80, 64, 0, 0, False)

    def pinned_program(self, path: str) -> int | None:
        return int(Path(path).read_text())


@pytest.fixture
def kernel(tmp_path: Path) -> tuple[MarkerPrograms, Path]:
    (tmp_path / "ids").mkdir()
    (tmp_path / "bpffs").mkdir()
    (tmp_path / "ids" / "1").touch()  # loaded before the loader: never its
    return MarkerPrograms(tmp_path / "ids"), tmp_path


def _run(kernel: tuple[MarkerPrograms, Path], script: str, **kw: Any) -> LoaderReply:
    programs, base = kernel
    request = protocol.RunLoader(
        argv=("sh", "-c", script), cwd=str(base), env={"IDS": "ids", "FS": "bpffs"}, **kw
    )
    return userloader.run(request, programs, bpffs=str(base / "bpffs"))


def test_programs_seen_while_it_ran_and_those_it_left(kernel: tuple[MarkerPrograms, Path]) -> None:
    # 7 is loaded and unloaded while it runs; 8 is pinned and stays
    script = (
        "touch $IDS/7; sleep 0.4; rm $IDS/7; touch $IDS/8; mkdir $FS/app; "
        "echo 8 > $FS/app/prog; echo loaded; echo warn >&2"
    )
    run = _run(kernel, script)
    assert (run.status, run.timed_out, run.stdout, run.stderr) == (0, False, "loaded\n", "warn\n")
    assert [(p.id, p.name, p.left_loaded) for p in run.programs] == [
        (7, "prog_7", False),
        (8, "prog_8", True),
    ]
    base = kernel[1]
    assert run.programs[1].pinned == (str(base / "bpffs/app/prog"),)
    assert run.pins == (str(base / "bpffs/app"), str(base / "bpffs/app/prog"))
    assert list((base / "bpffs").iterdir()) == []  # unpinned for the next cell


def test_a_loader_that_overruns_is_killed(kernel: tuple[MarkerPrograms, Path]) -> None:
    run = _run(kernel, "echo started; exec sleep 30", timeout=0.5)
    assert run.timed_out
    assert run.status == -15  # SIGTERM, before the SIGKILL a deaf one gets
    assert run.stdout == "started\n"
    assert run.seconds < 5


def test_run_for_stops_a_daemon_like_ctrl_c(kernel: tuple[MarkerPrograms, Path]) -> None:
    script = 'trap "echo bye; exit 0" INT; touch $IDS/9; while :; do sleep 0.05; done'
    run = _run(kernel, script, timeout=20, interrupt_after=0.5)
    assert (run.status, run.timed_out, run.stdout) == (0, False, "bye\n")
    assert [p.id for p in run.programs] == [9]


def test_what_it_left_running_is_killed(kernel: tuple[MarkerPrograms, Path]) -> None:
    run = _run(kernel, "sleep 30 & echo $!")
    pid = int(run.stdout)
    # SIGKILL is sent before run() returns; on a loaded host the child may take a moment
    # to be scheduled and die, so wait for it (a few seconds at most), not for sleep's 30
    deadline, state = time.monotonic() + 5, ""
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            state = "gone"
        if state in ("gone", "Z", "X"):
            break
        time.sleep(0.05)
    assert state in ("gone", "Z", "X")


def test_output_is_kept_bounded(kernel: tuple[MarkerPrograms, Path]) -> None:
    run = _run(kernel, "head -c 100000 /dev/zero | tr '\\0' x; echo; echo end")
    assert run.output_cut
    assert len(run.stdout) == userloader.OUTPUT_MAX
    assert run.stdout.endswith("x\nend\n")


def test_a_loader_the_guest_cannot_see_is_a_setup_error(tmp_path: Path) -> None:
    request = protocol.RunLoader(argv=("./missing",), cwd=str(tmp_path))
    with pytest.raises(Exception, match="not an executable file in the guest"):
        userloader.run(request, MarkerPrograms(tmp_path), bpffs=str(tmp_path))
    request = protocol.RunLoader(argv=("true",), cwd=str(tmp_path / "gone"))
    with pytest.raises(Exception, match="not visible in the guest"):
        userloader.run(request, MarkerPrograms(tmp_path), bpffs=str(tmp_path))


def test_fdinfo_fields() -> None:
    text = "pos:\t0\nflags:\t02000002\nlink_type:\txdp\nlink_id:\t4\nprog_tag:\tab\nprog_id:\t12\n"
    assert userloader.fdinfo(text)["prog_id"] == "12"


# --- the verdict -------------------------------------------------------------------------


def _reply(status: int | None = 0, **kw: Any) -> LoaderReply:
    programs = (
        LoaderProgram(5, "handle_egress_p", "sched_cls", 120, 960, 600, 0, 0, True),
        LoaderProgram(6, "count_reads", "kprobe", 40, 320, 200, 0, 0, False),
    )
    wire: dict[str, Any] = {"command": ["./loader"], "status": status, "timed_out": False}
    wire |= {"seconds": 1.0, "stdout": "attached\n", "stderr": "libbpf: warn\nfailed: EPERM\n"}
    return LoaderReply.from_wire({**wire, "programs": [p.to_wire() for p in programs], **kw})


def test_judge_passes_a_loader_that_did_what_was_expected() -> None:
    expect = Expect(
        programs=(
            ProgramExpect("handle_egress_packets", "sched_cls", True),  # the kernel's 15
            ProgramExpect("count_reads", left_loaded=False),
        ),
        stdout=("attached",),
        stderr=("warn", "EPERM"),
    )
    assert judge_loader(expect, _reply()) == (Outcome.PASSED, "")


@pytest.mark.parametrize(
    ("expect", "reply", "reason"),
    [
        (Expect(), _reply(1), "the loader exited with 1, expected 0: failed: EPERM"),
        (Expect(), _reply(-11), "the loader was killed by SIGSEGV, expected 0: failed: EPERM"),
        (Expect(exit_status=1), _reply(0), "the loader exited with 0, expected 1: failed: EPERM"),
        (Expect(stdout=("detached",)), _reply(), "the loader's stdout lacks /detached/"),
        (
            Expect(programs=(ProgramExpect("xdp_main"),)),
            _reply(),
            "the loader did not load a program xdp_main; it loaded: handle_egress_p "
            "(sched_cls), count_reads (kprobe)",
        ),
        (
            Expect(programs=(ProgramExpect("count_reads", "tracing"),)),
            _reply(),
            "program count_reads is kprobe, expected tracing",
        ),
        (
            Expect(programs=(ProgramExpect("count_reads", left_loaded=True),)),
            _reply(),
            "program count_reads was gone when the loader exited",
        ),
    ],
)
def test_judge_says_why_a_loader_failed(expect: Expect, reply: LoaderReply, reason: str) -> None:
    outcome, said = judge_loader(expect, reply)
    assert outcome is Outcome.FAILED
    assert said.startswith(reason)


def test_a_loader_that_ran_out_of_time_is_timed_out() -> None:
    outcome, reason = judge_loader(Expect(), _reply(-15, timed_out=True))
    assert outcome is Outcome.TIMED_OUT
    assert reason == "the loader ran out of its time (1 s) and was killed: failed: EPERM"


def _case(tmp_path: Path, **kw: Any) -> LoaderCase:
    argv = ("bpftool", "prog", "loadall", "{object:progs}", "/sys/fs/bpf/x")
    return LoaderCase("load", UserLoader(argv, tmp_path, command=argv, **kw), Expect())


def test_the_request_names_the_objects_in_the_guest_and_fits_the_cell(tmp_path: Path) -> None:
    case = _case(tmp_path, timeout=600, run_for=30, env=(("A", "1"),))
    request = loader_request(case, {"progs": "/run/kitl-ab.o"}, budget=100)
    assert request.argv == ("bpftool", "prog", "loadall", "/run/kitl-ab.o", "/sys/fs/bpf/x")
    assert (request.timeout, request.interrupt_after) == (95, 30)
    assert (request.cwd, request.env) == (str(tmp_path), {"A": "1"})


# --- the engine, the record and the reports ----------------------------------------------


class StubAgent:
    """Answers what a loader case asks: facts, the loader's run, the release."""

    def __init__(self, reply: LoaderReply) -> None:
        self.reply = reply
        self.sent: list[Any] = []

    def send(self, request: protocol.Request[Any], timeout: float = 0) -> Any:
        self.sent.append(request)
        if isinstance(request, protocol.Facts):
            facts = {"release": "6.1.0-56-amd64", "btf": True, "lsm": None, "cgroup2": True}
            return request.read_reply({**facts, "sysctl": {}, "libbpf_version": "1.8"})
        if isinstance(request, protocol.RunLoader):
            return self.reply
        assert isinstance(request, protocol.Release)
        return request.read_reply({"released": [], "problems": []})


def _engine(tmp_path: Path, reply: LoaderReply) -> tuple[Engine, StubAgent]:
    e = Engine.__new__(Engine)  # only the loader's cell runs: no VM
    agent = StubAgent(reply)
    e.agent = agent  # type: ignore[assignment]
    e.run = RunDir(tmp_path / "run", {})
    e._guest_facts, e._dog, e.release = None, None, "6.1.0-56-amd64"
    e.objects, e._in_guest = {}, {}
    return e, agent


def _loader_cell(tmp_path: Path, reply: LoaderReply) -> tuple[CellResult, RunDir]:
    case = LoaderCase("load", UserLoader(("./loader",), tmp_path), Expect(stdout=("attached",)))
    e, agent = _engine(tmp_path, reply)
    cell = CellResult("s", "load", "debian-6.1", "default", Outcome.ERROR)
    scenario: Any = None  # the case names no object of it
    e._run_loader(scenario, case, RunConfig("default"), cell)
    assert [type(r).__name__ for r in agent.sent] == ["Facts", "RunLoader", "Release"]
    e.run.append(cell)
    e.run.finish()
    return cell, e.run


def test_a_loader_cell_records_what_the_loader_did(tmp_path: Path) -> None:
    cell, run = _loader_cell(tmp_path, _reply(1))
    assert cell.outcome is Outcome.FAILED
    assert cell.expected == {"load": "ok", "stdout": ["attached"]}
    loader = cell.observed.loader
    assert loader is not None
    assert loader.status == 1
    assert [(p.name, p.verified_insns) for p in loader.programs] == [
        ("handle_egress_p", 120),
        ("count_reads", 40),
    ]
    log = (run.path / cell.log_path).read_text()
    assert cell.log_path.endswith(".loader.log")
    assert "# program 5 handle_egress_p (sched_cls): verified_insns 120" in log
    assert log.endswith("--- stderr\nlibbpf: warn\nfailed: EPERM\n")
    # the record reads back typed, and writes the same JSON
    data = json.loads((run.path / "results.jsonl").read_text())
    record = CellRecord.from_json(data)
    assert record.to_json() == data
    assert record.observed.loader is not None
    assert record.observed.loader.programs[1].left_loaded is False


def test_old_records_and_damaged_loader_parts_read_back_as_written() -> None:
    old = {"id": "s::c[k-d]", "outcome": "PASSED", "observed": {"load": {"ok": True}}}
    assert CellRecord.from_json(old).observed.loader is None
    assert json.dumps(CellRecord.from_json(old).to_json()) == json.dumps(old)
    damaged = {"observed": {"loader": {"status": "x", "programs": [1, 2], "new": True}}}
    record = CellRecord.from_json(damaged)
    assert record.observed.loader is not None
    assert record.observed.loader.programs == ()
    assert record.to_json() == damaged


def test_reports_list_the_loaders_programs(tmp_path: Path) -> None:
    _, run = _loader_cell(tmp_path, _reply(0))
    text = render_markdown(build_report(run.path))
    assert "## User loaders (1)" in text
    assert "handle\\_egress\\_p (sched\\_cls): verified\\_insns 120, xlated 960 B" in text
    assert "jited 600 B, left loaded" in text
    report = build_report(run.path)
    assert report.excerpt(report.cells[0])[0] == "loader output"
    assert report.repro(report.cells[0]) == "kitl run s --kernel debian-6.1"


def test_the_loader_log_says_it_all(tmp_path: Path) -> None:
    text = loader_log(_case(tmp_path), _reply(0, timed_out=True))
    assert text.startswith("$ bpftool prog loadall '{object:progs}' /sys/fs/bpf/x\n")
    assert "# killed: it ran out of its time" in text
