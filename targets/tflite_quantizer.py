"""litert-torch's PT2E quantizer for TFLite int8, with the annotations it gets wrong on torch 2.14 graphs fixed.

torch 2.14's ``torch.export`` records no ``source_fn_stack``, so litert-torch's source-partition annotators
for ``add``, ``cat`` and the fused ``add``/``mul`` + ReLU patterns never match, and it shares a clamp's
observer with its producer. ``Quantizer`` keeps litert-torch's scheme (symmetric int8, per-channel weights)
and fixes, before and after its own annotation:

- ``cat`` is left in float between dequantised inputs; the converter then lowers it to an int8
  CONCATENATION with one input's scale and clips every other input to it. SSDLite's per-level class
  logits and box codes are concatenated so: level 0's logits, range ~±13, were clipped to the last
  level's ~±4 (TFLite int8 test mAP@.5 51.9 against 71.9 on OpenVINO int8). Each ``cat`` now shares
  one observer among its inputs and output, so the scale covers them all.
- ``add`` (and ``mul``/``sub`` the annotators missed) stayed in float between a DEQUANTIZE and a QUANTIZE:
  every residual connection of a MobileNetV3-Small, 6 float ADDs that split XNNPACK's int8 graph. Each now
  observes its inputs and output.
- A conv, linear layer or add followed by ReLU6 or ReLU is observed once, after the clamp
  (``_annotate_fused_clamps``).
- The graph's tail (every op after the last convolution or linear layer on its path, e.g. SSD's box
  decoding against the anchors: exp, multiplies and adds over image-sized coordinates) stays in
  float: it is cheap, and in int8 the anchors and decoded boxes lose up to a pixel. Data movement in the tail
  (reshape, permute, flatten, slice, cat, ...) is quantised only while it still carries a layer's quantised
  output, so logits stay int8 up to the final dequantize.
- Layers matching ``keep_float`` stay in float; integer tensors (a Python scalar lifted by torch.export) are
  never observed.
- A layer's output that only a hard-swish reads is ranged from -3 up (``_floor_hardswish_inputs``): hard-swish
  is 0 for every value below, and TFLite has no int8 conv + hard-swish to spare the conv's output its
  quantisation.

Imported by ``targets.tflite`` at export time only: it needs torch and litert-torch.
"""

from __future__ import annotations

import dataclasses
from functools import cache, partial
from typing import Any

import torch
from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer
from litert_torch.quantize.pt2e_quantizer_utils import (
    _is_annotated,
    _mark_nodes_as_annotated,
    get_bias_qspec,
    get_input_act_qspec,
    get_output_act_qspec,
    get_weight_qspec,
)
from torchao.quantization.pt2e.observer import ObserverBase
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, SharedQuantizationSpec

from targets.base import HARDSWISH_FLOOR, matches_module

aten = torch.ops.aten
_WEIGHTED = {aten.conv2d.default, aten.linear.default}
_MOVEMENT = {  # ops that only move values: they keep their input's quantisation
    aten.cat.default,
    aten.reshape.default,
    aten.view.default,
    aten.permute.default,
    aten.flatten.using_ints,
    aten.squeeze.dim,
    aten.unsqueeze.default,
    aten.transpose.int,
    aten.slice.Tensor,
}
_ELEMENTWISE = {aten.add.Tensor, aten.mul.Tensor, aten.sub.Tensor}


class Quantizer(PT2EQuantizer):
    """litert-torch's ``PT2EQuantizer`` with the fixes in the module doc; `keep_float`: module-name globs."""

    def __init__(self, keep_float: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.keep_float = keep_float

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        nodes = [n for n in model.graph.nodes if n.op == "call_function"]
        for node in nodes:  # an annotation without specs: the node runs in float
            if self.keep_float and matches_module(_module_path(node), self.keep_float):
                _annotate_float(node)
        _annotate_tail_float(model, nodes)
        _annotate_fused_clamps(nodes, self.global_config)
        model = super().annotate(model)
        _observe_means(nodes, self.global_config)
        _annotate_elementwise(nodes, self.global_config)
        _unobserve_integers(model)
        _annotate_cat(nodes, self.global_config)
        _annotate_zero_pads(nodes)
        _floor_hardswish_inputs(nodes)
        return model


def _annotate_float(node: torch.fx.Node) -> None:
    node.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)


