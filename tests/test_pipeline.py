"""The pipeline end to end on the quickstart (reduced epochs and size), and its stage caching."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import compress.candidates
import targets
from compress.pipeline import Pipeline
from compress.recipe import load_recipe
from compress.results import Results
from compress.schema import PruneSpec, StageSpec
from targets.preprocess import Preprocess

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
REDUCED = [
    "data.image_size=16",
    "train.epochs=3",
    "stages.1.finetune.epochs=1",
    "baselines.scratch=[E]",  # Scratch-B trains as E does, longer (test_stages_... checks its epochs cap)
    "bench.runs=5",
    "bench.warmup=1",
    "bench.threads=[1]",
    # One precision a target, an int8 and a fp32 (CI time: the files were 60 of the ~100 s of this module's run).
    # TFLite fp32 is test_targets'; OpenVINO int8 through a pipeline is test_real_int8's (a real MobileNetV2) and
    # test_coco_pretrained's. Each TFLite file is ~15 s of conversion at any size; 64 calibration images, not 256.
    "exports=[{target: tflite, precision: [int8], calibration_samples: 64}, {target: openvino, precision: [fp32]}]",
]

# Tests of the pipeline's plumbing (caching, rows, targets), where accuracy does not matter: one epoch on 300 images.
SMALL = ["data.image_size=8", "data.train_subset=300", "train.epochs=1", "bench.runs=2"]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> tuple[dict, Path]:
    run_dir = tmp_path_factory.mktemp("runs") / "quickstart"
    return Pipeline(load_recipe(QUICKSTART, REDUCED), run_dir).run(), run_dir


@pytest.mark.slow
def test_quickstart_has_every_candidate_on_every_target(quickstart) -> None:
    results, run_dir = quickstart
    rows = results["rows"]
    expected = {
        (kind, target, precision)
        for kind in ("dense", "kd", "scratch_e")
        for target, precision in [
            ("pytorch", "fp32"),
            ("tflite", "int8"),
            ("openvino", "fp32"),
        ]
    }
    assert {(r["kind"], r["target"], r["precision"]) for r in rows} == expected
    for name in ("results.json", "report.md", "report.html", "plot.png", "recipe.resolved.yaml", "manifest.json"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "results.json").read_text()) == results
    assert not list(run_dir.rglob(".tmp-*")), "temporary files left behind"


@pytest.mark.slow
def test_quickstart_numbers_are_real(quickstart) -> None:
    results, _ = quickstart
    rows = results["rows"]
    by = {(r["kind"], r["target"], r["precision"]): r for r in rows}
    assert by["dense", "pytorch", "fp32"]["accuracy"] > 0.5  # 3 epochs at 16x16: far above 10% chance
    assert by["kd", "pytorch", "fp32"]["macs"] <= 0.6 * by["dense", "pytorch", "fp32"]["macs"]
    assert by["scratch_e", "pytorch", "fp32"]["epochs"] == by["dense", "pytorch", "fp32"]["epochs"] == 3
    # the KD candidate's pruned model before its fine-tune: measured, a model other than the fine-tuned one
    kd = by["kd", "pytorch", "fp32"]
    assert 0.0 <= kd["pruned_accuracy"] <= 1.0 and kd["pruned_accuracy"] != kd["accuracy"]
    assert all("pruned_accuracy" not in r for r in rows if (r["kind"], r["target"]) != ("kd", "pytorch"))
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["latency_ms_p50"] > 0
        # per test image right/wrong, for the report's intervals and paired tests: the accuracy, image by image
        correct = Results.parse({"schema": 1, "rows": [row]}).rows[0].correct_mask()
        assert len(correct) == row["samples"] and correct.mean() == pytest.approx(row["accuracy"], abs=1e-6)
        if row["target"] != "pytorch":
            # A 3-epoch 16x16 model has close logits, so int8 flips some: far above chance (10%), not 95%.
            assert row["size_bytes"] > 0
            assert row["parity"]["top1_agreement"] >= (0.99 if row["precision"] == "fp32" else 0.4)
        if row["precision"] == "fp32" and row["target"] != "pytorch":
            reference = by[row["kind"], "pytorch", "fp32"]
            assert abs(row["accuracy"] - reference["accuracy"]) <= 0.01


@pytest.mark.slow
def test_exported_files_load_and_predict(quickstart) -> None:
    _, run_dir = quickstart
    files = sorted(p for p in (run_dir / "exports").rglob("*") if p.suffix in (".tflite", ".xml"))
    assert len(files) == 6
    for path in files:
        runner = targets.load_runner(path)
        (logits,) = runner.predict(np.zeros((2, 3, 16, 16), np.float32))
        assert logits.shape == (2, 10)


def stage_times(run_dir: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in run_dir.glob("*/model.pt")}


def test_stages_are_cached_and_rerun_only_when_their_inputs_change(tmp_path, monkeypatch) -> None:
    overrides = [*REDUCED, *SMALL, "baselines.scratch=[E, B]", "baselines.max_epochs=1"]
    recipe = load_recipe(QUICKSTART, overrides).model_copy(update={"exports": []})
    run_dir = tmp_path / "q"
    first = Pipeline(recipe, run_dir).run()
    times = stage_times(run_dir)
    assert set(times) == {"dense", "prune", "finetune", "scratch_e", "scratch_b"}
    by_kind = {row["kind"]: row for row in first["rows"]}
    assert compress.candidates.scratch_b_epochs(1, by_kind["dense"]["macs"], by_kind["scratch_b"]["macs"]) > 1
    assert by_kind["scratch_b"]["epochs"] == 1  # B's own (> 1, above), capped by max_epochs

    second = Pipeline(recipe, run_dir).run()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(stage["cached"] for stage in manifest["stages"].values())
    assert stage_times(run_dir) == times
    assert [r["accuracy"] for r in second["rows"]] == [r["accuracy"] for r in first["rows"]]

    changed = load_recipe(QUICKSTART, [*overrides, "stages.1.finetune.epochs=2"]).model_copy(update={"exports": []})
    Pipeline(changed, run_dir).run()
    after = stage_times(run_dir)
    assert [name for name in times if after[name] != times[name]] == ["finetune"]

    Pipeline(changed, run_dir, force=True).run()
    forced = stage_times(run_dir)
    assert all(t != after[name] for name, t in forced.items())

    # Pruning code that prunes differently now (its VERSION bumped): the prune stage and what trains from it run
    # again; the Scratch baselines, keyed by the architecture alone, are loaded while it is the same.
    monkeypatch.setattr(compress.candidates, "PRUNE_VERSION", compress.candidates.PRUNE_VERSION + 1)
    Pipeline(changed, run_dir).run()
    assert sorted(name for name, t in stage_times(run_dir).items() if t != forced[name]) == ["finetune", "prune"]


@pytest.mark.slow
def test_int8_ac_rows_are_scored_on_val_with_the_tasks_metric(quickstart, tmp_path) -> None:
    """An openvino int8_ac export added to the finished run: only its rows are new, the accuracy control
    scores val outputs with the task's own metric, and the rows say what drop they were allowed.

    The drop allowed is every point (100), so NNCF validates twice and ranks no layers: at 2 pts this 16-px
    model's int8 had layers to revert, and ranking them took 200 s of the suite. test_targets checks that
    the drop is obeyed."""
    _, run_dir = quickstart
    copied = tmp_path / "quickstart"
    shutil.copytree(run_dir, copied)
    recipe = load_recipe(
        QUICKSTART,
        [
            *REDUCED,
            "exports.1.precision=[int8_ac]",
            "exports.1.max_accuracy_drop=100",
            "exports.1.calibration_samples=64",
        ],
    )
    pipeline = Pipeline(recipe, copied)
    context = pipeline.context
    dense = pipeline.candidates()[0]

    control = context.accuracy_control(100.0)
    assert len(control.samples) == len(context.labels["val"]) and control.max_drop == 100.0
    outputs = dense.outputs_on(context.splits.val)
    whole = control.score(outputs, np.arange(len(control.samples)))
    assert whole == context.score(outputs, "val")["top1"]
    first = outputs[0][:7]
    assert control.score([first], np.arange(7)) == np.mean(first.argmax(1) == context.labels["val"][:7])

    rows = [row for row in pipeline.deployment.rows([dense]) if row["precision"] == "int8_ac"]
    assert [(row["target"], row["max_accuracy_drop"]) for row in rows] == [("openvino", 100.0)]
    path = copied / "exports" / "dense" / "openvino-int8_ac.xml"
    assert targets.get_target("openvino").read_metadata(path)["max_accuracy_drop"] == "100"
    assert 0.0 < rows[0]["accuracy"] <= 1.0


def test_an_exports_key_holds_only_what_changes_its_file() -> None:
    """Calibration size and int8_ac's drop are in the rows' cache key of the precisions they shape, so a new
    calibration size re-exports int8 files and leaves fp32 ones cached."""
    from compress.deploy import export_options as _export_options
    from compress.schema import ExportSpec

    export = ExportSpec(target="openvino", precision=["fp32", "int8", "int8_ac"], calibration_samples=64)
    assert _export_options(export, "fp32") == {}
    assert _export_options(export, "int8") == {"calibration": 64}
    assert _export_options(export, "int8_ac") == {"calibration": 64, "max_accuracy_drop": 1.0}
    assert ExportSpec(target="tflite", precision=["int8"]).calibration_samples == 256


def test_a_macs_target_that_lands_far_under_says_so(tmp_path) -> None:
    """At 28 px with round_to 8, one fine step takes MobileNetV2 x0.5 from above 0.3 of its MACs to 0.256: the
    target is a budget, so pruning stops there, and the run says how far under it landed and why."""
    overrides = [
        "data.image_size=28",
        "data.train_subset=300",
        "train.epochs=1",
        "baselines.scratch=[]",
        "bench.runs=2",
        "bench.warmup=0",
    ]
    recipe = load_recipe(QUICKSTART, overrides)
    recipe = recipe.model_copy(
        update={"exports": [], "stages": [StageSpec(prune=PruneSpec(importance="l2", macs=0.3, round_to=8))]}
    )
    console = Console(record=True, width=300)
    Pipeline(recipe, tmp_path / "q", console=console).run()
    said = console.export_text()
    assert "prune: macs=0.3 landed at 0.256 of the dense macs" in said
    assert "round_to=8: a smaller one gives finer steps" in said


@pytest.mark.slow
def test_a_failed_export_is_recorded_and_the_rest_is_measured(quickstart, tmp_path, monkeypatch) -> None:
    """A new tflite fp16 export fails for every candidate: results.json and the report say which and why, every
    other row is still there, and nothing of the failure is cached (a later run tries again)."""
    from targets import tflite
    from targets.base import EdgecompError

    results, run_dir = quickstart
    copied = tmp_path / "quickstart"
    shutil.copytree(run_dir, copied)
    original = tflite.export

    def export(model, example, precision, out, *args, **kwargs):
        if precision == "fp16":
            raise EdgecompError("tflite fp16 export failed: RuntimeError: no fp16 today")
        return original(model, example, precision, out, *args, **kwargs)

    monkeypatch.setattr(tflite, "export", export)
    recipe = load_recipe(QUICKSTART, [*REDUCED, "exports.0.precision=[int8, fp16]"])
    again = Pipeline(recipe, copied, export_processes=1, console=Console(quiet=True)).run()

    assert {(r["kind"], r["target"], r["precision"]) for r in again["rows"]} == {
        (r["kind"], r["target"], r["precision"]) for r in results["rows"]
    }
    assert sorted(f["candidate"] for f in again["failed"]) == sorted({r["candidate"] for r in results["rows"]})
    assert {(f["target"], f["precision"], f["reason"]) for f in again["failed"]} == {
        ("tflite", "fp16", "tflite fp16 export failed: RuntimeError: no fp16 today")
    }
    assert json.loads((copied / "results.json").read_text())["failed"] == again["failed"]
    report = (copied / "report.md").read_text()
    assert "## Failed" in report and report.count("no fp16 today") == len(again["failed"])
    assert not list(copied.rglob("tflite-fp16.*"))


@pytest.mark.slow
def test_sensitivity_ranks_the_dense_models_groups_through_the_targets_int8(quickstart, tmp_path) -> None:
    """`edgecomp sensitivity`'s work: the cached dense model, the val split and the task's metric, each group
    alone in float through the target's own int8 export, best first."""
    from targets.base import EdgecompError

    _, run_dir = quickstart
    copied = tmp_path / "quickstart"
    shutil.copytree(run_dir, copied)
    pipeline = Pipeline(load_recipe(QUICKSTART, REDUCED), copied, console=Console(quiet=True))
    search = pipeline.sensitivity("onnx", ["features.1*", "classifier*"])
    dense = pipeline.candidates()[0]
    dense_val = pipeline.context.score(dense.outputs_on(pipeline.context.splits.val), "val")["top1"]
    assert search.reference == pytest.approx(dense_val)
    assert sorted(group for group, _ in search.ranking) == ["classifier*", "features.1*"]
    assert all(0 <= v <= 1 for _, v in search.ranking)
    assert [g for g, _ in search.sqnr_db] == [g for g, _ in search.ranking]  # ranked by outputs' SQNR
    assert search.sqnr_db[0][1] >= search.sqnr_db[1][1]
    assert search.keep_float == () and search.final == search.int8
    with pytest.raises(EdgecompError, match="no int8 on target 'pytorch'"):
        pipeline.sensitivity("pytorch")


