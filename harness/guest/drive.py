"""Guest side: what a case drives through its program, done by the agent itself.

`traffic` sends real packets from one netns to another and counts what arrives; `syscall`
performs one built-in action (open, unlink, connect, execve) so the errno comes back as the
kernel gave it; `command` runs an argv.  Each runs in the case's netns and, when the program
is attached to a cgroup, inside that cgroup, so the program sees it.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.guest.protocol import Syscall, Traffic
from harness.guest.replies import ErrorKind, GuestError, RunReply, SyscallReply, TrafficReply
from harness.guest.topology import in_netns, run_command

CGROUP_ROOT = Path("/sys/fs/cgroup")
SO_ATTACH_BPF = 50  # asm-generic/socket.h; Python's socket module does not name it


def cgroup_procs(cgroup: str) -> Path:
    """cgroup.procs of a cgroup given relative to the cgroup2 root (no escaping it)."""
    path = (CGROUP_ROOT / cgroup.strip("/")).resolve()
    if path != CGROUP_ROOT and CGROUP_ROOT not in path.parents:
        raise GuestError(f"cgroup {cgroup!r} is outside {CGROUP_ROOT}", ErrorKind.PROTOCOL)
    return path / "cgroup.procs"


def join_cgroup(procs: Path) -> None:
    """Move the calling process (all its threads) into the cgroup of `procs`."""
    fd = os.open(procs, os.O_WRONLY)
    try:
        os.write(fd, b"0")  # 0: the writing process
    finally:
        os.close(fd)


@contextmanager
def in_cgroup(cgroup: str | None) -> Iterator[None]:
    """Run this process in cgroup `cgroup` (None: stay) and move it back.

    Sockets remember the cgroup of the task that created them, so sockets created inside
    this block are seen by the cgroup's BPF programs (cgroup_skb, sock_addr) afterwards."""
    if not cgroup:
        yield
        return
    procs = cgroup_procs(cgroup)
    own = "/"
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            own = line[3:]
    try:
        join_cgroup(procs)
    except OSError as exc:
        raise GuestError(f"joining cgroup {cgroup}: {exc.strerror}", ErrorKind.SETUP) from None
    try:
        yield
    finally:
        join_cgroup(cgroup_procs(own))


def command(argv: list[str], *, ns: str | None, cgroup: str | None, timeout: float) -> RunReply:
    """Run argv in `ns`; the child joins `cgroup` before it executes."""
    procs = cgroup_procs(cgroup) if cgroup else None
    started = time.monotonic()
    with in_netns(ns):
        proc = run_command(
            argv, timeout=timeout, before_exec=(lambda: join_cgroup(procs)) if procs else None
        )
    return RunReply(
        status=proc.returncode,
        stdout=proc.stdout[-65536:],
        stderr=proc.stderr[-65536:],
        seconds=time.monotonic() - started,
    )


def attach_socket_filter(sock: socket.socket, prog_fd: int, program: str) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, prog_fd)
    except OSError as exc:
        sock.close()
        raise GuestError(f"SO_ATTACH_BPF of {program}: {exc.strerror}", ErrorKind.ATTACH) from None


def traffic(req: Traffic, socket_filter: tuple[int, str] | None = None) -> TrafficReply:
    """Send `count` packets from netns `from` to `to`, count what arrives in `to_ns`.
    `socket_filter` (prog fd, name) is attached to the receiving socket."""
    proto = req.proto
    count, size = int(req.count), int(req.size)
    to = (str(req.to), int(req.port))
    wait = float(req.wait)
    cgroup = req.cgroup
    if proto == "icmp":
        return _ping(req.from_ns, to[0], count, size, wait, cgroup=cgroup)
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with in_cgroup(cgroup):  # both sockets belong to the case's cgroup, if it has one
        with in_netns(req.to_ns):
            receiver = socket.socket(socket.AF_INET, kind)
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if socket_filter is not None:
                attach_socket_filter(receiver, *socket_filter)
            receiver.bind(to)
        with in_netns(req.from_ns):
            sender = socket.socket(socket.AF_INET, kind)
    try:
        if proto == "udp":
            return _udp_exchange(sender, receiver, to, count=count, size=size, wait=wait)
        return _tcp_connect(sender, receiver, to, count=count, wait=wait)
    finally:
        sender.close()
        receiver.close()


