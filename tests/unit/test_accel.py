"""--accel decisions, including a simulated KVM that hangs (the case on these machines)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.kernel.cache import Cache
from harness.vm import accel
from harness.vm.accel import ProbeResult


def counting_probe(works: bool, calls: list[int]) -> accel.Probe:
    def probe() -> ProbeResult:
        calls.append(1)
        return ProbeResult(works, "guest kernel started" if works else "guest hung", 0.1)

    return probe


def test_auto_falls_back_to_tcg_when_kvm_hangs_and_remembers(tmp_path: Path) -> None:
    cache, calls = Cache(tmp_path), list[int]()
    first = accel.decide(
        "auto",
        cache,
        counting_probe(False, calls),
        kvm_available=lambda: True,
        fingerprint=lambda: "host1",
    )
    assert (first.accel, first.probed) == ("tcg", True)
    again = accel.decide(
        "auto",
        cache,
        counting_probe(False, calls),
        kvm_available=lambda: True,
        fingerprint=lambda: "host1",
    )
    assert again.accel == "tcg"
    assert not again.probed
    assert "cached verdict" in again.reason
    assert len(calls) == 1, "the probe runs once per host"
    other = accel.decide(
        "auto",
        cache,
        counting_probe(True, calls),
        kvm_available=lambda: True,
        fingerprint=lambda: "host2",
    )
    assert other.accel == "kvm"


def test_auto_without_dev_kvm_is_tcg_without_probing(tmp_path: Path) -> None:
    calls: list[int] = []
    d = accel.decide(
        "auto", Cache(tmp_path), counting_probe(True, calls), kvm_available=lambda: False
    )
    assert d.accel == "tcg"
    assert not calls


def test_explicit_choices(tmp_path: Path) -> None:
    assert accel.decide("tcg", Cache(tmp_path), None).accel == "tcg"
    with pytest.raises(UsageError, match="/dev/kvm"):
        accel.decide("kvm", Cache(tmp_path), None, kvm_available=lambda: False)
    with pytest.raises(UsageError, match="expected one of"):
        accel.decide("hvf", Cache(tmp_path), None)


def test_real_probe_of_a_hanging_guest_is_bounded(tmp_path: Path) -> None:
    """The real probe code against a 'kernel' that never prints: qemu cannot even load it,
    or hangs; either way the verdict comes back negative within the bound."""
    image = tmp_path / "bzImage"
    image.write_bytes(b"\0" * 4096)
    started = time.monotonic()
    result = accel.qemu_kvm_probe(image, seconds=3)
    assert not result.works
    assert time.monotonic() - started < 10
