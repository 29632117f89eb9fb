"""How an imagefolder's class folders become the class indices a classifier predicts (`data.labels`).

- ``contiguous`` (the default): the folder names, sorted, become classes 0..C-1. For a class head trained here.
- ``imagenet``: the model's outputs are ImageNet-1k's 1,000 classes in their usual order (torchvision, timm,
  Keras, TF-slim less its background slot), and each folder is named by its class's WordNet id
  (``n01440764``, as ImageNet's own folders are) or by torchvision's name for it (``tench``, ``crane bird``).
  A folder of a few of the classes is then scored against the model's own outputs for them; under
  ``contiguous`` its sorted folders would be classes 0..C-1, other classes' outputs (top-1 near 0 for fp32
  and int8 alike, which hides every int8 loss).
- a text file: the model's class names, one per line, in output order (timm's ``--class-map``); each folder
  is the class its name is on.

A folder name matches a class name exactly, else ignoring case, ``_`` for space and ``-`` for space, where
that names one class only (torchvision has ``Cardigan``, the dog, and ``cardigan``). A folder no class is
named as, or a name two classes share, is refused with the folders and the fix, before any image is read.
The WordNet ids (``imagenet_wnids.txt``) are timm's ``imagenet_synsets.txt`` (Apache-2.0), in the order of
torchvision's ``categories`` metadata, which supplies the names.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from targets.base import EdgecompError

IMAGENET_WNIDS = Path(__file__).with_name("imagenet_wnids.txt")


@dataclass(frozen=True)
class ClassNames:
    """The model's classes in output order, as one or more names each (a WordNet id and a name for ImageNet)."""

    names: tuple[tuple[str, ...], ...]
    source: str  # what the names came from, for messages

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def display(self) -> tuple[str, ...]:
        """Each class's name for people (ImageNet's: torchvision's, not the WordNet id)."""
        return tuple(names[-1] for names in self.names)

    def labels(self, folders: list[str]) -> dict[str, int]:
        """Folder name -> class index; refuses folders no class, or more than one, is named as."""
        exact, loose = _index(self.names, _same), _index(self.names, _loose)
        found: dict[str, int] = {}
        unknown, shared = [], []
        for folder in folders:
            hits = exact.get(folder) or loose.get(_loose(folder), set())
            if len(hits) == 1:
                found[folder] = next(iter(hits))
            else:
                (shared if hits else unknown).append((folder, sorted(hits)))
        if unknown:
            raise EdgecompError(self._unknown([folder for folder, _ in unknown]))
        if shared:
            folder, hits = shared[0]
            named = " and ".join(f"{i} ({self.names[i][0]})" for i in hits)
            raise EdgecompError(
                f"class folder {folder!r} names classes {named} of {self.source}: name the folder exactly as one "
                "of them is named"
            )
        return found

    def _unknown(self, folders: list[str]) -> str:
        every = [name for names in self.names for name in names]
        close = difflib.get_close_matches(folders[0], every, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        listed = ", ".join(repr(f) for f in folders[:5]) + (f" and {len(folders) - 5} more" if len(folders) > 5 else "")
        return (
            f"class folder(s) {listed} name no class of {self.source}{hint}: name each folder as the model's class "
            "is named there, or use data.labels: contiguous for a class head trained here"
        )


def _same(name: str) -> str:
    return name


def _loose(name: str) -> str:
    return " ".join(name.casefold().replace("_", " ").replace("-", " ").split())


def _index(names: tuple[tuple[str, ...], ...], key) -> dict[str, set[int]]:
    index: dict[str, set[int]] = defaultdict(set)
    for i, aliases in enumerate(names):
        for name in aliases:
            index[key(name)].add(i)
    return index


def class_names(labels: str) -> ClassNames | None:
    """The classes `data.labels` names for an imagefolder: None for contiguous (sorted folders)."""
    if labels == "contiguous":
        return None
    if labels == "imagenet":
        return imagenet_classes()
    path = Path(labels).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = "no such file" if not path.exists() else str(error)
        raise EdgecompError(
            f"data.labels {labels!r}: {reason}; give contiguous, imagenet or a text file with the model's class "
            "names, one per line in output order"
        ) from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise EdgecompError(f"data.labels {labels!r}: the file names no class (one class name per line)")
    return ClassNames(tuple((line.strip(),) for line in lines), f"data.labels {labels!r}")


def imagenet_classes() -> ClassNames:
    """ImageNet-1k's 1,000 classes in output order: each by WordNet id and torchvision's name."""
    from torchvision.models import MobileNet_V2_Weights

    wnids = IMAGENET_WNIDS.read_text().split()
    names = MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]  # metadata only: nothing is downloaded
    return ClassNames(tuple(zip(wnids, names, strict=True)), "ImageNet-1k (data.labels: imagenet)")
