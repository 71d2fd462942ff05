"""pytest fixtures for Python tests on real kernels, built on kitl's own machinery.

    def test_pass(kitl_guest: Guest, kitl_compile: Compile) -> None:
        prog = kitl_guest.load(kitl_compile(HERE / "xdp.bpf.c"), "xdp_pass")
        assert prog.test_run(packet.build({"ipv4": {}, "udp": {}}))["retval"] == 2

One guest (a VM and its agent) per kernel name per process: booted when a test first needs
it, reused by every later test of that kernel, torn down at the end of the session.  The
kernel is `kitl_kernel_name`: the first of --kitl-kernels, else the catalog's first default
kernel; parametrize it (directly or indirectly) or override the fixture for others.  A
boot failure fails the test (never a skip).  Every test leaves the guest as it found it:
after the test body everything it loaded is released, and any BPF program, map or link
still alive then fails it; sysctls it changed are set back; its topology is torn down.

Registered by the kitl plugin; without it, `-p harness.pytest_plugin.fixtures`.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from harness.errors import GuestLostError, GuestTimeoutError, KernelCrashError, KitlError
from harness.guest import protocol
from harness.guest.replies import LoadReply, Reply
from harness.kernel import libbpf_build
from harness.kernel.cache import Cache
from harness.kernel.resolve import Kernels
from harness.kernel.store import Kernel
from harness.results.rundir import safe_name
from harness.run.compile import compile_object, kernel_btf, vmlinux_h
from harness.run.engine import CASE_TIMEOUT
from harness.vm import accel
from harness.vm.agentclient import AgentClient
from harness.vm.channel import object_path_in_guest
from harness.vm.machine import VM, GuestSettings
from harness.vm.slots import GuestSlots

# After these the guest cannot be trusted: the next test of that kernel boots a fresh one.
GUEST_GONE = (GuestLostError, GuestTimeoutError, KernelCrashError)
A = TypeVar("A", bound=Reply)


@dataclass(frozen=True)
class LoadedProgram:
    """One program loaded on its own; `reply` is the agent's answer to "load" (verifier
    figures, errno, the log...).  The methods answer in the JSON shapes tests were written
    against (docs/pytest.md): dicts as the agent sends them."""

    guest: Guest
    program: str
    reply: LoadReply

    @property
    def info(self) -> dict[str, Any]:
        """The load's reply as the agent sent it."""
        return self.reply.to_wire()

    @property
    def ok(self) -> bool:
        return self.reply.ok

    @property
    def handle(self) -> int | None:
        return self.reply.handle

    @property
    def log(self) -> str:
        return self.reply.log

    def _loaded(self, op: str) -> int:
        """The object's handle; a program that did not load fails the test here."""
        if self.reply.handle is None:
            pytest.fail(
                f"{self.program} did not load (errno {self.reply.errno}), so it cannot "
                f"{op}; verifier log tail:\n{self.log[-2000:]}",
                pytrace=False,
            )
        return self.reply.handle

    def test_run(
        self, data: bytes = b"", ctx: bytes | None = None, repeat: int = 1, ctx_only: bool = False
    ) -> dict[str, Any]:
        """BPF_PROG_TEST_RUN: retval, duration_ns, errno, data_out(_hex), ctx_out(_hex)."""
        request = protocol.TestRun(
            self._loaded("test_run"),
            self.program,
            data_hex=data.hex(),
            ctx_hex=ctx.hex() if ctx is not None else None,
            repeat=repeat,
            ctx_only=ctx_only,
        )
        run = self.guest.send(request)
        out = run.to_wire()
        out.update(data_out=bytes.fromhex(run.data_out_hex), ctx_out=bytes.fromhex(run.ctx_out_hex))
        return out

    def attach(self, family: str, **spec: Any) -> dict[str, Any]:
        """family xdp (dev, ns, mode), tc/tcx (dev, ns, direction), cgroup (path), socket,
        auto; a refusal raises AgentCallError with kind "attach"."""
        where = {"handle": self._loaded("attach"), "program": self.program, "family": family}
        # from_wire: a key attach does not take is refused by name, as the agent would
        return self.guest.send(protocol.Attach.from_wire({**where, **spec})).to_wire()

    def map_dump(self, names: Sequence[str] = ()) -> dict[str, list[tuple[bytes, bytes]]]:
        """Keys and values of the named maps (default: every map that can be walked)."""
        dump = self.guest.send(protocol.MapDump(self._loaded("map_dump"), tuple(names)))
        return {
            name: [(bytes.fromhex(k), bytes.fromhex(v)) for k, v in rows]
            for name, rows in dump.maps.items()
        }


