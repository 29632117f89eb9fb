"""OpenVINO: ``ov.convert_model`` to a static-shape IR (.xml + .bin), int8 through NNCF, CPU runtime.

fp16 is an fp16-compressed IR: weights stored in half precision, computed in f32 by the CPU plugin
(``load`` pins the inference precision). bf16 is the fp32 IR computed in bfloat16, OpenVINO's own default
on CPUs with AVX-512 BF16 or AMX (how users run it, and how benchmark_app times it): the file's metadata
says so and ``load`` asks the plugin for it; a CPU without bf16 refuses it at export and at load.

int8 is ``nncf.quantize`` with the MIXED preset (symmetric per-channel weights, asymmetric activations:
hard-swish outputs go negative, and on the real MobileNetV3-Small the PERFORMANCE preset's symmetric
activations cost 9 points of top-1 agreement with fp32), NNCF's default overflow fix (7-bit weights in the
first layer only) and the full bias correction (``fast_bias_correction=False``,
which re-fits each layer's bias on the quantised model's own activations; it costs seconds). Each weight
channel's range is `targets.weights.mse_scales`' (as on TFLite and ONNX), not NNCF's max|w|: NNCF has no
option for it, so `_mse_weight_ranges` re-sets its weight quantizers' ranges right after it places them, before
its bias correction runs (which then corrects the weights that ship). On the real TF-slim MobileNetV2 that moved
the logits' SQNR against fp32 from 20.1 to 23.6 dB (MobileNetV3-Small: 15.2 to 16.0 dB), COCO128 photos.

Activation ranges default to NNCF's HISTOGRAM (edgecomp's ``mse``: each range with the least squared error over
a histogram of the calibration activations, NNCF's port of torchao's HistogramObserver, which TFLite's int8 uses
too); NNCF keeps MINMAX for its per-channel activation quantizers (before depthwise convolutions). NNCF's own
default mixes MEAN_MINMAX per tensor and MINMAX per channel. `_histogram_mended` bins in float64 (a near-constant
activation failed the export) and drops NNCF's per-quantizer warning about the per-channel ones. Calibrated on
256 inputs (a recipe's default count: views of the 64 even COCO128 photos) and scored on 1,792 views of all 128,
the real MobileNetV2's int8 agreed with fp32 94.4% at 25.3 dB with HISTOGRAM against 93.9% at 23.4 dB with the
mix, MobileNetV3-Small 90.8% at 17.2 dB against 89.2% at 15.7 dB (`benchmarks/bench_real_int8.py --views
--calibration 256 --activations mse` the day before this became the default, 2026-12-02).

8-bit weights elsewhere are a choice: x86 CPUs without VNNI (AVX2 only; AMD before Zen 4) sum pairs of u8 x s8
products into saturating int16, which can clip layers with few, large weights there (on the quickstart's toy
models that cost up to 4 points of agreement on an AVX2 machine). 7-bit weights on every layer, this target's
earlier default, cannot overflow, but on the real ImageNet MobileNetV2 they cost 3 points of agreement on every
CPU (88.3% against 91.4%), ARM and VNNI included. ``keep_float`` module patterns become an ignored scope.

int8_ac is ``nncf.quantize_with_accuracy_control`` with the same settings: it quantizes as int8 does, then
scores the float and the int8 IR on validation samples with the caller's metric (`targets.base.AccuracyControl`)
and, while the drop exceeds the allowed one, returns to float the groups of layers whose outputs moved most
(NNCF ranks them by how far each one's reverting brings the outputs back). The file is an ordinary int8 IR
with fewer FakeQuantize ops, whose metadata's ``keep_float`` names the layer groups left in float (as
TFLite's and ONNX's int8_ac do); it costs several passes over the validation samples.

Quantization-aware training uses NNCF's PyTorch path: ``prepare_qat`` runs ``nncf.quantize`` on the torch
module itself (same preset and overflow fix), which returns it with trainable FakeQuantize
hooks; the caller fine-tunes it, and ``export(..., "int8", ...)`` recognises it and converts it as is: its
FakeQuantize ops become the IR's, and the CPU plugin runs them as int8 (no second calibration).

The IR is two files. Both are written under temporary names, then the .bin is renamed before the
.xml, so the .xml (the name users open) never points at a missing or foreign .bin.

One ``ov.Core`` serves the whole process (`_core`), and NNCF's own cores are made inside `_signal_stack_kept`:
OpenVINO's CPU plugin (2026.4) gives the thread that loads it an alternate signal stack and, when it is released,
puts back the stack it found, even one that belonged to another plugin released (unmapped) since. Two cores
released in the order they were made (two runners, NNCF's engines) left the main thread's signal stack
unmapped, and the next Ctrl-C (every handler Python installs runs on that stack) killed the process with
SIGSEGV before any handler ran.

torch, openvino and nncf are imported only inside the functions that need them.

>>> path = export(model, torch.randn(1, 3, 32, 32), "int8", Path("m.xml"), calibration, {"recipe": "q"})
>>> load(path, threads=2).predict(images)[0].shape
(len(images), num_classes)
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from importlib import metadata as dist_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from targets import TARGETS, activation_settings
from targets.base import (
    PRECISIONS,
    AccuracyControl,
    EdgecompError,
    check_export_args,
    export_failed,
    key_error_line,
    matches_module,
    predict_in_batches,
    static_input_shape,
)
from targets.fileio import atomic_path

if TYPE_CHECKING:
    import torch

# fp32 IR on the CPU plugin (inference precision pinned to f32 by `load`) matches PyTorch to float
# rounding (~1e-6); 1e-3 leaves room for larger logits and other CPUs' kernels. fp16 weights computed in
# f32 move the quickstart models' logits (a few units to ~20) by up to 1.3e-2; 5e-2 still catches a wrong
# layout or a dropped layer, which move them by whole units.
TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}

_METADATA_KEY = "edgecomp"  # rt_info section holding the metadata dict
# The metadata key saying what the CPU plugin computes the IR in: absent means f32 (pinned by `load`); "bf16"
# is what OpenVINO does by default on CPUs with bf16 (AVX-512 BF16, AMX), as benchmark_app runs it.
INFERENCE_PRECISION_KEY = "inference_precision"


def _decline_telemetry_not_opted_into() -> None:
    """OpenVINO's converter and NNCF send usage telemetry (openvino_telemetry) unless the user opted out; in
    edgecomp's processes they send only if the user opted in (``opt_in_out --opt_in``, which writes the consent file
    this honours). Each send forks the calling process, which holds torch's and JAX's threads (Python warns that
    the child may deadlock), and waits up to 3 s for the network: 0.6-0.7 s per ``ov.convert_model`` measured
    offline, 40x the conversion of a one-conv model (0.015 s). The library keeps no switch but the consent file
    and a CI variable, so its consent check is wrapped, before nncf or openvino is imported."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # a device with the runtime only
        return
    check = OptInChecker.check
    if getattr(check, "edgecomp", False):
        return

    def declined_unless_opted_in(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = check(self, *args, **kwargs)
        return result if result == ConsentCheckResult.ACCEPTED else ConsentCheckResult.DECLINED

    declined_unless_opted_in.edgecomp = True  # type: ignore[attr-defined]
    OptInChecker.check = declined_unless_opted_in


_decline_telemetry_not_opted_into()


@cache
def _core() -> Any:
    """The process's one ``ov.Core``, its CPU plugin loaded now and never released (see the module doc)."""
    import openvino as ov

    core = ov.Core()
    core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return core


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextmanager
def _signal_stack_kept() -> Iterator[None]:
    """Give this thread back the alternate signal stack it had before the block, whatever OpenVINO cores made and
    released inside it left (see the module doc); cores still alive then only unmap their own stacks later."""
    if sys.platform != "linux":
        yield
        return
    _core()  # the stack kept is then one that lives as long as the process
    libc = ctypes.CDLL(None, use_errno=True)
    before = _SignalStack()
    libc.sigaltstack(None, ctypes.byref(before))
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(before), None)


