"""The models a run compares: dense -> prune -> fine-tune / distill, and the pruned architecture trained from
scratch with the dense model's epochs (Scratch-E) and compute (Scratch-B), after Liu et al., "Rethinking the
Value of Network Pruning" (ICLR 2019). Each is a cached stage (`compress.cache.StageCache`)."""

from __future__ import annotations

import hashlib
import itertools
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import targets
from compress import distributed
from compress.cache import StageCache, measurement_context
from compress.collapse import check_not_collapsed
from compress.data import make_loader
from compress.data.augment import Augmentation
from compress.data.augment import resolve as resolve_augmentation
from compress.distill import Distillation
from compress.measure import count
from compress.models import architecture_id, build_model, load_checkpoint, load_pretrained, reinitialize
from compress.prune import VERSION as PRUNE_VERSION
from compress.prune import ProbeTiming, prune, search_latency
from compress.run_context import RunContext
from compress.schema import BenchSpec, Branch, DistillSpec, PruneSpec, Spec
from compress.timing import TimingJob, take
from compress.train import VERSION as TRAIN_VERSION
from compress.train import Fit, fit, predict, predict_sharded, seed_everything, supervised
from targets.base import EdgecompError, ExportRequest

FP32 = ExportRequest("fp32")


@dataclass
class Candidate:
    """A trained model and how it was made: one report row per target x precision x threads."""

    name: str
    kind: str  # dense | finetune | kd | scratch_e | scratch_b
    lineage: list[str]
    model: nn.Module
    key: str
    epochs: int
    checkpoint: Path | None  # where `model` is saved (export workers load it); None for a model trained in place
    macs: int = 0
    params: int = 0
    arch: str = ""  # identifies the layer shapes: equal for candidates that share a pruned architecture
    reference: list[np.ndarray] | None = None  # PyTorch outputs on the validation split
    qat: bool = False  # the recipe's qat stage applies to it: int8-qat rows beside its int8 ones
    pruned_from: Path | None = None  # the pruned checkpoint it was fine-tuned from (its accuracy is reported too)
    seed: int | None = None  # its training seed in a recipe of several seeds (its rows carry it); None with one seed
    folder: str = ""  # its export folder: the name, plus '-seed1' for a seed after the recipe's first

    def __post_init__(self) -> None:
        self.folder = self.folder or self.name

    def outputs_on(self, split) -> list[np.ndarray]:
        """PyTorch's outputs on the validation split, the parity reference; computed once, when first needed."""
        if self.reference is None:
            self.reference, _ = predict(self.model, split)
        return self.reference


@dataclass(frozen=True)
class Pruned:
    """The pruned architecture with its inherited weights: the parent of fine-tune and scratch stages."""

    key: str
    step: str  # its lineage entry
    macs: int
    checkpoint: Path
    arch: str  # architecture_id: criteria that prune to the same channel counts share scratch baselines


def dump(spec: Spec | None) -> dict | None:
    return None if spec is None else spec.model_dump(mode="json")


def tagged(name: str, tag: str) -> str:
    return f"{name}-{tag}" if tag else name