@dataclass(frozen=True)
class Guest:
    """A booted kernel and its agent (see harness/guest/agent.py for the ops)."""

    vm: VM
    agent: AgentClient
    kernel: Kernel
    # object content hash -> its copy in the guest; sysctl -> its value before a test set it
    _copies: set[str] = field(default_factory=set, init=False, repr=False, compare=False)
    _saved: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """Any agent op by name, its answer as JSON; generous timeout: TCG, and a first
        load of a big object."""
        return self.agent.call(op, args, timeout=CASE_TIMEOUT)

    def send(self, request: protocol.Request[A]) -> A:
        """A typed request (harness.guest.protocol), its typed reply."""
        return self.agent.send(request, timeout=CASE_TIMEOUT)

    def run(self, argv: Sequence[str], ns: str | None = None) -> dict[str, Any]:
        """Run argv in the guest (in netns `ns`): status, stdout, stderr, seconds."""
        return self.send(protocol.Run(tuple(argv), ns)).to_wire()

    def sysctl(self, values: Mapping[str, int | str]) -> dict[str, Any]:
        """Set sysctls; per name {"ok", "value"} (and "error" when the kernel refused).
        The values before the first change are put back after the test."""
        for name in values:
            if name not in self._saved:
                before = self.send(protocol.Run(("cat", "/proc/sys/" + name.replace(".", "/"))))
                if before.status == 0:
                    self._saved[name] = before.stdout.strip()
        return self.send(protocol.Sysctl(dict(values))).to_wire()

    def restore_sysctls(self) -> list[str]:
        if not self._saved:
            return []
        answer = self.send(protocol.Sysctl(dict(self._saved)))
        self._saved.clear()
        return [f"sysctl {n} not restored: {a.error}" for n, a in answer.values.items() if not a.ok]

    def guest_path(self, obj_path: Path) -> str:
        """Copy a host file into the guest's tmpfs once per content (host paths created
        after boot may be invisible through the guest's overlay of /tmp)."""
        data = obj_path.read_bytes()
        # the content and the file's name: libbpf names the object after the file
        remote = object_path_in_guest(obj_path, hashlib.sha256(data).hexdigest())
        if remote not in self._copies:
            self.vm.channel.put(data, remote)
            self._copies.add(remote)
        return remote

    def load(
        self, obj_path: Path, program: str, log_level: int = 5, **options: Any
    ) -> LoadedProgram:
        """Load `program` of the object on its own (log_level 5: the verifier's log with
        its statistics).  `options`: log_size, prog_flags, btf_custom_path, offload_dev..."""
        args = {"object": self.guest_path(obj_path), "program": program, "log_level": log_level}
        # from_wire: an option load does not take is refused by name, as the agent would
        request = protocol.Load.from_wire({**args, **options})
        return LoadedProgram(self, program, self.send(request))

    def release(self) -> dict[str, Any]:
        """Close every loaded object; "problems" names what failed or is still alive."""
        return self.send(protocol.Release()).to_wire()