def cpu_computes(arithmetic: str) -> bool:
    """Whether this machine's CPU plugin computes in `arithmetic` ("f32", "bf16": AVX-512 BF16 or AMX), asked of
    the process's one Core (a Core of one's own, made and released, is what unmaps the signal stack)."""
    return arithmetic == "f32" or arithmetic.upper() in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _check_cpu_computes(precision: str) -> None:
    """Refuse a precision this machine's CPU plugin cannot compute in (bf16 needs AVX-512 BF16 or AMX)."""
    if not cpu_computes(precision):
        capabilities = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        raise EdgecompError(
            f"openvino {precision}: this CPU cannot compute in {precision} (OpenVINO's CPU capabilities: "
            f"{', '.join(capabilities)}); drop {precision} from the openvino export on this machine"
        )


def export(
    model: torch.nn.Module,
    example: torch.Tensor,
    precision: str,
    out: Path,
    calibration: np.ndarray | None,
    metadata: dict[str, str],
    io: str = "float",
    accuracy_control: AccuracyControl | None = None,
    keep_float: Sequence[str] = (),
    activations: str | None = None,
) -> Path:
    """Convert `model` to an OpenVINO IR at `out` (.xml, with its .bin beside it), written atomically.

    ``int8_ac`` needs `accuracy_control`: the validation samples, the metric and the largest drop allowed.
    `keep_float`: module-name patterns (``"classifier.1"``, ``"features.1"``) whose layers int8 leaves in float.
    `activations`: NNCF's activation range estimator, by its edgecomp name (`_RANGE_ESTIMATORS`; without one,
    the target's default, mse), written into the metadata; a QAT model's are trained.
    """
    spec = TARGETS["openvino"]
    check_export_args("openvino", precision, spec.precisions, calibration, io, spec.io)
    estimator, metadata = activation_settings("openvino", precision, activations, metadata, is_qat_prepared(model))
    estimator = _RANGE_ESTIMATORS[estimator] if estimator else None  # None: NNCF's own mix
    computed_in = PRECISIONS[precision].computed_in
    if computed_in != "f32":
        _check_cpu_computes(computed_in)
        metadata = {**metadata, INFERENCE_PRECISION_KEY: computed_in}
    if precision == "int8_ac" and accuracy_control is None:
        raise EdgecompError("openvino int8_ac needs accuracy_control: validation samples, a metric and a max drop")
    if precision == "int8_ac" and len(accuracy_control.samples) == 0:
        raise EdgecompError("openvino int8_ac needs validation samples to score the int8 model on; got none")
    try:
        with _signal_stack_kept():
            ov_model = _convert(model, example)
            if precision == "int8" and not is_qat_prepared(model):
                ov_model = _quantize_int8(ov_model, calibration, keep_float, estimator)
            elif precision == "int8_ac":
                ov_model = _quantize_int8_ac(ov_model, calibration, accuracy_control, keep_float, estimator)
                metadata = {**metadata, "keep_float": json.dumps(_float_groups(ov_model, model))}
    except Exception as e:
        raise export_failed("openvino", precision, e, model, example) from e
    for key, value in metadata.items():
        ov_model.set_rt_info(str(value), [_METADATA_KEY, key])
    _save_pair(ov_model, Path(out), compress_to_fp16=precision == "fp16")
    return Path(out)


