"""kitl verify without a VM: objects into in-memory scenarios, options, bulk expectations
turned into per-case overrides (first match wins per kernel and privilege), the pytest
command line."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest

from harness.bpf.causes import explain
from harness.bpf.elfobj import read_object
from harness.cli import requests, runner, verify
from harness.cli.main import main
from harness.errors import UsageError
from harness.scenario import objects, verify_options
from harness.scenario.bulk import parse_expectations
from harness.scenario.verify_options import VerifyOptions
from tests.unit.test_libbpf_layout import compile_bpf

# The programs of tests/data/verify/basic.bpf.c, without vmlinux.h (no kernel needed here).
BASIC = """\
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int xdp_ok(struct xdp_md *ctx) { return XDP_PASS; }
SEC("xdp") int xdp_oob(struct xdp_md *ctx) { return XDP_DROP; }
SEC("socket") int sock_keep(struct __sk_buff *skb) { return skb->len; }
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "basic.bpf.c"
    src.write_text(BASIC)
    return compile_bpf(src, tmp_path_factory.mktemp("obj"))


def test_one_case_per_program_and_privilege(basic: Path) -> None:
    options = VerifyOptions(privileges=("privileged", "unprivileged"), test_run=True)
    scenario = objects.scenario_for_object(basic, options)
    assert scenario.name == "basic"
    names = [c.name for c in scenario.cases]
    assert names == [
        "xdp_ok", "xdp_ok.unprivileged", "xdp_oob", "xdp_oob.unprivileged",
        "sock_keep", "sock_keep.unprivileged",
    ]  # fmt: skip
    ok = scenario.case("xdp_ok")
    assert (ok.prog_type.name, ok.section, ok.load.unprivileged) == ("xdp", "xdp", False)
    assert ok.drive is not None  # --test-run: packet programs get a built packet
    # run after the load with the capabilities back, as the kernel's test_loader does
    assert scenario.case("xdp_ok.unprivileged").drive == scenario.case("xdp_ok").drive
    assert scenario.case("xdp_ok.unprivileged").load.unprivileged


def test_prog_globs_and_load_options(basic: Path) -> None:
    options = VerifyOptions(programs=("xdp_*",), log_level=2, flags=("BPF_F_TEST_RND_HI32",))
    cases = objects.scenario_for_object(basic, options).cases
    assert [c.name for c in cases] == ["xdp_ok", "xdp_oob"]
    assert cases[0].load.log_level == 2
    assert cases[0].load.flags_value == 4


def test_bad_flags_and_configs_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown program load flag 'BPF_F_NOPE'"):
        verify_options.parse_flags("BPF_F_SLEEPABLE,BPF_F_NOPE")
    assert verify_options.parse_config("interp:net.core.bpf_jit_enable=0").sysctl == (
        ("net.core.bpf_jit_enable", "0"),
    )
    with pytest.raises(UsageError, match="expected NAME:SYSCTL=VALUE"):
        verify_options.parse_config("interp")


def test_objects_in_finds_objects_and_refuses_nothing(tmp_path: Path, basic: Path) -> None:
    assert objects.objects_in([basic.parent]) == [basic.resolve()]
    with pytest.raises(UsageError, match="no BPF objects"):
        objects.objects_in([tmp_path])
    with pytest.raises(UsageError, match="no such object file"):
        objects.objects_in([tmp_path / "missing.o"])


BULK = """\
expect:
  - program: xdp_oob
    kernel: "<6.0"
    verdict: rejected
    log: "invalid access to packet"
  - program: "*"
    privilege: unprivileged
    verdict: rejected
    error_class: PERMISSION
  - program: "xdp_*"
    retval: XDP_PASS
"""


def test_bulk_expectations_become_first_match_overrides(basic: Path, tmp_path: Path) -> None:
    bulk = objects.BulkExpectations(parse_expectations(tmp_path / "kitl-verify.yaml", BULK))
    options = VerifyOptions(privileges=("privileged", "unprivileged"))
    scenario = bulk.apply(objects.scenario_for_object(basic, options))
    oob = scenario.case("xdp_oob")
    old, new = oob.expect_for("5.10.0-46-amd64", "default"), oob.expect_for("6.1.0-56", "default")
    assert (old.load, old.log) == ("rejected", ("invalid\\ access\\ to\\ packet",))
    assert (new.load, new.retval) == ("ok", 2)  # the xdp_* entry: XDP_PASS
    assert oob.drive is not None  # a retval is expected: test_run is added
    unpriv = scenario.case("sock_keep.unprivileged").expect_for("6.1.0-56", "default")
    assert (unpriv.load, unpriv.error_class) == ("rejected", "PERMISSION")
    assert scenario.case("sock_keep").expect_for("6.1.0-56", "default").load == "ok"


