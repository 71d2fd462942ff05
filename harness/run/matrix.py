"""The matrix: which (scenario, case, kernel, config) cells run, in what order, on which
shard (harness.run.shards); and the guests that run them, one per kernel per worker,
booted on first use.

Planning is pure (tested without QEMU).  `Guests` owns the VMs of one process (a pytest
worker): a kernel boots when its first cell needs it and stays up for the rest; a cell
that crashed or lost its VM gets a fresh one for the next cell.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from harness import interrupts
from harness.errors import KitlError, UsageError, outcome_for_error
from harness.interrupts import DEFAULT_CELL_TIMEOUT
from harness.kernel.cache import Cache
from harness.kernel.libbpf_build import DEFAULT as DEFAULT_LIBBPF
from harness.kernel.store import Kernel
from harness.outcome import Outcome
from harness.results.record import label
from harness.results.rundir import CellResult, RunDir, safe_name
from harness.run.engine import Engine, build_objects
from harness.run.records import case_program
from harness.run.shards import partition
from harness.scenario.expect import kernel_version
from harness.scenario.model import AnyCase, RunConfig, Scenario
from harness.vm.agentclient import AgentClient
from harness.vm.machine import VM
from harness.vm.warmclient import WarmVM

log = logging.getLogger(__name__)

# Outcomes after which the guest cannot be trusted for the next cell.
RESTART_AFTER = frozenset({Outcome.KERNEL_CRASH, Outcome.VM_LOST, Outcome.TIMED_OUT})


def worth_a_retry(result: CellResult) -> bool:
    """Whether a cell's failure may not be the cell's doing, so that one more attempt on
    a fresh VM tells: a VM lost under it, or an `Oops: int3` under TCG, where a vCPU can
    meet the int3 that another one is patching out of the kernel's text (static keys,
    BPF trampolines) after the patch is done; seen once in __schedule, in no BPF code.
    Under KVM such an oops is a real bug, and any other crash is the cell's result."""
    if result.outcome is Outcome.VM_LOST:
        return True
    title = result.crash.title
    return (
        result.outcome is Outcome.KERNEL_CRASH
        and result.accel == "tcg"
        and title.startswith("Oops: int3")
    )


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based, as users write it: --shard 2/4
    total: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        m = re.fullmatch(r"\s*(\d{1,4})\s*/\s*(\d{1,4})\s*", text)
        if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
            raise UsageError(f"shard {text!r}: expected I/N with 1 <= I <= N, e.g. 2/4")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"


@dataclass(frozen=True)
class Cell:
    """One planned cell (what runs), before it has a result."""

    scenario: Scenario
    case: AnyCase
    kernel: str
    config: RunConfig
    libbpf: str = DEFAULT_LIBBPF  # the loader: "" (the default), "system", "debian-X", a path

    @property
    def label(self) -> str:
        """KERNEL-CONFIG, and -LIBBPF when the loader is not the default."""
        return label(self.kernel, self.config.name, self.libbpf)

    @property
    def cell_id(self) -> str:
        return f"{self.scenario.name}::{self.case.name}[{self.label}]"


def plan(
    scenarios: Sequence[Scenario],
    kernels: Sequence[str],
    configs: Sequence[str],
    default_kernels: Sequence[str],
    libbpfs: Sequence[str] = (),
) -> list[Cell]:
    """Every cell, in run order: kernel by kernel (one boot each), then config (one sysctl
    switch each), then the scenarios' own order.  `kernels` empty: each scenario's
    `kernels:`, else the catalog defaults.  `configs` empty: every config of a scenario;
    else the named ones a scenario has (a name no scenario has is a usage error).
    `libbpfs` empty: each scenario's `libbpf:`, else the default loader."""
    known_configs = {c.name for s in scenarios for c in s.configs}
    unknown = [c for c in configs if c not in known_configs]
    if unknown:
        raise UsageError(
            f"no scenario has config {unknown[0]!r}",
            hint="configs: " + ", ".join(sorted(known_configs)),
        )
    cells: list[Cell] = []
    for scenario in scenarios:
        names = list(kernels) or list(scenario.kernels) or list(default_kernels)
        chosen = [c for c in scenario.configs if not configs or c.name in configs]
        loaders = list(libbpfs) or list(scenario.libbpf) or [DEFAULT_LIBBPF]
        for kernel in names:
            for config in chosen:
                cells += [
                    Cell(scenario, case, kernel, config, libbpf)
                    for libbpf in loaders
                    for case in scenario.every_case
                ]
    order = {k: i for i, k in enumerate(dict.fromkeys(c.kernel for c in cells))}
    return sorted(cells, key=lambda c: (order[c.kernel], c.config.name, c.libbpf))


