"""Known failures with an expiry date: the `kitl-expect.yaml` file.

    known_failures:
      - case: "xdp-basics::drop-udp-*"   # required: fnmatch glob on scenario::case
        kernel: "<6.1"                    # optional: a version range on the cell's
                                          #   kernel_release (">=5.10,<6.1", "6.1"), or a
                                          #   glob on the kernel name ("debian-5.*")
        config: interp                    # optional: glob on the config name
        outcome: VERIFIER_REJECTED        # optional: the failing outcome that is known;
                                          #   default any failing outcome, infrastructure too
        reason: "bpf_loop needs 5.17"     # required
        expires: 2027-03-01               # required: the entry holds through that day

A kernel value starting with a digit or one of < > = ! is a range, anything else a glob.
Globs are case-sensitive.  `apply_known()` (pure) decides, for one run's cells:

  known    a failing cell matched by an unexpired entry that accepts its outcome; it no
           longer fails the run, its outcome is left as it is (the report names the entry)
  expired  an entry whose date has passed (today > expires; on the day itself it still
           holds) fails the run whatever it matches, so nothing stays "known" forever
  fixed    an unexpired entry whose matching cells all pass now: consider removing it
  unused   an unexpired entry matching no cell (or only skipped ones, or failures with
           another outcome than it names)

Every error in the file is a ConfigError naming file:line:column.
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness import yamlsrc
from harness.errors import ConfigError
from harness.outcome import EXIT_FAILED, EXIT_OK, Outcome
from harness.results.compare import cell_key
from harness.results.record import CellRecord
from harness.results.rundir import CellResult
from harness.scenario.expect import VersionRange, kernel_version, parse_version_range
from harness.scenario.spec import describe, suggest
from harness.yamlsrc import LocDict, LocList, where

DEFAULT_NAME = "kitl-expect.yaml"
TOP_KEYS = ("known_failures",)
ENTRY_KEYS = ("case", "kernel", "config", "outcome", "reason", "expires")
REQUIRED = ("case", "reason", "expires")
FAILING = tuple(o.value for o in Outcome if o not in (Outcome.PASSED, Outcome.SKIPPED))
Cell = CellRecord | CellResult  # a finished run's record, or a result as its cell ends


@dataclass(frozen=True)
class KnownEntry:
    case: str
    reason: str
    expires: datetime.date
    kernel: str | None = None  # as written
    kernel_range: VersionRange | None = None  # set when `kernel` is a range, else a glob
    config: str | None = None
    outcome: Outcome | None = None
    path: Path = Path(DEFAULT_NAME)
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def expired(self, today: datetime.date) -> bool:
        return today > self.expires  # "expires: 2027-03-01" still holds on March 1st

    def matches(self, cell: CellRecord) -> bool:
        """Whether the cell is one this entry is about, whatever its outcome."""
        if not fnmatch.fnmatchcase(f"{cell.scenario}::{cell.case}", self.case):
            return False
        if self.config is not None and not fnmatch.fnmatchcase(cell.config, self.config):
            return False
        if self.kernel_range is not None:
            try:
                return self.kernel_range.contains(kernel_version(cell.kernel_release))
            except ValueError:
                return False  # no readable release: cannot be shown to be in range
        return self.kernel is None or fnmatch.fnmatchcase(cell.kernel, self.kernel)

    def accepts(self, outcome: str) -> bool:
        if self.outcome is not None:
            return outcome == self.outcome.value
        return outcome in FAILING


@dataclass(frozen=True)
class KnownFailures:
    path: Path
    entries: tuple[KnownEntry, ...] = ()


# --- parsing ---------------------------------------------------------------------------------


def _string(d: LocDict, key: str, what: str) -> str:
    value = d[key]
    if isinstance(value, str) and value.strip():
        return value
    hint = "quote it" if isinstance(value, int | float) and not isinstance(value, bool) else None
    raise ConfigError(
        f"{key} must be a non-empty {what}, got {describe(value)}",
        hint=hint,
        **where(d, key, value=True),
    )


def _date(d: LocDict) -> datetime.date:
    value = d["expires"]
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # not a date: refused below with its position
            value = datetime.date.fromisoformat(value.strip())
    # datetime is a date subclass: a timestamp is refused rather than silently truncated.
    if isinstance(value, datetime.datetime):
        got = "a timestamp"
    elif isinstance(value, datetime.date):
        return value
    else:
        got = describe(value)
    raise ConfigError(
        f"expires must be a date like 2027-03-01, got {got}", **where(d, "expires", value=True)
    )


def _kernel(d: LocDict) -> tuple[str, VersionRange | None]:
    text = _string(d, "kernel", "version range or kernel name glob")
    if text.lstrip()[:1] not in tuple("<>=!0123456789"):
        return text, None
    try:
        return text, parse_version_range(text)
    except ValueError as exc:
        raise ConfigError(
            f"kernel: bad version range {text!r}: {exc}", **where(d, "kernel", value=True)
        ) from None


def _outcome(d: LocDict) -> Outcome:
    text = _string(d, "outcome", "outcome name")
    if text in FAILING:
        return Outcome(text)
    if text in (Outcome.PASSED.value, Outcome.SKIPPED.value):
        message = f"outcome {text} is not a failure"
        hint = "known failures name a failing outcome: " + ", ".join(FAILING)
    else:
        message, hint = f"unknown outcome {text!r}", suggest(text, FAILING, "outcomes")
    raise ConfigError(message, hint=hint, **where(d, "outcome", value=True))


def _entry(items: LocList, index: int) -> KnownEntry:
    d = items[index]
    if not isinstance(d, LocDict):
        raise ConfigError(
            f"a known failure must be a mapping, got {describe(d)}", **where(items, index)
        )
    for key in d:
        if key not in ENTRY_KEYS:
            hint = suggest(key, ENTRY_KEYS, "keys")
            raise ConfigError(f"unknown key {key!r}", hint=hint, **where(d, key))
    for key in REQUIRED:
        if key not in d:
            raise ConfigError(f"known failure is missing {key!r}", **where(d))
    case = _string(d, "case", "glob on scenario::case")
    if "::" not in case and not case.startswith("*"):
        raise ConfigError(
            f"case {case!r} can never match: cells are named scenario::case",
            hint=f"did you mean '*::{case}'?",
            **where(d, "case", value=True),
        )
    kernel, kernel_range = _kernel(d) if "kernel" in d else (None, None)
    return KnownEntry(
        case=case,
        reason=_string(d, "reason", "string"),
        expires=_date(d),
        kernel=kernel,
        kernel_range=kernel_range,
        config=_string(d, "config", "glob") if "config" in d else None,
        outcome=_outcome(d) if "outcome" in d else None,
        path=d.path,
        line=d.line,
    )


def _locate_bad_value(path: Path, text: str) -> ConfigError | None:
    """yamlsrc reports a scalar no Python value can hold (expires: 2027-13-01) without its
    position; find the first such scalar so the error can name file:line:column."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return None
    loader = yaml.SafeLoader("")
    stack: list[yaml.Node] = [root] if root is not None else []
    try:
        for _ in range(yamlsrc.MAX_NODES):  # bounded: aliases may make the graph cyclic
            if not stack:
                break
            node = stack.pop()
            if isinstance(node, yaml.ScalarNode):
                try:
                    loader.construct_object(node)
                except (ValueError, OverflowError) as exc:
                    what = "date" if node.tag.endswith(":timestamp") else "value"
                    mark = node.start_mark
                    return ConfigError(
                        f"invalid {what} {node.value!r}: {exc}",
                        path=path,
                        line=mark.line + 1,
                        column=mark.column + 1,
                    )
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(reversed(node.value))
            elif isinstance(node, yaml.MappingNode):
                stack.extend(n for pair in reversed(node.value) for n in reversed(pair))
    finally:
        loader.dispose()
    return None


