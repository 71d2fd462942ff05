"""`kitl plan --shards N`: the shards `kitl run --shard I/N` will run, before anything runs.

The cells are `kitl run`'s, from the same scenarios and options (kernels, configs, loaders),
and the shards come from the same partition (harness.run.shards) with the same timings
(`--timings RUN_DIR`, which `kitl run --shard` takes too), so each planned shard is what
`--shard I/N` runs.  `--format github-matrix` is a strategy.matrix for GitHub Actions:
`{"include": [{"shard": "1/3", "kernels": "...", "cells": N, "estimate_s": S}, ...]}`,
without the shards that got no cell; `--format json` lists every shard's cell ids.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.kernel.resolve import Kernels
from harness.outcome import EXIT_OK
from harness.run import options
from harness.run.matrix import plan
from harness.run.options import Matrix
from harness.run.shards import ShardPlan, describe, load_timings
from harness.scenario.model import Scenario

FORMATS = ("github-matrix", "json")
MAX_SHARDS = 256  # GitHub's limit on the jobs of one matrix
ROWS = ("kernel", "config", "libbpf", "timings", "allow_outside")


@dataclass(frozen=True)
class PlanRequest:
    paths: tuple[Path, ...]  # scenarios or their directories; none: the bundled ones
    matrix: Matrix  # its kernels, configs, libbpf, timings and allow_outside
    shards: int
    format: str = "github-matrix"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="SCENARIO_OR_DIR",
        help="as kitl run's (default: the bundled scenarios)",
    )
    p.add_argument("--shards", type=int, required=True, metavar="N", help="how many shards")
    p.add_argument("--format", choices=FORMATS, default="github-matrix")
    for dest in ROWS:
        options.BY_DEST[dest].add_cli(p)


def matrix_of(args: argparse.Namespace) -> Matrix:
    """The rows `kitl plan` shares with `kitl run`, as a Matrix (the others at defaults)."""
    rows = [options.BY_DEST[d] for d in ROWS]
    value = {o.dest: o.from_cli(args) for o in rows}
    return Matrix(
        kernels=tuple(value["kernel"]),
        configs=tuple(value["config"]),
        libbpf=value["libbpf"],
        timings=value["timings"],
        allow_outside=bool(value["allow_outside"]),
    )


def shard_plans(request: PlanRequest, scenarios: Sequence[Scenario]) -> list[ShardPlan]:
    """Check what kitl run checks first (kernel and config names, loaders), then plan."""
    if not 1 <= request.shards <= MAX_SHARDS:
        raise UsageError(f"--shards {request.shards}: expected 1 to {MAX_SHARDS}")
    matrix = request.matrix
    catalog = Kernels.open().catalog
    for name in matrix.kernels:
        catalog.get(name)  # unknown names: one line, exit 2
    defaults = [e.name for e in catalog.defaults()]
    libbpfs = options.libbpf_names(matrix.libbpf)
    cells = plan(scenarios, list(matrix.kernels), list(matrix.configs), defaults, libbpfs)
    if not cells:
        raise UsageError("the matrix is empty: no cell to plan")
    return describe(cells, request.shards, load_timings(matrix.timings))


def github_matrix(plans: Sequence[ShardPlan]) -> dict[str, Any]:
    return {
        "include": [
            {
                "shard": p.name,
                "kernels": ",".join(p.kernels),
                "cells": len(p.cell_ids),
                "estimate_s": p.estimate_s,
            }
            for p in plans
            if p.cell_ids
        ]
    }


def as_json(plans: Sequence[ShardPlan], timings: Path | None) -> dict[str, Any]:
    return {
        "shards": [
            {
                "shard": p.name,
                "kernels": list(p.kernels),
                "estimate_s": p.estimate_s,
                "cells": list(p.cell_ids),
            }
            for p in plans
        ],
        "cells": sum(len(p.cell_ids) for p in plans),
        "timings": str(timings) if timings else None,
    }


def run(request: PlanRequest, scenarios: Sequence[Scenario]) -> int:
    plans = shard_plans(request, scenarios)
    if request.format == "json":
        print(json.dumps(as_json(plans, request.matrix.timings), indent=2))
    else:  # one line: what `echo "matrix=$(kitl plan ...)" >> $GITHUB_OUTPUT` needs
        print(json.dumps(github_matrix(plans), separators=(",", ":")))
    empty = [p.name for p in plans if not p.cell_ids]
    if empty:
        print(
            f"kitl: {len(empty)} of {request.shards} shards got no cell "
            f"(fewer cells than shards): {', '.join(empty)} left out",
            file=sys.stderr,
        )
    return EXIT_OK
