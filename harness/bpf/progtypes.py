"""The BPF program-type table: one frozen record per type, keyed by libbpf's type name.

Each record says which SEC() names libbpf maps to the type (libbpf's ``section_defs``, newest
libbpf; bookworm's 1.1.2 lacks tc/ingress, tcx/*, netkit/* and the *_unix hooks), its UAPI
enum value, its context struct, the attach families the engine offers, the drives that fit,
whether BPF_PROG_TEST_RUN supports it, and the convention its return value follows.

Return values are compared as signed 32-bit numbers: test_run reports a u32, so 0xffffffff
and -1 are the same value (TC_ACT_UNSPEC, TCX_NEXT).
"""

from __future__ import annotations

import difflib
import errno as _errno
import re
from dataclasses import dataclass

S32_MIN = -(2**31)
S32_MAX = 2**31 - 1
U32_MAX = 2**32 - 1
MAX_ERRNO = 4095

# Attach families of `attach:` in a scenario.  Omitting `attach:` loads the program without
# attaching it (and runs it with test_run when the drive says so).
ATTACH_FAMILIES = ("xdp", "tc", "tcx", "cgroup", "auto", "socket")
# Drives of `drive:` in a scenario.
DRIVES = ("test_run", "traffic", "syscall")

# BPF_PROG_LOAD flags (include/uapi/linux/bpf.h).
PROG_LOAD_FLAGS = {
    "BPF_F_STRICT_ALIGNMENT": 1 << 0,
    "BPF_F_ANY_ALIGNMENT": 1 << 1,
    "BPF_F_TEST_RND_HI32": 1 << 2,
    "BPF_F_TEST_STATE_FREQ": 1 << 3,
    "BPF_F_SLEEPABLE": 1 << 4,
    "BPF_F_XDP_HAS_FRAGS": 1 << 5,  # 5.18
    "BPF_F_XDP_DEV_BOUND_ONLY": 1 << 6,  # 6.3
    "BPF_F_TEST_REG_INVARIANTS": 1 << 7,  # 6.7
}
# The first kernel that takes each test flag (older ones refuse the load with EINVAL).
PROG_LOAD_FLAG_SINCE = {
    "BPF_F_TEST_RND_HI32": (5, 0),
    "BPF_F_TEST_STATE_FREQ": (5, 4),
    "BPF_F_TEST_REG_INVARIANTS": (6, 7),
}

# libbpf's map type names (libbpf_bpf_map_type_str) -> enum bpf_map_type.
MAP_TYPES = {
    name: value
    for value, name in enumerate(
        (
            "unspec",
            "hash",
            "array",
            "prog_array",
            "perf_event_array",
            "percpu_hash",
            "percpu_array",
            "stack_trace",
            "cgroup_array",
            "lru_hash",
            "lru_percpu_hash",
            "lpm_trie",
            "array_of_maps",
            "hash_of_maps",
            "devmap",
            "sockmap",
            "cpumap",
            "xskmap",
            "sockhash",
            "cgroup_storage",
            "reuseport_sockarray",
            "percpu_cgroup_storage",
            "queue",
            "stack",
            "sk_storage",
            "devmap_hash",
            "struct_ops",
            "ringbuf",
            "inode_storage",
            "task_storage",
            "bloom_filter",
            "user_ringbuf",
            "cgrp_storage",
            "arena",
        )
    )
}


@dataclass(frozen=True)
class RetCode:
    name: str
    value: int
    meaning: str


@dataclass(frozen=True)
class RetConvention:
    """How a program's return value is read.  `codes` are in order of preference for naming a
    value (the first code with a value names it); later codes are accepted aliases."""

    name: str  # "xdp", "tc", "tcx", ... (used in messages: "not an xdp return code")
    summary: str
    codes: tuple[RetCode, ...] = ()
    lo: int = S32_MIN  # accepted raw values, signed 32-bit
    hi: int = S32_MAX
    errno: bool = False  # "-EPERM" style values are accepted
    ignored: bool = False  # the kernel ignores the value
    article: str = "a"

    def code(self, name: str) -> RetCode | None:
        for code in self.codes:
            if code.name == name:
                return code
        return None


