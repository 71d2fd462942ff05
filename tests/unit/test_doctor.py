"""kitl doctor's checks on made-up hosts, the distro and the package list, and kitl setup
with fake dpkg, apt-get and answers: nothing here probes or installs anything."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from harness.cli import doctor, hostsetup
from harness.cli.doctor import NEEDS, HostFacts
from harness.cli.hostsetup import SetupRequest
from harness.cli.packages import (
    PACKAGES_FILE,
    Distro,
    install_argv,
    parse_packages,
    read_packages,
)
from harness.errors import ConfigError, UsageError

DEBIAN = Distro.parse('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n')
UBUNTU = Distro.parse("ID=ubuntu\nID_LIKE=debian\nPRETTY_NAME='Ubuntu 24.04 LTS'\n")
ROCKY = Distro.parse('ID="rocky"\nID_LIKE="rhel centos fedora"\nPRETTY_NAME="Rocky Linux 9"\n')
ARCH = Distro.parse("ID=arch\nPRETTY_NAME=Arch Linux\n")
GIB = 1 << 30


def host(**changes: object) -> HostFacts:
    ready = HostFacts(
        distro=DEBIAN,
        root=False,
        user="me",
        tools={n.command: f"{n.command} 1.0" for n in NEEDS},
        kvm_device="usable",
        accel_verdict=("kvm", "KVM probe: guest kernel started after 1.2s (cached verdict)"),
        cache_root=Path("/home/me/.cache/kitl"),
        cache_free=100 * GIB,
        cache_writable=True,
        cached_kernels=("debian-6.1",),
        catalog_kernels=9,
        kitl_version="0.1.0",
        python="3.11.7",
        executable="/venv/bin/python",
    )
    return replace(ready, **changes)  # type: ignore[arg-type]


def by_name(facts: HostFacts) -> dict[str, doctor.Check]:
    return {c.name: c for c in doctor.checks(facts)}


def without(*commands: str) -> dict[str, str | None]:
    return {n.command: None if n.command in commands else "v1" for n in NEEDS}


def test_a_ready_host_passes_every_check() -> None:
    found = doctor.checks(host())
    assert all(c.ok for c in found)
    assert doctor.status(found) == 0
    assert doctor.render(host(), found)[-1] == "ready: every required piece is here"


def test_a_missing_required_tool_fails_with_the_distros_command() -> None:
    facts = host(tools=without("qemu-system-x86_64"))
    qemu = by_name(facts)["qemu"]
    assert (qemu.ok, qemu.required) == (False, True)
    assert qemu.fix == (
        "sudo", "apt-get", "install", "-y", "--no-install-recommends", "qemu-system-x86",
    )  # fmt: skip
    assert doctor.status(doctor.checks(facts)) == 1
    text = "\n".join(doctor.render(facts, doctor.checks(facts)))
    assert "fix: sudo apt-get install -y --no-install-recommends qemu-system-x86" in text
    assert text.endswith("not ready: missing qemu")
    assert "or: kitl setup" in text


@pytest.mark.parametrize(
    ("distro", "root", "fix"),
    [
        (UBUNTU, True, ("apt-get", "install", "-y", "--no-install-recommends", "bpftool")),
        (ROCKY, False, ("sudo", "dnf", "install", "-y", "bpftool")),
        (ARCH, False, ()),
    ],
)
def test_the_fix_follows_the_distribution(distro: Distro, root: bool, fix: tuple[str, ...]) -> None:
    check = by_name(host(distro=distro, root=root, tools=without("bpftool")))["bpftool"]
    assert check.fix == fix
    if not fix:
        assert "no install command known for Arch Linux (Debian: ('bpftool',))" in check.detail


def test_optional_pieces_do_not_fail_the_host() -> None:
    facts = host(tools=without("pahole"), kvm_device="missing", cached_kernels=())
    found = by_name(facts)
    assert (found["pahole"].ok, found["pahole"].required) == (False, False)
    assert found["kvm"].status == "warning"
    assert found["kernels"].fix == ("kitl", "kernels", "fetch")
    assert doctor.status(list(found.values())) == 0


@pytest.mark.parametrize(
    ("device", "verdict", "ok", "fix", "says"),
    [
        ("missing", None, False, (), "no /dev/kvm"),
        ("no access", None, False, ("sudo", "usermod", "-aG", "kvm", "me"), "not readable"),
        ("usable", None, False, ("kitl", "accel", "--reprobe"), "not probed yet"),
        ("usable", ("tcg", "KVM probe: guest hung"), False, (), "unusable, TCG: KVM probe"),
        ("usable", ("kvm", "KVM probe: guest kernel started"), True, (), "works"),
    ],
)
def test_kvm_is_the_cached_verdict_never_a_boot(
    device: str, verdict: tuple[str, str] | None, ok: bool, fix: tuple[str, ...], says: str
) -> None:
    check = doctor.kvm_check(host(kvm_device=device, accel_verdict=verdict))
    assert (check.ok, check.fix, check.required) == (ok, fix, False)
    assert says in check.detail


def test_the_cache_needs_room_and_write_access() -> None:
    assert not doctor.cache_check(host(cache_free=1 * GIB)).ok
    assert "set KITL_CACHE" in doctor.cache_check(host(cache_writable=False)).detail
    assert doctor.cache_check(host(cache_free=None)).ok


def test_missing_virtme_ng_is_a_pip_install_with_kitls_python() -> None:
    check = by_name(host(tools=without("vng")))["virtme-ng"]
    assert check.fix == ("/venv/bin/python", "-m", "pip", "install", "virtme-ng>=1.40")


def test_all_missing_packages_in_one_command() -> None:
    facts = host(tools=without("clang", "zstd"), root=True)
    lines = doctor.render(facts, doctor.checks(facts))
    assert "all missing packages: apt-get install -y --no-install-recommends clang zstd" in lines


# --- the package list, shared with tools/setup.sh -------------------------------------


def test_every_debian_package_doctor_names_is_in_the_shared_list() -> None:
    listed = {p for ps in parse_packages(PACKAGES_FILE.read_text()).values() for p in ps}
    essential = {"dpkg"}  # on every Debian system, not listed
    named = {p for n in NEEDS for p in n.debian}
    assert named - listed <= essential


def test_setup_sh_reads_the_same_list() -> None:
    script = (Path(__file__).parents[2] / "tools" / "setup.sh").read_text()
    assert "harness/data/debian-packages.txt" in script
    assert "qemu-system-x86" not in script  # listed once, in the data file
    read = subprocess.run(
        ["bash", "-c", script[script.index("mapfile") : script.index("\n", script.index("mapfile"))]
         + '\nprintf "%s\\n" "${packages[@]}"'],
        cwd=Path(__file__).parents[2], capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    sections = parse_packages(PACKAGES_FILE.read_text())
    assert read == [*sections["run"], *sections["test"]]


def test_parse_packages_refuses_what_it_does_not_know() -> None:
    assert parse_packages("[run]\nclang  # why\n\n[test]\nchromium\n") == {
        "run": ("clang",),
        "test": ("chromium",),
    }
    with pytest.raises(ConfigError, match=r"x.txt:2: .*'clang llvm'"):
        parse_packages("[run]\nclang llvm\n", Path("x.txt"))
    with pytest.raises(ConfigError, match=r"x.txt:1: expected \[run\]"):
        parse_packages("clang\n", Path("x.txt"))


def test_distro_families() -> None:
    assert [d.family for d in (DEBIAN, UBUNTU, ROCKY, ARCH, Distro())] == [
        "debian", "debian", "fedora", "", "",
    ]  # fmt: skip
    assert UBUNTU.pretty == "Ubuntu 24.04 LTS"
    assert install_argv(DEBIAN, (), root=True) == ()


# --- kitl setup ----------------------------------------------------------------------------


def run_setup(
    request: SetupRequest, answer: str = "y", distro: Distro = DEBIAN, have: set[str] | None = None
) -> tuple[int, list[list[str]]]:
    ran: list[list[str]] = []

    def run(argv: list[str]) -> int:
        ran.append(argv)
        return 0

    status = hostsetup.setup(
        request,
        distro=lambda: distro,
        is_installed=lambda names: set(names) - {"clang", "chromium"} if have is None else have,
        ask=lambda prompt: answer,
        run=run,
    )  # fmt: skip
    return status, ran


def test_setup_installs_what_is_missing_after_asking(capsys: pytest.CaptureFixture[str]) -> None:
    status, ran = run_setup(SetupRequest())
    assert status == 0
    assert ran == [  # not chromium: [test] only with --tests
        ["sudo", "apt-get", "update", "-q"] if ran[0][0] == "sudo" else ["apt-get", "update", "-q"],
        [*ran[1][: ran[1].index("apt-get")], "apt-get", "install", "-y", "--no-install-recommends",
         "clang"],
    ]  # fmt: skip
    out = capsys.readouterr().out
    assert "1 of 30 packages to install" in out
    assert "apt-get install -y --no-install-recommends clang" in out


def test_setup_with_tests_and_yes_asks_nothing() -> None:
    status, ran = run_setup(SetupRequest(yes=True, tests=True), answer="no")
    assert status == 0
    assert ran[-1][-2:] == ["clang", "chromium"]


def test_setup_dry_run_and_no_installs_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_setup(SetupRequest(dry_run=True)) == (0, [])
    assert run_setup(SetupRequest(), answer="n") == (1, [])
    assert "nothing installed" in capsys.readouterr().err


def test_setup_with_nothing_missing_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    everything = set(read_packages()["run"])
    assert run_setup(SetupRequest(), have=everything) == (0, [])
    assert "are installed" in capsys.readouterr().out


def test_setup_elsewhere_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="installs Debian and Ubuntu packages; this is Rocky"):
        run_setup(SetupRequest(yes=True), distro=ROCKY)
    with pytest.raises(UsageError, match="needs root, and there is no sudo"):
        hostsetup.plan(DEBIAN, ["clang"], root=False, sudo=False)
