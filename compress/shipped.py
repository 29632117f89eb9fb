"""The recipes shipped inside the package (compress/recipes/*.yaml), by name.

Found through importlib.resources, so a wheel or any non-editable install has them as well as a checkout,
whatever the working directory. This module imports nothing heavy: `edgecomp recipes` answers at once.

>>> sorted(shipped_recipes())[:2]
['mobilenetv2-cifar10', 'mobilenetv2-fashion-mnist-sweep']
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable


def shipped_recipes() -> dict[str, Traversable]:
    """Each shipped recipe's file by its name (the file name without .yaml), sorted by name."""
    files = [f for f in (resources.files("compress") / "recipes").iterdir() if f.name.endswith(".yaml")]
    return {f.name.removesuffix(".yaml"): f for f in sorted(files, key=lambda f: f.name.removesuffix(".yaml"))}
