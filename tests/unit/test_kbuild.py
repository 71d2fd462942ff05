"""Kernels kitl builds, without building: fragments, their merge, the landed-options check,
the cache key, the commands, catalog `build:` entries, and the scenario keys that go with
them (`load: {btf: external}`, `when: {btf: false}`)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.kernel import kbuild
from harness.kernel.catalog import BuildSource, load_catalog
from harness.kernel.store import parse_config
from harness.run.compile import extract_vmlinux
from harness.scenario.loader import load_scenario

KERNELS = Path(__file__).resolve().parents[2] / "kernels"
SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
FRAGMENTS = {
    name: KERNELS / "configs" / f"{name}.config"
    for name in ("kitl-base", "btf-off", "netdevsim", "jit-always-on", "no-bpf-lsm")
}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_fragment_sets_and_unsets_and_skips_comments(tmp_path: Path) -> None:
    fragment = write(
        tmp_path / "f.config",
        '# why\n\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_LSM="lockdown,bpf"\nCONFIG_N=16\n',
    )
    assert kbuild.parse_fragment(fragment) == {
        "CONFIG_A": "y",
        "CONFIG_B": "n",
        "CONFIG_LSM": '"lockdown,bpf"',
        "CONFIG_N": "16",
    }


def test_a_bad_fragment_line_is_located(tmp_path: Path) -> None:
    fragment = write(tmp_path / "f.config", "CONFIG_A=y\nBPF=y\n")
    with pytest.raises(ConfigError) as info:
        kbuild.parse_fragment(fragment)
    assert str(info.value).startswith(f"{fragment}:2: not a config line: 'BPF=y'")


def test_later_fragments_win(tmp_path: Path) -> None:
    first = write(tmp_path / "a.config", "CONFIG_A=y\nCONFIG_B=y\n")
    second = write(tmp_path / "b.config", "# CONFIG_B is not set\nCONFIG_C=m\n")
    assert kbuild.requested([first, second]) == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "m"}


def test_the_landed_check_names_what_did_not_land() -> None:
    final = parse_config(
        'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_LSM="lockdown,bpf"\nCONFIG_C=m\n'
    )
    wanted = {
        "CONFIG_A": "y",  # landed
        "CONFIG_B": "n",  # landed as "is not set"
        "CONFIG_GONE": "n",  # landed: absent is unset
        "CONFIG_LSM": '"lockdown,bpf"',  # landed: quotes compare as the value
        "CONFIG_C": "y",  # kconfig made it a module
        "CONFIG_D": "y",  # a dependency is missing: absent
    }
    assert kbuild.unlanded(wanted, final) == ["CONFIG_C=y (got m)", "CONFIG_D=y (got unset)"]


def test_the_bundled_btf_off_variant_lands_on_a_real_6_12_config() -> None:
    """The base and btf-off fragments against the .config they produced on Debian's 6.12
    source (saved from a real `virtme-configkernel --allnoconfig` run): all landed, the
    desktop parts virtme-ng's configurator adds (ACPI, DRM, sound) are off, and the check
    catches an option that did not land."""
    final = parse_config(
        (Path(__file__).parents[1] / "data" / "kbuild" / "btf-off.config").read_text()
    )
    fragments = kbuild.fragments_of(BuildSource("debian-6.12", (FRAGMENTS["btf-off"],)))
    assert fragments == [FRAGMENTS["kitl-base"], FRAGMENTS["btf-off"]]
    assert kbuild.unlanded(kbuild.requested(fragments), final) == []
    for dropped in ("CONFIG_ACPI", "CONFIG_DRM", "CONFIG_SOUND", "CONFIG_DEBUG_INFO_BTF"):
        assert final.get(dropped, "n") == "n", dropped
    assert final["CONFIG_BPF_SYSCALL"] == "y"
    assert final["CONFIG_DEBUG_INFO"] == "y"  # what pahole makes the external BTF from
    # the base alone asks for kernel BTF, which this config lacks: the check says so
    base_only = kbuild.requested([FRAGMENTS["kitl-base"]])
    assert kbuild.unlanded(base_only, final) == ["CONFIG_DEBUG_INFO_BTF=y (got unset)"]


def test_the_cache_key_follows_source_base_and_fragment_contents(tmp_path: Path) -> None:
    fragment = write(tmp_path / "f.config", "CONFIG_A=y\n")
    spec = BuildSource("debian-6.12", (fragment,))
    key = kbuild.build_key("aa" * 32, spec, [fragment])
    assert key == kbuild.build_key("aa" * 32, spec, [fragment])  # stable
    assert key != kbuild.build_key("bb" * 32, spec, [fragment])  # another source build
    debian = BuildSource("debian-6.12", (fragment,), "debian")
    assert key != kbuild.build_key("aa" * 32, debian, [fragment])
    write(fragment, "CONFIG_A=n\n")
    assert key != kbuild.build_key("aa" * 32, spec, [fragment])  # edited fragment


def test_commands_are_argument_lists(tmp_path: Path) -> None:
    argv = kbuild.configure_argv([tmp_path / "a.config", tmp_path / "b c.config"])
    assert argv[0].endswith("virtme-configkernel")
    assert argv[1:] == [
        "--allnoconfig",
        "--custom",
        str(tmp_path / "a.config"),
        "--custom",
        str(tmp_path / "b c.config"),
    ]
    assert kbuild.make_argv(tmp_path, 2, "bzImage", "modules") == [
        "make",
        "-C",
        str(tmp_path),
        "-j2",
        "bzImage",
        "modules",
    ]
    assert kbuild.pahole_argv(tmp_path / "vmlinux", tmp_path / "out.btf") == [
        "pahole",
        f"--btf_encode_detached={tmp_path / 'out.btf'}",
        str(tmp_path / "vmlinux"),
    ]


def test_the_catalog_has_the_four_bundled_variants() -> None:
    catalog = load_catalog(KERNELS / "catalog.yaml")
    builds = {e.name: e.build for e in catalog.entries if e.build is not None}
    assert {name: (b.source, b.fragments, b.base) for name, b in builds.items()} == {
        f"debian-6.12-{variant}": ("debian-6.12", (FRAGMENTS[variant],), "virtme")
        for variant in ("btf-off", "netdevsim", "jit-always-on", "no-bpf-lsm")
    }
    assert not any(catalog.get(name).default for name in builds)  # never built by surprise
    for fragment in FRAGMENTS.values():
        kbuild.parse_fragment(fragment)  # every bundled fragment parses


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("build: {source: debian-6.12, fragments: [nope.config]}", "no such config fragment"),
        ("build: {source: debian-6.12, base: mine}", "build.base must be virtme or debian"),
        ("build: {fragments: []}", "build.source must name a Debian catalog kernel"),
        ("build: {source: x, flavour: y}", "unknown key build.flavour"),
        (
            "build: {source: debian-6.12}\n    debian: {series: '6.1', suites: [bookworm]}",
            "give exactly one of 'debian', 'path' or 'build'",
        ),
    ],
)
def test_bad_build_entries_are_located(tmp_path: Path, body: str, message: str) -> None:
    catalog = write(tmp_path / "catalog.yaml", f"kernels:\n  mine:\n    {body}\n")
    with pytest.raises(ConfigError) as info:
        load_catalog(catalog)
    assert message in str(info.value)
    assert str(info.value).startswith(f"{catalog}:")


def test_the_core_btf_scenario_expects_missing_btf_only_without_btf(tmp_path: Path) -> None:
    scenario = load_scenario(SCENARIOS / "core-btf" / "scenario.yaml")
    plain, external = (
        scenario.case("core-needs-kernel-btf"),
        scenario.case("core-with-external-btf"),
    )
    without = plain.expect_for("6.12.117", "default", kernel_btf=False)
    assert (without.load, without.error_class) == ("rejected", "MISSING_BTF")
    assert plain.expect_for("6.12.117", "default", kernel_btf=True).retval == 2
    assert plain.expect_for("6.12.117", "default").retval == 2  # BTF unknown: no override
    assert external.load.external_btf
    assert external.expect_for("6.12.117", "default", kernel_btf=False).retval == 2


def test_btf_external_and_a_custom_path_exclude_each_other(tmp_path: Path) -> None:
    for name in ("core.bpf.c", "scenario.yaml"):
        shutil.copy(SCENARIOS / "core-btf" / name, tmp_path / name)
    write(tmp_path / "v.btf", "")
    path = tmp_path / "scenario.yaml"
    path.write_text(
        path.read_text().replace(
            "load: {btf: external}", "load: {btf: external, btf_custom_path: v.btf}"
        )
    )
    with pytest.raises(ConfigError, match="give btf: external or btf_custom_path, not both"):
        load_scenario(path)


def test_dry_run_commands_name_every_step(tmp_path: Path) -> None:
    spec = BuildSource("debian-6.12", (FRAGMENTS["btf-off"],))
    configure, make, install, pahole = kbuild.commands(spec, tmp_path, jobs=2)
    assert configure == kbuild.configure_argv(kbuild.fragments_of(spec))
    assert make == kbuild.compile_argv(tmp_path, 2, shutil.which("ccache") is not None)
    assert kbuild.compile_argv(tmp_path, 2, False) == [
        *("make", "-C", str(tmp_path), "-j2", "bzImage", "modules")
    ]
    assert kbuild.compile_argv(tmp_path, 2, True) == [
        *("make", "-C", str(tmp_path), "-j2", "CC=ccache gcc", "bzImage", "modules")
    ]
    assert install[-1] == "modules_install"
    assert pahole[0] == "pahole"
    debian = BuildSource("debian-6.12", (), "debian")
    assert kbuild.commands(debian, tmp_path)[0][-1] == "olddefconfig"


def test_a_gzip_bzimage_payload_is_found() -> None:
    """Kernels kitl builds keep allnoconfig's gzip compression (Debian's use xz or zstd):
    their vmlinux is found past the setup code and any stray gzip-looking bytes."""
    elf = b"\x7fELF" + bytes(range(256)) * 64
    image = b"MZ setup code \x1f\x8b\x08 not a stream " + gzip.compress(elf) + b"\0" * 512
    assert extract_vmlinux(image) == elf


def source_deb(tmp_path: Path, text: str) -> Path:
    """A real linux-source-X .deb (dpkg-deb --build) whose tarball holds one file."""
    pkg = tmp_path / f"pkg-{len(list(tmp_path.iterdir()))}"
    tree = pkg / "stage" / "linux-source-6.12"
    tree.mkdir(parents=True)
    (tree / "Makefile").write_text(text)
    src = pkg / "root" / "usr" / "src"
    src.mkdir(parents=True)
    tar = ["tar", "-cJf", str(src / "linux-source-6.12.tar.xz"), "-C", str(pkg / "stage")]
    subprocess.run([*tar, "linux-source-6.12"], check=True)
    control = pkg / "root" / "DEBIAN"
    control.mkdir()
    (control / "control").write_text(
        "Package: linux-source-6.12\nVersion: 1\nArchitecture: all\n"
        "Maintainer: kitl <kitl@example.org>\nDescription: test\n"
    )
    deb = tmp_path / f"linux-source-6.12_{len(text)}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--build", str(pkg / "root"), str(deb)], check=True, capture_output=True
    )
    return deb


def test_the_build_tree_is_unpacked_once_and_kept_for_the_next_variant(tmp_path: Path) -> None:
    """Variants of one source share its tree: a second build finds it (and the objects a
    first build left in it); a tree without its marker (a killed unpack) or of another
    package is unpacked anew."""
    deb = source_deb(tmp_path, "first\n")
    workspace = tmp_path / "builds" / "tree-aaaa"
    log = tmp_path / "build.log"
    tree = kbuild.unpacked_tree(deb, workspace, "aa" * 32, log)
    assert (tree / "Makefile").read_text() == "first\n"
    (tree / "kernel.o").write_text("an object a build left\n")
    again = kbuild.unpacked_tree(deb, workspace, "aa" * 32, log)
    assert again == tree
    assert (again / "kernel.o").is_file()  # kept: the next variant builds on it
    (workspace / kbuild.TREE_MARKER).unlink()  # as a killed unpack leaves it
    fresh = kbuild.unpacked_tree(deb, workspace, "aa" * 32, log)
    assert not (fresh / "kernel.o").exists()
    other = source_deb(tmp_path, "second source\n")
    moved = kbuild.unpacked_tree(other, workspace, "bb" * 32, log)
    assert (moved / "Makefile").read_text() == "second source\n"
    assert (workspace / kbuild.TREE_MARKER).read_text().strip() == "bb" * 32
