"""One bpf_object inside the guest: `BpfObject` opens an object and loads one program of
it at a time (as veristat does), so every program gets its own verdict, verifier log,
timing and prog_info; it finds its programs and maps, reads and writes maps, and closes
what it attached.  Attaching is the `Attacher` each object owns
(harness.guest.libbpf_attach), test_run and ring buffers are harness.guest.libbpf_run's:
the object's methods of the same names delegate to them.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import mmap
import os
import time
from dataclasses import replace

from harness.guest import libbpf_prepare
from harness.guest.libbpf import AttachError, Libbpf, LibbpfError
from harness.guest.libbpf_attach import Attacher, Link, XdpState
from harness.guest.libbpf_load import (
    LoadOptions,
    ProgInfo,
    ProgramLoad,
    full_log_reload,
    prog_info,
    stats_first,
    wants_full_log,
    with_full_log,
)
from harness.guest.libbpf_run import RingBufferCounter, TestRun, prog_test_run


class BpfObjectOpenOpts(ctypes.Structure):
    # The 1.1 layout (80 bytes); 1.4 appends bpf_token_path, which stays unused.
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", ctypes.c_char_p),
        ("_attach_prog_fd", ctypes.c_uint32),  # removed field, still in the layout
        ("kconfig", ctypes.c_char_p),
        ("btf_custom_path", ctypes.c_char_p),
        ("kernel_log_buf", ctypes.c_void_p),
        ("kernel_log_size", ctypes.c_size_t),
        ("kernel_log_level", ctypes.c_uint32),
    )


_PERCPU_MAP_TYPES = frozenset({5, 6, 10, 21})  # PERCPU_HASH/_ARRAY, LRU_PERCPU_HASH, ..._STORAGE


def attach_type_of(lib: Libbpf, prog: int) -> str:
    """libbpf's name of the program's expected attach type; "" for the programs that have
    none (their 0 would read as BPF_CGROUP_INET_INGRESS, which only cgroup_skb means)."""
    value = int(lib.c.bpf_program__expected_attach_type(prog))
    if value == 0 and lib.prog_type_name(lib.c.bpf_program__type(prog)) != "cgroup_skb":
        return ""
    return lib.attach_type_name(value)


def preset(lib: Libbpf, obj: int, presets: tuple[tuple[str, int, bytes], ...]) -> None:
    """Write global variables' initial values into the opened object's data maps (libbpf
    names them "<object>.<section>", e.g. "prog_bpf.rodata"), before the load freezes them."""
    maps = libbpf_prepare.maps_of(lib, obj)
    for section, offset, data in presets:
        m = next((m for m in maps if libbpf_prepare.map_name(lib, m).endswith(section)), None)
        size = ctypes.c_size_t(0)
        base = lib.c.bpf_map__initial_value(m, ctypes.byref(size)) if m else None
        if not base or offset + len(data) > size.value:
            raise KeyError(f"no room for a global at {section}+{offset} in the object")
        ctypes.memmove(base + offset, data, len(data))


def _companions(names: list[str], program: str, wanted: tuple[str, ...]) -> list[str]:
    """The programs to load with `program`: those named that the object has ("*": all)."""
    if "*" in wanted:
        return [n for n in names if n != program]
    return [n for n in names if n in wanted and n != program]


def _failed_companion(messages: str, companions: list[str]) -> str:
    """The companion libbpf names as failing ("prog 'x': failed to load"), if any."""
    for name in companions:
        if f"prog '{name}': failed to load" in messages or (
            f"prog '{name}': BPF program load failed" in messages
        ):
            return name
    return ""


class LogBuffer:
    """A zero-filled buffer for the kernel log.  Anonymous mmap, so a large buffer costs
    memory only for the pages the kernel writes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._map = mmap.mmap(-1, size)
        self._view = (ctypes.c_char * size).from_buffer(self._map)
        self.address = ctypes.addressof(self._view)

    def read(self) -> bytes:
        end = self._map.find(b"\0")
        return self._map[: self.size if end < 0 else end]


