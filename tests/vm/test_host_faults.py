"""Faults of the host rather than the guest, injected for real: two kitl processes started
side by side on two cores, a boot under a CPU hog on every core, a shard whose kernel did
not boot merged with its rerun, and a `kitl verify` stopped by SIGTERM and resumed.

Each kitl runs as a child process (tests.vm.test_faults.Kitl), so the admission slots in
the cache directory are contended by real processes; the figures each test measured are
printed ("faults:" lines, visible with -s) and quoted in docs/reliability.md.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.kernel.cache import Cache
from harness.kernel.resolve import Kernels
from harness.run.compile import compile_object, kernel_btf, vmlinux_h
from tests.vm.test_faults import STEADY, Kitl, figures, leftovers, records, wait_records

VERIFY_DATA = Path(__file__).parents[1] / "data" / "verify"


def results(run_dir: Path) -> dict[str, dict[str, Any]]:
    body = json.loads((run_dir / "results.json").read_text())
    return {c["id"]: c for c in body["cells"]}


def test_two_kitl_processes_side_by_side_both_finish_correctly(tmp_path: Path) -> None:
    """Each guest of a one-worker run has two vCPUs: on two cores the second process waits
    for the first's guest to go instead of starving both, and both pass."""
    runs = {kernel: tmp_path / kernel for kernel in ("debian-6.1", "debian-7.2")}
    procs = {
        kernel: Kitl.start(
            ["run", str(STEADY), "--kernel", kernel, "--output", str(run)], tmp_path, kernel
        )
        for kernel, run in runs.items()
    }
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + 1800
    while len(statuses) < len(procs):  # each one's end time as it ends, not in turn
        assert time.monotonic() < deadline, "kitl hung"
        for kernel, kitl in procs.items():
            if kernel not in statuses and kitl.proc.poll() is not None:
                statuses[kernel] = kitl.wait()
        time.sleep(0.2)
    texts = {kernel: kitl.text() for kernel, kitl in procs.items()}
    assert statuses == {"debian-6.1": 0, "debian-7.2": 0}, texts
    for kernel, run in runs.items():
        outcomes = {c["outcome"] for c in results(run).values()}
        assert outcomes == {"PASSED"}, (kernel, texts[kernel])
        assert len(results(run)) == 6
        assert not leftovers(procs[kernel].token)
    # how many slots it waits for depends on what else of the suite holds one right now
    waited = [k for k, text in texts.items() if re.search(r"waiting for [12] guest slots?", text)]
    assert len(waited) == 1, texts  # exactly one had to wait: admission, not overcommit
    assert "waiting for guest slots)" in texts[waited[0]]  # and its boot line says how long
    figures(
        "side_by_side",
        wall_s={k: round(p.ended - p.started, 1) for k, p in procs.items()},
        waited=waited,
    )


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.fixture
def cpu_hog() -> Iterator[int]:
    """A busy loop on every core for the length of the test."""
    cores = multiprocessing.cpu_count()
    context = multiprocessing.get_context("spawn")
    hogs = [context.Process(target=spin, args=(900.0,), daemon=True) for _ in range(cores)]
    for hog in hogs:
        hog.start()
    yield cores
    for hog in hogs:
        hog.terminate()
        hog.join()


def test_a_boot_under_a_cpu_hog_comes_up_late_but_comes_up(cpu_hog: int, tmp_path: Path) -> None:
    kitl = Kitl.start(["boot", "debian-7.2", "--json"], tmp_path, "hogged")
    assert kitl.wait() == 0, kitl.text()
    [boot] = json.loads(kitl.out.read_text())
    assert boot["outcome"] == "PASSED", boot
    assert boot["release"] == boot["expected_release"]
    assert not leftovers(kitl.token)
    figures("cpu_hog", hogs=cpu_hog, boot_s=boot["boot_seconds"], retried=boot["boot_retried"])