def _codes(*items: tuple[str, int, str]) -> tuple[RetCode, ...]:
    return tuple(RetCode(n, v, m) for n, v, m in items)


_TC_CODES = _codes(
    ("TC_ACT_UNSPEC", -1, "no verdict: the default action (continue)"),
    ("TC_ACT_OK", 0, "pass the packet"),
    ("TC_ACT_RECLASSIFY", 1, "restart classification"),
    ("TC_ACT_SHOT", 2, "drop the packet"),
    ("TC_ACT_PIPE", 3, "continue with the next action"),
    ("TC_ACT_STOLEN", 4, "consumed: dropped without counting as a drop"),
    ("TC_ACT_QUEUED", 5, "queued for later (treated as stolen)"),
    ("TC_ACT_REPEAT", 6, "run the action again"),
    ("TC_ACT_REDIRECT", 7, "redirect (bpf_redirect*)"),
    ("TC_ACT_TRAP", 8, "drop here, for hardware to handle (treated as stolen)"),
)
_CGROUP_CODES = _codes(
    ("CGROUP_DENY", 0, "deny: drop the packet or fail the operation with EPERM"),
    ("CGROUP_ALLOW", 1, "allow"),
)
_ALLOW_DENY = _codes(("deny", 0, "alias of CGROUP_DENY"), ("allow", 1, "alias of CGROUP_ALLOW"))
_SK_CODES = _codes(("SK_DROP", 0, "drop / refuse"), ("SK_PASS", 1, "pass / select"))

XDP_CODES = RetConvention(
    "xdp",
    "an XDP action",
    _codes(
        ("XDP_ABORTED", 0, "error: drop and fire the xdp:xdp_exception tracepoint"),
        ("XDP_DROP", 1, "drop the packet"),
        ("XDP_PASS", 2, "pass the packet to the network stack"),
        ("XDP_TX", 3, "send the packet back out of the receiving device"),
        ("XDP_REDIRECT", 4, "redirect (bpf_redirect*)"),
    ),
    article="an",
)
TC_CODES = RetConvention("tc", "a tc action (TC_ACT_*)", _TC_CODES)
TCX_CODES = RetConvention(
    "tcx",
    "a tcx verdict; TC_ACT_* values are accepted too",
    _codes(
        ("TCX_NEXT", -1, "run the next program in the chain (then the default)"),
        ("TCX_PASS", 0, "pass the packet, skip the rest of the chain"),
        ("TCX_DROP", 2, "drop the packet"),
        ("TCX_REDIRECT", 7, "redirect (bpf_redirect*)"),
    )
    + _TC_CODES,
)
NETKIT_CODES = RetConvention(
    "netkit",
    "a netkit verdict",
    _codes(
        ("NETKIT_NEXT", -1, "run the next program (then the device default)"),
        ("NETKIT_PASS", 0, "pass the packet"),
        ("NETKIT_DROP", 2, "drop the packet"),
        ("NETKIT_REDIRECT", 7, "redirect (bpf_redirect*)"),
    ),
)
CGROUP_CODES = RetConvention(
    "cgroup", "0 denies, 1 allows", _CGROUP_CODES + _ALLOW_DENY, lo=0, hi=1
)
CGROUP_SKB_CODES = RetConvention(
    "cgroup_skb",
    "0 drops, 1 allows; on egress 2 and 3 add a congestion notification",
    _CGROUP_CODES
    + _codes(
        ("CGROUP_DENY_CN", 2, "drop and notify congestion (egress)"),
        ("CGROUP_ALLOW_CN", 3, "allow and notify congestion (egress)"),
    )
    + _ALLOW_DENY,
    lo=0,
    hi=3,
)
SK_CODES = RetConvention("sk", "SK_DROP or SK_PASS", _SK_CODES, lo=0, hi=1, article="an")
FLOW_DISSECTOR_CODES = RetConvention(
    "flow_dissector",
    "BPF_OK, BPF_DROP or BPF_FLOW_DISSECTOR_CONTINUE",
    _codes(
        ("BPF_OK", 0, "dissection done, keys filled in"),
        ("BPF_DROP", 2, "drop the packet"),
        ("BPF_FLOW_DISSECTOR_CONTINUE", 129, "fall back to the kernel's dissector"),
    ),
)
LWT_CODES = RetConvention(
    "lwt",
    "BPF_OK, BPF_DROP, BPF_REDIRECT or BPF_LWT_REROUTE",
    _codes(
        ("BPF_OK", 0, "continue"),
        ("BPF_DROP", 2, "drop the packet"),
        ("BPF_REDIRECT", 7, "redirect (bpf_redirect)"),
        ("BPF_LWT_REROUTE", 128, "route the packet again"),
    ),
    article="an",
)
NETFILTER_CODES = RetConvention(
    "netfilter",
    "NF_DROP or NF_ACCEPT",
    _codes(("NF_DROP", 0, "drop the packet"), ("NF_ACCEPT", 1, "accept the packet")),
    lo=0,
    hi=1,
)
LSM_CODES = RetConvention(
    "lsm",
    "0 to allow or a negative errno such as -EPERM to deny (0 or 1 for boolean hooks)",
    lo=-MAX_ERRNO,
    hi=1,
    errno=True,
    article="an",
)
FMOD_RET_CODES = RetConvention(
    "fmod_ret",
    "0 to run the traced function, or a value (often -EPERM) that replaces its return value",
    errno=True,
    article="an",
)
SOCKET_FILTER_CODES = RetConvention(
    "socket_filter", "the number of bytes of the packet to keep (0 drops it)"
)
SYSCALL_CODES = RetConvention("syscall", "any value, returned as test_run's retval")
ANY_CODES = RetConvention("any", "any value; the program type gives none a name", article="an")
IGNORED_CODES = RetConvention("ignored", "ignored by the kernel", ignored=True, article="an")

