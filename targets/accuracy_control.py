"""int8 with accuracy control for targets whose quantizer has none of its own (TFLite, ONNX).

The same search NNCF's ``quantize_with_accuracy_control`` runs for OpenVINO, measured through the target's
own quantizer and runtime: export int8 and score it with the task's metric; if it is more than
``max_drop`` points below the float model, rank the model's layer groups by how close the outputs come back
to the float model's when that group alone stays in float (one int8 export each: the sensitivity analysis),
then keep groups in float in that order until the drop holds. Each probe is a whole export, so groups are
blocks, not single layers (`layer_groups`).

The ranking is by the outputs' SQNR against the float model's (dB), as NNCF ranks by output distance, not by the
metric: on a few dozen validation samples the metric moves in steps of one sample and most groups tie (on the
real MobileNetV3-Small, 64 photos, TFLite: the top-1 ranking kept 6 blocks in float and generalised to 82.0%
agreement on all 128 photos). The metric still decides when to stop. Where outputs cannot be compared (shapes
differ between float and int8), the metric ranks.

>>> path = export_accuracy_controlled(targets.get_target("tflite"), model, example, out, calibration, {}, control)
>>> json.loads(read_metadata(path)["accuracy_control"])["ranking"]  # each group's metric when alone in float
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from targets import TARGETS
from targets.base import AccuracyControl, EdgecompError, Runner, predict_in_batches

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_CHUNK = 64  # samples read and run at once while scoring
MIN_GROUPS = 8  # the shallowest module depth with at least this many weighted groups names the groups
_MAX_DEPTH = 4


@dataclass(frozen=True)
class Search:
    """What the search found, written into the exported file's metadata (`as_metadata`)."""

    reference: float  # the float model's metric on the control samples
    int8: float  # all of the model in int8
    final: float  # with `keep_float` in float
    keep_float: tuple[str, ...]
    ranking: tuple[tuple[str, float], ...]  # (group, metric with that group alone in float), best first
    sqnr_db: tuple[tuple[str, float], ...] = ()  # (group, outputs' SQNR against float with it alone in float)
    samples: int | None = None  # how many validation samples the metric is over

    def as_metadata(self) -> dict[str, str]:
        return {
            "keep_float": json.dumps(list(self.keep_float)),
            "accuracy_control": json.dumps(
                {
                    "reference": round(self.reference, 6),
                    "int8": round(self.int8, 6),
                    "final": round(self.final, 6),
                    "ranking": [[group, round(score, 6)] for group, score in self.ranking],
                    "sqnr_db": [[group, round(db, 3)] for group, db in self.sqnr_db],
                    **({"samples": self.samples} if self.samples else {}),
                }
            ),
        }


def require_control(control: AccuracyControl | None, target: str) -> AccuracyControl:
    """`control`, refused with one clear message when an int8_ac export has none or no samples in it."""
    if control is None:
        raise EdgecompError(f"{target} int8_ac needs accuracy_control: validation samples, a metric and a max drop")
    if len(control.samples) == 0:
        raise EdgecompError(f"{target} int8_ac needs validation samples to score the int8 model on; got none")
    return control


def layer_groups(model: torch.nn.Module) -> list[str]:
    """The model's layer groups: name prefixes of its conv and linear layers at the shallowest depth that gives at
    least `MIN_GROUPS` of them (MobileNetV2: ``features.0`` .. ``features.18``, ``classifier``), in model order,
    with a plain container of blocks split into its blocks (timm's stages: ``blocks.4`` is ``blocks.4.0`` ..
    ``blocks.4.2``, as torchvision's ``features`` lists them one by one)."""
    import torch

    modules = dict(model.named_modules())
    weighted = [name for name, module in modules.items() if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))]
    groups: list[str] = []
    for depth in range(1, _MAX_DEPTH + 1):
        groups = list(dict.fromkeys(".".join(name.split(".")[:depth]) for name in weighted))
        if len(groups) >= MIN_GROUPS:
            break
    return [block for group in groups for block in _blocks(group, modules, weighted)]


def _blocks(group: str, modules: dict[str, torch.nn.Module], weighted: list[str]) -> list[str]:
    """`group`, or where it is a plain nn.Sequential of blocks (two or more children with two or more weighted
    layers each: timm's stages) its children's groups. A Sequential of single layers (SSDLite's extra layers, a
    classifier) and any subclass (torchvision's Conv2dNormActivation) stay one group."""
    import torch

    if type(modules[group]) is not torch.nn.Sequential:
        return [group]
    children = [f"{group}.{name}" for name, _ in modules[group].named_children()]
    layers = {c: sum(w == c or w.startswith(f"{c}.") for w in weighted) for c in children}
    if sum(count >= 2 for count in layers.values()) < 2:
        return [group]
    return [block for child in children if layers[child] for block in _blocks(child, modules, weighted)]