def _convert(model: torch.nn.Module, example: torch.Tensor) -> Any:
    import openvino as ov
    from torch.jit import TracerWarning

    with warnings.catch_warnings():
        # ov.convert_model traces with torch.jit (deprecated, still works) and its telemetry forks a
        # process, which JAX (imported by litert-torch) warns about; neither is the user's concern.
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        # An NNCF QAT model's quantizers read their levels with .item() while traced: the trace's self-check
        # then reports small mismatches. The export's parity with that model is what is checked instead.
        warnings.filterwarnings("ignore", category=TracerWarning)
        # `input` makes the IR's shape static; `example_input` alone leaves it dynamic.
        ov_model = ov.convert_model(model.eval(), example_input=example, input=[list(example.shape)])
    # A traced module's outputs come unnamed, and tools that address outputs by name see none (NNCF's
    # accuracy control compares the outputs it finds: none, then divides by their count). Ultralytics' names.
    for index, output in enumerate(ov_model.outputs):
        if not output.get_names():
            output.set_names({f"output{index}"})
    return ov_model


def _quantize_int8(
    ov_model: Any, calibration: np.ndarray, keep_float: Sequence[str] = (), estimator: str | None = None
) -> Any:
    import nncf

    settings = _settings(ov_model, calibration, keep_float)
    with _mse_weight_ranges(), _histogram_mended():
        return nncf.quantize(ov_model, _calibration_set(calibration), **settings, **_advanced(estimator))


