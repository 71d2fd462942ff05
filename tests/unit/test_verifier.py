"""Verifier-log parsing and failure classification against real logs (tests/data/verifier/).

Each ``<kernel>/<case>.json`` records what one load did on a real Debian kernel under kitl
(errno, log level, libbpf's messages, the BPF C source) next to the kernel's log, kept byte
for byte (very long logs keep their last 64 KiB).  Its ``expected`` member snapshots the
parser's output; ``KITL_REGEN=1`` rewrites it.  The hand-written tables below are the
independent check: they say what each program should be classified as on each kernel.
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from harness.bpf.verifier_log import (
    VerifierLog,
    VerifierStats,
    classify_failure,
    log_from_libbpf_messages,
    parse_log,
)

DATA = Path(__file__).parent.parent / "data" / "verifier"
KERNELS = ("debian-5.10", "debian-6.1", "debian-6.12", "debian-7.2", "debian-7.3")
CASES = sorted(DATA.glob("*/*.json"))
REGEN = os.environ.get("KITL_REGEN") == "1"

OK = "OK"
# What each case must come out as, by kernel ("*" for the rest).  Keyed by file stem first
# (for cases whose verdict depends on the log level), then by program.
EXPECTED_CLASS: dict[str, str | dict[str, str]] = {
    "accept_xdp": OK,
    "accept_subprog": OK,
    "reuseport_migrate": OK,
    "pkt_oob": "VERIFIER_REJECTED",
    "loop_infinite": "VERIFIER_REJECTED",
    "uninit_reg": "VERIFIER_REJECTED",
    # privileged programs may read uninitialised stack since 5.1x
    "uninit_stack": {"debian-5.10": "VERIFIER_REJECTED", "*": OK},
    # bpf_loop (5.17): 5.10 does not know a callback is a subprog, so BTF func_info mismatches
    "bpf_loop": {"debian-5.10": "VERIFIER_REJECTED", "*": OK},
    # the same helper without a callback: unknown on 5.10, a bad argument after 5.17
    "helper_unknown": {"debian-5.10": "UNSUPPORTED_HELPER", "*": "VERIFIER_REJECTED"},
    "helper_wrong_type": "UNSUPPORTED_HELPER",
    "core_missing": "CORE_RELOCATION_FAILED",
    # bpf_get_current_task_btf (5.11) fails before the poisoned insn on 5.10
    "core_direct": {"debian-5.10": "UNSUPPORTED_HELPER", "*": "CORE_RELOCATION_FAILED"},
    "core_poison_raw": "CORE_RELOCATION_FAILED",
    "map_bloom": {"debian-5.10": "UNSUPPORTED_MAP_TYPE", "*": OK},
    "map_unknown": "UNSUPPORTED_MAP_TYPE",
    "bad_section": "UNSUPPORTED_PROG_TYPE",
    "fentry_missing": "ATTACH_TARGET_MISSING",  # its target is in no kernel
    # EINVAL before the verifier with an empty log: nothing tells an unknown program type
    # (SYSCALL, 5.14) or prog flag (XDP frags, 5.18) apart, so these stay LOAD_FAILED.
    "prog_syscall": {"debian-5.10": "LOAD_FAILED", "*": OK},
    "xdp_frags": {"debian-5.10": "LOAD_FAILED", "*": OK},
    "trunc_small": "LOG_TRUNCATED",
    # kernels <= 6.3 refuse a log buffer under 128 bytes with EINVAL
    "trunc_tiny": {"debian-5.10": "LOAD_FAILED", "debian-6.1": "LOAD_FAILED", "*": "LOG_TRUNCATED"},
    "too_large.l4": "VERIFIER_REJECTED",
    "too_large.l5": "LOG_TRUNCATED",  # 1M insns at level 1 overflow the log
    "loop_volatile.l4": "VERIFIER_REJECTED",
    "loop_volatile.l5": "LOG_TRUNCATED",
    "perm_denied": "PERMISSION",
    "nobtf_core_missing": "MISSING_BTF",
    "nobtf_core_direct": "MISSING_BTF",
    "nobtf_fentry_missing": "MISSING_BTF",
    "nobtf_accept_xdp": OK,
}

# The verifier's complaint, any one of these (wording drifts between kernels).
ERROR_TEXT: dict[str, tuple[str, ...]] = {
    "pkt_oob": ("invalid access to packet, off=40 size=1",),
    "loop_infinite": ("infinite loop detected at insn 3",),
    "uninit_reg": ("R7 !read_ok",),
    "uninit_stack": ("invalid read from stack R10 off=-16 size=8",),
    "bpf_loop": ("number of funcs in func_info doesn't match number of subprogs",),
    "helper_unknown": ("invalid func unknown#181", "R2 type=scalar expected=func"),
    "helper_wrong_type": (
        "unknown func bpf_skb_pull_data#39",
        "program of this type cannot use helper bpf_skb_pull_data#39",
    ),
    "core_missing": ("failed to resolve CO-RE relocation", "invalid func unknown#195896080"),
    "core_direct": (
        "failed to resolve CO-RE relocation",
        "invalid func unknown#195896080",
        "invalid func unknown#158",
    ),
    "core_poison_raw": ("invalid func unknown#195896080",),
    "too_large": ("BPF program is too large. Processed 1000001 insn",),
    "loop_volatile": ("BPF program is too large. Processed 1000001 insn",),
}


def _case_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def _load(path: Path) -> tuple[dict[str, Any], str]:
    meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    raw = (path.parent / meta["log_file"]).read_bytes()
    return meta, raw.decode(errors="replace")


def _parse(meta: dict[str, Any], text: str) -> VerifierLog | None:
    if meta["log_level"] == 0:
        return None  # no buffer of our own: libbpf printed its retry's log as messages
    return parse_log(text, truncated=meta["errno"] == errno.ENOSPC)


def _classify(meta: dict[str, Any], log: VerifierLog | None) -> str:
    if meta["load_ok"]:
        return OK
    return classify_failure(log, meta["errno"], "".join(meta["libbpf_messages"]))


def _expected_class(path: Path) -> str:
    kernel, stem = path.parent.name, path.stem
    entry = EXPECTED_CLASS.get(stem) or EXPECTED_CLASS[stem.split(".")[0]]
    if isinstance(entry, str):
        return entry
    return entry.get(kernel, entry["*"])


def _snapshot(log: VerifierLog | None, cls: str) -> dict[str, Any]:
    if log is None:
        return {"class": cls, "log": None}
    stats = asdict(log.stats)
    stats["stack_depth"] = list(log.stats.stack_depth)
    return {
        "class": cls,
        "truncated": log.truncated,
        "error": log.error,
        "error_insn": log.error_insn,
        "core_failure": log.core_failure,
        "diagnosis": log.diagnosis,
        "stats": stats,
    }


def test_golden_logs_cover_every_kernel() -> None:
    kernels = {p.parent.name for p in CASES}
    assert kernels == set(KERNELS)
    for kernel in KERNELS:
        stems = {p.stem for p in CASES if p.parent.name == kernel}
        for must in ("accept_xdp.l5", "accept_xdp.l2", "pkt_oob.l5", "core_missing.l5"):
            assert must in stems, f"{kernel}: {must}"


@pytest.mark.parametrize("path", CASES, ids=_case_id)
def test_golden_classification(path: Path) -> None:
    meta, text = _load(path)
    assert _classify(meta, _parse(meta, text)) == _expected_class(path)


@pytest.mark.parametrize("path", CASES, ids=_case_id)
def test_golden_stats(path: Path) -> None:
    meta, text = _load(path)
    log = _parse(meta, text)
    if log is None:
        return
    stats = log.stats
    processed = re.findall(r"^processed (\d+) insns", text, re.MULTILINE)
    if processed:
        assert stats.insns == int(processed[-1])
        assert stats.insn_limit == 1_000_000
        assert stats.total_states is not None
        assert stats.peak_states is not None
        assert stats.mark_read is not None
    else:
        assert stats == VerifierStats()
    if "verified_insns" in meta:  # 5.16+: the kernel's own count, independent of the log
        assert stats.insns == meta["verified_insns"]
    complete = processed and meta["errno"] != errno.ENOSPC
    if complete and meta["log_level"] & 4:
        assert stats.duration_us is not None
        assert stats.stack_depth, "every subprog has a depth"
        assert stats.stack_depth_total == sum(stats.stack_depth)
    if not meta["log_level"] & 4:
        assert stats.duration_us is None
        assert stats.stack_depth_total is None


@pytest.mark.parametrize("path", CASES, ids=_case_id)
def test_golden_error(path: Path) -> None:
    meta, text = _load(path)
    log = _parse(meta, text)
    if log is None:
        return
    program = path.stem.split(".")[0]
    if meta["load_ok"] or meta["errno"] == errno.ENOSPC or program not in ERROR_TEXT:
        if meta["load_ok"]:
            assert log.error is None, "an accepted program has no complaint"
        return
    assert log.error is not None
    assert any(want in log.error for want in ERROR_TEXT[program]), log.error
    assert log.error in text
    # the complaint is the verifier's message, never a register dump or an insn
    assert not re.match(r"^(\d+:|;|\s|R\d+=)", log.error)
    if log.error_insn is not None:
        assert re.search(rf"^{log.error_insn}: |insn {log.error_insn}\b", text, re.MULTILINE)
    excerpt = log.excerpt(8).splitlines()
    assert len(excerpt) <= 8
    assert log.error.splitlines()[-1] in excerpt
    if log.diagnosis:  # 7.3's headline closes the excerpt
        assert excerpt[-1] == f"Verification failed: {log.diagnosis}"


@pytest.mark.parametrize("path", CASES, ids=_case_id)
def test_golden_core_failure_forms(path: Path) -> None:
    meta, text = _load(path)
    log = _parse(meta, text)
    if log is None:
        embedded = log_from_libbpf_messages("".join(meta["libbpf_messages"]))
        log = parse_log(embedded) if embedded is not None else None
    if log is None:
        return
    if "failed to resolve CO-RE relocation" in text or (
        log.text and "failed to resolve CO-RE relocation" in log.text
    ):
        # libbpf's rewrite (levels 1 and 2): it names the relocation
        assert log.core_failure is not None
        assert log.core_failure.startswith("failed to resolve CO-RE relocation <byte_off> [")
        assert "task_struct___x.nope" in log.core_failure
    elif "unknown#195896080" in log.text:
        # the raw poisoned call: a level-4 log (no insn line to rewrite) or a raw load
        assert log.core_failure is not None
        assert "unknown#195896080" in log.core_failure
    else:
        assert log.core_failure is None


@pytest.mark.parametrize("path", CASES, ids=_case_id)
def test_golden_snapshot(path: Path) -> None:
    meta, text = _load(path)
    log = _parse(meta, text)
    got = _snapshot(log, _classify(meta, log))
    if REGEN:
        meta["expected"] = got
        path.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return
    assert "expected" in meta, "run with KITL_REGEN=1 to record the parser's output"
    assert got == meta["expected"]


# Synthetic logs, for formats no kernel kitl boots can produce.


def test_pre_5_2_processed_line_carries_the_stack_depth() -> None:
    log = parse_log("R0 !read_ok\nprocessed 35 insns (limit 131072), stack depth 0+16\n")
    assert log.stats == VerifierStats(insns=35, insn_limit=131072, stack_depth=(0, 16))
    assert log.stats.stack_depth_total == 16
    assert log.stats.total_states is None
    assert log.error == "R0 !read_ok"


def test_oldest_processed_line_has_no_limit() -> None:
    log = parse_log("processed 12 insns, stack depth 8\n")
    assert log.stats.insns == 12
    assert log.stats.insn_limit is None
    assert log.stats.stack_depth == (8,)


def test_trailing_stats_fields_are_optional() -> None:
    # a future kernel may drop mark_read (liveness rework); the rest must still parse
    log = parse_log(
        "stack depth 8\n"
        "processed 7 insns (limit 1000000) max_states_per_insn 1 total_states 2 peak_states 3\n"
    )
    assert log.stats.insns == 7
    assert log.stats.max_states_per_insn == 1
    assert log.stats.total_states == 2
    assert log.stats.peak_states == 3
    assert log.stats.mark_read is None
    assert log.stats.duration_us is None
    assert log.stats.stack_depth == (8,)


def test_unknown_stats_fields_are_ignored() -> None:
    log = parse_log(
        "processed 7 insns (limit 1000000) max_states_per_insn 0 total_states 1 "
        "peak_states 1 mark_read 0 new_counter 5\n"
    )
    assert log.stats.mark_read == 0
    assert log.stats.insns == 7


def test_stats_scan_takes_the_last_block() -> None:
    first = "processed 3 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0"
    log = parse_log(f"{first} mark_read 0\nx\nprocessed 9 insns (limit 1000000)\n")
    assert log.stats.insns == 9


def test_rotated_log_keeps_the_tail_and_skips_the_partial_first_line() -> None:
    # 6.4+ rotation: the head is gone, the first line starts mid-way
    text = (
        "e) R10=fp0 fp-8=0?000???\n"
        "6: (71) r1 = *(u8 *)(r1 +40)\n"
        "invalid access to packet, off=40 size=1, R1(id=0,off=40,r=14)\n"
        "verification time 85 usec\n"
        "stack depth 0\n"
        "processed 7 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 "
        "mark_read 0\n"
    )
    log = parse_log(text, truncated=True)
    assert log.truncated
    assert log.stats.insns == 7
    assert log.error == "invalid access to packet, off=40 size=1, R1(id=0,off=40,r=14)"
    assert log.error_insn == 6
    assert classify_failure(log, errno.ENOSPC, "") == "LOG_TRUNCATED"
    rotated_partial = parse_log(
        "a partial line\nprocessed 7 insns (limit 1000000)\n", truncated=True
    )
    assert rotated_partial.error is None


def test_log_cut_at_the_head_is_truncated_without_a_verdict() -> None:
    # <= 6.3 keeps the head: the log stops mid-line and the complaint never made it
    log = parse_log("func#0 @0\n0: R1=ctx(off=0,imm=0) R10=fp0\nsome message\n1: (b7) r0 = ")
    assert log.truncated
    assert log.error is None
    assert log.stats == VerifierStats()
    assert log.excerpt().endswith("[verifier log truncated]")
    # ENOSPC is never a rejection, whatever the log holds
    assert classify_failure(log, errno.ENOSPC, "") == "LOG_TRUNCATED"


def test_complete_logs_are_not_truncated() -> None:
    assert not parse_log("processed 1 insns (limit 1000000)\n").truncated
    assert not parse_log("").truncated


def test_7_3_stats_block_gives_depths_per_subprog() -> None:
    text = (
        "verification time 11217 usec\n"
        "stack depth max 80\n"
        "subprog 0 (prog) main insns_self 30 insns_total 55 stack 40\n"
        "subprog 1 (mix) static insns_self 25 insns_total 25 stack 32\n"
        "processed 55 insns (limit 1000000) max_states_per_insn 0 total_states 3 peak_states 3 "
        "mark_read 0\n"
    )
    stats = parse_log(text).stats
    assert stats.stack_depth == (40, 32)
    assert stats.stack_depth_max == 80
    assert stats.stack_depth_total == 72
    assert stats.duration_us == 11217


def test_7_2_stats_block() -> None:
    text = (
        "verification time 8296 usec\nstack depth 40+32 max 80\ninsns processed 55\n"
        "processed 55 insns (limit 1000000) max_states_per_insn 0 total_states 3 peak_states 3 "
        "mark_read 0\n"
    )
    stats = parse_log(text).stats
    assert (stats.insns, stats.stack_depth, stats.stack_depth_max) == (55, (40, 32), 80)


def test_messages_before_the_program_are_not_the_complaint() -> None:
    # BTF func-info notes come first; an accepted level-2 log ends with an insn
    text = (
        "reg type unsupported for arg#0 function core_missing#4\n"
        "0: R1=ctx(off=0,imm=0) R10=fp0\n0: (b7) r0 = 0\n1: (95) exit\n"
        "processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 "
        "mark_read 0\n"
    )
    assert parse_log(text).error is None


def test_no_stats_line_means_the_verifier_did_not_finish() -> None:
    log = parse_log("unrecognized bpf_ld_imm64 insn\n")
    assert log.error == "unrecognized bpf_ld_imm64 insn"
    assert not log.stats.present
    assert classify_failure(log, errno.EINVAL, "") == "VERIFIER_REJECTED"


def test_libbpf_rewritten_kfunc_and_map_poisons() -> None:
    kfunc = parse_log(
        "0: <invalid kfunc call>\n"
        "kfunc 'bpf_nonexistent_kfunc' is referenced but wasn't resolved\n"
        "processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 "
        "mark_read 0\n"
    )
    assert kfunc.error_insn == 0
    assert kfunc.core_failure is None
    assert classify_failure(kfunc, errno.EINVAL, "") == "UNSUPPORTED_HELPER"
    missing_map = parse_log(
        "4: <invalid BPF map reference>\n"
        "BPF map 'missing_map' is referenced but wasn't created\n"
        "processed 5 insns (limit 1000000)\n"
    )
    assert classify_failure(missing_map, errno.EINVAL, "") == "LOAD_FAILED"


@pytest.mark.parametrize(
    ("message", "want"),
    [
        ("libbpf: failed to find valid kernel BTF\n", "MISSING_BTF"),
        ("libbpf: Error loading vmlinux BTF: -2\n", "MISSING_BTF"),
        (
            "libbpf: kernel BTF is missing at '/sys/kernel/btf/vmlinux', was "
            "CONFIG_DEBUG_INFO_BTF enabled?\n",
            "MISSING_BTF",
        ),
        ("libbpf: failed to perform CO-RE relocations: -22\n", "CORE_RELOCATION_FAILED"),
        (
            "libbpf: prog 'p': missing BPF prog type, check ELF section name 'x'\n",
            "UNSUPPORTED_PROG_TYPE",
        ),
        ("libbpf: map 'm': failed to create: Invalid argument(-22)\n", "UNSUPPORTED_MAP_TYPE"),
        (
            "libbpf: prog 'p': failed to find kernel BTF type ID of 'f': -3\n",
            "ATTACH_TARGET_MISSING",
        ),
        ("libbpf: specified path /sys/fs/bpf/m is not on BPF FS\n", "PIN_FAILED"),
        ("libbpf: prog 'p': BPF program load failed: Invalid argument\n", "LOAD_FAILED"),
    ],
)
def test_classify_from_libbpf_messages_alone(message: str, want: str) -> None:
    assert classify_failure(None, errno.EINVAL, message) == want


def test_permission_needs_the_verifier_to_have_stayed_silent() -> None:
    assert classify_failure(None, errno.EPERM, "") == "PERMISSION"
    assert classify_failure(parse_log(""), errno.EACCES, "") == "PERMISSION"
    rejected = parse_log("R7 !read_ok\nprocessed 1 insns (limit 1000000)\n")
    assert classify_failure(rejected, errno.EACCES, "") == "VERIFIER_REJECTED"


def test_interpreter_only_limits_count_as_unsupported_helpers() -> None:
    log = parse_log(
        "callbacks are not allowed in non-JITed programs\nprocessed 9 insns (limit 1000000)\n"
    )
    assert classify_failure(log, errno.EINVAL, "") == "UNSUPPORTED_HELPER"


def test_level_0_load_reads_the_log_libbpf_printed() -> None:
    messages = (
        "libbpf: prog 'p': BPF program load failed: Permission denied\n"
        "libbpf: prog 'p': -- BEGIN PROG LOAD LOG --\nR7 !read_ok\n"
        "processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 "
        "mark_read 0\n-- END PROG LOAD LOG --\n"
        "libbpf: prog 'p': failed to load: -13\n"
    )
    embedded = log_from_libbpf_messages(messages)
    assert embedded is not None
    assert parse_log(embedded).error == "R7 !read_ok"
    assert classify_failure(None, errno.EACCES, messages) == "VERIFIER_REJECTED"
    assert log_from_libbpf_messages("libbpf: nothing\n") is None


def test_excerpt_shows_the_lines_up_to_the_complaint() -> None:
    body = "".join(f"{i}: (b7) r0 = {i}\n" for i in range(30))
    log = parse_log(body + "R7 !read_ok\nprocessed 31 insns (limit 1000000)\n")
    lines = log.excerpt(5).splitlines()
    assert lines == [
        "26: (b7) r0 = 26",
        "27: (b7) r0 = 27",
        "28: (b7) r0 = 28",
        "29: (b7) r0 = 29",
        "R7 !read_ok",
    ]
    assert log.error_insn == 29
    # no complaint: the tail of the log
    assert parse_log(body).excerpt(2).splitlines() == ["28: (b7) r0 = 28", "29: (b7) r0 = 29"]


def test_stack_depth_total_is_none_without_depths() -> None:
    assert VerifierStats().stack_depth_total is None
    assert VerifierStats(stack_depth=(0,)).stack_depth_total == 0
