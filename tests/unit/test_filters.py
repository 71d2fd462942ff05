"""`kitl verify --filter`, veristat's -f (harness.scenario.filters): its globs, its allow
and deny rule, @FILE, and what it refuses; then the programs it selects from Debian's
xdp-tools objects (installed by tools/setup.sh)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.scenario.filters import NameFilter, at_file_resolved, parse_filter, selected
from harness.scenario.objects import scenario_for_object
from harness.scenario.verify_options import VerifyOptions

XDP_TOOLS = Path("/usr/lib/x86_64-linux-gnu/bpf")


def chosen(*specs: str) -> list[tuple[str, str]]:
    filters = [f for s in specs for f in parse_filter(s)]
    names = [("a.bpf.o", "xdp_main"), ("a.bpf.o", "tc_main"), ("b.o", "xdp_main")]
    return [n for n in names if selected(filters, *n)]


def test_a_glob_without_a_slash_matches_the_file_or_the_program() -> None:
    assert chosen("xdp_*") == [("a.bpf.o", "xdp_main"), ("b.o", "xdp_main")]
    assert chosen("a.*") == [("a.bpf.o", "xdp_main"), ("a.bpf.o", "tc_main")]


def test_file_and_program_globs_and_either_left_free() -> None:
    assert chosen("a.*/tc_*") == [("a.bpf.o", "tc_main")]
    assert chosen("b.o/") == [("b.o", "xdp_main")]
    assert chosen("/tc_main") == [("a.bpf.o", "tc_main")]


def test_deny_filters_win_and_allow_filters_add_up() -> None:
    assert chosen("!tc_*") == [("a.bpf.o", "xdp_main"), ("b.o", "xdp_main")]
    assert chosen("a.*", "!a.*/xdp_*") == [("a.bpf.o", "tc_main")]
    assert chosen("b.o/", "/tc_*") == [("a.bpf.o", "tc_main"), ("b.o", "xdp_main")]
    assert chosen() == chosen("*")


def test_a_file_of_filters_with_comments(tmp_path: Path) -> None:
    listed = tmp_path / "filters.txt"
    listed.write_text("# the XDP programs\n\nxdp_*\n  !b.o  \n")
    assert parse_filter(f"@{listed}") == (
        NameFilter(False, any_glob="xdp_*"),
        NameFilter(True, any_glob="b.o"),
    )
    assert chosen(f"@{listed}") == [("a.bpf.o", "xdp_main")]
    assert at_file_resolved("@filters.txt") == f"@{Path('filters.txt').resolve()}"
    assert at_file_resolved("xdp_*") == "xdp_*"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("insns>1000", "--filter 'insns>1000': a stat filter"),
        ("verdict==failure", "--filter 'verdict==failure': a stat filter"),
        ("!", "--filter '!': an empty filter"),
        ("@/nonexistent/filters", "--filter @/nonexistent/filters: cannot read it"),
    ],
)
def test_what_it_refuses_is_one_line(spec: str, message: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_filter(spec)
    assert str(raised.value).startswith(message)


def test_a_bad_line_in_a_filter_file_names_its_line(tmp_path: Path) -> None:
    listed = tmp_path / "filters.txt"
    listed.write_text("xdp_*\ninsns<10\n")
    with pytest.raises(UsageError, match=r"filters.txt:2: 'insns<10': a stat filter"):
        parse_filter(f"@{listed}")


def test_it_selects_the_programs_of_real_objects() -> None:
    options = VerifyOptions(filters=(parse_filter("xdp-dispatcher.o/"), parse_filter("!/xdp_pass")))
    cases = scenario_for_object(XDP_TOOLS / "xdp-dispatcher.o", options).cases
    assert [c.program for c in cases] == ["xdp_dispatcher"]
    other = scenario_for_object(XDP_TOOLS / "xdpdump_xdp.o", options).cases
    assert other == ()
