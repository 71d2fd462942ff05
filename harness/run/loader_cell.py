"""A loader case's cell (pure): the request that runs the user's own loader in the guest,
the verdict on what it did, and its output as the cell's log.

The verdict: PASSED when the loader exited with the status expected (0 unless said), loaded
the programs expected (by name, type, and whether they stayed loaded after it exited) and
printed what was expected; FAILED otherwise, with the loader's last words; TIMED_OUT when it
overran its time and was killed.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping

from harness.guest import protocol
from harness.guest.replies import LoaderProgram, LoaderReply
from harness.outcome import Outcome
from harness.run.judge import regexes_in_order
from harness.scenario.expect import Expect, ProgramExpect
from harness.scenario.model import OBJECT_REF, LoaderCase

BPF_OBJ_NAME_LEN = 16  # the kernel keeps 15 characters of a program's name, and a NUL
# what the agent needs after the loader ends (the programs' info, unpinning) under TCG
AFTER_LOADER_S = 5.0


def loader_request(
    case: LoaderCase, objects: Mapping[str, str], budget: float
) -> protocol.RunLoader:
    """The guest's request: `{object:NAME}` replaced by the object's path in the guest
    (`objects`), the loader's time cut to what is left of the cell (`budget`, seconds)."""
    loader = case.loader
    argv = tuple(OBJECT_REF.sub(lambda m: objects[m.group(1)], a) for a in loader.argv)
    timeout = max(1.0, min(loader.timeout, budget - AFTER_LOADER_S))
    run_for = loader.run_for if loader.run_for is not None and loader.run_for < timeout else None
    return protocol.RunLoader(
        argv=argv,
        cwd=str(loader.cwd),
        env=dict(loader.env),
        timeout=round(timeout, 1),
        interrupt_after=run_for,
    )


def judge_loader(expect: Expect, run: LoaderReply) -> tuple[Outcome, str]:
    """The outcome of a loader's cell and, when it is not PASSED, the reason in one line."""
    if run.timed_out:
        return Outcome.TIMED_OUT, (
            f"the loader ran out of its time ({run.seconds:g} s) and was killed{_last_words(run)}"
        )
    want = expect.exit_status if expect.exit_status is not None else 0
    if run.status != want:
        return Outcome.FAILED, f"the loader {_ended(run.status)}, expected {want}{_last_words(run)}"
    for key, text in (("stdout", run.stdout), ("stderr", run.stderr)):
        missing = regexes_in_order(getattr(expect, key), text)
        if missing is not None:
            return Outcome.FAILED, f"the loader's {key} lacks /{missing}"
    for program in expect.programs:
        problem = _program_problem(program, run.programs)
        if problem:
            return Outcome.FAILED, problem
    return Outcome.PASSED, ""


def _ended(status: int | None) -> str:
    if status is None:
        return "never started"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with {status}"


def _last_words(run: LoaderReply) -> str:
    """The last line the loader wrote on stderr (or stdout), to say why in one line."""
    for text in (run.stderr, run.stdout):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            return f": {lines[-1][:300]}"
    return ""


def _program_problem(want: ProgramExpect, loaded: tuple[LoaderProgram, ...]) -> str | None:
    name = want.name[: BPF_OBJ_NAME_LEN - 1]
    found = [p for p in loaded if p.name == name]
    if not found:
        seen = ", ".join(f"{p.name} ({p.type})" for p in loaded) or "none"
        return f"the loader did not load a program {want.name}; it loaded: {seen}"
    if want.type is not None and not any(p.type == want.type for p in found):
        types = ", ".join(sorted({p.type for p in found}))
        return f"program {want.name} is {types}, expected {want.type}"
    if want.left_loaded is not None and not any(p.left_loaded == want.left_loaded for p in found):
        state = "still loaded" if not want.left_loaded else "gone"
        return f"program {want.name} was {state} when the loader exited"
    return None


def loader_log(case: LoaderCase, run: LoaderReply) -> str:
    """The cell's log: the command, how it ended, what it loaded, then its output."""
    lines = [f"$ {case.loader.shown}", f"# {_ended(run.status)} after {run.seconds:g} s"]
    if run.timed_out:
        lines.append("# killed: it ran out of its time")
    for p in run.programs:
        left = ", left loaded" if p.left_loaded else ""
        pinned = f" at {', '.join(p.pinned)}" if p.pinned else ""
        lines.append(
            f"# program {p.id} {p.name} ({p.type}): verified_insns {p.verified_insns}, "
            f"xlated {p.xlated_len} B, jited {p.jited_len} B{left}{pinned}"
        )
    if run.output_cut:
        lines.append("# output cut: the tail of stdout and of stderr is kept (64 KiB each)")
    lines += ["--- stdout", run.stdout.rstrip("\n"), "--- stderr", run.stderr.rstrip("\n")]
    return "\n".join(lines) + "\n"
