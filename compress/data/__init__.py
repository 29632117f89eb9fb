"""Data sets (the DATASETS registry): each entry turns the recipe's DataSpec into fixed splits.

Splits are deterministic and independent of the training seed, so every candidate of every run is
scored on the same held-out images. Images are returned as float32 CHW tensors, already resized and
normalised exactly as the exported models expect them.
"""

from compress.data import detection_files, digit_scenes, digits, folders, mnist_like  # noqa: F401  (registers the data sets)
from compress.data._base import DATASETS, POOLED, DataSplits, ImageArrayDataset, as_numpy, make_loader, split_refusal

__all__ = ["DATASETS", "POOLED", "DataSplits", "ImageArrayDataset", "as_numpy", "make_loader", "split_refusal"]
