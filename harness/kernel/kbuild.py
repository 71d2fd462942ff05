"""Kernels kitl builds: a Debian linux-source, a base config, config fragments.

A catalog entry with `build: {source: debian-6.12, fragments: [configs/btf-off.config]}` is
built once and cached by (source package digest, base, fragment contents, recipe):
 1. unpack the catalog kernel's linux-source-X tarball (the whole tree, ~15 s) into the
    source's build tree, `<cache>/builds/tree-<digest>/`, unless it is there already;
 2. configure: base "virtme" runs virtme-ng's `virtme-configkernel --allnoconfig` with
    kernels/configs/kitl-base.config and the entry's fragments as custom snippets
    (allnoconfig + the options a virtme-ng guest needs + a small bootable guest with what
    kitl needs + the variant); base "debian" starts from the Debian kernel's own config
    (with its signing keys dropped) and runs olddefconfig;
 3. check that every option the base fragment and the fragments ask for landed in the
    final .config, naming the ones that did not (a dependency kconfig dropped), before a
    minute is spent compiling;
 4. `make bzImage modules` in that tree: the first variant compiles everything, the next
    ones only what their options change (Kbuild tracks which objects read which option);
    `modules_install` into the cache, and, for a kernel without BTF but with DWARF, the
    kernel's BTF written next to it with pahole (--btf_encode_detached, as BTFHub makes
    BTF for old kernels): scenarios can hand it to libbpf as btf_custom_path
    (`load: {btf: external}`).  The tree stays for the next variant (about 3 GB).
The result boots like a `path:` entry.  Measured times are in docs/benchmarks.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import BuildError, ConfigError
from harness.kernel.cache import Cache, staging_dir
from harness.kernel.catalog import BuildSource, CatalogEntry, kernels_dir
from harness.kernel.netdevsim import Runner
from harness.kernel.store import Kernel, Progress, parse_config, sha256_file

logger = logging.getLogger(__name__)

RECIPE = 1  # part of the cache key: bump when the steps below change what they produce
MANIFEST = "kitl-build.json"
TREE_MARKER = ".kitl-unpacked"  # in a build tree's directory: the package it holds
BASE_FRAGMENT = "configs/kitl-base.config"
_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
# A compiler error, a missing file or tool (make's own `***` line only says "Error 127"),
# make giving up.
_ERROR = re.compile(r"\berror\b:|: not found|No such file|\*\*\*|^Error", re.I)

# Debian's config names signing keys that only exist in Debian's build tree
_DEBIAN_OVERRIDES = ('CONFIG_SYSTEM_TRUSTED_KEYS=""', 'CONFIG_MODULE_SIG_KEY=""')


@dataclass(frozen=True)
class Built:
    path: Path  # the cache directory: root/{boot,lib/modules}, vmlinux.btf, build.log
    release: str
    build_seconds: float  # 0.0 when it came from the cache
    external_btf: Path | None


def parse_fragment(path: Path) -> dict[str, str]:
    """A config fragment: `CONFIG_X=value` and `# CONFIG_X is not set` (value "n") lines;
    other comments and blank lines are skipped; anything else is an error at file:line."""
    wanted: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if (m := _SET.match(line)) is not None:
            wanted[m.group(1)] = m.group(2)
        elif (m := _UNSET.match(line)) is not None:
            wanted[m.group(1)] = "n"
        elif line and not line.startswith("#"):
            raise ConfigError(
                f"not a config line: {line[:80]!r}",
                path=path,
                line=number,
                hint="CONFIG_X=y, CONFIG_X=\"text\" or '# CONFIG_X is not set'",
            )
    return wanted


def requested(fragments: Sequence[Path]) -> dict[str, str]:
    """What the fragments ask for together: a later fragment wins, as in the kernel's
    merge_config.sh."""
    merged: dict[str, str] = {}
    for fragment in fragments:
        merged.update(parse_fragment(fragment))
    return merged


def unlanded(wanted: dict[str, str], final: dict[str, str]) -> list[str]:
    """The requested options the final .config does not have, "CONFIG_X=y (got n)"."""
    missing = []
    for key, value in wanted.items():
        want = value.strip('"') if value != "n" else "n"
        got = final.get(key, "n")
        if got != want:
            missing.append(f"{key}={value} (got {'unset' if got == 'n' else got})")
    return missing


def build_key(source_sha256: str, spec: BuildSource, fragments: Sequence[Path]) -> str:
    """The cache key: what decides the built kernel."""
    h = hashlib.sha256(f"recipe {RECIPE}\nsource {source_sha256}\nbase {spec.base}\n".encode())
    for fragment in fragments:
        h.update(f"fragment {fragment.name}\n".encode())
        h.update(fragment.read_bytes())
    return h.hexdigest()


def fragments_of(spec: BuildSource) -> list[Path]:
    """kitl's base fragment (virtme base only), then the entry's, in order."""
    base = [kernels_dir() / BASE_FRAGMENT] if spec.base == "virtme" else []
    return [*base, *spec.fragments]


def configure_argv(fragments: Sequence[Path]) -> list[str]:
    """virtme-ng's configurator (run in the tree), the venv's own when there is one."""
    tool = Path(sys.executable).with_name("virtme-configkernel")
    argv = [str(tool) if tool.exists() else "virtme-configkernel", "--allnoconfig"]
    for fragment in fragments:
        argv += ["--custom", str(fragment)]
    return argv


def make_argv(tree: Path, jobs: int, *targets: str) -> list[str]:
    return ["make", "-C", str(tree), f"-j{jobs}", *targets]


def pahole_argv(vmlinux: Path, out: Path) -> list[str]:
    return ["pahole", f"--btf_encode_detached={out}", str(vmlinux)]


def commands(spec: BuildSource, tree: Path, jobs: int | None = None) -> list[list[str]]:
    """The commands a build runs in the unpacked tree, in order (for --dry-run); pahole runs
    only when the result has DWARF and no BTF."""
    jobs = jobs or os.cpu_count() or 2
    out = "<cache>/builds/<name>-<key>"
    configure = configure_argv(fragments_of(spec))
    if spec.base == "debian":
        configure = make_argv(tree, 1, "olddefconfig")
    return [
        configure,
        compile_argv(tree, jobs, shutil.which("ccache") is not None),
        make_argv(tree, 1, f"INSTALL_MOD_PATH={out}/root", "modules_install"),
        pahole_argv(tree / "vmlinux", Path(out) / "vmlinux.btf"),
    ]


def cache_dir(cache: Cache, entry: CatalogEntry, source_sha256: str) -> Path:
    """Where the build of `entry` from the source package with this digest is cached."""
    assert entry.build is not None
    key = build_key(source_sha256, entry.build, fragments_of(entry.build))
    return cache.root / "builds" / f"{entry.name}-{key[:16]}"


Source = Callable[[], tuple[Path, Path | None]]  # (the source deb, Debian's config)


def installed(final: Path) -> Built | None:
    try:
        data = json.loads((final / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    release = str(data.get("release", ""))
    if not (final / "root" / "boot" / f"vmlinuz-{release}").is_file():
        return None  # damaged: build again
    btf = final / "vmlinux.btf"  # also where compile.kernel_btf caches a BTF kernel's own
    external = data.get("btf") == "external" and btf.is_file()
    return Built(final, release, 0.0, btf if external else None)


def tree_dir(cache: Cache, source_sha256: str) -> Path:
    """The build tree every variant of one linux-source package is built in, kept between
    builds: a variant differs from the last one built in a few options, and Kbuild rebuilds
    only the objects whose sources use a changed option (fixdep records, per object, the
    CONFIG_ symbols it reads), so the second variant costs minutes, not a whole build."""
    return cache.root / "builds" / f"tree-{source_sha256[:16]}"


def build(
    entry: CatalogEntry,
    cache: Cache,
    source: Source,
    source_sha256: str,
    progress: Progress | None = None,
) -> Built:
    """The built kernel of `entry`, from the cache or built now.  Builds of one source
    share its tree and take its lock: parallel workers build a variant once, one variant at
    a time."""
    spec = entry.build
    assert spec is not None
    fragments = fragments_of(spec)
    wanted = requested(fragments)  # a malformed fragment fails before anything is unpacked
    final = cache_dir(cache, entry, source_sha256)
    ready = installed(final)
    if ready is not None:
        logger.info("%s: built before (%s)", entry.name, final)
        return ready
    logger.info("%s: not built yet with these fragments; building into %s", entry.name, final)
    workspace = tree_dir(cache, source_sha256)
    with cache.lock(f"build-{workspace.name}"):
        ready = installed(final)
        if ready is not None:
            return ready
        for stale in final.parent.glob(f".{final.name}.*.partial"):
            shutil.rmtree(stale, ignore_errors=True)  # a killed build of this key
        deb, debian_config = source()
        started = time.monotonic()
        log = final.with_name(final.name + ".log")  # outside the stage: kept on failure
        log.unlink(missing_ok=True)
        with staging_dir(final) as stage:
            tree = unpacked_tree(
                deb, workspace, source_sha256, log, progress=progress, name=entry.name
            )
            final_config = configure(tree, spec, fragments, debian_config, log)
            missing = unlanded(wanted, final_config)
            if missing:
                raise BuildError(
                    f"{entry.name}: requested options did not land in the final .config "
                    f"(a dependency is missing or kconfig overrode them): {'; '.join(missing)}"
                )
            jobs = os.cpu_count() or 2
            compiled = _make(tree, log, progress=progress, name=entry.name, jobs=jobs, cache=cache)
            release, btf = _install(tree, stage, final_config, log)
            seconds = round(time.monotonic() - started, 1)
            manifest = {
                "name": entry.name,
                "source": deb.name,
                "source_sha256": source_sha256,
                "base": spec.base,
                "fragments": [str(f) for f in fragments],
                "release": release,
                "btf": btf,
                "build_seconds": seconds,
                "compiled_objects": compiled,  # fewer than a whole build: the tree was reused
                "jobs": jobs,
            }
            (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            log.rename(stage / "build.log")
        external = final / "vmlinux.btf"
        return Built(final, release, seconds, external if btf == "external" else None)


def _install(tree: Path, stage: Path, final_config: dict[str, str], log: Path) -> tuple[str, str]:
    """Copy the built kernel out of the tree in Debian's layout (virtme-ng finds
    root/lib/modules/<release> from the image path); return its release and where its BTF
    is: "kernel", "external" (pahole wrote vmlinux.btf) or "none"."""
    release = _capture(["make", "-s", "-C", str(tree), "kernelrelease"], log).strip()
    boot = stage / "root" / "boot"
    boot.mkdir(parents=True)
    shutil.copy2(tree / "arch" / "x86" / "boot" / "bzImage", boot / f"vmlinuz-{release}")
    shutil.copy2(tree / ".config", boot / f"config-{release}")
    if final_config.get("CONFIG_MODULES") == "y":
        install = f"INSTALL_MOD_PATH={stage / 'root'}"
        run_logged(make_argv(tree, 1, install, "modules_install"), log)
    btf = "kernel" if final_config.get("CONFIG_DEBUG_INFO_BTF") == "y" else "none"
    if btf == "none" and final_config.get("CONFIG_DEBUG_INFO") == "y":
        run_logged(pahole_argv(tree / "vmlinux", stage / "vmlinux.btf"), log)
        btf = "external"
    return release, btf


def unpacked_tree(
    deb: Path,
    workspace: Path,
    source_sha256: str,
    log: Path,
    *,
    progress: Progress | None = None,
    name: str = "",
) -> Path:
    """The source tree in `workspace`, unpacked now unless a whole one of this package is
    there (its marker is written last, so a killed unpack is unpacked again)."""
    marker = workspace / TREE_MARKER
    trees = sorted(workspace.glob("linux-source-*"))
    if marker.is_file() and marker.read_text().strip() == source_sha256 and len(trees) == 1:
        return trees[0]
    shutil.rmtree(workspace, ignore_errors=True)
    tree = unpack(deb, workspace, log, progress, name)
    marker.write_text(source_sha256 + "\n")
    return tree


def kernel_of(entry: CatalogEntry, built: Built) -> Kernel:
    """The built kernel as the VM layer boots it (modules, if any, from the cache)."""
    root = built.path / "root"
    modules = root / "lib" / "modules" / built.release
    vmlinuz = root / "boot" / f"vmlinuz-{built.release}"
    return Kernel(
        name=entry.name,
        release=built.release,
        vmlinuz=vmlinuz,
        modules=modules if modules.is_dir() else None,
        config=parse_config(vmlinuz.with_name(f"config-{built.release}").read_text("utf-8")),
        digest=sha256_file(vmlinuz),
        cmdline=entry.cmdline,
        external_btf=built.external_btf,
    )


def unpack(
    deb: Path, dest: Path, log: Path, progress: Progress | None = None, name: str = ""
) -> Path:
    """linux-source-X_*.deb -> dest/linux-source-X (the tarball is multi-block xz)."""
    if progress:
        progress(f"{name}: unpacking {deb.name}", 0, 0)
    dest.mkdir(parents=True)
    run_logged(["dpkg-deb", "-x", str(deb), str(dest / "deb")], log)
    tarballs = sorted((dest / "deb" / "usr" / "src").glob("linux-source-*.tar.xz"))
    if not tarballs:
        raise BuildError(f"{deb.name} holds no linux-source tarball")
    jobs = os.cpu_count() or 2
    run_logged(["tar", "-I", f"xz -T{jobs}", "-xf", str(tarballs[0]), "-C", str(dest)], log)
    shutil.rmtree(dest / "deb")
    trees = [p for p in dest.iterdir() if p.is_dir() and p.name.startswith("linux-source-")]
    if len(trees) != 1:
        raise BuildError(f"{tarballs[0].name} did not unpack to one linux-source-X directory")
    return trees[0]


def configure(
    tree: Path,
    spec: BuildSource,
    fragments: Sequence[Path],
    debian_config: Path | None,
    log: Path,
) -> dict[str, str]:
    """Write the tree's .config from the base and the fragments; return it parsed."""
    if spec.base == "virtme":
        run_logged(configure_argv(fragments), log, cwd=tree)
    elif debian_config is None:
        raise BuildError(f"{spec.source} has no Debian config to start from")
    else:
        text = debian_config.read_text(encoding="utf-8")
        extra = [f.read_text(encoding="utf-8") for f in fragments]
        (tree / ".config").write_text("\n".join([text, *_DEBIAN_OVERRIDES, *extra]) + "\n")
        run_logged(make_argv(tree, 1, "olddefconfig"), log)
    return parse_config((tree / ".config").read_text(encoding="utf-8"))


