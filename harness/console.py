"""Pure reading of a guest's console log: readiness, and kernel crash splats.

The console is the only witness when a guest dies, so crash detection reads it rather
than the (possibly dead) SSH channel.  A splat is reported with a fingerprint built from
its first BUG/Oops/panic line and the function names of its call trace, so the same crash
on two runs compares equal even though addresses differ.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

READY = re.compile(r"^KITL-READY (\S+)", re.M)
FAILED = re.compile(r"^KITL-FAILED (.*)$", re.M)

_SPLAT_START = re.compile(
    r"(Kernel panic - not syncing|BUG: |Oops: |general protection fault|"
    r"kernel BUG at|WARNING: CPU: \d+ PID: \d+ at|Unable to handle kernel)"
)
_FATAL = re.compile(r"Kernel panic - not syncing")
_TRACE_FN = re.compile(
    r"^\s*(?:\[\s*\d+\.\d+\]\s*)?\s*(?:\? )?([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+"
)
_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")
_END = re.compile(r"(---\[ end (trace|Kernel panic)|end trace)")


@dataclass(frozen=True)
class Splat:
    title: str  # first BUG/Oops/WARNING/panic line, timestamps stripped
    functions: tuple[str, ...]  # call trace function names, innermost first
    text: str  # the splat as printed
    fatal: bool  # the kernel panicked (the guest is gone)

    @property
    def fingerprint(self) -> str:
        basis = self.title + "|" + ",".join(self.functions[:8])
        return hashlib.sha256(basis.encode()).hexdigest()[:12]


def ready_release(console: str) -> str | None:
    m = READY.search(console)
    return m.group(1) if m else None


def init_failure(console: str) -> str | None:
    m = FAILED.search(console)
    return m.group(1).strip() if m else None


def find_splats(console: str, max_lines: int = 80) -> list[Splat]:
    """Every crash or warning splat in a console log, in order."""
    lines = console.splitlines()
    splats: list[Splat] = []
    i = 0
    while i < len(lines):
        m = _SPLAT_START.search(lines[i])
        if not m:
            i += 1
            continue
        start = i
        end = min(len(lines), start + max_lines)
        fatal = bool(_FATAL.search(lines[i]))
        j = start + 1
        while j < end:
            if _END.search(lines[j]):
                fatal = fatal or "Kernel panic" in lines[j]
                j += 1
                break
            if j > start + 3 and _SPLAT_START.search(lines[j]) and not _FATAL.search(lines[j]):
                break  # the next, separate splat
            if _FATAL.search(lines[j]):
                fatal = True
            j += 1
        block = lines[start:j]
        functions = tuple(
            fm.group(1) for line in block if (fm := _TRACE_FN.match(_TIMESTAMP.sub("", line)))
        )
        title = _TIMESTAMP.sub("", lines[start]).strip()
        splats.append(Splat(title, functions, "\n".join(block), fatal))
        i = j
    return splats


def first_crash(console: str) -> Splat | None:
    """The splat that explains a dead guest: the first fatal one, else the first one."""
    splats = find_splats(console)
    for s in splats:
        if s.fatal:
            return s
    return splats[0] if splats else None
