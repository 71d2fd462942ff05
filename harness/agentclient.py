"""The host side of the guest agent protocol (see harness/agent.py)."""

from __future__ import annotations

import itertools
import json
import sys
import time
from typing import Any

from harness.channel import LineStream
from harness.errors import GuestLostError, GuestTimeoutError, KitlError
from harness.vm import VM
from harness.watchdog import ANSWER_GRACE

AGENT_START_TIMEOUT = 180.0  # a first Python start in a TCG guest, with imports, under load


class AgentCallError(KitlError):
    """The agent answered, with an error of a named kind (topology, setup, internal...)."""

    def __init__(self, op: str, message: str, kind: str) -> None:
        super().__init__(f"{op}: {message}")
        self.kind = kind


class AgentTimeoutError(GuestTimeoutError):
    """The agent answered that what it ran for an op did not finish in time (a drive
    that hangs): the cell timed out, though the guest is still there."""


class AgentClient:
    """One agent per VM; `call()` sends a request and waits for its answer."""

    def __init__(self, vm: VM, *, python: str | None = None, libbpf: str | None = None) -> None:
        self.vm = vm
        self.python = python or sys.executable
        self.libbpf = libbpf  # a libbpf.so path for the agent to load; None: the system's
        self._stream: LineStream | None = None
        self._ids = itertools.count(1)
        # the running cell's deadline (monotonic): no call waits beyond it and a grace
        self.deadline: float | None = None
        # the first timeout since the deadline was set: what hung, when cleanup calls that
        # come after it fail too (the engine resets it per cell)
        self.first_timeout = ""

    def __enter__(self) -> AgentClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> dict[str, Any]:
        # -u: unbuffered; -I: ignore user site and PYTHON* env, the guest sees the host's.
        argv = [self.python, "-u", "-m", "harness.agent"]
        if self.libbpf:
            argv = ["env", f"KITL_LIBBPF={self.libbpf}", *argv]
        self._stream = self.vm.channel.start(argv)
        answer: dict[str, Any] = self.call("ping", timeout=AGENT_START_TIMEOUT)
        return answer

    def call(self, op: str, args: dict[str, Any] | None = None, *, timeout: float = 60.0) -> Any:
        if self._stream is None:
            raise GuestLostError("the guest agent is not running")
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise self._timed_out(GuestTimeoutError(f"{op}: not started, time is up"))
            timeout = min(timeout, left + ANSWER_GRACE)
        rid = next(self._ids)
        try:
            self._stream.send_line(json.dumps({"id": rid, "op": op, "args": args or {}}))
            while True:
                line = self._stream.read_line(timeout)
                try:
                    response = json.loads(line)
                except json.JSONDecodeError:
                    continue  # not ours: stray output; the protocol owns stdout otherwise
                if response.get("id") == rid:
                    break
        except GuestTimeoutError as exc:
            self.vm.check_crash_after_failure()
            raise self._timed_out(exc) from None
        except GuestLostError:
            self.vm.check_crash_after_failure()
            raise
        if not response.get("ok"):
            if response.get("kind") == "timeout":
                raise self._timed_out(AgentTimeoutError(f"{op}: {response.get('error')}"))
            raise AgentCallError(op, str(response.get("error")), str(response.get("kind")))
        return response.get("result")

    def _timed_out(self, exc: GuestTimeoutError) -> GuestTimeoutError:
        self.first_timeout = self.first_timeout or str(exc)
        return exc

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
