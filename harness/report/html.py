"""The HTML report: one static, self-contained page (inline CSS, no script, no external asset)
with the run's matrix and its failures.  harness/report/model.py
builds the model, harness/report/render.py writes it."""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from harness.report.model import Cell, Report, loader_ending, program_line

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1f2328; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
.meta { color: #59636e; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #d1d9e0; padding: 0.25em 0.6em; vertical-align: top; }
td, tbody th { white-space: nowrap; }
thead th { background: #f6f8fa; position: sticky; top: 0; }
tbody th { text-align: left; font-family: ui-monospace, monospace; font-weight: normal; }
td.pass { background: #dafbe1; }
td.fail { background: #ffebe9; }
td.skip { background: #f6f8fa; color: #59636e; }
td.infra { background: #fff1c2; }
td a, .links a { font-size: 0.8em; margin-left: 0.4em; }
pre { background: #f6f8fa; padding: 0.6em; overflow-x: auto; }
section.failure { border-top: 1px solid #d1d9e0; margin-top: 1em; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _href(target: Path, out_dir: Path) -> str:
    # relative, so the report directory and the run can move together (CI artifacts)
    return quote(Path(os.path.relpath(target, out_dir.resolve())).as_posix())


def _links(report: Report, cell: Cell, out_dir: Path) -> str:
    targets = [("log", report.log_file(cell))]
    kernel = cell.record.kernel
    targets += [(kind, report.guest_file(kernel, kind)) for kind in ("dmesg", "console")]
    return "".join(
        f'<a href="{_e(_href(path, out_dir))}">{kind}</a>' for kind, path in targets if path
    )


def _matrix(report: Report, out_dir: Path) -> list[str]:
    out = ['<table id="matrix">', "<thead><tr><th>scenario::case</th>"]
    out += [f'<th data-column="{_e(c.label)}">{_e(c.label)}</th>' for c in report.columns]
    out += ["<th>first failing kernel</th></tr></thead>", "<tbody>"]
    for row in report.rows:
        out.append(f'<tr data-row="{_e(row)}"><th scope="row">{_e(row)}</th>')
        for column in report.columns:
            cell = report.cell(row, column)
            if cell is None:
                out.append(f'<td class="none" data-column="{_e(column.label)}"></td>')
                continue
            out.append(
                f'<td class="{cell.category}" data-column="{_e(column.label)}"'
                f' data-outcome="{_e(cell.outcome)}" title="{_e(cell.reason or cell.outcome)}">'
                f"{_e(cell.display)}{_links(report, cell, out_dir)}</td>"
            )
        first = report.first_failing_kernel(row)
        out.append(f'<td class="first">{_e(first or "—")}</td></tr>')
    out += ["</tbody>", "</table>"]
    return out


def _loaders(report: Report) -> list[str]:
    """Each loader case's cell: its command, how it ended, the programs it loaded."""
    cells = report.loader_cells
    if not cells:
        return []
    out = [f"<h2>User loaders ({len(cells)})</h2>", '<table id="loaders">']
    out.append("<thead><tr><th>cell</th><th>command</th><th>ended</th>")
    out.append("<th>programs loaded</th></tr></thead><tbody>")
    for cell in cells:
        run = cell.loader
        assert run is not None
        programs = "<br>".join(_e(program_line(p)) for p in run.programs) or "none"
        out.append(
            f'<tr data-cell="{_e(cell.cell_id)}"><th scope="row">{_e(cell.cell_id)}</th>'
            f"<td><code>{_e(cell.record.program)}</code></td>"
            f'<td class="{cell.category}">{_e(loader_ending(run))}</td><td>{programs}</td></tr>'
        )
    out += ["</tbody>", "</table>"]
    return out


def _failures(report: Report, out_dir: Path) -> list[str]:
    failures = report.failures
    out = [f"<h2>Failures ({len(failures)})</h2>"]
    if not failures:
        out.append("<p>None.</p>")
    for cell in failures:
        out.append(f'<section class="failure" data-cell="{_e(cell.cell_id)}">')
        out.append(f"<h3>{_e(cell.symbol)} {_e(cell.cell_id)}: {_e(cell.outcome)}</h3>")
        if cell.reason:
            out.append(f'<p class="reason">{_e(cell.reason)}</p>')
        if links := _links(report, cell, out_dir):
            out.append(f'<p class="links">{links}</p>')
        what, text = report.excerpt(cell)
        if text:
            out.append(f"<p>{_e(what.capitalize())} (tail):</p><pre>{_e(text)}</pre>")
        out.append(f'<p>Reproduce:</p><pre class="repro">{_e(report.repro(cell))}</pre>')
        out.append("</section>")
    return out


def render_html(report: Report, out_dir: Path) -> str:
    """The page for `report`, its links relative to `out_dir`, where it will be written."""
    meta = [f"run {report.run_dir}", "kernels " + ", ".join(report.kernels)]
    meta += [
        f"{key} {report.meta[key]}"
        for key in ("accel", "started", "finished")
        if isinstance(report.meta.get(key), str)
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>kitl report: {_e(report.run_dir)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<h1>kitl report</h1>",
        f'<p class="headline"><strong>{_e(report.headline())}</strong></p>',
        f'<p class="meta">{_e(" · ".join(meta))}</p>',
        *_matrix(report, out_dir),
        *_loaders(report),
        *_failures(report, out_dir),
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"
