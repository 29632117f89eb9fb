"""Latency of one model file in its own runtime: warm-up, N timed inferences, percentiles.

Imports no torch (only numpy and the runtime that opens the file), so it runs on the device itself:

    python -m targets.bench model.tflite --threads 4 --runs 200 --json

Only the runtime's inference call is timed: the input is copied in once by ``Runner.bind``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
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
    runs: int
    warmup: int
    threads: int
    input_shape: list[int]
    runtime: str
    device: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict())


def benchmark(runner: Runner, warmup: int = 10, runs: int = 100) -> BenchResult:
    """Time `runs` inferences of one random input after `warmup` untimed ones.

    The thread count is the runner's: threads are fixed when a runtime opens a file
    (``targets.load_runner(path, threads=n)``).
    """
    if runs < 1 or warmup < 0:
        raise EdgecompError(f"benchmark needs runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    x = np.random.default_rng(0).standard_normal(runner.input_shape).astype(np.float32)
    infer = runner.bind(x)
    for _ in range(warmup):
        infer()
    times_ns = np.empty(runs, dtype=np.int64)
    for i in range(runs):
        start = time.perf_counter_ns()
        infer()
        times_ns[i] = time.perf_counter_ns() - start
    ms = times_ns / 1e6
    return BenchResult(
        latency_ms_p50=float(np.percentile(ms, 50)),
        latency_ms_p90=float(np.percentile(ms, 90)),
        latency_ms_mean=float(ms.mean()),
        latency_ms_std=float(ms.std()),
        runs=runs,
        warmup=warmup,
        threads=runner.threads,
        input_shape=list(runner.input_shape),
        runtime=runner.runtime,
        device=device_string(),
    )


def format_table(result: BenchResult) -> str:
    """A small plain two-column table (no rich: a device may have only numpy and a runtime)."""
    rows = [
        ("p50", f"{result.latency_ms_p50:.3f} ms"),
        ("p90", f"{result.latency_ms_p90:.3f} ms"),
        ("mean ± std", f"{result.latency_ms_mean:.3f} ± {result.latency_ms_std:.3f} ms"),
        ("runs / warm-up", f"{result.runs} / {result.warmup}"),
        ("threads", str(result.threads)),
        ("input", "x".join(map(str, result.input_shape))),
        ("runtime", result.runtime),
        ("device", result.device),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m targets.bench", description="Latency of a .tflite or OpenVINO .xml model file."
    )
    parser.add_argument("model", help="model file (.tflite, or .xml with its .bin beside it)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (default: all cores)")
    parser.add_argument("--runs", type=int, default=100, help="timed inferences (default: 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed inferences first (default: 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        result = benchmark(load_runner(args.model, threads=args.threads), warmup=args.warmup, runs=args.runs)
    except EdgecompError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.to_json() if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
