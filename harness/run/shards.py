"""Shards of a matrix: grouped by kernel, balanced by an estimate of their time.

`kitl run --shard I/N`, `kitl verify --shard I/N` (through the plugin's collection) and
`kitl plan --shards N` all call `partition` with the same cells in the same order, so a
planned shard is exactly what `--shard` runs.  Every shard boots each of its kernels once
(its cells of a kernel are together in run order).  Two candidates, the one that finishes
sooner (the longest shard) wins, whole kernels on a tie:

  - whole kernels: a piece is a run of one kernel's cells (one boot), split only while
    there are fewer pieces than shards or one outweighs a fair share (never into more
    pieces than shards); pieces go to the least loaded shard, heaviest first (LPT);
  - slices of the run order, cut where the longest slice is shortest (at most N - 1
    kernels are booted by two shards), for when whole kernels cannot balance.

The estimate of a cell is its `timings.case_s` in an earlier run (`--timings RUN_DIR`),
else the median of that run's cells, else DEFAULT_CELL_S; each piece adds a boot.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from harness.results.runs import load_run

# A boot and the agent's start under TCG on the project's 2-core machine: 16-20 s in
# docs/benchmarks.md, rounded up for the guest's set-up; only its ratio to a cell matters.
BOOT_S = 30.0
# A cell with no timing at all: the bundled matrix's cells took 1-10 s each under TCG.
DEFAULT_CELL_S = 5.0


class Planned(Protocol):
    """What partition needs of a cell (harness.run.matrix.Cell has both)."""

    @property
    def kernel(self) -> str: ...

    @property
    def cell_id(self) -> str: ...


C = TypeVar("C", bound=Planned)


@dataclass(frozen=True)
class Piece:
    """Cells [start, end) of one kernel's cells (indices into that kernel's list)."""

    kernel: str
    start: int
    end: int
    seconds: float  # its cells' estimates and one boot


def load_timings(run_dir: Path | None) -> dict[str, float]:
    """Each timed cell's seconds in an earlier run directory, by cell id ({} for None)."""
    if run_dir is None:
        return {}
    return {
        cell.id: cell.timings.case_s
        for cell in load_run(run_dir).cells
        if cell.id and cell.timings.case_s is not None
    }


def estimates(cells: Sequence[Planned], timings: Mapping[str, float]) -> list[float]:
    """Each cell's estimated seconds: its own timing, else the median of the timings."""
    fallback = statistics.median(timings.values()) if timings else DEFAULT_CELL_S
    return [timings.get(c.cell_id, fallback) for c in cells]


def _pieces(by_kernel: dict[str, list[float]], total: int) -> list[Piece]:
    """Each kernel whole, then the heaviest piece halved (by time) while there are fewer
    pieces than shards or it outweighs a fair share; never past one piece per shard."""
    pieces = [Piece(k, 0, len(s), sum(s) + BOOT_S) for k, s in by_kernel.items()]
    while True:
        fair = sum(p.seconds for p in pieces) / total
        count = {k: sum(p.kernel == k for p in pieces) for k in by_kernel}
        splittable = [p for p in pieces if p.end - p.start > 1 and count[p.kernel] < total]
        if not splittable:
            return pieces
        heaviest = max(splittable, key=lambda p: p.seconds)
        if len(pieces) >= total and heaviest.seconds <= fair:
            return pieces
        pieces.remove(heaviest)
        pieces += _halves(heaviest, by_kernel[heaviest.kernel])


def _halves(piece: Piece, seconds: Sequence[float]) -> list[Piece]:
    """`piece` cut where its first half's time reaches half of the whole (both non-empty)."""
    half = (piece.seconds - BOOT_S) / 2
    cut, running = piece.start + 1, seconds[piece.start]
    while cut < piece.end - 1 and running + seconds[cut] <= half:
        running += seconds[cut]
        cut += 1
    first = sum(seconds[piece.start : cut]) + BOOT_S
    second = sum(seconds[cut : piece.end]) + BOOT_S
    return [
        Piece(piece.kernel, piece.start, cut, first),
        Piece(piece.kernel, cut, piece.end, second),
    ]


