"""Shards grouped by kernel and balanced by time (harness.run.shards), and `kitl plan`:
the plan is the partition `--shard I/N` runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.cli.main import main
from harness.cli.requests import BUNDLED
from harness.run.matrix import Shard, plan, shard_cells
from harness.run.shards import BOOT_S, DEFAULT_CELL_S, describe, load_timings, partition
from harness.scenario.loader import load_scenario

DATA = Path(__file__).parents[1] / "data"


@dataclass(frozen=True)
class C:
    kernel: str
    cell_id: str


def cells(*counts: tuple[str, int]) -> list[C]:
    return [C(k, f"{k}#{i}") for k, n in counts for i in range(n)]


def kernels_of(shard: list[C]) -> list[str]:
    return list(dict.fromkeys(c.kernel for c in shard))


def test_whole_kernels_when_they_balance() -> None:
    shards = partition(cells(("a", 4), ("b", 4), ("c", 4)), 3, {})
    assert [kernels_of(s) for s in shards] == [["a"], ["b"], ["c"]]


def test_timings_split_a_slow_kernel_and_keep_the_fast_ones_whole() -> None:
    given = cells(("a", 4), ("b", 4), ("c", 4))
    slow = {c.cell_id: 100.0 for c in given if c.kernel == "a"}
    slow |= {c.cell_id: 1.0 for c in given if c.kernel != "a"}
    shards = partition(given, 2, slow)
    assert [kernels_of(s) for s in shards] == [["a", "b"], ["a", "c"]]
    assert [p.estimate_s for p in describe(given, 2, slow)] == [2 * 100 + 4 + 2 * BOOT_S] * 2
    # by counts: slices of the run order, six cells each
    assert [len(s) for s in partition(given, 2, {})] == [6, 6]


def test_a_cell_without_timing_costs_the_median() -> None:
    given = cells(("a", 3))
    plans = describe(given, 1, {"a#0": 10.0, "a#1": 2.0})
    assert plans[0].estimate_s == 10.0 + 2.0 + 6.0 + BOOT_S
    assert describe(given, 1, {})[0].estimate_s == 3 * DEFAULT_CELL_S + BOOT_S


@given(
    counts=st.lists(st.integers(1, 30), min_size=1, max_size=6),
    total=st.integers(1, 9),
    seconds=st.lists(st.floats(0.1, 500), min_size=1, max_size=40),
)
def test_every_shard_boots_each_of_its_kernels_once(
    counts: list[int], total: int, seconds: list[float]
) -> None:
    given = cells(*((f"k{n}", c) for n, c in enumerate(counts)))
    timings = {c.cell_id: seconds[n % len(seconds)] for n, c in enumerate(given)}
    shards = partition(given, total, timings)
    assert len(shards) == total
    assert sorted(c.cell_id for s in shards for c in s) == sorted(c.cell_id for c in given)
    for shard in shards:
        assert shard == sorted(shard, key=given.index)  # run order
        runs = [c.kernel for n, c in enumerate(shard) if n == 0 or shard[n - 1].kernel != c.kernel]
        assert len(runs) == len(set(runs))  # a kernel's cells together: one boot
    assert partition(given, total, timings) == shards  # deterministic


def test_no_shards_is_a_bug_not_a_plan() -> None:
    with pytest.raises(ValueError, match="0 shards"):
        partition(cells(("a", 1)), 0, {})


def test_load_timings_reads_case_seconds_by_cell_id() -> None:
    timings = load_timings(DATA / "report-runs" / "two-kernels")
    assert timings["cgroup::connect4-denied-port[debian-6.1-default]"] == 2.576
    assert load_timings(None) == {}


# --- kitl plan ---------------------------------------------------------------------------


def plan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["plan", *argv]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_plan_github_matrix_groups_by_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    scenario = str(DATA / "plugin" / "xdp.yaml")
    kernels = "debian-6.1,debian-7.2"
    out = plan_json(capsys, scenario, "--shards", "2", "--kernels", kernels)
    include = out["include"]
    assert isinstance(include, list)
    assert [(i["shard"], i["kernels"]) for i in include] == [
        ("1/2", "debian-6.1"),
        ("2/2", "debian-7.2"),
    ]
    assert include[0]["cells"] == include[1]["cells"] > 0
    assert include[0]["estimate_s"] == include[0]["cells"] * DEFAULT_CELL_S + BOOT_S


def test_plan_is_what_shard_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """Each planned shard's cells are exactly `kitl run --shard I/N --timings`'s."""
    run = DATA / "report-runs" / "two-kernels"
    scenario = BUNDLED / "xdp-basics" / "scenario.yaml"
    argv = [str(scenario), "--shards", "3", "--kernels", "debian-6.1,debian-7.2"]
    out = plan_json(capsys, *argv, "--timings", str(run), "--format", "json")
    shards = out["shards"]
    assert isinstance(shards, list)
    matrix = plan([load_scenario(scenario)], ["debian-6.1", "debian-7.2"], [], [])
    timings = load_timings(run)
    for n, planned in enumerate(shards, start=1):
        ran = shard_cells(matrix, Shard(n, 3), timings)
        assert planned["cells"] == [c.cell_id for c in ran]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shards", "0"], "kitl: --shards 0: expected 1 to 256"),
        (["--shards", "2", "--kernels", "nope"], "kitl: unknown kernel 'nope'"),
        (["--shards", "2", "--timings", "/nonexistent"], "kitl: "),
    ],
)
def test_plan_user_errors_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert err.count("\n") == 1
