"""plot.png: accuracy against p50 latency, one panel per target (and run) with its Pareto front, then accuracy
against MACs. matplotlib is imported only here, and only when a plot is drawn."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from compress.report.table import KIND_LABELS, PRECISION_ORDER, TARGET_ORDER, pareto_front, plot_points, rank
from compress.report.text import metric_label
from compress.results import Results

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Plot encodings: colour = target (Okabe-Ito, colour-blind safe), marker = kind, fill = precision.
TARGET_COLOURS = {"pytorch": "#555555", "tflite": "#D55E00", "openvino": "#0072B2", "onnx": "#009E73"}
SPARE_COLOURS = ("#CC79A7", "#E69F00", "#56B4E9")
KIND_MARKERS = {"dense": "*", "finetune": "s", "kd": "D", "scratch_e": "^", "scratch_b": "v", "qat": "P"}
PRECISION_FILL = {
    "fp32": "full",
    "fp16": "left",
    "bf16": "bottom",
    "int8": "none",
    "int8-qat": "right",
    "int8_ac": "top",
}
WIDE_RANGE = 10.0  # max/min on an axis above which it goes logarithmic
DODGE = 0.03  # relative sideways shift between (target, precision) slots at one MACs value


def plot_png(results: Results, table: list[dict[str, Any]]) -> bytes:
    """The plots as one PNG (150 dpi; about 1800 px wide for three targets)."""
    buffer = io.BytesIO()
    figure(results, table).savefig(buffer, format="png", dpi=150)
    return buffer.getvalue()


MACS = "MACs"  # the panel key of a run's accuracy-against-MACs panel


def _panels(table: list[dict[str, Any]]) -> list[tuple[str | None, str]]:
    """(run, target) per latency panel, then (run, MACS) per run: targets side by side on one accuracy axis."""
    runs = list(dict.fromkeys(row["run"] for row in table))
    timed = plot_points(table)
    panels = []
    for run in runs:
        targets = {row["target"] for row in timed if row["run"] == run}
        panels += [(run, target) for target in sorted(targets, key=lambda t: rank(TARGET_ORDER, t))]
        panels.append((run, MACS))
    return panels


def figure(results: Results, table: list[dict[str, Any]]) -> Figure:
    """Accuracy against p50 latency, one panel per target (and run), each with its Pareto front, then accuracy
    against MACs. All panels share the accuracy axis; colour = target, marker = kind, fill = precision.

    Built on a bare Figure (Agg canvas) rather than pyplot, so drawing never switches the backend or
    keeps figures alive in the caller's process.
    """
    from matplotlib.figure import Figure

    panels = _panels(table) or [(None, MACS)]
    ncols = 1 if len(panels) == 1 else 2 if len(panels) <= 4 else 3
    nrows = -(-len(panels) // ncols)
    drawing = Figure(figsize=(4.8 * ncols + 2.4, 3.7 * nrows + 0.6), layout="constrained")
    grid = drawing.subplots(nrows, ncols, sharey=True, squeeze=False).flatten()
    colours = _target_colours(table)
    points = plot_points(table)
    for axes, (run, target) in zip(grid, panels, strict=False):
        if target == MACS:
            _macs_panel(axes, [row for row in table if row["run"] == run], colours)
        else:
            _latency_panel(axes, [row for row in points if (row["run"], row["target"]) == (run, target)], colours)
        if run:
            axes.set_title(f"{run}\n{axes.get_title()}", loc="left", fontsize=9)
    for axes in grid[len(panels) :]:
        axes.set_visible(False)
    for axes in grid[::ncols]:
        axes.set_ylabel(f"{metric_label(results)} (%, higher is better)")
    over_seeds = " (mean ± sd over seeds)" if any(row.get("spread") for row in table) else ""
    title = f"{results.recipe or ''}: {metric_label(results)}{over_seeds} against latency and MACs"
    drawing.suptitle(title, x=0.01, ha="left")
    _legend(drawing, table, colours)
    return drawing


def _target_colours(table: list[dict[str, Any]]) -> dict[str, str]:
    targets = sorted({row["target"] for row in table}, key=lambda t: rank(TARGET_ORDER, t))
    spare = iter(SPARE_COLOURS * len(targets))
    return {t: TARGET_COLOURS.get(t) or next(spare) for t in targets}


def _marker_style(kind: str, precision: str, colour: str) -> dict[str, Any]:
    star = KIND_MARKERS.get(kind, "X") == "*"
    return {
        "marker": KIND_MARKERS.get(kind, "X"),
        "markersize": 15 if star else 8.5,
        "fillstyle": PRECISION_FILL.get(precision, "bottom"),
        "color": colour,
        "markerfacecoloralt": "white",
        "markeredgewidth": 1.6,
        "linestyle": "none",
    }


def _ring(colour: str) -> dict[str, Any]:
    return {"marker": "o", "markersize": 24, "fillstyle": "none", "color": colour, "alpha": 0.6, "linestyle": "none"}


def _draw_point(axes: Axes, x: float, row: dict[str, Any], colour: str) -> None:
    """One variant; the dense fp32 reference also gets a ring, so the baseline is found at once. A variant over
    several seeds is their mean, with a bar of ± one sample sd."""
    axes.plot(x, row["accuracy_pct"], zorder=3, **_marker_style(row["kind"], row["precision"], colour))
    sd = (row.get("spread") or (None, 0))[0]
    if sd:
        axes.errorbar(x, row["accuracy_pct"], yerr=sd, fmt="none", ecolor=colour, elinewidth=1.2, capsize=3, zorder=2)
    if row["kind"] == "dense" and row["precision"] == "fp32":
        axes.plot(x, row["accuracy_pct"], zorder=2, **_ring(colour))


def _latency_panel(axes: Axes, rows: list[dict[str, Any]], colours: dict[str, str]) -> None:
    """One target: its variants against p50 latency and its Pareto front as a step (the best accuracy
    reachable within each latency)."""
    colour = colours[rows[0]["target"]]
    for row in rows:
        _draw_point(axes, row["p50_ms"], row, colour)
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
    threads = rows[0]["threads"]
    axes.set_title(f"{rows[0]['target']}" + (f", {threads} threads" if threads else ""), loc="left")
    axes.set_xlabel("p50 latency (ms, batch 1)")
    _style_axes(axes, [row["p50_ms"] for row in rows])


def _macs_panel(axes: Axes, rows: list[dict[str, Any]], colours: dict[str, str]) -> None:
    """Every variant against its MACs; variants at one MACs value are spread sideways by target and
    precision so that none hides another."""
    variants = {(row["candidate"], row["target"], row["precision"]): row for row in rows if row["macs"]}
    slots = sorted(
        {(t, p) for _, t, p in variants}, key=lambda s: (rank(TARGET_ORDER, s[0]), rank(PRECISION_ORDER, s[1]))
    )
    for (_, target, precision), row in variants.items():
        shift = 1 + DODGE * (slots.index((target, precision)) - (len(slots) - 1) / 2)
        _draw_point(axes, row["macs_m"] * shift, row, colours[target])
    axes.set_title("all targets: against MACs", loc="left")
    axes.set_xlabel("MACs (millions; spread sideways by target)")
    _style_axes(axes, [row["macs_m"] for row in variants.values()])


def _style_axes(axes: Axes, xs: list[float]) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axes.grid(True, which="major", alpha=0.3)
    axes.margins(x=0.1, y=0.1)
    positive = [x for x in xs if x > 0]
    if not positive:
        axes.text(0.5, 0.5, "nothing measured", transform=axes.transAxes, ha="center", va="center")
    elif max(positive) / min(positive) > WIDE_RANGE:
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())


def _legend(drawing: Figure, table: list[dict[str, Any]], colours: dict[str, str]) -> None:
    """One legend, three titled groups (target colour, kind marker, precision fill), right of the panels."""
    from matplotlib.lines import Line2D

    def entry(label: str, **style: Any) -> Line2D:
        return Line2D([], [], label=label, **style)

    kinds = sorted({row["kind"] for row in table}, key=lambda k: rank(tuple(KIND_MARKERS), k))
    precisions = sorted({row["precision"] for row in table}, key=lambda p: rank(PRECISION_ORDER, p))
    headers = ["Target", "Kind", "Precision"]
    handles = [entry(headers[0], linestyle="none")]
    handles += [entry(t, color=c, linestyle="none", marker="o", markersize=9) for t, c in colours.items()]
    handles += [entry("Pareto front", color="#444444", linestyle="--")]
    handles += [entry(headers[1], linestyle="none")]
    handles += [entry(KIND_LABELS.get(k, k), **_marker_style(k, "fp32", "#444444")) for k in kinds]
    handles += [entry("dense fp32 (ringed)", **(_ring("#444444") | {"markersize": 15}))] if "dense" in kinds else []
    handles += [entry(headers[2], linestyle="none")]
    handles += [entry(p, **(_marker_style("", p, "#444444") | {"marker": "o"})) for p in precisions]
    legend = drawing.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=10)
    for text in legend.get_texts():
        if text.get_text() in headers:
            text.set_fontweight("bold")