def _lpt(kernels: Sequence[str], costs: Sequence[float], total: int) -> list[list[int]]:
    """Whole kernels (split only as _pieces says) to the least loaded shard, heaviest first."""
    by_kernel: dict[str, list[int]] = {}  # each kernel's cells, as indices into `cells`
    for index, kernel in enumerate(kernels):
        by_kernel.setdefault(kernel, []).append(index)
    pieces = _pieces({k: [costs[i] for i in ix] for k, ix in by_kernel.items()}, total)
    order = {k: n for n, k in enumerate(by_kernel)}
    pieces.sort(key=lambda p: (-p.seconds, order[p.kernel], p.start))  # deterministic ties
    loads = [0.0] * total
    chosen: list[list[int]] = [[] for _ in range(total)]
    for piece in pieces:
        shard = min(range(total), key=lambda s: (loads[s], s))
        loads[shard] += piece.seconds
        chosen[shard] += by_kernel[piece.kernel][piece.start : piece.end]
    return [sorted(indices) for indices in chosen]


def _fill(kernels: Sequence[str], costs: Sequence[float], limit: float) -> list[range]:
    """Run order cut greedily into slices of at most `limit` seconds (boots included;
    a single cell over the limit gets a slice of its own)."""
    slices, start = [], 0
    while start < len(costs):
        spent, seen, end = 0.0, set(), start
        while end < len(costs):
            more = costs[end] + (0.0 if kernels[end] in seen else BOOT_S)
            if end > start and spent + more > limit:
                break
            spent, end = spent + more, end + 1
            seen.add(kernels[end - 1])
        slices.append(range(start, end))
        start = end
    return slices


def _contiguous(kernels: Sequence[str], costs: Sequence[float], total: int) -> list[list[int]]:
    """Slices of the run order (each kernel booted once per shard, at most total - 1 kernels
    split), the longest as short as a bisection on it finds."""
    # one slice fits under `high` even with the rounding of _fill's own sums
    low, high = 0.0, (sum(costs) + BOOT_S * len(kernels)) * 1.001 + 1.0
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (low, middle) if len(_fill(kernels, costs, middle)) <= total else (middle, high)
    slices = [list(s) for s in _fill(kernels, costs, high)]
    while len(slices) < total and any(len(s) > 1 for s in slices):  # no shard left idle:
        widest = max(range(len(slices)), key=lambda n: len(slices[n]))  # halving costs no time
        half = len(slices[widest]) // 2
        slices[widest : widest + 1] = [slices[widest][:half], slices[widest][half:]]
    return slices + [[] for _ in range(total - len(slices))]


def _longest(
    shards: Sequence[Sequence[int]], kernels: Sequence[str], costs: Sequence[float]
) -> float:
    return max(sum(costs[i] for i in s) + BOOT_S * len({kernels[i] for i in s}) for s in shards)


def partition(cells: Sequence[C], total: int, timings: Mapping[str, float]) -> list[list[C]]:
    """`total` shards of `cells` (some empty when there are fewer cells than shards), each
    in run order; together they hold every cell once.  Of two candidates, whole kernels
    (fewer boots) unless slices of the run order finish sooner."""
    if total < 1:
        raise ValueError(f"{total} shards")
    if not cells:
        return [[] for _ in range(total)]
    costs = estimates(cells, timings)
    kernels = [c.kernel for c in cells]
    chosen = _lpt(kernels, costs, total)
    sliced = _contiguous(kernels, costs, total)
    if _longest(sliced, kernels, costs) < _longest(chosen, kernels, costs) - 1e-6:
        chosen = sliced
    return [[cells[i] for i in indices] for indices in chosen]


@dataclass(frozen=True)
class ShardPlan:
    """One shard as `kitl plan` reports it."""

    index: int  # 1-based
    total: int
    kernels: tuple[str, ...]  # in run order: each boots once in this shard
    cell_ids: tuple[str, ...]
    estimate_s: float

    @property
    def name(self) -> str:
        return f"{self.index}/{self.total}"


def describe(cells: Sequence[Planned], total: int, timings: Mapping[str, float]) -> list[ShardPlan]:
    """What each shard of `partition` runs, with its estimated seconds (boots included)."""
    cost = dict(zip((c.cell_id for c in cells), estimates(cells, timings), strict=True))
    plans = []
    for index, shard in enumerate(partition(cells, total, timings), start=1):
        kernels = tuple(dict.fromkeys(c.kernel for c in shard))
        seconds = sum(cost[c.cell_id] for c in shard) + BOOT_S * len(kernels)
        ids = tuple(c.cell_id for c in shard)
        plans.append(ShardPlan(index, total, kernels, ids, round(seconds, 1)))
    return plans
