"""TFLite (LiteRT): litert-torch converts, ai_edge_litert (else tflite_runtime) runs.

fp32 is a plain ``litert_torch.convert``; fp16 (weights stored in half precision) and int8_dynamic (int8
weights, activations quantised on the fly) are litert-torch's ``full_fp16_recipe`` / ``full_dynamic_recipe``
(ai-edge-quantizer, applied after conversion). int8 is full-integer post-training quantisation through
PT2E: litert-torch's ``PT2EQuantizer`` (symmetric, per-channel weights, static activations) with torchao's
``prepare_pt2e``/``convert_pt2e``. litert-torch gives such a file int8 input and output tensors; unless
``io="int8"`` is asked, ``export`` adds a QUANTIZE op before the first and a DEQUANTIZE op after the last,
so the file takes and returns float32 like the others (what TFLite's own converter calls
``inference_input_type=float32``). The runner quantises the inputs of an int8-I/O file itself, with each
tensor's own scale and zero point.

Quantization-aware training goes through the same quantizer with ``is_qat=True``: ``prepare_qat`` exports the
model, inserts torchao's fake-quant modules (``prepare_qat_pt2e``, which also rewrites conv + BN into the
simulated-folding pattern) and calibrates them; the caller fine-tunes that graph like any module, and
``export(..., "int8")`` recognises it and converts it as is (``convert_pt2e``, then litert-torch), with no
new calibration. torchao 0.18 traces its conv + BN patterns by calling ``torch.export.export`` on plain
functions, which torch 2.14 refuses; ``targets.torchao_patterns`` wraps them in torchao's own ``WrapperModule``
while torchao prepares or converts a QAT graph, and keeps each traced pattern for the next file.

torch and litert_torch are imported only inside ``export``: a device runs ``load`` with numpy and one
runtime installed.

>>> path = export(model, torch.randn(1, 3, 32, 32), "int8", Path("m.tflite"), calibration, {"recipe": "q"})
>>> load(path, threads=2).predict(images)[0].shape
(len(images), num_classes)
"""

from __future__ import annotations

import io
import json
import os
import re
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from functools import cache
from importlib import metadata as dist_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from targets import TARGETS, activation_settings, get_target
from targets.accuracy_control import export_accuracy_controlled, require_control
from targets.base import (
    AccuracyControl,
    EdgecompError,
    check_export_args,
    export_failed,
    key_error_line,
    predict_in_batches,
    static_input_shape,
)
from targets.fileio import atomic_path

if TYPE_CHECKING:
    import torch

# fp32 logits through XNNPACK differ from PyTorch's by float rounding only (~1e-6 on a MobileNetV2
# at 224); 1e-3 leaves room for larger logits and other CPUs while still catching a wrong layout.
# fp16 weights (computed in f32) move the quickstart models' logits by up to ~1e-2; 5e-2 still catches a
# broken graph, which moves them by whole units.
TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}

