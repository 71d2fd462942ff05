"""Config switching in one guest: each config's sysctls are set, and whatever an earlier
config changed goes back to its boot value, so configs never leak into each other."""

from __future__ import annotations

from typing import Any

from harness.guest.protocol import Request
from harness.run.engine import Engine
from harness.scenario.model import RunConfig

BOOT = {"net.core.bpf_jit_enable": "1", "net.core.bpf_jit_harden": "0"}


class StubAgent:
    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.values = dict(BOOT)
        self.calls: list[dict[str, Any]] = []
        self.refuse = refuse

    def send(self, request: Request[Any], timeout: float = 0) -> Any:
        return request.read_reply(self.call(request.op, request.to_wire(), timeout))

    def call(self, op: str, args: dict[str, Any] | None = None, timeout: float = 0) -> Any:
        if op == "facts":
            facts = {"release": "6.1.0", "btf": True, "lsm": None, "cgroup2": True}
            return {**facts, "sysctl": dict(self.values), "libbpf_version": "1.4"}
        assert op == "sysctl"
        assert args is not None
        self.calls.append(dict(args["values"]))
        out = {}
        for name, value in args["values"].items():
            if name in self.refuse:
                out[name] = {"ok": False, "error": "Invalid argument", "value": self.values[name]}
            else:
                self.values[name] = str(value)
                out[name] = {"ok": True, "value": str(value)}
        return out


def engine(agent: StubAgent) -> Engine:
    e = Engine.__new__(Engine)  # only the config switching is exercised: no VM, no kernel
    e.agent = agent  # type: ignore[assignment]
    e._boot_sysctls, e._touched, e._guest_facts = None, set(), None
    return e


def test_a_config_without_sysctls_gets_the_boot_values_back() -> None:
    agent = StubAgent()
    e = engine(agent)
    values, refused = e._apply(RunConfig("interp", (("net.core.bpf_jit_enable", 0),)))
    assert (values["net.core.bpf_jit_enable"], refused) == ("0", "")
    values, refused = e._apply(RunConfig("default"))
    assert agent.calls[-1] == {"net.core.bpf_jit_enable": "1"}
    assert values == BOOT
    values, _ = e._apply(RunConfig("hardened", (("net.core.bpf_jit_harden", 2),)))
    # jit_enable is put back to its boot value too, then harden set
    assert agent.calls[-1] == {"net.core.bpf_jit_enable": "1", "net.core.bpf_jit_harden": 2}
    assert values == {"net.core.bpf_jit_enable": "1", "net.core.bpf_jit_harden": "2"}


def test_a_refused_sysctl_is_the_reason_of_the_config() -> None:
    agent = StubAgent(refuse=frozenset({"net.core.bpf_jit_enable"}))
    values, refused = engine(agent)._apply(RunConfig("interp", (("net.core.bpf_jit_enable", 0),)))
    assert refused == "the kernel refused net.core.bpf_jit_enable=0: Invalid argument"
    assert values["net.core.bpf_jit_enable"] == "1"


def test_no_sysctl_call_when_nothing_changes() -> None:
    agent = StubAgent()
    e = engine(agent)
    e._apply(RunConfig("default"))
    e._apply(RunConfig("other"))
    assert agent.calls == []
