"""netdevsim's config transplant (pure), the vng argv, and CLI error handling."""

from __future__ import annotations

import itertools
import json
import shlex
import sys
from pathlib import Path

import pytest

from harness.cli.main import main
from harness.kernel.netdevsim import patch_config_text, toolchain_changes
from harness.kernel.store import Kernel, image_release, parse_config
from harness.vm.machine import BootSpec, VngLauncher
from tests.fakes import FakeLauncher

DEBIAN_CONFIG = """\
CONFIG_CC_VERSION_TEXT="x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0"
CONFIG_CC_IS_GCC=y
CONFIG_GCC_VERSION=140200
CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT=y
CONFIG_CC_HAS_ASM_GOTO_TIED_OUTPUT=y
CONFIG_BPF=y
CONFIG_DEBUG_INFO_BTF=y
"""
HOST_CONFIG = """\
CONFIG_CC_VERSION_TEXT="gcc (Debian 12.2.0-14+deb12u1) 12.2.0"
CONFIG_CC_IS_GCC=y
CONFIG_GCC_VERSION=120200
CONFIG_GCC_ASM_GOTO_OUTPUT_BROKEN=y
CONFIG_BPF=y
# CONFIG_DEBUG_INFO_BTF is not set
"""


def test_only_toolchain_symbols_are_transplanted() -> None:
    changes = toolchain_changes(DEBIAN_CONFIG, HOST_CONFIG)
    assert changes == {
        "CONFIG_CC_HAS_ASM_GOTO_TIED_OUTPUT": None,
        "CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT": None,
        "CONFIG_CC_VERSION_TEXT": '"gcc (Debian 12.2.0-14+deb12u1) 12.2.0"',
        "CONFIG_GCC_ASM_GOTO_OUTPUT_BROKEN": "y",
        "CONFIG_GCC_VERSION": "120200",
    }, "DEBUG_INFO_BTF differs too, but it is ABI, not toolchain: it must stay"


def test_patch_rewrites_config_autoconf_and_header() -> None:
    changes = toolchain_changes(DEBIAN_CONFIG, HOST_CONFIG)
    config = parse_config(patch_config_text(DEBIAN_CONFIG, changes, "config"))
    assert config["CONFIG_GCC_VERSION"] == "120200"
    assert config["CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT"] == "n"
    assert config["CONFIG_DEBUG_INFO_BTF"] == "y"
    auto = patch_config_text(
        "CONFIG_CC_VERSION_TEXT=x86_64-linux-gnu-gcc-14 14.2.0\n"
        "CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT=y\n",
        changes,
        "conf",
    )
    assert "CONFIG_CC_VERSION_TEXT=gcc (Debian 12.2.0-14+deb12u1) 12.2.0" in auto
    assert "MIN_FUNCTION_ALIGNMENT" not in auto
    header = patch_config_text(
        "#define CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT 1\n#define CONFIG_GCC_VERSION 140200\n",
        changes,
        "h",
    )
    assert "#define CONFIG_GCC_VERSION 120200" in header
    assert "#define CONFIG_GCC_ASM_GOTO_OUTPUT_BROKEN 1" in header
    assert "MIN_FUNCTION_ALIGNMENT" not in header


def test_vng_argv_is_tcg_loopback_only_and_has_no_shell_strings(tmp_path: Path) -> None:
    kernel = Kernel(
        name="k",
        release="6.1.0-56-amd64",
        vmlinuz=tmp_path / "vmlinuz",
        modules=None,
        cmdline=("lsm=lockdown,bpf",),
    )
    spec = BootSpec(
        kernel=kernel,
        accel="tcg",
        ssh_port=40123,
        state_dir=tmp_path / "state",
        rw_dirs=(("/run/kitl", tmp_path / "run"),),
    )
    argv = VngLauncher().argv(spec)
    assert argv[1:3] == ["--run", str(tmp_path / "vmlinuz")]
    assert "--disable-kvm" in argv
    assert argv[argv.index("--append") : argv.index("--append") + 2] == [
        "--append",
        "lsm=lockdown,bpf",
    ]
    assert f"--rwdir=/run/kitl={tmp_path / 'run'}" in [
        f"{a}={b}" for a, b in itertools.pairwise(argv)
    ]
    net = next(a for a in argv if a.startswith("--qemu-opts="))
    assert "hostfwd=tcp:127.0.0.1:40123-:22" in net
    assert "restrict=on" in net
    kvm = VngLauncher().argv(BootSpec(kernel=kernel, accel="kvm", ssh_port=1, state_dir=tmp_path))
    assert "--disable-kvm" not in kvm
    assert shlex.split(shlex.join(argv)) == argv


