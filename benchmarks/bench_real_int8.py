"""int8 on real ImageNet networks: agreement with fp32 on real photos and latency, per target and int8 setting.

`make bench-real` runs this. For each real model in ../shared/real (TF-slim MobileNetV2 1.0 and
MobileNetV3-Small 1.0, input in [-1, 1]), it exports fp32 and int8 files through every target in
``targets.TARGETS`` that makes int8 (with and without the `--keep-float` layers), calibrated on the
even-numbered COCO128 photos (64), and prints per file: top-1 agreement with the fp32 PyTorch model on all
128 photos and on the 64 held-out (odd-numbered) ones, the logits' SQNR against fp32 in dB and the photos
whose top two outputs tie, p50 latency at `--threads`, the int8/fp32 latency
ratio, and the layers kept in float; next to the vendor's own uint8 .tflite file of the same weights, fed the
photos' own uint8 pixels as its makers do. Each model's first row is the agreement's noise floor: the fp32
model against itself with every pixel moved by at most one grey level (an int8 file that reads like it cannot
be told from fp32 on these photos; compare such files by SQNR).
Photos: shorter side 256, centre crop 224 (`targets.preprocess`), or with ``--resize squash`` the whole photo
scaled to 224x224: the preprocessing alone moves agreement by points (the vendor's MobileNetV2 file: 93.8% and
95.3%; the fp32 model against itself with pixels ±1: 93.4% and 94.7%). One photo is 0.78 points of 128.

With ``--views``, agreement is measured on 14 views of each photo (1,792 inputs: shorter side 224, 256 and 320,
the centre of each and the corners at 256, each mirrored), calibration unchanged: a point there is a difference,
where on 128 photos it is one or two near-ties.

With ``--calibration N`` above 64, int8 calibrates on N of the even photos' 896 views (a seeded draw) instead of
their 64 centre crops: a recipe calibrates on 256 by default, and MobileNetV2's OpenVINO int8 read 0.7 dB (NNCF's
mix of estimators) to 1.3 dB (mse) more logit SQNR calibrated on 256 views than on the 64 photos.

With ``--ac``, int8_ac rows too: accuracy control holding agreement on the 64 calibration photos to `AC_BAR`
(held-out agreement says whether that generalises), the layers it kept in float listed.

With ``--timm``, the models are timm's (`timm_twin`: the same weights in ``mobilenetv2_100`` with TF padding and
``tf_mobilenetv3_small_100``, timm's modules and graphs), their keep-float layer by timm's name.

With ``--activations NAME...`` (or ``all``), the int8 rows are the target's default and one per other activation
range estimator it has among those (`targets.base.ACTIVATION_ESTIMATORS`, the recipe's ``activations``).

    python benchmarks/bench_real_int8.py [--real ../shared/real] [--threads 2] [--runs 50] [--models ...] [--ac]
        [--timm] [--activations all] [--views] [--calibration 256] [--keep-float features.11 features.1]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import targets
from targets.accuracy_control import sqnr_db
from targets.base import ACTIVATION_ESTIMATORS, AccuracyControl
from targets.bench import benchmark
from targets.device import cpu_model
from targets.preprocess import DEFAULT_CROP_PCT, NORMALIZE, RESIZES, Preprocess, pillow, read_images

REAL = Path(__file__).resolve().parents[2] / "shared" / "real"
VENDOR = {
    "mobilenet_v2": "mobilenet_v2_1.0_224.uint8.tflite",
    "mobilenet_v3_small": "mobilenet_v3_small_1.0_224.uint8.tflite",
}
# Layers kept in float per model for the keep-float rows: the block whose int8 activations cost the most in a
# torch simulation of TFLite's int8 (each block's quantizers alone: features.11 moved the logits' MSE 0.235,
# every other block < 0.035): MobileNetV3-Small's last inverted residual, whose 576-channel expand output
# spans [-46, 26] in one per-tensor range.
KEEP_FLOAT = {"mobilenet_v2": [], "mobilenet_v3_small": ["features.11"]}
# With --timm: the same weights in timm's architectures (`timm_twin`), and features.11 by timm's name.
TIMM = {
    "mobilenet_v2": ("mobilenetv2_100", {"pad_type": "same"}),
    "mobilenet_v3_small": ("tf_mobilenetv3_small_100", {}),
}
TIMM_KEEP_FLOAT = {"mobilenet_v2": [], "mobilenet_v3_small": ["blocks.4.2"]}
# With --ac: int8_ac rows, whose accuracy control holds top-1 agreement with fp32 on the 64 calibration photos
# to these percentages (issue #16's bars), keeping the costliest layer groups in float.
AC_BAR = {"mobilenet_v2": 94.0, "mobilenet_v3_small": 85.0}
VIEWS = 14  # per photo with --views (`photo_views`)
MEAN, STD = (np.array(v, np.float32).reshape(1, 3, 1, 1) for v in NORMALIZE["tf"])  # TF-slim: [-1, 1]
console = Console(width=160)  # the table is read in logs and CI output too, not only in a terminal


@dataclass(frozen=True)
class Row:
    model: str
    target: str
    setting: str
    agree_all: float
    agree_held_out: float
    sqnr_db: float  # logits' signal-to-quantization-noise ratio against fp32 (nan: not logits)
    ties: int  # photos whose top two outputs are equal: int8 logits that cannot name one class
    p50_ms: float
    fp32_p50_ms: float
    export_s: float
    kept: str = ""  # layers kept in float


@dataclass(frozen=True)
class Photos:
    """What agreement is measured on (`x`), what int8 is calibrated on, and which of `x` are held out."""

    x: np.ndarray  # (N, 3, 224, 224) float32, the TF-slim normalisation
    calibration: np.ndarray  # the even-numbered photos' centre crops (with --calibration N > 64: N of their views)
    held_out: np.ndarray  # bool (N,): from the odd-numbered photos, never calibrated on


def read_photos(paths: list[Path], resize: str, views: bool, calibration: int = 0) -> Photos:
    """The photos as `--resize` reads them, or with `views` as `VIEWS` per photo; int8 calibrates on the even
    photos read as `--resize` reads them, or on `calibration` (> their number) of their views, a seeded draw."""
    crop_pct = DEFAULT_CROP_PCT if resize == "centre_crop" else None
    preprocess = Preprocess((224, 224), *NORMALIZE["tf"], resize, crop_pct)
    view_pixels, owner = all_views(paths) if views else (None, None)
    even = read_images(paths[::2], preprocess)
    if calibration > len(even):
        even_views = view_pixels[owner % 2 == 0] if views else all_views(paths[::2])[0]  # each photo read once
        if calibration > len(even_views):
            raise SystemExit(f"--calibration {calibration}: the even photos have {len(even_views)} views")
        drawn = np.sort(np.random.default_rng(0).choice(len(even_views), calibration, replace=False))
        even = normalised(even_views[drawn])
    if not views:
        x = read_images(paths, preprocess)
        return Photos(x, even, np.arange(len(x)) % 2 == 1)
    return Photos(normalised(view_pixels), even, owner % 2 == 1)


def all_views(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Every photo's `photo_views` (uint8 NCHW), and which photo (its index in `paths`) each came from."""
    image_module = pillow()
    batches, owner = [], []
    for index, path in enumerate(paths):
        with image_module.open(path) as image:
            batches.append(photo_views(image.convert("RGB")))
        owner += [index] * len(batches[-1])
    return np.concatenate(batches), np.array(owner)


