"""An imagefolder of a pretrained model's classes (`data.labels`: imagenet or a class-names file): each folder
is scored against the model's own output for its class, whatever subset of classes the folder holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import photo_folder

from compress.data import DATASETS
from compress.data.class_names import imagenet_classes
from compress.pipeline import Pipeline
from compress.recipe import load_recipe
from compress.schema import DataSpec
from targets.base import EdgecompError


def _labels(root: Path, labels: str) -> tuple[set[int], int, int]:
    """The labels of every split's images, the class count, and how many images there are."""
    splits = DATASETS.get("imagefolder")(DataSpec(dataset="imagefolder", root=str(root), image_size=8, labels=labels))
    parts = [splits.train, splits.val, splits.test]
    return {int(part[i][1]) for part in parts for i in range(len(part))}, splits.num_classes, sum(map(len, parts))


def test_imagenet_labels_send_each_folder_to_its_classes_output(tmp_path: Path) -> None:
    # WordNet id, torchvision's name, a name with _ for space and other case, the dog Cardigan by its exact case;
    # two photos a class cannot be stratified into three splits: it is split at random
    photos = {"n01440764": 2, "crane bird": 2, "Toilet_Tissue": 2, "Cardigan": 2, "n03126707": 2}
    assert _labels(photo_folder(tmp_path, photos), "imagenet") == ({0, 134, 999, 264, 517}, 1000, 10)
    assert _labels(tmp_path, "contiguous") == ({0, 1, 2, 3, 4}, 5, 10)  # sorted folders, as before
    for labels, names in [("imagenet", imagenet_classes().display), ("contiguous", tuple(sorted(photos)))]:
        spec = DataSpec(dataset="imagefolder", root=str(tmp_path), image_size=8, labels=labels)
        assert DATASETS.get("imagefolder")(spec).classes == names  # what exported files name their outputs


def test_imagenet_classes_are_the_usual_order() -> None:
    classes = imagenet_classes()
    assert classes.num_classes == 1000
    assert classes.names[0] == ("n01440764", "tench") and classes.names[999] == ("n15075141", "toilet tissue")
    assert classes.display[:2] == ("tench", "goldfish")
    assert len({names[0] for names in classes.names}) == 1000


def test_a_class_names_file_gives_each_folder_its_line_and_splits_keep_their_own_folders(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("bird\ncat\ndog\n\n")
    root = tmp_path / "photos"
    photo_folder(root / "train", {"dog": 3, "bird": 3})
    photo_folder(root / "test", {"dog": 1, "cat": 2})  # a class the train split lacks is scored, not dropped
    assert _labels(root, str(tmp_path / "classes.txt")) == ({0, 1, 2}, 3, 9)
    assert _labels(root, "contiguous") == ({0, 1, 2}, 3, 9)


def test_a_folder_of_one_split_alone_is_the_whole_set(tmp_path: Path) -> None:
    photo_folder(tmp_path / "val", {"n01440764": 3, "n01443537": 3})  # ImageNet's own val/ layout
    assert _labels(tmp_path, "imagenet") == ({0, 1}, 1000, 6)
    photo_folder(tmp_path / "test", {"n01440764": 1})
    with pytest.raises(EdgecompError, match=r"holds test/ and val/ but no train/"):
        _labels(tmp_path, "contiguous")


@pytest.mark.parametrize(
    ("photos", "labels", "message"),
    [
        ({"n01440764": 1, "tenchh": 1}, "imagenet", r"folder\(s\) 'tenchh' name no class of ImageNet-1k.*'tench'\?"),
        ({"CARDIGAN": 1}, "imagenet", r"'CARDIGAN' names classes 264 \(n02113186\) and 474 \(n02963159\)"),
        ({"cat": 1}, "missing.txt", r"data.labels 'missing.txt': no such file"),
    ],
)
def test_folders_no_class_or_two_classes_is_named_as_are_refused(
    tmp_path: Path, photos: dict[str, int], labels: str, message: str
) -> None:
    with pytest.raises(EdgecompError, match=message):
        _labels(photo_folder(tmp_path, photos), labels)


def test_labels_go_with_their_data_set_and_must_name_every_output(tmp_path: Path) -> None:
    with pytest.raises(
        EdgecompError, match=r"labels: imagenet maps class folders, so it goes with dataset: imagefolder, not digits"
    ):
        load_recipe("quickstart", ["data.labels=imagenet"])
    with pytest.raises(EdgecompError, match=r"coco91 maps COCO category ids, so it goes with dataset: coco"):
        load_recipe("quickstart", ["data.dataset=imagefolder", "data.labels=coco91"])
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    root = photo_folder(tmp_path / "photos", {"cat": 10, "dog": 10})
    sets = [f"data.root={root}", f"data.labels={tmp_path / 'classes.txt'}", "model.num_classes=4"]
    recipe = load_recipe("quickstart", ["data.dataset=imagefolder", *sets])
    with pytest.raises(EdgecompError, match=r"num_classes is 4, but data.labels: .* names 3 classes in output order"):
        Pipeline(recipe, tmp_path / "run").run()
    assert not (tmp_path / "run").exists()
