"""Quantization-aware training: each QAT-capable target's fake-quant model trains, exports to int8 and agrees
with itself in the target's runtime; the recipe refuses QAT it cannot run; the pipeline caches QAT rows."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import INPUT_SHAPE
from torch.utils.data import TensorDataset

import targets
from compress.recipe import TrainSpec
from compress.train import Fit, fit, predict, supervised

QAT_TARGETS = [name for name, spec in targets.TARGETS.items() if spec.qat]


def test_qat_targets_are_the_int8_converters_that_have_a_trainable_quantizer() -> None:
    assert QAT_TARGETS == ["tflite", "openvino"]
    for name in QAT_TARGETS:
        assert "int8" in targets.TARGETS[name].precisions
        assert callable(targets.get_target(name).prepare_qat)


@pytest.mark.parametrize("target", QAT_TARGETS)
def test_qat_model_fine_tunes_and_its_int8_export_agrees_with_it(target, tiny_net, calibration, tmp_path) -> None:
    module = targets.get_target(target)
    model = module.prepare_qat(copy.deepcopy(tiny_net), torch.zeros(INPUT_SHAPE), calibration)
    images = torch.from_numpy(calibration)
    labels = tiny_net(images).argmax(1).detach()  # learnable labels: the float net's own predictions
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    job = Fit(epochs=2, lr=0.01, criterion=supervised(F.cross_entropy), label="qat")
    metrics = fit(model, TensorDataset(images, labels), 16, TrainSpec(device="cpu"), job)
    assert np.isfinite(metrics["final_loss"])
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())  # it trained

    fake_quant, _ = predict(model, TensorDataset(images, labels))
    path = module.export(
        model,
        torch.zeros(INPUT_SHAPE),
        "int8",
        tmp_path / f"qat{targets.TARGETS[target].suffix}",
        calibration,
        {"candidate": "tiny", "precision": "int8-qat"},
    )
    deployed = module.load(path).predict(calibration)[0]
    agreement = float(np.mean(deployed.argmax(1) == fake_quant[0].argmax(1)))
    assert agreement >= 0.95, f"{target}: int8 file agrees with its fake-quant model on {agreement:.1%}"
    assert np.abs(deployed - fake_quant[0]).max() < 0.1 * np.abs(fake_quant[0]).max()
