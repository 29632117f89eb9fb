"""The report's table: every results row with what a reader compares (accuracy in %, Δ points and speedup
against dense, the Pareto front), as one plain dict per row that every writer and finding reads.

The input is typed (`compress.results.Row`); the table rows are derived values, keyed by the column they fill.
With several seeds (`train.seeds`) one table row stands for a candidate, target, precision and thread count over
its seeds: the mean of each measurement, and the sample standard deviation of the accuracy (`spread`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from compress.report.stats import interval, mean, sample_sd
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
    return [computed for _, computed in table_groups(Results.parse(results))]


def table_groups(results: Results) -> list[tuple[list[Row], dict[str, Any]]]:
    """(the results rows a table row stands for, the table row) in table order, so the csv lists its rows
    alike: one results row each, or with several seeds one per seed (`seed_groups`)."""
    groups = [(rows, _computed(rows)) for rows in seed_groups(results.rows)]
    dense_accuracy: dict[tuple, float] = {}
    dense_p50: dict[tuple, float | None] = {}
    for _, computed in groups:
        if computed["kind"] == "dense":
            setting = (computed["run"], computed["target"], computed["precision"])
            dense_accuracy.setdefault(setting, computed["accuracy"])
            dense_p50.setdefault((*setting, computed["threads"]), computed["p50_ms"])
    for _, computed in groups:
        setting = (computed["run"], computed["target"], computed["precision"])
        if setting not in dense_accuracy:
            setting = (*setting[:2], DENSE_PRECISION.get(computed["precision"], computed["precision"]))
        reference = dense_accuracy.get(setting)
        computed["delta_pts"] = None if reference is None else 100 * (computed["accuracy"] - reference)
        computed["speedup"] = _ratio(dense_p50.get((*setting, computed["threads"])), computed["p50_ms"])
    _mark_fronts([computed for _, computed in groups])
    return sorted(groups, key=lambda group: _order(group[1]))


def seed_groups(rows: list[Row]) -> list[list[Row]]:
    """The results rows one table row stands for, in the order of their first row: a row without a seed alone;
    rows with one, per run, candidate, target, precision and thread count, one row per seed (a second row of a
    seed, e.g. int8 with float and with int8 I/O, opens a group of its own)."""
    groups: list[list[Row]] = []
    open_groups: dict[tuple, list[list[Row]]] = defaultdict(list)
    for row in rows:
        if row.seed is None:
            groups.append([row])
            continue
        same = open_groups[(row.run, row.candidate, row.target, row.precision, row.threads)]
        group = next((group for group in same if all(other.seed != row.seed for other in group)), None)
        if group is None:
            group = []
            same.append(group)
            groups.append(group)
        group.append(row)
    return groups


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


def _computed(rows: list[Row]) -> dict[str, Any]:
    """One table row from its results rows (one, or one per seed): each measurement's mean over them (the value
    itself for one row); Δ and speedup are set by `table_groups`."""
    row = rows[0]
    seeded = row.seed is not None

    def average(field: str) -> Any:
        return mean([getattr(each, field) for each in rows])

    accuracy = average("accuracy")
    parities = [each.parity for each in rows if each.parity is not None]
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
        "accuracy": accuracy,
        "accuracy_pct": 100 * accuracy,
        # 95%: Wilson's (per-image results) or mAP's bootstrap; one seed's model's, so not over seeds
        "interval_pct": None if seeded else _percent_pair(interval(row)),
        "spread": _spread(rows) if seeded else None,  # (sample sd of the accuracy in points, seeds measured)
        "seeds": [each.seed for each in rows] if seeded else None,
        "p50_ms": average("latency_ms_p50"),
        "p90_ms": average("latency_ms_p90"),
        "macs": average("macs"),
        "macs_m": _scaled(average("macs"), 1e-6),
        "params": average("params"),
        "size_kb": mean([each.size_kb for each in rows]),
        "parity_max_abs_diff": max((p.max_abs_diff for p in parities if p.max_abs_diff is not None), default=None),
        "parity_top1_pct": _scaled(mean([p.top1_agreement for p in parities]), 100) if parities else None,
        "map_pct": _scaled(mean([(each.scores or {}).get("map") for each in rows]), 100),  # detector mAP@[.5:.95]
        "postprocess_ms": average("postprocess_ms_p50"),  # a detector's numpy NMS step, apart from the model
        "max_accuracy_drop": row.max_accuracy_drop,  # int8_ac's allowed drop, points
        "keep_float": row.keep_float,  # layer groups an int8 file keeps in float
        "activations": row.activations,  # the activation range estimator the recipe chose for an int8 file
        "sensitivity": row.sensitivity,  # int8_ac's search (TFLite, ONNX): each group's metric alone in float
        "front": False,
        "result": row,  # the typed row, for paired tests (`compress.report.stats.compare`)
        "results": rows,  # every seed's, for tests over seeds (`compress.report.stats.compare_seeds`)
    }


def _spread(rows: list[Row]) -> tuple[float | None, int]:
    sd = sample_sd([row.accuracy for row in rows])
    return (None if sd is None else 100 * sd), len(rows)


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