def test_verify_argv_is_exact(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    verify.add_arguments(parser)
    args = parser.parse_args(
        ["o", "--kernels", "debian-6.1", "--prog", "x*", "--flags", "BPF_F_SLEEPABLE", "-n", "2"]
    )
    request = requests.verify(args)
    workers = runner.workers_for(request.matrix, [])  # -n 2 as given: nothing looked at
    argv = verify.verify_argv(request, [Path("/o/a.o")], tmp_path, workers)
    tail = argv[argv.index("--kitl-verify") :]
    assert tail == [
        "--kitl-verify", "--kitl-lines", "-q", "--no-header", "--tb=no", "-rN",
        "--kitl-output", str(tmp_path),
        "--kitl-accel", "auto", "--kitl-privilege", "privileged",
        "--kitl-kernels", "debian-6.1", "--kitl-prog", "x*", "--kitl-flags", "BPF_F_SLEEPABLE",
        "-n", "2", "--dist", "loadgroup", "/o/a.o",
    ]  # fmt: skip


def test_globals_and_test_run_input_parse() -> None:
    assert verify_options.parse_global("verdict=1") == ("verdict", 1)
    assert verify_options.parse_global(" mask = 0xff ") == ("mask", 255)
    assert verify_options.parse_global("on=true") == ("on", 1)
    with pytest.raises(UsageError, match="expected NAME=VALUE"):
        verify_options.parse_global("1x=2")
    assert verify_options.parse_hex("0a:00 00") == b"\n\0\0"
    with pytest.raises(UsageError, match="not hex bytes"):
        verify_options.parse_hex("zz")


GLOBALS = """\
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
const volatile __u32 verdict = XDP_PASS;
__u64 hits;
SEC("xdp") int xdp_global(struct xdp_md *ctx) { hits++; return verdict; }
char LICENSE[] SEC("license") = "GPL";
"""


def test_the_elf_reader_finds_global_variables(tmp_path: Path) -> None:
    src = tmp_path / "globals.bpf.c"
    src.write_text(GLOBALS)
    info = read_object(compile_bpf(src, tmp_path))
    found = {g.name: (g.section, g.size) for g in info.globals}
    assert found == {"verdict": (".rodata", 4), "hits": (".bss", 8)}


@pytest.mark.parametrize("level", ["99", "-1", "16"])
def test_a_log_level_the_kernel_would_refuse_is_a_usage_error_before_anything_boots(
    level: str,
    basic: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Found by a new user: `--log-level 99` was accepted, booted a guest and failed every
    cell.  Now: exit 2, one line naming the option, and nothing written."""
    monkeypatch.chdir(tmp_path)
    status = main(["verify", str(basic), "--kernel", "debian-6.1", "--log-level", level])
    assert status == 2
    err = capsys.readouterr().err
    assert f"kitl: --log-level {level}: not a verifier log level" in err
    assert not (tmp_path / "runs").exists()
    for good in (0, 1, 5, 15):
        assert verify_options.check_log_level(good) == good


def test_repro_checks_the_log_level_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["repro", str(tmp_path), "s::c[debian-6.1-default]", "--log-level", "32"]) == 2
    assert "kitl: --log-level 32: not a verifier log level" in capsys.readouterr().err


LOADER_SET = """\
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_HASH); __type(key, __u32); __type(value, __u64); } counts
    SEC(".maps");
int limit = 4;
SEC("fentry/dummy_file_read") int trace_read(void *ctx) { return 0; }
SEC("xdp") int xdp_count(struct xdp_md *ctx) { return XDP_PASS; }
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def loader_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An object as bcc's libbpf-tools write them: an unsized map, a placeholder target."""
    src = tmp_path_factory.mktemp("src") / "tool.bpf.c"
    src.write_text(LOADER_SET)
    return compile_bpf(src, tmp_path_factory.mktemp("obj"))


