"""The agent protocol end to end with the agent running on the host (fake launcher)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from harness.guest.agent import serve
from harness.vm.agentclient import AgentCallError, AgentClient
from tests.fakes import fake_vm


def test_protocol_answers_every_line_and_survives_bad_requests() -> None:
    requests = (
        "\n".join(
            [
                json.dumps({"id": 1, "op": "ping"}),
                "{not json",
                json.dumps({"id": 2, "op": "no-such-op"}),
                json.dumps(
                    {"id": 3, "op": "run", "args": {"argv": ["sh", "-c", "echo hi; exit 4"]}}
                ),
                json.dumps({"id": 4, "op": "run", "args": {}}),
            ]
        )
        + "\n"
    )
    out = io.StringIO()
    serve(io.StringIO(requests), out)
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [a["id"] for a in answers] == [1, None, 2, 3, 4]
    assert answers[0]["result"]["pid"] == os.getpid()
    assert answers[1]["kind"] == "protocol"
    assert answers[2]["kind"] == "protocol"
    assert answers[3]["result"]["status"] == 4
    assert answers[3]["result"]["stdout"] == "hi\n"
    # a request the protocol does not allow is refused by name, before any handler runs
    assert answers[4]["kind"] == "protocol"
    assert answers[4]["error"] == "run: missing argument 'argv'"


def test_client_over_the_fake_vm(tmp_path: Path) -> None:
    with fake_vm(tmp_path, boot_timeout=5) as vm, AgentClient(vm) as agent:
        assert agent.call("run", {"argv": ["echo", "x"]})["stdout"] == "x\n"
        with pytest.raises(AgentCallError) as info:
            agent.call("run", {"argv": ["true"], "ns": "missing"})
        assert info.value.kind == "topology"
