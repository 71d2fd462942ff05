"""Scenario files: good ones load into frozen dataclasses, bad ones fail with the exact
file:line:column their first line (`# error: ...`) names; overrides, path confinement, the
ELF reader on freshly compiled objects, the JSON Schema, and robustness against junk."""

from __future__ import annotations

import copy
import dataclasses
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import yamlsrc
from harness.bpf import elfobj
from harness.errors import ConfigError
from harness.scenario.expect import ERROR_CLASSES, Expect, kernel_version, parse_version_range
from harness.scenario.loader import ScenarioError, check, load_scenario
from harness.scenario.model import (
    AutoAttach,
    CgroupAttach,
    Scenario,
    SocketAttach,
    SyscallDrive,
    TcAttach,
    TcxAttach,
    TestRunDrive,
    TrafficDrive,
    XdpAttach,
)
from harness.scenario.shape import json_schema

DATA = Path(__file__).parent.parent / "data" / "scenarios"
REPO = Path(__file__).parent.parent.parent
BAD = sorted(DATA.glob("bad_*.yaml"))
GOOD = sorted(DATA.glob("good_*.yaml"))
CLANG = ["clang", "-target", "bpf", "-g", "-O2", "-I/usr/include/x86_64-linux-gnu", "-c"]


def compile_bpf(source: Path, out: Path) -> Path:
    subprocess.run([*CLANG, str(source), "-o", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of its own with progs.bpf.c, for scenarios written by tests."""
    path = tmp_path_factory.mktemp("work")
    shutil.copy(DATA / "progs.bpf.c", path)
    return path


@pytest.fixture(scope="module")
def progs_o(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_bpf(DATA / "progs.bpf.c", tmp_path_factory.mktemp("obj") / "progs.bpf.o")


# --- bad files ---------------------------------------------------------------------------


def test_there_are_enough_examples() -> None:
    assert len(BAD) >= 40
    assert len(GOOD) >= 3


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_scenario_first_error_is_exact(path: Path) -> None:
    header = path.read_text().splitlines()[0]
    assert header.startswith("# error: ")
    expected = f"{path}:" + header.removeprefix("# error: ").replace("<dir>", str(DATA.resolve()))
    errors = check(path)
    assert errors, "expected at least one problem"
    assert str(errors[0]) == expected
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value.errors[0]) == expected
    assert (info.value.line, info.value.column) == (errors[0].line, errors[0].column)
    assert isinstance(info.value, ConfigError)
    assert info.value.exit_code == 2


def test_every_problem_is_reported_in_file_order(tmp_path: Path) -> None:
    shutil.copy(DATA / "progs.bpf.c", tmp_path)
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: many\n"
        "objects: {progs: {source: progs.bpf.c}}\n"
        "topology: {netns: [a], veth: [{a: v0@a/10.0.0.1/24, b: v1/10.0.0.2/24}]}\n"
        "cases:\n"
        "  - name: one\n"
        "    program: progs/xdp_pass\n"
        "    attach: {xdp: {dev: v7}}\n"
        "    drive: {traffic: {to: 10.0.0.2, proto: udp, port: 0}}\n"
        "    expect: {retval: TC_ACT_OK, colour: red}\n"
        "  - name: one\n"
        "    program: progs/nope\n"
        "    expect: {}\n"
    )
    errors = check(path)
    lines = [(e.line, e.column) for e in errors]
    assert lines == sorted(lines)
    text = "\n".join(str(e) for e in errors)
    for fragment in (
        ":7:25: cases[0].attach.xdp.dev: no device 'v7'",
        ":8:55: cases[0].drive.traffic.port: integer 0 is out of range 1..65535",
        ":9:22: cases[0].expect.retval: TC_ACT_OK is not an xdp return code",
        ":9:33: cases[0].expect: unknown key 'colour'",
        ":11:14: cases[1].program: object 'progs' (progs.bpf.c) has no program 'nope'",
    ):
        assert fragment in text
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert len(info.value.errors) == len(errors)
    assert f"{len(errors) - 1} more problems in this file" in str(info.value)


# --- good files --------------------------------------------------------------------------


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_good_scenarios_load(path: Path) -> None:
    assert check(path) == []
    scenario = load_scenario(path)
    assert isinstance(scenario, Scenario)
    hash(scenario)  # frozen all the way down
    with pytest.raises(dataclasses.FrozenInstanceError):
        scenario.name = "x"  # type: ignore[misc]


def test_the_brief_scenario() -> None:
    s = load_scenario(DATA / "good_xdp_basics.yaml")
    assert s.name == "xdp-basics"
    assert s.kernels == ("debian-6.1", "debian-7.2")
    assert [c.name for c in s.configs] == ["jit", "interp", "hardened"]
    assert s.config("interp").sysctl == (("net.core.bpf_jit_enable", 0),)
    assert s.object("xdp").source == (DATA / "progs.bpf.c").resolve()
    assert s.object("xdp").cflags == ("-DDEBUG",)
    assert s.topology.netns == ("a", "b")
    assert [(e.ifname, e.ns, e.ip) for e in (s.topology.veth[0].a, s.topology.veth[0].b)] == [
        ("v0", "a", "10.0.0.1"),
        ("v1", "b", "10.0.0.2"),
    ]
    drop = s.case("drop-udp")
    assert (drop.object, drop.program, drop.section, drop.prog_type.name) == (
        "xdp",
        "xdp_drop_udp",
        "xdp",
        "xdp",
    )
    assert drop.expect.retval == 1
    assert drop.retval_name(1) == "XDP_DROP"
    assert drop.expect.map[0].name == "counts"
    assert isinstance(drop.drive, TestRunDrive)
    assert drop.drive.packet is not None
    assert drop.drive.packet.as_dict() == {
        "payload_size": 0,
        "eth": {},
        "ipv4": {"src": "10.0.0.1", "dst": "10.0.0.2"},
        "udp": {"sport": 1234, "dport": 9000},
    }
    raw = s.case("pass-raw")
    assert isinstance(raw.drive, TestRunDrive)
    assert raw.drive.data == bytes.fromhex("02000000000202000000000108004500")
    assert raw.drive.repeat == 10
    traffic = s.case("drop-udp-traffic")
    assert traffic.attach == XdpAttach("v1", "b", "drv")
    assert traffic.drive == TrafficDrive("10.0.0.2", "udp", "a", "b", 9000, 100, 64)


def test_every_family_and_drive() -> None:
    s = load_scenario(DATA / "good_full.yaml")
    by_name = {c.name: c for c in s.cases}
    assert by_name["xdp-offload"].attach == XdpAttach("nsim1p0", "b", "hw")
    assert by_name["tc-shot"].attach == TcAttach("v1", "ingress", "b")
    assert by_name["tcx-pass"].attach == TcxAttach("v1", "ingress", "b")  # from SEC()
    assert by_name["tcx-pass"].expect.retval == 0
    assert by_name["cgroup-egress"].attach == CgroupAttach("kitl/egress", "egress")
    assert by_name["cgroup-egress"].expect.retval == 1  # "allow"
    assert by_name["connect-refused"].attach == CgroupAttach("kitl/full-example/connect-refused")
    assert by_name["socket-filter"].attach == SocketAttach("b")
    assert by_name["unlink-kprobe"].attach == AutoAttach()
    assert by_name["unlink-kprobe"].expect.events == (("events", 1),)
    drive = by_name["connect-refused"].drive
    assert isinstance(drive, SyscallDrive)
    assert drive.argv[0] == "python3"
    assert drive.ns == "a"
    first = by_name["xdp-drop-udp"]
    assert first.requires.helpers == ("bpf_map_lookup_elem",)
    assert first.load.log_size == 1 << 20
    assert first.load.flags_value == 1
    assert first.expect.map[0].entries[1].key == b"\0\0\0\0"
    assert isinstance(first.drive, TestRunDrive)
    assert first.drive.ctx == (("ingress_ifindex", 1), ("rx_queue_index", 0))
    tcx = by_name["tcx-pass"].drive
    assert isinstance(tcx, TestRunDrive)
    assert (tcx.ingress_dev, tcx.ingress_ns) == ("v1", "b")
    assert s.topology.netdevsim[0].ifnames == ("nsim1p0", "nsim1p1")
    assert by_name["syscall-prog"].drive == TestRunDrive(ctx_data=b"\0\0\0\0")


def test_docs_show_the_full_example() -> None:
    docs = (REPO / "docs" / "scenarios.md").read_text()
    example = (DATA / "good_full.yaml").read_text()
    assert example in docs
    for key in ("ingress_dev", "btf_custom_path", "attach_mode", "error_class", "exit_status"):
        assert f"`{key}`" in docs


# --- overrides and versions --------------------------------------------------------------


def test_overrides_apply_by_kernel_and_config() -> None:
    case = load_scenario(DATA / "good_xdp_basics.yaml").case("drop-udp-traffic")
    old = case.expect_for("5.10.0-30-amd64", "interp")
    assert old.rejected
    assert old.log == ("unknown func",)
    assert (old.dropped, old.delivered, old.attach_mode) == (None, None, None)
    assert case.expect_for("5.10.0-30-amd64", "jit") == case.expect
    assert case.expect_for("6.1.0-56-amd64", "interp") == case.expect
    assert case.expect_for("7.2.13+deb14-amd64", "interp") == case.expect


def test_override_accepting_a_base_rejection_drops_its_error_class() -> None:
    case = load_scenario(DATA / "good_full.yaml").case("fentry-needs-btf")
    assert case.expect == Expect()
    rejected = case.expect_for("6.12.1", "interp")
    assert rejected.error_class == "VERIFIER_REJECTED"
    assert rejected.log == ("JIT|trampoline",)


@pytest.mark.parametrize(
    ("release", "version"),
    [
        ("6.1.0-56-amd64", (6, 1, 0)),
        ("7.2.13+deb14-amd64", (7, 2, 13)),
        ("5.10", (5, 10, 0)),
        ("6.18.0-rc3", (6, 18, 0)),
    ],
)
def test_kernel_version(release: str, version: tuple[int, int, int]) -> None:
    assert kernel_version(release) == version


def test_kernel_version_refuses_junk() -> None:
    with pytest.raises(ValueError, match="cannot read a kernel version"):
        kernel_version("linux")


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("<5.17", ["5.16.20", "4.19"], ["5.17", "6.1.0"]),
        (">=6.6", ["6.6", "7.2.13"], ["6.5.99", "5.10"]),
        (">=5.10,<6.1", ["5.10.0", "6.0.9"], ["5.9.9", "6.1.0"]),
        ("==6.1", ["6.1.0", "6.1.192"], ["6.10", "6.2"]),
        ("6.1", ["6.1.5"], ["6.12"]),
        ("!=6.1", ["6.12"], ["6.1.1"]),
        ("<=6.1.5, >6.1", ["6.1.5", "6.1.1"], ["6.1.0", "6.1.6"]),
    ],
)
def test_version_ranges(text: str, inside: list[str], outside: list[str]) -> None:
    vr = parse_version_range(text)
    assert all(vr.contains(kernel_version(v)) for v in inside)
    assert not any(vr.contains(kernel_version(v)) for v in outside)


@pytest.mark.parametrize("text", ["", "~5.17", "<5", ">=a.b", "<5.17,,", "<5.17;>6", "5.17.1.2"])
def test_bad_version_ranges(text: str) -> None:
    with pytest.raises(ValueError, match="clause"):
        parse_version_range(text)


# --- files: confinement, compiled objects ------------------------------------------------


def _write(tmp: Path, yaml_text: str, name: str = "s.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml_text)
    return path


def test_paths_outside_the_scenario_directory_need_allow_outside(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    shutil.copy(DATA / "progs.bpf.c", tmp_path)
    text = (
        "name: out\nobjects: {p: {source: ../progs.bpf.c}}\n"
        "cases: [{name: c, program: p/xdp_pass, expect: {}}]\n"
    )
    path = _write(tmp_path / "sub", text)
    [error] = check(path)
    assert str(error).startswith(f"{path}:2:23: objects.p.source: '../progs.bpf.c' is outside")
    scenario = load_scenario(path, allow_outside=True)
    assert scenario.objects[0].source == tmp_path / "progs.bpf.c"


def test_symlinks_out_of_the_directory_are_refused(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    shutil.copy(DATA / "progs.bpf.c", tmp_path)
    (tmp_path / "sub" / "link.bpf.c").symlink_to(tmp_path / "progs.bpf.c")
    text = (
        "name: out\nobjects: {p: {source: link.bpf.c}}\n"
        "cases: [{name: c, program: p/xdp_pass, expect: {}}]\n"
    )
    [error] = check(_write(tmp_path / "sub", text))
    assert "is outside the scenario's directory" in str(error)


def test_absolute_paths_inside_are_fine(tmp_path: Path) -> None:
    shutil.copy(DATA / "progs.bpf.c", tmp_path)
    text = (
        f"name: abs\nobjects: {{p: {{source: {tmp_path / 'progs.bpf.c'}}}}}\n"
        "cases: [{name: c, program: p/xdp_pass, expect: {}}]\n"
    )
    assert check(_write(tmp_path, text)) == []


def test_compiled_objects_are_read_with_the_elf_reader(tmp_path: Path, progs_o: Path) -> None:
    shutil.copy(progs_o, tmp_path / "progs.bpf.o")
    text = (
        "name: compiled\nobjects: {p: {path: progs.bpf.o}}\n"
        "cases:\n"
        "  - {name: a, program: p/tc_shot, drive: {test_run: {hex: '%s'}}, expect: {retval: 2}}\n"
        "  - {name: b, program: p/missing, expect: {}}\n"
        "  - {name: c, program: p/xdp_pass, expect: {map: {nope: [{key: 0, value: 0}]}}}\n"
    ) % ("00" * 14)
    errors = [str(e) for e in check(_write(tmp_path, text))]
    assert len(errors) == 2
    assert ":5:24: cases[1].program: object 'p' (progs.bpf.o) has no program 'missing'" in errors[0]
    assert ":6:51: cases[2].expect.map: the object has no map 'nope'" in errors[1]
    (tmp_path / "junk.o").write_bytes(b"\x7fELF" + bytes(60))
    junk = text.replace("progs.bpf.o", "junk.o")
    [error] = check(_write(tmp_path, junk))
    assert "objects.p.path:" in str(error)
    assert "junk.o: not a 64-bit ELF file" in str(error)


def test_elf_reader_agrees_with_the_source_scan(progs_o: Path) -> None:
    compiled = elfobj.read_object(progs_o)
    scanned = elfobj.scan_source(DATA / "progs.bpf.c")
    assert [(p.name, p.section) for p in compiled.programs] == [
        (p.name, p.section) for p in scanned.programs
    ]
    assert set(compiled.maps) == set(scanned.maps) == {"counts", "events"}
    assert compiled.license == scanned.license == "GPL"
    assert compiled.compiled
    assert not scanned.compiled
    assert all(p.insns > 0 for p in compiled.programs)
    assert "count" not in compiled.program_names()  # static helper: a subprogram
    assert {".maps", "license", "xdp", "tc", ".BTF"} <= set(compiled.sections)


def test_elf_reader_names_programs_as_libbpf_does(tmp_path: Path) -> None:
    source = tmp_path / "p.bpf.c"
    source.write_text(
        "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
        "int global_sub(int x) { return x + 1; }\n"  # .text: a subprogram, not a program
        'SEC("?xdp") int later(struct xdp_md *ctx) { return global_sub(1); }\n'
        'SEC("xdp") int first(struct xdp_md *ctx) { return XDP_PASS; }\n'
        'SEC("xdp") int second(struct xdp_md *ctx) { return XDP_DROP; }\n'
        'char LICENSE[] SEC("license") = "Dual BSD/GPL";\n'
    )
    info = elfobj.read_object(compile_bpf(source, tmp_path / "p.bpf.o"))
    assert [(p.name, p.section) for p in info.programs] == [
        ("later", "?xdp"),
        ("first", "xdp"),
        ("second", "xdp"),
    ]
    assert info.maps == ()
    assert info.license == "Dual BSD/GPL"


def test_elf_reader_errors(tmp_path: Path, progs_o: Path) -> None:
    data = progs_o.read_bytes()
    cases = {
        b"": "not an ELF file",
        b"#!/bin/sh\n": "not an ELF file",
        data[:40]: "truncated ELF file",
        data[:2000]: "truncated ELF file: section header",
        data[:4] + b"\x01" + data[5:]: "not a 64-bit ELF file",
        data[:5] + b"\x02" + data[6:]: "big-endian ELF",
        data[:18] + (62).to_bytes(2, "little") + data[20:]: "not a BPF object (ELF machine 62",
    }
    for blob, message in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            elfobj.parse_object(blob, "x.o")
    with pytest.raises(ValueError, match="cannot read"):
        elfobj.read_object(tmp_path / "missing.o")


def test_source_scan_handles_macros_comments_and_statics() -> None:
    text = """
    // SEC("xdp") int commented_out(void *c) { return 0; }
    /* SEC("xdp")
       int also_commented(void *c) { return 0; } */
    #define PROG(name) SEC("xdp") int name(struct xdp_md *c)
    SEC("kprobe/do_unlinkat")
    int BPF_KPROBE(do_unlinkat_probe, int dfd)
    { return 0; }
    SEC("fentry/do_unlinkat") int BPF_PROG(fentry_prog, int dfd) { return 0; }
    SEC("tc") static int static_prog(void *c) { return 0; }
    SEC("xdp") __attribute__((noinline)) int attributed(struct xdp_md *c) { return 2; }
    struct bpf_map_def SEC("maps") legacy = { .type = 2 };
    struct { int x; } btf_map SEC(".maps");
    char _license[] SEC("license") = "GPL";
    """
    info = elfobj.scan_source_text(text)
    assert [(p.name, p.section) for p in info.programs] == [
        ("do_unlinkat_probe", "kprobe/do_unlinkat"),
        ("fentry_prog", "fentry/do_unlinkat"),
        ("attributed", "xdp"),
    ]
    assert set(info.maps) == {"legacy", "btf_map"}
    assert info.license == "GPL"


# --- JSON Schema -------------------------------------------------------------------------


def _validate(value: Any, schema: dict[str, Any]) -> list[str]:
    """A subset of JSON Schema 2020-12: the keywords json_schema() uses."""
    problems: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = {
            "object": dict,
            "array": list,
            "string": str,
            "integer": int,
            "boolean": bool,
            "null": type(None),
        }
        allowed = [types] if isinstance(types, str) else types
        fits = any(
            isinstance(value, names[t]) and not (t == "integer" and isinstance(value, bool))
            for t in allowed
        )
        if not fits:
            return [f"{value!r} is not {types}"]
    if "anyOf" in schema and all(_validate(value, s) for s in schema["anyOf"]):
        problems.append(f"{value!r} matches no anyOf branch")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{value!r} not in enum")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        problems.append(f"{value!r} does not match {schema['pattern']}")
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if is_int and not schema.get("minimum", value) <= value <= schema.get("maximum", value):
        problems.append(f"{value} out of range")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            problems.append("array length")
        if schema.get("uniqueItems") and len({repr(v) for v in value}) != len(value):
            problems.append("duplicate items")
        for item in value:
            problems += _validate(item, schema.get("items", {}))
    if isinstance(value, dict):
        size = len(value)
        if not schema.get("minProperties", 0) <= size <= schema.get("maxProperties", size):
            problems.append("object size")
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"missing {key}")
        properties = schema.get("properties", {})
        for key, item in value.items():
            if "propertyNames" in schema:
                problems += _validate(key, schema["propertyNames"])
            if key in properties:
                problems += _validate(item, properties[key])
            elif schema.get("additionalProperties") is False:
                problems.append(f"unknown key {key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                problems += _validate(item, schema["additionalProperties"])
    return problems


def _objects(schema: Any) -> list[dict[str, Any]]:
    if isinstance(schema, list):
        return [o for item in schema for o in _objects(item)]
    if not isinstance(schema, dict):
        return []
    found = [schema] if "properties" in schema else []
    return found + [o for value in schema.values() for o in _objects(value)]


def test_json_schema_structure() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    # objects: too, unless every case runs the user's own loader (the checker's)
    assert schema["required"] == ["name", "cases"]
    case = schema["properties"]["cases"]["items"]
    # and program: or loader: (the checker's)
    assert set(case["required"]) == {"name", "expect"}
    assert case["properties"]["loader"]["required"] == ["command"]
    assert case["properties"]["attach"]["maxProperties"] == 1
    assert set(case["properties"]["attach"]["properties"]) == {
        "xdp",
        "tc",
        "tcx",
        "cgroup",
        "auto",
        "socket",
    }
    expect = case["properties"]["expect"]["properties"]
    assert expect["error_class"]["enum"] == list(ERROR_CLASSES)
    assert all(o["additionalProperties"] is False for o in _objects(schema))
    for pattern in re.findall(r"'pattern': '([^']*)'", repr(schema)):
        re.compile(pattern)


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_json_schema_accepts_the_good_examples(path: Path) -> None:
    assert _validate(yaml.safe_load(path.read_text()), json_schema()) == []


@pytest.mark.parametrize(
    "name",
    [
        "unknown_key",
        "port_range",
        "shell_string",
        "bool_as_int",
        "case_name_path",
        "netns_meta",
        "two_attach",
        "kernels_empty",
        "huge_count",
        "sysctl",
    ],
)
def test_json_schema_rejects_bad_shapes(name: str) -> None:
    doc = yaml.safe_load((DATA / f"bad_{name}.yaml").read_text())
    assert _validate(doc, json_schema()) != []


# --- robustness --------------------------------------------------------------------------


_NULL_OK = {"jit", "interp", "hardened", "ipv4", "ipv6", "udp", "tcp", "cgroup", "socket", "auto"}
_JUNK = ["~", "{}", "[]", "x", "../x", "0", "-1", "true", str(2**80), "[~]", "{x: 1}", "é"]


def test_junk_in_every_place_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every node of the full example replaced by null and by one other junk value; the YAML
    is parsed once (yamlsrc.load is replaced) to keep this fast."""
    real_load = yamlsrc.load
    base = real_load(DATA / "good_full.yaml")
    junk = [real_load(tmp_path / "j.yaml", text) for text in _JUNK]
    documents: list[Any] = []
    monkeypatch.setattr(yamlsrc, "load", lambda path, text=None: documents.pop())
    for i, where in enumerate(_paths(base)):
        for value in (None, junk[i % len(junk)]):
            doc = copy.deepcopy(base)
            if where:
                parent = doc
                for key in where[:-1]:
                    parent = parent[key]
                parent[where[-1]] = copy.deepcopy(value)
            else:
                doc = copy.deepcopy(value)
            documents.append(doc)
            errors = check(DATA / "good_full.yaml")  # must not raise
            assert all(isinstance(e, ConfigError) for e in errors)
            if value is None and where[-1:] and where[-1] not in _NULL_OK:
                assert errors, where


_ATTACHES = [
    None,
    "{xdp: {dev: v1}}",
    "{tc: {dev: v1, direction: ingress}}",
    "{tcx: {dev: v1}}",
    "{cgroup: {}}",
    "{auto: {}}",
    "{socket: {ns: b}}",
]
_DRIVES = [
    None,
    "{test_run: {packet: {ipv4: {}, udp: {}}, ctx: {mark: 1}, ingress_dev: v1}}",
    "{test_run: {ctx_hex: '00'}}",
    "{traffic: {from: a, to: 10.0.0.2, proto: udp, port: 53}}",
    "{syscall: {run: [/bin/true]}}",
]


@pytest.mark.parametrize("attach", _ATTACHES)
def test_every_program_type_with_every_attach_and_drive(workdir: Path, attach: str | None) -> None:
    """No combination crashes the checker; the good ones load."""
    programs = [p.name for p in elfobj.scan_source(DATA / "progs.bpf.c").programs]
    for drive in _DRIVES:
        lines = [
            "name: matrix",
            "objects: {p: {source: progs.bpf.c}}",
            "topology: {netns: [a, b], veth: [{a: v0@a/10.0.0.1/24, b: v1@b/10.0.0.2/24}]}",
            "cases:",
        ]
        for program in programs:
            lines.append(f"  - name: {program.replace('_', '-')}")
            lines.append(f"    program: p/{program}")
            lines += [f"    attach: {attach}"] if attach else []
            lines += [f"    drive: {drive}"] if drive else []
            lines.append("    expect: {}")
        path = workdir / f"matrix-{_ATTACHES.index(attach)}.yaml"
        path.write_text("\n".join(lines) + "\n")
        errors = check(path)
        assert all(isinstance(e, ConfigError) for e in errors)
        assert errors  # some program always misfits (weird_section at least)


def test_lookups_by_name() -> None:
    scenario = load_scenario(DATA / "good_xdp_basics.yaml")
    with pytest.raises(KeyError, match="no case named 'nope'"):
        scenario.case("nope")


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["v1", "a", "10.0.0.2", "progs/xdp_pass", "XDP_PASS", "-EPERM", "..", "0011"]),
)
_KEYS = st.text(max_size=6) | st.sampled_from(["name", "program", "expect", "xdp", "dev", "ns"])
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=8,
)
_BASE = yaml.safe_load((DATA / "good_full.yaml").read_text())


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    )
    for key, value in items:
        out += _paths(value, (*prefix, key))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data(), _VALUES)
