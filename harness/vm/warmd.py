"""The daemon of one warm guest: `python -m harness.vm.warmd --dir DIR --kernel NAME`,
started detached by `kitl up` (harness.cli.warm).

It boots the VM as a run would (GuestSettings, the same BootSpec), starts its guest agents,
and serves them over a Unix socket in the private warm directory (harness.vm.warm), one
user of the guest at a time.  A user holds a *lease* (a connection) for as long as it uses
the guest; the guest's console is streamed to it, its agent lines pass through (with the
request ids rewritten, so that a late answer to a user that left never reaches the next),
and commands and file copies are run for it.  When the lease ends the guest is put back
as the engine leaves it between cells: every object released, the topology torn down,
the sysctls back to their values at boot.  A guest that cannot be put back (an agent
that does not answer, something left behind) or that died is replaced by a fresh boot.

Slots (harness.vm.slots): a boot is admitted as any other (it waits for them); a use takes
the slots that are free, without waiting (GuestSlots.admit_now); an idle guest holds none,
so that warm guests of five kernels can stay up on two cores.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import importlib
import itertools
import json
import logging
import os
import queue
import secrets
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness import interrupts
from harness.errors import GuestLostError, GuestTimeoutError, KernelCrashError, KitlError
from harness.guest import protocol
from harness.guest.protocol import Request
from harness.guest.replies import Reply
from harness.kernel.cache import Cache
from harness.vm import warm
from harness.vm.agentclient import (
    AGENT_START_TIMEOUT,
    AgentCallError,
    agent_argv,
    clean,
    sysctls_to_restore,
)
from harness.vm.channel import LineStream
from harness.vm.machine import VM, GuestSettings, Launcher
from harness.vm.slots import Admission, GuestSlots
from harness.vm.warm import DaemonSpec, Paths, WarmRecord, Wire

log = logging.getLogger("kitl.warmd")
A = TypeVar("A", bound=Reply)
HEALTH_TIMEOUT = 5.0  # a warm agent answers a ping in milliseconds; a busy one is not healthy
DRAIN_S = 2.0  # how long a user's last requests may take to be answered after it left
RESET_TIMEOUT = 30.0
CONSOLE_POLL = 0.05


class AgentMux:
    """One long-lived agent in the guest, spoken to by the daemon and by one user at a
    time.  Every request gets an id of the daemon's; answers go back under the user's."""

    def __init__(self, stream: LineStream, argv: tuple[str, ...]) -> None:
        self.stream, self.argv = stream, argv
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, Callable[[dict[str, Any]], None]] = {}
        self.lost = ""
        self.users: list[Wire] = []  # the user connections attached now
        threading.Thread(target=self._read, daemon=True, name="agent-reader").start()

    def _read(self) -> None:
        while True:
            try:
                line = self.stream.read_line(3600)
            except GuestTimeoutError:
                continue
            except GuestLostError as exc:
                self._lose(str(exc))
                return
            try:
                answer = json.loads(line)
            except json.JSONDecodeError:
                continue  # stray output
            rid = answer.get("id") if isinstance(answer, dict) else None
            if not isinstance(rid, int):
                continue
            with self._lock:
                deliver = self._pending.pop(rid, None)
            if deliver is not None:
                deliver(answer)

    def _lose(self, why: str) -> None:
        with self._lock:
            self.lost = why or "the agent is gone"
            pending, self._pending = list(self._pending.values()), {}
            users = list(self.users)
        for deliver in pending:
            deliver({"ok": False, "error": self.lost, "kind": "lost"})
        for user in users:  # a user's wait on this agent ends now
            user.close()

    def forward(self, message: dict[str, Any], deliver: Callable[[dict[str, Any]], None]) -> None:
        with self._lock:
            if self.lost:
                raise GuestLostError(self.lost)
            rid = next(self._ids)
            self._pending[rid] = deliver
        self.stream.send_line(json.dumps({**message, "id": rid}))

    def outstanding(self) -> int:
        with self._lock:
            return len(self._pending)

    def drained(self, seconds: float) -> bool:
        """Whether every request sent was answered (waiting up to `seconds`)."""
        deadline = time.monotonic() + seconds
        while self.outstanding() and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.outstanding()

    def send(self, request: Request[A], *, timeout: float = 60.0) -> A:
        """The daemon's own request (ping, reset) and its typed reply."""
        box: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1)
        self.forward({"op": str(request.op), "args": request.to_wire()}, box.put)
        try:
            answer = box.get(timeout=timeout)
        except queue.Empty:
            raise GuestTimeoutError(f"{request.op}: no answer within {timeout:g}s") from None
        if not answer.get("ok"):
            kind = protocol.error_kind(answer.get("kind"))
            raise AgentCallError(str(request.op), str(answer.get("error")), kind)
        return request.read_reply(answer.get("result"))

    def close(self) -> None:
        self.stream.close()


