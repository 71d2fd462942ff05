"""Warm guests (`kitl up`): what the daemon and its clients share.

A warm guest is a VM booted by a detached daemon (harness.vm.warmd) and held, with its
guest agents, until `kitl down`.  Everything about it lives in one private directory
(`warm_dir`, mode 0700, owned by the user): per kernel a record (`NAME.json`, written
atomically, mode 0600), the daemon's Unix socket (`NAME.sock`, mode 0600), its log and the
guest's console.  A client reaches the guest only through the socket, so only the user who
started it (and root) can: the directory's mode keeps everyone else from even naming the
socket, the socket's mode from connecting, and the daemon checks the peer's uid as well
(SO_PEERCRED).

The client side (leases, the launcher that makes a `VM` of a warm guest) is in
harness.vm.warmclient.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import socket
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.kernel.cache import Cache
from harness.kernel.store import Kernel

log = logging.getLogger(__name__)

WARM_ENV = "KITL_WARM_DIR"  # where warm guests live (default: see warm_dir)
DAEMON_MODULE = "harness.vm.warmd"
SOCKET_MAX = 100  # AF_UNIX paths are at most 107 bytes on Linux
# the record's states, as `kitl ps` shows them
BOOTING, IDLE, IN_USE, RESETTING, REPLACING, FAILED, STOPPING = (
    "booting", "idle", "in use", "resetting", "replacing", "failed", "stopping",
)  # fmt: skip


def warm_dir(cache: Cache | None = None) -> Path:
    """The private directory of this user's warm guests, created 0700 when missing.

    $KITL_WARM_DIR, else $XDG_RUNTIME_DIR/kitl-warm (per user, on tmpfs, gone at logout),
    else <cache>/warm.  Not platformdirs' runtime fallback /tmp/runtime-UID: another user
    could create that name first.  A directory another user owns, or that others may
    enter, is refused rather than fixed."""
    env = os.environ.get(WARM_ENV, "").strip()
    runtime = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    if env:
        path = Path(env)
    elif runtime and Path(runtime).is_dir():
        path = Path(runtime) / "kitl-warm"
    else:
        path = (cache or Cache.default()).root / "warm"
    return private_dir(path)


def private_dir(path: Path) -> Path:
    """`path` as a directory only this user can enter: created 0700, or checked."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{path}: warm guests' directory is not a directory (a symlink?)")
    if info.st_uid != os.getuid():
        raise UsageError(
            f"{path}: warm guests' directory belongs to uid {info.st_uid}, not to you",
            hint=f"set {WARM_ENV} to a directory of your own",
        )
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)  # ours: make it private before anything goes in
    return path.resolve()


def file_name(kernel: str) -> str:
    """A kernel's name as a file name: kept when it is plain, else cleaned and hashed."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]", "_", kernel).lstrip(".") or "_"
    if cleaned == kernel and len(kernel) <= 40:
        return kernel
    return f"{cleaned[:29]}-{hashlib.sha256(kernel.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class Paths:
    """The files of one warm guest in the warm directory."""

    directory: Path
    kernel: str

    def _file(self, suffix: str) -> Path:
        return self.directory / f"{file_name(self.kernel)}{suffix}"

    @property
    def record(self) -> Path:
        return self._file(".json")

    @property
    def socket(self) -> Path:
        return self._file(".sock")

    @property
    def log(self) -> Path:
        return self._file(".log")

    @property
    def console(self) -> Path:
        return self._file(".console.log")

    @property
    def spec(self) -> Path:
        return self._file(".spec.json")

    def check_socket_length(self) -> None:
        if len(str(self.socket)) > SOCKET_MAX:
            raise UsageError(
                f"{self.socket}: too long a path for a Unix socket",
                hint=f"set {WARM_ENV} to a shorter directory",
            )


def host_arch() -> str:
    return platform.machine()


@dataclass(frozen=True)
class WarmRecord:
    """What a warm guest's daemon publishes: what it booted, how to reach it, its state."""

    kernel: str
    release: str
    digest: str  # of the image (what `kitl run` records as kernel_digest)
    vmlinuz: str
    cmdline: tuple[str, ...]
    arch: str
    accel: str
    cpus: int
    memory: str
    pid: int  # the daemon's
    started: float  # time.time() when the daemon started
    socket: str
    console: str
    log: str
    state: str = BOOTING
    guest_pid: int = 0  # the vng process group of the VM (kitl down's last resort)
    ready_s: float = 0.0  # boot-to-ready of the first boot
    boots: int = 0
    uses: int = 0
    cells: int = 0  # cells served (as the clients counted them)
    user: int = 0  # the pid of the kitl process using it now
    loaders: tuple[str, ...] = ()  # the agents running in the guest, by their libbpf
    reason: str = ""  # a failed one's
    replaced: str = ""  # why the guest was last replaced by a fresh boot

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WarmRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("cmdline", "loaders"):
            values[name] = tuple(values.get(name, ()))
        return cls(**values)

    def write(self, path: Path) -> None:
        """Atomically (a reader sees the old record or the new one, never half)."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp's mode: 0600
                json.dump(self.to_json(), f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def with_(self, **changes: Any) -> WarmRecord:
        return replace(self, **changes)

    def alive(self) -> bool:
        return daemon_alive(self.pid)

    def uptime(self, now: float | None = None) -> float:
        return (now if now is not None else time.time()) - self.started

    def mismatch(self, kernel: Kernel, accel: str) -> str:
        """Why a command's kernel and accelerator cannot use this guest ("" when it can):
        the same kernel name, release, image and boot command line, the host's arch, the
        same accelerator."""
        wanted = {
            "kernel": kernel.name,
            "release": kernel.release,
            "digest": kernel.digest,
            "vmlinuz": str(kernel.vmlinuz),
            "cmdline": tuple(kernel.cmdline),
            "arch": host_arch(),
            "accel": accel,
        }
        for key, value in wanted.items():
            have = getattr(self, key)
            if have != value:
                return f"its {key} is {have!r}, not {value!r}"
        return ""


def daemon_alive(pid: int) -> bool:
    """Whether `pid` is a live warm-guest daemon (not a process that reused the number)."""
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return DAEMON_MODULE.encode() in cmdline


def read_record(path: Path) -> WarmRecord | None:
    """A record, None when it is gone or unreadable (a daemon writing its first one)."""
    try:
        return WarmRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def records(directory: Path) -> list[WarmRecord]:
    """Every record of the directory, by kernel name."""
    paths = [p for p in sorted(directory.glob("*.json")) if not p.name.endswith(".spec.json")]
    return [r for p in paths if (r := read_record(p)) is not None]


def remove_files(paths: Paths) -> None:
    for path in (paths.record, paths.socket, paths.spec):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale(directory: Path) -> list[WarmRecord]:
    """Remove the records (and sockets) of daemons that are gone; those records."""
    stale = []
    for record in records(directory):
        if not record.alive():
            log.info("%s: its daemon (pid %d) is gone: record removed", record.kernel, record.pid)
            remove_files(Paths(directory, record.kernel))
            stale.append(record)
    return stale


def find(directory: Path, kernel: str) -> WarmRecord | None:
    """The live record of a kernel's warm guest, if one is up."""
    record = read_record(Paths(directory, kernel).record)
    if record is None or record.kernel != kernel:
        return None
    return record if record.alive() else None


