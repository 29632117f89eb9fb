"""The contract between the PyTorch side and the deployment runtimes.

This module imports only the standard library and numpy, so that a device with nothing but numpy and
one runtime (tflite-runtime, ai-edge-litert or openvino) can run the runners and the benchmark.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np


class EdgecompError(Exception):
    """A mistake the user can fix (bad recipe, missing file, unsupported op).

    The message says what is wrong and how to fix it; the CLI prints it without a traceback.
    """


def matches_module(path: str, patterns: Iterable[str]) -> bool:
    """Whether the module named `path` ("features.1.conv.0") is one of `patterns` or inside one: a pattern is a
    shell-style glob over module names, as in a recipe's ``keep_float``. "features.1" is that block and every
    layer in it, not features.10; a ``*`` matches any characters, dots and digits too: "features.1*" is
    features.1 and features.10 to features.19."""
    return bool(path) and any(fnmatch.fnmatchcase(path, p) or path.startswith(f"{p}.") for p in patterns)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' hint for a mistyped name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Runner(Protocol):
    """A loaded model file in its own runtime: the thing that ships.

    Inputs are float32 NCHW batches, normalised exactly as the PyTorch model expects them; a runner
    whose file has int8 input tensors quantises them itself with the tensor's scale and zero point.
    """

    path: Path
    runtime: str  # "<package> <version>", e.g. "ai_edge_litert 2.3.0"
    input_shape: tuple[int, ...]  # static shape of one inference, batch included (usually 1)
    threads: int  # the CPU threads the runtime was opened with (a benchmark reports it)

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        """Run a batch of any size (split into the file's static batch); one float32 array per output."""
        ...

    def bind(self, x: np.ndarray) -> Callable[[], None]:
        """Copy `x` (one static-shape input) into the runtime once and return a call that runs inference
        on it and nothing else: the benchmark times only that call."""
        ...

    def outputs(self) -> list[np.ndarray]:
        """The outputs of the last inference, float32 (dequantised), in the model's output order."""
        ...


@dataclass(frozen=True)
class PrecisionSpec:
    """What a precision of an export is; the code asks this table, never the precision's name."""

    name: str
    calibrated: bool = False  # activation ranges come from calibration samples
    accuracy_controlled: bool = False  # takes an `AccuracyControl` and keeps layers in float to meet it
    integer: bool = False  # int8 arithmetic: judged by its accuracy and agreement, not a float tolerance
    computed_in: str = "f32"  # what the runtime computes in ("bf16": an fp32 file run in bfloat16)


PRECISIONS: dict[str, PrecisionSpec] = {
    spec.name: spec
    for spec in (
        PrecisionSpec("fp32"),
        PrecisionSpec("fp16"),  # fp16 weights
        PrecisionSpec("bf16", computed_in="bf16"),  # fp32 weights, run in bfloat16 where the CPU has it
        PrecisionSpec("int8", calibrated=True, integer=True),  # static: weights and activations
        PrecisionSpec("int8_ac", calibrated=True, accuracy_controlled=True, integer=True),
        PrecisionSpec("int8_dynamic", integer=True),  # int8 weights, activations quantised at run time
    )
}
CALIBRATED_PRECISIONS = tuple(name for name, spec in PRECISIONS.items() if spec.calibrated)

# hard-swish(x) = x * relu6(x + 3) / 6 is 0 for every x <= -3: where a quantised layer output feeds only a hard-swish,
# TFLite and ONNX int8 range it from here up (`targets.tflite_quantizer`, `targets.onnx`)
HARDSWISH_FLOOR = -3.0

# How a calibrated precision sets each activation tensor's int8 range from the calibration samples: the names a
# recipe's ``activations`` takes. Each target maps the ones its own quantizer has (`TargetSpec.activations`) to
# that library's estimator; none is written here by hand.
ACTIVATION_ESTIMATORS: dict[str, str] = {
    "minmax": "the lowest and highest value seen over all samples",
    "mean_minmax": "the mean over samples of each sample's lowest and highest value",
    "percentile": "a range that clips the rarest extreme values (a quantile of the values seen)",
    "mse": "the range whose int8 grid has the least squared error over a histogram of the values seen",
}


@dataclass(frozen=True)
class AccuracyControl:
    """What an int8 export with accuracy control (``int8_ac``) needs besides calibration samples.

    The quantizer scores the float and the int8 model on `samples` and keeps in float the layers whose
    quantization costs the most, until the int8 model is at most `max_drop` points below the float one.
    """

    samples: Sequence[np.ndarray]  # validation inputs, one (C, H, W) float32 array each, read on demand
    score: Callable[[list[np.ndarray], np.ndarray], float]  # (outputs, their sample indices) -> metric in [0, 1]
    max_drop: float  # points of that metric (1.0: one point, an absolute drop)


@dataclass(frozen=True, eq=False)
class ExportRequest:
    """One export, typed: what a target's ``export`` is asked to make besides the model and the file."""

    precision: str
    calibration: np.ndarray | None = None  # (N, C, H, W) float32 samples, for calibrated precisions
    metadata: Mapping[str, str] = field(default_factory=dict)  # written into the file
    io: str = "float"  # input/output tensor type ("int8": quantised I/O)
    keep_float: tuple[str, ...] = ()  # module-name globs kept in float (`matches_module`)
    accuracy_control: AccuracyControl | None = None  # for accuracy-controlled precisions (int8_ac)
    activations: str | None = None  # an `ACTIVATION_ESTIMATORS` name; None: the target's own default


def check_export_args(
    target: str,
    precision: str,
    supported: Iterable[str],
    calibration: np.ndarray | None,
    io: str = "float",
    supported_io: Iterable[str] = ("float",),
) -> None:
    """Refuse an export the target cannot do, before any slow conversion starts."""
    supported, supported_io = tuple(supported), tuple(supported_io)
    if precision not in supported:
        raise EdgecompError(
            f"{target} cannot export precision {precision!r}{did_you_mean(precision, supported)}; "
            f"it exports: {', '.join(supported)}"
        )
    if io not in supported_io:
        raise EdgecompError(f"{target} cannot make {io!r} input/output tensors; it makes: {', '.join(supported_io)}")
    if io != "float" and precision not in CALIBRATED_PRECISIONS:
        raise EdgecompError(f"{target}: io {io!r} needs a calibrated precision ({', '.join(CALIBRATED_PRECISIONS)})")
    if precision in CALIBRATED_PRECISIONS and (
        calibration is None or np.ndim(calibration) != 4 or len(calibration) == 0
    ):
        shape = None if calibration is None else np.shape(calibration)
        raise EdgecompError(f"{target} {precision} needs calibration samples shaped (N, C, H, W), got {shape}")


def static_input_shape(path: Path, dims: Iterable[int | None], shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """The input shape a runner runs: `shape` when given (it must fit the file's rank), else the file's own,
    which must then be static (a benchmark of a dynamic shape would time whatever shape came first)."""
    dims = list(dims)
    if shape is not None:
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims[1:], shape[1:], strict=True)):
            raise EdgecompError(f"{path}: shape {shape} does not fit the file's input {_show(dims)}")
        return shape
    if any(d is None or d < 1 for d in dims):
        raise EdgecompError(
            f"{path}: input shape {_show(dims)} is dynamic; give one to run (--shape 1x3x224x224), "
            "or export it with a static shape"
        )
    return tuple(int(d) for d in dims)


