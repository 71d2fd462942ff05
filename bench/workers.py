"""Parallel by default (issue 16): the bundled matrix, `kitl run` as it is run by default
(-n auto: as many guests as the cores and memory hold, at most one per kernel) against
`kitl run -n 1`, in one run.  Not a test.

The kernels are fetched first (`kitl kernels fetch`), so neither run pays a download; the
default run goes first, so a page cache warmed by it can only favour -n 1.  It prints both
wall times, their ratio and the worker count the default chose (its --verbose line).

    .venv/bin/python bench/workers.py [--kernels A,B,...] [SCENARIO_DIR...]

Without --kernels: each bundled scenario's kernels, else the catalog's default set (the
five default kernels).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import stamp, stop_on_sigterm, timed

ROOT = Path(__file__).resolve().parents[1]
KITL = [sys.executable, "-m", "harness.cli.main"]


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=[str(ROOT / "scenarios")])
    parser.add_argument("--kernels", default="", help="default: the scenarios' own kernels")
    args = parser.parse_args()
    kernels = ["--kernels", args.kernels] if args.kernels else []
    fetch = [n for n in args.kernels.split(",") if n]
    subprocess.run([*KITL, "kernels", "fetch", *fetch], cwd=ROOT, check=True)
    base = ["run", *args.paths, *kernels]
    with tempfile.TemporaryDirectory(prefix="kitl-bench-workers-") as tmp:
        out = Path(tmp)
        auto, said = timed([*KITL, "--verbose", *base, "--output", str(out / "auto")])
        one, _ = timed([*KITL, *base, "-n", "1", "--output", str(out / "n1")])
        body = json.loads((out / "n1" / "results.json").read_text())
    cells = body["cells"]
    chosen = re.search(r"workers: (\d+ \(.*\))", said)
    print(stamp())
    names = sorted({c["kernel"] for c in cells})
    print(f"cells {len(cells)} on {len(names)} kernels: {', '.join(names)}")
    print(f"default: workers {chosen.group(1) if chosen else '?'}")
    print(f"kitl run (default)  {auto:8.1f} s")
    print(f"kitl run -n 1       {one:8.1f} s   (-n 1 / default = {one / auto:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
