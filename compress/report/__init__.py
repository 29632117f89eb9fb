"""results.json -> report.md, report.html, plot.png, results.csv: what each step cost and what it bought.

The report is what a user reads to pick a model, so every number and every conclusion in it is computed
from the results (none is typed in), every string that came from the results is escaped for the format it
lands in, and the four files appear together or not at all. Importing this package is cheap: matplotlib is
imported only when a plot is drawn, and torch never.

The analysis (`table`: rows, Δ, speedup, Pareto fronts; `verdicts`: pruned against scratch; `recommend`;
`int8`) reads the typed results (`compress.results`); one writer per format (`markdown`, `html_page`, `plot`,
`csv_table`) renders it.

>>> results = Results.load(Path("runs/quickstart/results.json"))
>>> write_report(results, Path("runs/quickstart"), ReportSpec(latency_budget_ms=0.2))["html"]
PosixPath('runs/quickstart/report.html')
>>> report_runs([Path("runs/a"), Path("runs/b")], Path("reports/a-vs-b"))  # `edgecomp report`
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.report.csv_table import csv_table
from compress.report.findings import Findings, failed_lines, find
from compress.report.html_page import html_page
from compress.report.markdown import markdown
from compress.report.plot import plot_png
from compress.report.recommend import Recommendation, recommend
from compress.report.runs import combine_runs, load_results, recipes_spec, report_spec, source_commit
from compress.report.table import KIND_LABELS, pareto_front, plot_points, table_groups, table_rows
from compress.report.verdicts import scratch_verdicts
from compress.results import Results
from targets.base import EdgecompError
from targets.fileio import atomic_path

if TYPE_CHECKING:
    from compress.schema import ReportSpec

__all__ = [
    "KIND_LABELS",
    "Findings",
    "Recommendation",
    "combine_runs",
    "failed_lines",
    "load_results",
    "pareto_front",
    "plot_points",
    "recommend",
    "report_runs",
    "scratch_verdicts",
    "source_commit",
    "table_rows",
    "write_report",
]


def write_report(results: Results | dict[str, Any], out_dir: Path, spec: ReportSpec | None = None) -> dict[str, Path]:
    """Write report.md, report.html, plot.png and results.csv into `out_dir`; return their paths.

    `results` is a `Results` or a results dict (checked as results.json is). `spec` (the recipe's `report:`
    section) sets the constraints of the recommendation; without one the report says how to ask for it.
    Everything is rendered in memory first and the files are renamed into place together, so a failure
    anywhere (a plotting error, a full disk) leaves the previous report, if any, untouched and no new file.
    Keys of the returned dict: "md", "html", "plot", "csv".
    """
    out_dir = Path(out_dir)
    results = Results.parse(results)
    groups = table_groups(results)
    table = [computed for _, computed in groups]
    findings = find(results, table, spec)
    png = plot_png(results, table)
    contents = {
        "md": ("report.md", markdown(results, table, findings).encode("utf-8")),
        "html": ("report.html", html_page(results, table, findings, png).encode("utf-8")),
        "plot": ("plot.png", png),
        "csv": ("results.csv", csv_table(groups).encode("utf-8")),
    }
    with ExitStack() as stack:
        for name, data in contents.values():
            stack.enter_context(atomic_path(out_dir / name)).write_bytes(data)
    return {key: out_dir / name for key, (name, _) in contents.items()}


def report_runs(
    run_dirs: Sequence[Path],
    out_dir: Path | None = None,
    latency_budget_ms: float | None = None,
    max_accuracy_drop: float | None = None,
) -> dict[str, Path]:
    """`edgecomp report`: one report over one or more run directories (two recipes, or two machines).

    With several runs every row gets a `run` column (recipe name @ device). The constraints given here
    replace the runs' own `report:` sections; without any, the recipes' shared section (if they agree) is
    used. `out_dir` defaults to the run directory when there is exactly one.
    """
    if not run_dirs:
        raise EdgecompError("give at least one run directory, e.g. `edgecomp report runs/quickstart`")
    if out_dir is None:
        if len(run_dirs) > 1:
            raise EdgecompError("several runs need --out DIR: the report would overwrite one run's own report")
        out_dir = Path(run_dirs[0])
    results = combine_runs([load_results(Path(d)) for d in run_dirs])
    if latency_budget_ms is None and max_accuracy_drop is None:
        spec = recipes_spec([Path(d) for d in run_dirs])
    else:
        spec = report_spec(latency_budget_ms=latency_budget_ms, max_accuracy_drop=max_accuracy_drop)
    return write_report(results, Path(out_dir), spec)
