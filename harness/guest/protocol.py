"""The guest agent's protocol, shared by the host (harness.vm.agentclient) and the guest
(harness.guest.agent): the operations, a request dataclass for each (typed by the reply it
gets, harness.guest.replies, which also has the kinds of error an answer can carry), and
the JSON lines they travel as.  Standard library only.

    request  {"id": N, "op": "load", "args": {...}}              one line on the agent's stdin
    answer   {"id": N, "ok": true, "result": {...}}               one line on its stdout
             {"id": N, "ok": false, "error": "...", "kind": "setup"}

A request's `args` are its dataclass's fields, under the same names except where a field
names a Python keyword (Traffic.from_ns travels as "from").  The agent reads them back
strictly: a key the operation does not take, or a missing required one, is a protocol
error, so host and guest cannot drift apart unnoticed.  An answer's result is the wire form
of the operation's reply, read back as strictly (harness.guest.replies).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, NotRequired, TypedDict, TypeVar, cast

from harness.guest import replies as r
from harness.guest.replies import ErrorKind, GuestError


class Op(enum.StrEnum):
    PING = "ping"
    FACTS = "facts"
    SYSCTL = "sysctl"
    RUN = "run"
    RUN_LOADER = "run_loader"
    TOPOLOGY_UP = "topology_up"
    TOPOLOGY_DOWN = "topology_down"
    TRAFFIC = "traffic"
    SYSCALL = "syscall"
    LOAD = "load"
    ATTACH = "attach"
    TEST_RUN = "test_run"
    MAP_DUMP = "map_dump"
    MAP_UPDATE = "map_update"
    TAIL_CALLS = "tail_calls"
    EVENTS_START = "events_start"
    EVENTS_COUNT = "events_count"
    PROBE = "probe"
    RELEASE = "release"


A = TypeVar("A", bound=r.Reply)  # the reply a request gets
R = TypeVar("R", bound="Request[Any]")


@dataclass(frozen=True)
class Request(Generic[A]):
    """The arguments of one operation; `Request[XReply]` names the reply it gets."""

    op: ClassVar[Op]
    reply: ClassVar[type[r.Reply]]  # A, kept at run time from the subclass's base
    _wire_names: ClassVar[Mapping[str, str]] = {}  # field -> key, where they differ

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            if typing.get_origin(base) is Request:
                cls.reply = typing.get_args(base)[0]

    def read_reply(self, result: object) -> A:
        """The reply of an answer's result; a protocol error when it does not fit."""
        return cast(A, self.reply.from_wire(result))

    def to_wire(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[self._wire_names.get(f.name, f.name)] = (
                list(value) if isinstance(value, tuple) else value
            )
        return out

    @classmethod
    def from_wire(cls: type[R], args: Mapping[str, Any]) -> R:
        names = {cls._wire_names.get(f.name, f.name): f for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - set(names))
        if unknown:
            raise GuestError(f"{cls.op}: unknown argument {unknown[0]!r}", ErrorKind.PROTOCOL)
        values: dict[str, Any] = {}
        for key, f in names.items():
            if key in args:
                value = args[key]
                values[f.name] = tuple(value) if isinstance(value, list) else value
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise GuestError(f"{cls.op}: missing argument {key!r}", ErrorKind.PROTOCOL)
        return cls(**values)


@dataclass(frozen=True)
class Ping(Request[r.PingReply]):
    op = Op.PING


@dataclass(frozen=True)
class Facts(Request[r.FactsReply]):
    op = Op.FACTS


@dataclass(frozen=True)
class Sysctl(Request[r.SysctlReply]):
    op = Op.SYSCTL
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Run(Request[r.RunReply]):
    """A command in the guest, in a netns and cgroup, killed after `timeout` seconds."""

    op = Op.RUN
    argv: tuple[str, ...]
    ns: str | None = None
    cgroup: str | None = None
    timeout: float = 60.0


@dataclass(frozen=True)
class RunLoader(Request[r.LoaderReply]):
    """A user's own loader (harness.guest.userloader): argv run in `cwd` with `env` added,
    its process group killed after `timeout` seconds (and sent SIGINT after
    `interrupt_after`, as Ctrl-C stops a loader that runs until stopped); the programs it
    loads are listed, polled every `poll_ms` while it runs, and what it pinned is removed
    after it."""

    op = Op.RUN_LOADER
    argv: tuple[str, ...]
    cwd: str
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 60.0
    interrupt_after: float | None = None  # SIGINT then (Ctrl-C), for loaders that run on
    poll_ms: int = 50


@dataclass(frozen=True)
class TopologyUp(Request[r.TopologyUpReply]):
    """netns names; veth pairs {"a": {"dev", "ns", "addr"}, "b": {...}}; netdevsim
    devices {"id", "ports", "ns"}."""

    op = Op.TOPOLOGY_UP
    netns: tuple[str, ...] = ()
    veth: tuple[Mapping[str, Any], ...] = ()
    netdevsim: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class TopologyDown(Request[r.TopologyDownReply]):
    op = Op.TOPOLOGY_DOWN


@dataclass(frozen=True)
class Traffic(Request[r.TrafficReply]):
    """Packets from one netns to an address (`to`, in `to_ns`); `socket_filter`
    ({"handle", "program"}) puts that program on the receiving socket."""

    op = Op.TRAFFIC
    _wire_names: ClassVar[Mapping[str, str]] = {"from_ns": "from"}
    to: str
    from_ns: str | None = None
    to_ns: str | None = None
    proto: str = "udp"
    port: int = 9000
    count: int = 1
    size: int = 64
    wait: float = 1.0
    cgroup: str | None = None
    socket_filter: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Syscall(Request[r.SyscallReply]):
    """One system call done by the agent itself: open, unlink, connect or exec."""

    op = Op.SYSCALL
    action: str
    argv: tuple[str, ...] = ()
    path: str | None = None
    mode: str = "read"
    create: bool = False
    to: str | None = None
    port: int | None = None
    proto: str | None = None
    ns: str | None = None
    cgroup: str | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class Load(Request[r.LoadReply]):
    """One program of an object, loaded as a loader would; see harness.guest.libbpf_load."""

    op = Op.LOAD
    object: str
    program: str
    log_level: int = 1 | 4
    log_size: int | None = None
    log_failures_only: bool = False  # statistics only, unless the load fails (libbpf_load)
    # nothing follows the load (no attach, drive or map): it may come from the object kept
    # prepared (harness.guest.libbpf_clone), and keeps nothing (no handle)
    verify_only: bool = False
    prog_flags: int = 0
    btf_custom_path: str | None = None
    kconfig: str | None = None
    offload_dev: str | None = None
    offload_ns: str | None = None
    privilege: str | None = None
    keep_caps: tuple[int, ...] = ()  # capabilities the profile keeps (CAP_ numbers)
    globals: Mapping[str, int] = field(default_factory=dict)
    maps: tuple[Mapping[str, Any], ...] = ()  # {"name", "max_entries", "value_size"}
    fixups: bool = True
    pinning: bool = True
    pin_root: str | None = None
    attach_target: str | None = None
    companions: tuple[str, ...] = ()
    unprivileged_maps_only: bool = False


class MapSize(TypedDict):
    """A map's size as its loader sets it (Load.maps); None leaves the object's."""

    name: str
    max_entries: int | None
    value_size: int | None


class LoadArgs(TypedDict):
    """Load's arguments as the host builds them (run.engine, run.requests) and a cell
    records the replayed ones for `kitl repro`: the wire's shape, an argument left off
    taking Load's default."""

    object: NotRequired[str]
    program: NotRequired[str]
    log_level: NotRequired[int]
    log_size: NotRequired[int]
    log_failures_only: NotRequired[bool]
    verify_only: NotRequired[bool]
    prog_flags: NotRequired[int]
    btf_custom_path: NotRequired[str]
    offload_dev: NotRequired[str | None]
    offload_ns: NotRequired[str | None]
    privilege: NotRequired[str]
    keep_caps: NotRequired[list[int]]
    globals: NotRequired[dict[str, int]]
    maps: NotRequired[list[MapSize]]
    fixups: NotRequired[bool]
    pinning: NotRequired[bool]
    pin_root: NotRequired[str]
    attach_target: NotRequired[str]
    companions: NotRequired[list[str]]
    unprivileged_maps_only: NotRequired[bool]


@dataclass(frozen=True)
class Attach(Request[r.AttachReply]):
    op = Op.ATTACH
    handle: int
    program: str
    family: str
    dev: str | None = None
    ns: str | None = None
    mode: str | None = None
    direction: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class TestRun(Request[r.TestRunReply]):
    """BPF_PROG_TEST_RUN: `data_hex` the packet (or nothing), `ctx_hex` the context."""

    op = Op.TEST_RUN
    handle: int
    program: str
    data_hex: str = ""
    ctx_hex: str | None = None
    repeat: int = 1
    ctx_only: bool = False


@dataclass(frozen=True)
class MapDump(Request[r.MapDumpReply]):
    op = Op.MAP_DUMP
    handle: int
    maps: tuple[str, ...] = ()  # none: every map that can be walked


@dataclass(frozen=True)
class MapUpdate(Request[r.MapUpdateReply]):
    """{map: [[key, value], ...]}: an integer is written at the map's size, a string is hex."""

    op = Op.MAP_UPDATE
    handle: int
    maps: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TailCalls(Request[r.TailCallsReply]):
    """[[prog array, index, program], ...] filled after the load, as user space does."""

    op = Op.TAIL_CALLS
    handle: int
    slots: tuple[tuple[Any, ...], ...] = ()


@dataclass(frozen=True)
class EventsStart(Request[r.EventsStartReply]):
    op = Op.EVENTS_START
    handle: int
    maps: tuple[str, ...] = ()


@dataclass(frozen=True)
class EventsCount(Request[r.EventsCountReply]):
    op = Op.EVENTS_COUNT
    handle: int


@dataclass(frozen=True)
class Probe(Request[r.ProbeReply]):
    """What of a case's `requires:` the kernel lacks: helpers (name -> id) for a program
    type, program and map types (name -> value), kfuncs by name, other names the kernel's
    BTF must hold (name -> what it is, for the message)."""

    op = Op.PROBE
    prog_type: int = 0
    helpers: Mapping[str, int] = field(default_factory=dict)
    prog_types: Mapping[str, int] = field(default_factory=dict)
    map_types: Mapping[str, int] = field(default_factory=dict)
    kfuncs: tuple[str, ...] = ()
    btf_names: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Release(Request[r.ReleaseReply]):
    """Close one loaded object, or all of them (no handle)."""

    op = Op.RELEASE
    handle: int | None = None


REQUESTS: dict[Op, type[Request[Any]]] = {
    cls.op: cls
    for cls in (
        Ping,
        Facts,
        Sysctl,
        Run,
        RunLoader,
        TopologyUp,
        TopologyDown,
        Traffic,
        Syscall,
        Load,
        Attach,
        TestRun,
        MapDump,
        MapUpdate,
        TailCalls,
        EventsStart,
        EventsCount,
        Probe,
        Release,
    )
}


# -- the wire ------------------------------------------------------------------------------


def request_line(rid: int, op: Op | str, args: Mapping[str, Any]) -> str:
    """A request as the host sends it: its operation's name and its arguments' wire form."""
    return json.dumps({"id": rid, "op": str(op), "args": dict(args)})


def parse_request(message: Mapping[str, Any]) -> Request[Any]:
    """The typed request of a decoded request line."""
    name = str(message.get("op"))
    if name not in Op.__members__.values():
        raise GuestError(f"unknown op {message.get('op')!r}", ErrorKind.PROTOCOL)
    args = message.get("args") or {}
    if not isinstance(args, Mapping):
        raise GuestError(f"{name}: args is not an object", ErrorKind.PROTOCOL)
    return REQUESTS[Op(name)].from_wire(args)


class Answer(TypedDict):
    """One answer line: a result, or an error with its kind (and, for a bug of the
    agent's, its traceback)."""

    id: object  # the request's, echoed as it came
    ok: bool
    result: NotRequired[object]  # a reply's to_wire()
    error: NotRequired[str]
    kind: NotRequired[str]
    traceback: NotRequired[str]


def answer_ok(rid: object, result: object) -> Answer:
    return {"id": rid, "ok": True, "result": result}


def answer_error(
    rid: object, message: str, kind: ErrorKind, traceback: str | None = None
) -> Answer:
    answer: Answer = {"id": rid, "ok": False, "error": message, "kind": str(kind)}
    if traceback is not None:
        answer["traceback"] = traceback
    return answer


def error_kind(name: object) -> ErrorKind:
    """An answer's kind; one this version does not know reads as ERROR."""
    text = str(name)
    return ErrorKind(text) if text in ErrorKind.__members__.values() else ErrorKind.ERROR