def test_image_release_reads_the_bzimage_header(tmp_path: Path) -> None:
    image = bytearray(0x400)
    image[0x202:0x206] = b"HdrS"
    image[0x20E:0x210] = (0x300 - 0x200).to_bytes(2, "little")
    image[0x300:0x320] = b"6.1.0-56-amd64 (debian-kernel@\0"
    path = tmp_path / "bzImage"
    path.write_bytes(bytes(image))
    assert image_release(path) == "6.1.0-56-amd64"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["kernels", "info", "debian-4.9"], "kitl: unknown kernel 'debian-4.9'"),
        (["exec", "debian-6.1"], "kitl: kitl exec KERNEL -- CMD...: no command given"),
        (
            ["exec", "path:/nonexistent/bzImage", "--", "true"],
            "kitl: path:/nonexistent/bzImage: no such kernel image",
        ),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_bad_catalog_is_reported_with_its_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "catalog.yaml").write_text("kernels:\n  k: {debian: {series: '6.1'}}\n")
    monkeypatch.setenv("KITL_KERNELS_DIR", str(tmp_path))
    assert main(["kernels", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kitl: {tmp_path}/catalog.yaml:2:")
    assert "debian.suites must be a non-empty list" in err


def test_vanished_package_names_it_and_the_relock_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pinned .deb that 404s: clear error, exit 2, nothing half-written in the cache."""
    repo_lock = Path(__file__).parents[2] / "kernels" / "kernels.lock"
    lock = json.loads(repo_lock.read_text())
    entry = lock["kernels"]["debian-6.1"]
    entry["packages"] = [
        dict(p, filename=p["filename"].replace(".deb", "-gone.deb"))
        for p in entry["packages"]
        if p["role"] == "image"
    ]
    kdir = tmp_path / "kernels"
    kdir.mkdir()
    (kdir / "catalog.yaml").write_text(
        "kernels:\n  debian-6.1: {debian: {series: '6.1', suites: [bookworm, bookworm-security]}}\n"
    )
    (kdir / "kernels.lock").write_text(
        json.dumps({"lock_version": 1, "kernels": {"debian-6.1": entry}})
    )
    monkeypatch.setenv("KITL_KERNELS_DIR", str(kdir))
    monkeypatch.setenv("KITL_CACHE", str(tmp_path / "cache"))
    assert main(["kernels", "fetch", "debian-6.1"]) == 2
    err = capsys.readouterr().err
    assert "linux-image-6.1.0-56-amd64-unsigned 6.1.192-2" in err
    assert "no longer in the Debian archive" in err
    assert "kitl kernels lock --update debian-6.1" in err
    leftovers = [
        p.name for p in (tmp_path / "cache").rglob("*") if p.is_file() and "locks" not in p.parts
    ]
    assert leftovers == []


def local_bzimage(tmp_path: Path) -> Path:
    """A file `path:` kernels accept: a bzImage header whose version string says
    6.9.0-local (no kernel in it)."""
    image = bytearray(0x400)
    image[0x202:0x206] = b"HdrS"
    image[0x20E:0x210] = (0x100).to_bytes(2, "little")
    image[0x300:0x310] = b"6.9.0-local \0"
    bz = tmp_path / "bzImage"
    bz.write_bytes(bytes(image))
    return bz


def test_exec_options_may_follow_the_kernel_and_dry_run_prints_vng(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bz = local_bzimage(tmp_path)
    monkeypatch.setenv("KITL_CACHE", str(tmp_path / "cache"))
    argv = ["exec", "--accel", "tcg", f"path:{bz}", "--dry-run", "--timeout", "5", "--", "ls", "-l"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(str(Path(sys.executable).parent / "vng") + " --run " + str(bz))
    assert "--disable-kvm" in out


def test_exec_boots_through_the_launcher_main_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """kitl exec end to end, the guest played by the fake launcher (commands run on the
    host): the command's output is forwarded and its status is kitl's."""
    bz = local_bzimage(tmp_path)
    monkeypatch.setenv("KITL_CACHE", str(tmp_path / "cache"))
    launcher = FakeLauncher(console=[(0.0, "KITL-READY 6.9.0-local\n")])
    argv = ["exec", "--accel", "tcg", f"path:{bz}", "--", "sh", "-c", "echo from-guest; exit 3"]
    assert main(argv, launcher=launcher) == 3
    assert "from-guest" in capsys.readouterr().out
    assert [spec.kernel.vmlinuz for spec in launcher.started] == [bz]
    assert launcher.processes[0].killed, "the guest is torn down after the command"
    argv = ["exec", "--accel", "tcg", f"path:{bz}", "--dry-run", "--", "true"]
    assert main(argv, launcher=launcher) == 0
    assert capsys.readouterr().out.startswith(f"fake-vng --run {bz}")
