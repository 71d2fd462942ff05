"""The kitl pytest plugin without VMs: scenario files collected as one item per (case,
kernel, config) in kernel-then-config order, sharding, usage and collection errors as one
line; cells run against a stubbed guest (outcomes, --kitl-lines, the run directory and its
reports, known failures); and the xdist scheduler keeping each kernel on one worker."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.kernel.catalog import load_catalog
from harness.pytest_plugin.plugin import KitlSession
from harness.results.rundir import CellResult

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DATA = REPO / "tests" / "data" / "plugin"  # xdp.yaml, tc.yaml, outcomes.yaml
BAD_DATA = REPO / "tests" / "data" / "scenarios"
# Every in-process run: no cache directory, and no hypothesis plugin (it would import, and
# with PYTHONDONTWRITEBYTECODE assertion-rewrite, all of hypothesis again in every run).
INNER = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
CASE_RE = re.compile(r"::(?P<case>[^:\[]+)\[(?P<label>[^\]]+)\]$")
XDP_CASES = ("pass", "drop", "rejected")
XDP_KERNELS = ("debian-6.1", "debian-7.2")  # its kernels:
XDP_CONFIGS = ("hardened", "interp", "jit")  # declared jit, interp, hardened: run by name
TC_CASES = ("shot", "shot-again")
OUTCOME_IDS = [
    f"outcomes::{case}[debian-6.1-default]" for case in ("passes", "skips", "fails", "rejected")
]

# conftest.py of the pytester directory: no kernel is fetched and no VM boots.  Patched in
# pytest_configure and undone in pytest_unconfigure, so it holds in-process (without leaking
# into this session) and in every xdist worker.  `observed` records the worker id and the
# kernels the process was told to pick its header kernel from.
STUB_CONFTEST = """\
import os
from pathlib import Path

import pytest

from harness.kernel.store import Kernel
from harness.outcome import Outcome
from harness.pytest_plugin.plugin import KitlSession
from harness.results.record import Observed
from harness.results.rundir import CellResult

RELEASES = {
    "debian-6.1": "6.1.0-40-amd64",
    "debian-6.12": "6.12.48-1-amd64",
    "debian-7.2": "7.2.1-1-amd64",
}
OUTCOMES = {
    "passes": (Outcome.PASSED, ""),
    "skips": (Outcome.SKIPPED, "needs tcx (6.6)"),
    "fails": (Outcome.FAILED, "retval: expected XDP_DROP, got XDP_PASS"),
    "rejected": (Outcome.VERIFIER_REJECTED, "R1 invalid mem access"),
}
PATCH = pytest.StashKey[pytest.MonkeyPatch]()
VERIFIER_LOG = "0: (61) r2 = *(u32 *)(r1 +0)\\ninvalid access to packet, off=14 size=1\\n"


class StubGuests:
    def __init__(self, run, header):
        self.run, self.header = run, header

    def run_cell(self, cell, kernel):
        outcome, reason = OUTCOMES[cell.case.name]
        result = CellResult(
            scenario=cell.scenario.name,
            case=cell.case.name,
            kernel=kernel.name,
            config=cell.config.name,
            outcome=outcome,
            reason=reason,
            kernel_release=kernel.release,
            prog_type=cell.case.prog_type.name,
            observed=Observed.from_json({
                "worker": os.environ.get("PYTEST_XDIST_WORKER", "controller"),
                "header": self.header,
            }),
        )
        if outcome is Outcome.VERIFIER_REJECTED:
            self.run.write_verifier_log(result, VERIFIER_LOG)
        self.run.append(result)
        return result

    def boot_line(self, kernel):
        return f"{kernel} up in 1.0s"

    def close(self):
        pass


def fake_kernel(self, name):
    return Kernel(name, RELEASES[name], Path("/nonexistent/vmlinuz"), None)


def pytest_configure(config):
    patch = pytest.MonkeyPatch()
    patch.setattr(KitlSession, "kernel", fake_kernel)
    patch.setattr(KitlSession, "guests", lambda self, header: StubGuests(self.run, header))
    config.stash[PATCH] = patch