_METADATA_NAME = "edgecomp"  # one flatbuffer metadata entry holding the metadata dict as JSON
_TFLITE_FILE_IDENTIFIER = b"TFL3"
_CALIBRATION_BATCH = 16


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
    """Convert `model` (static input shape of `example`) to a .tflite file at `out`, written atomically.

    `io="int8"` keeps a full-int8 file's int8 input and output tensors (see the module doc). `keep_float`:
    module-name patterns (``"classifier.1"``, ``"features.1"``) whose layers int8 leaves in float. ``int8_ac``
    needs `accuracy_control` (`targets.accuracy_control`: int8 that keeps the costliest layer groups in float).
    `activations`: the torchao observer of the activation ranges, by its edgecomp name (`_ACTIVATION_OBSERVERS`;
    default mse, litert-torch's HistogramObserver), written into the metadata; a QAT model's ranges are trained.
    """
    spec = TARGETS["tflite"]
    check_export_args("tflite", precision, spec.precisions, calibration, io, spec.io)
    estimator, metadata = activation_settings("tflite", precision, activations, metadata, is_qat_prepared(model))
    observer = _ACTIVATION_OBSERVERS[estimator] if activations else None  # None: litert-torch's own config
    if precision == "int8_ac":
        control = require_control(accuracy_control, "tflite")
        return export_accuracy_controlled(
            get_target("tflite"),
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
    model.eval()  # before export: a graph from torch.export refuses .eval()
    try:
        with _quiet_progress():
            if precision == "int8":
                edge_model = _convert_int8(model, example, calibration, tuple(keep_float), observer)
            else:
                edge_model = _convert(model, example, **_recipe_config(precision))
        content = bytes(edge_model.model_content())
        if precision == "int8":  # only a full-int8 file has int8 HARD_SWISH ops
            content = _float_hardswish(content)
        if io == "float":
            content = _float_io(content)
    except Exception as e:
        raise export_failed("tflite", precision, e, model, example) from e
    with atomic_path(out) as tmp:
        tmp.write_bytes(_with_metadata(content, metadata))
    return Path(out)


def _convert(model: torch.nn.Module, example: torch.Tensor, **kwargs: Any) -> Any:
    import litert_torch

    return litert_torch.convert(model, (example,), **kwargs)


def _recipe_config(precision: str) -> dict[str, Any]:
    """litert-torch's post-conversion recipe for `precision` (none for fp32)."""
    from litert_torch.generative.quantize import quant_recipes

    recipes = {"fp16": quant_recipes.full_fp16_recipe, "int8_dynamic": quant_recipes.full_dynamic_recipe}
    return {"quant_config": recipes[precision]()} if precision in recipes else {}


# edgecomp's activation range estimators (`targets.base.ACTIVATION_ESTIMATORS`, this target's in `TARGETS`) ->
# torchao's PT2E observer: HistogramObserver (litert-torch's own choice) searches the range with the least L2
# error of the quantized histogram; MinMaxObserver keeps the extremes of all samples.
_ACTIVATION_OBSERVERS = {"mse": "HistogramObserver", "minmax": "MinMaxObserver"}


def _quantizer(qat: bool, keep_float: tuple[str, ...] = (), observer: str | None = None) -> Any:
    """litert-torch's int8 scheme: symmetric, per-channel weights, static activations (fake-quant for QAT).

    For PTQ, each weight channel's scale comes from `targets.weights.mse_scales` instead of max|w| / 127, and
    `observer` (a torchao observer's name) replaces litert-torch's activation observer where given.
    """
    import dataclasses

    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e import observer as observers

    from targets.tflite_quantizer import Quantizer

    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    if not qat:
        weight = dataclasses.replace(config.weight, observer_or_fake_quant_ctr=_mse_weight_observer())
        config = dataclasses.replace(config, weight=weight)
    if not qat and observer is not None:
        ctr = getattr(observers, observer).with_args(eps=2**-12)  # litert-torch's eps
        act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ctr)
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    return Quantizer(keep_float).set_global(config)


@cache
def _mse_weight_observer() -> type:
    """torchao's per-channel min-max weight observer, its range set by `targets.weights.mse_scales`."""
    import torch
    from torchao.quantization.pt2e.observer import PerChannelMinMaxObserver

    from targets.weights import mse_scales

    class MSEPerChannelObserver(PerChannelMinMaxObserver):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.weight = x.detach()  # a weight is observed once, as the constant it is
            return super().forward(x)

        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            scales = mse_scales(self.weight.float().numpy(), axis=self.ch_axis, qmax=self.quant_max)
            bound = torch.from_numpy(scales) * self.quant_max
            return self._calculate_qparams(-bound, bound)

    return MSEPerChannelObserver.with_args(eps=2**-12)


def _convert_int8(
    model: torch.nn.Module,
    example: torch.Tensor,
    calibration: np.ndarray,
    keep_float: tuple[str, ...] = (),
    observer: str | None = None,
) -> Any:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    if is_qat_prepared(model):
        return _convert_prepared(model, example, qat=True)
    graph, batch = _calibration_graph(model, example)
    prepared = prepare_pt2e(graph, _quantizer(False, keep_float, observer))
    _calibrate(prepared, calibration, batch)
    return _convert_prepared(prepared, example, False, keep_float, observer)


def _calibrate(prepared: torch.nn.Module, calibration: np.ndarray, batch: int) -> None:
    import torch

    samples = np.ascontiguousarray(calibration, dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(samples), batch):
            prepared(torch.from_numpy(samples[start : start + batch]))


def _convert_prepared(
    prepared: torch.nn.Module,
    example: torch.Tensor,
    qat: bool,
    keep_float: tuple[str, ...] = (),
    observer: str | None = None,
) -> Any:
    """Observers or fake-quant modules -> quantize/dequantize pairs -> an int8 .tflite flatbuffer."""
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from targets.torchao_patterns import patterns_as_modules

    with patterns_as_modules():
        quantized = convert_pt2e(prepared, fold_quantize=False)
    quantized.training = False  # traced from an eval model; exported graphs refuse .eval()
    quantizer = _quantizer(qat, keep_float, observer)
    return _convert(quantized, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))


