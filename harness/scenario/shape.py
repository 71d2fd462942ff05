"""The scenario language's shape and a case's expectations.

`Spec` values declare the shape of every key (type, range, pattern, choices, required keys);
`Reader.validate` checks YAML against them and records every problem with its position, and
`to_schema` turns them into the JSON Schema of `kitl schema`, so the two cannot drift.
harness.scenario.loader does the checks a shape cannot express (references, files, program types).

Expectations (`Expect`), their kernel/config `Override`s and kernel version ranges live here
too: they are what `Case.expect_for()` computes from.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness.bpf import progtypes, retcodes, sections
from harness.bpf.sections import SectionMatch
from harness.errors import ConfigError
from harness.yamlsrc import LocDict, LocList, where

Pos = dict[str, Any]  # keyword arguments of ConfigError naming a position
LoadVerdict = Literal["ok", "rejected"]
AttachMode = Literal["skb", "drv", "hw"]
MAX_TEXT = 4096

# --- shapes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Str:
    pattern: re.Pattern[str] | None = None  # must match
    rule: str = ""  # says what the pattern allows (the hint)
    choices: tuple[str, ...] = ()
    doc: str = ""
    name: bool = False  # a name that becomes a path or argv element in the guest: no ".."


@dataclass(frozen=True)
class Int:
    lo: int
    hi: int
    doc: str = ""


@dataclass(frozen=True)
class Bool:
    doc: str = ""


@dataclass(frozen=True)
class Hex:
    max_bytes: int
    doc: str = 'bytes as hex digits, e.g. "0a000000" (spaces and colons allowed)'


@dataclass(frozen=True)
class Either:
    options: tuple[Spec, ...]  # told apart by YAML type: at most one per type
    doc: str = ""


@dataclass(frozen=True)
class Seq:
    item: Spec
    min_items: int = 0
    max_items: int = 256
    single_ok: bool = False  # one item may be given without the list
    unique: bool = False
    hint: str = ""  # for a value that is not a list
    doc: str = ""


@dataclass(frozen=True)
class Map:
    """A mapping whose keys the user names (objects, configs, maps)."""

    value: Spec
    key: Str = Str()
    min_items: int = 0
    max_items: int = 256
    doc: str = ""


@dataclass(frozen=True)
class Obj:
    fields: tuple[tuple[str, Spec], ...]
    required: tuple[str, ...] = ()
    one_of: bool = False  # exactly one of the fields
    null_ok: bool = False  # null stands for {}
    doc: str = ""

    def field(self, name: str) -> Spec:
        return dict(self.fields)[name]


Spec = Str | Int | Bool | Hex | Either | Seq | Map | Obj


def obj(
    fields: dict[str, Spec],
    *,
    required: tuple[str, ...] = (),
    one_of: bool = False,
    null_ok: bool = False,
    doc: str = "",
) -> Obj:
    return Obj(tuple(fields.items()), required, one_of, null_ok, doc)


def describe(value: object) -> str:
    """How a YAML value reads in an error message."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        text = str(value) if abs(value) < 10**30 else f"a {len(str(abs(value)))}-digit number"
        return f"integer {text}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, datetime.date):
        return f"date {value.isoformat()}"
    return type(value).__name__


def suggest(key: str, allowed: Sequence[str], label: str = "allowed") -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    if len(allowed) > 12:
        return f"{label}: " + ", ".join(list(allowed)[:12]) + ", ..."
    return f"{label}: " + ", ".join(allowed) if allowed else "nothing is allowed here"


