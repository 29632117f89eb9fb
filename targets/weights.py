"""Weight ranges for int8: the per-channel scale with the least squared rounding error, for every target.

Quantizers (litert-torch's PT2E config, NNCF, onnxruntime) set a channel's symmetric scale to
``max|w| / 127``. On weights trained with quantization in the loop that is the wrong grid: TF's ImageNet
MobileNets hold every weight on a per-tensor uint8 grid of 255 levels, and ``max|w| / 127`` falls between
its points, so each weight gains up to half a step of error the trained network never saw. Measured on
the real TF-slim MobileNetV2 (../shared/real), int8 weights alone, activations float: top-1 agreement with
fp32 on COCO128 is 86.7% with ``max|w| / 127`` and 99.2% with the scale below.

Per channel, the search tries two families of scales and keeps the one with the least squared error:

- ``max|w| / n`` for n = 64..127: the channel's largest weight sits on level n, so weights that already lie on
  a grid whose step divides ``max|w|`` (QAT-trained weights) come back exactly;
- ``r * max|w| / 127`` for r = 0.80..0.99: clipping the largest weights (the usual MSE range setting).

numpy only, like the rest of `targets`' runtime side.
"""

from __future__ import annotations

import numpy as np

QMAX = 127  # symmetric int8 weights: [-127, 127]
_CLIP_RATIOS = np.arange(0.80, 0.995, 0.01)


def mse_scales(weight: np.ndarray, axis: int = 0, qmax: int = QMAX) -> np.ndarray:
    """One symmetric scale per slice of `weight` along `axis` (per output channel), float32.

    >>> w = np.array([[0.0, 0.3, -0.6]])  # on a grid of step 0.3
    >>> float(np.abs(np.round(w / mse_scales(w)[:, None]) * mse_scales(w)[:, None] - w).max()) < 1e-7
    True
    """
    w = np.moveaxis(np.asarray(weight, np.float64), axis, 0).reshape(np.shape(weight)[axis], -1)
    amax = np.maximum(np.abs(w).max(axis=1), np.finfo(np.float32).tiny)
    candidates = [amax / n for n in range(qmax, qmax // 2, -1)] + [amax * r / qmax for r in _CLIP_RATIOS[::-1]]
    best_scale, best_error = candidates[0], np.full(len(w), np.inf)
    for scale in candidates:  # min-max (n = 127) first: ties keep it
        error = np.square(np.clip(np.round(w / scale[:, None]), -qmax, qmax) * scale[:, None] - w).sum(axis=1)
        better = error < best_error * (1 - 1e-9)
        best_scale, best_error = np.where(better, scale, best_scale), np.where(better, error, best_error)
    return best_scale.astype(np.float32)
