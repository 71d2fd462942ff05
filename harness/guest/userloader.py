"""Guest side: the user's own loader as a cell (a skeleton app, a Go or Rust loader, bpftool).

The command runs as a real loader runs: its own process group, its own working directory,
its output captured.  While it runs, the kernel's program ids are polled (BPF_PROG_GET_NEXT_ID)
so that the programs of a loader that loads, attaches and exits are seen too; each new one
is read once (bpf_prog_info: name, type, verified_insns, xlated and jited sizes).  After it
exits, the programs still loaded are marked (pinned, or held by a link or a netlink attach),
whatever it left running in its process group is killed, and what it pinned under the bpffs
is removed, so nothing of it reaches the next cell; what is still loaded after that is the
leak check's (harness.guest.agent.Agent.release).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from harness.guest import libbpf_load
from harness.guest.protocol import RunLoader
from harness.guest.replies import ErrorKind, GuestError, LoaderProgram, LoaderReply

BPFFS = "/sys/fs/bpf"
OUTPUT_MAX = 64 << 10  # the tail of stdout and of stderr a cell keeps
TERM_GRACE_S = 1.0  # between SIGTERM and SIGKILL when the loader overruns its time


class Programs(Protocol):
    """The kernel's programs as the watcher reads them (the real one is KernelPrograms;
    tests give a fake)."""

    def ids(self) -> frozenset[int]: ...

    def info(self, prog_id: int) -> LoaderProgram | None:
        """The program's info, left_loaded False; None when it is gone already."""

    def pinned_program(self, path: str) -> int | None:
        """The id of the program a pin holds (the program itself, or its link); None for a
        map or anything else."""


class KernelPrograms:
    """Programs through the guest's libbpf: ids, bpf_prog_info by id, pins by fdinfo."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib

    def ids(self) -> frozenset[int]:
        found, current, next_id = set(), 0, ctypes.c_uint32(0)
        while int(self.lib.c.bpf_prog_get_next_id(current, ctypes.byref(next_id))) == 0:
            current = int(next_id.value)
            found.add(current)
        return frozenset(found)

    def info(self, prog_id: int) -> LoaderProgram | None:
        fd = int(self.lib.c.bpf_prog_get_fd_by_id(prog_id))
        if fd < 0:
            return None  # freed since it was listed
        try:
            info = libbpf_load.prog_info(self.lib, fd)
        finally:
            os.close(fd)
        return LoaderProgram(
            id=prog_id,
            name=info.name,
            type=self.lib.prog_type_name(info.prog_type),
            verified_insns=info.verified_insns,
            xlated_len=info.xlated_len,
            jited_len=info.jited_len,
            run_cnt=info.run_cnt,
            run_time_ns=info.run_time_ns,
            left_loaded=False,
        )

    def pinned_program(self, path: str) -> int | None:
        fd = int(self.lib.c.bpf_obj_get(path.encode()))
        if fd < 0:
            return None
        try:
            fields = fdinfo(Path(f"/proc/self/fdinfo/{fd}").read_text())
        finally:
            os.close(fd)
        # a program's and a link's fdinfo name the program; a map's names none
        if "map_type" in fields or "prog_id" not in fields:
            return None
        return int(fields["prog_id"])


def fdinfo(text: str) -> dict[str, str]:
    """The `key:\tvalue` lines of /proc/PID/fdinfo/FD."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def run(req: RunLoader, programs: Programs, bpffs: str = BPFFS) -> LoaderReply:
    """Run the loader to its end (or its timeout) and report what it loaded."""
    argv = [str(a) for a in req.argv]
    _check_visible(argv[0], req.cwd)
    pins_before = _tree(bpffs)
    before = programs.ids()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kitl-loader-") as scratch:
        tmp = Path(scratch) / "tmp"
        tmp.mkdir()
        env = {**os.environ, "TMPDIR": str(tmp), **{str(k): str(v) for k, v in req.env.items()}}
        out_path, err_path = Path(scratch) / "stdout", Path(scratch) / "stderr"
        with (
            out_path.open("wb") as out,
            err_path.open("wb") as err,
            _started(argv, req.cwd, env, out, err) as proc,
        ):
            seen, timed_out = _watch(proc, programs, before, req)
            seconds = time.monotonic() - started
            # programs loaded after the last poll, and those still loaded now, before the
            # context kills what the loader left running in its group (a daemon)
            alive = programs.ids()
            for prog_id in sorted(alive - before - seen.keys()):
                if (info := programs.info(prog_id)) is not None:
                    seen[prog_id] = info
        stdout, stdout_cut = _tail(out_path)
        stderr, stderr_cut = _tail(err_path)
    pins = sorted(_tree(bpffs) - pins_before)
    holders: dict[int, list[str]] = {}
    for path in pins:
        if os.path.isfile(path) and (held := programs.pinned_program(path)) is not None:
            holders.setdefault(held, []).append(path)
    _remove(pins)
    listed = tuple(
        replace(info, left_loaded=prog_id in alive, pinned=tuple(holders.get(prog_id, ())))
        for prog_id, info in sorted(seen.items())
    )
    return LoaderReply(
        command=tuple(argv),
        status=proc.returncode,
        timed_out=timed_out,
        seconds=round(seconds, 3),
        stdout=stdout,
        stderr=stderr,
        programs=listed,
        pins=tuple(pins),
        output_cut=stdout_cut or stderr_cut,
    )