def score(runner: Runner, control: AccuracyControl) -> float:
    """The control's metric on a runner's outputs for all of its samples."""
    return _metric(_outputs(lambda x: predict_in_batches(runner, x), control), control)


def _outputs(predict: Callable[[np.ndarray], list[np.ndarray]], control: AccuracyControl) -> list[np.ndarray]:
    """`predict`'s outputs for all the control's samples, read and run `_CHUNK` at a time."""
    chunks = []
    for start in range(0, len(control.samples), _CHUNK):
        indices = range(start, min(start + _CHUNK, len(control.samples)))
        chunks.append(predict(np.stack([np.asarray(control.samples[i], np.float32) for i in indices])))
    return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


def _metric(outputs: list[np.ndarray], control: AccuracyControl) -> float:
    return float(control.score(outputs, np.arange(len(control.samples))))


def sqnr_db(outputs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio of `outputs` against `reference` in dB, the mean over outputs (each
    output on its own scale: a detector's boxes in pixels would drown its scores); nan where shapes differ.

    >>> round(sqnr_db([np.array([1.0, -1.0])], [np.array([1.1, -1.0])]), 2)
    23.44
    """
    if len(outputs) != len(reference) or any(o.shape != r.shape for o, r in zip(outputs, reference, strict=False)):
        return float("nan")
    ratios = []
    for out, ref in zip(outputs, reference, strict=True):
        ref64 = ref.astype(np.float64)
        noise = np.square(out.astype(np.float64) - ref64).sum()
        ratios.append(10 * np.log10(max(np.square(ref64).sum(), 1e-30) / max(noise, 1e-30)))
    return float(np.mean(ratios))


def _torch_predict(model: torch.nn.Module) -> Callable[[np.ndarray], list[np.ndarray]]:
    import torch

    def predict(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            outputs = model.eval()(torch.from_numpy(x))
        return [o.numpy() for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]

    return predict


def export_accuracy_controlled(
    target: ModuleType,
    model: torch.nn.Module,
    example: torch.Tensor,
    out: Path,
    calibration: np.ndarray,
    metadata: dict[str, str],
    control: AccuracyControl,
    **options: Any,
) -> Path:
    """`target`'s int8 file of `model` at `out`, with the groups the search chose in float (besides any
    `keep_float` in `options`) and the search written into its metadata: the search's last probe, which has
    those groups in float, with the metadata rewritten (`target.with_metadata`), not a second export."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    user_float = list(options.pop("keep_float", ()))
    export_int8 = _int8_exporter(target, model, example, calibration, metadata, user_float, options)
    probes: list[tuple[tuple[str, ...], Path]] = []

    def export_probe(keep: Sequence[str], path: Path) -> Runner:
        probes.append((tuple(keep), path))
        return export_int8(keep, path)

    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".int8_ac-") as folder:
            search = accuracy_controlled(model, control, export_probe, Path(folder), out.suffix)
            keep_float = [*user_float, *search.keep_float]
            kept = {**metadata, **search.as_metadata(), "keep_float": json.dumps(keep_float)}
            last_keep, last_file = probes[-1]
            if last_keep == search.keep_float:  # the search's last probe is the file: only its metadata changes
                return target.with_metadata(last_file, out, kept)  # the probe's own metadata is `metadata`
        return target.export(model, example, "int8", out, calibration, kept, keep_float=keep_float, **options)
    except EdgecompError as e:  # "tflite int8 export failed: ..." is this int8_ac export's failure
        raise EdgecompError(str(e).replace(" int8 export failed", " int8_ac export failed", 1)) from e


def export_sensitivity(
    target: ModuleType,
    model: torch.nn.Module,
    example: torch.Tensor,
    calibration: np.ndarray,
    control: AccuracyControl,
    groups: Sequence[str] | None = None,
    **options: Any,
) -> Search:
    """`sensitivity` through `target`'s own int8 export and runtime (any target whose int8 takes
    ``keep_float``); the probe files are deleted."""
    user_float = list(options.pop("keep_float", ()))
    export_int8 = _int8_exporter(target, model, example, calibration, {}, user_float, options)
    suffix = next(spec.suffix for spec in TARGETS.values() if spec.module == target.__name__)
    with tempfile.TemporaryDirectory(prefix="edgecomp-sensitivity-") as folder:
        return sensitivity(model, control, export_int8, Path(folder), suffix, groups)


