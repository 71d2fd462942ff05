"""SIGINT and SIGTERM without QEMU: raised in the main thread, held while a teardown runs,
ignored once a stop is under way; `kitl run` forwards them to pytest's whole process group
and says what finished."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import interrupts
from harness.cli import runner
from harness.errors import UsageError
from harness.vm.agentclient import AgentClient
from tests.fakes import run_args


@pytest.fixture
def installed() -> Iterator[None]:
    restore = interrupts.install()
    try:
        yield
    finally:
        restore()


def deliver(signum: int) -> None:
    """Send `signum` to this process and give the main thread a moment to handle it."""
    os.kill(os.getpid(), signum)
    time.sleep(0.2)


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_unwinds_as_a_keyboard_interrupt_naming_it(signum: int) -> None:
    with pytest.raises(KeyboardInterrupt) as info:
        deliver(signum)
    assert isinstance(info.value, interrupts.Stopped)
    assert info.value.signum == signum
    assert str(info.value) == signal.Signals(signum).name


@pytest.mark.usefixtures("installed")
def test_a_teardown_is_finished_before_the_signal_is_raised() -> None:
    steps: list[str] = []

    def teardown() -> None:
        with interrupts.shielded():
            with interrupts.shielded():  # nested: held until the outermost ends
                deliver(signal.SIGTERM)
                steps.append("qemu killed")
            steps.append("keys deleted")

    with pytest.raises(interrupts.Stopped):
        teardown()
    assert steps == ["qemu killed", "keys deleted"]


@pytest.mark.usefixtures("installed")
def test_once_stopping_later_signals_are_ignored() -> None:
    interrupts.stop_quietly()
    deliver(signal.SIGINT)
    deliver(signal.SIGTERM)
    with interrupts.shielded():
        deliver(signal.SIGTERM)  # not held either: dropped


def test_once_raises_the_first_and_ignores_the_rest() -> None:
    restore = interrupts.install(interrupts.once(lambda s: RuntimeError(f"stop {s}")))
    try:
        with pytest.raises(RuntimeError, match="stop 15"):
            deliver(signal.SIGTERM)
        deliver(signal.SIGTERM)
    finally:
        restore()


def test_restore_puts_the_previous_handlers_back() -> None:
    before = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    restore = interrupts.install()
    assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    restore()
    assert {s: signal.getsignal(s) for s in interrupts.SIGNALS} == before


def test_kitl_run_forwards_a_signal_to_the_whole_pytest_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a stand-in for pytest with a worker of its own (xdist's are in its process group)
    child = (
        "import subprocess, sys, time\n"
        "worker = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(tmp_path / 'worker')!r}, 'w').write(str(worker.pid))\n"
        "time.sleep(60)\n"
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.jsonl").write_text('{"id": "a::b[k-c]", "outcome": "PASSED"}\n')

    def signal_when_started() -> None:
        deadline = time.monotonic() + 30
        while not (tmp_path / "worker").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=signal_when_started, daemon=True).start()
    started = time.monotonic()
    status = runner._pytest([sys.executable, "-c", child], run_dir, command="run")
    assert status == 128 + signal.SIGTERM
    assert time.monotonic() - started < 20
    worker = int((tmp_path / "worker").read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{worker}").exists() or "Z" in _state(worker), "the worker too"
    err = capsys.readouterr().err
    assert f"kitl: stopped by SIGTERM: 1 cells have a result in {run_dir / 'results.jsonl'}" in err
    assert f"kitl run --resume {run_dir} [same arguments] runs the rest" in err


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_the_cell_timeout_reaches_the_plugin(tmp_path: Path) -> None:
    argv = runner.pytest_argv(run_args(cell_timeout=45.0), [], tmp_path, 1)
    assert argv[argv.index("--kitl-cell-timeout") + 1] == "45.0"
    assert "--kitl-cell-timeout" not in runner.pytest_argv(run_args(), [], tmp_path, 1)
    with pytest.raises(UsageError, match="--cell-timeout 0: must be positive"):
        runner.pytest_argv(run_args(cell_timeout=0.0), [], tmp_path, 1)


def test_cleanup_that_would_talk_to_a_guest_raises_the_stop_again() -> None:
    # the case's release runs in a `finally` while the stop unwinds: it must not wait for
    # an agent still busy with the interrupted command (seen: 3.4 s of a `sleep 3`)
    restore = interrupts.install(interrupts.once(lambda s: KeyboardInterrupt(f"stop {s}")))
    try:
        with pytest.raises(KeyboardInterrupt) as first:
            deliver(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt) as again:
            AgentClient(None).call("release")  # type: ignore[arg-type]
        assert again.value is first.value
    finally:
        restore()
    interrupts.raise_if_stopping()  # nothing under way once the handlers are restored
