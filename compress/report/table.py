"""The report's table: every results row with what a reader compares (accuracy in %, Δ points and speedup
against dense, the Pareto front), as one plain dict per row that every writer and finding reads.

The input is typed (`compress.results.Row`); the table rows are derived values, keyed by the column they fill.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from compress.report.stats import interval
from compress.results import Results, Row

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
PRECISION_ORDER = ("fp32", "fp16", "bf16", "int8", "int8_ac", "int8-qat", "int8_dynamic")
# A QAT row is an int8 file: without a dense row of its own precision it is compared with the dense model's int8.
DENSE_PRECISION = {"int8-qat": "int8"}


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


def table_rows(results: Results | dict[str, Any]) -> list[dict[str, Any]]:
    """Every results row with what a reader compares: accuracy in %, Δ points and speedup against dense.

    Δ is against the dense row of the same run, target and precision (accuracy does not depend on
    threads); speedup is dense p50 / p50 on the same run, target, precision and threads, so a ratio never
    mixes thread counts or machines. `front` marks the rows on the accuracy-latency Pareto front of their
    run, target and thread count. Sorted by run, target, precision, then accuracy (best first). Missing
    inputs give None, not 0.
    """
    return [computed for _, computed in table_pairs(Results.parse(results))]


def table_pairs(results: Results) -> list[tuple[Row, dict[str, Any]]]:
    """(results row, table row) in table order, so the csv and the table list rows alike."""
    dense_accuracy: dict[tuple, float] = {}
    dense_p50: dict[tuple, float | None] = {}
    for row in results.rows:
        if row.kind == "dense":
            setting = (row.run, row.target, row.precision)
            dense_accuracy.setdefault(setting, row.accuracy)
            dense_p50.setdefault((*setting, row.threads), row.latency_ms_p50)
    pairs = []
    for row in results.rows:
        setting = (row.run, row.target, row.precision)
        if setting not in dense_accuracy:
            setting = (*setting[:2], DENSE_PRECISION.get(row.precision, row.precision))
        computed = _computed(row, dense_accuracy.get(setting), dense_p50.get((*setting, row.threads)))
        pairs.append((row, computed))
    _mark_fronts([computed for _, computed in pairs])
    return sorted(pairs, key=lambda pair: _order(pair[1]))


def plot_points(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table rows the latency plots draw: those with a latency, at the largest thread count run on
    their target (per run). One thread count per target keeps each Pareto front a comparison of like with like.
    """
    timed = [row for row in table if row["p50_ms"] is not None]
    top: dict[tuple, float] = {}
    for row in timed:
        key = (row["run"], row["target"])
        top[key] = max(top.get(key, 0), row["threads"] or 0)
    return [row for row in timed if (row["threads"] or 0) == top[(row["run"], row["target"])]]


def rank(known: tuple[str, ...], name: str) -> tuple[int, str]:
    """Known names in their usual order, unknown ones after them alphabetically."""
    return (known.index(name) if name in known else len(known), name)


def _mark_fronts(table: list[dict[str, Any]]) -> None:
    """Set `front` on each timed row: on its run, target and thread count's accuracy-latency front."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in table:
        if row["p50_ms"] is not None:
            groups[(row["run"], row["target"], row["threads"])].append(row)
    for rows in groups.values():
        for i in pareto_front([(row["p50_ms"], row["accuracy"]) for row in rows]):
            rows[i]["front"] = True


def _computed(row: Row, dense_accuracy: float | None, dense_p50: float | None) -> dict[str, Any]:
    parity = row.parity
    return {
        "run": row.run,
        "candidate": row.candidate,
        "kind": row.kind,
        "label": KIND_LABELS.get(row.kind, row.kind),
        "lineage": row.lineage or [],
        "epochs": row.epochs,
        "target": row.target,
        "precision": row.precision,
        "threads": row.threads,
        "accuracy": row.accuracy,
        "accuracy_pct": 100 * row.accuracy,
        "interval_pct": _percent_pair(interval(row)),  # 95%: Wilson's (per-image results) or mAP's bootstrap
        "delta_pts": None if dense_accuracy is None else 100 * (row.accuracy - dense_accuracy),
        "p50_ms": row.latency_ms_p50,
        "p90_ms": row.latency_ms_p90,
        "speedup": _ratio(dense_p50, row.latency_ms_p50),
        "macs": row.macs,
        "macs_m": _scaled(row.macs, 1e-6),
        "params": row.params,
        "size_kb": row.size_kb,
        "parity_max_abs_diff": parity and parity.max_abs_diff,
        "parity_top1_pct": _scaled(parity and parity.top1_agreement, 100),
        "map_pct": _scaled((row.scores or {}).get("map"), 100),  # a detector's mAP@[.5:.95]
        "postprocess_ms": row.postprocess_ms_p50,  # a detector's numpy NMS step, apart from the model
        "max_accuracy_drop": row.max_accuracy_drop,  # int8_ac's allowed drop, points
        "keep_float": row.keep_float,  # layer groups an int8 file keeps in float
        "sensitivity": row.sensitivity,  # int8_ac's search (TFLite, ONNX): each group's metric alone in float
        "front": False,
        "result": row,  # the typed row, for paired tests (`compress.report.stats.compare`)
    }


def _order(row: dict[str, Any]) -> tuple:
    return (
        row["run"] or "",
        rank(TARGET_ORDER, row["target"]),
        rank(PRECISION_ORDER, row["precision"]),
        -row["accuracy"],
        row["candidate"],
        row["threads"] or 0,
    )


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def _percent_pair(pair: tuple[float, float] | None) -> tuple[float, float] | None:
    return None if pair is None else (100 * pair[0], 100 * pair[1])


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor
