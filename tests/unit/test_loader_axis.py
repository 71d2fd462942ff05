"""The libbpf axis without QEMU: the default loader, names as the command line and cells
spell them, a scenario's `libbpf:` list, `when: {libbpf: ...}` overrides and
`requires: {libbpf: ...}`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.kernel import libbpf_build
from harness.kernel.catalog import load_catalog
from harness.run import options
from harness.run.matrix import plan
from harness.scenario.loader import ScenarioError, load_scenario

DATA = Path(__file__).resolve().parents[1] / "data" / "plugin"
CATALOG = Path(__file__).resolve().parents[2] / "kernels" / "catalog.yaml"


def write_scenario(tmp_path: Path, head: str, case_extra: str = "") -> Path:
    """tests/data/plugin's tc scenario with `head` added at the top level and `case_extra`
    added to its one case."""
    shutil.copy(DATA / "progs.bpf.c", tmp_path / "progs.bpf.c")
    path = tmp_path / "s.yaml"
    path.write_text(
        f"name: s\n{head}objects:\n  progs: {{source: progs.bpf.c}}\ncases:\n"
        "  - name: shot\n    program: progs/tc_shot\n"
        "    drive: {test_run: {packet: {ipv4: {src: 10.0.0.1, dst: 10.0.0.2}}}}\n"
        f"    expect: {{retval: TC_ACT_SHOT}}\n{case_extra}"
    )
    return path


def test_the_default_loader_is_the_newest_debian_series_in_the_catalog() -> None:
    catalog = load_catalog(CATALOG)
    newest = max(
        (e for e in catalog.entries if e.debian is not None),
        key=lambda e: tuple(int(n) for n in e.debian.series.split(".")) if e.debian else (),
    )
    assert libbpf_build.default_loader(catalog) == newest.name == "debian-7.3"
    assert libbpf_build.resolved_name("", catalog) == "debian-7.3"
    assert libbpf_build.resolved_name("default", catalog) == "debian-7.3"
    assert libbpf_build.resolved_name("system", catalog) == "system"
    assert libbpf_build.resolved_name("debian-6.1", catalog) == "debian-6.1"


def test_series_compare_numerically_not_as_text() -> None:
    # "6.12" sorts before "6.9" as text; the default must still be 6.12
    assert libbpf_build._series_key("6.12") > libbpf_build._series_key("6.9")


def test_names_round_trip_between_command_line_and_cells() -> None:
    assert libbpf_build.canonical("default") == "" == libbpf_build.DEFAULT
    assert libbpf_build.spelled("") == "default"
    assert options.libbpf_names("") == []
    assert options.libbpf_names("default,system,debian-6.1") == ["", "system", "debian-6.1"]
    assert options.libbpf_option("default,system") == "default,system"
    with pytest.raises(UsageError, match="not default, system, debian-X"):
        options.libbpf_names("/no/such/libbpf.so")


def test_a_scenario_names_its_loaders(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libbpf.so.1").write_bytes(b"\x7fELF")
    path = write_scenario(tmp_path, "libbpf: [default, system, debian-6.1, lib/libbpf.so.1]\n")
    scenario = load_scenario(path)
    so = str((tmp_path / "lib" / "libbpf.so.1").resolve())
    assert scenario.libbpf == ("", "system", "debian-6.1", so)
    cells = plan([scenario], ["debian-7.2"], [], [])
    assert [c.cell_id for c in cells] == [
        "s::shot[debian-7.2-default]",
        f"s::shot[debian-7.2-default-{so}]",
        "s::shot[debian-7.2-default-debian-6.1]",
        "s::shot[debian-7.2-default-system]",
    ]
    # the command line wins over the scenario, as it does for kernels
    assert [c.libbpf for c in plan([scenario], ["debian-7.2"], [], [], ["system"])] == ["system"]


def test_without_libbpf_a_cell_has_the_default_loader_and_no_suffix(tmp_path: Path) -> None:
    cells = plan([load_scenario(write_scenario(tmp_path, ""))], ["debian-6.1"], [], [])
    assert [(c.libbpf, c.cell_id) for c in cells] == [("", "s::shot[debian-6.1-default]")]


@pytest.mark.parametrize(
    ("head", "message"),
    [
        ("libbpf: [missing.so]\n", "s.yaml:2:10: libbpf[0]: no such file 'missing.so'"),
        ("libbpf: [../x.so]\n", "libbpf[0]: '../x.so' is outside the scenario's directory"),
        ("libbpf: []\n", "s.yaml:2:"),
        ("libbpf: [system, system]\n", "s.yaml:2:"),
    ],
)
def test_bad_loader_lists_are_located(tmp_path: Path, head: str, message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(write_scenario(tmp_path, head))
    assert message in str(info.value)


def test_an_override_on_the_libbpf_version(tmp_path: Path) -> None:
    extra = (
        "    overrides:\n"
        "      - when: {libbpf: '<1.3'}\n"
        "        expect: {load: rejected, error_class: UNSUPPORTED_PROG_TYPE}\n"
    )
    case = load_scenario(write_scenario(tmp_path, "", extra)).case("shot")
    old = case.expect_for("6.1.0-56-amd64", "default", "1.1")
    new = case.expect_for("6.1.0-56-amd64", "default", "1.8")
    assert (old.load, old.error_class, old.retval) == ("rejected", "UNSUPPORTED_PROG_TYPE", None)
    assert (new.load, new.retval) == ("ok", 2)
    # an unknown loader version matches no libbpf override
    assert case.expect_for("6.1.0-56-amd64", "default").load == "ok"


def test_requires_libbpf_and_bad_ranges(tmp_path: Path) -> None:
    case = load_scenario(write_scenario(tmp_path, "", "    requires: {libbpf: '>=1.3'}\n")).case(
        "shot"
    )
    assert case.requires.libbpf is not None
    assert case.requires.libbpf.contains((1, 8, 0))
    assert not case.requires.libbpf.contains((1, 1, 0))
    with pytest.raises(ScenarioError) as info:
        load_scenario(write_scenario(tmp_path, "", "    requires: {libbpf: 'soon'}\n"))
    assert "s.yaml:9:24:" in str(info.value)
    assert "requires.libbpf" in str(info.value)
