"""Verifier-log parsing and load-failure classification: pure functions, no I/O.

The log format is not a stable ABI: it drifts between kernels (golden logs from every kernel
kitl boots live in tests/data/verifier/).  So the parser keeps to what every kernel since 5.2
prints: it scans the stats block from the end (as veristat does, which survives the 6.4+ rotating
log), treats every stats field after ``(limit N)`` as optional, and also reads the pre-5.2
``processed N insns (limit M), stack depth X`` line.
"""

from __future__ import annotations

import errno as _errno
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.bpf import maps

# veristat scans at most this many lines from the end for the stats block.
_STATS_SCAN_LINES = 100

_PROCESSED = re.compile(r"^processed (\d+) insns(?: \(limit (\d+)\))?(.*)$")
_STAT_FIELD = re.compile(r"\b(max_states_per_insn|total_states|peak_states|mark_read) (\d+)\b")
# <= 5.1 printed the stack depth on the processed line itself.
_OLD_STACK = re.compile(r"^,? stack depth (\d+(?:\+\d+)*)")
_VERIFICATION_TIME = re.compile(r"^verification time (\d+) usec$")
# 7.2 appends " max N" and adds an "insns processed N" line.  7.3 prints only "stack depth
# max N" and moves the per-subprog depths to one "subprog N (name) ... stack D" line each.
_STACK_DEPTH = re.compile(r"^stack depth(?: (\d+(?:\+\d+)*))?(?: max (\d+))?(?:\s|$)")
_INSNS_PROCESSED = re.compile(r"^insns processed (\d+)$")
_SUBPROG_STATS = re.compile(r"^subprog (\d+) \(.*\) .*\bstack (\d+)\b")

# An instruction line: "6: (71) r1 = *(u8 *)(r1 +40)", or one libbpf rewrote on a failed
# load: "1: <invalid CO-RE relocation>" (also "<invalid BPF map reference>"/"<invalid kfunc
# call>").
_INSN = re.compile(r"^(\d+): (?:\([0-9a-f]{2}\)|<invalid )")
# State dumps the verifier may print after its complaint, between it and the stats.
_TRAILING_DUMP = re.compile(
    r"""^(?:
        \s                                    # indented register dumps
      | (?:cur|old)\ state:                   # "infinite loop detected" (6.x)
      | R\d+(?:_[a-zA-Z]+)?=                  # a bare register dump
      | frame\ ?\d+:                          # "frame1: R1=...", "frame 0: propagating r6"
      | mark_precise:|regs=|last_idx\ |parent\ |propagating\   # precision backtracking
      | Verification\ failed:\                # 7.3's explanation block after the complaint,
      | (?:Reason|At|Causal\ path|Suggestion):$  # its body indented
    )""",
    re.VERBOSE,
)
# Lines that carry code, state or bookkeeping rather than the verifier's complaint.  Anything
# else is a message line.
_NOT_MESSAGE = re.compile(
    r"""^(?:
        \d+:                                  # insn or per-insn state ("0: R1=ctx() R10=fp0")
      | ;                                     # source line annotation from BTF line info
      | (?:caller|callee):                    # bpf2bpf call state dumps
      | returning\ from\ callee:
      | to\ caller\ at\ \d+:
      | from\ \d+\ to\ \d+:
      | [Ff]unc\#\d+                          # "func#0 @0", "Func#1 ('f') is global ..."
      | Validating\s
      | arg\#\d+\                             # BTF func-info notes printed before the program,
      | Unrecognized\ arg\#                   # not reasons for rejecting it
      | reg\ type\ unsupported\ for\ arg\#
      | safe$
      | Live\ regs\ before\ insn:            # 6.18+ liveness dumps (level 2)
      | \(\d+(?:,\d+)?\)\                    # "(2,4) frame 0 insn 3 +live -8"
      | SCC\                                  # "SCC enter (1)", "SCC backedge (1)" (6.18+)
      | topo_order\[                          # 7.2+ level-2 preamble
      | subprog\#\d+
      | stack\ use/def\s
    )""",
    re.VERBOSE,
)
_DIAGNOSIS = re.compile(r"^Verification failed: (.+)$")
_INSN_IN_MESSAGE = re.compile(r"\binsn (\d+)")

