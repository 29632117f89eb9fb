"""The report's conclusions, computed once from the results and the table, and rendered into every format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compress.report.int8 import int8_lines
from compress.report.recommend import Recommendation, constraint_text, recommend
from compress.report.text import metric_label
from compress.report.verdicts import scratch_verdicts
from compress.results import Results

if TYPE_CHECKING:
    from compress.schema import ReportSpec


@dataclass(frozen=True)
class Findings:
    verdicts: list[str]  # pruned weights against the scratch baselines, per architecture
    picks: list[Recommendation]
    constraints: str
    int8: list[str]  # int8 files that cost accuracy or are slower than their fp32 twin; layers kept in float
    failed: list[str]  # exports or measurements that failed, with their one-line reasons


def find(results: Results, table: list[dict[str, Any]], spec: ReportSpec | None) -> Findings:
    return Findings(
        scratch_verdicts(results),
        recommend(table, spec),
        constraint_text(spec),
        int8_lines(results, table, metric_label(results), spec.max_accuracy_drop if spec else None),
        failed_lines(results),
    )


def failed_lines(results: Results | dict[str, Any]) -> list[str]:
    """One line per failed export or measurement of a run: what failed and why (the run measured the rest)."""
    return [
        (f"{f.run}: " if f.run else "")
        + f"{f.candidate}{'' if f.seed is None else f' (seed {f.seed})'} {f.target} {f.precision}: {f.reason}"
        for f in Results.parse(results).failed
    ]
