"""The kernel's BPF selftest annotations as kitl expectations (pure, no I/O).

The selftests (tools/testing/selftests/bpf/progs/*.c) annotate each program with decl tags
that their test_loader.c reads: `__success`, `__failure`, `__msg("...")`, `__retval(N)`,
`__log_level(2)`, `__flag(BPF_F_...)`, the `_unpriv` variants, `__auxiliary`...  Projects
copy bpf_misc.h for their own tests.  `kitl verify --annotations` turns each program of such
an object into the cases test_loader runs: one privileged, one unprivileged, or both, with
the same verdict, messages (in order; `{{regex}}` inside a literal), return value, flags,
log level and auxiliary programs, so the corpus runs across the whole matrix.

Both tag forms are read: `comment:<counter>:<tag>` (7.x bpf_misc.h, sorted by counter, as
test_loader sorts them) and the older `comment:<tag>` with `msg=<counter>=<text>` messages.
What kitl cannot check (the xlated or JITed program text, stdout/stderr streams, a BTF file
for naked functions, a linear skb size, loads only without a JIT, other architectures)
makes the case SKIPPED with that reason rather than judged on less than test_loader checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.bpf import progtypes, retcodes, sections
from harness.bpf.elfobj import ObjectInfo
from harness.guest import caps
from harness.scenario.expect import Expect
from harness.scenario.model import Case, LoadOptions, Requires, TestRunDrive, profile_case_name

PREFIX = "comment:"
POINTER_VALUE = 0xBADCAFE  # bpf_misc.h: a retval test_loader does not compare
INT_MIN = -(2**31)
# test_loader ORs these into every program where the kernel takes them (testing_prog_flags)
TESTING_FLAGS = ("BPF_F_TEST_RND_HI32", "BPF_F_TEST_REG_INVARIANTS")
ARCH = "X86_64"
_NEW_FORM = re.compile(r"^comment:(\d+):(.*)$", re.S)
_OLD_COUNTER = re.compile(r"^(test_expect_msg(?:_unpriv)?|test_expect_not_msg(?:_unpriv)?"
                          r"|test_expect_xlated(?:_unpriv)?|test_jited(?:_unpriv)?)=\d+=(.*)$",
                          re.S)  # fmt: skip
# tags kitl does not check: a case with one is skipped, with the reason
_UNCHECKED = {
    "test_expect_xlated": "__xlated (the program text after rewrites)",
    "test_jited": "__jited (the JITed program text)",
    "test_expect_stderr": "__stderr (the program's stderr stream)",
    "test_expect_stdout": "__stdout (the program's stdout stream)",
    "test_btf_func_path": "__btf_func_path (BTF for naked functions)",
    "test_linear_size": "__linear_size (a non-linear skb)",
    "test_expect_not_msg": "__not_msg (a message the log must not have)",
}


@dataclass(frozen=True)
class Mode:
    """What one mode (privileged, unprivileged) of a program expects."""

    failure: bool = False
    messages: tuple[str, ...] = ()  # Python regexes, matched in order
    retval: int | None = None  # None: not run; POINTER_VALUE: run, any value
    caps: tuple[int, ...] = ()  # capabilities an unprivileged load keeps (__caps_unpriv)


@dataclass(frozen=True)
class Spec:
    """One annotated program, as test_loader's parse_test_spec() reads it."""

    program: str
    priv: Mode | None  # None: not run privileged
    unpriv: Mode | None
    description: str = ""
    auxiliary: tuple[str, ...] = ()  # modes it is loaded in with the others (not a case)
    log_level: int = 0
    flags: tuple[str | int, ...] = ()  # names of progtypes.PROG_LOAD_FLAGS, or numbers
    testing_flags: tuple[str, ...] = TESTING_FLAGS  # those not cleared with __flag(!X)
    btf_path: str | None = None
    skip: str = ""  # why kitl cannot run it as test_loader does

    @property
    def modes(self) -> tuple[tuple[str, Mode], ...]:
        out = []
        if self.priv is not None:
            out.append(("privileged", self.priv))
        if self.unpriv is not None:
            out.append(("unprivileged", self.unpriv))
        return tuple(out)


