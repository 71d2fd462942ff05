"""Running loaded programs without attaching them, inside the guest: BPF_PROG_TEST_RUN
(`prog_test_run`, its opts struct and its `TestRun` result) and counting the records of a
ring buffer map (`RingBufferCounter`).  `BpfObject.test_run` and `BpfObject.ringbuf_counter`
(harness.guest.libbpf_object) call them with the object's fds.
Layouts follow the team's bpf-facts reference (§3); libbpf 1.1.2 is the floor.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import ClassVar

from harness.guest.libbpf import Libbpf, LibbpfError


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


def prog_test_run(
    lib: Libbpf,
    fd: int,
    data: bytes,
    *,
    ctx: bytes | None,
    repeat: int,
    flags: int,
    data_out_size: int,
    ctx_only: bool,
) -> TestRun:
    """bpf_prog_test_run_opts on the program `fd`.  A kernel refusal is returned in
    TestRun.errno (ENOTSUPP: the program type has no test_run), not raised.  XDP live frames
    (flags=2) reject an output buffer: pass data_out_size=0.

    `ctx_only` is for raw_tracepoint and syscall programs, whose test_run rejects
    (EINVAL) any data buffer, a ctx_out buffer and a repeat count; a syscall program's
    ctx is copied back into ctx_in, which is then returned as ctx_out."""
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
    rc = int(lib.c.bpf_prog_test_run_opts(fd, ctypes.byref(opts)))
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
