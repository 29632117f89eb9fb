"""Runs a recipe: dense -> prune -> fine-tune / distill, the scratch baselines, then every candidate
through every target and precision (with a qat stage, also quantization-aware int8 per target: the
``int8-qat`` rows, see `compress.quantize`), into one run directory.

Every stage is cached under ``runs/<name>/<stage>/``: a stage whose inputs (its resolved spec and its
parent's key) are unchanged is loaded instead of rerun, so a changed fine-tune spec reruns only the
fine-tune and what depends on it. A stage's ``stage.json`` is written last, after its checkpoint,
and every file is written atomically: a killed run resumes from the last finished stage.

>>> results = Pipeline(load_recipe("recipes/quickstart.yaml"), Path("runs/quickstart")).run()
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.optim.swa_utils import update_bn

import targets
from compress import distributed, report
from compress.data import DATASETS, DataSplits, as_numpy, make_loader
from compress.distill import Distillation
from compress.eager import TorchRunner, benchmark_eager
from compress.exports import ExportJob, make_files, worker_count
from compress.measure import count
from compress.models import (
    architecture_id,
    build_model,
    load_checkpoint,
    load_pretrained,
    reinitialize,
    save_checkpoint,
)
from compress.prune import prune
from compress.quantize import quantization_aware
from compress.recipe import dump_recipe
from compress.schema import Branch, DistillSpec, ExportSpec, PruneSpec, Recipe, Spec
from compress.tasks import TASKS
from compress.train import Fit, fit, predict, predict_sharded, seed_everything, supervised
from targets.accuracy_control import Search, export_sensitivity
from targets.base import CALIBRATED_PRECISIONS, AccuracyControl, EdgecompError, Runner
from targets.bench import benchmark
from targets.device import device_info, runtime_versions
from targets.fileio import write_json, write_text

RESULTS_SCHEMA = 1
ADAPTIVE_BN_SAMPLES = 1024  # training images that re-estimate a pruned model's BN statistics before it is scored
QAT_PRECISION = "int8-qat"  # the rows of an int8 export of a quantization-aware-trained model
VERSIONED_PACKAGES = ("edgecomp", "torch", "torchvision", "torch-pruning", "litert-torch", "torchao", "nncf")


@dataclass
class Candidate:
    """A trained model and how it was made: one report row per target x precision x threads."""

    name: str
    kind: str  # dense | finetune | kd | scratch_e | scratch_b
    lineage: list[str]
    model: nn.Module
    key: str
    epochs: int
    macs: int = 0
    params: int = 0
    arch: str = ""  # identifies the layer shapes: equal for candidates that share a pruned architecture
    reference: list[np.ndarray] | None = None  # PyTorch outputs on the validation split
    qat: bool = False  # the recipe's qat stage applies to it: int8-qat rows beside its int8 ones
    pruned_from: Path | None = None  # the pruned checkpoint it was fine-tuned from (its accuracy is reported too)


@dataclass(frozen=True)
class Pruned:
    """The pruned architecture with its inherited weights: the parent of fine-tune and scratch stages."""

    key: str
    step: str  # its lineage entry
    macs: int
    checkpoint: Path
    arch: str  # architecture_id: criteria that prune to the same channel counts share scratch baselines


@dataclass
class _Rows:
    """One record of rows (a candidate on one target in one precision): where it is kept, the key of what made
    it, how to measure it, and the file to make before that when it is not cached."""

    candidate: str
    target: str
    precision: str
    record: Path
    key: str
    inputs: dict[str, Any]
    files: list[str]
    measure: Callable[[], list[dict]]
    job: Callable[[], ExportJob] | None = None  # made when the rows are not cached: calibration reads images


def _key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tagged(name: str, tag: str) -> str:
    return f"{name}-{tag}" if tag else name


def _dump(spec: Spec | None) -> dict | None:
    return None if spec is None else spec.model_dump(mode="json")


class Pipeline:
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
        self.export_processes = export_processes  # None: one per core (`compress.exports.worker_count`)
        self.command = command
        # Only rank 0 speaks: N workers would print every line N times.
        quiet = not distributed.is_main()
        self.console = Console(stderr=True, quiet=True) if quiet else console or Console(stderr=True)
        self.task = TASKS.get(recipe.task)
        self.manifest: dict[str, dict] = {}
        self.failures: list[dict] = []  # exports or measurements that failed: the run goes on without their rows

    # -- stages ---------------------------------------------------------------------------------

    def _stage(
        self, name: str, inputs: dict, build: Callable[[], tuple[nn.Module, dict]]
    ) -> tuple[nn.Module, dict, str]:
        """Load stage `name` if it ran with these inputs before, else build it and save it."""
        key = _key(inputs)
        folder = self.run_dir / name
        saved = distributed.broadcast(self._saved_metrics(folder, key))  # rank 0 decides for all workers
        if saved is not None:
            self.console.log(f"[dim]{name}: unchanged, loaded from {folder}[/dim]")
            self.manifest[name] = {"key": key, "cached": True, **saved}
            return load_checkpoint(folder / "model.pt", self.recipe.model), saved, key
        started = time.perf_counter()
        model, metrics = build()  # every worker builds: training is collective, pruning deterministic
        metrics = {**metrics, "seconds": round(time.perf_counter() - started, 1)}
        if distributed.is_main():
            save_checkpoint(model, folder / "model.pt", self.recipe.model, self.num_classes)
            write_json(folder / "stage.json", {"key": key, "inputs": inputs, "metrics": metrics})
        distributed.barrier()
        if distributed.world_size() > 1:  # one writer: every worker goes on from the file rank 0 wrote
            model = load_checkpoint(folder / "model.pt", self.recipe.model)
        self.console.log(f"{name}: done in {metrics['seconds']} s")
        self.manifest[name] = {"key": key, "cached": False, **metrics}
        return model, metrics, key

    def _saved_metrics(self, folder: Path, key: str) -> dict | None:
        """The metrics of a finished stage with this key, or None when it must run."""
        record = folder / "stage.json"
        if self.force or not record.is_file() or not (folder / "model.pt").is_file():
            return None
        saved = json.loads(record.read_text())
        return saved["metrics"] if saved.get("key") == key else None

    def _train(self, model: nn.Module, epochs: int, lr: float, criterion, label: str) -> dict:
        job = Fit(epochs=epochs, lr=lr, criterion=criterion, label=label)
        metrics = fit(model, self.splits.train, self.recipe.data.batch_size, self.recipe.train, job)
        # Sharded over the workers and gathered: the same number a single process computes on these weights.
        scores = self.task.score(*predict_sharded(model, self.splits.val))
        metrics[f"val_{self.task.metric}"] = round(scores[self.task.metric], 6)
        return metrics

    def _train_inputs(self) -> dict:
        """What of the training setup changes a trained stage: not the device (a run resumes on another one),
        but the worker count (it changes the data order and the batch statistics)."""
        inputs = {k: v for k, v in _dump(self.recipe.train).items() if k != "device"}
        return {**inputs, "workers": distributed.world_size()} if distributed.world_size() > 1 else inputs

    def _label_criterion(self, model: nn.Module):
        return supervised(self.task.loss(model, self.recipe.train.label_smoothing))

    def dense(self) -> Candidate:
        recipe = self.recipe
        inputs = {"model": _dump(recipe.model), "data": _dump(recipe.data), "train": self._train_inputs()}

        def build() -> tuple[nn.Module, dict]:
            seed_everything(recipe.train.seed)
            model = build_model(recipe.model, self.num_classes)
            if recipe.model.weights:
                load_pretrained(model, recipe.model.weights, recipe.model.arch)
            return model, self._train(
                model, recipe.train.epochs, recipe.train.lr, self._label_criterion(model), "dense"
            )

        model, _, key = self._stage("dense", inputs, build)
        lineage = [f"dense({recipe.model.arch} x{recipe.model.width_mult:g}, {recipe.train.epochs} ep)"]
        return self._candidate("dense", "dense", lineage, model, key, recipe.train.epochs)

    def pruned(self, dense: Candidate, branch: Branch) -> Pruned:
        spec = branch.prune
        kind, value = spec.target

        def build() -> tuple[nn.Module, dict]:
            model = load_checkpoint(self.run_dir / "dense" / "model.pt", self.recipe.model)
            seed_everything(self.recipe.train.seed)
            prune(
                model, self.example, spec, self._gradient_batches, self.task.loss(model, 0.0), self._between_steps(spec)
            )
            macs, params = count(model, self.example)
            arch = architecture_id(model)
            reached = {"macs": macs / dense.macs, "params": params / dense.params}.get(kind)
            if reached is not None and reached < 0.95 * value:
                # A target is a budget: pruning stops at or below it. Coarse channel steps can stop well below.
                hint = f" (round_to={spec.round_to}: a smaller one gives finer steps)" if spec.round_to else ""
                self.console.log(
                    f"[yellow]prune: {kind}={value:g} landed at {reached:.3f} of the dense {kind}: its last step "
                    f"removed channels from many layers at once{hint}[/yellow]"
                )
            return model, {"macs": macs, "params": params, "macs_fraction": macs / dense.macs, "arch": arch}

        name = _tagged("prune", branch.prune_tag)
        _, metrics, key = self._stage(name, {"parent": dense.key, "prune": _dump(spec)}, build)
        steps = f"{spec.iterative_steps} step" + "s" * (spec.iterative_steps > 1)
        if spec.finetune_epochs_per_step:
            steps += f" +{spec.finetune_epochs_per_step} ep each"
        step = f"prune({spec.importance}, {kind}={value:g}, {steps})"
        return Pruned(key, step, metrics["macs"], self.run_dir / name / "model.pt", metrics["arch"])

    def _between_steps(self, spec: PruneSpec) -> Callable[[nn.Module], None] | None:
        """Iterative pruning's fine-tune between steps: labels only, the dense run's optimizer."""
        if not spec.finetune_epochs_per_step:
            return None
        epochs = spec.finetune_epochs_per_step
        return lambda model: self._train(
            model, epochs, self.recipe.train.lr, self._label_criterion(model), "prune step"
        )

    def _gradient_batches(self):
        loader = make_loader(self.splits.train, self.recipe.data.batch_size, shuffle=True, seed=self.recipe.train.seed)
        return (batch for batch, _ in zip(loader, range(4), strict=False))

    def _teacher(self, distill: DistillSpec, dense: Candidate) -> tuple[nn.Module, str]:
        """The teacher model and a key that changes when it does."""
        if distill.teacher == "dense":
            return dense.model, dense.key
        path = Path(distill.teacher).expanduser()
        return load_checkpoint(path), hashlib.sha256(path.read_bytes()).hexdigest()[:16]

    def finetuned(self, pruned: Pruned, dense: Candidate, branch: Branch) -> Candidate:
        spec = branch.finetune
        if spec is None:
            model = load_checkpoint(pruned.checkpoint, self.recipe.model)
            name = _tagged("pruned", branch.tag)
            return self._candidate(name, "finetune", [*dense.lineage, pruned.step], model, pruned.key, 0)
        lr = spec.lr or self.recipe.train.lr / 10
        distill = spec.distill
        teacher, teacher_key = self._teacher(distill, dense) if distill else (None, None)
        inputs = {
            "parent": pruned.key,
            "teacher": teacher_key,
            "finetune": _dump(spec),
            "train": self._train_inputs(),
        }

        def build() -> tuple[nn.Module, dict]:
            model = load_checkpoint(pruned.checkpoint, self.recipe.model)
            criterion = self._criterion(model, distill, teacher)
            return model, self._train(model, spec.epochs, lr, criterion, "finetune" + (" (KD)" if distill else ""))

        model, _, key = self._stage(_tagged("finetune", branch.tag), inputs, build)
        kind = "kd" if distill else "finetune"
        lineage = [*dense.lineage, pruned.step, f"finetune({spec.epochs} ep, lr {lr:g}, {_how(distill)})"]
        candidate = self._candidate(_tagged(f"pruned-{kind}", branch.tag), kind, lineage, model, key, spec.epochs)
        candidate.pruned_from = pruned.checkpoint
        return candidate

    def _criterion(self, model: nn.Module, distill: DistillSpec | None, teacher: nn.Module | None):
        """The labels, or KD from `teacher` mixed with them."""
        label_loss = self.task.loss(model, self.recipe.train.label_smoothing)
        if distill is None:
            return supervised(label_loss)
        return Distillation(
            teacher,
            label_loss,
            distill.alpha,
            distill.temperature,
            distill.features,
            model,
            self.example,
            output_kd=self.task.distill,
        )

    def scratch(self, pruned: Pruned, dense: Candidate, branch: Branch) -> list[Candidate]:
        """Liu et al. (2019): the pruned architecture trained from a fresh init with the same epochs as the
        dense model (Scratch-E) and with the same compute (Scratch-B: epochs x dense MACs / pruned MACs)."""
        baselines = self.recipe.baselines
        dense_epochs = self.recipe.train.epochs
        epochs = {
            "E": dense_epochs,
            "B": scratch_b_epochs(dense_epochs, dense.macs, pruned.macs, baselines.max_epochs),
        }
        candidates = []
        for variant in baselines.scratch:
            kind = f"scratch_{variant.lower()}"
            inputs = {  # a fresh init inherits nothing but the architecture from its parent
                "arch": pruned.arch,
                "model": _dump(self.recipe.model),
                "epochs": epochs[variant],
                "train": self._train_inputs(),
                "data": _dump(self.recipe.data),
            }

            def build(n=epochs[variant], label=kind) -> tuple[nn.Module, dict]:
                seed_everything(self.recipe.train.seed)
                model = reinitialize(load_checkpoint(pruned.checkpoint, self.recipe.model))
                return model, self._train(model, n, self.recipe.train.lr, self._label_criterion(model), label)

            model, _, key = self._stage(_tagged(kind, branch.prune_tag), inputs, build)
            lineage = [*dense.lineage, pruned.step, f"scratch-{variant}({epochs[variant]} ep, random init)"]
            name = _tagged(f"scratch-{variant.lower()}", branch.prune_tag)
            candidates.append(self._candidate(name, kind, lineage, model, key, epochs[variant]))
        return candidates

    def _candidate(
        self, name: str, kind: str, lineage: list[str], model: nn.Module, key: str, epochs: int
    ) -> Candidate:
        macs, params = count(model, self.example)
        return Candidate(name, kind, lineage, model.eval(), key, epochs, macs, params, architecture_id(model))

    def _reference(self, candidate: Candidate) -> list[np.ndarray]:
        """PyTorch's outputs on the validation split, the parity reference; computed once, when first needed."""
        if candidate.reference is None:
            candidate.reference, _ = predict(candidate.model, self.splits.val)
        return candidate.reference

    # -- deployment -----------------------------------------------------------------------------

    def _row(
        self, candidate: Candidate, target: str, precision: str, runner: Runner, size: int | None, parity
    ) -> list[dict]:
        test_outputs = collect(runner, self.splits.test)
        scores = self.task.score(test_outputs, self.labels["test"])
        rows = []
        bench = self.recipe.bench
        for threads in bench.threads:
            if isinstance(runner, TorchRunner):  # in a process of its own: see compress.eager.benchmark_eager
                timing = benchmark_eager(runner.model, runner.input_shape, threads, bench.warmup, bench.runs)
            else:
                timing = benchmark(
                    targets.load_runner(runner.path, threads=threads), warmup=bench.warmup, runs=bench.runs
                )
            rows.append(
                {
                    "candidate": candidate.name,
                    "kind": candidate.kind,
                    "lineage": candidate.lineage,
                    "target": target,
                    "precision": precision,
                    "accuracy": round(scores[self.task.metric], 6),
                    "scores": {name: round(value, 6) for name, value in scores.items()},
                    "latency_ms_p50": round(timing.latency_ms_p50, 4),
                    "latency_ms_p90": round(timing.latency_ms_p90, 4),
                    "threads": threads,
                    "macs": candidate.macs,
                    "params": candidate.params,
                    "arch": candidate.arch,
                    "size_bytes": size,
                    "epochs": candidate.epochs,
                    "parity": parity,
                    "runtime": runner.runtime,
                    **_postprocess_timing(timing),
                }
            )
        return rows

    def _torch_rows(self, candidate: Candidate) -> list[dict]:
        """PyTorch eager rows; a fine-tuned candidate's also say how accurate its pruned model was before the
        fine-tune, where the pruning criteria differ most (fine-tuning, above all with KD, evens them out).

        That model is scored with its batch-norm statistics re-estimated on training batches (adaptive BN, Li
        et al., EagleEye, ECCV 2020): with the dense model's statistics a heavily pruned net sits at chance
        whatever the criterion (Fashion-MNIST sweep: 10.0% for l2, taylor and random alike at 0.26 MACs).
        """
        rows = self._row(
            candidate, "pytorch", "fp32", TorchRunner(candidate.model, self.splits.input_shape), None, None
        )
        if candidate.pruned_from is None:
            return rows
        before = load_checkpoint(candidate.pruned_from, self.recipe.model)
        loader = make_loader(self.splits.train, self.recipe.data.batch_size, shuffle=True, seed=self.recipe.train.seed)
        batches = [x for x, _ in itertools.islice(loader, max(1, ADAPTIVE_BN_SAMPLES // self.recipe.data.batch_size))]
        update_bn(batches, before)
        outputs = collect(TorchRunner(before.eval(), self.splits.input_shape), self.splits.test)
        accuracy = round(self.task.score(outputs, self.labels["test"])[self.task.metric], 6)
        return [{**row, "pruned_accuracy": accuracy} for row in rows]

    def deploy(self, candidates: list[Candidate]) -> list[dict]:
        """Rows of every candidate: PyTorch eager, then every export, each measured in its own runtime.

        Rows whose inputs are unchanged come from their records. The files the others need are made first,
        in worker processes (`compress.exports`: converters are mostly single-threaded); then each row is
        measured in turn, so no latency is timed beside a conversion. int8_ac files (NNCF scores them on the
        val split while it makes them) and QAT rows (training first) are made where they are measured.
        """
        plans = [plan for candidate in candidates for plan in self._plans(candidate)]
        saved = [self._saved_rows(plan) for plan in plans]
        jobs = [plan.job() for plan, rows in zip(plans, saved, strict=True) if rows is None and plan.job is not None]
        unmade: dict[str, str] = {}  # export path -> why the export failed
        if jobs:
            processes = worker_count(len(jobs), self.export_processes)
            self.console.log(f"making {len(jobs)} export file(s) in {processes} process(es)")
            make_files(jobs, processes, done=self._made, failed=lambda job, e: unmade.setdefault(str(job.path), str(e)))
        return [row for plan, rows in zip(plans, saved, strict=True) for row in rows or self._measured(plan, unmade)]

    def _made(self, job: ExportJob, seconds: float) -> None:
        self.console.log(f"made {job.path.relative_to(self.run_dir)} ({seconds:.0f} s)")

    def _plans(self, candidate: Candidate) -> list[_Rows]:
        """The records of one candidate's rows, in report order."""
        plans = [
            self._plan(
                candidate,
                "pytorch",
                "fp32",
                partial(self._torch_rows, candidate),
                extra={"pruned_accuracy": "adaptive BN"} if candidate.pruned_from else None,
            )
        ]
        qat_targets = self.recipe.qat_targets() if candidate.qat else []
        for export in self.recipe.exports:
            for precision in export.precision:
                options = _export_options(export, precision)  # what else makes the file: in its rows' key too
                target, io = export.target, export.io
                calibration = options.get("calibration", 0)
                keep = options.get("keep_float", [])
                job = partial(
                    self._export_job, candidate, target, precision, io, calibration=calibration, keep_float=keep
                )
                if precision == "int8_ac":  # made while measured: NNCF needs the metric, which stays here
                    drop = options["max_accuracy_drop"]
                    measure = partial(self._accuracy_controlled_rows, candidate, job, drop)
                    job = None
                else:
                    measure = partial(self._file_rows, candidate, target, precision, io)
                if keep:  # the rows say which layers stayed float
                    measure = partial(_with_fields, measure, {"keep_float": keep})
                plans.append(self._plan(candidate, target, precision, measure, io, options, job))
                if precision == "int8" and target in qat_targets:
                    plans.append(
                        self._plan(
                            candidate,
                            target,
                            QAT_PRECISION,
                            partial(self._qat_rows, candidate, target, io, options["calibration"]),
                            io,
                            {**options, **self._qat_inputs()},
                        )
                    )
        return plans

    def _qat_inputs(self) -> dict:
        """What besides the candidate changes a QAT row: the qat spec, the teacher, the training setup."""
        spec = self.recipe.qat
        teacher_key = self._teacher(spec.distill, self.dense_candidate)[1] if spec.distill else None
        return {"qat": _dump(spec), "teacher": teacher_key, "train": self._train_inputs()}

    def _qat_rows(self, candidate: Candidate, target: str, io: str, calibration: int) -> list[dict]:
        """Fine-tune `candidate` with `target`'s fake quantization, then export and measure it like int8."""
        spec = self.recipe.qat
        lr = spec.lr or self.recipe.train.lr / 100
        teacher = self._teacher(spec.distill, self.dense_candidate)[0] if spec.distill else None

        def train(model: nn.Module) -> dict:
            criterion = self._criterion(model, spec.distill, teacher)
            return self._train(model, spec.epochs, lr, criterion, f"QAT {target}" + (" (KD)" if spec.distill else ""))

        started = time.perf_counter()
        samples = self._calibration(calibration)
        model, metrics = quantization_aware(candidate.model, target, self.example, samples, train)
        metrics = {**metrics, "lr": lr, "seconds": round(time.perf_counter() - started, 1)}
        trained = dataclasses.replace(
            candidate,
            model=model,
            lineage=[*candidate.lineage, f"qat({target}, {spec.epochs} ep, lr {lr:g}, {_how(spec.distill)})"],
            epochs=candidate.epochs + spec.epochs,
            # Parity is against the fake-quant model the file comes from, taken before the export: converting a
            # PT2E graph rewrites it in place.
            reference=predict(model, self.splits.val)[0],
        )
        self._export_job(trained, target, "int8", io, label=QAT_PRECISION, calibration=calibration).run()
        rows = self._file_rows(trained, target, "int8", io, label=QAT_PRECISION)
        return [{**row, "qat": metrics} for row in rows]

    def _plan(
        self,
        candidate: Candidate,
        target: str,
        precision: str,
        measure: Callable[[], list[dict]],
        io: str = "float",
        extra: dict | None = None,
        job: Callable[[], ExportJob] | None = None,
    ) -> _Rows:
        inputs = {
            "candidate": candidate.key,
            "target": target,
            "precision": precision,
            "bench": _dump(self.recipe.bench),
            **(extra or {}),
        }
        if io != "float":  # float I/O keeps the keys and names of runs made before `io` existed
            inputs["io"] = io
        record = self._export_path(candidate, target, precision, io).with_suffix(".json")
        files = [str(self._export_path(candidate, target, precision, io))] if target != "pytorch" else []
        return _Rows(candidate.name, target, precision, record, _key(inputs), inputs, files, measure, job)

    def _saved_rows(self, plan: _Rows) -> list[dict] | None:
        if self.force or not plan.record.is_file():
            return None
        saved = json.loads(plan.record.read_text())
        if saved.get("key") == plan.key and all(Path(p).is_file() for p in saved.get("files", [])):
            return saved["rows"]
        return None

    def _measured(self, plan: _Rows, unmade: dict[str, str]) -> list[dict]:
        """`plan`'s rows, measured and recorded; none when its export or measurement failed (the failure is
        kept in `self.failures` for results.json and the report, and a later run tries it again)."""
        started = time.perf_counter()
        reason = next((unmade[f] for f in plan.files if f in unmade), None)
        if reason is None:
            try:
                rows = plan.measure()
            except EdgecompError as e:
                reason = str(e)
        if reason is not None:
            self.failures.append(
                {"candidate": plan.candidate, "target": plan.target, "precision": plan.precision, "reason": reason}
            )
            self.console.log(f"[red]{plan.candidate} {plan.target} {plan.precision} failed[/red]: {reason}")
            return []
        write_json(plan.record, {"key": plan.key, "inputs": plan.inputs, "files": plan.files, "rows": rows})
        self.console.log(
            f"{plan.candidate} {plan.target} {plan.precision}: accuracy {rows[0]['accuracy']:.4f}, "
            f"p50 {rows[-1]['latency_ms_p50']:.3f} ms ({time.perf_counter() - started:.0f} s)"
        )
        return rows

    def _export_path(self, candidate: Candidate, target: str, precision: str, io: str = "float") -> Path:
        suffix = targets.TARGETS[target].suffix if target in targets.TARGETS else ""
        name = f"{target}-{precision}" + ("" if io == "float" else f"-io{io}")
        return self.run_dir / "exports" / candidate.name / f"{name}{suffix}"

    def _export_job(
        self,
        candidate: Candidate,
        target: str,
        precision: str,
        io: str,
        label: str | None = None,
        calibration: int = 0,
        keep_float: list[str] | None = None,
    ) -> ExportJob:
        """The file of `candidate` on `target` in `precision`; `label` names the rows' precision when it is not
        the export's (int8-qat: an int8 export of a QAT model), `calibration` is the sample count of
        calibrated precisions."""
        label = label or precision
        metadata_ = {
            "recipe": self.recipe.name,
            "candidate": candidate.name,
            "precision": label,
            "io": io,
            "lineage": " > ".join(candidate.lineage),
        }
        return ExportJob(
            target,
            candidate.model,
            tuple(self.splits.input_shape),
            precision,
            self._export_path(candidate, target, label, io),
            self._calibration(calibration) if calibration else None,
            metadata_,
            io,
            {"keep_float": keep_float} if keep_float else {},
        )

    def _accuracy_controlled_rows(
        self, candidate: Candidate, make_job: Callable[[], ExportJob], max_drop: float
    ) -> list[dict]:
        """Make an int8_ac file (NNCF scores candidate layers on the val split with the task's metric), then
        measure it like any other."""
        job = make_job()
        job.metadata["max_accuracy_drop"] = f"{max_drop:g}"
        job.options["accuracy_control"] = self._accuracy_control(max_drop)
        job.run()
        rows = self._file_rows(candidate, job.target, job.precision, job.io)
        fields = {"max_accuracy_drop": max_drop, **_accuracy_control_fields(targets.get_target(job.target), job.path)}
        return [{**row, **fields} for row in rows]

    def _file_rows(
        self, candidate: Candidate, target: str, precision: str, io: str = "float", label: str | None = None
    ) -> list[dict]:
        """Load the file made for `candidate`, check parity against PyTorch, and measure it."""
        label = label or precision
        module = targets.get_target(target)
        path = self._export_path(candidate, target, label, io)
        runner = module.load(path)
        parity = self.task.parity(self._reference(candidate), collect(runner, self.splits.val))
        tolerance = module.TOLERANCE.get(precision)  # float precisions only: int8 is judged by its accuracy
        if tolerance is not None and parity["max_abs_diff"] > tolerance:
            raise EdgecompError(
                f"{candidate.name}: the {target} {precision} export disagrees with PyTorch (max abs diff "
                f"{parity['max_abs_diff']:.2e} > tolerance {tolerance:.0e}): a converter problem, not a "
                f"recipe one; the file is kept for inspection at {path}"
            )
        return self._row(candidate, target, label, runner, module.size_bytes(path), parity)

    def _accuracy_control(self, max_drop: float) -> AccuracyControl:
        """The validation split and the task's headline metric, for an export that may lose `max_drop` points."""
        labels = self.labels["val"]

        def score(outputs: list[np.ndarray], indices: np.ndarray) -> float:
            return self.task.score(outputs, labels[indices])[self.task.metric]

        return AccuracyControl(SplitImages(self.splits.val), score, max_drop)

    # -- the run --------------------------------------------------------------------------------

    def _prepare(self) -> None:
        self.splits: DataSplits = DATASETS.get(self.recipe.data.dataset)(self.recipe.data)
        if self.splits.task != self.task.name:
            raise EdgecompError(
                f"data set {self.recipe.data.dataset!r} is labelled for {self.splits.task}, but the recipe's task "
                f"is {self.task.name}: set task: {self.splits.task}, or pick a {self.task.name} data set"
            )
        self.num_classes = self.recipe.model.num_classes or self.splits.num_classes
        self.example = torch.zeros(self.splits.input_shape)
        self.labels = {
            split: np.concatenate([y for _, y in as_numpy(getattr(self.splits, split))]) for split in ("val", "test")
        }
        self._calibration_sets: dict[int, np.ndarray] = {}
        if distributed.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / "recipe.resolved.yaml", dump_recipe(self.recipe))

    def _calibration(self, count: int) -> np.ndarray:
        """`count` train images, the same ones for every export that asks for as many."""
        if count not in self._calibration_sets:
            self._calibration_sets[count] = calibration_samples(self.splits, count, self.recipe.train.seed)
        return self._calibration_sets[count]

    def candidates(self) -> list[Candidate]:
        """Dense, then per branch (one without a sweep) the pruned candidate and, once per distinct pruned
        architecture, its scratch baselines (named after the first branch that produced it)."""
        dense = self.dense()
        self.dense_candidate = dense  # the QAT stage's default teacher
        candidates = [dense]
        scratched: set[str] = set()
        quantized = self.recipe.qat is not None
        dense.qat = quantized and not self.recipe.branches()  # QAT applies to what the last stage made
        for branch in self.recipe.branches():
            pruned = self.pruned(dense, branch)
            candidates.append(dataclasses.replace(self.finetuned(pruned, dense, branch), qat=quantized))
            if pruned.arch not in scratched:
                scratched.add(pruned.arch)
                candidates += self.scratch(pruned, dense, branch)
        return candidates

    def sensitivity(self, target: str, groups: list[str] | None = None) -> Search:
        """The dense model's layer groups ranked by what int8 costs them on `target`: each group alone kept in
        float, exported through the target's own int8 and scored on the val split with the task's metric
        (`targets.accuracy_control.export_sensitivity`). Calibration and keep_float come from the recipe's
        export of that target (default 256 samples)."""
        int8 = [name for name, spec in targets.TARGETS.items() if "int8" in spec.precisions]
        if target not in int8:
            raise EdgecompError(f"no int8 on target {target!r}: sensitivity runs on {', '.join(int8)}")
        self._prepare()
        dense = self.dense()
        export = next((e for e in self.recipe.exports if e.target == target), None)
        count = export.calibration_samples if export else ExportSpec.model_fields["calibration_samples"].default
        keep = list(export.keep_float) if export and export.keep_float else []
        return export_sensitivity(
            targets.get_target(target),
            dense.model,
            self.example,
            self._calibration(count),
            self._accuracy_control(0.0),
            groups,
            keep_float=keep,
        )

    def run(self) -> dict | None:
        """Train every candidate (on every worker), then on rank 0 alone export, measure and report; the
        results, or None on the other workers, which are done once the training is."""
        self._prepare()
        started = time.perf_counter()
        candidates = self.candidates()
        if not distributed.is_main():
            return None
        rows = self.deploy(candidates)
        results = {
            "schema": RESULTS_SCHEMA,
            "recipe": self.recipe.name,
            "task": self.task.name,
            "metric": self.task.metric,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": self.command,
            "seed": self.recipe.train.seed,
            "versions": package_versions(),
            "git_commit": report.source_commit(),
            "device": {**device_info(), "runtimes": runtime_versions()},
            "rows": rows,
            "failed": self.failures,
        }
        write_json(
            self.run_dir / "manifest.json",
            {"stages": self.manifest, "seconds": round(time.perf_counter() - started, 1)},
        )
        write_json(self.run_dir / "results.json", results)
        report.write_report(results, self.run_dir, self.recipe.report)
        return results


def _export_options(export: ExportSpec, precision: str) -> dict[str, Any]:
    """The settings besides target, precision and io that one export of `export` depends on."""
    options: dict[str, Any] = {}
    if precision in CALIBRATED_PRECISIONS:
        options["calibration"] = export.calibration_samples
    if precision == "int8_ac":
        options["max_accuracy_drop"] = export.max_accuracy_drop
    if export.keep_float and precision in CALIBRATED_PRECISIONS:
        options["keep_float"] = list(export.keep_float)
    return options


def _accuracy_control_fields(module: Any, path: Path) -> dict[str, Any]:
    """What an int8_ac file's metadata says the search kept in float, and each layer group's metric when kept
    alone in float (`targets.accuracy_control`; OpenVINO's NNCF search writes neither)."""
    metadata = module.read_metadata(path)
    fields: dict[str, Any] = {}
    if "keep_float" in metadata:
        fields["keep_float"] = json.loads(metadata["keep_float"])
    if "accuracy_control" in metadata:
        fields["sensitivity"] = json.loads(metadata["accuracy_control"])
    return fields


def _with_fields(measure: Callable[[], list[dict]], fields: dict[str, Any]) -> list[dict]:
    return [{**row, **fields} for row in measure()]


def _how(distill: DistillSpec | None) -> str:
    """How a fine-tune learned, for the lineage: 'labels' or 'KD a=0.7 T=4'."""
    if distill is None:
        return "labels"
    return f"KD a={distill.alpha:g} T={distill.temperature:g}" + " +features" * bool(distill.features)


def scratch_b_epochs(dense_epochs: int, dense_macs: int, pruned_macs: int, max_epochs: int | None = None) -> int:
    """Epochs that give the pruned model the dense model's training compute (Liu et al.'s Scratch-B)."""
    epochs = round(dense_epochs * dense_macs / max(pruned_macs, 1))
    return min(epochs, max_epochs) if max_epochs else epochs


def _postprocess_timing(timing) -> dict[str, float]:
    """A detector's numpy post-processing latency (threshold, top-k, NMS), apart from the model's."""
    if timing.postprocess_ms_p50 is None:
        return {}
    return {
        "postprocess_ms_p50": round(timing.postprocess_ms_p50, 4),
        "postprocess_ms_p90": round(timing.postprocess_ms_p90, 4),
    }


def calibration_samples(splits: DataSplits, n: int, seed: int) -> np.ndarray:
    """A fixed random subset of training images for int8 calibration (never the test split)."""
    rng = np.random.default_rng(seed)
    index = rng.choice(len(splits.train), size=min(n, len(splits.train)), replace=False)
    images = SplitImages(splits.train)
    return np.stack([images[i] for i in sorted(index)])


class SplitImages:
    """A split's images as numpy arrays, read one at a time (a sequence, not a copy of the split)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.dataset[int(index)][0].numpy()


def collect(runner: Runner, dataset) -> list[np.ndarray]:
    """A runner's outputs over a whole split."""
    parts = [runner.predict(x) for x, _ in as_numpy(dataset)]
    return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


def package_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
