"""The detection recipe end to end on a tiny SSDLite: every runtime's outputs go through one post-processing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import targets
from compress.data import DATASETS, as_numpy
from compress.eager import TorchRunner
from compress.models import load_checkpoint
from compress.pipeline import Pipeline
from compress.recipe import load_recipe
from targets.detect import Detections, postprocess

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "ssdlite-quickstart.yaml"
REDUCED = [
    "model.width_mult=0.25",
    "data.image_size=64",
    "data.train_subset=48",
    "train.epochs=1",
    "stages.1.finetune.epochs=1",
    "baselines.scratch=[]",
    # OpenVINO only (CI time: a TFLite detector is ~24 s of conversion a file): test_detectors checks that a
    # pruned detector's TFLite outputs are PyTorch's, which the numpy post-processing below then agrees on.
    "exports=[{target: openvino, precision: [fp32]}]",
    "bench.runs=3",
    "bench.warmup=1",
    "bench.threads=[1]",
]


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory) -> tuple[dict, Path]:
    run_dir = tmp_path_factory.mktemp("runs") / "ssdlite-quickstart"
    return Pipeline(load_recipe(RECIPE, REDUCED), run_dir).run(), run_dir


@pytest.mark.slow
def test_every_candidate_is_scored_by_map_in_every_runtime(detection_run) -> None:
    results, _ = detection_run
    assert (results["task"], results["metric"]) == ("detection", "map50")
    rows = results["rows"]
    assert {(row["candidate"], row["target"]) for row in rows} == {
        (candidate, target) for candidate in ("dense", "pruned-kd") for target in ("pytorch", "openvino")
    }
    for row in rows:
        assert row["accuracy"] == row["scores"]["map50"]
        assert 0 <= row["scores"]["map"] <= row["scores"]["map50"] <= 1
        assert row["postprocess_ms_p50"] > 0  # the NMS step is timed apart from the model
    pruned, dense = (next(r for r in rows if r["candidate"] == c) for c in ("pruned-kd", "dense"))
    assert pruned["macs"] < dense["macs"]
    for row in rows:
        if row["target"] != "pytorch":
            assert row["parity"]["max_abs_diff"] < targets.get_target(row["target"]).TOLERANCE["fp32"]


def _matched(ours: Detections, theirs: Detections) -> int:
    """How many of our detections the other side also made: same class, box within 1e-3, score within 1e-3."""
    found = 0
    for box, score, label in zip(ours.boxes, ours.scores, ours.labels, strict=True):
        same = (theirs.labels == label) & (np.abs(theirs.scores - score) < 1e-3)
        found += bool(np.any(same & np.all(np.abs(theirs.boxes - box) < 1e-3, axis=1)))
    return found


@pytest.mark.slow
def test_post_processing_agrees_between_pytorch_and_the_runtime(detection_run) -> None:
    """The same numpy post-processing on PyTorch's and OpenVINO's raw outputs gives the same detections
    (all but a handful at the score cut-offs, where a 1e-7 difference can swap the last kept box)."""
    _, run_dir = detection_run
    recipe = load_recipe(RECIPE, REDUCED)
    images = np.concatenate([x for x, _ in as_numpy(DATASETS.get("digit_scenes")(recipe.data).test)])[:64]
    model = load_checkpoint(run_dir / "dense" / "model.pt", recipe.model)
    reference = postprocess(TorchRunner(model, images[:1].shape).predict(images))
    total = sum(len(d.scores) for d in reference)
    assert total > 0
    detections = postprocess(targets.load_runner(run_dir / "exports" / "dense" / "openvino-fp32.xml").predict(images))
    matched = sum(_matched(ours, theirs) for ours, theirs in zip(reference, detections, strict=True))
    assert matched >= 0.98 * total, f"openvino: {matched} of {total} detections agree"