def pytest_unconfigure(config):
    config.stash[PATCH].undo()
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The repository catalog only, and a cache of our own (nothing may be fetched)."""
    monkeypatch.setenv("KITL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KITL_CATALOG_EXTRA", raising=False)
    monkeypatch.delenv("KITL_KERNELS_DIR", raising=False)


def use(pytester: pytest.Pytester, *scenarios: str) -> None:
    """Copy scenario files of tests/data/plugin (and the .bpf.c they name) into the run."""
    for name in ("progs.bpf.c", *scenarios):
        shutil.copy(PLUGIN_DATA / name, pytester.path / name)


def stubbed(pytester: pytest.Pytester) -> Path:
    """The outcomes scenario plus the stub conftest; returns the run directory to use."""
    use(pytester, "outcomes.yaml")
    pytester.makeconftest(STUB_CONFTEST)
    return pytester.path / "run"


def collect(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, list[str]]:
    """--collect-only -q: the result and the node ids, in run order."""
    result = pytester.runpytest_inprocess(*INNER, "--collect-only", "-q", *args)
    return result, [line for line in result.outlines if "::" in line]


def xdp_ids(kernel: str, configs: tuple[str, ...] = XDP_CONFIGS) -> list[str]:
    return [f"xdp.yaml::xdp::{c}[{kernel}-{x}]" for x in configs for c in XDP_CASES]


def tc_ids(kernel: str, file: str = "tc.yaml") -> list[str]:
    return [f"{file}::tc::{c}[{kernel}-default]" for c in TC_CASES]


def label(nodeid: str) -> str:
    """`KERNEL-CONFIG` of a cell's node id."""
    match = CASE_RE.search(nodeid)
    assert match is not None, nodeid
    return match["label"]


def output(result: pytest.RunResult) -> str:
    return "\n".join([*result.outlines, *result.errlines])


# --- collection and ids ----------------------------------------------------------------


def test_one_item_per_case_kernel_config_in_kernel_then_config_order(
    pytester: pytest.Pytester,
) -> None:
    use(pytester, "xdp.yaml")
    result, ids = collect(pytester, "--kitl", "--kitl-kernels", "debian-6.1,debian-7.2")
    assert result.ret == pytest.ExitCode.OK
    assert ids == [*xdp_ids("debian-6.1"), *xdp_ids("debian-7.2")]
    assert ids[:3] == [
        "xdp.yaml::xdp::pass[debian-6.1-hardened]",
        "xdp.yaml::xdp::drop[debian-6.1-hardened]",
        "xdp.yaml::xdp::rejected[debian-6.1-hardened]",
    ]
    result.stdout.fnmatch_lines(["18 tests collected in *"])


def test_run_order_is_kernel_by_kernel_across_scenario_files(pytester: pytest.Pytester) -> None:
    """Two files: every cell of the first kernel (in --kitl-kernels order) before any of the
    second; on a kernel config by config (by name), whatever file a cell comes from."""
    use(pytester, "tc.yaml", "xdp.yaml")
    result, ids = collect(pytester, "--kitl", "--kitl-kernels", "debian-7.2,debian-6.1")
    assert result.ret == pytest.ExitCode.OK
    # tc's one config "default" sorts before xdp's hardened, interp, jit
    assert ids == [
        *tc_ids("debian-7.2"),
        *xdp_ids("debian-7.2"),
        *tc_ids("debian-6.1"),
        *xdp_ids("debian-6.1"),
    ]
    assert [label(i) for i in ids[:11]] == ["debian-7.2-default"] * 2 + [
        f"debian-7.2-{x}" for x in XDP_CONFIGS for _ in XDP_CASES
    ]


