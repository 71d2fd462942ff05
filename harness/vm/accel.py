"""Choosing the accelerator: KVM when it really works, TCG otherwise.

On some hosts /dev/kvm exists and creates VMs, yet every guest hangs right after the
real-mode "Probing EDD" message (protected-mode entry never completes).  `auto` therefore
does not trust the device node: it boots a kernel under KVM for a bounded time and looks
for the kernel's first console line.  The verdict is cached per host (kernel release,
QEMU version, CPU model) so the probe runs once, and the fallback is announced once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UsageError
from harness.kernel.cache import Cache

log = logging.getLogger(__name__)

ACCELS = ("auto", "kvm", "tcg")
PROBE_SECONDS = 20.0
KVM_DEVICE = Path("/dev/kvm")
# The decompressed kernel's first line; the broken-KVM hang happens before it.
_ALIVE_MARK = b"Linux version"
_TAIL_BYTES = 8192  # > one read (4096), so a mark split across reads is kept
# How long `decide` waits for a probe on top of its own bound: qemu stuck in a KVM ioctl
# may not even die on SIGKILL, and the run must not wait for it.
PROBE_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class AccelDecision:
    accel: str  # "kvm" or "tcg"
    reason: str
    probed: bool = False  # True when this call ran the probe (so the caller announces it)


@dataclass(frozen=True)
class ProbeResult:
    works: bool
    detail: str
    seconds: float


Probe = Callable[[], ProbeResult]


def host_fingerprint() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    qemu = _qemu_version()
    raw = f"{platform.release()}|{qemu}|{cpu}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _qemu_version() -> str:
    try:
        out = subprocess.run(
            ["qemu-system-x86_64", "--version"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    return out.splitlines()[0] if out else "unknown"


def kvm_usable() -> bool:
    return KVM_DEVICE.exists() and os.access(KVM_DEVICE, os.R_OK | os.W_OK)


def qemu_kvm_probe(vmlinuz: Path, seconds: float = PROBE_SECONDS) -> ProbeResult:
    """Boot `vmlinuz` under KVM with a serial console; it works if the kernel speaks in time.

    This is a raw QEMU call on purpose: it probes the hypervisor, not a guest, and must be
    bounded and tiny (no virtme-ng root filesystem, no init).
    """
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "kvm",
        "-m",
        "256",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-kernel",
        str(vmlinuz),
        "-append",
        "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1",
    ]
    return console_probe(argv, seconds)


def console_probe(argv: list[str], seconds: float) -> ProbeResult:
    """Run `argv` and watch its output for the kernel's first line for at most `seconds`;
    the process is killed either way.  Only a tail of the output is kept: a guest that
    floods its console costs no memory."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        return ProbeResult(False, f"cannot start qemu: {exc}", 0.0)
    seen = b""
    try:
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        while time.monotonic() - started < seconds:
            chunk = proc.stdout.read(4096)
            if chunk:
                seen = (seen + chunk)[-_TAIL_BYTES:]
                if _ALIVE_MARK in seen:
                    return ProbeResult(True, "guest kernel started", time.monotonic() - started)
            elif proc.poll() is not None:
                break
            else:
                time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    return ProbeResult(
        False,
        f"guest hung under KVM (last console line: {_last_line(seen)[:80]!r})",
        time.monotonic() - started,
    )


def _last_line(seen: bytes) -> str:
    """The last complete console line (output cut off mid-line is a fragment), else
    whatever there is."""
    text = seen.decode("ascii", "replace").replace("\r", "")
    complete = [ln for ln in text[: text.rfind("\n") + 1].splitlines() if ln.strip()]
    if complete:
        return complete[-1].strip()
    return text.strip() or "no console output"


def decide(
    requested: str,
    cache: Cache,
    probe: Probe | None,
    *,
    kvm_available: Callable[[], bool] = kvm_usable,
    fingerprint: Callable[[], str] = host_fingerprint,
    probe_timeout: float = PROBE_SECONDS + PROBE_GRACE_SECONDS,
) -> AccelDecision:
    """Resolve --accel.  `probe` boots a kernel under KVM; None means no kernel is at hand,
    in which case `auto` picks TCG without caching a verdict.  A probe that does not
    answer within `probe_timeout` (or fails) counts as a KVM that hangs: TCG, cached."""
    if requested not in ACCELS:
        raise UsageError(f"--accel {requested!r}: expected one of {', '.join(ACCELS)}")
    if requested == "tcg":
        decision = AccelDecision("tcg", "requested")
    elif requested == "kvm":
        if not kvm_available():
            raise UsageError(
                "--accel kvm: /dev/kvm is missing or not accessible", hint="use --accel tcg or auto"
            )
        decision = AccelDecision("kvm", "requested")
    else:
        decision = _auto(cache, probe, kvm_available, fingerprint, probe_timeout)
    log.info("--accel %s: %s (%s)", requested, decision.accel, decision.reason)
    return decision


def _auto(
    cache: Cache,
    probe: Probe | None,
    kvm_available: Callable[[], bool],
    fingerprint: Callable[[], str],
    probe_timeout: float,
) -> AccelDecision:
    """--accel auto: TCG without a usable /dev/kvm, else this host's cached verdict, else
    a probe's, cached."""
    if not kvm_available():
        return AccelDecision("tcg", "no usable /dev/kvm")
    key = fingerprint()
    verdicts = _verdicts(cache)
    cached = cached_verdict(cache, key)
    if cached is not None:
        return cached
    if probe is None:
        return AccelDecision("tcg", "KVM not yet probed on this host")
    result = _bounded(probe, probe_timeout)
    accel = "kvm" if result.works else "tcg"
    reason = f"KVM probe: {result.detail} after {result.seconds:.1f}s"
    verdicts[key] = {"accel": accel, "reason": reason}
    verdict_file = cache.host_dir / "accel.json"
    verdict_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = verdict_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(verdicts, indent=2) + "\n", encoding="utf-8")
    tmp.replace(verdict_file)
    return AccelDecision(accel, reason, probed=True)


def _verdicts(cache: Cache) -> dict[str, dict[str, str]]:
    """The cached verdicts by host fingerprint ({} when none could be read)."""
    try:
        found = json.loads((cache.host_dir / "accel.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


def cached_verdict(cache: Cache, key: str) -> AccelDecision | None:
    """This host's cached verdict on KVM (`key`: its fingerprint), None when it has none:
    what `auto` picks without probing (kitl doctor reads it and boots nothing)."""
    cached = _verdicts(cache).get(key)
    if not isinstance(cached, dict) or not {"accel", "reason"} <= cached.keys():
        return None
    return AccelDecision(cached["accel"], cached["reason"] + " (cached verdict)")


def _bounded(probe: Probe, timeout: float) -> ProbeResult:
    """`probe()` in a daemon thread, given up on after `timeout` seconds (the thread is left
    behind, stuck; it does not keep the process alive)."""
    box: list[ProbeResult] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            box.append(probe())
        except Exception as exc:  # any failure of the probe is a KVM we cannot trust
            failure.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, name="kitl-kvm-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if box:
        return box[0]
    waited = time.monotonic() - started
    if failure:
        return ProbeResult(False, f"probe failed ({failure[0]})", waited)
    return ProbeResult(False, "no answer (qemu stuck in KVM?)", waited)
