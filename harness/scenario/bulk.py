"""Expectations in bulk for `kitl verify`: the `kitl-verify.yaml` file.

    expect:
      - object: "xdp_*.bpf.o"      # optional: fnmatch glob on the object's file name ("*")
        program: "xdp_drop*"       # required: fnmatch glob on the program (function) name
        verdict: rejected          # accepted | rejected (default accepted)
        log:                       # optional: messages the verifier log has, in this order
          - "R1 offset is outside" #   a plain string is a substring
          - "/invalid access to (packet|map)/"   # /.../ is a Python regex (re.M)
        error_class: VERIFIER_REJECTED   # optional, needs verdict: rejected
        retval: XDP_PASS           # optional: test_run's return value, a number or a name of
                                   #   the program type's codes (resolved when judging)
        kernel: ">=5.17"           # optional: a kernel version range
        privilege: unprivileged    # privileged | bpf | bpf-net | unprivileged | any (default)
        reason: "why"              # optional: quoted when the expectation fails
        maps: {counts: {max_entries: 1024}}   # optional: sizes its loader sets before the load
        attach_target: vfs_read    # optional: the target its loader gives a tracing program
        flags: [BPF_F_SLEEPABLE]   # optional: load flags, with the command line's
        log_level: 2               # optional: instead of --log-level

Entries are tried in file order and the FIRST whose object, program, kernel and privilege
match applies, so a specific entry must come before a broad one (an entry that an earlier one
hides completely is an error).  A program no entry matches is expected to load.  Globs are
case-sensitive.  Load settings (maps, attach_target, flags, log_level) come from the first
entry that matches a program, whatever its kernel range, and apply on every kernel.  Every
problem of the file is collected; `VerifyExpectError` names the first at file:line:column and
carries all of them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Literal

import yaml

from harness import yamlsrc
from harness.bpf import progtypes, retcodes
from harness.scenario.expect import (
    ATTACH_TARGET,
    ERROR_CLASSES,
    MAP_SIZES,
    PRIVILEGES,
    VersionRange,
    kernel_version,
    parse_version_range,
    usable,
)
from harness.scenario.loader import ScenarioError
from harness.scenario.shape import LOG_LEVEL_MASK
from harness.scenario.spec import Either, Int, Reader, Seq, Str, describe, obj, suggest
from harness.yamlsrc import LocDict, LocList, Pos, where

DEFAULT_NAME = "kitl-verify.yaml"
TOP_KEYS = ("expect",)
MAX_ENTRIES = 100_000
VerdictName = Literal["accepted", "rejected"]
Privilege = Literal["privileged", "bpf", "bpf-net", "unprivileged", "any"]

ENTRY = obj(
    {
        "object": Str(doc="fnmatch glob on the object's file name (default *)"),
        "program": Str(doc="fnmatch glob on the program (function) name"),
        "verdict": Str(choices=("accepted", "rejected")),
        "log": Seq(Str(), 1, 64, single_ok=True, doc="substrings or /regexes/, in order"),
        "error_class": Str(choices=ERROR_CLASSES),
        "retval": Either((Int(retcodes.S32_MIN, retcodes.U32_MAX), Str())),
        "kernel": Str(doc='a kernel version range, e.g. ">=5.17"'),
        "privilege": Str(choices=(*PRIVILEGES, "any")),
        "reason": Str(),
        "maps": MAP_SIZES,
        "attach_target": ATTACH_TARGET,
        "flags": Seq(Str(choices=tuple(progtypes.PROG_LOAD_FLAGS)), max_items=16),
        "log_level": Int(0, LOG_LEVEL_MASK),
    },
    required=("program",),
)


class VerifyExpectError(ScenarioError):
    """The first problem of an expectation file (as str()), with all of them in `errors`."""


@dataclass(frozen=True)
class LogMessage:
    """A message of `log:`: a substring, or a regex when written as /.../."""

    text: str  # as written
    regex: re.Pattern[str] | None = None

    @classmethod
    def parse(cls, text: str) -> LogMessage:
        """Raises re.error for a bad regex."""
        if len(text) > 2 and text.startswith("/") and text.endswith("/"):
            return cls(text, re.compile(text[1:-1], re.M))
        return cls(text)

    def search(self, log: str, pos: int) -> int | None:
        """The end of the first occurrence at or after `pos`, or None."""
        if self.regex is not None:
            m = self.regex.search(log, pos)
            return m.end() if m else None
        found = log.find(self.text, pos)
        return None if found < 0 else found + len(self.text)

    def __str__(self) -> str:
        return self.text if self.regex is not None else repr(self.text)


@dataclass(frozen=True)
class Entry:
    program_glob: str
    object_glob: str = "*"
    verdict: VerdictName = "accepted"
    log: tuple[LogMessage, ...] = ()
    error_class: str | None = None
    retval: int | str | None = None  # as written; resolved for the program's type in judge()
    kernel: VersionRange | None = None
    privilege: Privilege = "any"
    reason: str = ""
    # load settings, as the program's own loader sets them (every kernel alike)
    maps: tuple[tuple[str, int | None, int | None], ...] = ()
    attach_target: str | None = None
    flags: tuple[str, ...] = ()  # OR'ed into the command line's --flags
    log_level: int | None = None  # instead of --log-level
    path: Path = Path(DEFAULT_NAME)
    line: int = 0
    # Compiled once: find() runs for every (object, program, kernel, privilege) of a run.
    program_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    object_re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "program_re", re.compile(fnmatch.translate(self.program_glob)))
        object.__setattr__(self, "object_re", re.compile(fnmatch.translate(self.object_glob)))

    @property
    def sets_load(self) -> bool:
        """Whether the entry says how its programs load, not only what they should do."""
        return bool(self.maps or self.attach_target or self.flags or self.log_level is not None)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def matches(
        self,
        object_name: str,
        program: str,
        version: tuple[int, int, int] | None,
        privilege: str,
    ) -> bool:
        if not self.program_re.match(program) or not self.object_re.match(
            PurePath(object_name).name
        ):
            return False
        if self.privilege not in ("any", privilege):
            return False
        # An unreadable release cannot be shown to be in range.
        return self.kernel is None or (version is not None and self.kernel.contains(version))

    def hides(self, later: Entry) -> bool:
        """Whether this entry matches every cell `later` matches (so `later` never applies)."""
        return (
            self.privilege in ("any", later.privilege)
            and (
                self.kernel is None
                or (later.kernel is not None and self.kernel.clauses == later.kernel.clauses)
            )
            and _covers(self.program_glob, self.program_re, later.program_glob)
            and _covers(self.object_glob, self.object_re, later.object_glob)
        )


def _covers(broad: str, broad_re: re.Pattern[str], narrow: str) -> bool:
    # With only "*" wildcards on both sides, `broad` matching the text of `narrow` means it
    # matches every name `narrow` does; "?" and "[...]" are too subtle to decide, so only
    # equality counts then.
    if broad in ("*", narrow):
        return True
    if "?" in broad or "[" in broad or "?" in narrow or "[" in narrow:
        return False
    return broad_re.match(narrow) is not None


@dataclass(frozen=True)
class Expectations:
    path: Path
    entries: tuple[Entry, ...] = ()

    def find(
        self, object_name: str, program: str, kernel_release: str, privilege: str
    ) -> Entry | None:
        """The first entry that matches (object_name may be a path: its file name is matched);
        None means no expectation: the program is expected to load."""
        try:
            version: tuple[int, int, int] | None = kernel_version(kernel_release)
        except ValueError:
            version = None
        for entry in self.entries:
            if entry.matches(object_name, program, version, privilege):
                return entry
        return None


# --- parsing ---------------------------------------------------------------------------------


def _glob(rd: Reader, d: LocDict, key: str, what: str) -> str:
    value = str(d.get(key, "*"))
    if not value.strip():
        rd.error(f"{what}.{key}: empty glob", where(d, key, value=True), 'use "*" to match all')
    elif key == "object" and "/" in value:
        msg = f"{what}.object: {value[:60]!r} can never match: it is matched on the file name"
        rd.error(msg, where(d, key, value=True), f"did you mean {PurePath(value).name!r}?")
    return value


def _log(rd: Reader, d: LocDict, what: str) -> tuple[LogMessage, ...]:
    items = d.get("log", ())
    texts: list[str] = [items] if isinstance(items, str) else list(items)
    out = []
    for i, text in enumerate(texts):
        at = where(items, i) if isinstance(items, LocList) else where(d, "log", value=True)
        name = f"{what}.log[{i}]" if isinstance(items, LocList) else f"{what}.log"
        if not text.strip():
            rd.error(f"{name}: empty message", at, "an empty message would match any log")
            continue
        try:
            out.append(LogMessage.parse(text))
        except (re.error, RecursionError, OverflowError) as exc:
            rd.error(f"{name}: bad regular expression {text[:60]!r}: {exc}", at)
    return tuple(out)


def _entry(rd: Reader, items: LocList, index: int) -> Entry | None:
    what, errors = f"expect[{index}]", len(rd.errors)
    raw = items[index]
    if not rd.validate(raw, ENTRY, what, where(items, index)) and not isinstance(raw, LocDict):
        return None
    d = usable(raw, ENTRY)  # the keys of a good shape, so their own checks still run
    program, object_glob = _glob(rd, d, "program", what), _glob(rd, d, "object", what)
    log = _log(rd, d, what)
    kernel = None
    if "kernel" in d:
        try:
            kernel = parse_version_range(d["kernel"])
        except ValueError as exc:
            msg = f"{what}.kernel: bad version range: {exc}"
            rd.error(msg, where(d, "kernel", value=True), 'e.g. ">=5.17" or ">=5.10,<6.1"')
    verdict = d.get("verdict", "accepted")
    # A bad verdict is reported already; guessing "accepted" would add a false second error.
    if "error_class" in d and verdict == "accepted" and ("verdict" in d or "verdict" not in raw):
        hint = "add verdict: rejected, or drop error_class"
        msg = f"{what}.error_class: an error class needs verdict: rejected"
        rd.error(msg, where(d, "error_class"), hint)
    retval = d.get("retval")
    if isinstance(retval, str) and not retval.strip():
        rd.error(f"{what}.retval: empty return value", where(d, "retval", value=True))
    if retval is not None and verdict == "rejected":
        hint = "drop retval, or expect verdict: accepted"
        rd.error(f"{what}.retval: a rejected program never runs", where(d, "retval"), hint)
    if len(rd.errors) > errors:
        return None
    return Entry(
        program_glob=program,
        object_glob=object_glob,
        verdict=verdict,
        log=log,
        error_class=d.get("error_class"),
        retval=retval,
        kernel=kernel,
        privilege=d.get("privilege", "any"),
        reason=d.get("reason", ""),
        maps=tuple(
            (name, size.get("max_entries"), size.get("value_size"))
            for name, size in (d.get("maps") or {}).items()
        ),
        attach_target=d.get("attach_target"),
        flags=tuple(d.get("flags") or ()),
        log_level=d.get("log_level"),
        path=raw.path,
        line=raw.line,
    )


def _entries(rd: Reader, doc: object, text: str) -> list[Entry]:
    if doc is None:
        return []
    if not isinstance(doc, LocDict):
        at = where(doc) if isinstance(doc, LocList) else _scalar_pos(rd.path, text)
        rd.error(f"expected a mapping with expect:, got {describe(doc)}", at)
        return []
    for key in doc:
        if key not in TOP_KEYS:
            rd.error(f"unknown key {key!r}", where(doc, key), suggest(key, TOP_KEYS, "keys"))
    items = doc.get("expect")
    if items is None:
        return []
    if not isinstance(items, LocList):
        hint = "a list of entries, each starting with - program: GLOB"
        rd.error(f"expect: expected a list, got {describe(items)}", where(doc, "expect"), hint)
        return []
    if len(items) > MAX_ENTRIES:
        rd.error(f"expect: more than {MAX_ENTRIES} entries", where(doc, "expect"))
        return []
    parsed = [(i, e) for i in range(len(items)) if (e := _entry(rd, items, i)) is not None]
    for j, (index, later) in enumerate(parsed):
        earlier = next((e for _, e in parsed[:j] if e.hides(later)), None)
        if earlier is not None:
            rd.error(
                f"expect[{index}]: never applies: the entry on line {earlier.line} "
                f"(program {earlier.program_glob!r}) comes first and matches all it does",
                where(items, index),
                "entries are tried in order: put the specific entry before the broad one",
            )
    return [e for _, e in parsed]


def _scalar_pos(path: Path, text: str) -> Pos:
    # yamlsrc gives scalars no position; the composed node has it.
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    assert node is not None  # the document is a scalar, not empty
    mark = node.start_mark
    return {"path": path, "line": mark.line + 1, "column": mark.column + 1}


def parse_expectations(path: Path, text: str) -> Expectations:
    """Parse the text of an expectation file, attributed to `path`; VerifyExpectError (a
    ConfigError) names the first problem and carries all in `.errors`."""
    doc = yamlsrc.load(path, text)
    rd = Reader(path)
    entries = _entries(rd, doc, text)
    if rd.errors:
        raise VerifyExpectError(rd.errors)
    return Expectations(path, tuple(entries))


def load_expectations(path: Path) -> Expectations:
    """Read and parse an expectation file (ConfigError with file:line:column on any error)."""
    return parse_expectations(path, yamlsrc.read_text(path))


# --- judging ---------------------------------------------------------------------------------


def log_in_order(patterns: Sequence[LogMessage | str], log: str) -> tuple[int | None, int]:
    """(index of the first pattern not found after the previous one's match, or None when all
    are found; the offset where the search stopped: the end of the last match).  Plain strings
    are read as in the file: /.../ is a regex."""
    pos = 0
    for index, pattern in enumerate(patterns):
        message = LogMessage.parse(pattern) if isinstance(pattern, str) else pattern
        end = message.search(log, pos)
        if end is None:
            return index, pos
        pos = end
    return None, pos
