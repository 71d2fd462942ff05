"""libbpf.so loaded with ctypes inside the guest: the functions the binding calls and their
signatures, libbpf's print hook, probes and type names, and the binding's errors.

The ctypes binding over the system libbpf.so.1 is this module (the library),
`libbpf_object` (`BpfObject`: an object opened, one program of it loaded, its maps),
`libbpf_load` (what a load takes and reports), `libbpf_attach` (the attach calls an object
owns), `libbpf_run` (test_run, ring buffers) and `libbpf_prepare` (what a loader does to an
object between open and load).

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
import os
from typing import Any

# Kernel-internal; not in Python's errno module, and os.strerror() calls it "Unknown error".
ENOTSUPP = 524
# libbpf's own error codes (LIBBPF_ERRNO__START = 4000), returned as -code like any errno.
_LIBBPF_ERRNOS = [
    "LIBELF",
    "FORMAT",
    "KVERSION",
    "ENDIAN",
    "INTERNAL",
    "RELOC",
    "LOAD",
    "VERIFY",
    "PROG2BIG",
    "KVER",
    "PROGTYPE",
    "WRNGPID",
    "INVSEQ",
    "NLPARSE",
]


def errno_name(code: int) -> str:
    """EACCES, ENOTSUPP, LIBBPF_ERRNO__VERIFY...: the symbolic name of a positive errno."""
    if code == ENOTSUPP:
        return "ENOTSUPP"
    if 4000 <= code < 4000 + len(_LIBBPF_ERRNOS):
        return f"LIBBPF_ERRNO__{_LIBBPF_ERRNOS[code - 4000]}"
    return _errno.errorcode.get(code, str(code))


def describe_errno(code: int) -> str:
    if code == ENOTSUPP:
        return "ENOTSUPP (not supported by this kernel or program type)"
    if code >= 4000:
        return errno_name(code)
    return f"{errno_name(code)} ({os.strerror(code)})"


class LibbpfError(OSError):
    """A libbpf call failed; carries the errno and what libbpf printed while it ran."""

    def __init__(self, code: int, message: str, libbpf_messages: str = "") -> None:
        super().__init__(code, message)
        self.message = message
        self.libbpf_messages = libbpf_messages

    def __str__(self) -> str:
        text = f"{self.message}: {describe_errno(self.errno or 0)}"
        if self.libbpf_messages.strip():
            text += "\n" + self.libbpf_messages.rstrip()
        return text


class AttachError(LibbpfError):
    """Attaching (or detaching) a program failed."""


FLOOR = (1, 1)  # Debian bookworm
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
    "bpf_prog_get_fd_by_id": (_I, (_U32,), (0, 0)),
    "bpf_obj_get": (_I, (_STR,), (0, 0)),
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
    "bpf_program__clone": (_I, (_P, _P), (1, 8)),
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

    def walk(self, next_function: str, obj: int) -> list[int]:
        """Every program or map of an object, in its order, through libbpf's iterator
        (`bpf_object__next_program`, `bpf_object__next_map`)."""
        step = getattr(self.c, next_function)
        found: list[int] = []
        item = step(obj, None)
        while item:
            found.append(item)
            item = step(obj, item)
        return found

    def _name(self, function: str, value: int) -> str:
        raw = getattr(self.c, function)(value) if self.has(function) else None
        return raw.decode() if raw else f"unknown({value})"

    def prog_type_name(self, value: int) -> str:
        return self._name("libbpf_bpf_prog_type_str", value)

    def attach_type_name(self, value: int) -> str:
        return self._name("libbpf_bpf_attach_type_str", value)

    def map_type_name(self, value: int) -> str:
        return self._name("libbpf_bpf_map_type_str", value)
