"""The instruction stream of a verifier log (level 1 or 2): pure parsing, no I/O.

A level-1 log is a trace, not a listing: the verifier prints each instruction as it walks
one path, then the next path from the branch it left pending ("from 5 to 10: ..."), so an
instruction appears once per path that reached it.  Around the instructions it prints:

- the C source line of the instruction that follows, from the object's BTF line info:
  ``; if (data + 4 > end) @ prog.c:16`` (before 6.x without `` @ file:line``);
- register and stack state: after an instruction on the same line (6.x+, the registers it
  touched: ``5: (2d) if r3 > r2 goto pc+4 ; R2=pkt_end() R3=pkt(r=14)``), as a whole line
  (``6: R1=ctx() R10=fp0``, ``6: frame1: R1=...``), at the start of a path (``from 5 to
  10: R1=...``) or indented on the line after a branch (5.x);
- the complaint and the statistics at the end (harness.bpf.verifier_log reads those).

`parse_trace` keeps each instruction as a `Step` with the source line and the state lines
the log printed with it; `Trace.state_before` replays them into what the verifier knew of
each register and stack slot when it reached an instruction.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

# "6: (71) r1 = *(u8 *)(r1 +40)", optionally followed by "   ; R1=..." (the insn's text
# never holds a ';').  libbpf's rewrite of a poisoned insn: "1: <invalid CO-RE relocation>".
_INSN = re.compile(r"^(\d+): (?:\(([0-9a-f]{2})\) ([^;]*?)|(<invalid [^>]*>))(?:\s+; (.*))?$")
_STATE_LINE = re.compile(r"^(\d+): ((?:frame\d+: )?R\d+.*)$")
_PATH_START = re.compile(r"^from (\d+) to (\d+)(?: \([^)]*\))?: (.*)$")
_INDENTED_STATE = re.compile(r"^\s+((?:frame\d+: )?(?:R\d+|fp-?\d+)\S*=.*)$")
# a taken branch's target state printed on the jump's own line, no newline between:
# "3: (55) if r1 != 0x0 goto pc-2 2: R10=fp0 fp-8=mmmmpppp"
_GLUED_STATE = re.compile(r"^(.*?) (\d+: (?:frame\d+: )?R\d+\S*=.*)$")
_CALL_DUMP = re.compile(r"^(?:caller|callee):$")
# "; if (x) @ prog.c:16" (6.x+), "; if (x)" before
_SOURCE = re.compile(r"^; (.*?)(?: @ (\S+):(\d+))?$")
_FRAME = re.compile(r"^frame(\d+): ")
# the liveness and precision marks on a name: R1_w, fp-8_rw, R0_D
_MARKS = re.compile(r"^(R\d+|fp-?\d+)_[a-zA-Z]+$")
# "call bpf_map_lookup_elem#1", "call bpf_obj_new_impl#54321", "call unknown#158"
_CALL = re.compile(r"^call ([A-Za-z_]\w*)#(\d+)$")

State = Mapping[str, str]


@dataclass(frozen=True)
class SourceLine:
    text: str
    file: str = ""
    line: int | None = None

    @property
    def where(self) -> str:
        """'prog.c:16', or '' on a kernel that does not print it."""
        return f"{self.file}:{self.line}" if self.file else ""

    def __str__(self) -> str:
        return f"{self.text}  @ {self.where}" if self.where else self.text


@dataclass(frozen=True)
class Step:
    """One instruction as the verifier printed it on one path."""

    index: int  # the instruction's index in the program
    text: str  # "r1 = *(u8 *)(r1 +40)", or libbpf's "<invalid CO-RE relocation>"
    opcode: str  # "71" ("" for libbpf's rewrite)
    line: int  # where in the log, 0-based
    path: int  # 0 for the first path, +1 at each "from X to Y"
    source: SourceLine | None = None  # the line-info annotation printed for this insn
    # the state lines printed with it, in log order: (frame, {name: value}) and whether the
    # line was a whole state (replacing what was known) or the insn's own touched registers
    states_before: tuple[tuple[int, State, bool], ...] = field(default=(), repr=False)
    state_after: tuple[int, State] | None = field(default=None, repr=False)

    @property
    def call(self) -> tuple[str, int] | None:
        """(name, id) of a helper or kfunc call: ('bpf_map_lookup_elem', 1)."""
        m = _CALL.match(self.text.strip())
        return (m.group(1), int(m.group(2))) if m else None


@dataclass(frozen=True)
class Trace:
    steps: tuple[Step, ...]
    paths: int  # paths the log shows the verifier walking (1 + "from X to Y" lines)
    pruned: int  # paths cut short as equivalent to one already verified ("... : safe")
    sources: Mapping[int, SourceLine] = field(default_factory=dict)  # first insn of a line

    def source_of(self, index: int) -> SourceLine | None:
        """The C line an instruction belongs to: the annotation at the nearest instruction
        at or before it (line info covers ranges of instructions)."""
        starts = [i for i in self.sources if i <= index]
        return self.sources[max(starts)] if starts else None

    def last_before(self, line: int) -> Step | None:
        """The last instruction printed before a line of the log (the failing one, for
        the line of the complaint)."""
        found = None
        for step in self.steps:
            if step.line >= line:
                break
            found = step
        return found

    def state_before(self, position: int) -> dict[int, dict[str, str]]:
        """What the log says the verifier knew, per frame, when it reached the step at
        ``position`` of ``steps`` (see `replay`; only its path counts, so that is where
        the replay starts)."""
        start = position
        while start > 0 and self.steps[start - 1].path == self.steps[position].path:
            start -= 1
        last: dict[int, dict[str, str]] = {}
        for _, known in replay(self.steps[start : position + 1]):
            last = known  # the running dict: what it holds at the last step is the answer
        return {frame: dict(values) for frame, values in last.items()}

    def calls(self) -> dict[str, int]:
        """Every helper or kfunc the log shows called, with its id, in order of first call."""
        found: dict[str, int] = {}
        for step in self.steps:
            if (call := step.call) is not None:
                found.setdefault(call[0], call[1])
        return found


def replay(steps: tuple[Step, ...]) -> Iterator[tuple[Step, dict[int, dict[str, str]]]]:
    """Each step with the state the log had printed for it so far, per frame: a new path
    starts afresh (another path's values say nothing of it), a whole state line replaces
    its frame's values, an insn's touched registers update them.  The dict yielded is the
    running one: copy it to keep it."""
    frames: dict[int, dict[str, str]] = {}
    path = None
    for step in steps:
        if step.path != path:
            frames.clear()
            path = step.path
        for frame, values, whole in step.states_before:
            target = frames.setdefault(frame, {})
            if whole:
                target.clear()
            target.update(values)
        yield step, frames
        if step.state_after is not None:
            frame, values = step.state_after
            frames.setdefault(frame, {}).update(values)


def split_state(text: str) -> tuple[int, dict[str, str]]:
    """'frame1: R1_w=scalar(smin=0,var_off=(0x0; 0xff)) R10=fp0 fp-8=mmmm????' ->
    (1, {'R1': 'scalar(...)', 'R10': 'fp0', 'fp-8': 'mmmm????'}): names without their
    liveness marks, values kept whole (they hold spaces inside parentheses)."""
    frame = 0
    if m := _FRAME.match(text):
        frame, text = int(m.group(1)), text[m.end() :]
    values: dict[str, str] = {}
    for token in _tokens(text):
        name, sep, value = token.partition("=")
        if not sep:
            continue
        if m := _MARKS.match(name):
            name = m.group(1)
        values[name] = value
    return frame, values


def _tokens(text: str) -> Iterator[str]:
    """Space-separated tokens, a space inside parentheses not separating."""
    if "; " not in text:  # the one space inside a value: var_off=(0x0; 0xff)
        yield from text.split()
        return
    depth, start = 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        elif char == " " and depth == 0:
            if i > start:
                yield text[start:i]
            start = i + 1
    if start < len(text):
        yield text[start:]


def format_state(values: Mapping[str, str]) -> str:
    """'R0=1 R1=ctx() R10=fp0 fp-8=mmmm????'."""
    return " ".join(state_items(values))


def state_items(values: Mapping[str, str]) -> list[str]:
    """'NAME=VALUE' of registers in order, then of stack slots from the frame pointer down."""

    def order(name: str) -> tuple[int, int, str]:
        if name.startswith("R") and name[1:].isdigit():
            return 0, int(name[1:]), name
        if name.startswith("fp-") and name[3:].isdigit():
            return 1, int(name[3:]), name
        return 2, 0, name

    return [f"{k}={values[k]}" for k in sorted(values, key=order)]


class _Builder:
    """The running parse: the annotations and state lines waiting for their insn."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.first_at: dict[SourceLine, int] = {}  # each line's lowest insn seen
        self.pending_source: SourceLine | None = None
        self.pending_states: list[tuple[int, State, bool]] = []
        self.path = 0
        self.pruned = 0
        self.call_dump = False  # inside "caller:"/"callee:" (bpf2bpf call) state dumps

    def insn(self, m: re.Match[str], number: int) -> None:
        index = int(m.group(1))
        after = split_state(m.group(5)) if m.group(5) else None
        source = self.pending_source
        if source is not None and index < self.first_at.get(source, index + 1):
            self.first_at[source] = index
        text = (m.group(3) or m.group(4) or "").rstrip()
        glued = _GLUED_STATE.match(text)
        if glued:
            text = glued.group(1)
        self.steps.append(
            Step(
                index=index,
                text=text,
                opcode=m.group(2) or "",
                line=number,
                path=self.path,
                source=source,
                states_before=tuple(self.pending_states),
                state_after=after,
            )
        )
        self.pending_source, self.pending_states = None, []
        if glued and (state := _STATE_LINE.match(glued.group(2))):
            self.state(state.group(2), whole=True)

    @property
    def sources(self) -> dict[int, SourceLine]:
        return {index: source for source, index in self.first_at.items()}

    def state(self, text: str, whole: bool) -> None:
        frame, values = split_state(text)
        self.pending_states.append((frame, values, whole))

    def branch_state(self, text: str) -> None:
        """5.x's indented line after a conditional jump: the state going on."""
        if not self.steps:
            return
        frame, values = split_state(text)
        last = self.steps[-1]
        merged = dict(last.state_after[1]) if last.state_after else {}
        merged.update(values)
        self.steps[-1] = Step(**{**last.__dict__, "state_after": (frame, merged)})


def parse_trace(text: str) -> Trace:
    """The instructions of a verifier log, with their source lines and states."""
    b = _Builder()
    for number, line in enumerate(text.splitlines()):
        dump, b.call_dump = b.call_dump, False
        if _CALL_DUMP.match(line):
            b.call_dump = True
        elif dump and (m := _INDENTED_STATE.match(line)):
            b.state(m.group(1), whole=False)  # the frames at a call: known on, not replaced
            b.call_dump = True
        elif m := _INSN.match(line):
            b.insn(m, number)
        elif m := _STATE_LINE.match(line):
            b.state(m.group(2), whole=True)
        elif m := _PATH_START.match(line):
            b.path += 1
            if m.group(3).strip() == "safe":
                b.pruned += 1
            else:
                b.state(m.group(3), whole=True)
        elif m := _SOURCE.match(line):
            number_text = m.group(3)
            b.pending_source = SourceLine(
                m.group(1).rstrip(), m.group(2) or "", int(number_text) if number_text else None
            )
        elif m := _INDENTED_STATE.match(line):
            b.branch_state(m.group(1))
    return Trace(tuple(b.steps), paths=b.path + 1, pruned=b.pruned, sources=b.sources)
