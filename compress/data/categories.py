"""How a COCO-format file's category ids become the class indices a detector predicts (`data.labels`).

A detector's outputs are background (slot 0) then one slot per object class; class index c is slot c + 1.

- ``contiguous`` (the default): the file's ids, sorted, become classes 0..C-1. For a class head trained here:
  C outputs and no unused ones, whatever the ids are.
- ``coco91``: category id k becomes class k - 1, i.e. output slot k, as in torchvision's COCO detectors
  (e.g. SSDLite320-MobileNetV3-Large's COCO_V1 weights): 91 slots, background at 0 and COCO's own ids 1..90,
  of which 10 are unused (12, 26, 29, 30, 45, 66, 68, 69, 71, 83). Their class predictors are used as they
  are, untrained here. The mapping is the file's ids; what it is checked against is the weights' own slot
  names (torchvision's metadata): every category of the file must be named as its slot is, so a set whose
  categories are not COCO's (other ids, other names, VOC's classes numbered 1..20) is refused with the
  first category that differs, instead of being scored against another class's predictions.

Evaluation stays in class indices (`compress.tasks.coco_map`): the map is one-to-one on the file's
categories, so mAP is the same as with the file's ids; detections in a slot no category of the file has
(an unused slot, or a COCO category the file does not list) count against nothing, as COCOeval ignores
categories the annotation file does not list. `CategoryMap.category_ids` reads class indices back as the
file's category ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from targets.base import EdgecompError

NOT_COCO = "use labels: contiguous (the default) and train the class predictors (train.epochs > 0)"


@dataclass(frozen=True)
class CategoryMap:
    """Category id -> class index, and the class count a model needs for them (its outputs less background)."""

    classes: Mapping[int, int]
    num_classes: int
    names: tuple[str, ...] = ()  # each class's name, by class index ("N/A" for coco91's unused slots)

    def category_ids(self, labels: np.ndarray) -> np.ndarray:
        """Class indices back to the file's category ids; -1 for a class no category maps to (coco91's unused
        slots), and for -1 (padding) itself."""
        back = np.full(self.num_classes + 1, -1, dtype=np.int64)  # the extra last entry answers label -1
        for category, index in self.classes.items():
            back[index] = category
        labels = np.asarray(labels, dtype=np.int64)
        return back[np.where((labels >= 0) & (labels < self.num_classes), labels, -1)]


def coco91_slots() -> tuple[str, ...]:
    """The names of the 91 output slots of torchvision's COCO detectors ('__background__', 'person', ..., 'N/A'
    where COCO left an id unused), from the weights' own metadata: no download, the table ships with torchvision."""
    from torchvision.models.detection import SSDLite320_MobileNet_V3_Large_Weights

    return tuple(SSDLite320_MobileNet_V3_Large_Weights.COCO_V1.meta["categories"])


def category_map(categories: Mapping[int, str], scheme: str, source: Path) -> CategoryMap:
    """The map of a file's categories (id -> name) under `scheme` (`data.labels`, which the schema checked)."""
    if scheme == "contiguous":
        ids = sorted(categories)
        return CategoryMap(
            {category: index for index, category in enumerate(ids)}, len(ids), tuple(categories[i] for i in ids)
        )
    slots = coco91_slots()
    for category, name in sorted(categories.items()):
        if not 0 < category < len(slots):
            raise EdgecompError(
                f"{source}: category {category} ({name!r}) has no output slot in torchvision's COCO detectors "
                f"(COCO's ids run 1-{len(slots) - 1}): labels: coco91 is for COCO's own categories; {NOT_COCO}"
            )
        if _plain(name) != _plain(slots[category]):
            differ = sum(_plain(n) != _plain(slots[c]) for c, n in categories.items() if 0 < c < len(slots))
            raise EdgecompError(
                f"{source}: category {category} is {name!r} but slot {category} of torchvision's COCO detectors "
                f"is {slots[category]!r} ({differ} of {len(categories)} categories differ): these are not COCO's "
                f"categories, and labels: coco91 would score them against COCO's; {NOT_COCO}"
            )
    return CategoryMap({category: category - 1 for category in categories}, len(slots) - 1, slots[1:])


def _plain(name: str) -> str:
    return " ".join(str(name).lower().split())
