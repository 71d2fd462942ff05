"""kitl's pytest fixtures on a real kernel: the example test file, run by pytest in a child
process as a user's project would run it, passes in one boot; a test that leaks a BPF map
fails; a sysctl a test changed is back for the next test."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from harness.kernel.cache import CACHE_ENV, Cache

pytest_plugins = ("pytester",)

EXAMPLES = Path(__file__).parents[2] / "examples"
KERNEL = "debian-6.1"  # one kernel: the fixtures are kernel-agnostic, a boot costs minutes
# Read before pytester points HOME at its temporary directory: the child uses the same cache.
CACHE_ROOT = Cache.default().root
EXAMPLE_TESTS = 8  # of examples/test_xdp_with_fixtures.py

# Runs after the example, in the same guest.
HYGIENE = """
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.pytest_plugin.fixtures import Compile, Guest

PIN = "/sys/fs/bpf/kitl-fixture-leak"


@pytest.fixture
def pin_removed(kitl_guest: Guest) -> Iterator[None]:
    yield
    kitl_guest.run(["rm", "-f", PIN])


def test_a_leaked_map_fails_the_test(
    kitl_guest: Guest, kitl_compile: Compile, pin_removed: None
) -> None:
    obj = kitl_compile(Path(__file__).with_name("xdp_pass.bpf.c"))
    assert kitl_guest.load(obj, "xdp_pass").ok
    kitl_guest.run(["sh", "-c", "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf"])
    made = kitl_guest.run(["bpftool", "map", "create", PIN, "type", "array", "key", "4",
                           "value", "4", "entries", "1", "name", "kitl_leak"])
    assert made["status"] == 0, made


def test_sysctls_are_back(kitl_guest: Guest) -> None:
    now = kitl_guest.run(["cat", "/proc/sys/net/core/bpf_jit_harden"])
    assert now["stdout"].strip() == "0"
"""


def test_example_passes_in_one_boot(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(CACHE_ROOT))
    for name in ("test_xdp_with_fixtures.py", "xdp_pass.bpf.c"):
        shutil.copy(EXAMPLES / name, pytester.path / name)
    pytester.makepyfile(test_zz_hygiene=HYGIENE)
    started = time.monotonic()
    # the kitl plugin (entry point) registers the fixtures itself
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--kitl-kernels",
        KERNEL,
        "-v",
        "test_xdp_with_fixtures.py",
        "test_zz_hygiene.py",
        timeout=1800,
    )
    took = time.monotonic() - started
    text = result.stdout.str()
    result.assert_outcomes(passed=EXAMPLE_TESTS + 1, failed=1)
    failed = [ln for ln in text.splitlines() if ln.startswith("FAILED")]
    assert len(failed) == 1, text
    assert "test_a_leaked_map_fails_the_test" in failed[0], text
    assert "still alive after the case released everything" in text, text
    # resolved: pytest's numbered temporary directories come with "...current" symlinks
    logs = {p.resolve() for p in pytester.path.glob("runpytest-*/kitl-guests*/*.log")}
    consoles = sorted(p.name for p in logs)
    assert consoles == [f"{KERNEL}.log"], consoles  # one boot served every test
    print(f"{EXAMPLE_TESTS + 2} tests in one {KERNEL} guest in {took:.0f}s")
