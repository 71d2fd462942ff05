"""Catalog parsing, Debian index resolution and the lock file, without network or VMs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.errors import ConfigError, FetchError, UsageError
from harness.kernel import debversion
from harness.kernel.catalog import CatalogEntry, DebianSource, load_catalog
from harness.kernel.debian import Package, _depends_names, parse_packages_index, resolve_series
from harness.kernel.lockfile import LockedKernel, LockFile

DATA = Path(__file__).parent.parent / "data"
REPO = Path(__file__).parent.parent.parent


def index() -> list[Package]:
    out = []
    for suite in ("bookworm-security", "sid"):
        out += parse_packages_index((DATA / "apt" / f"{suite}_Packages").read_text(), suite)
    return out


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("7.3.4-1~bpo13+1", "7.3~rc7-1~exp1"),
        ("6.1.192-2", "6.1.192-1"),
        ("1.0", "1.0~rc1"),
        ("1:0.1", "9.9"),
        ("6.12.115-2", "6.12.115-2~deb12u1"),
        ("5.10.262-1", "5.10.99-1"),
        ("1.0+", "1.0a"),
        ("2.0", "2.0~"),
    ],
)
def test_debian_version_order_matches_dpkg(a: str, b: str) -> None:
    assert debversion.compare(a, b) == 1
    assert debversion.compare(b, a) == -1
    assert subprocess.run(["dpkg", "--compare-versions", a, "gt", b], check=False).returncode == 0


def test_bundled_catalog_has_the_promised_kernels() -> None:
    catalog = load_catalog(REPO / "kernels" / "catalog.yaml")
    assert {"debian-5.10", "debian-6.1", "debian-6.12", "debian-7.2", "debian-7.3"} <= set(
        catalog.names()
    )
    assert all(e.debian for e in catalog.defaults())


def test_bundled_lock_matches_bundled_catalog() -> None:
    catalog = load_catalog(REPO / "kernels" / "catalog.yaml")
    lock = LockFile.read(REPO / "kernels" / "kernels.lock")
    for entry in catalog.entries:
        if entry.debian is None:  # build: entries are locked through their source kernel
            assert entry.build is not None
            assert catalog.get(entry.build.source).debian is not None
            continue
        locked = lock.get(entry)
        assert locked.package("image")
        assert locked.package("source")
        assert all(len(p.sha256) == 64 for _, p in locked.packages)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "kernels:\n  k1: {debian: {series: 6.1, suites: [bookworm]}}\n",
            "x.yaml:2:25: kernel 'k1': debian.series must be a quoted",
        ),
        (
            "kernels:\n  k1: {path: {vmlinuz: a}, debian: {series: '6.1', suites: [x]}}\n",
            "x.yaml:2:7: kernel 'k1': give exactly one of 'debian', 'path' or 'build'",
        ),
        (
            "kernels:\n  k1: {debian: {series: '6.1', suites: [bookworm]}, colour: red}\n",
            "x.yaml:2:53: kernel 'k1': unknown key 'colour'",
        ),
        (
            "kernels:\n  k1: {path: {vmlinuz: a}}\n  k1: {path: {vmlinuz: b}}\n",
            "x.yaml:3:3: duplicate key 'k1'",
        ),
        ("kernels: [\n", "x.yaml:2:1: invalid YAML"),
        ("kernel:\n  x: 1\n", "x.yaml:1: expected a mapping with the single key 'kernels'"),
        ("kernels:\n  'bad name': {path: {vmlinuz: a}}\n", "x.yaml:2:3: bad kernel name"),
    ],
)
def test_catalog_errors_name_file_line_column(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert str(info.value).startswith(f"{tmp_path}/{message}")


def test_path_entries_resolve_relative_to_catalog(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("kernels:\n  mine: {path: {vmlinuz: build/bzImage, modules: mods}}\n")
    entry = load_catalog(path).get("mine")
    assert entry.path is not None
    assert entry.path.vmlinuz == tmp_path / "build" / "bzImage"
    assert entry.path.modules == tmp_path / "mods"


def test_unknown_kernel_is_a_usage_error_listing_known_ones() -> None:
    catalog = load_catalog(REPO / "kernels" / "catalog.yaml")
    with pytest.raises(UsageError, match=r"unknown kernel 'debian-4\.9'.*debian-6\.1"):
        catalog.get("debian-4.9")


def test_resolve_old_style_unsigned_image_with_headers_and_source() -> None:
    resolved = resolve_series(DebianSource("6.1", ("bookworm-security",)), index())
    assert resolved.release == "6.1.0-56-amd64"
    assert resolved.version == "6.1.192-2"
    roles = {role: p.name for role, p in resolved.packages}
    assert roles == {
        "image": "linux-image-6.1.0-56-amd64-unsigned",
        "headers": "linux-headers-6.1.0-56-amd64",
        "headers-common": "linux-headers-6.1.0-56-common",
        "kbuild": "linux-kbuild-6.1",
        "source": "linux-source-6.1",
    }
    source = dict(resolved.packages)["source"]
    assert source.version == "6.1.192-2"
    assert source.url.startswith("http://deb.debian.org/debian-security/pool/")


def test_resolve_new_style_binary_plus_modules() -> None:
    resolved = resolve_series(DebianSource("7.2", ("sid",)), index())
    roles = {role: p.name for role, p in resolved.packages}
    assert roles["image"] == "linux-binary-7.2.13+deb14-amd64"
    assert roles["modules"] == "linux-modules-7.2.13+deb14-amd64"
    assert resolved.release == "7.2.13+deb14-amd64"


def test_resolve_missing_series_is_clear() -> None:
    with pytest.raises(FetchError, match=r"no 9\.9 kernel"):
        resolve_series(DebianSource("9.9", ("sid",)), index())


def test_depends_parsing_keeps_exact_versions() -> None:
    deps = _depends_names(
        "linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2), "
        "gcc-12 | clang"
    )
    assert deps == [
        ("linux-headers-6.1.0-56-common", "6.1.192-2"),
        ("linux-kbuild-6.1", None),
        ("gcc-12", None),
    ]


def test_lock_roundtrip_and_staleness(tmp_path: Path) -> None:
    entry = CatalogEntry("k", debian=DebianSource("6.1", ("bookworm-security",)))
    resolved = resolve_series(entry.debian, index())  # type: ignore[arg-type]
    lock = LockFile(tmp_path / "kernels.lock", {"k": LockedKernel.from_resolved(entry, resolved)})
    lock.write()
    again = LockFile.read(tmp_path / "kernels.lock")
    assert again.get(entry).packages == lock.kernels["k"].packages
    assert again.get(entry).digest == dict(resolved.packages)["image"].sha256
    moved = CatalogEntry("k", debian=DebianSource("6.12", ("trixie",)))
    with pytest.raises(UsageError, match=r"kitl kernels lock --update k"):
        again.get(moved)
    json.loads((tmp_path / "kernels.lock").read_text())  # stays plain JSON


def test_corrupt_lock_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "kernels.lock"
    path.write_text('{"lock_version": 1, "kernels": {"k": {"series": "6.1"}}}')
    with pytest.raises(ConfigError, match="malformed lock entry"):
        LockFile.read(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"kernels.lock:1: not valid JSON"):
        LockFile.read(path)