class GuestPool:
    """The guests of this process, one per kernel name, each booted on first use."""

    def __init__(self, config: pytest.Config, logs: Path) -> None:
        self.config, self.logs = config, logs
        self._kernels: Kernels | None = None
        self._accel: str | None = None
        self._guests: dict[str, tuple[Guest, contextlib.ExitStack]] = {}
        self._failed: dict[str, str] = {}  # a kernel that did not boot is not retried
        self._boots: dict[str, int] = {}
        self._resolved: dict[str, Kernel] = {}  # checking the cache costs a lock and stats

    @property
    def kernels(self) -> Kernels:
        if self._kernels is None:
            self._kernels = Kernels.open(Cache.default())
        return self._kernels

    @property
    def cache(self) -> Cache:
        return self.kernels.store.cache

    def default_kernel(self) -> str:
        given = [n.strip() for n in str(self.config.getoption("kitl_kernels", "")).split(",")]
        names = [n for n in given if n] or [e.name for e in self.kernels.catalog.defaults()]
        if not names:
            pytest.fail("kitl: no kernel: give --kitl-kernels or mark one default", pytrace=False)
        return names[0]

    def kernel(self, name: str) -> Kernel:
        """The kernel `name`, fetched when the cache lacks it."""
        if name not in self._resolved:
            try:
                self._resolved[name] = self.kernels.get(name)
            except KitlError as exc:
                pytest.fail(f"kitl: kernel {name}: {exc}", pytrace=False)
        return self._resolved[name]

    def get(self, name: str) -> Guest:
        if name in self._failed:
            pytest.fail(self._failed[name], pytrace=False)
        if name in self._guests:
            return self._guests[name][0]
        kernel = self.kernel(name)
        boots = self._boots[name] = self._boots.get(name, 0) + 1
        console = self.logs / f"{safe_name(name)}{'' if boots == 1 else f'.boot{boots}'}.log"
        try:
            with contextlib.ExitStack() as stack:
                if self._accel is None:
                    choice = self.config.getoption("kitl_accel", "auto")
                    probe = lambda: accel.qemu_kvm_probe(kernel.vmlinuz)  # noqa: E731
                    self._accel = accel.decide(choice, self.cache, probe).accel
                timeout = self.config.getoption("kitl_boot_timeout", None)
                settings = GuestSettings(
                    self._accel, boot_timeout=timeout, slots=GuestSlots.for_cache(self.cache)
                )
                vm = stack.enter_context(settings.vm(kernel, console))
                agent = stack.enter_context(AgentClient(vm, libbpf=self.libbpf_path()))
                self._guests[name] = (Guest(vm, agent, kernel), stack.pop_all())
        except KitlError as exc:
            self._failed[name] = f"kitl: {name} did not come up: {exc} (console log: {console})"
            pytest.fail(self._failed[name], pytrace=False)
        return self._guests[name][0]

    def libbpf_path(self) -> str | None:
        """The first loader of --kitl-libbpf (else the default): the libbpf the agent loads."""
        given = str(self.config.getoption("kitl_libbpf", "") or "").split(",")
        loaders = [libbpf_build.canonical(n.strip()) for n in given if n.strip()]
        first = loaders[0] if loaders else libbpf_build.DEFAULT
        return libbpf_build.loader_path(first, self.kernels)

    def discard(self, name: str) -> None:
        guest = self._guests.pop(name, None)
        if guest is not None:
            guest[1].close()

    def close(self) -> None:
        for name in list(self._guests):
            self.discard(name)


class Compile(Protocol):
    def __call__(self, source: Path, cflags: Sequence[str] = ()) -> Path: ...


