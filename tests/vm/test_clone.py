"""Verification from an object prepared once (harness.guest.libbpf_clone, libbpf 1.8's
bpf_program__clone, veristat's way) against the usual load of each program on its own,
in one guest with the libbpf built from Debian's 7.3 source: the same verdict, errno,
figures and verifier error for every program of kitl's test objects and of Debian's
xdp-tools objects (code nobody here wrote)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.bpf.verifier_log import parse_log
from harness.kernel.libbpf_build import libbpf_for
from harness.kernel.resolve import Kernels
from tests.unit.test_libbpf_layout import BPF_SOURCES, compile_bpf
from tests.vm.conftest import VmPool

XDP_TOOLS = sorted(Path("/usr/lib/x86_64-linux-gnu/bpf").glob("*.o"))
GUEST = """
import dataclasses, json, sys
from harness.guest.libbpf import Libbpf
from harness.guest.libbpf_clone import PreparedObject
from harness.guest.libbpf_load import LoadOptions
from harness.guest.libbpf_object import BpfObject
lib, out = Libbpf(sys.argv[1]), []
opts = LoadOptions(log_failures_only=True, pinning=False)
level0 = LoadOptions(log_level=0, pinning=False)  # --log-level 0, the annotations' default
def both(path, name, opts, prepared):
    obj, alone = BpfObject.load_one(lib, path, name, opts)
    if obj is not None:
        obj.close()
    cloned = prepared.load(name, opts) if prepared is not None else None
    return dataclasses.asdict(alone), cloned and dataclasses.asdict(cloned)
for path in sys.argv[2:]:
    prepared = PreparedObject.open(lib, path, opts)
    for name, _ in BpfObject.programs_in(lib, path):
        alone, cloned = both(path, name, opts, prepared)
        entry = {"object": path, "alone": alone, "cloned": cloned}
        if not alone["ok"]:
            entry["alone0"], entry["cloned0"] = both(path, name, level0, prepared)
        out.append(entry)
    if prepared is not None:
        prepared.close()
print(json.dumps(out))
"""
SAME = ("ok", "errno", "verified_insns", "insn_cnt", "prog_type", "attach_type", "xlated_len")


@pytest.fixture(scope="module", params=["debian-6.1", "debian-7.3"])
def loads(
    request: pytest.FixtureRequest, vm_pool: VmPool, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    name: str = request.param
    ours = tmp_path_factory.mktemp(f"clone-{name}")
    objects = [compile_bpf(s, ours) for s in sorted(BPF_SOURCES.glob("*.bpf.c"))]
    library = libbpf_for("debian-7.3", Kernels.open()).path  # the guest sees the host's files
    _, vm = vm_pool.get(name)
    remote = f"/tmp/kitl-clone-{name}"
    assert vm.run(["mkdir", "-p", remote], timeout=60).ok
    for obj in objects:
        vm.channel.put(obj.read_bytes(), f"{remote}/{obj.name}")
    paths = [f"{remote}/{o.name}" for o in objects] + [str(o) for o in XDP_TOOLS]
    result = vm.run([sys.executable, "-c", GUEST, str(library), *paths], timeout=1200)
    assert result.ok, result.stderr[-4000:]
    found: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def test_a_program_cloned_from_the_prepared_object_verifies_as_one_loaded_alone(
    loads: list[dict[str, Any]],
) -> None:
    cloned = [entry for entry in loads if entry["cloned"] is not None]
    assert len(cloned) >= 0.9 * len(loads), "most objects can be prepared whole"
    assert len({e["object"] for e in cloned}) >= 10
    for entry in cloned:
        alone, clone = entry["alone"], entry["cloned"]
        where = f"{entry['object']}:{alone['program']}"
        assert (clone["clone"], alone["clone"]) == (True, False), where
        assert {k: clone[k] for k in SAME} == {k: alone[k] for k in SAME}, where
        ours, theirs = (parse_log(x["stats_log"] or x["log"]) for x in (clone, alone))
        assert (ours.stats.insns, ours.stats.total_states, ours.stats.peak_states) == (
            theirs.stats.insns,
            theirs.stats.total_states,
            theirs.stats.peak_states,
        ), where
        if not alone["ok"]:  # reloaded for its whole log when the verifier ran; same error
            reloads = (clone["attempts"], clone["log_level"])
            assert reloads == (alone["attempts"], alone["log_level"]), where
            assert reloads == ((2, 5) if alone["stats_log"].strip() else (1, 4)), where
            assert parse_log(clone["log"]).error == parse_log(alone["log"]).error, where


def test_at_log_level_0_a_cloned_failure_has_the_log_of_one_loaded_alone(
    loads: list[dict[str, Any]],
) -> None:
    # libbpf retries a level-0 failure at level 1; a clone must be given a buffer for it
    failed = [e for e in loads if e["cloned"] is not None and "alone0" in e]
    assert failed, "the objects hold rejected programs"
    for entry in failed:
        alone, clone = entry["alone0"], entry["cloned0"]
        where = f"{entry['object']}:{alone['program']}"
        assert (clone["ok"], clone["errno"]) == (alone["ok"], alone["errno"]), where
        assert parse_log(clone["log"]).error == parse_log(alone["log"]).error, where
        assert bool(clone["log"].strip()) == bool(alone["log"].strip()), where


def test_both_ways_see_failures_and_successes(loads: list[dict[str, Any]]) -> None:
    verdicts = {e["alone"]["ok"] for e in loads if e["cloned"] is not None}
    assert verdicts == {True, False}, "the objects hold rejected programs too"
