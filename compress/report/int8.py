"""What the report says about int8 files beyond the table: those that cost more accuracy than allowed against
their fp32 twin, those slower than it, and the layers kept in float (by a recipe's `keep_float` or by int8_ac's
search) with what the search measured.

The accuracy lines read the results rows (per-image right/wrong, for McNemar's test; seeds); the others read the
report's table rows (`compress.report.table.table_rows`): run, candidate, target, precision, threads, p50_ms,
keep_float, activations, sensitivity (a `compress.results.Sensitivity`).
"""

from __future__ import annotations

from typing import Any

from compress.report.recommend import TOLERANCE
from compress.report.stats import compare_seeds
from compress.report.table import seed_groups
from compress.results import QAT_PRECISION, Results, Row
from compress.schema import DEFAULT_MAX_ACCURACY_DROP
from targets.base import PRECISIONS

INT8_PRECISIONS = (*(name for name, spec in PRECISIONS.items() if spec.integer), QAT_PRECISION)
# Why a target's int8 kind runs slower than fp32, where it is known and not in the file itself.
KNOWN_REASONS = {
    ("tflite", "int8_dynamic"): (
        "XNNPACK leaves dynamic-range int8 convolutions, depthwise above all, to TFLite's own slower kernels"
    ),
}
RANKED_GROUPS_SHOWN = 5


def int8_lines(results: Results, table: list[dict[str, Any]], metric: str, limit_pts: float | None = None) -> list[str]:
    """The report's int8 section: int8 files that cost more than `limit_pts` (default
    `DEFAULT_MAX_ACCURACY_DROP`), slower ones, then the layers kept in float."""
    return costly_int8(results, metric, limit_pts) + slower_int8(table) + kept_float(table, metric)


def costly_int8(results: Results, metric: str, limit_pts: float | None = None) -> list[str]:
    """One line per int8 file whose `metric` falls more than `limit_pts` points (default
    `DEFAULT_MAX_ACCURACY_DROP`; an int8_ac row: its own `max_accuracy_drop`) under its fp32 twin's: the same run,
    candidate and target, or the PyTorch model where the target made no fp32 file, with how sure the drop is
    (`compress.report.stats.compare_seeds`). Rows per thread count score one file: one line. Then, per run and
    target where such a post-training int8 file has every layer in int8, how to keep the costliest layers in float."""
    limit_pts = DEFAULT_MAX_ACCURACY_DROP if limit_pts is None else limit_pts
    files: dict[tuple, list[Row]] = {}
    for rows in seed_groups(results.rows):
        row = rows[0]
        files.setdefault((row.run, row.candidate, row.target, row.precision), rows)
    lines, all_int8 = [], {}
    for (run, candidate, target, precision), rows in files.items():
        twin = files.get((run, candidate, target, "fp32")) or files.get((run, candidate, "pytorch", "fp32"))
        if precision not in INT8_PRECISIONS or twin is None:
            continue
        allowed = rows[0].max_accuracy_drop if rows[0].max_accuracy_drop is not None else limit_pts
        comparison = compare_seeds(twin, rows)
        if comparison.margin_pts <= allowed + TOLERANCE:
            continue
        reference = "its fp32 twin" if twin[0].target == target else "the PyTorch model"
        lines.append(
            f"{_name(rows[0].model_dump())}: {metric} {_pct(rows)}, {comparison.margin_pts:.1f} points under "
            f"{reference}'s {_pct(twin)} (more than the {allowed:g} allowed; {comparison.evidence()})"
        )
        if not rows[0].keep_float and precision not in ("int8_ac", QAT_PRECISION):  # QAT: trained, not searched
            all_int8.setdefault((run, target), None)
    recipes = {run.label: run.recipe for run in results.runs or []}
    return lines + [
        f"{run + ': ' if run else ''}{target} int8 can keep the layers it costs most in float: precision int8_ac "
        f'finds them for each file, "edgecomp sensitivity {recipes.get(run) or results.recipe or "RECIPE"} '
        f"--target {target}\" ranks the dense model's for a recipe's keep_float"
        for run, target in all_int8
    ]


def _pct(rows: list[Row]) -> str:
    return f"{100 * sum(row.accuracy for row in rows) / len(rows):.1f}%"


def slower_int8(table: list[dict[str, Any]]) -> list[str]:
    """One line per int8 row whose p50 exceeds its fp32 twin's (same run, candidate, target and threads)."""
    fp32 = {_twin_key(row): row["p50_ms"] for row in table if row["precision"] == "fp32" and row.get("p50_ms")}
    lines = []
    for row in table:
        twin = fp32.get(_twin_key(row))
        if row["precision"] not in INT8_PRECISIONS or twin is None or not row.get("p50_ms") or row["p50_ms"] <= twin:
            continue
        reason = KNOWN_REASONS.get((row["target"], row["precision"]))
        lines.append(
            f"{_name(row)}: p50 {row['p50_ms']:.3g} ms, {row['p50_ms'] / twin:.2f}x its fp32 twin's {twin:.3g} ms"
            + (f" ({reason})" if reason else "")
        )
    return lines


def kept_float(table: list[dict[str, Any]], metric: str) -> list[str]:
    """One line per row with layers kept in float or an activation range estimator the recipe chose: which, and
    for int8_ac the search's own figures."""
    lines = []
    for row in table:
        keep = row.get("keep_float")
        search = row.get("sensitivity")
        activations = row.get("activations")
        if not keep and not search and not activations:
            continue
        line = f"{_name(row)}: " + (f"activation ranges: {activations}; " if activations else "")
        line += f"kept in float: {', '.join(keep)}" if keep else "all layers in int8"
        if search:
            db = dict(search.sqnr_db or [])
            ranked = ", ".join(
                f"{group} {100 * value:.1f}" + (f" ({db[group]:.1f} dB)" if group in db else "")
                for group, value in search.ranking[:RANKED_GROUPS_SHOWN]
            )
            alone = f"{metric} % with the group alone in float" + ("; outputs' SQNR against float" if db else "")
            line += (
                f"; search on the val split{_step(search.samples, row.get('max_accuracy_drop'), metric)}: float "
                f"{100 * search.reference:.1f}, all int8 {100 * search.int8:.1f}, chosen {100 * search.final:.1f} "
                f"({metric} %)" + (f"; most sensitive groups ({alone}): {ranked}" if ranked else "")
            )
        lines.append(line)
    return lines


def _step(samples: int | None, max_drop: float | None, metric: str) -> str:
    """' (32 samples: one is 3.1 points, over the 1 allowed: ...)' where one validation sample moves a top-1 metric
    by more than the allowed drop; ' (N samples)' otherwise; nothing where the search did not record it."""
    if not samples:
        return ""
    step = 100 / samples
    if max_drop is None or step <= max_drop or not metric.startswith("top-1"):
        return f" ({samples} samples)"
    return (
        f" ({samples} samples: one is {step:.1f} points, over the {max_drop:g} allowed: it holds only where int8 "
        "scores as float does)"
    )


def _twin_key(row: dict[str, Any]) -> tuple:
    return (row.get("run"), row["candidate"], row["target"], row.get("threads"))


def _name(row: dict[str, Any]) -> str:
    run = f"{row['run']}: " if row.get("run") else ""
    return f"{run}{row['candidate']} {row['target']} {row['precision']}"
