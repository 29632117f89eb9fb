"""Runs a recipe: dense -> prune -> fine-tune / distill, the scratch baselines, then every candidate
through every target and precision (with a qat stage, also quantization-aware int8 per target: the
``int8-qat`` rows, see `compress.quantize`), into one run directory.

Every stage is cached under ``runs/<name>/<stage>/``: a stage whose inputs (its resolved spec and its
parent's key) are unchanged is loaded instead of rerun, so a changed fine-tune spec reruns only the
fine-tune and what depends on it. A stage's ``stage.json`` is written last, after its checkpoint,
and every file is written atomically: a killed run resumes from the last finished stage.

The parts: `compress.run_context` (what every part shares), `compress.candidates` (the models),
`compress.deploy` with `compress.rows` (exports and measurements), `compress.cache` (stages and row records).

>>> results = Pipeline(load_recipe("recipes/quickstart.yaml"), Path("runs/quickstart")).run()
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

from rich.console import Console

import targets
from compress import distributed, report
from compress.cache import StageCache, package_versions
from compress.candidates import Candidate, CandidateBuilder
from compress.deploy import Deployment
from compress.results import RESULTS_SCHEMA, Results
from compress.run_context import RunContext
from compress.schema import ExportSpec, Recipe
from compress.tasks import TASKS
from targets.accuracy_control import Search, export_sensitivity
from targets.base import EdgecompError
from targets.device import description
from targets.fileio import write_json


class Pipeline:
    """A recipe's run: its context (made on first use: it reads the data), its candidates, their rows."""

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        force: bool = False,
        command: str = "",
        console: Console | None = None,
        export_processes: int | None = None,
    ):
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.force = force
        self.command = command
        self.export_processes = export_processes  # None: one per core (`compress.exports.worker_count`)
        # Only rank 0 speaks: N workers would print every line N times.
        quiet = not distributed.is_main()
        self.console = Console(stderr=True, quiet=True) if quiet else console or Console(stderr=True)
        self.task = TASKS.get(recipe.task)

    @cached_property
    def context(self) -> RunContext:
        return RunContext.create(self.recipe, self.run_dir, self.console, self.force)

    @cached_property
    def stages(self) -> StageCache:
        return StageCache(self.context)

    @cached_property
    def deployment(self) -> Deployment:
        return Deployment(self.context, self.export_processes)

    def candidates(self) -> list[Candidate]:
        """Every candidate, once per seed of the recipe (`train.seeds`), the first seed's first."""
        seeds = self.recipe.train.seed_list
        return [c for seed in seeds for c in CandidateBuilder(self.context, self.stages, seed).all()]

    def sensitivity(self, target: str, groups: list[str] | None = None) -> Search:
        """The dense model's layer groups ranked by what int8 costs them on `target`: each group alone kept in
        float, exported through the target's own int8 and scored on the val split with the task's metric
        (`targets.accuracy_control.export_sensitivity`). Calibration, keep_float and activations come from the recipe's
        export of that target (default 256 samples)."""
        int8 = [name for name, spec in targets.TARGETS.items() if "int8" in spec.precisions]
        if target not in int8:
            raise EdgecompError(f"no int8 on target {target!r}: sensitivity runs on {', '.join(int8)}")
        context = self.context
        dense = CandidateBuilder(context, self.stages).dense()
        export = next((e for e in self.recipe.exports if e.target == target), None)
        count = export.calibration_samples if export else ExportSpec.model_fields["calibration_samples"].default
        keep = list(export.keep_float) if export and export.keep_float else []
        activations = {"activations": export.activations} if export and export.activations else {}
        return export_sensitivity(
            targets.get_target(target),
            dense.model,
            context.example,
            context.calibration(count),
            context.accuracy_control(0.0),
            groups,
            keep_float=keep,
            **activations,
        )

    def run(self) -> dict | None:
        """Train every candidate (on every worker), then on rank 0 alone export, measure and report; the
        results (results.json's object, written through `compress.results.Results`), or None on the other
        workers, which are done once the training is."""
        started = time.perf_counter()
        candidates = self.candidates()
        if not distributed.is_main():
            return None
        rows = self.deployment.rows(candidates)
        results = Results.parse(
            {
                "schema": RESULTS_SCHEMA,
                "recipe": self.recipe.name,
                "task": self.task.name,
                "metric": self.context.metric,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": self.command,
                **self._seeds(),
                "versions": package_versions(),
                "git_commit": report.source_commit(),
                "device": description(),  # where the run was; remotely timed rows carry their own
                "classes": self.context.num_classes,
                "rows": rows,
                "failed": self.deployment.failures,
            }
        )
        manifest = {"stages": self.stages.manifest, "seconds": round(time.perf_counter() - started, 1)}
        write_json(self.run_dir / "manifest.json", manifest)
        results.write(self.run_dir / "results.json")
        report.write_report(results, self.run_dir, self.recipe.report)
        return results.dump()

    def _seeds(self) -> dict:
        """results.json's `seed`, or with several seeds `seeds` (each row then says its own)."""
        train = self.recipe.train
        return {"seeds": train.seed_list} if train.several_seeds else {"seed": train.seed}
