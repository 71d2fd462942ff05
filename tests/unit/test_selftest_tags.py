"""The kernel selftests' test_loader annotations (harness.bpf.btf,
harness.scenario.selftest_tags): decl tags read from the BTF of objects clang compiled
here, in both bpf_misc.h forms, turned into the cases test_loader runs."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from harness.bpf import retcodes
from harness.bpf.btf import BtfError, func_decl_tags
from harness.bpf.elfobj import read_object
from harness.scenario import objects, selftest_tags
from harness.scenario.selftest_tags import Mode, loader_regex, ordered_tags, parse
from harness.scenario.verify_options import VerifyOptions
from tests.unit.test_libbpf_layout import compile_bpf

# The 7.x bpf_misc.h form: "comment:<__COUNTER__>:<tag>"
SOURCE = """\
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#define XSTR(s) STR(s)
#define STR(s) #s
#define __test_tag(tag) __attribute__((btf_decl_tag("comment:" XSTR(__COUNTER__) ":" tag)))
#define __success __test_tag("test_expect_success")
#define __failure __test_tag("test_expect_failure")
#define __failure_unpriv __test_tag("test_expect_failure_unpriv")
#define __msg(m) __test_tag("test_expect_msg=" m)
#define __msg_unpriv(m) __test_tag("test_expect_msg_unpriv=" m)
#define __retval(v) __test_tag("test_retval=" XSTR(v))
#define __log_level(l) __test_tag("test_log_level=" #l)
#define __flag(f) __test_tag("test_prog_flags=" #f)
#define __auxiliary __test_tag("test_auxiliary")
#define __xlated(m) __test_tag("test_expect_xlated=" m)
#define POINTER_VALUE 0xbadcafe

SEC("socket") __success __retval(POINTER_VALUE)
int ok_any(void *ctx) { return 0; }

SEC("socket") __failure __msg("R1 {{[a-z]+}}") __msg("processed") __log_level(2)
__failure_unpriv __msg_unpriv("unpriv says")
int rejected(void *ctx) { return 0; }

SEC("socket") __success __flag(BPF_F_TEST_STATE_FREQ) __flag(!BPF_F_TEST_RND_HI32) __retval(-1)
int flagged(void *ctx) { return -1; }

SEC("socket") __auxiliary
int helper_prog(void *ctx) { return 0; }

SEC("socket") __success __xlated("0: r0 = 0")
int xlated(void *ctx) { return 0; }

SEC("socket")
int plain(void *ctx) { return 0; }

char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "tagged.bpf.c"
    src.write_text(SOURCE)
    return compile_bpf(src, tmp_path_factory.mktemp("obj"))


def test_decl_tags_are_read_from_the_objects_btf(obj: Path) -> None:
    info = read_object(obj)
    tags = dict(info.decl_tags)
    assert set(tags) == {"ok_any", "rejected", "flagged", "helper_prog", "xlated"}
    assert ordered_tags(tags["rejected"]) == [
        "test_expect_failure", "test_expect_msg=R1 {{[a-z]+}}", "test_expect_msg=processed",
        "test_log_level=2", "test_expect_failure_unpriv", "test_expect_msg_unpriv=unpriv says",
    ]  # fmt: skip
    assert selftest_tags.annotated(info)


def test_broken_btf_is_refused_with_a_reason() -> None:
    with pytest.raises(BtfError, match="bad BTF magic"):
        func_decl_tags(struct.pack("<HBBIIIII", 0x1234, 1, 0, 24, 0, 0, 0, 0))
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 12, 12, 1)
    with pytest.raises(BtfError, match="unknown BTF kind 31"):
        func_decl_tags(header + struct.pack("<III", 0, 31 << 24, 0) + b"\0")


def test_specs_follow_test_loaders_rules(obj: Path) -> None:
    info = read_object(obj)
    rejected = parse("rejected", info.tags_of("rejected"))
    assert rejected.priv == Mode(failure=True, messages=(r"R1\ [a-z]+", "processed"))
    assert rejected.unpriv == Mode(failure=True, messages=("unpriv\\ says",))
    assert rejected.log_level == 2
    flagged = parse("flagged", info.tags_of("flagged"))
    assert flagged.flags == ("BPF_F_TEST_STATE_FREQ",)
    assert flagged.testing_flags == ("BPF_F_TEST_REG_INVARIANTS",)  # RND_HI32 cleared
    assert (flagged.priv, flagged.unpriv) == (Mode(retval=-1), None)
    assert parse("helper_prog", info.tags_of("helper_prog")).auxiliary == ("privileged",)
    assert "__xlated" in parse("xlated", info.tags_of("xlated")).skip
    plain = parse("plain", ())
    assert (plain.priv, plain.unpriv) == (Mode(), None)  # privileged success is implied


