"""compress.exports: a run's files made in worker processes are the files this process would make, and a
worker's failure is the run's failure, with nothing half-written left."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import INPUT_SHAPE
from torch import nn

import targets
from compress.exports import Checkpoint, ExportJob, make_files
from compress.models import save_checkpoint
from compress.schema import ModelSpec
from targets.base import EdgecompError, ExportRequest


def checkpoint(model: nn.Module, folder: Path, arch: str = "TinyNet") -> Checkpoint:
    """`model` saved as a run saves a candidate; `arch` names its class in this folder's files."""
    file = "conftest.py" if arch == "TinyNet" else Path(__file__).name
    spec = ModelSpec(arch=f"{Path(__file__).parent / file}:{arch}")
    save_checkpoint(model, folder / f"{arch}.pt", spec, num_classes=10)
    return Checkpoint(folder / f"{arch}.pt", spec)


def jobs(model: nn.Module | Checkpoint, folder: Path, pairs: list[tuple[str, str]]) -> list[ExportJob]:
    return [
        ExportJob(
            target,
            model,
            INPUT_SHAPE,
            folder / f"{target}-{precision}{targets.TARGETS[target].suffix}",
            ExportRequest(precision, metadata={"candidate": "tiny", "precision": precision}),
        )
        for target, precision in pairs
    ]


def test_workers_make_the_files_this_process_would(
    tiny_net: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs = [("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "fp16")]
    here = jobs(tiny_net, tmp_path / "here", pairs)  # in memory: made in this process
    make_files(here, processes=1)

    # Spawned workers import their own ExportJob: if this process made a file now, the test would fail.
    def not_here(self: ExportJob) -> Path:
        raise AssertionError(f"{self.path.name} was made in the parent process")

    monkeypatch.setattr(ExportJob, "run", not_here)
    made: list[str] = []
    there = jobs(checkpoint(tiny_net, tmp_path), tmp_path / "there", pairs)
    make_files(there, processes=2, done=lambda job, seconds: made.append(job.path.name))

    assert sorted(made) == sorted(job.path.name for job in there)
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
    for a, b in zip(here, there, strict=True):
        ours, theirs = targets.load_runner(a.path).predict(x), targets.load_runner(b.path).predict(x)
        np.testing.assert_array_equal(ours[0], theirs[0])
        assert targets.get_target(b.target).read_metadata(b.path)["candidate"] == "tiny"
    assert not list((tmp_path / "there").glob(".tmp-*"))


def test_a_workers_failure_is_raised_here_as_it_was_there_and_leaves_no_temporaries(
    tiny_net: nn.Module, tmp_path: Path
) -> None:
    bad = jobs(checkpoint(tiny_net, tmp_path), tmp_path, [("onnx", "fp32"), ("tflite", "int8"), ("openvino", "fp32")])
    with pytest.raises(EdgecompError, match="calibration"):  # int8 without calibration images
        make_files(bad, processes=2)
    assert not list(tmp_path.glob(".tmp-*"))
    assert not (tmp_path / "tflite-int8.tflite").exists()


def test_a_job_crosses_to_a_worker_as_a_checkpoint_path_never_as_a_pickled_module(
    tiny_net: nn.Module, tmp_path: Path
) -> None:
    import pickle

    (job,) = jobs(checkpoint(tiny_net, tmp_path), tmp_path, [("onnx", "fp32")])
    copy = pickle.loads(pickle.dumps(job))
    assert copy.model == job.model and copy.path == job.path and copy.request.metadata == job.request.metadata
    for a, b in zip(tiny_net.state_dict().values(), copy.model.load().state_dict().values(), strict=True):
        assert torch.equal(a, b)
    (in_memory,) = jobs(tiny_net, tmp_path, [("onnx", "fp32")])
    with pytest.raises(TypeError, match="in this process only"):
        pickle.dumps(in_memory)


class DiesWhenTraced(nn.Module):
    """A model whose process dies when an exporter runs it, as under the OOM killer or a converter's crash."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        os._exit(9)


def test_a_worker_that_dies_is_one_error_that_says_what_to_do(tiny_net: nn.Module, tmp_path: Path) -> None:
    (dies,) = jobs(checkpoint(DiesWhenTraced(), tmp_path, "DiesWhenTraced"), tmp_path, [("onnx", "fp32")])
    with pytest.raises(EdgecompError, match=r"export process died .* making one of .*onnx-fp32.onnx.*--export-jobs 1"):
        make_files([dies, *jobs(checkpoint(tiny_net, tmp_path), tmp_path, [("openvino", "fp32")])], processes=2)
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("processes", [1, 2])
def test_with_a_failed_callback_one_failed_export_does_not_stop_the_others(
    tiny_net: nn.Module, tmp_path: Path, processes: int
) -> None:
    pairs = [("onnx", "fp32"), ("tflite", "int8"), ("openvino", "fp32")]  # tflite int8 without calibration fails
    failed: list[tuple[str, str]] = []
    made: list[str] = []
    make_files(
        jobs(checkpoint(tiny_net, tmp_path), tmp_path, pairs),
        processes=processes,
        done=lambda job, seconds: made.append(job.path.name),
        failed=lambda job, error: failed.append((job.path.name, str(error))),
    )
    assert sorted(made) == ["onnx-fp32.onnx", "openvino-fp32.xml"]
    assert [name for name, _ in failed] == ["tflite-int8.tflite"] and "calibration" in failed[0][1]
    assert not (tmp_path / "tflite-int8.tflite").exists() and not list(tmp_path.glob(".tmp-*"))
