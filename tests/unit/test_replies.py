"""The guest agent's replies (harness.guest.replies): every operation has one, each travels
as the JSON object the agent has always sent and comes back as it was, and an answer that
does not fit its reply is a protocol error on the host."""

from __future__ import annotations

import dataclasses
import json
import socket
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.guest import protocol
from harness.guest import replies as r
from harness.guest.agent import Agent
from harness.guest.libbpf_load import ProgramLoad
from harness.guest.libbpf_prepare import MapDef
from harness.guest.protocol import REQUESTS
from harness.guest.replies import ErrorKind, GuestError
from harness.vm.agentclient import AgentCallError, AgentClient
from tests.fakes import fake_vm
from tests.replies import BLANK_LOAD

DATA = Path(__file__).parents[1] / "data"

LOADED = r.LoadReply(
    program="xdp_count",
    section="xdp",
    prog_type="xdp",
    attach_type="xdp",
    ok=True,
    errno=0,
    log="processed 26 insns",
    log_truncated=False,
    libbpf_messages="",
    load_ns=170121490,
    insn_cnt=23,
    prog_id=4,
    xlated_len=288,
    jited_len=167,
    verified_insns=28,
    log_level=5,
    log_size=16 << 20,
    fixups=("map counts: max_entries 0 -> 1",),
    companions=("stage1",),
    libbpf_version="1.4",
    handle=1,
    pinned=("/sys/fs/bpf/counts",),
)
FAILED_MAP = r.FailedMap("counts", 1, "hash", 4, 8, 0, type_supported=1)

# one reply of every operation, in the shapes the agent sends
SAMPLES: dict[protocol.Op, r.Reply] = {
    protocol.Op.PING: r.PingReply(4242, "6.1.0-fake"),
    protocol.Op.FACTS: r.FactsReply(
        "6.1.0", True, {"net.core.bpf_jit_enable": "1", "kernel.bpf_stats_enabled": None},
        "lockdown,capability,bpf", True, "1.4",
    ),
    protocol.Op.SYSCTL: r.SysctlReply({
        "net.core.bpf_jit_harden": r.SysctlValue(True, "2"),
        "net.core.bpf_jit_enable": r.SysctlValue(False, "1", "Invalid argument"),
    }),
    protocol.Op.RUN: r.RunReply(4, "hi\n", "", 0.25),
    protocol.Op.RUN_LOADER: r.LoaderReply(
        ("/usr/sbin/bpftool", "prog", "loadall"), 0, False, 1.5, "", "warn\n",
        (r.LoaderProgram(12, "xdp_pass", "xdp", 9, 72, 64, 0, 0, True, ("/sys/fs/bpf/x",)),),
        pins=("/sys/fs/bpf/x",),
    ),
    protocol.Op.TOPOLOGY_UP: r.TopologyUpReply(("a", "b"), {"1": ("nsim1p0", "nsim1p1")}),
    protocol.Op.TOPOLOGY_DOWN: r.TopologyDownReply((), ("leftover",)),
    protocol.Op.TRAFFIC: r.TrafficReply(3, 2, 1, received_bytes=128, send_errors={"EPERM": 1}),
    protocol.Op.SYSCALL: r.SyscallReply("connect", 111, "ECONNREFUSED", None, 0.001),
    protocol.Op.LOAD: LOADED,
    protocol.Op.ATTACH: r.AttachReply("bpf_xdp_attach", attach_mode="drv"),
    protocol.Op.TEST_RUN: r.TestRunReply(1, 35, 0, "00" * 14, ""),
    protocol.Op.MAP_DUMP: r.MapDumpReply({"counts": (("00000000", "0100000000000000"),)}),
    protocol.Op.MAP_UPDATE: r.MapUpdateReply(2),
    protocol.Op.TAIL_CALLS: r.TailCallsReply(1),
    protocol.Op.EVENTS_START: r.EventsStartReply(("events",)),
    protocol.Op.EVENTS_COUNT: r.EventsCountReply({"events": 4}),
    protocol.Op.PROBE: r.ProbeReply(("helper bpf_loop (libbpf_probe_bpf_helper)",), ()),
    protocol.Op.RELEASE: r.ReleaseReply((1, 2), ()),
}  # fmt: skip