@dataclass
class _Reading:
    """parse_test_spec()'s state while it walks one program's tags."""

    priv: Mode = field(default_factory=Mode)
    unpriv: Mode = field(default_factory=Mode)
    modes: set[str] = field(default_factory=set)
    aux_modes: set[str] = field(default_factory=set)
    unpriv_result: bool = False
    unpriv_retval: bool = False
    unpriv_msgs: bool = False
    description: str = ""
    log_level: int = 0
    flags: list[str | int] = field(default_factory=list)
    cleared: set[str] = field(default_factory=set)
    arches: set[str] = field(default_factory=set)
    btf_path: str | None = None
    skip: list[str] = field(default_factory=list)


def ordered_tags(tags: Iterable[str]) -> list[str]:
    """The test tags of one function, in test_loader's order, without their prefix."""
    numbered: list[tuple[int, str]] = []
    plain: list[str] = []
    for tag in tags:
        m = _NEW_FORM.match(tag)
        if m is not None:
            numbered.append((int(m.group(1)), m.group(2)))
        elif tag.startswith(PREFIX):
            old = _OLD_COUNTER.match(tag[len(PREFIX) :])
            plain.append(f"{old.group(1)}={old.group(2)}" if old else tag[len(PREFIX) :])
    return [t for _, t in sorted(numbered)] + plain


def is_annotated(tags: Iterable[str]) -> bool:
    return any(t.startswith(("test_", "load_mode=")) for t in ordered_tags(tags))


def parse(program: str, tags: Iterable[str]) -> Spec:
    """The spec of one program from its decl tags; ValueError for a tag test_loader would
    refuse (a bad flag, log level or return value)."""
    r = _Reading()
    for tag in ordered_tags(tags):
        _read(r, tag)
    if not r.modes:
        r.modes.add("privileged")
    unpriv = r.unpriv
    if not r.unpriv_result:
        unpriv = replace(unpriv, failure=r.priv.failure)
    if not r.unpriv_retval:
        unpriv = replace(unpriv, retval=r.priv.retval)
    if not r.unpriv_msgs:
        unpriv = replace(unpriv, messages=r.priv.messages)
    skip = list(r.skip)
    if r.arches and ARCH not in r.arches:
        skip.append(f"for {', '.join(sorted(r.arches))} only")
    return Spec(
        program=program,
        priv=r.priv if "privileged" in r.modes else None,
        unpriv=unpriv if "unprivileged" in r.modes else None,
        description=r.description,
        auxiliary=tuple(sorted(r.aux_modes)),
        log_level=r.log_level,
        flags=tuple(f for f in r.flags if f not in r.cleared),
        testing_flags=tuple(f for f in TESTING_FLAGS if f not in r.cleared),
        btf_path=r.btf_path,
        skip="; ".join(dict.fromkeys(skip)),
    )


def _read(r: _Reading, tag: str) -> None:
    name, _, value = tag.partition("=")
    base = name.removesuffix("_unpriv")
    mode = "unprivileged" if name.endswith("_unpriv") else "privileged"
    if base in _UNCHECKED:
        r.skip.append(f"kitl does not check {_UNCHECKED[base]}")
        r.modes.add(mode)
    elif base in ("test_expect_failure", "test_expect_success"):
        _set(r, mode, failure=base == "test_expect_failure")
        if mode == "unprivileged":
            r.unpriv_result = True
    elif base == "test_auxiliary":
        r.aux_modes.add(mode)
        r.modes.add(mode)
    elif base == "test_expect_msg":
        current = r.priv if mode == "privileged" else r.unpriv
        _set(r, mode, messages=(*current.messages, loader_regex(value)))
        if mode == "unprivileged":
            r.unpriv_msgs = True
    elif base == "test_retval":
        _set(r, mode, retval=parse_retval(value))
        if mode == "unprivileged":
            r.unpriv_retval = True
    else:
        _read_setting(r, name, value)


