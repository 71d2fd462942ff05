"""The guest agent's protocol (harness.guest.protocol): every operation has a request
and a handler, requests travel as the JSON the agent reads back, and a request the
protocol does not allow is refused by name."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from harness.guest import protocol
from harness.guest.agent import Agent
from harness.guest.protocol import REQUESTS, Op
from harness.guest.replies import ErrorKind, GuestError


def test_every_operation_has_a_request_and_a_handler() -> None:
    assert set(REQUESTS) == set(Op)
    assert set(Agent().ops) == set(Op)
    for op, cls in REQUESTS.items():
        assert cls.op is op


SAMPLES = [
    protocol.Sysctl({"net.core.bpf_jit_enable": 1}),
    protocol.Run(("sh", "-c", "true"), ns="a", cgroup=None, timeout=2.5),
    protocol.TopologyUp(("a",), ({"a": {"dev": "v0"}, "b": {"dev": "v1", "ns": "a"}},)),
    protocol.Traffic(to="10.0.0.2", from_ns="a", count=3, socket_filter={"handle": 1}),
    protocol.Syscall("connect", to="10.0.0.2", port=80, proto="tcp"),
    protocol.Load(
        "/run/x.o",
        "prog",
        maps=({"name": "m", "max_entries": 4, "value_size": None},),
        globals={"g": 1},
        keep_caps=(21,),
        fixups=False,
    ),
    protocol.Attach(1, "prog", "xdp", dev="v0", mode="skb"),
    protocol.TestRun(1, "prog", data_hex="00" * 14, ctx_hex="01"),
    protocol.MapDump(2, ("counts",)),
    protocol.MapUpdate(2, {"m": [[1, "ff"]]}),
    protocol.TailCalls(2, (("jmp", 0, "stage1"),)),
    protocol.Probe(prog_type=6, helpers={"bpf_loop": 181}, kfuncs=("bpf_obj_new_impl",)),
    protocol.Release(),
    protocol.Release(3),
]


@pytest.mark.parametrize("request_", SAMPLES, ids=lambda r: type(r).__name__)
def test_a_request_comes_back_as_it_was_sent(request_: protocol.Request[Any]) -> None:
    line = protocol.request_line(7, request_.op, request_.to_wire())
    message = json.loads(line)
    assert message["id"] == 7
    back = protocol.parse_request(message)
    assert type(back) is type(request_)
    for f in dataclasses.fields(back):
        sent, got = getattr(request_, f.name), getattr(back, f.name)
        # JSON has lists where Python had tuples, inside mappings too
        assert json.loads(json.dumps(got)) == json.loads(json.dumps(sent)), f.name


def test_a_field_named_by_a_keyword_travels_under_that_keyword() -> None:
    wire = protocol.Traffic(to="10.0.0.2", from_ns="a").to_wire()
    assert wire["from"] == "a"
    assert "from_ns" not in wire


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"op": "no-such-op"}, "unknown op 'no-such-op'"),
        ({"op": "load", "args": {"program": "p"}}, "load: missing argument 'object'"),
        ({"op": "attach", "args": {"handle": 1, "program": "p", "family": "xdp", "x": 1}},
         "attach: unknown argument 'x'"),
        ({"op": "ping", "args": [1]}, "ping: args is not an object"),
    ],
)  # fmt: skip
def test_a_request_the_protocol_does_not_allow_is_refused_by_name(
    message: dict[str, object], error: str
) -> None:
    with pytest.raises(GuestError) as info:
        protocol.parse_request(message)
    assert str(info.value) == error
    assert info.value.kind is ErrorKind.PROTOCOL


def test_an_answer_of_an_unknown_kind_reads_as_an_error() -> None:
    assert protocol.error_kind("attach") is ErrorKind.ATTACH
    assert protocol.error_kind("from-a-newer-agent") is ErrorKind.ERROR
    answer = protocol.answer_error(4, "boom", ErrorKind.SETUP, traceback="t")
    assert answer == {"id": 4, "ok": False, "error": "boom", "kind": "setup", "traceback": "t"}