def prepare_qat(model: torch.nn.Module, example: torch.Tensor, calibration: np.ndarray) -> torch.nn.Module:
    """A trainable copy of `model` with TFLite's int8 fake quantization, calibrated on `calibration`.

    Fine-tune it as an ordinary module (its ``.train()`` / ``.eval()`` switch batch norm and dropout the
    way an exported graph needs), then pass it to ``export(..., "int8", ...)``.

    >>> qat = prepare_qat(model, torch.zeros(1, 3, 32, 32), calibration)
    >>> fit(qat, ...); export(qat, torch.zeros(1, 3, 32, 32), "int8", Path("m.tflite"), calibration, {})
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from targets.torchao_patterns import patterns_as_modules

    model.eval()  # traced in eval mode (like PTQ), then switched to training by the caller
    graph, batch = _calibration_graph(model, example)
    try:
        with patterns_as_modules():
            prepared = prepare_qat_pt2e(graph, _quantizer(qat=True))
    except Exception as e:
        raise export_failed("tflite", "int8 (QAT)", e) from e
    _allow_train_eval(prepared)
    prepared.eval()
    _calibrate(prepared, calibration, batch)
    return prepared


def _allow_train_eval(graph: Any) -> None:
    """`.train()` / `.eval()` on an exported graph, returning it like a module's (torchao's own
    `allow_exported_model_train_eval` returns None, which breaks ``model.eval().to(...)``)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    def train(self: Any, mode: bool = True) -> Any:
        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self)
        return self

    graph.train = types.MethodType(train, graph)
    graph.eval = types.MethodType(lambda self: self.train(False), graph)


def is_qat_prepared(model: Any) -> bool:
    """Whether `model` came from `prepare_qat`: a graph that carries its own fake quantization."""
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    return any(isinstance(module, FakeQuantizeBase) for module in model.modules())


