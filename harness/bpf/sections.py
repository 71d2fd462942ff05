"""SEC() names: which of libbpf's section definitions a name selects (`match_section`, as
libbpf's find_sec_def()), and what follows from it: the program type, a direction the
section fixes, the attach target that follows the prefix, and the return-code convention an
expectation is read against (`resolve_retval`, `retval_name`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from harness.bpf.progtypes import PROG_TYPES, ProgType, SectionDef
from harness.bpf.retcodes import (
    CONVENTIONS,
    ERRNO_NAMES,
    MAX_ERRNO,
    RETVAL_ANY,
    S32_MIN,
    U32_MAX,
    RetConvention,
    errno_name,
    to_s32,
)

# (section definition, its type) in libbpf's lookup order; no two definitions overlap, so
# the order only matters for speed.
_SECTION_INDEX: tuple[tuple[SectionDef, ProgType], ...] = tuple(
    (s, t) for t in PROG_TYPES.values() for s in t.sections
)


@dataclass(frozen=True)
class SectionMatch:
    section: str  # as given (a leading "?" kept)
    definition: SectionDef
    prog_type: ProgType
    autoload: bool = True

    @property
    def retcodes(self) -> RetConvention:
        return self.definition.retcodes or self.prog_type.retcodes


def match_section(section: str) -> SectionMatch | None:
    """libbpf's find_sec_def(): the definition that a SEC() name selects.  A leading "?"
    (SEC("?xdp"): not loaded by default) is ignored for the match, as libbpf does."""
    name = section[1:] if section.startswith("?") else section
    for definition, prog_type in _SECTION_INDEX:
        if definition.matches(name):
            return SectionMatch(section, definition, prog_type, not section.startswith("?"))
    return None


def prog_type_for_section(section: str) -> ProgType | None:
    match = match_section(section)
    return match.prog_type if match else None


def convention_for(prog_type: ProgType, section: str) -> RetConvention:
    match = match_section(section)
    if match is not None and match.prog_type == prog_type and match.definition.retcodes:
        return match.definition.retcodes
    return prog_type.retcodes


def section_direction(section: str) -> str | None:
    """ "ingress"/"egress" when the section fixes the direction (tc/ingress, cgroup_skb/egress)."""
    match = match_section(section)
    attach = match.definition.attach_type if match else None
    if attach and attach.endswith("_INGRESS"):
        return "ingress"
    if attach and attach.endswith("_EGRESS"):
        return "egress"
    return None


def section_target(section: str) -> str:
    """What follows the prefix: "do_unlinkat" in "kprobe/do_unlinkat" ("" if nothing)."""
    match = match_section(section)
    if match is None:
        return ""
    name = section.lstrip("?")
    stem = match.definition.pattern.rstrip("+/")
    return name[len(stem) + 1 :] if len(name) > len(stem) else ""


# The BTF name the kernel must have for a BTF-typed program's target: the function of an
# fentry/fexit/fmod_ret program, the typedef of a tp_btf tracepoint, the LSM hook's stub.
_BTF_TARGETS = {"fentry": "{}", "fexit": "{}", "fmod_ret": "{}", "fentry.s": "{}",
                "fexit.s": "{}", "fmod_ret.s": "{}", "tp_btf": "btf_trace_{}",
                "lsm": "bpf_lsm_{}", "lsm.s": "bpf_lsm_{}"}  # fmt: skip


def btf_target(section: str) -> str | None:
    """The name the kernel's BTF (or a module's) must hold for the program's target to be
    found: "btf_trace_sched_switch" for SEC("tp_btf/sched_switch"); None when the section
    names no such target (or user space sets it: a bare "fentry")."""
    prefix, _, target = section.lstrip("?").partition("/")
    spelled = _BTF_TARGETS.get(prefix)
    if spelled is None or not target:
        return None
    return spelled.format(target.rpartition(":")[2])  # "module:function" too


_INT_TEXT = re.compile(r"^[+-]?\d{1,12}$")


def resolve_retval(prog_type: ProgType, section: str, value: str | int) -> int:
    """A return-code expectation as a signed 32-bit value.  Names are checked against the
    convention of `prog_type` in `section` (tcx sections take TCX_* names, for example);
    raises ValueError naming the valid codes."""
    conv = convention_for(prog_type, section)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a return code name or an integer, got {type(value).__name__}")
    if isinstance(value, str) and _INT_TEXT.match(value.strip()):
        value = int(value.strip())
    if isinstance(value, int):
        if not S32_MIN <= value <= U32_MAX:
            raise ValueError(f"{value} does not fit a 32-bit return value")
        signed = to_s32(value)
        if not conv.lo <= signed <= conv.hi:
            raise ValueError(
                f"{value} is outside the range of {conv.name} return values "
                f"({conv.lo}..{conv.hi}: {conv.summary})"
            )
        return signed
    text = value.strip()
    if text == "any":
        return RETVAL_ANY
    code = conv.code(text)
    if code is not None:
        return code.value
    if conv.errno and text.startswith("-") and text[1:] in ERRNO_NAMES:
        return -ERRNO_NAMES[text[1:]]
    raise ValueError(_not_a_code(prog_type, conv, text))


def _not_a_code(prog_type: ProgType, conv: RetConvention, text: str) -> str:
    names = [c.name for c in conv.codes]
    if names:
        msg = (
            f"{text} is not {conv.article} {conv.name} return code; "
            f"{conv.name} codes: {', '.join(names)}"
        )
    elif conv.errno:
        msg = f"{text} is not {conv.article} {conv.name} return value; expected {conv.summary}"
    else:
        msg = (
            f"{text}: {prog_type.name} return values have no names ({conv.summary}); "
            "give an integer"
        )
    close = difflib.get_close_matches(text, names, n=1) or [
        n for n in names if n.lower() == text.lower()
    ]
    if close:
        return f"{msg}; did you mean {close[0]}?"
    owners = [c for c in CONVENTIONS if c is not conv and c.code(text)]
    if owners:
        which = " / ".join(c.name for c in owners)
        return f"{msg}; {text} is {owners[0].article} {which} code"
    if conv.errno and text in ERRNO_NAMES:
        return f"{msg}; did you mean -{text}?"
    return msg


def retval_name(prog_type: ProgType, section: str, value: int) -> str:
    """For reports: 2 -> "XDP_PASS" for an xdp program, -1 -> "-EPERM" for lsm; a value with
    no name comes back as its decimal text."""
    if value == RETVAL_ANY:
        return "any"
    conv = convention_for(prog_type, section)
    signed = to_s32(value)
    for code in conv.codes:
        if code.value == signed:
            return code.name
    if conv.errno and -MAX_ERRNO <= signed < 0:
        name = errno_name(-signed)
        if name:
            return f"-{name}"
    return str(signed)
