"""The kernel cache with a fake apt/dpkg: atomic installs, single downloads, self-repair."""

from __future__ import annotations

import hashlib
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from harness.errors import FetchError
from harness.kernel import netdevsim
from harness.kernel.cache import Cache
from harness.kernel.debian import Package
from harness.kernel.lockfile import LockedKernel
from harness.kernel.store import KernelStore

RELEASE = "6.1.0-99-amd64"


def content(name: str) -> bytes:
    return f"fake deb {name}\n".encode()


def package(role: str, name: str) -> tuple[str, Package]:
    data = content(name)
    return role, Package(
        name,
        "6.1.999-1",
        "bookworm",
        f"pool/main/l/linux/{name}.deb",
        hashlib.sha256(data).hexdigest(),
        len(data),
    )


LOCKED = LockedKernel(
    "fake-6.1",
    "6.1",
    ("bookworm",),
    "amd64",
    RELEASE,
    "6.1.999-1",
    "bookworm",
    (
        package("image", "linux-image-fake"),
        package("headers", "linux-headers-fake"),
        package("source", "linux-source-fake"),
    ),
)


class FakeApt:
    """Stands in for apt-helper, dpkg-deb and depmod; counts downloads."""

    def __init__(self, corrupt: set[str] | None = None) -> None:
        self.downloads: list[str] = []
        self.corrupt = corrupt or set()
        self.lock = threading.Lock()

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        tool = Path(argv[0]).name
        if tool == "apt-helper":
            url, dest = argv[3], Path(argv[4])
            name = Path(url).name.removesuffix(".deb")
            with self.lock:
                self.downloads.append(name)
            dest.write_bytes(content(name))
        elif tool == "dpkg-deb":
            deb, dest = Path(argv[2]), Path(argv[3])
            if deb.name.removesuffix(".deb") in self.corrupt:
                return subprocess.CompletedProcess(
                    argv, 2, "", "dpkg-deb: error: unexpected end of file"
                )
            if "image" in deb.name:
                (dest / "boot").mkdir(parents=True, exist_ok=True)
                for item in ("vmlinuz", "config", "System.map"):
                    (dest / "boot" / f"{item}-{RELEASE}").write_text("CONFIG_DEBUG_INFO_BTF=y\n")
                mods = dest / "lib" / "modules" / RELEASE / "kernel"
                mods.mkdir(parents=True, exist_ok=True)
        elif tool != "depmod":
            raise AssertionError(f"unexpected command {argv}")
        return subprocess.CompletedProcess(argv, 0, "", "")


@pytest.fixture(autouse=True)
def fake_netdevsim(monkeypatch: pytest.MonkeyPatch) -> None:
    def build(*, release: str, root: Path, **kwargs: Any) -> Path:
        dest = root / "lib" / "modules" / release / "extra" / "netdevsim.ko"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"\x7fELF")
        return dest

    monkeypatch.setattr(netdevsim, "build_and_install", build)


def test_fetch_installs_atomically_and_second_fetch_downloads_nothing(tmp_path: Path) -> None:
    apt = FakeApt()
    store = KernelStore(Cache(tmp_path), run=apt)
    kernel = store.fetch(LOCKED)
    assert kernel.release == RELEASE
    assert kernel.vmlinuz.is_file()
    assert kernel.netdevsim is not None
    assert kernel.netdevsim.is_file()
    assert kernel.has_btf_config
    assert sorted(apt.downloads) == ["linux-headers-fake", "linux-image-fake", "linux-source-fake"]
    assert store.fetch(LOCKED) == kernel
    assert len(apt.downloads) == 3
    assert not list((tmp_path / "kernels").glob(".*partial"))


def test_two_concurrent_fetches_download_each_package_once(tmp_path: Path) -> None:
    apt = FakeApt()
    results: list[str] = []

    def fetch() -> None:
        # separate Cache/KernelStore objects: separate lock handles, as in two processes
        results.append(KernelStore(Cache(tmp_path), run=apt).fetch(LOCKED).release)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [RELEASE, RELEASE]
    assert len(apt.downloads) == 3


def test_damaged_kernel_dir_is_detected_and_repaired_without_redownload(tmp_path: Path) -> None:
    apt = FakeApt()
    store = KernelStore(Cache(tmp_path), run=apt)
    kernel = store.fetch(LOCKED)
    kernel.vmlinuz.unlink()
    assert store.installed(LOCKED) is None
    assert store.fetch(LOCKED).vmlinuz.is_file()
    assert len(apt.downloads) == 3, "valid cached .debs are reused"


def test_truncated_download_is_fetched_again(tmp_path: Path) -> None:
    apt = FakeApt()
    cache = Cache(tmp_path)
    cache.downloads.mkdir(parents=True)
    (cache.downloads / "linux-image-fake.deb").write_bytes(b"fake")  # cut short
    KernelStore(cache, run=apt).fetch(LOCKED)
    assert "linux-image-fake" in apt.downloads
    assert (cache.downloads / "linux-image-fake.deb").read_bytes() == content("linux-image-fake")


def test_leftovers_of_a_killed_fetch_are_never_ready_and_get_cleaned(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    half = cache.kernels / ".fake-6.1_6.1.999-1.abc.partial"
    (half / "root" / "boot").mkdir(parents=True)
    store = KernelStore(cache, run=FakeApt())
    assert store.installed(LOCKED) is None
    store.fetch(LOCKED)
    assert not half.exists()


def test_corrupt_package_fails_cleanly_and_is_dropped(tmp_path: Path) -> None:
    apt = FakeApt(corrupt={"linux-image-fake"})
    cache = Cache(tmp_path)
    with pytest.raises(FetchError, match=r"cannot unpack linux-image-fake\.deb"):
        KernelStore(cache, run=apt).fetch(LOCKED)
    assert not (cache.downloads / "linux-image-fake.deb").exists()
    assert not cache.kernel_dir("fake-6.1", "6.1.999-1").exists()
    assert not list(cache.kernels.glob(".*partial"))
