"""The matrix without QEMU: plan() order and defaults, shards (Shard.parse, shard_cells as
properties), newest(); the run directory (read_cells, finalize, merge_runs); and the exact
pytest command `kitl run` builds."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.cli import runner
from harness.cli.main import MERGE_SHOWN, main
from harness.errors import BuildError, UsageError
from harness.kernel.cache import Cache
from harness.kernel.store import Kernel
from harness.outcome import Outcome
from harness.results.record import Crash
from harness.results.rundir import CellResult, RunDir
from harness.results.runs import appended, finalize, merge_runs
from harness.run import matrix
from harness.run.matrix import Cell, Shard, newest, plan, shard_cells
from harness.scenario.loader import load_scenario
from harness.scenario.model import RunConfig, Scenario
from tests.fakes import run_args

DATA = Path(__file__).resolve().parents[1] / "data" / "plugin"
CATALOG_DEFAULTS = ["debian-5.10", "debian-6.1"]


@functools.cache
def scenario(name: str) -> Scenario:
    """tests/data/plugin: xdp (kernels 6.1 and 7.2; configs jit, interp, hardened; three
    cases) and tc (no kernels:, no configs:; two cases)."""
    return load_scenario(DATA / f"{name}.yaml")


def ids(cells: list[Cell]) -> list[str]:
    return [c.cell_id for c in cells]


def grid(s: Scenario, kernels: list[str], configs: list[str]) -> list[str]:
    """A scenario's cell ids for these kernels and configs, cases in file order."""
    return [f"{s.name}::{c.name}[{k}-{x}]" for k in kernels for x in configs for c in s.cases]


# --- plan ------------------------------------------------------------------------------


def test_plan_runs_kernel_by_kernel_then_config_by_name() -> None:
    tc, xdp = scenario("tc"), scenario("xdp")
    cells = plan([tc, xdp], ["debian-7.2", "debian-6.1"], [], CATALOG_DEFAULTS)
    by_name = ["hardened", "interp", "jit"]  # xdp declares jit, interp, hardened
    assert ids(cells) == [
        *grid(tc, ["debian-7.2"], ["default"]),
        *grid(xdp, ["debian-7.2"], by_name),
        *grid(tc, ["debian-6.1"], ["default"]),
        *grid(xdp, ["debian-6.1"], by_name),
    ]
    assert len(cells) == 2 * (2 + 3 * 3)
    assert ids(cells)[:3] == [
        "tc::shot[debian-7.2-default]",
        "tc::shot-again[debian-7.2-default]",
        "xdp::pass[debian-7.2-hardened]",
    ]
    assert [c.config.name for c in cells[2:5]] == ["hardened"] * 3
    assert cells[2].config == xdp.config("hardened")  # the config itself, sysctls and all


def test_plan_kernels_come_from_the_scenario_else_the_catalog_defaults() -> None:
    xdp, tc = scenario("xdp"), scenario("tc")
    assert xdp.kernels == ("debian-6.1", "debian-7.2")
    assert tc.kernels == ()
    cells = plan([xdp, tc], [], ["jit", "default"], CATALOG_DEFAULTS)
    # kernels in the order the scenarios name them (xdp first, then the defaults tc gets);
    # on a kernel, configs by name whatever the scenario ("default" < "jit")
    assert ids(cells) == [
        *grid(tc, ["debian-6.1"], ["default"]),
        *grid(xdp, ["debian-6.1"], ["jit"]),
        *grid(xdp, ["debian-7.2"], ["jit"]),
        *grid(tc, ["debian-5.10"], ["default"]),
    ]
    # kernels given replace both
    assert {c.kernel for c in plan([xdp, tc], ["debian-7.3"], [], CATALOG_DEFAULTS)} == {
        "debian-7.3"
    }


def test_plan_configs_keep_only_the_named_ones() -> None:
    tc, xdp = scenario("tc"), scenario("xdp")
    # a scenario with none of the named configs has no cell
    assert ids(plan([tc, xdp], ["debian-6.1"], ["interp"], [])) == grid(
        xdp, ["debian-6.1"], ["interp"]
    )
    assert ids(plan([tc, xdp], ["debian-6.1"], ["jit", "default"], [])) == [
        *grid(tc, ["debian-6.1"], ["default"]),
        *grid(xdp, ["debian-6.1"], ["jit"]),
    ]