def compile_argv(tree: Path, jobs: int, ccache: bool) -> list[str]:
    """The compile step.  With ccache, an object whose preprocessed source did not change
    is not compiled again even when make rebuilds it: switching kernel BTF on or off makes
    Kbuild rebuild every object (compiler_types.h, included by all, tests the option), yet
    with gcc almost none of them differ."""
    cc = ["CC=ccache gcc"] if ccache else []
    return make_argv(tree, jobs, *cc, "bzImage", "modules")


def ccache_env(cache: Cache) -> dict[str, str]:
    """ccache's store inside kitl's cache, sized for a few variants of a small kernel."""
    return {"CCACHE_DIR": str(cache.root / "ccache"), "CCACHE_MAXSIZE": "5G"}


def _make(
    tree: Path, log: Path, *, progress: Progress | None, name: str, jobs: int, cache: Cache
) -> int:
    """make bzImage modules, its output in the log; progress counts compiled objects, and
    so does the return value."""
    ccache = shutil.which("ccache") is not None
    argv = compile_argv(tree, jobs, ccache)
    env = {**os.environ, "LC_ALL": "C", **(ccache_env(cache) if ccache else {})}
    with log.open("a", buffering=1) as out:  # line-buffered: `tail -f` shows the progress
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        start = out.tell()
        with subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
        ) as proc:
            assert proc.stdout is not None
            compiled = 0
            for line in proc.stdout:
                out.write(line)
                if line.lstrip().startswith("CC "):
                    compiled += 1
                    if progress and compiled % 100 == 0:
                        progress(f"{name}: compiling ({compiled} objects)", 0, 0)
    if proc.returncode != 0:
        raise BuildError(
            f"{name}: `{' '.join(argv)}` failed (exit {proc.returncode}): "
            f"{first_error(output_since(log, start))}",
            hint=f"full log: {log}",
        )
    return compiled


