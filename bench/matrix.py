"""The matrix three ways, in one run: `kitl run -n 1`, `kitl run -n 2`, and boot-per-cell
(one fresh VM for every cell, as boot-per-test tools do).  Goals: kitl -n 1 at least 10x
faster than boot-per-cell; -n 2 at least 1.6x faster than -n 1.  Not a test.

Boot-per-cell runs each cell on its own through pytest's node-id selection, so a cell costs
a full boot.  It is slow: with --naive-sample K only K cells (spread evenly over the
matrix) run that way, and the full figure is their mean times the number of cells, marked
as an extrapolation in the output.

    .venv/bin/python bench/matrix.py [--kernels debian-6.1,debian-7.2] [--naive-sample 0]
        [SCENARIO_DIR...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import stamp, stop_on_sigterm, timed

from harness.cli import runner

ROOT = Path(__file__).resolve().parents[1]
KITL = [sys.executable, "-m", "harness.cli.main"]


def _node_ids(run_dir: Path) -> list[tuple[str, str]]:
    """(scenario file, pytest node id) of every cell of a finished run."""
    cells = json.loads((run_dir / "results.json").read_text())["cells"]
    return [
        (c["scenario_file"], f"{c['scenario_file']}::{c['scenario']}::{c['case']}"
         f"[{c['kernel']}-{c['config']}]")
        for c in cells
    ]  # fmt: skip


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=[str(ROOT / "scenarios")])
    parser.add_argument("--kernels", default="debian-6.1,debian-7.2")
    parser.add_argument("--naive-sample", type=int, default=0, help="0: every cell")
    args = parser.parse_args()
    base = ["run", *args.paths, "--kernels", args.kernels]
    with tempfile.TemporaryDirectory(prefix="kitl-bench-matrix-") as tmp:
        out = Path(tmp)
        n1, _ = timed([*KITL, *base, "-n", "1", "--output", str(out / "n1")])
        n2, _ = timed([*KITL, *base, "-n", "2", "--output", str(out / "n2")])
        nodes = _node_ids(out / "n1")
        sample = nodes
        if args.naive_sample and args.naive_sample < len(nodes):
            step = len(nodes) / args.naive_sample
            sample = [nodes[int(i * step)] for i in range(args.naive_sample)]
        naive_each = []
        for i, (_, node) in enumerate(sample):
            argv = [sys.executable, "-m", "pytest", "-c", str(runner.INI)]
            argv += ["-p", "no:cacheprovider", "-q", "--kitl", "--kitl-kernels", args.kernels]
            argv += ["--kitl-output", str(out / f"naive-{i}"), node]
            naive_each.append(timed(argv)[0])
        naive = sum(naive_each) / len(naive_each) * len(nodes)
    extrapolated = len(sample) < len(nodes)
    print(stamp())
    print(f"cells {len(nodes)} on {args.kernels}")
    print(f"kitl -n 1        {n1:8.1f} s")
    print(f"kitl -n 2        {n2:8.1f} s   (-n 1 / -n 2 = {n1 / n2:.2f}; goal >= 1.6)")
    label = f"extrapolated from {len(sample)} cells" if extrapolated else "every cell"
    print(f"boot-per-cell    {naive:8.1f} s   ({label}; mean {naive / len(nodes):.1f} s/cell)")
    print(f"boot-per-cell / kitl -n 1 = {naive / n1:.1f} (goal >= 10)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
