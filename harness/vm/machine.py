"""Booting a kernel with virtme-ng and holding the guest for as long as it is needed.

The seam is `Launcher`: `VngLauncher` builds the vng argv (pure, shown by --dry-run) and
starts it; tests use a fake launcher with the same interface.  `VM` is the context
manager everything else uses: it prepares per-VM SSH keys, boots, waits for the guest's
ready line on the console, connects the SSH channel, and on exit kills the whole process
group and deletes the keys, whatever happened.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from harness import interrupts
from harness.errors import (
    BootError,
    BootStalledError,
    BootTimeoutError,
    GuestLostError,
    GuestTimeoutError,
    KernelCrashError,
    MissingToolError,
)
from harness.guest import INIT_SCRIPT
from harness.kernel.store import Kernel
from harness.vm import console as consolelog
from harness.vm import hostload
from harness.vm.channel import Channel, CommandResult, SshChannel, sshd_config, write_keys
from harness.vm.slots import Admission, GuestSlots

log = logging.getLogger(__name__)

# A boot is judged by its progress: while the console keeps growing the guest is alive,
# however slow a loaded host makes it; no new console output for BOOT_STALL seconds is a
# stuck boot.  BOOT_TIMEOUT is only the backstop (--boot-timeout sets it).  A TCG boot
# prints kernel messages every few seconds, then the guest's set-up takes seconds; under
# a CPU hog on both cores boots were slower but never came near 120 s of silence (no
# stall retry in tests/vm/test_host_faults.py).
BOOT_TIMEOUT = {"tcg": 900.0, "kvm": 300.0}
BOOT_STALL = {"tcg": 120.0, "kvm": 60.0}
_VM_NUMBERS = itertools.count(1)
GUEST_NET = "virtio-net-pci"


@dataclass(frozen=True)
class BootSpec:
    kernel: Kernel
    accel: str  # "kvm" | "tcg"
    ssh_port: int
    state_dir: Path  # per-VM keys and sshd_config; readable by the guest through its root view
    cpus: int = 2
    memory: str = "2G"
    rw_dirs: tuple[tuple[str, Path], ...] = ()  # (guest path, host path) writable by the guest
    append: tuple[str, ...] = ()
    verbose_console: bool = True  # kernel messages on the console: needed to see crashes
    # qemu -name and guest hostname: kitl-<pid>-<n> tells whose VM a qemu process is.
    name: str = "kitl"


class GuestProcess(Protocol):
    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def kill_tree(self) -> None: ...


class Launcher(Protocol):
    def argv(self, spec: BootSpec) -> list[str]: ...

    def start(self, spec: BootSpec, console: ConsoleRecorder) -> GuestProcess: ...

    def connect(
        self, spec: BootSpec, host_key_line: str, deadline: float, alive: Callable[[], bool]
    ) -> Channel: ...


class PopenGuest:
    """A launched vng process tree (vng → sh → virtme-run → qemu) in its own session."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc

    @property
    def pid(self) -> int:
        return self._proc.pid

    def poll(self) -> int | None:
        return self._proc.poll()

    def kill_tree(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        # qemu may outlive its parent shell for a moment; the group kill reaches it too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)


def _say(message: str) -> None:
    """A wait the user should see, whatever the log level: why nothing seems to happen."""
    print(f"kitl: {message}", file=sys.stderr, flush=True)


def _vng() -> str:
    here = Path(sys.executable).parent / "vng"
    found = str(here) if here.exists() else shutil.which("vng")
    if not found:
        raise MissingToolError("vng (virtme-ng)", "virtme-ng from PyPI (pip install kitl)")
    return found


class VngLauncher:
    """Boots through virtme-ng: the host root read-only, modules from the kernel cache."""

    def argv(self, spec: BootSpec) -> list[str]:
        kernel = spec.kernel
        net = (
            f"-device {GUEST_NET},netdev=kitl0 "
            # restrict=on: the guest reaches nothing outside; only the forward below exists.
            f"-netdev user,id=kitl0,restrict=on,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"
        )
        argv = [_vng(), "--run", str(kernel.vmlinuz)]
        if spec.accel == "tcg":
            argv.append("--disable-kvm")
        argv += ["--cpus", str(spec.cpus), "--memory", spec.memory, "--name", spec.name]
        if spec.verbose_console:
            argv.append("--verbose")
        for guest_path, host_path in spec.rw_dirs:
            argv += ["--rwdir", f"{guest_path}={host_path}"]
        for arg in (*kernel.cmdline, *spec.append):
            argv += ["--append", arg]
        argv += ["--exec", f"sh {INIT_SCRIPT} {spec.state_dir}"]
        argv.append(f"--qemu-opts={net}")  # "=" form: the value starts with a dash
        return argv

    def start(self, spec: BootSpec, console: ConsoleRecorder) -> GuestProcess:
        env = dict(os.environ)
        # vng runs virtme-run from PATH: make the one next to this interpreter win.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        if not shutil.which("qemu-system-x86_64", path=env["PATH"]):
            raise MissingToolError("qemu-system-x86_64", "qemu-system-x86")
        proc = subprocess.Popen(
            self.argv(spec),
            stdin=subprocess.DEVNULL,
            # A pipe, not the log file: virtme-ng's guest reopens /proc/self/fd/1, which on
            # a regular file would start a second write offset and overwrite the log.
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        assert proc.stdout is not None
        console.attach(proc.stdout)
        return PopenGuest(proc)

    def connect(
        self, spec: BootSpec, host_key_line: str, deadline: float, alive: Callable[[], bool]
    ) -> Channel:
        return SshChannel.connect(
            spec.ssh_port,
            spec.state_dir / "client_key",
            host_key_line,
            deadline=deadline,
            alive=alive,
        )


class ConsoleRecorder:
    """Copies a guest's console stream to its log file and keeps it for inspection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("wb")
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def attach(self, stream: IO[bytes]) -> None:
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._chunks.append(data)
            self._file.write(data)
            self._file.flush()

    def _pump(self, stream: IO[bytes]) -> None:
        while chunk := stream.read1(65536) if hasattr(stream, "read1") else stream.read(4096):
            self.write(chunk)

    def text(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode("utf-8", "replace")

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self._file.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class BootRecord:
    kernel: str
    release: str
    accel: str
    boot_seconds: float
    console: Path
    argv: list[str] = field(default_factory=list)
    retried: str = ""  # why the first boot attempt failed, when it did
    waited_s: float = 0.0  # for guest slots (harness.vm.slots), before the boot began


class VM:
    """One booted guest.  Use as a context manager; `run()` executes argv in the guest."""

    def __init__(
        self,
        kernel: Kernel,
        *,
        accel: str,
        console_path: Path,
        launcher: Launcher | None = None,
        boot_timeout: float | None = None,
        cpus: int = 2,
        memory: str = "2G",
        rw_dirs: Sequence[tuple[str, Path]] = (),
        append: Sequence[str] = (),
        slots: GuestSlots | None = None,
        stall_window: float | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.kernel = kernel
        self.accel = accel
        self.console_path = console_path
        self.launcher: Launcher = launcher or VngLauncher()
        self.boot_timeout = boot_timeout or BOOT_TIMEOUT[accel]
        self.stall_window = stall_window or BOOT_STALL[accel]
        # None: not counted against the host's guest slots (the test suite's idle pool)
        self.slots = slots
        self.on_wait = on_wait or _say  # how a wait for slots is told to the user
        self._admission: Admission | None = None
        self.cpus, self.memory = cpus, memory
        self.rw_dirs = tuple(rw_dirs)
        self.append = tuple(append)
        self._proc: GuestProcess | None = None
        self._channel: Channel | None = None
        self._state: Path | None = None
        self._console: ConsoleRecorder | None = None
        self._cpu_at_start: hostload.CpuTimes | None = None
        self.record: BootRecord | None = None
        self.ssh_port = 0
        self.host_key_line = ""

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> VM:
        try:
            self.boot()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spec(self, port: int, state: Path) -> BootSpec:
        return BootSpec(
            name=f"kitl-{os.getpid()}-{next(_VM_NUMBERS)}",
            kernel=self.kernel,
            accel=self.accel,
            ssh_port=port,
            state_dir=state,
            cpus=self.cpus,
            memory=self.memory,
            rw_dirs=self.rw_dirs,
            append=self.append,
        )

    def boot(self) -> BootRecord:
        """Boot (once admitted: see harness.vm.slots), retrying once on a fresh VM when the
        first attempt fails or stalls before the guest is ready.

        Under TCG a guest kernel occasionally dies while live-patching its own text at boot
        (seen on 7.2: "Oops: int3" in ktime_get as the TSC clocksource is switched in, a
        cross-vCPU code-modification race in the emulator), and a guest starved by a
        loaded host can stall.  Those are the host's, not the kernel under test's, so one
        fresh boot is tried; the failed attempt's console is kept next to the log as
        <log>.attempt1 and named in `record.retried`.  A boot that kept progressing until
        the backstop is not retried: a second one on the same host would be as slow."""
        if self.slots is not None and self._admission is None:
            self._admission = self.slots.admit(self.cpus, self.kernel.name, on_wait=self.on_wait)
        waited = self._admission.waited_s if self._admission is not None else 0.0
        try:
            record = self._boot_once()
        except BootTimeoutError:
            raise
        except (BootError, KernelCrashError) as first:
            self._teardown(keep_slots=True)
            kept = self.console_path.with_name(self.console_path.name + ".attempt1")
            if self.console_path.exists():
                self.console_path.replace(kept)
            log.info("%s: boot attempt 1 failed (%s); booting a fresh VM", self.kernel.name, first)
            record = self._boot_once()
            record.retried = f"{first} (console: {kept})"
        record.waited_s = waited
        return record

    def _boot_once(self) -> BootRecord:
        self._state = Path(tempfile.mkdtemp(prefix="kitl-vm-"))
        os.chmod(self._state, 0o700)
        host_key, client_key = write_keys(self._state)
        (self._state / "authorized_keys").write_text(
            client_key.public_line + "\n", encoding="utf-8"
        )
        (self._state / "sshd_config").write_text(sshd_config(self._state), encoding="utf-8")
        spec = self.spec(free_port(), self._state)
        self.ssh_port, self.host_key_line = spec.ssh_port, host_key.public_line
        self._console = ConsoleRecorder(self.console_path)
        started = time.monotonic()
        self._cpu_at_start = hostload.cpu_times()
        self._proc = self.launcher.start(spec, self._console)
        deadline = started + self.boot_timeout
        release = self._wait_ready(deadline)
        proc = self._proc
        try:
            self._channel = self.launcher.connect(
                spec, host_key.public_line, deadline, lambda: proc.poll() is None
            )
            # First command proves the channel end to end; its return completes "ready".
            first = self._channel.run(["true"], timeout=30)
        except (GuestLostError, GuestTimeoutError) as exc:
            self.check_crash_after_failure()
            raise BootError(f"{self.kernel.name}: {exc}") from None
        if not first.ok:
            raise BootError(f"{self.kernel.name}: the guest shell does not work ({first.stderr})")
        self.record = BootRecord(
            kernel=self.kernel.name,
            release=release,
            accel=self.accel,
            boot_seconds=time.monotonic() - started,
            console=self.console_path,
            argv=self.launcher.argv(spec),
        )
        return self.record

    def console_text(self) -> str:
        """Everything the guest printed on its console (kept after the VM is gone)."""
        return self._console.text() if self._console is not None else ""

    def _wait_ready(self, deadline: float) -> str:
        assert self._proc is not None
        seen, progressed = -1, time.monotonic()
        while True:
            text = self.console_text()
            release = consolelog.ready_release(text)
            if release:
                return release
            self._raise_if_crashed(text)
            failure = consolelog.init_failure(text)
            if failure:
                raise BootError(f"{self.kernel.name}: guest set-up failed: {failure}")
            status = self._proc.poll()
            if status is not None:
                tail = " | ".join(text.strip().splitlines()[-3:]) or "no console output"
                raise BootError(
                    f"{self.kernel.name}: the VM exited with status {status} before it was "
                    f"ready: {tail[-400:]}",
                    hint=f"full console log: {self.console_path}",
                )
            now = time.monotonic()
            if len(text) != seen:
                seen, progressed = len(text), now
            elif now - progressed > self.stall_window:
                raise BootStalledError(
                    f"{self.kernel.name}: boot stalled: no console output for "
                    f"{self.stall_window:.0f}s ({self.accel}; {self._host_verdict()})",
                    hint=f"console log: {self.console_path}",
                )
            if now > deadline:
                raise BootTimeoutError(
                    f"{self.kernel.name}: boot timed out after {self.boot_timeout:.0f}s; the "
                    f"console last advanced {now - progressed:.0f}s before "
                    f"({self.accel}; {self._host_verdict()})",
                    hint=f"console log: {self.console_path}; raise --boot-timeout on slow hosts",
                )
            time.sleep(0.1)

    def _host_verdict(self) -> str:
        return hostload.snapshot(since=self._cpu_at_start).verdict()

    def _raise_if_crashed(self, text: str) -> None:
        splat = consolelog.first_crash(text)
        if splat is not None and splat.fatal:
            raise KernelCrashError(
                f"{self.kernel.name}: kernel crash: {splat.title} "
                f"(fingerprint {splat.fingerprint}: {' < '.join(splat.site) or 'no call trace'})",
                splat_text=splat.text,
                fingerprint=splat.fingerprint,
                signature=splat.signature,
            )

    def close(self) -> None:
        self._teardown()

    def kill(self) -> None:
        """Kill the guest's processes now, from any thread (the cell watchdog): every wait
        on the guest then fails at once; the VM is torn down by its owner as usual."""
        proc = self._proc
        if proc is not None:
            proc.kill_tree()

    def _teardown(self, *, keep_slots: bool = False) -> None:
        # held signals: a process group killed half-way would leave its qemu behind
        with interrupts.shielded():
            self._teardown_now()
            if self._admission is not None and not keep_slots:
                self._admission.release()
                self._admission = None

    def _teardown_now(self) -> None:
        # the guest first: closing SSH to a frozen guest could wait on it
        if self._proc is not None:
            self._proc.kill_tree()
            self._proc = None
        if self._channel is not None:
            with contextlib.suppress(Exception):
                self._channel.close()
            self._channel = None
        if self._console is not None:
            self._console.close()
            # keep the recorder's text readable after close; only the file handle goes
        if self._state is not None:
            shutil.rmtree(self._state, ignore_errors=True)  # the per-VM keys go with it
            self._state = None

    def release_slots(self) -> None:
        """Give the guest's slots back while it stays up: a warm guest between uses, whose
        idle vCPUs cost the host next to nothing (its daemon takes slots for each use)."""
        if self._admission is not None:
            self._admission.release()
            self._admission = None

    @property
    def guest_pid(self) -> int:
        """The launched process (for vng, its process group's leader); 0 when down."""
        return self._proc.pid if self._proc is not None else 0

    # -- use -----------------------------------------------------------------------------
    @property
    def channel(self) -> Channel:
        if self._channel is None:
            raise GuestLostError(f"{self.kernel.name}: the VM is not running")
        return self._channel

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        stdin: bytes | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> CommandResult:
        """Run argv in the guest.  A crash or lost VM becomes a typed error naming it."""
        try:
            return self.channel.run(argv, timeout=timeout, stdin=stdin, on_output=on_output)
        except (GuestLostError, GuestTimeoutError):
            self.check_crash_after_failure()
            raise

    def usable(self) -> bool:
        """Whether the guest is still running and its console shows no fatal crash: a
        long-lived guest shared by several users is replaced when this turns false."""
        if self._proc is None or self._proc.poll() is not None or self._channel is None:
            return False
        splat = consolelog.first_crash(self.console_text())
        return splat is None or not splat.fatal

    def check_crash_after_failure(self) -> None:
        """Raise KernelCrashError if the console shows the guest died of a kernel crash;
        callers use it to tell a crash from a lost channel after any guest failure."""
        # The console may lag the failure by a moment: give the panic text time to land.
        for _ in range(20):
            self._raise_if_crashed(self.console_text())
            if self._proc is None or self._proc.poll() is not None:
                break
            time.sleep(0.1)
        self._raise_if_crashed(self.console_text())

    def ssh_command(self) -> list[str]:
        """An OpenSSH client command line for an interactive shell in this guest."""
        assert self._state is not None
        assert self.record is not None
        known = self._state / "known_hosts"
        port = str(self.ssh_port)
        known.write_text(f"[127.0.0.1]:{port} {self.host_key_line}\n", encoding="utf-8")
        return [
            "ssh",
            "-q",
            "-t",
            "-i",
            str(self._state / "client_key"),
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-p",
            port,
            "root@127.0.0.1",
        ]


@dataclass(frozen=True)
class GuestSettings:
    """How guests are booted, the same for whoever asks (the CLI's boot, exec and shell,
    the pytest plugin's matrix, its fixtures, kitl repro): the one place that makes VMs."""

    accel: str
    boot_timeout: float | None = None
    cpus: int = 2
    memory: str = "2G"
    slots: GuestSlots | None = None  # None: not counted against the host's guest slots
    on_wait: Callable[[str], None] | None = None
    launcher: Launcher | None = None  # None: virtme-ng

    def vm(self, kernel: Kernel, console: Path) -> VM:
        return VM(
            kernel,
            accel=self.accel,
            console_path=console,
            launcher=self.launcher,
            boot_timeout=self.boot_timeout,
            cpus=self.cpus,
            memory=self.memory,
            slots=self.slots,
            on_wait=self.on_wait,
        )
