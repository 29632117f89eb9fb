"""What a run keeps between invocations, and when it may reuse it.

A **stage** (a trained or pruned model) is kept under ``runs/<name>/<stage>/``: ``model.pt``, then
``stage.json`` with the key of its inputs (its resolved spec and its parent's key). It is reused when the key
is unchanged, on any machine: training results do not depend on where the run resumes.

A **record of rows** (one candidate on one target in one precision) is kept beside its export file. Its key
holds, besides what made the file, what the numbers were measured with: the device (CPU, cores, machine) and
the versions of the converters and runtimes. A run resumed on another machine, or after an upgrade, measures
again instead of stamping the new device on latencies measured elsewhere.

Every file is written atomically and ``stage.json`` last: a killed run resumes from the last finished stage.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from compress import distributed
from compress.models import load_checkpoint, save_checkpoint
from compress.run_context import RunContext
from targets.device import device_info, installed_versions, runtime_versions
from targets.fileio import write_json

VERSIONED_PACKAGES = ("edgecomp", "torch", "torchvision", "torch-pruning", "litert-torch", "torchao", "nncf")
ONNX_EXPORTER = ("onnx", "onnxscript")  # torch.onnx's dependencies: part of a row's key, not of results.json


def content_key(inputs: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-able description of what made something."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def package_versions(names: tuple[str, ...] = VERSIONED_PACKAGES) -> dict[str, str]:
    return installed_versions(names)


def measurement_context() -> dict[str, Any]:
    """What a latency or an exported file's accuracy depends on besides the model: the device and every
    converter and runtime version (`targets.device`)."""
    versions = {**package_versions(VERSIONED_PACKAGES + ONNX_EXPORTER), **runtime_versions()}
    return {"device": device_info(), "versions": versions}


class StageCache:
    """Trained stages, kept by the key of their inputs; `manifest` says what ran and what was loaded."""

    def __init__(self, context: RunContext) -> None:
        self.context = context
        self.manifest: dict[str, dict] = {}

    def stage(
        self, name: str, inputs: dict, build: Callable[[], tuple[nn.Module, dict]]
    ) -> tuple[nn.Module, dict, str]:
        """Load stage `name` if it ran with these inputs before, else build it and save it: (model, metrics, key)."""
        context = self.context
        key = content_key(inputs)
        folder = context.run_dir / name
        saved = distributed.broadcast(self._saved_metrics(folder, key))  # rank 0 decides for all workers
        if saved is not None:
            context.console.log(f"[dim]{name}: unchanged, loaded from {folder}[/dim]")
            self.manifest[name] = {"key": key, "cached": True, **saved}
            return load_checkpoint(folder / "model.pt", context.recipe.model), saved, key
        started = time.perf_counter()
        model, metrics = build()  # every worker builds: training is collective, pruning deterministic
        metrics = {**metrics, "seconds": round(time.perf_counter() - started, 1)}
        if distributed.is_main():
            save_checkpoint(model, folder / "model.pt", context.recipe.model, context.num_classes)
            write_json(folder / "stage.json", {"key": key, "inputs": inputs, "metrics": metrics})
        distributed.barrier()
        if distributed.world_size() > 1:  # one writer: every worker goes on from the file rank 0 wrote
            model = load_checkpoint(folder / "model.pt", context.recipe.model)
        context.console.log(f"{name}: done in {metrics['seconds']} s")
        self.manifest[name] = {"key": key, "cached": False, **metrics}
        return model, metrics, key

    def checkpoint(self, name: str) -> Path:
        return self.context.run_dir / name / "model.pt"

    def _saved_metrics(self, folder: Path, key: str) -> dict | None:
        """The metrics of a finished stage with this key, or None when it must run."""
        record = folder / "stage.json"
        if self.context.force or not record.is_file() or not (folder / "model.pt").is_file():
            return None
        saved = json.loads(record.read_text())
        return saved["metrics"] if saved.get("key") == key else None


@dataclass(frozen=True)
class RowRecord:
    """Where one record of rows is kept, the key it must match, and the files its rows were measured on."""

    path: Path
    inputs: dict[str, Any]  # what made the file and the rows (with `measurement_context()`)
    files: list[str]

    @property
    def key(self) -> str:
        return content_key(self.inputs)

    def load(self, force: bool = False) -> list[dict] | None:
        """The recorded rows, or None when they must be measured (changed key, missing file, `force`)."""
        if force or not self.path.is_file():
            return None
        saved = json.loads(self.path.read_text())
        if saved.get("key") == self.key and all(Path(p).is_file() for p in saved.get("files", [])):
            return saved["rows"]
        return None

    def save(self, rows: list[dict]) -> None:
        write_json(self.path, {"key": self.key, "inputs": self.inputs, "files": self.files, "rows": rows})
