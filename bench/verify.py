"""kitl verify's throughput against a bare bpftool loop over the same programs.

N objects of one small XDP program each (bpftool loads every program of an object, so one
per object makes the loop comparable).  kitl's marginal cost per program is
(T(N objects) - T(1 object)) / (N - 1), both whole `kitl verify` runs on the same kernel,
so boot, compile and start-up cancel out.  The baseline is one `kitl exec` that times, in
the guest, `bpftool prog load OBJ PIN` + `rm PIN` for every object.  Goal: kitl's programs/s
at least 0.67x bpftool's (at most 1.5x the time per program).  Not a test.

    .venv/bin/python bench/verify.py [--kernel debian-6.1] [-n 60]

With --veristat SET it measures issue 21's goal instead: veristat (built from the default
loader's Debian linux-source, cached: bench/veristat_build.py) and `kitl verify` on the same
objects and kernel, each in a guest of its own (same kernel, same machine, one after the
other); in-guest time (veristat: its process, timed in the guest; kitl: the sum of its
cells, each a load, release and leak check with the host round trips), programs/s, their
ratio (goal <= 1.1), the median ratio of the kernel's verification times per program
(goal: 1.0) and whether the verdicts agree.  SET: xdp-tools (Debian's xdp-tools and libxdp
objects), one-program (-n generated one-program XDP objects) or a directory of objects
(the kernel selftests' progs: tools/selftests_corpus.py DIR).

    .venv/bin/python bench/verify.py --veristat xdp-tools [--kernel debian-6.1]

With --matrix P it measures the second goal instead: P programs (5 per object) verified on
two kernels with -n 2, whose wall time must be within 1.25x of (the two boots + every
cell's engine time) / 2 workers.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import stamp, stop_on_sigterm
from veristat_build import veristat_for

from harness.kernel.libbpf_build import default_loader, libbpf_for
from harness.kernel.resolve import Kernels
from harness.results.runs import load_run
from harness.run.compile import compile_object, kernel_btf, vmlinux_h

ROOT = Path(__file__).resolve().parents[1]
HEADER = """#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
"""
PROGRAM = """SEC("xdp")
int prog_{i}(struct xdp_md *ctx)
{{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_ABORTED;
	return eth->h_proto == bpf_htons({i}) ? XDP_DROP : XDP_PASS;
}}
"""
LICENSE = 'char LICENSE[] SEC("license") = "GPL";\n'


def source(*numbers: int) -> str:
    return HEADER + "".join(PROGRAM.format(i=i) for i in numbers) + LICENSE


def _kitl(*argv: str) -> tuple[float, str]:
    started = time.monotonic()
    argv_ = [sys.executable, "-m", "harness.cli.main", *argv]
    proc = subprocess.run(argv_, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"kitl {' '.join(argv)} failed ({proc.returncode})")
    return seconds, proc.stdout + proc.stderr


def _matrix(programs: int, kernels: str) -> int:
    ks = Kernels.open()
    names = kernels.split(",")
    header = vmlinux_h(kernel_btf(ks.get(names[0])), ks.store.cache)
    with tempfile.TemporaryDirectory(prefix="kitl-bench-verify-matrix-") as tmp:
        objects = Path(tmp, "objects")
        objects.mkdir()
        for o in range(max(1, programs // 5)):
            c = Path(tmp, f"o{o:04d}.bpf.c")
            c.write_text(source(*(10000 + o * 5 + k for k in range(5))))
            shutil.copy(compile_object(c, header, ks.store.cache), objects / f"o{o:04d}.bpf.o")
        run = Path(tmp, "run")
        wall, out = _kitl(
            "verify", str(objects), "--kernels", kernels, "-n", "2", "--output", str(run)
        )
        cells = json.loads((run / "results.json").read_text())["cells"]
    boots = [float(b) for b in re.findall(r"up in ([0-9.]+)s", out)]
    loads = sum(c["timings"]["case_s"] for c in cells)
    ideal = (sum(boots) + loads) / 2
    print(stamp())
    print(f"{len(cells)} cells ({programs} programs x {len(names)} kernels), -n 2")
    print(
        f"wall {wall:.1f} s; boots {' + '.join(f'{b:.1f}' for b in boots)} s; cells {loads:.1f} s"
    )
    print(f"wall / ((boots + cells) / 2) = {wall / ideal:.2f} (goal <= 1.25)")
    return 0


def _objects(which: str, n: int, kernel: str, tmp: Path) -> list[Path]:
    if which == "xdp-tools":
        return sorted(Path("/usr/lib/x86_64-linux-gnu/bpf").glob("*.o"))
    if which == "one-program":
        ks = Kernels.open()
        header = vmlinux_h(kernel_btf(ks.get(kernel)), ks.store.cache)
        out = []
        for i in range(n):
            c = tmp / f"p{i:04d}.bpf.c"
            c.write_text(source(1000 + i))
            out.append(tmp / f"p{i:04d}.bpf.o")
            shutil.copy(compile_object(c, header, ks.store.cache), out[-1])
        return out
    return sorted(Path(which).glob("*.o"))


def _same_guest(kernel: str, objects: list[Path], rounds: int) -> dict[str, Any]:
    """bench/veristat_guest.py in one guest: veristat and kitl's agent, in turns."""
    library = libbpf_for(default_loader(Kernels.open().catalog), Kernels.open()).path
    veristat = veristat_for(Kernels.open())
    driver = Path(__file__).with_name("veristat_guest.py")
    argv = [sys.executable, str(driver), str(library), str(veristat), str(rounds)]
    _, out = _kitl("exec", kernel, "--timeout", "3000", "--", *argv, *map(str, objects))
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            found: dict[str, Any] = json.loads(line)
            return found
    raise SystemExit("no report from the guest:\n" + out[-2000:])


