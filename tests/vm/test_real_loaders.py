"""Loading as real loaders do, on a real kernel: Debian's own xdp-tools objects, whose maps
are pinned by name on a bpffs, and an object written the way bcc's libbpf-tools write theirs
(maps sized and a tracing target set by user space before the load).  Each failure must name
its real cause: the map that was not sized, the target that is missing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from harness.cli.main import main
from tests.vm.objects import compiled

DATA = Path(__file__).parents[1] / "data" / "real-loaders"
XDP_TOOLS = Path("/usr/lib/x86_64-linux-gnu/bpf")  # xdp-tools and libxdp1 (tools/setup.sh)
KERNEL = "debian-6.1"


def cells(run_dir: Path) -> dict[str, dict[str, Any]]:
    body = json.loads((run_dir / "results.json").read_text())
    return {c["id"]: c for c in body["cells"]}


def failures(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {k: c["reason"] for k, c in results.items() if c["outcome"] != "PASSED"}


def _compiled(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/data/real-loaders/NAME.bpf.c compiled against debian-7.2's vmlinux.h."""
    return compiled([DATA / f"{name}.bpf.c"], tmp_path_factory.mktemp(name)) / f"{name}.bpf.o"


@pytest.fixture(scope="module")
def tool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _compiled("tool", tmp_path_factory)


def test_debian_xdp_filter_objects_load_with_maps_pinned_by_name(tmp_path: Path) -> None:
    """Debian's xdp-filter objects pin xdp_stats_map by name: without a bpffs in the guest
    10 of 12 programs failed.  Each cell's pin goes away with it (no leak, no reuse)."""
    objects = sorted(XDP_TOOLS.glob("xdpfilt_*.o"))
    assert len(objects) >= 10, f"{XDP_TOOLS}: tools/setup.sh installs xdp-tools"
    run = tmp_path / "run"
    status = main(["verify", *map(str, objects), "--kernel", KERNEL, "--output", str(run)])
    results = cells(run)
    assert status == 0, failures(results)
    assert len(results) >= len(objects)
    for cell in results.values():  # pinned by name, under libbpf's default root
        assert "/sys/fs/bpf/xdp_stats_map" in cell["observed"]["load"]["pinned"]
    unpinned = tmp_path / "unpinned"
    argv = ["verify", str(objects[0]), "--kernel", KERNEL, "--no-pinning"]
    assert main([*argv, "--output", str(unpinned)]) == 0
    assert all("pinned" not in c["observed"]["load"] for c in cells(unpinned).values())


