"""The activation range estimator of int8 exports (a recipe's ``activations``): each target hands it to its own
library's estimator, writes it into the file, and refuses one it lacks; the recipe and the rows carry it."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import INPUT_SHAPE, export_options
from pydantic import ValidationError
from torch import nn

import targets
from targets.base import ACTIVATION_ESTIMATORS, EdgecompError, ExportRequest

INT8_TARGETS = [name for name, spec in targets.TARGETS.items() if "int8" in spec.precisions]
OUTLIER = 50.0


@pytest.fixture(scope="module")
def outlier_calibration() -> np.ndarray:
    """Normal pixels (|x| < 5) and one pixel at `OUTLIER`: 1 value in 393,216, below onnxruntime's percentile cut."""
    samples = np.random.default_rng(0).standard_normal((128, *INPUT_SHAPE[1:])).astype(np.float32)
    samples[5, 0, 3, 3] = OUTLIER
    return samples


@pytest.fixture(scope="module")
def int8_file(
    tiny_net: nn.Module, outlier_calibration: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, str | None], Path]:
    """`int8_file(target, activations)`: the tiny net's int8 file, made through `targets.export` on first use."""
    folder = tmp_path_factory.mktemp("activations")
    made: dict[tuple[str, str | None], Path] = {}

    def get(target: str, activations: str | None) -> Path:
        if (target, activations) not in made:
            out = folder / f"{target}-{activations}{targets.TARGETS[target].suffix}"
            request = ExportRequest("int8", outlier_calibration, {"candidate": "tiny"}, activations=activations)
            made[target, activations] = targets.export(target, tiny_net, torch.zeros(INPUT_SHAPE), out, request)
        return made[target, activations]

    return get


def _input_range(target: str, path: Path) -> float:
    """The width of the int8 range the file gives its input tensor (the first activation it quantizes)."""
    if target == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        details = {d["index"]: d for d in interpreter.get_tensor_details()}
        quantize = next(op for op in interpreter._get_ops_details() if op["op_name"] == "QUANTIZE")
        return 255 * float(details[quantize["outputs"][0]]["quantization_parameters"]["scales"][0])
    if target == "openvino":
        import openvino as ov

        model = ov.Core().read_model(str(path))
        fq = next(op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize")
        low, high = (fq.input_value(port).get_node().get_data() for port in (1, 2))
        return float(high.max() - low.min())
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    quantize = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == graph.input[0].name)
    return 255 * float(constants[quantize.input[1]])


@pytest.mark.parametrize("target", INT8_TARGETS)
def test_minmax_keeps_the_outlier_that_the_default_clips(target: str, int8_file: Callable) -> None:
    """The default (no `activations`) is the estimator the table names as the target's default, in its ranges,
    and it clips a one-pixel outlier that min-max stretches the input's range to (~10 steps of int8 to each unit)."""
    default = _input_range(target, int8_file(target, None))
    named = _input_range(target, int8_file(target, targets.TARGETS[target].default_activations))
    minmax = _input_range(target, int8_file(target, "minmax"))
    assert named == pytest.approx(default, rel=1e-6)
    assert default < 15 and minmax > OUTLIER


@pytest.mark.parametrize(
    ("target", "activations"),
    [(name, a) for name in INT8_TARGETS for a in targets.TARGETS[name].activations],
)
def test_every_estimator_reaches_the_library_and_the_file(target: str, activations: str, int8_file: Callable) -> None:
    path = int8_file(target, activations)
    assert targets.get_target(target).read_metadata(path)["activations"] == activations
    assert "activations" not in targets.get_target(target).read_metadata(int8_file(target, None))
    assert 1 < _input_range(target, path) < 2 * OUTLIER


def test_every_target_maps_each_estimator_it_lists_to_its_library() -> None:
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    from onnxruntime.quantization import CalibrationMethod
    from torchao.quantization.pt2e import observer

    from targets import onnx, openvino, tflite

    libraries = {
        "tflite": (tflite._ACTIVATION_OBSERVERS, observer),
        "openvino": (openvino._RANGE_ESTIMATORS, RangeEstimatorParametersSet),
        "onnx": (onnx._CALIBRATION_METHODS, CalibrationMethod),
    }
    assert set(libraries) == set(INT8_TARGETS)
    for target, (mapping, library) in libraries.items():
        assert set(mapping) == set(targets.TARGETS[target].activations) <= set(ACTIVATION_ESTIMATORS)
        assert all(hasattr(library, name) for name in mapping.values())
    offered = {a for name in INT8_TARGETS for a in targets.TARGETS[name].activations}
    assert offered == set(ACTIVATION_ESTIMATORS)  # no name in the vocabulary that no target has


