"""Naming the real cause of a failed load (harness.bpf.causes), from what the guest reports:
libbpf's messages, the verifier log, and the guest's description of a map that failed.
The libbpf lines are the ones libbpf 1.1-1.8 print (tools/lib/bpf/libbpf.c); the two
saved real loads come from tests/data/verifier/."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from harness.bpf.causes import explain
from harness.bpf.helper_names import HELPERS, helper_name
from harness.cli import repro
from tests.replies import load_reply

DATA = Path(__file__).parent.parent / "data" / "verifier"


def _saved(kernel: str, stem: str) -> dict[str, Any]:
    """A saved real load as the guest agent reports one."""
    meta = json.loads((DATA / kernel / f"{stem}.json").read_text(encoding="utf-8"))
    log = (DATA / kernel / meta["log_file"]).read_text(encoding="utf-8", errors="replace")
    messages = "".join(line.split(": ", 1)[1] for line in meta["libbpf_messages"])
    return {"ok": False, "errno": meta["errno"], "log": log, "libbpf_messages": messages,
            "program": meta["program"]}  # fmt: skip


def _map_failure(**fields: Any) -> dict[str, Any]:
    failed = {"name": "counts", "type": 1, "type_name": "hash", "key_size": 4,
              "value_size": 8, "max_entries": 0, "pin_path": "", "type_supported": 1}  # fmt: skip
    failed.update(fields)
    return {
        "ok": False,
        "errno": errno.EINVAL,
        "log": "",
        "libbpf_messages": "libbpf: map 'counts': failed to create: Invalid argument(-22)\n",
        "failed_map": failed,
    }


def test_a_map_its_user_space_sizes_is_not_an_unsupported_type() -> None:
    """bcc's libbpf-tools: 43 programs a kernel were UNSUPPORTED_MAP_TYPE for HASH maps."""
    cause = explain(_map_failure())
    assert cause.error_class == "MAP_CREATE_FAILED"
    assert "map 'counts' (hash) is not sized: max_entries 0" in cause.message
    assert "--map counts:max_entries=N" in cause.message
    stack = explain(_map_failure(type=7, type_name="stack_trace", max_entries=1, value_size=0))
    assert (stack.error_class, "is not sized" in stack.message) == ("MAP_CREATE_FAILED", True)


def test_a_type_the_kernel_lacks_is_named_by_the_probe() -> None:
    cause = explain(_map_failure(type=30, type_name="bloom_filter", max_entries=16,
                                 type_supported=0))  # fmt: skip
    assert cause.error_class == "UNSUPPORTED_MAP_TYPE"
    assert cause.message == "map 'counts': this kernel has no bloom_filter maps"


def test_a_map_an_unprivileged_user_may_not_create_is_a_permission_failure() -> None:
    """sk_storage needs BTF, which an unprivileged loader cannot load: EINVAL, not EPERM."""
    load = _map_failure(name="sk_stg", type=24, type_name="sk_storage", max_entries=0)
    load["unprivileged"] = True
    cause = explain(load)
    assert cause.error_class == "PERMISSION"
    assert cause.message.startswith(
        "map 'sk_stg' (sk_storage) cannot be created by an unprivileged loader: failed to create"
    )
    load["unprivileged"] = False
    generic = explain(load)
    assert generic.error_class == "MAP_CREATE_FAILED"
    assert "sk_storage, key 4 B, value 8 B, max_entries 0" in generic.message


def test_pinning_is_named_as_the_cause() -> None:
    """Debian's xdp-filter objects pin maps by name: without a bpffs that fails."""
    load = _map_failure(name="xdp_stats_map", max_entries=5, pin_path="/sys/fs/bpf/xdp_stats_map")
    load["libbpf_messages"] = (
        "libbpf: specified path /sys/fs/bpf/xdp_stats_map is not on BPF FS\n"
        "libbpf: map 'xdp_stats_map': failed to auto-pin at '/sys/fs/bpf/xdp_stats_map': -22\n"
        "libbpf: map 'xdp_stats_map': failed to create: Invalid argument(-22)\n"
    )
    cause = explain(load)
    assert cause.error_class == "PIN_FAILED"
    assert cause.message.startswith(
        "pinning failed: specified path /sys/fs/bpf/xdp_stats_map is not on BPF FS"
    )


