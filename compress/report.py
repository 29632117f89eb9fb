"""results.json -> report.md, report.html, plot.png, results.csv: what each step cost and what it bought.

The report is what a user reads to pick a model, so every number and every conclusion in it is computed
from the results (none is typed in), every string that came from the results is escaped for the format it
lands in, and the four files appear together or not at all. Importing this module is cheap: matplotlib is
imported only when a plot is drawn, and torch never.

>>> results = json.loads(Path("runs/quickstart/results.json").read_text())
>>> write_report(results, Path("runs/quickstart"))["html"]
PosixPath('runs/quickstart/report.html')
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from targets.base import EdgecompError
from targets.fileio import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SCHEMA = 1
REQUIRED = ("candidate", "kind", "target", "precision", "accuracy")
KIND_LABELS = {
    "dense": "dense",
    "finetune": "pruned+ft",
    "kd": "pruned+KD",
    "scratch_e": "Scratch-E",
    "scratch_b": "Scratch-B",
    "qat": "QAT",
}
PRUNED_KINDS = ("finetune", "kd")
SCRATCH_KINDS = ("scratch_e", "scratch_b")
TARGET_ORDER = ("pytorch", "tflite", "openvino", "onnx")
PRECISION_ORDER = ("fp32", "fp16", "int8")
METRIC_LABELS = {"top1": "top-1", "map50": "mAP@.5", "map": "mAP@[.5:.95]"}
NONE = "—"

# Plot encodings: colour = target (Okabe-Ito, colour-blind safe), marker = kind, fill = precision.
TARGET_COLOURS = {"pytorch": "#555555", "tflite": "#D55E00", "openvino": "#0072B2", "onnx": "#009E73"}
SPARE_COLOURS = ("#CC79A7", "#E69F00", "#56B4E9")
KIND_MARKERS = {"dense": "*", "finetune": "s", "kd": "D", "scratch_e": "^", "scratch_b": "v", "qat": "P"}
PRECISION_FILL = {"fp32": "full", "fp16": "left", "int8": "none"}
WIDE_RANGE = 10.0  # max/min latency above which the x axis goes logarithmic


def write_report(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.md, report.html, plot.png and results.csv into `out_dir`; return their paths.

    Everything is rendered in memory first and the files are renamed into place together, so a failure
    anywhere (a plotting error, a full disk) leaves the previous report, if any, untouched and no new file.
    Keys of the returned dict: "md", "html", "plot", "csv".
    """
    out_dir = Path(out_dir)
    pairs = _pairs(results)
    table = [computed for _, computed in pairs]
    verdicts = scratch_verdicts(results)
    png = _plot_png(results, table)
    contents = {
        "md": ("report.md", _markdown(results, table, verdicts).encode("utf-8")),
        "html": ("report.html", _html(results, table, verdicts, png).encode("utf-8")),
        "plot": ("plot.png", png),
        "csv": ("results.csv", _csv(pairs).encode("utf-8")),
    }
    with ExitStack() as stack:
        for name, data in contents.values():
            stack.enter_context(atomic_path(out_dir / name)).write_bytes(data)
    return {key: out_dir / name for key, (name, _) in contents.items()}


# ---------------------------------------------------------------------------------------------- numbers


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats, in order of increasing latency.

    A point is dominated when another is at most as slow and at least as accurate, and strictly better in
    one of the two; exact duplicates do not dominate each other, so both stay on the front.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    for i in order:
        latency, accuracy = points[i]
        if front:
            best_latency, best_accuracy = points[front[-1]]
            if accuracy < best_accuracy or (accuracy == best_accuracy and latency > best_latency):
                continue
        front.append(i)
    return front


