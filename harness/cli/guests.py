"""`kitl boot`, `kitl exec`, `kitl shell` and `kitl accel`: guests of one or more kernels,
outside the matrix."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from harness.cli.progress import DownloadProgress, stderr
from harness.cli.requests import GuestRequest
from harness.errors import KitlError, UsageError, outcome_for_error
from harness.kernel.cache import Cache
from harness.kernel.resolve import Kernels
from harness.kernel.store import Kernel
from harness.outcome import EXIT_FAILED, EXIT_OK, Outcome, exit_code
from harness.vm import accel
from harness.vm.bootcheck import BootCheck, check
from harness.vm.machine import VM, GuestSettings, free_port
from harness.vm.slots import GuestSlots
from harness.vm.warmclient import guest_factory


def decide_accel(request: GuestRequest, cache: Cache, probe_kernel: Kernel | None) -> str:
    probe = (lambda: accel.qemu_kvm_probe(probe_kernel.vmlinuz)) if probe_kernel else None
    decision = accel.decide(request.accel, cache, probe)
    if decision.probed or (
        request.accel == "auto"
        and decision.accel == "tcg"
        and "no usable" not in decision.reason
        and not _announced(cache)
    ):
        stderr.print(f"kitl: using {decision.accel.upper()}: {decision.reason}")
    return decision.accel


def _announced(cache: Cache) -> bool:
    """Say the KVM fallback once per host, not on every command."""
    marker = cache.host_dir / "accel-announced"
    if marker.exists():
        return True
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return False


def _settings(request: GuestRequest, accel_name: str) -> GuestSettings:
    return GuestSettings(
        accel_name,
        boot_timeout=request.boot_timeout,
        cpus=request.cpus,
        memory=request.memory,
        slots=GuestSlots.for_cache(Cache.default()),
        launcher=request.launcher,
    )


def _vm(kernel: Kernel, request: GuestRequest, accel_name: str, console: Path) -> VM:
    return _settings(request, accel_name).vm(kernel, console)


def _warm_or_booted(kernel: Kernel, request: GuestRequest, accel_name: str, console: Path) -> VM:
    """A warm guest of the kernel when one is up and free (kitl up), else a boot."""
    make = guest_factory(_settings(request, accel_name), use_warm=not request.no_warm)
    return make(kernel, console)


def _dry_run(kernels: Sequence[Kernel], request: GuestRequest, accel_name: str) -> int:
    for kernel in kernels:
        vm = _vm(kernel, request, accel_name, Path("/dev/null"))
        spec = vm.spec(free_port(), Path(tempfile.gettempdir()) / "kitl-vm-XXXXXX")
        print(shlex.join(vm.launcher.argv(spec)))
    return EXIT_OK


def boot(request: GuestRequest) -> int:
    ks = Kernels.open()
    entries = ks.catalog.select(list(request.names))
    with DownloadProgress() as progress:
        kernels = [ks.get(e.name, progress) for e in entries]
    accel_name = decide_accel(request, ks.store.cache, kernels[0] if kernels else None)
    if request.dry_run:
        return _dry_run(kernels, request, accel_name)
    out_dir = request.output or Path("runs") / time.strftime("boot-%Y%m%d-%H%M%S")
    checks: list[BootCheck] = []
    for kernel in kernels:
        console = out_dir / f"console-{kernel.name}.log"
        stderr.print(f"kitl: booting {kernel.name} ({kernel.release}, {accel_name})")
        try:
            with _vm(kernel, request, accel_name, console) as vm:
                result = check(vm, kernel)
        except KitlError as exc:
            result = BootCheck(
                kernel=kernel.name,
                expected_release=kernel.release,
                accel=accel_name,
                outcome=outcome_for_error(exc),
                problems=[str(exc)],
            )
        checks.append(result)
        if not request.json:
            nsim = result.netdevsim_netdev or "no"
            btf = "yes" if result.btf else "no"
            print(
                f"{kernel.name:<13} {result.release or '-':<24} BTF {btf:<3} "
                f"netdevsim {nsim:<8} boot {result.boot_seconds:6.1f}s  {result.accel}  "
                f"{result.outcome}"
                + (f"  ({'; '.join(result.problems)})" if result.problems else "")
            )
    if request.json:
        print(json.dumps([c.to_json() for c in checks], indent=2))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "boot.json").write_text(
        json.dumps([c.to_json() for c in checks], indent=2) + "\n", encoding="utf-8"
    )
    return exit_code(c.outcome for c in checks)


def _prepare(request: GuestRequest, name: str) -> tuple[Kernel, str, Kernels]:
    """The kernel (fetched if needed) and the accelerator for a one-kernel command."""
    ks = Kernels.open()
    with DownloadProgress() as progress:
        kernel = ks.get(name, progress)
    return kernel, decide_accel(request, ks.store.cache, kernel), ks


def exec_(request: GuestRequest) -> int:
    cmd = list(request.cmd)
    if not cmd:
        raise UsageError("kitl exec KERNEL -- CMD...: no command given")
    kernel, accel_name, _ = _prepare(request, request.names[0])
    if request.dry_run:
        return _dry_run([kernel], request, accel_name)
    with tempfile.TemporaryDirectory(prefix="kitl-exec-") as tmp:
        console = Path(tmp) / "console.log"
        try:
            with _warm_or_booted(kernel, request, accel_name, console) as vm:

                def forward(stream: str, data: bytes) -> None:
                    target = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
                    target.write(data)
                    target.flush()

                result = vm.run(cmd, timeout=request.timeout, on_output=forward)
                return result.status
        except KitlError as exc:
            outcome = outcome_for_error(exc)
            splat = getattr(exc, "splat_text", "")
            if outcome is Outcome.KERNEL_CRASH:
                # the message names the fingerprint and the crash site; then the splat
                print(f"kitl: {exc}", file=sys.stderr)
                print(splat, file=sys.stderr)
                return EXIT_FAILED
            raise


def shell(request: GuestRequest) -> int:
    kernel, accel_name, _ = _prepare(request, request.names[0])
    if request.dry_run:
        return _dry_run([kernel], request, accel_name)
    with (
        tempfile.TemporaryDirectory(prefix="kitl-shell-") as tmp,
        _vm(kernel, request, accel_name, Path(tmp) / "console.log") as vm,
    ):
        assert vm.record is not None
        stderr.print(
            f"kitl: {kernel.name} ({kernel.release}) up in "
            f"{vm.record.boot_seconds:.1f}s; exit the shell to stop the VM"
        )
        return subprocess.call(vm.ssh_command())


def show_accel(reprobe: bool) -> int:
    cache = Cache.default()
    if reprobe:
        (cache.host_dir / "accel.json").unlink(missing_ok=True)
    ks = Kernels.open(cache)
    probe_kernel = next((k for e in ks.catalog.entries if (k := ks.installed(e))), None)
    decision = accel.decide(
        "auto",
        cache,
        (lambda: accel.qemu_kvm_probe(probe_kernel.vmlinuz)) if probe_kernel else None,
    )
    print(f"{decision.accel}: {decision.reason}")
    return EXIT_OK
