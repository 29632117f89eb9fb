"""Rewrites of an exported (``torch.export``) graph that let a PT2E quantizer see what TFLite will run in int8.

Each keeps the graph's function: it changes how it is spelt, not what it computes.

- ``functionalize_inplace``: torch 2.14's ``torch.export`` keeps in-place ops (``x += y`` in torchvision's
  MobileNetV3 residuals is ``aten.add_``, ``nn.ReLU(inplace=True)`` is ``aten.relu_``). litert-torch's
  annotators match only the functional ops, so every residual ADD of a MobileNetV3-Small stayed in float
  between a DEQUANTIZE and a QUANTIZE, and conv + ``relu_`` was observed before the ReLU (half its levels
  spent on negatives the ReLU drops).
- ``fold_hardsigmoid``: ``hardsigmoid(z) = relu6(z + 3) / 6``, so where ``z`` is a conv or linear layer the 3
  goes into its bias and the op becomes ``hardtanh(0, 6)`` (fused into the int8 conv as RELU6) times 1/6 (an
  int8 MUL by a constant: the same int8 codes, rescaled). TFLite has no int8 hard sigmoid: each
  squeeze-excitation gate of a MobileNetV3 ran in float between a DEQUANTIZE and a QUANTIZE, and XNNPACK split
  the graph into ~20 partitions (the int8 file ran 6x slower than the fp32 one). RELU_0_TO_1 is no fused
  activation in TFLite, so ``hardtanh(z / 6 + 1/2, 0, 1)`` would leave the conv itself in float.
- ``drop_eval_dropout``: an eval model's dropout (``aten.dropout(x, p, False)``) is the identity, but it is a
  node the quantizer observes on its own. Before the classifier of torchvision's MobileNetV2 the pooled features
  were then quantised twice (the pool's range [0, 6], the dropout's [0, 5.24]); the converter dropped the second
  pair and kept the int32 bias the Linear had been given for the dropout's scale, so every logit's bias came out
  6/255 / 0.0205 = 1.15x too large in the .tflite (its last layer 24.7 dB against fp32 where the PT2E graph read
  26.1; every layer before it within 0.2 dB of the graph's).
"""

from __future__ import annotations

from typing import Any

import torch

aten = torch.ops.aten
_LAYERS = {aten.conv1d.default, aten.conv2d.default, aten.linear.default}


def functionalize_inplace(graph_module: torch.fx.GraphModule) -> int:
    """Replace in-place aten ops on intermediate tensors by their functional overloads; return how many.

    An op is replaced only where nothing reads the tensor it mutates after it (so the mutation is unseen)
    and that tensor is not a graph input, parameter or buffer.
    """
    order = {node: i for i, node in enumerate(graph_module.graph.nodes)}
    replaced = 0
    for node in list(graph_module.graph.nodes):
        functional = _functional_twin(node)
        if functional is None or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        mutated = node.args[0]
        if mutated.op != "call_function" or any(
            order[user] > order[node] for user in mutated.users if user is not node
        ):
            continue
        node.target = functional
        replaced += 1
    if replaced:
        graph_module.recompile()
    return replaced


def _functional_twin(node: torch.fx.Node) -> Any:
    """``aten.add.Tensor`` for a node calling ``aten.add_.Tensor`` (None if the op is not in-place)."""
    op = node.target
    if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload):
        return None
    name = op._schema.name.split("::")[-1]
    if not name.endswith("_") or name.startswith("_"):
        return None
    packet = getattr(aten, name[:-1], None)
    return getattr(packet, op._overloadname, None) if packet is not None else None


def fold_hardsigmoid(graph_module: torch.fx.GraphModule) -> int:
    """Turn ``hardsigmoid(layer(x))`` into ``hardtanh(layer'(x), 0, 6) * (1/6)``, layer' with its bias + 3;
    return how many. Only where the layer's output feeds the hard sigmoid alone and its bias (if any) is the
    graph's own constant; the new bias is a new parameter (the original, shared with the user's model, is
    left untouched)."""
    graph = graph_module.graph
    folded = 0
    for node in list(graph.nodes):
        if node.target not in (aten.hardsigmoid.default, aten.hardsigmoid_.default):
            continue
        layer = node.args[0]
        if getattr(layer, "target", None) not in _LAYERS or len(layer.users) != 1:
            continue
        weight, bias = layer.args[1], layer.args[2] if len(layer.args) > 2 else None
        if getattr(weight, "op", None) != "get_attr" or (bias is not None and getattr(bias, "op", None) != "get_attr"):
            continue
        w = _attribute(graph_module, weight.target)
        b = _attribute(graph_module, bias.target) if bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
        with graph.inserting_before(layer):
            new_bias = _constant_node(graph_module, f"{weight.target}_hardsigmoid_bias", b + 3, w.requires_grad)
        layer.args = (*layer.args[:2], new_bias, *layer.args[3:])
        if bias is not None and not bias.users:
            graph.erase_node(bias)
        node.target = aten.hardtanh.default
        node.args = (layer, 0.0, 6.0)
        node.kwargs = {}
        users = list(node.users)
        with graph.inserting_after(node):
            scaled = graph.call_function(aten.mul.Tensor, (node, 1 / 6))
        for user in users:
            user.replace_input_with(node, scaled)
        _like(node, scaled)
        folded += 1
    if folded:
        graph_module.recompile()
    return folded


def _like(original: torch.fx.Node, node: torch.fx.Node) -> torch.fx.Node:
    """`node` with `original`'s tensor metadata and module path (elementwise ops keep the shape and dtype)."""
    node.meta.update({key: original.meta[key] for key in _KEPT_META if key in original.meta})
    return node


_KEPT_META = ("val", "tensor_meta", "nn_module_stack", "stack_trace")


def _attribute(graph_module: torch.nn.Module, target: str) -> torch.Tensor:
    value: Any = graph_module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _constant_node(
    graph_module: torch.fx.GraphModule, name: str, value: torch.Tensor, trainable: bool
) -> torch.fx.Node:
    """A get_attr node for a new parameter `value` of `graph_module`."""
    attribute = name.replace(".", "_")
    while hasattr(graph_module, attribute):
        attribute += "_"
    graph_module.register_parameter(attribute, torch.nn.Parameter(value.detach().clone(), requires_grad=trainable))
    return graph_module.graph.get_attr(attribute)


_DROPOUTS = {aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default}


def drop_eval_dropout(graph_module: torch.fx.GraphModule) -> int:
    """Remove dropout ops that are not training (the identity); return how many."""
    dropped = 0
    for node in list(graph_module.graph.nodes):
        train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", True)
        if node.op == "call_function" and node.target in _DROPOUTS and train is False:
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
            dropped += 1
    if dropped:
        graph_module.recompile()
    return dropped