def test_what_a_loader_sets_reaches_each_case(loader_set: Path) -> None:
    parser = argparse.ArgumentParser()
    verify.add_arguments(parser)
    args = parser.parse_args(
        [str(loader_set), "--map", "counts:max_entries=1024,value_size=8", "--attach-target",
         "trace_read=vfs_read", "--global", "limit=9", "--no-fixups", "--no-pinning",
         "--pin-root", "/sys/fs/bpf/tool"]
    )  # fmt: skip
    options = requests.verify(args).options
    objects.check_names([loader_set], options)
    scenario = objects.scenario_for_object(loader_set, options)
    trace, xdp = scenario.case("trace_read").load, scenario.case("xdp_count").load
    assert trace.maps == (("counts", 1024, 8),)
    assert trace.globals == (("limit", 9),)
    assert (trace.attach_target, xdp.attach_target) == ("vfs_read", None)
    assert (trace.fixups, trace.pinning, trace.pin_root) == (False, False, "/sys/fs/bpf/tool")
    argv = verify.verify_argv(requests.verify(args), [loader_set], Path("/run"), 1)
    assert argv[argv.index("--kitl-map") + 1] == "counts:max_entries=1024,value_size=8"
    assert argv[argv.index("--kitl-attach-target") + 1] == "trace_read=vfs_read"
    assert {"--kitl-no-fixups", "--kitl-no-pinning"} <= set(argv)
    assert argv[argv.index("--kitl-pin-root") + 1] == "/sys/fs/bpf/tool"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--map", "count:max_entries=4"], "--map count: no object has a map 'count'"),
        (["--global", "limt=1"], "--global limt: no object has a global variable 'limt'"),
        (["--attach-target", "nope=vfs_read"], "--attach-target nope: no object has a program"),
        (["--attach-target", "xdp_count=vfs_read"], 'SEC("xdp") takes no attach target'),
        (["--map", "counts:max_entries=0"], "expected NAME:max_entries=N"),
        (["--map", "counts:entries=4"], "expected NAME:max_entries=N"),
        (["--attach-target", "trace_read"], "expected PROGRAM=FUNCTION"),
        (["--pin-root", "/tmp/pins"], "not a directory under /sys/fs/bpf"),
    ],
)
def test_names_the_object_lacks_are_usage_errors_before_anything_boots(
    argv: list[str],
    message: str,
    loader_set: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["verify", str(loader_set), "--kernel", "debian-6.1", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "runs").exists()


def test_a_file_that_is_not_a_bpf_object_is_refused_named_and_skipped_found(
    tmp_path: Path,
    basic: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A text file given to kitl verify booted a guest for 62 s and ended LOAD_FAILED."""
    monkeypatch.chdir(tmp_path)
    text = tmp_path / "notes.o"
    text.write_text("not an object\n")
    assert main(["verify", str(text), "--kernel", "debian-6.1"]) == 2
    assert "notes.o: not an ELF file" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    tree = tmp_path / "build"
    tree.mkdir()
    (tree / "host.o").write_bytes(Path("/bin/true").read_bytes()[:4096])  # the host's ELF
    (tree / "basic.bpf.o").write_bytes(basic.read_bytes())
    assert objects.checked_objects([tree]) == [(tree / "basic.bpf.o").resolve()]
    assert "kitl: skipped" in capsys.readouterr().err
    (tree / "basic.bpf.o").unlink()
    with pytest.raises(UsageError, match="no BPF object in"):
        objects.checked_objects([tree])


def test_a_bulk_entry_carries_its_programs_load_settings(loader_set: Path, tmp_path: Path) -> None:
    text = (
        "expect:\n"
        "  - program: trace_read\n    attach_target: vfs_read\n"
        "    maps: {counts: {max_entries: 4096}}\n"
        "  - program: xdp_count\n    attach_target: vfs_read\n"
    )
    bulk = objects.BulkExpectations(parse_expectations(tmp_path / "kitl-verify.yaml", text))
    options = VerifyOptions(maps=(("counts", 8, None),))
    scenario = objects.scenario_for_object(loader_set, options)
    trace = replace(scenario, cases=(scenario.case("trace_read"),))
    load = bulk.apply(trace).case("trace_read").load
    assert (load.attach_target, load.maps) == ("vfs_read", (("counts", 4096, None),))
    refused = r"kitl-verify.yaml:5: attach_target: xdp_count \(xdp\) takes none"
    with pytest.raises(UsageError, match=refused):
        bulk.apply(scenario)


SLOTS = """\
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
int stage_pass(struct xdp_md *ctx);
struct {
    __uint(type, BPF_MAP_TYPE_PROG_ARRAY);
    __uint(max_entries, 2);
    __uint(key_size, sizeof(__u32));
    __array(values, int (void *));
} stages SEC(".maps") = { .values = { [1] = (void *)&stage_pass } };
SEC("xdp") int dispatch(struct xdp_md *ctx) { bpf_tail_call(ctx, &stages, 1); return 0; }
SEC("xdp") int stage_pass(struct xdp_md *ctx) { return XDP_PASS; }
SEC("xdp") int other(struct xdp_md *ctx) { return XDP_PASS; }
char LICENSE[] SEC("license") = "GPL";
"""


def test_programs_in_static_prog_array_slots_are_found_and_whole_object_loads_all(
    tmp_path: Path,
) -> None:
    src = tmp_path / "slots.bpf.c"
    src.write_text(SLOTS)
    obj = compile_bpf(src, tmp_path)
    assert read_object(obj).slot_programs == ("stage_pass",)
    plain = objects.scenario_for_object(obj, VerifyOptions())
    assert plain.case("dispatch").load.companions == ()  # the engine adds the slot programs
    whole = objects.scenario_for_object(obj, VerifyOptions(whole_object=True))
    assert {c.load.companions for c in whole.cases} == {("*",)}


def test_a_companions_failure_names_the_companion() -> None:
    messages = (
        "libbpf: prog 'unrelated': BPF program load failed: Permission denied\n"
        "libbpf: prog 'unrelated': -- BEGIN PROG LOAD LOG --\nR1 invalid mem access 'scalar'\n"
        "processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0\n"
        "-- END PROG LOAD LOG --\nlibbpf: prog 'unrelated': failed to load: -13\n"
    )
    load = {"ok": False, "errno": 13, "log": "", "libbpf_messages": messages,
            "program": "dispatch", "failed_program": "unrelated"}  # fmt: skip
    cause = explain(load)
    assert cause.error_class == "LOAD_FAILED"
    assert cause.message == (
        "the load failed at program 'unrelated', loaded with it: VERIFIER_REJECTED: "
        "R1 invalid mem access 'scalar'"
    )


def test_privilege_profiles_parse_and_name_their_cases(basic: Path) -> None:
    assert verify_options.parse_privileges("both") == ("privileged", "unprivileged")
    assert verify_options.parse_privileges("bpf,bpf-net,bpf") == ("bpf", "bpf-net")
    with pytest.raises(UsageError, match="'root': not a privilege profile"):
        verify_options.parse_privileges("root")
    options = VerifyOptions(privileges=("privileged", "bpf"), programs=("xdp_ok",))
    scenario = objects.scenario_for_object(basic, options)
    assert [(c.name, c.load.privilege) for c in scenario.cases] == [
        ("xdp_ok", "privileged"),
        ("xdp_ok.bpf", "bpf"),
    ]


def test_a_map_a_profile_may_not_create_says_which_profile() -> None:
    load = {"ok": False, "errno": 1, "log": "", "privilege": "bpf",
            "libbpf_messages": "libbpf: map 'm': failed to create: Operation not permitted(-1)\n",
            "failed_map": {"name": "m", "type": 1, "type_name": "hash", "key_size": 4,
                           "value_size": 4, "max_entries": 8, "type_supported": 1}}  # fmt: skip
    cause = explain(load)
    assert cause.error_class == "PERMISSION"
    assert cause.message.startswith(
        "map 'm' (hash) cannot be created by a loader with CAP_BPF and CAP_PERFMON only"
    )


def test_map_values_parse_and_reach_the_cases_of_objects_with_the_map(loader_set: Path) -> None:
    MapValue = verify_options.MapValue
    assert verify_options.parse_map_value("counts:1=0x2a") == MapValue("counts", 1, 42)
    assert verify_options.parse_map_value("counts:-1=hex:0a0b") == ("counts", -1, b"\x0a\x0b", "*")
    assert verify_options.parse_map_value("v_*.bpf.o/arr:0=1") == ("arr", 0, 1, "v_*.bpf.o")
    for bad in ("counts", "counts:1", "counts:x=1", "counts:1=hex:", "bad name:1=1", "/m:0=1"):
        with pytest.raises(UsageError, match=r"expected \[OBJECT/\]NAME:KEY=VALUE"):
            verify_options.parse_map_value(bad)
    options = VerifyOptions(map_values=(MapValue("counts", 1, 42), MapValue("counts", 2, 7)))
    objects.check_names([loader_set], options)
    case = objects.scenario_for_object(loader_set, options).case("xdp_count")
    assert [(m.name, [(e.key, e.value) for e in m.entries]) for m in case.setup_maps] == [
        ("counts", [(1, 42), (2, 7)])
    ]
    with pytest.raises(UsageError, match="--map-set count: no object has a map 'count'"):
        objects.check_names([loader_set], VerifyOptions(map_values=(MapValue("count", 1, 1),)))


def test_a_map_value_for_one_object_leaves_the_others_alone(loader_set: Path) -> None:
    # the selftests fill map_array_48b of verifier_value_ptr_arith only (pre_execution_cb)
    other = verify_options.MapValue("counts", 1, 42, "other_*.o")
    with pytest.raises(UsageError, match=r"no object's file name matches 'other_\*\.o'"):
        objects.check_names([loader_set], VerifyOptions(map_values=(other,)))
    options = VerifyOptions(map_values=(other, other._replace(object=loader_set.name, value=7)))
    case = objects.scenario_for_object(loader_set, options).case("xdp_count")
    assert [[e.value for e in m.entries] for m in case.setup_maps] == [[7]]


def test_a_corpus_table_shows_only_the_programs_that_need_a_look(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2,600 selftest cases printed 2,600 rows; now the unexpected ones and a count."""
    cells = [
        {"scenario": "obj", "case": f"p{i}", "kernel": "debian-7.3", "config": "default",
         "outcome": "FAILED" if i in (3, 70) else "PASSED",
         "observed": {"load": {"ok": i not in (3, 70)}, "error_class": "VERIFIER_REJECTED"}}
        for i in range(100)
    ]  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps({"cells": cells}))
    verify.print_table(tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:3]] == ["obj/p3", "obj/p70"]
    assert "!verifier_rejected" in out[1]
    assert out[3].startswith("(98 more programs as expected on every column: ")
    assert len(out) == 4


