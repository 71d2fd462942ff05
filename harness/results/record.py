"""One cell's record, typed: what results.jsonl and results.json hold for a cell, as every
reader (the reports, `kitl compare`, `kitl known`, `kitl repro`, `kitl merge`, --resume)
sees it.

`CellRecord.from_json` reads any record kitl wrote, however old, partial or damaged, and
never fails: a missing key reads as its field's default, a value of the wrong type as what
the readers made of it before there was a model ("" for a null name, ERROR for an outcome
this kitl does not know).  Nothing read is lost: keys kitl does not model, and values whose
type is wrong, are kept in `extra` as recorded, and the order of the keys in `keys`, so
`from_json(d).to_json() == d` (and writes the same bytes): finalize and merge rewrite the
records they read, and a newer kitl's fields must survive an older kitl's merge.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from harness.outcome import Outcome


def label(kernel: str, config: str, libbpf: str) -> str:
    """The bracket of a cell id, and a report's column: KERNEL-CONFIG, and -LIBBPF when
    the loader is not the default (recorded as ""); a part a damaged record lacks is left
    out."""
    return "-".join(p for p in (kernel, config, libbpf) if p) or "?"


def cell_id(scenario: str, case: str, kernel: str, config: str, libbpf: str) -> str:
    """The one name of a cell, as the terminal, the reports, `kitl compare`, `kitl known`,
    `kitl repro`, `kitl merge` and --resume write and read it: SCENARIO::CASE[LABEL]."""
    return f"{scenario}::{case}[{label(kernel, config, libbpf)}]"


# a field's reading of a JSON value: (the typed value, whether it says all the value did)
Reading = tuple[object, bool]


def text_of(value: object) -> str:
    """A JSON value as text, the way readers showed any value where a name belongs."""
    return "" if value is None else value if isinstance(value, str) else str(value)


def number_of(value: object) -> int | float | None:
    # bool is an int to Python, but never a figure
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class JSONRecord:
    """Base of the typed records read from JSON objects.  A subclass declares its JSON keys
    as fields, each str, int, float, bool, Outcome, tuple[str, ...], Mapping[str, Any],
    another JSONRecord or a tuple of them, optionally `| None`; the reader of each comes
    from its annotation.
    Besides its fields, a record keeps what makes its JSON whole again:"""

    # what the fields cannot say exactly: unmodelled keys, and wrongly typed values
    extra: Mapping[str, Any] = field(default_factory=dict, kw_only=True)
    # the keys the JSON object had, in its order; None for a record built in code, which
    # writes every field
    keys: tuple[str, ...] | None = field(default=None, kw_only=True)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        fields = _schema(cls)
        values: dict[str, object] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            read = fields.get(key)
            if read is None:
                extra[key] = value
                continue
            values[key], exact = read(value)
            if not exact:
                extra[key] = value
        return cls(**values, extra=extra, keys=tuple(data))

    def to_json(self) -> dict[str, Any]:
        out = {name: _write(getattr(self, name)) for name in _schema(type(self))}
        out.update(self.extra)
        return out if self.keys is None else {k: out[k] for k in self.keys}

    @property
    def empty(self) -> bool:
        """Whether the JSON object held nothing (or was not an object)."""
        return not self.to_json()

    def value(self, key: str) -> object:
        """What the record holds under a JSON key, as recorded; None when it has none."""
        if key in self.extra:
            return self.extra[key]
        if key in _schema(type(self)) and (self.keys is None or key in self.keys):
            return getattr(self, key)
        return None


def _write(value: object) -> object:
    if isinstance(value, JSONRecord):
        return value.to_json()
    if isinstance(value, Outcome):
        return value.value
    if isinstance(value, tuple):
        return [_write(v) for v in value]
    if isinstance(value, Mapping):
        return dict(value)
    return value


_SCHEMAS: dict[type[JSONRecord], dict[str, Callable[[object], Reading]]] = {}


def _schema(cls: type[JSONRecord]) -> dict[str, Callable[[object], Reading]]:
    """Each JSON field of a record class, with its reader (from the annotations, once)."""
    if cls not in _SCHEMAS:
        hints = typing.get_type_hints(cls)
        own = (f.name for f in dataclasses.fields(cls) if f.name not in ("extra", "keys"))
        _SCHEMAS[cls] = {name: _reader(hints[name]) for name in own}
    return _SCHEMAS[cls]


def _reader(hint: object) -> Callable[[object], Reading]:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = _reader(next(a for a in args if a is not type(None)))
        return lambda v: (None, True) if v is None else inner(v)
    if hint is str:
        return lambda v: (v, True) if isinstance(v, str) else (text_of(v), False)
    if hint in (int, float):
        kinds = int if hint is int else int | float
        return lambda v: (v, True) if isinstance(v, kinds) and not isinstance(v, bool) else _bad
    if hint is bool:
        return lambda v: (v, True) if isinstance(v, bool) else _bad
    if hint is Outcome:
        return lambda v: (Outcome(str(v)), True) if _named(v) else (Outcome.ERROR, False)
    if typing.get_origin(hint) is tuple and args == (str, Ellipsis):
        return _strings
    if typing.get_origin(hint) is tuple and _is_record(args[0]) and args[1:] == (Ellipsis,):
        return _records(args[0])
    if typing.get_origin(hint) is Mapping:
        return lambda v: (v, True) if isinstance(v, dict) else ({}, False)
    if isinstance(hint, type) and issubclass(hint, JSONRecord):
        sub = hint
        return lambda v: (sub.from_json(v if isinstance(v, dict) else {}), isinstance(v, dict))
    raise TypeError(f"a JSONRecord field cannot be a {hint}")


_bad: Reading = (None, False)


def _named(value: object) -> bool:
    return isinstance(value, str) and value in Outcome.__members__


def _is_record(hint: object) -> bool:
    return isinstance(hint, type) and issubclass(hint, JSONRecord)


def _records(kind: type[JSONRecord]) -> Callable[[object], Reading]:
    """A list of objects as records; anything else reads as none (kept in extra)."""

    def read(value: object) -> Reading:
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            return tuple(kind.from_json(v) for v in value), True
        return (), False

    return read


def _strings(value: object) -> Reading:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value), True
    return (), False


R = TypeVar("R", bound=JSONRecord)


def amended(record: R, **values: object) -> R:
    """`record` with JSON values set, as a dict update would: a key it had keeps its place,
    a new one comes last (what a cell filled in as it ran writes the same bytes)."""
    return type(record).from_json({**record.to_json(), **values})


# --- the parts of a cell's record --------------------------------------------------------------


@dataclass(frozen=True)
class Verifier(JSONRecord):
    """The verifier's figures (harness.run.records.verifier_figures): the load's, then
    its log's statistics; None where the load or the log did not say."""

    verified_insns: int | None = None
    xlated_len: int | None = None
    jited_len: int | None = None
    insn_cnt: int | None = None
    errno: int | None = None
    log_truncated: bool | None = None
    libbpf_version: str | None = None
    log_level: int | None = None
    failed_stage: str | None = None
    insns: int | None = None
    total_states: int | None = None
    peak_states: int | None = None
    max_states_per_insn: int | None = None
    duration_us: int | None = None
    stack_depth: int | None = None
    max_stack_depth: int | None = None
    mark_read: int | None = None


