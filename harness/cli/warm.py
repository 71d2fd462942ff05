"""`kitl up`, `kitl ps`, `kitl down`: warm guests, booted once and kept for the edit-verify
loop (harness.vm.warm; the daemon is harness.vm.warmd, the client harness.vm.warmclient).

`kitl up` starts one detached daemon per kernel (its own session, its output in its log),
waits until each guest is ready and returns; the guests stay up until `kitl down`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import harness
from harness.cli import guests, runner
from harness.cli.progress import DownloadProgress, stderr
from harness.cli.requests import UpRequest
from harness.kernel import libbpf_build
from harness.kernel.libbpf_build import DEFAULT as DEFAULT_LIBBPF
from harness.kernel.resolve import Kernels
from harness.kernel.store import Kernel
from harness.outcome import EXIT_FAILED, EXIT_OK
from harness.run import options
from harness.vm import warm
from harness.vm.warm import DaemonSpec, Paths, WarmRecord

# the tests' seam: "module:factory" of a Launcher the daemons boot with (default virtme-ng)
LAUNCHER_ENV = "KITL_WARM_LAUNCHER"
STOP_WAIT_S = 60.0  # a clean stop: the agents, then the VM's teardown (5 s at most)


def add_up_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="KERNEL", help="default: the default kernels")
    p.add_argument(
        "--libbpf", default="", metavar="A,B",
        help="the loaders whose agents start with the guest (default: the default loader); "
        "a command with another one starts its agent in the same guest",
    )  # fmt: skip


def up(request: UpRequest) -> int:
    directory = _warm_dir()
    ks = Kernels.open()
    entries = ks.catalog.select(list(request.guest.names))  # unknown names: exit 2
    with DownloadProgress() as progress:
        kernels = [ks.get(e.name, progress) for e in entries]
    accel = guests.decide_accel(request.guest, ks.store.cache, kernels[0] if kernels else None)
    loaders = options.libbpf_names(request.libbpf) or [DEFAULT_LIBBPF]
    runner.build_loaders(ks, loaders)
    libbpfs = tuple(libbpf_build.loader_path(name, ks) or "" for name in loaders)
    waiting: list[tuple[Kernel, subprocess.Popen[bytes]]] = []
    for kernel in kernels:
        running = warm.find(directory, kernel.name)
        if running is not None:
            _say_running(running, kernel, accel)
            continue
        paths = Paths(directory, kernel.name)
        paths.check_socket_length()
        warm.remove_files(paths)  # a failed guest's record, if any
        DaemonSpec(
            warm.kernel_to_json(kernel), accel, cpus=request.guest.cpus,
            memory=request.guest.memory, boot_timeout=request.guest.boot_timeout,
            libbpfs=libbpfs, launcher=os.environ.get(LAUNCHER_ENV, ""),
        ).write(paths.spec)  # fmt: skip
        proc = spawn(directory, kernel.name, paths.log)
        stderr.print(f"kitl: booting {kernel.name} ({kernel.release}, {accel}) as pid {proc.pid}")
        waiting.append((kernel, proc))
    ok = [_wait_up(directory, kernel, proc) for kernel, proc in waiting]
    return EXIT_OK if all(ok) else EXIT_FAILED


def _warm_dir() -> Path:
    directory = warm.warm_dir()
    for record in warm.clean_stale(directory):
        what = f"failed: {record.reason}" if record.state == warm.FAILED else "gone"
        stderr.print(f"kitl: {record.kernel}: warm guest {what} (pid {record.pid}); removed")
    return directory


def _say_running(record: WarmRecord, kernel: Kernel, accel: str) -> None:
    why = record.mismatch(kernel, accel)
    if why:
        stderr.print(
            f"kitl: {kernel.name}: a warm guest is up (pid {record.pid}) that does not fit: "
            f"{why}; kitl down {kernel.name} first"
        )
    else:
        stderr.print(f"kitl: {kernel.name}: already up (pid {record.pid}, {record.state})")


def spawn(directory: Path, kernel: str, log: Path) -> subprocess.Popen[bytes]:
    """The daemon, detached: its own session (no terminal's signals reach it), its output
    in its log, the same interpreter and the same kitl (PYTHONPATH) as this process."""
    env = dict(os.environ)
    source = str(Path(harness.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        argv = [sys.executable, "-m", warm.DAEMON_MODULE, "--dir", str(directory)]
        return subprocess.Popen(
            [*argv, "--kernel", kernel],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            cwd="/",
            env=env,
        )
    finally:
        os.close(fd)


def _wait_up(directory: Path, kernel: Kernel, proc: subprocess.Popen[bytes]) -> bool:
    """Wait until the daemon says its guest is ready (True) or failed (False)."""
    path = Paths(directory, kernel.name)
    said = ""
    while True:
        record = warm.read_record(path.record)
        if record is not None and record.state == warm.BOOTING and record.reason != said:
            said = record.reason  # a wait for guest slots
            stderr.print(f"kitl: {said}")
        if record is not None and record.state == warm.IDLE:
            stderr.print(
                f"kitl: {kernel.name} up in {record.ready_s:.1f}s (pid {record.pid}); "
                "kitl ps lists it, kitl down stops it"
            )
            return True
        if (record is not None and record.state == warm.FAILED) or proc.poll() is not None:
            why = record.reason if record is not None and record.reason else "the daemon exited"
            stderr.print(f"kitl: {kernel.name} did not come up: {why} (log: {path.log})")
            warm.remove_files(path)
            return False
        time.sleep(0.2)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _row(r: WarmRecord) -> tuple[str, ...]:
    state = r.state if r.state != warm.IN_USE else f"in use (pid {r.user})"
    figures = (str(r.pid), _duration(r.uptime()), str(r.uses), str(r.cells))
    return (r.kernel, state, *figures, r.release, r.accel)


def ps(as_json: bool) -> int:
    directory = _warm_dir()
    found = warm.records(directory)
    if as_json:
        print(json.dumps([r.to_json() for r in found], indent=2))
        return EXIT_OK
    if not found:
        print("no warm guests (kitl up KERNEL... starts some)")
        return EXIT_OK
    head = ("KERNEL", "STATE", "PID", "UPTIME", "USES", "CELLS", "RELEASE", "ACCEL")
    rows = [head] + [_row(r) for r in found]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def down(names: Sequence[str]) -> int:
    directory = _warm_dir()
    found = {r.kernel: r for r in warm.records(directory)}
    for name in names:
        if name not in found:
            stderr.print(f"kitl: {name}: no warm guest up")
    for record in [r for r in found.values() if not names or r.kernel in names]:
        stop(directory, record)
        stderr.print(
            f"kitl: {record.kernel} down (pid {record.pid}, up {_duration(record.uptime())}; "
            f"{record.cells} cells in {record.uses} uses)"
        )
    return EXIT_OK


def stop(directory: Path, record: WarmRecord) -> None:
    """Stop a daemon cleanly (its agents, then its VM), else by signals; its files go."""
    with contextlib.suppress(OSError, ValueError):
        wire = warm.connect(Path(record.socket))
        wire.send({"op": "stop"})
        wire.recv(5.0)
        wire.close()
    if _gone(record.pid, STOP_WAIT_S):
        warm.remove_files(Paths(directory, record.kernel))
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, signal.SIGTERM)  # unwinds like Ctrl-C: the VM is torn down
    if not _gone(record.pid, 10.0):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGKILL)
        if record.guest_pid:  # killed before its teardown: its VM's group is left
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(record.guest_pid, signal.SIGKILL)
    warm.remove_files(Paths(directory, record.kernel))


def _gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while warm.daemon_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
