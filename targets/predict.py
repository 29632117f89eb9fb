"""Outputs of one model file in its own runtime: on a batch of inputs against a reference, or on photos.

Imports no torch (only numpy, the runtime that opens the file, and Pillow for photos), so it runs on the
device itself, or on an emulated one:

    python -m targets.predict model.tflite --input x.npy --output x86.npz                    # on the PC
    python -m targets.predict model.tflite --input x.npy --output arm.npz --reference x86.npz  # on the board
    python -m targets.predict model.tflite --images photos/ --top-k 5 --labels labels.txt   # a classifier

With ``--input`` it prints one JSON object: the runtime, the machine, how many inputs ran, and with
``--reference`` the max abs output difference and the top-1 agreement (argmax of the first output); it exits
1 when that agreement is below ``--min-agreement``. The .npz holds ``output_0``, ``output_1``, ... as float32,
in the model's order.

With ``--images`` it classifies every image of a folder (.jpg, .jpeg, .png, .bmp, .webp, sorted by name)
read with the preprocessing the file's metadata records (`targets.preprocess`: edgecomp writes it into
every file it exports), and prints each image's top-k classes and their probabilities (softmax of the
logits), or with ``--json`` one JSON object. A file made elsewhere records none: say it with ``--size``,
``--mean``, ``--std`` (and ``--crop-pct`` for a resize-then-centre-crop); these also override a recorded one.
Classes are named as the file's metadata names them (``classes``: edgecomp writes the data's class names,
e.g. an imagefolder's folders or ``data.labels``' names), or as ``--labels`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from targets import get_target, load_runner, target_for_file
from targets.base import EdgecompError
from targets.fileio import atomic_path
from targets.preprocess import Preprocess, read_images

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGES_AT_ONCE = 64  # decoded per batch: 64 x 3 x 224 x 224 float32 is 39 MB


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


# -- photos -----------------------------------------------------------------------------------------------


def image_files(folder: str | Path) -> list[Path]:
    """The images directly in `folder` (IMAGE_SUFFIXES, any case), sorted by name; none is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgecompError(f"{folder}: no such folder")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise EdgecompError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    return found


def file_preprocess(model: str | Path, metadata: dict[str, str], overrides: dict[str, Any]) -> Preprocess:
    """The preprocessing recorded in `metadata`, with `overrides` (the command line's) applied; a file
    without a record needs size, mean and std from the command line."""
    recorded = Preprocess.from_metadata(metadata)
    if recorded is not None:
        return dataclasses.replace(recorded, **overrides) if overrides else recorded
    missing = [f"--{name}" for name in ("size", "mean", "std") if name not in overrides]
    if missing:
        raise EdgecompError(
            f"{model}: records no preprocessing (not exported by edgecomp, or by an older one): pass "
            f"--size H [W], --mean R G B and --std R G B (pixels in [0, 1]), and --crop-pct for a "
            f"resize-then-centre-crop ({', '.join(missing)} missing)"
        )
    return Preprocess(**overrides)


def check_classifier(model: str | Path, metadata: dict[str, str], outputs: list[np.ndarray] | None = None) -> None:
    """A classifier's file: "outputs" is "logits" where recorded, and its outputs (when given) one 2-D array."""
    what = metadata.get("outputs")
    if what is not None and what != "logits":
        raise EdgecompError(f"{model}: its outputs are {what!r}, not a classifier's logits: --images classifies")
    if outputs is not None and (len(outputs) != 1 or outputs[0].ndim != 2):
        shapes = [list(out.shape) for out in outputs]
        raise EdgecompError(f"{model}: outputs of shapes {shapes} are not a classifier's logits [N, classes]")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def read_labels(path: str | Path, classes: int) -> list[str]:
    """One class name a line, as many as the model has classes."""
    names = Path(path).read_text(encoding="utf-8").splitlines()
    if len(names) != classes:
        extra = " (a list that starts with a background class: drop its first line)" * (len(names) == classes + 1)
        raise EdgecompError(f"{path}: {len(names)} names for a model of {classes} classes: one a line, in order{extra}")
    return names


def file_labels(metadata: dict[str, str], classes: int) -> list[str] | None:
    """The class names edgecomp wrote into the file (metadata "classes", in output order), where it wrote as many
    as the model has classes."""
    try:
        names = json.loads(metadata.get("classes", "null"))
    except json.JSONDecodeError:
        return None
    fits = isinstance(names, list) and len(names) == classes
    return [str(name) for name in names] if fits else None


