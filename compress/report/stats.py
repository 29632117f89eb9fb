"""How sure a comparison is. An accuracy over n test images gets a 95% Wilson interval (a detector's mAP@.5
carries its own bootstrap interval, made where its detections were: `Row.accuracy_interval`); two models scored on
the same images are compared with McNemar's exact test on the images where they disagree, and a difference
is called a win only when that test says so (p < 0.05). On 10,000 images one model's standard error is
~0.3 points near 90%: a 0.2-point margin is a tie within noise, whatever the table's rounding shows.

With several seeds (`train.seeds`) the unit of replication is the training run, not the test image: McNemar on
one seed's two models says whether those two models differ, not whether the methods that made them do (a
seed-to-seed spread of a point or more is common on small sets). Two candidates are then compared by Welch's
t-test on their per-seed accuracies (unequal variances, Welch-Satterthwaite degrees of freedom, two-sided,
p < 0.05): a difference is a win only when it stands out of the seeds' spread. The seeds are not paired: seed s
of a fine-tune and of a scratch baseline share a data order but not a model, so pairing would buy nothing and
cost a degree of freedom. Two seeds a side make a weak test (few degrees of freedom), which is honest: two
seeds cannot show much.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
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


def mean(values: Sequence[float | None]) -> float | None:
    """The mean of a measurement over seeds; the value itself where all are equal (an int stays an int, one
    value stays exact); None where any is missing."""
    if not values or any(value is None for value in values):
        return None
    if all(value == values[0] for value in values):
        return values[0]
    return sum(values) / len(values)


def sample_sd(values: Sequence[float]) -> float | None:
    """The sample standard deviation (n - 1 in the denominator); None under two values."""
    return statistics.stdev(values) if len(values) > 1 else None


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300

    def guard(value: float) -> float:
        return tiny if abs(value) < tiny else value

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1))
    fraction = d
    for m in range(1, 500):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        for term in (even, odd):
            d = 1.0 / guard(1.0 + term * d)
            c = guard(1.0 + term / c)
            fraction *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return fraction


def student_t_p(t: float, df: float) -> float:
    """Two-sided p-value of Student's t with `df` degrees of freedom (any real df > 0)."""
    return incomplete_beta(df / 2, 0.5, df / (df + t * t))


def welch(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test of `a` against `b` (two or more values each): is the difference of
    the means larger than the spread within each side can explain?"""
    var_a, var_b = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    difference = statistics.fmean(a) - statistics.fmean(b)
    if var_a + var_b == 0:  # no spread at all: any difference stands out of it
        return 1.0 if difference == 0 else 0.0
    t = difference / math.sqrt(var_a + var_b)
    df = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    return student_t_p(t, df)


@dataclass(frozen=True)
class Comparison:
    """`a` against `b`: who is better, if anyone, and how sure that is. One model each: McNemar on the same test
    images; several seeds each: Welch's t-test on their per-seed accuracies (`seeds` set)."""

    p: float | None  # None where there is nothing to test with (no per-image results; one seed a side)
    samples: int | None
    margin_pts: float  # 100 * (accuracy a - accuracy b), of the means over seeds
    seeds: tuple[int, int] | None = None  # how many seeds each side has, where the comparison is over seeds
    untested_because: str = "these rows carry no per-image results (a run of this edgecomp keeps them)"

    @property
    def tested(self) -> bool:
        return self.p is not None

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < SIGNIFICANCE

    def evidence(self) -> str:
        """'McNemar p = 0.41 on 360 paired images', 'Welch's t-test p = 0.31 over 3 and 3 seeds', or why there is
        no test."""
        if self.seeds is not None:
            over = f"{self.seeds[0]} and {self.seeds[1]} seeds"
            if self.p is None:
                return f"untested: {over}, and the spread over seeds needs two or more a side"
            return f"Welch's t-test p {_p(self.p)} over {over}"
        if self.p is None:
            return f"untested: {self.untested_because}"
        return f"McNemar p {_p(self.p)} on {self.samples} paired test images"


def compare(a: Row, b: Row) -> Comparison:
    margin = 100 * (a.accuracy - b.accuracy)
    mask_a, mask_b = a.correct_mask(), b.correct_mask()
    if a.accuracy_interval is not None or b.accuracy_interval is not None:
        return Comparison(
            None, None, margin, untested_because="mAP has no per-image right or wrong to pair (see each 95% interval)"
        )
    if mask_a is None or mask_b is None or len(mask_a) != len(mask_b):
        return Comparison(None, None, margin)
    return Comparison(mcnemar(mask_a, mask_b), len(mask_a), margin)


def compare_seeds(a: Sequence[Row], b: Sequence[Row]) -> Comparison:
    """`a`'s rows against `b`'s, one per seed: McNemar where each is one model of a one-seed run (`compare`),
    else Welch's t-test on the seeds' accuracies."""
    if len(a) == len(b) == 1 and a[0].seed is None and b[0].seed is None:
        return compare(a[0], b[0])
    accuracy_a, accuracy_b = [row.accuracy for row in a], [row.accuracy for row in b]
    margin = 100 * (statistics.fmean(accuracy_a) - statistics.fmean(accuracy_b))
    p = welch(accuracy_a, accuracy_b) if min(len(a), len(b)) > 1 else None
    return Comparison(p, None, margin, seeds=(len(a), len(b)))


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
