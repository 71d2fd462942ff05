"""Boot-to-ready cost of kitl against a bare virtme-ng boot, interleaved, per kernel.

For each kernel: N rounds of (bare `vng --run VMLINUZ --exec true`, kitl boot-to-ready
through the SSH channel), alternating so machine drift hits both alike.  Prints medians and
the kitl/bare ratio (goal: <= 1.10).  Not a test: run it by hand and copy the figures into
docs/benchmarks.md with the date and machine.

    .venv/bin/python bench/boot.py [--rounds 3] [KERNEL ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import stop_on_sigterm

from harness.kernel.resolve import Kernels
from harness.kernel.store import Kernel
from harness.vm import accel
from harness.vm.machine import VM
from harness.vm.slots import GuestSlots


def bare_boot(kernel: Kernel, accel_name: str) -> float:
    """One bare boot; a failed one (TCG's boot-time text-patching flake) is tried again,
    as kitl itself does, and the retry's time is what counts."""
    for _ in range(2):
        seconds = _bare_boot_once(kernel, accel_name)
        if seconds is not None:
            return seconds
        print(f"# bare boot of {kernel.name} failed; retrying once", flush=True)
    raise SystemExit(f"bare vng boot of {kernel.name} failed twice")


def _bare_boot_once(kernel: Kernel, accel_name: str) -> float | None:
    vng = str(Path(sys.executable).parent / "vng")
    argv = [vng, "--run", str(kernel.vmlinuz), "--cpus", "2", "--memory", "2G"]
    if accel_name == "tcg":
        argv.append("--disable-kvm")
    argv += ["--exec", "true"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        if proc.wait() != 0:
            return None
    finally:
        if proc.poll() is None:  # interrupted: take vng's whole process group down
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return time.monotonic() - started


def kitl_boot(kernel: Kernel, accel_name: str, slots: GuestSlots) -> float:
    """kitl's boot-to-ready as every kitl command boots: admitted through the guest slots
    (harness.vm.slots), then booted and reached over SSH."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        console = Path(tmp) / "console.log"
        with VM(kernel, accel=accel_name, console_path=console, slots=slots) as vm:
            ready = time.monotonic() - started
            assert vm.run(["true"], timeout=60).ok
        return ready


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernels", nargs="*")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ks = Kernels.open()
    names = args.kernels or [e.name for e in ks.catalog.defaults()]
    kernels = [ks.get(n) for n in names]
    decision = accel.decide("auto", ks.store.cache, None)
    slots = GuestSlots.for_cache(ks.store.cache)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {os.cpu_count()} cpus, "
        f"accel {decision.accel}, {args.rounds} interleaved rounds"
    )
    print(f"{'kernel':<13} {'bare median':>12} {'kitl median':>12} {'ratio':>7}  (all runs)")
    for kernel in kernels:
        bare, ours = [], []
        for _ in range(args.rounds):
            bare.append(bare_boot(kernel, decision.accel))
            ours.append(kitl_boot(kernel, decision.accel, slots))
        ratio = statistics.median(o / b for o, b in zip(ours, bare, strict=True))
        print(
            f"{kernel.name:<13} {statistics.median(bare):11.1f}s {statistics.median(ours):11.1f}s "
            f"{ratio:7.2f}  bare={[round(b, 1) for b in bare]} kitl={[round(o, 1) for o in ours]}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
