"""The program-type table: SEC() lookup, return-code conventions, and UAPI values checked
against the host's kernel headers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from harness.bpf.progtypes import ATTACH_FAMILIES, DRIVES, MAP_TYPES, PROG_LOAD_FLAGS, PROG_TYPES
from harness.bpf.retcodes import CONVENTIONS
from harness.bpf.sections import (
    convention_for,
    match_section,
    prog_type_for_section,
    resolve_retval,
    retval_name,
    section_direction,
    section_target,
)

XDP = PROG_TYPES["xdp"]
TC = PROG_TYPES["sched_cls"]
LSM = PROG_TYPES["lsm"]
HEADERS = (Path("/usr/include/linux/bpf.h"), Path("/usr/include/linux/pkt_cls.h"))


def test_the_types_the_engine_attaches_are_all_there() -> None:
    engine = {
        "xdp": ("xdp",),
        "sched_cls": ("tc", "tcx"),
        "socket_filter": ("socket",),
        "kprobe": ("auto",),
        "tracepoint": ("auto",),
        "raw_tracepoint": ("auto",),
        "tracing": ("auto",),
        "lsm": ("auto",),
        "cgroup_skb": ("cgroup",),
        "cgroup_sock_addr": ("cgroup",),
        "syscall": (),
    }
    for name, families in engine.items():
        assert PROG_TYPES[name].families == families, name
    assert PROG_TYPES["syscall"].test_run
    assert PROG_TYPES["syscall"].drives == ("test_run",)


def test_table_is_consistent() -> None:
    assert len({t.uapi for t in PROG_TYPES.values()}) == len(PROG_TYPES)
    for name, prog_type in PROG_TYPES.items():
        assert prog_type.name == name
        assert set(prog_type.families) <= set(ATTACH_FAMILIES)
        assert set(prog_type.drives) <= set(DRIVES)
        assert prog_type.test_run == ("test_run" in prog_type.drives)
        assert not prog_type.test_run_data or prog_type.test_run
        assert prog_type.sections, name
        for definition in prog_type.sections:
            bare = definition.pattern.rstrip("+")
            assert prog_type_for_section(bare) is prog_type, definition.pattern
            if definition.pattern.endswith("+"):
                assert prog_type_for_section(bare + "/target") is prog_type


@pytest.mark.parametrize(
    ("section", "prog_type"),
    [
        ("xdp", "xdp"),
        ("xdp.frags", "xdp"),
        ("xdp/devmap", "xdp"),
        ("?xdp", "xdp"),
        ("tc", "sched_cls"),
        ("tc/ingress", "sched_cls"),
        ("tc/egress", "sched_cls"),
        ("tcx/ingress", "sched_cls"),
        ("tcx/egress", "sched_cls"),
        ("classifier", "sched_cls"),
        ("action", "sched_act"),
        ("socket", "socket_filter"),
        ("kprobe/do_unlinkat", "kprobe"),
        ("kretprobe/do_unlinkat", "kprobe"),
        ("kprobe.multi/tcp_*", "kprobe"),
        ("ksyscall/openat", "kprobe"),
        ("uprobe//bin/bash:readline", "kprobe"),
        ("tracepoint/syscalls/sys_enter_openat", "tracepoint"),
        ("tp/syscalls/sys_enter_openat", "tracepoint"),
        ("raw_tracepoint/sys_enter", "raw_tracepoint"),
        ("raw_tp/sys_enter", "raw_tracepoint"),
        ("raw_tp.w/bpf_test_finish", "raw_tracepoint_writable"),
        ("tp_btf/sched_switch", "tracing"),
        ("fentry/do_unlinkat", "tracing"),
        ("fexit/do_unlinkat", "tracing"),
        ("fmod_ret/security_file_open", "tracing"),
        ("fentry.s/do_unlinkat", "tracing"),
        ("iter/task", "tracing"),
        ("lsm/file_open", "lsm"),
        ("lsm.s/file_open", "lsm"),
        ("cgroup_skb/ingress", "cgroup_skb"),
        ("cgroup_skb/egress", "cgroup_skb"),
        ("cgroup/skb", "cgroup_skb"),
        ("cgroup/connect4", "cgroup_sock_addr"),
        ("cgroup/connect6", "cgroup_sock_addr"),
        ("cgroup/sendmsg4", "cgroup_sock_addr"),
        ("cgroup/sock", "cgroup_sock"),
        ("cgroup/sock_create", "cgroup_sock"),
        ("cgroup/dev", "cgroup_device"),
        ("syscall", "syscall"),
        ("flow_dissector", "flow_dissector"),
        ("sk_lookup", "sk_lookup"),
        ("struct_ops/tcp_init", "struct_ops"),
        ("netfilter", "netfilter"),
    ],
)
def test_sections_map_as_libbpf_maps_them(section: str, prog_type: str) -> None:
    found = prog_type_for_section(section)
    assert found is not None
    assert found.name == prog_type


@pytest.mark.parametrize(
    "section",
    ["", "xdp/foo", "kprobex/a", "tcx", "tc/both", "socket/x", "cgroup/skbx", "weird_section"],
)
def test_unknown_sections(section: str) -> None:
    assert prog_type_for_section(section) is None


def test_autoload_marker_and_section_details() -> None:
    match = match_section("?tc/ingress")
    assert match is not None
    assert not match.autoload
    assert match.retcodes.name == "tcx"
    assert section_direction("tc/egress") == "egress"
    assert section_direction("cgroup_skb/ingress") == "ingress"
    assert section_direction("tc") is None
    assert section_target("kprobe/do_unlinkat") == "do_unlinkat"
    assert section_target("tp/syscalls/sys_enter_openat") == "syscalls/sys_enter_openat"
    assert section_target("kprobe") == ""
    assert section_target("xdp") == ""
    assert PROG_TYPES["kprobe"].section_prefixes[0] == "kprobe/"


@pytest.mark.parametrize(
    ("prog_type", "section", "value", "expected"),
    [
        ("xdp", "xdp", "XDP_PASS", 2),
        ("xdp", "xdp", "XDP_ABORTED", 0),
        ("xdp", "xdp", 3, 3),
        ("xdp", "xdp.frags", "XDP_REDIRECT", 4),
        ("sched_cls", "tc", "TC_ACT_SHOT", 2),
        ("sched_cls", "tc", "TC_ACT_UNSPEC", -1),
        ("sched_cls", "tc", 0xFFFFFFFF, -1),  # test_run reports a u32
        ("sched_cls", "classifier", "TC_ACT_TRAP", 8),
        ("sched_cls", "tcx/ingress", "TCX_NEXT", -1),
        ("sched_cls", "tcx/egress", "TCX_DROP", 2),
        ("sched_cls", "tc/ingress", "TC_ACT_SHOT", 2),  # tcx sections take TC_ACT_* too
        ("sched_cls", "netkit/peer", "NETKIT_REDIRECT", 7),
        ("cgroup_skb", "cgroup_skb/egress", "CGROUP_ALLOW", 1),
        ("cgroup_skb", "cgroup_skb/egress", "allow", 1),
        ("cgroup_skb", "cgroup_skb/egress", "CGROUP_ALLOW_CN", 3),
        ("cgroup_sock_addr", "cgroup/connect4", "deny", 0),
        ("lsm", "lsm/file_open", "-EPERM", -1),
        ("lsm", "lsm/file_open", "-EACCES", -13),
        ("lsm", "lsm/file_open", 0, 0),
        ("tracing", "fmod_ret/x", "-EINVAL", -22),
        ("socket_filter", "socket", 64, 64),
        ("kprobe", "kprobe/x", 7, 7),
        ("sk_lookup", "sk_lookup", "SK_PASS", 1),
        ("flow_dissector", "flow_dissector", "BPF_FLOW_DISSECTOR_CONTINUE", 129),
        ("xdp", "xdp", "2", 2),
    ],
)
def test_resolve_retval(prog_type: str, section: str, value: str | int, expected: int) -> None:
    assert resolve_retval(PROG_TYPES[prog_type], section, value) == expected


@pytest.mark.parametrize(
    ("prog_type", "section", "value", "message"),
    [
        (
            "xdp",
            "xdp",
            "TC_ACT_SHOT",
            "TC_ACT_SHOT is not an xdp return code; xdp codes: XDP_ABORTED, XDP_DROP, "
            "XDP_PASS, XDP_TX, XDP_REDIRECT; TC_ACT_SHOT is a tc / tcx code",
        ),
        ("xdp", "xdp", "XDP_PAS", "did you mean XDP_PASS?"),
        ("xdp", "xdp", "xdp_pass", "did you mean XDP_PASS?"),
        ("sched_cls", "tc", "TCX_DROP", "TCX_DROP is not a tc return code; tc codes: "),
        ("lsm", "lsm/x", "EPERM", "did you mean -EPERM?"),
        ("lsm", "lsm/x", -5000, "-5000 is outside the range of lsm return values (-4095..1"),
        ("lsm", "lsm/x", 2, "2 is outside the range"),
        ("cgroup_sock_addr", "cgroup/connect4", 2, "outside the range of cgroup return values"),
        ("kprobe", "kprobe/x", "XDP_PASS", "kprobe return values have no names"),
        ("xdp", "xdp", 2**32, "does not fit a 32-bit return value"),
        ("xdp", "xdp", True, "got bool"),
    ],
)
def test_resolve_retval_errors_name_the_valid_codes(
    prog_type: str, section: str, value: str | int, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_retval(PROG_TYPES[prog_type], section, value)


def test_retval_names_for_reports() -> None:
    assert retval_name(XDP, "xdp", 2) == "XDP_PASS"
    assert retval_name(XDP, "xdp", 9) == "9"
    assert retval_name(TC, "tc", 0xFFFFFFFF) == "TC_ACT_UNSPEC"
    assert retval_name(TC, "tcx/ingress", 0xFFFFFFFF) == "TCX_NEXT"
    assert retval_name(TC, "tcx/ingress", 3) == "TC_ACT_PIPE"
    assert retval_name(LSM, "lsm/file_open", -1) == "-EPERM"
    assert retval_name(LSM, "lsm/file_open", 0) == "0"
    assert retval_name(PROG_TYPES["cgroup_skb"], "cgroup/skb", 1) == "CGROUP_ALLOW"


def test_every_code_round_trips_through_its_name() -> None:
    for prog_type in PROG_TYPES.values():
        for definition in prog_type.sections:
            section = definition.pattern.rstrip("+")
            conv = convention_for(prog_type, section)
            for code in conv.codes:
                value = resolve_retval(prog_type, section, code.name)
                first = next(c for c in conv.codes if c.value == value)
                assert retval_name(prog_type, section, value) == first.name
    names = [c.name for c in CONVENTIONS]
    assert len(names) == len(set(names))


def host_values(tmp_path: Path, names: list[str]) -> dict[str, int]:
    text = "".join(h.read_text() for h in HEADERS)
    present = [n for n in names if re.search(rf"\b{n}\b", text)]
    body = "\n".join(f'printf("{n} %lld\\n", (long long)({n}));' for n in present)
    (tmp_path / "v.c").write_text(
        "#include <stdio.h>\n#include <linux/bpf.h>\n#include <linux/pkt_cls.h>\n"
        f"int main(void) {{\n{body}\nreturn 0; }}\n"
    )
    subprocess.run(["cc", "-o", str(tmp_path / "v"), str(tmp_path / "v.c")], check=True)
    out = subprocess.run([str(tmp_path / "v")], check=True, capture_output=True, text=True)
    values = {}
    for line in out.stdout.splitlines():
        name, value = line.split()
        values[name] = int(value)
    assert len(values) >= len(names) // 2  # the headers are not that old
    return values


def test_uapi_values_match_the_host_headers(tmp_path: Path) -> None:
    ours: dict[str, int] = {t.enum_name: t.uapi for t in PROG_TYPES.values()}
    ours |= {f"BPF_MAP_TYPE_{n.upper()}": v for n, v in MAP_TYPES.items()}
    ours |= PROG_LOAD_FLAGS
    for conv in CONVENTIONS:
        ours |= {c.name: c.value for c in conv.codes if c.name.isupper()}
    ours = {k: v for k, v in ours.items() if not k.startswith(("CGROUP_", "TCX_", "NETKIT_"))}
    host = host_values(tmp_path, sorted(ours))
    assert {k: ours[k] for k in host} == host
    assert "BPF_PROG_TYPE_SYSCALL" in host
    assert "XDP_PASS" in host
    assert "TC_ACT_SHOT" in host
