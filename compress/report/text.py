"""What the markdown and the html say alike: the table's columns, its note, the run's provenance, the
candidates' lineage. Each writer only escapes and lays it out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compress.report.fmt import NONE, count, fmt, ms, signed, spread
from compress.report.recommend import Recommendation
from compress.results import RESULTS_SCHEMA, Device, Results, Row, RunInfo, timing_device

METRIC_LABELS = {
    "top1": "top-1",
    "map50": "mAP@.5",
    "map": "mAP@[.5:.95]",
    "agreement": "top-1 agreement with dense fp32",  # photos without labels (`images`)
}
NO_VERDICT = "No scratch baseline shares an architecture with a pruned candidate here."
PLOT_ALT = "accuracy against p50 latency, one panel per target with its Pareto front, and accuracy against MACs"
TABLE_NOTE = (
    "Δ pts: against the dense model on the same target and precision (int8 for int8-qat). "
    "speedup: dense p50 / p50 on the same target, precision and threads (int8 for int8-qat). KB = 1000 bytes. "
    "parity: the exported file against PyTorch eager on the same inputs (largest output difference, "
    "top-1 agreement). front: on the accuracy-latency Pareto front of its target and thread count."
)


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


def columns(results: Results, table: list[dict[str, Any]]) -> list[Column]:
    """The table's columns; a detector's extra ones (mAP@[.5:.95], post-processing time) when some row has them."""

    def present(*columns: Column) -> list[Column]:
        return [column for column in columns if any(row.get(column.key) is not None for row in table)]

    over_seeds = " (mean over seeds)" if seeded(table) else ""
    return ([Column("run", "run")] if several(results) else []) + [
        Column("candidate", "candidate"),
        Column("lineage", "label"),
        Column("target", "target"),
        Column("precision", "precision"),
        Column("threads", "threads", fmt("g")),
        Column(f"{metric_label(results)} %{over_seeds}", "accuracy_pct", fmt(".1f")),
        *present(Column("± sd (n seeds)", "spread", spread)),
        *present(Column("95% interval", "interval_pct", lambda v: f"{v[0]:.1f}–{v[1]:.1f}")),
        Column("Δ pts", "delta_pts", signed),
        *present(Column(f"{METRIC_LABELS['map']} %", "map_pct", fmt(".1f"))),
        Column("p50 ms", "p50_ms", ms),
        Column("p90 ms", "p90_ms", ms),
        *present(Column("post-process p50 ms", "postprocess_ms", ms)),
        Column("speedup", "speedup", lambda v: f"{v:.2f}×"),
        Column("MACs (M)", "macs_m", fmt(".2f")),
        Column("params", "params", count),
        Column("size (KB)", "size_kb", fmt(".0f")),
        Column("parity max abs diff", "parity_max_abs_diff", fmt(".2g")),
        Column("parity top-1 %", "parity_top1_pct", fmt(".1f")),
        Column("front", "front", lambda v: "yes" if v else ""),
    ]


INTERVAL_NOTE = (
    "95% interval: Wilson's, over the test images; two rows are compared by McNemar's test on the images one of "
    "them got wrong (a margin it does not support is a tie within noise)."
)


BOOTSTRAP_NOTE = (
    "95% interval of mAP@.5: ± 1.96 standard deviations of its bootstrap over the test images (drawn with "
    "replacement, a fixed seed); mAP is not a mean over images, so rows are not compared image by image."
)


SEEDS_NOTE = (
    "Several seeds: a row is the mean over its seeds' models (one trained per seed) of accuracy, latency, size and "
    "parity agreement (parity difference: the largest); ± sd is the sample standard deviation of the accuracy over "
    "them (n - 1 in the denominator), n the seeds measured; Δ and speedup compare means. Every seed's row is in "
    "results.json and results.csv. Candidates are compared by Welch's t-test on their per-seed accuracies: a "
    "difference the seed-to-seed spread explains is a tie within noise."
)


def seeded(table: list[dict[str, Any]]) -> bool:
    """Whether the table has rows over several seeds (`train.seeds`)."""
    return any(row.get("spread") is not None for row in table)


def table_note(table: list[dict[str, Any]]) -> str:
    note = TABLE_NOTE
    carried = [row.get("result") is not None and row["result"].accuracy_interval is not None for row in table]
    if any(row.get("interval_pct") is not None and not own for row, own in zip(table, carried, strict=True)):
        note += " " + INTERVAL_NOTE
    if any(carried):
        note += " " + BOOTSTRAP_NOTE
    if seeded(table):
        note += " " + SEEDS_NOTE
    drops = sorted({row["max_accuracy_drop"] for row in table if row.get("max_accuracy_drop") is not None})
    if not drops:
        return note
    allowed = " or ".join(f"{drop:g}" for drop in drops)
    return (
        f"{note} int8_ac: int8 with accuracy control, the layers that cost most kept in float until the "
        f"int8 model is at most {allowed} pts below the float one on the val split."
    )


def several(results: Results) -> bool:
    return bool(results.runs)


def metric_label(run: RunInfo) -> str:
    metric = str(run.metric or "accuracy")
    return METRIC_LABELS.get(metric.lower(), metric)


def title(results: Results) -> str:
    return f"edgecomp report: {results.recipe or 'unnamed recipe'}"


def runs(results: Results) -> list[tuple[str | None, RunInfo]]:
    """(label, run provenance) per run; a single run has no label."""
    return [(run.label, run) for run in results.runs] if results.runs else [(None, results)]


def meta_lines(results: Results) -> list[str]:
    lines = []
    for label, run in runs(results):
        rows = [row for row in results.rows if label is None or row.run == label]
        lines.append(f"{label}: {_meta_line(run, rows)}" if label else _meta_line(run, rows))
    return lines


def _meta_line(run: RunInfo, rows: list[Row]) -> str:
    """'2026-11-22 · classification, top-1 · AMD EPYC, 2 cores, x86_64 · runtimes: openvino 2026.4.1'; where the
    files were timed on another machine (bench.remote), that machine first, then this one (accuracy, PyTorch)."""
    there = timing_device(rows)
    parts = [run.created[:10] if run.created else "", ", ".join(p for p in (run.task, metric_label(run)) if p)]
    if there is not None:
        host, device = there
        parts += [f"files timed on {host}: {_machine(device)}", _runtimes(device)]
        parts += [f"accuracy and PyTorch rows here: {_machine(run.device)}", _runtimes(run.device)]
    else:
        parts += [_machine(run.device), _runtimes(run.device)]
    return " · ".join(p for p in parts if p)


def _machine(device: Device | None) -> str:
    machine = [device.cpu] if device and device.cpu else []
    machine += [f"{device.cores} cores"] if device and device.cores else []
    architecture = device and (device.machine or device.arch)
    return ", ".join(machine + ([architecture] if architecture else []))


def _runtimes(device: Device | None) -> str:
    runtimes = ", ".join(f"{name} {version}" for name, version in ((device and device.runtimes) or {}).items())
    return f"runtimes: {runtimes}" if runtimes else ""


def pick_lines(picks: list[Recommendation]) -> list[str]:
    return [f"{pick.run}, {pick.target}: {pick.text}" if pick.run else f"{pick.target}: {pick.text}" for pick in picks]


def candidates(table: list[dict[str, Any]]) -> list[str]:
    """'pruned-kd (pruned+KD): dense → prune(l2, ratio=0.5) → finetune(kd); 10 epochs', once per candidate."""
    seen: dict[str, str] = {}
    for row in table:
        if row["candidate"] not in seen:
            how = " → ".join(str(step) for step in row["lineage"]) or NONE
            epochs = f"; {row['epochs']} epochs" if row["epochs"] is not None else ""
            seeds = f"; seeds {', '.join(map(str, row['seeds']))}" if row.get("seeds") else ""
            seen[row["candidate"]] = f"{row['candidate']} ({row['label']}): {how}{epochs}{seeds}"
    return list(seen.values())


def repro_lines(run: RunInfo) -> list[str]:
    versions = ", ".join(f"{name} {version}" for name, version in (run.versions or {}).items())
    return [
        f"seeds: {', '.join(map(str, run.seeds))}" if run.seeds else f"seed: {NONE if run.seed is None else run.seed}",
        f"git commit: {run.git_commit or NONE}",
        f"versions: {versions or NONE}",
        f"results: schema {run.schema_version or RESULTS_SCHEMA}, created {run.created or NONE}",
    ]