def _calibration_graph(model: torch.nn.Module, example: torch.Tensor) -> tuple[Any, int]:
    """The exported graph to calibrate, and how many samples it takes per call, rewritten so litert-torch's
    quantizer sees what TFLite runs in int8 (`targets.pt2e_rewrites`).

    The batch dimension is made dynamic when the model allows it: PT2E's histogram observers cost
    mostly per call, and MobileNetV2 at 224x224 calibrates 64 samples in ~30 s in batches of 16
    against ~200 s one at a time. A model that pins its batch size is calibrated one sample at a time.
    """
    import torch

    from targets.pt2e_rewrites import drop_eval_dropout, fold_hardsigmoid, functionalize_inplace

    try:
        batch_dim = torch.export.Dim("batch", min=1, max=4096)
        pair = torch.cat([example[:1], example[:1]])  # a batch of 1 would be specialised, not traced
        graph = torch.export.export(model, (pair,), dynamic_shapes=({0: batch_dim},)).module()
        batch = _CALIBRATION_BATCH
    except Exception:  # any refusal of a dynamic batch means: use the static one
        graph, batch = torch.export.export(model, (example,)).module(), len(example)
    functionalize_inplace(graph)
    fold_hardsigmoid(graph)
    drop_eval_dropout(graph)
    return graph, batch


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """Silence litert-torch's progress lines and ai-edge-quantizer's size summary on stdout (edgecomp shows
    progress, and `--json` output must stay parseable), unless the user asked for litert-torch's."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    if key in os.environ:
        yield
        return
    os.environ[key] = "n"
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        os.environ.pop(key, None)


def with_metadata(source: Path, out: Path, metadata: dict[str, str]) -> Path:
    """The .tflite file at `source` written atomically to `out` with `metadata` in place of the metadata it had."""
    content = _with_metadata(Path(source).read_bytes(), metadata)
    with atomic_path(out) as tmp:
        tmp.write_bytes(content)
    return Path(out)


def _with_metadata(content: bytes, metadata: dict[str, str]) -> bytes:
    """Put `metadata` in as one JSON flatbuffer metadata entry (runtimes ignore entries they don't know),
    replacing the entry an earlier call put there."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(content))
    if any(buffer.offset for buffer in model.buffers or []):  # >2 GB layout: offsets would break
        return content
    for entry in [e for e in model.metadata or [] if e.name in (_METADATA_NAME, _METADATA_NAME.encode())]:
        model.buffers[entry.buffer].data = None  # emptied, not removed: other entries point at buffers by index
        model.metadata.remove(entry)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = _METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    return _pack(model)


def _float_io(content: bytes) -> bytes:
    """Give every int8 input a float32 tensor and a QUANTIZE op in front, and every int8 output a DEQUANTIZE
    op behind, so callers feed and read float32; files without int8 I/O come back unchanged."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(content))
    graph = model.subgraphs[0]
    quantized = [i for i in [*graph.inputs, *graph.outputs] if graph.tensors[i].type == schema.TensorType.INT8]
    if not quantized or any(buffer.offset for buffer in model.buffers or []):
        return content
    graph.inputs, graph.outputs, graph.operators = list(graph.inputs), list(graph.outputs), list(graph.operators)
    renamed: dict[int, int] = {}
    for position, index in enumerate(graph.inputs):
        if graph.tensors[index].type == schema.TensorType.INT8:
            graph.inputs[position] = renamed[index] = _float_twin(model, graph, index)
            graph.operators.insert(0, _operator(model, schema.BuiltinOperator.QUANTIZE, renamed[index], index))
    for position, index in enumerate(graph.outputs):
        if graph.tensors[index].type == schema.TensorType.INT8:
            graph.outputs[position] = renamed[index] = _float_twin(model, graph, index)
            graph.operators.append(_operator(model, schema.BuiltinOperator.DEQUANTIZE, index, renamed[index]))
    for signature in model.signatureDefs or []:
        for entry in [*(signature.inputs or []), *(signature.outputs or [])]:
            entry.tensorIndex = renamed.get(int(entry.tensorIndex), entry.tensorIndex)
    return _pack(model)


def _float_hardswish(content: bytes) -> bytes:
    """Run every int8 HARD_SWISH as DEQUANTIZE -> float HARD_SWISH -> QUANTIZE.

    XNNPACK delegates float HARD_SWISH and both conversions, but not the int8 HARD_SWISH (ai-edge-litert 2.3):
    MobileNetV3-Small's 19 ran on TFLite's reference kernels and cut the int8 graph into 20 XNNPACK
    partitions; its int8 file ran 6x slower than the fp32 one (3.3 against 0.52 ms, 2 threads, AVX-512 VNNI);
    with this and `targets.tflite_quantizer`'s annotations it is one partition and runs in 0.35-0.38 ms. The
    values are hard-swish's own, computed in float and quantised with the output's scale, as the int8 kernel's
    lookup does.
    """
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(content))
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    graph = model.subgraphs[0]
    int8_swishes = [
        op
        for op in graph.operators
        if codes[op.opcodeIndex] == schema.BuiltinOperator.HARD_SWISH
        and graph.tensors[op.inputs[0]].type == schema.TensorType.INT8
    ]
    if not int8_swishes or any(buffer.offset for buffer in model.buffers or []):
        return content
    operators = []
    for op in graph.operators:
        if op in int8_swishes:
            (source,), (destination,) = op.inputs, op.outputs
            op.inputs, op.outputs = [_float_tensor(model, graph, source)], [_float_tensor(model, graph, destination)]
            operators += [
                _operator(model, schema.BuiltinOperator.DEQUANTIZE, source, op.inputs[0]),
                op,
                _operator(model, schema.BuiltinOperator.QUANTIZE, op.outputs[0], destination),
            ]
        else:
            operators.append(op)
    graph.operators = operators
    return _pack(model)


def _float_tensor(model: Any, graph: Any, index: int) -> int:
    """A new float32 tensor shaped like tensor `index`; returns its index."""
    from ai_edge_litert import schema_py_generated as schema

    like = graph.tensors[index]
    tensor = schema.TensorT()
    tensor.shape, tensor.shapeSignature = like.shape, like.shapeSignature
    tensor.name = (like.name or b"") + b"_float"
    tensor.type = schema.TensorType.FLOAT32
    model.buffers.append(schema.BufferT())
    tensor.buffer = len(model.buffers) - 1
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _float_twin(model: Any, graph: Any, index: int) -> int:
    """A float32 tensor shaped like tensor `index`, taking over its name; returns the new tensor's index."""
    twin = _float_tensor(model, graph, index)
    quantized = graph.tensors[index]
    graph.tensors[twin].name, quantized.name = quantized.name, (quantized.name or b"") + b"_int8"
    return twin


def _operator(model: Any, code: int, source: int, destination: int) -> Any:
    """A one-input, one-output builtin operator, its opcode added to the model if new."""
    from ai_edge_litert import schema_py_generated as schema

    codes = model.operatorCodes
    found = [i for i, c in enumerate(codes) if max(c.builtinCode, c.deprecatedBuiltinCode) == code]
    if not found:
        entry = schema.OperatorCodeT()
        entry.builtinCode, entry.deprecatedBuiltinCode, entry.version = code, min(code, 127), 2  # v2: int8
        codes.append(entry)
        found = [len(codes) - 1]
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = found[0], [source], [destination]
    return op


def _pack(model: Any) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=_TFLITE_FILE_IDENTIFIER)
    return bytes(builder.Output())


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata dict `export` embedded in a .tflite file ({} for files made elsewhere)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(Path(path).read_bytes())
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == _METADATA_NAME.encode():
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return {}


