"""Hostile inputs on the host, for real: corrupt BPF objects (empty, cut short, x86-64 from
gcc, random bytes, another machine's ELF) through libbpf, the guest agent, the engine and
`kitl verify`/`kitl check`; hostile names (; $() `` ../ spaces newlines) through every file
name kitl derives; paths escaping a scenario's directory; and no shell anywhere."""

from __future__ import annotations

import ast
import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cli import main as cli
from harness.cli import verify
from harness.errors import UsageError
from harness.guest.libbpf import Libbpf
from harness.guest.libbpf_object import BpfObject
from harness.guest.replies import LoadReply
from harness.kernel.cache import Cache
from harness.outcome import Outcome
from harness.report.render import render_all
from harness.results.record import Observed as ObservedRecord
from harness.results.record import Verifier
from harness.results.rundir import SAFE_NAME_MAX, CellResult, RunDir, safe_name
from harness.results.runs import finalize
from harness.run.compile import compile_object
from harness.run.engine import Engine
from harness.run.judge import Observed, judge
from harness.run.matrix import plan
from harness.scenario import objects
from harness.scenario.expect import Expect
from harness.scenario.loader import check
from harness.scenario.verify_options import VerifyOptions
from harness.vm.agentclient import AgentClient
from tests.fakes import fake_vm
from tests.unit.test_libbpf_layout import compile_bpf

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "harness"
GOOD_SOURCE = """\
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "good.bpf.c"
    src.write_text(GOOD_SOURCE)
    return compile_bpf(src, src.parent)


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory: pytest.TempPathFactory, good: Path) -> dict[str, Path]:
    """One file per kind of damage, each named after it."""
    out = tmp_path_factory.mktemp("corrupt")
    x86_src = out / "x86.c"
    x86_src.write_text("int answer(void) { return 42; }\n")
    subprocess.run(["gcc", "-c", str(x86_src), "-o", str(out / "x86-64.o")], check=True)
    x86_src.unlink()
    data = good.read_bytes()
    riscv = bytearray(data)
    struct.pack_into("<H", riscv, 18, 243)  # e_machine EM_RISCV, the rest a real BPF object
    blobs = {
        "empty": b"",
        "truncated": data[: len(data) // 3],
        "random": random.Random(3).randbytes(4096),
        "elf-magic-then-junk": b"\x7fELF" + random.Random(4).randbytes(4092),
        "wrong-machine": bytes(riscv),
    }
    for name, blob in blobs.items():
        (out / f"{name}.o").write_bytes(blob)
    return {p.stem: p for p in sorted(out.glob("*.o"))}


# --- 3. corrupt BPF objects -------------------------------------------------------------------


def test_libbpf_fails_each_corrupt_object_as_a_load_with_its_own_message(
    corrupt: dict[str, Path],
) -> None:
    """bpf_object__open_file refuses them before any bpf() call, so this runs on the host."""
    lib = Libbpf("libbpf.so.1")
    assert len(corrupt) == 6
    for path in corrupt.values():
        obj, result = BpfObject.load_one(lib, str(path), "xdp_pass")
        assert obj is None
        assert not result.ok
        assert result.errno != 0
        assert result.libbpf_messages.startswith("libbpf: elf: "), path.name
        assert str(path) in result.libbpf_messages


def test_the_guest_agent_answers_every_corrupt_load_and_keeps_serving(
    corrupt: dict[str, Path],
) -> None:
    """The real agent process (as the guest runs it) fed every corrupt object in turn."""
    requests = [
        {"id": i, "op": "load", "args": {"object": str(p), "program": "xdp_pass"}}
        for i, p in enumerate(corrupt.values())
    ]
    requests.append({"id": 99, "op": "ping"})
    proc = subprocess.run(
        [sys.executable, "-u", "-m", "harness.guest.agent"],
        input="".join(json.dumps(r) + "\n" for r in requests),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr  # ended at EOF, not by a crash
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [a["id"] for a in answers] == [r["id"] for r in requests]
    for answer, path in zip(answers, corrupt.values(), strict=False):
        assert answer["ok"], answer  # the call worked; the load failed
        assert "traceback" not in answer
        load = answer["result"]
        assert (load["ok"], load["prog_id"]) == (False, None)
        assert str(path) in load["libbpf_messages"]
        outcome, reason = judge(objects.scenario_for_object(path, VerifyOptions()).cases[0],
                                Expect(), Observed(load=LoadReply.from_wire(load)))  # fmt: skip
        assert outcome is Outcome.LOAD_FAILED
        assert reason.startswith("LOAD_FAILED: elf: ")
    assert answers[-1]["result"]["pid"] > 0


def test_kitl_verify_plans_a_cell_per_corrupt_object_beside_the_good_ones(
    tmp_path: Path, good: Path, corrupt: dict[str, Path]
) -> None:
    mixed = tmp_path / "objects"
    mixed.mkdir()
    (mixed / "good.bpf.o").write_bytes(good.read_bytes())
    for path in corrupt.values():
        (mixed / path.name).write_bytes(path.read_bytes())
    found = objects.objects_in([mixed])
    assert len(found) == 7
    objects.duplicate_names(found)
    scenarios = [objects.scenario_for_object(o, VerifyOptions()) for o in found]
    cells = plan(scenarios, ["k1", "k2"], [], [])
    by_scenario: dict[str, list[str]] = {}
    for c in cells:
        by_scenario.setdefault(c.scenario.name, []).append(c.cell_id)
    assert by_scenario.pop("good") == ["good::xdp_pass[k1-default]", "good::xdp_pass[k2-default]"]
    assert sorted(by_scenario) == sorted(corrupt)
    for name, ids in by_scenario.items():
        assert ids == [f"{name}::object[k1-default]", f"{name}::object[k2-default]"]
    for sc in scenarios:
        if sc.name != "good":  # the reader's own reason travels with the case
            assert sc.cases[0].description.startswith(f"{sc.path}: ")


def test_corrupt_object_cells_run_to_load_failed_with_libbpfs_reason(
    tmp_path: Path,
    corrupt: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The whole cell path (engine, agent, judge, run directory, verify table) with the
    guest played by the host: only corrupt objects, so nothing loads into the host kernel."""
    monkeypatch.setattr(Engine, "guest_object", lambda self, path: str(path))
    run = RunDir(tmp_path / "run", {})
    scenarios = [objects.scenario_for_object(p, VerifyOptions()) for p in corrupt.values()]
    built = {(s.name, o.name): o.path for s in scenarios for o in s.objects if o.path}
    with fake_vm(tmp_path) as vm, AgentClient(vm) as agent:
        engine = Engine(vm, agent, vm.kernel, run, built, cache=Cache(tmp_path / "cache"))
        results = [engine.run_cell(s, s.cases[0], s.configs[0]) for s in scenarios]
    for result, path in zip(results, corrupt.values(), strict=True):
        assert result.outcome is Outcome.LOAD_FAILED, result.reason
        assert result.reason.startswith("LOAD_FAILED: elf: ")
        assert str(path) in result.reason
        assert result.object_file == str(path)
    finalize(run.path, {})
    assert len(json.loads((run.path / "results.json").read_text())["cells"]) == 6
    capsys.readouterr()
    verify.print_table(run.path)
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(rows) == sorted([f"{name}/object", "!load_failed"] for name in corrupt)


