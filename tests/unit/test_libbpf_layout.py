"""The libbpf binding on the host, no VM: struct layouts against bpf-facts and the installed
headers, prototypes against libbpf's declarations, the host's libbpf 1.1.2, and listing the
programs of an object compiled here.  Nothing is loaded into the host kernel."""

from __future__ import annotations

import ctypes
import errno
import re
import subprocess
from pathlib import Path

import pytest

from harness.guest import libbpf as lb
from harness.guest import libbpf_object
from harness.guest.libbpf import ENOTSUPP, Libbpf, LibbpfError, describe_errno, errno_name
from harness.guest.libbpf_attach import (
    BpfTcHook,
    BpfTcOpts,
    BpfTcxOpts,
    BpfXdpAttachOpts,
    BpfXdpQueryOpts,
)
from harness.guest.libbpf_load import LoadOptions, ProgramLoad
from harness.guest.libbpf_object import BpfObject, BpfObjectOpenOpts
from harness.guest.libbpf_run import BpfTestRunOpts, TestRun

BPF_SOURCES = Path(__file__).resolve().parent.parent / "data" / "bpf"
LIBBPF_HEADERS = (Path("/usr/include/bpf/libbpf.h"), Path("/usr/include/bpf/bpf.h"))


def compile_bpf(source: Path, out_dir: Path) -> Path:
    """clang -target bpf -g -O2 -c: the way kitl's test objects are built (no vmlinux.h)."""
    out = out_dir / (source.name.removesuffix(".c") + ".o")
    subprocess.run(
        [
            "clang",
            "-target",
            "bpf",
            "-g",
            "-O2",
            "-Wall",
            "-Werror",
            # asm/types.h, which <linux/bpf.h> needs, lives in the multiarch directory.
            "-I/usr/include/x86_64-linux-gnu",
            "-c",
            str(source),
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out


def offsets(struct: type[ctypes.Structure]) -> dict[str, int]:
    return {name: getattr(struct, name).offset for name, *_ in struct._fields_}


# (struct, sizeof, {field: offset}) from docs/bpf-facts.md §1.4, §2 and §3.
FACTS: list[tuple[type[ctypes.Structure], int, dict[str, int]]] = [
    (
        BpfObjectOpenOpts,
        80,
        {
            "sz": 0,
            "object_name": 8,
            "relaxed_maps": 16,
            "pin_root_path": 24,
            "_attach_prog_fd": 32,
            "kconfig": 40,
            "btf_custom_path": 48,
            "kernel_log_buf": 56,
            "kernel_log_size": 64,
            "kernel_log_level": 72,
        },
    ),
    (
        BpfTestRunOpts,
        80,
        {
            "data_in": 8,
            "data_out": 16,
            "data_size_in": 24,
            "data_size_out": 28,
            "ctx_in": 32,
            "ctx_out": 40,
            "ctx_size_in": 48,
            "ctx_size_out": 52,
            "retval": 56,
            "repeat": 60,
            "duration": 64,
            "flags": 68,
            "cpu": 72,
            "batch_size": 76,
        },
    ),
    # The facts also list a bpf_tc_hook "handle"@20: the header has none (it is padding).
    (BpfTcHook, 24, {"ifindex": 8, "attach_point": 12, "parent": 16}),
    (BpfTcOpts, 32, {"prog_fd": 8, "flags": 12, "prog_id": 16, "handle": 20, "priority": 24}),
    (BpfXdpAttachOpts, 16, {"old_prog_fd": 8}),
    (
        BpfXdpQueryOpts,
        48,
        {
            "prog_id": 8,
            "drv_prog_id": 12,
            "hw_prog_id": 16,
            "skb_prog_id": 20,
            "attach_mode": 24,
            "feature_flags": 32,
            "xdp_zc_max_segs": 40,
        },
    ),
    (
        BpfTcxOpts,
        32,
        {"flags": 8, "relative_fd": 12, "relative_id": 16, "expected_revision": 24},
    ),
]


@pytest.mark.parametrize(
    ("struct", "size", "fields"), FACTS, ids=lambda v: getattr(v, "__name__", "")
)
def test_struct_layouts_match_the_facts(
    struct: type[ctypes.Structure], size: int, fields: dict[str, int]
) -> None:
    assert ctypes.sizeof(struct) == size
    assert {k: offsets(struct)[k] for k in fields} == fields


def test_xdp_query_opts_keeps_the_1_1_prefix() -> None:
    # libbpf 1.1.2 knows 32 bytes and accepts the zero tail of the 1.3 layout.
    assert BpfXdpQueryOpts.feature_flags.offset == BpfXdpQueryOpts.SIZE_1_1 == 32


# The structs of the installed libbpf headers (1.1.2): what the compiler says they are.
HEADER_STRUCTS = {
    BpfObjectOpenOpts: "bpf_object_open_opts",
    BpfTestRunOpts: "bpf_test_run_opts",
    BpfTcHook: "bpf_tc_hook",
    BpfTcOpts: "bpf_tc_opts",
    BpfXdpAttachOpts: "bpf_xdp_attach_opts",
}


def test_struct_layouts_match_the_installed_headers(tmp_path: Path) -> None:
    lines = []
    for struct, c_name in HEADER_STRUCTS.items():
        lines.append(f'printf("{c_name} sizeof %zu\\n", sizeof(struct {c_name}));')
        for field in offsets(struct):
            if not field.startswith("_"):
                lines.append(
                    f'printf("{c_name} {field} %zu\\n", offsetof(struct {c_name}, {field}));'
                )
    source = tmp_path / "layout.c"
    source.write_text(
        "#include <stddef.h>\n#include <stdio.h>\n#include <bpf/libbpf.h>\n#include <bpf/bpf.h>\n"
        "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n",
        encoding="utf-8",
    )
    binary = tmp_path / "layout"
    subprocess.run(["clang", "-o", str(binary), str(source)], check=True, capture_output=True)
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    compiled = {tuple(line.split()[:2]): int(line.split()[2]) for line in out.splitlines()}
    ours: dict[tuple[str, ...], int] = {}
    for struct, c_name in HEADER_STRUCTS.items():
        ours[(c_name, "sizeof")] = ctypes.sizeof(struct)
        for field, offset in offsets(struct).items():
            if not field.startswith("_"):
                ours[(c_name, field)] = offset
    assert ours == compiled


def header_declarations() -> str:
    text = "\n".join(h.read_text(encoding="utf-8") for h in LIBBPF_HEADERS)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)


def declared(headers: str, name: str) -> tuple[str, int] | None:
    """(return type, argument count) of `name` as LIBBPF_API declares it, if it does."""
    match = re.search(rf"LIBBPF_API\s+([^;(){{}}]*?)\s*\b{name}\s*\(([^;]*?)\)\s*;", headers)
    if match is None:
        return None
    params = re.sub(r"\([^()]*\)", "", match.group(2)).strip()
    count = 0 if params in ("", "void") else params.count(",") + 1
    return match.group(1).replace("LIBBPF_DEPRECATED_SINCE", "").strip(), count


def test_prototypes_match_libbpf_declarations() -> None:
    headers, lib = header_declarations(), Libbpf()
    checked = 0
    for name, (restype, argtypes, since) in lb._FUNCTIONS.items():
        found = declared(headers, name)
        if since > lib.version:
            assert found is None, name
            assert not lib.has(name), name
            continue
        assert found is not None, f"{name} is not declared in the installed headers"
        return_type, count = found
        assert count == len(argtypes), f"{name}: {count} args declared, {len(argtypes)} bound"
        if "*" in return_type or return_type.endswith("_fn_t"):
            # The default c_int would cut a 64-bit pointer in half.
            assert restype in (ctypes.c_void_p, ctypes.c_char_p), name
        elif return_type == "void":
            assert restype is None, name
        else:
            assert restype not in (ctypes.c_void_p, ctypes.c_char_p, None), name
        function = getattr(lib.c, name)
        assert (function.restype, tuple(function.argtypes)) == (restype, argtypes)
        checked += 1
    assert checked >= 50


def test_host_libbpf_is_bookworms_1_1_with_its_known_gaps() -> None:
    lib = Libbpf()
    assert lib.version == (1, 1)
    assert lib.version_string == "v1.1"
    assert lib.missing_features() == [
        "bpf_prog_get_info_by_fd (1.2)",
        "bpf_prog_load_opts.log_true_size (1.2)",
        "bpf_program__attach_netkit (1.3)",
        "bpf_program__attach_tcx (1.3)",
        "bpf_object_open_opts.bpf_token_path (1.4)",
        "bpf_object__prepare (1.6)",
        "bpf_program__attach_cgroup_opts (1.6)",
        "bpf_tc_hook.qdisc (1.6)",
        "bpf_program__clone (1.8)",
    ]
    assert lib.has("bpf_prog_test_run_opts")
    assert lib.has("bpf_xdp_query")
    assert not lib.has("bpf_program__attach_tcx")
    assert lib.prog_type_name(6) == "xdp"
    assert lib.attach_type_name(46) == "unknown(46)", "1.1.2 predates tcx"
    assert lib.map_type_name(27) == "ringbuf"


def test_instances_share_the_one_print_hook_libbpf_has() -> None:
    first, second = Libbpf(), Libbpf()
    # A second hook would replace the first, and a collected one would leave libbpf calling
    # freed memory: one printer per library, kept for the process.
    assert first._printer is second._printer
    del first
    with pytest.raises(LibbpfError) as caught:
        BpfObject.programs_in(second, "/nonexistent/kitl.bpf.o")
    assert "/nonexistent/kitl.bpf.o" in caught.value.libbpf_messages


def test_programs_in_lists_names_and_sections_without_loading(tmp_path: Path) -> None:
    obj = compile_bpf(BPF_SOURCES / "net.bpf.c", tmp_path)
    assert BpfObject.programs_in(Libbpf(), str(obj)) == [
        ("xdp_count", "xdp"),
        ("xdp_bad", "xdp"),
        ("tc_count", "tc"),
    ]


def test_every_test_program_compiles_and_opens(tmp_path: Path) -> None:
    lib = Libbpf()
    found = {}
    for source in sorted(BPF_SOURCES.glob("*.bpf.c")):
        found[source.name] = BpfObject.programs_in(lib, str(compile_bpf(source, tmp_path)))
    assert found == {
        "cgroup.bpf.c": [("deny_port7", "cgroup/connect4")],
        "kconfig.bpf.c": [("xdp_kconfig", "xdp")],
        "net.bpf.c": [("xdp_count", "xdp"), ("xdp_bad", "xdp"), ("tc_count", "tc")],
        "trace.bpf.c": [
            ("tp_getpid", "tracepoint/syscalls/sys_enter_getpid"),
            ("kprobe_getpid", "ksyscall/getpid"),
        ],
    }


def test_open_failure_carries_libbpfs_message() -> None:
    with pytest.raises(LibbpfError) as caught:
        BpfObject.programs_in(Libbpf(), "/nonexistent/kitl.bpf.o")
    assert caught.value.errno == errno.ENOENT
    assert "failed to open /nonexistent/kitl.bpf.o" in caught.value.libbpf_messages
    assert "ENOENT" in str(caught.value)


def test_errno_names_cover_enotsupp_and_libbpfs_own_codes() -> None:
    assert errno_name(ENOTSUPP) == "ENOTSUPP"
    assert errno_name(errno.EACCES) == "EACCES"
    assert errno_name(4007) == "LIBBPF_ERRNO__VERIFY"
    assert "not supported" in describe_errno(524)
    assert describe_errno(errno.ENOSPC) == "ENOSPC (No space left on device)"


def test_load_options_reject_log_sizes_the_kernel_refuses() -> None:
    assert LoadOptions().log_level == 1 | 4
    with pytest.raises(ValueError, match="log_size"):
        LoadOptions(log_size=64)
    with pytest.raises(ValueError, match="log_size"):
        LoadOptions(log_size=1 << 30)  # one byte over UINT_MAX >> 2
    assert LoadOptions(log_level=0, log_size=0).log_size == 0


def test_log_level_0_log_is_taken_from_libbpfs_message() -> None:
    messages = (
        "libbpf: prog 'p': BPF program load failed: Permission denied\n"
        "libbpf: prog 'p': -- BEGIN PROG LOAD LOG --\n0: (61) r1 = *(u32 *)(r1 +0)\n"
        "invalid access to packet\n-- END PROG LOAD LOG --\nlibbpf: failed to load object\n"
    )
    assert (
        libbpf_object._log_from_messages(messages)
        == "0: (61) r1 = *(u32 *)(r1 +0)\ninvalid access to packet\n"
    )
    assert libbpf_object._log_from_messages("libbpf: nothing\n") == ""


def test_result_types_are_frozen_and_not_collected_by_pytest() -> None:
    run = TestRun(retval=2, duration_ns=10, data_out=b"", ctx_out=b"")
    assert run.ok
    assert TestRun.__test__ is False
    with pytest.raises(AttributeError):
        run.retval = 1  # type: ignore[misc]
    load = ProgramLoad(
        "p", "xdp", "xdp", "xdp", False, ENOTSUPP, "", False, "", 0, 0, None, None, None, None
    )
    assert load.error.startswith("ENOTSUPP")
