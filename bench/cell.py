"""Marginal cost of one kitl cell in a warm VM against `bpftool prog load` of the same object.

One VM, one guest agent.  A "cell" is what the engine does per case: load one program on
its own (log level 1|4), run it with BPF_PROG_TEST_RUN, read its map, release it.  The
baseline is a shell loop in the same guest running `bpftool prog load OBJ PIN type xdp`
and removing the pin.  Goal: kitl's per-cell time <= 1.5x bpftool's.  Not a test.

    .venv/bin/python bench/cell.py [--kernel debian-6.1] [-n 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import stop_on_sigterm

from harness.bpf import packet
from harness.kernel.resolve import Kernels
from harness.run.compile import compile_object, kernel_btf, vmlinux_h
from harness.vm import accel
from harness.vm.agentclient import AgentClient
from harness.vm.machine import VM

# One program (bpftool loads every program of an object), with a map as cells have.
SOURCE = """#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");
SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *value = bpf_map_lookup_elem(&counts, &key);
	if (value)
		__sync_fetch_and_add(value, 1);
	return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="debian-6.1")
    parser.add_argument("-n", type=int, default=20)
    args = parser.parse_args()
    ks = Kernels.open()
    kernel = ks.get(args.kernel)
    cache = ks.store.cache
    source = cache.root / "bench" / "xdp_pass.bpf.c"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(SOURCE)
    obj = compile_object(source, vmlinux_h(kernel_btf(kernel), cache), cache)
    decision = accel.decide("auto", cache, None)
    frame = packet.build({"ipv4": {}, "tcp": {}}).hex()
    with (
        tempfile.TemporaryDirectory() as tmp,
        VM(kernel, accel=decision.accel, console_path=Path(tmp) / "console.log") as vm,
        AgentClient(vm) as agent,
    ):
        remote = "/run/kitl-bench.o"
        vm.channel.put(obj.read_bytes(), remote)
        agent.call("load", {"object": remote, "program": "xdp_pass"})  # warm caches
        agent.call("release")
        ours = []
        for _ in range(args.n):
            started = time.monotonic()
            loaded = agent.call("load", {"object": remote, "program": "xdp_pass"})
            agent.call(
                "test_run",
                {"handle": loaded["handle"], "program": "xdp_pass", "data_hex": frame, "repeat": 1},
            )
            agent.call("map_dump", {"handle": loaded["handle"]})
            agent.call("release")
            ours.append(time.monotonic() - started)
        script = (
            "mount -t bpf bpf /sys/fs/bpf 2>/dev/null; "
            f"bpftool prog load {remote} /sys/fs/bpf/warm type xdp; rm -f /sys/fs/bpf/warm; "
            f"s=$(date +%s%N); for i in $(seq {args.n}); do "
            f"bpftool prog load {remote} /sys/fs/bpf/b$i type xdp || exit 1; rm /sys/fs/bpf/b$i; "
            "done; e=$(date +%s%N); echo $(( (e - s) / 1000 ))"
        )
        result = vm.run(["sh", "-c", script], timeout=1200)
        if not result.ok:
            print(result.stderr, file=sys.stderr)
            return 1
        bpftool = int(result.stdout.strip().splitlines()[-1]) / 1e6 / args.n
    ours_median = statistics.median(ours)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {os.cpu_count()} cpus, "
        f"{kernel.name}, accel {decision.accel}, n={args.n}"
    )
    print(
        f"kitl cell (load+test_run+map+release) median {ours_median * 1000:.0f} ms "
        f"(min {min(ours) * 1000:.0f}, max {max(ours) * 1000:.0f})"
    )
    print(f"bpftool prog load (+rm pin), mean      {bpftool * 1000:.0f} ms")
    print(f"ratio kitl / bpftool                   {ours_median / bpftool:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
