"""kitl as a pytest plugin (entry point `pytest11: kitl`): scenario YAML files become test
items, one per (scenario, case, kernel, config), with ids like
`xdp-basics::drop-udp[debian-6.1-jit]`.

Scenario files are collected only with `--kitl` (or `kitl = true` in the ini file), so other
YAML in a project is left alone; a file is a scenario when it has top-level `objects:` and
`cases:`.  Each process boots a kernel once, when its first cell needs it, and runs every
cell of that kernel in the same guest (configs are switched by sysctl).  With pytest-xdist,
`--dist loadgroup` keeps a kernel's cells on one worker (each item is in the xdist group of
its kernel).  Every worker appends to the same run directory; the controller writes
results.json and the reports at the end.  `kitl run` is a thin front over this.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from harness import interrupts
from harness.errors import KitlError, UsageError, WriteError
from harness.kernel import libbpf_build
from harness.kernel.cache import Cache
from harness.kernel.resolve import Kernels
from harness.kernel.store import Kernel
from harness.outcome import Outcome
from harness.pytest_plugin import options, terminal
from harness.report import github, render
from harness.report import model as report_model
from harness.report.summary import summarize
from harness.results import known as known_mod
from harness.results.record import CellRecord
from harness.results.rundir import CellResult, RunDir
from harness.results.runs import appended, finalize, finished_ids
from harness.run.matrix import Cell, Guests, Shard, newest, plan, shard_cells
from harness.run.shards import load_timings
from harness.run.workers import guest_vcpus, host_cores
from harness.scenario import objects, verify_options
from harness.scenario.loader import load_scenario
from harness.scenario.model import Scenario
from harness.scenario.verify_options import VerifyOptions
from harness.vm import accel
from harness.vm.machine import GuestSettings
from harness.vm.slots import GuestSlots
from harness.vm.warmclient import guest_factory

# the fixtures for Python tests (a booted guest, objects, topologies), with their hook
pytest_plugins = ("harness.pytest_plugin.fixtures",)

_SCENARIO_KEYS = (re.compile(r"^objects\s*:", re.M), re.compile(r"^cases\s*:", re.M))


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def _active(config: pytest.Config) -> bool:
    return bool(
        config.getoption("kitl") or config.getini("kitl") or config.getoption("kitl_verify")
    )


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


class KitlSession:
    """Per-process state: options, the kernels, the guests, the run directory."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.kernel_names = _names(config.getoption("kitl_kernels"))
        self.configs = _names(config.getoption("kitl_configs"))
        # [] when not given: each scenario's libbpf:, else the default loader
        self.libbpfs = [libbpf_build.canonical(n) for n in _names(config.getoption("kitl_libbpf"))]
        shard = config.getoption("kitl_shard")
        self.shard = Shard.parse(shard) if shard else None
        timings = config.getoption("kitl_timings")
        self.timings = load_timings(Path(timings)) if timings else {}
        self.worker = hasattr(config, "workerinput")
        given = config.getoption("kitl_output")
        if self.worker:
            given = config.workerinput["kitl_run_dir"]  # type: ignore[attr-defined]
        self.run_path = Path(given or Path("runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()
        self.run = RunDir(self.run_path, {})
        self.known = _load_known(config.getoption("kitl_expect"))
        self.today = datetime.date.today()
        self._kernels: Kernels | None = None
        self._resolved: dict[str, Kernel] = {}
        self._guests: Guests | None = None
        self._known_names: set[str] | None = None
        self._verify: VerifyOptions | None = None
        expect = verify_options.pytest_values(config.getoption)("expect")
        self.verify_expect = objects.load_bulk(expect) if expect else None
        self.total = 0
        self.seen_kernels: set[str] = set()  # booted in this process
        self.known_lines: list[str] = []
        self.annotations: list[str] = []  # GitHub's ::error lines, under GitHub Actions

    def verify_options(self) -> VerifyOptions:
        if self._verify is None:
            values = verify_options.pytest_values(self.config.getoption)
            self._verify = verify_options.build(values)
        return self._verify

    @property
    def kernels(self) -> Kernels:
        if self._kernels is None:
            self._kernels = Kernels.open(Cache.default())
        return self._kernels

    def kernel(self, name: str) -> Kernel:
        if name not in self._resolved:
            self._resolved[name] = self.kernels.get(name)
        return self._resolved[name]

    def libbpf_path(self, name: str) -> str | None:
        """The libbpf.so a loader name stands for (None: the system's)."""
        return libbpf_build.loader_path(name, self.kernels)

    def kernel_of(self, nodeid: str, *, guess: bool = False) -> str | None:
        """The kernel of a cell's node id `...case[KERNEL-CONFIG]` (names contain dashes:
        the longest known name that fits wins)."""
        # xdist's loadgroup appends "@group" after the "]"; an "@" in a path is kept
        label = re.sub(r"\]@[^\]]*$", "]", nodeid).rsplit("[", 1)[-1].rstrip("]")
        if self._known_names is None:
            self._known_names = set(self.kernel_names) | set(self.kernels.catalog.names())
        if label in self._known_names:  # a Python test parametrized by kernel name
            return label
        fits = [k for k in self._known_names if label.startswith(k + "-")]
        if fits:
            return max(fits, key=len)
        # a kernel kitl does not know by name (path:...): all but the config, if asked to guess
        return label.rsplit("-", 1)[0] if guess and "-" in label else None

    def default_kernels(self) -> list[str]:
        return [e.name for e in self.kernels.catalog.defaults()]

    def guests(self, header: list[str]) -> Guests:
        if self._guests is None:
            kernels = [self.kernel(n) for n in header]
            cache = self.kernels.store.cache
            choice = self.config.getoption("kitl_accel")
            decision = accel.decide(choice, cache, lambda: accel.qemu_kvm_probe(kernels[0].vmlinuz))
            timeout = self.config.getoption("kitl_boot_timeout")

            # parallel guests share the host's cores: under TCG a vCPU is a busy host thread
            workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
            cpus = guest_vcpus(host_cores(), workers)
            slots = GuestSlots.for_cache(cache)

            settings = GuestSettings(
                decision.accel, boot_timeout=timeout, cpus=cpus, slots=slots, on_wait=self.tell
            )
            use_warm = not self.config.getoption("kitl_no_warm")
            self._guests = Guests(
                self.run,
                cache,
                guest_factory(settings, use_warm=use_warm),
                newest(kernels),
                libbpf_path=self.libbpf_path,
                cell_timeout=self.config.getoption("kitl_cell_timeout"),
            )
        return self._guests

    def tell(self, message: str) -> None:
        """Say something now, past pytest's output capture: a wait the user should see
        while nothing else moves.  An xdist worker has no terminal of its own; there the
        kernel's boot line says it afterwards."""
        writer = self.config.pluginmanager.get_plugin("terminalreporter")
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        if writer is None or self.worker:
            return
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            writer.write_line(f"kitl: {message}")

    def close(self, *, dmesg: bool = True) -> None:
        if self._guests is not None:
            self._guests.close(dmesg=dmesg)


_SESSION = pytest.StashKey[KitlSession]()
_RESTORE = pytest.StashKey[Callable[[], None]]()


def _session(config: pytest.Config) -> KitlSession:
    return config.stash[_SESSION]


def _load_known(path: str | None) -> known_mod.KnownFailures | None:
    if path is None:
        default = Path(known_mod.DEFAULT_NAME)
        if not default.is_file():
            return None
        path = str(default)
    try:
        return known_mod.load_known(Path(path))
    except KitlError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_configure(config: pytest.Config) -> None:
    if not _active(config):
        return
    try:
        config.stash[_SESSION] = KitlSession(config)
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "kitl-xdist")
    if config.getoption("kitl_lines"):
        session = config.stash[_SESSION]
        lines = terminal.CellLines(
            config,
            verbose=config.getoption("kitl_verbose"),
            total=lambda: session.total,
            kernel_of=session.kernel_of,
        )
        config.pluginmanager.register(lines, "kitl-progress")
    # SIGTERM like Ctrl-C, in the controller and in every worker: the running cell stops,
    # its VM is torn down as the stack unwinds, and the session still writes what finished.
    config.stash[_RESTORE] = interrupts.install(interrupts.once(_interrupted))


def _interrupted(signum: int) -> BaseException:
    name = interrupts.signal_name(signum)
    return pytest.Session.Interrupted(f"kitl: stopped by {name}; the running cell has no result")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _RESTORE in config.stash:
        config.stash[_RESTORE]()


class _XdistHooks:
    """Hooks that exist only with pytest-xdist: hand workers the controller's run directory,
    and learn the number of cells (the controller does not collect under xdist)."""

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["kitl_run_dir"] = str(_session(node.config).run_path)

    @pytest.hookimpl
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        session = _session(node.config)
        session.total = max(session.total, len(ids))

    @pytest.hookimpl
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """--dist loadgroup: all cells of a kernel go to one worker, which boots it once.
        (xdist's own loadgroup did not see markers added by a collector here.)"""
        if config.getoption("dist") != "loadgroup":
            return None
        from xdist.scheduler import LoadScopeScheduling  # noqa: PLC0415 - xdist is optional

        session = _session(config)

        class KernelScheduling(LoadScopeScheduling):  # type: ignore[misc]
            def _split_scope(self, nodeid: str) -> str:
                return session.kernel_of(nodeid, guess=True) or nodeid

        return KernelScheduling(config, log)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix == ".o" and parent.config.getoption("kitl_verify"):
        collector: ObjectFile = ObjectFile.from_parent(parent, path=file_path)
        return collector
    if not _active(parent.config) or file_path.suffix not in (".yaml", ".yml"):
        return None
    try:
        text = file_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if not all(key.search(text) for key in _SCENARIO_KEYS):
        return None
    file: ScenarioFile = ScenarioFile.from_parent(parent, path=file_path)
    return file


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
        outside = bool(self.config.getoption("kitl_allow_outside", False))
        scenario = load_scenario(self.path, allow_outside=outside)
        session = _session(self.config)
        wanted = [c for c in session.configs if any(k.name == c for k in scenario.configs)]
        if session.configs and not wanted:
            return  # none of the configs asked for is this scenario's
        cells = plan(
            [scenario], session.kernel_names, wanted, session.default_kernels(), session.libbpfs
        )
        for cell in cells:
            session.kernels.catalog.get(cell.kernel)  # an unknown name is a usage error
        yield ScenarioNode.from_parent(self, name=scenario.name, scenario=scenario, cells=cells)

    def repr_failure(  # type: ignore[override]
        self, excinfo: pytest.ExceptionInfo[BaseException]
    ) -> str:
        if isinstance(excinfo.value, KitlError):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))