def _log_from_messages(messages: str) -> str:
    """The log libbpf printed itself (log_level 0: it retried at level 1 with its buffer)."""
    begin, end = "-- BEGIN PROG LOAD LOG --\n", "-- END PROG LOAD LOG --"
    start = messages.find(begin)
    if start < 0:
        return ""
    stop = messages.find(end, start)
    return messages[start + len(begin) : stop if stop >= 0 else None]


class BpfObject:
    """One opened and loaded bpf_object; a context manager that detaches its links and
    closes it (which unloads its programs and maps).  Its attach calls are an `Attacher`
    it owns."""

    def __init__(self, lib: Libbpf, path: str, ptr: int) -> None:
        self.lib, self.path = lib, path
        self._ptr: int | None = ptr
        self._attacher = Attacher(lib, self)

    # -- opening and loading --------------------------------------------------------------
    @staticmethod
    def open_file(lib: Libbpf, path: str, opts: LoadOptions) -> int | None:
        open_opts = BpfObjectOpenOpts(sz=ctypes.sizeof(BpfObjectOpenOpts))
        if opts.kconfig is not None:
            open_opts.kconfig = opts.kconfig.encode()
        if opts.btf_custom_path is not None:
            open_opts.btf_custom_path = os.fsencode(opts.btf_custom_path)
        if opts.pin_root is not None:
            open_opts.pin_root_path = os.fsencode(opts.pin_root)
        ptr: int | None = lib.c.bpf_object__open_file(os.fsencode(path), ctypes.byref(open_opts))
        return ptr

    @staticmethod
    def _programs(lib: Libbpf, obj: int) -> list[int]:
        return lib.walk("bpf_object__next_program", obj)

    @classmethod
    def programs_in(cls, lib: Libbpf, path: str) -> list[tuple[str, str]]:
        """(name, section) of every program in the object, without loading it."""
        lib.drain_messages()
        obj = cls.open_file(lib, path, LoadOptions())
        if not obj:
            raise LibbpfError(ctypes.get_errno(), f"opening {path}", lib.drain_messages())
        try:
            return [
                (lib.c.bpf_program__name(p).decode(), lib.c.bpf_program__section_name(p).decode())
                for p in cls._programs(lib, obj)
            ]
        finally:
            lib.c.bpf_object__close(obj)

    @classmethod
    def load_one(
        cls, lib: Libbpf, path: str, program: str, opts: LoadOptions | None = None
    ) -> tuple[BpfObject | None, ProgramLoad]:
        """Open `path` afresh and load only `program`.  On success the caller owns the
        returned object (attach, run, then close it); on failure it is None.

        A user log buffer is never grown by libbpf: on ENOSPC the object is re-opened (an
        object loads once) with twice the buffer, up to log_size_max.  libbpf keeps the
        kernel's log_true_size to itself, so doubling is the only way through
        bpf_object__load.

        With log_failures_only, the first load keeps the statistics only (the verifier at
        full speed); a load that fails in the kernel is loaded again at opts.log_level for
        its complete log."""
        opts = opts or LoadOptions()
        quiet = stats_first(opts)
        if quiet is None:
            return cls._load_growing_log(lib, path, program, opts)
        obj, first = cls._load_growing_log(lib, path, program, quiet)
        if first.failed_stage != "load" or not wants_full_log(first):
            return obj, first  # loaded, or failed where a whole log says no more
        obj, full = cls._load_growing_log(lib, path, program, full_log_reload(opts))
        return obj, with_full_log(first, full)

    @classmethod
    def _load_growing_log(
        cls, lib: Libbpf, path: str, program: str, opts: LoadOptions
    ) -> tuple[BpfObject | None, ProgramLoad]:
        """load_one at one log level, doubling the log's buffer on ENOSPC."""
        size, attempts = opts.log_size, 1
        while True:
            obj, result, filled = cls._load_attempt(lib, path, program, opts, size)
            # ENOSPC with a full buffer is the log overflowing, not the verdict.
            overflowed = result.errno == _errno.ENOSPC and filled
            if not overflowed or size >= opts.log_size_max:
                break
            size, attempts = min(size * 2, opts.log_size_max), attempts + 1
        return obj, replace(result, log_truncated=overflowed, attempts=attempts)

    @classmethod
    def load_each(
        cls, lib: Libbpf, path: str, opts: LoadOptions | None = None
    ) -> list[ProgramLoad]:
        """Every program of the object loaded on its own, veristat style; nothing stays loaded."""
        results = []
        for name, _ in cls.programs_in(lib, path):
            obj, result = cls.load_one(lib, path, name, opts)
            if obj is not None:
                obj.close()
            results.append(result)
        return results

    @classmethod
    def _load_attempt(
        cls, lib: Libbpf, path: str, program: str, opts: LoadOptions, log_size: int
    ) -> tuple[BpfObject | None, ProgramLoad, bool]:
        """One open and load; also says whether the log filled its buffer."""
        c = lib.c
        lib.drain_messages()
        obj = cls.open_file(lib, path, opts)
        if not obj:
            failed = ProgramLoad(
                program=program,
                section="",
                prog_type="",
                attach_type="",
                ok=False,
                errno=ctypes.get_errno(),
                log="",
                log_truncated=False,
                libbpf_messages=lib.drain_messages(),
                load_ns=0,
                insn_cnt=0,
                prog_id=None,
                xlated_len=None,
                jited_len=None,
                verified_insns=None,
                log_level=opts.log_level,
                failed_stage="open",
            )
            return None, failed, False
        try:
            preset(lib, obj, opts.presets)
            fixups = libbpf_prepare.prepare_maps(
                lib, obj, opts.map_sizes, fixups=opts.fixups, pinning=opts.pinning
            )
            if opts.unprivileged_maps_only:
                libbpf_prepare.skip_privileged_maps(lib, obj)
            programs = cls._programs(lib, obj)
            names = [c.bpf_program__name(p).decode() for p in programs]
            if program not in names:
                raise KeyError(f"{path} has no program {program!r} (it has {', '.join(names)})")
            prog = programs[names.index(program)]
            if opts.attach_target:
                libbpf_prepare.set_attach_target(lib, prog, program, opts.attach_target)
            loaded = _companions(names, program, opts.companions)
            for p, name in zip(programs, names, strict=True):
                c.bpf_program__set_autoload(p, p == prog or name in loaded)
            if opts.prog_flags:
                c.bpf_program__set_flags(prog, c.bpf_program__flags(prog) | opts.prog_flags)
            if opts.ifindex:
                c.bpf_program__set_ifindex(prog, opts.ifindex)
            log = LogBuffer(log_size) if opts.log_level else None
            if log is not None:  # referenced until bpf_object__load returns
                c.bpf_program__set_log_buf(prog, log.address, log_size)
                c.bpf_program__set_log_level(prog, opts.log_level)
            started = time.perf_counter_ns()
            stage = "load"
            # libbpf >= 1.6 splits the load: a failure in prepare is libbpf's (BTF, maps,
            # CO-RE), and the verifier never saw the program
            rc = int(c.bpf_object__prepare(obj)) if lib.has("bpf_object__prepare") else 0
            if rc != 0:
                stage = "prepare"
            else:
                rc = int(c.bpf_object__load(obj))
            load_ns = time.perf_counter_ns() - started
            messages = lib.drain_messages()
            raw = log.read() if log else b""
            text = raw.decode("utf-8", "replace") if log else _log_from_messages(messages)
            info = prog_info(lib, int(c.bpf_program__fd(prog))) if rc == 0 else None
            result = ProgramLoad(
                program=program,
                section=c.bpf_program__section_name(prog).decode(),
                prog_type=lib.prog_type_name(c.bpf_program__type(prog)),
                attach_type=attach_type_of(lib, prog),
                ok=rc == 0,
                errno=-rc if rc < 0 else 0,
                log=text,
                log_truncated=False,
                libbpf_messages=messages,
                load_ns=load_ns,
                insn_cnt=int(c.bpf_program__insn_cnt(prog)),
                prog_id=info.id if info else None,
                xlated_len=info.xlated_len if info else None,
                jited_len=info.jited_len if info else None,
                verified_insns=info.verified_insns if info else None,
                log_level=opts.log_level,
                log_size=log_size if log else 0,
                failed_stage="" if rc == 0 else stage,
                fixups=fixups,
                failed_map=None if rc == 0 else libbpf_prepare.failed_map(lib, obj, messages),
                companions=tuple(loaded),
                failed_program="" if rc == 0 else _failed_companion(messages, loaded),
            )
        except BaseException:
            c.bpf_object__close(obj)
            raise
        filled = len(raw) >= log_size - 1
        if rc == 0:
            return cls(lib, path, obj), result, filled
        c.bpf_object__close(obj)
        return None, result, filled

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        """Detach every link still attached, then close the object.  Detach errors are
        raised after the object is closed."""
        errors: list[AttachError] = []
        for link in self._attacher.links:
            try:
                link.close()
            except AttachError as exc:
                errors.append(exc)
        self._attacher.links.clear()
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            self.lib.c.bpf_object__close(ptr)
        if errors:
            raise errors[0]

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lookups ------------------------------------------------------------------------
    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise ValueError(f"{self.path}: the object is closed")
        return self._ptr

    def program_ptr(self, name: str) -> int:
        """The bpf_program pointer of the object's program `name`."""
        prog: int | None = self.lib.c.bpf_object__find_program_by_name(self.ptr, name.encode())
        if not prog:
            raise KeyError(f"{self.path} has no program {name!r}")
        return prog

    def prog_fd(self, program: str) -> int:
        fd = int(self.lib.c.bpf_program__fd(self.program_ptr(program)))
        if fd < 0:
            raise KeyError(f"{self.path}: program {program!r} is not loaded")
        return fd

    def prog_info(self, program: str) -> ProgInfo:
        return prog_info(self.lib, self.prog_fd(program))

    def _map(self, name: str) -> int:
        ptr: int | None = self.lib.c.bpf_object__find_map_by_name(self.ptr, name.encode())
        if not ptr:
            raise KeyError(f"{self.path} has no map {name!r} (it has {self.map_names()})")
        return ptr

    def map_fd(self, name: str) -> int:
        return int(self.lib.c.bpf_map__fd(self._map(name)))

    def map_names(self) -> list[str]:
        return [
            libbpf_prepare.map_name(self.lib, m) for m in libbpf_prepare.maps_of(self.lib, self.ptr)
        ]

    # -- maps ---------------------------------------------------------------------------
    def _map_sizes(self, name: str) -> tuple[int, int, int]:
        """fd, key size and value size (per-CPU maps: one 8-byte-aligned slot per CPU)."""
        c, m = self.lib.c, self._map(name)
        key_size, value_size = int(c.bpf_map__key_size(m)), int(c.bpf_map__value_size(m))
        if int(c.bpf_map__type(m)) in _PERCPU_MAP_TYPES:
            value_size = (value_size + 7) // 8 * 8 * int(c.libbpf_num_possible_cpus())
        return int(c.bpf_map__fd(m)), key_size, value_size

    def map_sizes(self, name: str) -> tuple[int, int]:
        """Key and value size of a map, as its lookups and updates take them."""
        _, key_size, value_size = self._map_sizes(name)
        return key_size, value_size

    def map_lookup(self, name: str, key: bytes) -> bytes | None:
        fd, key_size, value_size = self._map_sizes(name)
        _check_size(name, "key", key, key_size)
        value = ctypes.create_string_buffer(value_size)
        rc = int(self.lib.c.bpf_map_lookup_elem(fd, key, value))
        if rc == -_errno.ENOENT:
            return None
        if rc < 0:
            raise LibbpfError(-rc, f"lookup in map {name}")
        return value.raw

    def map_update(self, name: str, key: bytes, value: bytes, flags: int = 0) -> None:
        fd, key_size, value_size = self._map_sizes(name)
        _check_size(name, "key", key, key_size)
        _check_size(name, "value", value, value_size)
        rc = int(self.lib.c.bpf_map_update_elem(fd, key, value, flags))
        if rc < 0:
            raise LibbpfError(-rc, f"update of map {name}")

    def map_items(self, name: str) -> list[tuple[bytes, bytes]]:
        """Every (key, value), walking bpf_map_get_next_key from the start."""
        fd, key_size, value_size = self._map_sizes(name)
        items: list[tuple[bytes, bytes]] = []
        key = ctypes.create_string_buffer(key_size)
        value = ctypes.create_string_buffer(value_size)
        previous: ctypes.Array[ctypes.c_char] | None = None
        while True:
            rc = int(self.lib.c.bpf_map_get_next_key(fd, previous, key))
            if rc == -_errno.ENOENT:
                return items
            if rc < 0:
                raise LibbpfError(-rc, f"walking the keys of map {name}")
            rc = int(self.lib.c.bpf_map_lookup_elem(fd, key, value))
            if rc == 0:  # ENOENT: deleted since get_next_key; skip it
                items.append((key.raw, value.raw))
            elif rc != -_errno.ENOENT:
                raise LibbpfError(-rc, f"lookup in map {name}")
            previous = ctypes.create_string_buffer(key.raw, key_size)

    # -- attaching: the object's Attacher (harness.guest.libbpf_attach) ------------------
    def attach_xdp(self, program: str, ifindex: int, mode: str = "auto") -> Link:
        return self._attacher.attach_xdp(program, ifindex, mode)

    def xdp_query(self, ifindex: int) -> XdpState:
        return self._attacher.xdp_query(ifindex)

    def xdp_attach_mode(self, ifindex: int) -> str:
        return self._attacher.xdp_attach_mode(ifindex)

    def attach_tc(self, program: str, ifindex: int, direction: str) -> Link:
        return self._attacher.attach_tc(program, ifindex, direction)

    def attach_tcx(self, program: str, ifindex: int, direction: str) -> Link:
        return self._attacher.attach_tcx(program, ifindex, direction)

    def attach_cgroup(self, program: str, cgroup_path: str) -> Link:
        return self._attacher.attach_cgroup(program, cgroup_path)

    def attach_auto(self, program: str) -> Link:
        return self._attacher.attach_auto(program)

    # -- running: harness.guest.libbpf_run -----------------------------------------------
    def test_run(
        self,
        program: str,
        data: bytes = b"",
        *,
        ctx: bytes | None = None,
        repeat: int = 1,
        flags: int = 0,
        data_out_size: int = 65536,
        ctx_only: bool = False,
    ) -> TestRun:
        """BPF_PROG_TEST_RUN of one of the object's programs (see `prog_test_run`)."""
        return prog_test_run(
            self.lib,
            self.prog_fd(program),
            data,
            ctx=ctx,
            repeat=repeat,
            flags=flags,
            data_out_size=data_out_size,
            ctx_only=ctx_only,
        )

    def ringbuf_counter(self, map_name: str, *, keep: int = 64) -> RingBufferCounter:
        return RingBufferCounter(self.lib, self.map_fd(map_name), keep=keep)


def _check_size(map_name: str, what: str, data: bytes, size: int) -> None:
    # The kernel reads exactly key_size/value_size bytes: a short buffer would be overrun.
    if len(data) != size:
        raise ValueError(f"map {map_name}: {what} is {len(data)} bytes, the map wants {size}")
