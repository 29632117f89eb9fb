"""Quantization-aware training (QAT): the PyTorch side of int8 that training can improve.

Post-training quantization (PTQ) lives in the targets: each target's int8 export calibrates the float model
with its own quantizer. QAT fine-tunes through that same quantizer's fake quantization, so the weights learn
to sit on the int8 grid the deployed file will use. The quantizer is the target's (litert-torch's PT2E
scheme for TFLite, NNCF's for OpenVINO: 7-bit weights, different fake-quant placement), so a candidate is
trained once per target, and the target's ``export(..., "int8", ...)`` converts the result as it is.

This runs in the export path, on rank 0 alone (the other workers have returned by then), so the fine-tune
is a job of one (`distributed.alone`); its result is cached with the export's rows, not as a stage checkpoint
(a fake-quant graph is not a state dict that `load_checkpoint` can rebuild).

>>> qat_model, metrics = quantization_aware(candidate.model, "tflite", example, calibration, train)
>>> targets.get_target("tflite").export(qat_model, example, "int8", Path("m.tflite"), calibration, {})
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

import targets
from compress import distributed


def quantization_aware(
    model: nn.Module,
    target: str,
    example: torch.Tensor,
    calibration: np.ndarray,
    train: Callable[[nn.Module], dict[str, Any]],
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of `model` with `target`'s int8 fake quantization (calibrated on `calibration`), fine-tuned by
    `train`; `model` itself is left as it was. Returns the fine-tuned model and `train`'s metrics."""
    prepared = targets.get_target(target).prepare_qat(copy.deepcopy(model).eval(), example, calibration)
    with distributed.alone():
        metrics = train(prepared)
    return prepared.eval(), metrics
