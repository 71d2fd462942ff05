"""The short report: the matrix grouped (kernels as columns, configs as sub-rows only where
a scenario has several, like rows counted), failures grouped by outcome, class and message
with one repro each, a kernel that ran nothing told once; its length for thousands of
cells; and the GitHub annotations of the failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.cli.main import main
from harness.report import github
from harness.report.markdown import render_summary
from harness.report.model import build_report
from harness.report.summary import message_of, summarize

KERNELS = ("debian-5.10", "debian-6.1", "debian-6.12", "debian-7.2", "debian-7.3")
RELEASES = dict(zip(KERNELS, ("5.10.0", "6.1.0", "6.12.0", "7.2.0", "7.3.0"), strict=True))


def cell(scenario: str, case: str, kernel: str, outcome: str, **extra: Any) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "case": case,
        "kernel": kernel,
        "config": extra.pop("config", "default"),
        "outcome": outcome,
        "kernel_release": RELEASES.get(kernel, ""),
        **extra,
    }


def write_run(path: Path, cells: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    body = {"schema": 1, "run": meta or {}, "cells": cells}
    (path / "results.json").write_text(json.dumps(body), encoding="utf-8")
    return path


def corpus(path: Path, programs: int = 371) -> Path:
    """`programs` programs on five kernels: every one times out on debian-6.12, a few
    rejected for a helper debian-5.10 lacks, the rest pass; one scenario has configs."""
    cells = []
    for n in range(programs):
        for kernel in KERNELS:
            outcome, reason, extra = "PASSED", "", {}
            if kernel == "debian-6.12":
                outcome, reason = "TIMED_OUT", "guest command did not finish in 60 s: load"
            elif kernel == "debian-5.10" and n % 30 == 0:
                outcome, reason = "VERIFIER_REJECTED", f"VERIFIER_REJECTED: invalid func {n}"
                extra = {"observed": {"error_class": "UNSUPPORTED_HELPER"}}
            cells.append(cell(f"obj{n // 10}", f"prog{n}", kernel, outcome, reason=reason, **extra))
    for kernel in KERNELS[:2]:
        for config in ("jit", "interp"):
            cells.append(cell("xdp", "drop", kernel, "PASSED", config=config))
    run = write_run(path, cells, {"kernels": list(KERNELS)})
    (run / "guest").mkdir()
    console = "\n".join(f"[{n}] console line" for n in range(200))
    (run / "guest" / "debian-6.12.console.log").write_text(console, encoding="utf-8")
    return run


def test_kernels_are_columns_and_configs_sub_rows_only_where_a_scenario_has_them(
    tmp_path: Path,
) -> None:
    run = write_run(
        tmp_path,
        [
            cell("xdp", "drop", "debian-6.1", "PASSED", config="jit"),
            cell("xdp", "drop", "debian-6.1", "FAILED", config="interp", reason="retval 1"),
            cell("xdp", "drop", "debian-7.2", "PASSED", config="jit"),
            cell("xdp", "drop", "debian-7.2", "PASSED", config="interp"),
            cell("tc", "shot", "debian-6.1", "PASSED", config="default"),
            cell("tc", "shot", "debian-7.2", "SKIPPED", config="default"),
        ],
    )
    summary = summarize(build_report(run))
    assert summary.kernels == ("debian-6.1", "debian-7.2")
    assert [r.name for g in summary.failing for r in g.rows] == ["xdp::drop · interp"]
    assert [[r.name for r in g.rows] for g in summary.passing] == [
        ["xdp::drop · jit"],
        ["tc::shot"],  # one config: no sub-row
    ]
    assert summary.passing[1].pattern == ("✅ pass", "⏭ skip")


def test_identical_rows_make_one_line_and_failing_rows_are_listed(tmp_path: Path) -> None:
    cells = [cell("s", f"c{n}", k, "PASSED") for n in range(500) for k in KERNELS]
    cells += [cell("s", "bad", k, "FAILED", reason="nope") for k in KERNELS[:2]]
    text = render_summary(build_report(write_run(tmp_path, cells)))
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == "| case | " + " | ".join(KERNELS) + " |"
    assert rows[1].startswith("| s::bad | ❌ failed | ❌ failed | — |")
    assert rows[2] == "| 500 cases | " + " | ".join(["✅ pass"] * 5) + " |"
    assert len(rows) == 3


def test_failures_group_across_kernels_with_one_repro(tmp_path: Path) -> None:
    reason = "UNSUPPORTED_HELPER: program of this type cannot use helper bpf_loop#181"
    cells = [
        cell(f"o{n}", "p", k, "LOAD_FAILED", reason=reason, observed={"error_class": "X"})
        for n in range(12)
        for k in ("debian-5.10", "debian-6.1")
    ]
    report = build_report(write_run(tmp_path, cells))
    (group,) = summarize(report).failures
    assert group.kernels == {"debian-5.10": 12, "debian-6.1": 12}
    text = render_summary(report)
    heading = next(line for line in text.splitlines() if line.startswith("### "))
    assert heading.endswith("— 24 cells on debian-5.10 (12), debian-6.1 (12)")
    assert "bpf\\_loop\\#N" in heading  # numbers left out, the helper's name kept
    assert text.count("Reproduce:") == 1
    assert "- and 19 more (details.md)" in text


def test_message_leaves_out_what_differs_from_case_to_case(tmp_path: Path) -> None:
    cells = [
        cell("s", "a", "k", "FAILED", reason="rejected, but the log lacks /R1 \\/ x/ (searched"),
        cell("s", "b", "k", "FAILED", reason="returned 85, expected -1412567278"),
    ]
    a, b = build_report(write_run(tmp_path, cells)).cells
    assert message_of(a) == "rejected, but the log lacks /…/ (searched"
    assert message_of(b) == "returned N, expected N"


def test_thousands_of_cells_stay_short_and_consoles_are_shown_once(tmp_path: Path) -> None:
    report = build_report(corpus(tmp_path / "run"))
    assert len(report.cells) == 371 * 5 + 4
    text = render_summary(report)
    assert len(text.splitlines()) < 100
    assert text.count("[199] console line") == 1  # the one console, once
    assert "371 cases of 38 scenarios (see Failures)" not in text  # 13 of them fail twice
    assert "💥 TIMED\\_OUT: guest command did not finish in N s: load — 371 cells" in text


def test_a_kernel_that_did_not_boot_is_told_once(tmp_path: Path) -> None:
    cells = [cell("s", f"c{n}", "debian-6.1", "PASSED") for n in range(300)]
    cells += [cell("s", f"c{n}", "debian-7.3", "BOOT_FAILED", reason="no boot") for n in range(300)]
    failure = {
        "kernel": "debian-7.3",
        "outcome": "BOOT_FAILED",
        "reason": "the guest did not come up in 60 s",
        "console_path": "guest/debian-7.3.console.log",
    }
    run = write_run(tmp_path, cells, {"boot_failures": [failure]})
    (run / "guest").mkdir()
    (run / "guest" / "debian-7.3.console.log").write_text("last words\n", encoding="utf-8")
    report = build_report(run)
    summary = summarize(report)
    assert summary.kernels == ("debian-6.1",)
    assert summary.failures == ()
    text = render_summary(report)
    assert "### 💥 debian-7.3: BOOT\\_FAILED (300 cells did not run)" in text
    assert text.count("last words") == 1
    assert len(text.splitlines()) < 40


def test_the_bundled_two_kernel_run_is_short() -> None:
    run = Path(__file__).parents[1] / "data" / "report-runs" / "two-kernels"
    assert len(render_summary(build_report(run)).splitlines()) < 150


# -- GitHub annotations -----------------------------------------------------------------------


def annotated(tmp_path: Path, failing: int) -> list[str]:
    cells = [
        cell(
            "s", f"c{n}", k, "FAILED", reason=f"50% off, line {n}\nmore",
            scenario_file=str(tmp_path / "ws" / "scenarios" / "s.yaml"), scenario_line=10 + n,
        )
        for n in range(failing)
        for k in ("debian-6.1", "debian-7.2")
    ]  # fmt: skip
    report = build_report(write_run(tmp_path / "run", cells))
    env = {"GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(tmp_path / "ws")}
    return github.lines(report, summarize(report), env)


def test_annotation_points_at_the_case_line_once_for_all_kernels(tmp_path: Path) -> None:
    (line,) = annotated(tmp_path, 1)
    assert line == (
        "::error file=scenarios/s.yaml,line=10,title=kitl%3A s%3A%3Ac0"
        "::FAILED on debian-6.1-default, debian-7.2-default: 50%25 off, line 0"
    )


def test_annotations_are_capped_at_github_limit(tmp_path: Path) -> None:
    lines = annotated(tmp_path, 25)
    assert len(lines) == github.MAX_ANNOTATIONS
    assert all(line.startswith("::error file=scenarios/s.yaml,line=") for line in lines[:9])
    assert lines[-1] == (
        "::error title=kitl%3A more failures::16 more failing cases: "
        "the job summary (kitl report) lists them all"
    )


def test_kitl_report_annotates_only_under_github_actions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = write_run(tmp_path / "run", [cell("s", "c", "k", "FAILED", reason="x")])
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    assert main(["report", str(run), "--format", "markdown"]) == 0
    assert "::error" not in capsys.readouterr().err
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert main(["report", str(run), "--format", "markdown"]) == 0
    out = capsys.readouterr()
    assert "::error" not in out.out  # stdout is the summary, for $GITHUB_STEP_SUMMARY
    assert "::error title=kitl%3A s%3A%3Ac::FAILED on k-default: x" in out.err