CONVENTIONS = (
    XDP_CODES,
    TC_CODES,
    TCX_CODES,
    NETKIT_CODES,
    CGROUP_CODES,
    CGROUP_SKB_CODES,
    SK_CODES,
    FLOW_DISSECTOR_CODES,
    LWT_CODES,
    NETFILTER_CODES,
    LSM_CODES,
    FMOD_RET_CODES,
    SOCKET_FILTER_CODES,
    SYSCALL_CODES,
    ANY_CODES,
    IGNORED_CODES,
)


@dataclass(frozen=True)
class SectionDef:
    """One of libbpf's SEC() definitions.  `pattern` uses libbpf's notation: "xdp" matches
    exactly; "kprobe+" matches "kprobe" or "kprobe/<anything>"; a trailing "/" is a prefix."""

    pattern: str
    attach_type: str | None = None  # expected_attach_type libbpf sets, e.g. "BPF_XDP"
    auto: bool = False  # bpf_program__attach() can attach it from the section alone
    retcodes: RetConvention | None = None  # overrides the type's convention

    def matches(self, section: str) -> bool:
        pattern = self.pattern
        if pattern.endswith("/"):
            return section.startswith(pattern)
        if pattern.endswith("+"):
            stem = pattern[:-1]
            return section == stem or section.startswith(stem + "/")
        return section == pattern

    @property
    def prefix(self) -> str:
        """The pattern as users write it: "kprobe/" for "kprobe+"."""
        return self.pattern[:-1] + "/" if self.pattern.endswith("+") else self.pattern


