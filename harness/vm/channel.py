"""The guest channel: one persistent SSH connection (paramiko) per VM.

sshd runs inside the guest with a host key and an authorized key generated for this VM
only (files 0600 in a private state directory that is deleted with the VM).  The host
pins the guest's host key, connects only to 127.0.0.1, and every command carries a
timeout enforced twice: coreutils `timeout` in the guest kills the command, and the host
gives up shortly after if even that does not answer.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paramiko

from harness.errors import GuestLostError, GuestTimeoutError

# paramiko logs every refused early connection attempt with a traceback; the retry loop
# below is the expected path while the guest's sshd starts, so keep that quiet.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)

GUEST_TIMEOUT_GRACE = 5.0
TIMEOUT_STATUS = 124  # what coreutils timeout(1) returns when it had to kill


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    status: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == 0


class Channel(Protocol):
    """What the rest of kitl needs from a guest: run a command, move a file, close."""

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        stdin: bytes | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> CommandResult: ...

    def put(self, data: bytes, remote: str, mode: int = 0o644) -> None:
        """Write a file in the guest, its missing parent directories made first."""
        ...

    def start(self, argv: Sequence[str]) -> LineStream: ...

    def close(self) -> None: ...


class LineStream(Protocol):
    """A long-running guest process spoken to in lines (the guest agent)."""

    def send_line(self, line: str) -> None: ...

    def read_line(self, timeout: float) -> str: ...

    def stderr_text(self) -> str: ...

    def close(self) -> None: ...


class SshLineStream:
    def __init__(self, chan: paramiko.Channel, argv: Sequence[str]) -> None:
        self._chan = chan
        self._argv = shlex.join(argv)
        self._buffer = b""
        self._stderr = b""

    # The messages below do not repeat the argv (the agent's is long: an env prefix and
    # absolute paths); the caller names the process.
    def send_line(self, line: str) -> None:
        try:
            self._chan.sendall(line.encode() + b"\n")
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise GuestLostError(f"the connection broke ({type(exc).__name__} {exc})") from None

    def read_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            while self._chan.recv_stderr_ready():
                self._stderr += self._chan.recv_stderr(65536)
            if self._chan.recv_ready():
                data = self._chan.recv(65536)
                if not data:
                    raise GuestLostError("it closed its output")
                self._buffer += data
                continue
            if self._chan.closed or self._chan.exit_status_ready():
                status = self._chan.exit_status if self._chan.exit_status_ready() else -1
                said = self._stderr.decode(errors="replace").strip()[-500:]
                how = "the connection closed" if status == -1 else f"it exited with {status}"
                raise GuestLostError(f"{how}{': ' + said if said else ''}")
            if time.monotonic() > deadline:
                raise GuestTimeoutError(f"no answer within {timeout:g}s")
            time.sleep(0.002)
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", "replace")

    def stderr_text(self) -> str:
        while self._chan.recv_stderr_ready():
            self._stderr += self._chan.recv_stderr(65536)
        return self._stderr.decode("utf-8", "replace")

    def close(self) -> None:
        self._chan.close()


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public_line: str


def write_keys(state: Path) -> tuple[KeyPair, KeyPair]:
    """Generate the guest's host key and the host's client key into `state` (mode 0600).

    ECDSA P-256 because paramiko can generate it in-process in milliseconds."""

    def make(name: str) -> KeyPair:
        key = paramiko.ECDSAKey.generate(bits=256)
        path = state / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            key.write_private_key(f)
        return KeyPair(path, f"{key.get_name()} {key.get_base64()}")

    return make("ssh_host_ecdsa_key"), make("client_key")


def sshd_config(state: Path) -> str:
    return "\n".join(
        [
            "Port 22",
            "ListenAddress 0.0.0.0",
            f"HostKey {state / 'ssh_host_ecdsa_key'}",
            f"AuthorizedKeysFile {state / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",  # the state dir belongs to the host user, seen through 9p
            "UseDNS no",
            "PidFile /run/kitl-sshd.pid",
            "MaxSessions 64",
            "MaxStartups 64",
            "Subsystem sftp internal-sftp",
            "LogLevel ERROR",
            "",
        ]
    )


class SshChannel:
    def __init__(self, client: paramiko.SSHClient) -> None:
        self._client = client

    @classmethod
    def connect(
        cls,
        port: int,
        client_key: Path,
        host_key_line: str,
        *,
        deadline: float,
        alive: Callable[[], bool] = lambda: True,
    ) -> SshChannel:
        """Connect to 127.0.0.1:port, retrying until `deadline` (monotonic) while the VM
        is alive; only the pinned host key is accepted."""
        key = paramiko.ECDSAKey.from_private_key_file(str(client_key))
        kind, b64 = host_key_line.split(" ", 1)
        last_error = "never tried"
        while time.monotonic() < deadline and alive():
            client = paramiko.SSHClient()
            client.get_host_keys().add(
                f"[127.0.0.1]:{port}", kind, paramiko.ECDSAKey(data=_b64(b64))
            )
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                client.connect(
                    "127.0.0.1",
                    port=port,
                    username="root",
                    pkey=key,
                    timeout=5,
                    banner_timeout=10,
                    auth_timeout=10,
                    look_for_keys=False,
                    allow_agent=False,
                )
                transport = client.get_transport()
                assert transport is not None
                transport.set_keepalive(5)
                return cls(client)
            except (OSError, paramiko.SSHException, EOFError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                client.close()
                time.sleep(0.3)
        raise GuestLostError(f"SSH to the guest never became ready ({last_error})")

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        stdin: bytes | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> CommandResult:
        guarded = ["timeout", "-k", "2", f"{timeout:g}", *argv]
        started = time.monotonic()
        chan = self._exec(guarded)
        transport = chan.get_transport()
        try:
            if stdin is not None:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = io.BytesIO(), io.BytesIO()
            deadline = started + timeout + GUEST_TIMEOUT_GRACE
            chan.settimeout(0.2)
            while True:
                progressed = False
                while chan.recv_ready():
                    data = chan.recv(65536)
                    out.write(data)
                    progressed = True
                    if on_output:
                        on_output("stdout", data)
                while chan.recv_stderr_ready():
                    data = chan.recv_stderr(65536)
                    err.write(data)
                    progressed = True
                    if on_output:
                        on_output("stderr", data)
                if (
                    chan.exit_status_ready()
                    and not chan.recv_ready()
                    and not chan.recv_stderr_ready()
                ):
                    break
                if chan.closed and not transport.is_active():
                    raise GuestLostError("the guest went away while a command was running")
                if time.monotonic() > deadline:
                    chan.close()
                    raise GuestTimeoutError(
                        f"{shlex.join(argv)!s} did not finish within {timeout:g}s"
                    )
                if not progressed:
                    time.sleep(0.01)
            status = chan.recv_exit_status()
            chan.close()
            if status == -1:  # paramiko's "closed without an exit status": the guest went away
                raise GuestLostError(f"the guest went away during {shlex.join(argv)}")
            if status == TIMEOUT_STATUS and time.monotonic() - started >= timeout:
                raise GuestTimeoutError(f"{shlex.join(argv)} did not finish within {timeout:g}s")
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise GuestLostError(f"lost the guest during {shlex.join(argv)}: {exc}") from None
        return CommandResult(
            tuple(argv),
            status,
            out.getvalue().decode("utf-8", "replace"),
            err.getvalue().decode("utf-8", "replace"),
            time.monotonic() - started,
        )

    def start(self, argv: Sequence[str]) -> SshLineStream:
        return SshLineStream(self._exec(argv), argv)

    def _exec(self, argv: Sequence[str]) -> paramiko.Channel:
        """A new session on the one connection, running argv (quoted for the guest's sh)."""
        try:
            transport = self._client.get_transport()
            if transport is None or not transport.is_active():
                raise GuestLostError("the SSH connection to the guest is gone")
            chan = transport.open_session(timeout=10)
            chan.exec_command(shlex.join(argv))
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise GuestLostError(f"cannot start {shlex.join(argv)} in the guest: {exc}") from None
        return chan

    def put(self, data: bytes, remote: str, mode: int = 0o644) -> None:
        try:
            sftp = self._client.open_sftp()
            try:
                _make_parents(sftp, remote)
                with sftp.open(remote, "wb") as f:
                    f.write(data)
                sftp.chmod(remote, mode)
            finally:
                sftp.close()
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise GuestLostError(f"copying to {remote} in the guest failed: {exc}") from None

    def close(self) -> None:
        self._client.close()


def _b64(text: str) -> bytes:
    return base64.b64decode(text.strip())


def _make_parents(sftp: paramiko.SFTPClient, remote: str) -> None:
    missing = []
    for parent in Path(remote).parents:
        try:
            sftp.stat(str(parent))
            break
        except FileNotFoundError:
            missing.append(parent)
    for parent in reversed(missing):
        sftp.mkdir(str(parent))


def object_path_in_guest(path: Path, sha256: str) -> str:
    """Where a host object is copied in the guest's tmpfs (host paths created after boot
    may be invisible through the guest's overlay of /tmp): a directory per content (the
    hex SHA-256 of the file's bytes), the file keeping its name, because libbpf names the
    object, and so its .bss/.data/.rodata maps in logs and listings, after the file
    ("res_spin.bss", as the user's loader would have it, not "kitl_035.bss")."""
    return f"/run/kitl/{sha256[:16]}/{path.name}"
