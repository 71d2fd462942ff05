"""`kitl verify --annotations` on a real kernel: objects annotated the way the kernel's BPF
selftests are (tests/data/annotated), run as the selftests' test_loader runs them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.cli.main import main
from tests.vm.objects import compiled

DATA = Path(__file__).parents[1] / "data" / "annotated"
KERNEL = "debian-7.3"


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compiled(sorted(DATA.glob("*.bpf.c")), tmp_path_factory.mktemp("annotated"), KERNEL)


def cells(run_dir: Path) -> dict[str, dict[str, Any]]:
    body = json.loads((run_dir / "results.json").read_text())
    return {c["id"].removesuffix(f"[{KERNEL}-default]"): c for c in body["cells"]}


def test_annotated_programs_run_as_test_loader_runs_them(objects: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    status = main(
        ["verify", "--annotations", str(objects), "--kernel", KERNEL, "--output", str(run)]
    )
    results = cells(run)
    outcomes = {name: c["outcome"] for name, c in results.items()}
    assert status == 0, {n: c["reason"] for n, c in results.items() if c["outcome"] != "PASSED"}
    assert outcomes == {
        "verdicts::passes": "PASSED",
        "verdicts::reads_past_the_packet": "PASSED",
        "verdicts::returns_a_pointer": "PASSED",
        "verdicts::returns_a_pointer.unprivileged": "PASSED",
        "verdicts::checks_the_program_text": "SKIPPED",
        "testmod::calls_the_test_module": "SKIPPED",
    }  # the auxiliary program is no case of its own
    passes = results["verdicts::passes"]["observed"]
    assert passes["test_run"]["retval"] == 2  # __retval(2): XDP_PASS on 64 zero bytes
    assert passes["load"]["companions"] == ["helper_for_the_others"]
    pointer = results["verdicts::returns_a_pointer"]["observed"]
    assert pointer["test_run"]["errno"] == 0  # POINTER_VALUE: ran, any value
    unpriv = results["verdicts::returns_a_pointer.unprivileged"]["observed"]
    assert (unpriv["load"]["ok"], unpriv["load"]["privilege"]) == (False, "unprivileged")
    assert results["verdicts::checks_the_program_text"]["reason"].startswith(
        "kitl does not check __xlated"
    )
    assert "kfunc bpf_kitl_testmod_kfunc" in results["testmod::calls_the_test_module"]["reason"]
