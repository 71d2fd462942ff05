"""The verifier log's instruction stream, the explanation of a rejection and the diff of two
logs, on the saved real logs of every kernel kitl boots (tests/data/verifier)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.bpf.advice import TABLE, advise
from harness.bpf.explain import explain_log, name_call
from harness.bpf.helper_names import LAST_ID_BY_KERNEL, helper_arrival
from harness.bpf.log_diff import canonical, diff_logs, stat_deltas, state_difference
from harness.bpf.log_insns import format_state, parse_trace, split_state

DATA = Path(__file__).parent.parent / "data" / "verifier"
KERNELS = ("debian-5.10", "debian-6.1", "debian-6.12", "debian-7.2", "debian-7.3")
# kernels that print "@ file:line" after the source text (BTF line info's file and line)
WITH_FILE_LINE = ("debian-6.12", "debian-7.2", "debian-7.3")


def _log(kernel: str, stem: str) -> str:
    meta = json.loads((DATA / kernel / f"{stem}.json").read_text(encoding="utf-8"))
    return (DATA / kernel / str(meta["log_file"])).read_text(encoding="utf-8", errors="replace")


@pytest.mark.parametrize("kernel", KERNELS)
def test_the_failing_insn_its_source_line_and_state(kernel: str) -> None:
    e = explain_log(_log(kernel, "pkt_oob.l5"))
    assert e.failure is not None
    assert (e.failure.step.index, e.failure.step.text) == (6, "r1 = *(u8 *)(r1 +40)")
    source = e.failure.source
    assert source is not None
    assert "[40]" in source.text
    assert source.where == ("pkt_oob.c:9" if kernel in WITH_FILE_LINE else "")
    registers = e.failure.frames[0]
    assert registers["R10"] == "fp0"
    assert registers["R2"].startswith("pkt_end")
    assert registers["R3"].startswith("pkt(")
    assert "r=14" in registers["R3"]
    assert e.advice is not None
    assert e.advice.topic == "packet bounds"


# program -> the advice's topic on each kernel (what the verifier says differs by kernel)
TOPICS = {
    "pkt_oob": {k: "packet bounds" for k in KERNELS},
    "uninit_reg": {k: "uninitialized register" for k in KERNELS},
    "loop_infinite": {k: "loop" for k in KERNELS},
    "too_large": {k: "complexity" for k in KERNELS},
    "helper_wrong_type": {k: "helper not allowed" for k in KERNELS},
    "core_missing": {k: "CO-RE relocation" for k in KERNELS},
    # 5.10 has no bpf_loop; the others refuse its NULL callback
    "helper_unknown": {
        k: "missing helper" if k == "debian-5.10" else "argument type" for k in KERNELS
    },
}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("program", sorted(TOPICS))
def test_the_plain_words_fit_the_complaint_on_every_kernel(kernel: str, program: str) -> None:
    stem = f"{program}.l4"  # every program has its statistics-only load
    e = explain_log(_log(kernel, stem))
    assert e.advice is not None, e.message
    assert e.advice.topic == TOPICS[program][kernel]
    assert e.advice.fixes


def test_every_saved_log_is_read_without_failing() -> None:
    for path in sorted(DATA.glob("*/*.log")):
        e = explain_log(path.read_text(encoding="utf-8", errors="replace"))
        if e.failure is not None:
            assert e.failure.step.line < (e.log.error_line or 0) + 1


def test_the_message_names_an_insn_the_log_printed_before() -> None:
    """'infinite loop detected at insn 3': insn 3, not the last insn printed."""
    e = explain_log(_log("debian-7.2", "loop_infinite.l5"))
    assert e.failure is not None
    assert e.failure.step.index == 3
    assert e.failure.source is not None
    assert e.failure.source.text == "while (spin)"


def test_an_unknown_helper_is_named_with_when_it_came() -> None:
    e = explain_log(_log("debian-5.10", "core_direct.l5"))
    assert [c.describe() for c in e.unknown] == [
        "bpf_get_current_task_btf (helper 158, after 5.10, by 6.1)"
    ]
    assert e.advice is not None
    assert e.advice.topic == "missing helper"


def test_helper_arrival_comes_from_the_headers_last_ids() -> None:
    assert dict(LAST_ID_BY_KERNEL)["5.10"] == 155  # bpf_redirect_peer
    assert helper_arrival(1) == "in 5.10 or earlier"
    assert helper_arrival(181) == "after 5.10, by 6.1"  # bpf_loop, 5.17
    assert helper_arrival(210) == "after 6.1, by 6.12"  # bpf_cgrp_storage_get, 6.2
    assert helper_arrival(5000) is None


def test_calls_are_helpers_kfuncs_or_libbpf_poison() -> None:
    assert name_call("bpf_loop", 181).describe() == "bpf_loop (helper 181, after 5.10, by 6.1)"
    assert name_call("bpf_obj_new_impl", 54321).kind == "kfunc"
    assert name_call("unknown", 195896080).kind == "poison"
    assert name_call("unknown", 2002000001).describe().startswith("libbpf's mark of a kfunc")
    calls = explain_log(_log("debian-7.3", "helper_unknown.l5")).calls
    assert [c.name for c in calls] == ["bpf_loop"]


def test_a_state_keeps_spaces_inside_parentheses_and_drops_liveness_marks() -> None:
    frame, values = split_state(
        "frame1: R1_w=scalar(smin=0,var_off=(0x0; 0xff)) R10=fp0 fp-8_w=mmmm????"
    )
    assert frame == 1
    assert values == {"R1": "scalar(smin=0,var_off=(0x0; 0xff))", "R10": "fp0", "fp-8": "mmmm????"}
    assert format_state({"fp-8": "0", "R10": "fp0", "R2": "1"}) == "R2=1 R10=fp0 fp-8=0"


def test_paths_and_pruning_are_counted() -> None:
    trace = parse_trace(_log("debian-7.3", "accept_subprog.l2"))
    assert trace.paths > 1
    assert trace.pruned >= 1
    # the subprog's insns carry frame 1's state
    call_target = next(s for s in trace.steps if s.index == 27)
    assert any(frame == 1 for frame, _, _ in call_target.states_before)


def test_a_statistics_only_log_has_no_stream() -> None:
    e = explain_log(_log("debian-7.3", "pkt_oob.l4"))
    assert not e.trace.steps
    assert e.failure is None
    assert e.message is not None
    assert e.advice is not None


def test_the_advice_table_is_data_with_fixes() -> None:
    assert 20 <= len(TABLE) <= 40
    assert all(a.meaning and a.fixes and a.topic for a in TABLE)
    assert advise("R1 invalid mem access 'map_value_or_null'").topic == "NULL check"  # type: ignore[union-attr]
    assert advise("R1 invalid mem access 'scalar'").topic == "pointer type"  # type: ignore[union-attr]
    assert advise("combined stack size of 2 calls is 544. Too large").topic == "stack size"  # type: ignore[union-attr]
    assert advise("The sequence of 8193 jumps is too complex.").topic == "complexity"  # type: ignore[union-attr]
    assert advise("Unreleased reference id=2 alloc_insn=4").topic == "reference leak"  # type: ignore[union-attr]
    assert advise("nothing the table knows") is None


def test_states_compare_across_kernels_in_one_form() -> None:
    assert canonical("inv1") == "1"
    assert canonical("ctx(id=0,off=0,imm=0)") == "ctx()"
    assert canonical("pkt(id=0,off=14,r=14,imm=0)") == "pkt(off=14,r=14)"
    assert state_difference({"R1": "inv1", "R2": "0"}, {"R1": "1", "R2": "scalar()"}) == (
        "R2: 0 / scalar()"
    )


def test_two_kernels_that_agree_show_no_divergence() -> None:
    diff = diff_logs(_log("debian-6.12", "pkt_oob.l5"), _log("debian-7.2", "pkt_oob.l5"))
    assert diff.divergence is None
    assert [(r.a.index, r.b.index) for r in diff.rows if r.a and r.b] == [(i, i) for i in range(7)]


def test_a_missing_helper_shows_where_the_verdicts_part() -> None:
    diff = diff_logs(
        _log("debian-5.10", "helper_unknown.l5"), _log("debian-6.1", "helper_unknown.l5")
    )
    assert diff.divergence is not None
    assert diff.divergence.kind == "verdict"
    assert "invalid func unknown#181" in diff.divergence.detail
    assert [c.name for c in diff.only_a] == []  # both name bpf_loop: 5.10 by its id
    assert [c.name for c in (*diff.a.unknown, *diff.b.calls)] == ["bpf_loop", "bpf_loop"]


def test_statistics_side_by_side() -> None:
    a = explain_log(_log("debian-6.1", "accept_subprog.l5")).log.stats
    b = explain_log(_log("debian-7.3", "accept_subprog.l5")).log.stats
    deltas = {d.name: d for d in stat_deltas(a, b)}
    assert deltas["insns processed"].a == a.insns
    assert deltas["stack depth"].b == b.stack_depth_total
