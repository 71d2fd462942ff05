"""What every benchmark script shares: SIGTERM unwinds like Ctrl-C, so VMs and child
processes are torn down; the header line that dates a measurement; a kitl command timed
as a whole."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, _interrupt)


def stamp() -> str:
    return f"date {time.strftime('%Y-%m-%d %H:%M')}  host {platform.node()}  cpus {os.cpu_count()}"


def timed(argv: list[str]) -> tuple[float, str]:
    """Wall time of a command that must succeed (run from the repository), and its stderr."""
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}")
    return seconds, proc.stderr
