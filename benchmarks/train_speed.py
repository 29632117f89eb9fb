"""Seconds per epoch of a recipe's dense stage, per training mode (device, mixed precision, memory layout).

Runs the recipe's dense stage only (no pruning, exports or baselines) through the pipeline, as
`edgecomp run` does, once per mode, in a fresh temporary run directory each time, and prints one JSON
object: per mode the wall time of every epoch (the first includes CUDA's warm-up), the median of the
others, the time one epoch of the data loader alone takes, the validation score the stage records and the
test score of the trained model (PyTorch fp32 on the CPU, as the report's eager row).

    python benchmarks/train_speed.py recipes/quickstart.yaml --device cuda --mode fp32 --mode bf16 --mode cl
    python benchmarks/train_speed.py recipes/quickstart.yaml --device cpu --epochs 2 --mode fp32

A mode is `fp32`, `bf16` or `fp16` (train.amp), with `+cl` for train.channels_last (`cl` alone is fp32 +
channels_last) and `+bench` for cudnn.benchmark (autotuned convolutions).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import compress.candidates as pipeline_module
import compress.train as train_module
from compress.candidates import CandidateBuilder
from compress.data import make_loader
from compress.pipeline import Pipeline
from compress.recipe import load_recipe
from compress.train import cpu_threads, predict


def parse_mode(mode: str) -> dict:
    parts = set(mode.split("+"))
    amp = next((p for p in parts if p in ("bf16", "fp16")), "none")
    unknown = parts - {"fp32", "bf16", "fp16", "cl", "bench"}
    if unknown:
        raise SystemExit(f"mode {mode!r}: unknown part(s) {', '.join(sorted(unknown))}")
    return {"amp": amp, "channels_last": "cl" in parts, "cudnn_benchmark": "bench" in parts}


def data_epoch_seconds(dataset, batch_size: int) -> float:
    """One epoch of the loader alone (what the training loop waits for between steps)."""
    started = time.perf_counter()
    for _ in make_loader(dataset, batch_size, shuffle=True, seed=0):
        pass
    return time.perf_counter() - started


def run_mode(recipe_path: str, overrides: list[str], device: str, mode: str) -> dict:
    settings = parse_mode(mode)
    torch.backends.cudnn.benchmark = settings["cudnn_benchmark"]
    recipe = load_recipe(
        recipe_path,
        overrides=[
            *overrides,
            f"train.device={device}",
            f"train.amp={settings['amp']}",
            f"train.channels_last={str(settings['channels_last']).lower()}",
            "stages=[]",
            "exports=[]",
            "baselines.scratch=[]",
        ],
    )
    marks: list[float] = []
    real_batches, real_fit = train_module._epoch_batches, pipeline_module.fit

    def timed_batches(*args, **kwargs):
        marks.append(time.perf_counter())
        return real_batches(*args, **kwargs)

    def timed_fit(*args, **kwargs):
        try:
            return real_fit(*args, **kwargs)
        finally:
            marks.append(time.perf_counter())

    train_module._epoch_batches, pipeline_module.fit = timed_batches, timed_fit
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            pipe = Pipeline(recipe, Path(run_dir), force=True)
            context = pipe.context
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            dense = CandidateBuilder(context, pipe.stages).dense()
            stage_seconds = time.perf_counter() - started
            metrics = pipe.stages.manifest["dense"]
            test = pipe.task.score(*predict(dense.model, context.splits.test))
            data_s = data_epoch_seconds(context.splits.train, recipe.data.batch_size)
    finally:
        train_module._epoch_batches, pipeline_module.fit = real_batches, real_fit
    epochs = [round(b - a, 4) for a, b in itertools.pairwise(marks)]
    metric = pipe.task.metric
    return {
        "mode": mode,
        **settings,
        "epochs": len(epochs),
        "epoch_s": epochs,
        "epoch_s_median_after_first": round(statistics.median(epochs[1:] or epochs), 4),
        "data_only_epoch_s": round(data_s, 4),
        "stage_s": round(stage_seconds, 2),
        "final_loss": metrics["final_loss"],
        f"val_{metric}": metrics[f"val_{metric}"],
        f"test_{metric}": round(test[metric], 6),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--mode", action="append", help="fp32 | bf16 | fp16, +cl, +bench (repeatable)")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override KEY=VALUE")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    overrides = [*args.overrides, *([f"train.epochs={args.epochs}"] if args.epochs else [])]
    results = {
        "recipe": args.recipe,
        "overrides": overrides,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available() else "cpu",
        "cpu_threads": cpu_threads(),
        "torch_threads": torch.get_num_threads(),
        "modes": [],
    }
    for mode in args.mode or ["fp32"]:
        results["modes"].append(run_mode(args.recipe, overrides, args.device, mode))
        print(json.dumps(results["modes"][-1]), file=sys.stderr, flush=True)
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