@dataclass
class Lease:
    """One user's use of the guest: its connection and what it opened."""

    pid: int
    wire: Wire
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    wires: list[Wire] = field(default_factory=list)  # its agent streams and console
    admission: Admission | None = None
    broken: str = ""  # why the guest must be replaced after this use ("" it need not)
    cells: int = 0  # served in this use
    ended: threading.Event = field(default_factory=threading.Event)

    def drop(self) -> None:
        """End every wait of the user on the guest at once."""
        for wire in [*self.wires, self.wire]:
            wire.close()


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


class Daemon:
    def __init__(
        self, spec: DaemonSpec, paths: Paths, *, launcher: Launcher | None = None,
        slots: GuestSlots | None = None, stop_by_signal: bool = False,
    ) -> None:  # fmt: skip
        self.spec, self.paths, self.slots = spec, paths, slots
        # the process's own daemon stops by SIGTERM, which also ends a boot under way; one
        # run in a thread (the tests) stops by the event
        self.stop_by_signal = stop_by_signal
        self._stopping = threading.Event()
        self.kernel = warm.kernel_from_json(spec.kernel)
        self.settings = GuestSettings(
            spec.accel, boot_timeout=spec.boot_timeout, cpus=spec.cpus, memory=spec.memory,
            slots=slots, on_wait=self._waiting, launcher=launcher,
        )  # fmt: skip
        self.vm: VM | None = None
        self.agents: dict[tuple[str, ...], AgentMux] = {}
        self.lease: Lease | None = None
        self._cond = threading.Condition()
        self._boot_sysctls: dict[str, str | None] = {}
        self._replace = ""  # why the guest must be replaced, once its user is gone
        self._wake = threading.Event()
        k = self.kernel
        self.record = WarmRecord(
            kernel=k.name, release=k.release, digest=k.digest, vmlinuz=str(k.vmlinuz),
            cmdline=tuple(k.cmdline), arch=warm.host_arch(), accel=spec.accel, cpus=spec.cpus,
            memory=spec.memory, pid=os.getpid(), started=time.time(),
            socket=str(paths.socket), console=str(paths.console), log=str(paths.log),
        )  # fmt: skip

    def _waiting(self, message: str) -> None:
        """A wait for slots before a boot: in the log, and in the record for `kitl up`."""
        log.info("%s", message)
        self._set(reason=message)

    # -- the record ----------------------------------------------------------------------
    def _set(self, **changes: Any) -> None:
        with self._cond:
            self.record = self.record.with_(**changes)
            self.record.write(self.paths.record)
            self._cond.notify_all()

    # -- life ----------------------------------------------------------------------------
    def run(self) -> int:
        """Boot, serve until stopped (SIGTERM, `kitl down`); 1 when the guest did not
        come up (the record says why)."""
        server = self._listen()
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        try:
            self._set(state=warm.BOOTING)
            self._boot()
            while not self._stopping.is_set():
                self._tick()
                self._wake.wait(1.0)
                self._wake.clear()
            return 0
        except KitlError as exc:
            log.info("%s: %s", self.kernel.name, exc)
            self._set(state=warm.FAILED, reason=str(exc))
            return 1
        finally:
            with interrupts.shielded():
                server.close()
                self._shutdown()

    def _listen(self) -> socket.socket:
        path = self.paths.socket
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead daemon's
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            server.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        server.listen(16)
        server.settimeout(1.0)
        return server

    def _boot(self) -> None:
        console = self.paths.console
        if console.exists():  # the replaced guest's console stays for one more boot
            console.replace(console.with_name(console.name + ".prev"))
        vm = self.settings.vm(self.kernel, console)
        started = time.monotonic()
        vm.__enter__()
        self.vm = vm
        try:
            for libbpf in self.spec.libbpfs:
                self._agent(tuple(agent_argv(sys.executable, libbpf or None)))
            first = next(iter(self.agents.values()))
            self._boot_sysctls = dict(first.send(protocol.Facts()).sysctl)
        except KitlError:
            self._close_guest()
            raise
        vm.release_slots()  # idle from here on
        boots = self.record.boots + 1
        ready = self.record.ready_s or round(time.monotonic() - started, 1)
        self._set(state=warm.IDLE, boots=boots, ready_s=ready, guest_pid=vm.guest_pid, reason="")
        log.info("%s: up (boot %d), %s", self.kernel.name, boots, vm.record)

    def _agent(self, argv: tuple[str, ...]) -> AgentMux:
        """The agent of `argv`, started (and pinged) the first time it is asked for."""
        mux = self.agents.get(argv)
        if mux is not None and not mux.lost:
            return mux
        assert self.vm is not None
        mux = AgentMux(self.vm.channel.start(argv), argv)
        mux.send(protocol.Ping(), timeout=AGENT_START_TIMEOUT)
        self.agents[argv] = mux
        loaders = [a[1].removeprefix("KITL_LIBBPF=") if a[0] == "env" else "" for a in self.agents]
        self._set(loaders=tuple(n or "system" for n in loaders))
        return mux

    def _tick(self) -> None:
        """Replace the guest when its last user found it broken, or when it died idle."""
        with self._cond:
            state, why = self.record.state, self._replace
        if state == warm.IDLE and self.vm is not None and not self.vm.usable():
            why = why or "the guest died while idle (see its console)"
        if state in (warm.IDLE, warm.REPLACING) and why:
            log.info("%s: replacing the guest: %s", self.kernel.name, why)
            self._set(state=warm.REPLACING, replaced=why)
            self._close_guest()
            self._replace = ""
            self._boot()

    def _close_guest(self) -> None:
        for mux in self.agents.values():
            mux.close()
        self.agents.clear()
        if self.vm is not None:
            self.vm.close()
            self.vm = None

    def _shutdown(self) -> None:
        failed = self.record.state == warm.FAILED
        with self._cond:
            lease = self.lease
        if lease is not None:
            lease.drop()
        self._close_guest()
        if failed:  # kept for `kitl up` and `kitl ps` to say why; the socket goes
            self.paths.socket.unlink(missing_ok=True)
        else:
            warm.remove_files(self.paths)
        log.info("%s: stopped", self.kernel.name)

    # -- connections ---------------------------------------------------------------------
    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed: the daemon stops
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        wire = Wire(conn)
        try:
            if peer_uid(conn) != os.getuid():  # the socket's mode says so already
                log.info("refused a connection from uid %d", peer_uid(conn))
                return
            first = wire.recv(timeout=10)
            handlers = {
                "lease": self._serve_lease,
                "console": self._serve_console,
                "stream": self._serve_stream,
                "kill": self._serve_kill,
                "stop": self._serve_stop,
            }
            handler = handlers.get(str((first or {}).get("op")))
            if first is None or handler is None:
                wire.send({"ok": False, "error": f"unknown request {first!r}"})
                return
            handler(wire, first)
        except (OSError, ValueError) as exc:  # a user that went away mid-message
            log.info("connection ended: %s", exc)
        finally:
            wire.close()

    def _lease_of(self, wire: Wire, message: dict[str, Any]) -> Lease | None:
        with self._cond:
            lease = self.lease
        if lease is None or message.get("token") != lease.token or lease.ended.is_set():
            wire.send({"ok": False, "error": "no such lease (it ended)"})
            return None
        return lease

    def _serve_lease(self, wire: Wire, message: dict[str, Any]) -> None:
        with self._cond:  # a reset takes a moment: a user arriving then waits for it
            self._cond.wait_for(lambda: self.record.state != warm.RESETTING, timeout=60)
            if self.record.state != warm.IDLE or self.vm is None:
                why = self.record.state
                if self.record.state == warm.IN_USE:
                    why = f"in use by pid {self.record.user}"
                wire.send({"ok": False, "error": why})
                return
            lease = Lease(int(message.get("pid", 0)), wire)
            self.lease = lease
        self._set(state=warm.IN_USE, user=lease.pid)
        try:
            self._grant(lease)
        finally:
            self._end(lease)

    def _grant(self, lease: Lease) -> None:
        vm = self.vm
        assert vm is not None
        problem = self._health(vm)
        if problem:
            lease.broken = problem
            lease.wire.send({"ok": False, "error": f"not healthy ({problem}); replacing it"})
            return
        if self.slots is not None:  # what is free: a use never waits (see admit_now)
            lease.admission = self.slots.admit_now(self.spec.cpus, self.kernel.name)
        record = self.record
        lease.wire.send(
            {"ok": True, "token": lease.token, "release": vm.record.release if vm.record else "",
             "argv": vm.record.argv if vm.record else [], "uses": record.uses,
             "cells": record.cells, "started": record.started, "pid": os.getpid()}
        )  # fmt: skip
        while (request := lease.wire.recv()) is not None:
            self._request(lease, vm, request)

    def _health(self, vm: VM) -> str:
        if not vm.usable():
            return "the guest is down or crashed"
        for mux in list(self.agents.values()):
            try:
                mux.send(protocol.Ping(), timeout=HEALTH_TIMEOUT)
            except KitlError as exc:
                return f"agent: {exc}"
        return ""

    def _request(self, lease: Lease, vm: VM, request: dict[str, Any]) -> None:
        op = request.get("op")
        if op == "served":
            lease.cells += int(request.get("cells", 0))
            self._set(cells=self.record.cells + int(request.get("cells", 0)))
            return
        try:
            if op == "put":
                data = base64.b64decode(request["data"])
                vm.channel.put(data, str(request["remote"]), int(request.get("mode", 0o644)))
                lease.wire.send({"ok": True})
            elif op == "run":
                self._run(lease, vm, request)
            else:
                lease.wire.send({"ok": False, "kind": "protocol", "error": f"unknown op {op!r}"})
        except (GuestLostError, KernelCrashError) as exc:
            lease.wire.send({"ok": False, "kind": "lost", "error": str(exc)})
        except GuestTimeoutError as exc:
            lease.wire.send({"ok": False, "kind": "timeout", "error": str(exc)})

    def _run(self, lease: Lease, vm: VM, request: dict[str, Any]) -> None:
        def out(stream: str, data: bytes) -> None:
            lease.wire.send({"out": stream, "data": base64.b64encode(data).decode()})

        stdin = request.get("stdin")
        result = vm.run(
            list(request["argv"]),
            timeout=float(request["timeout"]),
            stdin=base64.b64decode(stdin) if stdin is not None else None,
            on_output=out if request.get("live") else None,
        )
        lease.wire.send(
            {"ok": True, "status": result.status, "stdout": result.stdout,
             "stderr": result.stderr, "seconds": result.seconds}
        )  # fmt: skip

    def _end(self, lease: Lease) -> None:
        """The user is gone: put the guest back, or have it replaced."""
        self._set(state=warm.RESETTING, user=0)
        lease.ended.set()
        lease.drop()
        why = lease.broken
        try:
            why = why or self._reset()
        except KitlError as exc:
            why = f"the reset failed: {exc}"
        if lease.admission is not None:
            lease.admission.release()
        with self._cond:
            self.lease = None
            self._replace = why
        self._set(state=warm.REPLACING if why else warm.IDLE, uses=self.record.uses + 1)
        self._wake.set()
        log.info(
            "%s: use by pid %d over (%d cells)%s", self.kernel.name, lease.pid, lease.cells,
            f"; replacing the guest: {why}" if why else "",
        )  # fmt: skip

    def _reset(self) -> str:
        """What the engine does between cells, for whatever the user left: objects
        released, topology down, sysctls back to boot.  What stayed behind ("" nothing)."""
        problems: list[str] = []
        for mux in list(self.agents.values()):
            if not mux.drained(DRAIN_S):
                return f"an agent still busy {DRAIN_S:g}s after its user left"
            problems += clean(mux, topology=True, timeout=RESET_TIMEOUT)
        agents = [m for m in self.agents.values() if not m.lost]
        if agents:
            now = agents[0].send(protocol.Facts()).sysctl
            wanted = sysctls_to_restore(self._boot_sysctls, now)
            if wanted:
                answer = agents[0].send(protocol.Sysctl(wanted)).values
                problems += [f"sysctl {k}: {a.error}" for k, a in answer.items() if not a.ok]
        return "; ".join(problems)

    def _serve_console(self, wire: Wire, message: dict[str, Any]) -> None:
        """The console from the boot on, then as it comes, until the lease ends; when the
        guest dies under the user, its last words first, then the user's every wait ends."""
        lease = self._lease_of(wire, message)
        vm = self.vm
        if lease is None or vm is None:
            return
        text = vm.console_text()
        data = text.encode()
        wire.send({"ok": True, "size": len(data)})
        wire.sock.sendall(data)
        sent, checked = len(text), time.monotonic()
        died = False
        while not lease.ended.wait(CONSOLE_POLL):
            text = vm.console_text()
            if len(text) > sent:
                wire.sock.sendall(text[sent:].encode())
                sent = len(text)
            if time.monotonic() - checked > 0.5:
                checked = time.monotonic()
                if not vm.usable():
                    died = True
                    break
        time.sleep(CONSOLE_POLL)  # what the recorder still had in flight
        wire.sock.sendall(vm.console_text()[sent:].encode())
        wire.close()
        if died:
            lease.broken = "the guest died under its user (see its console)"
            lease.drop()

    def _serve_stream(self, wire: Wire, message: dict[str, Any]) -> None:
        lease = self._lease_of(wire, message)
        if lease is None:
            return
        try:
            mux = self._agent(tuple(str(a) for a in message.get("argv", ())))
        except KitlError as exc:
            wire.send({"ok": False, "error": str(exc)})
            return
        lease.wires.append(wire)
        mux.users.append(wire)
        wire.send({"ok": True})
        lock = threading.Lock()

        def answer(user_id: object, reply: dict[str, Any]) -> None:
            with lock, contextlib.suppress(OSError):
                wire.send({**reply, "id": user_id})

        try:
            while (line := wire.line()) is not None:
                request = json.loads(line)
                mux.forward(request, functools.partial(answer, request.get("id")))
        except GuestLostError:
            pass  # the agent is gone: closing the stream tells the user
        finally:
            with contextlib.suppress(ValueError):
                mux.users.remove(wire)

    def _serve_kill(self, wire: Wire, message: dict[str, Any]) -> None:
        lease = self._lease_of(wire, message)
        if lease is not None:
            log.info("%s: killed by its user's watchdog (pid %d)", self.kernel.name, lease.pid)
            lease.broken = "its user's watchdog killed it"
            if self.vm is not None:
                self.vm.kill()
            lease.drop()
            wire.send({"ok": True})

    def _serve_stop(self, wire: Wire, message: dict[str, Any]) -> None:
        log.info("%s: asked to stop", self.kernel.name)
        self._set(state=warm.STOPPING)
        wire.send({"ok": True})
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self.stop_by_signal:
            os.kill(os.getpid(), signal.SIGTERM)  # the main thread unwinds, booting or not


def load_launcher(name: str) -> Launcher | None:
    """ "module:factory" (the tests' fake launcher), else None: virtme-ng."""
    if not name:
        return None
    module, _, attr = name.partition(":")
    launcher: Launcher = getattr(importlib.import_module(module), attr)()
    return launcher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.vm.warmd")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--kernel", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    paths = Paths(warm.private_dir(args.dir), args.kernel)
    spec = DaemonSpec.read(paths.spec)
    slots = GuestSlots.for_cache(Cache.default())
    launcher = load_launcher(spec.launcher)
    daemon = Daemon(spec, paths, launcher=launcher, slots=slots, stop_by_signal=True)
    restore = interrupts.install()
    try:
        return daemon.run()
    except KeyboardInterrupt:
        return 0
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
