"""A user's loader for tests/vm/test_user_loader.py, written as a skeleton app behaves:
it opens an object, loads every program of it, says so, stays a moment and exits (its
programs go with it).  With --fail it gives up first, as a loader that finds no device."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository: kitl's binding

from harness.guest.libbpf import Libbpf


def main(argv: list[str]) -> int:
    if "--fail" in argv:
        print("error: no such device: eth9", file=sys.stderr)
        return 1
    lib = Libbpf()
    obj = lib.c.bpf_object__open_file(argv[1].encode(), None)
    if not obj:
        print(f"cannot open {argv[1]}", file=sys.stderr)
        return 2
    try:
        rc = lib.c.bpf_object__load(obj)
        if rc:
            print(f"load failed: {rc}", file=sys.stderr)
            return 3
        print("loaded", flush=True)
        time.sleep(0.5)  # long enough for kitl's 50 ms polls, even under TCG
    finally:
        lib.c.bpf_object__close(obj)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
