"""A ctypes binding over the system libbpf.so.1, used by the agent inside the guest.

Loads one program per object open (as veristat does), so every program gets its own
verdict, verifier log, timing and prog_info; reads and writes maps; attaches and runs
programs (BPF_PROG_TEST_RUN) through the `Attachable` mixin of harness.guest.libbpf_attach.

Debian bookworm's libbpf 1.1.2 is the floor: newer APIs are probed with `Libbpf.has()`,
opts structs are defined to the newest layout used with unknown fields left zero, and every
pointer-returning function is declared `c_void_p` (the default c_int truncates pointers).
Layouts and semantics: the team's bpf-facts reference, §1-§4.  Struct offsets are x86-64
(LP64), and libbpf's messages are formatted by handing its va_list to vsnprintf, which only
x86-64 allows (elsewhere the raw format strings are kept).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import mmap
import os
import struct
import time
from dataclasses import dataclass, replace
from typing import Any

from harness.guest import libbpf_prepare
from harness.guest.libbpf_attach import (
    ENOTSUPP,
    Attachable,
    AttachError,
    LibbpfError,
    Link,
    RingBufferCounter,
    TestRun,
    XdpState,
    describe_errno,
    errno_name,
)

__all__ = [
    "ENOTSUPP",
    "AttachError",
    "BpfObject",
    "Libbpf",
    "LibbpfError",
    "Link",
    "LoadOptions",
    "ProgInfo",
    "ProgramLoad",
    "RingBufferCounter",
    "TestRun",
    "XdpState",
    "describe_errno",
    "errno_name",
    "live_ids",
]

FLOOR = (1, 1)  # Debian bookworm
BPF_LOG_LEVEL1, BPF_LOG_LEVEL2, BPF_LOG_STATS, BPF_LOG_FIXED = 1, 2, 4, 8
# The kernel rejects log_size > UINT_MAX >> 2 with EINVAL, so "1 GiB" is one byte short.
MAX_LOG_SIZE = 0xFFFFFFFF >> 2
LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2

_P, _I, _U32, _U64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64
_SZ, _STR, _BOOL = ctypes.c_size_t, ctypes.c_char_p, ctypes.c_bool

# name -> (restype, argtypes, libbpf version that introduced it).  c_char_p results are
# copied into bytes; every other pointer is c_void_p.
_FUNCTIONS: dict[str, tuple[Any, tuple[Any, ...], tuple[int, int]]] = {
    "libbpf_major_version": (_U32, (), (0, 6)),
    "libbpf_minor_version": (_U32, (), (0, 6)),
    "libbpf_version_string": (_STR, (), (0, 6)),
    "libbpf_set_print": (_P, (_P,), (0, 0)),
    "libbpf_num_possible_cpus": (_I, (), (0, 0)),
    "libbpf_bpf_prog_type_str": (_STR, (_I,), (1, 0)),
    "libbpf_bpf_attach_type_str": (_STR, (_I,), (1, 0)),
    "libbpf_bpf_map_type_str": (_STR, (_I,), (1, 0)),
    "libbpf_probe_bpf_prog_type": (_I, (_I, _P), (0, 7)),
    "libbpf_probe_bpf_map_type": (_I, (_I, _P), (0, 7)),
    "libbpf_probe_bpf_helper": (_I, (_I, _I, _P), (0, 7)),
    "bpf_object__open_file": (_P, (_STR, _P), (0, 0)),
    "bpf_object__load": (_I, (_P,), (0, 0)),
    "bpf_object__close": (None, (_P,), (0, 0)),
    "bpf_object__next_program": (_P, (_P, _P), (0, 6)),
    "bpf_object__find_program_by_name": (_P, (_P, _STR), (0, 0)),
    "bpf_object__next_map": (_P, (_P, _P), (0, 6)),
    "bpf_object__find_map_by_name": (_P, (_P, _STR), (0, 0)),
    "bpf_program__name": (_STR, (_P,), (0, 0)),
    "bpf_program__section_name": (_STR, (_P,), (0, 2)),
    "bpf_program__set_autoload": (_I, (_P, _BOOL), (0, 1)),
    "bpf_program__set_log_buf": (_I, (_P, _P, _SZ), (0, 7)),
    "bpf_program__set_log_level": (_I, (_P, _U32), (0, 7)),
    "bpf_program__flags": (_U32, (_P,), (0, 6)),
    "bpf_program__set_flags": (_I, (_P, _U32), (0, 6)),
    "bpf_program__set_ifindex": (None, (_P, _U32), (0, 0)),
    "bpf_program__insn_cnt": (_SZ, (_P,), (0, 6)),
    "bpf_program__fd": (_I, (_P,), (0, 0)),
    "bpf_program__type": (_I, (_P,), (0, 7)),
    "bpf_program__expected_attach_type": (_I, (_P,), (0, 7)),
    "bpf_map__name": (_STR, (_P,), (0, 0)),
    "bpf_map__initial_value": (_P, (_P, _P), (0, 5)),
    "bpf_map__fd": (_I, (_P,), (0, 0)),
    "bpf_map__type": (_I, (_P,), (0, 1)),
    "bpf_map__key_size": (_U32, (_P,), (0, 1)),
    "bpf_map__value_size": (_U32, (_P,), (0, 1)),
    "bpf_map__max_entries": (_U32, (_P,), (0, 1)),
    "bpf_map__set_max_entries": (_I, (_P, _U32), (0, 1)),
    "bpf_map__set_value_size": (_I, (_P, _U32), (0, 1)),
    "bpf_map__set_pin_path": (_I, (_P, _STR), (0, 0)),
    "bpf_map__pin_path": (_STR, (_P,), (0, 5)),
    "bpf_program__set_attach_target": (_I, (_P, _I, _STR), (0, 0)),
    "bpf_map__map_flags": (_U32, (_P,), (0, 1)),
    "bpf_map__set_autocreate": (_I, (_P, _BOOL), (0, 8)),
    "bpf_map_lookup_elem": (_I, (_I, _P, _P), (0, 0)),
    "bpf_map_update_elem": (_I, (_I, _P, _P, _U64), (0, 0)),
    "bpf_map_get_next_key": (_I, (_I, _P, _P), (0, 0)),
    "bpf_obj_get_info_by_fd": (_I, (_I, _P, _P), (0, 0)),
    "bpf_prog_get_next_id": (_I, (_U32, _P), (0, 0)),
    "bpf_map_get_next_id": (_I, (_U32, _P), (0, 0)),
    "bpf_link_get_next_id": (_I, (_U32, _P), (0, 0)),
    "bpf_prog_test_run_opts": (_I, (_I, _P), (0, 2)),
    "bpf_enable_stats": (_I, (_I,), (0, 0)),
    "bpf_xdp_attach": (_I, (_I, _I, _U32, _P), (0, 7)),
    "bpf_xdp_detach": (_I, (_I, _U32, _P), (0, 7)),
    "bpf_xdp_query": (_I, (_I, _I, _P), (0, 7)),
    "bpf_tc_hook_create": (_I, (_P,), (0, 4)),
    "bpf_tc_hook_destroy": (_I, (_P,), (0, 4)),
    "bpf_tc_attach": (_I, (_P, _P), (0, 4)),
    "bpf_tc_detach": (_I, (_P, _P), (0, 4)),
    "bpf_link_create": (_I, (_I, _I, _I, _P), (0, 0)),
    "bpf_program__attach": (_P, (_P,), (0, 0)),
    "bpf_program__attach_cgroup": (_P, (_P, _I), (0, 0)),
    "bpf_link__destroy": (_I, (_P,), (0, 0)),
    "bpf_link__fd": (_I, (_P,), (0, 0)),
    "ring_buffer__new": (_P, (_I, _P, _P, _P), (0, 0)),
    "ring_buffer__consume": (_I, (_P,), (0, 0)),
    "ring_buffer__free": (None, (_P,), (0, 0)),
    # Newer than the floor: declared only when present (has()).
    "bpf_prog_get_info_by_fd": (_I, (_I, _P, _P), (1, 2)),
    "bpf_program__attach_tcx": (_P, (_P, _I, _P), (1, 3)),
    "bpf_program__attach_netkit": (_P, (_P, _I, _P), (1, 3)),
    "bpf_object__prepare": (_I, (_P,), (1, 6)),
    "bpf_program__attach_cgroup_opts": (_P, (_P, _I, _P), (1, 6)),
}
# Struct fields newer than the floor.  The binding never sets them, so a struct stays valid
# for an older libbpf (OPTS_VALID accepts a zero tail); they are listed for reports.
_NEWER_FIELDS = (
    ("bpf_prog_load_opts.log_true_size", (1, 2)),
    ("bpf_object_open_opts.bpf_token_path", (1, 4)),
    ("bpf_tc_hook.qdisc", (1, 6)),
)

# int (*libbpf_print_fn_t)(enum libbpf_print_level, const char *fmt, va_list ap)
PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_VA_LIST_SIZE = 24  # x86-64: struct __va_list_tag; va_copy is a plain copy of it
_VA_LIST_IS_X86_64 = os.uname().machine == "x86_64"


class _Printer:
    """libbpf's print callback: formats each message with libc vsnprintf into a list.

    libbpf has one print hook per process, so there is one printer per loaded library,
    kept for the life of the process (libbpf may call it at any time)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.level = LIBBPF_INFO
        self.chunks: list[str] = []
        libc = ctypes.CDLL(None)
        self._vsnprintf = libc.vsnprintf
        self._vsnprintf.argtypes = (
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_void_p,
        )
        self._vsnprintf.restype = ctypes.c_int
        self._buf = ctypes.create_string_buffer(4096)
        self._copy = ctypes.create_string_buffer(_VA_LIST_SIZE)
        self._fn = PRINT_FN(self._print)
        lib.libbpf_set_print(self._fn)

    def _print(self, level: int, fmt: int | None, ap: int | None) -> int:
        if level > self.level or not fmt or not ap:
            return 0
        if not _VA_LIST_IS_X86_64:
            self.chunks.append(ctypes.string_at(fmt).decode("utf-8", "replace"))
            return 0
        # Measure on a copy (vsnprintf consumes the va_list), then format the original.
        ctypes.memmove(self._copy, ap, _VA_LIST_SIZE)
        needed = int(self._vsnprintf(None, 0, fmt, self._copy))
        if needed < 0:
            return 0
        if needed >= len(self._buf):
            self._buf = ctypes.create_string_buffer(needed + 1)
        self._vsnprintf(self._buf, len(self._buf), fmt, ap)
        self.chunks.append(self._buf.raw[:needed].decode("utf-8", "replace"))
        return 0