def _udp_exchange(
    sender: socket.socket,
    receiver: socket.socket,
    to: tuple[str, int],
    *,
    count: int,
    size: int,
    wait: float,
) -> TrafficReply:
    delivered = sent = received_bytes = 0
    send_errors: dict[str, int] = {}
    receiver.settimeout(0.05)
    payload = b"k" * max(0, size)
    for _ in range(count):
        sent += 1
        try:
            sender.sendto(payload, to)
        except OSError as exc:  # e.g. EPERM: a cgroup egress program dropped it
            reason = exc.strerror or str(exc)
            send_errors[reason] = send_errors.get(reason, 0) + 1
    deadline = time.monotonic() + wait
    while delivered < sent and time.monotonic() < deadline:
        try:
            received_bytes += len(receiver.recv(65536))
            delivered += 1
        except TimeoutError:
            continue
    return TrafficReply(
        sent=sent,
        delivered=delivered,
        dropped=sent - delivered,
        received_bytes=received_bytes,
        send_errors=send_errors,
    )


def _tcp_connect(
    sender: socket.socket, receiver: socket.socket, to: tuple[str, int], *, count: int, wait: float
) -> TrafficReply:
    receiver.listen(count)
    sender.settimeout(wait)
    outcome = "connected"
    delivered = 0
    try:
        sender.connect(to)
        delivered = 1
    except OSError as exc:
        outcome = exc.strerror or str(exc)
    return TrafficReply(sent=1, delivered=delivered, dropped=1 - delivered, connect=outcome)


def _ping(
    ns: str | None, dst: str, count: int, size: int, wait: float, *, cgroup: str | None
) -> TrafficReply:
    argv = ["ping", "-q", "-c", str(count), "-i", "0.01", "-s", str(size)]
    argv += ["-W", str(max(1, int(wait))), dst]
    proc = command(argv, ns=ns, cgroup=cgroup, timeout=count * 0.5 + wait + 5)
    received = 0
    for line in proc.stdout.splitlines():
        if "received" in line:
            received = int(line.split(",")[1].split()[0])
    return TrafficReply(sent=count, delivered=received, dropped=count - received)


def syscall(req: Syscall) -> SyscallReply:
    """One built-in action done by the agent itself (in the case's netns and cgroup), so the
    program sees the syscall and its errno comes back as it is, not as an exit status."""
    action = req.action
    started = time.monotonic()
    status: int | None = None
    error = 0
    with in_cgroup(req.cgroup), in_netns(req.ns):
        try:
            if action == "open":
                flags = os.O_WRONLY if req.mode == "write" else os.O_RDONLY
                if req.create:
                    flags |= os.O_CREAT
                os.close(os.open(str(req.path), flags | os.O_CLOEXEC, 0o600))
            elif action == "unlink":
                os.unlink(str(req.path))
            elif action == "connect":
                kind = socket.SOCK_STREAM if req.proto == "tcp" else socket.SOCK_DGRAM
                with socket.socket(socket.AF_INET, kind) as sock:
                    sock.settimeout(2.0 if req.timeout is None else float(req.timeout))
                    sock.connect((str(req.to), int(req.port or 0)))
            elif action == "execve":
                # subprocess reports the child's failed execve errno as an OSError here
                proc = subprocess.run(
                    [str(a) for a in req.argv],
                    capture_output=True,
                    timeout=60.0 if req.timeout is None else float(req.timeout),
                    check=False,
                )
                status = proc.returncode
            else:
                raise GuestError(f"unknown syscall action {action!r}", ErrorKind.PROTOCOL)
        except TimeoutError:
            error = errno.ETIMEDOUT
        except subprocess.TimeoutExpired:
            message = f"{req.argv[0]} did not finish in time"
            raise GuestError(message, ErrorKind.TIMEOUT) from None
        except OSError as exc:
            error = exc.errno or errno.EIO
    return SyscallReply(
        action=action,
        errno=error,
        errno_name=errno.errorcode.get(error, str(error)) if error else "",
        status=status,
        seconds=round(time.monotonic() - started, 6),
    )
