"""What the guest agent answers (harness.guest.protocol has the requests): a reply dataclass
per operation, or an error of a kind.  Standard library only: the host reads the same
classes back that the agent wrote.

A reply's wire form is its fields under the same names (where a field has to be named
otherwise, `_wire_names` says so), sequences as JSON arrays, nested replies as objects.
A few fields are left off the wire while they hold their default (`_optional`), because
the agent has always sent them only when they say something: a load's handle only when it
loaded.  Three replies are a JSON object keyed by name (`_whole`: sysctl, map_dump,
events_count).  `from_wire` is tolerant of an optional field left off, and strict about
everything else: a missing required field, a key the reply does not have, or a value of
the wrong type is a protocol error, so host and agent cannot drift apart unnoticed.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from harness.errors import KitlError


class ErrorKind(enum.StrEnum):
    """What failed, as the host turns it into a cell's outcome."""

    PROTOCOL = "protocol"  # a request the agent cannot take (a bug of the host's)
    SETUP = "setup"  # what the case asked of the guest cannot be done (a map, a cgroup)
    ATTACH = "attach"  # the kernel refused the attach: the case's result, not a failure
    TOPOLOGY = "topology"  # netns, veth or netdevsim could not be set up
    TIMEOUT = "timeout"  # what the agent ran for the request did not finish in time
    INTERNAL = "internal"  # an exception the agent did not expect (its traceback follows)
    ERROR = "error"


class GuestError(KitlError):
    """A request that failed in the guest in a way the host sees as a typed result."""

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.ERROR) -> None:
        super().__init__(message)
        self.kind = kind


# -- the wire form of a reply ---------------------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The fields' types, evaluated once per class (annotations are strings here)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _type_name(hint: object) -> str:
    """A field's type as its annotation reads: "int | None", "tuple[str, ...]"."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', origin)}[{inner}]"
    if hint is type(None):
        return "None"
    return str(getattr(hint, "__name__", hint))


def _malformed(where: str, value: object, expected: object) -> GuestError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    name = expected if isinstance(expected, str) else _type_name(expected)
    return GuestError(f"malformed reply: {where} is {shown}, not {name}", ErrorKind.PROTOCOL)


def _decode(value: object, hint: Any, where: str) -> Any:
    """`value` as read from JSON, checked against a field's type: arrays become tuples,
    objects of a reply type become that reply."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:  # X | None: what is wrong inside X says more
            return _decode(value, arms[0], where)
        for arm in arms:
            try:
                return _decode(value, arm, where)
            except GuestError:
                continue
        raise _malformed(where, value, hint)
    if isinstance(hint, type) and issubclass(hint, Reply):
        return hint.from_wire(value, where)
    if origin is tuple:
        return _decode_tuple(value, args, where)
    if origin is Mapping:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise _malformed(where, value, hint)
        return {k: _decode(v, args[1], f"{where}[{k!r}]") for k, v in value.items()}
    # JSON has one kind of number: an integral float may arrive as an int
    numeric = hint is float and isinstance(value, int)
    # bool is an int to Python, never to the wire
    if not (isinstance(value, hint) or numeric) or (hint is not bool and isinstance(value, bool)):
        raise _malformed(where, value, hint)
    return value


