"""Static costs of a model: multiply-accumulates and parameters (file sizes come with each export)."""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn


def count(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass on `example`."""
    macs, params = tp.utils.count_ops_and_params(model.eval(), example)
    return int(macs), int(params)
