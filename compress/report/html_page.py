"""report.html: one self-contained page (the plot inline, no network, a sortable table), every string from
the results escaped, and a Content-Security-Policy that lets only the page's own script run."""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable
from typing import Any

from compress.report import text
from compress.report.findings import Findings
from compress.report.fmt import NONE
from compress.results import Results

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#1a1a1a}
h1{font-size:1.6rem;margin-bottom:.2rem}.meta{color:#555;margin-top:0}
figure{margin:1rem 0}img{max-width:100%;height:auto;border:1px solid #ddd}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:13px;white-space:nowrap}
th,td{padding:.25rem .55rem;border-bottom:1px solid #e4e4e4;text-align:left}td.num{text-align:right;
font-variant-numeric:tabular-nums}
th{cursor:pointer;user-select:none;background:#f4f4f4;position:sticky;top:0}th:hover,th:focus{background:#e8e8e8}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
tbody tr:hover{background:#f8f8f0}tr.pick{background:#fff4c2}.note{color:#555;font-size:13px}
pre{background:#f4f4f4;padding:.6rem .8rem;overflow-x:auto}
"""

# Click a header (or focus it and press Enter) to sort by it, again to reverse. Cells carry their raw
# value in data-v, so numbers sort as numbers; empty values sort last either way.
_JS = """
function cmp(x, y) {
  const nx = Number(x), ny = Number(y);
  const numeric = x !== "" && y !== "" && !isNaN(nx) && !isNaN(ny);
  return numeric ? nx - ny : x.localeCompare(y, undefined, {numeric: true});
}
function sortBy(th, col) {
  const body = th.closest("table").tBodies[0];
  const asc = th.getAttribute("aria-sort") !== "ascending";
  th.parentNode.querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", asc ? "ascending" : "descending");
  const key = tr => tr.cells[col].dataset.v;
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");
    return asc ? cmp(x, y) : cmp(y, x);
  });
  body.append(...rows);
}
document.querySelectorAll("table.sortable th").forEach((th, col) => {
  th.addEventListener("click", () => sortBy(th, col));
  th.addEventListener("keydown", e => { if (e.key === "Enter") sortBy(th, col); });
});
"""


def html_page(results: Results, table: list[dict[str, Any]], findings: Findings, png: bytes) -> str:
    title = html.escape(text.title(results))
    image = base64.b64encode(png).decode("ascii")
    meta = text.meta_lines(results)
    meta_html = _list(meta) if text.several(results) else f'<p class="meta">{html.escape(meta[0])}</p>'
    picked = [pick.row for pick in findings.picks if pick.row is not None]
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{_csp()}">',
            f"<title>{title}</title><style>{_CSS}</style></head><body>",
            f"<h1>{title}</h1>",
            meta_html,
            "<h2>Recommendation</h2>",
            f"<p>{html.escape(findings.constraints)}</p>",
            _list(text.pick_lines(findings.picks)) if findings.picks else "",
            f'<figure id="plot"><img src="data:image/png;base64,{image}" alt="{html.escape(text.PLOT_ALT)}"></figure>',
            "<h2>Scratch baselines</h2>",
            _list(findings.verdicts) if findings.verdicts else f"<p>{text.NO_VERDICT}</p>",
            *(["<h2>Failed</h2>", _list(findings.failed)] if findings.failed else []),
            *(["<h2>int8</h2>", _list(findings.int8)] if findings.int8 else []),
            "<h2>Results</h2>",
            _table(table, text.columns(results, table), picked),
            f'<p class="note">{html.escape(text.table_note(table))} Highlighted: recommended.</p>',
            "<h2>Candidates</h2>",
            _list(text.candidates(table)),
            "<h2>Reproduce</h2>",
            *_repro(results),
            f"<script>{_JS}</script>",
            "</body></html>",
        ]
    )


def _csp() -> str:
    """No network at all, and only this file's own script may run: a second line of defence behind escaping."""
    digest = base64.b64encode(hashlib.sha256(_JS.encode("utf-8")).digest()).decode("ascii")
    return f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"


def _cell(column: text.Column, row: dict[str, Any]) -> str:
    value = row[column.key]
    sort_value = "" if value is None else repr(value) if column.fmt else str(value)
    sort_value = {"True": "1", "False": "0"}.get(sort_value, sort_value)
    css = ' class="num"' if column.fmt else ""
    return f'<td{css} data-v="{html.escape(sort_value)}">{html.escape(column.text(row))}</td>'


def _table(table: list[dict[str, Any]], columns: list[text.Column], picks: list[dict[str, Any]]) -> str:
    head = "".join(f'<th scope="col" tabindex="0" title="sort">{html.escape(c.header)}</th>' for c in columns)
    body = "\n".join(
        ('<tr class="pick" title="recommended">' if any(row is pick for pick in picks) else "<tr>")
        + "".join(_cell(c, row) for c in columns)
        + "</tr>"
        for row in table
    )
    table_html = f'<table class="sortable">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>'
    return f'<div class="scroll">{table_html}</div>'


def _list(items: Iterable[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in items) + "</ul>"


def _repro(results: Results) -> list[str]:
    parts = []
    for label, run in text.runs(results):
        parts += [f"<h3>{html.escape(label)}</h3>"] if label else []
        parts.append(f"<pre><code>{html.escape(run.command or NONE)}</code></pre>")
        parts.append(_list(text.repro_lines(run)))
    return parts
