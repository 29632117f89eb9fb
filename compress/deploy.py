"""Every candidate through every target and precision: the plan of rows, the files they need, their
measurement, and the rows of quantization-aware training (``int8-qat``, see `compress.quantize`).

Rows whose record still holds (`compress.cache.RowRecord`: same file inputs, device and versions) take their
accuracy and parity from it. The files the others need are made first, in worker processes (`compress.exports`:
converters are mostly single-threaded), then each of those rows is scored in turn. int8_ac files (scored on the
val split while they are made) and QAT rows (training first) are made where they are scored. Last, every row
of the run, recorded or new, is timed, all together (`compress.timing`): no latency is timed beside a
conversion, and a CPU whose speed drifts slows every row alike. An export, a measurement or a timing that fails
is kept in `failures` and the run goes on without its rows.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

import targets
from compress.cache import RowRecord, measurement_context
from compress.candidates import Candidate, Training, describe_distill, dump
from compress.exports import Checkpoint, ExportJob, make_files, worker_count
from compress.quantize import quantization_aware
from compress.results import QAT_PRECISION
from compress.rows import Measurer
from compress.run_context import RunContext
from compress.schema import BenchSpec, ExportSpec
from compress.timing import time_rows
from compress.train import predict
from targets.base import CALIBRATED_PRECISIONS, PRECISIONS, EdgecompError, ExportRequest
from targets.remote import Remote, RemoteSession


@dataclass
class RowPlan:
    """One record of rows (a candidate on one target in one precision): where it is kept, how to score it, what
    its latency is timed on (its file, or the PyTorch model), and the file to make first when it is not recorded."""

    candidate: str
    target: str
    precision: str
    record: RowRecord
    measure: Callable[[], list[dict]]
    timed: Path | nn.Module
    job: Callable[[], ExportJob] | None = None  # made when the rows are not recorded: calibration reads images
    seed: int | None = None  # the candidate's, in a recipe of several seeds

    @property
    def label(self) -> str:
        return self.candidate if self.seed is None else f"{self.candidate} (seed {self.seed})"


class Deployment:
    def __init__(self, context: RunContext, export_processes: int | None = None) -> None:
        self.context = context
        self.export_processes = export_processes  # None: one per core (`compress.exports.worker_count`)
        self.measurer = Measurer(context)
        self.failures: list[dict] = []  # exports or measurements that failed: the run goes on without their rows
        self.remote: RemoteSession | None = None  # where the files are timed with bench.remote, during `rows`
        self._measured_with = measurement_context()
        self._files_measured_with = self._measured_with  # with bench.remote: and the remote device

    def rows(self, candidates: list[Candidate]) -> list[dict]:
        """Rows of every candidate: PyTorch eager, then every export, each measured in its own runtime."""
        with self._bench_device():
            return self._rows(candidates)

    @contextmanager
    def _bench_device(self) -> Iterator[None]:
        """With bench.remote, a session with that device for the run: the files' latencies come from it, and
        their records are keyed by what it is (host, CPU, runtimes) besides what made and scored them here."""
        bench = self.context.recipe.bench
        if bench.remote is None:
            yield
            return
        remote = Remote(bench.remote, bench.remote_python, tuple(bench.remote_ssh_options), bench.remote_timeout)
        with RemoteSession(remote) as session:
            self.context.console.log(f"timing exported files on {bench.remote}: {session.description}")
            self.remote = session
            self._files_measured_with = {**self._measured_with, "remote": session.description}
            try:
                yield
            finally:
                self.remote = None
                self._files_measured_with = self._measured_with

    def _rows(self, candidates: list[Candidate]) -> list[dict]:
        dense = {candidate.seed: candidate for candidate in candidates if candidate.kind == "dense"}  # per seed
        plans = [plan for c in candidates for plan in self.plans(c, dense.get(c.seed, candidates[0]))]
        saved = [plan.record.load(self.context.force) for plan in plans]
        jobs = [plan.job() for plan, rows in zip(plans, saved, strict=True) if rows is None and plan.job is not None]
        unmade: dict[str, str] = {}  # export path -> why the export failed
        if jobs:
            processes = worker_count(len(jobs), self.export_processes)
            self.context.console.log(f"making {len(jobs)} export file(s) in {processes} process(es)")
            make_files(jobs, processes, done=self._made, failed=lambda job, e: unmade.setdefault(str(job.path), str(e)))
        scored = [rows or self._scored(plan, unmade) for plan, rows in zip(plans, saved, strict=True)]
        timed = self._timed(plans, scored)
        return [with_seed(row, plan.seed) for plan, rows in zip(plans, timed, strict=True) for row in rows]

    def _timed(self, plans: list[RowPlan], scored: list[list[dict]]) -> list[list[dict]]:
        """Every scored row with its latency, all timed together (`compress.timing.time_rows`)."""
        bench, console = self.context.recipe.bench, self.context.console
        count = sum(len(rows) for rows in scored)
        where = f" (files on {bench.remote})" if self.remote is not None else ""
        console.log(f"timing {count} row(s) together{where}: {bench.runs} runs each in {bench.rounds} rounds")
        started = time.perf_counter()
        shape = tuple(self.context.splits.input_shape)
        timed, failed = time_rows(scored, [plan.timed for plan in plans], bench, shape, self.remote)
        for index, reason in failed.items():
            self._failed(plans[index], reason)
        console.log(f"timed in {time.perf_counter() - started:.0f} s")
        return timed

    def _made(self, job: ExportJob, seconds: float) -> None:
        self.context.console.log(f"made {job.path.relative_to(self.context.run_dir)} ({seconds:.0f} s)")

    def plans(self, candidate: Candidate, dense: Candidate) -> list[RowPlan]:
        """The records of one candidate's rows, in report order; `dense` is the QAT stage's default teacher."""
        extra = {"pruned_accuracy": "adaptive BN"} if candidate.pruned_from else None
        plans = [self._plan(candidate, "pytorch", "fp32", partial(self.measurer.torch_rows, candidate), extra=extra)]
        qat_targets = self.context.recipe.qat_targets() if candidate.qat else []
        for export in self.context.recipe.exports:
            for precision in export.precision:
                plans.append(self._export_plan(candidate, export, precision))
                if precision == "int8" and export.target in qat_targets:
                    plans.append(self._qat_plan(candidate, export, dense))
        return plans

    def _export_plan(self, candidate: Candidate, export: ExportSpec, precision: str) -> RowPlan:
        options = export_options(export, precision)  # what else makes the file: in its rows' key too
        target, io = export.target, export.io
        job = partial(self.export_job, candidate, target, precision, io, **_job_settings(options))
        if PRECISIONS[precision].accuracy_controlled:  # made while measured: the search needs the metric, here
            measure = partial(self._accuracy_controlled_rows, candidate, job, options["max_accuracy_drop"])
            job = None
        else:
            path = self.export_path(candidate, target, precision, io)
            measure = partial(self.measurer.file_rows, candidate, target, precision, path)
        measure = _stating_settings(measure, options)
        # How the target makes files, from 2 (version 1's records keep their keys). Not in QAT rows' keys: those
        # would train again, for a file its post-training defaults do not make.
        version = {"target_version": v} if (v := targets.TARGETS[target].version) > 1 else {}
        return self._plan(candidate, target, precision, measure, io, {**options, **version}, job)

    def _plan(
        self,
        candidate: Candidate,
        target: str,
        precision: str,
        measure: Callable[[], list[dict]],
        io: str = "float",
        extra: dict | None = None,
        job: Callable[[], ExportJob] | None = None,
    ) -> RowPlan:
        inputs = {
            "candidate": candidate.key,
            "target": target,
            "precision": precision,
            "bench": timing_spec(self.context.recipe.bench),
            "measured_with": self._measured_with if target == "pytorch" else self._files_measured_with,
            **(extra or {}),
        }
        if io != "float":  # float I/O keeps the names of runs made before `io` existed
            inputs["io"] = io
        path = self.export_path(candidate, target, precision, io)
        files = [str(path)] if target != "pytorch" else []
        record = RowRecord(path.with_suffix(".json"), inputs, files)
        timed = candidate.model if target == "pytorch" else path
        return RowPlan(candidate.name, target, precision, record, measure, timed, job, candidate.seed)

    def _scored(self, plan: RowPlan, unmade: dict[str, str]) -> list[dict]:
        """`plan`'s rows, scored and recorded at once (a killed run resumes after them), their latencies still to
        take; none when its export or measurement failed (the failure is kept in `self.failures` for results.json
        and the report, and a later run tries it again)."""
        started = time.perf_counter()
        reason = next((unmade[f] for f in plan.record.files if f in unmade), None)
        if reason is None:
            try:
                rows = plan.measure()
            except EdgecompError as e:
                reason = str(e)
        if reason is not None:
            self._failed(plan, reason)
            return []
        plan.record.save(rows)  # without latencies: every run takes those (`compress.timing`)
        self.context.console.log(
            f"{plan.label} {plan.target} {plan.precision}: accuracy {rows[0]['accuracy']:.4f} "
            f"({time.perf_counter() - started:.0f} s)"
        )
        return rows

    def _failed(self, plan: RowPlan, reason: str) -> None:
        failure = {"candidate": plan.candidate, "target": plan.target, "precision": plan.precision}
        seed = {} if plan.seed is None else {"seed": plan.seed}
        self.failures.append({**failure, "reason": reason, **seed})
        self.context.console.log(f"[red]{plan.label} {plan.target} {plan.precision} failed[/red]: {reason}")

    def export_path(self, candidate: Candidate, target: str, precision: str, io: str = "float") -> Path:
        suffix = targets.TARGETS[target].suffix if target in targets.TARGETS else ""
        name = f"{target}-{precision}" + ("" if io == "float" else f"-io{io}")
        return self.context.run_dir / "exports" / candidate.folder / f"{name}{suffix}"

    def export_job(
        self,
        candidate: Candidate,
        target: str,
        precision: str,
        io: str,
        calibration: int = 0,
        keep_float: list[str] | None = None,
        label: str | None = None,
        calibration_root: str | None = None,
        activations: str | None = None,
    ) -> ExportJob:
        """The file of `candidate` on `target` in `precision`; `calibration` is the sample count of calibrated
        precisions; `label` names the rows' precision when it is not the export's (int8-qat: an int8 export
        of a QAT model); `activations`: the activation range estimator (None: the target's default)."""
        label = label or precision
        context = self.context_of(candidate)
        metadata = {
            "recipe": self.context.recipe.name,
            "candidate": candidate.name,
            "precision": label,
            "io": io,
            "lineage": " > ".join(candidate.lineage),
            "outputs": ",".join(self.context.task.outputs),  # what the outputs are, not left to their shapes
            **self.context.splits.preprocess.to_metadata(),  # how an image becomes its input, for the device's tools
            **self.context.class_metadata(),  # what each output is called, where the data names them
        }
        request = ExportRequest(
            precision,
            context.calibration(calibration, calibration_root) if calibration else None,
            metadata,
            io,
            tuple(keep_float or ()),
            activations=activations,
        )
        model = Checkpoint(candidate.checkpoint, self.context.recipe.model) if candidate.checkpoint else candidate.model
        path = self.export_path(candidate, target, label, io)
        return ExportJob(target, model, tuple(self.context.splits.input_shape), path, request)

    def context_of(self, candidate: Candidate) -> RunContext:
        """The run as `candidate`'s seed sees it: its calibration images and its training setup (QAT)."""
        return self.context if candidate.seed is None else self.context.for_seed(candidate.seed)

    def _accuracy_controlled_rows(
        self, candidate: Candidate, make_job: Callable[[], ExportJob], max_drop: float
    ) -> list[dict]:
        """Make an int8_ac file (the search scores layers on the val split with the task's metric), then
        measure it like any other."""
        job = make_job()
        job.request = dataclasses.replace(
            job.request,
            metadata={**job.request.metadata, "max_accuracy_drop": f"{max_drop:g}"},
            accuracy_control=self.context.accuracy_control(max_drop),
        )
        job.run()
        rows = self.measurer.file_rows(candidate, job.target, job.precision, job.path)
        fields = {"max_accuracy_drop": max_drop, **_accuracy_control_fields(targets.get_target(job.target), job.path)}
        return [{**row, **fields} for row in rows]

    # -- quantization-aware training ------------------------------------------------------------

    def _qat_plan(self, candidate: Candidate, export: ExportSpec, dense: Candidate) -> RowPlan:
        spec = self.context.recipe.qat
        training = Training(self.context_of(candidate), candidate.seed)
        teacher_key = training.teacher(spec.distill, dense)[1] if spec.distill else None
        options = export_options(export, "int8", qat=True)
        inputs = {**options, "qat": dump(spec), "teacher": teacher_key, "train": training.inputs()}
        measure = partial(self._qat_rows, candidate, export.target, export.io, options["calibration"], dense)
        return self._plan(candidate, export.target, QAT_PRECISION, measure, export.io, inputs)

    def _qat_rows(self, candidate: Candidate, target: str, io: str, calibration: int, dense: Candidate) -> list[dict]:
        """Fine-tune `candidate` with `target`'s fake quantization, then export and measure it like int8."""
        context, spec = self.context_of(candidate), self.context.recipe.qat
        training = Training(context, candidate.seed)
        lr = spec.lr or context.recipe.train.lr / 100
        teacher = training.teacher(spec.distill, dense)[0] if spec.distill else None

        def train(model: nn.Module) -> dict:
            label = f"QAT {target}" + " (KD)" * bool(spec.distill)
            return training.fit(model, spec.epochs, lr, training.criterion(model, spec.distill, teacher), label)

        started, how = time.perf_counter(), describe_distill(spec.distill)
        samples = context.calibration(calibration)
        model, metrics = quantization_aware(candidate.model, target, context.example, samples, train)
        metrics = {**metrics, "lr": lr, "seconds": round(time.perf_counter() - started, 1)}
        trained = dataclasses.replace(
            candidate,
            model=model,
            checkpoint=None,  # a fake-quantized graph: exported from memory, in this process
            lineage=[*candidate.lineage, f"qat({target}, {spec.epochs} ep, lr {lr:g}, {how})"],
            epochs=candidate.epochs + spec.epochs,
            # Parity is against the fake-quant model the file comes from, taken before the export: converting a
            # PT2E graph rewrites it in place.
            reference=predict(model, context.splits.val)[0],
        )
        job = self.export_job(trained, target, "int8", io, calibration, label=QAT_PRECISION)
        job.run()
        rows = self.measurer.file_rows(trained, target, "int8", job.path, label=QAT_PRECISION)
        return [{**row, "qat": metrics} for row in rows]


def timing_spec(bench: BenchSpec) -> dict[str, Any]:
    """What a row's latency depends on in the bench spec; where it was timed is in "measured_with" (the remote
    device's description, not how to log in to it), and a spec without `remote` keeps earlier runs' keys. Nor is
    `rounds`: every run times its rows again (`compress.timing`), so it changes no recorded number."""
    return {key: value for key, value in dump(bench).items() if not key.startswith("remote") and key != "rounds"}


def export_options(export: ExportSpec, precision: str, qat: bool = False) -> dict[str, Any]:
    """The settings besides target, precision and io that one export of `export` depends on; with `qat`, those of
    its int8-qat row, whose activation ranges are trained from the target's default calibration (not `activations`:
    the recipe's estimator applies to post-training int8 only, and changing it keeps the QAT rows)."""
    options: dict[str, Any] = {}
    if precision in CALIBRATED_PRECISIONS:
        options["calibration"] = export.calibration_samples
        if export.calibration_root is not None:
            options["calibration_root"] = export.calibration_root
    if PRECISIONS[precision].accuracy_controlled:
        options["max_accuracy_drop"] = export.max_accuracy_drop
    if export.keep_float and precision in CALIBRATED_PRECISIONS:
        options["keep_float"] = list(export.keep_float)
    if export.activations is not None and precision in CALIBRATED_PRECISIONS and not qat:
        options["activations"] = export.activations  # absent by default: runs made before it keep their records
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


def with_seed(row: dict, seed: int | None) -> dict:
    """A row as results.json holds it: with its candidate's seed in a recipe of several. A record keeps its rows
    without one, so a one-seed run and the first seed of a run of several share their records."""
    row = {key: value for key, value in row.items() if key != "seed"}
    return row if seed is None else {**row, "seed": seed}


def _job_settings(options: dict[str, Any]) -> dict[str, Any]:
    """`Deployment.export_job`'s settings from an export's `export_options`."""
    keys = ("calibration", "keep_float", "calibration_root", "activations")
    return {key: options[key] for key in keys if key in options}


def _stating_settings(measure: Callable[[], list[dict]], options: dict[str, Any]) -> Callable[[], list[dict]]:
    """`measure`, its rows also saying the int8 settings the recipe chose: which layers stayed float, how the
    activation ranges were estimated."""
    fields = {key: options[key] for key in ("keep_float", "activations") if options.get(key)}
    return partial(_with_fields, measure, fields) if fields else measure


def _with_fields(measure: Callable[[], list[dict]], fields: dict[str, Any]) -> list[dict]:
    # A row's own field wins: an int8_ac row's keep_float (read from its file) lists the recipe's layers and the
    # ones the search kept float; the recipe's list alone would hide the search's.
    return [{**fields, **row} for row in measure()]
