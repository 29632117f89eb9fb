"""ONNX: ``torch.onnx.export`` (opset pinned, static shape), onnxruntime runs it, int8 through its static quantizer.

For users whose runtime is neither TFLite nor OpenVINO: any ONNX consumer can take the file, and edgecomp
measures it in onnxruntime's CPU execution provider. int8 is ``onnxruntime.quantization.quantize_static``
in QDQ format (per-channel int8 weights, uint8 activations calibrated on the samples), which the CPU provider
fuses into integer kernels. Weights use all 8 bits (onnxruntime's default): 7 bits (``reduce_range``) cannot
overflow the saturating int16 pair sums of x86 CPUs without VNNI, but cost the real ImageNet MobileNetV2 10
points of top-1 agreement with fp32 on every CPU (80.5% against 90.6%; see the OpenVINO target for the same
trade). ``keep_float`` module patterns become ``nodes_to_exclude``, matched on the scope torch's exporter
records with each node. A layer's output that only a HardSwish reads is ranged from -3 up
(``_floor_hardswish_inputs``), as on TFLite. Calibration holds 16 samples' activations at a time, not every
sample's (`targets.onnx_calibration`: 2.0 GB, not ~17 GB, for MobileNetV2 at a recipe's 256 samples).

The metadata dict lives in the model's ``metadata_props``; ``read_metadata`` reads it through onnxruntime,
so a device needs only numpy and onnxruntime. torch and onnx are imported only inside ``export``.

>>> path = export(model, torch.randn(1, 3, 32, 32), "int8", Path("m.onnx"), calibration, {"recipe": "q"})
>>> load(path, threads=2).predict(images)[0].shape
(len(images), num_classes)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from importlib import metadata as dist_metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from targets import TARGETS, activation_settings, get_target
from targets.accuracy_control import export_accuracy_controlled, require_control
from targets.base import (
    HARDSWISH_FLOOR,
    AccuracyControl,
    EdgecompError,
    check_export_args,
    export_failed,
    key_error_line,
    matches_module,
    predict_in_batches,
    static_input_shape,
)
from targets.fileio import atomic_path, temp_sibling
from targets.onnx_calibration import chunked_calibration

if TYPE_CHECKING:
    import torch

# fp32 through onnxruntime's CPU kernels matches PyTorch to float rounding (~1e-6); as for the others.
TOLERANCE = {"fp32": 1e-3}

OPSET = 18  # pinned: the exported graph must not change with the installed torch's default
# edgecomp's activation range estimators (`targets.base.ACTIVATION_ESTIMATORS`, this target's in `TARGETS`) ->
# onnxruntime's CalibrationMethod: Percentile keeps 99.999% of the values (0.0005% cut off each side of one
# histogram over all samples). Not offered: Entropy, whose KL search quantize_static runs with 128 histogram bins
# for 128 quantized ones, so the one threshold it tries is the whole range (min-max in effect: the same files on
# the real MobileNets); and Distribution, which fits float8 scales, not int8 ranges.
_CALIBRATION_METHODS = {"percentile": "Percentile", "minmax": "MinMax"}
_INPUT_NAME = "input"


def export(
    model: torch.nn.Module,
    example: torch.Tensor,
    precision: str,
    out: Path,
    calibration: np.ndarray | None,
    metadata: dict[str, str],
    io: str = "float",
    keep_float: Sequence[str] = (),
    accuracy_control: AccuracyControl | None = None,
    activations: str | None = None,
) -> Path:
    """Export `model` (static input shape of `example`) to an .onnx file at `out`, written atomically.

    `keep_float`: module-name patterns (``"classifier.1"``, ``"features.1"``) whose layers int8 leaves in float.
    ``int8_ac`` needs `accuracy_control` (`targets.accuracy_control`: int8 that keeps the costliest layer groups in
    float). `activations`: the calibration method of the activation ranges, by its edgecomp name
    (`_CALIBRATION_METHODS`; default percentile), written into the metadata.
    """
    spec = TARGETS["onnx"]
    check_export_args("onnx", precision, spec.precisions, calibration, io, spec.io)
    estimator, metadata = activation_settings("onnx", precision, activations, metadata)
    method = _CALIBRATION_METHODS[estimator]
    if precision == "int8_ac":
        control = require_control(accuracy_control, "onnx")
        return export_accuracy_controlled(
            get_target("onnx"),
            model,
            example,
            out,
            calibration,
            metadata,
            control,
            io=io,
            keep_float=keep_float,
            activations=activations,
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)  # as every other export does (atomic_path)
    fp32 = temp_sibling(out.with_name(f"fp32-{out.name}"))
    try:
        try:
            _export_fp32(model.eval(), example, fp32)
            if precision == "int8":
                _quantize_int8(fp32, calibration, keep_float, method)
        except Exception as e:
            raise export_failed("onnx", precision, e, model, example) from e
        _save_with_metadata(fp32, out, metadata)
    finally:
        fp32.unlink(missing_ok=True)
    return out


def _export_fp32(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    import torch

    outputs = model(example)
    count = len(outputs) if isinstance(outputs, (list, tuple)) else 1
    torch.onnx.export(
        model,
        (example,),
        str(path),
        opset_version=OPSET,
        input_names=[_INPUT_NAME],
        output_names=[f"output_{i}" for i in range(count)],
        external_data=False,
        verbose=False,
    )


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over the calibration samples, one at a time."""

    def __init__(self, samples: np.ndarray) -> None:
        self._samples = np.ascontiguousarray(samples, dtype=np.float32)
        self._next: Iterator[dict[str, np.ndarray]] = iter(())
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._next, None)

    def rewind(self) -> None:
        self._next = ({_INPUT_NAME: sample[None]} for sample in self._samples)


