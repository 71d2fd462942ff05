"""veristat's CSV both ways (harness.results.veristat): kitl's rows of a real run against
veristat's own output for the same programs, a veristat CSV read as cells, and `kitl
compare` with a veristat CSV on either side."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pytest

from harness.cli.verify import print_table
from harness.errors import UsageError
from harness.outcome import Outcome
from harness.report.render import render_all
from harness.results import veristat
from harness.results.compare import Thresholds, compare, load_sides
from harness.results.runs import load_run

DATA = Path(__file__).parents[1] / "data" / "veristat"
VERISTAT = DATA / "xdp-tools-debian-6.1.veristat.csv"
KITL_RUN = DATA / "kitl-xdp-tools-debian-6.1"
TIMINGS = ("duration", "mem_peak")  # measured anew by each tool


def rows(text: str) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["file_name"], r["prog_name"]): r for r in csv.DictReader(io.StringIO(text))}


def test_kitls_csv_has_veristats_columns_and_values_but_the_timings(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(KITL_RUN, run)
    render_all(run, formats=("csv",))
    ours = (run / "report" / "veristat-debian-6.1-default.csv").read_text()
    theirs = VERISTAT.read_text()
    assert ours.splitlines()[0] == theirs.splitlines()[0] == ",".join(veristat.COLUMNS)
    mine, real = rows(ours), rows(theirs)
    assert list(mine) == list(real)  # the same file names ("x.o"), programs and order
    for key, row in real.items():
        untimed = {k: v for k, v in row.items() if k not in TIMINGS}
        assert {k: v for k, v in mine[key].items() if k not in TIMINGS} == untimed, key


def test_a_veristat_csv_reads_as_cells() -> None:
    cells = {c.case: c for c in veristat.read(VERISTAT)}
    assert len(cells) == 16  # xsk_def_prog is in two objects
    big = cells["xdpfilt_alw_all"]
    assert (big.scenario, big.kernel, big.outcome) == ("xdpfilt_alw_all", "", Outcome.PASSED)
    assert (big.verifier.insns, big.verifier.total_states, big.verifier.jited_len) == (
        81945,
        5601,
        2129,
    )
    assert big.observed.load["prog_type"] == "xdp"
    failed = cells["trace_on_entry"]
    assert (failed.outcome, failed.scenario) == (Outcome.VERIFIER_REJECTED, "xdpdump_bpf")


def test_an_older_veristats_nine_columns_and_aliases_read(tmp_path: Path) -> None:
    old = tmp_path / "old.csv"
    old.write_text(
        "file_name,prog_name,verdict,duration,insns,states,peak_states,"
        "max_states_per_insn,mark_read\nx.bpf.o,p,success,10,7,1,1,0,2\n"
    )
    assert veristat.is_veristat_csv(old)
    (cell,) = veristat.read(old)
    assert (cell.scenario, cell.case, cell.verifier.insns, cell.verifier.mark_read) == (
        "x",
        "p",
        7,
        2,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file_name,prog_name,bogus\n", "old.csv:1: not a veristat CSV (unknown column 'bogus')"),
        ("file_name,verdict\n", "old.csv:1: not a veristat CSV (no file_name/prog_name)"),
        ("file_name,prog_name,verdict\nx.o,p,maybe\n", "old.csv:2: verdict 'maybe'"),
        ("file_name,prog_name,duration\nx.o,p\n", "old.csv:2: 2 values under 3 columns"),
        ("file_name,prog_name,duration\nx.o,p,ten\n", "old.csv:2: duration 'ten' is not"),
    ],
)
def test_a_bad_veristat_csv_is_one_line_naming_file_and_line(
    tmp_path: Path, text: str, message: str
) -> None:
    bad = tmp_path / "old.csv"
    bad.write_text(text)
    with pytest.raises(UsageError) as raised:
        veristat.read(bad)
    assert str(raised.value).startswith(f"{tmp_path}/{message}")
    assert "\n" not in str(raised.value)


def test_compare_takes_a_veristat_csv_on_either_side_for_every_kernel_of_the_run() -> None:
    base, new = load_sides(VERISTAT, KITL_RUN)
    assert {(c.kernel, c.config) for c in base} == {("debian-6.1", "default")}
    result = compare(base, new, Thresholds())
    assert result.exit_status == 0
    assert result.compared == len(load_run(KITL_RUN).cells) == 17
    # the same verdicts and figures: only the kinds of failure veristat does not tell apart
    assert {e.kind for e in result.entries} == {"outcome-change"}
    assert all(e.base == "VERIFIER_REJECTED" for e in result.entries)
    back, forth = load_sides(KITL_RUN, VERISTAT)
    assert compare(back, forth, Thresholds()).exit_status == 0


def test_a_program_that_stopped_loading_fails_the_gate_against_veristat(tmp_path: Path) -> None:
    text = VERISTAT.read_text().replace("xdpfilt_alw_ip,success", "xdpfilt_alw_ip,failure")
    worse = tmp_path / "new.csv"
    worse.write_text(text)
    result = compare(*load_sides(VERISTAT, worse), Thresholds())
    assert result.exit_status == 1
    (flip,) = [e for e in result.entries if e.gating]
    assert (flip.kind, flip.key) == ("verdict-flip", "xdpfilt_alw_ip::xdpfilt_alw_ip[?]")


def test_emit_takes_veristats_stat_names_and_the_table_shows_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert veristat.stat_names("verdict, insns,states,dur") == (
        "verdict",
        "total_insns",
        "total_states",
        "duration",
    )
    with pytest.raises(UsageError, match="--emit 'verdict,bogus': no stat 'bogus'"):
        veristat.stat_names("verdict,bogus")
    run = tmp_path / "run"
    shutil.copytree(KITL_RUN, run)
    print_table(run, veristat.stat_names("verdict,insns,states"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "each kernel's column: verdict total_insns total_states"
    table = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert table["xdpfilt_alw_all/xdpfilt_alw_all"] == ["success", "81945", "5601"]
    assert table["xdpdump_bpf/trace_on_entry"] == ["!failure", "0", "0"]  # not as expected