# libbpf poisons an instruction whose CO-RE relocation failed with a call to this helper id
# (0xbad2310); libbpf >= 0.8 rewrites it in the log on failure.
CORE_POISON_ID = 195896080
_CORE_FAILURE = re.compile(
    r"failed to resolve CO-RE relocation.*|^\d+: <invalid CO-RE relocation>"
    rf"|(?:invalid func|call) unknown#{CORE_POISON_ID}\b"
)
# libbpf's other poisons: an ld_imm64 of a map that was not created (2001000000 + map index)
# and a call of an unresolved kfunc (2002000000 + index).
_MAP_POISON = re.compile(r"unknown#2001\d{6}\b|<invalid BPF map reference>|wasn't created")
_KFUNC_POISON = re.compile(r"unknown#2002\d{6}\b|<invalid kfunc call>|wasn't resolved")

_LOG_BEGIN = "-- BEGIN PROG LOAD LOG --"
_LOG_END = "-- END PROG LOAD LOG --"


@dataclass(frozen=True)
class VerifierStats:
    """veristat's columns, each None when the log lacks it (level without bit 4, pre-5.2
    format, a truncated log, or a future kernel that drops a field)."""

    insns: int | None = None
    insn_limit: int | None = None
    max_states_per_insn: int | None = None
    total_states: int | None = None
    peak_states: int | None = None
    mark_read: int | None = None
    duration_us: int | None = None
    stack_depth: tuple[int, ...] = ()  # one entry per subprog
    stack_depth_max: int | None = None  # 7.2+ "stack depth 40+32 max 80"

    @property
    def stack_depth_total(self) -> int | None:
        # veristat sums the subprogs' depths
        return sum(self.stack_depth) if self.stack_depth else None

    @property
    def present(self) -> bool:
        """The verifier got as far as printing its stats (its run ended, by either verdict)."""
        return self.insns is not None


@dataclass(frozen=True)
class VerifierLog:
    stats: VerifierStats
    error: str | None  # the verifier's reason for rejecting, one or more message lines
    error_insn: int | None  # instruction index it failed at, when the log says
    core_failure: str | None  # the CO-RE relocation failure, raw or as libbpf rewrote it
    truncated: bool  # the caller said so (ENOSPC), or the log ends mid-line
    # 7.3+ follows the complaint with "Verification failed: <class>: <summary>", Reason, At,
    # Causal path and Suggestion sections; this is the part after "Verification failed: ".
    diagnosis: str | None = None
    text: str = field(default="", repr=False)
    error_line: int | None = field(default=None, repr=False)  # last line of error, 0-based

    def excerpt(self, lines: int = 20) -> str:
        """At most ``lines`` lines of the log leading up to the failure (or its tail), for
        reports; then 7.3's "Verification failed:" headline, if any."""
        all_lines = self.text.splitlines()
        end = len(all_lines) if self.error_line is None else self.error_line + 1
        budget = lines - 1 if self.diagnosis else lines
        shown = all_lines[max(0, end - budget) : end]
        if self.diagnosis:
            shown.append(f"Verification failed: {self.diagnosis}")
        if self.truncated:
            shown.append("[verifier log truncated]")
        return "\n".join(shown)


def _is_stats_line(line: str) -> bool:
    return any(
        p.match(line)
        for p in (_PROCESSED, _VERIFICATION_TIME, _STACK_DEPTH, _INSNS_PROCESSED, _SUBPROG_STATS)
    )


def _stats_block(lines: list[str]) -> tuple[int, int] | None:
    """[start, end) of the stats block: the last processed line among the final lines, and
    the stats lines adjacent to it (their set and order vary by kernel)."""
    for i in range(len(lines) - 1, max(-1, len(lines) - 1 - _STATS_SCAN_LINES), -1):
        if _PROCESSED.match(lines[i]) or _INSNS_PROCESSED.match(lines[i]):
            break
    else:
        return None
    start, end = i, i + 1
    while start > 0 and _is_stats_line(lines[start - 1]):
        start -= 1
    while end < len(lines) and _is_stats_line(lines[end]):
        end += 1
    return start, end


