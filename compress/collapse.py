"""A training stage that learned nothing stops the run, instead of being exported, measured and reported.

The case that made this necessary: a deployment checkpoint or TF import has its batch norm folded (identity
layers: mean 0, variance 1), so in train mode those layers become real normalisers of the batch and the
network falls to outputs that ignore the input. The shared MobileNetV2 fine-tuned on 4,000 photos ended at
loss 2.303 = ln 10 and 10.0% on every target; with BN frozen and lr 0.001 the same loop learned.

A classifier has collapsed when its headline metric on the val split is at chance (at most 1.5 / C) and its
loss sits within 1% of ln C, the loss of a uniform prediction (label smoothing leaves that value as it is):
the last epoch's mean training loss. Stages trained on labels are checked (dense, label fine-tunes, scratch,
pruning steps, QAT); a distillation stage is not: its loss mixes in the KD term, and the student of a teacher
at chance sits at ln C rightly (the task's loss of its val outputs did, in a few-step test run), while the
teacher itself was checked when it was trained. A task with no such fixed point (a detector's loss depends
on its anchors and boxes, and mAP 0 is normal early in a short run) is not checked.
"""

from __future__ import annotations

import math

from targets.base import EdgecompError

LOSS_TOLERANCE = 0.01  # relative to ln C: 2.280-2.326 for 10 classes
CHANCE_FACTOR = 1.5


def uniform_point(num_classes: int) -> tuple[float, float] | None:
    """(loss, top-1) of a classifier that predicts every class alike: (ln C, 1 / C); None below 2 classes."""
    return (math.log(num_classes), 1.0 / num_classes) if num_classes >= 2 else None


def check_not_collapsed(
    stage: str,
    point: tuple[float, float] | None,
    losses: dict[str, float | None],
    val_metric: tuple[str, float],
    lr: float,
) -> None:
    """Raise one EdgecompError line if a stage collapsed: its val metric within CHANCE_FACTOR of chance and one
    of `losses` ({"final loss": ..., "val loss": ...}) at the uninformed loss. `point` is the task's
    (uninformed loss, chance metric), None where the task has none."""
    if point is None:
        return
    uniform, chance = point
    metric, value = val_metric
    at_uniform = [
        f"{name} {loss:.3f}"
        for name, loss in losses.items()
        if loss is not None and abs(loss - uniform) <= LOSS_TOLERANCE * uniform
    ]
    if not at_uniform or value > CHANCE_FACTOR * chance:
        return
    raise EdgecompError(
        f"{stage}: training collapsed ({', '.join(at_uniform)}, uninformed {uniform:.3f}; val {metric} {value:.3f}, "
        f"chance {chance:.3f}): the model ignores its input. If its batch norm is folded (a deployment "
        f"checkpoint, a TF import), set train.freeze_bn: true; else try a lower learning rate (this stage's: {lr:g})"
    )
