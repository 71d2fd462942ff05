"""Reports rendered from a run directory, no VM: JUnit XML, Markdown, HTML and veristat CSV.

The data is tests/data/report-runs/two-kernels (not .../runs/: .gitignore drops every runs/):
real cells of a debian-6.1 and a debian-7.2 run merged into one results.json, a few edited to
fail (FAILED whose reason needs escaping, VERIFIER_REJECTED with its log, a TIMED_OUT, a
run-level KERNEL_CRASH of debian-7.3).

Golden files live in tests/data/report-golden/.  After a deliberate change to a report's
format, rewrite them and review the diff:

    KITL_REGEN=1 .venv/bin/pytest tests/unit/test_report.py
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harness.cli.main import main
from harness.errors import UsageError
from harness.report import render as report
from harness.report.markdown import render_details, render_summary
from harness.report.model import build_report, load_cells
from harness.report.render import render_all, render_junit
from harness.results.veristat import COLUMNS as VERISTAT_HEADER

DATA = Path(__file__).parents[1] / "data"
RUN = DATA / "report-runs" / "two-kernels"
GOLDEN = DATA / "report-golden"
REGEN = os.environ.get("KITL_REGEN") == "1"


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the sample run at ./run, so the reports name it the same on every machine."""
    shutil.copytree(RUN, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    return Path("run")


def write_run(path: Path, cells: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    body = {"schema": 1, "run": meta or {}, "cells": cells}
    (path / "results.json").write_text(json.dumps(body), encoding="utf-8")
    return path


def cell(scenario: str, case: str, kernel: str, config: str, outcome: str, **extra: Any) -> Any:
    return {
        "scenario": scenario,
        "case": case,
        "kernel": kernel,
        "config": config,
        "outcome": outcome,
        **extra,
    }


def table(markdown: str) -> list[list[str]]:
    """The matrix's header and rows (no separator line) split on unescaped pipes."""
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", r)[1:-1]] for r in rows]


# -- golden files -----------------------------------------------------------------------------


GOLDEN_NAMES = ["summary.md", "details.md", "junit.xml", "veristat-debian-7.2-default.csv"]


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden(run_dir: Path, name: str) -> None:
    render_all(run_dir)
    got = (run_dir / "report" / name).read_text(encoding="utf-8")
    golden = GOLDEN / name
    if REGEN:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(got, encoding="utf-8")
    assert golden.exists(), f"no golden {golden}: run with KITL_REGEN=1"
    assert got == golden.read_text(encoding="utf-8")


def test_render_all_writes_every_format_in_run_report(run_dir: Path) -> None:
    written = render_all(run_dir)
    out = run_dir / "report"
    assert [p.name for p in written] == [
        "junit.xml",
        "summary.md",
        "details.md",
        "index.html",
        "veristat-debian-6.1-default.csv",
        "veristat-debian-6.1-jit.csv",
        "veristat-debian-6.1-interp.csv",
        "veristat-debian-7.2-default.csv",
        "veristat-debian-7.2-jit.csv",
        "veristat-debian-7.2-interp.csv",
    ]
    assert all(p.parent == out and p.is_file() for p in written)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)  # no tmp


def test_output_dir_and_formats(run_dir: Path, tmp_path: Path) -> None:
    written = render_all(run_dir, tmp_path / "elsewhere", formats=("csv",))
    assert {p.parent for p in written} == {tmp_path / "elsewhere"}
    assert all(p.suffix == ".csv" for p in written)
    assert not (run_dir / "report").exists()
    with pytest.raises(UsageError, match="pdf"):
        render_all(run_dir, formats=("pdf",))


# -- loading ----------------------------------------------------------------------------------


def test_load_cells_reads_results_json() -> None:
    meta, cells = load_cells(RUN)
    assert meta["accel"] == "tcg"
    assert len(cells) == 15
    assert cells[0].id == "cgroup::connect4-denied-port[debian-6.1-default]"


def test_jsonl_fallback_last_record_wins(tmp_path: Path) -> None:
    first = cell("s", "a", "k", "default", "FAILED", reason="first try", id="s::a[k-default]")
    other = cell("s", "b", "k", "default", "PASSED", id="s::b[k-default]")
    again = {**first, "outcome": "PASSED", "reason": ""}
    lines = [json.dumps(c) for c in (first, other, again)] + ['{"scenario": "s", "ca']  # torn
    (tmp_path / "results.jsonl").write_text("\n".join(lines), encoding="utf-8")
    meta, cells = load_cells(tmp_path)
    assert meta == {}
    # the last record of a cell, in the place of that record (harness.results.runs)
    assert [(c.case, c.outcome) for c in cells] == [("b", "PASSED"), ("a", "PASSED")]


def test_results_json_preferred_and_corrupt_one_falls_back(tmp_path: Path) -> None:
    write_run(tmp_path, [cell("s", "from-json", "k", "c", "PASSED")], {"accel": "kvm"})
    line = json.dumps(cell("s", "from-jsonl", "k", "c", "PASSED"))
    (tmp_path / "results.jsonl").write_text(line + "\n", encoding="utf-8")
    meta, cells = load_cells(tmp_path)
    assert (meta, cells[0].case) == ({"accel": "kvm"}, "from-json")
    (tmp_path / "results.json").write_text('{"schema": 1, "cells": [', encoding="utf-8")
    assert load_cells(tmp_path)[1][0].case == "from-jsonl"


def test_bad_run_dir_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=re.escape(str(tmp_path / "nope"))):
        load_cells(tmp_path / "nope")
    with pytest.raises(UsageError, match="not a kitl run directory"):
        render_all(tmp_path)
    (tmp_path / "results.jsonl").write_text("not json\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"results\.jsonl") as caught:
        load_cells(tmp_path)
    assert "\n" not in str(caught.value)


def test_missing_keys_are_tolerated(tmp_path: Path) -> None:
    cells: list[dict[str, Any]] = [
        {},
        {"outcome": "PASSED", "scenario": "only-a-scenario"},
        {
            "scenario": "s",
            "case": "c",
            "kernel": "k",
            "config": "x",
            "outcome": "FAILED",
            "verifier": None,
            "timings": "junk",
            "observed": [],
            "log_path": 7,
        },
        cell("s", "c", "k", "y", "SOMETHING_NEW", program="noslash"),
    ]
    write_run(tmp_path, cells)
    written = render_all(tmp_path)
    junit = ET.fromstring((tmp_path / "report" / "junit.xml").read_bytes())
    assert junit.get("tests") == "4"
    assert junit.get("failures") == "1"
    assert junit.get("errors") == "2"  # no outcome at all, and an outcome unknown here
    summary = (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")
    assert "the cell recorded no outcome" in summary
    assert "❓ something\\_new" in summary
    assert len(written) == 7  # 4 files + CSV for the columns "?", "k-x", "k-y"


# -- JUnit ------------------------------------------------------------------------------------


def test_junit_counts_and_structure(run_dir: Path) -> None:
    root = ET.fromstring(render_junit(build_report(run_dir)))
    assert (root.tag, root.get("tests"), root.get("failures")) == ("testsuites", "15", "2")
    assert (root.get("errors"), root.get("skipped")) == ("2", "1")
    assert len(root.findall(".//testcase/failure")) == 2
    assert len(root.findall(".//testcase/error")) == 2
    assert len(root.findall(".//testcase/skipped")) == 1
    suites = [s.get("name") for s in root.findall("testsuite")]
    assert suites == [
        "debian-6.1-default",
        "debian-6.1-jit",
        "debian-6.1-interp",
        "debian-7.2-default",
        "debian-7.2-jit",
        "debian-7.2-interp",
        "debian-7.3-*",
    ]
    assert sum(int(s.get("tests", "0")) for s in root.findall("testsuite")) == 15


def test_junit_failure_carries_reason_properties_and_log(run_dir: Path) -> None:
    root = ET.fromstring(render_junit(build_report(run_dir)))
    case = root.find(".//testcase[@name='kprobe-getppid[debian-7.2-default]']")
    assert case is not None
    assert (case.get("classname"), case.get("time")) == ("tracing", "0.698")
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("message") == "VERIFIER_REJECTED: R1 invalid mem access 'scalar'"
    assert failure.get("type") == "VERIFIER_REJECTED"
    props = {p.get("name"): p.get("value") for p in case.iterfind("properties/property")}
    assert props["insns"] == "7"
    assert props["program"] == "tracing/kprobe_getppid"
    assert "jited_len" not in props  # a rejected program has no JIT image
    out = case.findtext("system-out") or ""
    assert "R0 invalid mem access 'map_value_or_null'" in out
    failed = root.find(".//testcase[@name='connect4-denied-port[debian-7.2-default]']/failure")
    assert failed is not None
    assert "<script>alert(1)</script>" in (failed.get("message") or "")  # escaped, parsed back
    crash = root.find(".//testcase[@classname='*']/error")
    assert crash is not None
    assert "sysrq triggered crash" in (crash.get("message") or "")


def test_junit_system_out_is_bounded_and_xml_safe(tmp_path: Path) -> None:
    log = "".join(f"{i}: (b7) r1 = {i}\n" for i in range(5000)) + "bad \x1b[31m\x00 bytes\n"
    (tmp_path / "logs").mkdir(parents=True)
    (tmp_path / "logs" / "big.log").write_text(log, encoding="utf-8")
    write_run(
        tmp_path,
        [cell("s", "c", "k", "d", "LOAD_FAILED", reason="\x07bell", log_path="logs/big.log")],
    )
    root = ET.fromstring(render_junit(build_report(tmp_path)))
    out = root.findtext(".//system-out") or ""
    assert len(out.encode()) <= 4096 + 64
    assert out.rstrip().endswith("bytes")
    assert "4999: (b7) r1 = 4999" in out


# -- Markdown ---------------------------------------------------------------------------------


def test_markdown_matrix(run_dir: Path) -> None:
    rows = table(render_details(build_report(run_dir)))
    header, body = rows[0], rows[1:]
    assert header[0] == "scenario::case"
    assert header[-1] == "first failing kernel"
    assert header[1:-1] == [
        "debian-6.1-default",
        "debian-6.1-jit",
        "debian-6.1-interp",
        "debian-7.2-default",
        "debian-7.2-jit",
        "debian-7.2-interp",
        "debian-7.3-\\*",
    ]
    assert all(len(r) == len(header) for r in rows)
    by_row = {r[0]: r for r in body}
    assert body[0][0] == "\\*::\\*"  # run-level failures first
    assert by_row["xdp-basics::pass-test-run"][1:-1] == [
        "",
        "✅ pass",
        "💥 timeout",
        "",
        "✅ pass",
        "✅ pass",
        "",
    ]
    assert by_row["kernel-range::needs-arena-map-type"][1] == "⏭ skip"
    assert by_row["tracing::kprobe-getppid"][4] == "❌ rejected"


def test_markdown_first_failing_kernel(run_dir: Path) -> None:
    rows = {r[0]: r[-1] for r in table(render_details(build_report(run_dir)))[1:]}
    assert rows == {
        "\\*::\\*": "debian-7.3",
        "cgroup::connect4-denied-port": "debian-7.2",
        "kernel-range::bpf-loop-sum": "—",
        "kernel-range::needs-arena-map-type": "—",  # a skip is no failure
        "tracing::kprobe-getppid": "debian-7.2",
        "xdp-basics::pass-test-run": "debian-6.1",  # fails on 6.1 only: the lowest
        "xdp-basics::unchecked-access-rejected": "—",
    }


def test_first_failing_kernel_is_the_lowest_of_several(tmp_path: Path) -> None:
    write_run(
        tmp_path,
        [
            cell("s", "c", "new", "d", "FAILED", kernel_release="6.12.0-1-amd64"),
            cell("s", "c", "old", "d", "FAILED", kernel_release="6.2.0-1-amd64"),
            cell("s", "c", "mid", "d", "PASSED", kernel_release="6.10.0-1-amd64"),
        ],
    )
    rep = build_report(tmp_path)
    assert rep.kernels == ("old", "mid", "new")  # by version, not by name
    assert rep.first_failing_kernel("s::c") == "old"


def test_kernel_order_follows_run_meta(tmp_path: Path) -> None:
    cells = [
        cell("s", "c", k, "d", "PASSED", kernel_release=r)
        for k, r in (("a", "6.1.0-1-amd64"), ("b", "7.2.1+deb14-amd64"))
    ]
    write_run(tmp_path, cells, {"kernels": ["b", "a", "not-run"]})
    assert [c.label for c in build_report(tmp_path).columns] == ["b-d", "a-d"]


def test_markdown_escapes_pipes_and_html(run_dir: Path) -> None:
    summary = render_summary(build_report(run_dir))
    assert "<script>" not in summary
    assert "expected 3 \\| map counts\\[0\\] = 0, expected 1 \\<script\\>" in summary


def test_markdown_failures_have_log_and_repro(run_dir: Path) -> None:
    summary = render_details(build_report(run_dir))
    failures = summary.split("## Failures (4)", 1)[1]
    assert "kitl repro run 'tracing::kprobe-getppid[debian-7.2-default]'" in failures
    assert "kitl repro run '*::*[debian-7.3-*]'" in failures
    section = failures.split("kprobe-getppid", 1)[1]
    block = section.split("```text\n", 1)[1].split("\n```", 1)[0]
    assert len(block.splitlines()) <= 20
    assert block.splitlines()[-1].startswith("processed 7 insns")


def test_markdown_fence_survives_backticks_in_log(tmp_path: Path) -> None:
    (tmp_path / "v.log").write_text("a ``` b\n", encoding="utf-8")
    write_run(tmp_path, [cell("s", "c", "k", "d", "VERIFIER_REJECTED", log_path="v.log")])
    assert "````text\na ``` b\n````" in render_details(build_report(tmp_path))


def test_log_path_outside_the_run_is_ignored(tmp_path: Path) -> None:
    secret = tmp_path / "secret.log"
    secret.write_text("do not show\n", encoding="utf-8")
    run = write_run(
        tmp_path / "run", [cell("s", "c", "k", "d", "FAILED", log_path="../secret.log")]
    )
    render_all(run)
    for path in (run / "report").iterdir():
        assert "do not show" not in path.read_text(encoding="utf-8")


# -- HTML (structure; tests/unit/test_report_html.py renders it in Chromium) ------------------


def test_html_is_static_and_escaped(run_dir: Path) -> None:
    render_all(run_dir, formats=("html",))
    page = (run_dir / "report" / "index.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing external
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert "../logs/debian-7.2/default/tracing.kprobe-getppid.verifier.log" in hrefs
    assert "../guest/debian-7.3.console.log" in hrefs
    for href in hrefs:
        assert (run_dir / "report" / href).resolve().is_file(), href


# -- veristat CSV -----------------------------------------------------------------------------


def test_csv_is_veristat_shaped(run_dir: Path) -> None:
    render_all(run_dir, formats=("csv",))
    text = (run_dir / "report" / "veristat-debian-7.2-default.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == ",".join(VERISTAT_HEADER)
    assert {(r["file_name"], r["prog_name"]): r["verdict"] for r in rows} == {
        ("cg", "connect4_deny_port"): "success",  # FAILED later, but it loaded
        ("range", "loop_sum"): "success",
        ("tracing", "kprobe_getppid"): "failure",
    }
    rejected = next(r for r in rows if r["prog_name"] == "kprobe_getppid")
    assert (rejected["duration"], rejected["total_insns"]) == ("388", "7")
    assert rejected["max_mark_read_len"] == "1"  # read from the log's stats line


def test_csv_leaves_out_cells_that_never_loaded_and_dedups(run_dir: Path) -> None:
    render_all(run_dir, formats=("csv",))
    out = run_dir / "report"
    assert (out / "veristat-debian-6.1-interp.csv").read_text().splitlines() == [
        ",".join(VERISTAT_HEADER)  # its one cell timed out
    ]
    default = (out / "veristat-debian-6.1-default.csv").read_text()
    assert "loop_sum" in default  # bpf-loop-sum passed; needs-arena (same program) skipped
    assert default.count("loop_sum") == 1
    assert not list(out.glob("veristat-debian-7.3*"))  # a run-level column loads nothing


def test_libbpf_column(tmp_path: Path) -> None:
    # both cells share an id (today's ids do not name the libbpf): both must stay
    same = {"program": "o/p", "verifier": {"insns": 5, "duration_us": 10}, "id": "s::c[k-d]"}
    write_run(
        tmp_path,
        [
            cell("s", "c", "k", "d", "PASSED", libbpf="1.5", **same),
            cell("s", "c", "k", "d", "PASSED", **same),
        ],
    )
    written = render_all(tmp_path, formats=("csv", "markdown"))
    names = ["summary.md", "details.md", "veristat-k-d-1.5.csv", "veristat-k-d.csv"]
    assert [p.name for p in written] == names
    assert table(written[1].read_text())[0][1:3] == ["k-d-1.5", "k-d"]
    # the summary: the kernel is the column, the loaders sub-rows of the one scenario
    rows = [r[0] for r in table(written[0].read_text())]
    assert rows == ["case", "2 cases: s::c · d-1.5, s::c · d"]


# -- CLI --------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kitl report")
    report.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_prints_paths(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kitl_report(str(run_dir), "--format", "junit", "--output", "out") == 0
    assert capsys.readouterr().out == "out/junit.xml\n"
    assert kitl_report(str(run_dir)) == 0
    assert len(capsys.readouterr().out.splitlines()) == 10


def test_cli_markdown_goes_to_stdout(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kitl_report(str(run_dir), "--format", "markdown") == 0
    captured = capsys.readouterr()
    assert captured.out == (run_dir / "report" / "summary.md").read_text(encoding="utf-8")
    assert captured.err == "run/report/summary.md\n"


def test_cli_rejects_unknown_format() -> None:
    with pytest.raises(SystemExit):
        parse("run", "--format", "pdf")


def kitl_report(*argv: str) -> int:
    """`kitl report ARGV` as the command line runs it."""
    return main(["report", *argv])