def test_plan_unknown_config_is_a_usage_error_with_a_hint() -> None:
    with pytest.raises(UsageError) as raised:
        plan([scenario("tc"), scenario("xdp")], ["debian-6.1"], ["jit", "bogus"], [])
    assert raised.value.message == "no scenario has config 'bogus'"
    assert raised.value.hint == "configs: default, hardened, interp, jit"
    assert raised.value.exit_code == 2


def test_plan_of_nothing_is_empty() -> None:
    assert plan([], ["debian-6.1"], [], CATALOG_DEFAULTS) == []


# --- shards ----------------------------------------------------------------------------


def cells_of(n: int) -> list[Cell]:
    xdp = scenario("xdp")
    return [Cell(xdp, xdp.cases[0], f"k{i}", RunConfig("default")) for i in range(n)]


@given(n=st.integers(0, 60), total=st.integers(1, 12))
def test_shards_cover_every_cell_once_in_run_order(n: int, total: int) -> None:
    cells = cells_of(n)
    shards = [shard_cells(cells, Shard(i, total)) for i in range(1, total + 1)]
    assert sorted(id(c) for s in shards for c in s) == sorted(id(c) for c in cells)
    for shard in shards:  # each in run order
        assert shard == [c for c in cells if any(c is k for k in shard)]
    assert sum(bool(s) for s in shards) == min(n, total)  # no shard idle while cells wait


@pytest.mark.parametrize(
    ("n", "total", "sizes"),
    [(2, 5, [1, 1, 0, 0, 0]), (0, 3, [0, 0, 0]), (10, 3, [4, 3, 3]), (20, 3, [7, 7, 6])],
)
def test_shard_sizes_of_one_kernel(n: int, total: int, sizes: list[int]) -> None:
    xdp = scenario("xdp")
    cells = [Cell(xdp, xdp.cases[0], "k", RunConfig(f"c{i:02}")) for i in range(n)]
    got = [len(shard_cells(cells, Shard(i, total))) for i in range(1, total + 1)]
    # the longest shard is as short as it can be; ties may fall either way
    assert (max(got), sum(got), got.count(0)) == (max(sizes), n, sizes.count(0))


def test_no_shard_is_every_cell_as_a_new_list() -> None:
    cells = cells_of(4)
    kept = shard_cells(cells, None)
    assert kept == cells
    assert kept is not cells


@pytest.mark.parametrize(
    ("text", "shard"),
    [
        ("2/4", Shard(2, 4)),
        ("1/1", Shard(1, 1)),
        (" 4 / 4 ", Shard(4, 4)),
        ("03/9999", Shard(3, 9999)),
    ],
)
def test_shard_parse(text: str, shard: Shard) -> None:
    assert Shard.parse(text) == shard
    assert Shard.parse(str(shard)) == shard  # str() is the I/N form


@pytest.mark.parametrize(
    "text", ["3/2", "0/2", "1/0", "2", "a/b", "-1/2", "1/2/3", "", "10000/10000", "1.5/2"]
)
def test_shard_parse_refuses(text: str) -> None:
    with pytest.raises(UsageError) as raised:
        Shard.parse(text)
    assert str(raised.value) == f"shard {text!r}: expected I/N with 1 <= I <= N, e.g. 2/4"


def kernel(name: str, release: str) -> Kernel:
    return Kernel(name, release, Path(f"/boot/{name}"), None)


def test_newest_is_the_highest_kernel_version() -> None:
    k510 = kernel("debian-5.10", "5.10.0-33-amd64")
    k61 = kernel("debian-6.1", "6.1.0-40-amd64")
    k612 = kernel("debian-6.12", "6.12.48+deb13-amd64")
    k72 = kernel("debian-7.2", "7.2.1-1-amd64")
    odd = kernel("mine", "not-a-version")
    assert newest([k61, k72, k612, k510]) == k72
    assert newest([k61, k612, k510]) == k612  # 6.12 > 6.1, not a string comparison
    assert newest([odd, k510]) == k510  # an unreadable release counts as 0.0.0
    assert newest([odd]) == odd


# --- the run directory -----------------------------------------------------------------


def result(case: str, outcome: Outcome = Outcome.PASSED, **kw: Any) -> CellResult:
    return CellResult("s", case, "debian-6.1", "jit", outcome, **kw)