def test_a_shard_whose_kernel_did_not_boot_merges_with_its_rerun(tmp_path: Path) -> None:
    """The failed shard: a backstop so short the guest cannot be up (a boot that never
    came), every cell BOOT_FAILED and the reason given once for the kernel.  The rerun
    passes; the merge keeps every real verdict over the failure, in either order, says
    which it kept, and exits 0."""
    failed, rerun = tmp_path / "failed", tmp_path / "rerun"
    args = ["run", str(STEADY), "--kernel", "debian-6.1"]
    broken = Kitl.start([*args, "--boot-timeout", "3", "--output", str(failed)], tmp_path, "f")
    assert broken.wait() == 1, broken.text()
    assert "Traceback" not in broken.text()
    cells = results(failed)
    assert {c["outcome"] for c in cells.values()} == {"BOOT_FAILED"}
    assert all(c["reason"].startswith("not run: debian-6.1 did not boot") for c in cells.values())
    [failure] = json.loads((failed / "results.json").read_text())["run"]["boot_failures"]
    assert "boot timed out after 3s" in failure["reason"]
    assert (failed / failure["console_path"]).is_file()
    summary = (failed / "report" / "summary.md").read_text()
    assert summary.count("boot timed out after 3s") == 1  # once, not once per cell
    assert "debian-6.1: BOOT\\_FAILED (6 cells did not run)" in summary  # the kernel, once

    again = Kitl.start([*args, "--output", str(rerun)], tmp_path, "rerun")
    assert again.wait() == 0, again.text()
    for order in ((failed, rerun), (rerun, failed)):
        merged = tmp_path / f"merged-{order[0].name}"
        merge = Kitl.start(
            ["merge", *map(str, order), "--output", str(merged)], tmp_path, merged.name
        )
        assert merge.wait() == 0, merge.text()
        assert {c["outcome"] for c in results(merged).values()} == {"PASSED"}
        assert "6 cells were in more than one run" in merge.text()
        assert f"kept PASSED from {rerun}, dropped BOOT_FAILED from {failed}" in merge.text()
        body = json.loads((merged / "results.json").read_text())
        assert "boot_failures" not in body["run"]  # no cell of the merge is left unbooted
    figures("merge", failed_shard_s=round(broken.ended - broken.started, 1))


@pytest.fixture(scope="module")
def many_objects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/data/verify's objects, ten copies under other names: 50 programs (30 of them
    loadable, privileged), enough that a SIGTERM after the first result lands mid-run."""
    ks = Kernels.open(Cache.default())
    header = vmlinux_h(kernel_btf(ks.get("debian-7.2")), ks.store.cache)
    out = tmp_path_factory.mktemp("many")
    for source in sorted(VERIFY_DATA.glob("*.bpf.c")):
        built = compile_object(source, header, ks.store.cache)
        for n in range(10):
            shutil.copy(built, out / source.name.replace(".bpf.c", f"{n}.bpf.o"))
    return out


def test_an_interrupted_verify_resumes_with_the_missing_cells_only(
    many_objects: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "verify"
    args = ["verify", str(many_objects), "--kernel", "debian-6.1", "--test-run"]
    expect = ["--expect", str(VERIFY_DATA / "expect.yaml")]  # xdp_oob: rejected, as expected
    first = Kitl.start([*args, *expect, "--output", str(run_dir)], tmp_path, "verify")
    kept = len(wait_records(first, run_dir, 1))
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 128 + signal.SIGTERM, first.text()
    assert f"kitl verify --resume {run_dir}" in first.text()
    kept = len(records(run_dir))
    assert 1 <= kept < 50, "the signal must land mid-run"
    second = Kitl.start([*args, *expect, "--resume", str(run_dir)], tmp_path, "resume")
    assert second.wait() == 0, second.text()
    assert f"{kept} of 50 cells have a result, {50 - kept} to run" in second.text()
    ids = [r["id"] for r in records(run_dir)]
    assert len(ids) == len(set(ids)) == 50, "every program verified exactly once in all"
    assert {c["outcome"] for c in results(run_dir).values()} == {"PASSED"}
    assert not leftovers(second.token)
    figures("verify_resume", kept_before_resume=kept)
