"""The BPF program-type table: one frozen record per type, keyed by libbpf's type name.

Each record says which SEC() names libbpf maps to the type (libbpf's ``section_defs``, newest
libbpf; bookworm's 1.1.2 lacks tc/ingress, tcx/*, netkit/* and the *_unix hooks), its UAPI
enum value, its context struct, the attach families the engine offers, the drives that fit,
whether BPF_PROG_TEST_RUN supports it, and the convention its return value follows.  Also
the scenario's attach families and drives, BPF_PROG_LOAD flags and libbpf's map type names.

The conventions are harness.bpf.retcodes'; which row a SEC() name selects is
harness.bpf.sections'.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.bpf.retcodes import (
    ANY_CODES,
    CGROUP_CODES,
    CGROUP_SKB_CODES,
    FLOW_DISSECTOR_CODES,
    FMOD_RET_CODES,
    IGNORED_CODES,
    LSM_CODES,
    LWT_CODES,
    NETFILTER_CODES,
    NETKIT_CODES,
    SK_CODES,
    SOCKET_FILTER_CODES,
    SYSCALL_CODES,
    TC_CODES,
    TCX_CODES,
    XDP_CODES,
    RetConvention,
)

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
