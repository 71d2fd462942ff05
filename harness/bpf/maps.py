"""Map types and the sizes a real loader's user space fills in before the load (pure).

Tools such as bcc's libbpf-tools leave `max_entries` or a stack-trace map's `value_size` at 0
in the object and set them at run time; veristat gives such maps a size so that the
program can be verified.  The guest's fixups (harness.guest.libbpf_prepare) and the failure
class of a map that was not sized (harness.bpf.verifier_log) share this rule.
"""

from __future__ import annotations

# enum bpf_map_type values (uapi/linux/bpf.h)
PERF_EVENT_ARRAY, STACK_TRACE, RINGBUF, USER_RINGBUF = 4, 7, 27, 31
# max_entries 0 is valid for these: storage maps, whose size is not an entry count
# (cgroup/percpu_cgroup/sk/inode/task/cgrp; veristat skips them), and perf event arrays,
# which libbpf sizes to the CPUs itself
UNCOUNTED_MAP_TYPES = frozenset({PERF_EVENT_ARRAY, 19, 21, 24, 28, 29, 32})
PERF_MAX_STACK = 127  # the kernel's default kernel.perf_event_max_stack


def lacks_entries(kind: int, max_entries: int) -> bool:
    """A map its loader's user space gives its size at run time (max_entries still 0)."""
    return kind not in UNCOUNTED_MAP_TYPES and max_entries == 0


def lacks_value_size(kind: int, value_size: int) -> bool:
    """A stack-trace map whose frame count user space sets (value_size still 0)."""
    return kind == STACK_TRACE and value_size == 0


# Maps whose max_entries the verifier never reads (hashes, LRU, sockhash, devmap_hash,
# queue, stack, bloom filter, stack trace): veristat creates them with one entry, since
# a preallocated hash of thousands of entries costs more to create than most programs
# take to verify.  Arrays keep their size (the verifier bounds constant indexes by it).
SIZE_UNREAD_MAP_TYPES = frozenset({1, 5, 9, 10, 18, 25, 22, 23, 30, STACK_TRACE})
