"""The user's own loader as a cell, on a real kernel: bpftool pins the programs it loads
(they are listed as left loaded, with the kernel's figures, and unpinned after it), a
skeleton-style loader loads and exits (its programs are seen while it runs), a loader that
fails is FAILED with its last words, and one expected to fail passes.  Nothing of any of
them is left for the next cell (the leak check would make it ERROR)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.cli.main import main

SCENARIO = Path(__file__).parents[1] / "data" / "user-loader" / "scenario.yaml"
KERNEL = "debian-6.1"


def cells(run_dir: Path) -> dict[str, dict[str, Any]]:
    body = json.loads((run_dir / "results.json").read_text())
    return {c["case"]: c for c in body["cells"]}


def programs(cell: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in cell["observed"]["loader"]["programs"]}


def test_user_loaders_on_a_real_kernel(tmp_path: Path) -> None:
    run = tmp_path / "run"
    status = main(["run", str(SCENARIO), "--kernel", KERNEL, "--output", str(run)])
    results = cells(run)
    outcomes = {name: (c["outcome"], c["reason"]) for name, c in results.items()}
    assert status == 1, outcomes  # one loader fails
    assert {n: o for n, (o, _) in outcomes.items()} == {
        "bpftool-pins": "PASSED",
        "skeleton-loads-and-exits": "PASSED",
        "loader-fails": "FAILED",
        "loader-fails-as-expected": "PASSED",
    }, outcomes

    pinned = results["bpftool-pins"]["observed"]["loader"]
    assert pinned["status"] == 0
    for name, kind in (("xdp_pass", "xdp"), ("tc_count", "sched_cls")):
        program = programs(results["bpftool-pins"])[name]
        assert program["type"] == kind
        assert program["left_loaded"] is True
        assert program["pinned"] == [f"/sys/fs/bpf/kitl-user/{name}"]
        assert program["verified_insns"] > 0  # 5.16+: 6.1 reports it
        assert program["xlated_len"] > 0
        assert program["jited_len"] > 0
    assert "/sys/fs/bpf/kitl-user" in pinned["pins"]  # removed after the loader

    seen = programs(results["skeleton-loads-and-exits"])
    assert {n: p["left_loaded"] for n, p in seen.items()} == {
        "xdp_pass": False,
        "tc_count": False,
    }
    assert seen["tc_count"]["verified_insns"] > seen["xdp_pass"]["verified_insns"]

    failed = results["loader-fails"]
    assert failed["reason"] == ("the loader exited with 1, expected 0: error: no such device: eth9")
    assert failed["observed"]["loader"]["stderr"] == "error: no such device: eth9\n"
    log = (run / failed["log_path"]).read_text()
    assert log.startswith("$ python3 ./loader.py --fail\n# exited with 1")

    assert main(["report", str(run)]) == 0
    summary = (run / "report" / "summary.md").read_text()
    assert "## User loaders (4)" in summary
    assert "tc\\_count (sched\\_cls): verified\\_insns" in summary
