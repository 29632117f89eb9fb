"""torchao's QAT pattern tracing, made to work under torch 2.14 and traced once per process.

torchao 0.18 rewrites conv + BN in a QAT graph by matching patterns that it traces itself:
``_get_aten_graph_module_for_pattern`` calls ``torch.export.export`` on a plain function, which torch 2.14
refuses (it exports modules only), so ``patterns_as_modules`` wraps each pattern in torchao's own
``WrapperModule``.

Tracing is also where the time goes: converting a QAT graph (``convert_pt2e``'s BN folding) traces 7 pattern
pairs per conv flavour with a strict ``torch.export`` each, ~130 traces and ~25 s on a 2-core x86, whatever
the model's size, for every file. The patterns are the same each time (the same functions and flags, example
inputs of the same shapes), so the traced graph of each is kept for the life of the process and each caller
gets a copy of it (a deep copy of a small graph takes milliseconds; callers may edit what they get: torchao's
matcher with a name-node map rewrites the pattern's output). A pattern whose closure holds something
unhashable is traced every time, as torchao does.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

import torch

_TRACED: dict[tuple, Any] = {}


@contextmanager
def patterns_as_modules() -> Iterator[None]:
    """While it is open, torchao (and litert-torch's copy of its helper) trace patterns as modules, once."""
    import litert_torch.quantize.pt2e_quantizer_utils as litert_utils
    import torchao.quantization.pt2e.qat_utils as qat_utils
    import torchao.quantization.pt2e.utils as torchao_utils
    from torchao.quantization.pt2e.export_utils import WrapperModule

    original = torchao_utils._get_aten_graph_module_for_pattern

    @wraps(original)
    def traced(pattern: Any, example_inputs: tuple, is_cuda: bool = False, **kwargs: Any) -> Any:
        key = _key(_function_of(pattern, WrapperModule), example_inputs, is_cuda, kwargs)
        if key is not None and key in _TRACED:
            return copy.deepcopy(_TRACED[key])
        module = pattern if isinstance(pattern, torch.nn.Module) else WrapperModule(pattern)
        graph = original(module, example_inputs, is_cuda, **kwargs)
        if key is not None:
            _TRACED[key] = copy.deepcopy(graph)
        return graph

    modules = [m for m in (torchao_utils, qat_utils, litert_utils) if m._get_aten_graph_module_for_pattern is original]
    for module in modules:
        module._get_aten_graph_module_for_pattern = traced
    try:
        yield
    finally:
        for module in modules:
            module._get_aten_graph_module_for_pattern = original


def _function_of(pattern: Any, wrapper: type) -> Any:
    """The function a pattern traces: itself, or the one a bare ``WrapperModule`` holds (as torchao passes most)."""
    if isinstance(pattern, wrapper) and not any(True for _ in pattern.parameters()) and not list(pattern.buffers()):
        return pattern.fn
    return pattern


def _key(pattern: Any, example_inputs: tuple, is_cuda: bool, kwargs: dict) -> tuple | None:
    """What a pattern's traced graph depends on: its code, what its closure holds, its inputs' shapes and dtypes.

    None (do not keep it) for a module pattern, whose parameters could differ, or anything unhashable."""
    code = getattr(pattern, "__code__", None)
    if code is None:
        return None
    try:
        closure = tuple(_frozen(cell.cell_contents, by_value=True) for cell in pattern.__closure__ or ())
        inputs = tuple(_frozen(x) for x in example_inputs)
        named = tuple(sorted((name, _frozen(value)) for name, value in kwargs.items()))
        key = (code, closure, inputs, is_cuda, named)
        hash(key)
    except (TypeError, ValueError):
        return None
    return key


def _frozen(value: Any, by_value: bool = False) -> Any:
    """An input tensor by its shape and dtype (a trace specialises on those, not on its values); a tensor the
    pattern closes over also by its values (they become constants of the graph); anything else as it is."""
    if isinstance(value, torch.Tensor):
        values = value.detach().cpu().numpy().tobytes() if by_value else None
        return ("tensor", tuple(value.shape), value.dtype, values)
    if isinstance(value, torch.nn.Module):
        raise TypeError("a module's parameters are part of its trace")
    return value