@pytest.mark.parametrize("kernel", ["debian-5.10", "debian-7.2", "debian-7.3"])
def test_a_missing_target_is_one_class_naming_the_target(kernel: str) -> None:
    cause = explain(_saved(kernel, "fentry_missing.l5"))
    assert cause.error_class == "ATTACH_TARGET_MISSING"
    assert cause.message.startswith(
        "attach target 'kitl_no_such_function' of fentry_missing: this kernel lacks it"
    )
    assert "--attach-target fentry_missing=FUNCTION" in cause.message


def test_a_target_in_btf_without_an_address_is_the_same_class() -> None:
    """7.3's verifier words for a target in BTF but not in kallsyms (inlined, static)."""
    load = {
        "ok": False,
        "errno": errno.EINVAL,
        "program": "fentry_read",
        "log": "The address of function dummy_file_read cannot be found\n"
        "processed 0 insns (limit 1000000) max_states_per_insn 0 total_states 0\n",
        "libbpf_messages": "libbpf: prog 'fentry_read': BPF program load failed: -22\n",
    }
    cause = explain(load)
    assert cause.error_class == "ATTACH_TARGET_MISSING"
    assert "'dummy_file_read' of fentry_read: this kernel has it in BTF but not its address" in (
        cause.message
    )


def test_an_unknown_helper_id_is_named() -> None:
    """5.10 has no bpf_get_current_task_btf (5.11): the verifier says only unknown#158."""
    cause = explain(_saved("debian-5.10", "core_direct.l5"))
    assert cause.error_class == "UNSUPPORTED_HELPER"
    assert cause.message.endswith(
        "invalid func unknown#158 (bpf_get_current_task_btf, helper 158, which this kernel lacks; "
        "it came after 5.10, by 6.1)"
    )
    assert helper_name(158) == "bpf_get_current_task_btf"
    assert helper_name(0) is None
    assert helper_name(len(HELPERS)) is None
    assert HELPERS[1] == "bpf_map_lookup_elem"
    assert HELPERS[211] == "bpf_cgrp_storage_delete"


def test_without_a_log_the_message_is_libbpfs_own_reason_not_its_wrapper() -> None:
    load = {
        "ok": False,
        "errno": errno.EINVAL,
        "log": "",
        "libbpf_messages": "libbpf: prog 'p': missing BPF prog type, check ELF section name "
        "'foo'\nlibbpf: prog 'p': failed to load: -22\nlibbpf: failed to load object 'x.o'\n",
    }
    cause = explain(load)
    assert cause.error_class == "UNSUPPORTED_PROG_TYPE"
    assert cause.message == "prog 'p': missing BPF prog type, check ELF section name 'foo'"


def test_repro_says_what_failed_not_none_insns() -> None:
    """`kitl repro` of a map-creation failure said "rejected (errno 22\\n) ... None insns,
    None states"."""
    load = load_reply(**_map_failure())
    line = repro._verdict(load, "")
    assert line.startswith("failed, MAP_CREATE_FAILED: map 'counts' (hash) is not sized")
    assert "None" not in line
    log = "R7 !read_ok\nprocessed 12 insns (limit 1000000) max_states_per_insn 0 total_states 3\n"
    rejected = {"ok": False, "errno": errno.EACCES, "log": log, "libbpf_messages": ""}
    assert repro._verdict(load_reply(**rejected), log) == (
        "failed, VERIFIER_REJECTED: R7 !read_ok; 12 insns, 3 states"
    )
    assert repro._verdict(load_reply(ok=True), log) == "loaded; 12 insns, 3 states"
