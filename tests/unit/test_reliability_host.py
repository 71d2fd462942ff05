"""Host-side faults injected for real: a damaged kernel cache (real .debs built with
dpkg-deb, cut short, bit-flipped, a fetch SIGKILLed half-way), a full disk under the run
directory (a 64 KiB tmpfs: real ENOSPC), and a KVM probe that never answers.  Each must be
detected, repaired or reported in one line; none may end in a traceback."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main as cli
from harness.errors import FetchError, WriteError
from harness.kernel import netdevsim
from harness.kernel.cache import Cache
from harness.kernel.catalog import Catalog, CatalogEntry, DebianSource
from harness.kernel.debian import Package
from harness.kernel.lockfile import LockedKernel, LockFile
from harness.kernel.resolve import Kernels
from harness.kernel.store import MANIFEST, KernelStore
from harness.outcome import Outcome
from harness.results.rundir import CellResult, RunDir
from harness.results.runs import appended, finalize
from harness.vm import accel

REPO = Path(__file__).resolve().parents[2]
RELEASE = "6.1.0-99-amd64"
VERSION = "6.1.999-1"
NAME = "fake-6.1"
# incompressible, so a cut-short copy is really shorter on disk
VMLINUZ = random.Random(5).randbytes(64 << 10)


# --- real .debs and a mirror that serves them ------------------------------------------------


def _build_deb(root: Path, name: str, files: dict[str, bytes]) -> Path:
    pkg = root / name
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {VERSION}\nArchitecture: amd64\n"
        "Maintainer: kitl tests <kitl@example.invalid>\nDescription: kitl test package\n"
    )
    for rel, data in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes(data)
    out = root / f"{name}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(pkg), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def build_debs(root: Path) -> dict[str, Path]:
    """The three packages a kernel fetch needs, as real .debs."""
    boot = {
        f"boot/vmlinuz-{RELEASE}": VMLINUZ,
        f"boot/config-{RELEASE}": b"CONFIG_DEBUG_INFO_BTF=y\nCONFIG_BPF_LSM=y\n",
        f"boot/System.map-{RELEASE}": b"ffffffff81000000 T _text\n",
        f"lib/modules/{RELEASE}/kernel/fs/dummy.txt": b"not a module\n",
    }
    return {
        "image": _build_deb(root, "linux-image-fake", boot),
        "headers": _build_deb(root, "linux-headers-fake", {"usr/src/h/Makefile": b"all:\n"}),
        "source": _build_deb(root, "linux-source-fake", {"usr/src/linux.tar.xz": b"x"}),
    }


def locked_for(debs: dict[str, Path]) -> LockedKernel:
    packages = []
    for role, deb in debs.items():
        data = deb.read_bytes()
        name = deb.name.removesuffix(".deb")
        digest = hashlib.sha256(data).hexdigest()
        pool = f"pool/main/l/linux/{deb.name}"
        packages.append((role, Package(name, VERSION, "bookworm", pool, digest, len(data))))
    return LockedKernel(
        NAME, "6.1", ("bookworm",), "amd64", RELEASE, VERSION, "bookworm", tuple(packages)
    )


class Mirror:
    """apt-helper serving the real .debs (checking the pinned sha256 as apt-helper does);
    dpkg-deb and depmod are the real tools.  `corrupt` serves other bytes for a package;
    `before(tool, argv)` runs before each real tool (to kill the fetch there)."""

    def __init__(
        self, debs: dict[str, Path], before: Callable[[str, list[str]], None] | None = None
    ) -> None:
        self.by_name = {d.name: d for d in debs.values()}
        self.corrupt: dict[str, bytes] = {}
        self.downloads: list[str] = []
        self.before = before

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        tool = Path(argv[0]).name
        if self.before is not None:
            self.before(tool, argv)
        if tool == "apt-helper":
            url, dest, want = argv[3], Path(argv[4]), argv[5].removeprefix("SHA256:")
            name = Path(url).name
            data = self.corrupt.get(name) or self.by_name[name].read_bytes()
            self.downloads.append(name)
            dest.write_bytes(data)
            if hashlib.sha256(data).hexdigest() != want:
                return subprocess.CompletedProcess(argv, 100, "", f"E: Hash Sum mismatch {url}")
            return subprocess.CompletedProcess(argv, 0, "", "")
        if tool in ("dpkg-deb", "depmod"):
            # KernelStore runs both with exactly these options
            assert kwargs == {"capture_output": True, "text": True, "check": False}
            return subprocess.run(argv, capture_output=True, text=True, check=False)
        raise AssertionError(f"unexpected command {argv}")


def _fake_netdevsim(*, release: str, root: Path, **kwargs: Any) -> Path:
    # building the real module needs a kernel tree; its place in the layout is what matters
    dest = root / "lib" / "modules" / release / "extra" / "netdevsim.ko"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(b"\x7fELF netdevsim")
    return dest


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_debs(tmp_path_factory.mktemp("debs"))


@pytest.fixture(autouse=True)
def no_module_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netdevsim, "build_and_install", _fake_netdevsim)


def fetched(tmp_path: Path, debs: dict[str, Path]) -> tuple[KernelStore, Mirror]:
    """A cache holding the kernel, fetched once through the mirror."""
    mirror = Mirror(debs)
    store = KernelStore(Cache(tmp_path / "cache"), run=mirror)
    kernel = store.fetch(locked_for(debs))
    assert kernel.vmlinuz.read_bytes() == VMLINUZ
    assert len(mirror.downloads) == 3
    return store, mirror


def kernel_dir(store: KernelStore) -> Path:
    return store.cache.kernel_dir(NAME, VERSION)


# --- 1. kernel cache corruption ----------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_a_damaged_cached_deb_is_detected_and_downloaded_again(
    tmp_path: Path, debs: dict[str, Path], damage: str
) -> None:
    store, mirror = fetched(tmp_path, debs)
    cached = store.cache.downloads / "linux-image-fake.deb"
    good = cached.read_bytes()
    if damage == "truncated":
        cached.write_bytes(good[: len(good) // 2])
    else:  # same size, one byte changed: only the sha256 can tell
        flipped = bytearray(good)
        flipped[len(good) // 2] ^= 0xFF
        cached.write_bytes(bytes(flipped))
        assert cached.stat().st_size == len(good)
    (kernel_dir(store) / "root" / "boot" / f"vmlinuz-{RELEASE}").unlink()  # forces a re-unpack
    kernel = store.fetch(locked_for(debs))
    assert mirror.downloads[3:] == ["linux-image-fake.deb"], "only the damaged .deb again"
    assert cached.read_bytes() == good
    assert kernel.vmlinuz.read_bytes() == VMLINUZ


def _drop(path: Path) -> None:
    if path.is_dir():
        for sub in sorted(path.rglob("*"), reverse=True):
            sub.rmdir() if sub.is_dir() else sub.unlink()
        path.rmdir()
    else:
        path.unlink()


DAMAGE: dict[str, Callable[[Path], object]] = {
    "vmlinuz missing": lambda k: (k / "root" / "boot" / f"vmlinuz-{RELEASE}").unlink(),
    "vmlinuz cut short": lambda k: os.truncate(k / "root" / "boot" / f"vmlinuz-{RELEASE}", 4096),
    "config missing": lambda k: (k / "root" / "boot" / f"config-{RELEASE}").unlink(),
    "netdevsim.ko missing": lambda k: (
        k / "root" / "lib" / "modules" / RELEASE / "extra" / "netdevsim.ko"
    ).unlink(),
    "modules missing": lambda k: _drop(k / "root" / "lib" / "modules" / RELEASE),
    "manifest cut short": lambda k: os.truncate(k / MANIFEST, 20),
    "manifest not an object": lambda k: (k / MANIFEST).write_text("null\n"),
    "manifest not UTF-8": lambda k: (k / MANIFEST).write_bytes(b"\xff\xfe{"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_kernel_dir_is_unpacked_again_from_the_cached_debs(
    tmp_path: Path, debs: dict[str, Path], damage: str
) -> None:
    store, mirror = fetched(tmp_path, debs)
    DAMAGE[damage](kernel_dir(store))
    assert store.installed(locked_for(debs)) is None, "damage must not look ready"
    kernel = store.fetch(locked_for(debs))
    assert len(mirror.downloads) == 3, "the cached .debs are valid: nothing downloaded"
    assert kernel.vmlinuz.read_bytes() == VMLINUZ
    assert kernel.has_btf_config
    assert kernel.netdevsim is not None
    assert kernel.netdevsim.is_file()
    assert store.installed(locked_for(debs)) == kernel


def _child_fetch() -> None:
    """In a child process: fetch the kernel and SIGKILL ourselves at argv[3] ("download":
    half-way through the image download; "extract": right after unpacking the image)."""
    cache_root, debs_dir, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    netdevsim.build_and_install = _fake_netdevsim
    debs = {r: debs_dir / f"linux-{r}-fake.deb" for r in ("image", "headers", "source")}

    def die(tool: str, argv: list[str]) -> None:
        if where == "download" and tool == "apt-helper":
            data = debs["image"].read_bytes()
            Path(argv[4]).write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        if where == "extract" and tool == "dpkg-deb":
            subprocess.run(argv, check=True)  # the image really unpacked, then killed
            os.kill(os.getpid(), signal.SIGKILL)

    KernelStore(Cache(cache_root), run=Mirror(debs, before=die)).fetch(locked_for(debs))


@pytest.mark.parametrize("where", ["download", "extract"])
def test_a_fetch_killed_half_way_leaves_nothing_ready_and_the_next_one_completes(
    tmp_path: Path, debs: dict[str, Path], where: str
) -> None:
    cache = Cache(tmp_path / "cache")
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "from tests.unit.test_reliability_host import _child_fetch; _child_fetch()",
            str(cache.root),
            str(debs["image"].parent),
            where,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    if where == "download":
        assert (cache.downloads / "linux-image-fake.deb.partial").is_file()
    else:
        [stage] = cache.kernels.glob(f".{NAME}_{VERSION}.*.partial")
        assert (stage / "root" / "boot" / f"vmlinuz-{RELEASE}").is_file()
    mirror = Mirror(debs)
    store = KernelStore(cache, run=mirror)
    assert store.installed(locked_for(debs)) is None
    lock = cache.lock(f"kernel-{NAME}-{VERSION}")
    lock.acquire(timeout=5)  # the dead fetch's lock died with it
    lock.release()
    kernel = store.fetch(locked_for(debs))
    assert kernel.vmlinuz.read_bytes() == VMLINUZ
    assert len(mirror.downloads) == (3 if where == "download" else 0)
    assert not list(cache.kernels.glob(".*partial"))
    assert not list(cache.downloads.glob("*.partial"))


def test_another_kernels_staging_dir_is_left_alone(tmp_path: Path, debs: dict[str, Path]) -> None:
    """Cleaning up after a killed fetch must not delete a live fetch of another kernel
    (it holds its own lock, not ours)."""
    cache = Cache(tmp_path / "cache")
    own = cache.kernels / f".{NAME}_{VERSION}.dead1234.partial"
    other = cache.kernels / f".{NAME}_{VERSION}.2.live5678.partial"  # kernel "…-1.2"
    neighbour = cache.kernels / ".debian-6.12_6.12.9-1.live9012.partial"
    for d in (own, other, neighbour):
        (d / "root").mkdir(parents=True)
    KernelStore(cache, run=Mirror(debs)).fetch(locked_for(debs))
    assert not own.exists()
    assert other.is_dir()
    assert neighbour.is_dir()


def _kernels(tmp_path: Path, mirror: Mirror, debs: dict[str, Path]) -> Kernels:
    entry = CatalogEntry(NAME, debian=DebianSource("6.1", ("bookworm",)))
    catalog = Catalog((entry,), tmp_path / "catalog.yaml")
    lock = LockFile(tmp_path / "kernels.lock", {NAME: locked_for(debs)})
    return Kernels(catalog, lock, KernelStore(Cache(tmp_path / "cache"), run=mirror))


def test_kitl_kernels_fetch_repairs_the_cache_and_reports_a_corrupt_mirror_in_one_line(
    tmp_path: Path,
    debs: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mirror = Mirror(debs)
    mirror_url = "http://mirror.invalid/debian/pool/main/l/linux"
    monkeypatch.setenv("KITL_DEBIAN_MIRROR", "http://mirror.invalid/debian")
    kernels = _kernels(tmp_path, mirror, debs)
    monkeypatch.setattr(Kernels, "open", lambda *a, **k: kernels)
    assert cli.main(["kernels", "fetch", NAME]) == 0
    cache = kernels.store.cache
    # everything at once: a truncated .deb, a missing vmlinuz, a killed fetch's leftovers
    image = cache.downloads / "linux-image-fake.deb"
    os.truncate(image, 100)
    (cache.kernel_dir(NAME, VERSION) / "root" / "boot" / f"vmlinuz-{RELEASE}").unlink()
    (cache.kernels / f".{NAME}_{VERSION}.dead1234.partial" / "root").mkdir(parents=True)
    assert cli.main(["kernels", "fetch", NAME]) == 0
    assert mirror.downloads[3:] == ["linux-image-fake.deb"]
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"{NAME}: {RELEASE} ready")
    # the mirror now serves damaged bytes: refused against the pin, nothing kept
    image.unlink()
    _drop(cache.kernel_dir(NAME, VERSION))
    damaged = bytearray(debs["image"].read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    mirror.corrupt["linux-image-fake.deb"] = bytes(damaged)
    assert cli.main(["kernels", "fetch", NAME]) == 1
    err = capsys.readouterr().err  # progress lines, then the error
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"kitl: {mirror_url}/linux-image-fake.deb: sha256 does not match kernels.lock "
        "(mirror corrupt?)"
    )
    assert not image.exists()
    assert not list(cache.downloads.glob("linux-image-fake*"))
    assert not cache.kernel_dir(NAME, VERSION).exists()
    with pytest.raises(FetchError):  # the same through the API the runner uses
        kernels.get(NAME)


# --- 2. a full disk under the run directory ---------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: writes beyond it fail with a real ENOSPC."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:  # never a skip: these tests exist to run
        pytest.fail(f"mounting a tmpfs needs root: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill `disk` until ENOSPC, then free `leave` bytes."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while True:  # unbuffered: nothing is left over to fail again on close
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    os.truncate(filler, max(filler.stat().st_size - leave, 0))
    return filler


def cell(case: str) -> CellResult:
    return CellResult(
        "disk", case, "debian-6.1", "default", Outcome.PASSED, reason="r" * 300, program="p/x"
    )


def test_appends_on_a_full_disk_fail_in_one_line_and_keep_every_whole_line(
    tiny_disk: Path,
) -> None:
    run = RunDir(tiny_disk / "run", {})
    filler = fill(tiny_disk, leave=8192)
    written, error = 0, None
    for i in range(100):
        try:
            run.append(cell(f"c{i}"))
        except WriteError as exc:
            error = exc
            break
        written += 1
    assert 0 < written < 100
    assert str(error) == f"{run.path / 'results.jsonl'}: cannot write: No space left on device"
    raw = (run.path / "results.jsonl").read_bytes()
    assert raw.endswith(b"\n"), "the failed append was cut back off, not left torn"
    assert [json.loads(line)["case"] for line in raw.decode().splitlines()] == [
        f"c{i}" for i in range(written)
    ]
    assert [c.case for c in run.cells] == [f"c{i}" for i in range(written)]
    filler.unlink()  # space again: the next append is a line of its own
    run.append(cell("after"))
    assert [c.case for c in appended(run.path)] == [
        *(f"c{i}" for i in range(written)),
        "after",
    ]


def test_results_json_and_verifier_logs_on_a_full_disk_keep_the_old_files(
    tiny_disk: Path,
) -> None:
    run = RunDir(tiny_disk / "run", {})
    for i in range(3):
        run.append(cell(f"c{i}"))
    finalize(run.path, {"n": 1})
    before = (run.path / "results.json").read_bytes()
    fill(tiny_disk)
    big = cell("big")
    big.reason = "r" * 8192  # more than the free part of the file's last page
    with pytest.raises(WriteError, match=r"results\.jsonl: cannot write: No space left"):
        run.append(big)
    run.cells.append(big)  # as if it had been written: finish() must still fail cleanly
    with pytest.raises(WriteError, match=r"results\.json: cannot write: No space left"):
        run.finish()
    with pytest.raises(WriteError, match=r"verifier\.log: cannot write: No space left"):
        run.write_verifier_log(big, "processed 1 insns\n" * 20_000)
    assert (run.path / "results.json").read_bytes() == before
    assert json.loads(before)["cells"][2]["case"] == "c2"
    assert big.log_path == ""
    assert not run.verifier_log_path(big).exists(), "no half a log under the cell's name"
    assert not [p for p in run.path.rglob("*") if p.name.endswith(".tmp")]


def _small_run(path: Path, cases: int) -> Path:
    run = RunDir(path, {})
    for i in range(cases):
        run.append(cell(f"c{i}"))
    finalize(path, {})
    return path


def test_kitl_report_and_merge_on_a_full_disk_print_one_line_and_exit_1(
    tmp_path: Path, tiny_disk: Path
) -> None:
    source = _small_run(tmp_path / "run", 2)
    out = tiny_disk / "report"
    kitl = [sys.executable, "-m", "harness.cli.main"]
    ok = subprocess.run([*kitl, "report", str(source), "-o", str(out)], cwd=REPO, check=False)
    assert ok.returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "summary.md" in before
    RunDir(source, {}).append(cell("new"))  # the next report differs from the old one
    finalize(source, {})
    fill(tiny_disk)
    for argv, what in (
        (["report", str(source), "-o", str(out)], f"{out}: cannot write the report"),
        (["merge", str(source), "--output", str(tiny_disk / "merged")], "cannot write"),
    ):
        proc = subprocess.run([*kitl, *argv], cwd=REPO, capture_output=True, text=True, check=False)
        assert proc.returncode == 1, proc.stderr
        [line] = proc.stderr.splitlines()  # one line, so no traceback
        assert line.startswith("kitl: ")
        assert what in line
        assert "No space left on device" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tiny_disk.rglob("*.tmp"))


def test_an_untyped_disk_error_is_one_line_and_other_os_errors_stay_loud(
    tiny_disk: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command step with no typed error of its own (here: a handler writing a file)."""
    target = tiny_disk / "boot.json"

    def write_big(args: object) -> int:
        target.write_bytes(b"{}" * (1 << 20))
        return 0

    monkeypatch.setitem(cli.COMMANDS, ("schema", None), write_big)
    fill(tiny_disk)
    assert cli.main(["schema"]) == 1
    assert capsys.readouterr().err == (
        "kitl: No space left on device (check the disk kitl writes to, then rerun)\n"
    )

    def missing(args: object) -> int:
        (tiny_disk / "no" / "such").read_text()
        return 0

    monkeypatch.setitem(cli.COMMANDS, ("schema", None), missing)
    with pytest.raises(FileNotFoundError):  # a bug, not the disk: its traceback is wanted
        cli.main(["schema"])