def _decode_tuple(value: object, args: tuple[Any, ...], where: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise _malformed(where, value, "an array")
    if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
        args = (args[0],) * len(value)
    elif len(value) != len(args):
        raise _malformed(where, value, f"an array of {len(args)}")
    return tuple(
        _decode(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
    )


def _plain(value: object) -> Any:
    """A field's value as JSON: replies as objects, tuples as arrays."""
    if isinstance(value, Reply):
        return value.to_wire()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Reply:
    """What one operation answers."""

    _wire_names: ClassVar[Mapping[str, str]] = {}  # field -> key, where they differ
    _optional: ClassVar[frozenset[str]] = frozenset()  # off the wire at their default
    _whole: ClassVar[str] = ""  # the field that is the whole reply (a JSON object by name)

    def _left_off(self, name: str, value: object, default: object) -> bool:
        return name in self._optional and value == default

    def to_wire(self) -> dict[str, Any]:
        """The JSON object the agent sends."""
        if self._whole:
            return dict(_plain(getattr(self, self._whole)))
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            if not self._left_off(f.name, value, default):
                out[self._wire_names.get(f.name, f.name)] = _plain(value)
        return out

    @classmethod
    def from_wire(cls, data: object, where: str = "") -> Self:
        """The reply from an answer's result; a protocol error when it does not fit."""
        where = where or cls.__name__
        hints = _hints(cls)
        if cls._whole:
            return cls(**{cls._whole: _decode(data, hints[cls._whole], where)})
        if not isinstance(data, Mapping):
            raise _malformed(where, data, "an object")
        names = {cls._wire_names.get(f.name, f.name): f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise GuestError(f"malformed reply: {where} has no {unknown[0]!r}", ErrorKind.PROTOCOL)
        values = {}
        for key, f in names.items():
            if key in data:
                values[f.name] = _decode(data[key], hints[f.name], f"{where}.{key}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise GuestError(f"malformed reply: {where} lacks {key!r}", ErrorKind.PROTOCOL)
        return cls(**values)


# -- one reply per operation -------------------------------------------------------------


@dataclass(frozen=True)
class PingReply(Reply):
    pid: int
    release: str


@dataclass(frozen=True)
class FactsReply(Reply):
    """The guest as a case's expectations and requirements see it."""

    release: str
    btf: bool
    sysctl: Mapping[str, str | None]  # the JIT and BPF sysctls at boot (None: unreadable)
    lsm: str | None
    cgroup2: bool
    libbpf_version: str  # "" when the loader does not load


@dataclass(frozen=True)
class SysctlValue(Reply):
    _optional = frozenset({"error"})
    ok: bool
    value: str | None  # in effect after the write (refused or not)
    error: str | None = None  # why the kernel refused


@dataclass(frozen=True)
class SysctlReply(Reply):
    _whole = "values"
    values: Mapping[str, SysctlValue] = field(default_factory=dict)


@dataclass(frozen=True)
class RunReply(Reply):
    """A command's exit status and its output's tails."""

    status: int
    stdout: str
    stderr: str
    seconds: float


@dataclass(frozen=True)
class LoaderProgram(Reply):
    """A program a user's loader loaded, as the kernel's bpf_prog_info tells it."""

    id: int
    name: str  # the kernel's: at most 15 characters (BPF_OBJ_NAME_LEN)
    type: str  # libbpf's name: "xdp", "kprobe", ...
    verified_insns: int | None  # None before 5.16
    xlated_len: int
    jited_len: int
    run_cnt: int
    run_time_ns: int
    left_loaded: bool  # still loaded when the loader had exited
    pinned: tuple[str, ...] = ()  # bpffs paths left holding it (the program or its link)


@dataclass(frozen=True)
class LoaderReply(Reply):
    """A user's loader run in the guest: how it ended, its output's tails, and every
    program it loaded (seen while it ran, or left behind)."""

    command: tuple[str, ...]
    status: int | None  # the exit status; -N killed by signal N; None: never started
    timed_out: bool
    seconds: float
    stdout: str  # the last LOADER_OUTPUT_MAX bytes, decoded
    stderr: str
    programs: tuple[LoaderProgram, ...]
    pins: tuple[str, ...] = ()  # what it pinned under /sys/fs/bpf, removed afterwards
    output_cut: bool = False  # stdout or stderr was longer than what is kept


@dataclass(frozen=True)
class TopologyUpReply(Reply):
    netns: tuple[str, ...]
    netdevsim: Mapping[str, tuple[str, ...]]  # device id -> its ports, nsim<ID>p<N>


@dataclass(frozen=True)
class TopologyDownReply(Reply):
    problems: tuple[str, ...]
    netns_left: tuple[str, ...]


@dataclass(frozen=True)
class TrafficReply(Reply):
    """What arrived: UDP adds bytes received and send errors, TCP whether it connected."""

    _optional = frozenset({"received_bytes", "send_errors", "connect"})
    sent: int
    delivered: int
    dropped: int
    received_bytes: int | None = None  # a socket filter's return value trims packets
    send_errors: Mapping[str, int] = field(default_factory=dict)  # strerror -> count
    connect: str | None = None  # "connected" or the strerror


@dataclass(frozen=True)
class SyscallReply(Reply):
    action: str
    errno: int
    errno_name: str  # "" when the call succeeded
    status: int | None  # an execve's exit status
    seconds: float


@dataclass(frozen=True)
class FailedMap(Reply):
    """The map libbpf could not create (harness.guest.libbpf_prepare.MapDef)."""

    name: str
    type: int
    type_name: str
    key_size: int
    value_size: int
    max_entries: int
    pin_path: str = ""
    type_supported: int | None = None  # the kernel's probe: 1 yes, 0 no, < 0 unknown


@dataclass(frozen=True)
class LoadReply(Reply):
    """One program's load: harness.guest.libbpf_load.ProgramLoad field for field (see it
    for their meaning), then what the agent adds: the loader's version, the privilege
    profile of a lowered load, notes, what the loader lacks when it failed, the handle of
    the loaded object and the paths it pinned."""

    _wire_names: ClassVar[Mapping[str, str]] = {
        "unprivileged_bpf_disabled": "kernel.unprivileged_bpf_disabled"
    }
    _optional = frozenset({"privilege", "notes", "libbpf_lacks", "handle", "pinned"})
    program: str
    section: str
    prog_type: str
    attach_type: str
    ok: bool
    errno: int
    log: str
    log_truncated: bool
    libbpf_messages: str
    load_ns: int
    insn_cnt: int
    prog_id: int | None
    xlated_len: int | None
    jited_len: int | None
    verified_insns: int | None
    log_level: int = 0
    log_size: int = 0
    attempts: int = 1
    failed_stage: str = ""
    fixups: tuple[str, ...] = ()
    failed_map: FailedMap | None = None
    companions: tuple[str, ...] = ()
    failed_program: str = ""
    stats_log: str = ""  # the first load's statistics, when a failure was loaded again
    clone: bool = False  # loaded from the object prepared once (libbpf_clone)
    libbpf_version: str = ""
    privilege: str | None = None  # a lowered load's profile
    unprivileged: bool = False
    unprivileged_bpf_disabled: str | None = None  # the sysctl, as the lowered load saw it
    notes: tuple[str, ...] = ()
    libbpf_lacks: tuple[str, ...] | None = None  # a failed load's loader: what it lacks
    handle: int | None = None
    pinned: tuple[str, ...] = ()

    def _left_off(self, name: str, value: object, default: object) -> bool:
        # a lowered load says how it was lowered, even when the sysctl reads as nothing
        if name in ("unprivileged", "unprivileged_bpf_disabled"):
            return self.privilege is None
        return super()._left_off(name, value, default)


@dataclass(frozen=True)
class AttachReply(Reply):
    _optional = frozenset({"attach_mode"})
    via: str  # the call that attached it: "bpf_xdp_attach", "bpf_link_create"...
    attach_mode: str | None = None  # XDP only: the mode the kernel reports


@dataclass(frozen=True)
class TestRunReply(Reply):
    __test__ = False  # a reply, not a pytest class

    retval: int
    duration_ns: int
    errno: int
    data_out_hex: str
    ctx_out_hex: str = ""  # answers saved before the context came back lack it


@dataclass(frozen=True)
class MapDumpReply(Reply):
    _whole = "maps"
    maps: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)  # hex k, v


@dataclass(frozen=True)
class MapUpdateReply(Reply):
    written: int


@dataclass(frozen=True)
class TailCallsReply(Reply):
    filled: int


@dataclass(frozen=True)
class EventsStartReply(Reply):
    counting: tuple[str, ...]


@dataclass(frozen=True)
class EventsCountReply(Reply):
    _whole = "counts"
    counts: Mapping[str, int] = field(default_factory=dict)  # ring buffer records per map


@dataclass(frozen=True)
class ProbeReply(Reply):
    missing: tuple[str, ...]
    unprobed: tuple[str, ...]  # present, though this libbpf cannot probe it


@dataclass(frozen=True)
class ReleaseReply(Reply):
    released: tuple[int, ...]
    problems: tuple[str, ...]
