"""onnxruntime's int8 calibration in bounded memory.

onnxruntime's histogram calibrator (behind the Percentile method, this target's default) keeps every calibration
sample's every activation until the last sample has run, then histograms them all at once: ~62 MB a sample for
MobileNetV2 at 224x224 (peak RSS of one int8 export: 2.0 GB with 16 samples, 4.9 GB with 64, 8.9 GB with 128),
so a recipe's default 256 samples needed ~17 GB. Within `chunked_calibration` its ``collect_data`` runs the
samples twice, holding `CHUNK` samples' activations at most: a first pass finds each activation's extremes, the
second counts each chunk's ``|x|`` on the bins one ``np.histogram(|x|, 2048)`` over all samples would use (from
the least to the largest), so the counts add up to that one histogram's and the ranges come out as they did.
(onnxruntime's own merge of chunks, its collector called again, starts from the first chunk's range and drops
later values under its lower edge.) MinMax calibration needs none of this: its graph reduces each activation to
its min and max per sample. (Its own bound, ``CalibMaxIntermediateOutputs``, drops every full chunk unread in
onnxruntime 1.31: a multiple of the chunk size of samples fails with "No data is collected.")

>>> with chunked_calibration():
...     quantize_static(fp32_path, int8_path, reader, calibrate_method=CalibrationMethod.Percentile, ...)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

CHUNK = 16  # samples whose activations are held at once: ~1 GB for MobileNetV2 at 224x224


@contextmanager
def chunked_calibration(chunk: int = CHUNK) -> Iterator[None]:
    """Within the block, onnxruntime's |x|-histogram calibration (Percentile, symmetric: its default) holds `chunk`
    samples' activations at a time (see the module doc); other histogram methods run as onnxruntime has them."""
    from onnxruntime.quantization.calibrate import HistogramCalibrater

    original = HistogramCalibrater.collect_data

    def collect_data(self: Any, data_reader: Any) -> None:
        if self.method != "percentile" or not self.symmetric:
            return original(self, data_reader)
        samples = list(iter(data_reader.get_next, None))
        if not samples:
            return original(self, _Samples(samples))  # onnxruntime's own "No data is collected."
        self.collector = _histograms(self, samples, chunk)
        return None

    HistogramCalibrater.collect_data = collect_data
    try:
        yield
    finally:
        HistogramCalibrater.collect_data = original


class _Samples:
    """onnxruntime's CalibrationDataReader over a list of its input dicts."""

    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self._next = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._next, None)


def _histograms(calibrator: Any, samples: list[dict[str, np.ndarray]], chunk: int) -> Any:
    """onnxruntime's HistogramCollector for `calibrator`, filled as its ``collect_absolute_value`` fills it from
    all samples at once (per tensor: counts of ``np.histogram(|x|, num_bins)``, whose range is the least to the
    largest |x|, its edges, and the least and largest x), from `chunk` samples at a time: the first pass finds
    the range, the second counts each chunk on it. Histograms go through the calibrate module's own numpy, so
    that `targets.onnx._histograms_widened` widens their ranges alike."""
    from onnxruntime.quantization import calibrate

    extremes: dict[str, list] = {}
    for name, value in _activations(calibrator, samples):
        magnitude = np.absolute(value)
        now = [np.nanmin(value), np.nanmax(value), np.nanmin(magnitude), np.nanmax(magnitude)]
        seen = extremes.setdefault(name, now)
        seen[:] = [min(seen[0], now[0]), max(seen[1], now[1]), min(seen[2], now[2]), max(seen[3], now[3])]
    counts = {name: 0 for name in extremes}
    for start in range(0, len(samples), chunk):
        held: dict[str, list[np.ndarray]] = {}
        for name, value in _activations(calibrator, samples[start : start + chunk]):
            held.setdefault(name, []).append(np.absolute(value).ravel())
        for name, values in held.items():
            bounds = (extremes[name][2], extremes[name][3])
            counts[name] = counts[name] + calibrate.np.histogram(np.concatenate(values), calibrator.num_bins, bounds)[0]
    collector = calibrate.HistogramCollector(
        method=calibrator.method,
        symmetric=calibrator.symmetric,
        num_bins=calibrator.num_bins,
        num_quantized_bins=calibrator.num_quantized_bins,
        percentile=calibrator.percentile,
        scenario=calibrator.scenario,
    )
    for name, (low, high, least, largest) in extremes.items():
        dtype = np.asarray(largest).dtype
        edges = calibrate.np.histogram(np.array([least, largest], dtype), calibrator.num_bins)[1].astype(dtype)
        collector.histogram_dict[name] = (counts[name], edges, low, high)
    return collector


def _activations(calibrator: Any, samples: list[dict[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
    """(tensor, value) of every tensor the calibrator calibrates, one sample at a time through its session."""
    session = calibrator.infer_session
    names = [output.name for output in session.get_outputs()]
    for inputs in samples:
        for name, value in zip(names, session.run(None, inputs), strict=True):
            if name in calibrator.tensors_to_calibrate and value.size:
                yield name, value
