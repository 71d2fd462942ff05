"""The guest agent: one long-lived Python process per VM, spoken to in JSON lines.

Runs inside the guest (`python -m harness.guest.agent`, the host's interpreter seen through the
guest's read-only view of the host root) so that each case costs requests, not process
starts: under TCG a Python start is ~1 s and every exec a fraction of one.

Protocol: one request per line on stdin, `{"id": N, "op": NAME, "args": {...}}`; one
response per line on stdout, `{"id": N, "ok": true, "result": ...}` or
`{"id": N, "ok": false, "error": "...", "kind": "..."}`.  Nothing else is written to
stdout; diagnostics go to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.bpf import elfobj
from harness.guest import caps, drive, libbpf, libbpf_load, libbpf_object, libbpf_prepare
from harness.guest.topology import NETNS_DIR, GuestError, Topology, ifindex_of, in_netns

DEFAULT_PIN_ROOT = "/sys/fs/bpf"  # libbpf's, when the object names no pin_root_path
LEAK_SETTLE_S = 2.0  # ids of freed objects leave the kernel's idr shortly after close()
AgentError = GuestError  # a request that failed in a way the host sees as a typed result


class Agent:
    def __init__(self) -> None:
        self.topology = Topology()
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
            "map_update": self.map_update,
            "tail_calls": self.tail_calls,
            "release": self.release,
            "probe": self.probe,
            "events_start": self.events_start,
            "events_count": self.events_count,
            "syscall": self.syscall,
        }
        self.counters: dict[int, dict[str, Any]] = {}  # handle -> map name -> RingBufferCounter
        self.objects: dict[int, Any] = {}  # handle -> harness.guest.libbpf_object.BpfObject
        self.link_netns: dict[int, str | None] = {}  # handle -> netns its links live in
        # BPF ids alive before the first object of a case was loaded: what release() compares
        self.baseline: dict[str, frozenset[int]] | None = None
        self._handles = iter(range(1, 1 << 30))
        self._lib: Any = None
        self.pins: dict[int, list[str]] = {}  # handle -> paths its load pinned
        self._bpffs_tried = False
        self._bpffs_note = ""  # why the guest has no bpffs, when mounting one failed

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
            "libbpf_version": self._libbpf_version(),
        }

    def _libbpf_version(self) -> str:
        """ "1.8" of the loader; "" when it does not load (the first load reports why)."""
        try:
            return ".".join(map(str, self.libbpf().version))
        except (OSError, libbpf.LibbpfError):
            return ""

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
        return drive.command(
            [str(a) for a in args["argv"]],
            ns=args.get("ns"),
            cgroup=args.get("cgroup"),
            timeout=float(args.get("timeout", 60)),
        )

    # -- topology and drives (harness.guest.topology, harness.guest.drive) --------------
    def topology_up(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.topology.up(args)

    def topology_down(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.topology.down()

    def traffic(self, args: dict[str, Any]) -> dict[str, Any]:
        spec = args.get("socket_filter")
        socket_filter = None
        if spec:
            socket_filter = (self._object(spec).prog_fd(spec["program"]), spec["program"])
        return drive.traffic(args, socket_filter)

    def syscall(self, args: dict[str, Any]) -> dict[str, Any]:
        return drive.syscall(args)

    # -- BPF -----------------------------------------------------------------------------
    def libbpf(self) -> Any:
        if self._lib is None:
            self._lib = libbpf.Libbpf(os.environ.get("KITL_LIBBPF", "libbpf.so.1"))
        return self._lib

    def load(self, args: dict[str, Any]) -> dict[str, Any]:
        """Load one program of an object on its own; keep it for attach/test_run."""
        lib = self.libbpf()
        if not self.objects:
            self.baseline = libbpf_load.live_ids(lib)
        if not self._bpffs_tried:
            self._bpffs_tried = True
            self._bpffs_note = libbpf_prepare.mount_bpffs()
        root = args.get("pin_root") or DEFAULT_PIN_ROOT
        pins_before = libbpf_prepare.pins_under(root)
        privilege = args.get("privilege")
        if privilege and privilege != "privileged":
            obj, out = self._load_lowered(lib, args, privilege)
        else:
            # Offload (XDP hw mode) binds the program to a device at load time; the kernel
            # looks the ifindex up in the loader's netns, so the load happens in the device's.
            offload_ns = args.get("offload_ns") if args.get("offload_dev") else None
            with in_netns(offload_ns):
                dev = args.get("offload_dev")
                obj, result = self._load(lib, args, ifindex_of(dev, offload_ns) if dev else 0)
            out = self._report(lib, result)
        pins = sorted(libbpf_prepare.pins_under(root) - pins_before)
        if self._bpffs_note:
            out.setdefault("notes", []).append(self._bpffs_note)
        if obj is None:
            _unpin(pins)  # a failed load leaves nothing behind for the next cell
            out["libbpf_lacks"] = lib.missing_features()  # the loader's failure, maybe
            return out
        handle = next(self._handles)
        self.objects[handle] = obj
        self.pins[handle] = pins
        out["handle"] = handle
        if pins:
            out["pinned"] = pins
        return out

    def _report(self, lib: Any, result: Any) -> dict[str, Any]:
        """A load's result as JSON, with the kernel's answer to whether the type of a map
        that failed is supported at all (probed with every capability)."""
        out = dataclasses.asdict(result)
        out["libbpf_version"] = ".".join(map(str, lib.version))
        failed = out.get("failed_map")
        if failed is not None:
            failed["type_supported"] = lib.probe("map_type", int(failed["type"]))
        return out

    def _load_lowered(
        self, lib: Any, args: dict[str, Any], privilege: str
    ) -> tuple[Any, dict[str, Any]]:
        """The load as a loader with the profile's capabilities gets it (harness.guest.caps
        PROFILES): the others leave this thread's effective set for the load and come back
        after it, as the kernel's test_loader does, so the program can still be test_run.
        For "unprivileged", kernel.unprivileged_bpf_disabled is set to 0 first; a kernel
        that refuses says so."""
        if privilege not in caps.PROFILES:
            raise AgentError(f"unknown privilege profile {privilege!r}", "protocol")
        setting = "kernel.unprivileged_bpf_disabled"
        refused = ""
        if privilege == "unprivileged":
            try:
                Path("/proc/sys/kernel/unprivileged_bpf_disabled").write_text("0\n")
            except OSError as exc:
                refused = f"{setting}=0 refused: {exc.strerror}"
        keep = set(args.get("keep_caps") or ())
        with caps.lowered(tuple(c for c in caps.PROFILES[privilege] if c not in keep)):
            obj, result = self._load(lib, args, 0)
        out = self._report(lib, result)
        out["privilege"] = privilege
        out["unprivileged"] = privilege == "unprivileged"
        out[setting] = _read_sysctl(setting)
        if refused:
            out["notes"] = [refused]
        return obj, out

    @staticmethod
    def _load(lib: Any, args: dict[str, Any], ifindex: int) -> tuple[Any, Any]:
        sizes = tuple(
            libbpf_prepare.MapSize(m["name"], m.get("max_entries"), m.get("value_size"))
            for m in args.get("maps") or ()
        )
        opts = libbpf_load.LoadOptions(
            log_level=int(args.get("log_level", 1 | 4)),
            log_size=int(args.get("log_size") or 16 << 20),
            btf_custom_path=args.get("btf_custom_path"),
            kconfig=args.get("kconfig"),
            prog_flags=int(args.get("prog_flags", 0)),
            ifindex=ifindex,
            presets=_presets(args["object"], args.get("globals") or {}),
            map_sizes=sizes,
            fixups=bool(args.get("fixups", True)),
            pinning=bool(args.get("pinning", True)),
            pin_root=args.get("pin_root"),
            attach_target=args.get("attach_target"),
            companions=tuple(args.get("companions") or ()),
            unprivileged_maps_only=bool(args.get("unprivileged_maps_only")),
        )
        try:
            return libbpf_object.BpfObject.load_one(lib, args["object"], args["program"], opts)
        except (KeyError, ValueError) as exc:  # a map or target the object cannot take
            raise AgentError(str(exc).strip('"'), "setup") from None

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
            ifindex = ifindex_of(args["dev"], args.get("ns")) if args.get("dev") else 0
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
                elif family == "socket":
                    # The filter goes on the traffic drive's receiving socket, which does not
                    # exist yet; attaching it to a scratch socket now reports a refusal here.
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as scratch:
                        drive.attach_socket_filter(scratch, obj.prog_fd(program), program)
                    return {"via": "setsockopt(SO_ATTACH_BPF)"}
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
            ctx_only=bool(args.get("ctx_only")),
        )
        return {
            "retval": run.retval,
            "duration_ns": run.duration_ns,
            "errno": run.errno,
            "data_out_hex": run.data_out.hex(),
            "ctx_out_hex": run.ctx_out.hex(),
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

    def map_update(self, args: dict[str, Any]) -> dict[str, Any]:
        """Write map contents: {map: [[key, value], ...]}; an integer is written
        little-endian at the map's key or value size, a string is hex bytes."""
        obj = self._object(args)
        written = 0
        for name, rows in (args.get("maps") or {}).items():
            key_size, value_size = obj.map_sizes(name)
            for key, value in rows:
                try:
                    obj.map_update(name, _raw(key, key_size), _raw(value, value_size))
                except (libbpf.LibbpfError, ValueError, OverflowError) as exc:
                    raise AgentError(f"setting map {name}[{key}]: {exc}", "setup") from None
                written += 1
        return {"written": written}

    def tail_calls(self, args: dict[str, Any]) -> dict[str, Any]:
        """Fill prog array slots with programs of the same object, by name, as user space
        does after the load: {"slots": [[map, index, program], ...]}."""
        obj = self._object(args)
        for map_name, index, program in args.get("slots") or ():
            try:
                fd = obj.prog_fd(program)
                key_size, value_size = obj.map_sizes(map_name)
                obj.map_update(map_name, _raw(int(index), key_size), _raw(fd, value_size))
            except (KeyError, libbpf.LibbpfError, ValueError) as exc:
                msg = f"tail call slot {map_name}[{index}] = {program}: {exc}"
                raise AgentError(msg, "setup") from None
        return {"filled": len(args.get("slots") or ())}

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
            btf = _kernel_btf()
            # A kfunc is a FUNC in the kernel's BTF: its name is in the BTF string table.
            missing += [
                f"kfunc {k} (not in kernel or loaded module BTF)"
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
            _unpin(self.pins.pop(handle, []))
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
        if not self.objects and self.baseline is not None:
            problems += self._leaks(self.baseline)
            self.baseline = None
        return {"released": handles, "problems": problems}

    def _leaks(self, before: dict[str, frozenset[int]]) -> list[str]:
        """Programs, maps and links alive now that were not before the case's first load.
        Freeing is partly deferred in the kernel (RCU, workqueues), so wait a little."""
        lib = self.libbpf()
        deadline = time.monotonic() + LEAK_SETTLE_S
        while True:
            now = libbpf_load.live_ids(lib)
            extra = {kind: sorted(now[kind] - before.get(kind, frozenset())) for kind in now}
            if not any(extra.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return [
            f"{kind} id {ident} still alive after the case released everything"
            for kind, idents in extra.items()
            for ident in idents
        ]

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


def _presets(obj: str, values: dict[str, int]) -> tuple[tuple[str, int, bytes], ...]:
    """(section, offset, bytes) of each global variable to preset, from the object's ELF
    symbols; a name the object has no global for is a clear error."""
    if not values:
        return ()
    info = elfobj.parse_object(Path(obj).read_bytes(), obj)
    found = {g.name: g for g in info.globals}
    out = []
    for name, value in values.items():
        var = found.get(name)
        if var is None:
            known = ", ".join(sorted(found)) or "none"
            raise AgentError(
                f"the object has no global variable {name!r} (globals: {known})", "setup"
            )
        try:
            data = int(value).to_bytes(var.size, "little", signed=int(value) < 0)
        except OverflowError:
            raise AgentError(
                f"{name} = {value} does not fit its {var.size} bytes", "setup"
            ) from None
        out.append((var.section, var.offset, data))
    return tuple(out)


_BTF_CACHE: dict[tuple[str, ...], bytes] = {}


def _kernel_btf() -> bytes:
    """The BTF of the kernel and its loaded modules (where libbpf finds kfuncs), joined;
    read again only when the set of modules changes."""
    paths = sorted(Path("/sys/kernel/btf").glob("*"))
    key = tuple(p.name for p in paths)
    if key not in _BTF_CACHE:
        parts = []
        for path in paths:
            try:
                parts.append(path.read_bytes())
            except OSError:
                continue
        _BTF_CACHE.clear()
        _BTF_CACHE[key] = b"\0".join(parts)
    return _BTF_CACHE[key]


def _raw(value: int | str, size: int) -> bytes:
    if isinstance(value, str):
        return bytes.fromhex(value)
    return int(value).to_bytes(size, "little", signed=int(value) < 0)


def _unpin(paths: list[str]) -> None:
    """Remove what a cell pinned: a pinned map would outlive the cell and be reused by the
    next one (libbpf reuses a compatible map pinned by name)."""
    for path in paths:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                for name in os.listdir(path):
                    os.unlink(os.path.join(path, name))
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError as exc:
            print(f"kitl agent: could not unpin {path}: {exc}", file=sys.stderr)


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
