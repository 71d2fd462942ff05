"""Using a warm guest (`kitl up`): a lease on it, and a `VM` made of that lease.

`guest_factory` is what every command gets its guests from (the matrix's workers, `kitl
exec`, `kitl repro`): a warm guest of the kernel when one is up, fits (harness.vm.warm:
`WarmRecord.mismatch`) and is free and healthy; otherwise a boot as before, said in one
line when a warm guest was there but could not be used.

A warm guest is a `VM` like any other (`WarmVM`): its launcher (`WarmLauncher`) takes
the guest's console from the daemon instead of starting QEMU, and its channel
(`UnixChannel`) sends commands, file copies and agent lines to the daemon, which holds the
SSH connection and the agents.  So the engine, the agent client and the watchdog run
unchanged; the lease ends when the VM is closed, and the daemon then puts the guest back.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.errors import GuestLostError, GuestTimeoutError, KitlError, UsageError
from harness.kernel.store import Kernel
from harness.vm import warm
from harness.vm.channel import GUEST_TIMEOUT_GRACE, CommandResult
from harness.vm.machine import VM, BootSpec, ConsoleRecorder, GuestSettings
from harness.vm.warm import WarmRecord, Wire

log = logging.getLogger(__name__)
LEASE_TIMEOUT = 60.0  # the daemon's answer to a lease: a health check and a short reset
OPEN_TIMEOUT = 30.0  # to a stream's or console's first answer


class LeaseError(KitlError):
    """The warm guest cannot be used now (in use, replacing, not healthy)."""


def _say(message: str) -> None:
    print(f"kitl: {message}", file=sys.stderr, flush=True)


class WarmLease:
    """One use of a warm guest: held while the connection is open."""

    def __init__(self, record: WarmRecord, wire: Wire, granted: dict[str, Any]) -> None:
        self.record, self.wire = record, wire
        self.token = str(granted["token"])
        self.argv = [str(a) for a in granted.get("argv", [])]
        self.uses_before = int(granted.get("uses", 0))
        self._lock = threading.Lock()
        self.ended = False
        self.console_size = 0  # of the console as the daemon had it when it was opened

    @classmethod
    def take(cls, record: WarmRecord) -> WarmLease:
        try:
            wire = warm.connect(Path(record.socket))
        except OSError as exc:
            raise LeaseError(f"not answering ({exc.strerror or exc})") from None
        try:
            wire.send({"op": "lease", "pid": os.getpid()})
            answer = wire.recv(LEASE_TIMEOUT)
        except (OSError, ValueError) as exc:
            wire.close()
            raise LeaseError(f"not answering ({exc})") from None
        if answer is None or not answer.get("ok"):
            wire.close()
            raise LeaseError(str((answer or {}).get("error", "gone")))
        return cls(record, wire, answer)

    def open(self, op: str, **fields: Any) -> Wire:
        """A connection of this lease's (an agent stream, the console), answered."""
        try:
            wire = warm.connect(Path(self.record.socket))
            wire.send({"op": op, "token": self.token, **fields})
            answer = wire.recv(OPEN_TIMEOUT)
        except (OSError, ValueError) as exc:
            raise GuestLostError(f"the warm guest's daemon: {exc}") from None
        if answer is None or not answer.get("ok"):
            wire.close()
            raise GuestLostError(f"{op}: {(answer or {}).get('error', 'no answer')}")
        if "size" in answer:
            self.console_size = int(answer["size"])
        return wire

    def request(
        self,
        message: dict[str, Any],
        timeout: float,
        on_out: Callable[[str, bytes], None] | None = None,
    ) -> dict[str, Any]:
        """A command or a file copy, done by the daemon in the guest; its answer."""
        with self._lock:
            try:
                self.wire.send(message)
                while (answer := self.wire.recv(timeout)) is not None and "out" in answer:
                    if on_out is not None:
                        on_out(str(answer["out"]), base64.b64decode(answer["data"]))
            except TimeoutError:
                raise GuestTimeoutError(f"{message['op']}: no answer in {timeout:g}s") from None
            except (OSError, ValueError) as exc:
                raise GuestLostError(f"the warm guest's daemon: {exc}") from None
        if answer is None:
            raise GuestLostError("the warm guest's daemon ended the lease")
        if not answer.get("ok"):
            error = f"{message['op']}: {answer.get('error')}"
            raise (GuestTimeoutError if answer.get("kind") == "timeout" else GuestLostError)(error)
        return answer

    def served(self, cells: int) -> None:
        """Count cells run in the guest (the record's `cells`, `kitl ps` shows it)."""
        with self._lock, contextlib.suppress(OSError):
            self.wire.send({"op": "served", "cells": cells})

    def kill(self) -> None:
        """The watchdog's kill: the daemon kills the guest (and replaces it)."""
        with contextlib.suppress(KitlError, OSError):
            self.open("kill").close()
        self.end()

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.wire.close()


