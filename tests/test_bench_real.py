"""benchmarks/bench_real_int8.py's inputs (`make bench-real`): the vendor's file gets its own uint8 pixels, and
`--views` are the crops it says, so the figures the README quotes rest on what the code claims to feed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script

from targets.preprocess import centre_crop, pillow

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_real_int8.py"
REAL = Path(os.environ.get("EDGECOMP_REAL", Path(__file__).resolve().parents[2] / "shared" / "real"))
needs_real = pytest.mark.skipif(
    not (REAL / "tf_mobilenet.py").is_file(), reason=f"no real models at {REAL} (set EDGECOMP_REAL)"
)


@pytest.fixture(scope="module")
def bench():
    yield from load_script(BENCH)


@needs_real
def test_the_vendor_file_is_fed_exactly_its_photos_pixels(bench) -> None:
    """Its input is uint8, real value (p - 128) / 128: fed our p / 127.5 - 1 requantised, every pixel above 128
    was one step off (MobileNetV2 90.6% instead of 93.8%)."""
    from ai_edge_litert.interpreter import Interpreter

    paths = sorted((REAL / "coco128" / "train2017").glob("*.jpg"))[:3]
    photos = bench.read_photos(paths, "centre_crop", views=False)
    vendor = REAL / "tflite" / bench.VENDOR["mobilenet_v2"]
    scale, zero_point = Interpreter(model_path=str(vendor)).get_input_details()[0]["quantization"]
    fed = np.round(bench.vendor_input(vendor, photos.x) / scale + zero_point)
    image = pillow()
    expected = np.stack([centre_crop(image.open(p).convert("RGB"), 224) for p in paths]).transpose(0, 3, 1, 2)
    assert np.array_equal(fed, expected)
    assert not np.array_equal(np.round(photos.x / scale + zero_point), expected)  # what was fed before


def test_views_are_three_scales_centre_and_corners_each_mirrored(bench) -> None:
    rng = np.random.default_rng(0)
    image = pillow().fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    views = bench.photo_views(image)
    assert views.shape == (bench.VIEWS, 3, 224, 224) and views.dtype == np.uint8
    assert np.array_equal(views[1], views[0][:, :, ::-1])  # each view, then its mirror
    assert len({view.tobytes() for view in views}) == bench.VIEWS
    scaled = image.resize((round(400 * 256 / 300), 256), pillow().BILINEAR)  # the corners are at 256
    assert np.array_equal(views[4], np.asarray(scaled.crop((0, 0, 224, 224))).transpose(2, 0, 1))


@needs_real
def test_views_keep_calibration_on_the_even_photos_and_hold_out_the_odd_ones(bench) -> None:
    paths = sorted((REAL / "coco128" / "train2017").glob("*.jpg"))[:3]
    photos = bench.read_photos(paths, "centre_crop", views=True)
    assert photos.x.shape == (3 * bench.VIEWS, 3, 224, 224) and len(photos.calibration) == 2
    assert photos.held_out.tolist() == [False] * bench.VIEWS + [True] * bench.VIEWS + [False] * bench.VIEWS


@needs_real
def test_more_calibration_than_even_photos_draws_their_views_only(bench) -> None:
    """`--calibration N` above the even photos' count: N distinct views of the even photos, none of the odd ones."""
    paths = sorted((REAL / "coco128" / "train2017").glob("*.jpg"))[:3]
    photos = bench.read_photos(paths, "centre_crop", views=False, calibration=20)
    assert photos.calibration.shape == (20, 3, 224, 224) and len(photos.x) == 3
    even_views, owner = bench.all_views(paths)
    pool = {view.tobytes() for view in bench.normalised(even_views[owner % 2 == 0])}
    assert {sample.tobytes() for sample in photos.calibration} <= pool
    assert len({sample.tobytes() for sample in photos.calibration}) == 20
