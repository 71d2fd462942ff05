"""`kitl explain` and `kitl diff` on saved run directories (tests/data/explain-run, a real
selftests run; tests/data/report-runs/two-kernels): output, exit codes, one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.cli.main import main

RUN = Path(__file__).parent.parent / "data" / "explain-run"
TWO_KERNELS = Path(__file__).parent.parent / "data" / "report-runs" / "two-kernels"
SPILL = "verifier_spill_fill::stack_load_preserves_mixed_zero_and_zero_spill"
PKT = "verifier_direct_packet_access::pkt_same_id_check_copy_load_base"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_explain_a_rejected_cell(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _run(["explain", str(RUN), f"{PKT}[debian-7.2-default]"], capsys)
    assert (status, err) == (0, "")
    assert "Failed at insn 10: r0 = *(u64 *)(r5 +0)" in out
    assert "@ verifier_direct_packet_access.c:928" in out
    assert "R5=pkt(id=1,r=0," in out  # the state the log had printed for it
    assert "invalid access to packet, off=50 size=8" in out
    assert "In plain words (packet bounds)" in out
    assert "Statistics: 11 insns processed" in out


def test_explain_a_cell_that_loaded_without_a_log(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(["explain", str(RUN), f"{PKT}[debian-7.3-default]"], capsys)
    assert status == 0
    assert "PASSED: loaded" in out
    assert "no verifier log was saved" in out
    assert "Statistics: 15 insns processed" in out


def test_explain_a_cell_rejected_as_expected(capsys: pytest.CaptureFixture[str]) -> None:
    cell = "xdp-basics::unchecked-access-rejected[debian-6.1-jit]"
    status, out, _ = _run(["explain", str(TWO_KERNELS), cell], capsys)
    assert status == 0
    assert "Failed at insn 3: r1 = *(u8 *)(r1 +14)" in out
    assert "return ip->protocol == IPPROTO_UDP" in out


def test_explain_an_unknown_cell_is_one_line_with_close_matches(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = _run(["explain", str(RUN), f"{PKT}[debian-7.4-default]"], capsys)
    assert (status, out) == (2, "")
    assert err.count("\n") == 1
    assert "did you mean" in err
    assert "debian-7.3-default" in err


def test_explain_a_directory_that_is_no_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _run(["explain", str(tmp_path), "x::y[k-c]"], capsys)
    assert status == 2
    assert "not a kitl run directory" in err
    assert err.count("\n") == 1


def test_diff_two_kernels_of_one_run(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["diff", str(RUN), "stack_load_preserves_mixed_zero_and_zero_spill"]
    status, out, err = _run([*argv, "debian-7.2", "debian-7.3"], capsys)
    assert (status, err) == (0, "")
    assert "math between map_value pointer" in out
    assert "First divergence: state, reaching insn 7 (r1 += r2), A / B knew R2: scalar() / 0" in out
    assert "insns processed                    7          10  +3 (+43%)" in out
    assert ">      7  r1 += r2" in out


def test_diff_a_cell_without_a_log_compares_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(["diff", str(RUN), PKT, "debian-7.2", "debian-7.3"], capsys)
    assert status == 0
    assert "no log saved (log level 0): compared on verdict and statistics" in out
    assert "First divergence: verdict" in out


def test_diff_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    again = shutil.copytree(RUN, tmp_path / "again")
    argv = ["diff", str(RUN), str(again), SPILL, "--kernel", "debian-7.2"]
    status, out, _ = _run(argv, capsys)
    assert status == 0
    assert "First divergence: none (the logs agree)" in out


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["diff", str(RUN), SPILL, "debian-7.2", "debian-9.9"], "did not run on debian-9.9"),
        (["diff", str(RUN), "no_such_prog", "debian-7.2", "debian-7.3"], "no program"),
        (["diff", str(RUN), str(RUN), SPILL], "choose with --kernel"),
        (["diff", str(RUN), SPILL], "kitl diff takes"),
        (["diff", str(RUN), "x", SPILL], "not a run directory"),
        (["diff", str(RUN), SPILL, "debian-7.2", "debian-7.2"], "the same cell twice"),
    ],
)
def test_diff_usage_errors_are_one_line(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = _run(argv, capsys)
    assert (status, out) == (2, "")
    assert words in err
    assert err.count("\n") == 1