def _annotate_tail_float(model: torch.fx.GraphModule, nodes: list) -> None:
    """Leave in float every op after the last conv or linear layer on its path (see the module doc)."""
    feeds_layer: set = set()
    for node in reversed(list(model.graph.nodes)):
        if any(user.target in _WEIGHTED or user in feeds_layer for user in node.users):
            feeds_layer.add(node)
    in_float: set = set()
    for node in nodes:  # topological order: a movement op follows its tensor inputs into float
        if not isinstance(node.meta.get("val"), torch.Tensor):
            continue  # sizes (sym_size of a dynamic batch) are not activations
        tail = node not in feeds_layer and node.target not in _WEIGHTED
        if tail and (node.target not in _MOVEMENT or any(a in in_float for a in node.all_input_nodes)):
            in_float.add(node)
            _annotate_float(node)


def _annotate_elementwise(nodes: list, config: Any) -> None:
    """Observe the inputs and output of every add / mul / sub still unannotated."""
    for node in nodes:
        if node.target not in _ELEMENTWISE or "quantization_annotation" in node.meta or not _is_float(node):
            continue
        inputs = {a: get_input_act_qspec(config) for a in node.args[:2] if isinstance(a, torch.fx.Node)}
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map=inputs, output_qspec=get_output_act_qspec(config), _annotated=True
        )


_MEANS = {aten.mean.dim, aten.mean.default, aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default}


def _observe_means(nodes: list, config: Any) -> None:
    """Give each mean (global average pool) an observer of its own output instead of its input's.

    litert-torch shares a mean's observer with its input, as it does for data movement; but a mean over a
    feature map spans a fraction of the map's range, so the int8 MEAN kept its input's scale for values a few
    steps wide. On the real MobileNetV3-Small the pooled features before the classifier, the worst single
    activation after features.11's, were read at the last hard-swish's scale, and every squeeze-and-excite block
    pools so too. TFLite's int8 MEAN rescales between an input and an output scale.
    """
    for node in nodes:
        annotation = node.meta.get("quantization_annotation")
        if node.target in _MEANS and isinstance(getattr(annotation, "output_qspec", None), SharedQuantizationSpec):
            annotation.output_qspec = get_output_act_qspec(config)


def _annotate_cat(nodes: list, config: Any) -> None:
    """One observer shared by each ``cat``'s inputs and output (see the module doc)."""
    for node in nodes:
        if node.target == aten.cat.default and "quantization_annotation" not in node.meta:
            first, *rest = node.args[0]
            shared = SharedQuantizationSpec((first, node))
            inputs = {first: get_input_act_qspec(config), **dict.fromkeys(rest, shared)}
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map=inputs, output_qspec=shared, _annotated=True
            )


def _annotate_zero_pads(nodes: list) -> None:
    """Give a zero pad its input's observer: padding adds zeros, which every activation range holds. Observed
    on its own (TF 'SAME' padding before a stride-2 conv), the pad's output got a slightly different scale
    and the converter put a requantizing QUANTIZE after it."""
    for node in nodes:
        if "quantization_annotation" in node.meta or not _is_zero_pad(node):
            continue
        source = node.args[0]
        annotation = source.meta.get("quantization_annotation")
        if annotation is None or annotation.output_qspec is None:
            continue
        shared = SharedQuantizationSpec(source)
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={source: shared}, output_qspec=shared, _annotated=True
        )


def _is_zero_pad(node: torch.fx.Node) -> bool:
    if node.target == aten.constant_pad_nd.default:
        return float(node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0.0)) == 0.0
    if node.target != aten.pad.default:
        return False
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
    return mode == "constant" and not value