def test_the_older_tag_form_reads_the_same() -> None:
    old = ("comment:test_expect_failure", "comment:test_expect_msg=12=invalid access",
           "comment:test_expect_msg=13=R0 {{.*}}")  # fmt: skip
    spec = parse("p", old)
    assert spec.priv == Mode(failure=True, messages=(r"invalid\ access", r"R0\ .*"))


def test_loader_messages_become_python_regexes() -> None:
    assert re.search(loader_regex("a.b {{[0-9]+}}(c)"), "x a.b 42(c)")
    assert not re.search(loader_regex("a.b"), "axb")
    assert re.search(loader_regex("{{[[:digit:]]+}}"), "7")
    with pytest.raises(ValueError, match="without"):
        loader_regex("{{open")


def test_cases_run_as_test_loader_runs_them(obj: Path) -> None:
    info = read_object(obj)
    scenario = objects.scenario_for_object(obj, VerifyOptions(annotations=True))
    names = [c.name for c in scenario.cases]
    assert names == ["ok_any", "rejected", "rejected.unprivileged", "flagged", "xlated", "plain"]
    ok_any = scenario.case("ok_any")
    assert ok_any.expect.retval == retcodes.RETVAL_ANY  # POINTER_VALUE: any value
    assert ok_any.drive is not None  # test_run on 64 zero bytes... of a socket filter
    assert ok_any.load.companions == ("helper_prog",)  # the auxiliary program loads too
    assert ok_any.load.log_level == 0
    unpriv = scenario.case("rejected.unprivileged")
    assert (unpriv.load.privilege, unpriv.load.unprivileged_maps_only) == ("unprivileged", True)
    assert unpriv.expect.load == "rejected"
    assert scenario.case("rejected").drive is None  # a failure never runs
    assert scenario.case("xlated").skip.startswith("kitl does not check __xlated")
    assert scenario.case("plain").expect.load == "ok"
    assert selftest_tags.annotated(info)


KSYMS = """\
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
extern int bpf_kfunc_needed(void) __ksym;
extern int bpf_kfunc_optional(void) __ksym __weak;
extern int LINUX_KERNEL_VERSION __kconfig;
SEC("syscall") __attribute__((btf_decl_tag("comment:0:test_expect_success")))
int calls(void *ctx)
{
    if (bpf_kfunc_optional)
        bpf_kfunc_optional();
    return bpf_kfunc_needed() + LINUX_KERNEL_VERSION;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_the_kfuncs_an_object_cannot_load_without_are_each_cases_requirement(
    tmp_path: Path,
) -> None:
    """A selftest object that calls bpf_testmod's kfuncs fails every load on a kernel
    without that module: its cases are SKIPPED naming the kfunc, not failed."""
    src = tmp_path / "ksyms.bpf.c"
    src.write_text(KSYMS)
    obj = compile_bpf(src, tmp_path)
    assert read_object(obj).ksyms == ("bpf_kfunc_needed",)  # not the weak or kconfig ones
    [case] = objects.scenario_for_object(obj, VerifyOptions(annotations=True)).cases
    assert case.requires.kfuncs == ("bpf_kfunc_needed",)


TESTMOD = """\
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#define __failure __attribute__((btf_decl_tag("comment:0:test_expect_failure")))
struct bpf_testmod_ops { int (*test_1)(void); };
SEC("struct_ops/test_1") __failure
int test_1(void *ctx) { return 0; }
SEC(".struct_ops.link") struct bpf_testmod_ops testmod = { .test_1 = (void *)test_1 };
SEC("tp_btf/bpf_testmod_test_tp") __failure
int traced(void *ctx) { return 0; }
SEC("fentry/bpf_testmod:bpf_testmod_fentry") __failure
int entered(void *ctx) { return 0; }
char LICENSE[] SEC("license") = "GPL";
"""


def test_the_struct_ops_types_and_targets_an_object_needs_are_each_cases_requirement(
    tmp_path: Path,
) -> None:
    """The selftests' struct_ops and tracing tests of bpf_testmod fail on a kernel without
    that module ("struct bpf_struct_ops_bpf_testmod_ops is not found in kernel BTF"): their
    cases are SKIPPED naming what the kernel lacks, not failed."""
    src = tmp_path / "testmod_ops.bpf.c"
    src.write_text(TESTMOD)
    obj = compile_bpf(src, tmp_path)
    assert read_object(obj).struct_ops == ("bpf_testmod_ops",)
    scenario = objects.scenario_for_object(obj, VerifyOptions(annotations=True))
    ops = ("bpf_testmod_ops", "struct_ops type bpf_testmod_ops")
    assert scenario.case("test_1").requires.btf_names == (ops,)
    assert scenario.case("traced").requires.btf_names == (
        ops,
        ("btf_trace_bpf_testmod_test_tp", "attach target bpf_testmod_test_tp "
         "(btf_trace_bpf_testmod_test_tp)"),
    )  # fmt: skip
    assert scenario.case("entered").requires.btf_names[1][0] == "bpf_testmod_fentry"