def parse_known(path: Path, text: str) -> KnownFailures:
    """Parse the text of an expectation file, attributed to `path`."""
    try:
        doc = yamlsrc.load(path, text)
    except ConfigError as exc:
        located = _locate_bad_value(path, text) if exc.line is None else None
        raise (located or exc) from None
    if doc is None:
        return KnownFailures(path)
    if not isinstance(doc, LocDict):
        if isinstance(doc, LocList):
            pos = where(doc)
        else:  # a bare scalar carries no position: the composed node has it
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            line, column = (
                (node.start_mark.line + 1, node.start_mark.column + 1) if node else (1, 1)
            )
            pos = {"path": path, "line": line, "column": column}
        raise ConfigError(f"expected a mapping with known_failures, got {describe(doc)}", **pos)
    for key in doc:
        if key not in TOP_KEYS:
            hint = suggest(key, TOP_KEYS, "keys")
            raise ConfigError(f"unknown key {key!r}", hint=hint, **where(doc, key))
    items = doc.get("known_failures")
    if items is None:
        return KnownFailures(path)
    if not isinstance(items, LocList):
        raise ConfigError(
            f"known_failures must be a list, got {describe(items)}",
            **where(doc, "known_failures", value=True),
        )
    return KnownFailures(path, tuple(_entry(items, i) for i in range(len(items))))


