"""PyTorch eager as a runner, so the reference rows go through the same evaluation and benchmark code
as the exported files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn


class TorchRunner:
    """A `targets.base.Runner` over an in-memory module (fp32, eager, CPU)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], threads: int | None = None) -> None:
        self.model = model.eval()
        self.path = Path("<pytorch>")
        self.runtime = f"torch {torch.__version__.split('+')[0]}"
        self.input_shape = tuple(input_shape)
        self.threads = threads

    def _set_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        self._set_threads()
        out = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return [o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])]

    def bind(self, x: np.ndarray) -> Callable[[], None]:
        self._set_threads()
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

        def infer() -> None:
            with torch.no_grad():
                self.model(tensor)

        return infer
