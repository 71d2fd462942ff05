"""Pure reading of a guest's console log: readiness, kernel crash splats, OOM kills.

The console is the only witness when a guest dies, so crash detection reads it rather
than the (possibly dead) SSH channel.  A splat is reported with a fingerprint built from
its first BUG/Oops/panic line and the function names of its call trace, so the same crash
on two runs (or two kernels) compares equal even though times, addresses and offsets
differ.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

READY = re.compile(r"^KITL-READY (\S+)", re.M)
FAILED = re.compile(r"^KITL-FAILED (.*)$", re.M)

_SPLAT_START = re.compile(
    r"(Kernel panic - not syncing|BUG: |Oops: |general protection fault|"
    r"kernel BUG at|WARNING: CPU: \d+ PID: \d+ at|Unable to handle kernel)"
)
_FATAL = re.compile(r"Kernel panic - not syncing")
_WARNING = re.compile(r"^WARNING: ")
# "[ 12.3]  ? foo+0x1/0x2 [mod]": "? " marks a frame the unwinder only guessed
_TRACE_FN = re.compile(r"^\s*(\?\s+)?([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+")
_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")
_END = re.compile(r"(---\[ end (trace|Kernel panic)|end trace)")
# An Oops line this close below a BUG line, before any call trace, is the same report.
_HEADER_LINES = 8
# A panic that prints no trace of its own this close after a report ("Fatal exception")
# is that report's panic: the registers are printed again between the two.
_PANIC_AFTER = 30
# Frames that print the report rather than cause it: left out of the fingerprint, so it
# names the crash site, the same on kernels whose panic() is split differently.
_REPORTING = frozenset(
    {
        "dump_stack",
        "dump_stack_lvl",
        "show_stack",
        "panic",
        "vpanic",
        "nmi_panic",
        "__warn",
        "warn_slowpath_fmt",
        "report_bug",
        "handle_bug",
        "exc_invalid_op",
        "asm_exc_invalid_op",
        "die",
        "oops_end",
        "__die",
        "__die_body",
    }
)
_FINGERPRINT_FRAMES = 8
_TITLE_NOISE = (
    (re.compile(r"\+0x[0-9a-f]+/0x[0-9a-f]+"), ""),  # function offsets
    (re.compile(r"\b(CPU|PID|UID): \d+"), r"\1: N"),
    (re.compile(r"\[#\d+\]"), "[#N]"),
    (re.compile(r"\b(0x)?[0-9a-f]{8,}\b"), "X"),  # addresses
)
_OOM_KILL = re.compile(r"(Memory cgroup out of memory|Out of memory): Killed process \d+ \([^)]*\)")


@dataclass(frozen=True)
class Splat:
    title: str  # first BUG/Oops/WARNING/panic line, timestamps stripped
    functions: tuple[str, ...]  # reliable call trace frames, innermost first (no "? " ones)
    text: str  # the splat as printed
    fatal: bool  # the kernel panicked (the guest is gone)

    @property
    def severe(self) -> bool:
        """A BUG, Oops or panic, after which the kernel cannot be trusted (not a WARNING)."""
        return self.fatal or not _WARNING.match(self.title)

    @property
    def site(self) -> tuple[str, ...]:
        """The frames that locate the crash: the trace without the reporting frames on
        top, and without compiler suffixes (`.cold`, `.isra.0`) that differ by build."""
        frames = [f.split(".", 1)[0] for f in self.functions]
        while frames and frames[0] in _REPORTING:
            frames.pop(0)
        return tuple(frames[:_FINGERPRINT_FRAMES])

    @property
    def signature(self) -> str:
        """What the fingerprint hashes, readable: `title | inner < caller < ...`."""
        return f"{_normal_title(self.title)} | {' < '.join(self.site)}"

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.signature.encode()).hexdigest()[:12]


def ready_release(console: str) -> str | None:
    m = READY.search(console)
    return m.group(1) if m else None


def init_failure(console: str) -> str | None:
    m = FAILED.search(console)
    return m.group(1).strip() if m else None


def find_splats(console: str, max_lines: int = 120) -> list[Splat]:
    """Every crash or warning splat in a console log, in order.  An Oops below its BUG
    line is one splat; a panic that follows an oops ("Fatal exception") makes that oops
    fatal instead of standing alone without a trace."""
    raw = console.splitlines()
    lines = [_TIMESTAMP.sub("", line) for line in raw]
    splats: list[Splat] = []
    spans: list[tuple[int, int]] = []  # each splat's first line and the line after it
    i = 0
    while i < len(lines):
        if not _SPLAT_START.search(lines[i]):
            i += 1
            continue
        start, fatal, in_trace = i, bool(_FATAL.search(lines[i])), False
        j = start + 1
        while j < min(len(lines), start + max_lines):
            line = lines[j]
            if _END.search(line):
                fatal = fatal or "Kernel panic" in line
                j += 1
                break
            in_trace = in_trace or "Call Trace:" in line
            if _FATAL.search(line):
                fatal = True
            elif _SPLAT_START.search(line) and (in_trace or j > start + _HEADER_LINES):
                break  # the next, separate splat
            j += 1
        block = lines[start:j]
        functions = tuple(
            m.group(2) for line in block if (m := _TRACE_FN.match(line)) and not m.group(1)
        )
        splat = Splat(lines[start].strip(), functions, "\n".join(raw[start:j]), fatal)
        if (
            fatal
            and not functions
            and splats
            and start - spans[-1][1] <= _PANIC_AFTER
            and (_FATAL.search(lines[start]) or _same_title(splat, splats[-1]))
        ):
            first = spans[-1][0]
            splats[-1] = replace(splats[-1], fatal=True, text="\n".join(raw[first:j]))
            spans[-1] = (first, j)
        else:
            splats.append(splat)
            spans.append((start, j))
        i = j
    return splats


def _same_title(later: Splat, earlier: Splat) -> bool:
    """Whether `later` repeats `earlier` on another CPU (`Oops: int3 [#2]` after `[#1]`,
    without its own trace): then the earlier one, with the trace, explains the panic."""
    return _normal_title(later.title) == _normal_title(earlier.title)


def _normal_title(title: str) -> str:
    for pattern, repl in _TITLE_NOISE:
        title = pattern.sub(repl, title)
    return title.strip()


def first_crash(console: str) -> Splat | None:
    """The splat that explains a dead guest: the first fatal one, else the first severe
    one (BUG, Oops), else the first one."""
    splats = find_splats(console)
    for wanted in (lambda s: s.fatal, lambda s: s.severe, lambda s: True):
        for s in splats:
            if wanted(s):
                return s
    return None


def oom_kills(console: str) -> list[str]:
    """The kernel's "Out of memory: Killed process PID (COMM)" lines, in order."""
    return [m.group(0) for m in _OOM_KILL.finditer(console)]