# --- what the daemon is asked to boot (written by kitl up, read by the daemon) ---------


def kernel_to_json(kernel: Kernel) -> dict[str, Any]:
    """What a daemon needs of a kernel to boot it as a run would (not its .config)."""
    return {
        "name": kernel.name,
        "release": kernel.release,
        "vmlinuz": str(kernel.vmlinuz),
        "modules": str(kernel.modules) if kernel.modules else None,
        "version": kernel.version,
        "digest": kernel.digest,
        "cmdline": list(kernel.cmdline),
    }


def kernel_from_json(data: Mapping[str, Any]) -> Kernel:
    modules = data.get("modules")
    return Kernel(
        name=str(data["name"]),
        release=str(data["release"]),
        vmlinuz=Path(data["vmlinuz"]),
        modules=Path(modules) if modules else None,
        version=str(data.get("version", "")),
        digest=str(data.get("digest", "")),
        cmdline=tuple(data.get("cmdline", ())),
    )


@dataclass(frozen=True)
class DaemonSpec:
    """How a daemon boots its guest: what `kitl up` was asked, resolved."""

    kernel: dict[str, Any]  # kernel_to_json
    accel: str
    cpus: int = 2
    memory: str = "2G"
    boot_timeout: float | None = None
    # the agents to start at boot, by the libbpf.so they load ("" the system's): the argv
    # a client then asks for is the same, so its first cell finds the agent warm
    libbpfs: tuple[str, ...] = ("",)
    launcher: str = ""  # "module:factory" of a Launcher (the tests' fake); "" virtme-ng
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=1)

    @classmethod
    def read(cls, path: Path) -> DaemonSpec:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["libbpfs"] = tuple(data.get("libbpfs", ("",)))
        return cls(**data)


# --- the daemon's wire: JSON lines over the Unix socket ------------------------------------


class Wire:
    """One connection to or from a daemon: JSON lines (agent lines pass through raw)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def send(self, message: Mapping[str, Any]) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def send_raw(self, line: bytes) -> None:
        self.sock.sendall(line.rstrip(b"\n") + b"\n")

    def line(self, timeout: float | None = None) -> bytes | None:
        """The next line; None at the end of the stream; TimeoutError after `timeout`."""
        while b"\n" not in self._buffer:
            self.sock.settimeout(timeout)
            data = self.sock.recv(65536)
            if not data:
                return None
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message; None at the end; a line that is not an object is an error."""
        line = self.line(timeout)
        if line is None:
            return None
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError(f"not a message: {line[:80]!r}")
        return message

    def exactly(self, size: int, timeout: float | None = None) -> bytes:
        """`size` bytes (what is buffered first); fewer when the stream ends."""
        while len(self._buffer) < size:
            self.sock.settimeout(timeout)
            data = self.sock.recv(max(65536, size - len(self._buffer)))
            if not data:
                break
            self._buffer += data
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def some(self) -> bytes:
        """What is buffered, else what comes next (blocking); b"" at the end."""
        if self._buffer:
            out, self._buffer = self._buffer, b""
            return out
        self.sock.settimeout(None)
        return self.sock.recv(65536)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def connect(path: Path, timeout: float = 5.0) -> Wire:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return Wire(sock)