def _int8_exporter(
    target: ModuleType,
    model: torch.nn.Module,
    example: torch.Tensor,
    calibration: np.ndarray,
    metadata: dict[str, str],
    user_float: list[str],
    options: dict[str, Any],
) -> Callable[[Sequence[str], Path], Runner]:
    def export_int8(keep: Sequence[str], path: Path) -> Runner:
        target.export(model, example, "int8", path, calibration, metadata, keep_float=[*user_float, *keep], **options)
        return target.load(path)

    return export_int8


def accuracy_controlled(
    model: torch.nn.Module,
    control: AccuracyControl,
    export_int8: Callable[[Sequence[str], Path], Runner],
    folder: Path,
    suffix: str,
) -> Search:
    """Search the groups to keep in float (see the module doc). `export_int8(keep_float, path)` writes an
    int8 file with those module-name globs in float into `folder` and returns its runner."""
    probe = _Probe(model, control, export_int8, folder, suffix)
    int8, samples = probe(()), len(control.samples)
    if _holds(probe.reference, int8, control.max_drop):
        return Search(probe.reference, int8, int8, (), (), samples=samples)
    ranking, sqnr = probe.ranking(layer_groups(model))
    keep: list[str] = []
    final = int8
    for group, _ in ranking:
        keep.append(group)
        final = probe(keep)
        if _holds(probe.reference, final, control.max_drop):
            break
    return Search(probe.reference, int8, final, tuple(keep), ranking, sqnr, samples)


def sensitivity(
    model: torch.nn.Module,
    control: AccuracyControl,
    export_int8: Callable[[Sequence[str], Path], Runner],
    folder: Path,
    suffix: str,
    groups: Sequence[str] | None = None,
) -> Search:
    """The sensitivity analysis alone: the float and all-int8 metric, and every group's (default
    `layer_groups`) with it alone in float, best first; nothing kept in float."""
    probe = _Probe(model, control, export_int8, folder, suffix)
    int8 = probe(())
    ranking, sqnr = probe.ranking(groups or layer_groups(model))
    return Search(probe.reference, int8, int8, (), ranking, sqnr, len(control.samples))


class _Probe:
    """Scores int8 files of `model` with some groups in float, each written to a new file in `folder`."""

    def __init__(
        self,
        model: torch.nn.Module,
        control: AccuracyControl,
        export_int8: Callable[[Sequence[str], Path], Runner],
        folder: Path,
        suffix: str,
    ) -> None:
        self.control, self.export_int8, self.folder, self.suffix = control, export_int8, folder, suffix
        self.float_outputs = _outputs(_torch_predict(model), control)
        self.reference = _metric(self.float_outputs, control)
        self.count = 0
        self.last_sqnr_db = float("nan")  # the last probe's outputs against the float model's

    def __call__(self, keep: Sequence[str]) -> float:
        self.count += 1
        runner = self.export_int8(keep, self.folder / f"probe-{self.count}{self.suffix}")
        outputs = _outputs(lambda x: predict_in_batches(runner, x), self.control)
        value, self.last_sqnr_db = _metric(outputs, self.control), sqnr_db(outputs, self.float_outputs)
        log.info(
            "int8 with %s in float: %.2f, outputs %.1f dB from float's (float %.2f)",
            list(keep) or "nothing",
            100 * value,
            self.last_sqnr_db,
            100 * self.reference,
        )
        return value

    def ranking(self, groups: Sequence[str]) -> tuple[tuple[tuple[str, float], ...], tuple[tuple[str, float], ...]]:
        """(group, metric) and (group, SQNR dB) with each group alone in float, best first: by SQNR, or by the
        metric where some outputs could not be compared (the module doc says why)."""
        alone = {}
        for group in groups:
            alone[group] = (self([group]), self.last_sqnr_db)
        by_sqnr = all(np.isfinite(db) for _, db in alone.values())
        order = sorted(alone, key=lambda group: -alone[group][1] if by_sqnr else -alone[group][0])
        return tuple((g, alone[g][0]) for g in order), (tuple((g, alone[g][1]) for g in order) if by_sqnr else ())


def _holds(reference: float, value: float, max_drop: float) -> bool:
    return 100 * (reference - value) <= max_drop + 1e-9