def jsonl(path: Path, *lines: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.jsonl").write_text("".join(line + "\n" for line in lines))
    return path


def record(case: str, outcome: str = "PASSED", **kw: Any) -> str:
    return json.dumps({**result(case).to_json(), "outcome": outcome, **kw})


def test_read_cells_last_record_wins_at_the_end(tmp_path: Path) -> None:
    run = jsonl(
        tmp_path,
        record("a", "FAILED"),
        record("b"),
        record("a", "PASSED"),  # a retried cell: this one counts, in its new place
        record("c"),
        record("c", libbpf="1.1.2"),  # another libbpf: another cell
    )
    cells = appended(run)
    assert [(c.case, c.outcome, c.libbpf) for c in cells] == [
        ("b", "PASSED", ""),
        ("a", "PASSED", ""),
        ("c", "PASSED", ""),
        ("c", "PASSED", "1.1.2"),
    ]


def test_appended_cells_drop_a_torn_last_line_and_name_a_corrupt_one(tmp_path: Path) -> None:
    # a writer killed in the middle of a record leaves it cut, without its newline
    run = jsonl(tmp_path, record("a"), "", record("b"))
    (run / "results.jsonl").write_text((run / "results.jsonl").read_text() + record("c")[:25])
    assert [c.case for c in appended(run)] == ["a", "b"]
    assert appended(tmp_path / "missing") == []
    # anything else that is not a record is an error naming its line, never skipped
    junk = jsonl(tmp_path / "junk", record("a"), "[1, 2]", record("b"))
    with pytest.raises(UsageError, match=r"results\.jsonl:2: corrupt results line: not a JSON"):
        appended(junk)


def test_finalize_writes_schema_1(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path / "run", {})
    rundir.append(result("a"))
    rundir.append(result("b", Outcome.FAILED, reason="nope"))
    rundir.append(result("a", Outcome.VERIFIER_REJECTED))
    cells = finalize(rundir.path, {"kernels": ["debian-6.1"], "shard": "1/2"})
    body = json.loads((rundir.path / "results.json").read_text())
    assert body["schema"] == 1
    assert body["run"]["kernels"] == ["debian-6.1"]
    assert body["run"]["shard"] == "1/2"
    assert isinstance(body["run"]["finished"], str)
    assert body["cells"] == [c.to_json() for c in cells]
    assert [(c.id, c.outcome) for c in cells] == [
        ("s::b[debian-6.1-jit]", "FAILED"),
        ("s::a[debian-6.1-jit]", "VERIFIER_REJECTED"),
    ]
    assert sorted(p.name for p in rundir.path.iterdir() if p.is_file()) == [
        ".results.lock",
        "results.json",
        "results.jsonl",
    ]


def shard_dir(path: Path, *cells: CellResult, log: str = "") -> Path:
    rundir = RunDir(path, {})
    for cell in cells:
        if log:
            rundir.write_verifier_log(cell, log)
        rundir.append(cell)
    rundir.guest_file("debian-6.1", "console").write_text(f"console of {path.name}\n")
    finalize(path, {"shard": path.name})
    return path


def test_merge_runs_combines_shards_later_source_wins(tmp_path: Path) -> None:
    one = shard_dir(tmp_path / "one", result("a"), result("b", Outcome.FAILED), log="log one\n")
    two = shard_dir(tmp_path / "two", result("b", Outcome.PASSED), result("c"), log="log two\n")
    (two / "results.jsonl").unlink()  # a finished run may keep results.json only
    out = tmp_path / "merged"
    cells, duplicates = merge_runs([one, two], out)
    assert [d.describe() for d in duplicates] == [
        f"s::b[debian-6.1-jit]: kept PASSED from {two}, dropped FAILED from {one}"
    ]
    assert [(c.case, c.outcome) for c in cells] == [
        ("a", "PASSED"),
        ("b", "PASSED"),
        ("c", "PASSED"),
    ]
    body = json.loads((out / "results.json").read_text())
    assert body["schema"] == 1
    assert body["cells"] == [c.to_json() for c in cells]
    assert body["run"]["merged_from"] == [str(one), str(two)]
    assert [m["shard"] for m in body["run"]["shards"]] == ["one", "two"]
    logs = out / "logs" / "debian-6.1" / "jit"
    assert (logs / "s.a.verifier.log").read_text() == "log one\n"
    assert (logs / "s.b.verifier.log").read_text() == "log two\n"  # the later shard's
    assert (logs / "s.c.verifier.log").read_text() == "log two\n"
    assert (out / "guest" / "debian-6.1.console.log").read_text() == "console of two\n"


def test_merge_runs_refuses_a_non_empty_output_and_a_non_run_dir(tmp_path: Path) -> None:
    one = shard_dir(tmp_path / "one", result("a"))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("")
    with pytest.raises(UsageError, match="exists and is not empty"):
        merge_runs([one], busy)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=r"stranger: not a kitl run directory"):
        merge_runs([one, stranger], out)
    assert not out.exists()  # refused before anything was written
    assert merge_runs([one], tmp_path / "empty-is-fine") == (appended(one), [])