def _fits(value: object, spec: Spec) -> bool:
    if isinstance(spec, Str | Hex):
        return isinstance(value, str)
    if isinstance(spec, Int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(spec, Bool):
        return isinstance(value, bool)
    if isinstance(spec, Seq):
        return isinstance(value, LocList) or (spec.single_ok and _fits(value, spec.item))
    if isinstance(spec, Map):
        return isinstance(value, LocDict)
    if isinstance(spec, Obj):
        return isinstance(value, LocDict) or (spec.null_ok and value is None)
    return any(_fits(value, option) for option in spec.options)


def _expected(spec: Spec) -> str:
    if isinstance(spec, Either):
        return " or ".join(_expected(o) for o in spec.options)
    if isinstance(spec, Seq):
        return f"a list of {_expected(spec.item).removeprefix('a ').removeprefix('an ')}s"
    names = {Str: "a string", Hex: "a hex string", Int: "an integer", Bool: "true or false"}
    return names.get(type(spec), "a mapping")


def hex_digits(text: str) -> str:
    digits = re.sub(r"[\s:]", "", text)
    return digits[2:] if digits[:2].lower() == "0x" else digits


def _at(what: str, message: str) -> str:
    return f"{what}: {message}" if what else message


def _key(what: str, key: str) -> str:
    return f"{what}.{key}" if what else key


class Reader:
    """Checks YAML values against `Spec`s and records every problem with its position."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.errors: list[ConfigError] = []

    def error(self, message: str, at: Pos, hint: str | None = None) -> None:
        self.errors.append(ConfigError(message, hint=hint or None, **at))

    def validate(self, value: object, spec: Spec, what: str, at: Pos) -> bool:
        """True if `value` has the shape `spec`; otherwise the problems are recorded."""
        if not _fits(value, spec):
            hint = spec.hint if isinstance(spec, Seq) else None
            self.error(f"{what}: expected {_expected(spec)}, got {describe(value)}", at, hint)
            return False
        if isinstance(spec, Either):
            option = next(o for o in spec.options if _fits(value, o))
            return self.validate(value, option, what, at)
        if isinstance(spec, Str):
            assert isinstance(value, str)
            return self._str(value, spec, what, at)
        if isinstance(spec, Int):
            assert isinstance(value, int)
            if spec.lo <= value <= spec.hi:
                return True
            self.error(f"{what}: {describe(value)} is out of range {spec.lo}..{spec.hi}", at)
            return False
        if isinstance(spec, Hex):
            assert isinstance(value, str)
            digits = hex_digits(value)
            if not digits or len(digits) % 2 or not re.fullmatch(r"[0-9a-fA-F]+", digits):
                self.error(f"{what}: {value[:40]!r} is not hex bytes", at, spec.doc)
                return False
            if len(digits) // 2 > spec.max_bytes:
                self.error(f"{what}: more than {spec.max_bytes} bytes", at)
                return False
            return True
        if isinstance(spec, Seq):
            return self._seq(value, spec, what, at)
        if isinstance(spec, Map):
            assert isinstance(value, LocDict)
            return self._map(value, spec, what, at)
        if isinstance(spec, Obj):
            return value is None or self._obj(value, spec, what, at)
        return True  # Bool

    def _str(self, value: str, spec: Str, what: str, at: Pos, label: str = "value") -> bool:
        if len(value) > MAX_TEXT or "\0" in value:
            self.error(f"{what}: string too long or containing NUL", at)
        elif spec.choices and value not in spec.choices:
            if len(spec.choices) > 8:
                hint = suggest(value, spec.choices)
                self.error(f"{what}: unknown value {value[:60]!r}", at, hint)
            else:
                self.error(f"{what}: {value[:60]!r} is not one of {', '.join(spec.choices)}", at)
        elif (spec.pattern is not None and not spec.pattern.match(value)) or (
            spec.name and ".." in value
        ):
            self.error(f"{what}: bad {label} {value[:60]!r}", at, spec.rule)
        else:
            return True
        return False

    def _seq(self, value: object, spec: Seq, what: str, at: Pos) -> bool:
        if not isinstance(value, LocList):
            return self.validate(value, spec.item, what, at)
        if not spec.min_items <= len(value) <= spec.max_items:
            if len(value) < spec.min_items:
                msg = "empty list" if not value else f"fewer than {spec.min_items} items"
            else:
                msg = f"more than {spec.max_items} items"
            self.error(f"{what}: {msg}", at, spec.hint)
            return False
        ok = True
        firsts: dict[object, int] = {}
        for i, item in enumerate(value):
            ok = self.validate(item, spec.item, f"{what}[{i}]", where(value, i)) and ok
            if spec.unique and isinstance(item, str):
                if item in firsts:
                    line = value.item_pos[firsts[item]][0]
                    self.error(
                        f"{what}[{i}]: {item!r} again (first on line {line})", where(value, i)
                    )
                    ok = False
                firsts.setdefault(item, i)
        return ok

    def _map(self, value: LocDict, spec: Map, what: str, at: Pos) -> bool:
        if not spec.min_items <= len(value) <= spec.max_items:
            few = len(value) < spec.min_items
            self.error(f"{what}: {'empty' if few else f'more than {spec.max_items} entries'}", at)
            return False
        ok = True
        for key, item in value.items():
            ok = self._str(key, spec.key, what, where(value, key), "key") and ok
            item_at = where(value, key, value=True)
            ok = self.validate(item, spec.value, _key(what, key), item_at) and ok
        return ok

    def _obj(self, value: object, spec: Obj, what: str, at: Pos) -> bool:
        assert isinstance(value, LocDict)
        fields = dict(spec.fields)
        ok = True
        typos = set()
        for key in value:
            if key not in fields:
                hint = suggest(key, list(fields))
                self.error(_at(what, f"unknown key {key!r}"), where(value, key), hint)
                typos.add(hint)
                ok = False
        for key in spec.required:
            if key not in value:
                ok = False
                if f"did you mean {key!r}?" not in typos:  # the typo's error says it all
                    self.error(_at(what, f"missing required key {key!r}"), where(value))
        if spec.one_of and ok and len(value) != 1:
            self.error(_at(what, f"give exactly one of {', '.join(fields)}"), where(value))
            ok = False
        for key, item in value.items():
            if key in fields:
                item_at = where(value, key, value=True)
                ok = self.validate(item, fields[key], _key(what, key), item_at) and ok
        return ok


def to_schema(spec: Spec) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) for a spec."""
    out: dict[str, Any]
    if isinstance(spec, Str):
        out = {"type": "string"}
        if spec.choices:
            out["enum"] = list(spec.choices)
        if spec.pattern is not None:
            out["pattern"] = spec.pattern.pattern
    elif isinstance(spec, Hex):
        out = {"type": "string", "pattern": r"^(0[xX])?[0-9a-fA-F\s:]+$"}
    elif isinstance(spec, Int):
        out = {"type": "integer", "minimum": spec.lo, "maximum": spec.hi}
    elif isinstance(spec, Bool):
        out = {"type": "boolean"}
    elif isinstance(spec, Either):
        out = {"anyOf": [to_schema(o) for o in spec.options]}
    elif isinstance(spec, Seq):
        out = {"type": "array", "items": to_schema(spec.item), "maxItems": spec.max_items}
        if spec.min_items:
            out["minItems"] = spec.min_items
        if spec.unique:
            out["uniqueItems"] = True
        if spec.single_ok:
            out = {"anyOf": [to_schema(spec.item), out]}
    elif isinstance(spec, Map):
        out = {
            "type": "object",
            "propertyNames": to_schema(spec.key),
            "additionalProperties": to_schema(spec.value),
            "maxProperties": spec.max_items,
        }
        if spec.min_items:
            out["minProperties"] = spec.min_items
    else:
        out = {
            "type": ["object", "null"] if spec.null_ok else "object",
            "properties": {k: to_schema(v) for k, v in spec.fields},
            "additionalProperties": False,
        }
        if spec.required:
            out["required"] = list(spec.required)
        if spec.one_of:
            out["minProperties"] = out["maxProperties"] = 1
    if spec.doc:
        out["description"] = spec.doc
    return out


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
_MAP_VALUE = Either((Int(-(2**63), 2**64 - 1), Hex(1 << 16)))

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
            Seq(obj({"key": _MAP_VALUE, "value": _MAP_VALUE}, required=("key", "value")), 1, 4096),
            Str(MAP_NAME, "a map name"),
            doc="map contents after the drive; integers are little-endian at the map's size",
        ),
        "events": Map(_COUNT, Str(MAP_NAME, "a map name"), doc="ringbuf/perf events per map"),
        "attach_mode": Str(choices=("skb", "drv", "hw"), doc="the XDP mode the kernel reports"),
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

    @property
    def rejected(self) -> bool:
        return self.load == "rejected"


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
    if "log" in d:
        values["log"] = (d["log"],) if isinstance(d["log"], str) else tuple(d["log"])
        for pattern in values["log"]:
            try:
                re.compile(pattern)
            except (re.error, RecursionError, OverflowError) as exc:
                msg = f"{what}.log: bad regular expression {pattern[:60]!r}: {exc}"
                rd.error(msg, where(d, "log", value=True))
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
    problems: list[tuple[str, str, str | None]] = []  # (key, message, hint)
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
    for key, msg, hint in problems:
        if keys is None or key in keys:
            rd.error(f"{what}.{key}: {msg}", at(key), hint)


