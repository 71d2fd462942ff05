"""A fake launcher behind the same interface as VngLauncher: no QEMU, scripted consoles.

The "guest" is the host: commands given to the fake channel run as local subprocesses
(or from a scripted table), so the real VM lifecycle code (readiness, crash detection,
teardown) runs unchanged.
"""

from __future__ import annotations

import argparse
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.cli import requests, runner
from harness.cli.requests import RunRequest
from harness.errors import GuestLostError
from harness.kernel.store import Kernel
from harness.vm.channel import CommandResult
from harness.vm.machine import VM, BootSpec, ConsoleRecorder


@dataclass
class FakeProcess:
    exit_status: int | None = None
    killed: bool = False
    pid: int = 4242

    def poll(self) -> int | None:
        return self.exit_status

    def kill_tree(self) -> None:
        self.killed = True
        if self.exit_status is None:
            self.exit_status = -9


@dataclass
class FakeChannel:
    process: FakeProcess
    scripted: dict[tuple[str, ...], CommandResult] = field(default_factory=dict)
    closed: bool = False
    commands: list[tuple[str, ...]] = field(default_factory=list)
    lose_after: int | None = None  # the channel breaks after this many commands

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        stdin: bytes | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> CommandResult:
        key = tuple(argv)
        self.commands.append(key)
        if self.closed or self.process.exit_status is not None:
            raise GuestLostError("fake guest is gone")
        if self.lose_after is not None and len(self.commands) > self.lose_after:
            raise GuestLostError("fake guest dropped the connection")
        if key in self.scripted:
            return self.scripted[key]
        started = time.monotonic()
        proc = subprocess.run(
            list(argv), input=stdin, capture_output=True, timeout=timeout, check=False
        )
        if on_output:
            on_output("stdout", proc.stdout)
        return CommandResult(
            key,
            proc.returncode,
            proc.stdout.decode(),
            proc.stderr.decode(),
            time.monotonic() - started,
        )

    def put(self, data: bytes, remote: str, mode: int = 0o644) -> None:
        raise NotImplementedError

    def start(self, argv: Sequence[str]) -> LocalLineStream:
        """The 'guest' process runs on the host (e.g. the agent itself)."""
        return LocalLineStream(list(argv))

    def close(self) -> None:
        self.closed = True


class LocalLineStream:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def send_line(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise GuestLostError("local stream ended")
        return line.rstrip("\n")

    def stderr_text(self) -> str:
        return ""

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclass
class FakeLauncher:
    """Plays `console` (list of (delay seconds, text)) into the recorder, then optionally
    exits with `exit_status`."""

    console: list[tuple[float, str]] = field(
        default_factory=lambda: [
            (0.0, "[    0.000000] Linux version 6.1.0-fake\n"),
            (0.05, "KITL-READY 6.1.0-fake\n"),
        ]
    )
    exit_status: int | None = None
    # per boot attempt, used in order before `console` (e.g. a crash, then a good boot)
    attempt_consoles: list[list[tuple[float, str]]] = field(default_factory=list)
    scripted: dict[tuple[str, ...], CommandResult] = field(default_factory=dict)
    lose_after: int | None = None
    started: list[BootSpec] = field(default_factory=list)
    processes: list[FakeProcess] = field(default_factory=list)
    channels: list[FakeChannel] = field(default_factory=list)

    def argv(self, spec: BootSpec) -> list[str]:
        return ["fake-vng", "--run", str(spec.kernel.vmlinuz)]

    def start(self, spec: BootSpec, console: ConsoleRecorder) -> FakeProcess:
        self.started.append(spec)
        proc = FakeProcess()
        self.processes.append(proc)

        script = self.attempt_consoles.pop(0) if self.attempt_consoles else self.console

        def play() -> None:
            for delay, text in script:
                time.sleep(delay)
                if proc.killed:
                    return
                console.write(text.encode())
            if self.exit_status is not None:
                proc.exit_status = self.exit_status

        threading.Thread(target=play, daemon=True).start()
        return proc

    def connect(
        self, spec: BootSpec, host_key_line: str, deadline: float, alive: Callable[[], bool]
    ) -> FakeChannel:
        chan = FakeChannel(self.processes[-1], dict(self.scripted), lose_after=self.lose_after)
        self.channels.append(chan)
        return chan


def run_args(**kw: object) -> RunRequest:
    """`kitl run`'s request: the parsed defaults, then `kw` (argparse's dests)."""
    parser = argparse.ArgumentParser()
    runner.add_arguments(parser)
    args = parser.parse_args([])
    for key, value in kw.items():
        setattr(args, key, value)
    return requests.run(args)


def fake_vm(tmp_path: Path, boot_timeout: float = 30) -> VM:
    """A VM over the fake launcher (the host plays the guest), for `with fake_vm(...) as vm`."""
    image = tmp_path / "vmlinuz"
    image.write_bytes(b"")
    kernel = Kernel(name="fake", release="6.1.0-fake", vmlinuz=image, modules=None)
    return VM(
        kernel,
        accel="tcg",
        console_path=tmp_path / "c.log",
        launcher=FakeLauncher(),
        boot_timeout=boot_timeout,
    )
