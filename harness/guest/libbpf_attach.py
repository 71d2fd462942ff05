"""Attaching loaded programs inside the guest: XDP, tc, tcx, cgroup and SEC()-driven
(tracing) attachments.

The opts structs of these APIs, `Link` (one attachment; closing it detaches), `Attacher`
(the attach calls of one loaded object, which owns it: harness.guest.libbpf_object's
`BpfObject` delegates its attach_* and xdp_* methods to it and detaches its links before it
closes) and `xdp_query`.
Layouts and version gates follow the team's bpf-facts reference (§2, §3); libbpf 1.1.2 is
the floor.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol, TypeVar

from harness.guest.libbpf import AttachError, Libbpf, LibbpfError

XDP_FLAGS = {"auto": 0, "skb": 2, "drv": 4, "hw": 8}  # XDP_FLAGS_{SKB,DRV,HW}_MODE
XDP_ATTACHED = ("none", "drv", "skb", "hw", "multi")  # XDP_ATTACHED_* in attach_mode order
BPF_TC_INGRESS, BPF_TC_EGRESS = 1, 2
BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47
_TC_POINTS = {"ingress": BPF_TC_INGRESS, "egress": BPF_TC_EGRESS}
_TCX_TYPES = {"ingress": BPF_TCX_INGRESS, "egress": BPF_TCX_EGRESS}
# Detaching from a device or cgroup that is already gone is not a failure of the detach.
_GONE = frozenset({_errno.ENOENT, _errno.ENODEV})


# -- opts structs (x86-64; sizes pinned by tests/unit/test_libbpf_layout.py) ---------------


class BpfXdpAttachOpts(ctypes.Structure):
    _fields_ = (("sz", ctypes.c_size_t), ("old_prog_fd", ctypes.c_int))


class BpfXdpQueryOpts(ctypes.Structure):
    # Defined to the 1.3 layout; 1.1.2 knows the first 32 bytes and accepts the zero tail.
    SIZE_1_1: ClassVar[int] = 32
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("prog_id", ctypes.c_uint32),
        ("drv_prog_id", ctypes.c_uint32),
        ("hw_prog_id", ctypes.c_uint32),
        ("skb_prog_id", ctypes.c_uint32),
        ("attach_mode", ctypes.c_uint8),
        ("feature_flags", ctypes.c_uint64),  # libbpf 1.2
        ("xdp_zc_max_segs", ctypes.c_uint32),  # libbpf 1.3
    )


class BpfTcHook(ctypes.Structure):
    # Ends in `size_t :0` (24 bytes; there is no handle field, whatever some docs say).
    # 1.6 appends `const char *qdisc` at 24; this binding never uses it.
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("ifindex", ctypes.c_int),
        ("attach_point", ctypes.c_int),
        ("parent", ctypes.c_uint32),
    )


class BpfTcOpts(ctypes.Structure):
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
    )


class BpfTcxOpts(ctypes.Structure):  # libbpf 1.3; bpf_netkit_opts has the same layout
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("flags", ctypes.c_uint32),
        ("relative_fd", ctypes.c_uint32),
        ("relative_id", ctypes.c_uint32),
        ("expected_revision", ctypes.c_uint64),
    )


_S = TypeVar("_S", bound=ctypes.Structure)


def _opts(struct: type[_S], **fields: int) -> _S:
    """An opts struct with `sz` set; fields not named stay zero, as libbpf requires."""
    return struct(sz=ctypes.sizeof(struct), **fields)


@dataclass(frozen=True)
class XdpState:
    """What bpf_xdp_query reports for a device; ids are 0 where nothing is attached."""

    attach_mode: str  # none | drv | skb | hw | multi
    prog_id: int
    drv_prog_id: int
    skb_prog_id: int
    hw_prog_id: int


class Link:
    """One attachment.  close() (or leaving the with block) detaches it; closing twice is a
    no-op, and a target that has vanished (ENOENT/ENODEV) counts as detached."""

    def __init__(
        self,
        kind: str,
        program: str,
        target: str,
        detach: Callable[[], int],
        *,
        via: str,
        fd: int = -1,
        details: dict[str, int] | None = None,
    ) -> None:
        self.kind, self.program, self.target = kind, program, target
        self.via = via  # the libbpf function that attached it
        self.fd = fd  # the bpf_link fd, -1 for netlink attachments (XDP, tc)
        self.details = details or {}
        self._detach: Callable[[], int] | None = detach

    @property
    def closed(self) -> bool:
        return self._detach is None

    def close(self) -> None:
        detach, self._detach = self._detach, None
        if detach is None:
            return
        rc = detach()
        if rc < 0 and -rc not in _GONE:
            raise AttachError(
                -rc, f"detaching {self.kind} program {self.program} from {self.target}"
            )

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "attached"
        return f"<Link {self.kind} {self.program} -> {self.target} via {self.via} ({state})>"


class Programs(Protocol):
    """What attaching needs of a loaded object: its programs' bpf_program pointers and fds
    (harness.guest.libbpf_object's `BpfObject` provides them)."""

    def program_ptr(self, name: str) -> int: ...

    def prog_fd(self, program: str) -> int: ...


class Attacher:
    """The attach calls of one loaded object, which owns it: `BpfObject` delegates its
    attach_* and xdp_* methods here and detaches what is still in `links` before it closes
    its program fds."""

    def __init__(self, lib: Libbpf, obj: Programs) -> None:
        self.lib, self.obj = lib, obj
        self.links: list[Link] = []

    def _keep(self, link: Link) -> Link:
        # The object detaches what is still attached before it closes the program fds.
        self.links.append(link)
        return link

    def _raise(self, code: int, what: str) -> AttachError:
        return AttachError(code, what, self.lib.drain_messages())

    def _bpf_link(self, kind: str, program: str, target: str, ptr: int | None, via: str) -> Link:
        if not ptr:
            raise self._raise(ctypes.get_errno(), f"{via} of {program} to {target}")
        c = self.lib.c
        self.lib.drain_messages()
        fd = int(c.bpf_link__fd(ptr))
        return self._keep(
            Link(kind, program, target, lambda: int(c.bpf_link__destroy(ptr)), via=via, fd=fd)
        )

    # -- XDP (netlink) --------------------------------------------------------------------
    def attach_xdp(self, program: str, ifindex: int, mode: str = "auto") -> Link:
        """bpf_xdp_attach in mode skb (generic), drv (native), hw (offload) or auto."""
        if mode not in XDP_FLAGS:
            raise ValueError(f"XDP mode {mode!r}: expected one of {', '.join(XDP_FLAGS)}")
        flags, fd, c = XDP_FLAGS[mode], self.obj.prog_fd(program), self.lib.c
        self.lib.drain_messages()
        rc = int(c.bpf_xdp_attach(ifindex, fd, flags, None))
        if rc < 0:
            raise self._raise(-rc, f"XDP attach of {program} to ifindex {ifindex} in {mode} mode")
        # old_prog_fd makes the detach conditional (XDP_FLAGS_REPLACE): it never removes a
        # program someone attached over ours.
        opts = _opts(BpfXdpAttachOpts, old_prog_fd=fd)
        return self._keep(
            Link(
                "xdp",
                program,
                f"ifindex {ifindex}",
                lambda: int(c.bpf_xdp_detach(ifindex, flags, ctypes.byref(opts))),
                via="bpf_xdp_attach",
                details={"ifindex": ifindex, "flags": flags},
            )
        )

    def xdp_query(self, ifindex: int) -> XdpState:
        return xdp_query(self.lib, ifindex)

    def xdp_attach_mode(self, ifindex: int) -> str:
        return xdp_query(self.lib, ifindex).attach_mode

    # -- tc: clsact + direct-action cls_bpf (netlink) ------------------------------------
    def attach_tc(self, program: str, ifindex: int, direction: str) -> Link:
        """Create the clsact qdisc if missing (EEXIST is fine) and attach a cls_bpf filter.
        Closing detaches the filter, and destroys the clsact qdisc only if this call made it
        (which also removes filters added to it since)."""
        if direction not in _TC_POINTS:
            raise ValueError(f"tc direction {direction!r}: expected ingress or egress")
        fd, c = self.obj.prog_fd(program), self.lib.c
        hook = _opts(BpfTcHook, ifindex=ifindex, attach_point=_TC_POINTS[direction])
        self.lib.drain_messages()
        rc = int(c.bpf_tc_hook_create(ctypes.byref(hook)))
        if rc < 0 and rc != -_errno.EEXIST:
            raise self._raise(-rc, f"creating the clsact qdisc on ifindex {ifindex}")
        created = rc == 0
        whole = _opts(BpfTcHook, ifindex=ifindex, attach_point=BPF_TC_INGRESS | BPF_TC_EGRESS)
        opts = _opts(BpfTcOpts, prog_fd=fd)
        rc = int(c.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)))
        if rc < 0:
            error = self._raise(-rc, f"tc {direction} attach of {program} to ifindex {ifindex}")
            if created:
                c.bpf_tc_hook_destroy(ctypes.byref(whole))
            raise error
        # bpf_tc_detach wants handle and priority, and prog_fd/prog_id/flags zero.
        handle, priority = int(opts.handle), int(opts.priority)
        query = _opts(BpfTcOpts, handle=handle, priority=priority)

        def detach() -> int:
            rc = int(c.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(query)))
            if created:
                destroyed = int(c.bpf_tc_hook_destroy(ctypes.byref(whole)))
                rc = rc if rc < 0 else destroyed
            return rc

        details = {"handle": handle, "priority": priority, "prog_id": int(opts.prog_id)}
        details["created_hook"] = int(created)
        return self._keep(
            Link(
                "tc",
                program,
                f"ifindex {ifindex} {direction}",
                detach,
                via="bpf_tc_attach",
                details=details,
            )
        )

    # -- tcx (kernel 6.6) ----------------------------------------------------------------
    def attach_tcx(self, program: str, ifindex: int, direction: str) -> Link:
        """A tcx link.  libbpf < 1.3 has no bpf_program__attach_tcx: then a raw
        bpf_link_create(prog_fd, ifindex, BPF_TCX_*, NULL), which has no relative ordering."""
        if direction not in _TCX_TYPES:
            raise ValueError(f"tcx direction {direction!r}: expected ingress or egress")
        target = f"ifindex {ifindex} {direction}"
        if self.lib.has("bpf_program__attach_tcx"):
            opts = _opts(BpfTcxOpts)
            self.lib.drain_messages()
            ptr = self.lib.c.bpf_program__attach_tcx(
                self.obj.program_ptr(program), ifindex, ctypes.byref(opts)
            )
            return self._bpf_link("tcx", program, target, ptr, "bpf_program__attach_tcx")
        fd = self.obj.prog_fd(program)
        self.lib.drain_messages()
        link_fd = int(self.lib.c.bpf_link_create(fd, ifindex, _TCX_TYPES[direction], None))
        if link_fd < 0:
            raise self._raise(-link_fd, f"bpf_link_create (tcx) of {program} to {target}")
        return self._keep(
            Link("tcx", program, target, lambda: _close(link_fd), via="bpf_link_create", fd=link_fd)
        )

    # -- cgroup and SEC()-driven attach (bpf_link) --------------------------------------
    def attach_cgroup(self, program: str, cgroup_path: str) -> Link:
        """A cgroup link on a cgroup-v2 directory; the attach type comes from SEC()."""
        prog = self.obj.program_ptr(program)
        try:
            cgroup_fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise AttachError(exc.errno or _errno.EBADF, f"opening cgroup {cgroup_path}") from None
        try:
            self.lib.drain_messages()
            ptr = self.lib.c.bpf_program__attach_cgroup(prog, cgroup_fd)
        finally:
            os.close(cgroup_fd)  # the link holds its own reference to the cgroup
        return self._bpf_link("cgroup", program, cgroup_path, ptr, "bpf_program__attach_cgroup")

    def attach_auto(self, program: str) -> Link:
        """bpf_program__attach: kprobe, ksyscall, tracepoint, raw_tp, fentry/fexit, tp_btf,
        lsm... with the target taken from SEC()."""
        prog = self.obj.program_ptr(program)
        self.lib.drain_messages()
        ptr = self.lib.c.bpf_program__attach(prog)
        return self._bpf_link("auto", program, "SEC()", ptr, "bpf_program__attach")


def xdp_query(lib: Libbpf, ifindex: int) -> XdpState:
    opts = _opts(BpfXdpQueryOpts)
    lib.drain_messages()
    rc = int(lib.c.bpf_xdp_query(ifindex, 0, ctypes.byref(opts)))
    if rc < 0:
        raise LibbpfError(-rc, f"bpf_xdp_query on ifindex {ifindex}", lib.drain_messages())
    mode = int(opts.attach_mode)
    return XdpState(
        attach_mode=XDP_ATTACHED[mode] if mode < len(XDP_ATTACHED) else str(mode),
        prog_id=int(opts.prog_id),
        drv_prog_id=int(opts.drv_prog_id),
        skb_prog_id=int(opts.skb_prog_id),
        hw_prog_id=int(opts.hw_prog_id),
    )


def _close(fd: int) -> int:
    try:
        os.close(fd)
    except OSError as exc:
        return -(exc.errno or _errno.EBADF)
    return 0
