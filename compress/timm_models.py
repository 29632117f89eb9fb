"""timm's models by name (``arch: timm:mobilenetv3_large_100``), an optional dependency (``pip install timm``).

The model is built untrained by ``timm.create_model(name, num_classes=...)``, like every builder; its pretrained
weights come from ``model.weights``: a local file (timm's ``model.safetensors`` or a .pth state dict), or
``timm`` for timm's own download (online, or Hugging Face's cache), which fails offline with where to get the file.
Pruning, int8 and keep-in-float treat timm's graphs as torchvision's (`tests/test_timm.py`: the real TF-slim
MobileNets ported into timm's architectures quantize as they do in torchvision's).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compress.schema import TIMM_PREFIX
from targets.base import EdgecompError


def _timm(what: str) -> Any:
    try:
        import timm
    except ImportError:
        raise EdgecompError(f"{what} needs timm, which is not installed: pip install timm") from None
    return timm


def timm_name(arch: str) -> str:
    """The timm model name of ``arch: timm:NAME``, checked against timm's models."""
    name = arch.removeprefix(TIMM_PREFIX)
    timm = _timm(f"arch: {arch}")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (timm.list_models() lists them)"
        raise EdgecompError(f"arch: {arch}: timm has no model {name!r}{hint}")
    return name


def timm_builder(arch: str) -> Callable[[Any, int], nn.Module]:
    """A builder of timm's model, untrained, with the recipe's class count."""
    name, timm = timm_name(arch), _timm(f"arch: {arch}")
    return lambda spec, num_classes: timm.create_model(name, pretrained=False, num_classes=num_classes)


def timm_state(arch: str) -> dict[str, torch.Tensor]:
    """timm's pretrained weights of ``arch: timm:NAME`` (its default tag), from Hugging Face or its cache."""
    if not arch.startswith(TIMM_PREFIX):
        raise EdgecompError(f"model.weights: timm is timm's weights of an arch: timm:NAME model, not {arch!r}")
    name, timm = timm_name(arch), _timm("model.weights: timm")
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as error:
        hub = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None) or f"timm/{name}"
        raise EdgecompError(
            f"could not get timm's pretrained {name} ({type(error).__name__}); offline, download model.safetensors "
            f"from https://huggingface.co/{hub} elsewhere and set model.weights to it "
            "(--set model.weights=path/to/model.safetensors)"
        ) from None
