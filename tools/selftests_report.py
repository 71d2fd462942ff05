#!/usr/bin/env python3
"""How kitl's verdicts on the kernel's annotated selftests agree with the annotations, per
kernel, and how the verifier's behaviour differs between kernels.

    tools/selftests_report.py RUN_DIR [RUN_DIR...]

Each RUN_DIR is a `kitl verify --annotations` run (tools/selftests_corpus.py builds the
corpus).  Per kernel: the cases, those SKIPPED (by reason), those that ran, and of those
the share whose verdict, messages and return value agree with the annotations (PASSED).
With several kernels: for each case that agrees on some kernels and not others, the first
kernel (by version) from which it agrees on every newer one, i.e. where the behaviour the
annotation describes arrived.  Markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

RAN = ("PASSED", "FAILED", "LOAD_FAILED", "VERIFIER_REJECTED", "ATTACH_FAILED")


def cells(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "results.jsonl").read_text(encoding="utf-8").splitlines()
    # a cell retried on a fresh VM has a line per attempt: the last one is its result
    by_id = {row["id"]: row for row in map(json.loads, filter(str.strip, lines))}
    return list(by_id.values())


def skip_kind(reason: str) -> str:
    """A skip reason without its particulars: 'this kernel lacks kfunc X' -> '... kfunc'."""
    for what in ("a kfunc", "a struct_ops type", "an attach target"):
        if f"lacks {what.partition(' ')[2]}" in reason:
            return f"{what} this kernel lacks (bpf_testmod's, or newer)"
    return re.sub(r"\s*\(.*$", "", reason)[:80]


def per_kernel(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| kernel | cases | skipped | ran | agree | agreement |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_kernel: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_kernel[row["kernel"]].append(row)
    for kernel in sorted(by_kernel, key=_version):
        group = by_kernel[kernel]
        outcomes = Counter(r["outcome"] for r in group)
        ran = sum(outcomes[o] for o in RAN)
        agree = outcomes["PASSED"]
        share = f"{100 * agree / ran:.1f}%" if ran else "-"
        out.append(
            f"| {kernel} | {len(group)} | {outcomes['SKIPPED']} | {ran} | {agree} | {share} |"
        )
    return out


def skips(rows: list[dict[str, Any]]) -> list[str]:
    counted = Counter(
        (r["kernel"], skip_kind(r["reason"])) for r in rows if r["outcome"] == "SKIPPED"
    )
    out = ["| kernel | skipped because | cases |", "| --- | --- | ---: |"]
    for (kernel, kind), n in sorted(counted.items(), key=lambda kv: (_version(kv[0][0]), -kv[1])):
        out.append(f"| {kernel} | {kind} | {n} |")
    return out


def disagreement(row: dict[str, Any]) -> str:
    """How a case that ran disagrees with its annotation, in a few words."""
    reason = str(row["reason"])
    if row["outcome"] == "VERIFIER_REJECTED":
        return "rejected where the annotation expects a load"
    if reason.startswith("loaded, but the case expects"):
        return "loaded where the annotation expects a rejection"
    if "the log lacks" in reason:
        return "rejected, with other messages than the annotation's"
    if "verifier log lacks" in reason:
        return "loaded, with another verifier log than the annotation's"
    if reason.startswith(("returned", "test_run failed", "expects return value")):
        return "another return value"
    if row["outcome"] == "LOAD_FAILED":
        return f"load failed: {reason.split(':', 1)[0]}"
    return reason[:60]


def disagreements(rows: list[dict[str, Any]]) -> list[str]:
    counted = Counter((r["kernel"], disagreement(r)) for r in rows if r["outcome"] in RAN[1:])
    out = ["| kernel | how it disagrees | cases |", "| --- | --- | ---: |"]
    for (kernel, kind), n in sorted(counted.items(), key=lambda kv: (_version(kv[0][0]), -kv[1])):
        out.append(f"| {kernel} | {kind} | {n} |")
    return out


def arrivals(rows: list[dict[str, Any]]) -> list[str]:
    """Cases that agree on some kernels only: from which kernel on they agree."""
    kernels = sorted({r["kernel"] for r in rows}, key=_version)
    verdicts: dict[str, dict[str, str]] = defaultdict(dict)
    for row in rows:
        verdicts[f"{row['scenario']}::{row['case']}"][row["kernel"]] = row["outcome"]
    since: Counter[str] = Counter()
    mixed = 0
    for per in verdicts.values():
        ran = [k for k in kernels if per.get(k) in RAN]
        passing = [k for k in ran if per[k] == "PASSED"]
        if not ran or len(passing) in (0, len(ran)):
            continue
        mixed += 1
        first = next(
            (k for i, k in enumerate(ran) if all(per[j] == "PASSED" for j in ran[i:])), None
        )
        since[first or "no single kernel (it changes back and forth)"] += 1
    out = [f"{mixed} cases agree on some of {', '.join(kernels)} only.", "",
           "| agrees from | cases |", "| --- | ---: |"]  # fmt: skip
    out += [f"| {k} | {n} |" for k, n in sorted(since.items(), key=lambda kv: _version(kv[0]))]
    return out


def _version(kernel: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", kernel)[:2]) or (999,)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args()
    rows = [row for run in args.runs for row in cells(run)]
    sections = [per_kernel(rows), disagreements(rows), skips(rows), arrivals(rows)]
    print("\n\n".join("\n".join(s) for s in sections))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