def test_a_bulk_entry_sets_its_programs_flags_and_log_level(basic: Path, tmp_path: Path) -> None:
    """A corpus with mixed settings in one run: the entry's flags join --flags, its log
    level replaces --log-level, for the programs it matches only."""
    text = (
        "expect:\n"
        "  - program: xdp_oob\n    flags: [BPF_F_TEST_STATE_FREQ]\n    log_level: 2\n"
        "    verdict: rejected\n"
    )
    bulk = objects.BulkExpectations(parse_expectations(tmp_path / "kitl-verify.yaml", text))
    options = VerifyOptions(flags=("BPF_F_STRICT_ALIGNMENT",))
    scenario = bulk.apply(objects.scenario_for_object(basic, options))
    oob, ok = scenario.case("xdp_oob").load, scenario.case("xdp_ok").load
    assert oob.flags == ("BPF_F_STRICT_ALIGNMENT", "BPF_F_TEST_STATE_FREQ")
    assert (oob.log_level, ok.log_level, ok.flags) == (2, 5, ("BPF_F_STRICT_ALIGNMENT",))


def test_tail_call_slots_parse_and_are_checked_against_the_objects(loader_set: Path) -> None:
    assert verify_options.parse_tail_call("jmp_table:3=stage") == ("jmp_table", 3, "stage")
    for bad in ("jmp_table", "jmp_table:x=stage", "jmp_table:0=", ":0=stage"):
        with pytest.raises(UsageError, match="expected PROG_ARRAY:SLOT=PROGRAM"):
            verify_options.parse_tail_call(bad)
    with pytest.raises(UsageError, match="--tail-call counts: no object has a program 'nope'"):
        objects.check_names([loader_set], VerifyOptions(tail_calls=(("counts", 0, "nope"),)))
    options = VerifyOptions(tail_calls=(("counts", 0, "xdp_count"),))
    case = objects.scenario_for_object(loader_set, options).case("trace_read")
    assert case.tail_calls == (("counts", 0, "xdp_count"),)