def _parse_stats(block: list[str]) -> VerifierStats:
    insns = limit = duration = stack_max = alt_insns = None
    fields: dict[str, int] = {}
    stack: tuple[int, ...] | None = None
    subprog_stack: dict[int, int] = {}
    for raw in block:
        line = raw.rstrip()
        if m := _PROCESSED.match(line):
            insns = int(m.group(1))
            limit = int(m.group(2)) if m.group(2) else None
            rest = m.group(3)
            fields = {k: int(v) for k, v in _STAT_FIELD.findall(rest)}
            if old := _OLD_STACK.match(rest):
                stack = tuple(int(d) for d in old.group(1).split("+"))
        elif m := _VERIFICATION_TIME.match(line):
            duration = int(m.group(1))
        elif m := _STACK_DEPTH.match(line):
            if m.group(1):
                stack = tuple(int(d) for d in m.group(1).split("+"))
            stack_max = int(m.group(2)) if m.group(2) else None
        elif m := _SUBPROG_STATS.match(line):
            subprog_stack[int(m.group(1))] = int(m.group(2))
        elif m := _INSNS_PROCESSED.match(line):
            alt_insns = int(m.group(1))
    if stack is None and subprog_stack:
        stack = tuple(subprog_stack[k] for k in sorted(subprog_stack))
    return VerifierStats(
        insns=insns if insns is not None else alt_insns,
        insn_limit=limit,
        max_states_per_insn=fields.get("max_states_per_insn"),
        total_states=fields.get("total_states"),
        peak_states=fields.get("peak_states"),
        mark_read=fields.get("mark_read"),
        duration_us=duration,
        stack_depth=stack or (),
        stack_depth_max=stack_max,
    )


def _is_message(line: str) -> bool:
    return not (_NOT_MESSAGE.match(line) or _TRAILING_DUMP.match(line))


def _find_error(
    lines: list[str], start: int, end: int
) -> tuple[str | None, int | None, int | None]:
    """The message block just before ``end`` (exclusive), not reaching before ``start``:
    (text, failing insn, index of its last line)."""
    i = end - 1
    # Only dumps may sit between the complaint and the stats: reaching code means the
    # verifier said nothing (an accepted program's level-2 log ends with its last insn).
    while i >= start and (not lines[i].strip() or _TRAILING_DUMP.match(lines[i])):
        i -= 1
    if i < start or not _is_message(lines[i]):
        return None, None, None
    last = i
    while i >= start and lines[i].strip() and _is_message(lines[i]):
        i -= 1
    message = "\n".join(line.rstrip() for line in lines[i + 1 : last + 1])
    insn: int | None = None
    if m := _INSN_IN_MESSAGE.search(message):
        # "infinite loop detected at insn 3" names the insn better than the line before it
        insn = int(m.group(1))
    else:
        for j in range(i, start - 1, -1):
            if m := _INSN.match(lines[j]):
                insn = int(m.group(1))
                break
    return message, insn, last


def _core_failure(lines: list[str]) -> str | None:
    best: str | None = None
    for line in lines:
        if m := _CORE_FAILURE.search(line):
            text = m.group(0)
            if text.startswith("failed to resolve"):
                return text.rstrip()  # libbpf's rewrite names the relocation: the best form
            best = best or text.strip()
    return best


def parse_log(text: str, *, truncated: bool = False) -> VerifierLog:
    """Parse a verifier log as the kernel (and libbpf's fixup) wrote it.

    Pass the text unstripped: the kernel ends every line with a newline, so a log that does
    not is one the buffer cut off (kernels <= 6.3 keep the head).  ``truncated`` is the
    caller's knowledge (the load failed with ENOSPC); 6.4+ rotation keeps the tail and shows
    no mark of it.
    """
    truncated = truncated or (bool(text) and not text.endswith("\n"))
    lines = text.splitlines()
    block = _stats_block(lines)
    stats = _parse_stats(lines[block[0] : block[1]]) if block else VerifierStats()
    stats_start = block[0] if block else None
    error: str | None = None
    error_insn: int | None = None
    error_line: int | None = None
    diagnosis: str | None = None
    if stats_start is not None or not truncated:
        # A rotated log (6.4+) starts mid-line: its first line is no message.  A log cut at
        # the head (<= 6.3) and without stats ends before the verifier's verdict.
        start = 1 if truncated else 0
        end = len(lines) if stats_start is None else stats_start
        error, error_insn, error_line = _find_error(lines, start, end)
        after = start if error_line is None else error_line + 1
        diagnosis = next(
            (m.group(1).rstrip() for line in lines[after:end] if (m := _DIAGNOSIS.match(line))),
            None,
        )
    return VerifierLog(
        stats=stats,
        error=error,
        error_insn=error_insn,
        core_failure=_core_failure(lines),
        truncated=truncated,
        diagnosis=diagnosis,
        text=text,
        error_line=error_line,
    )