@dataclass(frozen=True)
class Timings(JSONRecord):
    """What a cell timed: the whole case (s), the load (ms), a test run (ns per op)."""

    case_s: float | None = None
    load_ms: float | None = None
    ns_per_op: float | None = None


@dataclass(frozen=True)
class LoaderProgram(JSONRecord):
    """A program a user's loader loaded, as the kernel's bpf_prog_info told it."""

    id: int | None = None
    name: str = ""  # the kernel's: 15 characters at most
    type: str = ""  # libbpf's name
    verified_insns: int | None = None
    xlated_len: int | None = None
    jited_len: int | None = None
    run_cnt: int | None = None
    run_time_ns: int | None = None
    left_loaded: bool | None = None  # still loaded when the loader had exited
    pinned: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoaderRun(JSONRecord):
    """A user's loader run by a loader case (harness.guest.userloader's reply): its
    command, how it ended, its output's tails and the programs it loaded."""

    command: tuple[str, ...] = ()
    status: int | None = None  # -N: killed by signal N
    timed_out: bool | None = None
    seconds: float | None = None
    stdout: str = ""
    stderr: str = ""
    programs: tuple[LoaderProgram, ...] = ()
    pins: tuple[str, ...] = ()
    output_cut: bool | None = None


@dataclass(frozen=True)
class Observed(JSONRecord):
    """What the guest reported (harness.run.records.observed_json), and the console's OOM
    kills.  The load, attach and drive reports stay mappings: the guest's own replies."""

    load: Mapping[str, Any] = field(default_factory=dict)
    load_args: Mapping[str, Any] = field(default_factory=dict)
    error_class: str | None = None
    attach: Mapping[str, Any] | None = None
    attach_error: str | None = None
    test_run: Mapping[str, Any] | None = None
    traffic: Mapping[str, Any] | None = None
    syscall: Mapping[str, Any] | None = None
    maps: Mapping[str, Any] = field(default_factory=dict)
    events: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    oom_kills: tuple[str, ...] = ()
    loader: LoaderRun | None = None  # a loader case's: what the user's own loader did

    @property
    def load_ok(self) -> bool | None:
        """Whether the program loaded; None when the case never got to loading."""
        ok = self.load.get("ok")
        return ok if isinstance(ok, bool) else None


