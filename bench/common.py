"""What every benchmark script shares: SIGTERM unwinds like Ctrl-C, so VMs and child
processes are torn down; and the header line that dates a measurement."""

from __future__ import annotations

import os
import platform
import signal
import time


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, _interrupt)


def stamp() -> str:
    return f"date {time.strftime('%Y-%m-%d %H:%M')}  host {platform.node()}  cpus {os.cpu_count()}"