def test_a_scenario_naming_a_corrupt_object_is_a_located_usage_error(
    tmp_path: Path, corrupt: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for name, path in corrupt.items():
        (tmp_path / path.name).write_bytes(path.read_bytes())
        scenario = tmp_path / f"{name}.yaml"
        scenario.write_text(
            f"name: s\nobjects:\n  p: {{path: {path.name}}}\n"
            "cases:\n  - {name: c, program: p/xdp_pass, expect: {}}\n"
        )
        with pytest.raises(SystemExit) as info:
            cli.main(["check", str(scenario)])
        assert info.value.code == 2
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith(f"kitl: {scenario}:3:13: objects.p.path: {tmp_path / path.name}: ")


def test_objects_that_cannot_be_read_are_usage_errors_not_hangs(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.o"
    os.mkfifo(fifo)  # reading it would block forever
    for path, message in (
        (fifo, "not a regular file"),
        (Path("/dev/zero"), "not a regular file"),  # would stream forever
        (tmp_path / "gone.o", "cannot read: No such file or directory"),
    ):
        with pytest.raises(UsageError, match=message):
            objects.scenario_for_object(path, VerifyOptions())


# --- 4. hostile names -------------------------------------------------------------------------

HOSTILE = [
    "a;rm -rf ~",
    "$(touch pwned)",
    "`touch pwned`",
    "../../etc/passwd",
    "..",
    ".",
    ".hidden",
    "a b",
    "line\nbreak",
    "tab\tand\rcr",
    "nul\x00byte",
    "esc\x1b[31mred",
    "a/b",
    "a_b",
    "a\\b",
    "-rf",
    "é-unicode",
    "x" * 300,
    "x" * 301,
    "path:/srv/a/b/bzImage",
    "path:/srv/a_b/bzImage",
    "/usr/lib/libbpf.so.1",
]
SAFE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-")


def is_safe_component(name: str) -> bool:
    return (
        0 < len(name) <= 255
        and set(name) <= SAFE_CHARS
        and not name.startswith(".")
        and name not in (".", "..")
    )


def test_safe_names_are_plain_bounded_and_never_collide() -> None:
    names = [safe_name(h) for h in HOSTILE]
    for hostile, name in zip(HOSTILE, names, strict=True):
        assert is_safe_component(name), (hostile, name)
        assert len(name) <= SAFE_NAME_MAX
    assert len(set(names)) == len(HOSTILE), "two hostile names share a file"
    assert safe_name("debian-6.1") == "debian-6.1", "plain names are kept as they are"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.text(max_size=200))
def test_safe_name_properties_hold_for_any_text(a: str, b: str) -> None:
    assert is_safe_component(safe_name(a))
    assert len(safe_name(a)) <= SAFE_NAME_MAX
    if a != b:
        assert safe_name(a) != safe_name(b)


def test_run_directory_files_of_hostile_cells_stay_inside_and_apart(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run", {})
    seen: dict[Path, str] = {}
    for h in HOSTILE:
        cell = CellResult(h, h, h, h, Outcome.FAILED, libbpf=h)
        run.write_verifier_log(cell, f"log of {h!r}\n")
        log = (run.path / cell.log_path).resolve()
        rel = log.relative_to((run.path / "logs").resolve())  # raises if it escaped
        assert len(rel.parts) == 3  # kernel/config/file: no extra levels
        assert all(is_safe_component(p) for p in rel.parts)
        guest = run.guest_file(h, "console").resolve()
        assert guest.parent == (run.path / "guest").resolve()
        assert is_safe_component(guest.name)
        for path in (log, guest):
            assert path not in seen, f"{h!r} and {seen.get(path)!r} share {path}"
            seen[path] = h
    for log in (p for p in seen if p.name.endswith(".verifier.log")):
        assert log.read_text() == f"log of {seen[log]!r}\n", "no log overwrote another"
    assert not list(tmp_path.rglob("pwned"))


def test_report_files_of_hostile_kernels_stay_inside_and_apart(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run", {})
    kernels = ["path:/srv/a/b/bzImage", "path:/srv/a_b/bzImage", "../../x"]
    for k in kernels:
        cell = CellResult("s", "c", k, "default", Outcome.PASSED, program="o/p")
        cell.observed = ObservedRecord.from_json({"load": {"ok": True}})
        cell.verifier = Verifier.from_json({"verified_insns": 3})
        run.append(cell)
    finalize(run.path, {})
    written = render_all(run.path)
    csvs = [p for p in written if p.suffix == ".csv"]
    assert len(csvs) == 3
    for p in written:
        assert p.resolve().parent == (run.path / "report").resolve()
        assert is_safe_component(p.name)


def test_hostile_object_file_names_verify_apart_and_run_nothing(
    tmp_path: Path, good: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    objdir = tmp_path / "objects"
    objdir.mkdir()
    names = ["a;b", "$(touch pwned)", "`touch pwned`", "a b", "a_b", "line\nbreak", "-rf", "é"]
    for n in names:
        (objdir / f"{n}.o").write_bytes(good.read_bytes())
    found = objects.objects_in([objdir])
    objects.duplicate_names(found)
    scenarios = [objects.scenario_for_object(o, VerifyOptions()) for o in found]
    assert len({s.name for s in scenarios}) == len(names)
    assert all(set(s.name) <= SAFE_CHARS and not s.name.startswith(".") for s in scenarios)
    cells = plan(scenarios, ["k"], [], [])
    assert len({c.cell_id for c in cells}) == len(names)
    # the same file name in two directories would write the same cells: refused up front
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a;b.o").write_bytes(good.read_bytes())
    with pytest.raises(UsageError, match=r"a;b\.o and .*other/a;b\.o both verify as"):
        objects.duplicate_names(objects.objects_in([objdir, tmp_path / "other"]))
    assert not list(tmp_path.rglob("pwned"))


def test_a_hostile_source_file_name_compiles_to_a_safe_cache_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    # 255 bytes: the longest name a file can have; clang gets it as one argv element
    stem = "$(touch pwned);`touch pwned` a\nb" + "y" * 200
    source = src_dir / (stem + "z" * (255 - len(stem) - len(".bpf.c")) + ".bpf.c")
    source.write_text(
        "#define SEC(n) __attribute__((section(n), used))\n"
        'SEC("xdp") int xdp_pass(void *ctx) { return 2; }\n'
        'char LICENSE[] SEC("license") = "GPL";\n'
    )
    header = tmp_path / "include" / "vmlinux.h"
    header.parent.mkdir()
    header.write_text("")
    out = compile_object(source, header, Cache(tmp_path / "cache"))
    assert out.parent == tmp_path / "cache" / "objects"
    assert is_safe_component(out.name)
    assert out.stat().st_size > 0
    assert not list(tmp_path.rglob("pwned"))


HOSTILE_SCENARIO = """\
name: "a;rm -rf ~"
objects:
  "$(touch pwned)": {source: progs.bpf.c}
configs:
  "../up": {}
topology:
  netns: ["`touch pwned`"]
cases:
  - name: "a b"
    program: p/xdp_pass
    expect: {}
  - name: "line\\nbreak"
    program: p/xdp_pass
    expect: {}
"""


def test_hostile_names_in_a_scenario_are_refused_at_their_line(tmp_path: Path) -> None:
    (tmp_path / "progs.bpf.c").write_text(GOOD_SOURCE)
    path = tmp_path / "s.yaml"
    path.write_text(HOSTILE_SCENARIO)
    errors = [str(e) for e in check(path)]
    for line, what in ((1, "name"), (3, "objects"), (5, "configs"), (7, "topology.netns")):
        assert any(e.startswith(f"{path}:{line}:") and what in e for e in errors), (line, errors)
    assert any(e.startswith(f"{path}:9:") and "cases[0].name" in e for e in errors), errors
    assert any(e.startswith(f"{path}:12:") and "cases[1].name" in e for e in errors), errors
    assert not list(tmp_path.rglob("pwned"))


# --- 4c. paths that leave the scenario's directory -------------------------------------------


@pytest.fixture
def escaping(tmp_path: Path, good: Path) -> dict[str, Path]:
    """Scenarios in tmp/sub naming an object outside it, three ways."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "outside.o").write_bytes(good.read_bytes())
    (tmp_path / "sub" / "link.o").symlink_to(tmp_path / "outside.o")
    out = {}
    for kind, ref in (
        ("dotdot", "../outside.o"),
        ("absolute", str(tmp_path / "outside.o")),
        ("symlink", "link.o"),
    ):
        path = tmp_path / "sub" / f"{kind}.yaml"
        path.write_text(
            f"name: {kind}\nobjects:\n  p: {{path: '{ref}'}}\n"
            "cases:\n  - {name: c, program: p/xdp_pass, expect: {}}\n"
        )
        out[kind] = path
    return out


@pytest.mark.parametrize("command", [["check"], ["run", "--dry-run"]])
def test_paths_out_of_the_scenario_directory_need_allow_outside(
    escaping: dict[str, Path],
    command: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)  # `run` names its run directory under the cwd
    for path in escaping.values():
        with pytest.raises(SystemExit) as info:
            cli.main([*command, str(path)])
        assert info.value.code == 2
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith(f"kitl: {path}:3:")
        assert f"is outside the scenario's directory {path.parent}" in line
        assert cli.main([*command, "--allow-outside", str(path)]) == 0
        printed = capsys.readouterr().out
        assert (f"{path}: " if command == ["check"] else str(path)) in printed


def test_hostile_paths_name_no_file_and_run_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\nobjects:\n"
        "  a: {path: '$(touch pwned).o'}\n"
        "  b: {source: '`touch pwned`.bpf.c'}\n"
        "  c: {path: 'x.o; touch pwned'}\n"
        "cases:\n  - {name: c, program: a/xdp_pass, expect: {}}\n"
    )
    errors = [str(e) for e in check(path)]
    for line in (3, 4, 5):
        assert any(e.startswith(f"{path}:{line}:") and "no such file" in e for e in errors)
    assert not list(tmp_path.rglob("pwned"))


# --- 4a. no shell anywhere in the harness -----------------------------------------------------

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "/bin/sh", "/bin/bash", "/usr/bin/sh"})
FORBIDDEN = frozenset(
    {
        ("os", "system"),
        ("os", "popen"),
        ("subprocess", "getoutput"),
        ("subprocess", "getstatusoutput"),
        ("asyncio", "create_subprocess_shell"),
    }
)


def shell_uses(source: str, filename: str = "<test>") -> list[str]:
    """Every way `source` hands a string to a shell on the host: shell=<not False>,
    os.system/os.popen/subprocess.getoutput/getstatusoutput (however imported), and argv
    lists `[sh, -c, X]` where X is not a constant string of this module."""
    tree = ast.parse(source, filename)
    modules: dict[str, str] = {}  # local name -> module
    direct: dict[str, tuple[str, str]] = {}  # local name -> (module, function)
    constants: set[str] = set()  # module-level names bound to a literal string
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                modules[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                direct[alias.asname or alias.name] = (node.module, alias.name)
    for stmt in tree.body:
        if (
            isinstance(stmt, ast.Assign)
            and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str)
        ):
            constants.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
    found: list[str] = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "shell" and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value is False
                ):
                    found.append(f"{where}: shell={ast.unparse(kw.value)}")
            func = node.func
            target = None
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                target = (modules.get(func.value.id, func.value.id), func.attr)
            elif isinstance(func, ast.Name):
                target = direct.get(func.id)
            if target in FORBIDDEN:
                found.append(f"{where}: {'.'.join(target)}")
        elif isinstance(node, ast.List | ast.Tuple) and len(node.elts) >= 3:
            first, flag, script = node.elts[:3]
            if (
                isinstance(first, ast.Constant)
                and first.value in SHELLS
                and isinstance(flag, ast.Constant)
                and flag.value == "-c"
                and not (isinstance(script, ast.Constant) and isinstance(script.value, str))
                and not (isinstance(script, ast.Name) and script.id in constants)
            ):
                found.append(f"{where}: [{first.value}, -c, {ast.unparse(script)}]")
    return found


def test_the_scanner_finds_every_kind_of_shell_use() -> None:
    bad = """\
import os, subprocess as sp
from os import system as run_it
from subprocess import getoutput
import asyncio
sp.run("ls", shell=True)
sp.Popen(["ls"], shell=flag)
os.system("ls")
os.popen("ls")
run_it("ls")
getoutput("ls")
sp.getstatusoutput("ls")
asyncio.create_subprocess_shell("ls")
sp.run(["sh", "-c", f"echo {name}"])
sp.run(("bash", "-c", script))
"""
    assert [f.split(": ", 1)[0] for f in shell_uses(bad)] == [f"<test>:{n}" for n in range(5, 15)]
    fine = """\
import subprocess
SCRIPT = "echo hi"
subprocess.run(["ls"], shell=False)
subprocess.run(["sh", "-c", "echo constant"])
subprocess.run(["sh", "-c", SCRIPT])
"""
    assert shell_uses(fine) == []


def test_no_shell_in_the_harness() -> None:
    """Nothing allow-listed: every host process gets an argv list."""
    files = sorted(HARNESS.rglob("*.py"))
    assert len(files) > 40
    found = [u for f in files for u in shell_uses(f.read_text(), str(f.relative_to(REPO)))]
    assert found == []
