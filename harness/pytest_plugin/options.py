"""The command-line options of kitl's pytest plugin (`kitl run` and `kitl verify` pass
these to the pytest they start): the matrix's from harness.run.options (`MATRIX`, the rows
kitl run and kitl verify declare theirs from), kitl verify's from
harness.scenario.verify_options (`OPTIONS`), and the plugin's own switches."""

from __future__ import annotations

import pytest

from harness.run import options as matrix_options
from harness.scenario import verify_options


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("kitl", "kitl: eBPF scenarios on real kernels")
    group.addoption("--kitl", action="store_true", help="collect kitl scenario files as tests")
    verify_options.add_pytest_options(group, matrix_options.MATRIX)
    group.addoption(
        "--kitl-lines",
        action="store_true",
        help="kitl's lines instead of dots: one per failure and the progress (kitl run)",
    )
    group.addoption(
        "--kitl-verbose", action="store_true", help="with --kitl-lines: one line per cell"
    )
    parser.addini("kitl", type="bool", default=False, help="collect kitl scenario files")
    verify = parser.getgroup("kitl-verify", "kitl verify: every program of BPF objects")
    verify.addoption("--kitl-verify", action="store_true", help="collect *.o files")
    verify_options.add_pytest_options(verify)