def record_times(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in (run_dir / "exports").rglob("*.json")}


def test_rows_measured_on_another_device_or_runtime_version_are_measured_again(tmp_path, monkeypatch) -> None:
    """A resumed run reuses trained stages anywhere, but not measurements: a row's record is keyed by the device
    and the converter and runtime versions it was measured with. Latencies are never reused: every run times all
    its rows together, recorded or not."""
    import compress.cache
    import compress.deploy

    timed: list[list[str]] = []
    real = compress.deploy.time_rows

    def spy(rows, *args, **kwargs):
        timed.append([row["candidate"] for group in rows for row in group])
        return real(rows, *args, **kwargs)

    monkeypatch.setattr(compress.deploy, "time_rows", spy)
    overrides = [*REDUCED, *SMALL, "baselines.scratch=[]"]
    recipe = load_recipe(QUICKSTART, overrides).model_copy(update={"exports": []})
    run_dir = tmp_path / "q"
    Pipeline(recipe, run_dir).run()
    stages, records = stage_times(run_dir), record_times(run_dir)
    assert len(records) == 2  # dense and pruned-kd, PyTorch rows

    again = Pipeline(recipe, run_dir).run()
    assert record_times(run_dir) == records  # same machine: every row's accuracy from its record
    assert timed == [["dense", "pruned-kd"]] * 2  # and every row timed again, in one interleaving
    assert all(row["latency_ms_p50"] > 0 for row in again["rows"])

    other = {"cpu": "Ampere Altra", "cores": 4, "machine": "aarch64"}
    monkeypatch.setattr(compress.cache, "device_info", lambda: other)
    Pipeline(recipe, run_dir).run()
    moved = record_times(run_dir)
    assert stage_times(run_dir) == stages
    assert all(moved[name] != records[name] for name in records)
    assert (
        json.loads((run_dir / "exports" / "dense" / "pytorch-fp32.json").read_text())["inputs"]["measured_with"][
            "device"
        ]
        == other
    )

    monkeypatch.setattr(compress.cache, "runtime_versions", lambda: {"onnxruntime": "99.0"})
    Pipeline(recipe, run_dir).run()
    assert all(t != moved[name] for name, t in record_times(run_dir).items())
    assert stage_times(run_dir) == stages


