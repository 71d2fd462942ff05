"""Outcome decisions from observations (pure), on a case parsed from a real scenario."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.bpf import progtypes, retcodes, sections
from harness.guest.replies import EventsCountReply
from harness.outcome import Outcome
from harness.run.judge import Observed, judge
from harness.scenario.expect import Expect, MapEntry, MapExpect
from harness.scenario.loader import load_scenario
from harness.scenario.model import Case
from tests.replies import load_reply, map_dump, run_reply

SCENARIO = Path(__file__).parents[2] / "scenarios" / "xdp-basics" / "scenario.yaml"
REJECTION_LOG = (
    "0: R1=ctx(off=0,imm=0) R10=fp0\n; return ip->protocol == IPPROTO_UDP\n"
    "2: (71) r1 = *(u8 *)(r1 +23)\n"
    "invalid access to packet, off=23 size=1, R1(id=0,off=23,r=0)\n"
    "R1 offset is outside of the packet\n"
    "processed 3 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 "
    "mark_read 0\n"
)


@pytest.fixture(scope="module")
def case() -> Case:
    return load_scenario(SCENARIO).case("drop-udp-test-run")


def loaded(**extra: object) -> Observed:
    return Observed(load=load_reply(ok=True, errno=0, log="processed 26 insns", **extra))


def test_expected_retval_and_map_pass(case: Case) -> None:
    seen = loaded()
    seen.test_run = run_reply(1, 0)
    seen.maps = map_dump({"counts": [["00000000", "00" * 8], ["01000000", "0100000000000000"]]})
    assert judge(case, case.expect, seen) == (Outcome.PASSED, "")


def test_wrong_retval_is_named_by_code(case: Case) -> None:
    seen = loaded()
    seen.test_run = run_reply(2, 0)
    outcome, reason = judge(case, case.expect, seen)
    assert outcome is Outcome.FAILED
    assert reason == "returned XDP_PASS, expected XDP_DROP"


def test_map_mismatch_names_key_and_values(case: Case) -> None:
    seen = loaded()
    seen.test_run = run_reply(1, 0)
    seen.maps = map_dump({"counts": [["01000000", "0700000000000000"]]})
    assert judge(case, case.expect, seen) == (Outcome.FAILED, "map counts[1] = 7, expected 1")


def test_unexpected_rejection_is_verifier_rejected_with_the_message(case: Case) -> None:
    seen = Observed(load=load_reply(ok=False, errno=13, log=REJECTION_LOG))
    outcome, reason = judge(case, case.expect, seen)
    assert outcome is Outcome.VERIFIER_REJECTED
    assert seen.error_class == "VERIFIER_REJECTED"
    assert "invalid access to packet" in reason or "outside of the packet" in reason


def test_expected_rejection_checks_class_and_ordered_log(case: Case) -> None:
    want = Expect(
        load="rejected",
        error_class="VERIFIER_REJECTED",
        log=("invalid access to packet", "processed \\d+ insns"),
    )
    seen = Observed(load=load_reply(ok=False, errno=13, log=REJECTION_LOG))
    assert judge(case, want, seen) == (Outcome.PASSED, "")
    reversed_order = dataclasses.replace(want, log=("processed", "invalid access"))
    outcome, reason = judge(case, reversed_order, seen)
    assert outcome is Outcome.FAILED
    assert "lacks /invalid access/" in reason
    assert judge(case, want, loaded())[0] is Outcome.FAILED


def test_attach_failure_and_events(case: Case) -> None:
    seen = loaded()
    seen.attach_error = "attach: EINVAL"
    assert judge(case, Expect(), seen) == (Outcome.ATTACH_FAILED, "attach: EINVAL")
    counted = loaded()
    counted.events = EventsCountReply({"events": 4})
    outcome, reason = judge(case, Expect(events=(("events", 5),)), counted)
    assert (outcome, reason) == (Outcome.FAILED, "4 events in events, expected 5")


def test_bytes_keys_compare_verbatim(case: Case) -> None:
    seen = loaded()
    seen.maps = map_dump({"m": [["0a0b", "ff"]]})
    want = Expect(map=(MapExpect("m", (MapEntry(b"\x0a\x0b", b"\xff"),)),))
    assert judge(case, want, seen) == (Outcome.PASSED, "")


# libbpf 1.1.2's messages for SEC("tc/ingress"), from a debian-7.2 run with --libbpf system
OLD_LOADER = (
    "libbpf: prog 'tc_drop_udp': missing BPF prog type, check ELF section name 'tc/ingress'\n"
    "libbpf: prog 'tc_drop_udp': failed to load: -22\n"
    "libbpf: failed to load object '/run/kitl-ddcd71fd22c18232.o'\n"
)


def test_a_section_the_loader_does_not_know_is_named_with_the_way_out(case: Case) -> None:
    load = {"ok": False, "errno": 22, "log": "", "libbpf_messages": OLD_LOADER}
    seen = Observed(load=load_reply(**load, libbpf_version="1.1", libbpf_lacks=["x (1.6)"]))
    outcome, reason = judge(case, case.expect, seen)
    assert outcome is Outcome.LOAD_FAILED
    assert seen.error_class == "UNSUPPORTED_PROG_TYPE"
    assert reason.endswith(
        '(libbpf 1.1 does not know SEC("tc/ingress"); a newer libbpf may: --libbpf default)'
    )


def test_a_retval_without_a_run_fails_as_not_run_instead_of_as_minus_one(case: Case) -> None:
    """Found on the kernel's selftests: an unprivileged load had no test_run, and an expected
    -1 passed while an expected 0 failed as "returned -1"."""
    for want in (-1, 0):
        outcome, reason = judge(case, Expect(retval=want), loaded())
        assert outcome is Outcome.FAILED
        assert reason.endswith("but the program was not run (no test_run for this case)")


def test_at_log_level_0_the_order_of_messages_is_enforced(case: Case) -> None:
    """At level 0 libbpf prints the log among its messages: searching the log and then the
    messages found the two patterns in the wrong order across the two copies."""
    messages = (
        "libbpf: prog 'p': BPF program load failed: Permission denied\n"
        f"libbpf: prog 'p': -- BEGIN PROG LOAD LOG --\n{REJECTION_LOG}-- END PROG LOAD LOG --\n"
        "libbpf: prog 'p': failed to load: -13\n"
    )
    log = REJECTION_LOG  # what the agent reports as the log at level 0: libbpf's copy
    seen = Observed(load=load_reply(ok=False, errno=13, log=log, libbpf_messages=messages))
    wrong_order = Expect(load="rejected", log=("processed", "invalid access"))
    outcome, reason = judge(case, wrong_order, seen)
    assert outcome is Outcome.FAILED
    assert "lacks /invalid access/" in reason
    right = Expect(load="rejected", log=("invalid access", "processed", "failed to load: -13"))
    assert judge(case, right, seen) == (Outcome.PASSED, "")


def test_a_map_value_is_shown_in_the_form_the_expectation_was_written_in(case: Case) -> None:
    """A .bss mismatch printed a 116-digit decimal against a hex expectation."""
    seen = loaded()
    seen.maps = map_dump({"m": [["00000000", "ab" * 48]]})
    want = Expect(map=(MapExpect("m", (MapEntry(0, b"\xcd" * 48),)),))
    outcome, reason = judge(case, want, seen)
    assert (outcome, reason) == (Outcome.FAILED, f"map m[0] = {'ab' * 48}, expected {'cd' * 48}")
    signed = Expect(map=(MapExpect("m", (MapEntry(0, -1),)),))
    seen.maps = map_dump({"m": [["00000000", "feffffff"]]})
    assert judge(case, signed, seen) == (Outcome.FAILED, "map m[0] = -2, expected -1")


def test_retval_any_needs_a_run_and_nothing_else(case: Case) -> None:
    """For programs that return a kernel pointer or a hash (the selftests' POINTER_VALUE)."""
    xdp = progtypes.PROG_TYPES["xdp"]
    assert sections.resolve_retval(xdp, "xdp", "any") == retcodes.RETVAL_ANY
    assert sections.retval_name(xdp, "xdp", retcodes.RETVAL_ANY) == "any"
    seen = loaded()
    seen.test_run = run_reply(0xFFFF8880, 0)
    assert judge(case, Expect(retval=retcodes.RETVAL_ANY), seen) == (Outcome.PASSED, "")
    outcome, reason = judge(case, Expect(retval=retcodes.RETVAL_ANY), loaded())
    assert (outcome, reason.startswith("expects return value any, but")) == (Outcome.FAILED, True)