class Training:
    """How a run trains a model: its data, optimizer settings and losses (labels, or KD from a teacher)."""

    def __init__(self, context: RunContext, seed: int | None = None) -> None:
        self.context = context  # one seed's (`RunContext.for_seed`)
        self.seed = seed  # named in the log and in a collapse's message, in a recipe of several seeds
        self.augment = resolve_augmentation(context.recipe.data.augment, context.splits)

    def fit(self, model: nn.Module, epochs: int, lr: float, criterion, label: str) -> dict:
        """`train.fit` on the run's training split (augmented as the recipe says), then the val metric; a stage
        that collapsed (`compress.collapse`) raises here, before anything is saved or exported."""
        context = self.context
        label = label if self.seed is None else f"{label} (seed {self.seed})"
        augment = Augmentation(self.augment, context.recipe.train.seed) if self.augment != "none" else None
        job = Fit(epochs=epochs, lr=lr, criterion=criterion, label=label, augment=augment)
        metrics = fit(model, context.splits.train, context.recipe.data.batch_size, context.recipe.train, job)
        # Sharded over the workers and gathered: the same number a single process computes on these weights.
        outputs, labels = predict_sharded(model, context.splits.val)
        score = round(context.task.score(outputs, labels)[context.task.metric], 6)
        metrics[f"val_{context.task.metric}"] = score
        self._check_collapse(label, criterion, metrics["final_loss"], score, lr)
        return metrics

    def _check_collapse(self, stage: str, criterion, final_loss: float, score: float, lr: float) -> None:
        """Stages trained on labels only. A distillation loss mixes in the KD term, and a student of a teacher
        at chance (a few-step dense model) rightly sits at ln C; the teacher, trained on labels, is checked."""
        point = self.context.task.uninformed(self.context.num_classes)
        if point is not None and not isinstance(criterion, Distillation):
            check_not_collapsed(stage, point, {"final loss": final_loss}, (self.context.task.metric, score), lr)

    def inputs(self) -> dict:
        """What of the training setup changes a trained stage: not the device (a run resumes on another one),
        but the worker count (it changes the data order and the batch statistics), the augmentation and the
        training code's `compress.train.VERSION`."""
        inputs = {k: v for k, v in dump(self.context.recipe.train).items() if k != "device"}
        inputs |= {"augment": self.augment, "code": TRAIN_VERSION}
        return {**inputs, "workers": distributed.world_size()} if distributed.world_size() > 1 else inputs

    def criterion(self, model: nn.Module, distill: DistillSpec | None = None, teacher: nn.Module | None = None):
        """The labels, or KD from `teacher` mixed with them."""
        context = self.context
        label_loss = context.task.loss(model, context.recipe.train.label_smoothing)
        if distill is None:
            return supervised(label_loss)
        return Distillation(
            teacher,
            label_loss,
            distill.alpha,
            distill.temperature,
            distill.features,
            model,
            context.example,
            output_kd=context.task.distill,
        )

    @staticmethod
    def teacher(distill: DistillSpec, dense: Candidate | None) -> tuple[nn.Module, str]:
        """The teacher model and a key that changes when it does."""
        if distill.teacher == "dense":
            return dense.model, dense.key
        path = Path(distill.teacher).expanduser()
        return load_checkpoint(path), hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _prune_step(spec: PruneSpec, metrics: dict) -> str:
    """The lineage entry: 'prune(l2, macs=0.5, 1 step)', or for a latency target what it reached, and the p50s of
    the two timings (probe and dense model interleaved) that confirmed it."""
    kind, value = spec.target
    steps = f"{spec.iterative_steps} step" + "s" * (spec.iterative_steps > 1)
    if spec.finetune_epochs_per_step:
        steps += f" +{spec.finetune_epochs_per_step} ep each"
    if kind != "latency":
        return f"prune({spec.importance}, {kind}={value:g}, {steps})"
    found = metrics["latency"]
    return (
        f"prune({spec.importance}, latency={value:g} on {spec.measured_on}: reached {found['reached']:.3f} of the "
        f"dense p50 ({found['reached_ms']:.3f} ms vs dense {found['dense_ms']:.3f} ms, timed together, mean of two "
        f"timings) with ratio {found['ratio']:.3f}{_allocated(found)}, {found['macs']:.3f} of the dense MACs, {steps})"
    )


def _allocated(found: dict) -> str:
    """' shared out by a latency table of 25 groups' when the search measured one."""
    if found.get("allocation") != "latency":
        return ""
    return f" shared out by a latency table of {len(found['table']['groups'])} groups"