def test_a_new_target_is_one_module_and_one_table_line(tmp_path, monkeypatch) -> None:
    """tests/toy_target.py (TorchScript files run by torch.jit) and its line in TARGETS: a recipe exports to it,
    the run measures it like any other target, and the report shows it."""
    from compress.schema import ExportSpec
    from targets import TargetSpec

    monkeypatch.setitem(targets.TARGETS, "toy", TargetSpec("toy", "toy_target", ".toyjit", ("fp32",)))
    overrides = [*REDUCED, *SMALL, "baselines.scratch=[]"]
    recipe = load_recipe(QUICKSTART, overrides).model_copy(
        update={"exports": [ExportSpec(target="toy", precision=["fp32"])]}
    )
    results = Pipeline(recipe, tmp_path / "q", console=Console(quiet=True), export_processes=1).run()

    rows = {(r["candidate"], r["target"]): r for r in results["rows"]}
    toys = [r for r in results["rows"] if r["target"] == "toy"]
    assert [r["candidate"] for r in toys] == ["dense", "pruned-kd"] and not results["failed"]
    for row in toys:
        assert row["parity"]["max_abs_diff"] <= 1e-5 and row["runtime"].startswith("torch.jit")
        assert row["accuracy"] == rows[row["candidate"], "pytorch"]["accuracy"] and row["latency_ms_p50"] > 0
    metadata = targets.get_target("toy").read_metadata(tmp_path / "q" / "exports" / "dense" / "toy-fp32.toyjit")
    assert metadata["candidate"] == "dense" and metadata["outputs"] == "logits"
    assert json.loads(metadata["classes"]) == [str(digit) for digit in range(10)]  # the data's names for its outputs
    digits = Preprocess((8, 8), (0.5,) * 3, (0.5,) * 3, colour="grey")  # the file says how its inputs were made
    assert Preprocess.from_metadata(metadata) == digits
    assert "| dense | dense | toy | fp32 |" in (tmp_path / "q" / "report.md").read_text()


