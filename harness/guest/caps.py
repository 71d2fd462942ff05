"""Linux capabilities of the calling process, through capget/capset (Python has no binding).

Used by the guest agent's unprivileged loads: the capabilities a BPF loader would lack leave
the effective set for the load and come back after it (they stay permitted), as the kernel's
own test_loader does, so the program can still be run by BPF_PROG_TEST_RUN.
Layout: linux/capability.h, _LINUX_CAPABILITY_VERSION_3 (two 32-bit words per set)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
UNPRIVILEGED_DROP = (CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)
# Privilege profiles of a load: the capabilities each lowers.  "bpf" is how many tracing
# daemons run (CAP_BPF and CAP_PERFMON, no CAP_SYS_ADMIN); "bpf-net" adds CAP_NET_ADMIN, as
# networking daemons have (the kernel wants it for XDP, tc, cgroup and socket programs);
# "unprivileged" has none of the four (with kernel.unprivileged_bpf_disabled=0).
PROFILES: dict[str, tuple[int, ...]] = {
    "privileged": (),
    "bpf": (CAP_SYS_ADMIN, CAP_NET_ADMIN),
    "bpf-net": (CAP_SYS_ADMIN,),
    "unprivileged": UNPRIVILEGED_DROP,
}
_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _Data(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


_libc = ctypes.CDLL(None, use_errno=True)


def _sets() -> tuple[_Header, ctypes.Array[_Data]]:
    header = _Header(_VERSION_3, 0)
    data = (_Data * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return header, data


def effective() -> frozenset[int]:
    """The capability numbers in this process's effective set."""
    _, data = _sets()
    return frozenset(n for n in range(64) if data[n // 32].effective & (1 << (n % 32)))


@contextmanager
def lowered(capabilities: tuple[int, ...]) -> Iterator[None]:
    """Without `capabilities` in the effective set of the calling thread (capabilities are
    per thread) for the body; they stay permitted, and the effective set is restored after.
    The kernel's capable() checks look at the effective set only."""
    header, data = _sets()
    saved = [word.effective for word in data]
    for cap in capabilities:
        data[cap // 32].effective &= ~(1 << (cap % 32)) & 0xFFFFFFFF
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    try:
        yield
    finally:
        header, data = _sets()
        for word, effective in zip(data, saved, strict=True):
            word.effective = effective
        if _libc.capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
