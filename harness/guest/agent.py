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
from harness.guest import (
    caps,
    drive,
    libbpf,
    libbpf_clone,
    libbpf_load,
    libbpf_object,
    libbpf_prepare,
    userloader,
)
from harness.guest import protocol as p
from harness.guest import replies as r
from harness.guest.libbpf_run import RingBufferCounter
from harness.guest.protocol import Op
from harness.guest.replies import ErrorKind, GuestError
from harness.guest.topology import NETNS_DIR, Topology, ifindex_of, in_netns

DEFAULT_PIN_ROOT = "/sys/fs/bpf"  # libbpf's, when the object names no pin_root_path
LEAK_SETTLE_S = 2.0  # ids of freed objects leave the kernel's idr shortly after close()


class Agent:
    def __init__(self) -> None:
        self.topology = Topology()
        # each operation's handler, taking the request protocol.REQUESTS names for it
        self.ops: dict[Op, Callable[[Any], r.Reply]] = {
            Op.PING: self.ping,
            Op.FACTS: self.facts,
            Op.SYSCTL: self.sysctl,
            Op.RUN: self.run,
            Op.RUN_LOADER: self.run_loader,
            Op.TOPOLOGY_UP: self.topology_up,
            Op.TOPOLOGY_DOWN: self.topology_down,
            Op.TRAFFIC: self.traffic,
            Op.LOAD: self.load,
            Op.ATTACH: self.attach,
            Op.TEST_RUN: self.test_run,
            Op.MAP_DUMP: self.map_dump,
            Op.MAP_UPDATE: self.map_update,
            Op.TAIL_CALLS: self.tail_calls,
            Op.RELEASE: self.release,
            Op.PROBE: self.probe,
            Op.EVENTS_START: self.events_start,
            Op.EVENTS_COUNT: self.events_count,
            Op.SYSCALL: self.syscall,
        }
        self.counters: dict[int, dict[str, RingBufferCounter]] = {}  # handle -> map -> counter
        self.objects: dict[int, Any] = {}  # handle -> harness.guest.libbpf_object.BpfObject
        self.link_netns: dict[int, str | None] = {}  # handle -> netns its links live in
        # BPF ids alive before the first object of a case was loaded: what release() compares
        self.baseline: dict[str, frozenset[int]] | None = None
        self.prepared = libbpf_clone.PreparedCache()  # verify-only loads' object
        self._handles = iter(range(1, 1 << 30))
        self._lib: Any = None
        self.pins: dict[int, list[str]] = {}  # handle -> paths its load pinned
        self._bpffs_tried = False
        self._bpffs_note = ""  # why the guest has no bpffs, when mounting one failed

    # -- basics --------------------------------------------------------------------------
    def ping(self, req: p.Ping) -> r.PingReply:
        return r.PingReply(pid=os.getpid(), release=os.uname().release)

    def facts(self, req: p.Facts) -> r.FactsReply:
        names = (
            "net.core.bpf_jit_enable",
            "net.core.bpf_jit_harden",
            "net.core.bpf_jit_kallsyms",
            "kernel.unprivileged_bpf_disabled",
            "kernel.bpf_stats_enabled",
        )
        return r.FactsReply(
            release=os.uname().release,
            btf=Path("/sys/kernel/btf/vmlinux").exists(),
            sysctl={n: _read_sysctl(n) for n in names},
            lsm=_read_text("/sys/kernel/security/lsm"),
            cgroup2=Path("/sys/fs/cgroup/cgroup.controllers").exists(),
            libbpf_version=self._libbpf_version(),
        )

    def _libbpf_version(self) -> str:
        """ "1.8" of the loader; "" when it does not load (the first load reports why)."""
        try:
            return ".".join(map(str, self.libbpf().version))
        except (OSError, libbpf.LibbpfError):
            return ""

    def sysctl(self, req: p.Sysctl) -> r.SysctlReply:
        """Set sysctls; report per key the value in effect or why the kernel refused."""
        out: dict[str, r.SysctlValue] = {}
        for name, value in req.values.items():
            path = Path("/proc/sys") / name.replace(".", "/")
            try:
                path.write_text(f"{value}\n")
                out[name] = r.SysctlValue(ok=True, value=_read_sysctl(name))
            except OSError as exc:
                error = exc.strerror or str(exc)
                out[name] = r.SysctlValue(ok=False, value=_read_sysctl(name), error=error)
        return r.SysctlReply(out)

    def run(self, req: p.Run) -> r.RunReply:
        return drive.command(
            [str(a) for a in req.argv], ns=req.ns, cgroup=req.cgroup, timeout=float(req.timeout)
        )

    def run_loader(self, req: p.RunLoader) -> r.LoaderReply:
        """The user's own loader (harness.guest.userloader), on the bpffs every loader's
        host has; what it leaves loaded after its pins are removed is a leak of the cell
        (release() compares the ids with those alive before it)."""
        lib = self.libbpf()
        if not self._bpffs_tried:
            self._bpffs_tried = True
            self._bpffs_note = libbpf_prepare.mount_bpffs()
        if self.baseline is None:
            self.baseline = libbpf_load.live_ids(lib)
        return userloader.run(req, userloader.KernelPrograms(lib))

    # -- topology and drives (harness.guest.topology, harness.guest.drive) --------------
    def topology_up(self, req: p.TopologyUp) -> r.TopologyUpReply:
        return self.topology.up(req)

    def topology_down(self, req: p.TopologyDown) -> r.TopologyDownReply:
        return self.topology.down()

    def traffic(self, req: p.Traffic) -> r.TrafficReply:
        spec = req.socket_filter
        socket_filter = None
        if spec:
            program = str(spec["program"])
            socket_filter = (self._object(spec["handle"]).prog_fd(program), program)
        return drive.traffic(req, socket_filter)

    def syscall(self, req: p.Syscall) -> r.SyscallReply:
        return drive.syscall(req)

    # -- BPF -----------------------------------------------------------------------------
    def libbpf(self) -> Any:
        if self._lib is None:
            self._lib = libbpf.Libbpf(os.environ.get("KITL_LIBBPF", "libbpf.so.1"))
        return self._lib

    def load(self, req: p.Load) -> r.LoadReply:
        """Load one program of an object on its own; keep it for attach/test_run."""
        lib = self.libbpf()
        if not req.verify_only:
            self.prepared.close()  # a load of its object would reuse its pinned maps
        if not self._bpffs_tried:
            self._bpffs_tried = True
            self._bpffs_note = libbpf_prepare.mount_bpffs()
        root = req.pin_root or DEFAULT_PIN_ROOT
        verified = self._verify_only(lib, req, root) if _clonable(req) else None
        if verified is not None:
            return verified
        if not self.objects:
            self.baseline = libbpf_load.live_ids(lib)
        pins_before = libbpf_prepare.pins_under(root)
        if req.privilege and req.privilege != "privileged":
            obj, out = self._load_lowered(lib, req, req.privilege)
        else:
            # Offload (XDP hw mode) binds the program to a device at load time; the kernel
            # looks the ifindex up in the loader's netns, so the load happens in the device's.
            dev = req.offload_dev
            offload_ns = req.offload_ns if dev else None
            with in_netns(offload_ns):
                obj, result = self._load(lib, req, ifindex_of(dev, offload_ns) if dev else 0)
            out = self._report(lib, result)
        pins = sorted(libbpf_prepare.pins_under(root) - pins_before)
        if self._bpffs_note:
            out = dataclasses.replace(out, notes=(*out.notes, self._bpffs_note))
        if obj is None:
            libbpf_prepare.unpin(pins)  # a failed load leaves nothing behind for the next cell
            # the loader's failure, maybe
            return dataclasses.replace(out, libbpf_lacks=tuple(lib.missing_features()))
        handle = next(self._handles)
        self.objects[handle] = obj
        self.pins[handle] = pins
        return dataclasses.replace(out, handle=handle, pinned=tuple(pins))

    def _verify_only(self, lib: Any, req: p.Load, root: str) -> r.LoadReply | None:
        """The program loaded from the object kept prepared (harness.guest.libbpf_clone)
        and unloaded at once: no handle.  None when the object cannot be prepared whole."""
        opts = self._options(req, 0)
        prepared = self.prepared.get(lib, req.object, opts, root)
        if prepared is None:
            return None
        # No leak check follows: the program's fd is closed before the reply, so nothing
        # of the cell's outlives it (waiting for RCU to free each program's id cost more
        # than the load), and the prepared object's maps are the cache's.
        try:
            result = prepared.load(req.program, opts)
        except KeyError as exc:
            raise GuestError(str(exc).strip('"'), ErrorKind.SETUP) from None
        # the maps preparing it pinned by name, there until the next object replaces it
        out = dataclasses.replace(self._report(lib, result), pinned=tuple(self.prepared.pins))
        if self._bpffs_note:
            out = dataclasses.replace(out, notes=(*out.notes, self._bpffs_note))
        if not result.ok:
            return dataclasses.replace(out, libbpf_lacks=tuple(lib.missing_features()))
        return out

    def _report(self, lib: Any, result: libbpf_load.ProgramLoad) -> r.LoadReply:
        """A load's result as its reply, with the kernel's answer to whether the type of a
        map that failed is supported at all (probed with every capability)."""
        failed = None
        if result.failed_map is not None:
            supported = lib.probe("map_type", int(result.failed_map.type))
            failed = r.FailedMap(
                **{**dataclasses.asdict(result.failed_map), "type_supported": supported}
            )
        return r.LoadReply(
            **{**dataclasses.asdict(result), "failed_map": failed},
            libbpf_version=".".join(map(str, lib.version)),
        )

    def _load_lowered(self, lib: Any, req: p.Load, privilege: str) -> tuple[Any, r.LoadReply]:
        """The load as a loader with the profile's capabilities gets it (harness.guest.caps
        PROFILES): the others leave this thread's effective set for the load and come back
        after it, as the kernel's test_loader does, so the program can still be test_run.
        For "unprivileged", kernel.unprivileged_bpf_disabled is set to 0 first; a kernel
        that refuses says so."""
        if privilege not in caps.PROFILES:
            raise GuestError(f"unknown privilege profile {privilege!r}", ErrorKind.PROTOCOL)
        setting = "kernel.unprivileged_bpf_disabled"
        refused = ""
        if privilege == "unprivileged":
            try:
                Path("/proc/sys/kernel/unprivileged_bpf_disabled").write_text("0\n")
            except OSError as exc:
                refused = f"{setting}=0 refused: {exc.strerror}"
        keep = set(req.keep_caps)
        with caps.lowered(tuple(c for c in caps.PROFILES[privilege] if c not in keep)):
            obj, result = self._load(lib, req, 0)
        out = dataclasses.replace(
            self._report(lib, result),
            privilege=privilege,
            unprivileged=privilege == "unprivileged",
            unprivileged_bpf_disabled=_read_sysctl(setting),
            notes=(refused,) if refused else (),
        )
        return obj, out

    @classmethod
    def _load(cls, lib: Any, req: p.Load, ifindex: int) -> tuple[Any, Any]:
        opts = cls._options(req, ifindex)
        try:
            return libbpf_object.BpfObject.load_one(lib, req.object, req.program, opts)
        except (KeyError, ValueError) as exc:  # a map or target the object cannot take
            raise GuestError(str(exc).strip('"'), ErrorKind.SETUP) from None

    @staticmethod
    def _options(req: p.Load, ifindex: int) -> libbpf_load.LoadOptions:
        sizes = tuple(
            libbpf_prepare.MapSize(m["name"], m.get("max_entries"), m.get("value_size"))
            for m in req.maps
        )
        return libbpf_load.LoadOptions(
            log_level=int(req.log_level),
            log_size=int(req.log_size or 16 << 20),
            log_failures_only=bool(req.log_failures_only),
            btf_custom_path=req.btf_custom_path,
            kconfig=req.kconfig,
            prog_flags=int(req.prog_flags),
            ifindex=ifindex,
            presets=_presets(req.object, dict(req.globals)),
            map_sizes=sizes,
            fixups=bool(req.fixups),
            pinning=bool(req.pinning),
            pin_root=req.pin_root,
            attach_target=req.attach_target,
            companions=tuple(req.companions),
            unprivileged_maps_only=bool(req.unprivileged_maps_only),
        )

    def _object(self, handle: int) -> Any:
        obj = self.objects.get(int(handle))
        if obj is None:
            raise GuestError(f"no loaded object with handle {handle}", ErrorKind.PROTOCOL)
        return obj

    def attach(self, req: p.Attach) -> r.AttachReply:
        obj = self._object(req.handle)
        program, family = req.program, req.family
        self.link_netns[int(req.handle)] = req.ns
        with in_netns(req.ns):
            ifindex = ifindex_of(req.dev, req.ns) if req.dev else 0
            try:
                if family == "xdp":
                    link = obj.attach_xdp(program, ifindex, req.mode or "auto")
                    mode = obj.xdp_attach_mode(ifindex)
                    return r.AttachReply(link.via, attach_mode=mode)
                if family == "tc":
                    link = obj.attach_tc(program, ifindex, req.direction)
                elif family == "tcx":
                    link = obj.attach_tcx(program, ifindex, req.direction)
                elif family == "cgroup":
                    path = Path("/sys/fs/cgroup") / str(req.path)
                    path.mkdir(parents=True, exist_ok=True)
                    link = obj.attach_cgroup(program, str(path))
                elif family == "socket":
                    # The filter goes on the traffic drive's receiving socket, which does not
                    # exist yet; attaching it to a scratch socket now reports a refusal here.
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as scratch:
                        drive.attach_socket_filter(scratch, obj.prog_fd(program), program)
                    return r.AttachReply("setsockopt(SO_ATTACH_BPF)")
                elif family == "auto":
                    link = obj.attach_auto(program)
                else:
                    raise GuestError(f"unknown attach family {family!r}", ErrorKind.PROTOCOL)
            except libbpf.AttachError as exc:
                raise GuestError(str(exc), ErrorKind.ATTACH) from None
        return r.AttachReply(link.via)

    def test_run(self, req: p.TestRun) -> r.TestRunReply:
        obj = self._object(req.handle)
        run = obj.test_run(
            req.program,
            bytes.fromhex(req.data_hex),
            ctx=bytes.fromhex(req.ctx_hex) if req.ctx_hex else None,
            repeat=int(req.repeat),
            ctx_only=bool(req.ctx_only),
        )
        return r.TestRunReply(
            retval=run.retval,
            duration_ns=run.duration_ns,
            errno=run.errno,
            data_out_hex=run.data_out.hex(),
            ctx_out_hex=run.ctx_out.hex(),
        )

    def map_dump(self, req: p.MapDump) -> r.MapDumpReply:
        """Keys and values of the named maps (default: every map that can be walked; ring
        buffers and perf arrays cannot)."""
        obj = self._object(req.handle)
        wanted = req.maps
        out: dict[str, tuple[tuple[str, str], ...]] = {}
        for name in wanted or obj.map_names():
            try:
                out[name] = tuple((k.hex(), v.hex()) for k, v in obj.map_items(name))
            except libbpf.LibbpfError:
                if wanted:
                    raise
        return r.MapDumpReply(out)

    def map_update(self, req: p.MapUpdate) -> r.MapUpdateReply:
        """Write map contents: {map: [[key, value], ...]}; an integer is written
        little-endian at the map's key or value size, a string is hex bytes."""
        obj = self._object(req.handle)
        written = 0
        for name, rows in req.maps.items():
            key_size, value_size = obj.map_sizes(name)
            for key, value in rows:
                try:
                    obj.map_update(name, _raw(key, key_size), _raw(value, value_size))
                except (libbpf.LibbpfError, ValueError, OverflowError) as exc:
                    msg = f"setting map {name}[{key}]: {exc}"
                    raise GuestError(msg, ErrorKind.SETUP) from None
                written += 1
        return r.MapUpdateReply(written)

    def tail_calls(self, req: p.TailCalls) -> r.TailCallsReply:
        """Fill prog array slots with programs of the same object, by name, as user space
        does after the load: {"slots": [[map, index, program], ...]}."""
        obj = self._object(req.handle)
        for map_name, index, program in req.slots:
            try:
                fd = obj.prog_fd(program)
                key_size, value_size = obj.map_sizes(map_name)
                obj.map_update(map_name, _raw(int(index), key_size), _raw(fd, value_size))
            except (KeyError, libbpf.LibbpfError, ValueError) as exc:
                msg = f"tail call slot {map_name}[{index}] = {program}: {exc}"
                raise GuestError(msg, ErrorKind.SETUP) from None
        return r.TailCallsReply(len(req.slots))

    def events_start(self, req: p.EventsStart) -> r.EventsStartReply:
        """Start counting records of ringbuf maps (before the drive)."""
        obj = self._object(req.handle)
        counters = self.counters.setdefault(int(req.handle), {})
        for name in req.maps:
            counters[name] = obj.ringbuf_counter(name)
        return r.EventsStartReply(tuple(sorted(counters)))

    def events_count(self, req: p.EventsCount) -> r.EventsCountReply:
        """Records seen per map since events_start (drains what is pending)."""
        counters = self.counters.get(int(req.handle), {})
        for counter in counters.values():
            counter.consume()
        return r.EventsCountReply({name: int(counter.count) for name, counter in counters.items()})

    def probe(self, req: p.Probe) -> r.ProbeReply:
        """What of a case's `requires:` this kernel lacks, each with the probe that said so."""
        lib = self.libbpf()
        missing: list[str] = []
        unprobed: list[str] = []
        prog_type = int(req.prog_type)
        checks = [("helper", f"helper {n}", prog_type, i) for n, i in req.helpers.items()]
        checks += [("prog_type", f"program type {n}", v, 0) for n, v in req.prog_types.items()]
        checks += [("map_type", f"map type {n}", v, 0) for n, v in req.map_types.items()]
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
        wanted = {k: f"kfunc {k}" for k in req.kfuncs} | dict(req.btf_names)
        if wanted:
            btf = _kernel_btf()
            # A kfunc is a FUNC in the kernel's BTF, a struct_ops type a STRUCT: either
            # way its name is in the BTF string table.
            missing += [
                f"{what} (not in kernel or loaded module BTF)"
                for name, what in wanted.items()
                if b"\0" + name.encode() + b"\0" not in btf
            ]
        return r.ProbeReply(tuple(missing), tuple(unprobed))

    def release(self, req: p.Release) -> r.ReleaseReply:
        """Close objects (all, or one handle): links detach, programs and maps go away."""
        handles = [int(req.handle)] if req.handle else list(self.objects)
        problems = []
        for handle in handles:
            obj = self.objects.pop(handle, None)
            ns = self.link_netns.pop(handle, None)
            libbpf_prepare.unpin(self.pins.pop(handle, []))
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
        return r.ReleaseReply(tuple(handles), tuple(problems))

    def _leaks(self, before: dict[str, frozenset[int]]) -> list[str]:
        """Programs, maps and links alive now that were not before the case's first load.
        Freeing is partly deferred in the kernel (RCU, workqueues), so wait a little."""
        lib = self.libbpf()
        deadline = time.monotonic() + LEAK_SETTLE_S
        pause = 0.002  # most ids are gone after one RCU grace period: a few ms, even on TCG
        while True:
            now = libbpf_load.live_ids(lib)
            extra = {kind: sorted(now[kind] - before.get(kind, frozenset())) for kind in now}
            if not any(extra.values()) or time.monotonic() > deadline:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
        return [
            f"{kind} id {ident} still alive after the case released everything"
            for kind, idents in extra.items()
            for ident in idents
        ]

    # -- loop ----------------------------------------------------------------------------
    def handle(self, message: dict[str, Any]) -> p.Answer:
        """One decoded request line to its answer: a request the protocol does not allow,
        a GuestError and any other exception are answers too, never a crash."""
        rid = message.get("id")
        try:
            request = p.parse_request(message)
            return p.answer_ok(rid, self.ops[request.op](request).to_wire())
        except GuestError as exc:
            return p.answer_error(rid, str(exc), exc.kind)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            return p.answer_error(rid, text, ErrorKind.INTERNAL, traceback=traceback.format_exc())


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
            raise GuestError(
                f"the object has no global variable {name!r} (globals: {known})", ErrorKind.SETUP
            )
        try:
            data = int(value).to_bytes(var.size, "little", signed=int(value) < 0)
        except OverflowError:
            raise GuestError(
                f"{name} = {value} does not fit its {var.size} bytes", ErrorKind.SETUP
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


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _read_sysctl(name: str) -> str | None:
    return _read_text("/proc/sys/" + name.replace(".", "/"))


def _clonable(req: p.Load) -> bool:
    """A verify-only load the prepared object can serve: with every capability, no device
    to bind to, and nothing set on the program before preparing (a target, companions)."""
    lowered = bool(req.privilege) and req.privilege != "privileged"
    special = req.offload_dev or req.companions or req.attach_target
    return req.verify_only and not (lowered or special or req.unprivileged_maps_only)


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
            response = p.answer_error(None, f"bad JSON: {exc}", ErrorKind.PROTOCOL)
        else:
            response = agent.handle(request)
        with lock:
            stdout.write(json.dumps(response) + "\n")
            stdout.flush()


if __name__ == "__main__":
    serve()