class UnixLineStream:
    """An agent's lines, through the daemon (it keeps the agent running between uses)."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    def send_line(self, line: str) -> None:
        try:
            self.wire.send_raw(line.encode())
        except OSError as exc:
            raise GuestLostError(f"the connection broke ({exc})") from None

    def read_line(self, timeout: float) -> str:
        try:
            line = self.wire.line(timeout)
        except TimeoutError:
            raise GuestTimeoutError(f"no answer within {timeout:g}s") from None
        except OSError as exc:
            raise GuestLostError(f"the connection broke ({exc})") from None
        if line is None:
            raise GuestLostError("the connection closed")
        return line.decode("utf-8", "replace")

    def stderr_text(self) -> str:
        return ""  # the agent's stderr stays with the daemon (its log)

    def close(self) -> None:
        self.wire.close()


class UnixChannel:
    """The Channel of a warm guest: every call goes through the lease."""

    def __init__(self, lease: WarmLease) -> None:
        self.lease = lease

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        stdin: bytes | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> CommandResult:
        message = {
            "op": "run",
            "argv": list(argv),
            "timeout": timeout,
            "stdin": base64.b64encode(stdin).decode() if stdin is not None else None,
            "live": on_output is not None,
        }
        answer = self.lease.request(message, timeout + GUEST_TIMEOUT_GRACE + 10, on_output)
        return CommandResult(
            tuple(argv),
            int(answer["status"]),
            str(answer["stdout"]),
            str(answer["stderr"]),
            float(answer["seconds"]),
        )

    def put(self, data: bytes, remote: str, mode: int = 0o644) -> None:
        message = {"op": "put", "remote": remote, "mode": mode}
        self.lease.request({**message, "data": base64.b64encode(data).decode()}, 120.0)

    def start(self, argv: Sequence[str]) -> UnixLineStream:
        return UnixLineStream(self.lease.open("stream", argv=list(argv)))

    def close(self) -> None:
        pass  # the lease ends with the guest process (LeasedGuest.kill_tree)


class LeasedGuest:
    """The GuestProcess of a warm guest: alive while the daemon streams its console."""

    def __init__(self, lease: WarmLease, console: Wire, recorder: ConsoleRecorder) -> None:
        self.lease, self._console, self._recorder = lease, console, recorder
        self._ended = threading.Event()
        # the console up to now, before anything waits on it: the ready line is in it
        recorder.write(console.exactly(lease.console_size, OPEN_TIMEOUT))
        self._thread = threading.Thread(target=self._pump, daemon=True, name="warm-console")
        self._thread.start()

    @property
    def pid(self) -> int:
        return self.lease.record.pid

    def _pump(self) -> None:
        try:
            while data := self._console.some():
                self._recorder.write(data)
        except (OSError, ValueError):
            pass  # closed under it: the lease ended
        finally:
            self._ended.set()

    def poll(self) -> int | None:
        return 0 if self._ended.is_set() else None

    def kill_tree(self) -> None:
        """This use is over: the lease ends and the daemon puts the guest back."""
        self.lease.end()
        self._ended.wait(2.0)  # the console's last bytes, before its recorder closes
        self._console.close()


class WarmLauncher:
    """A launcher that starts nothing: the guest is up, its console comes from the
    daemon (from its boot on, so the ready line is there at once)."""

    def __init__(self, lease: WarmLease) -> None:
        self.lease = lease

    def argv(self, spec: BootSpec) -> list[str]:
        return list(self.lease.argv)

    def start(self, spec: BootSpec, console: ConsoleRecorder) -> LeasedGuest:
        wire = self.lease.open("console")
        return LeasedGuest(self.lease, wire, console)

    def connect(
        self, spec: BootSpec, host_key_line: str, deadline: float, alive: Callable[[], bool]
    ) -> UnixChannel:
        return UnixChannel(self.lease)


class WarmVM(VM):
    """A VM over a warm guest's lease (booted when made: see warm_vm)."""

    def __init__(self, kernel: Kernel, console: Path, lease: WarmLease, cpus: int) -> None:
        super().__init__(
            kernel,
            accel=lease.record.accel,
            console_path=console,
            launcher=WarmLauncher(lease),
            cpus=cpus,
            slots=None,  # the daemon holds them while the lease lasts
        )
        self.lease = lease

    def __enter__(self) -> WarmVM:
        if self.record is None:
            super().__enter__()
        return self

    def kill(self) -> None:
        self.lease.kill()
        super().kill()

    def served(self, cells: int = 1) -> None:
        self.lease.served(cells)

    def describe(self) -> str:
        """ "warm guest (pid 123, up 5m12s, 3 uses before)" """
        up = int(self.lease.record.uptime())
        return (
            f"warm guest (pid {self.lease.record.pid}, up {up // 60}m{up % 60:02d}s, "
            f"{self.lease.uses_before} uses before)"
        )

    def ssh_command(self) -> list[str]:
        raise UsageError("a warm guest has no shell of its own here: use --no-warm")


