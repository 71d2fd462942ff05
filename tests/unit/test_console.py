"""Console parsing against saved real consoles (tests/data/console/)."""

from __future__ import annotations

import re
from pathlib import Path

from harness.vm import console

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


def saved_crash(name: str) -> console.Splat:
    splat = console.first_crash((DATA / f"panic-{name}.log").read_text())
    assert splat is not None
    return splat


def test_the_same_panic_on_6_1_and_7_2_has_one_fingerprint() -> None:
    # 7.2 panics through vpanic() and guesses other "? " frames than 6.1: neither counts
    old, new = saved_crash("debian-6.1"), saved_crash("debian-7.2")
    site = (
        "sysrq_handle_crash",
        "__handle_sysrq",  # printed as __handle_sysrq.cold: a compiler suffix
        "write_sysrq_trigger",
        "proc_reg_write",
        "vfs_write",
        "ksys_write",
        "do_syscall_64",
        "entry_SYSCALL_64_after_hwframe",
    )
    for splat in (old, new):
        assert splat.title == "Kernel panic - not syncing: sysrq triggered crash"
        assert splat.site == site
        assert splat.signature == f"{splat.title} | {' < '.join(site)}"
    assert old.fingerprint == new.fingerprint
    assert "vpanic" in new.functions
    assert "_printk" not in old.functions, "a guessed frame (? _printk) is not in the trace"
    assert "security_file_permission" not in new.functions
    assert new.text.splitlines()[0].endswith("Kernel panic - not syncing: sysrq triggered crash")
    assert "entry_SYSCALL_64_after_hwframe" in new.text


# Modeled on a real x86-64 NULL dereference with panic_on_oops (BUG line, #PF lines, the
# Oops line, registers, trace, end marker, registers again, then the panic with no trace).
OOPS = """\
[   30.100000] BUG: kernel NULL pointer dereference, address: 0000000000000008
[   30.100100] #PF: supervisor read access in kernel mode
[   30.100200] #PF: error_code(0x0000) - not-present page
[   30.100300] PGD 0 P4D 0
[   30.100400] Oops: 0000 [#1] PREEMPT SMP NOPTI
[   30.100500] CPU: 1 PID: 412 Comm: python3 Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2
[   30.100600] RIP: 0010:bpf_prog_test_run_xdp+0x1a2/0x4f0
[   30.100700] RSP: 0018:ffffb0e3c04bfd90 EFLAGS: 00010246
[   30.100800] Call Trace:
[   30.100900]  <TASK>
[   30.101000]  ? __die+0x23/0x70
[   30.101100]  ? page_fault_oops+0x17d/0x4c0
[   30.101200]  bpf_prog_test_run_xdp+0x1a2/0x4f0
[   30.101300]  __sys_bpf+0x11d5/0x2600
[   30.101400]  __x64_sys_bpf+0x1a/0x30
[   30.101500]  do_syscall_64+0x5d/0xb0
[   30.101600]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[   30.101700]  </TASK>
[   30.101800] Modules linked in: netdevsim veth
[   30.101900] CR2: 0000000000000008
[   30.102000] ---[ end trace 0000000000000000 ]---
[   30.102100] RIP: 0010:bpf_prog_test_run_xdp+0x1a2/0x4f0
[   30.102200] RSP: 0018:ffffb0e3c04bfd90 EFLAGS: 00010246
[   30.102300] Kernel panic - not syncing: Fatal exception
[   30.102400] Kernel Offset: 0x24200000 from 0xffffffff81000000
[   30.102500] ---[ end Kernel panic - not syncing: Fatal exception ]---
"""


def test_an_oops_and_its_fatal_exception_panic_are_one_fatal_splat() -> None:
    splats = console.find_splats(OOPS)
    assert len(splats) == 1, [s.title for s in splats]
    splat = splats[0]
    assert splat.fatal
    assert splat.title == "BUG: kernel NULL pointer dereference, address: 0000000000000008"
    assert splat.site[:3] == ("bpf_prog_test_run_xdp", "__sys_bpf", "__x64_sys_bpf")
    assert "__die" not in splat.functions
    assert "Fatal exception" in splat.text
    # the address and CPU/PID in a title do not make another fingerprint
    assert splat.signature.startswith("BUG: kernel NULL pointer dereference, address: X |")
    other = OOPS.replace("0000000000000008", "0000000000000010").replace("PID: 412", "PID: 9")
    again = console.first_crash(other)
    assert again is not None
    assert again.fingerprint == splat.fingerprint
    assert console.first_crash(OOPS) == splat


def test_a_warning_then_a_panic_picks_the_panic() -> None:
    warning = (
        "[  5.1] WARNING: CPU: 1 PID: 99 at kernel/bpf/verifier.c:1234 do_check+0x1/0x2\n"
        "[  5.1] Call Trace:\n[  5.1]  do_check+0x10/0x200\n[  5.1] ---[ end trace 0 ]---\n"
    )
    text = warning + (DATA / "panic-debian-6.1.log").read_text()
    splats = console.find_splats(text)
    assert [s.fatal for s in splats] == [False, True]
    assert not splats[0].severe
    crash = console.first_crash(text)
    assert crash is not None
    assert crash.fingerprint == saved_crash("debian-6.1").fingerprint


def test_oom_kills_are_read_from_a_real_console() -> None:
    # a memory cgroup's OOM (tail /dev/zero under memory.max 64M) and the whole guest's
    text = (DATA / "oom-debian-6.1.log").read_text()
    assert console.oom_kills(text) == [
        "Memory cgroup out of memory: Killed process 268 (tail)",
        "Out of memory: Killed process 272 (python3)",
    ]
    assert console.find_splats(text) == [], "the OOM report's stack dump is not a crash"
    assert console.oom_kills((DATA / "boot-debian-6.1.log").read_text()) == []


def test_an_oops_repeated_on_another_cpu_before_the_panic_is_one_splat() -> None:
    # debian-7.2 under TCG: an int3 met in __schedule on CPU 1 ([#1], with its trace),
    # the same int3 on CPU 0 ([#2], no trace), then "Fatal exception in interrupt"
    text = (DATA / "int3-oops-debian-7.2.log").read_text()
    splats = [s for s in console.find_splats(text) if s.severe]
    assert len(splats) == 1, [s.title for s in splats]
    crash = console.first_crash(text)
    assert crash is not None
    assert crash.fatal
    assert crash.title == "Oops: int3: 0000 [#1] SMP NOPTI"
    assert crash.site[:3] == ("schedule", "schedule_timeout", "rcu_gp_fqs_loop")
    assert "Fatal exception in interrupt" in crash.text
