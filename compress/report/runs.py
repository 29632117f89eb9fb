"""Run directories as the report reads them: results.json checked, several runs combined into one report,
the recipes' `report:` constraints, and which edgecomp source made a run."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from compress.results import Results, Run, timing_device
from targets.base import EdgecompError

if TYPE_CHECKING:
    from compress.schema import ReportSpec


def load_results(run_dir: Path) -> Results:
    """A run directory's results.json, checked: every way it can be wrong is one clear user error."""
    if not run_dir.is_dir():
        raise EdgecompError(f"{run_dir}: no such run directory (runs are written to runs/<recipe name>/)")
    path = run_dir / "results.json"
    if not path.is_file():
        raise EdgecompError(f"{path}: not found; is {run_dir} a finished run? (`edgecomp run RECIPE` writes it)")
    return Results.load(path)


def combine_runs(runs: Sequence[Results | dict]) -> Results:
    """Several runs' results as one: rows gain a `run` label, each run's provenance goes under `runs`.

    A single run is returned as it is. Runs must share a metric: a table that mixes top-1 with mAP would
    rank numbers that do not compare.
    """
    typed = [Results.parse(run) for run in runs]
    if len(typed) == 1:
        return typed[0]
    metrics = {str(run.metric) for run in typed}
    if len(metrics) > 1:
        raise EdgecompError(f"these runs measure different metrics ({', '.join(sorted(metrics))}); report them apart")
    labels = _run_labels(typed)
    pairs = list(zip(typed, labels, strict=True))
    return Results(
        recipe=" + ".join(dict.fromkeys(run.recipe or "unnamed" for run in typed)),
        task=typed[0].task,
        metric=typed[0].metric,
        runs=[Run.model_validate(_provenance(run) | {"label": label}) for run, label in pairs],
        rows=[row.model_copy(update={"run": label}) for run, label in pairs for row in run.rows],
        failed=[failure.model_copy(update={"run": label}) for run, label in pairs for failure in run.failed],
    )


def _provenance(run: Results) -> dict:
    return run.model_dump(by_alias=True, exclude_unset=True, exclude={"rows", "failed", "runs"})


def _run_labels(runs: list[Results]) -> list[str]:
    """'quickstart @ AMD EPYC 7B13, 2 cores' (the machine its files were timed on); numbered where two runs would
    read the same."""
    labels = []
    for run in runs:
        timed = timing_device(run.rows)
        device = timed[1] if timed else run.device
        parts = (device.cpu, f"{device.cores} cores" if device.cores else "") if device else ()
        machine = ", ".join(part for part in parts if part)
        labels.append(f"{run.recipe or 'unnamed'} @ {machine or 'unknown device'}")
    return [f"{label} #{i + 1}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def report_spec(**constraints: float | None) -> ReportSpec:
    """A `report:` section from command-line constraints; a bad value is one user error line."""
    from pydantic import ValidationError

    from compress.schema import ReportSpec

    try:
        return ReportSpec(**constraints)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise EdgecompError(f"report constraints: {problems}") from None


def recipes_spec(run_dirs: list[Path]) -> ReportSpec | None:
    """The runs' `report:` sections from their resolved recipes, when all of them say the same."""
    import yaml

    sections = []
    for run_dir in run_dirs:
        path = run_dir / "recipe.resolved.yaml"
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
        section = data.get("report") if isinstance(data, dict) else None
        sections.append(json.dumps(section or {}, sort_keys=True))
    return report_spec(**json.loads(sections[0])) if len(set(sections)) == 1 else None


def source_commit() -> str | None:
    """The git commit of the edgecomp source tree that is running (with '-dirty' for local changes), or
    None when edgecomp is not a git checkout (an installed wheel) or git is missing."""
    root = Path(__file__).resolve().parents[2]

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