def test_every_operation_has_the_reply_its_handler_returns() -> None:
    assert set(SAMPLES) == set(protocol.Op)
    agent = Agent()
    for op, cls in REQUESTS.items():
        assert issubclass(cls.reply, r.Reply), op
        assert type(SAMPLES[op]) is cls.reply, op
        handler = typing.get_type_hints(agent.ops[op])["return"]
        assert handler is cls.reply, f"{op}: the handler returns {handler}"


@pytest.mark.parametrize("reply", SAMPLES.values(), ids=lambda x: type(x).__name__)
def test_a_reply_comes_back_as_it_was_sent(reply: r.Reply) -> None:
    line = json.dumps(reply.to_wire())
    assert type(reply).from_wire(json.loads(line)) == reply


@pytest.mark.parametrize(
    ("reply", "wire"),
    [
        (r.SysctlReply({"a.b": r.SysctlValue(True, None)}), {"a.b": {"ok": True, "value": None}}),
        (r.SysctlReply({"a.b": r.SysctlValue(False, "0", "Permission denied")}),
         {"a.b": {"ok": False, "value": "0", "error": "Permission denied"}}),
        (r.AttachReply("setsockopt(SO_ATTACH_BPF)"), {"via": "setsockopt(SO_ATTACH_BPF)"}),
        (r.TrafficReply(1, 1, 0, received_bytes=64),
         {"sent": 1, "delivered": 1, "dropped": 0, "received_bytes": 64}),
        (r.TrafficReply(1, 0, 1, connect="Connection refused"),
         {"sent": 1, "delivered": 0, "dropped": 1, "connect": "Connection refused"}),
        (r.TrafficReply(2, 2, 0), {"sent": 2, "delivered": 2, "dropped": 0}),
        (r.EventsCountReply({}), {}),
        (r.TopologyUpReply((), {}), {"netns": [], "netdevsim": {}}),
    ],
)  # fmt: skip
def test_optional_fields_are_on_the_wire_only_when_the_agent_sent_them(
    reply: r.Reply, wire: dict[str, Any]
) -> None:
    assert reply.to_wire() == wire
    assert type(reply).from_wire(wire) == reply


def test_a_load_reply_is_the_load_and_what_the_agent_adds() -> None:
    failed = dataclasses.replace(
        LOADED, ok=False, errno=22, handle=None, pinned=(), failed_map=FAILED_MAP
    )
    lowered = dataclasses.replace(
        failed, privilege="unprivileged", unprivileged=True, libbpf_lacks=(), notes=("n",)
    )
    wire = lowered.to_wire()
    assert wire["failed_map"] == dataclasses.asdict(FAILED_MAP)
    # a lowered load names its sysctl by the sysctl's name, even when it cannot be read
    assert (wire["privilege"], wire["unprivileged"]) == ("unprivileged", True)
    assert wire["kernel.unprivileged_bpf_disabled"] is None
    assert (wire["libbpf_lacks"], wire["notes"]) == ([], ["n"])
    assert "handle" not in wire
    assert r.LoadReply.from_wire(json.loads(json.dumps(wire))) == lowered
    plain = failed.to_wire()
    for key in ("privilege", "unprivileged", "kernel.unprivileged_bpf_disabled", "notes",
                "libbpf_lacks", "handle", "pinned"):  # fmt: skip
        assert key not in plain, key


def test_a_load_reply_has_every_field_of_the_load_the_agent_reports() -> None:
    """The agent builds the reply from harness.guest.libbpf_load.ProgramLoad field for
    field: a field added there needs its twin here, with the same default."""
    mine = {f.name: f for f in dataclasses.fields(r.LoadReply)}
    for f in dataclasses.fields(ProgramLoad):
        assert f.name in mine, f"LoadReply lacks ProgramLoad.{f.name}"
        assert (mine[f.name].default is dataclasses.MISSING) == (
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ), f.name


