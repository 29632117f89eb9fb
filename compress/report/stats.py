"""How sure a comparison is. An accuracy over n test images gets a 95% Wilson interval (a detector's mAP@.5
carries its own bootstrap interval, made where its detections were: `Row.accuracy_interval`); two models scored on
the same images are compared with McNemar's exact test on the images where they disagree, and a difference
is called a win only when that test says so (p < 0.05). On 10,000 images one model's standard error is
~0.3 points near 90%: a 0.2-point margin is a tie within noise, whatever the table's rounding shows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from compress.results import Row

Z95 = 1.959963984540054  # two-sided 95%
SIGNIFICANCE = 0.05


def wilson(accuracy: float, samples: int, z: float = Z95) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion `accuracy` over `samples` trials (fine at 0% and 100%)."""
    n = samples
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def interval(row: Row) -> tuple[float, float] | None:
    """A row's 95% interval of its accuracy: the one it carries (mAP@.5's bootstrap), else Wilson's where it
    says which of how many images it got right (top-1 rows do); None for rows of runs that kept neither."""
    if row.accuracy_interval is not None:
        low, high = row.accuracy_interval
        return float(low), float(high)
    if row.samples is None or row.correct is None:
        return None
    return wilson(row.accuracy, row.samples)


def mcnemar(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of two models' right/wrong on the same images: under "equally good",
    the images only one of them got right split 50/50."""
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class Comparison:
    """`a` against `b` on the same test images: who is better, if anyone, and how sure that is."""

    p: float | None  # McNemar's, or None where the rows carry no per-image results
    samples: int | None
    margin_pts: float  # 100 * (accuracy a - accuracy b)
    untested_because: str = "these rows carry no per-image results (a run of this edgecomp keeps them)"

    @property
    def tested(self) -> bool:
        return self.p is not None

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < SIGNIFICANCE

    def evidence(self) -> str:
        """'McNemar p = 0.41 on 360 paired images', or why there is no test."""
        if self.p is None:
            return f"untested: {self.untested_because}"
        return f"McNemar p {_p(self.p)} on {self.samples} paired test images"


def compare(a: Row, b: Row) -> Comparison:
    margin = 100 * (a.accuracy - b.accuracy)
    mask_a, mask_b = a.correct_mask(), b.correct_mask()
    if a.accuracy_interval is not None or b.accuracy_interval is not None:
        return Comparison(None, None, margin, "mAP has no per-image right or wrong to pair (see each 95% interval)")
    if mask_a is None or mask_b is None or len(mask_a) != len(mask_b):
        return Comparison(None, None, margin)
    return Comparison(mcnemar(mask_a, mask_b), len(mask_a), margin)


def at_chance(row: Row, classes: int | None) -> bool:
    """Whether a top-1 accuracy is indistinguishable from guessing (1 / classes): its interval holds chance,
    or it is below. A collapsed model gets no verdict. False where the row has no per-image results (and for
    mAP, which has no chance level)."""
    bounds = interval(row)
    if not classes or bounds is None or row.correct is None:
        return False
    chance = 1 / classes
    return bounds[0] <= chance <= bounds[1] or row.accuracy < chance


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}" if p < 0.01 else f"= {p:.2f}"
