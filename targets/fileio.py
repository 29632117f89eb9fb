"""Atomic file writes: every file edgecomp writes appears whole or not at all.

A killed run, a full disk or an exception mid-write leaves only a dot-prefixed temporary that the
next write of the same file replaces; the final name never holds a partial file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_prefix(pid: int) -> str:
    """How the names of process `pid`'s temporaries start."""
    return f".tmp-{pid}-"


def temp_sibling(path: Path) -> Path:
    """A hidden name beside `path` that keeps its suffix (converters pick formats by suffix)."""
    return path.with_name(f"{temp_prefix(os.getpid())}{path.name}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; it is renamed onto `path` only if the block succeeds.

    >>> with atomic_path("model.tflite") as tmp:
    ...     tmp.write_bytes(data)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