# edgecomp's activation range estimators (`targets.base.ACTIVATION_ESTIMATORS`, this target's in `TARGETS`) ->
# NNCF's RangeEstimatorParametersSet, which NNCF applies to every activation quantizer, per-tensor and per-channel
# alike: MEAN_MINMAX averages each sample's extremes (NNCF's default for per-tensor activations only: its
# per-channel ones, before depthwise convolutions, default to MINMAX, and averaged they cost the real MobileNetV2
# 34 points of agreement); MEAN_QUANTILE averages each sample's 0.01% and 99.99% quantiles; HISTOGRAM is NNCF's
# port of torchao's HistogramObserver (least L2 error of the quantized histogram, as TFLite's mse; NNCF falls back
# to MINMAX for per-channel activations, which it cannot histogram): this target's default.
_RANGE_ESTIMATORS = {
    "minmax": "MINMAX",
    "mean_minmax": "MEAN_MINMAX",
    "percentile": "MEAN_QUANTILE",
    "mse": "HISTOGRAM",
}


def _advanced(estimator: str | None, key: str = "advanced_parameters") -> dict[str, Any]:
    """NNCF's advanced parameters under `key` (int8_ac's call names them otherwise) with `estimator` (a
    RangeEstimatorParametersSet name) for the activations; none, NNCF's defaults, without one."""
    if estimator is None:
        return {}
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    params = getattr(RangeEstimatorParametersSet, estimator)
    return {key: AdvancedQuantizationParameters(activations_range_estimator_params=params)}


@contextmanager
def _histogram_mended() -> Iterator[None]:
    """NNCF's HISTOGRAM estimator (this target's default), mended within the block in two ways.

    It bins each activation's [min, max] into 2048 bins in the activation's own dtype, and numpy refuses a range
    that spans fewer float32 steps than that ("Too many bins for data range"): a near-constant activation (a
    tiny random SSDLite's squeeze-excitation gates, 0.5 +- 1e-5) failed the whole export. Here NNCF's numpy
    histograms count in float64, where any two distinct float32 values are 2048 bins apart; counts are
    otherwise the same. And NNCF's warning, per quantizer, that a per-channel activation quantizer keeps MINMAX
    (17 lines on MobileNetV2, on every int8 export) is dropped: the module doc says so once."""
    import logging

    from nncf.tensor.functions import numeric

    def in_float64(a: Any, bins: int, *, range: tuple[float, float] | None = None) -> np.ndarray:
        return np.histogram(np.asarray(a, np.float64), bins=bins, range=range)[0]

    def keep(record: logging.LogRecord) -> bool:
        return "HistogramAggregator does not support per-channel" not in record.getMessage()

    registry = numeric.histogram.registry
    saved = dict(registry)
    for kind in saved:
        if issubclass(kind, (np.ndarray, np.generic)):
            registry[kind] = in_float64
    logger = logging.getLogger("nncf")  # nncf.common.logging.logger.NNCF_LOGGER_NAME
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
        registry.clear()
        registry.update(saved)


