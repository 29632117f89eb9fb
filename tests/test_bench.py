"""The latency harness: result fields, the JSON contract, and running on a device without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import targets
from targets.bench import BenchResult, benchmark, main, open_for_bench, parse_shape
from targets.device import device_info, runtime_versions

JSON_KEYS = {
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_mean",
    "latency_ms_std",
    "throughput_per_s",
    "runs",
    "warmup",
    "threads",
    "batch",
    "input_shape",
    "peak_rss_mb",
    "runtime",
    "device",
}


@pytest.mark.parametrize("target", targets.TARGETS)
def test_benchmark_fills_every_field(target: str, exported: Callable[[str, str], Path]) -> None:
    runner = targets.load_runner(exported(target, "fp32"), threads=1)
    result = benchmark(runner, warmup=2, runs=7)
    assert isinstance(result, BenchResult)
    assert 0 < result.latency_ms_p50 <= result.latency_ms_p90
    assert result.latency_ms_mean > 0 and result.latency_ms_std >= 0
    assert (result.runs, result.warmup, result.threads, result.batch) == (7, 2, 1, 1)
    assert result.input_shape == list(runner.input_shape)
    assert result.throughput_per_s == pytest.approx(1000.0 / result.latency_ms_mean)
    assert result.peak_rss_mb > 10  # a runtime and a model are loaded: at least tens of MiB
    assert result.runtime == runner.runtime
    assert str(device_info()["cores"]) in result.device
    decoded = json.loads(result.to_json())
    assert set(decoded) == JSON_KEYS
    assert decoded == result.as_dict()


def test_benchmark_refuses_zero_runs(exported: Callable[[str, str], Path]) -> None:
    runner = targets.load_runner(exported("tflite", "fp32"))
    with pytest.raises(targets.EdgecompError, match="runs >= 1"):
        benchmark(runner, runs=0)


@pytest.fixture(scope="module")
def no_torch_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PYTHONPATH entry whose `torch` package refuses to import, as on a device without torch."""
    folder = tmp_path_factory.mktemp("no_torch")
    (folder / "torch").mkdir()
    (folder / "torch" / "__init__.py").write_text("raise ImportError('torch is not installed on this device')\n")
    return str(folder)


