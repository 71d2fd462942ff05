"""The run directory: every cell's result appended and flushed as it finishes.

    runs/<name>/
      results.jsonl          one JSON object per cell, appended as cells finish
      results.json           {"schema": 1, "run": {...}, "cells": [...]} (rewritten at the end)
      logs/<kernel>/<config>/<scenario>.<case>.verifier.log
      guest/<kernel>.console.log, guest/<kernel>.dmesg.log
A run killed half-way keeps every finished cell in results.jsonl.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness.errors import DISK_ERRNOS, UsageError, WriteError
from harness.outcome import Outcome

RESULTS_SCHEMA = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
SAFE_NAME_MAX = 120


def safe_name(text: str) -> str:
    """A file-name-safe rendering of a scenario/case/kernel/libbpf name: only
    [A-Za-z0-9._+-], no leading dot (so never '.' or '..'), at most SAFE_NAME_MAX
    characters.  A name that had to be changed gets a hash of the original appended, so two
    different names never share a file ('a/b' and 'a_b', 'path:/x/y' and 'path:/x_y')."""
    cleaned = _UNSAFE.sub("_", text).lstrip(".") or "_"
    if cleaned == text and len(text) <= SAFE_NAME_MAX:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{cleaned[: SAFE_NAME_MAX - len(digest) - 1]}-{digest}"


def _write_failed(path: Path, exc: OSError) -> WriteError:
    return WriteError(f"{path}: cannot write: {exc.strerror or exc}")


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write beside `path`, then rename: a reader never sees half a file, and on any
    failure the old file stays whole and no temporary file is left behind.  A full or
    failing disk is a WriteError (the machine's problem); any other failure, such as a
    directory that does not exist, is a UsageError (the path given is wrong)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from other users
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if exc.errno in DISK_ERRNOS:
            raise _write_failed(path, exc) from None
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return path


@dataclass
class CellResult:
    scenario: str
    case: str
    kernel: str
    config: str
    outcome: Outcome
    reason: str = ""
    kernel_release: str = ""
    kernel_digest: str = ""
    accel: str = ""
    sysctls: dict[str, Any] = field(default_factory=dict)
    program: str = ""
    prog_type: str = ""
    section: str = ""
    expected: dict[str, Any] = field(default_factory=dict)
    observed: dict[str, Any] = field(default_factory=dict)
    verifier: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    log_path: str = ""
    scenario_file: str = ""  # absolute path of the scenario, for `kitl repro`
    object_file: str = ""  # the compiled object that was loaded, and its hash
    object_sha256: str = ""
    console_path: str = ""  # the guest's console and dmesg, relative to the run directory
    dmesg_path: str = ""
    libbpf: str = ""  # the loader when it is not the default: "system", "debian-6.1", a path
    # KERNEL_CRASH: the console splat (title, fingerprint, signature, functions, text)
    crash: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return label(self.kernel, self.config, self.libbpf)

    @property
    def cell_id(self) -> str:
        return cell_id(self.scenario, self.case, self.kernel, self.config, self.libbpf)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = str(self.outcome)
        data["id"] = self.cell_id
        return data


class RunDir:
    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self.cells: list[CellResult] = []
        path.mkdir(parents=True, exist_ok=True)
        (path / "logs").mkdir(exist_ok=True)
        (path / "guest").mkdir(exist_ok=True)

    @classmethod
    def create(cls, base: Path | None, meta: dict[str, Any]) -> RunDir:
        path = base or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        return cls(path, {**meta, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def verifier_log_path(self, cell: CellResult) -> Path:
        stem = f"{safe_name(cell.scenario)}.{safe_name(cell.case)}"
        stem += f".{safe_name(cell.libbpf)}" if cell.libbpf else ""
        if len(stem) > SAFE_NAME_MAX:  # three safe names may together pass NAME_MAX (255)
            stem = safe_name(f"{cell.scenario}\0{cell.case}\0{cell.libbpf}")
        kernel, config = safe_name(cell.kernel), safe_name(cell.config)
        return self.path / "logs" / kernel / config / f"{stem}.verifier.log"

    def write_verifier_log(self, cell: CellResult, text: str) -> None:
        if not text:
            return
        path = self.verifier_log_path(cell)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _write_failed(path.parent, exc) from None
        write_atomic(path, text)  # never half a log under the name a cell points to
        cell.log_path = str(path.relative_to(self.path))

    def guest_file(self, kernel: str, kind: str) -> Path:
        return self.path / "guest" / f"{safe_name(kernel)}.{kind}.log"

    def record_boot_failure(self, kernel: str, outcome: str, reason: str, console: Path) -> None:
        """A kernel that did not come up, said once for all its cells: written beside its
        console log and gathered into results.json's run.boot_failures by `finalize`."""
        record = {
            "kernel": kernel,
            "outcome": outcome,
            "reason": reason,
            "console_path": str(console.relative_to(self.path)),
        }
        write_atomic(self.guest_file(kernel, "boot-failure"), json.dumps(record) + "\n")

    def append(self, cell: CellResult) -> None:
        """Append one cell and flush it to disk: a run killed later keeps it.  Locked, as
        several pytest-xdist workers append to the same file.  A write that fails part-way
        (disk full) is cut back off, so the file holds whole lines only and the next
        append does not run into a torn one; the failure is a WriteError."""
        line = (json.dumps(cell.to_json()) + "\n").encode("utf-8")
        jsonl = self.path / "results.jsonl"
        try:
            with FileLock(self.path / ".results.lock"):
                _append_whole(jsonl, line)
        except OSError as exc:
            raise _write_failed(jsonl, exc) from None
        self.cells.append(cell)

    def finish(self) -> Path:
        body = {
            "schema": RESULTS_SCHEMA,
            "run": {**self.meta, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
            "cells": [c.to_json() for c in self.cells],
        }
        out = self.path / "results.json"
        write_atomic(out, json.dumps(body, indent=2) + "\n")
        return out


def _append_whole(path: Path, data: bytes) -> None:
    """Append `data` with unbuffered writes (nothing left in a buffer to fail later) and
    fsync; on failure truncate back to the size before, then raise."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def read_cells(path: Path) -> list[dict[str, Any]]:
    """The cells of results.jsonl, in order, the last record of a cell winning (a resumed
    or retried cell is appended again).  A torn last line (a killed writer) is ignored."""
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    jsonl = path / "results.jsonl"
    if not jsonl.is_file():
        return []
    for line in jsonl.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            cell = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(cell, dict) and "id" in cell:
            key = (str(cell["id"]), str(cell.get("libbpf", "")))
            cells.pop(key, None)  # re-inserted at the end: the order of the latest runs
            cells[key] = cell
    return list(cells.values())


def outcome_of(cell: Mapping[str, Any]) -> Outcome:
    """A recorded cell's outcome; one kitl does not know (a damaged or foreign record) is
    an ERROR."""
    outcome = str(cell.get("outcome"))
    return Outcome(outcome) if outcome in Outcome.__members__ else Outcome.ERROR


def finished_ids(path: Path) -> set[str]:
    """Ids of the cells a run directory already has a result for, other than those an
    interrupted or broken run left (infrastructure outcomes): what a resumed run skips."""
    return {str(c["id"]) for c in read_cells(path) if not outcome_of(c).is_infrastructure}


def boot_failures(path: Path) -> list[dict[str, Any]]:
    """The kernels of a run that did not come up (RunDir.record_boot_failure), by name."""
    found = []
    for record in sorted((path / "guest").glob("*.boot-failure.log")):
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            found.append(data)
    return found


def label(kernel: str, config: str, libbpf: str) -> str:
    """The bracket of a cell id, and a report's column: KERNEL-CONFIG, and -LIBBPF when
    the loader is not the default (recorded as ""); a part a damaged record lacks is left
    out."""
    return "-".join(p for p in (kernel, config, libbpf) if p) or "?"


def cell_id(scenario: str, case: str, kernel: str, config: str, libbpf: str) -> str:
    """The one name of a cell, as the terminal, the reports, `kitl compare`, `kitl known`,
    `kitl repro`, `kitl merge` and --resume write and read it: SCENARIO::CASE[LABEL]."""
    return f"{scenario}::{case}[{label(kernel, config, libbpf)}]"


def finalize(path: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Write results.json from results.jsonl (several writers may have appended to it)."""
    cells = read_cells(path)
    unbooted = {str(c.get("kernel")) for c in cells if c.get("outcome") == "BOOT_FAILED"}
    if failures := [f for f in boot_failures(path) if f.get("kernel") in unbooted]:
        meta = {**meta, "boot_failures": failures}
    body = {
        "schema": RESULTS_SCHEMA,
        "run": {**meta, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "cells": cells,
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


def preferred(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether `new` replaces `old` for the same cell: a real verdict (the kernel's, or a
    skip) beats an infrastructure outcome (TIMED_OUT, VM_LOST, ERROR, BOOT_FAILED,
    KERNEL_CRASH), which says nothing about the case; otherwise the later run wins."""
    return outcome_of(old).is_infrastructure or not outcome_of(new).is_infrastructure


def merge_runs(sources: list[Path], out: Path) -> tuple[list[dict[str, Any]], list[Duplicate]]:
    """Combine run directories (shards of one matrix, a failed shard and its rerun) into
    `out`: their cells and their logs.  A cell found in several sources keeps the result
    `preferred` picks, and every such choice is returned, so none is made silently."""
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out}: exists and is not empty; merge writes a new run directory")
    for source in sources:
        if not (source / "results.jsonl").is_file() and not (source / "results.json").is_file():
            raise UsageError(f"{source}: not a kitl run directory (no results.json)")
    metas: list[dict[str, Any]] = []
    chosen: dict[tuple[str, str], tuple[dict[str, Any], Path]] = {}
    duplicates: list[Duplicate] = []
    for source in sources:
        cells = read_cells(source)
        if not cells and (source / "results.json").is_file():  # jsonl may be gone
            body = json.loads((source / "results.json").read_text(encoding="utf-8"))
            cells = list(body.get("cells", []))
        if (source / "results.json").is_file():
            body = json.loads((source / "results.json").read_text(encoding="utf-8"))
            metas.append(dict(body.get("run", {})))
        for cell in cells:
            key = (str(cell.get("id")), str(cell.get("libbpf", "")))
            if key not in chosen:
                chosen[key] = (cell, source)
                continue
            old, old_source = chosen[key]
            keep, drop = ((cell, source), (old, old_source))
            if not preferred(old, cell):
                keep, drop = drop, keep
            chosen[key] = keep
            duplicates.append(
                Duplicate(
                    key[0],
                    str(keep[0].get("outcome")),
                    keep[1],
                    str(drop[0].get("outcome")),
                    drop[1],
                )
            )
    lines = [json.dumps(cell) + "\n" for cell, _ in chosen.values()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        for source in sources:
            for sub in ("logs", "guest"):
                if (source / sub).is_dir():
                    shutil.copytree(source / sub, out / sub, dirs_exist_ok=True)
    except OSError as exc:  # shutil.Error (many files) is an OSError too
        raise _write_failed(out, exc) from None
    write_atomic(out / "results.jsonl", "".join(lines))
    meta = {"merged_from": [str(s) for s in sources], "shards": metas}
    if duplicates:
        meta["duplicates"] = [d.describe() for d in duplicates]
    return finalize(out, meta), duplicates
