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
        self.threads = threads or torch.get_num_threads()
        self._last: list[np.ndarray] = []

    def _set_threads(self) -> None:
        torch.set_num_threads(self.threads)

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        self._set_threads()
        out = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return [tensor.numpy() for tensor in _as_list(out)]

    def bind(self, x: np.ndarray) -> Callable[[], None]:
        self._set_threads()
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

        def infer() -> None:
            with torch.no_grad():
                self._last = [tensor.detach() for tensor in _as_list(self.model(tensor))]

        return infer

    def outputs(self) -> list[np.ndarray]:
        return [tensor.numpy() for tensor in self._last]


def _as_list(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]