def first_error(log: str) -> str:
    """The line that explains a failed build: the first compiler error, missing file or
    make failure (they come in that order in the log), else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in lines:
        if _ERROR.search(line):
            return line
    return lines[-1] if lines else "(no output)"


def run_logged(
    argv: list[str], log: Path, run: Runner = subprocess.run, cwd: Path | None = None
) -> None:
    """Run one build step, its output appended to `log`; a failure names the command and
    the first error of its own output (kernel and libbpf builds alike)."""
    # LC_ALL=C: first_error looks for gcc's and make's English wording.
    env = {**os.environ, "LC_ALL": "C"}
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        start = out.tell()
        try:
            proc = run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False, cwd=cwd)
        except FileNotFoundError as exc:
            raise BuildError(f"{argv[0]} is not installed (run tools/setup.sh)") from exc
    if proc.returncode != 0:
        raise BuildError(
            f"`{' '.join(argv)}` failed (exit {proc.returncode}): "
            f"{first_error(output_since(log, start))}",
            hint=f"full log: {log}",
        )


def output_since(log: Path, start: int) -> str:
    """What was written to `log` from byte `start` on: one command's output."""
    with log.open("rb") as f:
        f.seek(start)
        return f.read().decode(errors="replace")


def _capture(argv: list[str], log: Path) -> str:
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}")
    if done.returncode != 0:
        raise BuildError(f"{' '.join(argv)} failed: {done.stderr.strip()[:300]}")
    return done.stdout
