"""`Spec` values: the shape of a YAML value (type, range, pattern, choices, required keys).

`Reader.validate` checks YAML against them and records every problem with its position, and
`to_schema` turns them into JSON Schema, so the checker and `kitl schema` cannot drift.  The
scenario language is written with them in harness.scenario.shape.
"""

from __future__ import annotations

import datetime
import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.yamlsrc import LocDict, LocList, Pos, where

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