@dataclass(frozen=True, repr=False)
class ProgType:
    name: str  # libbpf's name: "xdp", "sched_cls", ...
    uapi: int  # enum bpf_prog_type value
    ctx: str  # the context the program receives
    sections: tuple[SectionDef, ...]
    retcodes: RetConvention
    families: tuple[str, ...] = ()  # attach families the engine offers (see ATTACH_FAMILIES)
    drives: tuple[str, ...] = ()  # drives that fit (see DRIVES)
    test_run: bool = False  # BPF_PROG_TEST_RUN supports the type (else ENOTSUPP)
    test_run_data: bool = False  # test_run needs packet data (>= 14 bytes)
    notes: str = ""

    def __repr__(self) -> str:
        return f"<ProgType {self.name}>"

    @property
    def article(self) -> str:
        return "an" if self.name.startswith(("xdp", "lsm", "lwt", "sk_", "ext")) else "a"

    @property
    def enum_name(self) -> str:
        return "BPF_PROG_TYPE_" + self.name.upper()

    @property
    def section_prefixes(self) -> tuple[str, ...]:
        return tuple(s.prefix for s in self.sections)


def _secs(*patterns: str, auto: bool = False) -> tuple[SectionDef, ...]:
    return tuple(SectionDef(p, auto=auto) for p in patterns)


def _sec(
    pattern: str, attach: str, *, auto: bool = False, retcodes: RetConvention | None = None
) -> SectionDef:
    return SectionDef(pattern, attach, auto, retcodes)


_SKB = "struct __sk_buff"
_CG_SOCK_ADDR_HOOKS = (
    ("bind4", "INET4_BIND"),
    ("bind6", "INET6_BIND"),
    ("connect4", "INET4_CONNECT"),
    ("connect6", "INET6_CONNECT"),
    ("connect_unix", "UNIX_CONNECT"),
    ("sendmsg4", "UDP4_SENDMSG"),
    ("sendmsg6", "UDP6_SENDMSG"),
    ("sendmsg_unix", "UNIX_SENDMSG"),
    ("recvmsg4", "UDP4_RECVMSG"),
    ("recvmsg6", "UDP6_RECVMSG"),
    ("recvmsg_unix", "UNIX_RECVMSG"),
    ("getpeername4", "INET4_GETPEERNAME"),
    ("getpeername6", "INET6_GETPEERNAME"),
    ("getpeername_unix", "UNIX_GETPEERNAME"),
    ("getsockname4", "INET4_GETSOCKNAME"),
    ("getsockname6", "INET6_GETSOCKNAME"),
    ("getsockname_unix", "UNIX_GETSOCKNAME"),
)


def _t(  # noqa: PLR0917  (a row of the table below)
    name: str,
    uapi: int,
    ctx: str,
    sections: tuple[SectionDef, ...],
    retcodes: RetConvention,
    families: tuple[str, ...] = (),
    drives: tuple[str, ...] = (),
    *,
    data: bool = False,
    notes: str = "",
) -> ProgType:
    return ProgType(
        name, uapi, ctx, sections, retcodes, families, drives, "test_run" in drives, data, notes
    )


_RUN, _NET = ("test_run",), ("test_run", "traffic")
_AUTO, _CGROUP = ("auto",), ("cgroup",)
_BTF_ARGS = "u64 args[] (typed through BTF)"

