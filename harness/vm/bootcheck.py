"""The spine's own check of a booted guest: is it the kernel we asked for, with BTF,
and can it host the topology later stages build (veth pairs, a netdevsim device)?"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from harness.kernel.store import Kernel
from harness.outcome import Outcome
from harness.vm.machine import VM

# One guest command for all probes: under TCG every exec costs a fraction of a second.
_PROBE = r"""
echo "release=$(uname -r)"
if [ -e /sys/kernel/btf/vmlinux ]; then echo btf=yes; else echo btf=no; fi
if ip link add kitlv0 type veth peer name kitlv1 2>/dev/null; then
    echo veth=yes; ip link del kitlv0
else
    echo veth=no
fi
if modprobe netdevsim 2>/tmp/kitl-nsim.err; then
    echo "netdevsim_module=$(modinfo -F filename netdevsim 2>/dev/null)"
    echo "netdevsim_vermagic=$(modinfo -F vermagic netdevsim 2>/dev/null | cut -d' ' -f1)"
    if echo "9 1" > /sys/bus/netdevsim/new_device 2>/dev/null; then
        d=/sys/bus/netdevsim/devices/netdevsim9/net
        n=0
        while [ $n -lt 50 ] && [ -z "$(ls $d 2>/dev/null)" ]; do sleep 0.1; n=$((n+1)); done
        echo "netdevsim_netdev=$(ls $d 2>/dev/null | head -1)"
        echo 9 > /sys/bus/netdevsim/del_device
    fi
else
    echo "netdevsim_error=$(head -c 200 /tmp/kitl-nsim.err)"
fi
"""


@dataclass
class BootCheck:
    kernel: str
    expected_release: str
    release: str = ""
    btf: bool = False
    veth: bool = False
    netdevsim_netdev: str = ""
    netdevsim_vermagic: str = ""
    netdevsim_error: str = ""
    boot_seconds: float = 0.0
    accel: str = ""
    boot_retried: str = ""  # the first boot attempt's failure, when one was retried
    outcome: Outcome = Outcome.ERROR
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = str(self.outcome)
        return data


def check(vm: VM, kernel: Kernel) -> BootCheck:
    result = vm.run(["sh", "-c", _PROBE], timeout=120)
    facts = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert vm.record is not None
    out = BootCheck(
        kernel=kernel.name,
        expected_release=kernel.release,
        release=facts.get("release", ""),
        btf=facts.get("btf") == "yes",
        veth=facts.get("veth") == "yes",
        netdevsim_netdev=facts.get("netdevsim_netdev", ""),
        netdevsim_vermagic=facts.get("netdevsim_vermagic", ""),
        netdevsim_error=facts.get("netdevsim_error", ""),
        boot_seconds=round(vm.record.boot_seconds, 2),
        accel=vm.accel,
        boot_retried=vm.record.retried,
    )
    if out.release != kernel.release:
        out.problems.append(f"guest runs {out.release!r}, expected {kernel.release!r}")
    if kernel.has_btf_config and not out.btf:
        out.problems.append("CONFIG_DEBUG_INFO_BTF=y but /sys/kernel/btf/vmlinux is missing")
    if not out.veth:
        out.problems.append("cannot create a veth pair")
    if kernel.netdevsim is not None or kernel.config.get("CONFIG_NETDEVSIM") in ("y", "m"):
        if not out.netdevsim_netdev:
            out.problems.append(f"netdevsim unusable: {out.netdevsim_error or 'no netdev'}")
        elif out.netdevsim_vermagic and out.netdevsim_vermagic != kernel.release:
            out.problems.append(f"netdevsim built for {out.netdevsim_vermagic}")
    out.outcome = Outcome.FAILED if out.problems else Outcome.PASSED
    return out