def _run_bench(args: list[str], no_torch_path: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [no_torch_path, os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-m", "targets.bench", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_the_torch_blocker_works(no_torch_path: str) -> None:
    env = {**os.environ, "PYTHONPATH": no_torch_path}
    result = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "not installed on this device" in result.stderr


@pytest.mark.parametrize("target", targets.TARGETS)
def test_bench_cli_runs_without_torch(target: str, exported: Callable[[str, str], Path], no_torch_path: str) -> None:
    path = exported(target, "int8")
    args = [str(path), "--json", "--threads", "1", "--runs", "5", "--warmup", "1", "--min-time", "0"]
    result = _run_bench(args, no_torch_path)
    assert result.returncode == 0, result.stderr
    decoded = json.loads(result.stdout)
    assert set(decoded) == JSON_KEYS
    assert decoded["runs"] == 5 and decoded["threads"] == 1
    assert decoded["input_shape"] == [1, 3, 32, 32]


def test_bench_cli_prints_a_table_by_default(exported: Callable[[str, str], Path], no_torch_path: str) -> None:
    result = _run_bench([str(exported("tflite", "fp32")), "--runs", "3", "--warmup", "0"], no_torch_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("p50")
    assert "threads" in result.stdout and str(os.cpu_count()) in result.stdout


def test_bench_cli_exits_2_with_one_line_on_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model")
    assert main([str(bad), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1


def test_device_info_and_runtime_versions_import_no_runtime() -> None:
    code = (
        "import json, sys\n"
        "from targets.device import device_info, runtime_versions\n"
        "print(json.dumps({'device': device_info(), 'runtimes': runtime_versions(),\n"
        "  'imported': [m for m in ('openvino', 'ai_edge_litert', 'onnxruntime') if m in sys.modules]}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    decoded = json.loads(result.stdout)
    assert decoded["imported"] == []
    assert decoded["device"]["cores"] == os.cpu_count()
    assert decoded["device"]["cpu"] and decoded["device"]["machine"]
    assert decoded["runtimes"] == runtime_versions()
    assert {"ai_edge_litert", "openvino"} <= set(runtime_versions())  # both are dependencies of edgecomp


def test_time_budget_runs_as_many_as_fit(exported: Callable[[str, str], Path]) -> None:
    runner = targets.load_runner(exported("openvino", "fp32"), threads=1)
    result = benchmark(runner, warmup=1, runs=1, time_budget_s=0.2)
    assert result.runs > 1
    assert result.runs * result.latency_ms_mean <= 0.2 * 1000 + result.latency_ms_p90 * 2 + 50
    with pytest.raises(targets.EdgecompError, match="positive time budget"):
        benchmark(runner, time_budget_s=0)


def test_min_time_times_past_runs_until_it_has_passed_and_never_fewer_than_runs(
    exported: Callable[[str, str], Path],
) -> None:
    runner = targets.load_runner(exported("openvino", "fp32"), threads=1)
    result = benchmark(runner, warmup=0, runs=3, min_time_s=0.2)
    assert result.runs > 3 and result.runs * result.latency_ms_mean >= 0.2 * 1000 - 5 * result.latency_ms_p90 - 20
    assert benchmark(runner, warmup=0, runs=3, min_time_s=0.0).runs == 3
    assert benchmark(runner, warmup=0, runs=3).runs == 3  # the API's default: exactly runs; the CLIs ask MIN_TIME_S


@pytest.mark.parametrize("target", ["tflite", "openvino"])
def test_batch_changes_the_first_dimension_and_the_throughput(
    target: str, exported: Callable[[str, str], Path]
) -> None:
    runner = open_for_bench(exported(target, "fp32"), threads=1, batch=4)
    assert runner.input_shape == (4, 3, 32, 32)
    result = benchmark(runner, warmup=1, runs=5)
    assert (result.batch, result.input_shape) == (4, [4, 3, 32, 32])
    assert result.throughput_per_s == pytest.approx(4 * 1000.0 / result.latency_ms_mean)
    assert runner.predict(np.zeros((6, 3, 32, 32), np.float32))[0].shape == (6, 10)


@pytest.fixture(scope="module")
def dynamic_onnx(exported: Callable[[str, str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny net's ONNX file with a symbolic batch and image size, as many files made elsewhere have."""
    import onnx

    model = onnx.load(str(exported("onnx", "fp32")))
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        dims[0].dim_param = "batch"
        if len(dims) == 4:
            dims[2].dim_param, dims[3].dim_param = "height", "width"
    del model.graph.value_info[:]
    path = tmp_path_factory.mktemp("dynamic") / "dynamic.onnx"
    onnx.save(model, str(path))
    return path


def test_a_dynamic_input_needs_a_shape(dynamic_onnx: Path) -> None:
    with pytest.raises(targets.EdgecompError, match=r"dynamic; give one to run \(--shape"):
        targets.load_runner(dynamic_onnx)
    runner = targets.load_runner(dynamic_onnx, shape=(2, 3, 32, 32))
    assert runner.input_shape == (2, 3, 32, 32)
    assert runner.predict(np.zeros((3, 3, 32, 32), np.float32))[0].shape == (3, 10)
    with pytest.raises(targets.EdgecompError, match="does not fit"):
        targets.load_runner(dynamic_onnx, shape=(1, 4, 32, 32))


def test_parse_shape() -> None:
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    for bad in ("", "1x0x3", "ax3", "1,3"):
        with pytest.raises(targets.EdgecompError, match="1x3x224x224"):
            parse_shape(bad)


def test_bench_cli_shape_batch_and_time_budget_without_torch(dynamic_onnx: Path, no_torch_path: str) -> None:
    args = [
        str(dynamic_onnx),
        "--json",
        "--shape",
        "1x3x32x32",
        "--batch",
        "2",
        "--time-budget",
        "0.2",
        "--warmup",
        "1",
    ]
    result = _run_bench(args, no_torch_path)
    assert result.returncode == 0, result.stderr
    decoded = json.loads(result.stdout)
    assert set(decoded) == JSON_KEYS
    assert decoded["input_shape"] == [2, 3, 32, 32] and decoded["batch"] == 2
    assert decoded["runs"] > 1 and decoded["throughput_per_s"] > 0 and decoded["peak_rss_mb"] > 0
    assert decoded["runtime"].startswith("onnxruntime ")
