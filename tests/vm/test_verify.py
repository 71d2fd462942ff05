"""`kitl verify` on a real kernel: a directory of small objects written for the purpose
(tests/data/verify), loaded program by program, privileged and unprivileged, with the bulk
expectations of tests/data/verify/expect.yaml: accepted, rejected with a known message,
failing only unprivileged, failing only without a flag, and a test_run return value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.cli.main import main
from tests.vm.objects import compiled

DATA = Path(__file__).parents[1] / "data" / "verify"
KERNEL = "debian-6.1"


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compiled(sorted(DATA.glob("*.bpf.c")), tmp_path_factory.mktemp("objects"))


def cells(run_dir: Path) -> dict[str, dict[str, Any]]:
    body = json.loads((run_dir / "results.json").read_text())
    return {c["id"]: c for c in body["cells"]}


def test_every_program_meets_the_bulk_expectations(objects: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["verify", str(objects), "--kernel", KERNEL, "--privilege", "both", "--test-run"]
    status = main([*argv, "--expect", str(DATA / "expect.yaml"), "--output", str(run)])
    results = cells(run)
    assert status == 0, {k: c["reason"] for k, c in results.items() if c["outcome"] != "PASSED"}
    assert len(results) == 10  # 5 programs, each privileged and unprivileged

    def cell(name: str) -> dict[str, Any]:
        return results[f"{name}[{KERNEL}-default]"]

    ok = cell("basic::xdp_ok")
    assert ok["observed"]["load"]["ok"] is True
    assert ok["observed"]["test_run"]["retval"] == 2  # XDP_PASS, by the default test_run
    oob = cell("basic::xdp_oob")
    assert oob["observed"]["error_class"] == "VERIFIER_REJECTED"
    assert "invalid access to packet" in (run / oob["log_path"]).read_text()
    # only a privileged loader may load XDP; a socket filter loads either way
    assert cell("basic::xdp_ok.unprivileged")["observed"]["error_class"] == "PERMISSION"
    unprivileged = cell("basic::sock_keep.unprivileged")["observed"]["load"]
    assert (unprivileged["ok"], unprivileged["unprivileged"]) == (True, True)
    assert unprivileged["kernel.unprivileged_bpf_disabled"] == "0"
    # loaded without capabilities, then run with them back (the kernel's test_loader's way)
    run_after = cell("basic::sock_keep.unprivileged")["observed"]["test_run"]
    assert (run_after["errno"], run_after["retval"] > 0) == (0, True)
    sleepy = cell("sleepable::copy_user")
    assert sleepy["observed"]["error_class"] == "VERIFIER_REJECTED"
    # the same results as a veristat CSV
    csv = (run / "report" / f"veristat-{KERNEL}-default.csv").read_text().splitlines()
    assert csv[0].startswith("file_name,prog_name,verdict")
    assert any(",xdp_oob,failure," in line for line in csv)


def test_a_flag_makes_the_sleepable_program_load(objects: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["verify", str(objects), "--kernel", KERNEL, "--prog", "copy_user"]
    assert main([*argv, "--output", str(run)]) == 1  # without the flag: rejected
    run2 = tmp_path / "run2"
    assert main([*argv, "--flags", "BPF_F_SLEEPABLE", "--output", str(run2)]) == 0
    loaded = cells(run2)[f"sleepable::copy_user[{KERNEL}-default]"]
    assert loaded["observed"]["load"]["ok"] is True


def test_a_preset_global_reaches_the_program(objects: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["verify", str(objects), "--kernel", KERNEL, "--prog", "xdp_global", "--test-run"]
    assert main([*argv, "--global", "verdict=1", "--output", str(run)]) == 0
    cell = cells(run)[f"globals::xdp_global[{KERNEL}-default]"]
    assert cell["observed"]["test_run"]["retval"] == 1  # XDP_DROP, not the compiled XDP_PASS