def log_from_libbpf_messages(messages: str) -> str | None:
    """The verifier log libbpf printed between its BEGIN/END markers (a level-0 load, which
    libbpf retried at level 1 into its own buffer), or None."""
    start = messages.find(_LOG_BEGIN)
    if start < 0:
        return None
    start = messages.find("\n", start) + 1
    stop = messages.find(_LOG_END, start)
    body = messages[start:] if stop < 0 else messages[start:stop]
    return body


# Decided on the verifier's own message, so a helper name in an unrelated line cannot match.
_UNSUPPORTED_HELPER = re.compile(
    r"invalid func unknown#\d+"  # helper id beyond this kernel's __BPF_FUNC_MAX_ID
    r"|unknown func \S+#\d+"  # known id, no proto for this program type (<= ~6.5 wording)
    r"|program of this type cannot use helper"  # the same, newer wording
    r"|calling kernel function \S+ is not allowed"
    r"|kernel function \S+ is not allowed"
    r"|JIT is required for calling kernel function"
    r"|callbacks are not allowed in non-JITed programs"
)
_MISSING_BTF = re.compile(
    r"kernel BTF is missing|failed to find valid kernel BTF|Error loading vmlinux BTF"
    r"|failed to load vmlinux BTF|vmlinux BTF is not found|without CONFIG_DEBUG_INFO_BTF"
    r"|/sys/kernel/btf/vmlinux.*(?:No such file|not found)"
)
_CORE_LIBBPF = re.compile(
    r"failed to resolve CO-RE relocation|failed to perform CO-RE relocations"
    r"|<invalid CO-RE relocation>"
    rf"|unknown#{CORE_POISON_ID}\b"
)
_PROG_TYPE = re.compile(
    r"missing BPF prog type|unrecognized ELF section name"
    r"|(?:unknown|invalid|unsupported) (?:BPF )?prog(?:ram)? type"
    r"|prog(?:ram)? type \S+ (?:is )?not supported|prog type not supported"
)
_MAP = re.compile(
    r"map '[^']*': failed to create|failed to create map|Error in bpf_create_map"
    r"|map type \S+ (?:is )?not supported|failed to create BPF map|unknown map type"
)
_ATTACH = re.compile(
    r"attach target|attach_btf_id|(?:unknown|invalid|unsupported) attach type"
    r"|is not (?:modifiable|sleepable)|failed to find BTF for extension"
)
# The target of a tracing program is not there: not in this kernel's BTF (libbpf, before the
# load: ESRCH) or in BTF without an address (the verifier's words since 6.x).  One cause,
# one class on every kernel.
_TARGET_MISSING = re.compile(
    r"failed to find kernel BTF type ID of '(?P<btf>[^']+)'"
    r"|The address of function (?P<addr>\S+) cannot be found"
)
# Pinning, not the map: the pin path, its bpffs, or a pinned map of another shape.
_PIN = re.compile(
    r"is not on BPF FS|failed to auto-pin|couldn't reuse pinned map|error reusing pinned map"
    r"|failed to statfs"
)


def classify_failure(
    log: VerifierLog | None,
    errno: int,
    libbpf_messages: str,
    *,
    failed_map: Mapping[str, Any] | None = None,
    lowered: bool = False,
) -> str:
    """One failure class for a load that failed with ``errno`` (positive).

    ``log`` is the parsed kernel log from the program's own buffer (None when the load used
    none); ``libbpf_messages`` is everything libbpf printed, which at log level 0 carries the
    verifier log between BEGIN/END markers.  ENOSPC is never a rejection: the log did not fit.
    ``failed_map`` is the guest's description of the map libbpf could not create (name,
    type, sizes, and ``type_supported``, the kernel's answer to a probe of its type); without
    it a map failure is read as an unsupported type.  ``lowered``: the load ran with fewer
    than all capabilities (a privilege profile), so a supported map that failed is a
    permission failure.
    """
    if log is None and (embedded := log_from_libbpf_messages(libbpf_messages)) is not None:
        log = parse_log(embedded)
    if errno == _errno.ENOSPC or (log is not None and log.truncated):
        return "LOG_TRUNCATED"
    if log is not None and (log.stats.present or log.error is not None):
        return _rejection_class(log)
    # The verifier did not run (or left no log): decide on errno and libbpf's messages.
    if _MISSING_BTF.search(libbpf_messages):
        return "MISSING_BTF"
    if _PIN.search(libbpf_messages):
        return "PIN_FAILED"
    if failed_map is not None:
        return _map_class(failed_map, errno, lowered)
    if errno in (_errno.EPERM, _errno.EACCES):
        return "PERMISSION"
    if _CORE_LIBBPF.search(libbpf_messages):
        return "CORE_RELOCATION_FAILED"
    if _PROG_TYPE.search(libbpf_messages):
        return "UNSUPPORTED_PROG_TYPE"
    if _MAP.search(libbpf_messages):
        return "UNSUPPORTED_MAP_TYPE"
    if _TARGET_MISSING.search(libbpf_messages):
        return "ATTACH_TARGET_MISSING"
    if errno == _errno.ESRCH or _ATTACH.search(libbpf_messages):
        return "UNSUPPORTED_ATTACH_TYPE"
    return "LOAD_FAILED"


