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

from common import stamp, stop_on_sigterm
from veristat_build import veristat_for

from harness.kernel.resolve import Kernels
from harness.results import veristat as veristat_csv
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


def _veristat_in_guest(veristat: Path, kernel: str, objects: list[Path]) -> tuple[float, str]:
    """veristat -o csv on the objects in a guest: (its in-guest seconds, its CSV)."""
    script = (
        "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf; s=$(date +%s.%N); "
        f'{veristat} -o csv "$@" > /tmp/v.csv 2>/dev/null; e=$(date +%s.%N); '
        "echo CSV-BEGIN; cat /tmp/v.csv; echo CSV-END; echo TIMED $s $e"
    )
    _, out = _kitl("exec", kernel, "--", "sh", "-c", script, "veristat", *map(str, objects))
    timed = re.search(r"TIMED (\S+) (\S+)", out)
    csv_text = re.search(r"CSV-BEGIN\n(.*?)CSV-END", out, re.S)
    if not timed or not csv_text:
        raise SystemExit("no veristat output from the guest:\n" + out[-2000:])
    return float(timed.group(2)) - float(timed.group(1)), csv_text.group(1)


def _against_veristat(which: str, n: int, kernel: str) -> int:
    veristat = veristat_for(Kernels.open())
    with tempfile.TemporaryDirectory(prefix="kitl-bench-veristat-") as tmp:
        objects = _objects(which, n, kernel, Path(tmp))
        v_seconds, v_csv = _veristat_in_guest(veristat, kernel, objects)
        run = Path(tmp, "run")
        argv = [sys.executable, "-m", "harness.cli.main", "verify", *map(str, objects)]
        argv += ["--kernels", kernel, "--output", str(run)]
        started = time.monotonic()
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=False)
        wall = time.monotonic() - started
        cells = load_run(run).cells
    rows = {(r["file_name"], r["prog_name"]): r for r in csv.DictReader(io.StringIO(v_csv))}
    k_seconds = sum(c.timings.case_s or 0 for c in cells)
    ratios, agree = [], 0
    for cell in cells:
        row = veristat_csv.row_of(cell)
        theirs = rows.get((row.file_name, row.prog_name)) if row else None
        if row is None or theirs is None:
            continue
        agree += (theirs["verdict"] == "success") == row.success
        ours, base = cell.verifier.duration_us, int(theirs["duration"])
        if ours and base:
            ratios.append(ours / base)
    print(stamp())
    print(f"kernel {kernel}, {which}: {len(objects)} objects")
    print(f"veristat {len(rows)} programs in {v_seconds:.2f} s ({len(rows) / v_seconds:.1f}/s)")
    print(
        f"kitl     {len(cells)} programs in {k_seconds:.2f} s of cells "
        f"({len(cells) / k_seconds:.1f}/s; whole run {wall:.1f} s with its boot)"
    )
    per_program = (k_seconds / len(cells)) / (v_seconds / len(rows))
    print(f"time per program, kitl / veristat = {per_program:.2f} (goal <= 1.1)")
    median = statistics.median(ratios)
    print(f"verification time, kitl / veristat: median {median:.2f} over {len(ratios)} programs")
    print(f"verdicts: {agree} of {len(rows)} agree")
    return 0


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="debian-6.1")
    parser.add_argument("-n", type=int, default=60)
    parser.add_argument("--matrix", type=int, default=0, metavar="PROGRAMS")
    parser.add_argument("--veristat", metavar="SET", help="xdp-tools, one-program or a DIR")
    parser.add_argument("--kernels", default="debian-6.1,debian-7.2", help="for --matrix")
    args = parser.parse_args()
    if args.matrix:
        return _matrix(args.matrix, args.kernels)
    if args.veristat:
        return _against_veristat(args.veristat, args.n, args.kernel)
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