def _read_setting(r: _Reading, name: str, value: str) -> None:
    if name == "test_description":
        r.description = value
    elif name == "test_log_level":
        r.log_level = int(value, 0)
    elif name == "test_prog_flags":
        clear = value.startswith("!")
        flag: str | int = value.lstrip("!")
        if isinstance(flag, str) and not flag.startswith("BPF_F_"):
            flag = int(flag, 0)
        if clear:
            r.cleared.add(str(flag))
        else:
            r.flags.append(flag)
    elif name == "test_arch":
        r.arches.add(value)
    elif name == "test_btf_path":
        r.btf_path = value
    elif name == "test_caps_unpriv":
        r.unpriv = replace(r.unpriv, caps=parse_caps(value))
        r.modes.add("unprivileged")
    elif name == "load_mode" and value == "no_jited":
        r.skip.append("loads only without the JIT (__load_if_no_JITed)")


def _set(r: _Reading, mode: str, **changes: object) -> None:
    r.modes.add(mode)
    if mode == "privileged":
        r.priv = replace(r.priv, **changes)  # type: ignore[arg-type]
    else:
        r.unpriv = replace(r.unpriv, **changes)  # type: ignore[arg-type]


def loader_regex(pattern: str) -> str:
    """test_loader's message syntax as a Python regex: literal text, with `{{...}}` parts
    that are (POSIX extended) regular expressions."""
    out: list[str] = []
    pos = 0
    while pos < len(pattern):
        start = pattern.find("{{", pos)
        if start < 0:
            out.append(re.escape(pattern[pos:]))
            break
        end = pattern.find("}}", start + 2)
        if end < 0:
            raise ValueError(f"message {pattern!r}: '{{{{' without '}}}}'")
        out.append(re.escape(pattern[pos:start]))
        out.append(_posix_classes(pattern[start + 2 : end]))
        pos = end + 2
    return "".join(out)


_CLASSES = {"[:digit:]": "0-9", "[:xdigit:]": "0-9a-fA-F", "[:alpha:]": "a-zA-Z",
            "[:alnum:]": "0-9a-zA-Z", "[:space:]": r"\s", "[:upper:]": "A-Z",
            "[:lower:]": "a-z"}  # fmt: skip


def _posix_classes(regex: str) -> str:
    for posix, python in _CLASSES.items():
        regex = regex.replace(posix, python)
    return regex


def parse_retval(text: str) -> int:
    """A __retval: a number (0x hex), _INT_MIN, or POINTER_VALUE's 0xbadcafe."""
    text = text.strip()
    if text == "_INT_MIN":
        return INT_MIN
    return int(text, 0)


def parse_caps(text: str) -> tuple[int, ...]:
    """__caps_unpriv(CAP_BPF | CAP_NET_ADMIN), as its numbers after the macro expanded."""
    names = {"CAP_NET_ADMIN": caps.CAP_NET_ADMIN, "CAP_SYS_ADMIN": caps.CAP_SYS_ADMIN,
             "CAP_PERFMON": caps.CAP_PERFMON, "CAP_BPF": caps.CAP_BPF}  # fmt: skip
    out = []
    for part in re.split(r"[|\s()]+", text):
        if part:
            out.append(names[part] if part in names else int(part, 0))
    return tuple(out)


# --- as kitl cases ---------------------------------------------------------------------------

TEST_DATA_LEN = 64  # test_loader runs every program on 64 zero bytes


def annotated(info: ObjectInfo) -> bool:
    """Whether the object is a test_loader object: some program carries a test tag."""
    return any(is_annotated(tags) for _, tags in info.decl_tags)