def table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every results row with what a reader compares: accuracy in %, Δ points and speedup against dense.

    Δ is against the dense row of the same target and precision (accuracy does not depend on threads);
    speedup is dense p50 / p50 on the same target, precision and threads, so a ratio never mixes thread
    counts. Sorted by target, precision, then accuracy (best first). Missing inputs give None, not 0.
    """
    return [computed for _, computed in _pairs(results)]


def plot_points(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table rows the plot draws: those with a latency, at the largest thread count run on their target.

    One thread count per target keeps each Pareto front a comparison of like with like.
    """
    timed = [row for row in table if row["p50_ms"] is not None]
    top: dict[str, float] = {}
    for row in timed:
        top[row["target"]] = max(top.get(row["target"], 0), row["threads"] or 0)
    return [row for row in timed if (row["threads"] or 0) == top[row["target"]]]


def scratch_verdicts(results: dict[str, Any]) -> list[str]:
    """One line per pruned architecture: did inheriting the pruned weights beat training it from scratch?

    Liu et al. (ICLR 2019) found that the same pruned architecture trained from random init often matches
    or beats fine-tuning, so every report answers the question from its own numbers. Rows that share MACs
    are the same architecture. The comparison is on pytorch fp32 (the trained model before any export)
    when both sides have it, else on every target and precision where both do.
    """
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in _rows(results):
        if row["kind"] in PRUNED_KINDS + SCRATCH_KINDS and row.get("macs") is not None:
            groups[row["macs"]].append(row)
    lines = []
    for macs, rows in groups.items():
        for (target, precision), accuracies in _comparable_settings(rows):
            lines.append(f"{macs / 1e6:.2f} M MACs, {target} {precision}: {_verdict(accuracies)}")
    return lines


def _comparable_settings(rows: list[dict[str, Any]]) -> list[tuple[tuple[str, str], dict[str, float]]]:
    """(target, precision) -> best accuracy per kind, kept where a pruned and a scratch kind both ran."""
    settings: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for row in rows:
        accuracies = settings[(row["target"], row["precision"])]
        accuracies[row["kind"]] = max(accuracies.get(row["kind"], 0.0), row["accuracy"])
    both = {
        key: acc
        for key, acc in settings.items()
        if any(k in acc for k in PRUNED_KINDS) and any(k in acc for k in SCRATCH_KINDS)
    }
    if ("pytorch", "fp32") in both:
        return [(("pytorch", "fp32"), both[("pytorch", "fp32")])]
    return sorted(both.items(), key=lambda item: (_rank(TARGET_ORDER, item[0][0]), _rank(PRECISION_ORDER, item[0][1])))


def _verdict(accuracies: dict[str, float]) -> str:
    """'pruned+KD 97.2% vs Scratch-E 95.1% (+2.1 pts) ...: <who won>', margins as displayed (0.1 pt)."""
    pruned = {k: accuracies[k] for k in PRUNED_KINDS if k in accuracies}
    scratch = {k: accuracies[k] for k in SCRATCH_KINDS if k in accuracies}
    best = max(pruned, key=pruned.__getitem__)
    others = "".join(f" (and {KIND_LABELS[k]} {_pct(a)})" for k, a in pruned.items() if k != best)
    versus = " and ".join(
        f"{KIND_LABELS[k]} {_pct(a)} ({_signed(100 * (pruned[best] - a))} pts)" for k, a in scratch.items()
    )
    rival = max(scratch, key=scratch.__getitem__)
    margin = round(100 * (pruned[best] - scratch[rival]), 1)
    if margin > 0:
        outcome = "fine-tuning the pruned weights won."
    elif margin < 0:
        outcome = (
            f"{KIND_LABELS[rival]} won by {-margin:.1f} pts — as Liu et al. (2019) found, "
            "the pruned architecture, not the inherited weights, carries the accuracy."
        )
    else:
        outcome = f"a tie with {KIND_LABELS[rival]}: the inherited weights bought no accuracy, "
        outcome += "as Liu et al. (2019) found."
    return f"{KIND_LABELS[best]} {_pct(pruned[best])}{others} vs {versus}: {outcome}"


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a results dict this module can read; anything else is a clear user error."""
    if results.get("schema") != SCHEMA:
        raise EdgecompError(
            f"results schema {results.get('schema')!r} is not {SCHEMA}, the one this edgecomp reads; "
            "regenerate results.json with `edgecomp run` from this version"
        )
    rows = results.get("rows") or []
    for i, row in enumerate(rows):
        missing = [key for key in REQUIRED if row.get(key) is None]
        if missing:
            raise EdgecompError(f"results row {i} ({row.get('candidate', '?')!r}) has no {', '.join(missing)}")
    return rows


def _pairs(results: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(raw row, computed table row) in table order, so the csv and the table list rows alike."""
    rows = _rows(results)
    dense_accuracy: dict[tuple, float] = {}
    dense_p50: dict[tuple, float | None] = {}
    for row in rows:
        if row["kind"] == "dense":
            dense_accuracy.setdefault((row["target"], row["precision"]), row["accuracy"])
            dense_p50.setdefault((row["target"], row["precision"], row.get("threads")), row.get("latency_ms_p50"))
    pairs = [
        (
            row,
            _computed(
                row,
                dense_accuracy.get((row["target"], row["precision"])),
                dense_p50.get((row["target"], row["precision"], row.get("threads"))),
            ),
        )
        for row in rows
    ]
    return sorted(pairs, key=lambda pair: _order(pair[1]))


