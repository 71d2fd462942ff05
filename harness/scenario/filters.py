"""veristat's `-f` name filters, for `kitl verify --filter` (pure, but for reading @FILE).

A filter is `GLOB` (the object's file name or the program's name matches it), `FILE/PROG`
(both match; `FILE/` or `/PROG` leaves one side free), `!` in front to deny instead of
allow, or `@FILE` for a file of filters, one per line, `#` starting a comment.  A program
is verified when no deny filter matches it and, if any allow filter is given, one does:
veristat's rule (tools/testing/selftests/bpf/veristat.c, should_process_file_prog), with
shell globs (`*`, `?`, `[...]`) where veristat knows only `*`.  veristat's stat filters
(`insns>1000`) select rows of its output, not programs to load: kitl refuses them here
and `kitl compare` and the reports show the figures instead.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UsageError

_STAT_FILTER = re.compile(r"^[A-Za-z_|]+\s*(==|!=|<>|<=|>=|<|>)")


@dataclass(frozen=True)
class NameFilter:
    deny: bool
    any_glob: str | None = None  # no '/': the file's name or the program's
    file_glob: str | None = None
    prog_glob: str | None = None

    def matches(self, file_name: str, program: str) -> bool:
        if self.any_glob is not None:
            return _glob(file_name, self.any_glob) or _glob(program, self.any_glob)
        files = self.file_glob is None or _glob(file_name, self.file_glob)
        return files and (self.prog_glob is None or _glob(program, self.prog_glob))


def _glob(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


def parse_filter(text: str) -> tuple[NameFilter, ...]:
    """One --filter value: a filter, or `@FILE`'s filters (a UsageError names a bad one)."""
    if text.startswith("@"):
        return _from_file(Path(text[1:]))
    return (_one(text, "--filter"),)


def _one(text: str, where: str) -> NameFilter:
    spec = text.strip()
    deny = spec.startswith("!")
    spec = spec.removeprefix("!")
    if not spec:
        raise UsageError(f"{where} {text!r}: an empty filter")
    if _STAT_FILTER.match(spec):
        raise UsageError(
            f"{where} {text!r}: a stat filter; kitl verify selects programs by name before "
            "they load",
            hint="filter on figures in `kitl compare` or the report; here: GLOB or FILE/PROG",
        )
    if "/" not in spec:
        return NameFilter(deny, any_glob=spec)
    file_glob, _, prog_glob = spec.partition("/")
    return NameFilter(deny, file_glob=file_glob or None, prog_glob=prog_glob or None)


def _from_file(path: Path) -> tuple[NameFilter, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--filter @{path}: cannot read it ({exc})") from None
    return tuple(
        _one(line, f"{path}:{number}:")
        for number, line in enumerate(lines, 1)
        if line.strip() and not line.strip().startswith("#")
    )


def at_file_resolved(text: str) -> str:
    """`@FILE` with FILE made absolute, so the pytest process reads the same file."""
    return f"@{Path(text[1:]).resolve()}" if text.startswith("@") else text


def selected(filters: Iterable[NameFilter], file_name: str, program: str) -> bool:
    """veristat's rule: no deny filter matches, and an allow filter does if there is any."""
    given = list(filters)
    if any(f.deny and f.matches(file_name, program) for f in given):
        return False
    allow = [f for f in given if not f.deny]
    return not allow or any(f.matches(file_name, program) for f in allow)
