"""timm's models by name (`arch: timm:NAME`, `compress.timm_models`), their weights, and their int8 groups. The
real-weights checks (timm's graphs quantize as torchvision's) are in tests/test_real_int8.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress.models import build_model, load_pretrained
from compress.recipe import load_recipe
from compress.schema import ModelSpec
from targets.accuracy_control import layer_groups
from targets.base import EdgecompError

timm = pytest.importorskip("timm")
ROOT = Path(__file__).resolve().parents[1]


def test_a_timm_model_is_built_by_name_with_the_recipes_classes() -> None:
    recipe = load_recipe("quickstart", ["model.arch=timm:mobilenetv3_small_050", "model.small_input=false"])
    model = build_model(recipe.model, 7)
    assert type(model).__name__ == "MobileNetV3" and model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_an_unknown_timm_name_is_refused_when_the_recipe_loads() -> None:
    with pytest.raises(EdgecompError, match=r"timm has no model 'mobilenetv3_smal_050' \(did you mean .*mobilenetv3"):
        load_recipe("quickstart", ["model.arch=timm:mobilenetv3_smal_050"])


def test_a_recipe_asks_for_timms_own_weights_of_a_timm_model_only() -> None:
    timm_model = ["model.arch=timm:mobilenetv3_small_050", "model.weights=timm"]
    assert load_recipe("quickstart", timm_model).model.library_weights  # not a file: downloaded when the run starts
    with pytest.raises(EdgecompError, match=r"model.weights: timm is timm's weights of an arch: timm:NAME model, not"):
        load_recipe("quickstart", ["model.weights=timm"])


def test_timms_stages_are_split_into_blocks_as_torchvisions_features_are() -> None:
    import torchvision

    groups = layer_groups(build_model(ModelSpec(arch="timm:tf_mobilenetv3_small_100"), 10))
    assert groups[:4] == ["conv_stem", "blocks.0", "blocks.1.0", "blocks.1.1"] and groups[-2:] == [
        "conv_head",
        "classifier",
    ]
    assert len(groups) == len(layer_groups(torchvision.models.mobilenet_v3_small())) == 15


def test_safetensors_weights_load_and_a_broken_file_is_one_message(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = build_model(ModelSpec(arch="timm:mobilenetv3_small_050"), 5)
    trained = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file(trained, tmp_path / "model.safetensors")
    fresh = build_model(ModelSpec(arch="timm:mobilenetv3_small_050"), 5)
    assert load_pretrained(fresh, str(tmp_path / "model.safetensors"), "timm:mobilenetv3_small_050") == []
    assert torch.equal(fresh.conv_stem.weight, trained["conv_stem.weight"])
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EdgecompError, match=r"broken.safetensors: cannot load weights"):
        load_pretrained(fresh, str(tmp_path / "broken.safetensors"))


def test_timms_own_weights_offline_say_where_to_get_the_file() -> None:
    """`model.weights: timm` downloads through Hugging Face; offline (HF_HUB_OFFLINE, read when huggingface_hub is
    imported: a process of its own) the error names the file to fetch and how to point at it."""
    code = (
        "from compress.timm_models import timm_state\n"
        "from targets.base import EdgecompError\n"
        "try:\n    timm_state('timm:mobilenetv3_small_050')\n"
        "except EdgecompError as error:\n    print(error)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-edgecomp-test", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "huggingface.co/timm/mobilenetv3_small_050.lamb_in1k" in done.stdout
    assert "set model.weights to it" in done.stdout
    with pytest.raises(EdgecompError, match=r"timm's weights of an arch: timm:NAME model, not 'mobilenet_v2'"):
        load_pretrained(build_model(ModelSpec(arch="mobilenet_v2"), 3), "timm", "mobilenet_v2")
