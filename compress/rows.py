"""Scoring a model in one runtime: accuracy on the test split, parity with PyTorch on the validation split. One
dict per thread count: a result row (`compress.results`), whose latency `compress.timing` fills in once every
row of the run is scored, timing them all together."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from torch.optim.swa_utils import update_bn

import targets
from compress.candidates import Candidate
from compress.data import as_numpy, make_loader
from compress.eager import TorchRunner
from compress.models import load_checkpoint
from compress.results import pack_correct
from compress.run_context import RunContext
from targets.base import EdgecompError, Runner

ADAPTIVE_BN_SAMPLES = 1024  # training images that re-estimate a pruned model's BN statistics before it is scored


class Measurer:
    def __init__(self, context: RunContext) -> None:
        self.context = context

    def file_rows(self, candidate: Candidate, target: str, precision: str, path: Path, label: str | None = None):
        """Load `candidate`'s file on `target`, check parity against PyTorch, and score it; `label` names the
        rows' precision when it is not the export's (int8-qat)."""
        module = targets.get_target(target)
        runner = module.load(path)
        reference = candidate.outputs_on(self.context.splits.val)
        parity = self.context.task.parity(reference, collect(runner, self.context.splits.val))
        tolerance = module.TOLERANCE.get(precision)  # float precisions only: int8 is judged by its accuracy
        if tolerance is not None and parity["max_abs_diff"] > tolerance:
            raise EdgecompError(
                f"{candidate.name}: the {target} {precision} export disagrees with PyTorch (max abs diff "
                f"{parity['max_abs_diff']:.2e} > tolerance {tolerance:.0e}): a converter problem, not a "
                f"recipe one; the file is kept for inspection at {path}"
            )
        return self.rows(candidate, target, label or precision, runner, module.size_bytes(path), parity)

    def torch_rows(self, candidate: Candidate) -> list[dict]:
        """PyTorch eager rows; a fine-tuned candidate's also say how accurate its pruned model was before the
        fine-tune, where the pruning criteria differ most (fine-tuning, above all with KD, evens them out).

        That model is scored with its batch-norm statistics re-estimated on training batches (adaptive BN, Li
        et al., EagleEye, ECCV 2020): with the dense model's statistics a heavily pruned net sits at chance
        whatever the criterion (Fashion-MNIST sweep: 10.0% for l2, taylor and random alike at 0.26 MACs).
        """
        context = self.context if candidate.seed is None else self.context.for_seed(candidate.seed)
        shape = context.splits.input_shape
        rows = self.rows(candidate, "pytorch", "fp32", TorchRunner(candidate.model, shape), None, None)
        if candidate.pruned_from is None:
            return rows
        before = load_checkpoint(candidate.pruned_from, context.recipe.model)
        batch_size, seed = context.recipe.data.batch_size, context.recipe.train.seed
        loader = make_loader(context.splits.train, batch_size, shuffle=True, seed=seed)
        update_bn([x for x, _ in itertools.islice(loader, max(1, ADAPTIVE_BN_SAMPLES // batch_size))], before)
        outputs = collect(TorchRunner(before.eval(), shape), context.splits.test)
        accuracy = round(context.score(outputs)[context.task.metric], 6)
        return [{**row, "pruned_accuracy": accuracy} for row in rows]

    def rows(
        self, candidate: Candidate, target: str, precision: str, runner: Runner, size: int | None, parity
    ) -> list[dict]:
        outputs = collect(runner, self.context.splits.test)
        labels = self.context.labels["test"]
        scores, bounds = self.context.task.score_with_interval(outputs, labels)
        per_image = self.context.task.correct(outputs, labels)
        paired = {} if per_image is None else {"samples": len(per_image), "correct": pack_correct(per_image)}
        if bounds is not None:  # a metric that is no mean over images (mAP) brings its own interval
            paired = {"samples": len(labels), "accuracy_interval": [round(bound, 6) for bound in bounds]}
        rows = []
        for threads in self.context.recipe.bench.threads:
            rows.append(
                {
                    "candidate": candidate.name,
                    "kind": candidate.kind,
                    "lineage": candidate.lineage,
                    "target": target,
                    "precision": precision,
                    "accuracy": round(scores[self.context.task.metric], 6),
                    "scores": {name: round(value, 6) for name, value in scores.items()},
                    "latency_ms_p50": None,  # `compress.timing.with_latency`: here, where a row has always had it
                    "latency_ms_p90": None,
                    "threads": threads,
                    "macs": candidate.macs,
                    "params": candidate.params,
                    "arch": candidate.arch,
                    "size_bytes": size,
                    "epochs": candidate.epochs,
                    "parity": parity,
                    "runtime": runner.runtime,
                    **paired,
                }
            )
        return rows


def collect(runner: Runner, dataset) -> list[np.ndarray]:
    """A runner's outputs over a whole split."""
    parts = [runner.predict(x) for x, _ in as_numpy(dataset)]
    return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]
