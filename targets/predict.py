"""Outputs of one model file on a batch of inputs, in its own runtime, and their agreement with a reference.

Imports no torch (only numpy and the runtime that opens the file), so it runs on the device itself, or
on an emulated one, against outputs saved on another machine:

    python -m targets.predict model.tflite --input x.npy --output x86.npz                    # on the PC
    python -m targets.predict model.tflite --input x.npy --output arm.npz --reference x86.npz  # on the board

It prints one JSON object: the runtime, the machine, how many inputs ran, and with ``--reference`` the max
abs output difference and the top-1 agreement (argmax of the first output); it exits 1 when that agreement
is below ``--min-agreement``. The .npz holds ``output_0``, ``output_1``, ... as float32, in the model's order.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from targets import load_runner
from targets.base import EdgecompError
from targets.fileio import atomic_path


def predict_file(model: str | Path, x: np.ndarray, threads: int | None = None) -> tuple[list[np.ndarray], str]:
    """All outputs of `model` on the float32 NCHW batch `x`, and the "<package> <version>" that ran it."""
    runner = load_runner(model, threads=threads)
    return runner.predict(x), runner.runtime


def agreement(reference: list[np.ndarray], outputs: list[np.ndarray]) -> dict[str, float]:
    """How far `outputs` are from `reference`: max abs difference over every output, and the share of
    inputs whose argmax of the first output (a classifier's top-1 class) is the same."""
    if [r.shape for r in reference] != [o.shape for o in outputs]:
        raise EdgecompError(
            f"outputs of shapes {[o.shape for o in outputs]} cannot be compared with "
            f"a reference of shapes {[r.shape for r in reference]}"
        )
    pairs = list(zip(reference, outputs, strict=True))
    diff = max(float(np.max(np.abs(r.astype(np.float64) - o), initial=0.0)) for r, o in pairs)
    first, out = (a.reshape(len(a), -1).argmax(axis=1) for a in pairs[0])
    top1 = np.mean(first == out) if len(first) else 1.0
    return {"max_abs_diff": diff, "top1_agreement": float(top1)}


def save_outputs(path: str | Path, outputs: list[np.ndarray]) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, **{f"output_{i}": out for i, out in enumerate(outputs)})


def load_outputs(path: str | Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"output_{i}"] for i in range(len(data.files))]


def run(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """Predict, save, compare; the JSON summary and whether the outputs agree with the reference (if any)."""
    x = np.load(args.input)
    start = time.perf_counter()
    outputs, runtime = predict_file(args.model, x, threads=args.threads)
    summary: dict[str, Any] = {
        "model": str(args.model),
        "runtime": runtime,
        "machine": platform.machine(),
        "n": len(x),
        "output_shapes": [list(out.shape) for out in outputs],
        "seconds": round(time.perf_counter() - start, 3),
    }
    if args.output:
        save_outputs(args.output, outputs)
    if args.reference is None:
        return summary, True
    summary.update(agreement(load_outputs(args.reference), outputs))
    summary["agrees"] = summary["top1_agreement"] >= args.min_agreement
    return summary, summary["agrees"]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m targets.predict", description="Outputs of a .tflite or OpenVINO .xml model on inputs in a .npy."
    )
    parser.add_argument("model", help="model file (.tflite, or .xml with its .bin beside it)")
    parser.add_argument("--input", required=True, help=".npy of float32 NCHW inputs, normalised as for the model")
    parser.add_argument("--output", help=".npz to write the outputs to (output_0, output_1, ...)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--reference", help=".npz of outputs of the same file elsewhere (e.g. on x86) to compare with")
    parser.add_argument(
        "--min-agreement", type=float, default=1.0, help="top-1 agreement below which to exit 1 (default: 1.0)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        summary, agrees = run(args)
    except (EdgecompError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0 if agrees else 1


if __name__ == "__main__":
    sys.exit(main())