def test_any_damage_is_a_config_error(workdir: Path, data: st.DataObject, value: Any) -> None:
    doc = copy.deepcopy(_BASE)
    where = data.draw(st.sampled_from(_paths(doc)))
    if where:
        parent = doc
        for key in where[:-1]:
            parent = parent[key]
        parent[where[-1]] = value
    else:
        doc = value
    path = workdir / "hypothesis.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    errors = check(path)
    assert all(isinstance(e, ConfigError) and e.path == path for e in errors)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 5000 + "]" * 5000, "invalid YAML: nested too deeply"),
        ("name: " + "1" * 5000, "invalid YAML value: Exceeds the limit"),
        ("name: 2001-13-45", "invalid YAML value: month must be in 1..12"),
        ("a: &a [*a]", "invalid YAML: nested too deeply"),
        ("name: !!python/name:os.system ''", "could not determine a constructor"),
        ("\x00", "invalid YAML"),
        ("", "expected a mapping with keys name, objects and cases, got nothing (null)"),
        ("name: é\n", "name: bad value 'é'"),
    ],
)
def test_junk_documents(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "junk.yaml"
    path.write_text(text, encoding="utf-8")
    errors = check(path)
    assert any(message in str(e) for e in errors), errors
    with pytest.raises(ScenarioError):
        load_scenario(path)


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    assert "cannot read" in str(check(tmp_path / "bin.yaml")[0])
    assert str(check(tmp_path / "none.yaml")[0]) == f"{tmp_path}/none.yaml: no such file"


def test_error_classes_match_the_verifier_classifier() -> None:
    source = (REPO / "harness" / "bpf" / "verifier_log.py").read_text()
    body = source[source.index("def classify_failure") :]
    returned = set(re.findall(r'return "([A-Z_]+)"', body))
    assert returned
    assert returned <= set(ERROR_CLASSES)


def test_load_settings_a_real_loader_makes_are_checked_against_the_object(
    tmp_path: Path, progs_o: Path
) -> None:
    shutil.copy(progs_o, tmp_path / "progs.bpf.o")
    text = (
        "name: loader\nobjects: {p: {path: progs.bpf.o}}\n"
        "cases:\n"
        "  - name: a\n    program: p/xdp_pass\n    expect: {}\n"
        "    load: {maps: {counts: {max_entries: 64}}, fixups: false, pinning: 'off',"
        " pin_root: /sys/fs/bpf/kitl}\n"
        "  - name: b\n    program: p/xdp_pass\n    expect: {}\n"
        "    load: {maps: {count: {max_entries: 64}}, attach_target: vfs_read}\n"
    )
    errors = [str(e) for e in check(_write(tmp_path, text))]
    assert len(errors) == 2
    assert "cases[1].load.maps: the object has no map 'count'" in errors[0]
    assert "did you mean 'counts'?" in errors[0]
    assert "cases[1].load.attach_target: an xdp program has no attach target" in errors[1]
    good = load_scenario(_write(tmp_path, text.split("  - name: b", maxsplit=1)[0])).case("a").load
    assert good.maps == (("counts", 64, None),)
    assert (good.fixups, good.pinning, good.pin_root) == (False, False, "/sys/fs/bpf/kitl")


def test_setup_writes_map_contents_the_object_has(tmp_path: Path, progs_o: Path) -> None:
    shutil.copy(progs_o, tmp_path / "progs.bpf.o")
    text = (
        "name: setup\nobjects: {p: {path: progs.bpf.o}}\n"
        "cases:\n"
        "  - name: a\n    program: p/xdp_pass\n    expect: {}\n"
        "    setup: {maps: {counts: [{key: 1, value: 7}, {key: '0x02', value: 'ff00'}]}}\n"
        "  - name: b\n    program: p/xdp_pass\n    expect: {}\n"
        "    setup: {maps: {count: [{key: 1, value: 7}]}}\n"
    )
    [error] = check(_write(tmp_path, text))
    assert "cases[1].setup.maps: the object has no map 'count'" in str(error)
    good = load_scenario(_write(tmp_path, text.split("  - name: b", maxsplit=1)[0])).case("a")
    assert [(e.key, e.value) for e in good.setup_maps[0].entries] == [
        (1, 7),
        (b"\x02", b"\xff\x00"),
    ]


def test_setup_fills_tail_call_slots_with_the_objects_programs(
    tmp_path: Path, progs_o: Path
) -> None:
    shutil.copy(progs_o, tmp_path / "progs.bpf.o")
    text = (
        "name: slots\nobjects: {p: {path: progs.bpf.o}}\n"
        "cases:\n"
        "  - name: a\n    program: p/xdp_pass\n    expect: {}\n"
        "    setup: {tail_calls: {counts: {'0': xdp_pass, '3': tc_shot}}}\n"
        "  - name: b\n    program: p/xdp_pass\n    expect: {}\n"
        "    setup: {tail_calls: {counts: {'0': nope}}}\n"
    )
    [error] = check(_write(tmp_path, text))
    assert "cases[1].setup.tail_calls.counts: the object has no program 'nope'" in str(error)
    good = load_scenario(_write(tmp_path, text.split("  - name: b", maxsplit=1)[0])).case("a")
    assert good.tail_calls == (("counts", 0, "xdp_pass"), ("counts", 3, "tc_shot"))