def _show(dims: list[int | None]) -> str:
    return "x".join("?" if d is None or d < 1 else str(d) for d in dims)


# Lines of a converter's message that say what went wrong, best first; runtimes wrap the one useful
# line in "Exception from <file>" / "Check '...' failed" frames and dumps of the graph.
_KEY_LINE_MARKERS = (
    "error:",
    "no conversion rule",
    "lowering not found",
    "not supported",
    "unsupported",
    "no onnx function found",
)
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # torch.onnx colours its messages
_FRAME_PREFIXES = ("Exception from ", "Check '", "Traceback", "File ")


def key_error_line(error: BaseException, max_chars: int = 300) -> str:
    """The one line of a long converter or runtime error that names the problem."""
    text = _ANSI_ESCAPE.sub("", str(error))
    lines = [line.strip().removeprefix("-- ") for line in text.splitlines() if line.strip()]
    marked = [line for line in lines if any(m in line.lower() for m in _KEY_LINE_MARKERS)]
    plain = [line for line in lines if not line.startswith(_FRAME_PREFIXES)]
    line = (marked or plain or lines or [""])[0]
    line = f"{type(error).__name__}: {line}" if line else type(error).__name__
    return line if len(line) <= max_chars else line[: max_chars - 3] + "..."


def export_failed(
    target: str, precision: str, error: BaseException, model: object = None, example: object = None
) -> EdgecompError:
    """The error to raise (``from error``) when a converter rejects a model.

    Given the model and its example input, the message also names the modules that call the op the
    converter named (``in head.1 (SVDHead)``): an op name alone rarely says which layer to replace.
    """
    where = ", ".join(modules_calling(model, example, ops_named_in(str(error)))) if model is not None else ""
    return EdgecompError(
        f"{target} {precision} export failed: {key_error_line(error)}"
        + (f", in {where}" if where else "")
        + " (an op this converter cannot handle? replace it, or drop this target from the recipe; "
        "--debug shows the converter's full message)"
    )