_PRINTERS: dict[int, _Printer] = {}


class Libbpf:
    """libbpf.so loaded with ctypes; every function given argtypes/restype."""

    def __init__(self, path: str = "libbpf.so.1") -> None:
        self.path = path
        self.c = ctypes.CDLL(path, use_errno=True)
        self._has: dict[str, bool] = {}
        lacking = [
            n for n, (_, _, since) in _FUNCTIONS.items() if since <= FLOOR and not self.has(n)
        ]
        if lacking:
            raise LibbpfError(
                _errno.ENOSYS, f"{path} lacks {', '.join(lacking)}; kitl needs libbpf >= 1.1"
            )
        for name, (restype, argtypes, _) in _FUNCTIONS.items():
            if self.has(name):
                function = getattr(self.c, name)
                function.restype, function.argtypes = restype, argtypes
        self.version: tuple[int, int] = (
            int(self.c.libbpf_major_version()),
            int(self.c.libbpf_minor_version()),
        )
        self.version_string = (self.c.libbpf_version_string() or b"").decode()
        # Keyed by dlopen handle: "libbpf.so.1" and its full path are the same library.
        handle = int(self.c._handle)
        if handle not in _PRINTERS:
            _PRINTERS[handle] = _Printer(self.c)
        self._printer = _PRINTERS[handle]

    def probe(self, kind: str, value: int, helper: int = 0) -> int:
        """libbpf's feature probes: does the running kernel support prog type / map type
        `value`, or helper `helper` in prog type `value`?  1 yes, 0 no, < 0 this libbpf
        cannot tell (it does not know how to probe a type newer than itself)."""
        if kind == "helper":
            return int(self.c.libbpf_probe_bpf_helper(value, helper, None))
        function = {
            "prog_type": self.c.libbpf_probe_bpf_prog_type,
            "map_type": self.c.libbpf_probe_bpf_map_type,
        }[kind]
        return int(function(value, None))

    def has(self, symbol: str) -> bool:
        if symbol not in self._has:
            self._has[symbol] = hasattr(self.c, symbol)
        return self._has[symbol]

    def missing_features(self) -> list[str]:
        """What this libbpf lacks that newer ones have: "name (version)", oldest first."""
        features = [(since, name) for name, (_, _, since) in _FUNCTIONS.items() if since > FLOOR]
        missing = [(since, n) for since, n in features if not self.has(n)]
        missing += [(since, n) for n, since in _NEWER_FIELDS if self.version < since]
        return [f"{name} ({since[0]}.{since[1]})" for since, name in sorted(missing)]

    def enable_run_stats(self) -> int:
        """bpf_enable_stats(BPF_STATS_RUN_TIME) (kernel 5.8): prog_info's run_cnt and
        run_time_ns count while the returned fd is open; the caller closes it."""
        fd = int(self.c.bpf_enable_stats(0))
        if fd < 0:
            raise LibbpfError(-fd, "bpf_enable_stats(BPF_STATS_RUN_TIME)")
        return fd

    def set_message_level(self, level: int) -> None:
        """Which libbpf messages to keep: LIBBPF_WARN, LIBBPF_INFO (default) or DEBUG."""
        self._printer.level = level

    def drain_messages(self) -> str:
        """What libbpf printed since the last drain (process-wide), and forget it."""
        text = "".join(self._printer.chunks)
        self._printer.chunks.clear()
        return text

    def _name(self, function: str, value: int) -> str:
        raw = getattr(self.c, function)(value) if self.has(function) else None
        return raw.decode() if raw else f"unknown({value})"

    def prog_type_name(self, value: int) -> str:
        return self._name("libbpf_bpf_prog_type_str", value)

    def attach_type_name(self, value: int) -> str:
        return self._name("libbpf_bpf_attach_type_str", value)

    def map_type_name(self, value: int) -> str:
        return self._name("libbpf_bpf_map_type_str", value)


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