def shard_cells(
    cells: Sequence[Cell], shard: Shard | None, timings: Mapping[str, float] | None = None
) -> list[Cell]:
    """Shard I of N: whole kernels where it can, balanced by `timings` (an earlier run's
    seconds by cell id; none: by counts), in run order (harness.run.shards, the partition
    `kitl plan` shows)."""
    if shard is None:
        return list(cells)
    return partition(cells, shard.total, timings or {})[shard.index - 1]


def newest(kernels: Sequence[Kernel]) -> Kernel:
    """The kernel whose BTF makes vmlinux.h for compiling objects: the newest, so CO-RE
    objects see every type and field (older kernels are handled by relocations)."""

    def version(k: Kernel) -> tuple[int, int, int]:
        try:
            return kernel_version(k.release)
        except ValueError:
            return (0, 0, 0)

    return max(kernels, key=version)


@dataclass
class _Guest:
    vm: VM
    engines: dict[str, Engine]  # by libbpf: one agent process per loader in the guest
    stack: ExitStack
    console: Path
    boots: int = 1
    booted_s: float = 0.0
    waited_s: float = 0.0  # for guest slots, before the boot


@dataclass
class Guests:
    """The VMs of this process, one per kernel, each with its agent and engine."""

    run: RunDir
    cache: Cache
    make_vm: Callable[[Kernel, Path], VM]
    header_kernel: Kernel
    on_boot: Callable[[Kernel], None] = lambda kernel: None
    # a libbpf name to the .so the guest agent loads (None: the system's)
    libbpf_path: Callable[[str], str | None] = lambda name: None
    cell_timeout: float = DEFAULT_CELL_TIMEOUT  # each cell's wall-time budget (watchdog)
    _guests: dict[str, _Guest] = field(default_factory=dict)
    _boots: dict[str, int] = field(default_factory=dict)
    _boot_failures: dict[str, KitlError] = field(default_factory=dict)
    _boot_consoles: dict[str, str] = field(default_factory=dict)  # relative to the run
    _objects: dict[tuple[str, str], Path] = field(default_factory=dict)

    def objects_for(self, scenario: Scenario) -> dict[tuple[str, str], Path]:
        if not all((scenario.name, o.name) in self._objects for o in scenario.objects):
            self._objects.update(build_objects([scenario], self.header_kernel, self.cache))
        return self._objects

    def run_cell(self, cell: Cell, kernel: Kernel) -> CellResult:
        """Run one cell, booting its kernel if needed; a VM lost mid-cell gets one retry
        on a fresh VM; a guest that crashed or hung is replaced for the next cell."""
        try:
            objects = self.objects_for(cell.scenario)
        except KitlError as exc:  # a source that does not compile: the cell says why
            return self._failed(cell, kernel, exc, f"cannot build the scenario's objects: {exc}")
        lost = ""  # why the first attempt lost its VM
        for attempt in (1, 2):
            guest = self._guest(kernel)
            if isinstance(guest, KitlError):
                return self._not_booted(cell, kernel, guest)
            engine = self._engine(guest, cell.libbpf)
            if isinstance(engine, KitlError):
                return self._failed(
                    cell, kernel, engine, f"{kernel.name} did not come up: {engine}"
                )
            engine.objects = objects
            result = engine.run_cell(cell.scenario, cell.case, cell.config, retry_of=lost)
            if isinstance(guest.vm, WarmVM):
                guest.vm.served()
            if result.outcome in RESTART_AFTER:
                self.discard(kernel.name)
            if attempt == 2 or not worth_a_retry(result):
                return result
            lost = f"{result.outcome}: {result.reason}"
            log.info("%s: %s; once more on a fresh VM", cell.cell_id, lost)
        raise AssertionError("unreachable")

    def _guest(self, kernel: Kernel) -> _Guest | KitlError:
        if kernel.name in self._boot_failures:
            return self._boot_failures[kernel.name]
        guest = self._guests.get(kernel.name)
        if guest is not None:
            return guest
        # Cells come kernel by kernel (plan() orders them so, and a worker gets whole
        # kernels): a guest whose kernel is done is idle from here on, yet under admission
        # it would hold its slots, so it goes before the next one boots.
        for done in [name for name in self._guests if name != kernel.name]:
            self._retire(done)
        boots = self._boots.get(kernel.name, 0) + 1
        self._boots[kernel.name] = boots
        suffix = "" if boots == 1 else f".boot{boots}"
        console = self.run.path / "guest" / f"{safe_name(kernel.name)}{suffix}.console.log"
        self.on_boot(kernel)
        started = time.monotonic()
        stack = ExitStack()
        try:
            vm = stack.enter_context(self.make_vm(kernel, console))
        except KitlError as exc:
            stack.close()
            self._boot_failures[kernel.name] = exc
            self._boot_consoles[kernel.name] = str(console.relative_to(self.run.path))
            self.run.record_boot_failure(
                kernel.name, str(outcome_for_error(exc)), str(exc), console
            )
            return exc
        waited = vm.record.waited_s if vm.record is not None else 0.0
        booted = time.monotonic() - started - waited
        guest = _Guest(vm, {}, stack, console, boots, booted, waited)
        self._guests[kernel.name] = guest
        return guest

    def _engine(self, guest: _Guest, libbpf: str) -> Engine | KitlError:
        """The engine (and guest agent) for one libbpf in a booted guest, started once."""
        if libbpf in guest.engines:
            return guest.engines[libbpf]
        kernel = guest.vm.kernel
        try:
            agent = guest.stack.enter_context(
                AgentClient(guest.vm, libbpf=self.libbpf_path(libbpf))
            )
        except KitlError as exc:
            return exc
        engine = Engine(guest.vm, agent, kernel, self.run, {}, cache=self.cache)
        engine.cell_timeout = self.cell_timeout
        engine.libbpf = libbpf
        dmesg = self.run.guest_file(kernel.name, "dmesg")
        engine.guest_logs = (
            str(guest.console.relative_to(self.run.path)),
            str(dmesg.relative_to(self.run.path)),
        )
        guest.engines[libbpf] = engine
        return engine

    def _not_booted(self, cell: Cell, kernel: Kernel, exc: KitlError) -> CellResult:
        """A cell of a kernel that never came up: its outcome, and a pointer to the one
        place that says why (run.boot_failures, the console), not the reason again."""
        reason = (
            f"not run: {kernel.name} did not boot ({outcome_for_error(exc)}; why, once for "
            "the kernel: the run's boot failures and its console)"
        )
        console = self._boot_consoles.get(kernel.name, "")
        return self._failed(cell, kernel, exc, reason, console_path=console)

    def _failed(
        self, cell: Cell, kernel: Kernel, exc: KitlError, reason: str, *, console_path: str = ""
    ) -> CellResult:
        """The result of a cell that could not start: no guest, or no objects."""
        program, prog_type, section = case_program(cell.case)
        result = CellResult(
            scenario=cell.scenario.name,
            case=cell.case.name,
            kernel=kernel.name,
            config=cell.config.name,
            outcome=outcome_for_error(exc),
            reason=reason,
            kernel_release=kernel.release,
            kernel_digest=kernel.digest,
            program=program,
            prog_type=prog_type,
            section=section,
            scenario_file=str(cell.scenario.path.resolve()),
            scenario_line=cell.case.line,
            libbpf=cell.libbpf,
            console_path=console_path,
        )
        self.run.append(result)
        return result

    def boot_line(self, kernel: str) -> str | None:
        """ "KERNEL up in 16.5s", with any wait for guest slots before it, or why it did
        not come up; None while it has not been booted."""
        if (failure := self._boot_failures.get(kernel)) is not None:
            return f"{kernel} did not boot: {failure}"
        guest = self._guests.get(kernel)
        if guest is None:
            return None
        line = f"{kernel} up in {guest.booted_s:.1f}s"
        if isinstance(guest.vm, WarmVM):
            line += f": {guest.vm.describe()}"
        if guest.waited_s >= 1:
            line += f" (after {guest.waited_s:.1f}s waiting for guest slots)"
        return line

    def discard(self, kernel: str) -> None:
        """Tear a guest down (after a crash or hang); the next cell boots a fresh one."""
        with interrupts.shielded():  # forgotten but still running would be an orphan
            guest = self._guests.pop(kernel, None)
            if guest is not None:
                guest.stack.close()

    def close(self, *, dmesg: bool = True) -> None:
        """Save each guest's dmesg next to its console log (not when interrupted: the
        user wants the VMs gone now), then tear every guest down."""
        for name in list(self._guests):
            self._retire(name, dmesg=dmesg)

    def _retire(self, name: str, *, dmesg: bool = True) -> None:
        """Save a guest's dmesg next to its console log, then tear it down."""
        guest = self._guests[name]
        try:
            if dmesg:
                text = guest.vm.run(["dmesg"], timeout=60).stdout
                self.run.guest_file(name, "dmesg").write_text(text, encoding="utf-8")
        except KitlError:
            pass  # the guest is going away anyway; its console log has the story
        finally:
            self.discard(name)
