"""Issue #18: models with folded batch norm fine-tune (train.freeze_bn), a collapsed stage stops the run with one
line, and every training stage can augment its batches (data.augment), seeded per (seed, epoch, sample)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from compress.candidates import Training
from compress.collapse import check_not_collapsed
from compress.data import DATASETS
from compress.data.augment import Augmentation, resolve, uniforms
from compress.recipe import parse_recipe
from compress.run_context import RunContext
from compress.schema import DataSpec, TrainSpec
from compress.train import Fit, fit, frozen_batch_norm, supervised
from targets.base import EdgecompError


def folded_bn_net() -> nn.Sequential:
    """A net as a deployment checkpoint or TF import has it: every BN layer an identity (mean 0, variance 1,
    weight 1, bias 0), the scales absorbed into the convs."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


def tiny_set(n: int = 48, classes: int = 4) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(n, 3, 8, 8, generator=generator), torch.randint(0, classes, (n,), generator=generator)
    )


def bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("1.", "4."))}


def train_briefly(model: nn.Module, freeze_bn: bool) -> list[bool]:
    """Two epochs of fit; returns the BN layers' `training` flag at every forward."""
    seen: list[bool] = []
    for layer in (model[1], model[4]):
        layer.register_forward_hook(lambda module, args, out: seen.append(module.training))
    job = Fit(epochs=2, lr=0.1, criterion=supervised(nn.functional.cross_entropy), label="t")
    fit(model, tiny_set(), 16, TrainSpec(epochs=2, freeze_bn=freeze_bn, device="cpu"), job)
    return seen


def test_freeze_bn_keeps_batch_norm_in_eval_and_its_weights_and_statistics_unchanged() -> None:
    model = folded_bn_net()
    before, conv_before = bn_state(model), model[0].weight.detach().clone()
    seen = train_briefly(model, freeze_bn=True)
    assert seen and not any(seen), "BN layers ran in eval mode at every training step"
    for name, value in bn_state(model).items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)
    assert not torch.equal(model[0].weight, conv_before), "the convs did train"
    assert all(p.requires_grad for p in model.parameters()), "BN weights take gradients again after the stage"


def test_without_freeze_bn_the_folded_layers_become_batch_normalisers() -> None:
    model = folded_bn_net()
    before = bn_state(model)
    seen = train_briefly(model, freeze_bn=False)
    assert all(seen)
    assert not torch.equal(bn_state(model)["1.running_mean"], before["1.running_mean"])


