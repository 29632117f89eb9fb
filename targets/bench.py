"""Latency of one model file in its own runtime: warm-up, N timed inferences, percentiles.

Imports no torch (only numpy and the runtime that opens the file), so it runs on the device itself:

    python -m targets.bench model.tflite --threads 4 --runs 200 --json
    python -m targets.bench model.onnx --time-budget 10 --shape 1x3x224x224   # a dynamic-shape file

Only the runtime's inference call is timed: the input is copied in once by ``Runner.bind``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from targets import load_runner
from targets.base import EdgecompError, Runner
from targets.device import device_string


@dataclass(frozen=True)
class BenchResult:
    """Latency of one file with one thread count on one device (times in milliseconds)."""

    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_mean: float
    latency_ms_std: float
    throughput_per_s: float  # inferences per second (batch x runs / time), one request at a time
    runs: int
    warmup: int
    threads: int
    batch: int
    input_shape: list[int]
    peak_rss_mb: float  # the process's peak resident memory so far: runtime, model and arena included
    runtime: str
    device: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict())


def benchmark(runner: Runner, warmup: int = 10, runs: int = 100, time_budget_s: float | None = None) -> BenchResult:
    """Time `runs` inferences of one random input after `warmup` untimed ones; with `time_budget_s`, time
    as many as fit in that many seconds instead (at least one).

    The thread count and the input shape are the runner's: both are fixed when a runtime opens a file
    (``targets.load_runner(path, threads=n, shape=...)``).
    """
    if runs < 1 or warmup < 0 or (time_budget_s is not None and time_budget_s <= 0):
        raise EdgecompError(
            f"benchmark needs runs >= 1, warmup >= 0 and a positive time budget, "
            f"got runs={runs}, warmup={warmup}, time_budget_s={time_budget_s}"
        )
    x = np.random.default_rng(0).standard_normal(runner.input_shape).astype(np.float32)
    infer = runner.bind(x)
    for _ in range(warmup):
        infer()
    times_ns = _timed_runs(infer, runs) if time_budget_s is None else _timed_for(infer, time_budget_s)
    ms = times_ns / 1e6
    batch = int(runner.input_shape[0]) if runner.input_shape else 1
    return BenchResult(
        latency_ms_p50=float(np.percentile(ms, 50)),
        latency_ms_p90=float(np.percentile(ms, 90)),
        latency_ms_mean=float(ms.mean()),
        latency_ms_std=float(ms.std()),
        throughput_per_s=float(batch * 1000.0 / ms.mean()),
        runs=len(ms),
        warmup=warmup,
        threads=runner.threads,
        batch=batch,
        input_shape=list(runner.input_shape),
        peak_rss_mb=peak_rss_mb(),
        runtime=runner.runtime,
        device=device_string(),
    )


def _timed_runs(infer: Callable[[], None], runs: int) -> np.ndarray:
    times_ns = np.empty(runs, dtype=np.int64)
    for i in range(runs):
        start = time.perf_counter_ns()
        infer()
        times_ns[i] = time.perf_counter_ns() - start
    return times_ns


def _timed_for(infer: Callable[[], None], seconds: float) -> np.ndarray:
    times_ns: list[int] = []
    deadline = time.perf_counter_ns() + int(seconds * 1e9)
    while not times_ns or time.perf_counter_ns() < deadline:
        start = time.perf_counter_ns()
        infer()
        times_ns.append(time.perf_counter_ns() - start)
    return np.asarray(times_ns, dtype=np.int64)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (0.0 where the OS does not say, e.g. Windows)."""
    try:
        import resource
    except ImportError:
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x3x224x224' -> (1, 3, 224, 224)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise EdgecompError(f"--shape {text!r}: expected positive sizes joined by x, e.g. 1x3x224x224")
    return shape


def open_for_bench(
    path: str | Path, threads: int | None = None, shape: tuple[int, ...] | None = None, batch: int | None = None
) -> Runner:
    """Open `path` for a benchmark: `shape` overrides a dynamic input, `batch` the first dimension of either."""
    runner = load_runner(path, threads=threads, shape=shape)
    if batch is None or runner.input_shape[0] == batch:
        return runner
    return load_runner(path, threads=threads, shape=(batch, *runner.input_shape[1:]))


def format_table(result: BenchResult) -> str:
    """A small plain two-column table (no rich: a device may have only numpy and a runtime)."""
    rows = [
        ("p50", f"{result.latency_ms_p50:.3f} ms"),
        ("p90", f"{result.latency_ms_p90:.3f} ms"),
        ("mean ± std", f"{result.latency_ms_mean:.3f} ± {result.latency_ms_std:.3f} ms"),
        ("throughput", f"{result.throughput_per_s:.1f} inferences/s"),
        ("runs / warm-up", f"{result.runs} / {result.warmup}"),
        ("threads", str(result.threads)),
        ("input", "x".join(map(str, result.input_shape))),
        ("peak memory", f"{result.peak_rss_mb:.1f} MiB"),
        ("runtime", result.runtime),
        ("device", result.device),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m targets.bench", description="Latency of a .tflite, OpenVINO .xml or .onnx model file."
    )
    parser.add_argument("model", help="model file (.tflite, .onnx, or .xml with its .bin beside it)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (default: all cores)")
    parser.add_argument("--runs", type=int, default=100, help="timed inferences (default: 100)")
    parser.add_argument("--time-budget", type=float, help="time inferences for this many seconds instead of --runs")
    parser.add_argument("--warmup", type=int, default=10, help="untimed inferences first (default: 10)")
    parser.add_argument("--batch", type=int, help="batch size (default: the file's)")
    parser.add_argument("--shape", help="input shape, e.g. 1x3x224x224 (needed when the file's input is dynamic)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        shape = parse_shape(args.shape) if args.shape else None
        runner = open_for_bench(args.model, threads=args.threads, shape=shape, batch=args.batch)
        result = benchmark(runner, warmup=args.warmup, runs=args.runs, time_budget_s=args.time_budget)
    except EdgecompError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.to_json() if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