# --- the language ----------------------------------------------------------------------------

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
NAME_RULE = "lower-case letters, digits and ._- (first a letter or digit), at most 64"
IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
IFNAME_RULE = "letters, digits and _.- (first a letter or digit), at most 15 (IFNAMSIZ)"
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
CGROUP = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}){0,7}$")
MAX_COUNT = 1_000_000
MAX_REPEAT = 10_000_000
MAX_PACKET = 65_535
LOG_LEVEL_MASK = 15  # BPF_LOG_LEVEL1 | BPF_LOG_LEVEL2 | BPF_LOG_STATS | BPF_LOG_FIXED

_NAME = Str(NAME, NAME_RULE, name=True)
_DEV = Str(IFNAME, IFNAME_RULE, doc="a device of the topology (or lo)", name=True)
_NS = Str(NAME, NAME_RULE, doc="a netns of the topology; omitted: the root namespace", name=True)
_DIRECTION = Str(choices=("ingress", "egress"))
_PORT = Int(1, 65535)
_U32, _U64 = Int(0, 2**32 - 1), Int(0, 2**64 - 1)
_ENDPOINT = Str(
    re.compile(r"^[^@/]+(@[^@/]+)?(/[0-9A-Fa-f.:]+/\d{1,3})?$"),
    'IFNAME[@NETNS][/ADDRESS/PREFIX], e.g. "v1@b/10.0.0.2/24"',
)
_ARGV = Seq(
    Str(),
    1,
    256,
    hint='an argv list, never a shell string: [ping, -c, "1", 10.0.0.2]; '
    'for a shell, [sh, -c, "..."]',
)
_PATH = Str(re.compile(r"^/[^\0\n]{0,4095}$"), "an absolute path in the guest")
_TC = obj({"dev": _DEV, "ns": _NS, "direction": _DIRECTION}, required=("dev",))
_L3 = {"src": Str(doc="source address"), "dst": Str(doc="destination address")}
_MAC = Str(re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"), "a MAC like 02:00:00:00:00:01")
TCP_FLAG_NAMES = ("fin", "syn", "rst", "psh", "ack", "urg")  # harness.bpf.packet.TCP_FLAGS
PACKET = obj(
    {
        "eth": obj({"src": _MAC, "dst": _MAC, "type": Int(0, 0xFFFF, doc="ethertype")}),
        "ipv4": obj({**_L3, "ttl": Int(1, 255)}, null_ok=True),
        "ipv6": obj({**_L3, "hop_limit": Int(1, 255)}, null_ok=True),
        "udp": obj({"sport": _PORT, "dport": _PORT}, null_ok=True),
        "tcp": obj(
            {
                "sport": _PORT,
                "dport": _PORT,
                "flags": Seq(Str(choices=TCP_FLAG_NAMES), max_items=6, single_ok=True),
                "seq": _U32,
                "ack": _U32,
                "window": Int(0, 0xFFFF),
            },
            null_ok=True,
        ),
        "icmp": obj({"type": Int(0, 255), "code": Int(0, 255)}, null_ok=True),
        "payload_size": Int(0, 9000),
    },
    doc="a packet harness.bpf.packet builds: Ethernet, optionally IPv4/IPv6, UDP/TCP/ICMP, payload",
)
CTX = obj(
    {
        **{f: _U32 for f in ("ingress_ifindex", "rx_queue_index", "mark", "priority", "ifindex")},
        **{f: _U32 for f in ("wire_len", "gso_segs", "gso_size")},
        "tstamp": _U64,
        "hwtstamp": _U64,
        "cb": Seq(_U32, 1, 5),
    },
    doc="struct xdp_md or struct __sk_buff fields test_run accepts",
)
ATTACH = obj(
    {
        "xdp": obj(
            {"dev": _DEV, "ns": _NS, "mode": Str(choices=("skb", "drv", "hw"))}, required=("dev",)
        ),
        "tc": _TC,
        "tcx": _TC,
        "cgroup": obj(
            {
                "path": Str(CGROUP, "a relative path of safe names", name=True),
                "direction": _DIRECTION,
            },
            null_ok=True,
        ),
        "auto": obj({}, null_ok=True, doc="attach as libbpf does from SEC()"),
        "socket": obj({"ns": _NS}, null_ok=True),
    },
    one_of=True,
)
DRIVE = obj(
    {
        "test_run": obj(
            {
                "packet": PACKET,
                "hex": Hex(MAX_PACKET),
                "ctx": CTX,
                "ctx_hex": Hex(4096),
                "repeat": Int(1, MAX_REPEAT),
                "ingress_dev": _DEV,
            }
        ),
        "traffic": obj(
            {
                "from": _NS,
                "to": Str(doc="destination address: an endpoint of the topology"),
                "proto": Str(choices=("udp", "tcp", "icmp")),
                "port": _PORT,
                "count": Int(1, MAX_COUNT),
                "size": Int(0, 9000, doc="payload bytes per packet"),
            },
            required=("to", "proto"),
        ),
        "syscall": obj(
            {
                "run": _ARGV,
                "execve": _ARGV,
                "open": Either(
                    (
                        _PATH,
                        obj(
                            {
                                "path": _PATH,
                                "mode": Str(choices=("read", "write")),
                                "create": Bool(doc="O_CREAT"),
                            },
                            required=("path",),
                        ),
                    ),
                    doc="open(2) then close: a path, or {path, mode: read|write, create}",
                ),
                "unlink": _PATH,
                "connect": obj(
                    {
                        "to": Str(doc="an IPv4 address"),
                        "port": _PORT,
                        "proto": Str(choices=("tcp", "udp")),
                    },
                    required=("to", "port"),
                    doc="connect(2) from a new socket; 2 s timeout (ETIMEDOUT)",
                ),
                "ns": _NS,
            },
            doc="one action: run (a command; exit_status) or a built-in done by the agent "
            "itself (open, unlink, connect, execve; errno)",
        ),
    },
    one_of=True,
)
_IDENTS = Seq(Str(IDENT, "C identifiers"))
OVERRIDE = obj(
    {
        "when": obj(
            {
                "kernel": Str(doc='a kernel version range, e.g. "<5.17", ">=5.10,<6.1"'),
                "config": Seq(_NAME, 1, single_ok=True, doc="config names (any of them)"),
                "libbpf": Str(doc='a range of the loading libbpf\'s version, e.g. "<1.3"'),
                "btf": Bool(doc="the kernel has BTF (/sys/kernel/btf/vmlinux) or not"),
            }
        ),
        "expect": EXPECT,
    },
    required=("when", "expect"),
)
CASE = obj(
    {
        "name": _NAME,
        "description": Str(),
        "program": Str(
            re.compile(r"^[^/]+/[A-Za-z_][A-Za-z0-9_]*$"), "OBJECT/FUNCTION, e.g. xdp/xdp_drop_udp"
        ),
        "requires": obj(
            {
                "helpers": _IDENTS,
                "prog_types": Seq(Str(choices=tuple(progtypes.PROG_TYPES))),
                "map_types": Seq(Str(choices=tuple(progtypes.MAP_TYPES))),
                "kfuncs": _IDENTS,
                "btf": Bool(doc="the kernel has BTF (/sys/kernel/btf/vmlinux)"),
                "attach_types": Seq(
                    Str(re.compile(r"^[a-z0-9_]{1,64}$"), "libbpf attach type names"),
                    doc="e.g. tcx_ingress: the kernel's enum bpf_attach_type must have them",
                ),
                "libbpf": Str(doc='a range of the loading libbpf\'s version, e.g. ">=1.3"'),
            }
        ),
        "load": obj(
            {
                "log_level": Int(0, LOG_LEVEL_MASK, doc="default 5 (level 1 + stats)"),
                "log_size": Int(128, (2**32 - 1) >> 2),
                "flags": Seq(Str(choices=tuple(progtypes.PROG_LOAD_FLAGS)), max_items=16),
                "btf_custom_path": Str(doc="a BTF file, relative to the scenario"),
                "btf": Str(
                    choices=("external",),
                    doc="external: on a kernel without BTF, the BTF kitl generated for it "
                    "with pahole (kernels kitl builds), as btf_custom_path",
                ),
                "globals": Map(
                    Int(-(2**63), 2**64 - 1),
                    Str(IDENT, "C identifiers"),
                    doc="initial values of global variables (.data/.rodata/.bss), set before "
                    "the load, like veristat -G",
                ),
                "maps": MAP_SIZES,
                "fixups": Bool(doc="veristat's: maps with max_entries 0 get 1 (default true)"),
                "pinning": Str(choices=("on", "off"), doc="off: pin no map (default on)"),
                "pin_root": PIN_ROOT,
                "attach_target": ATTACH_TARGET,
                "privilege": Str(
                    choices=PRIVILEGES,
                    doc="privileged (default); bpf: CAP_BPF+CAP_PERFMON; bpf-net: and "
                    "CAP_NET_ADMIN; unprivileged: none of them",
                ),
                "companions": Seq(
                    Str(re.compile(r"^(\*|[A-Za-z_][A-Za-z0-9_]*)$"), "program names or *"),
                    1,
                    256,
                    unique=True,
                    doc="programs of the object loaded with it (* for all, as a skeleton "
                    "does); default: those its prog arrays name statically",
                ),
            }
        ),
        "setup": obj(
            {
                "maps": Map(
                    Seq(
                        obj({"key": _MAP_VALUE, "value": _MAP_VALUE}, required=("key", "value")),
                        1,
                        4096,
                    ),
                    Str(MAP_NAME, "a map name"),
                    doc="map contents written after the load, before attach and drive; "
                    "integers are little-endian at the map's size",
                ),
                "tail_calls": Map(
                    Map(Str(IDENT, "program names"), Str(re.compile(r"^\d{1,6}$"), "slots")),
                    Str(MAP_NAME, "a prog array"),
                    doc="prog array slots filled by program name after the load, as user "
                    "space does: {jmp_table: {0: stage_one}}; those programs load with it",
                ),
            }
        ),
        "attach": ATTACH,
        "drive": DRIVE,
        "expect": EXPECT,
        "overrides": Seq(OVERRIDE, 1, 64),
    },
    required=("name", "program", "expect"),
)
NAME_SPEC = _NAME
DEV_SPEC = _DEV
CONFIG = obj(
    {
        "sysctl": Map(
            Either((Int(-(2**63), 2**64 - 1), Str(re.compile(r"^[^\n]{0,256}$")))),
            Str(
                re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_-]+){1,8}$"),
                "a sysctl like net.ipv4.ip_forward",
            ),
        )
    },
    null_ok=True,
)
OBJECT = obj(
    {
        "source": Str(doc="a C file kitl compiles, relative to the scenario"),
        "path": Str(doc="a compiled .o, relative to the scenario"),
        "cflags": Seq(
            Str(re.compile(r"^-[^\0\n]{1,255}$"), "options starting with -"), max_items=64
        ),
    }
)
VETH = obj({"a": _ENDPOINT, "b": _ENDPOINT}, required=("a", "b"))
NETDEVSIM = obj({"id": Int(0, 1023), "ports": Int(1, 16), "ns": _NS}, required=("id",))
SCENARIO = obj(
    {
        "name": _NAME,
        "description": Str(),
        "kernels": Seq(
            Str(re.compile(r"^(path:[^\0\n]{1,4000}|[A-Za-z0-9][A-Za-z0-9._+-]{0,127})$")),
            1,
            unique=True,
            hint="omit kernels: for the catalog's defaults",
        ),
        "configs": Map(CONFIG, _NAME, 1, 64),
        "libbpf": Seq(
            Str(re.compile(r"^[^\0\n]{1,4000}$")),
            1,
            16,
            unique=True,
            doc="the loaders: default, system, debian-X or a libbpf.so relative to the scenario",
        ),
        "objects": Map(OBJECT, _NAME, 1, 64),
        "topology": obj(
            {
                "netns": Seq(_NAME, 1, 64, unique=True),
                "veth": Seq(VETH, 1, 256),
                "netdevsim": Seq(NETDEVSIM, 1, 64),
            }
        ),
        "cases": Seq(CASE, 1, 10_000),
    },
    required=("name", "objects", "cases"),
)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a scenario file, for `kitl schema` and editors.
    Checks that need the files (programs, sections, maps) are only in kitl's own checker."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://kitl.invalid/schema/scenario.json",
        "title": "kitl scenario",
        **to_schema(SCENARIO),
    }