def test_kernels_are_the_scenarios_else_the_catalog_defaults(pytester: pytest.Pytester) -> None:
    use(pytester, "tc.yaml", "xdp.yaml")  # xdp names debian-6.1 and debian-7.2; tc none
    result, ids = collect(pytester, "--kitl")
    assert result.ret == pytest.ExitCode.OK
    defaults = [e.name for e in load_catalog().defaults()]
    assert len(defaults) > 2
    # kernels in the order first seen (tc.yaml is collected first), each one's cells together
    kernels = dict.fromkeys([*defaults, *XDP_KERNELS])
    assert ids == [
        i
        for k in kernels
        for i in [*(tc_ids(k) if k in defaults else []), *(xdp_ids(k) if k in XDP_KERNELS else [])]
    ]
    assert {label(i).rsplit("-", 1)[0] for i in ids if i.startswith("xdp")} == set(XDP_KERNELS)


def test_yaml_is_collected_only_with_kitl(pytester: pytest.Pytester) -> None:
    use(pytester, "xdp.yaml")
    result, ids = collect(pytester)
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert ids == []
    pytester.makeini("[pytest]\nkitl = true\n")
    result, ids = collect(pytester)
    assert result.ret == pytest.ExitCode.OK
    assert ids == [*xdp_ids("debian-6.1"), *xdp_ids("debian-7.2")]


def test_yaml_without_objects_and_cases_is_ignored(pytester: pytest.Pytester) -> None:
    use(pytester, "tc.yaml")
    (pytester.path / "tc.yaml").rename(pytester.path / "tc.yml")
    (pytester.path / "only_objects.yaml").write_text("objects: {a: 1}\nfoo: [\n")
    (pytester.path / "only_cases.yaml").write_text("cases: [1, 2]\nbar: {\n")
    (pytester.path / "nested.yaml").write_text("top:\n  objects: {}\n  cases: []\n")
    result, ids = collect(pytester, "--kitl", "--kitl-kernels", "debian-6.1")
    assert result.ret == pytest.ExitCode.OK  # the broken YAML in them is never parsed
    assert ids == tc_ids("debian-6.1", file="tc.yml")


def test_configs_option_keeps_only_that_config(pytester: pytest.Pytester) -> None:
    use(pytester, "xdp.yaml")
    result, ids = collect(pytester, "--kitl", "--kitl-configs", "jit")
    assert result.ret == pytest.ExitCode.OK
    assert ids == [*xdp_ids("debian-6.1", ("jit",)), *xdp_ids("debian-7.2", ("jit",))]


def test_configs_option_drops_scenarios_without_that_config(pytester: pytest.Pytester) -> None:
    """As `kitl run --configs jit` plans it (harness.run.matrix.plan): tc has only 'default'."""
    use(pytester, "tc.yaml", "xdp.yaml")
    _, ids = collect(pytester, "--kitl", "--kitl-kernels", "debian-6.1", "--kitl-configs", "jit")
    assert ids == xdp_ids("debian-6.1", ("jit",))


def test_unknown_config_is_a_usage_error(pytester: pytest.Pytester) -> None:
    use(pytester, "xdp.yaml")
    result, ids = collect(pytester, "--kitl", "--kitl-configs", "bogus")
    assert ids == []
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_shards_partition_the_run_order(pytester: pytest.Pytester) -> None:
    use(pytester, "tc.yaml", "xdp.yaml")
    base = ["--kitl", "--kitl-kernels", "debian-6.1,debian-7.2"]
    _, everything = collect(pytester, *base)
    assert len(everything) == 22
    shards: list[list[str]] = []
    for index in (1, 2, 3):
        result, ids = collect(pytester, *base, "--kitl-shard", f"{index}/3")
        assert result.ret == pytest.ExitCode.OK
        result.stdout.fnmatch_lines(
            [f"{len(ids)}/22 tests collected ({22 - len(ids)} deselected)*"]
        )
        shards.append(ids)
    # disjoint, together everything, each in run order (harness.run.shards' partition)
    assert sorted(i for s in shards for i in s) == sorted(everything)
    for shard in shards:
        assert shard == [i for i in everything if i in shard]
    assert all(shards)  # balanced by time, boots counted: 10, 4 and 8 cells here


