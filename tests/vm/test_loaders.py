"""The loader as an axis of the matrix: the same object verified on one kernel with the
system's libbpf (bookworm's 1.1.2) and with the libbpf built from Debian's 7.2 source.
`SEC("tcx/ingress")` is a section libbpf learnt in 1.3: the verdict differs by loader,
and the report names the difference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.cli.main import main
from tests.vm.objects import compiled

DATA = Path(__file__).parents[1] / "data" / "loaders"
KERNEL = "debian-7.2"


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compiled([DATA / "sections.bpf.c"], tmp_path_factory.mktemp("objects"), KERNEL)


def test_the_verdict_depends_on_the_loader(objects: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["verify", str(objects), "--kernel", KERNEL, "--libbpf", f"system,{KERNEL}"]
    assert main([*argv, "--output", str(run)]) == 1  # the system's libbpf fails one program
    cells: dict[str, dict[str, Any]] = {
        c["id"]: c for c in json.loads((run / "results.json").read_text())["cells"]
    }
    old = cells[f"sections::tcx_ingress[{KERNEL}-default-system]"]
    new = cells[f"sections::tcx_ingress[{KERNEL}-default-{KERNEL}]"]
    assert old["libbpf"] == "system"
    assert old["verifier"]["libbpf_version"] == "1.1"
    assert old["outcome"] == "LOAD_FAILED", old
    assert 'libbpf 1.1 does not know SEC("tcx/ingress")' in old["reason"], old["reason"]
    assert old["verifier"]["failed_stage"] == "load"  # 1.1 has no separate prepare step
    assert new["libbpf"] == KERNEL
    assert tuple(int(x) for x in new["verifier"]["libbpf_version"].split(".")) >= (1, 3)
    assert new["outcome"] == "PASSED", new["reason"]
    for label in ("default-system", f"default-{KERNEL}"):
        assert cells[f"sections::tc_classic[{KERNEL}-{label}]"]["outcome"] == "PASSED"
    # the full matrix (details.md) shows both loaders as columns, the tcx row differing;
    # the short summary lists the failure
    details = (run / "report" / "details.md").read_text()
    row = next(r for r in details.splitlines() if r.startswith("| sections::tcx\\_ingress"))
    assert "load failed" in row, row
    assert "pass" in row, row
    assert f"{KERNEL}-default-{KERNEL}" in details
    assert "tcx" in (run / "report" / "summary.md").read_text()
