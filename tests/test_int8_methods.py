"""int8 methods that real networks need, on small models built to show each failure: ReLU6 observed after the
clamp, weight scales fitted to the weights, and layers kept in float on every target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import INPUT_SHAPE
from torch import nn

import targets
from targets.weights import mse_scales

INT8_TARGETS = [name for name, spec in targets.TARGETS.items() if "int8" in spec.precisions]


def _rounding_error(w: np.ndarray, scales: np.ndarray) -> np.ndarray:
    s = scales.reshape(-1, *[1] * (w.ndim - 1))
    return np.square(np.clip(np.round(w / s), -127, 127) * s - w).reshape(len(w), -1).sum(axis=1)


def test_mse_scales_recover_a_grid_the_weights_were_trained_on() -> None:
    """QAT-trained weights sit on a per-tensor grid (TF's uint8, zero point in the middle); max|w| / 127 misses it."""
    rng = np.random.default_rng(0)
    step = 0.013
    levels = rng.integers(-100, 101, size=(16, 8, 3, 3))
    levels[:, 0, 0, 0] = rng.integers(20, 120, size=16)  # every channel's max on a different level
    w = (levels * step).astype(np.float32)
    assert _rounding_error(w, mse_scales(w)).max() < 1e-10
    assert _rounding_error(w, np.abs(w).reshape(16, -1).max(1) / 127).min() > 1e-6


def test_mse_scales_never_lose_to_min_max_on_float_weights() -> None:
    w = np.random.default_rng(1).standard_t(3, size=(32, 64)).astype(np.float32)  # heavy tails: clipping pays
    min_max = _rounding_error(w, np.abs(w).max(1) / 127)
    fitted = _rounding_error(w, mse_scales(w))
    assert np.all(fitted <= min_max * (1 + 1e-6)) and fitted.sum() < 0.95 * min_max.sum()
    assert mse_scales(w, axis=1).shape == (64,)


class ExpandNet(nn.Module):
    """conv -> `act` -> conv, the first conv's outputs spread wide (std of its weights `std`; 6: +-40, as BN-folded
    ImageNet weights do before a ReLU6; 4: under -20, as MobileNetV3's before a hard-swish)."""

    def __init__(self, act: nn.Module | None = None, std: float = 6.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.expand = nn.Conv2d(3, 16, 3, padding=1)
        self.act = act or nn.ReLU6()
        self.project = nn.Conv2d(16, 10, 1)
        nn.init.normal_(self.expand.weight, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.act(self.expand(x))).mean((2, 3))


CALIBRATION = np.random.default_rng(0).uniform(-1, 1, (32, *INPUT_SHAPE[1:])).astype(np.float32)


def _tflite_int8(model: nn.Module, tmp_path: Path) -> tuple[Path, Any, dict[int, dict]]:
    """`model`'s TFLite int8 file calibrated on `CALIBRATION`, its interpreter, and its tensors by index."""
    from ai_edge_litert.interpreter import Interpreter

    path = targets.get_target("tflite").export(
        model, torch.zeros(INPUT_SHAPE), "int8", tmp_path / "m.tflite", CALIBRATION, {}
    )
    interpreter = Interpreter(model_path=str(path))
    return path, interpreter, {d["index"]: d for d in interpreter.get_tensor_details()}


def test_tflite_int8_observes_relu6_after_the_clamp(tmp_path: Path) -> None:
    """litert-torch shares the conv's pre-clamp observer with ReLU6, so [0, 6] got a few dozen of 256 levels
    (the root cause of the 23% agreement of real MobileNetV2s); observed after the clamp it gets all 256."""
    model = ExpandNet().eval()
    with torch.no_grad():
        assert model.expand(torch.from_numpy(CALIBRATION)).abs().max() > 30
    _, interpreter, details = _tflite_int8(model, tmp_path)
    convs = [op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D"]
    scale = details[convs[0]["outputs"][0]]["quantization_parameters"]["scales"]
    assert len(scale) == 1 and scale[0] <= 6 / 255 * 1.01


class DropoutHead(nn.Module):
    """torchvision's classifier head: pooled features -> Dropout -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU6())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def test_tflite_int8_biases_match_the_inputs_they_are_added_to(tmp_path: Path) -> None:
    """Each int8 layer's int32 bias is on the scale of its input times its weights. An eval model's dropout was a
    node of its own to the quantizer, so the Linear after it got its bias for the dropout's scale while the
    converter fed it the pool's: real MobileNetV2 logits' biases 1.15x too large (24.0 -> 24.7 dB once mended)."""
    _, interpreter, details = _tflite_int8(DropoutHead().eval(), tmp_path)
    layers = [op for op in interpreter._get_ops_details() if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
    assert {op["op_name"] for op in layers} == {"CONV_2D", "FULLY_CONNECTED"}
    for op in layers:
        activation, weight, bias = (details[i]["quantization_parameters"]["scales"] for i in op["inputs"])
        np.testing.assert_allclose(bias, activation * weight, rtol=1e-5, err_msg=op["op_name"])


def test_tflite_int8_ranges_a_global_average_pool_on_its_own_output(tmp_path: Path) -> None:
    """A mean over a feature map spans a fraction of the map's range. litert-torch gave the int8 MEAN its input's
    scale, so the pooled features were read a few steps wide (real MobileNetV3-Small int8 with features.11 in
    float, its classifier's input and every squeeze-and-excite pool so: 13.6 -> 15.5 dB once each has its own)."""
    model = DropoutHead().eval()
    _, interpreter, details = _tflite_int8(model, tmp_path)
    (mean,) = [op for op in interpreter._get_ops_details() if op["op_name"] == "MEAN"]
    scale_in = details[mean["inputs"][0]]["quantization_parameters"]["scales"][0]
    output = details[mean["outputs"][0]]["quantization_parameters"]
    scale_out, zero_point = output["scales"][0], output["zero_points"][0]
    with torch.no_grad():
        pooled = model.features(torch.from_numpy(CALIBRATION)).mean((2, 3))
    assert scale_out < scale_in / 3  # here 5.4x finer
    assert 0.9 * float(pooled.max()) <= (127 - zero_point) * scale_out <= 2 * float(pooled.max())


@pytest.mark.parametrize("target", ["tflite", "onnx"])
def test_int8_ranges_a_hardswish_input_from_minus_3(target: str, tmp_path: Path) -> None:
    """Hard-swish maps every value under -3 to 0: the int8 conv before it (TFLite and onnxruntime have no int8
    conv + hard-swish) saturates at -3 rather than spend levels on what hard-swish erases. OpenVINO fuses the
    two and quantises hard-swish's output instead."""
    model = ExpandNet(nn.Hardswish(), std=4.0).eval()
    with torch.no_grad():
        assert model.expand(torch.from_numpy(CALIBRATION)).min() < -20
    out = tmp_path / f"m{targets.TARGETS[target].suffix}"
    path = targets.get_target(target).export(model, torch.zeros(INPUT_SHAPE), "int8", out, CALIBRATION, {})
    low, step = _first_conv_output_floor(target, path)
    assert -3 - step <= low <= -3 + step
    with torch.no_grad():
        expected = model(torch.from_numpy(CALIBRATION)).numpy()
    logits = targets.load_runner(path, threads=1).predict(CALIBRATION)[0]
    assert np.corrcoef(logits.ravel(), expected.ravel())[0, 1] > 0.99


def _first_conv_output_floor(target: str, path: Path) -> tuple[float, float]:
    """The lowest value the int8 file's first conv output can hold, and its quantisation step."""
    if target == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        details = {d["index"]: d for d in interpreter.get_tensor_details()}
        conv = next(op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D")
        quantization = details[conv["outputs"][0]]["quantization_parameters"]
        (scale,), (zero_point,) = quantization["scales"], quantization["zero_points"]
        return float((-128 - zero_point) * scale), float(scale)
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    conv = next(node for node in graph.node if node.op_type == "Conv")
    quantize = next(node for node in graph.node if node.op_type == "QuantizeLinear" and node.input[0] == conv.output[0])
    scale, zero_point = float(constants[quantize.input[1]]), int(constants[quantize.input[2]])
    return (0 - zero_point) * scale, scale  # uint8 activations


@pytest.mark.parametrize("target", INT8_TARGETS)
def test_keep_float_leaves_the_named_layers_in_float(
    target: str, tiny_net: nn.Module, calibration: np.ndarray, tmp_path: Path
) -> None:
    module = targets.get_target(target)
    suffix = targets.TARGETS[target].suffix
    args = (tiny_net, torch.zeros(INPUT_SHAPE), "int8")
    full = module.export(*args, tmp_path / f"full{suffix}", calibration, {})
    kept = module.export(*args, tmp_path / f"kept{suffix}", calibration, {}, keep_float=["classifier"])
    assert _float_weight_layers(target, full) == 0
    assert _float_weight_layers(target, kept) == 1  # the classifier, and nothing else
    with torch.no_grad():
        reference = tiny_net(torch.from_numpy(calibration)).numpy()
    logits = targets.load_runner(kept, threads=1).predict(calibration)[0]
    assert np.mean(logits.argmax(1) == reference.argmax(1)) >= 0.9


def _float_weight_layers(target: str, path: Path) -> int:
    """How many convolutions / matrix multiplies of the file take float32 weights that no quantizer touches."""
    if target == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        details = {d["index"]: d for d in interpreter.get_tensor_details()}
        layers = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
        ops = [op for op in interpreter._get_ops_details() if op["op_name"] in layers]
        return sum(details[op["inputs"][1]]["dtype"] == np.float32 for op in ops)
    if target == "openvino":
        import openvino as ov

        model = ov.Core().read_model(str(path))
        layers = [op for op in model.get_ops() if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")]
        return sum(
            op.input_value(1).get_node().get_type_name() == "Constant"
            and op.input_value(1).get_element_type() == ov.Type.f32
            for op in layers
        )
    import onnx

    graph = onnx.load(str(path)).graph
    produced_by = {out: node.op_type for node in graph.node for out in node.output}
    initializers = {t.name for t in graph.initializer}
    layers = [node for node in graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    return sum(node.input[1] in initializers or produced_by.get(node.input[1]) != "DequantizeLinear" for node in layers)


class PreprocessingInside(nn.Module):
    """A user's model that normalises its own input: float buffers and Python scalars in its forward."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x * self.std + self.mean) * 2 - 1)


@pytest.mark.parametrize("target", INT8_TARGETS)
def test_int8_exports_a_model_with_preprocessing_inside(
    target: str, tiny_net: nn.Module, calibration: np.ndarray, tmp_path: Path
) -> None:
    """torch.export lifts the scalar 2 into an int64 constant, which TFLite's PT2E observed as an activation
    ('"histogram_cpu" not implemented for Long')."""
    model = PreprocessingInside(tiny_net).eval()
    path = tmp_path / f"m{targets.TARGETS[target].suffix}"
    targets.get_target(target).export(model, torch.zeros(INPUT_SHAPE), "int8", path, calibration, {})
    with torch.no_grad():
        reference = model(torch.from_numpy(calibration)).numpy()
    logits = targets.load_runner(path, threads=1).predict(calibration)[0]
    assert np.mean(logits.argmax(1) == reference.argmax(1)) >= 0.9


def test_recipe_keep_float_reaches_the_export_and_its_rows() -> None:
    from compress.deploy import export_options as _export_options
    from compress.recipe import parse_recipe

    recipe = {
        "name": "t",
        "model": {"arch": "mobilenet_v2"},
        "data": {"dataset": "digits"},
        "exports": [{"target": "tflite", "precision": ["fp32", "int8"], "keep_float": ["features.11", "classifier*"]}],
    }
    export = parse_recipe(recipe, source="r.yaml").exports[0]
    assert "keep_float" not in _export_options(export, "fp32")
    assert _export_options(export, "int8")["keep_float"] == ["features.11", "classifier*"]  # also in the rows' key


class SEBlock(nn.Module):
    """A MobileNetV3 block as torchvision writes it: hard-swish, squeeze-excitation with a hard-sigmoid gate,
    in-place ReLU and an in-place residual add (``result += input``)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops import SqueezeExcitation

        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU(inplace=True))
        self.se = SqueezeExcitation(32, 8, scale_activation=nn.Hardsigmoid)
        self.project = nn.Conv2d(32, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        result = self.project(self.se(self.expand(x)))
        result += x
        return self.head(result.mean((2, 3)))


def _exported(model: nn.Module) -> torch.fx.GraphModule:
    return torch.export.export(model, (torch.randn(2, *INPUT_SHAPE[1:]),)).module()


def test_rewrites_keep_the_function_and_leave_the_users_model_alone() -> None:
    from targets.pt2e_rewrites import fold_hardsigmoid, functionalize_inplace

    model = SEBlock().eval()
    before = {name: p.clone() for name, p in model.state_dict().items()}
    x = torch.randn(2, *INPUT_SHAPE[1:])
    with torch.no_grad():
        expected = model(x)
    graph = _exported(model)
    assert functionalize_inplace(graph) == 2  # relu_ and add_
    assert fold_hardsigmoid(graph) == 1
    ops = {node.target for node in graph.graph.nodes if node.op == "call_function"}
    aten = torch.ops.aten
    assert aten.add_.Tensor not in ops and aten.relu_.default not in ops and aten.hardsigmoid.default not in ops
    with torch.no_grad():
        torch.testing.assert_close(graph(x), expected, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())


def test_functionalize_keeps_an_inplace_op_whose_mutation_is_read() -> None:
    from targets.pt2e_rewrites import functionalize_inplace

    class ReadsAfter(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x * 2
            z = y.relu_()
            return z + y  # y read after its in-place ReLU

    graph = _exported(ReadsAfter())
    x = torch.randn(2, *INPUT_SHAPE[1:])
    expected = ReadsAfter()(x.clone())
    functionalize_inplace(graph)
    torch.testing.assert_close(graph(x), expected)


def test_tflite_int8_runs_a_mobilenet_v3_block_in_one_int8_graph(tmp_path: Path) -> None:
    """Residual adds, squeeze-excitation gates and ReLUs in int8; hard-swish in float between a DEQUANTIZE and a
    QUANTIZE (XNNPACK delegates that, not the int8 HARD_SWISH): on a real MobileNetV3-Small these cut the
    int8 graph into 20 XNNPACK partitions and made it 6x slower than fp32."""
    model = SEBlock().eval()
    path, interpreter, details = _tflite_int8(model, tmp_path)
    ops = [(op["op_name"], details[op["inputs"][0]]["dtype"]) for op in interpreter._get_ops_details()]
    float_ops = {name for name, dtype in ops if dtype == np.float32}
    assert float_ops == {"QUANTIZE", "HARD_SWISH"}, ops
    assert {name for name, dtype in ops if dtype == np.int8} >= {"ADD", "MUL", "CONV_2D", "FULLY_CONNECTED"}
    with torch.no_grad():
        expected = model(torch.from_numpy(CALIBRATION)).numpy()
    logits = targets.load_runner(path, threads=1).predict(CALIBRATION)[0]
    assert np.corrcoef(logits.ravel(), expected.ravel())[0, 1] > 0.98


def _export_with_grid_weights(target: str, conv: str, tmp_path: Path) -> tuple[nn.Module, Path]:
    """An ExpandNet whose `conv` weights sit on a grid (each channel's max on another level, as QAT leaves them),
    exported to `target`'s int8."""
    model = ExpandNet().eval()
    rng = np.random.default_rng(0)
    weight = getattr(model, conv).weight
    levels = rng.integers(-100, 101, size=weight.shape)
    levels[:, 0, 0, 0] = rng.integers(20, 120, size=len(levels))
    with torch.no_grad():
        weight.copy_(torch.from_numpy(levels * 0.013))
    calibration = rng.uniform(-1, 1, (16, *INPUT_SHAPE[1:])).astype(np.float32)
    out = tmp_path / f"m{targets.TARGETS[target].suffix}"
    return model, targets.get_target(target).export(model, torch.zeros(INPUT_SHAPE), "int8", out, calibration, {})


def test_onnx_int8_weights_take_the_fitted_scales(tmp_path: Path) -> None:
    """onnxruntime's own max|w| / 127 misses the grid QAT-trained weights sit on; the file's weight scales are
    `mse_scales`' (through its TensorQuantOverrides), so such weights come back exactly."""
    import onnx
    from onnx import numpy_helper

    model, path = _export_with_grid_weights("onnx", "expand", tmp_path)
    graph = onnx.load(str(path)).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weight = model.expand.weight.detach().numpy()
    dequantized = [
        (constants[n.input[0]].astype(np.float64) * constants[n.input[1]].reshape(-1, 1, 1, 1))
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in constants and constants[n.input[0]].shape == weight.shape
    ]
    assert len(dequantized) == 1
    np.testing.assert_allclose(dequantized[0], weight, atol=1e-6)


def test_openvino_int8_weights_take_the_fitted_scales(tmp_path: Path) -> None:
    """NNCF sets weight ranges to max|w| and has no option for another: edgecomp re-sets them to `mse_scales`'
    before NNCF's bias correction runs, so weights on a grid come back exactly from the IR's int8 weights. The
    second conv, since the first one's weights are 7-bit (NNCF's overflow fix)."""
    import openvino as ov

    model, path = _export_with_grid_weights("openvino", "project", tmp_path)
    weight = model.project.weight.detach().numpy()
    dequantized = []
    for op in ov.Core().read_model(str(path)).get_ops():  # int8 weights: Constant(i8) -> Convert -> Multiply(scale)
        if op.get_type_name() == "Multiply" and op.input_value(0).get_node().get_type_name() == "Convert":
            int8 = op.input_value(0).get_node().input_value(0).get_node()
            if int8.get_type_name() == "Constant" and tuple(int8.get_output_shape(0)) == weight.shape:
                dequantized.append(int8.get_data().astype(np.float64) * op.input_value(1).get_node().get_data())
    assert len(dequantized) == 1
    np.testing.assert_allclose(dequantized[0], weight, atol=1e-6)


@pytest.mark.parametrize("target", INT8_TARGETS)
def test_int8_ranges_a_near_constant_activation(target: str, tmp_path: Path) -> None:
    """A squeeze-excitation gate of an untrained model sits at 0.5 +- 1e-5: fewer float32 steps than a 2048-bin
    histogram has bins. NNCF's HISTOGRAM (OpenVINO's default) and onnxruntime's percentile (ONNX's) refused it
    ("Too many bins for data range") and failed the export; every target's default must range it, and the
    mends of the libraries must not outlive the export."""
    import onnxruntime.quantization.calibrate
    from nncf.tensor.functions import numeric

    torch.manual_seed(0)
    gate = nn.Conv2d(3, 8, 1)
    nn.init.normal_(gate.weight, std=1e-6)
    nn.init.zeros_(gate.bias)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), gate, nn.Hardsigmoid(), nn.Flatten(), nn.Linear(8, 4)).eval()
    calibration = np.random.default_rng(0).random((16, *INPUT_SHAPE[1:]), np.float32)
    before = dict(numeric.histogram.registry)
    path = targets.export(
        target,
        model,
        torch.zeros(INPUT_SHAPE),
        tmp_path / f"m{targets.TARGETS[target].suffix}",
        targets.base.ExportRequest("int8", calibration, {}),
    )
    with torch.no_grad():
        expected = model(torch.from_numpy(calibration)).numpy()
    (logits,) = targets.load_runner(path).predict(calibration)
    assert np.abs(logits - expected).max() < 0.05 * np.abs(expected).max()
    assert numeric.histogram.registry == before and onnxruntime.quantization.calibrate.np is np


def test_onnx_calibration_holds_a_chunk_of_samples_and_ranges_as_one_pass_would(tmp_path: Path, monkeypatch) -> None:
    """onnxruntime's percentile calibration kept every sample's activations until the last (MobileNetV2 at 224:
    ~62 MB a sample, ~17 GB for a recipe's 256). `targets.onnx_calibration` runs them a chunk at a time on the
    bin edges one pass over all samples chooses: no more than a chunk is held, and every activation's range, hence
    the file, is the one-pass one. The samples grow from 0.01 to 3 times their scale, so each chunk widens the
    ranges: histograms begun on the first chunk's range (onnxruntime's own merge) would not come out the same."""
    import contextlib

    import onnx
    from onnx import numpy_helper

    import targets.onnx as onnx_target
    from targets import onnx_calibration
    from targets.onnx_calibration import CHUNK

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Hardswish(), nn.Flatten())
    model = nn.Sequential(*model, nn.LazyLinear(4)).eval()
    model(torch.zeros(INPUT_SHAPE))
    calibration = np.random.default_rng(0).normal(size=(40, *INPUT_SHAPE[1:])).astype(np.float32)
    calibration *= np.linspace(0.01, 3, 40, dtype=np.float32).reshape(-1, 1, 1, 1)  # ranges widen chunk by chunk
    runs: list[int] = []  # samples per pass over the session: all of them streamed, then a chunk at a time
    activations = onnx_calibration._activations

    def counted(calibrator: Any, samples: list) -> Any:
        runs.append(len(samples))
        return activations(calibrator, samples)

    monkeypatch.setattr(onnx_calibration, "_activations", counted)

    def activation_scales(name: str) -> dict[str, float]:
        path = targets.get_target("onnx").export(
            model, torch.zeros(INPUT_SHAPE), "int8", tmp_path / f"{name}.onnx", calibration, {}
        )
        graph = onnx.load(str(path)).graph
        constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        quantize = [n for n in graph.node if n.op_type == "QuantizeLinear" and constants[n.input[1]].size == 1]
        return {n.input[0]: float(constants[n.input[1]]) for n in quantize}

    chunked = activation_scales("chunked")
    assert runs == [40, CHUNK, CHUNK, 40 - 2 * CHUNK]
    monkeypatch.setattr(onnx_target, "chunked_calibration", contextlib.nullcontext)
    one_pass = activation_scales("one-pass")
    assert len(runs) == 4 and len(chunked) >= 3  # onnxruntime's own pass: all samples held at once
    assert chunked == one_pass