# struct bpf_prog_info (6.1 UAPI): read raw, because of its bitfield (facts §1.7).
PROG_INFO_SIZE = 232
_INFO_U32 = {"type": 0, "id": 4, "jited_prog_len": 16, "xlated_prog_len": 20, "ifindex": 80}
_INFO_U64 = {"load_time": 40, "run_time_ns": 192, "run_cnt": 200}
_INFO_VERIFIED_INSNS = 216  # kernel 5.16+
_PERCPU_MAP_TYPES = frozenset({5, 6, 10, 21})  # PERCPU_HASH/_ARRAY, LRU_PERCPU_HASH, ..._STORAGE


@dataclass(frozen=True)
class ProgInfo:
    prog_type: int
    id: int
    name: str
    jited_len: int
    xlated_len: int
    ifindex: int
    load_time_ns: int  # since boot
    run_time_ns: int  # only counted while stats are enabled
    run_cnt: int
    verified_insns: int | None  # None before 5.16 (info_len does not reach it)


def prog_info(lib: Libbpf, fd: int) -> ProgInfo:
    """The kernel's bpf_prog_info into a zeroed 232-byte buffer: through libbpf >= 1.2's
    typed bpf_prog_get_info_by_fd, else the generic call 1.1 has (the same syscall)."""
    buf = ctypes.create_string_buffer(PROG_INFO_SIZE)
    length = ctypes.c_uint32(PROG_INFO_SIZE)
    function = (
        "bpf_prog_get_info_by_fd"
        if lib.has("bpf_prog_get_info_by_fd")
        else "bpf_obj_get_info_by_fd"
    )
    rc = int(getattr(lib.c, function)(fd, buf, ctypes.byref(length)))
    if rc < 0:
        raise LibbpfError(-rc, f"{function}({fd})")
    raw, size = buf.raw, int(length.value)
    u32 = {k: struct.unpack_from("<I", raw, off)[0] for k, off in _INFO_U32.items()}
    u64 = {k: struct.unpack_from("<Q", raw, off)[0] for k, off in _INFO_U64.items()}
    verified = None
    if size >= _INFO_VERIFIED_INSNS + 4:
        verified = struct.unpack_from("<I", raw, _INFO_VERIFIED_INSNS)[0]
    return ProgInfo(
        prog_type=u32["type"],
        id=u32["id"],
        name=raw[64:80].split(b"\0", 1)[0].decode("utf-8", "replace"),
        jited_len=u32["jited_prog_len"],
        xlated_len=u32["xlated_prog_len"],
        ifindex=u32["ifindex"],
        load_time_ns=u64["load_time"],
        run_time_ns=u64["run_time_ns"],
        run_cnt=u64["run_cnt"],
        verified_insns=verified,
    )


