"""The host side of the guest agent protocol (harness.guest.protocol; the guest side is
harness.guest.agent): `send` a typed request, get its typed reply (harness.guest.replies)."""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from harness import interrupts
from harness.errors import GuestLostError, GuestTimeoutError, KitlError
from harness.guest import protocol
from harness.guest.protocol import Op, Request
from harness.guest.replies import ErrorKind, GuestError, PingReply, Reply
from harness.interrupts import ANSWER_GRACE
from harness.vm.channel import LineStream
from harness.vm.machine import VM

AGENT_START_TIMEOUT = 180.0  # a first Python start in a TCG guest, with imports, under load
A = TypeVar("A", bound=Reply)


def agent_argv(python: str, libbpf: str | None) -> list[str]:
    """The guest command of an agent: the same for a VM's own agent and a warm guest's,
    which keeps one running per argv (harness.vm.warmd)."""
    # -u: unbuffered; -I: ignore user site and PYTHON* env, the guest sees the host's.
    argv = [python, "-u", "-m", "harness.guest.agent"]
    return ["env", f"KITL_LIBBPF={libbpf}", *argv] if libbpf else argv


class Sender(Protocol):
    """What sends typed requests to an agent: an AgentClient, or a warm guest's daemon."""

    def send(self, request: Request[A], *, timeout: float = 60.0) -> A: ...


def clean(agent: Sender, *, topology: bool, timeout: float) -> list[str]:
    """Release every object and tear the topology down, whatever failed before: what the
    engine does after each case, and a warm guest's daemon after each use.  What was left
    behind, in words (empty: nothing)."""
    problems: list[str] = []
    try:
        problems += agent.send(protocol.Release(), timeout=timeout).problems
    finally:
        if topology:
            down = agent.send(protocol.TopologyDown(), timeout=timeout)
            problems += down.problems
            problems += [f"netns {n} left behind" for n in down.netns_left]
    return problems


def sysctls_to_restore(
    boot: Mapping[str, str | None],
    now: Mapping[str, str | None],
    names: Sequence[str] | None = None,
) -> dict[str, int | str]:
    """The sysctls (of `names`, default all) whose value `now` is not their value at
    boot, with that value: what puts a guest's configuration back."""
    keys = boot if names is None else names
    return {k: v for k in keys if (v := boot.get(k)) is not None and now.get(k) != v}


class AgentCallError(KitlError):
    """The agent answered, with an error of a named kind (topology, setup, internal...)."""

    def __init__(self, op: str, message: str, kind: ErrorKind) -> None:
        super().__init__(f"{op}: {message}")
        self.kind = kind


class AgentTimeoutError(GuestTimeoutError):
    """The agent answered that what it ran for an op did not finish in time (a drive
    that hangs): the cell timed out, though the guest is still there."""


class AgentClient:
    """One agent per VM; `send()` sends a request and waits for its reply."""

    def __init__(self, vm: VM, *, python: str | None = None, libbpf: str | None = None) -> None:
        self.vm = vm
        self.python = python or sys.executable
        self.libbpf = libbpf  # a libbpf.so path for the agent to load; None: the system's
        self._stream: LineStream | None = None
        self._ids = itertools.count(1)
        # the running cell's deadline (monotonic): no call waits beyond it and a grace
        self.deadline: float | None = None
        # the first timeout or loss since the engine reset it (per cell): what went wrong,
        # when the cleanup calls that follow fail too
        self.first_failure = ""
        self._lost = ""  # why the agent is gone: later calls fail at once with it

    def __enter__(self) -> AgentClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> PingReply:
        self._stream = self.vm.channel.start(agent_argv(self.python, self.libbpf))
        return self.send(protocol.Ping(), timeout=AGENT_START_TIMEOUT)

    def send(self, request: Request[A], *, timeout: float = 60.0) -> A:
        """One typed request (harness.guest.protocol), its reply; an answer that is not
        the reply of the request is the agent's error, of kind protocol."""
        result = self.call(request.op, request.to_wire(), timeout=timeout)
        try:
            return request.read_reply(result)
        except GuestError as exc:
            raise AgentCallError(str(request.op), str(exc), exc.kind) from None

    def call(
        self, op: Op | str, args: dict[str, Any] | None = None, *, timeout: float = 60.0
    ) -> Any:
        """One request by the operation's name and its arguments as JSON (what the user
        fixtures expose); the agent checks them against the operation's request."""
        interrupts.raise_if_stopping()  # no call during a stop: the agent may be busy for long
        if self._stream is None:
            raise GuestLostError("the guest agent is not running")
        if self._lost:
            raise GuestLostError(f"{op}: not sent, {self._lost}")
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise self._failed(GuestTimeoutError(f"{op}: not started, time is up"))
            timeout = min(timeout, round(left + ANSWER_GRACE, 1))  # round: it is in messages
        rid = next(self._ids)
        try:
            self._stream.send_line(protocol.request_line(rid, op, args or {}))
            while True:
                line = self._stream.read_line(timeout)
                try:
                    response = json.loads(line)
                except json.JSONDecodeError:
                    continue  # not ours: stray output; the protocol owns stdout otherwise
                if response.get("id") == rid:
                    break
        except GuestTimeoutError:
            self.vm.check_crash_after_failure()
            message = f"{op}: the guest agent did not answer within {timeout:g}s"
            raise self._failed(GuestTimeoutError(message)) from None
        except GuestLostError as exc:
            self.vm.check_crash_after_failure()  # a kernel crash is raised as one
            self._lost = f"the guest agent is gone: {exc}"
            raise self._failed(GuestLostError(f"{op}: {self._lost}")) from None
        if not response.get("ok"):
            kind = protocol.error_kind(response.get("kind"))
            if kind is ErrorKind.TIMEOUT:
                raise self._failed(AgentTimeoutError(f"{op}: {response.get('error')}"))
            raise AgentCallError(str(op), str(response.get("error")), kind)
        return response.get("result")

    def _failed(self, exc: KitlError) -> KitlError:
        self.first_failure = self.first_failure or str(exc)
        return exc

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
