"""Two verifier logs of one program compared: the instruction streams aligned, where the
verdict or the explored paths first part, the statistics side by side, and the helpers and
kfuncs one log calls and the other does not.  Pure, no I/O: `kitl diff` prints it and the
HTML report draws it.

The logs come from different kernels, which print the same state in different words (5.10's
`inv1` and `ctx(id=0,off=0,imm=0)` are 6.x's `1` and `ctx()`).  States are compared in a
canonical form, and only on the registers both logs printed at an instruction, so a newer
kernel printing more is not a difference.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from harness.bpf.explain import Call, Explanation, explain_log
from harness.bpf.log_insns import SourceLine, Step, replay
from harness.bpf.verifier_log import VerifierStats

ALIGN_MAX = 20000  # steps of each log aligned row by row; a longer log's tail is cut
_ZERO_FIELDS = ("id", "off", "imm", "ref_obj_id")
_POINTER = re.compile(r"^(\w+)\((.*)\)$")
_OLD_SCALAR = re.compile(r"^invP?(-?\d+)$")


@dataclass(frozen=True)
class Row:
    """One line of the side-by-side view: a step of each log, or of one only."""

    a: Step | None
    b: Step | None
    source: SourceLine | None  # printed above the row when it changes


@dataclass(frozen=True)
class Divergence:
    """Where the two logs first part: `kind` is 'path' (the verifier went to different
    instructions), 'state' (same instruction, different values), 'verdict' (one log ends
    with a complaint where the other goes on or ends well) or 'length' (one log stops)."""

    kind: str
    row: int  # index into LogDiff.rows
    detail: str


@dataclass(frozen=True)
class StatDelta:
    name: str
    a: int | None
    b: int | None

    @property
    def delta(self) -> str:
        if self.a is None or self.b is None:
            return ""
        change = self.b - self.a
        percent = f" ({change / self.a:+.0%})" if self.a else ""
        return f"{change:+d}{percent}" if change else "="


@dataclass(frozen=True)
class LogDiff:
    a: Explanation
    b: Explanation
    rows: tuple[Row, ...]
    divergence: Divergence | None
    only_a: tuple[Call, ...]  # helpers and kfuncs only log A calls (or names unknown)
    only_b: tuple[Call, ...]
    cut: bool  # a log had more than ALIGN_MAX steps


def canonical(value: str) -> str:
    """A state value as every kernel would print it: no zero id/off/imm fields, 5.x's
    `inv` scalars as `scalar`, a pointer's constant offset as `off` (7.x prints it as
    `imm`, 6.x as `off`)."""
    if m := _OLD_SCALAR.match(value):
        return m.group(1)
    if value.startswith("inv("):
        value = "scalar(" + value[4:]
    m = _POINTER.match(value)
    if m is None:
        return value
    kind, fields = m.group(1), _fields(m.group(2))
    if kind != "scalar":
        offset = int(fields.pop("off", "0"), 0) + int(fields.pop("imm", "0"), 0)
        fields = {"off": str(offset), **fields} if offset else fields
    kept = [f"{k}={v}" for k, v in fields.items() if not (k in _ZERO_FIELDS and v == "0")]
    return f"{kind}({','.join(kept)})"


def _fields(text: str) -> dict[str, str]:
    """'off=14,r=0,var_off=(0x0; 0xff)' -> {'off': '14', 'r': '0', 'var_off': '(0x0; 0xff)'}."""
    fields: dict[str, str] = {}
    depth, start = 0, 0
    for i, char in enumerate(text + ","):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            name, _, field = text[start:i].partition("=")
            if name:
                fields[name] = field
            start = i + 1
    return fields


def state_difference(a: Mapping[str, str], b: Mapping[str, str]) -> str:
    """'R1: pkt(r=14) / pkt(r=0)' for the names both printed with different values."""
    parts = [
        f"{name}: {a[name]} / {b[name]}"
        for name in a
        if name in b and canonical(a[name]) != canonical(b[name])
    ]
    return "; ".join(parts)


def _key(step: Step) -> tuple[int, str]:
    return step.index, step.opcode


def align(a: tuple[Step, ...], b: tuple[Step, ...]) -> tuple[Row, ...]:
    """The two streams aligned by instruction: equal runs side by side, the rest one-sided."""
    keys_a, keys_b = [_key(s) for s in a], [_key(s) for s in b]
    matcher = difflib.SequenceMatcher(a=keys_a, b=keys_b, autojunk=False)
    rows: list[Row] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            rows += [
                Row(a[i], b[j], a[i].source or b[j].source)
                for i, j in zip(range(i1, i2), range(j1, j2), strict=True)
            ]
        else:
            rows += [Row(a[i], None, a[i].source) for i in range(i1, i2)]
            rows += [Row(None, b[j], b[j].source) for j in range(j1, j2)]
    return tuple(rows)


def _frames_difference(
    a: Mapping[int, Mapping[str, str]], b: Mapping[int, Mapping[str, str]]
) -> str:
    parts = []
    for frame in sorted(set(a) & set(b)):
        if difference := state_difference(a[frame], b[frame]):
            parts.append(f"frame {frame}: {difference}" if frame else difference)
    return "; ".join(parts)


def _stream_divergence(rows: tuple[Row, ...], a: Explanation, b: Explanation) -> Divergence | None:
    """The first row where the paths or the states part."""
    states_a, states_b = replay(a.trace.steps), replay(b.trace.steps)
    seen_a = seen_b = 0
    for number, row in enumerate(rows):
        known_a = next(states_a)[1] if row.a is not None else None
        known_b = next(states_b)[1] if row.b is not None else None
        seen_a += row.a is not None
        seen_b += row.b is not None
        if row.a is None or row.b is None:
            return _one_sided(number, row, a, b, ended=(seen_a, seen_b))
        assert known_a is not None
        assert known_b is not None
        if difference := _frames_difference(known_a, known_b):
            return Divergence(
                "state",
                number,
                f"reaching insn {row.a.index} ({row.a.text}), A / B knew {difference}",
            )
        after_a = row.a.state_after or (0, {})
        after_b = row.b.state_after or (0, {})
        if after_a[0] == after_b[0] and (difference := state_difference(after_a[1], after_b[1])):
            return Divergence(
                "state", number, f"after insn {row.a.index} ({row.a.text}): {difference}"
            )
    return None


def _one_sided(
    number: int, row: Row, a: Explanation, b: Explanation, ended: tuple[int, int]
) -> Divergence:
    """A row one log has and the other not: the other stopped there (its verdict), or
    the verifier took another path."""
    one = row.a or row.b
    assert one is not None
    side, other, other_side = ("A", b, "B") if row.a else ("B", a, "A")
    other_steps = other.trace.steps
    other_seen = ended[1] if row.a else ended[0]
    if other_seen == len(other_steps) and other.message and other_steps:
        last = other_steps[-1]
        return Divergence(
            "verdict",
            max(number - 1, 0),
            f"{other_side} stops at insn {last.index} ({last.text}): "
            f"{other.message.splitlines()[0]}; {side} goes on to insn {one.index}",
        )
    return Divergence("path", number, f"only {side} goes to insn {one.index} ({one.text}) here")


def _verdict_divergence(rows: tuple[Row, ...], a: Explanation, b: Explanation) -> Divergence | None:
    """The streams agree as far as both go: the verdicts or the lengths may still differ."""
    if (a.message is None) != (b.message is None) or (
        a.message and b.message and a.message.splitlines()[0] != b.message.splitlines()[0]
    ):
        said = "; ".join(
            f"{side}: {e.message.splitlines()[0] if e.message else 'no complaint'}"
            for side, e in (("A", a), ("B", b))
        )
        return Divergence("verdict", max(len(rows) - 1, 0), said)
    if len(a.trace.steps) != len(b.trace.steps):
        return Divergence("length", len(rows), "one log shows more instructions")
    return None


def diff_logs(a_text: str, b_text: str) -> LogDiff:
    a, b = explain_log(a_text), explain_log(b_text)
    steps_a, steps_b = a.trace.steps[:ALIGN_MAX], b.trace.steps[:ALIGN_MAX]
    rows = align(steps_a, steps_b)
    both = bool(steps_a) and bool(steps_b)  # a log without insns has no paths to compare
    divergence = _stream_divergence(rows, a, b) if both else None
    names_a = {c.name: c for c in (*a.calls, *a.unknown)}
    names_b = {c.name: c for c in (*b.calls, *b.unknown)}
    return LogDiff(
        a=a,
        b=b,
        rows=rows,
        divergence=divergence or _verdict_divergence(rows, a, b),
        only_a=tuple(c for n, c in names_a.items() if n not in names_b),
        only_b=tuple(c for n, c in names_b.items() if n not in names_a),
        cut=len(a.trace.steps) > ALIGN_MAX or len(b.trace.steps) > ALIGN_MAX,
    )


STAT_NAMES = (
    ("insns", "insns processed"),
    ("total_states", "states"),
    ("peak_states", "peak states"),
    ("max_states_per_insn", "max states per insn"),
    ("stack_depth_total", "stack depth"),
    ("duration_us", "verification time (us)"),
)


def stat_deltas(a: VerifierStats, b: VerifierStats) -> tuple[StatDelta, ...]:
    return tuple(StatDelta(label, getattr(a, name), getattr(b, name)) for name, label in STAT_NAMES)