def test_merge_runs_takes_a_killed_shard_with_no_complete_cell(tmp_path: Path) -> None:
    one = shard_dir(tmp_path / "one", result("a"))
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "results.jsonl").write_text(record("b")[:30])  # cut, without its newline
    assert [c.case for c in merge_runs([one, killed], tmp_path / "out")[0]] == ["a"]


@pytest.mark.parametrize("rerun_first", [False, True])
def test_merge_keeps_a_real_verdict_over_an_infrastructure_outcome(
    tmp_path: Path, rerun_first: bool
) -> None:
    """A shard whose kernel timed out, merged with its rerun in either order: every cell
    keeps the rerun's real verdict, never the TIMED_OUT, and the merge says so; a cell both
    runs have a real verdict for keeps the later one."""
    failed = shard_dir(
        tmp_path / "failed",
        result("a", Outcome.TIMED_OUT, reason="boot timed out"),
        result("b", Outcome.VM_LOST),
        result("c", Outcome.FAILED),
    )
    rerun = shard_dir(
        tmp_path / "rerun",
        result("a", Outcome.PASSED),
        result("b", Outcome.VERIFIER_REJECTED),
        result("c", Outcome.PASSED),
    )
    order = [rerun, failed] if rerun_first else [failed, rerun]
    cells, duplicates = merge_runs(order, tmp_path / "merged")
    outcomes = {c.case: c.outcome for c in cells}
    later_c = "FAILED" if rerun_first else "PASSED"
    assert outcomes == {"a": "PASSED", "b": "VERIFIER_REJECTED", "c": later_c}
    said = {d.cell_id: (d.kept, d.kept_from, d.dropped) for d in duplicates}
    assert said["s::a[debian-6.1-jit]"] == ("PASSED", rerun, "TIMED_OUT")
    assert said["s::b[debian-6.1-jit]"] == ("VERIFIER_REJECTED", rerun, "VM_LOST")
    body = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert len(body["run"]["duplicates"]) == 3


def test_a_kernel_that_did_not_boot_is_recorded_once(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path / "run", {})
    console = rundir.guest_file("debian-6.1", "console")
    console.write_text("[ 1.0] rcu: INFO: rcu_preempt self-detected stall on CPU\n")
    rundir.record_boot_failure("debian-6.1", "BOOT_FAILED", "debian-6.1: boot stalled", console)
    for case in ("a", "b"):
        rundir.append(result(case, Outcome.BOOT_FAILED, reason="not run: debian-6.1 did not boot"))
    finalize(rundir.path, {})
    body = json.loads((rundir.path / "results.json").read_text())
    assert body["run"]["boot_failures"] == [
        {
            "kernel": "debian-6.1",
            "outcome": "BOOT_FAILED",
            "reason": "debian-6.1: boot stalled",
            "console_path": "guest/debian-6.1.console.log",
        }
    ]
    # a resumed run whose kernel then booted: the record no longer applies
    rundir.append(result("a", Outcome.PASSED))
    rundir.append(result("b", Outcome.PASSED))
    finalize(rundir.path, {})
    assert "boot_failures" not in json.loads((rundir.path / "results.json").read_text())["run"]


# --- kitl run's pytest command -----------------------------------------------------------


def test_pytest_argv_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = run_args(
        kernels="debian-6.1,debian-7.2",
        kernel=["debian-6.1", "debian-7.3"],
        configs="jit",
        config=["interp"],
        shard="2/3",
        accel="kvm",
        expect=Path("known.yaml"),
        boot_timeout=90.0,
        libbpf="system",
    )
    paths = [Path("/s/tc/scenario.yaml"), Path("/s/xdp")]
    assert runner.pytest_argv(args, paths, Path("/runs/r1"), 2) == [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(runner.INI),
        "--rootdir",
        str(tmp_path),
        "-p",
        "no:cacheprovider",
        "--kitl",
        "--kitl-lines",
        "-q",
        "--no-header",
        "--tb=no",
        "-rN",
        "--kitl-output",
        "/runs/r1",
        "--kitl-accel",
        "kvm",
        "--kitl-kernels",
        "debian-6.1,debian-7.2,debian-7.3",
        "--kitl-configs",
        "jit,interp",
        "--kitl-libbpf",
        "system",
        "--kitl-shard",
        "2/3",
        "--kitl-expect",
        "known.yaml",
        "--kitl-boot-timeout",
        "90.0",
        "-n",
        "2",
        "--dist",
        "loadgroup",
        "/s/tc/scenario.yaml",
        "/s/xdp",
    ]