def photo_views(image: Any) -> np.ndarray:
    """`VIEWS` uint8 NCHW views of one RGB Pillow image: the shorter side scaled (bilinear) to 224, 256 and 320,
    the centre 224 of each and the four corners at 256, each also mirrored."""
    views = []
    for short in (224, 256, 320):
        scale = short / min(image.size)
        scaled = image.resize((round(image.width * scale), round(image.height * scale)), pillow().BILINEAR)
        right, bottom = scaled.width - 224, scaled.height - 224
        corners = [(right // 2, bottom // 2)] + (
            [(0, 0), (right, 0), (0, bottom), (right, bottom)] if short == 256 else []
        )
        for left, top in corners:
            pixels = np.asarray(scaled.crop((left, top, left + 224, top + 224)), np.uint8)
            views += [pixels, pixels[:, ::-1]]
    return np.stack(views).transpose(0, 3, 1, 2)


def normalised(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixel values (any dtype) as the TF-slim models take them: [-1, 1] float32 (`MEAN`, `STD`)."""
    return ((pixels.astype(np.float32) / 255 - MEAN) / STD).astype(np.float32)


def pixels(x: np.ndarray) -> np.ndarray:
    """The uint8 pixel values (as float32) that `normalised` made `x` from."""
    return np.rint((x * STD + MEAN) * 255)


@torch.no_grad()
def torch_logits(model: torch.nn.Module, x: np.ndarray, batch: int = 32) -> np.ndarray:
    return torch.cat([model(torch.from_numpy(b)) for b in np.array_split(x, max(1, len(x) // batch))]).numpy()


def real_model(real: Path, name: str) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("tf_mobilenet", real / "tf_mobilenet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)().eval()


def timm_twin(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """`model` (torchvision's architecture) as timm's model of the same network (`TIMM`), its weights copied tensor
    by tensor in module order: the same shapes in the same order, but timm's modules and graph (BatchNormAct2d,
    its SE and hard-swish modules, a 1x1 conv_head where torchvision has a Linear). Needs timm."""
    import timm

    arch, options = TIMM[name]
    twin = timm.create_model(arch, pretrained=False, **options).eval()
    theirs = [v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    ours = [(k, v) for k, v in twin.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(theirs) != len(ours):
        raise ValueError(f"{arch} has {len(ours)} tensors, {name} {len(theirs)}: not the same network")
    twin.load_state_dict({k: v.reshape(mine.shape) for v, (k, mine) in zip(theirs, ours, strict=True)})
    return twin


def agreement(
    logits: np.ndarray, reference: np.ndarray, held_out: np.ndarray, are_logits: bool = True
) -> tuple[float, float, float, int]:
    """Top-1 agreement with the fp32 `reference` logits on all inputs and the `held_out` ones (a mask: those
    from photos not calibrated on), the logits' SQNR in dB (10 log10 of signal over error energy: a few photos
    flipping moves agreement by 0.78 points each, SQNR shows the error underneath), and how many inputs have a
    tie at the top."""
    same = logits.argmax(1) == reference.argmax(1)
    sqnr = sqnr_db([logits], [reference]) if are_logits else float("nan")
    top = np.sort(logits, axis=1)
    return float(same.mean()), float(same[held_out].mean()), float(sqnr), int((top[:, -1] == top[:, -2]).sum())


def measure(path: Path, x: np.ndarray, threads: int, runs: int, nhwc: bool = False) -> tuple[np.ndarray, float]:
    runner = targets.load_runner(path, threads=threads)
    logits = runner.predict(x.transpose(0, 2, 3, 1) if nhwc else x)[0]
    return logits, benchmark(runner, warmup=10, runs=runs).latency_ms_p50


def model_rows(name: str, photos: Photos, args: argparse.Namespace, folder: Path) -> list[Row]:
    """fp32 and int8 rows of every target for one real model, then the vendor file's row."""
    model = real_model(args.real, name)
    if args.timm:
        model = timm_twin(model, name)
    label = f"{name} (timm)" if args.timm else name
    keep_float = (
        args.keep_float if args.keep_float is not None else (TIMM_KEEP_FLOAT if args.timm else KEEP_FLOAT)[name]
    )
    reference = torch_logits(model, photos.x)
    rows = [noise_floor_row(label, model, photos, reference)]
    x, calibration, held_out = photos.x, photos.calibration, photos.held_out
    for target in args.targets:
        fp32_logits, fp32_ms, _, _ = export_and_measure(model, target, "fp32", x, None, [], args, folder)
        rows.append(Row(label, target, "fp32", *agreement(fp32_logits, reference, held_out), fp32_ms, fp32_ms, 0.0))
        for setting, keep, activations in int8_settings(target, args.activations, keep_float):
            logits, ms, seconds, _ = export_and_measure(
                model, target, "int8", x, calibration, keep, args, folder, activations=activations
            )
            agree = agreement(logits, reference, held_out)
            rows.append(Row(label, target, setting, *agree, ms, fp32_ms, seconds, ", ".join(keep)))
            console.print(f"{label} {target} {setting}: {rows[-1].agree_all:.1%} ({seconds:.0f} s)")
        if args.ac and "int8_ac" in targets.TARGETS[target].precisions:
            rows.append(ac_row(name, model, target, photos, reference, fp32_ms, args, folder, label))
    vendor_file = args.real / "tflite" / VENDOR[name]
    vendor_logits, vendor_ms = measure(vendor_file, vendor_input(vendor_file, x), args.threads, args.runs, nhwc=True)
    # Its output 0 is TF's background class, and its outputs are softmax probabilities: no SQNR against logits.
    vendor = agreement(vendor_logits[:, 1:], reference, held_out, are_logits=False)
    return [*rows, Row(name, "vendor .tflite", "uint8 (TF QAT)", *vendor, vendor_ms, float("nan"), 0.0)]


def vendor_input(path: Path, x: np.ndarray) -> np.ndarray:
    """The photos as the vendor's file is fed them: their own uint8 pixels (its input is uint8, real value
    ``(p - 128) / 128``), as floats its runner quantises back to exactly those pixels. Fed our [-1, 1] floats
    (``p / 127.5 - 1``) requantised to its grid instead, pixels above 128 land one step off and its MobileNetV2
    agreed 90.6% where it agrees 93.8% on its own input."""
    from ai_edge_litert.interpreter import Interpreter

    scale, zero_point = Interpreter(model_path=str(path)).get_input_details()[0]["quantization"]
    return ((pixels(x) - zero_point) * scale).astype(np.float32)


def noise_floor_row(name: str, model: torch.nn.Module, photos: Photos, reference: np.ndarray) -> Row:
    """The fp32 model's own agreement with itself when each pixel moves by -1, 0 or +1 grey level (what two JPEG
    decoders differ by), averaged over 4 draws on 128 photos (1 on their views): an int8 file that agrees this
    well cannot be told from fp32 on these photos. MobileNetV2's read 93.4% at 25.9 dB on centre crops."""
    rng, x = np.random.default_rng(0), photos.x
    draws = max(1, 512 // len(x))  # 4 on 128 photos, 1 on their views
    readings = []
    for _ in range(draws):
        noisy = normalised(np.clip(pixels(x) + rng.integers(-1, 2, x.shape), 0, 255))
        readings.append(agreement(torch_logits(model, noisy), reference, photos.held_out))
    agree, held_out, sqnr, ties = (float(np.mean(column)) for column in np.array(readings).T)
    nan = float("nan")
    return Row(
        name,
        "PyTorch",
        f"fp32, pixels ±1 ({draws} draw{'s' if draws > 1 else ''})",
        agree,
        held_out,
        sqnr,
        round(ties),
        nan,
        nan,
        0.0,
    )


def int8_settings(target: str, wanted: list[str] | None, keep: list[str]) -> list[tuple[str, list[str], str | None]]:
    """(label, keep_float, activations) of one model's int8 rows on `target`: plain int8 and the `keep` layers (the
    model's `KEEP_FLOAT`, or --keep-float) in float, or with `wanted` (--activations) the target's default and one
    row per other activation range estimator the target has among them ('all': every one it has)."""
    if not wanted:
        return [("int8", [], None)] + ([(f"int8 keep_float={keep}", keep, None)] if keep else [])
    spec = targets.TARGETS[target]
    chosen = [a for a in spec.activations if a != spec.default_activations and ("all" in wanted or a in wanted)]
    default = f"int8 default ({spec.default_activations or 'library mix'})"
    return [(default, [], None)] + [(f"int8 activations={a}", [], a) for a in chosen]


def ac_row(
    name: str,
    model: torch.nn.Module,
    target: str,
    photos: Photos,
    reference: np.ndarray,
    fp32_ms: float,
    args: argparse.Namespace,
    folder: Path,
    label: str,
) -> Row:
    """int8_ac holding agreement with fp32 on the calibration photos to `AC_BAR` (the row's model: `label`)."""
    calibrated = torch_logits(model, photos.calibration).argmax(1)

    def score(outputs: list[np.ndarray], indices: np.ndarray) -> float:
        return float((outputs[0].argmax(1) == calibrated[indices]).mean())

    x, calibration = photos.x, photos.calibration
    control = AccuracyControl(list(calibration), score, 100 - AC_BAR[name])
    logits, ms, seconds, kept = export_and_measure(model, target, "int8_ac", x, calibration, [], args, folder, control)
    setting = f"int8_ac (>= {AC_BAR[name]:g}% on the calibration photos)"
    row = Row(label, target, setting, *agreement(logits, reference, photos.held_out), ms, fp32_ms, seconds, kept)
    console.print(f"{label} {target} {setting}: {row.agree_all:.1%} ({seconds:.0f} s), float: {kept}")
    return row


def export_and_measure(
    model: torch.nn.Module,
    target: str,
    precision: str,
    x: np.ndarray,
    calibration: np.ndarray | None,
    keep_float: list[str],
    args: argparse.Namespace,
    folder: Path,
    control: AccuracyControl | None = None,
    activations: str | None = None,
) -> tuple[np.ndarray, float, float, str]:
    """Logits on `x`, p50 ms, export seconds of one file, and the layers it keeps in float."""
    path = folder / f"{target}-{precision}-{len(keep_float)}-{activations}{targets.TARGETS[target].suffix}"
    options = ({"keep_float": keep_float} if keep_float else {}) | ({"accuracy_control": control} if control else {})
    options |= {"activations": activations} if activations else {}
    module = targets.get_target(target)
    started = time.perf_counter()
    module.export(model, torch.from_numpy(x[:1]), precision, path, calibration, {}, **options)
    seconds = time.perf_counter() - started
    metadata = module.read_metadata(path)
    kept = ", ".join(json.loads(metadata["keep_float"])) if "keep_float" in metadata else ""
    return *measure(path, x, args.threads, args.runs), seconds, kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", type=Path, default=Path(os.environ.get("EDGECOMP_REAL", REAL)))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--models", nargs="+", default=list(VENDOR))
    parser.add_argument(
        "--timm",
        action="store_true",
        help="the models in timm's architectures (the same weights, ported tensor by tensor; needs timm)",
    )
    parser.add_argument("--ac", action="store_true", help="add int8_ac rows (AC_BAR; ~5 min per model and target)")
    parser.add_argument(
        "--targets", nargs="+", default=[t for t, s in targets.TARGETS.items() if "int8" in s.precisions]
    )
    parser.add_argument(
        "--activations",
        nargs="+",
        choices=[*ACTIVATION_ESTIMATORS, "all"],
        help="int8 rows per activation range estimator instead of the plain and keep-float ones (each target's own "
        "among these; 'all': every one it has)",
    )
    parser.add_argument(
        "--keep-float",
        nargs="*",
        metavar="PATTERN",
        help="the keep-float row's layers (module-name globs) for every model instead of KEEP_FLOAT's; "
        "none given: no such row",
    )
    parser.add_argument(
        "--resize",
        choices=RESIZES,
        default="centre_crop",
        help="centre_crop: shorter side 256, centre 224 (torchvision's eval); squash: the whole photo to 224x224. "
        "The vendor's MobileNetV2 file agrees 93.8%% with fp32 one way, 95.3%% the other",
    )
    parser.add_argument(
        "--views",
        action="store_true",
        help=f"agreement on {VIEWS} views of each photo (shorter side 224, 256, 320; centre and, at 256, corners; "
        "each mirrored) instead of one: less noisy; calibration stays the even photos' centre crops",
    )
    parser.add_argument(
        "--calibration",
        type=int,
        default=64,
        help=f"int8 calibrates on the 64 even photos (default) or, with more, on that many of their {VIEWS * 64} "
        "views (a seeded draw): a recipe calibrates on 256 by default",
    )
    args = parser.parse_args()
    if not (args.real / "tf_mobilenet.py").is_file():
        sys.exit(
            f"no real models at {args.real}: pass --real DIR (the folder with tf_mobilenet.py, weights/, coco128/)"
        )
    torch.set_num_threads(args.threads)
    if args.views and args.resize != "centre_crop":
        sys.exit("--views are crops of their own: leave --resize at centre_crop")
    paths = sorted((args.real / "coco128" / "train2017").glob("*.jpg"))
    photos = read_photos(paths, args.resize, args.views, args.calibration)
    read = f"{VIEWS} views each" if args.views else args.resize
    console.print(
        f"photos: {len(paths)} from {args.real / 'coco128'}, {read}: {len(photos.x)} inputs of 224x224; "
        f"calibration: {len(photos.calibration)} inputs"
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += model_rows(name, photos, args, Path(tmp))
    print_table(rows, args.threads)
    return 0


def print_table(rows: list[Row], threads: int) -> None:
    cpu = cpu_model()
    flags = Path("/proc/cpuinfo").read_text()
    isa = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX2" if "avx2" in flags else platform.machine()
    table = Table(title=f"int8 on real ImageNet networks, COCO128 photos (224 px), {cpu} ({isa}), {threads} threads")
    columns = ("model", "target", "setting", "agree (128)", "agree (held-out 64)", "logit SQNR dB", "ties")
    columns += ("p50 ms", "vs fp32", "export s")
    for column in (*columns, "kept in float"):
        table.add_column(column, justify="left" if column in ("model", "target", "setting") else "right")
    for r in rows:
        ratio = "" if np.isnan(r.fp32_p50_ms) or r.setting == "fp32" else f"{r.p50_ms / r.fp32_p50_ms:.2f}x"
        table.add_row(
            r.model,
            r.target,
            r.setting,
            f"{r.agree_all:.1%}",
            f"{r.agree_held_out:.1%}",
            "" if np.isnan(r.sqnr_db) or r.setting == "fp32" else f"{r.sqnr_db:.1f}",
            str(r.ties),
            "" if np.isnan(r.p50_ms) else f"{r.p50_ms:.2f}",
            ratio,
            f"{r.export_s:.0f}" if r.export_s else "",
            r.kept,
        )
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