# fmt: off
_TABLE = (
    _t("socket_filter", 1, _SKB, _secs("socket"), SOCKET_FILTER_CODES, ("socket",), _NET,
       data=True),
    _t("kprobe", 2, "struct pt_regs",
       _secs("kprobe+", "uprobe+", "uprobe.s+", "kretprobe+", "uretprobe+", "uretprobe.s+",
             "ksyscall+", "kretsyscall+", "usdt+", "usdt.s+", auto=True)
       + tuple(_sec(p, "BPF_TRACE_KPROBE_MULTI", auto=True)
               for p in ("kprobe.multi+", "kretprobe.multi+"))
       + tuple(_sec(p, "BPF_TRACE_UPROBE_MULTI", auto=True)
               for p in ("uprobe.multi+", "uretprobe.multi+", "uprobe.multi.s+",
                         "uretprobe.multi.s+")),
       IGNORED_CODES, _AUTO, ("syscall",)),
    _t("sched_cls", 3, _SKB,
       (_sec("tc/ingress", "BPF_TCX_INGRESS", retcodes=TCX_CODES),  # libbpf: alias of tcx
        _sec("tc/egress", "BPF_TCX_EGRESS", retcodes=TCX_CODES),
        _sec("tcx/ingress", "BPF_TCX_INGRESS", retcodes=TCX_CODES),
        _sec("tcx/egress", "BPF_TCX_EGRESS", retcodes=TCX_CODES),
        SectionDef("tc"),
        SectionDef("classifier"),
        _sec("netkit/primary", "BPF_NETKIT_PRIMARY", retcodes=NETKIT_CODES),
        _sec("netkit/peer", "BPF_NETKIT_PEER", retcodes=NETKIT_CODES)),
       TC_CODES, ("tc", "tcx"), _NET, data=True),
    _t("sched_act", 4, _SKB, _secs("action"), TC_CODES, (), _RUN, data=True),
    _t("tracepoint", 5, "the event's record (struct trace_event_raw_<event>)",
       _secs("tracepoint+", "tp+", auto=True), IGNORED_CODES, _AUTO, ("syscall",)),
    _t("xdp", 6, "struct xdp_md",
       (_sec("xdp.frags/devmap", "BPF_XDP_DEVMAP"), _sec("xdp/devmap", "BPF_XDP_DEVMAP"),
        _sec("xdp.frags/cpumap", "BPF_XDP_CPUMAP"), _sec("xdp/cpumap", "BPF_XDP_CPUMAP"),
        _sec("xdp.frags", "BPF_XDP"), _sec("xdp", "BPF_XDP")),
       XDP_CODES, ("xdp",), _NET, data=True),
    _t("perf_event", 7, "struct bpf_perf_event_data", _secs("perf_event"), IGNORED_CODES),
    _t("cgroup_skb", 8, _SKB,
       (_sec("cgroup_skb/ingress", "BPF_CGROUP_INET_INGRESS"),
        _sec("cgroup_skb/egress", "BPF_CGROUP_INET_EGRESS"),
        SectionDef("cgroup/skb")),
       CGROUP_SKB_CODES, _CGROUP, _NET, data=True),
    _t("cgroup_sock", 9, "struct bpf_sock",
       (_sec("cgroup/sock_create", "BPF_CGROUP_INET_SOCK_CREATE"),
        _sec("cgroup/sock_release", "BPF_CGROUP_INET_SOCK_RELEASE"),
        _sec("cgroup/sock", "BPF_CGROUP_INET_SOCK_CREATE"),
        _sec("cgroup/post_bind4", "BPF_CGROUP_INET4_POST_BIND"),
        _sec("cgroup/post_bind6", "BPF_CGROUP_INET6_POST_BIND")),
       CGROUP_CODES, _CGROUP, ("traffic", "syscall")),
    _t("lwt_in", 10, _SKB, _secs("lwt_in"), LWT_CODES, (), _RUN, data=True),
    _t("lwt_out", 11, _SKB, _secs("lwt_out"), LWT_CODES, (), _RUN, data=True),
    _t("lwt_xmit", 12, _SKB, _secs("lwt_xmit"), LWT_CODES, (), _RUN, data=True),
    _t("sock_ops", 13, "struct bpf_sock_ops", (_sec("sockops", "BPF_CGROUP_SOCK_OPS"),),
       ANY_CODES),
    _t("sk_skb", 14, _SKB,
       (_sec("sk_skb/stream_parser", "BPF_SK_SKB_STREAM_PARSER"),
        _sec("sk_skb/stream_verdict", "BPF_SK_SKB_STREAM_VERDICT"),
        SectionDef("sk_skb")),
       SK_CODES),
    _t("cgroup_device", 15, "struct bpf_cgroup_dev_ctx",
       (_sec("cgroup/dev", "BPF_CGROUP_DEVICE"),), CGROUP_CODES),
    _t("sk_msg", 16, "struct sk_msg_md", (_sec("sk_msg", "BPF_SK_MSG_VERDICT"),), SK_CODES),
    _t("raw_tracepoint", 17, "struct bpf_raw_tracepoint_args",
       _secs("raw_tracepoint+", "raw_tp+", auto=True), IGNORED_CODES, _AUTO,
       ("test_run", "syscall")),
    _t("cgroup_sock_addr", 18, "struct bpf_sock_addr",
       tuple(_sec(f"cgroup/{hook}", f"BPF_CGROUP_{att}") for hook, att in _CG_SOCK_ADDR_HOOKS),
       CGROUP_CODES, _CGROUP, ("traffic", "syscall")),
    _t("lwt_seg6local", 19, _SKB, _secs("lwt_seg6local"), LWT_CODES, (), _RUN, data=True),
    _t("lirc_mode2", 20, "unsigned int *sample", (_sec("lirc_mode2", "BPF_LIRC_MODE2"),),
       IGNORED_CODES),
    _t("sk_reuseport", 21, "struct sk_reuseport_md",
       (_sec("sk_reuseport/migrate", "BPF_SK_REUSEPORT_SELECT_OR_MIGRATE"),
        _sec("sk_reuseport", "BPF_SK_REUSEPORT_SELECT")),
       SK_CODES),
    _t("flow_dissector", 22, _SKB, (_sec("flow_dissector", "BPF_FLOW_DISSECTOR"),),
       FLOW_DISSECTOR_CODES, (), _RUN, data=True,
       notes="test_run's ctx is struct bpf_flow_keys"),
    _t("cgroup_sysctl", 23, "struct bpf_sysctl", (_sec("cgroup/sysctl", "BPF_CGROUP_SYSCTL"),),
       CGROUP_CODES),
    _t("raw_tracepoint_writable", 24, "struct bpf_raw_tracepoint_args",
       _secs("raw_tracepoint.w+", "raw_tp.w+", auto=True), IGNORED_CODES, _AUTO, ("syscall",)),
    _t("cgroup_sockopt", 25, "struct bpf_sockopt",
       (_sec("cgroup/getsockopt", "BPF_CGROUP_GETSOCKOPT"),
        _sec("cgroup/setsockopt", "BPF_CGROUP_SETSOCKOPT")),
       CGROUP_CODES),
    _t("tracing", 26, _BTF_ARGS,
       (_sec("tp_btf+", "BPF_TRACE_RAW_TP", auto=True),
        _sec("fentry+", "BPF_TRACE_FENTRY", auto=True),
        _sec("fmod_ret+", "BPF_MODIFY_RETURN", auto=True, retcodes=FMOD_RET_CODES),
        _sec("fexit+", "BPF_TRACE_FEXIT", auto=True),
        _sec("fentry.s+", "BPF_TRACE_FENTRY", auto=True),
        _sec("fmod_ret.s+", "BPF_MODIFY_RETURN", auto=True, retcodes=FMOD_RET_CODES),
        _sec("fexit.s+", "BPF_TRACE_FEXIT", auto=True),
        _sec("iter+", "BPF_TRACE_ITER", auto=True),
        _sec("iter.s+", "BPF_TRACE_ITER", auto=True)),
       IGNORED_CODES, _AUTO, ("test_run", "syscall"),
       notes="test_run calls bpf_fentry_test*(); the program runs only if attached to one"),
    _t("struct_ops", 27, "u64 args[] (the struct member's arguments)",
       _secs("struct_ops+", "struct_ops.s+"), ANY_CODES, (), _RUN,
       notes="test_run only for bpf_dummy_ops"),
    _t("ext", 28, "the target program's context", _secs("freplace+"), ANY_CODES),
    _t("lsm", 29, _BTF_ARGS,
       (_sec("lsm+", "BPF_LSM_MAC", auto=True), _sec("lsm.s+", "BPF_LSM_MAC", auto=True),
        _sec("lsm_cgroup+", "BPF_LSM_CGROUP")),
       LSM_CODES, _AUTO, ("syscall",)),
    _t("sk_lookup", 30, "struct bpf_sk_lookup", (_sec("sk_lookup", "BPF_SK_LOOKUP"),),
       SK_CODES, (), _RUN),
    _t("syscall", 31, "any struct the caller passes as ctx", _secs("syscall"), SYSCALL_CODES,
       (), _RUN, notes="runs only through test_run"),
    _t("netfilter", 32, "struct bpf_nf_ctx", (_sec("netfilter", "BPF_NETFILTER"),),
       NETFILTER_CODES, (), _RUN, data=True),
)
# fmt: on
# A section libbpf has no program type for: it still gets a cell, which the load fails.
UNKNOWN_TYPE = ProgType("unknown", 0, "?", (), IGNORED_CODES)
# Types whose target (a kernel function, tracepoint or LSM hook) libbpf finds in BTF at load
# time, and which a loader may retarget (bpf_program__set_attach_target).
ATTACH_TARGET_TYPES = frozenset({"tracing", "lsm"})
ATTACH_TARGET_HINT = "only fentry/fexit/fmod_ret/tp_btf/iter (tracing) and lsm programs have one"