def live_ids(lib: Libbpf) -> dict[str, frozenset[int]]:
    """The ids of every program, map and link alive in the kernel right now (for leak checks:
    compare a snapshot before a case with one after it)."""
    out: dict[str, frozenset[int]] = {}
    for kind in ("prog", "map", "link"):
        next_id = getattr(lib.c, f"bpf_{kind}_get_next_id")
        ids: set[int] = set()
        current, found = 0, ctypes.c_uint32(0)
        while int(next_id(current, ctypes.byref(found))) == 0:
            current = int(found.value)
            ids.add(current)
        out[kind] = frozenset(ids)
    return out


def _attach_type(lib: Libbpf, prog: int) -> str:
    """libbpf's name of the program's expected attach type; "" for the programs that have
    none (their 0 would read as BPF_CGROUP_INET_INGRESS, which only cgroup_skb means)."""
    value = int(lib.c.bpf_program__expected_attach_type(prog))
    if value == 0 and lib.prog_type_name(lib.c.bpf_program__type(prog)) != "cgroup_skb":
        return ""
    return lib.attach_type_name(value)


def _preset(lib: Libbpf, obj: int, presets: tuple[tuple[str, int, bytes], ...]) -> None:
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


@dataclass(frozen=True)
class LoadOptions:
    log_level: int = BPF_LOG_LEVEL1 | BPF_LOG_STATS  # 2 (|4) for the full trace, 0 for none
    log_size: int = 16 << 20
    log_size_max: int = MAX_LOG_SIZE  # ENOSPC retries double the buffer up to this
    btf_custom_path: str | None = None
    kconfig: str | None = None  # config text for __kconfig externs (guests lack /boot/config)
    prog_flags: int = 0  # BPF_F_* OR'ed into the program's own flags
    ifindex: int = 0  # bind to a device (offload) before the load
    # initial values of global variables: (data section, offset in it, little-endian bytes)
    presets: tuple[tuple[str, int, bytes], ...] = ()
    map_sizes: tuple[libbpf_prepare.MapSize, ...] = ()  # the user's, as their loader sets them
    fixups: bool = True  # veristat's: maps with max_entries 0 get 1
    pinning: bool = True  # False: no map is pinned (veristat's way)
    pin_root: str | None = None  # pin_root_path; None: libbpf's /sys/fs/bpf
    attach_target: str | None = None  # the loaded program's, as user space would set it
    # programs loaded with it in the same object load: those its prog arrays name
    # statically, or every program ("*": the whole object, as a skeleton loads it)
    companions: tuple[str, ...] = ()
    unprivileged_maps_only: bool = False  # create no map an unprivileged user may not

    def __post_init__(self) -> None:
        # Kernels up to 6.3 reject log buffers under 128 bytes; above the max is EINVAL.
        if self.log_level and not 128 <= self.log_size <= min(self.log_size_max, MAX_LOG_SIZE):
            raise ValueError(f"log_size {self.log_size}: must be 128..{self.log_size_max}")