def test_a_tool_object_loads_once_sized_and_retargeted(tool: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["verify", str(tool), "--kernel", KERNEL, "--prog", "count_reads", "--prog",
            "stack_of_reads", "--prog", "sock_len"]  # fmt: skip
    assert main([*argv, "--output", str(run)]) == 1
    results = cells(run)
    # veristat's fixups size the maps; the placeholder target is the one failure
    assert set(failures(results)) == {f"tool::count_reads[{KERNEL}-default]"}
    missing = results[f"tool::count_reads[{KERNEL}-default]"]
    assert missing["observed"]["error_class"] == "ATTACH_TARGET_MISSING"
    assert "attach target 'dummy_file_read' of count_reads" in missing["reason"]
    assert str(tool) in missing["observed"]["load"]["libbpf_messages"]  # the user's path
    assert "/run/kitl-" not in missing["observed"]["load"]["libbpf_messages"]
    stacks = results[f"tool::stack_of_reads[{KERNEL}-default]"]["observed"]["notes"]
    assert "map 'counts': max_entries 0 set to 1, as veristat does" in stacks
    assert "map 'stacks': value_size 0 set to 1016 (127 frames)" in stacks

    retargeted = tmp_path / "retargeted"
    target = ["--attach-target", "count_reads=vfs_read"]
    assert main([*argv, *target, "--output", str(retargeted)]) == 0, failures(cells(retargeted))

    unsized = tmp_path / "unsized"
    assert main([*argv, *target, "--no-fixups", "--output", str(unsized)]) == 1
    cell = cells(unsized)[f"tool::stack_of_reads[{KERNEL}-default]"]
    assert cell["observed"]["error_class"] == "MAP_CREATE_FAILED"
    # the first map libbpf creates, named with its type
    assert re.search(r"map '(counts|stacks)' \((hash|stack_trace)\) is not sized", cell["reason"])

    sized = tmp_path / "sized"
    sizes = ["--map", "counts:max_entries=64", "--map", "stacks:max_entries=64,value_size=1016"]
    status = main([*argv, *target, "--no-fixups", *sizes, "--output", str(sized)])
    assert status == 0, failures(cells(sized))


def test_an_unprivileged_map_failure_is_a_permission_failure_naming_the_map(
    tool: Path, tmp_path: Path
) -> None:
    """A cgroup_skb program an unprivileged user may load, in an object whose other maps
    (a stack-trace map, socket storage) need capabilities: not UNSUPPORTED_MAP_TYPE."""
    run = tmp_path / "run"
    argv = ["verify", str(tool), "--kernel", KERNEL, "--prog", "sk_mark"]
    assert main([*argv, "--privilege", "both", "--output", str(run)]) == 1
    results = cells(run)
    assert results[f"tool::sk_mark[{KERNEL}-default]"]["outcome"] == "PASSED"
    unprivileged = results[f"tool::sk_mark.unprivileged[{KERNEL}-default]"]
    assert unprivileged["observed"]["error_class"] == "PERMISSION"
    assert "cannot be created by an unprivileged loader" in unprivileged["reason"]


@pytest.fixture(scope="module")
def tailcalls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _compiled("tailcalls", tmp_path_factory)


def test_tail_call_slots_load_with_their_programs_and_run(tailcalls: Path, tmp_path: Path) -> None:
    """libbpf fills a prog array's static slots at load time: loaded alone, every program
    of such an object failed ("failed to initialize slot [0]")."""
    run = tmp_path / "run"
    argv = ["verify", str(tailcalls), "--kernel", KERNEL, "--test-run"]
    assert main([*argv, "--output", str(run)]) == 1  # `unrelated` is rejected
    results = cells(run)
    assert set(failures(results)) == {f"tailcalls::unrelated[{KERNEL}-default]"}
    dispatch = results[f"tailcalls::dispatch[{KERNEL}-default]"]["observed"]
    assert dispatch["load"]["companions"] == ["stage_pass", "stage_drop"]
    assert dispatch["test_run"]["retval"] == 2  # slot 0: stage_pass, XDP_PASS
    second = tmp_path / "second"
    status = main([*argv, "--prog", "dispatch", "--global", "stage=1", "--output", str(second)])
    assert status == 0
    assert (
        cells(second)[f"tailcalls::dispatch[{KERNEL}-default]"]["observed"]["test_run"]["retval"]
        == 1
    )  # slot 1: stage_drop, XDP_DROP

    whole = tmp_path / "whole"
    argv = ["verify", str(tailcalls), "--kernel", KERNEL, "--prog", "dispatch", "--whole-object"]
    assert main([*argv, "--output", str(whole)]) == 1
    cell = cells(whole)[f"tailcalls::dispatch[{KERNEL}-default]"]
    assert cell["reason"].startswith(
        "LOAD_FAILED: the load failed at program 'unrelated', loaded with it: VERIFIER_REJECTED"
    )


def test_privilege_profiles_between_all_capabilities_and_none(
    tool: Path, tailcalls: Path, tmp_path: Path
) -> None:
    """How daemons run: CAP_BPF and CAP_PERFMON without CAP_SYS_ADMIN load a kprobe but not
    XDP, which wants CAP_NET_ADMIN too; each load still test_runs with every capability."""
    run = tmp_path / "run"
    argv = ["verify", str(tool), str(tailcalls), "--kernel", KERNEL, "--prog", "stack_of_reads",
            "--prog", "stage_pass", "--privilege", "bpf,bpf-net", "--test-run"]  # fmt: skip
    assert main([*argv, "--output", str(run)]) == 1
    results = cells(run)

    def cell(name: str) -> dict[str, Any]:
        return results[f"{name}[{KERNEL}-default]"]

    assert set(failures(results)) == {f"tailcalls::stage_pass.bpf[{KERNEL}-default]"}
    assert cell("tailcalls::stage_pass.bpf")["observed"]["error_class"] == "PERMISSION"
    assert cell("tool::stack_of_reads.bpf")["observed"]["load"]["privilege"] == "bpf"
    net = cell("tailcalls::stage_pass.bpf-net")["observed"]
    assert (net["load"]["privilege"], net["test_run"]["retval"]) == ("bpf-net", 2)


def test_map_contents_written_before_test_run_decide_the_verdict(
    tailcalls: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    argv = ["verify", str(tailcalls), "--kernel", KERNEL, "--prog", "configured", "--test-run"]
    assert main([*argv, "--map-set", "settings:0=1", "--output", str(run)]) == 0
    cell = cells(run)[f"tailcalls::configured[{KERNEL}-default]"]["observed"]
    assert cell["test_run"]["retval"] == 1  # XDP_DROP, from the map
    bare = tmp_path / "bare"
    assert main([*argv, "--output", str(bare)]) == 0
    cell = cells(bare)[f"tailcalls::configured[{KERNEL}-default]"]["observed"]
    assert cell["test_run"]["retval"] == 0  # an array's zeroed value: XDP_ABORTED


def test_a_slot_user_space_fills_by_name_takes_the_tail_call(
    tailcalls: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    argv = ["verify", str(tailcalls), "--kernel", KERNEL, "--prog", "dyn_dispatch", "--test-run"]
    filled = ["--tail-call", "dyn_stages:0=stage_drop"]
    assert main([*argv, *filled, "--output", str(run)]) == 0
    cell = cells(run)[f"tailcalls::dyn_dispatch[{KERNEL}-default]"]["observed"]
    assert cell["test_run"]["retval"] == 1  # stage_drop's XDP_DROP, through the slot
    assert "stage_drop" in cell["load"]["companions"]
    empty = tmp_path / "empty"
    assert main([*argv, "--output", str(empty)]) == 0
    cell = cells(empty)[f"tailcalls::dyn_dispatch[{KERNEL}-default]"]["observed"]
    assert cell["test_run"]["retval"] == 0  # XDP_ABORTED: the slot was empty