PROG_TYPES: dict[str, ProgType] = {t.name: t for t in _TABLE}

# (section definition, its type) in libbpf's lookup order; no two definitions overlap, so
# the order only matters for speed.
_SECTION_INDEX: tuple[tuple[SectionDef, ProgType], ...] = tuple(
    (s, t) for t in _TABLE for s in t.sections
)


@dataclass(frozen=True)
class SectionMatch:
    section: str  # as given (a leading "?" kept)
    definition: SectionDef
    prog_type: ProgType
    autoload: bool = True

    @property
    def retcodes(self) -> RetConvention:
        return self.definition.retcodes or self.prog_type.retcodes


def match_section(section: str) -> SectionMatch | None:
    """libbpf's find_sec_def(): the definition that a SEC() name selects.  A leading "?"
    (SEC("?xdp"): not loaded by default) is ignored for the match, as libbpf does."""
    name = section[1:] if section.startswith("?") else section
    for definition, prog_type in _SECTION_INDEX:
        if definition.matches(name):
            return SectionMatch(section, definition, prog_type, not section.startswith("?"))
    return None


def prog_type_for_section(section: str) -> ProgType | None:
    match = match_section(section)
    return match.prog_type if match else None


def convention_for(prog_type: ProgType, section: str) -> RetConvention:
    match = match_section(section)
    if match is not None and match.prog_type == prog_type and match.definition.retcodes:
        return match.definition.retcodes
    return prog_type.retcodes


