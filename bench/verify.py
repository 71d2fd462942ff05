"""kitl verify's throughput against a bare bpftool loop over the same programs.

N objects of one small XDP program each (bpftool loads every program of an object, so one
per object makes the loop comparable).  kitl's marginal cost per program is
(T(N objects) - T(1 object)) / (N - 1), both whole `kitl verify` runs on the same kernel,
so boot, compile and start-up cancel out.  The baseline is one `kitl exec` that times, in
the guest, `bpftool prog load OBJ PIN` + `rm PIN` for every object.  Goal: kitl's programs/s
at least 0.67x bpftool's (at most 1.5x the time per program).  Not a test.

    .venv/bin/python bench/verify.py [--kernel debian-6.1] [-n 60]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import stamp, stop_on_sigterm

from harness.compile import compile_object, kernel_btf, vmlinux_h
from harness.resolve import Kernels

ROOT = Path(__file__).resolve().parents[1]
SOURCE = """#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
SEC("xdp")
int prog_{i}(struct xdp_md *ctx)
{{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_ABORTED;
	return eth->h_proto == bpf_htons({i}) ? XDP_DROP : XDP_PASS;
}}
char LICENSE[] SEC("license") = "GPL";
"""


def _kitl(*argv: str) -> tuple[float, str]:
    started = time.monotonic()
    argv_ = [sys.executable, "-m", "harness.cli", *argv]
    proc = subprocess.run(argv_, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"kitl {' '.join(argv)} failed ({proc.returncode})")
    return seconds, proc.stdout + proc.stderr


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="debian-6.1")
    parser.add_argument("-n", type=int, default=60)
    args = parser.parse_args()
    ks = Kernels.open()
    header = vmlinux_h(kernel_btf(ks.get(args.kernel)), ks.store.cache)
    with tempfile.TemporaryDirectory(prefix="kitl-bench-verify-") as tmp:
        src, many, one = Path(tmp, "src"), Path(tmp, "many"), Path(tmp, "one")
        for d in (src, many, one):
            d.mkdir()
        for i in range(args.n):
            c = src / f"p{i:04d}.bpf.c"
            c.write_text(SOURCE.format(i=1000 + i))
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
