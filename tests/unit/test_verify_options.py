"""kitl verify's option table (harness.scenario.verify_options): every option declared once
appears on kitl verify's command line and among the pytest plugin's options with the same
default and help, and the values cross from one to the other through the pytest command
line `kitl verify` runs into an equal VerifyOptions."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from harness.cli import requests, verify
from harness.errors import UsageError
from harness.pytest_plugin import options as plugin_options
from harness.scenario import verify_options
from harness.scenario.model import RunConfig
from harness.scenario.verify_options import OPTIONS, Kind, VerifyOptions

pytest_plugins = ["pytester"]

INNER = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")  # as tests/unit/test_plugin.py


class _Group:
    def __init__(self) -> None:
        self.options: dict[str, dict[str, Any]] = {}

    def addoption(self, *names: str, **attrs: Any) -> None:
        self.options[names[0]] = attrs


class _Parser:
    """What pytest_plugin/options.py declares, group by group."""

    def __init__(self) -> None:
        self.groups: dict[str, _Group] = {}

    def getgroup(self, name: str, description: str = "") -> _Group:
        return self.groups.setdefault(name, _Group())

    def addini(self, *args: Any, **kwargs: Any) -> None:
        pass


def cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    verify.add_arguments(parser)
    return parser


def test_every_option_is_on_the_command_line_and_in_pytest_with_one_default_and_help() -> None:
    parser = cli_parser()
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    declared = _Parser()
    plugin_options.add_options(declared)  # type: ignore[arg-type]
    group = declared.groups["kitl-verify"].options
    assert list(group) == ["--kitl-verify", *(o.pytest_flag for o in OPTIONS)]
    for option in OPTIONS:
        cli, plugin = actions[option.flag], group[option.pytest_flag]
        assert cli.dest == option.dest
        assert cli.help == plugin.get("help") == option.help, option.flag
        pytest_default = plugin.get("default", False)  # a store_true's
        assert option.from_pytest(pytest_default) == cli.default, option.flag
        assert plugin.get("type") == cli.type, option.flag
    # today's pytest names, where they are not --kitl- and the command line's
    names = {o.flag: o.pytest_flag for o in OPTIONS}
    assert names["--expect"] == "--kitl-verify-expect"
    assert names["--config"] == "--kitl-verify-config"
    assert (names["--map"], names["--no-fixups"]) == ("--kitl-map", "--kitl-no-fixups")


def test_every_field_of_verify_options_has_one_row() -> None:
    fields = [o.field_name for o in OPTIONS if o.field_name is not None]
    assert sorted(fields) == sorted(f.name for f in dataclasses.fields(VerifyOptions))
    assert len({o.flag for o in OPTIONS}) == len({o.pytest_flag for o in OPTIONS}) == len(OPTIONS)


RICH = [
    "--config", "interp:net.core.bpf_jit_enable=0",
    "--config", "hard:net.core.bpf_jit_enable=1,net.core.bpf_jit_harden=2",
    "--prog", "xdp_*", "--prog", "trace_read",
    "--log-level", "3", "--log-size", "65536",
    "--flags", "BPF_F_SLEEPABLE,BPF_F_TEST_RND_HI32",
    "--privilege", "both",
    "--test-run", "--test-run-input", "0a:00 00 01",
    "--global", "limit=9", "--global", "on=true",
    "--map", "counts:max_entries=1024,value_size=8", "--map", "other:max_entries=2",
    "--map-set", "counts:0=hex:0a000001", "--map-set", ".bss:1=-1",
    "--tail-call", "jmp_table:0=stage_one", "--tail-call", "jmp_table:3=stage_two",
    "--attach-target", "trace_read=vfs_read",
    "--no-fixups", "--no-pinning", "--pin-root", "/sys/fs/bpf/tool",
    "--annotations", "--whole-object",
    "--kernels", "debian-6.1", "--kernel", "debian-7.2", "--libbpf", "system",
    "--shard", "1/2", "--boot-timeout", "30", "-n", "2",
]  # fmt: skip


@pytest.mark.parametrize("given", [RICH, ["--privilege", "bpf,unprivileged"], []])
def test_the_values_cross_to_pytest_into_equal_options(
    given: list[str], pytester: pytest.Pytester, tmp_path: Path
) -> None:
    files = ["--btf", str(tmp_path / "vmlinux.btf"), "--expect", str(tmp_path / "kv.yaml")]
    args = cli_parser().parse_args(["o.bpf.o", *given, *(files if given else [])])
    options = requests.verify(args).options
    argv = verify.verify_argv(requests.verify(args), [Path("/objs/o.bpf.o")], tmp_path / "run", 1)
    assert argv[-1] == "/objs/o.bpf.o"
    config = pytester.parseconfig(*INNER, *argv[3:-1])  # after `python -m pytest`
    values = verify_options.pytest_values(config.getoption)
    assert verify_options.build(values) == options
    assert values("expect") == args.expect
    for option in OPTIONS:  # the very values the command line holds, pytest's way round
        assert values(option.dest) == getattr(args, option.dest), option.flag
    if given == RICH:
        assert options.privileges == ("privileged", "unprivileged")
        assert (options.fixups, options.pinning, options.whole_object) == (False, False, True)
        assert options.programs == ("xdp_*", "trace_read")
        assert options.maps == (("counts", 1024, 8), ("other", 2, None))
        assert options.map_values == (("counts", 0, b"\n\0\0\1", "*"), (".bss", 1, -1, "*"))
        assert options.tail_calls == (("jmp_table", 0, "stage_one"), ("jmp_table", 3, "stage_two"))
        assert [c.name for c in options.configs] == ["interp", "hard"]
        assert options.btf_custom_path == tmp_path / "vmlinux.btf"
        assert options.test_run_input == b"\n\0\0\1"
    if not given:
        assert options == VerifyOptions()
        assert options.configs == (RunConfig("default"),)


def test_the_argv_has_the_settings_then_the_matrix_then_what_was_given() -> None:
    args = cli_parser().parse_args(["o", "--no-fixups", "--map", "m:max_entries=4"])
    values = verify_options.namespace_values(args)
    assert verify_options.pytest_argv(values, ["--kitl-kernels", "k"]) == [
        "--kitl-privilege", "privileged", "--kitl-kernels", "k",
        "--kitl-map", "m:max_entries=4", "--kitl-no-fixups",
    ]  # fmt: skip


def test_a_bad_value_given_to_pytest_is_the_same_usage_error(
    pytester: pytest.Pytester,
) -> None:
    config = pytester.parseconfig(*INNER, "--kitl-log-level", "99", "--kitl-prog", " a, b ,")
    values = verify_options.pytest_values(config.getoption)
    assert values("prog") == ["a", "b"]
    with pytest.raises(UsageError, match="--log-level 99: not a verifier log level"):
        verify_options.build(values)


def test_the_kinds_declare_argparse_actions() -> None:
    kinds = {o.flag: o.kind for o in OPTIONS}
    assert kinds["--prog"] is Kind.JOINED
    assert kinds["--no-pinning"] is Kind.NEGATIVE
    negative = next(o for o in OPTIONS if o.kind is Kind.NEGATIVE)
    assert negative.cli_kwargs()["action"] == "store_false"
    assert negative.pytest_kwargs() == {"action": "store_true", "help": negative.help}