def _computed(row: dict[str, Any], dense_accuracy: float | None, dense_p50: float | None) -> dict[str, Any]:
    parity = row.get("parity") or {}
    return {
        "candidate": row["candidate"],
        "kind": row["kind"],
        "label": KIND_LABELS.get(row["kind"], row["kind"]),
        "lineage": row.get("lineage") or [],
        "epochs": row.get("epochs"),
        "target": row["target"],
        "precision": row["precision"],
        "threads": row.get("threads"),
        "accuracy": row["accuracy"],
        "accuracy_pct": 100 * row["accuracy"],
        "delta_pts": None if dense_accuracy is None else 100 * (row["accuracy"] - dense_accuracy),
        "p50_ms": row.get("latency_ms_p50"),
        "p90_ms": row.get("latency_ms_p90"),
        "speedup": _ratio(dense_p50, row.get("latency_ms_p50")),
        "macs_m": _scaled(row.get("macs"), 1e-6),
        "params": row.get("params"),
        "size_kb": _scaled(row.get("size_bytes"), 1e-3),
        "parity_max_abs_diff": parity.get("max_abs_diff"),
        "parity_top1_pct": _scaled(parity.get("top1_agreement"), 100),
    }


def _order(row: dict[str, Any]) -> tuple:
    return (
        _rank(TARGET_ORDER, row["target"]),
        _rank(PRECISION_ORDER, row["precision"]),
        -row["accuracy"],
        row["candidate"],
        row["threads"] or 0,
    )


def _rank(known: tuple[str, ...], name: str) -> tuple[int, str]:
    """Known names in their usual order, unknown ones after them alphabetically."""
    return (known.index(name) if name in known else len(known), name)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


# ---------------------------------------------------------------------------------------------- text


def _fmt(spec: str) -> Callable[[Any], str]:
    return lambda value: format(value, spec)


def _signed(points: float) -> str:
    """'+1.2' / '-0.4'; a difference that rounds to zero is '0.0', never '-0.0'."""
    rounded = round(points, 1)
    return "0.0" if rounded == 0 else f"{rounded:+.1f}"


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def _ms(value: float) -> str:
    """Three significant digits with trailing zeros kept ('4.00', '0.245'), so a column lines up."""
    return f"{value:.0f}" if value >= 100 else format(value, "#.3g")


