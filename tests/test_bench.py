"""The latency harness: result fields, the JSON contract, and running on a device without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import targets
from targets.bench import BenchResult, benchmark, main
from targets.device import device_info, runtime_versions

JSON_KEYS = {
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_mean",
    "latency_ms_std",
    "runs",
    "warmup",
    "threads",
    "input_shape",
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
    assert (result.runs, result.warmup, result.threads) == (7, 2, 1)
    assert result.input_shape == list(runner.input_shape)
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
    result = _run_bench([str(path), "--json", "--threads", "1", "--runs", "5", "--warmup", "1"], no_torch_path)
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
