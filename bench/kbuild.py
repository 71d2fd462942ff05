"""Build time of the kernels kitl builds (`build:` catalog entries), cold and cached.

    .venv/bin/python bench/kbuild.py [NAME...] [--build]

Cold: a build's own record (kitl-build.json: wall seconds from unpacking to the cached
result, the objects it compiled and the make -j it used).  Variants of one source share a
build tree and ccache, so the first one built compiles the whole base and the next ones
only what their options change.  With --build, entries not built yet are built now, in
the order given (run it on a quiet machine: the figure is the build's wall time).
Cached: `Kernels.get(NAME)` of a built entry, the cost every later run pays (the cache key
hashes the fragments; the kernel's digest is the bzImage's sha256), median of 5.
Prints one line per entry.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from common import stamp, stop_on_sigterm

from harness.kernel import kbuild
from harness.kernel.cache import Cache
from harness.kernel.resolve import Kernels


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="build entries (default: all)")
    parser.add_argument("--build", action="store_true", help="build what is not built yet")
    args = parser.parse_args()
    ks = Kernels.open(Cache.default())
    names = args.names or [e.name for e in ks.catalog.entries if e.build is not None]
    print(stamp())
    print(f"{'kernel':<28} {'build':>9} {'compiled':>9} {'jobs':>5} {'cached get':>11}  release")
    for name in names:
        entry = ks.catalog.get(name)
        if entry.build is None:
            print(f"{name}: not a build entry", file=sys.stderr)
            return 2
        kernel = ks.installed(entry)
        if kernel is None and args.build:
            kernel = ks.get(name)
        if kernel is None:
            print(f"{name:<28} {'not built':>11}")
            continue
        root = kernel.vmlinuz.parents[2]  # <cache>/builds/<name>-<key>/root/boot/vmlinuz-R
        record = json.loads((root / kbuild.MANIFEST).read_text())
        cached = []
        for _ in range(5):
            started = time.perf_counter()
            ks.get(name)
            cached.append(time.perf_counter() - started)
        compiled = record.get("compiled_objects", "?")  # builds before the shared tree: "?"
        print(
            f"{name:<28} {record['build_seconds'] / 60:>8.1f}m {compiled:>9} {record['jobs']:>5} "
            f"{statistics.median(cached) * 1000:>9.0f}ms  {kernel.release}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