class Constant(nn.Module):
    """A collapsed classifier: the same (uniform) logits for every input, so its loss is ln C."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.bias * 0).expand(len(x), self.classes)


def digits_context(tmp_path, **data) -> RunContext:
    recipe = parse_recipe(
        {
            "name": "t",
            "model": {"arch": "mobilenet_v2"},
            "data": {"dataset": "digits", "image_size": 8, **data},
            "train": {"epochs": 1, "device": "cpu"},
        }
    )
    return RunContext.create(recipe, tmp_path, Console(quiet=True))


def test_a_collapsed_stage_raises_one_line_that_says_what_to_try(tmp_path) -> None:
    training = Training(digits_context(tmp_path))
    model = Constant(10)
    with pytest.raises(EdgecompError) as error:
        training.fit(model, 1, 0.05, training.criterion(model), "dense")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("dense: training collapsed (final loss 2.303, uninformed 2.303; val top1 0.1")
    assert "train.freeze_bn: true" in message and "lower learning rate (this stage's: 0.05)" in message


def test_the_collapse_check_needs_both_the_uninformed_loss_and_chance() -> None:
    point = (math.log(10), 0.1)
    check_not_collapsed("dense", point, {"final loss": 2.30}, ("top1", 0.40), 0.1)  # learning, loss still high
    check_not_collapsed("dense", point, {"final loss": 2.43}, ("top1", 0.10), 0.1)  # a few steps from scratch
    check_not_collapsed("dense", None, {"final loss": 2.30}, ("map50", 0.0), 0.1)  # a detector: not checked
    with pytest.raises(EdgecompError, match=r"finetune: training collapsed \(final loss 2\.310"):
        check_not_collapsed("finetune", point, {"final loss": 2.31}, ("top1", 0.12), 0.01)


# -- augmentation ------------------------------------------------------------------------------------------


def batch(n: int = 6, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("kind", ["photo", "pad_crop"])
def test_augmentation_is_a_function_of_seed_epoch_and_sample(kind: str) -> None:
    x, index = batch(), torch.tensor([0, 5, 9, 11, 30, 31])
    augment = Augmentation(kind, seed=3)
    first = augment(x, index, epoch=0)
    assert first.shape == x.shape and torch.isfinite(first).all()
    torch.testing.assert_close(augment(x.clone(), index, epoch=0), first, rtol=0, atol=0)
    assert not torch.equal(augment(x, index, epoch=1), first)
    assert not torch.equal(Augmentation(kind, seed=4)(x, index, epoch=0), first)
    # a sample's augmentation does not depend on its batch or its position in it
    alone = augment(x[2:3], index[2:3], epoch=0)
    torch.testing.assert_close(alone, first[2:3], rtol=0, atol=1e-6)


def test_pad_crop_shifts_whole_pixels_and_pads_with_the_mean() -> None:
    x = batch(64, 32)
    out = Augmentation("pad_crop", seed=0)(x, torch.arange(64), epoch=0)
    values = set(x.flatten().tolist()) | {0.0}
    assert set(out.flatten().tolist()) <= values  # moved (or flipped) pixels and mean-colour padding only
    assert not torch.equal(out, x)
    assert Augmentation("none")(x, torch.arange(64), 0) is x


def test_uniform_draws_are_uniform_and_independent_of_batching() -> None:
    u = uniforms(0, 0, np.arange(20_000), 5)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(uniforms(0, 0, np.arange(100, 110), 5), u[100:110])


def test_auto_is_the_data_set_default_and_detection_refuses_moving_images(tmp_path) -> None:
    digits = DATASETS.get("digits")(DataSpec(dataset="digits", image_size=8))
    assert resolve("auto", digits) == "none" and resolve("pad_crop", digits) == "pad_crop"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for i in range(10):
            Image.new("RGB", (10, 10), (i * 20, 0, 0)).save(tmp_path / folder / f"{i}.png")
    photos = DATASETS.get("imagefolder")(DataSpec(dataset="imagefolder", root=str(tmp_path), image_size=8))
    assert resolve("auto", photos) == "photo"
    scenes = DATASETS.get("digit_scenes")(DataSpec(dataset="digit_scenes", image_size=64, train_subset=8))
    assert resolve("auto", scenes) == "none"
    with pytest.raises(EdgecompError, match=r"data\.augment: photo moves and flips the image, and detection labels"):
        resolve("photo", scenes)


def test_only_training_batches_are_augmented(tmp_path, monkeypatch) -> None:
    """Training.fit hands the augmentation to the training loop alone: val, test and calibration images are
    read as they are."""
    context = digits_context(tmp_path, augment="pad_crop")
    val_before = context.splits.val[0][0].clone()
    calls: list[int] = []
    original = Augmentation.__call__

    def spy(self, x, index, epoch):
        calls.append(len(index))
        return original(self, x, index, epoch)

    monkeypatch.setattr(Augmentation, "__call__", spy)
    training = Training(context)
    model = folded_bn_net()
    model[-1] = nn.Linear(8, 10)
    metrics = training.fit(model, 1, 0.01, training.criterion(model), "dense")
    assert sum(calls) == len(context.splits.train), "each training image once per epoch, nothing else"
    assert training.inputs()["augment"] == "pad_crop" and "val_top1" in metrics
    torch.testing.assert_close(context.splits.val[0][0], val_before, rtol=0, atol=0)
    context.calibration(8)
    assert sum(calls) == len(context.splits.train)


def test_the_schema_refuses_an_unknown_augmentation() -> None:
    recipe = {"name": "t", "model": {"arch": "mobilenet_v2"}, "data": {"dataset": "digits", "augment": "flip"}}
    with pytest.raises(EdgecompError, match=r"data\.augment: .*'auto', 'none', 'photo' or 'pad_crop'"):
        parse_recipe(recipe)
    assert parse_recipe({**recipe, "data": {"dataset": "digits"}}).data.augment == "auto"
    assert (
        copy.deepcopy(parse_recipe(recipe | {"data": {"dataset": "digits", "augment": "none"}})).train.freeze_bn
        is False
    )


def test_freeze_bn_refuses_a_traced_graph_it_cannot_freeze() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    graph = torch.export.export(net, (torch.randn(2, 3, 8, 8),)).module()
    with pytest.raises(EdgecompError, match=r"drop tflite from qat\.targets"), frozen_batch_norm(graph):
        pass