def _quantize_int8(
    path: Path, calibration: np.ndarray, keep_float: Sequence[str] = (), method: str = "Percentile"
) -> None:
    """Quantise the fp32 file at `path` in place (QDQ, per-channel int8 weights, uint8 activations).

    Activation ranges are onnxruntime's calibration `method` (a CalibrationMethod name; the default, percentile:
    99.999%; see `_CALIBRATION_METHODS`), weight scales from
    `_weight_scales`. On the real TF-slim MobileNetV2 / V3-Small (agreement with fp32 on 128 COCO128 photos, 64
    calibration), min-max with onnxruntime's own weight scales gave 90.6% / 57.8%, percentile alone 89.1% / 66.4%,
    both 93.0% / 67.2%.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantized = path.with_name(f"int8-{path.name}")
    excluded = _nodes_in(path, keep_float)
    _floor_hardswish_inputs(path, excluded)
    try:
        with _histograms_widened(), chunked_calibration():
            quantize_static(
                str(path),
                str(quantized),
                _Calibration(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=CalibrationMethod[method],
                extra_options={"TensorQuantOverrides": _weight_scales(path)},
            )
        os.replace(quantized, path)
    finally:
        quantized.unlink(missing_ok=True)


def _floor_hardswish_inputs(path: Path, excluded: Sequence[str]) -> None:
    """Put ``Clip(min=-3)`` between each layer and the HardSwish that alone reads it, in the fp32 file at `path`.

    HardSwish maps every value under -3 to 0, so the clip changes nothing the network computes; onnxruntime's
    quantizer then calibrates the layer's output as the clip's and removes the clip (its QDQ rules fold an
    activation into its producer's quantisation), so the int8 layer saturates at -3 and spends no levels on what
    HardSwish erases (as `targets.tflite_quantizer._floor_hardswish_inputs` does for TFLite).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    outputs = {o.name for o in graph.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    producers = {o: node for node in graph.node for o in node.output}
    floor = "edgecomp_hardswish_floor"
    nodes, clipped = [], False
    for node in graph.node:
        layer = producers.get(node.input[0]) if node.op_type == "HardSwish" else None
        alone = layer is not None and consumers[node.input[0]] == 1 and node.input[0] not in outputs
        if alone and layer.name not in excluded and node.name not in excluded:
            floored = f"{node.input[0]}_floored"
            nodes.append(helper.make_node("Clip", [node.input[0], floor], [floored], name=f"{node.name}_floor"))
            node.input[0] = floored
            clipped = True
        nodes.append(onnx.NodeProto())
        nodes[-1].CopyFrom(node)  # graph.node is emptied below
    if not clipped:
        return
    graph.initializer.append(numpy_helper.from_array(np.array(HARDSWISH_FLOOR, np.float32), floor))
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))


@contextmanager
def _histograms_widened() -> Iterator[None]:
    """Within the block, onnxruntime's calibration histograms (percentile: 2048 bins over each activation's |x|, in
    float32) span at least 4 x 2048 float32 steps: a near-constant activation (an untrained squeeze-excitation
    gate, 0.5 +- 1e-5) spans fewer, and numpy's refusal ("Too many bins for data range") failed the whole export.
    The wider range holds the same values, so the percentile lands where it did, within those few steps.
    onnxruntime has no hook for it: its calibrate module's numpy is, for the block, one whose histogram does this."""
    from onnxruntime.quantization import calibrate

    original = calibrate.np
    calibrate.np = _WideHistograms()
    try:
        yield
    finally:
        calibrate.np = original


class _WideHistograms(ModuleType):
    """numpy, but `histogram` of a count of bins widens a range too narrow for them (`_histograms_widened`)."""

    def __init__(self) -> None:
        super().__init__("numpy")

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def histogram(a: Any, bins: Any = 10, range: Any = None, **kwargs: Any) -> Any:
        values = np.asarray(a)
        if isinstance(bins, int) and values.size:
            low, high = range if range is not None else (np.nanmin(values), np.nanmax(values))
            least = 4 * bins * np.spacing(np.float32(max(abs(low), abs(high))))
            if low < high < low + least:
                range = (low, low + least)
        return np.histogram(values, bins, range, **kwargs)