def _check_visible(program: str, cwd: str) -> None:
    """A clear error for the host paths the guest cannot see (a file created under the
    host's /tmp after the boot is hidden by the guest's own /tmp)."""
    if not os.path.isdir(cwd):
        message = f"the loader's directory {cwd} is not visible in the guest"
        raise GuestError(message, ErrorKind.SETUP)
    if "/" in program and not os.access(os.path.join(cwd, program), os.X_OK):
        raise GuestError(
            f"the loader {program} is not an executable file in the guest's view of the host",
            ErrorKind.SETUP,
        )


@contextmanager
def _started(
    argv: list[str], cwd: str, env: dict[str, str], out: BinaryIO, err: BinaryIO
) -> Iterator[subprocess.Popen[bytes]]:
    """The loader started in a process group of its own; on the way out the group is
    killed (what it left running must not outlive the cell) and the loader reaped."""
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    except OSError as exc:
        message = f"{argv[0]}: cannot run it in the guest: {exc.strerror or exc}"
        raise GuestError(message, ErrorKind.SETUP) from None
    try:
        yield proc
    finally:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()


def _watch(
    proc: subprocess.Popen[bytes], programs: Programs, before: frozenset[int], req: RunLoader
) -> tuple[dict[int, LoaderProgram], bool]:
    """Poll the program ids until the loader exits: {id: info} of the new ones, and whether
    it overran its timeout (then its group got SIGTERM, and SIGKILL after a grace)."""
    seen: dict[int, LoaderProgram] = {}
    poll = max(0.005, req.poll_ms / 1000)
    deadline = time.monotonic() + float(req.timeout)
    interrupt_at = (
        time.monotonic() + float(req.interrupt_after) if req.interrupt_after is not None else None
    )
    timed_out = False
    while True:
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=poll)
        for prog_id in sorted(programs.ids() - before - seen.keys()):
            if (info := programs.info(prog_id)) is not None:
                seen[prog_id] = info
        if proc.returncode is not None:
            return seen, timed_out
        now = time.monotonic()
        if interrupt_at is not None and now >= interrupt_at:
            _signal_group(proc.pid, signal.SIGINT)  # Ctrl-C: how a daemon-style loader ends
            interrupt_at = None
        if now >= deadline and not timed_out:
            timed_out = True
            _signal_group(proc.pid, signal.SIGTERM)
            deadline = now + TERM_GRACE_S
        elif now >= deadline:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()


def _signal_group(pgid: int, signum: int) -> None:
    # gone already; or a member changed its credentials (the loader is still reaped)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _tail(path: Path) -> tuple[str, bool]:
    """The last OUTPUT_MAX bytes of a file as text, and whether it was longer."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - OUTPUT_MAX))
        data = f.read()
    return data.decode("utf-8", "replace"), size > OUTPUT_MAX


def _tree(root: str) -> frozenset[str]:
    """Every file and directory below a bpffs root (what a loader pinned adds to it)."""
    found: set[str] = set()
    for top, dirs, files in os.walk(root):
        found.update(os.path.join(top, name) for name in (*dirs, *files))
    return frozenset(found)


def _remove(paths: list[str]) -> None:
    """Unpin: files first, then directories deepest first (bpffs removes like any fs)."""
    for path in sorted(paths, key=lambda p: (os.path.isdir(p), -p.count("/"))):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                # the agent's stdout is the protocol: diagnostics go to stderr
                print(f"kitl agent: could not unpin {path}: {exc}", file=sys.stderr)
