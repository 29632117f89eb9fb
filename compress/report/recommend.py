"""Which row to ship, per run and target, under the recipe's `report:` constraints (a latency budget, a
maximum accuracy drop), and why nothing qualifies when nothing does."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compress.report.fmt import ms, signed, spread
from compress.report.stats import compare_seeds

if TYPE_CHECKING:
    from compress.schema import ReportSpec

TOLERANCE = 1e-6  # a row exactly at a budget meets it, float noise in 100 * (a - b) notwithstanding
Reference = tuple[float, str] | None  # (accuracy, target) of the dense fp32 model the drop is measured against


@dataclass(frozen=True)
class Recommendation:
    """The best row of one target (of one run) under the report's constraints; `row` None when none meets them."""

    run: str | None
    target: str
    row: dict[str, Any] | None
    text: str


def recommend(table: list[dict[str, Any]], spec: ReportSpec | None) -> list[Recommendation]:
    """Per run and target, the row to ship under `spec`: none when no constraint is set.

    The accuracy drop is in points against the dense fp32 PyTorch model of the same run (the model the
    user started from; the dense fp32 row of the row's own target when there is no PyTorch row), so an
    int8 model's own quantization loss counts against it. Only rows with a measured latency qualify; each
    thread count is its own deployable row. With a latency budget the most accurate row within it wins
    (the budget is the hard limit, accuracy the prize), ties to the faster; with only a maximum drop the
    fastest row within it wins, ties to the more accurate.
    """
    if spec is None or (spec.latency_budget_ms is None and spec.max_accuracy_drop is None):
        return []
    found = []
    for (run, target), rows in _by_run_target(table).items():
        reference = _reference(table, run, target)
        timed = [row for row in rows if row["p50_ms"] is not None]
        fits = [row for row in timed if _meets(row, spec, reference)]
        best = min(fits, key=lambda row: _preference(row, spec), default=None)
        text = (
            _pick_text(best, reference) + _noise_text(best, fits, spec) if best else _miss_text(timed, spec, reference)
        )
        found.append(Recommendation(run, target, best, text))
    return found


def constraint_text(spec: ReportSpec | None) -> str:
    """The constraints as a sentence, or how to set them."""
    parts = []
    if spec is not None and spec.latency_budget_ms is not None:
        parts.append(f"p50 latency at most {spec.latency_budget_ms:g} ms")
    if spec is not None and spec.max_accuracy_drop is not None:
        parts.append(f"at most {spec.max_accuracy_drop:g} pts below the dense fp32 PyTorch model")
    if not parts:
        return (
            "No constraint set: add `report: {latency_budget_ms: X}` or `report: {max_accuracy_drop: Y}` (points) "
            "to the recipe, or pass --latency-budget-ms / --max-accuracy-drop to `edgecomp report`."
        )
    rule = "the most accurate row within the budget" if "ms" in parts[0] else "the fastest row within the drop"
    return f"Best row per target with {' and '.join(parts)}: {rule}."


def _by_run_target(table: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in table:
        groups[(row["run"], row["target"])].append(row)
    return groups


def _reference(table: list[dict[str, Any]], run: str | None, target: str) -> Reference:
    """(accuracy, target) of the dense fp32 model the drop is measured against: PyTorch's, else the target's."""
    dense = {
        row["target"]: row["accuracy"]
        for row in table
        if (row["run"], row["kind"], row["precision"]) == (run, "dense", "fp32")
    }
    where = "pytorch" if "pytorch" in dense else target
    return (dense[where], where) if where in dense else None


def _drop_pts(row: dict[str, Any], reference: Reference) -> float | None:
    return None if reference is None else 100 * (reference[0] - row["accuracy"])


def _meets(row: dict[str, Any], spec: ReportSpec, reference: Reference) -> bool:
    if spec.latency_budget_ms is not None and row["p50_ms"] > spec.latency_budget_ms * (1 + TOLERANCE):
        return False
    if spec.max_accuracy_drop is None:
        return True
    drop = _drop_pts(row, reference)
    return drop is not None and drop <= spec.max_accuracy_drop + TOLERANCE


def _preference(row: dict[str, Any], spec: ReportSpec) -> tuple:
    if spec.latency_budget_ms is not None:
        return (-row["accuracy"], row["p50_ms"], row["candidate"], row["precision"], row["threads"] or 0)
    return (row["p50_ms"], -row["accuracy"], row["candidate"], row["precision"], row["threads"] or 0)


def _pick_text(row: dict[str, Any], reference: Reference) -> str:
    """'pruned-kd (pruned+KD), int8, 2 threads: 96.7%, -0.8 pts vs dense fp32 pytorch; p50 0.112 ms, ...'."""
    threads = f", {row['threads']} threads" if row["threads"] else ""
    drop = _drop_pts(row, reference)
    versus = f", {signed(-drop)} pts vs dense fp32 {reference[1]}" if reference and drop is not None else ""
    speedup = f", speedup {row['speedup']:.2f}× over dense {row['precision']}" if row["speedup"] is not None else ""
    over_seeds = f" {spread(row['spread'])}" if row.get("spread") else ""
    return (
        f"{row['candidate']} ({row['label']}), {row['precision']}{threads}: "
        f"{row['accuracy_pct']:.1f}%{over_seeds}{versus}; p50 {ms(row['p50_ms'])} ms{speedup}"
    )


def _noise_text(best: dict[str, Any], fits: list[dict[str, Any]], spec: ReportSpec) -> str:
    """Under a latency budget the most accurate row wins; where a faster row of another candidate is not less
    accurate by McNemar's test on the same test images (with several seeds, Welch's t-test over the seeds), say
    so: the margin bought nothing provable."""
    if spec.latency_budget_ms is None:
        return ""
    ties = []
    for row in sorted(fits, key=lambda row: row["p50_ms"]):
        if row["candidate"] != best["candidate"] and row["p50_ms"] < best["p50_ms"]:
            comparison = compare_seeds(best["results"], row["results"])
            if comparison.tested and not comparison.significant:
                ties.append((row, comparison))
    if not ties:
        return ""
    row, comparison = ties[0]
    return (
        f"; a tie within noise with the faster {row['candidate']} {row['precision']} ({row['accuracy_pct']:.1f}%, "
        f"p50 {ms(row['p50_ms'])} ms; {comparison.evidence()})"
    )


def _miss_text(timed: list[dict[str, Any]], spec: ReportSpec, reference: Reference) -> str:
    """Why nothing qualifies, with the nearest miss on each constraint, so the user knows how far off it is."""
    if not timed:
        return "no row of this target has a measured latency"
    if spec.max_accuracy_drop is not None and reference is None:
        return "no dense fp32 row to measure the accuracy drop against"
    near = []
    if spec.latency_budget_ms is not None:
        near.append(f"fastest p50 {ms(min(row['p50_ms'] for row in timed))} ms")
    if spec.max_accuracy_drop is not None:
        near.append(f"smallest drop {min(_drop_pts(row, reference) for row in timed):.1f} pts")
    return f"no row meets the constraints ({'; '.join(near)})"