class Topology(Protocol):
    def __call__(
        self,
        *,
        netns: Sequence[str] = (),
        veth: Sequence[Mapping[str, Any]] = (),
        netdevsim: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Netdevsim:
    id: int
    ports: tuple[str, ...]  # nsim<ID>p0, nsim<ID>p1...
    ns: str | None


class NetdevsimFactory(Protocol):
    def __call__(
        self, ports: int = 1, ns: str | None = None, dev_id: int | None = None
    ) -> Netdevsim: ...


@pytest.fixture(scope="session")
def kitl_guests(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GuestPool]:
    """This process's guests (console logs in the session's temporary directory)."""
    pool = GuestPool(pytestconfig, tmp_path_factory.mktemp("kitl-guests"))
    yield pool
    pool.close()


@pytest.fixture
def kitl_kernel_name(request: pytest.FixtureRequest, kitl_guests: GuestPool) -> str:
    """The kernel of the test: a parameter when parametrized indirectly, else the default."""
    param = getattr(request, "param", None)
    return str(param) if param is not None else kitl_guests.default_kernel()


@pytest.fixture
def kitl_guest(kitl_guests: GuestPool, kitl_kernel_name: str) -> Iterator[Guest]:
    """The booted guest of `kitl_kernel_name` (shared by the session), checked clean after
    the test: what the test left loaded or alive fails it."""
    guest = kitl_guests.get(kitl_kernel_name)
    yield guest
    try:
        problems = list(guest.send(protocol.Release()).problems) + guest.restore_sysctls()
    except GUEST_GONE as exc:
        kitl_guests.discard(kitl_kernel_name)
        pytest.fail(f"kitl: the {kitl_kernel_name} guest was lost: {exc}", pytrace=False)
    if problems:
        pytest.fail("kitl: the test left the guest unclean: " + "; ".join(problems), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Release what a passing test loaded while it is still the test's call: a leak then
    fails the test itself (kitl_guest's teardown would report it as an error instead).
    Releasing before the topology goes keeps detaches in the namespaces they belong to."""
    yield
    guest = getattr(item, "funcargs", {}).get("kitl_guest")
    if isinstance(guest, Guest):
        problems = guest.send(protocol.Release()).problems
        if problems:
            pytest.fail("kitl: left behind: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def kitl_compile(kitl_guests: GuestPool, kitl_kernel_name: str) -> Compile:
    """Compile a .bpf.c against the vmlinux.h of the test's kernel (CO-RE; cached by
    content, so a second call with the same input costs a hash)."""
    kernel = kitl_guests.kernel(kitl_kernel_name)

    def compile_(source: Path, cflags: Sequence[str] = ()) -> Path:
        try:
            header = vmlinux_h(kernel_btf(kernel), kitl_guests.cache)
            return compile_object(Path(source), header, kitl_guests.cache, cflags)
        except KitlError as exc:
            pytest.fail(f"kitl: {exc}", pytrace=False)

    return compile_


@pytest.fixture
def kitl_topology(kitl_guest: Guest) -> Iterator[Topology]:
    """Bring up netns, veth pairs ({"a": {"dev", "ns", "addr"}, "b": {...}}) and netdevsim
    devices ({"id", "ports", "ns"}); returns the agent's answer.  All of it goes after the
    test, and a namespace or device left behind fails it."""
    used = False

    def up(
        *,
        netns: Sequence[str] = (),
        veth: Sequence[Mapping[str, Any]] = (),
        netdevsim: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        nonlocal used
        used = True  # a topology half set up is torn down too
        spec = protocol.TopologyUp(tuple(netns), tuple(veth), tuple(netdevsim))
        return kitl_guest.send(spec).to_wire()

    yield up
    if not used:
        return
    # objects first: an XDP or tc detach needs the device, and so its namespace
    problems = list(kitl_guest.send(protocol.Release()).problems)
    down = kitl_guest.send(protocol.TopologyDown())
    problems += [*down.problems, *(f"netns {n} left behind" for n in down.netns_left)]
    if problems:
        pytest.fail("kitl: topology teardown: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def kitl_netdevsim(kitl_topology: Topology) -> NetdevsimFactory:
    """A netdevsim device with N ports named nsim<ID>p0..p<N-1> (in netns `ns`, which must
    exist: make it with kitl_topology first).  IDs count from 1 within the test."""
    ids = itertools.count(1)

    def make(ports: int = 1, ns: str | None = None, dev_id: int | None = None) -> Netdevsim:
        ident = next(ids) if dev_id is None else dev_id
        answer = kitl_topology(netdevsim=[{"id": ident, "ports": ports, "ns": ns}])
        return Netdevsim(ident, tuple(answer["netdevsim"][str(ident)]), ns)

    return make