@dataclass(frozen=True)
class Crash(JSONRecord):
    """A KERNEL_CRASH's console splat."""

    title: str = ""
    fingerprint: str = ""
    signature: str = ""
    functions: tuple[str, ...] = ()
    text: str = ""


@dataclass(frozen=True)
class BootFailure(JSONRecord):
    """A kernel that did not come up, said once for all its cells (RunDir.record_boot_failure;
    results.json's run.boot_failures)."""

    kernel: str = ""
    outcome: str = ""  # as the run wrote it, shown as it is
    reason: str = ""
    console_path: str = ""  # relative to the run directory


def _empty(kind: type[R]) -> Callable[[], R]:
    # a part a record built in code lacks is written as an empty object, as CellResult does
    return lambda: kind.from_json({})


@dataclass(frozen=True)
class CellRecord(JSONRecord):
    """One cell's result as recorded (harness.results.rundir.CellResult writes it)."""

    scenario: str = ""  # or the object, for `kitl verify`
    case: str = ""  # or the program
    kernel: str = ""
    config: str = ""
    outcome: Outcome = Outcome.ERROR
    reason: str = ""
    kernel_release: str = ""
    kernel_digest: str = ""
    accel: str = ""
    sysctls: Mapping[str, Any] = field(default_factory=dict)
    program: str = ""
    prog_type: str = ""
    section: str = ""
    expected: Mapping[str, Any] = field(default_factory=dict)  # the expectation's JSON form
    observed: Observed = field(default_factory=_empty(Observed))
    verifier: Verifier = field(default_factory=_empty(Verifier))
    timings: Timings = field(default_factory=_empty(Timings))
    log_path: str = ""  # relative to the run directory, as are the console and dmesg
    scenario_file: str = ""
    scenario_line: int | None = None  # the case's line in scenario_file; None: not recorded
    object_file: str = ""
    object_sha256: str = ""
    console_path: str = ""
    dmesg_path: str = ""
    libbpf: str = ""  # the loader when it is not the default
    crash: Crash = field(default_factory=_empty(Crash))
    id: str = ""  # as recorded: older ids do not name the loader

    def __post_init__(self) -> None:
        if self.keys is None and not self.id:  # built in code: it names itself, as written
            object.__setattr__(self, "id", self.cell_id)

    @property
    def label(self) -> str:
        """KERNEL-CONFIG[-LIBBPF]: a report's column, the bracket of the cell id."""
        return label(self.kernel, self.config, self.libbpf)

    @property
    def cell_id(self) -> str:
        """The cell's one name (rundir.cell_id); the recorded id when there is one."""
        return self.id or cell_id(self.scenario, self.case, self.kernel, self.config, self.libbpf)

    @property
    def key(self) -> tuple[str, str]:
        """The identity a cell's records share: its id and its loader, which older ids do
        not name (a retried or resumed cell is appended again under it)."""
        return self.cell_id, self.libbpf

    @property
    def outcome_text(self) -> str:
        """The outcome as recorded: "" when there is none, an unknown name as written (the
        `outcome` field reads both as ERROR)."""
        return text_of(self.value("outcome"))