@dataclass(frozen=True)
class ProgramLoad:
    """One program loaded on its own (the others in its object have autoload off)."""

    program: str
    section: str
    prog_type: str  # libbpf's names: "xdp", "sched_cls", ...
    attach_type: str  # "cgroup_inet_ingress" when SEC() implies none (the enum's 0)
    ok: bool
    errno: int  # 0 on success; ENOSPC with log_truncated means "log too small", not rejected
    log: str  # the verifier log (at log_level 0: the one libbpf printed after a failure)
    log_truncated: bool  # the log still did not fit in log_size_max
    libbpf_messages: str  # libbpf's own warnings during open and load
    load_ns: int  # wall time of bpf_object__load (maps, BTF and the program)
    insn_cnt: int  # instructions after libbpf's relocations
    prog_id: int | None
    xlated_len: int | None
    jited_len: int | None
    verified_insns: int | None  # kernel 5.16+
    log_level: int = 0
    log_size: int = 0  # the buffer used by the final attempt
    attempts: int = 1  # loads, counting ENOSPC retries with a bigger buffer
    # where a failure happened: "open" (the ELF), "prepare" (libbpf's BTF, maps and
    # relocations, before the verifier; libbpf >= 1.6 only), "load" (the kernel's load)
    failed_stage: str = ""
    fixups: tuple[str, ...] = ()  # what kitl changed in the object first, as notes
    failed_map: libbpf_prepare.MapDef | None = None  # the map libbpf could not create
    companions: tuple[str, ...] = ()  # the other programs loaded with it
    failed_program: str = ""  # a companion whose failure failed the load

    @property
    def error(self) -> str:
        return describe_errno(self.errno) if self.errno else ""


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


