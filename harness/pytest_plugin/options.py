"""The command-line options of kitl's pytest plugin (`kitl run` and `kitl verify` pass
these to the pytest they start)."""

from __future__ import annotations

import pytest

from harness.interrupts import DEFAULT_CELL_TIMEOUT
from harness.results import known as known_mod
from harness.scenario import verify_options
from harness.vm import accel


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("kitl", "kitl: eBPF scenarios on real kernels")
    group.addoption("--kitl", action="store_true", help="collect kitl scenario files as tests")
    group.addoption(
        "--kitl-kernels",
        default="",
        metavar="A,B",
        help="kernels of the matrix (default: each scenario's kernels:, else the catalog's "
        "default set)",
    )
    group.addoption("--kitl-configs", default="", metavar="X,Y", help="only these configs")
    group.addoption(
        "--kitl-libbpf",
        default="",
        metavar="A,B",
        help="the loaders: default (the libbpf of the catalog's newest Debian kernel), "
        "system (the host's libbpf.so.1), debian-X (built from that kernel's source) or a "
        "path to a libbpf.so; without it, each scenario's libbpf:, else default",
    )
    group.addoption("--kitl-output", default=None, metavar="DIR", help="the run directory")
    group.addoption("--kitl-accel", default="auto", choices=accel.ACCELS)
    group.addoption("--kitl-boot-timeout", type=float, default=None, metavar="SECONDS")
    group.addoption(
        "--kitl-cell-timeout",
        type=float,
        default=DEFAULT_CELL_TIMEOUT,
        metavar="SECONDS",
        help="a cell still running after this is TIMED_OUT and its VM replaced "
        f"(default {DEFAULT_CELL_TIMEOUT:g})",
    )
    group.addoption("--kitl-shard", default=None, metavar="I/N", help="run shard I of N")
    group.addoption(
        "--kitl-resume",
        action="store_true",
        help="run only the cells --kitl-output has no result for (or an infrastructure one)",
    )
    group.addoption(
        "--kitl-expect",
        default=None,
        metavar="FILE",
        help=f"known failures (default: ./{known_mod.DEFAULT_NAME} when it exists)",
    )
    group.addoption(
        "--kitl-lines", action="store_true", help="one line per cell instead of dots (kitl run)"
    )
    group.addoption(
        "--kitl-allow-outside",
        action="store_true",
        help="let scenarios name files outside their own directory",
    )
    parser.addini("kitl", type="bool", default=False, help="collect kitl scenario files")
    verify = parser.getgroup("kitl-verify", "kitl verify: every program of BPF objects")
    verify.addoption("--kitl-verify", action="store_true", help="collect *.o files")
    verify_options.add_pytest_options(verify)