# How converters name an op: "aten._linalg_svd.default" (torch.export, litert-torch, torch.onnx),
# "aten::linalg_svdvals" (TorchScript, OpenVINO's PyTorch frontend).
_OP_NAME = re.compile(r"aten(?:\.|::)(\w+)")


def ops_named_in(message: str) -> set[str]:
    """The ATen op names a converter's message mentions, without overload or leading underscore."""
    return {name.lstrip("_") for name in _OP_NAME.findall(message)}


def modules_calling(model: object, example: object, ops: set[str], limit: int = 3) -> list[str]:
    """'path (Class)' of the innermost modules whose forward calls one of `ops`, found in the graph that
    ``torch.export`` traces (the root is named by its class alone); [] when nothing can be located.

    An op matches when either name starts with the other: a converter may report ``linalg_svdvals``
    where the traced graph holds ``linalg_svd``.
    """
    if not ops:
        return []
    try:
        import torch

        graph = torch.export.export(model, (example,)).graph
    except Exception:  # the converter's own message still stands
        return []
    found: list[str] = []
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = str(getattr(node.target, "__name__", node.target)).split(".")[0].lstrip("_")
        if not any(name.startswith(op) or op.startswith(name) for op in ops):
            continue
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        path, kind = stack[-1] if stack else ("", type(model).__name__)
        kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
        label = f"{path} ({kind.rsplit('.', 1)[-1]})" if path else kind.rsplit(".", 1)[-1]
        if label not in found:
            found.append(label)
    return found[:limit]


def predict_in_batches(runner: Runner, x: np.ndarray) -> list[np.ndarray]:
    """`Runner.predict` for any runner: a batch of any size, one static batch at a time through `bind`,
    so predictions and benchmarks run the very same inference call.

    The last chunk is zero-padded to the static batch and its padding dropped from the outputs.
    """
    x = np.asarray(x, dtype=np.float32)
    shape = tuple(runner.input_shape)
    if x.ndim != len(shape) or x.shape[1:] != shape[1:]:
        raise EdgecompError(f"input of shape {x.shape} does not fit the model's input {shape} (batch may differ)")
    step = shape[0]
    chunks = []
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        n = len(chunk)
        if n < step:
            chunk = np.concatenate([chunk, np.zeros((step - n, *shape[1:]), np.float32)])
        runner.bind(chunk)()
        chunks.append([out[:n] for out in runner.outputs()])
    return [np.concatenate(outs) for outs in zip(*chunks, strict=True)]


@dataclass(frozen=True)
class Exported:
    """One exported file and how it was made."""

    target: str
    precision: str
    path: Path
    size_bytes: int
