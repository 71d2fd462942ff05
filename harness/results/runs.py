"""Run directories read back: the one reader of run directories, results.json and
results.jsonl (for the reports, `kitl compare`, `kitl merge`, `kitl repro`, --resume and
the end of a run), results.json written from what was appended, and merges of runs.

One set of rules for every reader:
  - a run directory is read from results.json when that is a whole results file (a
    finished run), else from results.jsonl (a run killed before the end, or still going);
  - in results.jsonl, blank lines are skipped and a cut last line (a writer killed in the
    middle of a record) is dropped; any other line that is not a JSON object is an error
    naming its file and line, never skipped in silence;
  - a cell recorded more than once (a retried or resumed cell is appended again) is its
    last record, in the place of that record;
  - a file that cannot be read, or is not a kitl results file, is a UsageError of one line.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.outcome import Outcome
from harness.results.record import BootFailure, CellRecord
from harness.results.rundir import RESULTS_SCHEMA, write_atomic, write_failed

JSON = "results.json"
JSONL = "results.jsonl"
Cells = list[CellRecord]  # a run's cells, each its latest record, in the order recorded


@dataclass(frozen=True)
class Run:
    """What a run directory (or a results file) holds: the run's metadata (empty when read
    from results.jsonl) and its cells, each as recorded."""

    meta: dict[str, Any] = field(default_factory=dict)
    cells: Cells = field(default_factory=list)


def latest(cells: Iterable[CellRecord]) -> Cells:
    """Each cell's last record (by CellRecord.key), in the place of that record."""
    by_key: dict[tuple[str, str], CellRecord] = {}
    for cell in cells:
        by_key.pop(cell.key, None)  # re-inserted at the end: the order of the latest records
        by_key[cell.key] = cell
    return list(by_key.values())


def _decode_error(exc: Exception) -> str:
    return exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"


def parse_jsonl(path: Path, text: str) -> Cells:
    """The cells of results.jsonl text, each its latest record (see the module's rules)."""
    cells: list[CellRecord] = []
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            cell = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            # the last line, without its newline: a record cut by a killed writer
            if number == len(lines) and line.lstrip().startswith("{"):
                continue
            raise UsageError(
                f"{path}:{number}: corrupt results line: {_decode_error(exc)}"
            ) from None
        if not isinstance(cell, dict):
            raise UsageError(f"{path}:{number}: corrupt results line: not a JSON object")
        cells.append(CellRecord.from_json(cell))
    return latest(cells)


def parse_json(path: Path, text: str) -> Run:
    """The run of a results.json text (schema 1), or a bare list of cells."""
    try:
        payload = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise UsageError(f"{path}: corrupt results file: {_decode_error(exc)}") from None
    meta: dict[str, Any] = {}
    if isinstance(payload, dict):
        schema = payload.get("schema", RESULTS_SCHEMA)
        if schema != RESULTS_SCHEMA:
            raise UsageError(
                f"{path}: unsupported results schema {schema!r} (expected {RESULTS_SCHEMA})"
            )
        run = payload.get("run")
        meta = dict(run) if isinstance(run, dict) else {}
        payload = payload.get("cells")
    if not isinstance(payload, list) or not all(isinstance(c, dict) for c in payload):
        raise UsageError(f"{path}: not a kitl results file (expected a list of cells)")
    return Run(meta, latest(CellRecord.from_json(c) for c in payload))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file or directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from None


def load_run(path: Path) -> Run:
    """The run of a run directory, a results.json file or a results.jsonl file."""
    if path.is_dir():
        if (path / JSON).is_file():
            try:
                return parse_json(path / JSON, _read(path / JSON))
            except UsageError:
                if not (path / JSONL).is_file():
                    raise
                # a results.json cut or damaged after the run: the appended records
        if (path / JSONL).is_file():
            return Run({}, parse_jsonl(path / JSONL, _read(path / JSONL)))
        raise UsageError(f"{path}: no {JSON} or {JSONL} (not a kitl run directory?)")
    text = _read(path)
    if path.suffix == ".jsonl":
        return Run({}, parse_jsonl(path, text))
    return parse_json(path, text)


def appended(run_dir: Path) -> Cells:
    """The cells appended to a run directory's results.jsonl so far (none before the
    first): what the end of a run, --resume and the exit status read."""
    jsonl = run_dir / JSONL
    if not jsonl.is_file():
        return []
    return parse_jsonl(jsonl, _read(jsonl))