class ObjectFile(ScenarioFile):
    """A BPF object under `--kitl-verify`: one case per program (harness.cli.verify)."""

    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
        session = _session(self.config)
        scenario = objects.scenario_for_object(self.path, session.verify_options())
        if session.verify_expect is not None:
            scenario = session.verify_expect.apply(scenario)
        cells = plan(
            [scenario], session.kernel_names, [], session.default_kernels(), session.libbpfs
        )
        yield ScenarioNode.from_parent(self, name=scenario.name, scenario=scenario, cells=cells)


class ScenarioNode(pytest.Collector):
    def __init__(self, *, scenario: Scenario, cells: list[Cell], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario, self.cells = scenario, cells

    def collect(self) -> Iterator[pytest.Item]:
        for cell in self.cells:
            name = f"{cell.case.name}[{cell.label}]"
            item = CellItem.from_parent(self, name=name, cell=cell)
            item.add_marker(pytest.mark.xdist_group(cell.kernel))
            yield item


class CellFailed(Exception):
    def __init__(self, result: CellResult) -> None:
        super().__init__(result.reason)
        self.result = result


class CellItem(pytest.Item):
    def __init__(self, *, cell: Cell, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cell = cell
        self.result: CellResult | None = None

    def runtest(self) -> None:
        session = _session(self.config)
        kernel = session.kernel(self.cell.kernel)
        guests = session.guests(_header_kernels(self.session))
        try:
            result = guests.run_cell(self.cell, kernel)
        except WriteError as exc:  # the disk is full: no later cell could be recorded either
            pytest.exit(f"kitl: {exc}", returncode=pytest.ExitCode.TESTS_FAILED)
        self.result = result
        self.user_properties.append(("kitl_line", terminal.cell_line(result)))
        self.user_properties.append(("kitl_brief", terminal.brief_line(result)))
        line = guests.boot_line(kernel.name)
        if kernel.name not in session.seen_kernels and line is not None:
            session.seen_kernels.add(kernel.name)
            self.user_properties.append(("kitl_boot", line))
        if result.outcome is Outcome.PASSED:
            return
        if result.outcome is Outcome.SKIPPED:
            raise pytest.skip.Exception(result.reason, _use_item_location=True)
        entry = _known_entry(session, result)
        if entry is not None:
            pytest.xfail(f"known failure ({entry.where}): {entry.reason}")
        raise CellFailed(result)

    def repr_failure(  # type: ignore[override]
        self, excinfo: pytest.ExceptionInfo[BaseException]
    ) -> str:
        if isinstance(excinfo.value, CellFailed):
            r = excinfo.value.result
            text = r.reason if r.reason.startswith(str(r.outcome)) else f"{r.outcome}: {r.reason}"
            log = self.session.config.stash[_SESSION].run_path / r.log_path
            if r.log_path and log.is_file():
                text += "\n--- verifier log (tail) ---\n" + report_model.tail(log, lines=15)
            return text
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.cell.case.line - 1, self.cell.cell_id


def _known_entry(session: KitlSession, result: CellResult) -> known_mod.KnownEntry | None:
    if session.known is None:
        return None
    cell = result.record()
    for entry in session.known.entries:
        if entry.expired(session.today):
            continue  # an expired entry fails the run at the end; a live one may still match
        if entry.matches(cell) and entry.accepts(str(result.outcome)):
            return entry
    return None


def _header_kernels(session: pytest.Session) -> list[str]:
    """Every kernel of this process's items: the newest one's BTF compiles the objects,
    the same choice in every worker."""
    names = {item.cell.kernel for item in session.items if isinstance(item, CellItem)}
    return sorted(names) or _session(session.config).default_kernels()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Run order: kernel by kernel, then config; then the shard's slice of it."""
    if not _active(config):
        return
    cells = [i for i in items if isinstance(i, CellItem)]
    kitl = _session(config)
    unknown = [c for c in kitl.configs if not any(i.cell.config.name == c for i in cells)]
    if unknown:
        raise pytest.UsageError(f"no collected scenario has config {unknown[0]!r}")
    if not cells:
        return
    kernel_order = {k: n for n, k in enumerate(dict.fromkeys(i.cell.kernel for i in cells))}
    position = {id(i): n for n, i in enumerate(items)}
    cells.sort(key=lambda i: (kernel_order[i.cell.kernel], i.cell.config.name, position[id(i)]))
    kept = shard_cells([i.cell for i in cells], kitl.shard, kitl.timings)
    if config.getoption("kitl_resume"):
        done = finished_ids(kitl.run_path)
        kept = [c for c in kept if c.cell_id not in done]
    keep_ids = {id(c) for c in kept}
    selected = [i for i in cells if id(i.cell) in keep_ids]
    others = [i for i in items if not isinstance(i, CellItem)]
    deselected = [i for i in cells if id(i.cell) not in keep_ids]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = [*others, *selected]
    kitl.total = len(selected)


def _loaders(cells: Sequence[CellRecord], default: str) -> str:
    """The loaders of a run with their versions: "default (debian-7.3) 1.8, system 1.1"."""
    versions: dict[str, str] = {}
    for cell in cells:
        version = cell.verifier.libbpf_version
        if version and cell.libbpf not in versions:
            versions[cell.libbpf] = version
    return ", ".join(
        f"{name or f'default ({default})'} {version}" for name, version in versions.items()
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if not _active(config) or _SESSION not in config.stash:
        return
    kitl = _session(config)
    interrupts.stop_quietly()  # closing down: a signal now must not cut the teardown short
    kitl.close(dmesg=exitstatus != pytest.ExitCode.INTERRUPTED)
    if kitl.worker:
        return
    cells = appended(kitl.run_path)
    meta = {
        # the kernels asked for, or (the scenarios' or the catalog's) those that ran
        "kernels": kitl.kernel_names or list(dict.fromkeys(c.kernel for c in cells)),
        "configs": kitl.configs,
        "shard": str(kitl.shard) if kitl.shard else None,
        "libbpf": _loaders(cells, libbpf_build.default_loader(kitl.kernels.catalog)),
        "argv": sys.argv,
    }
    try:
        cells = finalize(kitl.run_path, meta)
        if cells:
            report = report_model.build_report(kitl.run_path)
            render.write_reports(report)
            if github.enabled():  # printed with the terminal summary
                kitl.annotations = github.lines(report, summarize(report))
    except KitlError as exc:  # e.g. the disk filled up: one line, the cells already kept
        sys.stderr.write(f"kitl: {exc}\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    if not cells:
        return
    if kitl.known is not None:
        known_report = known_mod.apply_known(cells, kitl.known, kitl.today)
        kitl.known_lines = known_report.lines()
        if known_report.expired and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not _active(config) or _SESSION not in config.stash:
        return
    kitl = _session(config)
    if kitl.worker:
        return
    for line in kitl.known_lines:
        terminalreporter.write_line(f"kitl: {line}")
    for line in kitl.annotations:
        terminalreporter.write_line(line)
    summary = kitl.run_path / "report" / "summary.md"
    terminalreporter.write_line(f"kitl: results in {kitl.run_path}")
    if summary.is_file():
        terminalreporter.write_line(f"kitl: summary {summary}")