def section_direction(section: str) -> str | None:
    """ "ingress"/"egress" when the section fixes the direction (tc/ingress, cgroup_skb/egress)."""
    match = match_section(section)
    attach = match.definition.attach_type if match else None
    if attach and attach.endswith("_INGRESS"):
        return "ingress"
    if attach and attach.endswith("_EGRESS"):
        return "egress"
    return None


def section_target(section: str) -> str:
    """What follows the prefix: "do_unlinkat" in "kprobe/do_unlinkat" ("" if nothing)."""
    match = match_section(section)
    if match is None:
        return ""
    name = section.lstrip("?")
    stem = match.definition.pattern.rstrip("+/")
    return name[len(stem) + 1 :] if len(name) > len(stem) else ""


ERRNO_NAMES: dict[str, int] = {name: code for code, name in _errno.errorcode.items()}
ERRNO_NAMES.update(
    {  # kernel-internal codes that reach user space through BPF
        "ENOTSUPP": 524,
        "ENOTSUP": 95,
        "EOPNOTSUPP": 95,
        "EWOULDBLOCK": 11,
        "EDEADLOCK": 35,
    }
)
_ERRNO_BY_VALUE = {code: name for code, name in _errno.errorcode.items()}
_ERRNO_BY_VALUE[524] = "ENOTSUPP"
_INT_TEXT = re.compile(r"^[+-]?\d{1,12}$")


