"""Console parsing against saved real consoles (tests/data/console/)."""

from __future__ import annotations

import re
from pathlib import Path

from harness import console

DATA = Path(__file__).parent.parent / "data" / "console"


def test_ready_and_failure_markers() -> None:
    text = "[    1.0] x\nKITL-READY 6.1.0-56-amd64\n"
    assert console.ready_release(text) == "6.1.0-56-amd64"
    assert console.init_failure("KITL-FAILED sshd: bad\n") == "sshd: bad"
    assert console.ready_release("KITL-FAILED x\n") is None


def test_clean_boot_has_no_splat() -> None:
    for log in DATA.glob("boot-*.log"):
        assert console.find_splats(log.read_text()) == [], log.name


def test_sysrq_panics_are_fatal_with_stable_fingerprints() -> None:
    logs = sorted(DATA.glob("panic-*.log"))
    assert logs, "saved real panic consoles are test data"
    for log in logs:
        splat = console.first_crash(log.read_text())
        assert splat is not None, log.name
        assert splat.fatal
        assert "sysrq" in splat.title.lower() or "sysrq" in splat.text.lower()
        assert any("sysrq" in fn for fn in splat.functions), splat.functions
        # the same crash at other times and addresses must fingerprint the same
        shifted = re.sub(
            r"\[\s*(\d+)\.(\d+)\]",
            lambda m: f"[{int(m.group(1)) + 100:5d}.{m.group(2)}]",
            log.read_text(),
        )
        shifted = re.sub(r"\+0x[0-9a-f]+/", "+0x1/", shifted)
        again = console.first_crash(shifted)
        assert again is not None
        assert again.fingerprint == splat.fingerprint


def test_warning_is_a_splat_but_not_fatal() -> None:
    text = (
        "[  5.1] WARNING: CPU: 1 PID: 99 at kernel/bpf/verifier.c:1234 do_check+0x1/0x2\n"
        "[  5.1] Call Trace:\n[  5.1]  <TASK>\n[  5.1]  do_check+0x10/0x200\n"
        "[  5.1]  bpf_check+0x22/0x300\n[  5.1] ---[ end trace 0000000000000000 ]---\n"
    )
    splat = console.first_crash(text)
    assert splat is not None
    assert not splat.fatal
    assert splat.functions[:2] == ("do_check", "bpf_check")
