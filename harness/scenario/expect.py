"""A case's expectations and the kernel versions they depend on.

`Expect` is what a case expects of a load and a run, `Override` replaces it on some kernels,
configs or loaders (`VersionRange`, `kernel_version`), and `read_expect`/`check_expect` turn
an `expect:` mapping into an `Expect` and check it against the case around it: they are what
`Case.expect_for()` computes from.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from harness.bpf import progtypes, retcodes, sections
from harness.bpf.sections import SectionMatch
from harness.scenario.spec import (
    Bool,
    Either,
    Hex,
    Int,
    Map,
    Obj,
    Reader,
    Seq,
    Str,
    hex_digits,
    obj,
    suggest,
)
from harness.yamlsrc import LocDict, Pos, where

LoadVerdict = Literal["ok", "rejected"]
AttachMode = Literal["skb", "drv", "hw"]

# --- kernel versions -------------------------------------------------------------------------

_RELEASE = re.compile(r"^(\d{1,4})\.(\d{1,4})(?:\.(\d{1,6}))?")
_CLAUSE = re.compile(r"^\s*(<=|>=|==|!=|<|>)?\s*(\d{1,4}(?:\.\d{1,6}){1,2})\s*$")


def kernel_version(release: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a `uname -r` string: "6.1.0-56-amd64" -> (6, 1, 0),
    "7.2.13+deb14-amd64" -> (7, 2, 13).  Debian's old-style releases carry the ABI number,
    not the upstream point release, in the patch place (6.1.0-56 is 6.1.192)."""
    m = _RELEASE.match(release.strip())
    if not m:
        raise ValueError(f"cannot read a kernel version from {release!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


@dataclass(frozen=True)
class VersionRange:
    """Comma-separated clauses that must all hold: "<5.17", ">=5.10,<6.1", "==6.1" (any 6.1.x;
    a bare "6.1" means the same)."""

    text: str
    clauses: tuple[tuple[str, tuple[int, ...]], ...]

    def contains(self, version: tuple[int, int, int]) -> bool:
        for op, bound in self.clauses:
            if op in ("==", "!="):
                if (version[: len(bound)] == bound) != (op == "=="):
                    return False
                continue
            padded = bound + (0,) * (3 - len(bound))
            holds = {
                "<": version < padded,
                "<=": version <= padded,
                ">": version > padded,
                ">=": version >= padded,
            }
            if not holds[op]:
                return False
        return True


def parse_version_range(text: str) -> VersionRange:
    parts = text.split(",")
    if not text.strip() or len(parts) > 4:
        raise ValueError("expected one to four comma-separated clauses")
    clauses = []
    for part in parts:
        m = _CLAUSE.match(part)
        if not m:
            raise ValueError(f"{part.strip()[:40]!r} is not a version clause like <5.17 or >=6.6")
        clauses.append((m.group(1) or "==", tuple(int(x) for x in m.group(2).split("."))))
    return VersionRange(text, tuple(clauses))


# --- expectations ----------------------------------------------------------------------------

ERROR_CLASSES = (  # harness.bpf.verifier_log.classify_failure()
    "VERIFIER_REJECTED",
    "CORE_RELOCATION_FAILED",
    "MISSING_BTF",
    "UNSUPPORTED_HELPER",
    "UNSUPPORTED_PROG_TYPE",
    "UNSUPPORTED_MAP_TYPE",
    "MAP_CREATE_FAILED",
    "PIN_FAILED",
    "UNSUPPORTED_ATTACH_TYPE",
    "ATTACH_TARGET_MISSING",
    "PERMISSION",
    "LOAD_FAILED",
    "LOG_TRUNCATED",
)
PRIVILEGES = ("privileged", "bpf", "bpf-net", "unprivileged")  # harness.guest.caps.PROFILES
MAP_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]{0,63}$")
# What a real loader sets before the load (harness.guest.libbpf_prepare), in scenarios and bulk
# expectations alike.
MAP_SIZES = Map(
    obj({"max_entries": Int(1, 2**32 - 1), "value_size": Int(1, 2**32 - 1)}),
    Str(MAP_NAME, "map names"),
    doc="sizes the loader's user space sets before the load, e.g. counts: {max_entries: 1024}",
)
PIN_ROOT = Str(
    re.compile(r"^/sys/fs/bpf(/[A-Za-z0-9._-]+)*$"),
    "a directory under /sys/fs/bpf",
    doc="where maps pinned by name go (libbpf's pin_root_path; default /sys/fs/bpf)",
)
ATTACH_TARGET = Str(
    re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$"),
    "a kernel function or BTF type name",
    doc="the target a tracing program's user space sets at load time (fentry, tp_btf...)",
)
_COUNT = Int(0, 10**9)
MAP_VALUE = Either((Int(-(2**63), 2**64 - 1), Hex(1 << 16)))
# a program's name as the kernel keeps it (bpf_prog_info.name: 15 characters, the rest cut)
PROG_NAME = Str(re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$"), "a program (C function) name")
_PROGRAM = Either(
    (
        PROG_NAME,
        obj(
            {
                "name": PROG_NAME,
                "type": Str(choices=tuple(progtypes.PROG_TYPES), doc="libbpf's name: xdp..."),
                "left_loaded": Bool(doc="still loaded after the loader exited (pinned, linked)"),
            },
            required=("name",),
        ),
    ),
    doc="a program name, or {name, type, left_loaded}",
)

EXPECT = obj(
    {
        "load": Str(choices=("ok", "rejected"), doc="the verdict of the load (default ok)"),
        "log": Seq(Str(), 1, 64, single_ok=True, doc="regexes the verifier log matches, in order"),
        "error_class": Str(choices=ERROR_CLASSES, doc="the class of the load failure"),
        "retval": Either(
            (Int(retcodes.S32_MIN, retcodes.U32_MAX), Str()),
            doc="test_run's return value: a code of the program's type, -EPERM, a number, or "
            "any (it ran; a kernel pointer, a hash)",
        ),
        "delivered": Int(0, 10**9, doc="packets of the traffic drive that arrived"),
        "dropped": Int(0, 10**9, doc="packets of the traffic drive that did not"),
        "errno": Either((Int(0, retcodes.MAX_ERRNO), Str()), doc="the syscall drive's errno"),
        "exit_status": Int(0, 255, doc="the syscall drive's exit status"),
        "map": Map(
            Seq(obj({"key": MAP_VALUE, "value": MAP_VALUE}, required=("key", "value")), 1, 4096),
            Str(MAP_NAME, "a map name"),
            doc="map contents after the drive; integers are little-endian at the map's size",
        ),
        "events": Map(_COUNT, Str(MAP_NAME, "a map name"), doc="ringbuf/perf events per map"),
        "attach_mode": Str(choices=("skb", "drv", "hw"), doc="the XDP mode the kernel reports"),
        "programs": Seq(_PROGRAM, 1, 256, doc="programs a user's loader loads (loader: cases)"),
        "stdout": Seq(Str(), 1, 64, single_ok=True, doc="regexes a loader's stdout matches"),
        "stderr": Seq(Str(), 1, 64, single_ok=True, doc="regexes a loader's stderr matches"),
    }
)


@dataclass(frozen=True)
class MapEntry:
    key: int | bytes  # ints are written little-endian at the map's key size
    value: int | bytes


@dataclass(frozen=True)
class MapExpect:
    name: str
    entries: tuple[MapEntry, ...]


@dataclass(frozen=True)
class ProgramExpect:
    """A program a user's loader must load: by name (the kernel keeps 15 characters of
    it), optionally of a type, optionally still loaded (or not) when the loader exits."""

    name: str
    type: str | None = None
    left_loaded: bool | None = None


@dataclass(frozen=True)
class Expect:
    load: LoadVerdict = "ok"
    log: tuple[str, ...] = ()  # regexes that must match the verifier log, in this order
    error_class: str | None = None  # one of ERROR_CLASSES
    retval: int | None = None  # signed 32-bit; Case.retval_name() names it
    delivered: int | None = None  # traffic
    dropped: int | None = None  # traffic
    errno: int | None = None  # syscall drive: positive errno of the command
    exit_status: int | None = None  # syscall drive
    map: tuple[MapExpect, ...] = ()
    events: tuple[tuple[str, int], ...] = ()  # (ringbuf/perf map, number of events)
    attach_mode: AttachMode | None = None
    # a user's loader (loader: cases); its exit_status is the one above, 0 when not said
    programs: tuple[ProgramExpect, ...] = ()
    stdout: tuple[str, ...] = ()  # regexes, in this order
    stderr: tuple[str, ...] = ()

    @property
    def rejected(self) -> bool:
        return self.load == "rejected"


class ExpectJSON(TypedDict, total=False):
    """An expectation as a cell records it (harness.run.records.expect_json): the keys
    said, tuples as lists, map contents as harness.run.records.map_rows writes them."""

    load: LoadVerdict
    log: list[str]
    error_class: str
    retval: int
    delivered: int
    dropped: int
    errno: int
    exit_status: int
    attach_mode: AttachMode
    map: dict[str, list[list[int | str]]]
    programs: list[dict[str, str | bool]]
    stdout: list[str]
    stderr: list[str]


# Keys that describe the program running; meaningless when the load is rejected.
RUN_KEYS = (
    "retval",
    "delivered",
    "dropped",
    "errno",
    "exit_status",
    "map",
    "events",
    "attach_mode",
)
REJECT_KEYS = ("error_class", "log")


@dataclass(frozen=True)
class Override:
    """Expectations that replace the case's when the kernel and/or config match.  When an
    override flips `load`, keys of the base that cannot hold any more are dropped (a
    rejection drops run-time keys such as retval; an acceptance drops error_class and log)."""

    expect: Expect
    keys: tuple[str, ...]  # the Expect fields this override sets
    kernel: VersionRange | None = None
    configs: tuple[str, ...] = ()  # any of these (empty: any config)
    libbpf: VersionRange | None = None  # the loader's version
    btf: bool | None = None  # the kernel has BTF

    def applies(
        self,
        version: tuple[int, int, int],
        config: str,
        libbpf: tuple[int, int, int] | None = None,
        btf: bool | None = None,
    ) -> bool:
        if self.kernel is not None and not self.kernel.contains(version):
            return False
        if self.btf is not None and btf is not self.btf:
            return False
        if self.libbpf is not None and (libbpf is None or not self.libbpf.contains(libbpf)):
            return False
        return not self.configs or config in self.configs

    def apply(self, base: Expect) -> Expect:
        changes: dict[str, Any] = {k: getattr(self.expect, k) for k in self.keys}
        if "load" in self.keys and self.expect.load != base.load:
            stale = RUN_KEYS if self.expect.rejected else REJECT_KEYS
            for key in stale:
                if key not in self.keys:
                    changes[key] = getattr(Expect(), key)
        return dataclasses.replace(base, **changes)


def apply_overrides(
    expect: Expect,
    overrides: Sequence[Override],
    kernel_release: str,
    config: str,
    *,
    libbpf_version: str = "",
    kernel_btf: bool | None = None,
) -> Expect:
    """The expectation after the overrides that match, in order.  An override on the
    libbpf version or on BTF never matches while that is unknown ("" / None)."""
    version = kernel_version(kernel_release)
    loader = kernel_version(libbpf_version) if libbpf_version else None
    for override in overrides:
        if override.applies(version, config, loader, kernel_btf):
            expect = override.apply(expect)
    return expect


@dataclass(frozen=True)
class ExpectContext:
    """What the case around an `expect:` says, for checking it."""

    match: SectionMatch | None  # the program's section (None when unknown)
    maps: tuple[str, ...] | None  # the object's maps (None when unknown)
    drive: str | None  # "test_run" | "traffic" | "syscall" | None
    attach: str | None  # attach family or None
    log_level: int
    syscall_action: str | None = None  # "run", "open", ... of a syscall drive
    loader: bool = False  # a user's loader (loader: cases), not a program of an object


def usable(d: LocDict, spec: Obj) -> LocDict:
    """The keys of `d` whose values have the shape `spec` gives them, positions kept (the
    others are reported by Reader.validate); lets checks of the good keys go on."""
    out = LocDict()
    out.path, out.line, out.column = d.path, d.line, d.column
    out.key_pos, out.value_pos = d.key_pos, d.value_pos
    fields = dict(spec.fields)
    for key, value in d.items():
        if key in fields and Reader(d.path).validate(value, fields[key], "", {}):
            out[key] = value
    return out


def read_expect(rd: Reader, d: LocDict, ctx: ExpectContext, what: str) -> Expect | None:
    """An `expect:` mapping as an Expect, from the keys of a good shape; None after recording
    problems."""
    d = usable(d, EXPECT)
    errors = len(rd.errors)
    values: dict[str, Any] = {k: v for k, v in d.items() if k in ("load", "error_class")}
    values.update(
        {k: d[k] for k in ("delivered", "dropped", "exit_status", "attach_mode") if k in d}
    )
    for key in ("log", "stdout", "stderr"):
        if key in d:
            values[key] = _regexes(rd, d, key, what)
    if "programs" in d:
        values["programs"] = tuple(
            ProgramExpect(p) if isinstance(p, str) else ProgramExpect(**p) for p in d["programs"]
        )
    if "retval" in d:
        values["retval"] = _retval(rd, d, ctx, what)
    if "errno" in d:
        values["errno"] = d["errno"]
        if isinstance(d["errno"], str):
            try:
                values["errno"] = retcodes.errno_value(d["errno"].strip())
            except ValueError as exc:
                rd.error(f"{what}.errno: {exc}", where(d, "errno", value=True))
    if "map" in d:
        values["map"] = map_contents(rd, d["map"], ctx, f"{what}.map")
    if "events" in d:
        events = d["events"]
        values["events"] = tuple(
            (name, n) for name, n in events.items() if _map_known(rd, events, name, ctx, what)
        )
    return Expect(**values) if len(rd.errors) == errors else None


def _regexes(rd: Reader, d: LocDict, key: str, what: str) -> tuple[str, ...]:
    """A regex or a list of them (`log`, `stdout`, `stderr`), each one compiled."""
    patterns = (d[key],) if isinstance(d[key], str) else tuple(d[key])
    for pattern in patterns:
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            msg = f"{what}.{key}: bad regular expression {pattern[:60]!r}: {exc}"
            rd.error(msg, where(d, key, value=True))
    return patterns


def map_contents(rd: Reader, d: LocDict, ctx: ExpectContext, what: str) -> tuple[MapExpect, ...]:
    """`{map: [{key, value}, ...]}` as map contents (expected after a drive, or written
    before it), each map name checked against the object."""
    return tuple(
        MapExpect(name, tuple(MapEntry(_bytes(e["key"]), _bytes(e["value"])) for e in rows))
        for name, rows in d.items()
        if _map_known(rd, d, name, ctx, what)
    )


def _bytes(value: int | str) -> int | bytes:
    return bytes.fromhex(hex_digits(value)) if isinstance(value, str) else value


def _map_known(rd: Reader, d: LocDict, name: str, ctx: ExpectContext, what: str) -> bool:
    # Dotted names are libbpf's global-data maps (".bss", "obj.rodata"): not in the symbols.
    if not ctx.maps or "." in name or name in ctx.maps:
        return True
    hint = suggest(name, ctx.maps, "maps")
    rd.error(f"{what}: the object has no map {name!r}", where(d, name), hint)
    return False


def _retval(rd: Reader, d: LocDict, ctx: ExpectContext, what: str) -> int | None:
    value = d["retval"]
    if ctx.match is None:  # the program is unknown; that is reported elsewhere
        return None
    try:
        return sections.resolve_retval(ctx.match.prog_type, ctx.match.section, value)
    except ValueError as exc:
        kind = ctx.match.prog_type
        hint = f'SEC("{ctx.match.section}") makes it {kind.article} {kind.name} program'
        rd.error(f"{what}.retval: {exc}", where(d, "retval", value=True), hint)
        return None


_NEEDS = {
    "retval": ("test_run", "retval is test_run's return value; it needs drive: {test_run: ...}"),
    "delivered": ("traffic", "delivered counts packets of a traffic drive"),
    "dropped": ("traffic", "dropped counts packets of a traffic drive"),
    "errno": ("syscall", "errno is the result of a syscall drive"),
    "exit_status": ("syscall", "exit_status is the result of a syscall drive"),
}


LOADER_KEYS = ("programs", "stdout", "stderr")  # and exit_status: a user's loader's


def _program_problems(expect: Expect, ctx: ExpectContext) -> list[tuple[str, str, str | None]]:
    """(key, message, hint) of what does not fit a case that loads a program itself."""
    problems: list[tuple[str, str, str | None]] = []
    for key in LOADER_KEYS:
        if getattr(expect, key):
            msg = f"{key} is what a user's loader did; this case loads a program itself"
            hint = "for your own loader, a case with loader: {command: [...]}"
            problems.append((key, msg, hint))
    if expect.rejected:
        for key in RUN_KEYS:
            if getattr(expect, key) not in (None, ()):
                msg = "the load is expected to be rejected, so nothing runs"
                problems.append((key, msg, "drop this key, or expect load: ok"))
    else:
        if expect.error_class is not None:
            problems.append(("error_class", "an error class needs load: rejected", None))
        for key, (drive, why) in _NEEDS.items():
            if getattr(expect, key) is not None and ctx.drive != drive:
                problems.append((key, f"the case has no {drive} drive", why))
        if expect.errno is not None and ctx.syscall_action == "run":
            problems.append(
                (
                    "errno",
                    "run: observes the command's exit status, not an errno",
                    "use exit_status:, or a built-in action (open, unlink, connect, execve)",
                )
            )
        if expect.exit_status is not None and ctx.syscall_action in ("open", "unlink", "connect"):
            msg = f"{ctx.syscall_action} is a single syscall: it has an errno, no exit status"
            problems.append(("exit_status", msg, "use errno: (0 for success)"))
        if expect.attach_mode is not None and ctx.attach != "xdp":
            problems.append(("attach_mode", "attach_mode needs an xdp attach", None))
        if expect.log and ctx.log_level == 0:
            msg = "log_level 0 keeps no verifier log of a successful load"
            problems.append(("log", msg, "set load: {log_level: 1} (or 5 for statistics)"))
    return problems


def check_expect(
    rd: Reader,
    expect: Expect,
    at: Callable[[str], Pos],
    ctx: ExpectContext,
    what: str,
    *,
    keys: Collection[str] | None = None,
) -> None:
    """Consistency of a (merged) expectation with itself and with the case's drive/attach;
    with `keys`, only problems of those keys are reported (an override's own keys)."""
    # a loader case's keys are checked on its YAML (harness.scenario.loader_cases)
    problems = [] if ctx.loader else _program_problems(expect, ctx)
    for key, msg, hint in problems:
        if keys is None or key in keys:
            rd.error(f"{what}.{key}: {msg}", at(key), hint)
