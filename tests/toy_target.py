"""A toy deployment target, for tests: TorchScript files run by torch.jit.

What adding a target to edgecomp takes is this module (export, load, read_metadata, size_bytes, TOLERANCE, a
runner) and one `targets.TARGETS` line: see tests/test_pipeline.py::test_a_new_target_is_one_module_and_one_table_line.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from targets.base import check_export_args, predict_in_batches
from targets.fileio import atomic_path

TOLERANCE = {"fp32": 1e-5}
PRECISIONS = ("fp32",)


def export(model, example, precision: str, out: Path, calibration, metadata: dict[str, str], io: str = "float") -> Path:
    import torch

    check_export_args("toy", precision, PRECISIONS, calibration, io)
    traced = torch.jit.trace(model.eval(), example, check_trace=False)  # the pipeline checks parity itself
    extra = {"metadata.json": json.dumps(metadata), "input_shape.json": json.dumps(list(example.shape))}
    with atomic_path(out) as tmp:
        torch.jit.save(traced, str(tmp), _extra_files=extra)
    return Path(out)


def _extra(path: Path) -> dict[str, str]:
    """The extra files torch.jit.save put in the archive (a zip: `<name>/extra/<file>`), without loading the model."""
    with zipfile.ZipFile(path) as archive:
        return {
            name.rsplit("/", 1)[1]: archive.read(name).decode()
            for name in archive.namelist()
            if name.split("/")[-2:-1] == ["extra"]
        }


def read_metadata(path: Path) -> dict[str, str]:
    return json.loads(_extra(path)["metadata.json"] or "{}")


def size_bytes(path: Path) -> int:
    return Path(path).stat().st_size


def load(path: Path, threads: int | None = None, shape: tuple[int, ...] | None = None) -> ToyRunner:
    return ToyRunner(Path(path), threads or 1, shape)


class ToyRunner:
    def __init__(self, path: Path, threads: int, shape: tuple[int, ...] | None) -> None:
        import torch

        self.path, self.threads = path, threads
        self.runtime = f"torch.jit {torch.__version__}"
        self.input_shape = tuple(shape or json.loads(_extra(path)["input_shape.json"]))
        self._module = torch.jit.load(str(path)).eval()
        self._outputs: list[np.ndarray] = []

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        """A traced convnet takes any batch: up to 256 images a call, not the file's one. A TorchScript call costs
        milliseconds, which at one image a call made scoring this toy the slowest part of the tests using it."""
        import torch

        x = np.asarray(x, dtype=np.float32)
        if x.ndim != len(self.input_shape) or x.shape[1:] != self.input_shape[1:]:
            return predict_in_batches(self, x)  # which refuses it, in the runners' own words
        chunks = []
        with torch.no_grad():
            for start in range(0, len(x), 256):
                chunks.append(_numpy(self._module(torch.from_numpy(x[start : start + 256]))))
        return [np.concatenate(outs) for outs in zip(*chunks, strict=True)]

    def bind(self, x: np.ndarray) -> Callable[[], None]:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

        def infer() -> None:
            with torch.no_grad():
                out = self._module(tensor)
            self._outputs = _numpy(out)

        return infer

    def outputs(self) -> list[np.ndarray]:
        return self._outputs


def _numpy(out) -> list[np.ndarray]:
    """A traced module's output (one tensor, or a tuple of them) as the runners' list of arrays."""
    return [o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])]
