"""The options kitl run and kitl verify share (harness.run.options.MATRIX): declared once,
they are both commands' argparse options and the plugin's --kitl-* options, and a request
built from a command line carries them to the same pytest arguments either way."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import requests, runner, verify
from harness.pytest_plugin import options as plugin_options
from harness.run import options
from harness.run.options import MATRIX, RUN_ONLY
from tests.unit.test_verify_options import _Parser


def _flags(add: object) -> set[str]:
    parser = argparse.ArgumentParser()
    add(parser)  # type: ignore[operator]
    return {s for a in parser._actions for s in a.option_strings}


def test_every_row_is_on_both_command_lines_but_run_only_ones() -> None:
    run, verify_flags = _flags(runner.add_arguments), _flags(verify.add_arguments)
    for row in MATRIX:
        flags = {row.flag, *([row.plural] if row.plural else [])}
        assert flags <= run, row.flag
        if row.dest not in RUN_ONLY:
            assert flags <= verify_flags, row.flag


def test_every_plugin_row_is_a_kitl_option() -> None:
    declared = _Parser()
    plugin_options.add_options(declared)  # type: ignore[arg-type]
    group = declared.groups["kitl"].options
    for row in MATRIX:
        assert (row.pytest_flag in group) == (row.pytest_options is not None), row.flag


def test_kitl_run_and_verify_carry_the_shared_values_alike(tmp_path: Path) -> None:
    given = ["--kernels", "a,b", "--kernel", "c", "--libbpf", "system", "--shard", "1/2"]
    given += ["--resume", str(tmp_path), "--boot-timeout", "9", "-n", "2"]
    run_parser, verify_parser = argparse.ArgumentParser(), argparse.ArgumentParser()
    runner.add_arguments(run_parser)
    verify.add_arguments(verify_parser)
    run = requests.run(run_parser.parse_args(given))
    checked = requests.verify(verify_parser.parse_args(["o.bpf.o", *given]))
    assert run.matrix == checked.matrix
    assert run.matrix.kernels == ("a", "b", "c")
    settings = run.matrix.argv(options.SETTINGS, "run")
    assert settings == checked.matrix.argv(options.SETTINGS, "verify")
    assert settings == [
        "--kitl-shard", "1/2", "--kitl-boot-timeout", "9.0", "--kitl-resume",
        "-n", "2", "--dist", "loadgroup",
    ]  # fmt: skip