class _LogBuffer:
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


class BpfObject(Attachable):
    """One opened and loaded bpf_object; a context manager that detaches its links and
    closes it (which unloads its programs and maps)."""

    def __init__(self, lib: Libbpf, path: str, ptr: int) -> None:
        self.lib, self.path = lib, path
        self._ptr: int | None = ptr
        self._links: list[Link] = []

    # -- opening and loading --------------------------------------------------------------
    @staticmethod
    def _open(lib: Libbpf, path: str, opts: LoadOptions) -> int | None:
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
        programs: list[int] = []
        prog = lib.c.bpf_object__next_program(obj, None)
        while prog:
            programs.append(prog)
            prog = lib.c.bpf_object__next_program(obj, prog)
        return programs

    @classmethod
    def programs_in(cls, lib: Libbpf, path: str) -> list[tuple[str, str]]:
        """(name, section) of every program in the object, without loading it."""
        lib.drain_messages()
        obj = cls._open(lib, path, LoadOptions())
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
        bpf_object__load."""
        opts = opts or LoadOptions()
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
        obj = cls._open(lib, path, opts)
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
            _preset(lib, obj, opts.presets)
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
            log = _LogBuffer(log_size) if opts.log_level else None
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
                attach_type=_attach_type(lib, prog),
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
        for link in self._links:
            try:
                link.close()
            except AttachError as exc:
                errors.append(exc)
        self._links.clear()
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

    def _program(self, name: str) -> int:
        prog: int | None = self.lib.c.bpf_object__find_program_by_name(self.ptr, name.encode())
        if not prog:
            raise KeyError(f"{self.path} has no program {name!r}")
        return prog

    def prog_fd(self, program: str) -> int:
        fd = int(self.lib.c.bpf_program__fd(self._program(program)))
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


def _check_size(map_name: str, what: str, data: bytes, size: int) -> None:
    # The kernel reads exactly key_size/value_size bytes: a short buffer would be overrun.
    if len(data) != size:
        raise ValueError(f"map {map_name}: {what} is {len(data)} bytes, the map wants {size}")
