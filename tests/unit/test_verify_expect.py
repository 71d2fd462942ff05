"""Bulk expectations of `kitl verify`: the first matching entry by object/program glob, kernel
range and privilege; every error of the file at its exact file:line:column; and judging real
verifier logs (ordered substrings and regexes, the excerpt around a missing message) and
test_run return values named for the program's type."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.bpf import sections
from harness.bpf.verifier_log import log_excerpt
from harness.errors import ConfigError
from harness.scenario.bulk import (
    Entry,
    Expectations,
    LogMessage,
    VerifyExpectError,
    load_expectations,
    log_in_order,
    parse_expectations,
)

DATA = Path(__file__).parents[1] / "data"
GOOD = DATA / "verify_expect" / "good.yaml"
ERRORS = DATA / "verify_expect" / "errors.yaml"
LOGS = DATA / "verifier"
R510, R61, R73 = "5.10.0-46-amd64", "6.1.0-56-amd64", "7.3.4+deb13-amd64"
FILE = Path("kitl-verify.yaml")
XDP = sections.prog_type_for_section("xdp")


def real_log(kernel: str, name: str) -> str:
    return (LOGS / kernel / f"{name}.log").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def good() -> Expectations:
    return load_expectations(GOOD)


def one(**fields: str) -> Entry:
    body = "".join(f"    {k}: {v}\n" for k, v in {"program": "p", **fields}.items())
    (entry,) = parse_expectations(FILE, "expect:\n  - " + body[4:]).entries
    return entry


# --- the file --------------------------------------------------------------------------------


def test_a_good_file_parses_in_order(good: Expectations) -> None:
    assert [e.line for e in good.entries] == [3, 12, 17, 21, 25, 27, 30, 32]
    first = good.entries[0]
    assert (first.object_glob, first.program_glob, first.verdict) == (
        "xdp_*.bpf.o",
        "pkt_oob",
        "rejected",
    )
    assert first.error_class == "VERIFIER_REJECTED"
    assert [str(m) for m in first.log] == [
        "'invalid access to packet'",
        "/R1 offset is outside of the (packet|map)/",
    ]
    assert first.kernel is not None
    assert first.kernel.text == ">=6.1"
    assert first.where == f"{GOOD}:3"
    assert good.entries[5].retval == "XDP_PASS"  # kept as written: resolved when judging
    assert good.entries[6].retval == 3
    assert good.entries[7].object_glob == "tc_*.bpf.o"


@pytest.mark.parametrize(
    ("obj", "program", "release", "unprivileged", "line"),
    [
        ("xdp_pkt.bpf.o", "pkt_oob", R61, False, 3),
        ("xdp_pkt.bpf.o", "pkt_oob", R73, True, 3),
        ("xdp_pkt.bpf.o", "pkt_oob", R510, False, 12),  # the kernel range picks the entry
        ("build/out/xdp_pkt.bpf.o", "pkt_oob", R61, False, 3),  # the file name is matched
        ("net.bpf.o", "pkt_oob", R61, False, None),  # the object glob does not match
        ("xdp_pkt.bpf.o", "pkt_oob", "weird", False, None),  # no version: ranges cannot hold
        ("any.bpf.o", "uninit_reg", R73, True, 17),
        ("any.bpf.o", "uninit_stack", R73, False, 21),
        ("any.bpf.o", "xdp_pass_v2", R61, False, 25),  # the specific entry comes first
        ("any.bpf.o", "xdp_pass_v1", R61, False, 27),
        ("any.bpf.o", "XDP_PASS_V1", R61, False, None),  # globs are case-sensitive
        ("tc_egress.bpf.o", "count_x", R61, False, 30),  # first match wins over tc_*
        ("tc_egress.bpf.o", "anything", R61, False, 32),
        ("xdp.bpf.o", "anything", R61, False, None),
    ],
)
def test_find_returns_the_first_matching_entry(
    good: Expectations, obj: str, program: str, release: str, unprivileged: bool, line: int | None
) -> None:
    entry = good.find(obj, program, release, "unprivileged" if unprivileged else "privileged")
    assert (entry.line if entry else None) == line


def test_a_single_log_message_needs_no_list() -> None:
    assert one(log='"/processed \\\\d+ insns/"').log == (
        LogMessage.parse("/processed \\d+ insns/"),
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# only a comment\n",
        "expect:\n",
        "expect: []\n",
    ],
)
def test_an_empty_file_expects_nothing(text: str) -> None:
    assert parse_expectations(FILE, text) == Expectations(FILE)


def test_every_error_of_the_file_is_reported_at_its_position() -> None:
    with pytest.raises(VerifyExpectError) as info:
        load_expectations(ERRORS)
    want = [
        "2:1: unknown key 'version' (keys: expect)",
        "5:5: expect[0]: unknown key 'verdit' (did you mean 'verdict'?)",
        "6:5: expect[1]: missing required key 'program'",
        "7:14: expect[2].program: expected a string, got integer 42",
        '8:14: expect[3].program: empty glob (use "*" to match all)',
        "10:13: expect[4].object: 'build/xdp.bpf.o' can never match: it is matched on the file"
        " name (did you mean 'xdp.bpf.o'?)",
        "12:11: expect[5].log[0]: bad regular expression '/invalid (access/': missing ),"
        " unterminated subpattern at position 8",
        "14:14: expect[6].verdict: 'ok' is not one of accepted, rejected",
        "16:16: expect[7].privilege: 'root' is not one of privileged, bpf, bpf-net, "
        "unprivileged, any",
        "19:18: expect[8].error_class: unknown value 'VERIFIER_REJECT'"
        " (did you mean 'VERIFIER_REJECTED'?)",
        "21:5: expect[9].error_class: an error class needs verdict: rejected"
        " (add verdict: rejected, or drop error_class)",
        "24:17: expect[10].log[1]: empty message (an empty message would match any log)",
        "26:13: expect[11].kernel: bad version range: '>=5.1x' is not a version clause like"
        ' <5.17 or >=6.6 (e.g. ">=5.17" or ">=5.10,<6.1")',
        "29:5: expect[12].retval: a rejected program never runs"
        " (drop retval, or expect verdict: accepted)",
        "31:13: expect[13].retval: empty return value",
        "32:5: expect[14]: expected a mapping, got string 'xdp_*'",
        "34:5: expect[16]: never applies: the entry on line 33 (program 'xdp_*') comes first"
        " and matches all it does (entries are tried in order: put the specific entry before"
        " the broad one)",
    ]
    assert [str(e) for e in info.value.errors] == [f"{ERRORS}:{w}" for w in want]
    assert str(info.value) == (
        f"{ERRORS}:2:1: unknown key 'version' (keys: expect; 16 more problems in this file)"
    )
    assert isinstance(info.value, ConfigError)
    assert (info.value.line, info.value.column) == (2, 1)


@pytest.mark.parametrize(
    ("text", "first_line"),
    [
        ("- program: x\n", "1:1: expected a mapping with expect:, got a list"),
        (
            "# a comment\njust text\n",
            "2:1: expected a mapping with expect:, got string 'just text'",
        ),
        ("expect: xdp_*\n", "1:1: expect: expected a list, got string 'xdp_*'"),
        ("expect:\n  - program: x\n    program: y\n", "3:5: duplicate key 'program'"),
        ("expect: [\n", "2:1: invalid YAML"),
        (
            "expect:\n  - {program: x, verdict: rejected, retval: 1}\n",
            "2:37: expect[0].retval: a rejected",
        ),
        ("expect:\n  - {program: x, retval: true}\n", "2:26: expect[0].retval: expected an"),
    ],
)
def test_shape_errors_name_their_position(text: str, first_line: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_expectations(FILE, text)
    assert str(info.value).startswith(f"{FILE}:{first_line}")


@pytest.mark.parametrize(
    ("first", "second", "hidden"),
    [
        ("program: '*'", "program: xdp_drop", True),
        ("program: 'xdp_*'", "program: 'xdp_*_v2'", True),
        ("program: 'xdp_*', object: '*.bpf.o'", "program: xdp_a, object: 'x*.bpf.o'", True),
        ("program: xdp_a", "program: 'xdp_*'", False),  # specific before broad: right
        ("program: 'xdp_*', kernel: '<6.1'", "program: xdp_a", False),
        ("program: 'xdp_*', kernel: '<6.1'", "program: xdp_a, kernel: '< 6.1'", True),
        ("program: 'xdp_*', privilege: privileged", "program: xdp_a", False),
        ("program: 'xdp_*'", "program: xdp_a, privilege: unprivileged", True),
        ("program: 'xdp_?'", "program: xdp_a", False),  # undecided: not reported
        ("program: '*a*'", "program: 'x[ab]'", False),  # x[ab] also matches xb
        ("program: 'xdp_[ab]'", "program: 'xdp_[ab]'", True),
    ],
)
def test_an_entry_hidden_by_an_earlier_one_is_an_error(
    first: str, second: str, hidden: bool
) -> None:
    text = f"expect:\n  - {{{first}}}\n  - {{{second}}}\n"
    if not hidden:
        assert len(parse_expectations(FILE, text).entries) == 2
        return
    with pytest.raises(VerifyExpectError, match=r"expect\[1\]: never applies: the entry on line 2"):
        parse_expectations(FILE, text)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_expectations(tmp_path / "kitl-verify.yaml")


# --- messages in order -----------------------------------------------------------------------


def test_log_in_order_on_a_real_rejection() -> None:
    log = real_log("debian-6.1", "pkt_oob.l5")
    end = log.index("R1 offset is outside") + len("R1 offset is outside")
    assert log_in_order(["invalid access to packet", "R1 offset is outside"], log) == (None, end)
    # In the other order the second is not after the first: the search stopped there.
    assert log_in_order(["R1 offset is outside", "invalid access to packet"], log) == (1, end)
    assert log_in_order(["bpf_loop", "R1"], log) == (0, 0)
    assert log_in_order([], log) == (None, 0)


@pytest.mark.parametrize(
    ("pattern", "found"),
    [
        ("R1(id=0,off=40,r=14)", True),  # a substring: parentheses are literal
        ("/R1\\(id=0,off=\\d+,r=14\\)/", True),
        ("/R1(id=0,off=40,r=14)/", False),  # as a regex the parentheses group
        ("/^R1 offset/", True),  # ^ is a line start (re.M)
        ("^R1 offset", False),  # ... but only in a regex
        ("/invalid access to (packet|map)/", True),
        ("/", False),  # too short for a regex: the substring "/"
    ],
)
def test_substrings_and_regexes(pattern: str, found: bool) -> None:
    log = real_log("debian-5.10", "pkt_oob.l5")
    assert (log_in_order([pattern], log)[0] is None) == found


def test_an_excerpt_numbers_lines_and_cuts_long_ones() -> None:
    log = "".join(f"line {n}\n" for n in range(1, 10)) + "x" * 300 + "\n"
    pos = log.index("line 5") + 2
    assert log_excerpt(log, pos) == "\n".join(f"    {n} | line {n}" for n in range(3, 9))
    assert log_excerpt(log, len(log)).splitlines()[-1] == "    10 | " + "x" * 200 + "..."
    assert log_excerpt("", 0) == "    (the log is empty)"
