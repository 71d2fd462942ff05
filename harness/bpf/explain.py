"""A rejected program explained from its verifier log: where it failed (the instruction, its
C line, the state the verifier had there), what the complaint means with the usual fixes,
and the helpers and kfuncs it calls by name.  Pure, no I/O: `kitl explain` prints it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from harness.bpf.advice import NULL_DEREFERENCE, Advice, advise
from harness.bpf.helper_names import helper_arrival, helper_name
from harness.bpf.log_insns import SourceLine, Step, Trace, parse_trace
from harness.bpf.verifier_log import CORE_POISON_ID, VerifierLog, parse_log

_UNKNOWN = re.compile(r"\bunknown#(\d+)\b")
# libbpf's poisoned calls (verifier_log has the patterns that classify them)
_MAP_POISON_BASE = 2001000000
_KFUNC_POISON_BASE = 2002000000
_SUGGESTION = re.compile(r"^Suggestion:\s*$")


@dataclass(frozen=True)
class Call:
    """A helper or kfunc a log names, with what kitl knows of it."""

    name: str
    number: int  # a helper's id, or a kfunc's BTF id
    kind: str  # "helper", "kfunc", or libbpf's "poison" (an unresolved relocation)

    @property
    def arrival(self) -> str | None:
        return helper_arrival(self.number) if self.kind == "helper" else None

    def describe(self) -> str:
        """'bpf_get_current_task_btf (helper 158, after 5.10, by 6.1)'."""
        if self.kind == "poison":
            return self.name
        if self.kind == "kfunc":
            return f"{self.name} (kfunc, BTF id {self.number})"
        when = f", {self.arrival}" if self.arrival else ""
        return f"{self.name} (helper {self.number}{when})"


def name_call(name: str, number: int) -> Call:
    """What `call NAME#N` (or `unknown#N`) in a log stands for."""
    if number == CORE_POISON_ID:
        return Call("libbpf's mark of a failed CO-RE relocation", number, "poison")
    if _MAP_POISON_BASE <= number < _KFUNC_POISON_BASE + 1000000:
        what = "a map libbpf did not create" if number < _KFUNC_POISON_BASE else "a kfunc"
        return Call(f"libbpf's mark of {what} (#{number})", number, "poison")
    helper = helper_name(number)
    if helper is not None and name in ("unknown", helper):
        return Call(helper, number, "helper")
    return Call(name, number, "kfunc")


@dataclass(frozen=True)
class FailurePoint:
    """The instruction the verifier stopped at, as the log shows it."""

    step: Step
    source: SourceLine | None
    frames: Mapping[int, Mapping[str, str]]  # frame -> register/stack slot -> value
    full_state: bool  # the log printed a whole state at this insn (level 2), not just deltas


@dataclass(frozen=True)
class Explanation:
    log: VerifierLog = field(repr=False)
    trace: Trace = field(repr=False)
    failure: FailurePoint | None
    advice: Advice | None
    calls: tuple[Call, ...]  # called in the log, in order of first call
    unknown: tuple[Call, ...]  # ids the message names without a name ("unknown#158")
    kernel_suggestion: str  # 7.3+'s own "Suggestion:" text, "" when it gives none

    @property
    def message(self) -> str | None:
        return self.log.error


def explain_log(text: str, *, truncated: bool = False) -> Explanation:
    log = parse_log(text, truncated=truncated)
    trace = parse_trace(text)
    message = log.error or ""
    failure = _failure_point(log, trace)
    return Explanation(
        log=log,
        trace=trace,
        failure=failure,
        advice=_advice(message, failure),
        calls=tuple(name_call(n, i) for n, i in trace.calls().items()),
        unknown=tuple(name_call("unknown", int(m)) for m in _UNKNOWN.findall(message)),
        kernel_suggestion=_kernel_suggestion(text.splitlines()),
    )


def _advice(message: str, failure: FailurePoint | None) -> Advice | None:
    if not message:
        return None
    null = re.search(NULL_DEREFERENCE.pattern, message)
    if null and failure is not None:
        register = f"R{null.group(1)}"
        if any(values.get(register) == "0" for values in failure.frames.values()):
            return NULL_DEREFERENCE
    return advise(message)


def _failure_point(log: VerifierLog, trace: Trace) -> FailurePoint | None:
    if log.error is None or log.error_line is None:
        return None
    message_start = log.error_line - log.error.count("\n")
    last = trace.last_before(message_start)
    if last is None:
        return None
    position = trace.steps.index(last)
    if log.error_insn is not None and last.index != log.error_insn:
        # "infinite loop detected at insn 3": the insn the message names, as last printed
        named = (i for i in range(position, -1, -1) if trace.steps[i].index == log.error_insn)
        position = next(named, position)
    step = trace.steps[position]
    return FailurePoint(
        step=step,
        source=step.source or trace.source_of(step.index),
        frames=trace.state_before(position),
        full_state=any(whole for _, _, whole in step.states_before),
    )


def _kernel_suggestion(lines: list[str]) -> str:
    """The body of 7.3+'s "Suggestion:" section, joined into one paragraph."""
    for i, line in enumerate(lines):
        if _SUGGESTION.match(line):
            body = []
            for following in lines[i + 1 :]:
                if not following.startswith(" ") or not following.strip():
                    break
                body.append(following.strip())
            return " ".join(body)
    return ""
