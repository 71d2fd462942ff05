"""The wheel: built offline from a copy of the source (never in the work tree, which it
would litter with build/), its files, and installed into a fresh venv outside the
repository, where kitl finds its catalog, lock, guest files and bundled scenarios.

The venv gets no index (pip --no-index --no-deps): kitl's dependencies come from the venv
running the tests, through a .pth line (its site-packages' own .pth files, kitl's editable
finder among them, are not run from there, so `harness` is the wheel's).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE = ("harness", "kernels", "scenarios", "pyproject.toml", "README.md")
SCENARIOS = sorted(p.name for p in (REPO / "scenarios").iterdir() if p.is_dir())


def clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH, which would put the work tree's harness first."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCE:
        path = REPO / name
        if path.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "catalog.local.yaml")
            shutil.copytree(path, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), "."],
        cwd=src, check=True, capture_output=True, env=clean_env(),
    )  # fmt: skip
    (built,) = out.glob("kitl-*.whl")
    return built


def test_the_wheel_carries_the_data_kitl_reads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "harness/guest/init.sh",
        "harness/pytest_plugin/pytest-kitl.ini",
        "harness/py.typed",
        "harness/data/debian-packages.txt",
        "harness/data/kernels/catalog.yaml",
        "harness/data/kernels/kernels.lock",
        "harness/data/kernels/configs/kitl-base.config",
        *(f"harness/data/scenarios/{s}/scenario.yaml" for s in SCENARIOS),
    }
    assert expected <= names
    for scenario in SCENARIOS:  # each scenario's C sources
        assert any(n.startswith(f"harness/data/scenarios/{scenario}/") and n.endswith(".bpf.c")
                   for n in names), scenario  # fmt: skip
    assert not [n for n in names if n.startswith(("tests/", "bench/", "kernels/", "scenarios/"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "kitl = harness.cli.main:main" in text
    assert "kitl = harness.pytest_plugin.plugin" in text


def test_the_installed_wheel_works_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    deps = sysconfig.get_paths()["purelib"]
    Path(purelib, "kitl-test-deps.pth").write_text(deps + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index",
         "--no-deps", str(wheel)],
        check=True, capture_output=True, env=clean_env(),
    )  # fmt: skip
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = clean_env() | {"KITL_CACHE": str(tmp_path / "cache")}

    def kitl(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [env_dir / "bin" / "kitl", *argv],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    where = subprocess.run(
        [python, "-c", "import harness; print(harness.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(purelib)
    assert kitl("--help").returncode == 0
    checked = kitl("check", "xdp-basics")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{purelib}/harness/data/scenarios/xdp-basics/scenario.yaml")
    listed = kitl("kernels", "list")
    assert listed.returncode == 0, listed.stderr
    assert "debian-6.1" in listed.stdout
    planned = kitl("plan", "--shards", "2", "--kernels", "debian-6.1,debian-7.2")
    assert planned.returncode == 0, planned.stderr
    assert '"shard":"2/2"' in planned.stdout
    doctor = kitl("doctor")  # boots nothing; its verdict depends on this host
    assert doctor.returncode in (0, 1), doctor.stderr
    assert "  cache " in doctor.stdout