def test_a_latency_target_prunes_to_what_the_target_measured(tmp_path, monkeypatch) -> None:
    """The plumbing of `prune: [{latency: 0.5, measured_on: onnx}, {... allocation: latency}, {macs: 0.5}]` with the
    measurement replaced by a latency the test controls (linear in MACs): the stage keeps the search, its key holds
    the machine, the lineage says what was asked and reached (and that a latency table shared the channels out),
    and the MACs-targeted alternative is a candidate beside it, each named by its target. compress.prune's tests
    check the search; `make bench-latency` measures real runtimes."""
    from contextlib import contextmanager

    import compress.candidates
    from compress.measure import count
    from compress.prune import ProbeTiming

    @contextmanager
    def timed_against(reference, target, example, bench, log):
        assert target == "onnx" and bench.runs == 2
        dense = count(reference, example)[0]  # each probe is timed with the dense model: 1.1 ms

        yield lambda model: ProbeTiming(0.1 + count(model, example)[0] / dense, 1.1)

    monkeypatch.setattr(compress.candidates, "timed_against", timed_against)
    overrides = [*REDUCED, *SMALL, "baselines.scratch=[]"]
    recipe = load_recipe(QUICKSTART, overrides).model_copy(update={"exports": []})
    recipe = recipe.model_copy(
        update={
            "stages": [
                StageSpec(
                    prune=[
                        PruneSpec(latency=0.5, measured_on="onnx"),
                        PruneSpec(latency=0.5, measured_on="onnx", allocation="latency"),
                        PruneSpec(macs=0.5),
                    ]
                ),
                recipe.stages[1],
            ]
        }
    )
    results = Pipeline(recipe, tmp_path / "q", console=Console(quiet=True)).run()
    stage = json.loads((tmp_path / "q" / "prune-latency0.5-on-onnx" / "stage.json").read_text())
    found = stage["metrics"]["latency"]
    assert found["reached"] <= found["asked"] == 0.5 and len(found["probes"]) == 6 and found["dense_ms"] == 1.1
    assert stage["inputs"]["measured_with"]["device"] and stage["metrics"]["macs_fraction"] <= 0.45 + 1e-6
    assert stage["inputs"]["bench"]["rounds"] == 100  # the probes are timed in rounds too
    assert stage["metrics"]["macs_fraction"] == pytest.approx(found["macs"], abs=1e-4)  # the probe's ratio again
    kd = {row["candidate"]: row for row in results["rows"] if row["kind"] == "kd"}
    assert (
        sorted(kd)
        == [
            "pruned-kd-latency0.5-on-onnx",
            "pruned-kd-latency0.5-on-onnx-per-layer",
            "pruned-kd-macs0.5",
        ]
        and not results["failed"]
    )
    per_layer = kd["pruned-kd-latency0.5-on-onnx-per-layer"]["lineage"]
    assert any("shared out by a latency table of" in step for step in per_layer), per_layer
    assert any(
        step.startswith("prune(l2, latency=0.5 on onnx: reached 0.4") and "ms vs dense 1.100 ms, timed together" in step
        for step in kd["pruned-kd-latency0.5-on-onnx"]["lineage"]
    )
    assert "prune(l2, macs=0.5, 1 step)" in kd["pruned-kd-macs0.5"]["lineage"]
    assert 0.4 < kd["pruned-kd-macs0.5"]["macs"] / results["rows"][0]["macs"] <= 0.5