# --- 5. a KVM that hangs ----------------------------------------------------------------------


def auto(cache: Cache, probe: accel.Probe, probe_timeout: float = 30.0) -> accel.AccelDecision:
    """--accel auto on a host whose /dev/kvm exists."""
    return accel.decide(
        "auto",
        cache,
        probe,
        kvm_available=lambda: True,
        fingerprint=lambda: "host-under-test",
        probe_timeout=probe_timeout,
    )


def test_a_probe_that_never_returns_falls_back_to_tcg_within_its_bound(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    stuck = threading.Event()
    calls: list[int] = []

    def hanging_probe() -> accel.ProbeResult:  # like qemu stuck in a KVM ioctl
        calls.append(1)
        stuck.wait()
        return accel.ProbeResult(True, "too late", 999.0)

    started = time.monotonic()
    try:
        first = auto(cache, hanging_probe, probe_timeout=2.0)
    finally:
        stuck.set()  # let the abandoned probe thread end
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 2.0 + 5
    assert (first.accel, first.probed) == ("tcg", True)
    assert first.reason.startswith("KVM probe: no answer (qemu stuck in KVM?) after 2.")
    cached = json.loads((cache.host_dir / "accel.json").read_text())
    assert cached["host-under-test"]["accel"] == "tcg"
    again = auto(cache, hanging_probe, probe_timeout=2.0)
    assert again.accel == "tcg"
    assert not again.probed
    assert again.reason == f"{first.reason} (cached verdict)"
    assert calls == [1], "the verdict is cached: no second probe"


def test_a_probe_that_raises_is_tcg_and_explained(tmp_path: Path) -> None:
    def broken() -> accel.ProbeResult:
        raise OSError(errno.EBUSY, "Device or resource busy", "/dev/kvm")

    d = auto(Cache(tmp_path), broken)
    assert d.accel == "tcg"
    assert "probe failed ([Errno 16] Device or resource busy: '/dev/kvm')" in d.reason


def _pid_file_probe(tmp_path: Path, script: str) -> tuple[list[str], Path]:
    pid_file = tmp_path / "pid"
    return ["sh", "-c", f'echo $$ > "$0"; {script}', str(pid_file)], pid_file


@pytest.mark.parametrize(
    ("script", "last_line"),
    [
        ("exec sleep 1000", "no console output"),  # silent forever
        ("exec yes 'Probing EDD (edd=off to disable)... ok'", "Probing EDD"),  # floods
        ("trap '' TERM INT HUP; exec sleep 1000", "no console output"),  # ignores polite
    ],
    ids=["silent", "flooding", "ignores-sigterm"],
)
def test_the_real_probe_kills_a_hanging_guest_within_its_bound(
    tmp_path: Path, script: str, last_line: str
) -> None:
    argv, pid_file = _pid_file_probe(tmp_path, script)
    started = time.monotonic()
    result = accel.console_probe(argv, seconds=2.0)
    elapsed = time.monotonic() - started
    assert not result.works
    assert 2.0 <= elapsed < 2.0 + 5
    assert result.detail.startswith("guest hung under KVM")
    assert last_line in result.detail
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left behind
        os.kill(int(pid_file.read_text()), 0)


def test_the_real_probe_says_yes_as_soon_as_the_kernel_speaks(tmp_path: Path) -> None:
    argv, pid_file = _pid_file_probe(tmp_path, "echo 'Linux version 6.1.0'; exec sleep 1000")
    result = accel.console_probe(argv, seconds=20.0)
    assert result.works
    assert result.seconds < 5
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