def _rejection_class(log: VerifierLog) -> str:
    """The verifier ran (or refused the program in its own words): its message decides."""
    verdict = log.error or ""
    if _MISSING_BTF.search(verdict):
        return "MISSING_BTF"  # e.g. kfuncs "without CONFIG_DEBUG_INFO_BTF"
    if log.core_failure or _CORE_LIBBPF.search(verdict):
        return "CORE_RELOCATION_FAILED"
    # libbpf's other poisons come before the helper check: raw, they read as unknown helpers
    if _MAP_POISON.search(verdict):
        return "LOAD_FAILED"  # libbpf did not create a map the program uses (autocreate off)
    if _KFUNC_POISON.search(verdict):
        return "UNSUPPORTED_HELPER"  # a kfunc this kernel lacks
    if _UNSUPPORTED_HELPER.search(verdict):
        return "UNSUPPORTED_HELPER"
    if _TARGET_MISSING.search(verdict):
        return "ATTACH_TARGET_MISSING"
    return "VERIFIER_REJECTED"


def _map_class(failed_map: Mapping[str, Any], errno: int, lowered: bool) -> str:
    if failed_map.get("type_supported") == 0:
        return "UNSUPPORTED_MAP_TYPE"
    if map_unsized(failed_map):
        return "MAP_CREATE_FAILED"
    if lowered or errno in (_errno.EPERM, _errno.EACCES):
        return "PERMISSION"
    return "MAP_CREATE_FAILED"


def map_unsized(failed_map: Mapping[str, Any]) -> bool:
    """A map its loader's user space sizes at run time: max_entries (or a stack-trace
    map's value_size) still 0."""
    kind = int(failed_map.get("type", 0))
    return maps.lacks_entries(
        kind, int(failed_map.get("max_entries") or 0)
    ) or maps.lacks_value_size(kind, int(failed_map.get("value_size") or 0))


def missing_target(text: str) -> str | None:
    """The tracing target a load could not find, from libbpf's messages or the log."""
    m = _TARGET_MISSING.search(text)
    return (m.group("btf") or m.group("addr")) if m else None


def pin_problem(messages: str) -> str:
    """libbpf's lines about the pinning that failed, joined."""
    lines = [ln.strip() for ln in messages.splitlines() if _PIN.search(ln)]
    return "; ".join(dict.fromkeys(ln.split("libbpf: ", 1)[-1] for ln in lines))


EXCERPT_LINES = 6  # lines of a log shown around where an expected message was missed
EXCERPT_WIDTH = 200


def log_excerpt(log: str, pos: int) -> str:
    """About EXCERPT_LINES numbered lines around offset `pos`: the line of the last matched
    character and those after it, where the next message was looked for."""
    lines = log.split("\n")  # as count() below sees them (splitlines() also splits at \f...)
    if lines[-1] == "":
        lines.pop()
    if not lines:
        return "    (the log is empty)"
    at = log.count("\n", 0, max(pos - 1, 0))
    first = max(0, min(at - 2, len(lines) - EXCERPT_LINES))
    shown = range(first, min(first + EXCERPT_LINES, len(lines)))
    width = len(str(shown[-1] + 1))
    return "\n".join(f"    {i + 1:>{width}} | {_cut(lines[i])}" for i in shown)


def _cut(line: str) -> str:
    return line if len(line) <= EXCERPT_WIDTH else line[:EXCERPT_WIDTH] + "..."