@pytest.mark.parametrize("target", ["onnx", "openvino"])  # targets.accuracy_control's search; NNCF's own
def test_int8_ac_estimates_ranges_with_the_chosen_estimator(
    target: str, tiny_net: nn.Module, outlier_calibration: np.ndarray, tmp_path: Path
) -> None:
    """int8_ac is int8 through the same quantizer with layers kept in float: the estimator reaches it too."""
    options = export_options("int8_ac", outlier_calibration[:8])
    request = ExportRequest("int8_ac", outlier_calibration, activations="minmax", **options)
    path = targets.export(
        target, tiny_net, torch.zeros(INPUT_SHAPE), tmp_path / f"m{targets.TARGETS[target].suffix}", request
    )
    assert targets.get_target(target).read_metadata(path)["activations"] == "minmax"
    assert _input_range(target, path) > OUTLIER


@pytest.mark.parametrize(
    ("target", "precision", "activations", "message"),
    [
        ("onnx", "fp32", "minmax", "onnx fp32 calibrates no activation ranges"),
        (
            "tflite",
            "int8",
            "percentile",
            "tflite has no 'percentile' activation range estimator (its quantizer has: mse, ",
        ),
        ("openvino", "int8", "min_max", "unknown activation range estimator 'min_max' (did you mean 'minmax'?)"),
    ],
)
def test_targets_refuse_an_estimator_before_converting(
    target: str, precision: str, activations: str, message: str, tmp_path: Path
) -> None:
    request = ExportRequest(precision, np.zeros((1, *INPUT_SHAPE[1:]), np.float32), activations=activations)
    with pytest.raises(EdgecompError, match=re.escape(message)):
        targets.export(target, nn.Identity(), torch.zeros(INPUT_SHAPE), tmp_path / "m", request)


def _export_spec(**export: object) -> object:
    from compress.recipe import parse_recipe

    recipe = {"name": "t", "model": {"arch": "mobilenet_v2"}, "data": {"dataset": "digits"}, "exports": [export]}
    return parse_recipe(recipe, source="r.yaml").exports[0]


@pytest.mark.parametrize(
    ("export", "message"),
    [
        (
            {"target": "onnx", "precision": ["int8"], "activations": "histogram"},
            "unknown activation range estimator 'histogram'; known: minmax, mean_minmax, percentile, mse",
        ),
        (
            {"target": "onnx", "precision": ["int8"], "activations": "mse"},
            "onnx has no 'mse' activation range estimator (its quantizer has: percentile, minmax); "
            "offered by: tflite, openvino",
        ),
        (
            {"target": "tflite", "precision": ["fp32", "fp16"], "activations": "minmax"},
            "activations goes with an int8 precision (int8 or int8_ac) only",
        ),
    ],
)
def test_recipe_refuses_an_estimator_it_cannot_honour(export: dict, message: str) -> None:
    with pytest.raises((ValidationError, EdgecompError), match=re.escape(message)):
        _export_spec(**export)


def test_recipe_estimator_keys_the_int8_files_and_rows_but_not_qat_or_float() -> None:
    """A changed estimator changes the int8 record's key (the file is made again, not reused); fp32 and the
    int8-qat rows (ranges trained, not estimated) keep theirs, and so does every export of a recipe without it."""
    from compress.deploy import export_options

    chosen = _export_spec(target="openvino", precision=["fp32", "int8", "int8_ac"], activations="minmax")
    plain = _export_spec(target="openvino", precision=["fp32", "int8", "int8_ac"])
    assert plain.activations is None
    assert export_options(chosen, "int8")["activations"] == export_options(chosen, "int8_ac")["activations"] == "minmax"
    assert export_options(chosen, "fp32") == export_options(plain, "fp32")
    assert export_options(chosen, "int8", qat=True) == export_options(plain, "int8", qat=True)
    assert export_options(plain, "int8") == {"calibration": 256}  # as before the option existed