def _is_float(node: Any) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _module_path(node: Any) -> str:
    """The name of the innermost module that made `node` in an exported graph ("" for the model's own code)."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


def _unobserve_integers(model: Any) -> None:
    """Drop the observers litert-torch's annotators put on integer tensors. A Python scalar in a user's forward
    (``(x * std + mean) * 2 - 1``: preprocessing inside the model) is lifted by torch.export into an int64
    constant; observed as an activation, calibration failed with '"histogram_cpu" not implemented for Long'."""

    def is_integer(node: Any) -> bool:
        value = _constant(model, node.target) if node.op == "get_attr" else node.meta.get("val")
        return isinstance(value, torch.Tensor) and not value.is_floating_point()

    for node in model.graph.nodes:
        annotation = node.meta.get("quantization_annotation")
        if annotation is None:
            continue
        for source in [n for n in annotation.input_qspec_map if is_integer(n)]:
            del annotation.input_qspec_map[source]
        if annotation.output_qspec is not None and is_integer(node):
            annotation.output_qspec = None


def _constant(model: Any, target: str) -> Any:
    value = model
    for part in target.split("."):
        value = getattr(value, part, None)
    return value


# Clamps TFLite fuses into the producing conv / fully-connected / add op (RELU6, RELU_N1_TO_1; RELU always).
# Its fused activations have no RELU_0_TO_1: conv + hardtanh(0, 1) annotated as one became a float conv and a
# float RELU_0_TO_1.
_FUSABLE_CLAMPS = {(0.0, 6.0), (-1.0, 1.0)}
_CLAMPED = {aten.conv1d.default, aten.conv2d.default, aten.convolution.default, aten.linear.default, aten.add.Tensor}


def _annotate_fused_clamps(nodes: list, config: Any) -> None:
    """Observe a conv, linear layer or add followed by ReLU6 (``hardtanh(0, 6)``) or ReLU once, after the clamp.

    litert-torch fuses conv + ``relu`` this way but lists ``hardtanh`` among the ops that share their input's
    observer, so the conv's output observer sees the pre-activation range and the clamp reuses it. The
    converter then fuses RELU6 into the int8 conv, whose output keeps that range: on ImageNet MobileNetV2
    weights the expand convs reach ±15..±45 before the clamp, leaving 17-50 of 256 levels for [0, 6], and
    TFLite int8 top-1 agreement with fp32 fell to 23%. Annotated as one partition, [0, 6] gets all 256.
    """
    for clamp in nodes:
        if not _is_fusable_clamp(clamp):
            continue
        layer = clamp.args[0]
        if getattr(layer, "target", None) not in _CLAMPED or len(layer.users) != 1:
            continue
        if layer.target == aten.add.Tensor:
            operands = [a for a in layer.args[:2] if isinstance(a, torch.fx.Node)]
            inputs = dict.fromkeys(operands, get_input_act_qspec(config))
            partition = [clamp, layer]
        else:
            activation, weight, *rest = layer.args
            bias = rest[0] if rest and isinstance(rest[0], torch.fx.Node) else None
            inputs = {activation: get_input_act_qspec(config), weight: get_weight_qspec(config)}
            if bias:
                inputs[bias] = get_bias_qspec(config)
            partition = [clamp, layer, weight, *([bias] if bias else [])]
        if _is_annotated(partition):
            continue
        layer.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=inputs, _annotated=True)
        clamp.meta["quantization_annotation"] = QuantizationAnnotation(
            output_qspec=get_output_act_qspec(config), _annotated=True
        )
        _mark_nodes_as_annotated(partition)


def _is_fusable_clamp(node: torch.fx.Node) -> bool:
    if node.target in (aten.relu.default, aten.relu_.default):
        return True
    if node.target not in (aten.hardtanh.default, aten.hardtanh_.default):
        return False
    low = float(node.args[1]) if len(node.args) > 1 else -1.0
    high = float(node.args[2]) if len(node.args) > 2 else 1.0
    return (low, high) in _FUSABLE_CLAMPS


_HARDSWISH = {aten.hardswish.default, aten.hardswish_.default}


def _floor_hardswish_inputs(nodes: list) -> None:
    """Observe a layer's output that only a hard-swish reads from -3 up: hard-swish maps every value below to 0.

    Int8 TFLite has no conv + hard-swish kernel, so the conv's output is quantised before the hard-swish; on the
    real MobileNetV3-Small such outputs reach -46, and the levels below -3 carried nothing hard-swish keeps.
    Ranged from -3 the int8 conv saturates there and hard-swish(-3) = 0 exactly (MobileNetV3-Small int8 with
    `keep_float: [features.11]`, 128 COCO128 crops: agreement with fp32 77.3% -> 82.8%, 12.9 -> 13.6 dB).
    """
    for node in nodes:
        layer = node.args[0] if node.target in _HARDSWISH else None
        if not isinstance(layer, torch.fx.Node) or len(layer.users) != 1:
            continue
        spec = getattr(layer.meta.get("quantization_annotation"), "output_qspec", None)
        made = getattr(getattr(spec, "observer_or_fake_quant_ctr", None), "p", None)  # torchao's with_args partial
        observed = isinstance(made, partial) and issubclass(made.func, ObserverBase)
        if isinstance(spec, QuantizationSpec) and observed:  # PTQ; QAT's fake-quant modules train their ranges
            floored = _floored(made.func).with_args(**made.keywords)
            layer.meta["quantization_annotation"].output_qspec = dataclasses.replace(
                spec, observer_or_fake_quant_ctr=floored
            )


@cache
def _floored(observer: type) -> type:
    class Floored(observer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            super().forward(x.clamp(min=HARDSWISH_FLOOR))
            return x

    Floored.__name__ = Floored.__qualname__ = f"Floored{observer.__name__}"
    return Floored