def size_bytes(path: Path) -> int:
    """What the deployment ships, in bytes: the one .tflite file."""
    return Path(path).stat().st_size


def load(path: Path, threads: int | None = None, shape: tuple[int, ...] | None = None) -> TFLiteRunner:
    """Open a .tflite file in the installed TFLite runtime (XNNPACK on CPU); `shape`: see `targets.load_runner`."""
    return TFLiteRunner(Path(path), threads or os.cpu_count() or 1, shape)


def _interpreter_class() -> tuple[type, str]:
    """The Interpreter class of the installed runtime and its "<package> <version>"."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, f"ai_edge_litert {dist_metadata.version('ai-edge-litert')}"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, f"tflite_runtime {dist_metadata.version('tflite-runtime')}"
    except ImportError:
        raise EdgecompError("no TFLite runtime installed: pip install ai-edge-litert (or tflite-runtime)") from None


def _natural_key(name: str) -> list[Any]:
    """Sort output_2 before output_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class TFLiteRunner:
    """One interpreter, reused for every inference; see `targets.base.Runner`."""

    def __init__(self, path: Path, threads: int, shape: tuple[int, ...] | None = None) -> None:
        interpreter_class, self.runtime = _interpreter_class()
        self.path = path
        self.threads = threads
        try:
            self._interpreter = interpreter_class(model_path=str(path), num_threads=threads)
            inputs = self._interpreter.get_input_details()
            if len(inputs) != 1:
                raise EdgecompError(f"{path}: has {len(inputs)} inputs; edgecomp runs single-input models")
            dims = [None if d < 0 else int(d) for d in inputs[0].get("shape_signature", inputs[0]["shape"])]
            self.input_shape = static_input_shape(path, dims, shape)
            if tuple(int(d) for d in inputs[0]["shape"]) != self.input_shape:
                self._interpreter.resize_tensor_input(inputs[0]["index"], list(self.input_shape))
            self._interpreter.allocate_tensors()
        except EdgecompError:
            raise
        except Exception as e:  # the runtime raises ValueError/RuntimeError with multi-line messages
            raise EdgecompError(f"{path}: not a TFLite model this runtime can open ({key_error_line(e)})") from e
        self._input = self._interpreter.get_input_details()[0]
        self._outputs = self._output_details()

    def _output_details(self) -> list[dict[str, Any]]:
        """Outputs in the model's order: by signature name (output_0, output_1, ...) when there is one,
        since the interpreter's tensor order need not follow PyTorch's."""
        signatures = self._interpreter.get_signature_list()
        if not signatures:
            return self._interpreter.get_output_details()
        details = self._interpreter.get_signature_runner(next(iter(signatures))).get_output_details()
        return [details[name] for name in sorted(details, key=_natural_key)]

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        return predict_in_batches(self, x)

    def bind(self, x: np.ndarray) -> Callable[[], None]:
        self._interpreter.set_tensor(self._input["index"], _quantize(np.asarray(x, np.float32), self._input))
        return self._interpreter.invoke

    def outputs(self) -> list[np.ndarray]:
        return [_dequantize(self._interpreter.get_tensor(o["index"]), o) for o in self._outputs]


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float input as the tensor's dtype: q = round(x / scale) + zero_point, clipped to the dtype."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return np.ascontiguousarray(x, dtype=dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def _dequantize(q: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind == "f" or scale == 0:
        return q.astype(np.float32)  # also copies: the interpreter reuses its output buffer
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)
