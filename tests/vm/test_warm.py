"""Warm guests on a real kernel: `kitl up debian-6.1`, two `kitl verify` runs of a
two-program object that both use the warm guest (one boot in all, the cells counted), then
`kitl down` leaves no daemon, no QEMU and no record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.vm import warm
from tests.vm.objects import compiled

KERNEL = "debian-6.1"
EXAMPLE = Path(__file__).parents[2] / "examples" / "xdp_pass.bpf.c"  # two XDP programs


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    # a warm directory of its own: other users of this host may have guests up
    with tempfile.TemporaryDirectory(prefix="kitl-warm-", dir="/tmp") as tmp:
        yield {**os.environ, warm.WARM_ENV: tmp}


def kitl(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *argv],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def qemu_of(daemon: int) -> list[int]:
    """QEMU processes of the daemon's guests (named kitl-<daemon pid>-N)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and f"kitl-{daemon}-".encode() in cmdline:
            found.append(int(proc.name))
    return found


def test_up_verify_twice_then_down(env: dict[str, str], tmp_path: Path) -> None:
    obj = compiled([EXAMPLE], tmp_path / "objects") / "xdp_pass.bpf.o"
    up = kitl(env, "up", KERNEL)
    assert up.returncode == 0, up.stderr
    directory = Path(env[warm.WARM_ENV])
    record = warm.find(directory, KERNEL)
    try:
        assert record is not None, up.stderr
        assert record.state == warm.IDLE
        assert qemu_of(record.pid), "the daemon's guest runs"
        for n in (1, 2):
            run = kitl(
                env, "verify", str(obj), "--kernel", KERNEL, "--output", str(tmp_path / f"r{n}")
            )
            assert run.returncode == 0, run.stdout + run.stderr
            assert "warm guest" in run.stdout, run.stdout  # the boot line says so
            body = json.loads((tmp_path / f"r{n}" / "results.json").read_text())
            assert {c["outcome"] for c in body["cells"]} == {"PASSED"}
            assert len(body["cells"]) == 2
        after = warm.find(directory, KERNEL)
        assert after is not None
        assert (after.boots, after.uses, after.cells) == (1, 2, 4)  # no boot for either
        listed = kitl(env, "ps")
        assert KERNEL in listed.stdout
        assert " 4 " in listed.stdout, listed.stdout
    finally:
        down = kitl(env, "down")
    assert down.returncode == 0, down.stderr
    assert f"{KERNEL} down" in down.stderr
    assert record is not None
    assert not warm.daemon_alive(record.pid)
    assert qemu_of(record.pid) == []
    assert warm.records(directory) == []
    assert not warm.Paths(directory, KERNEL).socket.exists()
