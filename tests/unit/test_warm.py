"""Warm guests without QEMU: the daemon (harness.vm.warmd) over the fake launcher, whose
"guest" is the host and whose agent is the real one running here; the client's VM made of
a lease (harness.vm.warmclient); records, matching, stale records, permissions."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.cli import warm as warm_cli
from harness.errors import GuestLostError
from harness.kernel.store import Kernel
from harness.vm import warm
from harness.vm.agentclient import AgentClient, agent_argv
from harness.vm.machine import GuestSettings
from harness.vm.warm import DaemonSpec, Paths, WarmRecord
from harness.vm.warmclient import WarmVM, guest_factory, warm_vm
from harness.vm.warmd import Daemon
from tests.fakes import FakeLauncher
from tests.unit.test_vm_fake import PANIC

NAME = "fake-6.1"


@pytest.fixture
def directory() -> Iterator[Path]:
    # short: a Unix socket's path has at most 107 bytes, pytest's tmp_path can be longer
    with tempfile.TemporaryDirectory(prefix="kw-", dir="/tmp") as tmp:
        yield warm.private_dir(Path(tmp) / "warm")


def fake_kernel(root: Path) -> Kernel:
    image = root / "vmlinuz"
    image.write_bytes(b"")
    return Kernel(name=NAME, release="6.1.0-fake", vmlinuz=image, modules=None, digest="d1")


def wait_for(check: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def record_of(directory: Path) -> WarmRecord:
    record = warm.read_record(Paths(directory, NAME).record)
    assert record is not None
    return record


class Running:
    """A daemon in a thread of this process, over a fake launcher."""

    def __init__(
        self, directory: Path, launcher: FakeLauncher, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # its record names this process, which is not a daemon's: alive all the same
        real = warm.daemon_alive
        monkeypatch.setattr(warm, "daemon_alive", lambda pid: pid == os.getpid() or real(pid))
        self.kernel = fake_kernel(directory.parent)
        self.launcher = launcher
        spec = DaemonSpec(warm.kernel_to_json(self.kernel), "tcg")
        self.daemon = Daemon(spec, Paths(directory, NAME), launcher=launcher)
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.state() == warm.IDLE)

    def state(self) -> str:
        return self.daemon.record.state

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(20)


@pytest.fixture
def running(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    daemon = Running(directory, FakeLauncher(), monkeypatch)
    yield daemon
    daemon.stop()


def settings(said: list[str]) -> GuestSettings:
    return GuestSettings("tcg", on_wait=said.append)


def test_a_command_uses_the_warm_guest_and_it_counts_its_cells(
    running: Running, directory: Path, tmp_path: Path
) -> None:
    said: list[str] = []
    vm = warm_vm(settings(said), running.kernel, tmp_path / "console.log", directory)
    assert isinstance(vm, WarmVM), said
    with vm, AgentClient(vm) as agent:
        assert agent.call("run", {"argv": ["echo", "warm"]})["stdout"] == "warm\n"
        assert vm.run(["echo", "direct"], timeout=5).stdout == "direct\n"
        assert record_of(directory).state == warm.IN_USE
        assert record_of(directory).user == os.getpid()
        vm.served()
        vm.served()
    # the run directory keeps the guest's console as it would a booted one's
    assert "KITL-READY" in (tmp_path / "console.log").read_text()
    wait_for(lambda: record_of(directory).state == warm.IDLE)
    record = record_of(directory)
    assert (record.uses, record.cells, record.boots) == (1, 2, 1)
    assert len(running.launcher.started) == 1  # never booted again
    # the agent stayed up: a second use finds the same one (same pid)
    pids = []
    for _ in range(2):
        vm2 = warm_vm(settings(said), running.kernel, tmp_path / "c2.log", directory)
        assert vm2 is not None
        with vm2, AgentClient(vm2) as agent:
            pids.append(agent.call("ping")["pid"])
        wait_for(lambda: record_of(directory).state == warm.IDLE)
    assert pids[0] == pids[1]
    assert said == []


def test_a_second_user_boots_its_own_guest_and_says_why(
    running: Running, directory: Path, tmp_path: Path
) -> None:
    said: list[str] = []
    first = warm_vm(settings(said), running.kernel, tmp_path / "a.log", directory)
    assert first is not None
    with first:
        launcher = FakeLauncher()
        fallback = GuestSettings("tcg", on_wait=said.append, launcher=launcher)
        make = guest_factory(fallback, directory=directory)
        with make(running.kernel, tmp_path / "b.log") as second:
            assert not isinstance(second, WarmVM)
            assert len(launcher.started) == 1  # booted as before
    assert said == [f"{NAME}: the warm guest (pid {os.getpid()}) is in use by pid "
                    f"{os.getpid()}; booting one"]  # fmt: skip


def test_a_guest_that_does_not_fit_is_not_used(running: Running, directory: Path) -> None:
    said: list[str] = []
    other = Kernel(
        name=NAME, release="6.1.0-fake", vmlinuz=running.kernel.vmlinuz, modules=None,
        digest="another image",
    )  # fmt: skip
    assert warm_vm(settings(said), other, directory / "x.log", directory) is None
    assert "its digest is 'd1', not 'another image'" in said[0]
    kvm = GuestSettings("kvm", on_wait=said.append)
    assert warm_vm(kvm, running.kernel, directory / "x.log", directory) is None
    assert "its accel is 'tcg', not 'kvm'" in said[1]
    assert record_of(directory).uses == 0


def test_no_warm_never_asks(running: Running, directory: Path) -> None:
    launcher = FakeLauncher()
    make = guest_factory(GuestSettings("tcg", launcher=launcher), use_warm=False)
    with make(running.kernel, directory / "x.log") as vm:
        assert not isinstance(vm, WarmVM)
    assert record_of(directory).uses == 0


def test_a_user_that_leaves_a_request_unanswered_gets_the_guest_replaced(
    running: Running, directory: Path, tmp_path: Path
) -> None:
    vm = warm_vm(settings([]), running.kernel, tmp_path / "c.log", directory)
    assert vm is not None
    with vm:
        stream = vm.channel.start(agent_argv(sys.executable, None))
        stream.send_line('{"id": 1, "op": "run", "args": {"argv": ["sleep", "4"]}}')
        time.sleep(0.3)
    wait_for(lambda: record_of(directory).boots == 2 and record_of(directory).state == warm.IDLE)
    assert "still busy" in record_of(directory).replaced


def test_the_watchdogs_kill_replaces_the_guest(
    running: Running, directory: Path, tmp_path: Path
) -> None:
    vm = warm_vm(settings([]), running.kernel, tmp_path / "c.log", directory)
    assert vm is not None
    with vm:
        vm.kill()
        assert vm.channel is not None
        with pytest.raises(GuestLostError, match=r"daemon|closed|broke"):
            vm.run(["true"], timeout=5)
    wait_for(lambda: record_of(directory).boots == 2 and record_of(directory).state == warm.IDLE)
    assert running.launcher.processes[0].killed


def test_a_guest_that_crashes_while_idle_is_replaced(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ready = [(0.0, "Linux version 6.1.0-fake\n"), (0.05, "KITL-READY 6.1.0-fake\n")]
    crash = [*ready, (1.0, PANIC)]
    daemon = Running(directory, FakeLauncher(attempt_consoles=[crash]), monkeypatch)
    try:
        wait_for(lambda: record_of(directory).boots == 2 and daemon.state() == warm.IDLE)
        assert "died while idle" in record_of(directory).replaced
    finally:
        daemon.stop()
    assert not Paths(directory, NAME).record.exists()  # a clean stop leaves nothing


def test_files_are_private(running: Running, directory: Path) -> None:
    paths = Paths(directory, NAME)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(paths.socket.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.record.stat().st_mode) == 0o600


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_reach_the_socket(running: Running, directory: Path) -> None:
    os.chmod(directory, 0o711)  # even with the directory open to passers-by, the socket is not
    try:
        child = os.fork()
        if child == 0:  # as nobody: connect, exit 13 when refused (no Python state touched)
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                socket.socket(socket.AF_UNIX).connect(str(Paths(directory, NAME).socket))
                code = 0
            except PermissionError:
                code = 13
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 13
    finally:
        os.chmod(directory, 0o700)


def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "w"
    other.mkdir(mode=0o700)
    if os.getuid() != 0:
        pytest.skip("needs root to give a directory away")
    os.chown(other, 65534, -1)
    with pytest.raises(Exception, match="belongs to uid 65534"):
        warm.private_dir(other)
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    assert stat.S_IMODE(warm.private_dir(loose).stat().st_mode) == 0o700


def test_records_round_trip_and_stale_ones_are_removed(directory: Path, tmp_path: Path) -> None:
    kernel = fake_kernel(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    record = WarmRecord(
        kernel=NAME, release=kernel.release, digest="d1", vmlinuz=str(kernel.vmlinuz),
        cmdline=("quiet",), arch=warm.host_arch(), accel="tcg", cpus=2, memory="2G",
        pid=dead.pid, started=time.time() - 90, socket="s", console="c", log="l",
    )  # fmt: skip
    paths = Paths(directory, NAME)
    record.write(paths.record)
    assert warm.read_record(paths.record) == record
    assert not record.alive()
    # a live process that is not a daemon (its pid reused) does not count either
    assert not record.with_(pid=os.getpid()).alive()
    assert record.mismatch(kernel, "tcg") == "its cmdline is ('quiet',), not ()"
    assert warm.find(directory, NAME) is None
    assert warm.clean_stale(directory) == [record]
    assert not paths.record.exists()


def test_kitl_up_ps_down_with_a_detached_daemon(
    directory: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon as `kitl up` starts it (its own session and log), the fake launcher
    named in its spec; ps lists it, a command uses it, down leaves nothing."""
    monkeypatch.setenv("KITL_CACHE", str(directory.parent / "cache"))
    kernel = fake_kernel(directory.parent)
    paths = Paths(directory, NAME)
    spec = DaemonSpec(warm.kernel_to_json(kernel), "tcg", launcher="tests.fakes:FakeLauncher")
    spec.write(paths.spec)
    proc = warm_cli.spawn(directory, NAME, paths.log)
    assert warm_cli._wait_up(directory, kernel, proc), paths.log.read_text()
    assert os.getsid(proc.pid) == proc.pid  # a session of its own
    monkeypatch.setenv(warm.WARM_ENV, str(directory))
    warm_cli.ps(as_json=False)
    listed = capsys.readouterr().out
    assert NAME in listed
    assert "idle" in listed
    assert str(proc.pid) in listed
    vm = warm_vm(settings([]), kernel, directory.parent / "c.log", directory)
    assert vm is not None
    with vm:
        vm.served(3)
    wait_for(lambda: record_of(directory).state == warm.IDLE)
    assert warm_cli.down(()) == 0
    assert proc.wait(5) == 0
    said = capsys.readouterr().err
    assert f"{NAME} down (pid {proc.pid}" in said
    assert "3 cells in 1 uses" in said
    # the daemon's log and the guest's console stay for a look afterwards; nothing else
    assert sorted(p.name for p in directory.iterdir()) == [paths.console.name, paths.log.name]
    with pytest.raises(FileNotFoundError):
        socket.socket(socket.AF_UNIX).connect(str(paths.socket))
