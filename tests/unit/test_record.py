"""harness.results.record: every record kitl writes, or wrote, reads back and writes out
as it was (the run-directory format does not change), and reads typed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.outcome import Outcome
from harness.results.record import (
    BootFailure,
    CellRecord,
    Crash,
    Observed,
    Timings,
    Verifier,
    amended,
    cell_id,
)
from harness.results.rundir import CellResult, RunDir
from harness.results.runs import finalize, load_run, merge_runs

DATA = Path(__file__).parent.parent / "data"
SAVED = sorted(DATA.rglob("results.json")) + sorted(DATA.rglob("results.jsonl"))


def saved_cells() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in SAVED:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            rows = json.loads(path.read_text())["cells"]
        found += [(f"{path.relative_to(DATA)}:{n}", row) for n, row in enumerate(rows)]
    return found


def test_the_saved_runs_are_found() -> None:
    assert len(SAVED) >= 2
    outcomes = {row["outcome"] for _, row in saved_cells()}
    assert {"PASSED", "SKIPPED", "FAILED", "VERIFIER_REJECTED", "KERNEL_CRASH"} <= outcomes


@pytest.mark.parametrize(
    ("where", "row"), saved_cells(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_saved_records_round_trip_exactly(where: str, row: dict[str, Any]) -> None:
    record = CellRecord.from_json(row)
    assert record.to_json() == row, where
    assert json.dumps(record.to_json()) == json.dumps(row), "the same bytes, keys in order"
    assert not record.extra, "every key of a saved record is modelled and typed"
    assert record.cell_id == row["id"]
    assert record.outcome is Outcome(row["outcome"])


def full_result(outcome: Outcome = Outcome.KERNEL_CRASH) -> CellResult:
    """A result with every part a cell can record filled in."""
    cell = CellResult(
        "xdp",
        "drop",
        "debian-6.1",
        "jit",
        outcome,
        reason="Oops",
        kernel_release="6.1.0-56-amd64",
        sysctls={"net.core.bpf_jit_enable": "1", "kernel.unprivileged_bpf_disabled": None},
        program="xdp/drop",
        expected={"load": "ok", "map": {"counts": [[0, 1]]}},
        observed=Observed.from_json(
            {"load": {"ok": True, "errno": 0}, "notes": ["n"], "oom_kills": ["cc1"]}
        ),
        timings=Timings.from_json({"load_ms": 1.5, "case_s": 2.0, "ns_per_op": 12}),
        libbpf="system",
        crash=Crash.from_json({"title": "BUG", "fingerprint": "f", "signature": "s"}),
    )
    cell.crash = amended(cell.crash, functions=["a"], text="splat")
    cell.verifier = Verifier.from_json({"verified_insns": 7, "errno": None, "insns": 7})
    return cell


def test_what_a_cell_writes_reads_back_typed_and_writes_the_same(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run", {})
    result = full_result()
    run.append(result)
    line = json.loads((run.path / "results.jsonl").read_text())
    assert line == result.to_json()
    record = CellRecord.from_json(line)
    assert record == result.record()
    assert record.to_json() == line
    assert not record.extra
    assert (record.cell_id, record.label) == (
        "xdp::drop[debian-6.1-jit-system]",
        "debian-6.1-jit-system",
    )
    assert record.key == (record.cell_id, "system")
    assert (record.outcome, record.outcome_text) == (Outcome.KERNEL_CRASH, "KERNEL_CRASH")
    assert (record.verifier.verified_insns, record.timings.load_ms) == (7, 1.5)
    assert (record.observed.load_ok, record.observed.oom_kills) == (True, ("cc1",))
    assert (record.crash.title, record.crash.functions) == ("BUG", ("a",))


def test_an_old_or_partial_record_reads_with_defaults_and_writes_as_it_was() -> None:
    old = {"scenario": "s", "case": "c", "kernel": "k", "config": "d", "outcome": "PASSED"}
    record = CellRecord.from_json(old)
    assert record.to_json() == old
    assert record.cell_id == cell_id("s", "c", "k", "d", "")  # no id recorded: rebuilt
    assert (record.libbpf, record.reason, record.verifier.insns) == ("", "", None)
    assert record.verifier.empty
    assert record.observed.load_ok is None
    nothing = CellRecord.from_json({})
    assert nothing.to_json() == {}
    assert (nothing.outcome, nothing.outcome_text) == (Outcome.ERROR, "")
    assert nothing.cell_id == "::[?]"


def test_unknown_keys_and_wrongly_typed_values_are_kept_as_recorded() -> None:
    row: dict[str, Any] = {
        "future": {"a": [1, 2]},
        "scenario": "s",
        "kernel": 5,
        "outcome": "EXPLODED",
        "reason": None,
        "verifier": {"insns": "many", "new_stat": 3, "total_states": 4},
        "timings": "junk",
        "observed": [],
        "crash": {"title": "T", "functions": "not a list"},
    }
    record = CellRecord.from_json(row)
    assert record.to_json() == row
    assert list(record.to_json()) == list(row), "in the recorded order"
    # each field reads as the readers read such a value before there was a model
    assert (record.kernel, record.reason) == ("5", "")
    assert (record.outcome, record.outcome_text) == (Outcome.ERROR, "EXPLODED")
    assert (record.verifier.insns, record.verifier.total_states) == (None, 4)
    assert record.verifier.value("new_stat") == 3
    assert record.timings.empty
    assert record.timings.load_ms is None
    assert (record.crash.title, record.crash.functions) == ("T", ())
    assert record.extra["future"] == {"a": [1, 2]}


def test_a_record_built_in_code_names_itself_and_writes_every_field() -> None:
    built = CellRecord(scenario="s", case="c", kernel="k", config="d", outcome=Outcome.PASSED)
    assert built.id == "s::c[k-d]"
    data = built.to_json()
    assert data == CellResult("s", "c", "k", "d", Outcome.PASSED).to_json()
    assert CellRecord.from_json(data).to_json() == data


def test_finalize_and_merge_keep_what_they_do_not_model(tmp_path: Path) -> None:
    row = {**full_result(Outcome.PASSED).to_json(), "from_a_newer_kitl": {"x": 1}}
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.jsonl").write_text(json.dumps(row) + "\n")
        finalize(tmp_path / name, {})
        assert json.loads((tmp_path / name / "results.json").read_text())["cells"] == [row]
    cells, duplicates = merge_runs([tmp_path / "one", tmp_path / "two"], tmp_path / "out")
    assert [c.to_json() for c in cells] == [row]
    assert len(duplicates) == 1
    assert [c.to_json() for c in load_run(tmp_path / "out").cells] == [row]


def test_a_boot_failure_record_round_trips(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run", {})
    run.record_boot_failure("debian-6.1", "BOOT_FAILED", "no init", run.guest_file("k", "console"))
    data = json.loads(run.guest_file("debian-6.1", "boot-failure").read_text())
    assert list(data) == ["kernel", "outcome", "reason", "console_path"]
    failure = BootFailure.from_json(data)
    assert (failure.kernel, failure.console_path) == ("debian-6.1", "guest/k.console.log")
    assert failure.to_json() == data


def test_the_case_line_is_recorded_and_older_records_write_as_they_were() -> None:
    new = CellResult("s", "c", "k", "d", Outcome.FAILED, scenario_line=12).record()
    assert new.scenario_line == 12
    assert new.to_json()["scenario_line"] == 12
    old = {"id": "s::c[k-d]", "outcome": "FAILED", "scenario_file": "/x/s.yaml"}
    record = CellRecord.from_json(old)
    assert record.scenario_line is None
    assert json.dumps(record.to_json()) == json.dumps(old)
    damaged = {**old, "scenario_line": "twelve"}
    assert CellRecord.from_json(damaged).scenario_line is None
    assert CellRecord.from_json(damaged).to_json() == damaged