def warm_vm(
    settings: GuestSettings, kernel: Kernel, console: Path, directory: Path | None = None
) -> WarmVM | None:
    """The warm guest of `kernel`, leased and ready, or None (and why, said or logged)."""
    say = settings.on_wait or _say
    try:
        directory = directory or warm.warm_dir()
    except UsageError as exc:
        log.info("no warm guests: %s", exc)
        return None
    record = warm.read_record(warm.Paths(directory, kernel.name).record)
    if record is None:
        log.info("%s: no warm guest up; booting", kernel.name)
        return None
    if not record.alive():
        warm.remove_files(warm.Paths(directory, kernel.name))
        say(f"{kernel.name}: its warm guest is gone (daemon pid {record.pid}); booting one")
        return None
    why = record.mismatch(kernel, settings.accel)
    if why:
        say(f"{kernel.name}: the warm guest (pid {record.pid}) does not fit: {why}; booting one")
        return None
    try:
        lease = WarmLease.take(record)
    except LeaseError as exc:
        say(f"{kernel.name}: the warm guest (pid {record.pid}) is {exc}; booting one")
        return None
    vm = WarmVM(kernel, console, lease, settings.cpus)
    try:
        vm.__enter__()
    except KitlError as exc:
        say(f"{kernel.name}: the warm guest (pid {record.pid}) failed: {exc}; booting one")
        return None
    log.info("%s: using the %s", kernel.name, vm.describe())
    return vm


def guest_factory(
    settings: GuestSettings, *, use_warm: bool = True, directory: Path | None = None
) -> Callable[[Kernel, Path], VM]:
    """Guests of a command: a warm one where it can (see warm_vm), else booted."""

    def make(kernel: Kernel, console: Path) -> VM:
        # a launcher given is the tests' own: their guests are not the user's warm ones
        if use_warm and (settings.launcher is None or directory is not None):
            vm = warm_vm(settings, kernel, console, directory)
            if vm is not None:
                return vm
        return settings.vm(kernel, console)

    return make