@contextmanager
def _mse_weight_ranges() -> Iterator[None]:
    """Within the block, NNCF's min-max step leaves every 8-bit per-channel weight quantizer on the range of
    `targets.weights.mse_scales` (the module doc says why). NNCF 3.4 offers no weight-range hook, so its
    `MinMaxQuantization.apply` is wrapped for the block's duration; `tests/test_targets.py` checks the ranges
    that ship, so an NNCF that moves the step fails there, not silently."""
    from nncf.quantization.algorithms.min_max.algorithm import MinMaxQuantization

    original = MinMaxQuantization.apply

    def apply(self: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        model = original(self, model, *args, **kwargs)
        return _refit_weight_ranges(model) if hasattr(model, "get_ops") else model  # OpenVINO models only

    MinMaxQuantization.apply = apply
    try:
        yield
    finally:
        MinMaxQuantization.apply = original


def _refit_weight_ranges(ov_model: Any) -> Any:
    """Set each symmetric 8-bit weight FakeQuantize (255 levels, one range per output channel) to +-127 times
    the channel's `mse_scales` scale. Others (the 7-bit overflow-fix layers, per-tensor ranges) keep NNCF's."""
    from openvino import opset13

    from targets.weights import mse_scales

    for op in ov_model.get_ops():
        if op.get_type_name() != "FakeQuantize" or op.input_value(0).get_node().get_type_name() != "Constant":
            continue
        low = op.input_value(1).get_node().get_data()
        axes = [axis for axis, size in enumerate(low.shape) if size > 1]
        if op.get_attributes()["levels"] != 255 or len(axes) != 1:
            continue
        high = 127 * mse_scales(op.input_value(0).get_node().get_data(), axis=axes[0]).reshape(low.shape)
        for port, bound in ((1, -high), (2, high), (3, -high), (4, high)):
            op.input(port).replace_source_output(opset13.constant(bound.astype(low.dtype)).output(0))
    return ov_model


def _settings(ov_model: Any, calibration: np.ndarray, keep_float: Sequence[str]) -> dict[str, Any]:
    """The keyword arguments int8 and int8_ac share (see the module doc)."""
    import nncf

    ops = ov_model.get_ops() if keep_float else []  # mapping every op back to its module costs a graph walk
    ignored = [op.get_friendly_name() for op in ops if matches_module(_module_of(op), keep_float)]
    return {
        "preset": nncf.QuantizationPreset.MIXED,
        "subset_size": len(calibration),
        "fast_bias_correction": False,
        "ignored_scope": nncf.IgnoredScope(names=ignored, validate=False),
    }


def _float_groups(ov_model: Any, model: torch.nn.Module) -> list[str]:
    """The layer groups (`targets.accuracy_control.layer_groups`, as TFLite's and ONNX's int8_ac name them) with a
    convolution or matmul an int8 IR computes in float: weights not int8, because NNCF's accuracy control reverted
    them or an ignored scope kept them; in graph order."""
    import torch

    from targets.accuracy_control import layer_groups

    groups, names = layer_groups(model), [name for name, _ in model.named_modules()]
    layers = {name for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}

    def group_of(module: str) -> str:
        # A conv fused with its batch norm answers to the norm's module (`_module_of`): the layer defined last
        # before it is the conv.
        if module not in layers and module in names:
            module = next((n for n in reversed(names[: names.index(module)]) if n in layers), module)
        return next((g for g in groups if module == g or module.startswith(g + ".")), module)

    weighted = ("Convolution", "GroupConvolution", "MatMul")
    kept = [
        group_of(_module_of(op))
        for op in ov_model.get_ordered_ops()
        if op.get_type_name() in weighted and op.input_value(1).get_node().get_type_name() == "Constant"
    ]
    return list(dict.fromkeys(name for name in kept if name))


def _module_of(op: Any) -> str:
    """The torch module an IR op came from: ``__module.<path>/aten::...`` names it; an op renamed by a fusion
    (a conv merged with its batch norm becomes ``Multiply_N``) answers to its one consumer's module."""
    consumers = [t.get_node() for t in op.output(0).get_target_inputs()] if op.get_output_size() == 1 else []
    for node in (op, *consumers):
        name = node.get_friendly_name()
        if name.startswith("__module."):
            return name.removeprefix("__module.").split("/", 1)[0]
    return ""


def _calibration_set(calibration: np.ndarray) -> Any:
    """The calibration samples as NNCF's dataset of one-image IR inputs."""
    import nncf

    return nncf.Dataset(np.asarray(calibration, np.float32), lambda sample: sample[None])


def _quantize_int8_ac(
    ov_model: Any,
    calibration: np.ndarray,
    control: AccuracyControl,
    keep_float: Sequence[str] = (),
    estimator: str | None = None,
) -> Any:
    import nncf

    def validate(compiled: Any, indices: Any) -> tuple[float, list[list[np.ndarray]]]:
        """The metric on the samples at `indices`, and each one's outputs (NNCF ranks layers by those)."""
        indices = np.fromiter(indices, dtype=np.int64)
        # owned arrays, kept across calls whatever the runtime hands back (NNCF holds them for its ranking)
        per_sample = [[np.array(out) for out in compiled(control.samples[i][None]).to_tuple()] for i in indices]
        outputs = [np.concatenate(parts) for parts in zip(*per_sample, strict=True)]
        return float(control.score(outputs, indices)), per_sample

    # Items are sample indices, so `validate` knows which labels a subset's outputs belong to.
    validation_set = nncf.Dataset(range(len(control.samples)), lambda i: control.samples[i][None])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        with _mse_weight_ranges(), _histogram_mended():
            return nncf.quantize_with_accuracy_control(
                ov_model,
                _calibration_set(calibration),
                validation_set,
                validate,
                max_drop=control.max_drop / 100,
                drop_type=nncf.DropType.ABSOLUTE,
                **_settings(ov_model, calibration, keep_float),
                **_advanced(estimator, "advanced_quantization_parameters"),
            )


def prepare_qat(model: torch.nn.Module, example: torch.Tensor, calibration: np.ndarray) -> torch.nn.Module:
    """`model` (changed in place) with OpenVINO's int8 fake quantization, calibrated on `calibration`.

    Fine-tune it as an ordinary module, then pass it to ``export(..., "int8", ...)``. The fast bias correction
    (NNCF's default) is enough here: the fine-tune re-fits the biases anyway.

    >>> qat = prepare_qat(model, torch.zeros(1, 3, 32, 32), calibration)
    >>> fit(qat, ...); export(qat, torch.zeros(1, 3, 32, 32), "int8", Path("m.xml"), calibration, {})
    """
    import nncf
    import torch

    dataset = nncf.Dataset(np.asarray(calibration, np.float32), lambda sample: torch.from_numpy(sample[None]))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            return nncf.quantize(
                model.eval(), dataset, preset=nncf.QuantizationPreset.MIXED, subset_size=len(calibration)
            )
    except Exception as e:
        raise export_failed("openvino", "int8 (QAT)", e) from e


def is_qat_prepared(model: Any) -> bool:
    """Whether `model` came from `prepare_qat`: a torch module wrapped with NNCF's quantizer hooks."""
    try:
        from nncf.torch.function_hook.wrapper import is_wrapped
    except ImportError:
        return False
    return is_wrapped(model)


def _save_pair(ov_model: Any, xml: Path, compress_to_fp16: bool = False) -> None:
    """Save .xml + .bin under temporary names, then rename .bin, then .xml; a failure leaves no half pair."""
    import openvino as ov

    final_bin = xml.with_suffix(".bin")
    try:
        with atomic_path(xml) as tmp_xml:
            tmp_bin = tmp_xml.with_suffix(".bin")
            try:
                ov.save_model(ov_model, tmp_xml, compress_to_fp16=compress_to_fp16)
                xml.unlink(missing_ok=True)  # an old .xml must never meet the new .bin
                os.replace(tmp_bin, final_bin)
            finally:
                tmp_bin.unlink(missing_ok=True)
    except BaseException:
        if not xml.is_file():  # a .bin without its .xml is half a pair
            final_bin.unlink(missing_ok=True)
        raise


def _inference_precision(model: Any) -> str:
    rt_info = model.get_rt_info()
    if _METADATA_KEY in rt_info and INFERENCE_PRECISION_KEY in rt_info[_METADATA_KEY]:
        return rt_info[_METADATA_KEY][INFERENCE_PRECISION_KEY].astype(str)
    return "f32"


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata dict `export` put into the IR's rt_info ({} for IRs made elsewhere)."""
    rt_info = _core().read_model(str(path)).get_rt_info()
    if _METADATA_KEY not in rt_info:
        return {}
    return {key: value.astype(str) for key, value in rt_info[_METADATA_KEY].items()}


def size_bytes(path: Path) -> int:
    """What the deployment ships, in bytes: the .xml and its .bin."""
    path = Path(path)
    return path.stat().st_size + path.with_suffix(".bin").stat().st_size


def load(path: Path, threads: int | None = None, shape: tuple[int, ...] | None = None) -> OpenVINORunner:
    """Compile an IR for the CPU, tuned for single-request latency (`shape`: see `targets.load_runner`)."""
    return OpenVINORunner(Path(path), threads or os.cpu_count() or 1, shape)


class OpenVINORunner:
    """One compiled model and one infer request, reused; see `targets.base.Runner`.

    Inference precision is the file's (metadata "inference_precision", f32 when absent), never the plugin's
    default: on CPUs with bf16 support that default runs an fp32 IR in bf16, and the measured accuracy would
    not be the file's. A bf16 export asks for bf16 explicitly, and its rows say so.
    """

    def __init__(self, path: Path, threads: int, shape: tuple[int, ...] | None = None) -> None:
        try:
            core = _core()
        except ImportError:
            raise EdgecompError("OpenVINO is not installed: pip install openvino") from None
        self.path = path
        self.threads = threads
        self.runtime = f"openvino {dist_metadata.version('openvino')}"
        if not path.with_suffix(".bin").is_file():
            raise EdgecompError(f"{path}: its weights {path.with_suffix('.bin').name} are missing beside it")
        # What `benchmark_app -hint none -nstreams 1 -nthreads N -infer_precision P` runs: one stream, N threads,
        # in the file's own inference precision (f32 unless its metadata says otherwise).
        try:
            model = core.read_model(str(path))
            precision = _inference_precision(model)
            if precision != "f32":
                _check_cpu_computes(precision)
            config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": precision}
            if len(model.inputs) != 1:
                raise EdgecompError(f"{path}: has {len(model.inputs)} inputs; edgecomp runs single-input models")
            dims = [d.get_length() if d.is_static else None for d in model.input(0).get_partial_shape()]
            self.input_shape = static_input_shape(path, dims, shape)
            if tuple(dims) != self.input_shape:
                model.reshape(list(self.input_shape))
            compiled = core.compile_model(model, "CPU", config)
            if precision != "f32":
                self.runtime += f" ({precision})"
        except RuntimeError as e:
            raise EdgecompError(f"{path}: OpenVINO cannot open it ({key_error_line(e)})") from e
        self._request = compiled.create_infer_request()

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        return predict_in_batches(self, x)

    def bind(self, x: np.ndarray) -> Callable[[], None]:
        import openvino as ov

        self._request.set_input_tensor(ov.Tensor(np.ascontiguousarray(x, dtype=np.float32)))
        return self._run

    def _run(self) -> None:
        # A synchronous infer, as applications call it and as `benchmark_app -api sync` times it. One
        # request's start_async() + wait() reads faster on a busy 2-core machine (MobileNetV2 x0.5 at 224:
        # 3.6 against 11.0 ms at load average 7), since the plugin's stream threads then run the work
        # instead of the calling thread, but that is not the latency an application's infer() gets.
        self._request.infer(share_outputs=True)

    def outputs(self) -> list[np.ndarray]:
        return [np.array(tensor.data, dtype=np.float32) for tensor in self._request.output_tensors]
