"""Warm guests (issue 16): `kitl verify` of a two-program object on KERNELS, cold (every
guest booted: --no-warm) and warm (`kitl up` first), side by side.  Goal: a two-program
object on the five default kernels in under 5 s wall time warm.  Not a test.

    .venv/bin/python bench/warm.py [--kernels debian-6.1,...] [--runs 2]

Each figure is the wall time of one whole `kitl verify` process (start-up, pytest, the
guests, the cells, the reports).  The warm guests live in a directory of the script's own
(KITL_WARM_DIR), so guests other users have up are neither used nor stopped; they are
brought up before the warm runs (`kitl up`, timed apart) and down at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import stamp, stop_on_sigterm

from harness.kernel.resolve import Kernels
from harness.run.compile import compile_object, kernel_btf, vmlinux_h

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "xdp_pass.bpf.c"  # two XDP programs


def kitl(env: dict[str, str], *argv: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", *argv],
        env=env, capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    return time.monotonic() - started, done


def verify(env: dict[str, str], obj: Path, kernels: str, out: Path, *extra: str) -> float:
    seconds, done = kitl(
        env, "verify", str(obj), "--kernels", kernels, "--output", str(out), *extra
    )
    if done.returncode != 0:
        sys.exit(f"kitl verify failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds


def main() -> None:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__)
    ks = Kernels.open()
    defaults = ",".join(e.name for e in ks.catalog.defaults())
    parser.add_argument("--kernels", default=defaults)
    parser.add_argument("--runs", type=int, default=2, help="of each, cold and warm")
    args = parser.parse_args()
    names = [n for n in args.kernels.split(",") if n]
    with tempfile.TemporaryDirectory(prefix="kitl-bench-warm-", dir="/tmp") as tmp:
        work = Path(tmp)
        header = vmlinux_h(kernel_btf(ks.get(names[-1])), ks.store.cache)
        obj = compile_object(EXAMPLE, header, ks.store.cache)
        env = {**os.environ, "KITL_WARM_DIR": str(work / "warm")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        print(stamp())
        print(f"object {EXAMPLE.name} (2 programs), kernels {','.join(names)}")
        cold = [
            verify(env, obj, args.kernels, work / f"cold{n}", "--no-warm") for n in range(args.runs)
        ]
        up_s, done = kitl(env, "up", *names)
        if done.returncode != 0:
            sys.exit(f"kitl up failed:\n{done.stderr}")
        try:
            warm = [verify(env, obj, args.kernels, work / f"warm{n}") for n in range(args.runs)]
        finally:
            kitl(env, "down")
        print(f"kitl up: {up_s:.1f} s")
        print(f"{'run':<6}{'cold (s)':>10}{'warm (s)':>10}")
        for n, (c, w) in enumerate(zip(cold, warm, strict=True), 1):
            print(f"{n:<6}{c:>10.1f}{w:>10.1f}")
        best = min(warm)
        print(f"warm best {best:.1f} s (goal < 5 s: {'met' if best < 5 else 'not met'})")


if __name__ == "__main__":
    main()
