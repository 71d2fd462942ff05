"""The one reader of results (harness.results.runs) and what the writer does for it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.outcome import Outcome
from harness.results.rundir import CellResult, RunDir
from harness.results.runs import appended, finalize, load_run


def cell(case: str, outcome: Outcome = Outcome.PASSED) -> CellResult:
    return CellResult("s", case, "debian-6.1", "default", outcome)


def test_an_append_after_a_cut_record_starts_on_its_own_line(tmp_path: Path) -> None:
    run = RunDir(tmp_path, {})
    run.append(cell("a"))
    jsonl = tmp_path / "results.jsonl"
    jsonl.write_text(jsonl.read_text() + '{"scenario": "s", "ca')  # a writer killed mid-record
    run.append(cell("b"))
    lines = jsonl.read_text().splitlines()
    assert json.loads(lines[2])["case"] == "b", "the next record is whole on its own line"
    with pytest.raises(UsageError, match=r"results\.jsonl:2: corrupt results line"):
        appended(tmp_path)


def test_a_run_directory_is_its_results_json_else_its_jsonl(tmp_path: Path) -> None:
    run = RunDir(tmp_path, {"accel": "tcg"})
    run.append(cell("a", Outcome.FAILED))
    run.append(cell("a"))
    run.append(cell("b"))
    assert load_run(tmp_path).meta == {}, "a run still going: its appended records"
    finalize(tmp_path, {"accel": "tcg"})
    finished = load_run(tmp_path)
    assert finished.meta["accel"] == "tcg"
    assert [(c.case, c.outcome) for c in finished.cells] == [
        ("a", "PASSED"),
        ("b", "PASSED"),
    ]
    (tmp_path / "results.json").write_text('{"schema": 1, "cells": [')  # cut afterwards
    assert [c.case for c in load_run(tmp_path).cells] == ["a", "b"]
    with pytest.raises(UsageError, match="corrupt results file"):
        load_run(tmp_path / "results.json")  # a file named on its own is what it is


def test_a_run_starting_in_a_directory_drops_the_results_json_of_the_last(
    tmp_path: Path,
) -> None:
    first = RunDir(tmp_path, {})
    first.append(cell("a"))
    finalize(tmp_path, {"run": 1})
    RunDir(tmp_path, {}).append(cell("b"))  # a --resume, stopped before its end
    assert not (tmp_path / "results.json").exists()
    assert [c.case for c in load_run(tmp_path).cells] == ["a", "b"]
    # a results.json with no results.jsonl beside it is all there is: kept
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "results.json").write_text(json.dumps({"schema": 1, "cells": [cell("c").to_json()]}))
    RunDir(alone, {})
    assert [c.case for c in load_run(alone).cells] == ["c"]


def test_a_record_without_an_id_is_known_by_its_fields(tmp_path: Path) -> None:
    first = {"scenario": "s", "case": "a", "kernel": "k", "config": "c", "outcome": "FAILED"}
    again = {**first, "outcome": "PASSED", "id": "s::a[k-c]"}
    (tmp_path / "results.jsonl").write_text(f"{json.dumps(first)}\n{json.dumps(again)}\n")
    assert [c.outcome for c in load_run(tmp_path).cells] == ["PASSED"]