def _count(n: float) -> str:
    """700000 -> '700K', 2240000 -> '2.24M'."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


@dataclass(frozen=True)
class Column:
    """One table column; `fmt` set means numeric (right-aligned, sorted by value in the html)."""

    header: str
    key: str
    fmt: Callable[[Any], str] | None = None

    def text(self, row: dict[str, Any]) -> str:
        value = row[self.key]
        if value is None:
            return NONE
        return self.fmt(value) if self.fmt else str(value)


def _columns(metric: str) -> list[Column]:
    return [
        Column("candidate", "candidate"),
        Column("kind", "label"),
        Column("target", "target"),
        Column("precision", "precision"),
        Column("threads", "threads", _fmt("g")),
        Column(f"{metric} %", "accuracy_pct", _fmt(".1f")),
        Column("Δ pts", "delta_pts", _signed),
        Column("p50 ms", "p50_ms", _ms),
        Column("p90 ms", "p90_ms", _ms),
        Column("speedup", "speedup", lambda v: f"{v:.2f}×"),
        Column("MACs (M)", "macs_m", _fmt(".2f")),
        Column("params", "params", _count),
        Column("size (KB)", "size_kb", _fmt(".0f")),
        Column("parity max abs diff", "parity_max_abs_diff", _fmt(".2g")),
        Column("parity top-1 %", "parity_top1_pct", _fmt(".1f")),
    ]


TABLE_NOTE = (
    "Δ pts: against the dense model on the same target and precision. "
    "speedup: dense p50 / p50 on the same target, precision and threads. KB = 1000 bytes. "
    "parity: the exported file against PyTorch eager on the same inputs (largest output difference, "
    "top-1 agreement)."
)


def _metric(results: dict[str, Any]) -> str:
    metric = str(results.get("metric") or "accuracy")
    return METRIC_LABELS.get(metric.lower(), metric)


def _title(results: dict[str, Any]) -> str:
    return f"edgecomp report: {results.get('recipe') or 'unnamed recipe'}"


def _meta_line(results: dict[str, Any]) -> str:
    """'2026-11-22 · classification, top-1 · AMD EPYC, 2 cores, x86_64 · runtimes: openvino 2026.4.1'."""
    device = results.get("device") or {}
    machine = [str(device["cpu"])] if device.get("cpu") else []
    machine += [f"{device['cores']} cores"] if device.get("cores") else []
    machine += [str(device["arch"])] if device.get("arch") else []
    runtimes = ", ".join(f"{name} {version}" for name, version in (device.get("runtimes") or {}).items())
    parts = [
        str(results["created"])[:10] if results.get("created") else "",
        ", ".join(str(p) for p in (results.get("task"), _metric(results)) if p),
        ", ".join(machine),
        f"runtimes: {runtimes}" if runtimes else "",
    ]
    return " · ".join(p for p in parts if p)


def _candidates(table: list[dict[str, Any]]) -> list[str]:
    """'pruned-kd (pruned+KD): dense → prune(l2, ratio=0.5) → finetune(kd); 10 epochs', once per candidate."""
    seen: dict[str, str] = {}
    for row in table:
        if row["candidate"] not in seen:
            how = " → ".join(str(step) for step in row["lineage"]) or NONE
            epochs = f"; {row['epochs']} epochs" if row["epochs"] is not None else ""
            seen[row["candidate"]] = f"{row['candidate']} ({row['label']}): {how}{epochs}"
    return list(seen.values())


def _repro_lines(results: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{name} {version}" for name, version in (results.get("versions") or {}).items())
    return [
        f"seed: {results.get('seed', NONE)}",
        f"versions: {versions or NONE}",
        f"results: schema {results.get('schema')}, created {results.get('created') or NONE}",
    ]


# ---------------------------------------------------------------------------------------------- markdown

# Underscores inside a word (ai_edge_litert) never start emphasis, so only the others are escaped.
_MD_SPECIAL = re.compile(r"([\\`*\[\]|]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def _md(text: Any) -> str:
    """Text that renders as itself in a markdown table cell: no html, no emphasis, no column breaks."""
    flat = " ".join(str(text).splitlines())
    return _MD_SPECIAL.sub(r"\\\1", html.escape(flat, quote=False))


def _fence(text: str) -> str:
    """A fenced code block whose fence is longer than any backtick run inside `text`."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def _markdown(results: dict[str, Any], table: list[dict[str, Any]], verdicts: list[str]) -> str:
    columns = _columns(_metric(results))
    lines = [f"# {_md(_title(results))}", "", _md(_meta_line(results)), "", "![accuracy vs latency](plot.png)", ""]
    lines += ["## Results", "", "| " + " | ".join(_md(c.header) for c in columns) + " |"]
    lines.append("|" + "|".join("---:" if c.fmt else "---" for c in columns) + "|")
    lines += ["| " + " | ".join(_md(c.text(row)) for c in columns) + " |" for row in table]
    lines += ["", _md(TABLE_NOTE), "", "## Candidates", ""]
    lines += [f"- {_md(line)}" for line in _candidates(table)]
    lines += ["", "## Scratch baselines", ""]
    lines += [f"- {_md(v)}" for v in verdicts] or ["No scratch baseline shares MACs with a pruned candidate here."]
    lines += ["", "## Reproduce", "", _fence(str(results.get("command") or NONE)), ""]
    lines += [f"- {_md(line)}" for line in _repro_lines(results)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- html

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#1a1a1a}
h1{font-size:1.6rem;margin-bottom:.2rem}.meta{color:#555;margin-top:0}
img{max-width:100%;height:auto;border:1px solid #ddd}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:13px;white-space:nowrap}
th,td{padding:.25rem .55rem;border-bottom:1px solid #e4e4e4;text-align:left}td.num{text-align:right;
font-variant-numeric:tabular-nums}
th{cursor:pointer;user-select:none;background:#f4f4f4;position:sticky;top:0}th:hover{background:#e8e8e8}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
tbody tr:hover{background:#f8f8f0}.note{color:#555;font-size:13px}
pre{background:#f4f4f4;padding:.6rem .8rem;overflow-x:auto}
"""

# Click a header to sort by it (again to reverse). Cells carry their raw value in data-v, so numbers
# sort as numbers; empty values sort last either way.
_JS = """
function cmp(x, y) {
  const nx = Number(x), ny = Number(y);
  const numeric = x !== "" && y !== "" && !isNaN(nx) && !isNaN(ny);
  return numeric ? nx - ny : x.localeCompare(y, undefined, {numeric: true});
}
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
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
}));
"""


def _csp() -> str:
    """No network at all, and only this file's own script may run: a second line of defence behind escaping."""
    digest = base64.b64encode(hashlib.sha256(_JS.encode("utf-8")).digest()).decode("ascii")
    return f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"


def _html_cell(column: Column, row: dict[str, Any]) -> str:
    value = row[column.key]
    sort_value = "" if value is None else repr(value) if column.fmt else str(value)
    css = ' class="num"' if column.fmt else ""
    return f'<td{css} data-v="{html.escape(sort_value)}">{html.escape(column.text(row))}</td>'


def _html_table(table: list[dict[str, Any]], columns: list[Column]) -> str:
    head = "".join(f'<th scope="col" title="sort">{html.escape(c.header)}</th>' for c in columns)
    body = "\n".join("<tr>" + "".join(_html_cell(c, row) for c in columns) + "</tr>" for row in table)
    table_html = f'<table class="sortable">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>'
    return f'<div class="scroll">{table_html}</div>'


def _html_list(items: Iterable[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in items) + "</ul>"


def _html(results: dict[str, Any], table: list[dict[str, Any]], verdicts: list[str], png: bytes) -> str:
    title = html.escape(_title(results))
    image = base64.b64encode(png).decode("ascii")
    verdict_html = (
        _html_list(verdicts) if verdicts else "<p>No scratch baseline shares MACs with a pruned candidate here.</p>"
    )
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{_csp()}">',
            f"<title>{title}</title><style>{_CSS}</style></head><body>",
            f"<h1>{title}</h1>",
            f'<p class="meta">{html.escape(_meta_line(results))}</p>',
            f'<img src="data:image/png;base64,{image}" alt="accuracy against p50 latency, one point per variant">',
            "<h2>Results</h2>",
            _html_table(table, _columns(_metric(results))),
            f'<p class="note">{html.escape(TABLE_NOTE)}</p>',
            "<h2>Candidates</h2>",
            _html_list(_candidates(table)),
            "<h2>Scratch baselines</h2>",
            verdict_html,
            "<h2>Reproduce</h2>",
            f"<pre><code>{html.escape(str(results.get('command') or NONE))}</code></pre>",
            _html_list(_repro_lines(results)),
            f"<script>{_JS}</script>",
            "</body></html>",
        ]
    )


# ---------------------------------------------------------------------------------------------- csv

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_value(value: Any) -> Any:
    """Flat, spreadsheet-safe cell: lists joined, dicts as json, text that a spreadsheet would run as a
    formula prefixed with a quote (numbers stay numbers)."""
    if value is None:
        return ""
    if isinstance(value, list):
        value = " > ".join(str(v) for v in value)
    elif isinstance(value, dict):
        value = json.dumps(value)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A results row with its parity dict spread into parity_<key> columns."""
    flat = {key: value for key, value in row.items() if key != "parity"}
    for key in ("max_abs_diff", "mean_abs_diff", "top1_agreement"):
        flat[f"parity_{key}"] = None
    flat.update({f"parity_{key}": value for key, value in (row.get("parity") or {}).items()})
    return flat


def _round(value: float | None) -> float | None:
    """Computed columns to 4 decimals: more would only show float noise (-0.5599999999999938)."""
    return None if value is None else round(value, 4)


def _csv(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """One line per results row, in table order: the raw fields plus the computed Δ and speedup."""
    records = [_flat(raw) | {key: _round(computed[key]) for key in ("delta_pts", "speedup")} for raw, computed in pairs]
    fields = list(dict.fromkeys(key for record in records for key in record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: _csv_value(record.get(key)) for key in fields} for record in records)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- plot


def _plot_png(results: dict[str, Any], table: list[dict[str, Any]]) -> bytes:
    """The accuracy-latency plot as PNG bytes (1500x900 px, readable at 1000x600)."""
    buffer = io.BytesIO()
    _figure(results, table).savefig(buffer, format="png", dpi=150)
    return buffer.getvalue()


def _figure(results: dict[str, Any], table: list[dict[str, Any]]) -> Figure:
    """Accuracy against p50 latency: colour = target, marker = kind, fill = precision, step line = front.

    Built on a bare Figure (Agg canvas) rather than pyplot, so drawing never switches the backend or
    keeps figures alive in the caller's process.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 6), layout="constrained")
    axes = figure.add_subplot()
    points = plot_points(table)
    colours = _target_colours(points)
    for row in points:
        _draw_point(axes, row, colours[row["target"]])
    for target, colour in colours.items():
        _draw_front(axes, [row for row in points if row["target"] == target], colour)
    _style_axes(axes, results, points)
    _legend(axes, points, colours)
    return figure


def _target_colours(points: list[dict[str, Any]]) -> dict[str, str]:
    targets = sorted({row["target"] for row in points}, key=lambda t: _rank(TARGET_ORDER, t))
    spare = iter(SPARE_COLOURS * len(targets))
    return {t: TARGET_COLOURS.get(t) or next(spare) for t in targets}


def _marker_style(kind: str, precision: str, colour: str) -> dict[str, Any]:
    star = KIND_MARKERS.get(kind, "X") == "*"
    return {
        "marker": KIND_MARKERS.get(kind, "X"),
        "markersize": 16 if star else 9,
        "fillstyle": PRECISION_FILL.get(precision, "bottom"),
        "color": colour,
        "markerfacecoloralt": "white",
        "markeredgewidth": 1.6,
        "linestyle": "none",
    }


def _draw_point(axes: Any, row: dict[str, Any], colour: str) -> None:
    """One variant; the dense fp32 reference of each target also gets a ring, so the baseline is found at once."""
    axes.plot(row["p50_ms"], row["accuracy_pct"], zorder=3, **_marker_style(row["kind"], row["precision"], colour))
    if row["kind"] == "dense" and row["precision"] == "fp32":
        axes.plot(row["p50_ms"], row["accuracy_pct"], zorder=2, **_ring(colour))


def _ring(colour: str) -> dict[str, Any]:
    return {
        "marker": "o",
        "markersize": 26,
        "fillstyle": "none",
        "color": colour,
        "alpha": 0.6,
        "linestyle": "none",
    }


def _draw_front(axes: Any, rows: list[dict[str, Any]], colour: str) -> None:
    """The target's Pareto front as a step: the best accuracy reachable within each latency."""
    front = [rows[i] for i in pareto_front([(row["p50_ms"], row["accuracy_pct"]) for row in rows])]
    axes.step(
        [row["p50_ms"] for row in front],
        [row["accuracy_pct"] for row in front],
        where="post",
        color=colour,
        linestyle="--",
        linewidth=1.3,
        alpha=0.7,
        zorder=2,
    )


def _style_axes(axes: Any, results: dict[str, Any], points: list[dict[str, Any]]) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    metric = _metric(results)
    axes.set_title(f"{results.get('recipe') or ''}: {metric} against latency (batch 1, p50)", loc="left")
    axes.set_xlabel("p50 latency (ms, lower is better)")
    axes.set_ylabel(f"{metric} (%, higher is better)")
    axes.grid(True, which="major", alpha=0.3)
    axes.margins(x=0.06, y=0.08)
    latencies = [row["p50_ms"] for row in points if row["p50_ms"] > 0]
    if not latencies:
        axes.text(0.5, 0.5, "no latency measured", transform=axes.transAxes, ha="center", va="center")
    elif max(latencies) / min(latencies) > WIDE_RANGE:
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())


def _legend(axes: Any, points: list[dict[str, Any]], colours: dict[str, str]) -> None:
    """One legend, three titled groups (target colour, kind marker, precision fill), outside the axes."""
    from matplotlib.lines import Line2D

    def entry(label: str, **style: Any) -> Line2D:
        return Line2D([], [], label=label, **style)

    threads = {row["target"]: row["threads"] for row in points}
    kinds = sorted({row["kind"] for row in points}, key=lambda k: _rank(tuple(KIND_MARKERS), k))
    precisions = sorted({row["precision"] for row in points}, key=lambda p: _rank(PRECISION_ORDER, p))
    headers = ["Target", "Kind", "Precision"]
    handles = [entry(headers[0], linestyle="none")]
    handles += [
        entry(f"{t}, {threads[t]} threads" if threads[t] else t, color=c, linestyle="none", marker="o", markersize=9)
        for t, c in colours.items()
    ]
    handles += [entry("Pareto front (per target)", color="#444444", linestyle="--")]
    handles += [entry(headers[1], linestyle="none")]
    handles += [entry(KIND_LABELS.get(k, k), **_marker_style(k, "fp32", "#444444")) for k in kinds]
    handles += [entry("dense fp32 (ringed)", **(_ring("#444444") | {"markersize": 15}))] if "dense" in kinds else []
    handles += [entry(headers[2], linestyle="none")]
    handles += [entry(p, **(_marker_style("", p, "#444444") | {"marker": "o"})) for p in precisions]
    legend = axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=10)
    for text in legend.get_texts():
        if text.get_text() in headers:
            text.set_fontweight("bold")