def test_rows_and_report_say_which_estimator_an_int8_file_used() -> None:
    from compress.deploy import _stating_settings
    from compress.report.int8 import kept_float
    from compress.results import Row

    measure = _stating_settings(lambda: [{"accuracy": 0.9}], {"calibration": 256, "activations": "minmax"})
    assert measure() == [{"accuracy": 0.9, "activations": "minmax"}]

    row = {"candidate": "dense", "target": "onnx", "precision": "int8", "activations": "minmax"}
    assert kept_float([row], "top1") == ["dense onnx int8: activation ranges: minmax; all layers in int8"]
    assert kept_float([{**row, "activations": None}], "top1") == []
    fields = {"candidate": "dense", "kind": "dense", "target": "onnx", "precision": "int8", "accuracy": 0.9}
    assert Row.model_validate({**fields, "activations": "minmax"}).activations == "minmax"


def test_a_run_remakes_the_int8_file_when_its_estimator_changes(tmp_path: Path) -> None:
    """Through the pipeline: the file's metadata, the row and the report say the recipe's estimator, and a changed
    estimator makes the file again rather than reusing the one made with the other."""
    from rich.console import Console

    from compress.pipeline import Pipeline
    from compress.recipe import load_recipe

    quickstart = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    overrides = ["data.image_size=8", "train.epochs=1", "stages=[]", "baselines.scratch=[]", "bench.runs=2"]
    overrides += ["bench.warmup=1", "bench.threads=[1]", "bench.rounds=1"]
    export = "exports=[{target: onnx, precision: [int8], calibration_samples: 16, activations: %s}]"
    for activations in ("percentile", "minmax"):
        recipe = load_recipe(quickstart, [*overrides, export % activations])
        results = Pipeline(recipe, tmp_path / "q", console=Console(quiet=True), export_processes=1).run()
        (row,) = [r for r in results["rows"] if r["target"] == "onnx"]
        assert row["activations"] == activations and not results["failed"]
        metadata = targets.get_target("onnx").read_metadata(tmp_path / "q" / "exports" / "dense" / "onnx-int8.onnx")
        assert metadata["activations"] == activations
    assert (
        "dense onnx int8: activation ranges: minmax; all layers in int8" in (tmp_path / "q" / "report.md").read_text()
    )


def test_a_targets_new_version_makes_its_files_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A target whose way of making files changed (`TargetSpec.version` bumped, as OpenVINO's was when its int8
    default became mse) makes a finished run's files again; an unchanged one loads its records."""
    import dataclasses

    from rich.console import Console

    from compress.pipeline import Pipeline
    from compress.recipe import load_recipe

    quickstart = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    overrides = ["data.image_size=8", "train.epochs=1", "stages=[]", "baselines.scratch=[]", "bench.runs=2"]
    overrides += ["bench.warmup=1", "bench.threads=[1]", "exports=[{target: onnx, precision: [fp32]}]"]
    recipe = load_recipe(quickstart, overrides)
    path = tmp_path / "q" / "exports" / "dense" / "onnx-fp32.onnx"

    def made_at() -> int:
        Pipeline(recipe, tmp_path / "q", console=Console(quiet=True), export_processes=1).run()
        return path.stat().st_mtime_ns

    first = made_at()
    assert made_at() == first
    spec = targets.TARGETS["onnx"]
    monkeypatch.setitem(targets.TARGETS, "onnx", dataclasses.replace(spec, version=spec.version + 1))
    remade = made_at()
    assert remade != first and made_at() == remade


def test_an_int8_ac_rows_own_float_layers_are_not_replaced_by_the_recipes() -> None:
    """An int8_ac row reads keep_float from its file: the recipe's layers and those the search kept float."""
    from compress.deploy import _stating_settings

    def measure() -> list[dict]:
        return [{"precision": "int8_ac", "keep_float": ["classifier", "features.11"]}, {"precision": "int8"}]

    rows = _stating_settings(measure, {"keep_float": ["classifier"], "activations": "minmax"})()
    assert rows[0] == {"precision": "int8_ac", "keep_float": ["classifier", "features.11"], "activations": "minmax"}
    assert rows[1] == {"precision": "int8", "keep_float": ["classifier"], "activations": "minmax"}
