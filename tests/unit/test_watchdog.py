"""The cell watchdog without QEMU: the budget and its backstop, the agent's calls bounded by
the cell's deadline, and what the engine makes of a cell the guest failed under (a crash's
fingerprint, an overrun budget, OOM kills, a guest lost outside the case)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from harness.errors import GuestLostError, GuestTimeoutError, outcome_for_error
from harness.interrupts import Watchdog, timed_out_reason
from harness.kernel.store import Kernel
from harness.outcome import Outcome
from harness.results.rundir import CellResult, RunDir
from harness.results.runs import appended
from harness.run.engine import Engine
from harness.scenario.loader import load_scenario
from harness.scenario.model import RunConfig
from harness.vm import agentclient, console, hostload
from harness.vm.agentclient import AgentClient, AgentTimeoutError
from harness.vm.hostload import HostLoad
from harness.vm.machine import VM
from tests.fakes import FakeLauncher

DATA = Path(__file__).parents[1] / "data"
PANIC = (DATA / "console" / "panic-debian-6.1.log").read_text()
OOM = (DATA / "console" / "oom-debian-6.1.log").read_text()


def test_the_backstop_fires_after_the_budget_and_its_grace() -> None:
    fired: list[float] = []
    started = time.monotonic()
    with Watchdog(0.1, lambda: fired.append(time.monotonic()), grace=0.1) as dog:
        time.sleep(0.5)
    assert dog.fired
    assert dog.expired
    assert dog.remaining() == 0.0
    assert len(fired) == 1
    assert 0.2 <= fired[0] - started < 0.45


def test_a_cell_that_ends_in_time_is_left_alone() -> None:
    fired: list[bool] = []
    with Watchdog(0.2, lambda: fired.append(True), grace=0.0) as dog:
        assert 0 < dog.remaining() <= 0.2
        assert not dog.expired
    time.sleep(0.4)
    assert not fired
    assert not dog.fired


def test_the_budget_follows_its_clock() -> None:
    now = [100.0]
    dog = Watchdog(30, lambda: None, clock=lambda: now[0])
    assert dog.deadline == 130.0
    now[0] = 120.0
    assert dog.remaining() == 10.0
    now[0] = 131.0
    assert dog.expired
    with pytest.raises(ValueError, match="positive"):
        Watchdog(0, lambda: None)


def test_the_timed_out_reason_names_the_budget_and_the_option() -> None:
    assert timed_out_reason(30, "run: sleep did not finish within 29.5s") == (
        "no result within the cell timeout of 30s (kitl run --cell-timeout); the VM is "
        "replaced for the next cell: run: sleep did not finish within 29.5s"
    )
    assert timed_out_reason(300, "").endswith("the VM is replaced for the next cell")


def fake_vm(tmp_path: Path, launcher: FakeLauncher) -> VM:
    image = tmp_path / "vmlinuz"
    image.write_bytes(b"")
    kernel = Kernel(name="fake-6.1", release="6.1.0-fake", vmlinuz=image, modules=None)
    return VM(
        kernel, accel="tcg", console_path=tmp_path / "c.log", launcher=launcher, boot_timeout=5
    )


def test_the_backstop_kills_the_vm_and_every_wait_on_it_ends(tmp_path: Path) -> None:
    launcher = FakeLauncher()
    with fake_vm(tmp_path, launcher) as vm:
        with Watchdog(0.05, vm.kill, grace=0.05) as dog:
            time.sleep(0.3)
        assert dog.fired
        assert launcher.processes[0].killed
        with pytest.raises(GuestLostError):
            vm.run(["true"], timeout=5)


class StubVM:
    accel = "tcg"

    def __init__(self, text: str = "") -> None:
        self.text = text
        self.killed = False

    def console_text(self) -> str:
        return self.text

    def check_crash_after_failure(self) -> None:
        pass

    def kill(self) -> None:
        self.killed = True


class Stream:
    """A guest agent that answers with `answer` (None: never answers)."""

    def __init__(self, answer: dict[str, Any] | None) -> None:
        self.answer = answer
        self.sent: list[str] = []

    def send_line(self, line: str) -> None:
        self.sent.append(line)

    def read_line(self, timeout: float) -> str:
        if self.answer is None:
            time.sleep(timeout)
            raise GuestTimeoutError(f"no answer from the agent within {timeout:g}s")
        return json.dumps({"id": len(self.sent), **self.answer})

    def stderr_text(self) -> str:
        return ""

    def close(self) -> None:
        pass


def client(answer: dict[str, Any] | None) -> AgentClient:
    agent = AgentClient(StubVM())  # type: ignore[arg-type]
    agent._stream = Stream(answer)
    return agent


def test_no_call_waits_beyond_the_deadline_and_its_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agentclient, "ANSWER_GRACE", 0.1)
    agent = client(None)
    agent.deadline = time.monotonic() + 0.2
    started = time.monotonic()
    with pytest.raises(GuestTimeoutError):
        agent.call("run", {"argv": ["sleep", "1000"]}, timeout=300)
    assert time.monotonic() - started < 1.0
    assert agent.first_failure == "run: the guest agent did not answer within 0.3s"
    # after the deadline nothing more is sent, and the first timeout stays the one named
    with pytest.raises(GuestTimeoutError, match="release: not started, time is up"):
        agent.call("release")
    assert len(agent._stream.sent) == 1  # type: ignore[union-attr]
    assert agent.first_failure.startswith("run: ")


def test_the_agents_own_timeout_answer_is_a_timeout() -> None:
    agent = client({"ok": False, "error": "sleep did not finish within 3s", "kind": "timeout"})
    with pytest.raises(AgentTimeoutError) as info:
        agent.call("run", {"argv": ["sleep", "1000"], "timeout": 3})
    assert str(info.value) == "run: sleep did not finish within 3s"
    assert outcome_for_error(info.value) is Outcome.TIMED_OUT
    assert agent.first_failure == "run: sleep did not finish within 3s"


def engine(tmp_path: Path, vm: StubVM, agent: Any = None) -> Engine:
    kernel = Kernel(name="debian-6.1", release="6.1.0-56-amd64", vmlinuz=tmp_path, modules=None)
    agent = agent or AgentClient(vm)  # type: ignore[arg-type]
    return Engine(vm, agent, kernel, RunDir(tmp_path / "run", {}), {}, cache=None)  # type: ignore[arg-type]


def explained(
    tmp_path: Path,
    outcome: Outcome,
    text: str,
    *,
    fired: bool = False,
    expired: bool = False,
    first_failure: str = "",
) -> CellResult:
    vm = StubVM(text)
    e = engine(tmp_path, vm)
    e.agent.first_failure = first_failure
    now = [0.0]
    dog = Watchdog(30, vm.kill, clock=lambda: now[0])
    now[0] = 31.0 if expired else 1.0
    dog.fired = fired
    cell = CellResult("faults", "case", "debian-6.1", "default", outcome, reason="as judged")
    # a quiet host, whatever this one is doing (the suite's own guests load it)
    with mock.patch.object(hostload, "snapshot", return_value=HostLoad(0.0, 2, 0, None)):
        e._explain(cell, dog, text)
    return cell


def test_a_crash_cell_carries_its_splat_and_fingerprint(tmp_path: Path) -> None:
    cell = explained(tmp_path, Outcome.KERNEL_CRASH, "KITL-READY 6.1.0\n" + PANIC)
    splat = console.first_crash(PANIC)
    assert splat is not None
    assert cell.crash.fingerprint == splat.fingerprint
    assert cell.crash.signature == splat.signature
    assert "write_sysrq_trigger" in cell.crash.functions
    assert "Kernel panic - not syncing" in cell.crash.text
    assert cell.to_json()["crash"]["title"] == splat.title


@pytest.mark.parametrize(
    ("outcome", "fired", "expired", "after"),
    [
        (Outcome.VM_LOST, True, True, Outcome.TIMED_OUT),  # the backstop killed the VM
        (Outcome.TIMED_OUT, False, True, Outcome.TIMED_OUT),  # the host stopped waiting
        (Outcome.ERROR, False, True, Outcome.TIMED_OUT),
        (Outcome.VM_LOST, False, False, Outcome.VM_LOST),  # lost in time: its first failure
        (Outcome.PASSED, False, True, Outcome.PASSED),  # finished on the edge
    ],
)
def test_an_overrun_budget_is_timed_out_whatever_broke_first(
    tmp_path: Path, outcome: Outcome, fired: bool, expired: bool, after: Outcome
) -> None:
    cell = explained(
        tmp_path, outcome, "", fired=fired, expired=expired, first_failure="run: sleep hung"
    )
    assert cell.outcome is after
    if after is Outcome.TIMED_OUT:
        assert cell.reason == timed_out_reason(30, "run: sleep hung")
    elif after is Outcome.VM_LOST:
        assert cell.reason == "run: sleep hung", "the loss, not a cleanup call after it"
    else:
        assert cell.reason == "as judged"


def test_oom_kills_during_a_cell_are_recorded_and_named_when_it_failed(tmp_path: Path) -> None:
    failed = explained(tmp_path, Outcome.FAILED, OOM)
    assert failed.reason == (
        "as judged (the guest ran out of memory: Memory cgroup out of memory: Killed process "
        "268 (tail); Out of memory: Killed process 272 (python3))"
    )
    assert failed.observed.oom_kills == tuple(console.oom_kills(OOM))
    passed = explained(tmp_path, Outcome.PASSED, OOM)
    assert passed.reason == "as judged"
    assert passed.observed.oom_kills
    # the OOM killer took the agent itself: a lost VM, and why
    agent_killed = OOM.replace("(python3)", "(python3 -m harness.guest.agent)")
    lost = explained(tmp_path, Outcome.VM_LOST, agent_killed, first_failure="run: gone")
    assert lost.outcome is Outcome.VM_LOST
    assert lost.reason.startswith("run: gone (the guest ran out of memory: ")
    assert "(python3 -m harness.guest.agent)" in lost.reason


class LostAgent(AgentClient):
    def call(self, op: str, args: dict[str, Any] | None = None, *, timeout: float = 60) -> Any:
        raise GuestLostError("the guest went away while a command was running")


def test_a_guest_lost_while_switching_configs_is_a_result_not_an_exception(
    tmp_path: Path,
) -> None:
    vm = StubVM()
    e = engine(tmp_path, vm, LostAgent(vm))  # type: ignore[arg-type]
    scenario = load_scenario(DATA / "faults" / "steady.yaml")
    config = RunConfig("jit", (("net.core.bpf_jit_enable", 1),))
    cell = e.run_cell(scenario, scenario.cases[0], config)
    assert cell.outcome is Outcome.VM_LOST
    assert "went away" in cell.reason
    assert [c.outcome for c in appended(tmp_path / "run")] == ["VM_LOST"]
    assert e.agent.deadline is None, "no deadline outlives its cell"
