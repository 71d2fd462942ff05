"""What loading one program takes and what it reports, inside the guest: `LoadOptions`
(the verifier log's level and size, kconfig, globals, map sizes, companions...),
`ProgramLoad` (the verdict, the log, timings, what kitl changed first), the kernel's
`prog_info` of a loaded program, and the ids alive in the kernel (`live_ids`, for leak
checks).  The load itself is `BpfObject.load_one` (harness.guest.libbpf_object).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import struct
from dataclasses import dataclass, replace

from harness.guest import libbpf_prepare
from harness.guest.libbpf import Libbpf, LibbpfError, describe_errno

BPF_LOG_LEVEL1, BPF_LOG_LEVEL2, BPF_LOG_STATS, BPF_LOG_FIXED = 1, 2, 4, 8
# The kernel rejects log_size > UINT_MAX >> 2 with EINVAL, so "1 GiB" is one byte short.
MAX_LOG_SIZE = 0xFFFFFFFF >> 2


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
    # load at BPF_LOG_STATS only, and again at log_level only when that load fails: the
    # verifier runs at full speed (a level-1 log makes it several times slower) and a
    # failure still gets its complete log, as libbpf and veristat do
    log_failures_only: bool = False

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
    # the statistics-only log of the first load, when the failure was loaded again for its
    # full log (log_failures_only): its figures are those of a load at full speed
    stats_log: str = ""
    clone: bool = False  # loaded from the object prepared once (harness.guest.libbpf_clone)

    @property
    def error(self) -> str:
        return describe_errno(self.errno) if self.errno else ""


# struct bpf_prog_info (6.1 UAPI): read raw, because of its bitfield (facts §1.7).
PROG_INFO_SIZE = 232
_INFO_U32 = {"type": 0, "id": 4, "jited_prog_len": 16, "xlated_prog_len": 20, "ifindex": 80}
_INFO_U64 = {"load_time": 40, "run_time_ns": 192, "run_cnt": 200}
_INFO_VERIFIED_INSNS = 216  # kernel 5.16+


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


# The first load's buffer under log_failures_only: the statistics and, on a failure, the
# verifier's message fit; an overflow only means the full reload that follows anyway.
STATS_LOG_SIZE = 64 << 10


def stats_first(opts: LoadOptions) -> LoadOptions | None:
    """The options of a statistics-only first load (log_failures_only with a log level
    above statistics), its small buffer never grown; None: load at opts' level at once."""
    if not (opts.log_failures_only and opts.log_level & ~BPF_LOG_STATS):
        return None
    size = min(opts.log_size, STATS_LOG_SIZE)
    return replace(opts, log_level=BPF_LOG_STATS, log_size=size, log_size_max=size)


def full_log_reload(opts: LoadOptions) -> LoadOptions:
    """The options of a failure's reload for its whole log: one load, its buffer never
    doubled (see with_full_log)."""
    return replace(opts, log_size_max=opts.log_size)


def wants_full_log(first: ProgramLoad) -> bool:
    """Whether a failed statistics-only load is loaded again for its whole log: not when
    the verifier never ran (no log at all: libbpf or the kernel refused it first), nor at
    the complexity limit (E2BIG: a million instructions explored, whose level-1 trace
    would take minutes under TCG and fill any buffer; the first log has the error and the
    statistics, and `kitl repro` traces it at the level asked for)."""
    return not first.ok and bool(first.log.strip()) and first.errno != _errno.E2BIG


def with_full_log(first: ProgramLoad, full: ProgramLoad) -> ProgramLoad:
    """A failure loaded again for its whole log (log_failures_only), with the first load's
    statistics.  The reload's buffer does not grow: a program that explores a million
    instructions logs gigabytes at level 1, and each doubling verifies it again.  So a log
    that overflowed keeps the first load's verdict, and ends with the first load's error
    and statistics after what fit of the whole log (the kernel keeps its tail from 6.4 on,
    its head before)."""
    attempts = first.attempts + full.attempts
    if full.log_truncated and not full.ok:
        log = f"{full.log.rstrip()}\n{first.log}"
        return replace(
            full, ok=first.ok, errno=first.errno, log=log, attempts=attempts, stats_log=first.log
        )
    return replace(full, attempts=attempts, stats_log=first.log)