def classify(args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    """Every image of `args.images` through the file: its top-k classes and probabilities, as JSON."""
    model = Path(args.model)
    if not model.is_file():
        raise EdgecompError(f"{model}: no such file")
    if args.top_k < 1:
        raise EdgecompError(f"--top-k {args.top_k}: at least 1")
    paths = image_files(args.images)
    metadata = get_target(target_for_file(model).name).read_metadata(model)
    check_classifier(model, metadata)
    preprocess = file_preprocess(model, metadata, overrides)
    start = time.perf_counter()
    runner = load_runner(model, threads=args.threads)
    logits = []
    for first in range(0, len(paths), IMAGES_AT_ONCE):  # a folder of thousands of photos fits a small board
        outputs = runner.predict(read_images(paths[first : first + IMAGES_AT_ONCE], preprocess))
        check_classifier(model, metadata, outputs)
        logits.append(outputs[0])
    probabilities, runtime = softmax(np.concatenate(logits)), runner.runtime
    count = probabilities.shape[1]
    labels = read_labels(args.labels, count) if args.labels else file_labels(metadata, count)
    k = min(args.top_k, count)
    images = []
    for path, row in zip(paths, probabilities, strict=True):
        top = np.argsort(-row, kind="stable")[:k]
        classes = [{"class": int(c), "probability": float(row[c])} for c in top]
        if labels is not None:
            classes = [{**entry, "label": labels[entry["class"]]} for entry in classes]
        images.append({"image": path.name, "top": classes})
    return {
        "model": str(model),
        "runtime": runtime,
        "machine": platform.machine(),
        "preprocess": dataclasses.asdict(preprocess),
        "seconds": round(time.perf_counter() - start, 3),
        "images": images,
    }


def as_text(result: dict[str, Any]) -> str:
    """The classification for people: a header line, then one line per image."""
    preprocess = Preprocess(**result["preprocess"])
    lines = [f"{result['model']} ({result['runtime']}, {result['machine']}); inputs {preprocess.describe()}"]
    for image in result["images"]:
        top = ", ".join(
            f"{entry['class']}" + (f" {entry['label']}" if "label" in entry else "") + f" {entry['probability']:.3f}"
            for entry in image["top"]
        )
        lines.append(f"{image['image']}: {top}")
    return "\n".join(lines)


# -- command line -----------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m targets.predict",
        description="Outputs of a .tflite, OpenVINO .xml or .onnx model on inputs in a .npy, or its classes of photos.",
    )
    parser.add_argument("model", help="model file (.tflite, .onnx, or .xml with its .bin beside it)")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--input", help=".npy of float32 NCHW inputs, normalised as for the model")
    given.add_argument("--images", help="folder of photos to classify with the file's own preprocessing")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    arrays = parser.add_argument_group("with --input")
    arrays.add_argument("--output", help=".npz to write the outputs to (output_0, output_1, ...)")
    arrays.add_argument("--reference", help=".npz of outputs of the same file elsewhere (e.g. on x86) to compare with")
    arrays.add_argument(
        "--min-agreement", type=float, default=1.0, help="top-1 agreement below which to exit 1 (default: 1.0)"
    )
    photos = parser.add_argument_group("with --images")
    photos.add_argument("--top-k", type=int, default=5, help="classes to print per image (default: 5)")
    photos.add_argument(
        "--labels", help="text file of class names, one a line in class order (default: the names the file records)"
    )
    photos.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    photos.add_argument("--size", type=int, nargs="+", metavar="PX", help="input H [W] (files made elsewhere)")
    photos.add_argument(
        "--mean", type=float, nargs="+", help="per channel, pixels in [0, 1] (ImageNet: 0.485 0.456 0.406; TF: 0.5)"
    )
    photos.add_argument("--std", type=float, nargs="+", help="per channel (ImageNet: 0.229 0.224 0.225; TF: 0.5)")
    photos.add_argument("--crop-pct", type=float, help="resize to size / crop-pct, then crop the centre (e.g. 0.875)")
    return parser.parse_args(argv)


def preprocess_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The Preprocess fields the command line sets: --size H [W], --mean/--std (one value: every channel)."""
    overrides: dict[str, Any] = {}
    if args.size is not None:
        overrides["size"] = _pair(args.size)
    for name in ("mean", "std"):
        values = getattr(args, name)
        if values is not None:
            overrides[name] = tuple(values) * 3 if len(values) == 1 else tuple(values)
    if args.crop_pct is not None:
        overrides.update(resize="centre_crop", crop_pct=args.crop_pct)
    return overrides


def _pair(values: Sequence[int]) -> tuple[int, int]:
    if len(values) not in (1, 2):
        raise EdgecompError(f"--size takes H or H W, not {len(values)} values")
    return (values[0], values[-1])


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        if args.images is not None:
            result = classify(args, preprocess_overrides(args))
            print(json.dumps(result) if args.json else as_text(result))
            return 0
        summary, agrees = run(args)
    except (EdgecompError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0 if agrees else 1


if __name__ == "__main__":
    sys.exit(main())
