"""`kitl --verbose`: host-side decisions logged on stderr, nothing logged without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.kernel.cache import CACHE_ENV
from harness.vm.accel import host_fingerprint


def kitl(cache: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, CACHE_ENV: str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def test_verbose_logs_the_accelerator_decision_and_quiet_does_not(tmp_path: Path) -> None:
    # a cached verdict for this host, so that nothing is probed
    verdicts = {host_fingerprint(): {"accel": "tcg", "reason": "KVM probe: test verdict"}}
    host = tmp_path / "host"
    host.mkdir()
    (host / "accel.json").write_text(json.dumps(verdicts))
    loud = kitl(tmp_path, "--verbose", "accel")
    assert loud.returncode == 0, loud.stderr
    assert "kitl: harness.vm.accel: --accel auto: tcg (" in loud.stderr
    quiet = kitl(tmp_path, "accel")
    assert quiet.returncode == 0, quiet.stderr
    assert "harness.vm.accel" not in quiet.stderr