def test_seeds_train_measure_and_report_every_candidate_once_per_seed(tmp_path, monkeypatch) -> None:
    """`train.seeds: [0, 1]`: dense, pruned+KD, Scratch-E and Scratch-B each trained once per seed, in stages of
    their own; every seed's model exported and measured (rows carry the seed); the report shows each candidate's
    mean ± sd over the two. The first seed's stages are a one-seed run's: the recipe with `seed: 0` then reuses
    every stage and row. The toy TorchScript target (tests/toy_target.py) stands in for a converter, which the other
    tests cover."""
    import statistics

    import torch

    from compress.schema import ExportSpec
    from targets import TargetSpec

    monkeypatch.setitem(targets.TARGETS, "toy", TargetSpec("toy", "toy_target", ".toyjit", ("fp32",)))
    overrides = [*REDUCED, "data.image_size=8", "data.train_subset=400", "train.epochs=1"]
    overrides += ["baselines.scratch=[E, B]", "baselines.max_epochs=1"]
    toy = {"exports": [ExportSpec(target="toy", precision=["fp32"])]}
    recipe = load_recipe(QUICKSTART, [*overrides, "train.seed=null", "train.seeds=[0, 1]"]).model_copy(update=toy)
    run_dir = tmp_path / "q"
    results = Pipeline(recipe, run_dir, console=Console(quiet=True), export_processes=1).run()

    kinds = ("dense", "kd", "scratch_e", "scratch_b")
    assert results["seeds"] == [0, 1] and "seed" not in results and not results["failed"]
    assert sorted((r["kind"], r["target"], r["seed"]) for r in results["rows"]) == sorted(
        (kind, target, seed) for kind in kinds for target in ("pytorch", "toy") for seed in (0, 1)
    )
    first = {"dense", "prune", "finetune", "scratch_e", "scratch_b"}
    assert set(stage_times(run_dir)) == first | {f"{name}-seed1" for name in first}
    for name in first - {"prune"}:  # each seed's weights are its own
        zero, one = (
            torch.load(run_dir / stage / "model.pt", weights_only=True)["state_dict"]
            for stage in (name, f"{name}-seed1")
        )
        assert any(not torch.equal(zero[k], one[k]) for k in zero), name
    for candidate in ("dense", "pruned-kd", "scratch-e", "scratch-b"):
        for folder in (candidate, f"{candidate}-seed1"):
            assert (run_dir / "exports" / folder / "toy-fp32.toyjit").is_file()

    md = (run_dir / "report.md").read_text()
    for candidate, kind in zip(("dense", "pruned-kd", "scratch-e", "scratch-b"), kinds, strict=True):
        accuracies = [r["accuracy"] for r in results["rows"] if (r["kind"], r["target"]) == (kind, "toy")]
        mean, sd = 100 * statistics.fmean(accuracies), 100 * statistics.stdev(accuracies)
        assert f"| {candidate} | " in md and f"| toy | fp32 | 1 | {mean:.1f} | ± {sd:.1f} (n=2) |" in md
    assert "top-1 % (mean over seeds)" in md and "- seeds: 0, 1" in md

    stages, records = stage_times(run_dir), record_times(run_dir)
    one_seed = load_recipe(QUICKSTART, [*overrides, "train.seed=0"]).model_copy(update=toy)
    alone = Pipeline(one_seed, run_dir, console=Console(quiet=True), export_processes=1).run()
    assert stage_times(run_dir) == stages and record_times(run_dir) == records  # all of seed 0 reused
    assert all("seed" not in row for row in alone["rows"]) and alone["seed"] == 0
    assert sorted((r["candidate"], r["target"], r["accuracy"]) for r in alone["rows"]) == sorted(
        (r["candidate"], r["target"], r["accuracy"]) for r in results["rows"] if r["seed"] == 0
    )


def test_each_seed_sees_its_own_train_spec_and_calibration_images(tmp_path) -> None:
    """`RunContext.for_seed(s)`: seed 0 of `seeds: [0, 1]` is the one-seed run of seed 0 (train spec, hence stage
    keys, and int8 calibration images); seed 1 draws other calibration images."""
    from compress.run_context import RunContext

    quiet = Console(quiet=True)
    several = RunContext.create(
        load_recipe(QUICKSTART, [*REDUCED, "train.seed=null", "train.seeds=[0, 1]"]), tmp_path / "a", quiet
    )
    alone = RunContext.create(load_recipe(QUICKSTART, REDUCED), tmp_path / "b", quiet)
    zero, one = several.for_seed(0), several.for_seed(1)
    assert zero.recipe.train == alone.recipe.train and one.recipe.train == alone.recipe.train.with_seed(1)
    assert np.array_equal(zero.calibration(16), alone.calibration(16))
    assert not np.array_equal(one.calibration(16), zero.calibration(16))
    assert np.array_equal(several.calibration(16), zero.calibration(16))  # `seed` is the first of `seeds`