def test_bad_shard_is_a_usage_error(pytester: pytest.Pytester) -> None:
    use(pytester, "xdp.yaml")
    result, ids = collect(pytester, "--kitl", "--kitl-shard", "3/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ids == []
    assert [line for line in result.errlines if line.strip()] == [
        "ERROR: shard '3/2': expected I/N with 1 <= I <= N, e.g. 2/4"
    ]
    assert "Traceback" not in output(result)


def test_unknown_kernel_is_a_one_line_collection_error(pytester: pytest.Pytester) -> None:
    """Not a pytest usage error (exit 4): the name is checked while collecting each scenario
    file, so it is a collection error (exit 2, "Interrupted")."""
    use(pytester, "xdp.yaml")
    result, ids = collect(pytester, "--kitl", "--kitl-kernels", "debian-6.1,debian-9")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert ids == []
    known = ", ".join(load_catalog().names())
    assert [line for line in result.outlines if "debian-9" in line] == [
        f"unknown kernel 'debian-9' (known kernels: {known}; "
        "or path:/path/to/bzImage for a local build)"
    ]
    result.stdout.fnmatch_lines(["*Interrupted: 1 error during collection*"])
    assert "Traceback" not in output(result)


@pytest.mark.parametrize("bad", ["bad_unknown_key.yaml", "bad_yaml.yaml"])
def test_invalid_scenario_is_a_one_line_collection_error(
    pytester: pytest.Pytester, bad: str
) -> None:
    source = BAD_DATA / bad
    # the first line of each bad file names the error: "# error: LINE:COL: message"
    position_and_message = source.read_text().splitlines()[0].removeprefix("# error: ")
    shutil.copy(source, pytester.path / "bad.yaml")
    shutil.copy(BAD_DATA / "progs.bpf.c", pytester.path)
    result, ids = collect(pytester, "--kitl", "--kitl-kernels", "debian-6.1")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert ids == []
    header = next(n for n, line in enumerate(result.outlines) if "ERROR collecting" in line)
    assert result.outlines[header + 1] == f"{pytester.path / 'bad.yaml'}:{position_and_message}"
    assert "ERROR bad.yaml" in result.outlines
    assert "Traceback" not in output(result)


# --- running cells against the stub ------------------------------------------------------


def test_cell_outcomes_become_pytest_outcomes(pytester: pytest.Pytester) -> None:
    run = stubbed(pytester)
    result = pytester.runpytest_inprocess(*INNER, "--kitl", "--kitl-output", str(run), "-rs")
    result.assert_outcomes(passed=1, skipped=1, failed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    text = output(result)
    result.stdout.fnmatch_lines(
        [
            "*_ outcomes::fails[[]debian-6.1-default[]] _*",
            "FAILED: retval: expected XDP_DROP, got XDP_PASS",
            "*_ outcomes::rejected[[]debian-6.1-default[]] _*",
            "VERIFIER_REJECTED: R1 invalid mem access",
            "--- verifier log (tail) ---",
            "0: (61) r2 = *(u32 *)(r1 +0)",
            "invalid access to packet, off=14 size=1",
        ]
    )
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] *: needs tcx (6.6)"])
    assert "Traceback" not in text
    assert "CellFailed" not in text


def test_kitl_lines_prints_a_line_per_failure_and_the_progress(
    pytester: pytest.Pytester,
) -> None:
    run = stubbed(pytester)
    args = ["--kitl", "--kitl-output", str(run), "--kitl-lines", "-q", "--no-header"]
    result = pytester.runpytest_inprocess(*INNER, *args, "--tb=no", "-rN")
    result.assert_outcomes(passed=1, skipped=1, failed=2)
    # not a terminal: a failure's line, and the status at every tenth of the run
    assert result.outlines[:8] == [
        "kitl: booting debian-6.1 (its first cell starts)",
        "kitl: debian-6.1 up in 1.0s",
        "kitl: 1/4 cells · 1 passed · 0 failed · 0 skipped · debian-6.1",
        "kitl: 2/4 cells · 1 passed · 0 failed · 1 skipped · debian-6.1",
        f"[   3/4] FAILED {OUTCOME_IDS[2]}: retval: expected XDP_DROP, got XDP_PASS",
        "kitl: 3/4 cells · 1 passed · 1 failed · 1 skipped · debian-6.1",
        f"[   4/4] VERIFIER_REJECTED {OUTCOME_IDS[3]}: R1 invalid mem access",
        "kitl: 4/4 cells · 1 passed · 2 failed · 1 skipped · debian-6.1",
    ]
    assert "verifier log" not in result.stdout.str()  # no failure reports (--tb=no)


def test_kitl_verbose_prints_one_line_per_cell_and_no_dots(pytester: pytest.Pytester) -> None:
    run = stubbed(pytester)
    result = pytester.runpytest_inprocess(
        *INNER, "--kitl", "--kitl-output", str(run), "--kitl-lines", "--kitl-verbose", "-q",
        "--no-header",
    )  # fmt: skip
    result.assert_outcomes(passed=1, skipped=1, failed=2)
    # the boot, then `[done/total] OUTCOME id  prog_type  figures` and the reason below
    assert result.outlines[:10] == [
        "kitl: booting debian-6.1 (its first cell starts)",
        "kitl: debian-6.1 up in 1.0s",
        f"[   1/4] PASSED            {OUTCOME_IDS[0]}  xdp  ",
        f"[   2/4] SKIPPED           {OUTCOME_IDS[1]}  xdp  ",
        "    needs tcx (6.6)",
        f"[   3/4] FAILED            {OUTCOME_IDS[2]}  xdp  ",
        "    retval: expected XDP_DROP, got XDP_PASS",
        f"[   4/4] VERIFIER_REJECTED {OUTCOME_IDS[3]}  xdp  ",
        "    R1 invalid mem access",
        "",
    ]
    # pytest's progress line (".sFF  [100%]") is gone
    assert not [
        line for line in result.outlines if re.fullmatch(r"[.sFxX]+\s*(\[\s*\d+%\])?", line)
    ]
    assert not [line for line in result.outlines if "[100%]" in line]


def test_run_directory_holds_every_cell_and_the_reports(pytester: pytest.Pytester) -> None:
    run = stubbed(pytester)
    result = pytester.runpytest_inprocess(*INNER, "--kitl", "--kitl-output", str(run))
    result.assert_outcomes(passed=1, skipped=1, failed=2)
    body = json.loads((run / "results.json").read_text())
    assert body["schema"] == 1
    assert set(body["run"]) == {"kernels", "configs", "shard", "libbpf", "argv", "finished"}
    assert body["run"]["shard"] is None
    cells = body["cells"]
    assert [c["id"] for c in cells] == OUTCOME_IDS
    fields = set(CellResult("s", "c", "k", "x", cells[0]["outcome"]).to_json())
    assert all(set(c) == fields for c in cells)
    assert [c["outcome"] for c in cells] == ["PASSED", "SKIPPED", "FAILED", "VERIFIER_REJECTED"]
    assert cells[1]["reason"] == "needs tcx (6.6)"
    rejected = cells[3]
    assert rejected["log_path"] == "logs/debian-6.1/default/outcomes.rejected.verifier.log"
    assert (run / rejected["log_path"]).is_file()
    assert len((run / "results.jsonl").read_text().splitlines()) == 4
    assert (run / "report" / "summary.md").is_file()
    junit = ET.parse(run / "report" / "junit.xml").getroot()
    assert len(junit.findall(".//testcase")) == 4
    result.stdout.fnmatch_lines(
        [f"kitl: results in {run}", f"kitl: summary {run}/report/summary.md"]
    )


def expect_file(pytester: pytest.Pytester, *entries: tuple[str, str]) -> Path:
    """A known-failures file with one entry per (reason, expires) for outcomes::fails."""
    lines = ["known_failures:"]
    for reason, expires in entries:
        lines += [
            '  - case: "outcomes::fails"',
            "    outcome: FAILED",
            f"    reason: {reason}",
            f"    expires: {expires}",
        ]
    path = pytester.path / "expect.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_known_failure_is_xfailed(pytester: pytest.Pytester) -> None:
    run = stubbed(pytester)
    expect = expect_file(pytester, ("fails on purpose", "2099-01-01"))
    args = ["--kitl", "--kitl-output", str(run), "--kitl-expect", str(expect), "-rx"]
    result = pytester.runpytest_inprocess(*INNER, *args, "-k", "passes or fails")
    result.assert_outcomes(passed=1, xfailed=1, deselected=2)
    assert result.ret == pytest.ExitCode.OK
    assert [line for line in result.outlines if line.startswith(("kitl: known", "XFAIL"))] == [
        f"kitl: known: {OUTCOME_IDS[2]} FAILED: fails on purpose ({expect}:2)",
        f"XFAIL outcomes.yaml::{OUTCOME_IDS[2]} - known failure ({expect}:2): fails on purpose",
    ]


def test_expired_known_failure_fails_the_session(pytester: pytest.Pytester) -> None:
    run = stubbed(pytester)
    expect = expect_file(pytester, ("fixed long ago", "2020-01-01"))
    args = ["--kitl", "--kitl-output", str(run), "--kitl-expect", str(expect)]
    result = pytester.runpytest_inprocess(*INNER, *args, "-k", "passes")
    result.assert_outcomes(passed=1, deselected=3)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"kitl: expired on 2020-01-01: fixed long ago ({expect}:2)"])