class _Lib:
    version = (1, 4)

    def probe(self, kind: str, value: int, helper: int = 0) -> int:
        return 0


def test_the_agent_reports_a_load_as_it_always_did() -> None:
    """The load's fields as dataclasses.asdict gives them, the loader's version, and the
    kernel's answer to whether a failed map's type exists at all."""
    result = ProgramLoad(
        **{**BLANK_LOAD, "ok": False, "errno": 22},
        fixups=("f",),
        failed_map=MapDef("counts", 1, "hash", 4, 8, 0),
    )
    wire = Agent()._report(_Lib(), result).to_wire()
    expected = dataclasses.asdict(result)
    expected["libbpf_version"] = "1.4"
    expected["failed_map"]["type_supported"] = 0
    assert wire == json.loads(json.dumps(expected))


@pytest.mark.parametrize(
    ("cls", "wire", "error"),
    [
        (r.PingReply, {"pid": "1", "release": "6.1"}, "PingReply.pid is '1', not int"),
        (r.PingReply, {"pid": True, "release": "6.1"}, "PingReply.pid is True, not int"),
        (r.PingReply, {"pid": 1}, "PingReply lacks 'release'"),
        (r.PingReply, {"pid": 1, "release": "6.1", "x": 0}, "PingReply has no 'x'"),
        (r.PingReply, [1, "6.1"], "PingReply is [1, '6.1'], not an object"),
        (r.ReleaseReply, {"released": [1, "2"], "problems": []},
         "ReleaseReply.released[1] is '2', not int"),
        (r.TrafficReply, {"sent": 1, "delivered": 1, "dropped": 0, "send_errors": {"E": "1"}},
         "TrafficReply.send_errors['E'] is '1', not int"),
        (r.FactsReply, {"release": "6.1", "btf": True, "sysctl": {}, "lsm": 0, "cgroup2": True,
                        "libbpf_version": ""}, "FactsReply.lsm is 0, not str"),
        (r.MapDumpReply, {"m": [["00", "01", "02"]]},
         "MapDumpReply['m'][0] is ['00', '01', '02'], not an array of 2"),
        (r.SysctlReply, {"a": {"ok": 1, "value": None}}, "SysctlReply['a'].ok is 1, not bool"),
        (r.LoadReply, {**BLANK_LOAD, "failed_map": {"name": "m"}},
         "LoadReply.failed_map lacks 'type'"),
        (r.LoadReply, {**BLANK_LOAD, "prog_id": 1.5}, "LoadReply.prog_id is 1.5, not int"),
    ],
)  # fmt: skip
def test_a_malformed_reply_is_a_protocol_error(cls: type[r.Reply], wire: Any, error: str) -> None:
    with pytest.raises(GuestError) as info:
        cls.from_wire(wire)
    assert str(info.value) == f"malformed reply: {error}"
    assert info.value.kind is ErrorKind.PROTOCOL


def test_a_field_left_off_by_an_older_agent_reads_as_its_default() -> None:
    run = r.TestRunReply.from_wire({"retval": 2, "duration_ns": 10, "errno": 0, "data_out_hex": ""})
    assert run.ctx_out_hex == ""
    ran = r.RunReply.from_wire({"status": 0, "stdout": "", "stderr": "", "seconds": 1})
    assert ran.seconds == 1  # JSON has one kind of number


def _saved_observations() -> list[tuple[str, type[r.Reply], dict[str, Any]]]:
    """The replies recorded in the results of real runs kept under tests/data."""
    found: list[tuple[str, type[r.Reply], dict[str, Any]]] = []
    kinds: dict[str, type[r.Reply]] = {
        "attach": r.AttachReply,
        "test_run": r.TestRunReply,
        "traffic": r.TrafficReply,
        "maps": r.MapDumpReply,
        "events": r.EventsCountReply,
    }
    for path in sorted(DATA.rglob("results.json")):
        for cell in json.loads(path.read_text(encoding="utf-8")).get("cells", []):
            seen = cell.get("observed") or {}
            where = f"{path.relative_to(DATA)}: {cell['case']}"
            found += [(where, cls, seen[k]) for k, cls in kinds.items() if seen.get(k)]
            syscall = seen.get("syscall")
            if syscall:  # a syscall drive's, or a command's
                cls = r.SyscallReply if "action" in syscall else r.RunReply
                found.append((where, cls, syscall))
            if seen.get("load"):  # recorded without the log, which has a file of its own
                found.append((where, r.LoadReply, {**seen["load"], "log": ""}))
    return found