def _weight_scales(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Per-channel scales of every Conv weight and (transposed) Gemm weight from `targets.weights.mse_scales`,
    as onnxruntime's TensorQuantOverrides: its own max|w| / 127 misses the grid QAT-trained weights sit on
    (as in TFLite's int8, see `targets.tflite`)."""
    import onnx
    from onnx import numpy_helper

    from targets.weights import mse_scales

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    overrides: dict[str, list[dict[str, Any]]] = {}
    for node in graph.node:
        transposed = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in weights:
            continue
        if node.op_type == "Gemm" and not transposed:
            continue
        w = numpy_helper.to_array(weights[node.input[1]])
        scales = mse_scales(w, axis=0)
        overrides[node.input[1]] = [
            {"scale": np.float32(scale), "zero_point": np.int8(0), **({"axis": 0} if i == 0 else {})}
            for i, scale in enumerate(scales)
        ]
    return overrides


def _nodes_in(path: Path, patterns: Sequence[str]) -> list[str]:
    """Names of the nodes of the .onnx file at `path` that torch's exporter made inside a module in `patterns`."""
    import onnx

    if not patterns:
        return []
    found = []
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        scopes = [s.strip(" '\"") for s in props.get("pkg.torch.onnx.name_scopes", "").strip("[]").split(",")]
        if matches_module(scopes[-2] if len(scopes) > 1 else "", patterns):
            found.append(node.name)
    return found


def with_metadata(source: Path, out: Path, metadata: dict[str, str]) -> Path:
    """The ONNX file at `source` written atomically to `out` with `metadata` in place of the metadata it had."""
    _save_with_metadata(source, out, metadata)
    return Path(out)


def _save_with_metadata(source: Path, out: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(source))
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=str(key), value=str(value))
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata dict `export` put into the model's metadata_props ({} for files made elsewhere)."""
    return dict(_session(Path(path), 1).get_modelmeta().custom_metadata_map)


def size_bytes(path: Path) -> int:
    """What the deployment ships, in bytes: the one .onnx file (edgecomp writes no external data)."""
    return Path(path).stat().st_size


def load(path: Path, threads: int | None = None, shape: tuple[int, ...] | None = None) -> ONNXRunner:
    """Open an .onnx file in onnxruntime's CPU provider; `shape`: see `targets.load_runner`."""
    return ONNXRunner(Path(path), threads or os.cpu_count() or 1, shape)


def _session(path: Path, threads: int) -> Any:
    """An onnxruntime session on the CPU: `threads` for each op, one op at a time."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EdgecompError("onnxruntime is not installed: pip install onnxruntime") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings are about the graph, not the user's mistake
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types with multi-line messages
        raise EdgecompError(f"{path}: onnxruntime cannot open it ({key_error_line(e)})") from e


class ONNXRunner:
    """One onnxruntime session and one IO binding, reused; see `targets.base.Runner`."""

    def __init__(self, path: Path, threads: int, shape: tuple[int, ...] | None = None) -> None:
        self.path = path
        self.threads = threads
        self.runtime = f"onnxruntime {dist_metadata.version('onnxruntime')}"
        self._session = _session(path, threads)
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise EdgecompError(f"{path}: has {len(inputs)} inputs; edgecomp runs single-input models")
        if inputs[0].type != "tensor(float)":
            raise EdgecompError(f"{path}: input is {inputs[0].type}; edgecomp feeds float32 (tensor(float))")
        self._input_name = inputs[0].name
        dims = [d if isinstance(d, int) and d > 0 else None for d in inputs[0].shape]
        self.input_shape = static_input_shape(path, dims, shape)
        if dims[0] is not None and dims[0] != self.input_shape[0]:
            raise EdgecompError(
                f"{path}: its batch size is fixed at {dims[0]}; export it with batch {self.input_shape[0]}"
            )
        self._binding = self._session.io_binding()
        self._x = np.zeros(self.input_shape, np.float32)

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        return predict_in_batches(self, x)

    def bind(self, x: np.ndarray) -> Callable[[], None]:
        self._x = np.ascontiguousarray(x, dtype=np.float32)  # the binding reads this memory: keep it alive
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        self._binding.bind_cpu_input(self._input_name, self._x)
        for output in self._session.get_outputs():
            self._binding.bind_output(output.name, "cpu")
        return partial(self._session.run_with_iobinding, self._binding)

    def outputs(self) -> list[np.ndarray]:
        return [np.array(out, dtype=np.float32) for out in self._binding.copy_outputs_to_cpu()]
