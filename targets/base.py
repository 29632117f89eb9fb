"""The contract between the PyTorch side and the deployment runtimes.

This module imports only the standard library and numpy, so that a device with nothing but numpy and
one runtime (tflite-runtime, ai-edge-litert or openvino) can run the runners and the benchmark.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np


class EdgecompError(Exception):
    """A mistake the user can fix (bad recipe, missing file, unsupported op).

    The message says what is wrong and how to fix it; the CLI prints it without a traceback.
    """


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' hint for a mistyped name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Runner(Protocol):
    """A loaded model file in its own runtime: the thing that ships.

    Inputs are float32 NCHW batches, normalised exactly as the PyTorch model expects them; a runner
    whose file has int8 input tensors quantises them itself with the tensor's scale and zero point.
    """

    path: Path
    runtime: str  # "<package> <version>", e.g. "ai_edge_litert 2.3.0"
    input_shape: tuple[int, ...]  # static shape of one inference, batch included (usually 1)

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        """Run a batch of any size (split into the file's static batch); one float32 array per output."""
        ...

    def bind(self, x: np.ndarray) -> Callable[[], None]:
        """Copy `x` (one static-shape input) into the runtime once and return a call that runs inference
        on it and nothing else: the benchmark times only that call."""
        ...


@dataclass(frozen=True)
class Exported:
    """One exported file and how it was made."""

    target: str
    precision: str
    path: Path
    size_bytes: int
