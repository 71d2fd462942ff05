"""The run directory: every cell's result appended and flushed as it finishes.

    runs/<name>/
      results.jsonl          one JSON object per cell, appended as cells finish
      results.json           {"schema": 1, "run": {...}, "cells": [...]} (rewritten at the end)
      logs/<kernel>/<config>/<scenario>.<case>.verifier.log   (a loader case's: .loader.log)
      guest/<kernel>.console.log, guest/<kernel>.dmesg.log
A run killed half-way keeps every finished cell in results.jsonl.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness.errors import DISK_ERRNOS, UsageError, WriteError
from harness.outcome import Outcome
from harness.results.record import (
    BootFailure,
    CellRecord,
    Crash,
    JSONRecord,
    Observed,
    Timings,
    Verifier,
    cell_id,
    label,
)
from harness.scenario.expect import ExpectJSON

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


def write_failed(path: Path, exc: OSError) -> WriteError:
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
            raise write_failed(path, exc) from None
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return path


@dataclass
class CellResult:
    """A cell's result while the cell runs (the engine fills it in as it goes); what it
    records is its `record()`, the one typed form every reader reads back.  Its parts are
    the record's (harness.results.record.amended adds to one); each starts as an empty
    JSON object, as a cell that never got to it records it."""

    scenario: str
    case: str
    kernel: str
    config: str
    outcome: Outcome
    reason: str = ""
    kernel_release: str = ""
    kernel_digest: str = ""
    accel: str = ""
    sysctls: dict[str, int | str | None] = field(default_factory=dict)  # None: not readable
    program: str = ""
    prog_type: str = ""
    section: str = ""
    expected: ExpectJSON = field(default_factory=ExpectJSON)
    observed: Observed = field(default_factory=lambda: Observed.from_json({}))
    verifier: Verifier = field(default_factory=lambda: Verifier.from_json({}))
    timings: Timings = field(default_factory=lambda: Timings.from_json({}))
    log_path: str = ""
    scenario_file: str = ""  # absolute path of the scenario, for `kitl repro`
    scenario_line: int | None = None  # the case's line in it (0: an object's, none)
    object_file: str = ""  # the compiled object that was loaded, and its hash
    object_sha256: str = ""
    console_path: str = ""  # the guest's console and dmesg, relative to the run directory
    dmesg_path: str = ""
    libbpf: str = ""  # the loader when it is not the default: "system", "debian-6.1", a path
    # KERNEL_CRASH: the console splat (title, fingerprint, signature, functions, text)
    crash: Crash = field(default_factory=lambda: Crash.from_json({}))

    @property
    def label(self) -> str:
        return label(self.kernel, self.config, self.libbpf)

    @property
    def cell_id(self) -> str:
        return cell_id(self.scenario, self.case, self.kernel, self.config, self.libbpf)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            data[f.name] = (
                value.to_json() if isinstance(value, JSONRecord) else copy.deepcopy(value)
            )
        data["outcome"] = str(self.outcome)
        data["id"] = self.cell_id
        return data

    def record(self) -> CellRecord:
        return CellRecord.from_json(self.to_json())


class RunDir:
    def __init__(self, path: Path, meta: Mapping[str, str]) -> None:
        self.path = path
        self.meta = dict(meta)  # the run's facts (a time stamp), in results.json's "run"
        self.cells: list[CellResult] = []
        path.mkdir(parents=True, exist_ok=True)
        # results.json is written when a run ends, and readers prefer it to results.jsonl:
        # one left by an earlier run here (before a --resume) must not outlive this run's
        # start, or a stop before this run's end would leave it to stand for the whole;
        # results.jsonl holds all it has
        if (path / "results.jsonl").is_file():
            with contextlib.suppress(FileNotFoundError):
                (path / "results.json").unlink()
        (path / "logs").mkdir(exist_ok=True)
        (path / "guest").mkdir(exist_ok=True)

    @classmethod
    def create(cls, base: Path | None, meta: Mapping[str, str]) -> RunDir:
        path = base or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        return cls(path, {**meta, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def verifier_log_path(self, cell: CellResult, kind: str = "verifier") -> Path:
        stem = f"{safe_name(cell.scenario)}.{safe_name(cell.case)}"
        stem += f".{safe_name(cell.libbpf)}" if cell.libbpf else ""
        if len(stem) > SAFE_NAME_MAX:  # three safe names may together pass NAME_MAX (255)
            stem = safe_name(f"{cell.scenario}\0{cell.case}\0{cell.libbpf}")
        kernel, config = safe_name(cell.kernel), safe_name(cell.config)
        return self.path / "logs" / kernel / config / f"{stem}.{kind}.log"

    def write_verifier_log(self, cell: CellResult, text: str) -> None:
        self.write_cell_log(cell, text, "verifier")

    def write_cell_log(self, cell: CellResult, text: str, kind: str) -> None:
        """The cell's log (`log_path`): a verifier's, or a user's loader's output."""
        if not text:
            return
        path = self.verifier_log_path(cell, kind)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_failed(path.parent, exc) from None
        write_atomic(path, text)  # never half a log under the name a cell points to
        cell.log_path = str(path.relative_to(self.path))

    def guest_file(self, kernel: str, kind: str) -> Path:
        return self.path / "guest" / f"{safe_name(kernel)}.{kind}.log"

    def record_boot_failure(self, kernel: str, outcome: str, reason: str, console: Path) -> None:
        """A kernel that did not come up, said once for all its cells: written beside its
        console log and gathered into results.json's run.boot_failures by `finalize`."""
        record = BootFailure(kernel, outcome, reason, str(console.relative_to(self.path)))
        write_atomic(self.guest_file(kernel, "boot-failure"), json.dumps(record.to_json()) + "\n")

    def append(self, cell: CellResult) -> None:
        """Append one cell and flush it to disk: a run killed later keeps it.  Locked, as
        several pytest-xdist workers append to the same file.  A write that fails part-way
        (disk full) is cut back off, so the file holds whole lines only and the next
        append does not run into a torn one; the failure is a WriteError."""
        line = (json.dumps(cell.record().to_json()) + "\n").encode("utf-8")
        jsonl = self.path / "results.jsonl"
        try:
            with FileLock(self.path / ".results.lock"):
                _append_whole(jsonl, line)
        except OSError as exc:
            raise write_failed(jsonl, exc) from None
        self.cells.append(cell)

    def finish(self) -> Path:
        body = {
            "schema": RESULTS_SCHEMA,
            "run": {**self.meta, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
            "cells": [c.record().to_json() for c in self.cells],
        }
        out = self.path / "results.json"
        write_atomic(out, json.dumps(body, indent=2) + "\n")
        return out


def _append_whole(path: Path, data: bytes) -> None:
    """Append `data` with unbuffered writes (nothing left in a buffer to fail later) and
    fsync; on failure truncate back to the size before, then raise."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        if start and os.pread(fd, 1, start - 1) != b"\n":
            # a record cut by a writer killed mid-write: end its line, so that this one
            # stays whole on its own and readers name the cut one by its line
            data = b"\n" + data
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
