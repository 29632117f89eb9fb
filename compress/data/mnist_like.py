"""Real-world sets with a fixed train/test split: Fashion-MNIST and CIFAR-10.

Neither is downloaded by the quickstart or the tests. Fashion-MNIST is read from Debian's
`dataset-fashion-mnist` files when installed (or from `data.root`); CIFAR-10 from `data.root`
(torchvision's layout). A failed download says how to point at local files.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from compress.data._base import DATASETS, DataSplits, with_validation
from compress.schema import DataSpec
from targets.base import EdgecompError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Fashion-MNIST's labels 0..9, as torchvision's FashionMNIST.classes names them
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CACHE = Path("~/.cache/edgecomp").expanduser()


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise EdgecompError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise EdgecompError(f"{path}: truncated IDX file ({body.size} of {int(np.prod(shape))} bytes)")
    return body.reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz", root / "FashionMNIST" / "raw" / stem):
        if candidate.is_file():
            return candidate
    return None


def _fashion_root(spec: DataSpec) -> Path:
    roots = [Path(spec.root).expanduser()] if spec.root else [DEBIAN_FASHION_MNIST, CACHE / "fashion_mnist"]
    for root in roots:
        if all(_find(root, stem) for pair in FASHION_FILES.values() for stem in pair):
            return root
    if spec.root:
        raise EdgecompError(
            f"data.root {spec.root!r} lacks the four Fashion-MNIST idx files ({', '.join(FASHION_FILES['train'])}, ...)"
        )
    _download_fashion(CACHE / "fashion_mnist")
    return CACHE / "fashion_mnist"


def _download_fashion(root: Path) -> None:
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), download=True)
    except Exception as error:
        raise EdgecompError(
            "Fashion-MNIST is not installed and could not be downloaded "
            f"({type(error).__name__}). Install Debian's package (apt-get install dataset-fashion-mnist) "
            "or set data.root to a folder holding the four idx(.gz) files."
        ) from None


@DATASETS.register("fashion_mnist")
def fashion_mnist(spec: DataSpec) -> DataSplits:
    root = _fashion_root(spec)
    train, test = (tuple(read_idx(_find(root, stem)) for stem in pair) for pair in FASHION_FILES.values())
    stats = (0.286,) * 3, (0.353,) * 3
    return with_validation(spec, *stats, train, test, val_size=5000, augment="pad_crop", classes=FASHION_CLASSES)


@DATASETS.register("cifar10")
def cifar10(spec: DataSpec) -> DataSplits:
    from torchvision.datasets import CIFAR10

    root = Path(spec.root).expanduser() if spec.root else CACHE / "cifar10"
    try:
        train, test = (CIFAR10(str(root), train=flag, download=not spec.root) for flag in (True, False))
    except Exception as error:
        raise EdgecompError(
            f"CIFAR-10 is not in {root} and could not be downloaded ({type(error).__name__}). Download "
            "cifar-10-python.tar.gz, extract it, and set data.root to the folder holding cifar-10-batches-py/."
        ) from None
    arrays = [(part.data.transpose(0, 3, 1, 2), np.asarray(part.targets)) for part in (train, test)]
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    return with_validation(spec, mean, std, *arrays, val_size=5000, augment="pad_crop", classes=tuple(train.classes))
