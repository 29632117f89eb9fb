"""results.json -> report.md, report.html, plot.png, results.csv: what each step cost and what it bought.

The report is what a user reads to pick a model, so every number and every conclusion in it is computed
from the results (none is typed in), every string that came from the results is escaped for the format it
lands in, and the four files appear together or not at all. Importing this module is cheap: matplotlib is
imported only when a plot is drawn, and torch never.

>>> results = json.loads(Path("runs/quickstart/results.json").read_text())
>>> write_report(results, Path("runs/quickstart"), ReportSpec(latency_budget_ms=0.2))["html"]
PosixPath('runs/quickstart/report.html')
>>> report_runs([Path("runs/a"), Path("runs/b")], Path("reports/a-vs-b"))  # `edgecomp report`
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import re
import subprocess
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.int8_findings import int8_lines
from targets.base import EdgecompError
from targets.fileio import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from compress.schema import ReportSpec

SCHEMA = 1
REQUIRED = ("candidate", "kind", "target", "precision", "accuracy")
NUMBERS = ("accuracy", "latency_ms_p50", "latency_ms_p90", "threads", "macs", "params", "size_bytes")
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
PRECISION_ORDER = ("fp32", "fp16", "int8", "int8_ac", "int8-qat", "int8_dynamic")
# A QAT row is an int8 file: without a dense row of its own precision it is compared with the dense model's int8.
DENSE_PRECISION = {"int8-qat": "int8"}
METRIC_LABELS = {"top1": "top-1", "map50": "mAP@.5", "map": "mAP@[.5:.95]"}
NONE = "—"
TOLERANCE = 1e-6  # a row exactly at a budget meets it, float noise in 100 * (a - b) notwithstanding

# Plot encodings: colour = target (Okabe-Ito, colour-blind safe), marker = kind, fill = precision.
TARGET_COLOURS = {"pytorch": "#555555", "tflite": "#D55E00", "openvino": "#0072B2", "onnx": "#009E73"}
SPARE_COLOURS = ("#CC79A7", "#E69F00", "#56B4E9")
KIND_MARKERS = {"dense": "*", "finetune": "s", "kd": "D", "scratch_e": "^", "scratch_b": "v", "qat": "P"}
PRECISION_FILL = {"fp32": "full", "fp16": "left", "int8": "none", "int8-qat": "right", "int8_ac": "top"}
WIDE_RANGE = 10.0  # max/min on an axis above which it goes logarithmic
DODGE = 0.03  # relative sideways shift between (target, precision) slots at one MACs value


def write_report(results: dict[str, Any], out_dir: Path, spec: ReportSpec | None = None) -> dict[str, Path]:
    """Write report.md, report.html, plot.png and results.csv into `out_dir`; return their paths.

    `spec` (the recipe's `report:` section) sets the constraints of the recommendation; without one the
    report says how to ask for it. Everything is rendered in memory first and the files are renamed into
    place together, so a failure anywhere (a plotting error, a full disk) leaves the previous report, if
    any, untouched and no new file. Keys of the returned dict: "md", "html", "plot", "csv".
    """
    out_dir = Path(out_dir)
    pairs = _pairs(results)
    table = [computed for _, computed in pairs]
    findings = Findings(
        scratch_verdicts(results),
        recommend(table, spec),
        _constraint_text(table, spec),
        int8_lines(table, _metric(results)),
        failed_lines(results),
    )
    png = _plot_png(results, table)
    contents = {
        "md": ("report.md", _markdown(results, table, findings).encode("utf-8")),
        "html": ("report.html", _html(results, table, findings, png).encode("utf-8")),
        "plot": ("plot.png", png),
        "csv": ("results.csv", _csv(pairs).encode("utf-8")),
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
        spec = _recipes_spec([Path(d) for d in run_dirs])
    else:
        spec = _spec(latency_budget_ms=latency_budget_ms, max_accuracy_drop=max_accuracy_drop)
    return write_report(results, Path(out_dir), spec)


def load_results(run_dir: Path) -> dict[str, Any]:
    """A run directory's results.json, checked: every way it can be wrong is one clear user error."""
    if not run_dir.is_dir():
        raise EdgecompError(f"{run_dir}: no such run directory (runs are written to runs/<recipe name>/)")
    path = run_dir / "results.json"
    if not path.is_file():
        raise EdgecompError(f"{path}: not found; is {run_dir} a finished run? (`edgecomp run RECIPE` writes it)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EdgecompError(f"{path}: not valid results JSON ({error})") from None
    if not isinstance(results, dict):
        raise EdgecompError(f"{path}: expected a JSON object with schema and rows, got {type(results).__name__}")
    try:
        _rows(results)
    except EdgecompError as error:
        raise EdgecompError(f"{path}: {error}") from None
    return results


def combine_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several results dicts as one: rows gain a `run` label, each run's metadata goes under `runs`.

    A single run is returned as it is. Runs must share a metric: a table that mixes top-1 with mAP would
    rank numbers that do not compare.
    """
    if len(runs) == 1:
        return runs[0]
    metrics = {str(run.get("metric")) for run in runs}
    if len(metrics) > 1:
        raise EdgecompError(f"these runs measure different metrics ({', '.join(sorted(metrics))}); report them apart")
    labels = _run_labels(runs)
    recipes = list(dict.fromkeys(str(run.get("recipe") or "unnamed") for run in runs))
    return {
        "schema": SCHEMA,
        "recipe": " + ".join(recipes),
        "task": runs[0].get("task"),
        "metric": runs[0].get("metric"),
        "runs": [
            {key: value for key, value in run.items() if key not in ("rows", "failed")} | {"label": label}
            for run, label in zip(runs, labels, strict=True)
        ],
        "rows": [row | {"run": label} for run, label in zip(runs, labels, strict=True) for row in _rows(run)],
        "failed": [
            failure | {"run": label}
            for run, label in zip(runs, labels, strict=True)
            for failure in run.get("failed") or []
        ],
    }


def _run_labels(runs: list[dict[str, Any]]) -> list[str]:
    """'quickstart @ AMD EPYC 7B13, 2 cores'; numbered where two runs would read the same."""
    labels = []
    for run in runs:
        device = run.get("device") or {}
        machine = ", ".join(
            part
            for part in (str(device.get("cpu") or ""), f"{device['cores']} cores" if device.get("cores") else "")
            if part
        )
        labels.append(f"{run.get('recipe') or 'unnamed'} @ {machine or 'unknown device'}")
    return [f"{label} #{i + 1}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def _spec(**constraints: float | None) -> ReportSpec:
    from pydantic import ValidationError

    from compress.schema import ReportSpec

    try:
        return ReportSpec(**constraints)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise EdgecompError(f"report constraints: {problems}") from None


def _recipes_spec(run_dirs: list[Path]) -> ReportSpec | None:
    """The runs' `report:` sections from their resolved recipes, when all of them say the same."""
    import yaml

    sections = []
    for run_dir in run_dirs:
        path = run_dir / "recipe.resolved.yaml"
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
        section = data.get("report") if isinstance(data, dict) else None
        sections.append(json.dumps(section or {}, sort_keys=True))
    return _spec(**json.loads(sections[0])) if len(set(sections)) == 1 else None


def source_commit() -> str | None:
    """The git commit of the edgecomp source tree that is running (with '-dirty' for local changes), or
    None when edgecomp is not a git checkout (an installed wheel) or git is missing."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:  # a wheel inside someone else's repo
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


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

    Δ is against the dense row of the same run, target and precision (accuracy does not depend on
    threads); speedup is dense p50 / p50 on the same run, target, precision and threads, so a ratio never
    mixes thread counts or machines. `front` marks the rows on the accuracy-latency Pareto front of their
    run, target and thread count. Sorted by run, target, precision, then accuracy (best first). Missing
    inputs give None, not 0.
    """
    return [computed for _, computed in _pairs(results)]


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
        text = _pick_text(best, reference) if best else _miss_text(timed, spec, reference)
        found.append(Recommendation(run, target, best, text))
    return found


def _by_run_target(table: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in table:
        groups[(row["run"], row["target"])].append(row)
    return groups


def _reference(table: list[dict[str, Any]], run: str | None, target: str) -> tuple[float, str] | None:
    """(accuracy, target) of the dense fp32 model the drop is measured against: PyTorch's, else the target's."""
    dense = {
        row["target"]: row["accuracy"]
        for row in table
        if (row["run"], row["kind"], row["precision"]) == (run, "dense", "fp32")
    }
    where = "pytorch" if "pytorch" in dense else target
    return (dense[where], where) if where in dense else None


def _drop_pts(row: dict[str, Any], reference: tuple[float, str] | None) -> float | None:
    return None if reference is None else 100 * (reference[0] - row["accuracy"])


def _meets(row: dict[str, Any], spec: ReportSpec, reference: tuple[float, str] | None) -> bool:
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


def _pick_text(row: dict[str, Any], reference: tuple[float, str] | None) -> str:
    """'pruned-kd (pruned+KD), int8, 2 threads: 96.7%, -0.8 pts vs dense fp32 pytorch; p50 0.112 ms, ...'."""
    threads = f", {row['threads']} threads" if row["threads"] else ""
    drop = _drop_pts(row, reference)
    versus = f", {_signed(-drop)} pts vs dense fp32 {reference[1]}" if reference and drop is not None else ""
    speedup = f", speedup {row['speedup']:.2f}× over dense {row['precision']}" if row["speedup"] is not None else ""
    return (
        f"{row['candidate']} ({row['label']}), {row['precision']}{threads}: "
        f"{row['accuracy_pct']:.1f}%{versus}; p50 {_ms(row['p50_ms'])} ms{speedup}"
    )


def _miss_text(timed: list[dict[str, Any]], spec: ReportSpec, reference: tuple[float, str] | None) -> str:
    """Why nothing qualifies, with the nearest miss on each constraint, so the user knows how far off it is."""
    if not timed:
        return "no row of this target has a measured latency"
    if spec.max_accuracy_drop is not None and reference is None:
        return "no dense fp32 row to measure the accuracy drop against"
    near = []
    if spec.latency_budget_ms is not None:
        near.append(f"fastest p50 {_ms(min(row['p50_ms'] for row in timed))} ms")
    if spec.max_accuracy_drop is not None:
        near.append(f"smallest drop {min(_drop_pts(row, reference) for row in timed):.1f} pts")
    return f"no row meets the constraints ({'; '.join(near)})"


def _constraint_text(table: list[dict[str, Any]], spec: ReportSpec | None) -> str:
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


def scratch_verdicts(results: dict[str, Any]) -> list[str]:
    """One line per pruned architecture: did inheriting the pruned weights beat training it from scratch?

    Liu et al. (ICLR 2019) found that the same pruned architecture trained from random init often matches
    or beats fine-tuning, so every report answers the question from its own numbers. Rows with the same
    `arch` (a hash of the pruned layer shapes) are one architecture; rows without one are grouped by MACs.
    An architecture may have several fine-tuned candidates (importance criteria, KD or not): the best one
    faces the best of each scratch kind. The comparison is on pytorch fp32 (the trained model before any
    export) when both sides have it, else on every target and precision where both do.

    Where the fine-tuned candidates' rows carry `pruned_accuracy` (their pruned model before fine-tuning), a
    second line per architecture ranks them by it: that is where importance criteria differ most.
    """
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in _rows(results):
        if row["kind"] in PRUNED_KINDS + SCRATCH_KINDS and (row.get("arch") or row.get("macs")) is not None:
            groups[(row.get("run"), _arch(row))].append(row)
    names = _arch_names(groups)
    lines = []
    for (run, arch), rows in groups.items():
        prefix = f"{run}: " if run else ""
        for (target, precision), best in _comparable_settings(rows):
            lines.append(f"{prefix}{names[(run, arch)]}, {target} {precision}: {_verdict(best)}")
        before = _before_finetuning(rows)
        if before:
            lines.append(
                f"{prefix}{names[(run, arch)]}, pytorch fp32, right after pruning "
                f"(BN re-estimated, no fine-tune): {before}"
            )
    return lines


def _before_finetuning(rows: list[dict[str, Any]]) -> str:
    """'pruned-kd-l2 61.2%, pruned-kd-random 12.0%', best first, from the pytorch rows' pruned_accuracy."""
    pruned = {
        row["candidate"]: row["pruned_accuracy"]
        for row in rows
        if row["target"] == "pytorch" and _is_number(row.get("pruned_accuracy"))
    }
    ranked = sorted(pruned, key=lambda name: (-pruned[name], name))
    return ", ".join(f"{name} {_pct(pruned[name])}" for name in ranked)


def _arch(row: dict[str, Any]) -> tuple[str, Any]:
    return ("arch", row["arch"]) if row.get("arch") else ("macs", row["macs"])


def _arch_names(groups: dict[tuple, list[dict[str, Any]]]) -> dict[tuple, str]:
    """'0.88 M MACs', with the architecture hash added where two architectures of a run share that text."""
    names = {}
    for key, rows in groups.items():
        macs = next((row["macs"] for row in rows if row.get("macs") is not None), None)
        names[key] = f"{macs / 1e6:.2f} M MACs" if macs is not None else f"arch {key[1][1]}"
    texts = [(key[0], name) for key, name in names.items()]
    for key, name in names.items():
        if texts.count((key[0], name)) > 1 and key[1][0] == "arch":
            names[key] = f"{name} (arch {str(key[1][1])[:8]})"
    return names


def _comparable_settings(rows: list[dict[str, Any]]) -> list[tuple[tuple[str, str], dict[str, tuple[str, float]]]]:
    """(target, precision) -> candidate -> (kind, best accuracy), kept where a pruned and a scratch kind both ran."""
    settings: dict[tuple[str, str], dict[str, tuple[str, float]]] = defaultdict(dict)
    for row in rows:
        entries = settings[(row["target"], row["precision"])]
        previous = entries.get(row["candidate"], (row["kind"], row["accuracy"]))[1]
        entries[row["candidate"]] = (row["kind"], max(previous, row["accuracy"]))
    both = {
        key: entries
        for key, entries in settings.items()
        if {kind for kind, _ in entries.values()} & set(PRUNED_KINDS)
        and {kind for kind, _ in entries.values()} & set(SCRATCH_KINDS)
    }
    if ("pytorch", "fp32") in both:
        return [(("pytorch", "fp32"), both[("pytorch", "fp32")])]
    return sorted(both.items(), key=lambda item: (_rank(TARGET_ORDER, item[0][0]), _rank(PRECISION_ORDER, item[0][1])))


def _verdict(entries: dict[str, tuple[str, float]]) -> str:
    """'pruned+KD 97.2% vs Scratch-E 95.1% (+2.1 pts) ...: <who won>', margins as displayed (0.1 pt).

    Candidates are named by kind, and by name too where two fine-tuned candidates share a kind.
    """
    pruned = {name: entry for name, entry in entries.items() if entry[0] in PRUNED_KINDS}
    scratch: dict[str, float] = {}
    for kind, accuracy in entries.values():
        if kind in SCRATCH_KINDS:
            scratch[kind] = max(scratch.get(kind, 0.0), accuracy)
    kinds = [kind for kind, _ in pruned.values()]
    label = {
        name: f"{name} ({KIND_LABELS[kind]})" if kinds.count(kind) > 1 else KIND_LABELS[kind]
        for name, (kind, _) in pruned.items()
    }
    ranked = sorted(pruned, key=lambda name: (-pruned[name][1], name))
    best, best_accuracy = ranked[0], pruned[ranked[0]][1]
    others = ", ".join(f"{label[name]} {_pct(pruned[name][1])}" for name in ranked[1:])
    versus = " and ".join(
        f"{KIND_LABELS[k]} {_pct(a)} ({_signed(100 * (best_accuracy - a))} pts)"
        for k, a in sorted(scratch.items(), key=lambda item: SCRATCH_KINDS.index(item[0]))
    )
    rival = max(scratch, key=scratch.__getitem__)
    margin = round(100 * (best_accuracy - scratch[rival]), 1)
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
    also = f" (and {others})" if others else ""
    return f"{label[best]} {_pct(best_accuracy)}{also} vs {versus}: {outcome}"


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a results dict this module can read; anything else is a clear user error."""
    if results.get("schema") != SCHEMA:
        raise EdgecompError(
            f"results schema {results.get('schema')!r} is not {SCHEMA}, the one this edgecomp reads; "
            "regenerate results.json with `edgecomp run` from this version"
        )
    rows = results.get("rows") or []
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise EdgecompError("results rows must be a list of objects (one per candidate x target x precision)")
    for i, row in enumerate(rows):
        missing = [key for key in REQUIRED if row.get(key) is None]
        if missing:
            raise EdgecompError(f"results row {i} ({row.get('candidate', '?')!r}) has no {', '.join(missing)}")
        wrong = [key for key in NUMBERS if row.get(key) is not None and not _is_number(row[key])]
        if wrong:
            raise EdgecompError(f"results row {i} ({row['candidate']!r}): {', '.join(wrong)} must be numbers")
    return rows


def failed_lines(results: dict[str, Any]) -> list[str]:
    """One line per failed export or measurement of a run: what failed and why (the run measured the rest)."""
    failed = results.get("failed") or []
    if not isinstance(failed, list) or not all(isinstance(f, dict) and "reason" in f for f in failed):
        raise EdgecompError("results 'failed' must be a list of objects with a reason (one per failed export)")
    return [
        (f"{f['run']}: " if f.get("run") else "")
        + f"{f.get('candidate', '?')} {f.get('target', '?')} {f.get('precision', '?')}: {f['reason']}"
        for f in failed
    ]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _pairs(results: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(raw row, computed table row) in table order, so the csv and the table list rows alike."""
    rows = _rows(results)
    dense_accuracy: dict[tuple, float] = {}
    dense_p50: dict[tuple, float | None] = {}
    for row in rows:
        if row["kind"] == "dense":
            setting = (row.get("run"), row["target"], row["precision"])
            dense_accuracy.setdefault(setting, row["accuracy"])
            dense_p50.setdefault((*setting, row.get("threads")), row.get("latency_ms_p50"))
    pairs = []
    for row in rows:
        setting = (row.get("run"), row["target"], row["precision"])
        if setting not in dense_accuracy:
            setting = (*setting[:2], DENSE_PRECISION.get(row["precision"], row["precision"]))
        computed = _computed(row, dense_accuracy.get(setting), dense_p50.get((*setting, row.get("threads"))))
        pairs.append((row, computed))
    _mark_fronts([computed for _, computed in pairs])
    return sorted(pairs, key=lambda pair: _order(pair[1]))


def _mark_fronts(table: list[dict[str, Any]]) -> None:
    """Set `front` on each timed row: on its run, target and thread count's accuracy-latency front."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in table:
        if row["p50_ms"] is not None:
            groups[(row["run"], row["target"], row["threads"])].append(row)
    for rows in groups.values():
        for i in pareto_front([(row["p50_ms"], row["accuracy"]) for row in rows]):
            rows[i]["front"] = True


def _computed(row: dict[str, Any], dense_accuracy: float | None, dense_p50: float | None) -> dict[str, Any]:
    parity = row.get("parity") or {}
    return {
        "run": row.get("run"),
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
        "macs": row.get("macs"),
        "macs_m": _scaled(row.get("macs"), 1e-6),
        "params": row.get("params"),
        "size_kb": _scaled(row.get("size_bytes"), 1e-3),
        "parity_max_abs_diff": parity.get("max_abs_diff"),
        "parity_top1_pct": _scaled(parity.get("top1_agreement"), 100),
        "map_pct": _scaled((row.get("scores") or {}).get("map"), 100),  # a detector's mAP@[.5:.95]
        "postprocess_ms": row.get("postprocess_ms_p50"),  # a detector's numpy NMS step, apart from the model
        "max_accuracy_drop": row.get("max_accuracy_drop"),  # int8_ac's allowed drop, points
        "keep_float": row.get("keep_float"),  # layer groups an int8 file keeps in float
        "sensitivity": row.get("sensitivity"),  # int8_ac's search (TFLite, ONNX): each group's metric alone in float
        "front": False,
    }


def _order(row: dict[str, Any]) -> tuple:
    return (
        row["run"] or "",
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


@dataclass(frozen=True)
class Findings:
    """The report's conclusions, computed once and rendered into every format."""

    verdicts: list[str]
    picks: list[Recommendation]
    constraints: str
    int8: list[str]  # int8 files slower than their fp32 twin; layers kept in float (`compress.int8_findings`)
    failed: list[str]  # exports or measurements that failed, with their one-line reasons


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


def _columns(metric: str, several_runs: bool, table: list[dict[str, Any]]) -> list[Column]:
    """The table's columns; a detector's extra ones (mAP@[.5:.95], post-processing time) when some row has them."""

    def present(*columns: Column) -> list[Column]:
        return [column for column in columns if any(row.get(column.key) is not None for row in table)]

    return ([Column("run", "run")] if several_runs else []) + [
        Column("candidate", "candidate"),
        Column("lineage", "label"),
        Column("target", "target"),
        Column("precision", "precision"),
        Column("threads", "threads", _fmt("g")),
        Column(f"{metric} %", "accuracy_pct", _fmt(".1f")),
        Column("Δ pts", "delta_pts", _signed),
        *present(Column(f"{METRIC_LABELS['map']} %", "map_pct", _fmt(".1f"))),
        Column("p50 ms", "p50_ms", _ms),
        Column("p90 ms", "p90_ms", _ms),
        *present(Column("post-process p50 ms", "postprocess_ms", _ms)),
        Column("speedup", "speedup", lambda v: f"{v:.2f}×"),
        Column("MACs (M)", "macs_m", _fmt(".2f")),
        Column("params", "params", _count),
        Column("size (KB)", "size_kb", _fmt(".0f")),
        Column("parity max abs diff", "parity_max_abs_diff", _fmt(".2g")),
        Column("parity top-1 %", "parity_top1_pct", _fmt(".1f")),
        Column("front", "front", lambda v: "yes" if v else ""),
    ]


TABLE_NOTE = (
    "Δ pts: against the dense model on the same target and precision (int8 for int8-qat). "
    "speedup: dense p50 / p50 on the same target, precision and threads (int8 for int8-qat). KB = 1000 bytes. "
    "parity: the exported file against PyTorch eager on the same inputs (largest output difference, "
    "top-1 agreement). front: on the accuracy-latency Pareto front of its target and thread count."
)


def _table_note(table: list[dict[str, Any]]) -> str:
    drops = sorted({row["max_accuracy_drop"] for row in table if row.get("max_accuracy_drop") is not None})
    if not drops:
        return TABLE_NOTE
    allowed = " or ".join(f"{drop:g}" for drop in drops)
    return (
        f"{TABLE_NOTE} int8_ac: int8 with accuracy control, the layers that cost most kept in float until the "
        f"int8 model is at most {allowed} pts below the float one on the val split."
    )


NO_VERDICT = "No scratch baseline shares an architecture with a pruned candidate here."


def _several(results: dict[str, Any]) -> bool:
    return bool(results.get("runs"))


def _metric(results: dict[str, Any]) -> str:
    metric = str(results.get("metric") or "accuracy")
    return METRIC_LABELS.get(metric.lower(), metric)


def _title(results: dict[str, Any]) -> str:
    return f"edgecomp report: {results.get('recipe') or 'unnamed recipe'}"


def _runs(results: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """(label, run metadata) per run; a single run has no label."""
    return [(run["label"], run) for run in results["runs"]] if _several(results) else [(None, results)]


def _meta_line(run: dict[str, Any]) -> str:
    """'2026-11-22 · classification, top-1 · AMD EPYC, 2 cores, x86_64 · runtimes: openvino 2026.4.1'."""
    device = run.get("device") or {}
    machine = [str(device["cpu"])] if device.get("cpu") else []
    machine += [f"{device['cores']} cores"] if device.get("cores") else []
    architecture = device.get("machine") or device.get("arch")
    machine += [str(architecture)] if architecture else []
    runtimes = ", ".join(f"{name} {version}" for name, version in (device.get("runtimes") or {}).items())
    parts = [
        str(run["created"])[:10] if run.get("created") else "",
        ", ".join(str(p) for p in (run.get("task"), _metric(run)) if p),
        ", ".join(machine),
        f"runtimes: {runtimes}" if runtimes else "",
    ]
    return " · ".join(p for p in parts if p)


def _meta_lines(results: dict[str, Any]) -> list[str]:
    return [f"{label}: {_meta_line(run)}" if label else _meta_line(run) for label, run in _runs(results)]


def _pick_lines(findings: Findings) -> list[str]:
    return [
        f"{pick.run}, {pick.target}: {pick.text}" if pick.run else f"{pick.target}: {pick.text}"
        for pick in findings.picks
    ]


def _candidates(table: list[dict[str, Any]]) -> list[str]:
    """'pruned-kd (pruned+KD): dense → prune(l2, ratio=0.5) → finetune(kd); 10 epochs', once per candidate."""
    seen: dict[str, str] = {}
    for row in table:
        if row["candidate"] not in seen:
            how = " → ".join(str(step) for step in row["lineage"]) or NONE
            epochs = f"; {row['epochs']} epochs" if row["epochs"] is not None else ""
            seen[row["candidate"]] = f"{row['candidate']} ({row['label']}): {how}{epochs}"
    return list(seen.values())


def _repro_lines(run: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{name} {version}" for name, version in (run.get("versions") or {}).items())
    return [
        f"seed: {run.get('seed', NONE)}",
        f"git commit: {run.get('git_commit') or NONE}",
        f"versions: {versions or NONE}",
        f"results: schema {run.get('schema', SCHEMA)}, created {run.get('created') or NONE}",
    ]


PLOT_ALT = "accuracy against p50 latency, one panel per target with its Pareto front, and accuracy against MACs"


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


def _markdown(results: dict[str, Any], table: list[dict[str, Any]], findings: Findings) -> str:
    columns = _columns(_metric(results), _several(results), table)
    lines = [f"# {_md(_title(results))}", ""]
    lines += (
        [f"- {_md(line)}" for line in _meta_lines(results)] if _several(results) else [_md(_meta_lines(results)[0])]
    )
    lines += ["", "## Recommendation", "", _md(findings.constraints), ""]
    lines += [f"- {_md(line)}" for line in _pick_lines(findings)]
    lines += ["", f"![{PLOT_ALT}](plot.png)", "", "## Scratch baselines", ""]
    lines += [f"- {_md(v)}" for v in findings.verdicts] or [NO_VERDICT]
    if findings.failed:
        lines += ["", "## Failed", ""] + [f"- {_md(line)}" for line in findings.failed]
    if findings.int8:
        lines += ["", "## int8", ""] + [f"- {_md(line)}" for line in findings.int8]
    lines += ["", "## Results", "", "| " + " | ".join(_md(c.header) for c in columns) + " |"]
    lines.append("|" + "|".join("---:" if c.fmt else "---" for c in columns) + "|")
    lines += ["| " + " | ".join(_md(c.text(row)) for c in columns) + " |" for row in table]
    lines += ["", _md(_table_note(table)), "", "## Candidates", ""]
    lines += [f"- {_md(line)}" for line in _candidates(table)]
    lines += ["", "## Reproduce", ""]
    for label, run in _runs(results):
        lines += [f"### {_md(label)}", ""] if label else []
        lines += [_fence(str(run.get("command") or NONE)), ""]
        lines += [f"- {_md(line)}" for line in _repro_lines(run)] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- html

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


def _csp() -> str:
    """No network at all, and only this file's own script may run: a second line of defence behind escaping."""
    digest = base64.b64encode(hashlib.sha256(_JS.encode("utf-8")).digest()).decode("ascii")
    return f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"


def _html_cell(column: Column, row: dict[str, Any]) -> str:
    value = row[column.key]
    sort_value = "" if value is None else repr(value) if column.fmt else str(value)
    sort_value = {"True": "1", "False": "0"}.get(sort_value, sort_value)
    css = ' class="num"' if column.fmt else ""
    return f'<td{css} data-v="{html.escape(sort_value)}">{html.escape(column.text(row))}</td>'


def _html_table(table: list[dict[str, Any]], columns: list[Column], picks: list[dict[str, Any]]) -> str:
    head = "".join(f'<th scope="col" tabindex="0" title="sort">{html.escape(c.header)}</th>' for c in columns)
    body = "\n".join(
        ('<tr class="pick" title="recommended">' if any(row is pick for pick in picks) else "<tr>")
        + "".join(_html_cell(c, row) for c in columns)
        + "</tr>"
        for row in table
    )
    table_html = f'<table class="sortable">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>'
    return f'<div class="scroll">{table_html}</div>'


def _html_list(items: Iterable[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in items) + "</ul>"


def _html_repro(results: dict[str, Any]) -> list[str]:
    parts = []
    for label, run in _runs(results):
        parts += [f"<h3>{html.escape(label)}</h3>"] if label else []
        parts.append(f"<pre><code>{html.escape(str(run.get('command') or NONE))}</code></pre>")
        parts.append(_html_list(_repro_lines(run)))
    return parts


def _html(results: dict[str, Any], table: list[dict[str, Any]], findings: Findings, png: bytes) -> str:
    title = html.escape(_title(results))
    image = base64.b64encode(png).decode("ascii")
    meta = _meta_lines(results)
    meta_html = _html_list(meta) if _several(results) else f'<p class="meta">{html.escape(meta[0])}</p>'
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
            _html_list(_pick_lines(findings)) if findings.picks else "",
            f'<figure id="plot"><img src="data:image/png;base64,{image}" alt="{html.escape(PLOT_ALT)}"></figure>',
            "<h2>Scratch baselines</h2>",
            _html_list(findings.verdicts) if findings.verdicts else f"<p>{NO_VERDICT}</p>",
            *(["<h2>Failed</h2>", _html_list(findings.failed)] if findings.failed else []),
            *(["<h2>int8</h2>", _html_list(findings.int8)] if findings.int8 else []),
            "<h2>Results</h2>",
            _html_table(table, _columns(_metric(results), _several(results), table), picked),
            f'<p class="note">{html.escape(_table_note(table))} Highlighted: recommended.</p>',
            "<h2>Candidates</h2>",
            _html_list(_candidates(table)),
            "<h2>Reproduce</h2>",
            *_html_repro(results),
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
    """One line per results row, in table order: the raw fields plus the computed Δ, speedup and front."""
    records = [
        _flat(raw) | {key: _round(computed[key]) for key in ("delta_pts", "speedup")} | {"front": computed["front"]}
        for raw, computed in pairs
    ]
    fields = list(dict.fromkeys(key for record in records for key in record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: _csv_value(record.get(key)) for key in fields} for record in records)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- plot


def _plot_png(results: dict[str, Any], table: list[dict[str, Any]]) -> bytes:
    """The plots as one PNG (150 dpi; about 1800 px wide for three targets)."""
    buffer = io.BytesIO()
    _figure(results, table).savefig(buffer, format="png", dpi=150)
    return buffer.getvalue()


MACS = "MACs"  # the panel key of a run's accuracy-against-MACs panel


def _panels(table: list[dict[str, Any]]) -> list[tuple[str | None, str]]:
    """(run, target) per latency panel, then (run, MACS) per run: targets side by side on one accuracy axis."""
    runs = list(dict.fromkeys(row["run"] for row in table))
    timed = plot_points(table)
    panels = []
    for run in runs:
        targets = {row["target"] for row in timed if row["run"] == run}
        panels += [(run, target) for target in sorted(targets, key=lambda t: _rank(TARGET_ORDER, t))]
        panels.append((run, MACS))
    return panels


def _figure(results: dict[str, Any], table: list[dict[str, Any]]) -> Figure:
    """Accuracy against p50 latency, one panel per target (and run), each with its Pareto front, then accuracy
    against MACs. All panels share the accuracy axis; colour = target, marker = kind, fill = precision.

    Built on a bare Figure (Agg canvas) rather than pyplot, so drawing never switches the backend or
    keeps figures alive in the caller's process.
    """
    from matplotlib.figure import Figure

    panels = _panels(table) or [(None, MACS)]
    ncols = 1 if len(panels) == 1 else 2 if len(panels) <= 4 else 3
    nrows = -(-len(panels) // ncols)
    figure = Figure(figsize=(4.8 * ncols + 2.4, 3.7 * nrows + 0.6), layout="constrained")
    grid = figure.subplots(nrows, ncols, sharey=True, squeeze=False).flatten()
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
        axes.set_ylabel(f"{_metric(results)} (%, higher is better)")
    figure.suptitle(f"{results.get('recipe') or ''}: {_metric(results)} against latency and MACs", x=0.01, ha="left")
    _legend(figure, table, colours)
    return figure


def _target_colours(table: list[dict[str, Any]]) -> dict[str, str]:
    targets = sorted({row["target"] for row in table}, key=lambda t: _rank(TARGET_ORDER, t))
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
    """One variant; the dense fp32 reference also gets a ring, so the baseline is found at once."""
    axes.plot(x, row["accuracy_pct"], zorder=3, **_marker_style(row["kind"], row["precision"], colour))
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
        {(t, p) for _, t, p in variants}, key=lambda s: (_rank(TARGET_ORDER, s[0]), _rank(PRECISION_ORDER, s[1]))
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


def _legend(figure: Figure, table: list[dict[str, Any]], colours: dict[str, str]) -> None:
    """One legend, three titled groups (target colour, kind marker, precision fill), right of the panels."""
    from matplotlib.lines import Line2D

    def entry(label: str, **style: Any) -> Line2D:
        return Line2D([], [], label=label, **style)

    kinds = sorted({row["kind"] for row in table}, key=lambda k: _rank(tuple(KIND_MARKERS), k))
    precisions = sorted({row["precision"] for row in table}, key=lambda p: _rank(PRECISION_ORDER, p))
    headers = ["Target", "Kind", "Precision"]
    handles = [entry(headers[0], linestyle="none")]
    handles += [entry(t, color=c, linestyle="none", marker="o", markersize=9) for t, c in colours.items()]
    handles += [entry("Pareto front", color="#444444", linestyle="--")]
    handles += [entry(headers[1], linestyle="none")]
    handles += [entry(KIND_LABELS.get(k, k), **_marker_style(k, "fp32", "#444444")) for k in kinds]
    handles += [entry("dense fp32 (ringed)", **(_ring("#444444") | {"markersize": 15}))] if "dense" in kinds else []
    handles += [entry(headers[2], linestyle="none")]
    handles += [entry(p, **(_marker_style("", p, "#444444") | {"marker": "o"})) for p in precisions]
    legend = figure.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=10)
    for text in legend.get_texts():
        if text.get_text() in headers:
            text.set_fontweight("bold")