class AgainstDense:
    """Exports models' fp32 files for one target and times them interleaved with the dense model's file
    (`timed_against`): called with one model, or `many` at once (a latency table's probes, in one timing)."""

    def __init__(self, dense: Path, target: str, example: torch.Tensor, bench: BenchSpec, folder: Path, log) -> None:
        self.dense, self.target, self.example, self.bench, self.log = dense, target, example, bench, log
        self.files = (folder / f"probe{index}{targets.TARGETS[target].suffix}" for index in itertools.count())

    def __call__(self, model: nn.Module) -> ProbeTiming:
        return self.many([model])[0]

    def many(self, models: list[nn.Module], repeats: int = 1) -> list[ProbeTiming]:
        """Each model's timing against the dense model's, all files in one timing, taken `repeats` times: per
        model, the timing whose fraction of the dense p50 is the median."""
        probes = [targets.export(self.target, m.eval(), self.example, next(self.files), FP32) for m in models]
        jobs = [TimingJob(file, self.bench.threads[0]) for file in [*probes, self.dense]]
        readings = [self._timed(jobs) for _ in range(repeats)]
        timings = [sorted(each, key=lambda t: t.fraction)[len(each) // 2] for each in zip(*readings, strict=True)]
        if len(timings) == 1:
            timing = timings[0]
            self.log(
                f"latency probe on {self.target}: {timing.fraction:.3f} of the dense p50 "
                f"({timing.probe_ms:.3f} ms vs {timing.dense_ms:.3f} ms, timed together)"
            )
        else:
            self.log(f"latency table on {self.target}: {len(timings)} probes timed with the dense model, {repeats}x")
        return timings

    def _timed(self, jobs: list[TimingJob]) -> list[ProbeTiming]:
        results = take(jobs, self.bench, tuple(self.example.shape))
        for result in results:
            if isinstance(result, EdgecompError):
                raise result
        return [ProbeTiming(result.latency_ms_p50, results[-1].latency_ms_p50) for result in results[:-1]]


@contextmanager
def timed_against(
    reference: nn.Module, target: str, example: torch.Tensor, bench: BenchSpec, log: Callable[[str], None]
) -> Iterator[AgainstDense]:
    """An `AgainstDense` for `target`: it exports models' fp32 files and times them interleaved with `reference`'s
    file (exported once, on entry), in one `compress.timing.take` with the recipe's bench settings (its rounds too)
    and first thread count: a latency target's probe and the dense model, timed in the same rounds, so that a
    machine whose speed drifts during a search slows both alike and their ratio holds. The files live until exit."""
    with tempfile.TemporaryDirectory() as folder:
        dense = targets.export(
            target, reference.eval(), example, Path(folder) / f"dense{targets.TARGETS[target].suffix}", FP32
        )
        yield AgainstDense(dense, target, example, bench, Path(folder), log)


def _check_head_trained(fresh: list[str], weights: str, epochs: int, num_classes: int) -> None:
    """Refuse to evaluate output layers that no weights and no training ever touched."""
    if fresh and not epochs:
        raise EdgecompError(
            f"model.weights {weights}: its output layers ({fresh[0]}, ...) do not fit this model's {num_classes} "
            "classes, so they start untrained, and train.epochs is 0: nothing would train them. Train them "
            "(train.epochs > 0), or keep the weights' classes (torchvision's COCO detectors: data.labels: coco91)"
        )


def describe_distill(distill: DistillSpec | None) -> str:
    """How a fine-tune learned, for the lineage: 'labels' or 'KD a=0.7 T=4'."""
    if distill is None:
        return "labels"
    return f"KD a={distill.alpha:g} T={distill.temperature:g}" + " +features" * bool(distill.features)


def scratch_b_epochs(dense_epochs: int, dense_macs: int, pruned_macs: int, max_epochs: int | None = None) -> int:
    """Epochs that give the pruned model the dense model's training compute (Liu et al.'s Scratch-B)."""
    epochs = round(dense_epochs * dense_macs / max(pruned_macs, 1))
    return min(epochs, max_epochs) if max_epochs else epochs


class CandidateBuilder:
    """Builds (or loads from the stage cache) every candidate of a recipe trained with one of its seeds (default:
    the first). Each seed's stages are stages of their own: keyed by that seed's train spec, in folders named
    after the seed (`TrainSpec.seed_tag`: 'dense-seed1/'; the first seed's keep the one-seed names)."""

    def __init__(self, context: RunContext, stages: StageCache, seed: int | None = None) -> None:
        train = context.recipe.train
        seed = train.seed_list[0] if seed is None else seed
        self.seed_tag = train.seed_tag(seed)
        self.row_seed = seed if train.several_seeds else None
        self.context = context.for_seed(seed)
        self.stages = stages
        self.training = Training(self.context, self.row_seed)

    def _stage_name(self, name: str, tag: str = "") -> str:
        """'finetune-l2' for the first seed, 'finetune-l2-seed1' for seed 1."""
        return tagged(tagged(name, tag), self.seed_tag)

    def all(self) -> list[Candidate]:
        """Dense, then per branch (one without a sweep) the pruned candidate and, once per distinct pruned
        architecture, its scratch baselines (named after the first branch that produced it)."""
        recipe = self.context.recipe
        dense = self.dense()
        if not self.context.splits.labelled and not self.seed_tag:  # no labels: the (first) dense model's predictions
            self.context.label_by(dense.model)
        candidates = [dense]
        scratched: set[str] = set()
        quantized = recipe.qat is not None
        dense.qat = quantized and not recipe.branches()  # QAT applies to what the last stage made
        for branch in recipe.branches():
            pruned = self.pruned(dense, branch)
            finetuned = self.finetuned(pruned, dense, branch)
            finetuned.qat = quantized
            candidates.append(finetuned)
            if pruned.arch not in scratched:
                scratched.add(pruned.arch)
                candidates += self.scratch(pruned, dense, branch)
        return candidates

    def dense(self) -> Candidate:
        recipe = self.context.recipe
        if not self.context.splits.labelled and recipe.train.epochs:
            raise EdgecompError(
                f"data set {recipe.data.dataset!r} has no labels, so the dense model cannot be trained on it: give "
                "a trained one (model.weights, or an arch that loads its weights) with train.epochs: 0; its "
                "predictions then label the photos, and fine-tunes distill from it (distill: {alpha: 1})"
            )
        inputs = {"model": dump(recipe.model), "data": dump(recipe.data), "train": self.training.inputs()}

        def build() -> tuple[nn.Module, dict]:
            seed_everything(recipe.train.seed)
            model = build_model(recipe.model, self.context.num_classes)
            if recipe.model.weights:
                fresh = load_pretrained(model, recipe.model.weights, recipe.model.arch)
                _check_head_trained(fresh, recipe.model.weights, recipe.train.epochs, self.context.num_classes)
            criterion = self.training.criterion(model)
            return model, self.training.fit(model, recipe.train.epochs, recipe.train.lr, criterion, "dense")

        stage = self._stage_name("dense")
        model, _, key = self.stages.stage(stage, inputs, build)
        lineage = [f"dense({recipe.model.arch} x{recipe.model.width_mult:g}, {recipe.train.epochs} ep)"]
        return self._candidate("dense", "dense", lineage, model, key, recipe.train.epochs, stage)

    def pruned(self, dense: Candidate, branch: Branch) -> Pruned:
        spec = branch.prune
        kind = spec.target[0]
        context = self.context

        def build() -> tuple[nn.Module, dict]:
            model = load_checkpoint(dense.checkpoint, context.recipe.model)
            seed_everything(context.recipe.train.seed)
            loss = context.task.loss(model, 0.0)
            searched, target = None, spec
            if kind == "latency":  # measured on the target first: the MACs fraction that runs that fast
                bench, log = context.recipe.bench, context.console.log
                with timed_against(model, spec.measured_on, context.example, bench, log) as timed:
                    searched = search_latency(model, context.example, spec, timed, self._gradient_batches, loss)
                target = spec.model_copy(update={"latency": None, "measured_on": None, "ratio": searched.found.ratio})
                seed_everything(context.recipe.train.seed)
            shares = searched.shares if searched else None
            prune(model, context.example, target, self._gradient_batches, loss, self._between_steps(spec), shares)
            macs, params = count(model, context.example)
            self._warn_below_target(spec, {"macs": macs / dense.macs, "params": params / dense.params}.get(kind))
            arch = architecture_id(model)
            metrics = {"macs": macs, "params": params, "macs_fraction": macs / dense.macs, "arch": arch}
            return model, metrics | ({"latency": searched.as_dict()} if searched else {})

        name = self._stage_name("prune", branch.prune_tag)
        inputs = {"parent": dense.key, "prune": dump(spec), "code": PRUNE_VERSION}
        if kind == "latency":  # what the pruned architecture is depends on the machine and settings that timed it
            inputs |= {"bench": context.recipe.bench.model_dump(mode="json"), "measured_with": measurement_context()}
        _, metrics, key = self.stages.stage(name, inputs, build)
        return Pruned(key, _prune_step(spec, metrics), metrics["macs"], self.stages.checkpoint(name), metrics["arch"])

    def _warn_below_target(self, spec: PruneSpec, reached: float | None) -> None:
        """A target is a budget: pruning stops at or below it. Coarse channel steps can stop well below."""
        kind, value = spec.target
        if reached is not None and reached < 0.95 * value:
            hint = f" (round_to={spec.round_to}: a smaller one gives finer steps)" if spec.round_to else ""
            self.context.console.log(
                f"[yellow]prune: {kind}={value:g} landed at {reached:.3f} of the dense {kind}: its last step "
                f"removed channels from many layers at once{hint}[/yellow]"
            )

    def _between_steps(self, spec: PruneSpec) -> Callable[[nn.Module], None] | None:
        """Iterative pruning's fine-tune between steps: labels only, the dense run's optimizer."""
        if not spec.finetune_epochs_per_step:
            return None
        epochs, lr = spec.finetune_epochs_per_step, self.context.recipe.train.lr
        return lambda model: self.training.fit(model, epochs, lr, self.training.criterion(model), "prune step")

    def _gradient_batches(self):
        recipe = self.context.recipe
        loader = make_loader(self.context.splits.train, recipe.data.batch_size, shuffle=True, seed=recipe.train.seed)
        return (batch for batch, _ in zip(loader, range(4), strict=False))

    def finetuned(self, pruned: Pruned, dense: Candidate, branch: Branch) -> Candidate:
        spec = branch.finetune
        if spec is None:
            model = load_checkpoint(pruned.checkpoint, self.context.recipe.model)
            name = tagged("pruned", branch.tag)
            lineage = [*dense.lineage, pruned.step]
            return self._candidate(name, "finetune", lineage, model, pruned.key, 0, checkpoint=pruned.checkpoint)
        lr = spec.lr or self.context.recipe.train.lr / 10
        distill = spec.distill
        teacher, teacher_key = self.training.teacher(distill, dense) if distill else (None, None)
        inputs = {"parent": pruned.key, "teacher": teacher_key, "finetune": dump(spec), "train": self.training.inputs()}

        def build() -> tuple[nn.Module, dict]:
            model = load_checkpoint(pruned.checkpoint, self.context.recipe.model)
            criterion = self.training.criterion(model, distill, teacher)
            return model, self.training.fit(model, spec.epochs, lr, criterion, "finetune" + " (KD)" * bool(distill))

        stage = self._stage_name("finetune", branch.tag)
        model, _, key = self.stages.stage(stage, inputs, build)
        kind = "kd" if distill else "finetune"
        lineage = [*dense.lineage, pruned.step, f"finetune({spec.epochs} ep, lr {lr:g}, {describe_distill(distill)})"]
        candidate = self._candidate(tagged(f"pruned-{kind}", branch.tag), kind, lineage, model, key, spec.epochs, stage)
        candidate.pruned_from = pruned.checkpoint
        return candidate

    def scratch(self, pruned: Pruned, dense: Candidate, branch: Branch) -> list[Candidate]:
        """Liu et al. (2019): the pruned architecture trained from a fresh init with the same epochs as the
        dense model (Scratch-E) and with the same compute (Scratch-B: epochs x dense MACs / pruned MACs)."""
        recipe = self.context.recipe
        epochs = {
            "E": recipe.train.epochs,
            "B": scratch_b_epochs(recipe.train.epochs, dense.macs, pruned.macs, recipe.baselines.max_epochs),
        }
        candidates = []
        for variant in recipe.baselines.scratch:
            kind = f"scratch_{variant.lower()}"
            inputs = {  # a fresh init inherits nothing but the architecture from its parent
                "arch": pruned.arch,
                "model": dump(recipe.model),
                "epochs": epochs[variant],
                "train": self.training.inputs(),
                "data": dump(recipe.data),
            }

            def build(n=epochs[variant], label=kind) -> tuple[nn.Module, dict]:
                seed_everything(recipe.train.seed)
                model = reinitialize(load_checkpoint(pruned.checkpoint, recipe.model))
                return model, self.training.fit(model, n, recipe.train.lr, self.training.criterion(model), label)

            stage = self._stage_name(kind, branch.prune_tag)
            model, _, key = self.stages.stage(stage, inputs, build)
            lineage = [*dense.lineage, pruned.step, f"scratch-{variant}({epochs[variant]} ep, random init)"]
            name = tagged(f"scratch-{variant.lower()}", branch.prune_tag)
            candidates.append(self._candidate(name, kind, lineage, model, key, epochs[variant], stage))
        return candidates

    def _candidate(
        self,
        name: str,
        kind: str,
        lineage: list[str],
        model: nn.Module,
        key: str,
        epochs: int,
        stage: str | None = None,
        checkpoint: Path | None = None,
    ) -> Candidate:
        macs, params = count(model, self.context.example)
        checkpoint = checkpoint or self.stages.checkpoint(stage)
        arch = architecture_id(model)
        folder = tagged(name, self.seed_tag)
        return Candidate(
            name,
            kind,
            lineage,
            model.eval(),
            key,
            epochs,
            checkpoint,
            macs,
            params,
            arch,
            seed=self.row_seed,
            folder=folder,
        )