def load_known(path: Path) -> KnownFailures:
    """Read and parse an expectation file (ConfigError with file:line:column on any error)."""
    return parse_known(path, yamlsrc.read_text(path))


# --- applying --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownCell:
    cell: str  # the cell key, as harness.results.compare names it
    outcome: str
    entry: KnownEntry


@dataclass(frozen=True)
class Fixed:
    entry: KnownEntry
    cells: tuple[str, ...]  # the matching cells, all passing now


@dataclass(frozen=True)
class KnownReport:
    known: tuple[KnownCell, ...] = ()
    unknown: tuple[str, ...] = ()  # failing cells no unexpired entry covers
    expired: tuple[KnownEntry, ...] = ()
    fixed: tuple[Fixed, ...] = ()
    unused: tuple[KnownEntry, ...] = ()

    @property
    def failed(self) -> bool:
        return bool(self.unknown or self.expired)

    def lines(self) -> list[str]:
        """One line per finding, the ones that fail the run first."""
        out = [f"expired on {e.expires.isoformat()}: {e.reason} ({e.where})" for e in self.expired]
        out += [
            f"known: {k.cell} {k.outcome}: {k.entry.reason} ({k.entry.where})" for k in self.known
        ]
        out += [
            f"fixed: consider removing entry at {f.entry.where} ({f.entry.case} passes on "
            f"{len(f.cells)} {'cell' if len(f.cells) == 1 else 'cells'})"
            for f in self.fixed
        ]
        out += [
            f"unused: entry at {e.where} ({e.case}) covers no failing cell" for e in self.unused
        ]
        return out


def _record(cell: Cell) -> CellRecord:
    return cell.record() if isinstance(cell, CellResult) else cell


def _failing(cell: CellRecord) -> bool:
    # Anything but PASSED or SKIPPED fails, including an outcome this harness does not know.
    return cell.outcome_text not in (Outcome.PASSED.value, Outcome.SKIPPED.value)


def apply_known(cells: Iterable[Cell], known: KnownFailures, today: datetime.date) -> KnownReport:
    """Which failures are known, which entries expired, were fixed or went unused (pure)."""
    rows = [_record(c) for c in cells]
    live = [e for e in known.entries if not e.expired(today)]
    covered: list[KnownCell] = []
    unknown: list[str] = []
    used: set[KnownEntry] = set()
    for cell in rows:
        if not _failing(cell):
            continue
        outcome = cell.outcome_text
        entry = next((e for e in live if e.matches(cell) and e.accepts(outcome)), None)
        if entry is None:
            unknown.append(str(cell_key(cell)))
            continue
        used.add(entry)
        covered.append(KnownCell(str(cell_key(cell)), outcome, entry))
    fixed: list[Fixed] = []
    unused: list[KnownEntry] = []
    for entry in live:
        if entry in used:
            continue
        matched = [c for c in rows if entry.matches(c)]
        passing = [str(cell_key(c)) for c in matched if c.outcome_text == Outcome.PASSED.value]
        # "Fixed" only when every matching cell that ran now passes; a cell failing with
        # another outcome than the entry names is still a failure, so the entry is unused.
        if passing and not any(_failing(c) for c in matched):
            fixed.append(Fixed(entry, tuple(passing)))
        else:
            unused.append(entry)
    expired = tuple(e for e in known.entries if e.expired(today))
    return KnownReport(tuple(covered), tuple(unknown), expired, tuple(fixed), tuple(unused))


def exit_status(cells: Iterable[Cell], report: KnownReport) -> int:
    """0 when every failing cell is known and no entry expired, else 1.  An empty run is a
    failure, as in harness.outcome.exit_code: a run that ran nothing must not look green."""
    rows = [_record(c) for c in cells]
    known = {k.cell for k in report.known}
    if not rows or report.expired:
        return EXIT_FAILED
    if any(_failing(c) and str(cell_key(c)) not in known for c in rows):
        return EXIT_FAILED
    return EXIT_OK