def test_expired_entry_does_not_hide_a_later_live_one(pytester: pytest.Pytester) -> None:
    run = stubbed(pytester)
    expect = expect_file(pytester, ("old", "2020-01-01"), ("still broken", "2099-01-01"))
    args = ["--kitl", "--kitl-output", str(run), "--kitl-expect", str(expect)]
    result = pytester.runpytest_inprocess(*INNER, *args, "-k", "fails")
    result.stdout.fnmatch_lines(["kitl: known: outcomes::fails[[]debian-6.1-default[]] *"])
    result.assert_outcomes(xfailed=1, deselected=3)


def test_short_summary_keeps_the_outcome_word_with_kitl_lines(pytester: pytest.Pytester) -> None:
    run = stubbed(pytester)
    result = pytester.runpytest_inprocess(
        *INNER, "--kitl", "--kitl-output", str(run), "--kitl-lines", "-q", "-ra"
    )
    result.stdout.fnmatch_lines(
        ["FAILED *::outcomes::fails[[]*", "FAILED *::outcomes::rejected[[]*"]
    )


def test_skip_is_reported_at_the_scenario_case(pytester: pytest.Pytester) -> None:
    run = stubbed(pytester)
    result = pytester.runpytest_inprocess(*INNER, "--kitl", "--kitl-output", str(run), "-rs")
    text = (PLUGIN_DATA / "outcomes.yaml").read_text()
    line = text.splitlines().index("  - name: skips") + 1
    result.stdout.fnmatch_lines([f"SKIPPED [[]1[]] outcomes.yaml:{line}: needs tcx*"])


