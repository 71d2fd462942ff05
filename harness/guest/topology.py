"""Guest side: network namespaces, commands, and the per-case topology (netns, veth pairs,
netdevsim devices).  Runs inside the guest, in the agent's process.

Every failure is a GuestError (harness.guest.protocol) with a kind the host turns into a
typed result (topology, setup, timeout...), never a traceback.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.guest.protocol import TopologyUp
from harness.guest.replies import ErrorKind, GuestError, TopologyDownReply, TopologyUpReply

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
NETDEVSIM_BUS = Path("/sys/bus/netdevsim")

_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Switch this thread into network namespace `name` (None: stay) and back."""
    if not name:
        yield
        return
    path = NETNS_DIR / name
    if not path.exists():
        raise GuestError(f"no network namespace {name!r}", ErrorKind.TOPOLOGY)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            message = f"setns {name}: {os.strerror(ctypes.get_errno())}"
            raise GuestError(message, ErrorKind.TOPOLOGY)
        try:
            yield
        finally:
            _libc.setns(own, CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(own)


def ifindex_of(dev: str, ns: str | None) -> int:
    """The ifindex of `dev` in the current namespace (`ns` names it for the message)."""
    try:
        return socket.if_nametoindex(dev)
    except OSError:
        where = f"netns {ns}" if ns else "the root namespace"
        raise GuestError(f"no device {dev!r} in {where}", ErrorKind.TOPOLOGY) from None


def run_command(
    argv: list[str],
    timeout: float = 60.0,
    stdin: str | None = None,
    before_exec: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv, output captured; `before_exec` runs in the child (e.g. joining a cgroup)."""
    try:
        return subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            preexec_fn=before_exec,
        )
    except FileNotFoundError:
        raise GuestError(
            f"{argv[0]} is not installed in the guest's view of the host", ErrorKind.SETUP
        ) from None
    except subprocess.TimeoutExpired:
        raise GuestError(
            f"{argv[0]} did not finish within {timeout:g}s", ErrorKind.TIMEOUT
        ) from None


def checked(argv: list[str], stdin: str | None = None) -> str:
    proc = run_command(argv, stdin=stdin)
    if proc.returncode != 0:
        raise GuestError(f"{' '.join(argv)}: {proc.stderr.strip()[-400:]}", ErrorKind.TOPOLOGY)
    return proc.stdout


class Topology:
    """What one case set up, so that down() removes exactly that."""

    def __init__(self) -> None:
        self.netns: list[str] = []
        self.netdevsim: list[int] = []

    def up(self, req: TopologyUp) -> TopologyUpReply:
        """netns, veth pairs with addresses, netdevsim devices; one `ip -batch` per netns."""
        root: list[str] = []
        per_ns: dict[str, list[str]] = {}
        for ns in req.netns:
            root.append(f"netns add {ns}")
            per_ns.setdefault(ns, []).append("link set lo up")
            self.netns.append(ns)
        for pair in req.veth:
            a, b = pair["a"], pair["b"]
            cmd = f"link add {a['dev']}"
            if a.get("ns"):
                cmd += f" netns {a['ns']}"
            cmd += f" type veth peer name {b['dev']}"
            if b.get("ns"):
                cmd += f" netns {b['ns']}"
            root.append(cmd)
            for end in (a, b):
                lines = per_ns.setdefault(end.get("ns") or "", [])
                if end.get("addr"):
                    lines.append(f"addr add {end['addr']} dev {end['dev']}")
                lines.append(f"link set {end['dev']} up")
        if root:
            checked(["ip", "-batch", "-"], "\n".join(root) + "\n")
        for ns, lines in per_ns.items():
            prefix = ["ip", "-n", ns] if ns else ["ip"]
            checked([*prefix, "-batch", "-"], "\n".join(lines) + "\n")
        devices: dict[str, tuple[str, ...]] = {}
        for sim in req.netdevsim:
            devices[str(sim["id"])] = tuple(
                self._netdevsim(int(sim["id"]), int(sim.get("ports", 1)), sim.get("ns"))
            )
        return TopologyUpReply(tuple(self.netns), devices)

    def _netdevsim(self, dev_id: int, ports: int, ns: str | None) -> list[str]:
        """A netdevsim device whose ports are renamed nsim<ID>p<PORT> (the kernel names them
        eth%d) and moved into `ns` with `ip link set netns`, which keeps the names (a devlink
        reload into a netns would re-create them as eth%d)."""
        checked(["modprobe", "netdevsim"])
        try:
            (NETDEVSIM_BUS / "new_device").write_text(f"{dev_id} {ports}\n")
        except OSError as exc:
            raise GuestError(f"netdevsim {dev_id}: {exc.strerror}", ErrorKind.TOPOLOGY) from None
        self.netdevsim.append(dev_id)
        net = NETDEVSIM_BUS / "devices" / f"netdevsim{dev_id}" / "net"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            names = sorted(p.name for p in net.iterdir()) if net.is_dir() else []
            if len(names) >= ports:
                break
            time.sleep(0.05)
        else:
            raise GuestError(f"netdevsim {dev_id}: netdevs did not appear", ErrorKind.TOPOLOGY)
        # udev (when the guest runs it) renames new netdevs: rename ours after it is done
        if shutil.which("udevadm"):
            run_command(["udevadm", "settle", "--timeout=10"], timeout=15)
            names = sorted(p.name for p in net.iterdir())

        # the kernel's port order ("p1", "p2"... in phys_port_name), numbered from 0
        def port_number(name: str) -> tuple[int, str]:
            text = _read(net / name / "phys_port_name").removeprefix("p")
            return (int(text) if text.isdigit() else 1 << 30, name)

        batch = []
        wanted = []
        for number, name in enumerate(sorted(names, key=port_number)):
            new = f"nsim{dev_id}p{number}"
            wanted.append(new)
            batch.append(f"link set {name} name {new}")
            if ns:
                batch.append(f"link set {new} netns {ns}")
        checked(["ip", "-batch", "-"], "\n".join(batch) + "\n")
        prefix = ["ip", "-n", ns] if ns else ["ip"]
        checked([*prefix, "-batch", "-"], "".join(f"link set {n} up\n" for n in wanted))
        return sorted(wanted)

    def down(self) -> TopologyDownReply:
        problems = []
        for dev_id in self.netdevsim:
            try:
                (NETDEVSIM_BUS / "del_device").write_text(f"{dev_id}\n")
            except OSError as exc:
                problems.append(f"netdevsim {dev_id}: {exc.strerror}")
        for ns in self.netns:
            proc = run_command(["ip", "netns", "del", ns])
            if proc.returncode != 0:
                problems.append(proc.stderr.strip())
        self.netdevsim, self.netns = [], []
        leftovers = sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []
        return TopologyDownReply(tuple(problems), tuple(leftovers))


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
