"""`kitl run` of the bundled xdp-basics scenario on real kernels, asserting recorded effects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from tests.vm.conftest import VM_KERNELS

SCENARIO = Path(__file__).parents[2] / "scenarios" / "xdp-basics"


def cells(run_dir: Path) -> dict[str, dict[str, Any]]:
    body = json.loads((run_dir / "results.json").read_text())
    assert body["schema"] == 1
    return {c["id"]: c for c in body["cells"]}


@pytest.mark.parametrize("name", VM_KERNELS)
def test_xdp_basics_effects_are_measured(name: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    status = main(
        [
            "run",
            str(SCENARIO),
            "--kernel",
            name,
            "--output",
            str(run_dir),
            "--config",
            "jit",
            "--config",
            "hardened",
        ]
    )
    results = cells(run_dir)
    assert len(results) == 10, sorted(results)
    failed = {k: c["reason"] for k, c in results.items() if c["outcome"] != "PASSED"}
    assert status == 0, failed
    jit = f"[{name}-jit]"
    drv = results[f"xdp-basics::drop-udp-traffic-drv{jit}"]
    assert drv["prog_type"] == "xdp"
    assert drv["observed"]["traffic"] == {"sent": 100, "delivered": 0, "dropped": 100}
    assert drv["observed"]["attach"]["attach_mode"] == "drv"
    assert drv["observed"]["maps"]["counts"][1][1] == (100).to_bytes(8, "little").hex()
    skb = results[f"xdp-basics::pass-traffic-skb{jit}"]
    assert skb["observed"]["attach"]["attach_mode"] == "skb"
    assert skb["observed"]["traffic"]["delivered"] == 100
    run = results[f"xdp-basics::pass-test-run{jit}"]
    assert run["observed"]["test_run"]["retval"] == 2
    assert run["timings"]["ns_per_op"] > 0
    assert run["verifier"]["verified_insns"] > 0
    rejected = results[f"xdp-basics::unchecked-access-rejected{jit}"]
    assert rejected["observed"]["error_class"] == "VERIFIER_REJECTED"
    log = (run_dir / rejected["log_path"]).read_text()
    assert "processed" in log
    # constant blinding rewrites immediates: the hardened JIT image is larger
    hardened = results[f"xdp-basics::pass-test-run[{name}-hardened]"]
    assert hardened["sysctls"]["net.core.bpf_jit_harden"] == "2"
    assert hardened["verifier"]["jited_len"] > run["verifier"]["jited_len"]
    assert (run_dir / "guest" / f"{name}.dmesg.log").stat().st_size > 0
