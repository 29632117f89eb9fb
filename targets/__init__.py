"""Deployment targets: one module per backend, described by a declarative capability table.

Importing this package imports no SDK and no torch: each target module imports its converter and
runtime inside the functions that need them (the Ultralytics exporter habit), so the runners and
`targets.bench` work on a device that has only numpy and one runtime.

Every target module provides:

- ``export(model, example, precision, out, calibration, metadata, io="float") -> Path``: write one file
  (torch needed); a target with ``int8_ac`` among its precisions also takes ``accuracy_control=``
  (`targets.base.AccuracyControl`: validation samples, metric, max drop); one whose int8_ac is
  `targets.accuracy_control`'s also provides ``with_metadata(source, out, metadata) -> Path`` (its last probe
  file, written to ``out`` with the search in its metadata);
- ``load(path, threads=None, shape=None) -> Runner``: open a file in the target's runtime (no torch);
  ``shape`` fixes a dynamic input shape (or changes the batch of a file that allows it);
- ``read_metadata(path) -> dict`` and ``size_bytes(path) -> int``;
- ``TOLERANCE``: per float precision (fp32, fp16), the max abs output difference against PyTorch that an
  export may show; a larger one means a converter problem, and the pipeline stops.

A target with ``qat=True`` in its table line also provides ``prepare_qat(model, example, calibration) ->
nn.Module``: a trainable model with the target's own int8 fake quantization (its quantizer's scheme, not a
generic one), which the caller fine-tunes and hands back to ``export(..., "int8", ...)``.

``targets.export(target, model, example, out, ExportRequest(...))`` is how the PyTorch side calls them: one
typed request (precision, calibration, metadata, io, keep_float, accuracy control, activations), checked against
the table line and `targets.base.PRECISIONS` first. A target whose table line lists ``activations`` takes
``activations=`` (a name of `targets.base.ACTIVATION_ESTIMATORS`) in its calibrated precisions, maps it to its own
quantizer's range estimator and writes it into the file's metadata; without it the target's library keeps its own
default (``default_activations`` names it where it is one of them).

Adding a target is one new module and one line in ``TARGETS``; adding a precision is one line in
`targets.base.PRECISIONS` and the targets' code that makes it (tests/toy_target.py is a toy target).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from targets.base import ACTIVATION_ESTIMATORS, PRECISIONS, EdgecompError, ExportRequest, Runner, did_you_mean


@dataclass(frozen=True)
class TargetSpec:
    """What a target can do: the recipe is validated against this before any work starts."""

    name: str
    module: str
    suffix: str  # of the file that `load` opens
    # fp32, fp16 (weights), int8 (static, calibrated), int8_dynamic (weights only), int8_ac (int8 that keeps
    # in float the layers costing more than a recipe's max accuracy drop)
    precisions: tuple[str, ...]
    io: tuple[str, ...] = ("float",)  # the input/output tensor types an export can have ("int8": quantised I/O)
    devices: tuple[str, ...] = ("CPU",)  # where the runner executes; accelerators are not driven yet
    qat: bool = False  # int8 from quantization-aware training: the module has prepare_qat
    # the activation range estimators (`targets.base.ACTIVATION_ESTIMATORS`) its int8 quantizer has: what a recipe's
    # `activations` may name for this target; and which of them its int8 uses when none is named (None: none of
    # them alone, its library's own mix)
    activations: tuple[str, ...] = ()
    default_activations: str | None = None
    # How its files are made, for a run's records: bumped when a change (a default, a fix) makes a different file
    # from the same request, so that runs made before make their files again. From 2 it is in the record key of
    # its post-training rows (not int8-qat ones: those would train again).
    version: int = 1


TARGETS: dict[str, TargetSpec] = {
    "tflite": TargetSpec(
        "tflite",
        "targets.tflite",
        ".tflite",
        ("fp32", "fp16", "int8", "int8_ac", "int8_dynamic"),
        ("float", "int8"),
        qat=True,
        activations=("mse", "minmax"),
        default_activations="mse",
        # 2 (2026-12-02): int8 ranges a hard-swish's input from -3, drops an eval model's dropout; 3: a mean
        # (global average pool) observes its own output
        version=3,
    ),
    "openvino": TargetSpec(
        "openvino",
        "targets.openvino",
        ".xml",
        ("fp32", "fp16", "bf16", "int8", "int8_ac"),
        qat=True,
        activations=("minmax", "mean_minmax", "percentile", "mse"),
        default_activations="mse",
        version=2,  # 2 (2026-12-02): int8's activations mse (HISTOGRAM), not NNCF's mix
    ),
    "onnx": TargetSpec(
        "onnx",
        "targets.onnx",
        ".onnx",
        ("fp32", "int8", "int8_ac"),
        activations=("percentile", "minmax"),
        default_activations="percentile",
        version=2,  # 2 (2026-12-02): int8 ranges a hard-swish's input from -3
    ),
}


def activations_refusal(target: str, estimator: str) -> str | None:
    """Why `target`'s int8 cannot estimate activation ranges with `estimator`, or None when it can: an unknown
    name lists the known ones, a name the target's quantizer lacks names the targets that have it."""
    if estimator not in ACTIVATION_ESTIMATORS:
        return (
            f"unknown activation range estimator {estimator!r}{did_you_mean(estimator, ACTIVATION_ESTIMATORS)}; "
            f"known: {', '.join(ACTIVATION_ESTIMATORS)}"
        )
    if estimator not in TARGETS[target].activations:
        having = ", ".join(name for name, spec in TARGETS.items() if estimator in spec.activations) or "no target"
        own = ", ".join(TARGETS[target].activations) or "none"
        return (
            f"{target} has no {estimator!r} activation range estimator (its quantizer has: {own}); offered by: {having}"
        )
    return None


