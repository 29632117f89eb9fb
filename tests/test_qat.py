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
from compress.pipeline import Pipeline
from compress.recipe import parse_recipe
from compress.schema import TrainSpec
from compress.train import Fit, fit, predict, supervised
from targets.base import EdgecompError

QAT_TARGETS = [name for name, spec in targets.TARGETS.items() if spec.qat]


def test_qat_targets_are_the_int8_converters_that_have_a_trainable_quantizer() -> None:
    assert QAT_TARGETS == ["tflite", "openvino"]
    for name in QAT_TARGETS:
        assert "int8" in targets.TARGETS[name].precisions
        assert callable(targets.get_target(name).prepare_qat)


def test_a_second_tflite_qat_file_reuses_the_traced_patterns_and_is_the_same_file(
    tiny_net, calibration, tmp_path
) -> None:
    """torchao traces ~130 conv + BN patterns per QAT file (~25 s); targets.torchao_patterns keeps them. It runs
    before the QAT fine-tune test, which then finds them traced, as a second file in one process would."""
    from targets import torchao_patterns

    torchao_patterns._TRACED.clear()
    module, files, kept = targets.get_target("tflite"), [], []
    for name in ("cold", "warm"):
        model = module.prepare_qat(copy.deepcopy(tiny_net), torch.zeros(INPUT_SHAPE), calibration)
        out = tmp_path / f"{name}.tflite"
        files.append(module.export(model, torch.zeros(INPUT_SHAPE), "int8", out, calibration, {}))
        kept.append(set(torchao_patterns._TRACED))
    assert len(kept[0]) > 50 and kept[1] == kept[0]  # the second file traced no pattern of its own
    assert files[0].read_bytes() == files[1].read_bytes()


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


def qat_recipe(**qat) -> dict:
    return {
        "name": "qat",
        "model": {"arch": "conftest:TinyNet"},  # a QAT row is an export: tiny keeps the pipeline test short
        "data": {"dataset": "digits", "image_size": 16},
        "train": {"epochs": 1},
        "stages": [{"qat": {"epochs": 1, **qat}}],
        "exports": [{"target": "tflite", "precision": ["int8"]}, {"target": "openvino", "precision": ["int8"]}],
        "bench": {"threads": [1], "warmup": 1, "runs": 3},
    }


def test_qat_defaults_to_every_int8_export_with_a_qat_path() -> None:
    recipe = parse_recipe(qat_recipe())
    assert recipe.qat.epochs == 1 and recipe.qat_targets() == ["tflite", "openvino"]
    assert parse_recipe(qat_recipe(targets=["openvino"])).qat_targets() == ["openvino"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r["stages"][0]["qat"].update(targets=["onnx"]),
            "stages.0.qat.targets: onnx has no quantization-aware",
        ),
        (lambda r: r["stages"][0]["qat"].update(targets=["tflit"]), "did you mean 'tflite'"),
        (lambda r: r.update(exports=[{"target": "tflite", "precision": ["fp32"]}]), "stages.0.qat: no int8 export"),
        (
            lambda r: (r["stages"][0]["qat"].update(targets=["openvino"]), r["exports"].pop()),
            "openvino is not exported",
        ),
        (lambda r: r["stages"][0]["qat"].update(lr=0), "stages.0.qat.lr"),
        (lambda r: r["stages"][0]["qat"].update(epochs=0), "stages.0.qat.epochs"),
        (lambda r: r["stages"][0]["qat"].update(epoch=2), "stages.0.qat.epoch: unknown key"),
        (lambda r: r["stages"].append({"prune": {}}), "qat stage at most, and it comes last"),
        (
            lambda r: r["stages"][0]["qat"].update(distill={"features": [{"student": "features.1"}]}),
            "feature KD is not available in QAT",
        ),
        (lambda r: r["stages"][0]["qat"].update(distill={"teacher": "nope.pt"}), "stages.0.qat.distill.teacher"),
    ],
)
def test_qat_mistakes_are_one_clear_error_at_load(change, message: str) -> None:
    data = qat_recipe()
    change(data)
    with pytest.raises(EdgecompError) as error:
        parse_recipe(data)
    assert message in str(error.value)
    assert "Traceback" not in str(error.value)


@pytest.mark.slow
def test_pipeline_adds_int8_qat_rows_beside_int8_and_a_rerun_loads_them(tmp_path) -> None:
    recipe = parse_recipe(qat_recipe())
    run_dir = tmp_path / "qat"
    first = Pipeline(recipe, run_dir).run()
    rows = {(r["target"], r["precision"]): r for r in first["rows"]}
    assert set(rows) == {
        ("pytorch", "fp32"),
        ("tflite", "int8"),
        ("tflite", "int8-qat"),
        ("openvino", "int8"),
        ("openvino", "int8-qat"),
    }
    for target in QAT_TARGETS:
        row = rows[target, "int8-qat"]
        assert row["qat"]["epochs"] == 1 and row["epochs"] == rows[target, "int8"]["epochs"] + 1
        assert row["lineage"][-1].startswith(f"qat({target}, 1 ep")
        assert row["parity"]["top1_agreement"] >= 0.9  # the file against the fake-quant model it came from
        assert (run_dir / "exports" / "dense" / f"{target}-int8-qat{targets.TARGETS[target].suffix}").is_file()
    assert "int8-qat" in (run_dir / "report.md").read_text()

    records = {p: p.stat().st_mtime_ns for p in (run_dir / "exports").rglob("*-int8-qat.json")}
    assert len(records) == 2
    second = Pipeline(recipe, run_dir).run()
    assert {p: p.stat().st_mtime_ns for p in records} == records  # loaded, not retrained
    assert [r["accuracy"] for r in second["rows"]] == [r["accuracy"] for r in first["rows"]]

    slower = parse_recipe(qat_recipe(lr=0.001))  # a changed qat spec retrains the QAT rows only
    Pipeline(slower, run_dir).run()
    assert all(p.stat().st_mtime_ns != t for p, t in records.items())
