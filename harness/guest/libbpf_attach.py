"""Using loaded programs: attach (XDP, tc, tcx, cgroup, tracing), test_run, ring buffers.

The lower half of the ctypes binding over libbpf (`harness.guest.libbpf` holds the loader):
the opts structs of these APIs, `Link` (one attachment; closing it detaches), the
`Attachable` mixin that gives `BpfObject` its attach and test_run methods, a ring-buffer
counter, and the errors of the binding.
Layouts and version gates follow the team's bpf-facts reference (§2, §3); libbpf 1.1.2 is
the floor.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

if TYPE_CHECKING:
    from harness.guest.libbpf import Libbpf

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

XDP_FLAGS = {"auto": 0, "skb": 2, "drv": 4, "hw": 8}  # XDP_FLAGS_{SKB,DRV,HW}_MODE
XDP_ATTACHED = ("none", "drv", "skb", "hw", "multi")  # XDP_ATTACHED_* in attach_mode order
BPF_TC_INGRESS, BPF_TC_EGRESS = 1, 2
BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47
_TC_POINTS = {"ingress": BPF_TC_INGRESS, "egress": BPF_TC_EGRESS}
_TCX_TYPES = {"ingress": BPF_TCX_INGRESS, "egress": BPF_TCX_EGRESS}
# Detaching from a device or cgroup that is already gone is not a failure of the detach.
_GONE = frozenset({_errno.ENOENT, _errno.ENODEV})


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


class BpfTestRunOpts(ctypes.Structure):
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),  # in: capacity; out: bytes written
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),  # average ns per repetition
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    )


@dataclass(frozen=True)
class TestRun:
    """A BPF_PROG_TEST_RUN result; errno ENOTSUPP means the type has no test_run."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    retval: int
    duration_ns: int  # kernel average per repetition
    data_out: bytes
    ctx_out: bytes
    errno: int = 0

    @property
    def ok(self) -> bool:
        return self.errno == 0


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


class Attachable:
    """The attach and run methods of `BpfObject`, which provides the members declared here."""

    lib: Libbpf
    _links: list[Link]

    def _program(self, name: str) -> int:
        raise NotImplementedError

    def prog_fd(self, program: str) -> int:
        raise NotImplementedError

    def map_fd(self, name: str) -> int:
        raise NotImplementedError

    def _keep(self, link: Link) -> Link:
        # The object detaches what is still attached before it closes the program fds.
        self._links.append(link)
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
        flags, fd, c = XDP_FLAGS[mode], self.prog_fd(program), self.lib.c
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
        fd, c = self.prog_fd(program), self.lib.c
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
                self._program(program), ifindex, ctypes.byref(opts)
            )
            return self._bpf_link("tcx", program, target, ptr, "bpf_program__attach_tcx")
        fd = self.prog_fd(program)
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
        prog = self._program(program)
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
        prog = self._program(program)
        self.lib.drain_messages()
        ptr = self.lib.c.bpf_program__attach(prog)
        return self._bpf_link("auto", program, "SEC()", ptr, "bpf_program__attach")

    # -- BPF_PROG_TEST_RUN ---------------------------------------------------------------
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
        """bpf_prog_test_run_opts.  A kernel refusal is returned in TestRun.errno (ENOTSUPP:
        the program type has no test_run), not raised.  XDP live frames (flags=2) reject an
        output buffer: pass data_out_size=0.

        `ctx_only` is for raw_tracepoint and syscall programs, whose test_run rejects
        (EINVAL) any data buffer, a ctx_out buffer and a repeat count; a syscall program's
        ctx is copied back into ctx_in, which is then returned as ctx_out."""
        fd = self.prog_fd(program)
        if ctx_only:
            data, data_out_size, repeat = b"", 0, 0
        # Every buffer stays referenced by a local until the call returns.
        data_in = ctypes.create_string_buffer(data, len(data)) if data else None
        data_out = ctypes.create_string_buffer(data_out_size) if data_out_size else None
        ctx_in = ctypes.create_string_buffer(ctx, len(ctx)) if ctx else None
        ctx_out = ctypes.create_string_buffer(len(ctx)) if ctx and not ctx_only else None
        opts = BpfTestRunOpts(sz=ctypes.sizeof(BpfTestRunOpts), repeat=repeat, flags=flags)
        if data_in is not None:
            opts.data_in, opts.data_size_in = ctypes.addressof(data_in), len(data)
        if data_out is not None:
            opts.data_out, opts.data_size_out = ctypes.addressof(data_out), data_out_size
        if ctx_in is not None and ctx:
            opts.ctx_in, opts.ctx_size_in = ctypes.addressof(ctx_in), len(ctx)
        if ctx_out is not None and ctx:
            opts.ctx_out, opts.ctx_size_out = ctypes.addressof(ctx_out), len(ctx)
        rc = int(self.lib.c.bpf_prog_test_run_opts(fd, ctypes.byref(opts)))
        out = data_out.raw[: opts.data_size_out] if data_out is not None else b""
        if ctx_out is not None:
            ctx_back = ctx_out.raw[: opts.ctx_size_out]
        else:
            ctx_back = ctx_in.raw[: len(ctx)] if ctx_in is not None and ctx else b""
        return TestRun(
            retval=int(opts.retval),
            duration_ns=int(opts.duration),
            data_out=out,
            ctx_out=ctx_back,
            errno=-rc if rc < 0 else 0,
        )

    def ringbuf_counter(self, map_name: str, *, keep: int = 64) -> RingBufferCounter:
        return RingBufferCounter(self.lib, self.map_fd(map_name), keep=keep)


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


# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
RINGBUF_SAMPLE_FN = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t
)


class RingBufferCounter:
    """Counts the records of a BPF ring buffer map (and keeps the first `keep` of them).
    consume() drains what is there without blocking; close() frees the ring_buffer."""

    def __init__(self, lib: Libbpf, map_fd: int, *, keep: int = 64) -> None:
        self.lib, self.keep = lib, keep
        self.count = 0
        self.samples: list[bytes] = []
        self._callback = RINGBUF_SAMPLE_FN(self._on_sample)  # referenced while libbpf may call it
        lib.drain_messages()
        ptr = lib.c.ring_buffer__new(map_fd, self._callback, None, None)
        if not ptr:
            raise LibbpfError(ctypes.get_errno(), "ring_buffer__new", lib.drain_messages())
        self._ptr: int | None = ptr

    def _on_sample(self, _ctx: int | None, data: int | None, size: int) -> int:
        self.count += 1
        if data and len(self.samples) < self.keep:
            self.samples.append(ctypes.string_at(data, size))
        return 0

    def consume(self) -> int:
        if self._ptr is None:
            raise ValueError("the ring buffer is closed")
        rc = int(self.lib.c.ring_buffer__consume(self._ptr))
        if rc < 0:
            raise LibbpfError(-rc, "ring_buffer__consume")
        return rc

    def close(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            self.lib.c.ring_buffer__free(ptr)

    def __enter__(self) -> RingBufferCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
