"""Verification only, veristat's fast way: an object opened and prepared once (BTF, CO-RE
relocations, maps) and each program loaded from it with bpf_program__clone (libbpf 1.8),
instead of the object opened, prepared and loaded again for every program.

For the cells that only load (no attach, no drive, no maps to fill or read): kitl verify's.
What a program's verdict depends on is the same either way (its instructions after
relocation, its flags, BTF and func/line info), so the verdicts, instructions and states
are those of a load on its own.  The clone keeps no state: its fd is read (prog_info) and
closed at once.  An object libbpf cannot prepare whole (one program's extern or map the
kernel lacks) is not a `PreparedObject`: the caller loads its programs the usual way,
which says what failed for which program.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import time
from dataclasses import dataclass, replace

from harness.guest import libbpf_prepare
from harness.guest.libbpf import Libbpf
from harness.guest.libbpf_load import (
    LoadOptions,
    ProgramLoad,
    full_log_reload,
    prog_info,
    stats_first,
    wants_full_log,
    with_full_log,
)
from harness.guest.libbpf_object import BpfObject, LogBuffer, attach_type_of, preset

CLONE = "bpf_program__clone"


class BpfProgLoadOpts(ctypes.Structure):
    """struct bpf_prog_load_opts (libbpf 1.8, tools/lib/bpf/bpf.h); ctypes pads it as the
    C compiler does.  Fields left 0 take the program's and object's own values."""

    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("attempts", ctypes.c_int),
        ("expected_attach_type", ctypes.c_int),
        ("prog_btf_fd", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_ifindex", ctypes.c_uint32),
        ("kern_version", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("attach_prog_fd", ctypes.c_uint32),
        ("attach_btf_obj_fd", ctypes.c_uint32),
        ("fd_array", ctypes.c_void_p),
        ("func_info", ctypes.c_void_p),
        ("func_info_cnt", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("line_info", ctypes.c_void_p),
        ("line_info_cnt", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_void_p),
        ("log_true_size", ctypes.c_uint32),
        ("token_fd", ctypes.c_uint32),
        ("fd_array_cnt", ctypes.c_uint32),
    )


@dataclass(frozen=True)
class _Clone:
    rc: int  # the fd, or -errno
    log: str
    filled: bool  # the log reached the end of its buffer
    true_size: int  # what the whole log needs (6.4+; else the buffer's size)
    load_ns: int


class PreparedObject:
    """One object opened and prepared with every program set to load; programs are
    loaded from it one at a time.  A context manager that closes it (its maps go)."""

    def __init__(self, lib: Libbpf, path: str) -> None:
        self.lib, self.path = lib, path
        self._ptr: int | None = None
        self.fixups: tuple[str, ...] = ()
        self.messages = ""  # libbpf's, while opening and preparing

    @classmethod
    def open(cls, lib: Libbpf, path: str, opts: LoadOptions) -> PreparedObject | None:
        """The object prepared, or None when it cannot be (libbpf too old for clones, or a
        failure in open or prepare: then the usual load says what failed)."""
        if not lib.has(CLONE):
            return None
        self = cls(lib, path)
        lib.drain_messages()
        ptr = BpfObject.open_file(lib, path, opts)
        if not ptr:
            lib.drain_messages()
            return None
        self._ptr = ptr
        try:
            preset(lib, ptr, opts.presets)
            self.fixups = libbpf_prepare.prepare_maps(
                lib, ptr, opts.map_sizes, fixups=opts.fixups, pinning=opts.pinning, shrink=True
            )
            for prog in lib.walk("bpf_object__next_program", ptr):
                lib.c.bpf_program__set_autoload(prog, True)
            rc = int(lib.c.bpf_object__prepare(ptr))
        except (KeyError, ValueError):
            rc = -1
        self.messages = lib.drain_messages()
        if rc != 0:
            self.close()
            return None
        return self

    def close(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            self.lib.c.bpf_object__close(ptr)

    def __enter__(self) -> PreparedObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self, program: str, opts: LoadOptions) -> ProgramLoad:
        """`program` loaded on its own from the prepared object and unloaded again, with
        opts' log and flags (statistics first, the whole log after a failure, under
        log_failures_only); what is prepared stays as the object was prepared."""
        quiet = stats_first(opts)
        if quiet is None:
            return self._load_at(program, opts, opts.log_size)
        first = self._load_at(program, quiet, quiet.log_size)
        if not wants_full_log(first):
            return first  # loaded, or failed where a whole log says no more
        return with_full_log(first, self._load_at(program, full_log_reload(opts), opts.log_size))

    def _load_at(self, program: str, opts: LoadOptions, size: int) -> ProgramLoad:
        prog = self._program(program)
        attempts = 1
        while True:
            clone = self._clone(prog, opts, size)
            overflowed = clone.rc == -_errno.ENOSPC and clone.filled
            if not overflowed or size >= opts.log_size_max:
                break
            # the kernel says what the whole log needs (6.4+); older ones: twice the buffer
            wanted = clone.true_size if clone.true_size > size else size * 2
            size, attempts = min(wanted, opts.log_size_max), attempts + 1
        level = opts.log_level
        return self._result(
            prog, program, clone, level=level, size=size, attempts=attempts, truncated=overflowed
        )

    def _program(self, program: str) -> int:
        if self._ptr is None:
            raise ValueError(f"{self.path}: the prepared object is closed")
        prog: int | None = self.lib.c.bpf_object__find_program_by_name(self._ptr, program.encode())
        if not prog:
            raise KeyError(f"{self.path} has no program {program!r}")
        return prog

    def _clone(self, prog: int, opts: LoadOptions, size: int) -> _Clone:
        # A buffer even at log level 0: libbpf's bpf_prog_load then loads a failure again
        # at level 1 into it, as an object's load does (there libbpf prints that log; a
        # clone's is only in the buffer).  Anonymous memory: unused pages cost nothing.
        log = LogBuffer(size)
        attr = BpfProgLoadOpts(sz=ctypes.sizeof(BpfProgLoadOpts))
        if opts.prog_flags:
            attr.prog_flags = int(self.lib.c.bpf_program__flags(prog)) | opts.prog_flags
        attr.log_buf, attr.log_size, attr.log_level = log.address, size, opts.log_level
        self.lib.drain_messages()
        started = time.perf_counter_ns()
        rc = int(self.lib.c.bpf_program__clone(prog, ctypes.byref(attr)))
        load_ns = time.perf_counter_ns() - started
        raw = log.read()
        true_size = int(attr.log_true_size) or size
        return _Clone(rc, raw.decode("utf-8", "replace"), len(raw) >= size - 1, true_size, load_ns)

    def _messages(self, program: str, rc: int) -> str:
        """libbpf's messages of the clone; a failure's name the object first, as a load
        of the object would (a clone's own messages name only the program), with what
        libbpf said while preparing the object (its warnings may be the cause)."""
        messages = self.lib.drain_messages()
        if rc >= 0:
            return messages
        head = f"kitl: {self.path}: {program} loaded from the object prepared once\n"
        return head + self.messages + messages

    def _result(
        self, prog: int, program: str, clone: _Clone, *, level: int, size: int, attempts: int,
        truncated: bool,
    ) -> ProgramLoad:  # fmt: skip
        c, lib = self.lib.c, self.lib
        info = None
        if clone.rc >= 0:
            try:
                info = prog_info(lib, clone.rc)
            finally:
                os.close(clone.rc)
        return ProgramLoad(
            program=program,
            section=c.bpf_program__section_name(prog).decode(),
            prog_type=lib.prog_type_name(c.bpf_program__type(prog)),
            attach_type=attach_type_of(lib, prog),
            ok=clone.rc >= 0,
            errno=-clone.rc if clone.rc < 0 else 0,
            log=clone.log,
            log_truncated=truncated,
            libbpf_messages=self._messages(program, clone.rc),
            load_ns=clone.load_ns,
            insn_cnt=int(c.bpf_program__insn_cnt(prog)),
            prog_id=info.id if info else None,
            xlated_len=info.xlated_len if info else None,
            jited_len=info.jited_len if info else None,
            verified_insns=info.verified_insns if info else None,
            log_level=level,
            log_size=size if level else 0,
            attempts=attempts,
            failed_stage="" if clone.rc >= 0 else "load",
            fixups=self.fixups,
            clone=True,
        )


def prepare_key(path: str, opts: LoadOptions) -> tuple[str, LoadOptions]:
    """What a prepared object is shared by: the file and what its preparation reads (not
    the log, nor the program flags, which each clone sets)."""
    return path, replace(opts, log_level=0, log_failures_only=False, prog_flags=0)


class PreparedCache:
    """The one object kept prepared in the agent, for the programs of one object that
    verify-only cells load one after another; replaced when another object (or other
    preparation settings) comes, and closed before any other load (its pinned maps would
    be reused by it)."""

    def __init__(self) -> None:
        self._key: tuple[str, LoadOptions] | None = None
        self._prepared: PreparedObject | None = None  # None with a key: cannot be prepared
        self.pins: list[str] = []  # what preparing it pinned, unpinned when it closes

    def get(
        self, lib: Libbpf, path: str, opts: LoadOptions, pin_root: str
    ) -> PreparedObject | None:
        """The prepared object for these settings; None: load the usual way."""
        key = prepare_key(path, opts)
        if key == self._key:
            return self._prepared
        self.close()
        before = libbpf_prepare.pins_under(pin_root)
        self._key, self._prepared = key, PreparedObject.open(lib, path, opts)
        self.pins = sorted(libbpf_prepare.pins_under(pin_root) - before)
        return self._prepared

    def close(self) -> None:
        if self._prepared is not None:
            self._prepared.close()
        libbpf_prepare.unpin(self.pins)
        self._key, self._prepared, self.pins = None, None, []