def errno_value(name: str) -> int:
    """ "EPERM" -> 1; raises ValueError naming close matches."""
    if name in ERRNO_NAMES:
        return ERRNO_NAMES[name]
    close = difflib.get_close_matches(name, ERRNO_NAMES, n=1)
    more = f"; did you mean {close[0]}?" if close else ""
    raise ValueError(f"{name} is not an errno name{more}")


def errno_name(value: int) -> str | None:
    return _ERRNO_BY_VALUE.get(value)


def to_s32(value: int) -> int:
    """A test_run retval (u32) as the signed value programs return (0xffffffff -> -1)."""
    return value - 2**32 if 2**31 <= value <= U32_MAX else value


# `retval: any`: the program ran (test_run succeeded), whatever it returned (a kernel pointer,
# a hash).  Outside 32 bits, so no return value equals it.
RETVAL_ANY = 1 << 40


def resolve_retval(prog_type: ProgType, section: str, value: str | int) -> int:
    """A return-code expectation as a signed 32-bit value.  Names are checked against the
    convention of `prog_type` in `section` (tcx sections take TCX_* names, for example);
    raises ValueError naming the valid codes."""
    conv = convention_for(prog_type, section)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a return code name or an integer, got {type(value).__name__}")
    if isinstance(value, str) and _INT_TEXT.match(value.strip()):
        value = int(value.strip())
    if isinstance(value, int):
        if not S32_MIN <= value <= U32_MAX:
            raise ValueError(f"{value} does not fit a 32-bit return value")
        signed = to_s32(value)
        if not conv.lo <= signed <= conv.hi:
            raise ValueError(
                f"{value} is outside the range of {conv.name} return values "
                f"({conv.lo}..{conv.hi}: {conv.summary})"
            )
        return signed
    text = value.strip()
    if text == "any":
        return RETVAL_ANY
    code = conv.code(text)
    if code is not None:
        return code.value
    if conv.errno and text.startswith("-") and text[1:] in ERRNO_NAMES:
        return -ERRNO_NAMES[text[1:]]
    raise ValueError(_not_a_code(prog_type, conv, text))


def _not_a_code(prog_type: ProgType, conv: RetConvention, text: str) -> str:
    names = [c.name for c in conv.codes]
    if names:
        msg = (
            f"{text} is not {conv.article} {conv.name} return code; "
            f"{conv.name} codes: {', '.join(names)}"
        )
    elif conv.errno:
        msg = f"{text} is not {conv.article} {conv.name} return value; expected {conv.summary}"
    else:
        msg = (
            f"{text}: {prog_type.name} return values have no names ({conv.summary}); "
            "give an integer"
        )
    close = difflib.get_close_matches(text, names, n=1) or [
        n for n in names if n.lower() == text.lower()
    ]
    if close:
        return f"{msg}; did you mean {close[0]}?"
    owners = [c for c in CONVENTIONS if c is not conv and c.code(text)]
    if owners:
        which = " / ".join(c.name for c in owners)
        return f"{msg}; {text} is {owners[0].article} {which} code"
    if conv.errno and text in ERRNO_NAMES:
        return f"{msg}; did you mean -{text}?"
    return msg


def retval_name(prog_type: ProgType, section: str, value: int) -> str:
    """For reports: 2 -> "XDP_PASS" for an xdp program, -1 -> "-EPERM" for lsm; a value with
    no name comes back as its decimal text."""
    if value == RETVAL_ANY:
        return "any"
    conv = convention_for(prog_type, section)
    signed = to_s32(value)
    for code in conv.codes:
        if code.value == signed:
            return code.name
    if conv.errno and -MAX_ERRNO <= signed < 0:
        name = errno_name(-signed)
        if name:
            return f"-{name}"
    return str(signed)