def test_kitl_lines_announces_no_boot_for_python_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
        import pytest

        @pytest.mark.parametrize(("a", "b"), [(1, 2)])
        def test_pair(a, b):
            assert a < b
        """
    )
    result = pytester.runpytest_inprocess(
        *INNER, "--kitl", "--kitl-output", str(pytester.path / "run"), "--kitl-lines"
    )
    result.assert_outcomes(passed=1)
    assert not [line for line in result.outlines if "booting" in line]


# --- xdist: one worker per kernel --------------------------------------------------------


def test_kernel_of_finds_the_longest_known_kernel_name(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfigure(
        "--kitl", "--kitl-kernels", "debian-6.1-rt", "--kitl-output", str(pytester.path / "r")
    )
    session = KitlSession(config)
    node = "xdp.yaml::xdp::drop"
    got = {
        nodeid: session.kernel_of(nodeid)
        for nodeid in (
            f"{node}[debian-6.1-jit]",
            f"{node}[debian-6.1-jit]@debian-6.1",
            f"{node}[debian-6.12-interp]",  # debian-6.1 is a prefix, but not of "debian-6.12-"
            f"{node}[debian-6.1-rt-jit]",  # both debian-6.1 and debian-6.1-rt fit: longest
            f"{node}[debian-6.1-rt-jit]@debian-6.1-rt",
            f"{node}[custom-k-default]",  # no known name: none, unless guessing
            "tests/test_x.py::test_y",
            "tests/test_x.py::test_pair[1-2]",  # a plain parametrized test is no cell
        )
    }
    assert got == {
        f"{node}[debian-6.1-jit]": "debian-6.1",
        f"{node}[debian-6.1-jit]@debian-6.1": "debian-6.1",
        f"{node}[debian-6.12-interp]": "debian-6.12",
        f"{node}[debian-6.1-rt-jit]": "debian-6.1-rt",
        f"{node}[debian-6.1-rt-jit]@debian-6.1-rt": "debian-6.1-rt",
        f"{node}[custom-k-default]": None,
        "tests/test_x.py::test_y": None,
        "tests/test_x.py::test_pair[1-2]": None,
    }
    # the scheduler guesses (all but the config) so an unknown kernel still groups
    assert session.kernel_of(f"{node}[custom-k-default]", guess=True) == "custom-k"


def test_kernel_of_with_at_sign_in_the_path(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfigure("--kitl", "--kitl-output", str(pytester.path / "r"))
    session = KitlSession(config)
    assert session.kernel_of("ws@2/tc.yaml::tc::shot[debian-6.1-default]") == "debian-6.1"


def test_loadgroup_runs_each_kernel_on_one_worker(pytester: pytest.Pytester) -> None:
    run = stubbed(pytester)
    kernels = ["debian-6.1", "debian-6.12", "debian-7.2"]
    result = pytester.runpytest_subprocess(
        *INNER,
        "--kitl",
        "--kitl-kernels",
        ",".join(kernels),
        "--kitl-output",
        str(run),
        "--kitl-lines",
        "-n",
        "2",
        "--dist",
        "loadgroup",
        timeout=120,
    )
    result.assert_outcomes(passed=3, skipped=3, failed=6)
    cells = json.loads((run / "results.json").read_text())["cells"]
    assert sorted(c["id"] for c in cells) == sorted(
        f"outcomes::{case}[{k}-default]"
        for k in kernels
        for case in ("passes", "skips", "fails", "rejected")
    )
    workers: dict[str, set[str]] = {}
    for cell in cells:
        workers.setdefault(cell["kernel"], set()).add(cell["observed"]["worker"])
    assert {k: len(w) for k, w in workers.items()} == {k: 1 for k in kernels}
    assert set().union(*workers.values()) == {"gw0", "gw1"}
    # every worker picks the header kernel (for vmlinux.h) from the same list: all kernels
    assert all(cell["observed"]["header"] == sorted(kernels) for cell in cells)
    # the controller learns the total from the workers' collections
    result.stdout.fnmatch_lines(["[[]  12/12[]] *"])
    assert (run / "report" / "summary.md").is_file()


def test_resume_runs_only_what_is_missing(pytester: pytest.Pytester) -> None:
    """A run killed after some cells: --kitl-resume on the same directory runs the cells
    it lacks (and those an interrupted run left as infrastructure outcomes), no others."""
    run = stubbed(pytester)
    first = pytester.runpytest_inprocess(*INNER, "--kitl", "--kitl-output", str(run))
    first.assert_outcomes(passed=1, skipped=1, failed=2)
    lines = (run / "results.jsonl").read_text().splitlines()
    # as if killed: the last cell never finished, the third was cut off by a lost VM
    third = json.loads(lines[2])
    third["outcome"] = "VM_LOST"
    (run / "results.jsonl").write_text("\n".join([*lines[:2], json.dumps(third)]) + "\n")
    again = pytester.runpytest_inprocess(
        *INNER, "--kitl", "--kitl-output", str(run), "--kitl-resume"
    )
    again.assert_outcomes(failed=2, deselected=2)
    cells = json.loads((run / "results.json").read_text())["cells"]
    assert sorted(c["id"] for c in cells) == sorted(OUTCOME_IDS)
    assert {c["outcome"] for c in cells} == {"PASSED", "SKIPPED", "FAILED", "VERIFIER_REJECTED"}