def test_replies_saved_by_real_runs_read_back() -> None:
    saved = _saved_observations()
    assert len(saved) > 20
    for where, cls, wire in saved:
        back = cls.from_wire(wire).to_wire()
        assert {k: back.get(k) for k in wire} == wire, where


class _Answering:
    """A line stream whose agent answers every request with `result`."""

    def __init__(self, result: object) -> None:
        self.result, self.rid = result, None

    def send_line(self, line: str) -> None:
        self.rid = json.loads(line)["id"]

    def read_line(self, timeout: float) -> str:
        return json.dumps({"id": self.rid, "ok": True, "result": self.result})

    def close(self) -> None:
        pass


def _client(result: object) -> AgentClient:
    client = AgentClient(vm=None)  # type: ignore[arg-type]  # the stream is all it uses
    client._stream = _Answering(result)  # type: ignore[assignment]
    return client


def test_the_client_reads_the_reply_of_the_request() -> None:
    reply = _client({"released": [3], "problems": []}).send(protocol.Release())
    assert reply == r.ReleaseReply((3,), ())


def test_an_answer_that_is_not_the_reply_is_a_protocol_error_on_the_host() -> None:
    with pytest.raises(AgentCallError) as info:
        _client({"released": "all"}).send(protocol.Release())
    assert info.value.kind is ErrorKind.PROTOCOL
    message = "release: malformed reply: ReleaseReply.released is 'all', not an array"
    assert str(info.value) == message


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


HANDLED: list[tuple[str, Callable[[Agent, Path], r.Reply], set[str]]] = [
    ("ping", lambda a, _: a.ping(protocol.Ping()), {"pid", "release"}),
    ("facts", lambda a, _: a.facts(protocol.Facts()),
     {"release", "btf", "sysctl", "lsm", "cgroup2", "libbpf_version"}),
    ("run", lambda a, _: a.run(protocol.Run(("true",))), {"status", "stdout", "stderr", "seconds"}),
    ("syscall",
     lambda a, tmp: a.syscall(protocol.Syscall("open", path=str(tmp / "f"), create=True)),
     {"action", "errno", "errno_name", "status", "seconds"}),
    ("traffic", lambda a, _: a.traffic(protocol.Traffic("127.0.0.1", port=_free_udp_port())),
     {"sent", "delivered", "dropped", "received_bytes"}),
    ("release", lambda a, _: a.release(protocol.Release()), {"released", "problems"}),
]  # fmt: skip


@pytest.mark.parametrize(("op", "handle", "keys"), HANDLED, ids=[h[0] for h in HANDLED])
def test_the_agent_answers_with_the_keys_it_always_sent(
    op: str, handle: Callable[[Agent, Path], r.Reply], keys: set[str], tmp_path: Path
) -> None:
    """What runs on the host without a kernel of its own: its answers' keys, unchanged."""
    wire = handle(Agent(), tmp_path).to_wire()
    assert set(wire) == keys
    assert type(SAMPLES[protocol.Op(op)]).from_wire(json.loads(json.dumps(wire))).to_wire() == wire


def test_typed_requests_over_the_fake_vm(tmp_path: Path) -> None:
    with fake_vm(tmp_path, boot_timeout=5) as vm, AgentClient(vm) as agent:
        ran = agent.send(protocol.Run(("sh", "-c", "echo x; exit 3")))
        assert (ran.status, ran.stdout) == (3, "x\n")
        assert agent.send(protocol.Release()) == r.ReleaseReply((), ())