def cases_of(info: ObjectInfo, obj: Path, scenario: str, programs: list[str]) -> list[Case]:
    """The cases test_loader would run for the object's programs named in `programs`:
    one per mode of each non-auxiliary program, the auxiliary programs of that mode loaded
    with it."""
    specs = {p.name: parse(p.name, info.tags_of(p.name)) for p in info.programs}
    out: list[Case] = []
    for prog in info.programs:
        spec = specs[prog.name]
        if spec.auxiliary or prog.name not in programs:
            continue
        match = sections.match_section(prog.section)
        for mode_name, mode in spec.modes:
            aux = tuple(n for n, s in specs.items() if mode_name in s.auxiliary and n != prog.name)
            case = _case(
                spec, mode_name, mode, aux=aux, obj=obj, scenario=scenario,
                section=prog.section, ksyms=info.ksyms, btf_names=_btf_names(info, prog.section),
            )  # fmt: skip
            if match is None:
                case = replace(case, skip=f'libbpf has no program type for SEC("{prog.section}")')
            else:
                case = replace(case, prog_type=match.prog_type, drive=_drive(mode, match))
            out.append(case)
    return out


def _btf_names(info: ObjectInfo, section: str) -> tuple[tuple[str, str], ...]:
    """What the kernel's BTF must have for the object to load (its struct_ops types) and
    for this program to find its target."""
    names = [(t, f"struct_ops type {t}") for t in info.struct_ops]
    target = sections.btf_target(section)
    if target is not None:
        names.append((target, f"attach target {section.partition('/')[2]} ({target})"))
    return tuple(names)


def _case(
    spec: Spec, mode_name: str, mode: Mode, *, aux: tuple[str, ...], obj: Path, scenario: str,
    section: str, ksyms: tuple[str, ...], btf_names: tuple[tuple[str, str], ...],
) -> Case:  # fmt: skip
    flags, unknown = _flag_names(spec.flags)
    skip = spec.skip
    btf = None
    if spec.btf_path is not None:
        btf = obj.parent / spec.btf_path
        if not btf.is_file():
            skip = skip or f"its __btf_path {spec.btf_path} is not next to the object"
    if unknown:
        skip = skip or f"program flags {unknown:#x} kitl does not know"
    retval = None
    if mode.retval is not None and not mode.failure:
        retval = (
            retcodes.RETVAL_ANY if mode.retval == POINTER_VALUE else retcodes.to_s32(mode.retval)
        )
    unprivileged = mode_name == "unprivileged"
    load = LoadOptions(
        log_level=spec.log_level,
        flags=flags,
        btf_custom_path=btf,
        privilege=mode_name,
        companions=aux,
        testing_flags=spec.testing_flags,
        keep_caps=mode.caps,
        unprivileged_maps_only=unprivileged,
    )
    expect = Expect(load="rejected" if mode.failure else "ok", log=mode.messages, retval=retval)
    return Case(
        profile_case_name(spec.program, mode_name),
        scenario,
        spec.program,
        section,
        progtypes.UNKNOWN_TYPE,
        expect,
        spec.description,
        # a kernel without one of them fails every load of the object (the selftests'
        # bpf_testmod kfuncs, struct_ops types and tracepoints on any Debian kernel, newer
        # ones on older kernels): skipped
        requires=Requires(kfuncs=ksyms, btf_names=btf_names),
        load=load,
        skip=skip,
    )


def _drive(mode: Mode, match: sections.SectionMatch) -> TestRunDrive | None:
    """test_run on 64 zero bytes (a packet type's data; others get no input), as
    test_loader's do_prog_test_run, when a return value is expected of a load that works."""
    if mode.retval is None or mode.failure:
        return None
    if match.prog_type.test_run_data:
        return TestRunDrive(data=bytes(TEST_DATA_LEN))
    return TestRunDrive()


def _flag_names(flags: tuple[str | int, ...]) -> tuple[tuple[str, ...], int]:
    """Flags as kitl's names, and the bits of numeric flags it has no name for."""
    names: list[str] = []
    unknown = 0
    for flag in flags:
        if isinstance(flag, str):
            if flag in progtypes.PROG_LOAD_FLAGS:
                names.append(flag)
            continue
        rest = flag
        for name, bit in progtypes.PROG_LOAD_FLAGS.items():
            if rest & bit:
                names.append(name)
                rest &= ~bit
        unknown |= rest
    return tuple(dict.fromkeys(names)), unknown
