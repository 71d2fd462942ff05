"""The guest agent: one long-lived Python process per VM, spoken to in JSON lines.

Runs inside the guest (`python -m harness.agent`, the host's interpreter seen through the
guest's read-only view of the host root) so that each case costs requests, not process
starts: under TCG a Python start is ~1 s and every exec a fraction of one.

Protocol: one request per line on stdin, `{"id": N, "op": NAME, "args": {...}}`; one
response per line on stdout, `{"id": N, "ok": true, "result": ...}` or
`{"id": N, "ok": false, "error": "...", "kind": "..."}`.  Nothing else is written to
stdout; diagnostics go to stderr.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import libbpf

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class AgentError(Exception):
    """A request that failed in a way the host should see as a typed result."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Switch this thread into network namespace `name` (None: stay) and back."""
    if not name:
        yield
        return
    path = NETNS_DIR / name
    if not path.exists():
        raise AgentError(f"no network namespace {name!r}", "topology")
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise AgentError(f"setns {name}: {os.strerror(ctypes.get_errno())}", "topology")
        try:
            yield
        finally:
            _libc.setns(own, CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(own)


def _cgroup_procs(cgroup: str) -> Path:
    """cgroup.procs of a cgroup given relative to the cgroup2 root (no escaping it)."""
    path = (CGROUP_ROOT / cgroup.strip("/")).resolve()
    if path != CGROUP_ROOT and CGROUP_ROOT not in path.parents:
        raise AgentError(f"cgroup {cgroup!r} is outside {CGROUP_ROOT}", "protocol")
    return path / "cgroup.procs"


def _join_cgroup(procs: Path) -> None:
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
    procs = _cgroup_procs(cgroup)
    own = "/"
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            own = line[3:]
    try:
        _join_cgroup(procs)
    except OSError as exc:
        raise AgentError(f"joining cgroup {cgroup}: {exc.strerror}", "setup") from None
    try:
        yield
    finally:
        _join_cgroup(_cgroup_procs(own))


def _run(
    argv: list[str], timeout: float = 60.0, stdin: str | None = None, cgroup: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run argv; with `cgroup`, the child joins that cgroup (relative to the cgroup2 root)
    before it executes, so everything it does is seen by the cgroup's programs."""
    procs = _cgroup_procs(cgroup) if cgroup else None
    try:
        return subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            preexec_fn=(lambda: _join_cgroup(procs)) if procs else None,
        )
    except FileNotFoundError:
        raise AgentError(
            f"{argv[0]} is not installed in the guest's view of the host", "setup"
        ) from None
    except subprocess.TimeoutExpired:
        raise AgentError(f"{argv[0]} did not finish within {timeout:g}s", "timeout") from None


def _checked(argv: list[str], stdin: str | None = None) -> str:
    proc = _run(argv, stdin=stdin)
    if proc.returncode != 0:
        raise AgentError(f"{' '.join(argv)}: {proc.stderr.strip()[-400:]}", "topology")
    return proc.stdout


class Agent:
    def __init__(self) -> None:
        self.netns: list[str] = []
        self.netdevsim: list[int] = []
        self.ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": self.ping,
            "facts": self.facts,
            "sysctl": self.sysctl,
            "run": self.run,
            "topology_up": self.topology_up,
            "topology_down": self.topology_down,
            "traffic": self.traffic,
            "load": self.load,
            "attach": self.attach,
            "test_run": self.test_run,
            "map_dump": self.map_dump,
            "release": self.release,
            "probe": self.probe,
            "events_start": self.events_start,
            "events_count": self.events_count,
        }
        self.counters: dict[int, dict[str, Any]] = {}  # handle -> map name -> RingBufferCounter
        self.objects: dict[int, Any] = {}  # handle -> harness.libbpf.BpfObject
        self.link_netns: dict[int, str | None] = {}  # handle -> netns its links live in
        self._handles = iter(range(1, 1 << 30))
        self._lib: Any = None

    # -- basics --------------------------------------------------------------------------
    def ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "release": os.uname().release}

    def facts(self, args: dict[str, Any]) -> dict[str, Any]:
        names = (
            "net.core.bpf_jit_enable",
            "net.core.bpf_jit_harden",
            "net.core.bpf_jit_kallsyms",
            "kernel.unprivileged_bpf_disabled",
            "kernel.bpf_stats_enabled",
        )
        return {
            "release": os.uname().release,
            "btf": Path("/sys/kernel/btf/vmlinux").exists(),
            "sysctl": {n: _read_sysctl(n) for n in names},
            "lsm": _read_text("/sys/kernel/security/lsm"),
            "cgroup2": Path("/sys/fs/cgroup/cgroup.controllers").exists(),
        }

    def sysctl(self, args: dict[str, Any]) -> dict[str, Any]:
        """Set sysctls; report per key the value in effect or why the kernel refused."""
        out: dict[str, Any] = {}
        for name, value in args["values"].items():
            path = Path("/proc/sys") / name.replace(".", "/")
            try:
                path.write_text(f"{value}\n")
                out[name] = {"ok": True, "value": _read_sysctl(name)}
            except OSError as exc:
                out[name] = {
                    "ok": False,
                    "error": exc.strerror or str(exc),
                    "value": _read_sysctl(name),
                }
        return out

    def run(self, args: dict[str, Any]) -> dict[str, Any]:
        argv = [str(a) for a in args["argv"]]
        timeout = float(args.get("timeout", 60))
        started = time.monotonic()
        with in_netns(args.get("ns")):
            proc = _run(argv, timeout=timeout, cgroup=args.get("cgroup"))
        return {
            "status": proc.returncode,
            "stdout": proc.stdout[-65536:],
            "stderr": proc.stderr[-65536:],
            "seconds": time.monotonic() - started,
        }

    # -- topology ------------------------------------------------------------------------
    def topology_up(self, args: dict[str, Any]) -> dict[str, Any]:
        """netns, veth pairs with addresses, netdevsim devices; one `ip -batch` per netns."""
        root: list[str] = []
        per_ns: dict[str, list[str]] = {}
        for ns in args.get("netns", []):
            root.append(f"netns add {ns}")
            per_ns.setdefault(ns, []).append("link set lo up")
            self.netns.append(ns)
        for pair in args.get("veth", []):
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
            _checked(["ip", "-batch", "-"], "\n".join(root) + "\n")
        for ns, lines in per_ns.items():
            prefix = ["ip", "-n", ns] if ns else ["ip"]
            _checked([*prefix, "-batch", "-"], "\n".join(lines) + "\n")
        devices = {}
        for sim in args.get("netdevsim", []):
            devices[str(sim["id"])] = self._netdevsim(
                int(sim["id"]), int(sim.get("ports", 1)), sim.get("ns")
            )
        return {"netns": list(self.netns), "netdevsim": devices}

    def _netdevsim(self, dev_id: int, ports: int, ns: str | None) -> list[str]:
        _checked(["modprobe", "netdevsim"])
        try:
            Path("/sys/bus/netdevsim/new_device").write_text(f"{dev_id} {ports}\n")
        except OSError as exc:
            raise AgentError(f"netdevsim {dev_id}: {exc.strerror}", "topology") from None
        self.netdevsim.append(dev_id)
        net = Path(f"/sys/bus/netdevsim/devices/netdevsim{dev_id}/net")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            names = sorted(p.name for p in net.iterdir()) if net.is_dir() else []
            if len(names) >= ports:
                break
            time.sleep(0.05)
        else:
            raise AgentError(f"netdevsim {dev_id}: netdevs did not appear", "topology")
        if ns:
            _checked(["devlink", "dev", "reload", f"netdevsim/netdevsim{dev_id}", "netns", ns])
        for name in names:
            _checked(["ip", *(["-n", ns] if ns else []), "link", "set", name, "up"])
        return names

    def topology_down(self, args: dict[str, Any]) -> dict[str, Any]:
        problems = []
        for dev_id in self.netdevsim:
            try:
                Path("/sys/bus/netdevsim/del_device").write_text(f"{dev_id}\n")
            except OSError as exc:
                problems.append(f"netdevsim {dev_id}: {exc.strerror}")
        for ns in self.netns:
            proc = _run(["ip", "netns", "del", ns])
            if proc.returncode != 0:
                problems.append(proc.stderr.strip())
        self.netdevsim, self.netns = [], []
        leftovers = sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []
        return {"problems": problems, "netns_left": leftovers}

    # -- drivers -------------------------------------------------------------------------
    def traffic(self, args: dict[str, Any]) -> dict[str, Any]:
        """Send `count` packets from netns `from` to `to`, count what arrives in `to_ns`."""
        proto = args.get("proto", "udp")
        count, size, port = (
            int(args.get("count", 1)),
            int(args.get("size", 64)),
            int(args.get("port", 9000)),
        )
        dst = args["to"]
        wait = float(args.get("wait", 1.0))
        cgroup = args.get("cgroup")
        if proto == "icmp":
            return self._ping(args.get("from"), dst, count, size, wait, cgroup=cgroup)
        kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
        with in_cgroup(cgroup):  # both sockets belong to the case's cgroup, if it has one
            with in_netns(args.get("to_ns")):
                receiver = socket.socket(socket.AF_INET, kind)
                receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                receiver.bind((dst, port))
            with in_netns(args.get("from")):
                sender = socket.socket(socket.AF_INET, kind)
        delivered = sent = 0
        send_errors: dict[str, int] = {}
        try:
            if proto == "udp":
                receiver.settimeout(0.05)
                payload = b"k" * max(0, size)
                for _ in range(count):
                    sent += 1
                    try:
                        sender.sendto(payload, (dst, port))
                    except OSError as exc:  # e.g. EPERM: a cgroup egress program dropped it
                        reason = exc.strerror or str(exc)
                        send_errors[reason] = send_errors.get(reason, 0) + 1
                deadline = time.monotonic() + wait
                while delivered < sent and time.monotonic() < deadline:
                    try:
                        receiver.recv(65536)
                        delivered += 1
                    except TimeoutError:
                        continue
            else:
                receiver.listen(count)
                sender.settimeout(wait)
                outcome = "connected"
                try:
                    sender.connect((dst, port))
                    sent = delivered = 1
                except OSError as exc:
                    sent, outcome = 1, exc.strerror or str(exc)
                return {
                    "sent": sent,
                    "delivered": delivered,
                    "dropped": sent - delivered,
                    "connect": outcome,
                }
        finally:
            sender.close()
            receiver.close()
        out: dict[str, Any] = {"sent": sent, "delivered": delivered, "dropped": sent - delivered}
        if send_errors:
            out["send_errors"] = send_errors
        return out

    def _ping(
        self, ns: str | None, dst: str, count: int, size: int, wait: float, *, cgroup: str | None
    ) -> dict[str, Any]:
        with in_netns(ns):
            proc = _run(
                [
                    "ping",
                    "-q",
                    "-c",
                    str(count),
                    "-i",
                    "0.01",
                    "-s",
                    str(size),
                    "-W",
                    str(max(1, int(wait))),
                    dst,
                ],
                timeout=count * 0.5 + wait + 5,
                cgroup=cgroup,
            )
        received = 0
        for line in proc.stdout.splitlines():
            if "received" in line:
                received = int(line.split(",")[1].split()[0])
        return {"sent": count, "delivered": received, "dropped": count - received}

    # -- BPF -----------------------------------------------------------------------------
    def libbpf(self) -> Any:
        if self._lib is None:
            self._lib = libbpf.Libbpf(os.environ.get("KITL_LIBBPF", "libbpf.so.1"))
        return self._lib

    def load(self, args: dict[str, Any]) -> dict[str, Any]:
        """Load one program of an object on its own; keep it for attach/test_run."""
        lib = self.libbpf()
        opts = libbpf.LoadOptions(
            log_level=int(args.get("log_level", 1 | 4)),
            log_size=int(args.get("log_size") or 16 << 20),
            btf_custom_path=args.get("btf_custom_path"),
            kconfig=args.get("kconfig"),
            prog_flags=int(args.get("prog_flags", 0)),
        )
        obj, result = libbpf.BpfObject.load_one(lib, args["object"], args["program"], opts)
        out = dataclasses.asdict(result)
        out["libbpf_version"] = ".".join(map(str, lib.version))
        if obj is not None:
            handle = next(self._handles)
            self.objects[handle] = obj
            out["handle"] = handle
        return out

    def _object(self, args: dict[str, Any]) -> Any:
        obj = self.objects.get(int(args["handle"]))
        if obj is None:
            raise AgentError(f"no loaded object with handle {args['handle']}", "protocol")
        return obj

    def attach(self, args: dict[str, Any]) -> dict[str, Any]:
        obj = self._object(args)
        program, family = args["program"], args["family"]
        self.link_netns[int(args["handle"])] = args.get("ns")
        with in_netns(args.get("ns")):
            try:
                ifindex = socket.if_nametoindex(args["dev"]) if args.get("dev") else 0
            except OSError:
                raise AgentError(
                    f"no device {args.get('dev')!r} in netns {args.get('ns')}", "topology"
                ) from None
            try:
                if family == "xdp":
                    link = obj.attach_xdp(program, ifindex, args.get("mode") or "auto")
                    mode = obj.xdp_attach_mode(ifindex)
                    return {"via": link.via, "attach_mode": mode}
                if family == "tc":
                    link = obj.attach_tc(program, ifindex, args["direction"])
                elif family == "tcx":
                    link = obj.attach_tcx(program, ifindex, args["direction"])
                elif family == "cgroup":
                    path = Path("/sys/fs/cgroup") / args["path"]
                    path.mkdir(parents=True, exist_ok=True)
                    link = obj.attach_cgroup(program, str(path))
                elif family == "auto":
                    link = obj.attach_auto(program)
                else:
                    raise AgentError(f"unknown attach family {family!r}", "protocol")
            except libbpf.AttachError as exc:
                raise AgentError(str(exc), "attach") from None
        return {"via": link.via}

    def test_run(self, args: dict[str, Any]) -> dict[str, Any]:
        obj = self._object(args)
        run = obj.test_run(
            args["program"],
            bytes.fromhex(args.get("data_hex", "")),
            ctx=bytes.fromhex(args["ctx_hex"]) if args.get("ctx_hex") else None,
            repeat=int(args.get("repeat", 1)),
        )
        return {
            "retval": run.retval,
            "duration_ns": run.duration_ns,
            "errno": run.errno,
            "data_out_hex": run.data_out.hex(),
        }

    def map_dump(self, args: dict[str, Any]) -> dict[str, Any]:
        """Keys and values of the named maps (default: every map that can be walked; ring
        buffers and perf arrays cannot)."""
        obj = self._object(args)
        wanted = args.get("maps")
        out: dict[str, Any] = {}
        for name in wanted or obj.map_names():
            try:
                out[name] = [[k.hex(), v.hex()] for k, v in obj.map_items(name)]
            except libbpf.LibbpfError:
                if wanted:
                    raise
        return out

    def events_start(self, args: dict[str, Any]) -> dict[str, Any]:
        """Start counting records of ringbuf maps (before the drive)."""
        obj = self._object(args)
        handle = int(args["handle"])
        counters = self.counters.setdefault(handle, {})
        for name in args["maps"]:
            counters[name] = obj.ringbuf_counter(name)
        return {"counting": sorted(counters)}

    def events_count(self, args: dict[str, Any]) -> dict[str, int]:
        """Records seen per map since events_start (drains what is pending)."""
        counters = self.counters.get(int(args["handle"]), {})
        for counter in counters.values():
            counter.consume()
        return {name: int(counter.count) for name, counter in counters.items()}

    def probe(self, args: dict[str, Any]) -> dict[str, Any]:
        """What of a case's `requires:` this kernel lacks, each with the probe that said so."""
        lib = self.libbpf()
        missing: list[str] = []
        unprobed: list[str] = []
        prog_type = int(args.get("prog_type", 0))
        checks = [
            ("helper", f"helper {n}", prog_type, i) for n, i in args.get("helpers", {}).items()
        ]
        checks += [
            ("prog_type", f"program type {n}", v, 0) for n, v in args.get("prog_types", {}).items()
        ]
        checks += [
            ("map_type", f"map type {n}", v, 0) for n, v in args.get("map_types", {}).items()
        ]
        for kind, what, value, helper in checks:
            answer = lib.probe(kind, value, helper)
            if answer == 0:
                missing.append(f"{what} (libbpf_probe_bpf_{kind})")
            elif answer < 0:
                # libbpf older than the feature cannot probe it; the kernel's BTF (checked
                # by the host) already says the kernel knows it, so it counts as present
                unprobed.append(
                    f"{what}: libbpf {'.'.join(map(str, lib.version))} cannot probe "
                    f"it ({os.strerror(-answer)}); kernel BTF has it"
                )
        kfuncs = args.get("kfuncs", [])
        if kfuncs:
            try:
                btf = Path("/sys/kernel/btf/vmlinux").read_bytes()
            except OSError:
                btf = b""
            # A kfunc is a FUNC in the kernel's BTF: its name is in the BTF string table.
            missing += [
                f"kfunc {k} (not in kernel BTF)"
                for k in kfuncs
                if b"\0" + k.encode() + b"\0" not in btf
            ]
        return {"missing": missing, "unprobed": unprobed}

    def release(self, args: dict[str, Any]) -> dict[str, Any]:
        """Close objects (all, or one handle): links detach, programs and maps go away."""
        handles = [int(args["handle"])] if args.get("handle") else list(self.objects)
        problems = []
        for handle in handles:
            obj = self.objects.pop(handle, None)
            ns = self.link_netns.pop(handle, None)
            for counter in self.counters.pop(handle, {}).values():
                counter.close()
            if obj is None:
                continue
            try:
                # netlink detaches (XDP, tc) must run in the namespace the device lives in
                with in_netns(ns if ns and (NETNS_DIR / ns).exists() else None):
                    obj.close()
            except Exception as exc:  # keep releasing the rest; report what failed
                problems.append(f"handle {handle}: {exc}")
        return {"released": handles, "problems": problems}

    # -- loop ----------------------------------------------------------------------------
    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        rid = request.get("id")
        op = self.ops.get(str(request.get("op")))
        if op is None:
            return {
                "id": rid,
                "ok": False,
                "error": f"unknown op {request.get('op')!r}",
                "kind": "protocol",
            }
        try:
            return {"id": rid, "ok": True, "result": op(request.get("args") or {})}
        except AgentError as exc:
            return {"id": rid, "ok": False, "error": str(exc), "kind": exc.kind}
        except Exception as exc:
            return {
                "id": rid,
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "kind": "internal",
                "traceback": traceback.format_exc(),
            }


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _read_sysctl(name: str) -> str | None:
    return _read_text("/proc/sys/" + name.replace(".", "/"))


def serve(stdin: Any = None, stdout: Any = None) -> None:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    agent = Agent()
    lock = threading.Lock()
    for line in stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as exc:
            response = {"id": None, "ok": False, "error": f"bad JSON: {exc}", "kind": "protocol"}
        else:
            response = agent.handle(request)
        with lock:
            stdout.write(json.dumps(response) + "\n")
            stdout.flush()


if __name__ == "__main__":
    serve()