def activations_for(target: str, precision: str, activations: str | None) -> str | None:
    """The activation range estimator `target`'s `precision` export uses: `activations`, else the target's default
    (None where no one estimator is its default); an estimator the target lacks, or one given to a precision that
    calibrates no ranges, is refused."""
    if activations is None:
        return TARGETS[target].default_activations
    if precision not in PRECISIONS or not PRECISIONS[precision].calibrated:
        raise EdgecompError(
            f"{target} {precision} calibrates no activation ranges: activations {activations!r} is for int8"
        )
    if refusal := activations_refusal(target, activations):
        raise EdgecompError(refusal)
    return activations


def activation_settings(
    target: str, precision: str, activations: str | None, metadata: Mapping[str, str], qat_model: bool = False
) -> tuple[str | None, dict[str, str]]:
    """For a target's ``export``: the estimator its `precision` uses (`activations_for`) and `metadata` with the
    recipe's choice written in; a QAT-prepared model refuses one, its ranges being trained."""
    estimator = activations_for(target, precision, activations)
    if activations is None:
        return estimator, dict(metadata)
    if qat_model:
        raise EdgecompError(
            f"{target} {precision}: a QAT model's activation ranges are trained; activations is for PTQ"
        )
    return estimator, {**metadata, "activations": activations}


def get_target(name: str) -> ModuleType:
    """Import and return a target's module by its name in ``TARGETS``."""
    if name not in TARGETS:
        raise EdgecompError(f"unknown target {name!r}{did_you_mean(name, TARGETS)}; known: {', '.join(TARGETS)}")
    return importlib.import_module(TARGETS[name].module)


def export(target: str, model: Any, example: Any, out: Path, request: ExportRequest) -> Path:
    """Write `model` (a torch module; `example` a zero input batch) to `out` as `request` asks, through the
    target's module; a request the target's table line does not allow is refused before any conversion."""
    module = get_target(target)  # an unknown target's error
    spec = TARGETS[target]
    precision = PRECISIONS.get(request.precision)
    if precision is None or request.precision not in spec.precisions:
        raise EdgecompError(
            f"{target} cannot export precision {request.precision!r}"
            f"{did_you_mean(request.precision, spec.precisions)}; it exports: {', '.join(spec.precisions)}"
        )
    if (request.accuracy_control is not None) != precision.accuracy_controlled:
        need = "needs" if precision.accuracy_controlled else "takes no"
        raise EdgecompError(f"{target} {request.precision} {need} accuracy control")
    activations_for(target, request.precision, request.activations)
    options: dict[str, Any] = {}  # only what the request sets: a target without keep_float need not take it
    if request.keep_float:
        options["keep_float"] = tuple(request.keep_float)
    if request.accuracy_control is not None:
        options["accuracy_control"] = request.accuracy_control
    if request.activations is not None:
        options["activations"] = request.activations
    calibration, metadata = request.calibration, dict(request.metadata)
    return module.export(model, example, request.precision, out, calibration, metadata, io=request.io, **options)


def target_for_file(path: Path) -> TargetSpec:
    """The target whose runtime opens `path`, chosen by its suffix."""
    for spec in TARGETS.values():
        if path.suffix == spec.suffix:
            return spec
    known = ", ".join(spec.suffix for spec in TARGETS.values())
    raise EdgecompError(f"{path}: no target opens '{path.suffix}' files; known suffixes: {known}")


def load_runner(path: str | Path, threads: int | None = None, shape: tuple[int, ...] | None = None) -> Runner:
    """Open any supported model file (made by edgecomp or not) in its runtime.

    `shape` is the input shape to run (batch included): needed when the file's input is dynamic.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgecompError(f"{path}: no such file")
    return get_target(target_for_file(path).name).load(path, threads=threads, shape=shape)
