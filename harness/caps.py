"""Linux capabilities of the calling process, through capget/capset (Python has no binding).

Used by the guest agent's unprivileged loads: a child process drops the capabilities a BPF
loader would lack, then loads.  Layout: linux/capability.h, _LINUX_CAPABILITY_VERSION_3
(two 32-bit words per set)."""

from __future__ import annotations

import ctypes
import os

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
UNPRIVILEGED_DROP = (CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)
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


def drop(capabilities: tuple[int, ...]) -> None:
    """Remove `capabilities` from the effective, permitted and inheritable sets for good."""
    header, data = _sets()
    for cap in capabilities:
        mask = ~(1 << (cap % 32)) & 0xFFFFFFFF
        word = data[cap // 32]
        word.effective &= mask
        word.permitted &= mask
        word.inheritable &= mask
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