def _whole_run(kernel: str, objects: list[Path], tmp: str) -> tuple[float, float, int]:
    """kitl verify itself, on its own boot: (wall, the sum of its cells, cells)."""
    run = Path(tmp, "run")
    argv = [sys.executable, "-m", "harness.cli.main", "verify", *map(str, objects)]
    argv += ["--kernels", kernel, "--output", str(run)]
    started = time.monotonic()
    subprocess.run(argv, cwd=ROOT, capture_output=True, check=False)
    cells = load_run(run).cells
    return time.monotonic() - started, sum(c.timings.case_s or 0 for c in cells), len(cells)


def _against_veristat(which: str, n: int, kernel: str, rounds: int) -> int:
    with tempfile.TemporaryDirectory(prefix="kitl-bench-veristat-") as tmp:
        objects = _objects(which, n, kernel, Path(tmp))
        found = _same_guest(kernel, objects, rounds)
        wall, cell_sum, cells = _whole_run(kernel, objects, tmp)
    rows = list(csv.DictReader(io.StringIO(found["csv"])))
    v_best, k_best = min(found["times"]["veristat"]), min(found["times"]["kitl"])
    s_best = min(found["times"].get("kitl-stats") or [float("nan")])
    ratios, agree, differ = [], 0, []
    for row in rows:
        name = f"{row['file_name']}/{row['prog_name']}"
        ok, ours = found["kitl"].get(name, [None, None])
        agree += ok == (row["verdict"] == "success")
        if ok != (row["verdict"] == "success"):
            differ.append(f"{name} (veristat {row['verdict']}, kitl {ok})")
        if ours and int(row["duration"]):
            ratios.append(ours / int(row["duration"]))
    count = found["programs"]
    print(stamp())
    print(f"kernel {kernel}, {which}: {len(objects)} objects, {count} programs, one guest")
    per_round = zip(*found["times"].values(), strict=True)
    rounds_text = ", ".join("/".join(f"{t:.2f}" for t in r) for r in per_round)
    print(f"{'/'.join(found['times'])} seconds per round: {rounds_text}")
    print(f"veristat {count / v_best:6.1f} programs/s (best round, {v_best:.2f} s)")
    print(f"kitl     {count / k_best:6.1f} programs/s (best round, {k_best:.2f} s)")
    print(f"in-guest time per program, kitl / veristat = {k_best / v_best:.2f} (goal <= 1.1)")
    print(
        f"kitl at statistics only (no full log of failures, as veristat): {count / s_best:.1f} "
        f"programs/s ({s_best:.2f} s), / veristat = {s_best / v_best:.2f}"
    )
    median = statistics.median(ratios)
    print(f"verification time, kitl / veristat: median {median:.2f} over {len(ratios)} programs")
    print(f"verdicts: {agree} of {len(rows)} agree" + (": not " if differ else ""))
    for line in differ:
        print(f"  {line}")
    print(
        f"kitl verify on its own boot: {cells} cells, {cell_sum:.2f} s of cells "
        f"({cell_sum / cells * 1000:.0f} ms each with the host round trips), {wall:.1f} s wall"
    )
    return 0


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="debian-6.1")
    parser.add_argument("-n", type=int, default=60)
    parser.add_argument("--matrix", type=int, default=0, metavar="PROGRAMS")
    parser.add_argument("--veristat", metavar="SET", help="xdp-tools, one-program or a DIR")
    parser.add_argument("--rounds", type=int, default=3, help="for --veristat")
    parser.add_argument("--kernels", default="debian-6.1,debian-7.2", help="for --matrix")
    args = parser.parse_args()
    if args.matrix:
        return _matrix(args.matrix, args.kernels)
    if args.veristat:
        return _against_veristat(args.veristat, args.n, args.kernel, args.rounds)
    ks = Kernels.open()
    header = vmlinux_h(kernel_btf(ks.get(args.kernel)), ks.store.cache)
    with tempfile.TemporaryDirectory(prefix="kitl-bench-verify-") as tmp:
        src, many, one = Path(tmp, "src"), Path(tmp, "many"), Path(tmp, "one")
        for d in (src, many, one):
            d.mkdir()
        for i in range(args.n):
            c = src / f"p{i:04d}.bpf.c"
            c.write_text(source(1000 + i))
            shutil.copy(compile_object(c, header, ks.store.cache), many / f"p{i:04d}.bpf.o")
        shutil.copy(many / "p0000.bpf.o", one / "p0000.bpf.o")
        t_one, _ = _kitl("verify", str(one), "--kernel", args.kernel, "--output", f"{tmp}/r1")
        t_many, _ = _kitl("verify", str(many), "--kernel", args.kernel, "--output", f"{tmp}/rn")
        # the guest sees the host's root read-only, so it reads the objects where they are
        loop = (
            "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf; "
            "s=$(date +%s.%N); "
            f"for o in {many}/*.o; do bpftool prog load $o /sys/fs/bpf/p || exit 1; "
            "rm /sys/fs/bpf/p; done; e=$(date +%s.%N); echo LOOP $s $e"
        )
        _, out = _kitl("exec", args.kernel, "--", "sh", "-c", loop)
    m = re.search(r"LOOP (\S+) (\S+)", out)
    if not m:
        raise SystemExit("no timing from the guest loop:\n" + out[-2000:])
    bpftool_each = (float(m.group(2)) - float(m.group(1))) / args.n
    kitl_each = (t_many - t_one) / (args.n - 1)
    print(stamp())
    print(f"kernel {args.kernel}, {args.n} programs (one per object)")
    print(f"kitl verify: 1 object {t_one:.1f} s, {args.n} objects {t_many:.1f} s")
    print(f"kitl    per program {kitl_each * 1000:8.1f} ms  ({1 / kitl_each:6.1f} programs/s)")
    print(
        f"bpftool per program {bpftool_each * 1000:8.1f} ms  ({1 / bpftool_each:6.1f} programs/s)"
    )
    print(f"kitl / bpftool time per program = {kitl_each / bpftool_each:.2f} (goal <= 1.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