@pytest.mark.parametrize(
    ("workers", "tail"),
    [
        (1, []),  # one worker: no xdist
        (2, ["-n", "2", "--dist", "loadgroup"]),
        (5, ["-n", "5", "--dist", "loadgroup"]),
    ],
)
def test_pytest_argv_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int, tail: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = runner.pytest_argv(run_args(), [], tmp_path / "run", workers)
    assert argv == [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(runner.INI),
        "--rootdir",
        str(tmp_path),
        "-p",
        "no:cacheprovider",
        "--kitl",
        "--kitl-lines",
        "-q",
        "--no-header",
        "--tb=no",
        "-rN",
        "--kitl-output",
        str(tmp_path / "run"),
        "--kitl-accel",
        "auto",
        *tail,
    ]


def test_an_object_that_does_not_compile_is_the_cells_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """clang failing is recorded per cell (no guest is booted, no traceback)."""

    def broken(*args: object) -> dict[tuple[str, str], Path]:
        raise BuildError("clang: progs.bpf.c:3:1: error: unknown type name 'u33'")

    def no_boot(kernel: Kernel, console: Path) -> Any:
        raise AssertionError("nothing boots for a scenario whose objects do not build")

    monkeypatch.setattr(matrix, "build_objects", broken)
    kernel = Kernel("debian-6.1", "6.1.0-56-amd64", tmp_path / "vmlinuz", None)
    guests = matrix.Guests(RunDir(tmp_path / "run", {}), Cache(tmp_path), no_boot, kernel)
    cell = plan([scenario("tc")], ["debian-6.1"], [], [])[0]
    got = guests.run_cell(cell, kernel)
    assert got.outcome is Outcome.ERROR
    assert got.reason == (
        "cannot build the scenario's objects: "
        "clang: progs.bpf.c:3:1: error: unknown type name 'u33'"
    )
    assert [c.id for c in appended(tmp_path / "run")] == [cell.cell_id]


def test_kitl_merge_lists_the_first_duplicates_and_counts_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [f"c{n:02d}" for n in range(MERGE_SHOWN + 5)]
    failed = shard_dir(tmp_path / "failed", *(result(c, Outcome.VM_LOST) for c in cases))
    rerun = shard_dir(tmp_path / "rerun", *(result(c) for c in cases))
    out = tmp_path / "merged"
    assert main(["merge", str(failed), str(rerun), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"kitl: {len(cases)} cells were in more than one run:" in err
    first = f"  s::c00[debian-6.1-jit]: kept PASSED from {rerun}, dropped VM_LOST from {failed}"
    assert first in err.splitlines()
    assert err.count("kept PASSED from") == MERGE_SHOWN
    assert "... and 5 more (all in results.json: run.duplicates)" in err
    body = json.loads((out / "results.json").read_text())
    assert len(body["run"]["duplicates"]) == len(cases)


def test_a_lost_vm_or_an_int3_oops_under_tcg_gets_one_more_attempt() -> None:
    int3 = Crash(title="Oops: int3: 0000 [#1] SMP NOPTI", functions=("schedule",))
    null = Crash(title="BUG: kernel NULL pointer dereference, address: 0000000000000008")
    crashed = Outcome.KERNEL_CRASH
    assert matrix.worth_a_retry(result("a", Outcome.VM_LOST, accel="tcg"))
    assert matrix.worth_a_retry(result("a", crashed, accel="tcg", crash=int3))
    assert not matrix.worth_a_retry(result("a", crashed, accel="kvm", crash=int3))
    assert not matrix.worth_a_retry(result("a", crashed, accel="tcg", crash=null))
    assert not matrix.worth_a_retry(result("a", crashed, accel="tcg"))
    assert not matrix.worth_a_retry(result("a", Outcome.TIMED_OUT, accel="tcg"))
    assert not matrix.worth_a_retry(result("a", Outcome.VERIFIER_REJECTED, accel="tcg"))
