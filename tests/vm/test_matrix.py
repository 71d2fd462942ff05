"""The matrix end to end on real kernels: `kitl run -n 2` over two kernels and two configs
(one boot per kernel, one worker each), the recorded effects, the reports, the release gate
against a baseline with and without an injected regression, and `kitl repro` of one cell."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harness.cli.main import main
from tests.vm.conftest import VM_KERNELS

SCENARIO = Path(__file__).parents[2] / "scenarios" / "xdp-basics"
CONFIGS = ["jit", "hardened"]
CASES = 5  # of xdp-basics


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("matrix") / "run"
    status = main(
        [
            "run",
            str(SCENARIO),
            "-n",
            "2",
            "--kernels",
            ",".join(VM_KERNELS),
            "--configs",
            ",".join(CONFIGS),
            "--output",
            str(out),
        ]
    )
    assert status == 0, (out / "report" / "summary.md").read_text()
    return out


def cells(run_dir: Path) -> dict[str, dict[str, Any]]:
    body = json.loads((run_dir / "results.json").read_text())
    assert body["schema"] == 1
    return {c["id"]: c for c in body["cells"]}


def test_every_cell_ran_once_with_one_boot_per_kernel(run_dir: Path) -> None:
    results = cells(run_dir)
    assert len(results) == len(VM_KERNELS) * len(CONFIGS) * CASES, sorted(results)
    assert {c["outcome"] for c in results.values()} == {"PASSED"}
    consoles = sorted(p.name for p in (run_dir / "guest").glob("*.console.log"))
    assert consoles == sorted(f"{k}.console.log" for k in VM_KERNELS), consoles
    for kernel in VM_KERNELS:
        assert (run_dir / "guest" / f"{kernel}.dmesg.log").stat().st_size > 0


@pytest.mark.parametrize("name", VM_KERNELS)
def test_xdp_basics_effects_are_measured(run_dir: Path, name: str) -> None:
    results = cells(run_dir)
    jit = f"[{name}-jit]"
    drv = results[f"xdp-basics::drop-udp-traffic-drv{jit}"]
    assert drv["prog_type"] == "xdp"
    traffic = drv["observed"]["traffic"]
    assert (traffic["sent"], traffic["delivered"], traffic["dropped"]) == (100, 0, 100)
    assert drv["observed"]["attach"]["attach_mode"] == "drv"
    assert drv["observed"]["maps"]["counts"][1][1] == (100).to_bytes(8, "little").hex()
    skb = results[f"xdp-basics::pass-traffic-skb{jit}"]
    assert skb["observed"]["attach"]["attach_mode"] == "skb"
    assert skb["observed"]["traffic"]["delivered"] == 100
    run = results[f"xdp-basics::pass-test-run{jit}"]
    assert run["observed"]["test_run"]["retval"] == 2
    assert run["timings"]["ns_per_op"] > 0
    assert run["verifier"]["verified_insns"] > 0
    assert run["object_sha256"]
    assert run["console_path"] == f"guest/{name}.console.log"
    assert run["dmesg_path"] == f"guest/{name}.dmesg.log"
    assert Path(run["object_file"]).is_file()
    rejected = results[f"xdp-basics::unchecked-access-rejected{jit}"]
    assert rejected["observed"]["error_class"] == "VERIFIER_REJECTED"
    assert "processed" in (run_dir / rejected["log_path"]).read_text()
    # constant blinding rewrites immediates: the hardened JIT image is larger
    hardened = results[f"xdp-basics::pass-test-run[{name}-hardened]"]
    assert hardened["sysctls"]["net.core.bpf_jit_harden"] == "2"
    assert run["sysctls"]["net.core.bpf_jit_harden"] == "0"
    assert hardened["verifier"]["jited_len"] > run["verifier"]["jited_len"]


def test_reports_are_written(run_dir: Path) -> None:
    report = run_dir / "report"
    suites = ET.parse(report / "junit.xml").getroot()
    cases = suites.findall(".//testcase")
    assert len(cases) == len(VM_KERNELS) * len(CONFIGS) * CASES
    assert not suites.findall(".//failure")
    assert (report / "summary.md").is_file()
    details = (report / "details.md").read_text()  # the full matrix, a column per label
    for kernel in VM_KERNELS:
        for config in CONFIGS:
            assert f"{kernel}-{config}" in details
            assert (report / f"veristat-{kernel}-{config}.csv").is_file()
    assert "matrix" in (report / "index.html").read_text()


def _results_copy(run_dir: Path, dest: Path, change: Any = None) -> Path:
    body = json.loads((run_dir / "results.json").read_text())
    if change is not None:
        body = copy.deepcopy(body)
        change(body["cells"])
    dest.write_text(json.dumps(body))
    return dest


def test_compare_gates_an_injected_regression(run_dir: Path, tmp_path: Path) -> None:
    assert main(["compare", str(run_dir), str(run_dir)]) == 0

    def flip(cells: list[dict[str, Any]]) -> None:
        for cell in cells:
            if cell["case"] == "drop-udp-test-run" and cell["kernel"] == VM_KERNELS[0]:
                cell["outcome"] = "VERIFIER_REJECTED"

    def grow(cells: list[dict[str, Any]]) -> None:
        for cell in cells:
            if cell["case"] == "pass-test-run":
                cell["verifier"]["verified_insns"] *= 2
                cell["verifier"]["insns"] *= 2

    flipped = _results_copy(run_dir, tmp_path / "flipped.json", flip)
    grown = _results_copy(run_dir, tmp_path / "grown.json", grow)
    same = _results_copy(run_dir, tmp_path / "same.json")
    out = tmp_path / "gate.json"
    assert (
        main(["compare", str(run_dir), str(flipped), "--format", "json", "--output", str(out)]) == 1
    )
    kinds = {e["kind"] for e in json.loads(out.read_text())["entries"] if e["gating"]}
    assert "verdict-flip" in kinds
    assert main(["compare", str(run_dir), str(grown)]) == 1
    assert main(["compare", str(run_dir), str(grown), "--max-insns-growth", "150%"]) == 0
    assert main(["compare", str(run_dir), str(same)]) == 0


def test_repro_reloads_a_rejected_cell_with_the_full_log(run_dir: Path) -> None:
    cell = f"xdp-basics::unchecked-access-rejected[{VM_KERNELS[0]}-jit]"
    assert main(["repro", str(run_dir), cell, "--no-pager"]) == 0
    logs = list((run_dir / "repro").glob("*.verifier.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    # level 2 traces every instruction before the verdict
    assert "invalid access to packet" in text
    assert "; return ip->protocol" in text or "r1 = *(u8 *)" in text