def finished_ids(path: Path) -> set[str]:
    """Ids of the cells a run directory already has a result for, other than those an
    interrupted or broken run left (infrastructure outcomes): what a resumed run skips."""
    return {c.cell_id for c in appended(path) if not c.outcome.is_infrastructure}


def boot_failures(path: Path) -> list[BootFailure]:
    """The kernels of a run that did not come up (RunDir.record_boot_failure), by name."""
    found: list[BootFailure] = []
    for record in sorted((path / "guest").glob("*.boot-failure.log")):
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            found.append(BootFailure.from_json(data))
    return found


def finalize(path: Path, meta: dict[str, Any]) -> Cells:
    """Write results.json from results.jsonl (several writers may have appended to it)."""
    cells = appended(path)
    unbooted = {c.kernel for c in cells if c.outcome is Outcome.BOOT_FAILED}
    if failures := [f.to_json() for f in boot_failures(path) if f.kernel in unbooted]:
        meta = {**meta, "boot_failures": failures}
    body = {
        "schema": RESULTS_SCHEMA,
        "run": {**meta, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "cells": [c.to_json() for c in cells],
    }
    write_atomic(path / "results.json", json.dumps(body, indent=2) + "\n")
    return cells


@dataclass(frozen=True)
class Duplicate:
    """A cell that more than one merged run has a result for, and which result was kept."""

    cell_id: str
    kept: str  # outcome
    kept_from: Path
    dropped: str
    dropped_from: Path

    def describe(self) -> str:
        return (
            f"{self.cell_id}: kept {self.kept} from {self.kept_from}, "
            f"dropped {self.dropped} from {self.dropped_from}"
        )


def preferred(old: CellRecord, new: CellRecord) -> bool:
    """Whether `new` replaces `old` for the same cell: a real verdict (the kernel's, or a
    skip) beats an infrastructure outcome (TIMED_OUT, VM_LOST, ERROR, BOOT_FAILED,
    KERNEL_CRASH), which says nothing about the case; otherwise the later run wins.  An
    outcome kitl does not know reads as ERROR."""
    return old.outcome.is_infrastructure or not new.outcome.is_infrastructure


Source = tuple[CellRecord, Path]  # a cell's record and the run directory it came from


def _choose(chosen: dict[tuple[str, str], Source], new: Source) -> Duplicate | None:
    """Put `new` among the chosen records; the choice made when its cell is there already."""
    old = chosen.setdefault(new[0].key, new)
    if old is new:
        return None
    keep, drop = (new, old) if preferred(old[0], new[0]) else (old, new)
    chosen[new[0].key] = keep
    return Duplicate(new[0].cell_id, keep[0].outcome_text, keep[1], drop[0].outcome_text, drop[1])


def merge_runs(sources: list[Path], out: Path) -> tuple[Cells, list[Duplicate]]:
    """Combine run directories (shards of one matrix, a failed shard and its rerun) into
    `out`: their cells and their logs.  A cell found in several sources keeps the result
    `preferred` picks, and every such choice is returned, so none is made silently."""
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out}: exists and is not empty; merge writes a new run directory")
    for source in sources:
        if not (source / JSONL).is_file() and not (source / JSON).is_file():
            raise UsageError(f"{source}: not a kitl run directory (no results.json)")
    metas: list[dict[str, Any]] = []
    chosen: dict[tuple[str, str], Source] = {}
    duplicates: list[Duplicate] = []
    for source in sources:
        run = load_run(source)
        if run.meta:
            metas.append(run.meta)
        for cell in run.cells:
            if duplicate := _choose(chosen, (cell, source)):
                duplicates.append(duplicate)
    lines = [json.dumps(cell.to_json()) + "\n" for cell, _ in chosen.values()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        for source in sources:
            for sub in ("logs", "guest"):
                if (source / sub).is_dir():
                    shutil.copytree(source / sub, out / sub, dirs_exist_ok=True)
    except OSError as exc:  # shutil.Error (many files) is an OSError too
        raise write_failed(out, exc) from None
    write_atomic(out / "results.jsonl", "".join(lines))
    meta = {"merged_from": [str(s) for s in sources], "shards": metas}
    if duplicates:
        meta["duplicates"] = [d.describe() for d in duplicates]
    return finalize(out, meta), duplicates
