"""Kernels kitl builds from Debian source with config fragments, each built and booted.

- every bundled variant (btf-off, netdevsim, jit-always-on, no-bpf-lsm) configured on
  Debian's 6.12 source with virtme-ng's configurator: every option its fragments ask for
  landed in the final .config (about 15 s to unpack, 5 s per variant; no compiling);
- each variant built (from the cache when warm) and booted under TCG, with the scenario
  that shows what it changes.  On a cold cache the first variant compiles the small base
  (about 8 min on 2 cores); the others reuse its tree and ccache (3 to 6 min each), so the
  BTF-on variants come first and btf-off, which every object sees, last
  (docs/benchmarks.md has the figures).  btf-off: the bundled core-btf scenario's CO-RE
  object fails as MISSING_BTF without kernel BTF and loads with the BTF kitl generated for
  that kernel with pahole.  (Every bundled object is a CO-RE object: vmlinux.h marks its
  structs preserve_access_index, so even packet parsing relocates; on this kernel they all
  fail as MISSING_BTF unless handed the external BTF.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.cli.main import main
from harness.kernel import kbuild
from harness.kernel.cache import Cache
from harness.kernel.catalog import BuildSource, kernels_dir
from harness.kernel.resolve import Kernels

SCENARIOS = Path(__file__).parents[2] / "scenarios"
KERNELS_DIR = kernels_dir()
VARIANTS = {
    "debian-6.12-btf-off": {"CONFIG_DEBUG_INFO_BTF": "n", "CONFIG_DEBUG_INFO": "y"},
    "debian-6.12-netdevsim": {"CONFIG_NETDEVSIM": "y", "CONFIG_DEBUG_INFO_BTF": "y"},
    "debian-6.12-jit-always-on": {"CONFIG_BPF_JIT_ALWAYS_ON": "y"},
    "debian-6.12-no-bpf-lsm": {"CONFIG_BPF_LSM": "n", "CONFIG_LSM": "lockdown,yama"},
}


@pytest.fixture(scope="module")
def kernels() -> Kernels:
    return Kernels.open(Cache.default())


def test_every_bundled_variant_configures_with_its_options_landed(
    kernels: Kernels, tmp_path: Path
) -> None:
    locked, pkg = kernels.source_package("debian-6.12")
    deb = kernels.store._download(locked, "source", pkg, None)
    log = tmp_path / "configure.log"
    tree = kbuild.unpack(deb, tmp_path / "src", log)
    for name, must in VARIANTS.items():
        spec = kernels.catalog.get(name).build
        assert spec is not None
        (tree / ".config").unlink(missing_ok=True)
        fragments = kbuild.fragments_of(spec)
        final = kbuild.configure(tree, spec, fragments, None, log)
        assert kbuild.unlanded(kbuild.requested(fragments), final) == [], name
        for key, value in must.items():
            assert final.get(key, "n") == value, (name, key)
        # what every variant keeps from kitl's base: BPF, the JIT, veth, clsact, BPF tracing
        for key in ("CONFIG_BPF_SYSCALL", "CONFIG_BPF_JIT", "CONFIG_VETH", "CONFIG_NET_CLS_BPF"):
            assert final.get(key) == "y", (name, key)
    # the other base: Debian's own config with the btf-off fragment (configured, not built:
    # that build takes hours on 2 cores, see docs/benchmarks.md)
    debian = kernels.get("debian-6.12")
    spec = BuildSource("debian-6.12", (KERNELS_DIR / "configs" / "btf-off.config",), "debian")
    (tree / ".config").unlink()
    config = debian.vmlinuz.with_name(f"config-{debian.release}")
    final = kbuild.configure(tree, spec, kbuild.fragments_of(spec), config, log)
    assert kbuild.fragments_of(spec) == list(spec.fragments)  # no kitl base on Debian's
    assert kbuild.unlanded(kbuild.requested(spec.fragments), final) == []
    assert final.get("CONFIG_DEBUG_INFO_BTF", "n") == "n"
    assert final.get("CONFIG_BPF_LSM") == "y"  # the rest is Debian's
    assert sum(v == "m" for v in final.values()) > 3000  # thousands of modules


def run_on(kernel: str, scenario: str, run: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    status = main(["run", str(SCENARIOS / scenario), "--kernel", kernel, "--output", str(run)])
    body = json.loads((run / "results.json").read_text())
    return status, {c["id"]: c for c in body["cells"]}


def test_jit_always_on_refuses_the_interpreter_config(kernels: Kernels, tmp_path: Path) -> None:
    """CONFIG_BPF_JIT_ALWAYS_ON=y: the kernel refuses net.core.bpf_jit_enable=0, so the
    interp config's cells are SKIPPED with the kernel's own refusal; jit and hardened run."""
    kernel = kernels.get("debian-6.12-jit-always-on")
    assert kernel.config.get("CONFIG_BPF_JIT_ALWAYS_ON") == "y"
    status, cells = run_on(kernel.name, "xdp-basics", tmp_path / "run")
    assert status == 0
    by_config: dict[str, set[str]] = {}
    for cell in cells.values():
        by_config.setdefault(cell["config"], set()).add(cell["outcome"])
    assert by_config == {"interp": {"SKIPPED"}, "jit": {"PASSED"}, "hardened": {"PASSED"}}
    interp = next(c for c in cells.values() if c["config"] == "interp")
    assert interp["reason"].startswith("the kernel refused net.core.bpf_jit_enable=0"), interp
    assert interp["sysctls"]["net.core.bpf_jit_enable"] == "1"  # what stayed in effect


def test_no_bpf_lsm_skips_lsm_programs(kernels: Kernels, tmp_path: Path) -> None:
    kernel = kernels.get("debian-6.12-no-bpf-lsm")
    assert kernel.config.get("CONFIG_BPF_LSM", "n") == "n"
    status, cells = run_on(kernel.name, "lsm", tmp_path / "run")
    assert status == 0
    assert {c["outcome"] for c in cells.values()} == {"SKIPPED"}
    assert all("built without CONFIG_BPF_LSM" in c["reason"] for c in cells.values()), cells


def test_netdevsim_built_in_needs_no_module(kernels: Kernels, tmp_path: Path) -> None:
    kernel = kernels.get("debian-6.12-netdevsim")
    assert kernel.config.get("CONFIG_NETDEVSIM") == "y"
    assert kernel.netdevsim is None  # no out-of-tree build for this kernel
    status, cells = run_on(kernel.name, "netdevsim", tmp_path / "run")
    failed = {k: c["reason"] for k, c in cells.items() if c["outcome"] != "PASSED"}
    assert status == 0, failed
    hw = next(c for c in cells.values() if c["case"] == "xdp-hw-offload")
    assert hw["observed"]["attach"]["attach_mode"] == "hw"


def test_btf_off_kernel_missing_btf_then_external_btf(kernels: Kernels, tmp_path: Path) -> None:
    kernel = kernels.get("debian-6.12-btf-off")
    assert kernel.config.get("CONFIG_DEBUG_INFO_BTF", "n") == "n"
    assert kernel.external_btf is not None
    assert kernel.external_btf.stat().st_size > 1_000_000  # the whole kernel's BTF
    run = tmp_path / "run"
    status = main(
        [
            "run",
            str(SCENARIOS / "core-btf"),
            "--kernel",
            "debian-6.12-btf-off",
            "--output",
            str(run),
        ]
    )
    cells: dict[str, dict[str, Any]] = {
        c["id"]: c for c in json.loads((run / "results.json").read_text())["cells"]
    }
    failed = {k: (c["outcome"], c["reason"]) for k, c in cells.items() if c["outcome"] != "PASSED"}
    assert status == 0, failed
    assert not failed
    label = "debian-6.12-btf-off-default"
    plain = cells[f"core-btf::core-needs-kernel-btf[{label}]"]
    assert plain["observed"]["load"]["ok"] is False
    assert plain["observed"]["error_class"] == "MISSING_BTF", plain["observed"]
    assert plain["expected"]["error_class"] == "MISSING_BTF"  # the when: {btf: false} override
    external = cells[f"core-btf::core-with-external-btf[{label}]"]
    assert external["observed"]["load"]["ok"] is True
    assert external["observed"]["test_run"]["retval"] == 2  # XDP_PASS: the field exists
    assert len(cells) == 2
