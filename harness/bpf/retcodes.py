"""Return codes of BPF programs: the conventions their return values follow (`RetConvention`:
XDP actions, TC_ACT_*, tcx and netkit verdicts, cgroup allow/deny, SK_*, LSM errnos...; each
program type's is in harness.bpf.progtypes), errno names, and the `retval: any` marker.

Return values are compared as signed 32-bit numbers: test_run reports a u32, so 0xffffffff
and -1 are the same value (TC_ACT_UNSPEC, TCX_NEXT).
"""

from __future__ import annotations

import difflib
import errno as _errno
from dataclasses import dataclass

S32_MIN = -(2**31)
S32_MAX = 2**31 - 1
U32_MAX = 2**32 - 1
MAX_ERRNO = 4095


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
