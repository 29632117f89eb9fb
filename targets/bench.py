"""Latency of one model file in its own runtime: warm-up, N timed inferences, percentiles.

Imports no torch (only numpy and the runtime that opens the file), so it runs on the device itself:

    python -m targets.bench model.tflite --threads 4 --runs 200 --json
    python -m targets.bench model.onnx --time-budget 10 --shape 1x3x224x224   # a dynamic-shape file

Only the runtime's inference call is timed: the input is copied in once by ``Runner.bind``. A detector's
file (outputs ``[N, A, C+1]`` logits and ``[N, A, 4]`` boxes) is recognised by its output shapes, and the
numpy post-processing its results need (``targets.detect.postprocess``: threshold, top-k, NMS) is timed
separately on the model's own outputs, since a device pays for both.

Several files (or thread counts) are timed together, interleaved (`interleave`): all are loaded, then the runs
are taken in rounds, each round a short burst of every one in turn (in an order shuffled per round with a
fixed seed), and each one's percentiles come from its bursts pooled. A CPU whose speed drifts over minutes
(a VM, a phone warming up, another process) then slows every file alike instead of the ones timed last:

    python -m targets.bench a.tflite b.xml --threads 1,2 --runs 100 --json   # one JSON line each
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from targets import detect, get_target, load_runner, target_for_file
from targets.base import EdgecompError, Runner
from targets.device import device_string

POSTPROCESS_CHOICES = ("auto", "detection", "none")  # auto: detection when the output shapes are a detector's
# One file timed alone: at least this long as well as --runs. 100 runs of a 0.05 ms file are 5 ms of timing, in which
# the first slow runs move the p50: on the quickstart's 16 files (2026-12-02, 2 threads, AMD EPYC) the run's p50
# was matched within 15% by 7 of 16 default 100-run timings (up to 1.69x) and by 13 of 16 one-second ones.
MIN_TIME_S = 1.0
ROUNDS = 100  # rounds in which interleaved files share their runs: with 100 runs, one timed run per burst


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
    postprocess_ms_p50: float | None = None  # detection post-processing of one inference's outputs
    postprocess_ms_p90: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The public JSON fields; the post-processing ones only where there was any, so that a
        classifier's object is the same as before detectors were supported."""
        fields = asdict(self)
        if self.postprocess_ms_p50 is None:
            del fields["postprocess_ms_p50"], fields["postprocess_ms_p90"]
        return fields

    def to_json(self) -> str:
        return json.dumps(self.as_dict())


def benchmark(
    runner: Runner,
    warmup: int = 10,
    runs: int = 100,
    time_budget_s: float | None = None,
    postprocess: str = "auto",
    min_time_s: float = 0.0,
) -> BenchResult:
    """Time `runs` inferences of one random input after `warmup` untimed ones, and more until `min_time_s`
    seconds of timing (the CLIs ask `MIN_TIME_S`); with `time_budget_s`, time as many as fit in that many
    seconds instead (at least one).

    The thread count and the input shape are the runner's: both are fixed when a runtime opens a file
    (``targets.load_runner(path, threads=n, shape=...)``). `postprocess` (see `POSTPROCESS_CHOICES`) adds
    the detection post-processing's latency on the last inference's outputs, timed the same way.
    """
    _check_counts(warmup, runs, time_budget_s)
    timer = RunnerTimer(runner, postprocess)
    ms, post_ms = timer.burst(warmup, runs, time_budget_s, min_time_s)
    return bench_result(timer, ms, post_ms, warmup)


class Timed(Protocol):
    """What `interleave` times in bursts: a runner here (`RunnerTimer`), or a model another process holds (the
    PyTorch eager rows of a run, `compress.eager.EagerTimers`)."""

    threads: int
    input_shape: tuple[int, ...]
    runtime: str

    def burst(self, warmup: int, runs: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Milliseconds of `runs` timed inferences after `warmup` untimed ones, then of a detector's
        post-processing of the outputs (as many, after as many untimed ones), or None for other models."""
        ...

    def peak_rss_mb(self) -> float:
        """Peak resident memory of the process the model runs in."""
        ...


class RunnerTimer:
    """A runner timed here, in bursts, on one random input copied in once (`Runner.bind`)."""

    def __init__(self, runner: Runner, postprocess: str = "auto") -> None:
        if postprocess not in POSTPROCESS_CHOICES:
            raise EdgecompError(f"postprocess {postprocess!r}: expected one of {', '.join(POSTPROCESS_CHOICES)}")
        self.runner = runner
        self.threads, self.input_shape, self.runtime = runner.threads, tuple(runner.input_shape), runner.runtime
        self._call = runner.bind(np.random.default_rng(0).standard_normal(runner.input_shape).astype(np.float32))
        self._postprocess = postprocess

    def burst(
        self, warmup: int, runs: int, time_budget_s: float | None = None, min_time_s: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray | None]:
        ms = _latencies_ms(self._call, warmup, runs, time_budget_s, min_time_s)
        post_ms = _postprocess_latencies_ms(self.runner, self._postprocess, warmup, runs, time_budget_s)
        self._postprocess = "none" if post_ms is None else "detection"  # decided once: later bursts read no file
        return ms, post_ms

    def peak_rss_mb(self) -> float:
        return peak_rss_mb()


def interleave(
    timers: list[Timed], warmup: int = 10, runs: int = 100, rounds: int = ROUNDS, seed: int = 0
) -> list[BenchResult | EdgecompError]:
    """Time every one of `timers` `runs` times, all in the same rounds: each round a burst of each in turn, in
    an order shuffled per round (fixed by `seed`); each result pools its bursts.

    `runs` keeps its meaning (inferences timed per model, split as evenly as can be over min(rounds, runs)
    rounds), and so does `warmup`: untimed inferences before timing, here before every burst, since other
    models ran in between (after a single untimed inference, OpenVINO files read 30-90% slow on the 2-core VM).
    Many short bursts beat a few long ones where other processes come and go: a tiny model's burst is over
    within a scheduler slice, so each burst is one draw of "the other core was free or not", and the median of
    ten such draws flipped between the two (same-architecture files 20-120% apart in 3 of 8 tries, against at
    most 6% in 8 with one run per burst). A timer whose burst raises an `EdgecompError` gets that error as its
    result and no more turns.
    """
    _check_counts(warmup, runs, None)
    if rounds < 1:
        raise EdgecompError(f"interleaved timing needs rounds >= 1, got {rounds}")
    bursts: list[list[tuple[np.ndarray, np.ndarray | None]]] = [[] for _ in timers]
    failed: dict[int, EdgecompError] = {}
    for index, size in enumerate(round_sizes(runs, rounds)):
        for i in round_order(len(timers), index, seed):
            if i in failed:
                continue
            try:
                bursts[i].append(timers[i].burst(warmup, size))
            except EdgecompError as error:
                failed[i] = error
    return [failed[i] if i in failed else _pooled(timer, bursts[i], warmup) for i, timer in enumerate(timers)]


def round_sizes(runs: int, rounds: int) -> list[int]:
    """`runs` split over min(rounds, runs) rounds, the first ones a run larger where it does not divide."""
    count = min(rounds, runs)
    return [runs // count + (1 if index < runs % count else 0) for index in range(count)]


def round_order(count: int, index: int, seed: int = 0) -> list[int]:
    """The order of `count` models in round `index`: a permutation fixed by (seed, index)."""
    return [int(i) for i in np.random.default_rng((seed, index)).permutation(count)]


def _pooled(timer: Timed, bursts: list[tuple[np.ndarray, np.ndarray | None]], warmup: int) -> BenchResult:
    ms = np.concatenate([model for model, _ in bursts])
    posts = [post for _, post in bursts]
    post_ms = None if any(post is None for post in posts) else np.concatenate(posts)
    return bench_result(timer, ms, post_ms, warmup)


def bench_result(timer: Timed, ms: np.ndarray, post_ms: np.ndarray | None, warmup: int) -> BenchResult:
    """The percentiles of `timer`'s latencies `ms` (and `post_ms`, a detector's post-processing)."""
    batch = int(timer.input_shape[0]) if timer.input_shape else 1
    return BenchResult(
        latency_ms_p50=float(np.percentile(ms, 50)),
        latency_ms_p90=float(np.percentile(ms, 90)),
        latency_ms_mean=float(ms.mean()),
        latency_ms_std=float(ms.std()),
        throughput_per_s=float(batch * 1000.0 / ms.mean()),
        runs=len(ms),
        warmup=warmup,
        threads=timer.threads,
        batch=batch,
        input_shape=list(timer.input_shape),
        peak_rss_mb=timer.peak_rss_mb(),
        runtime=timer.runtime,
        device=device_string(),
        postprocess_ms_p50=None if post_ms is None else float(np.percentile(post_ms, 50)),
        postprocess_ms_p90=None if post_ms is None else float(np.percentile(post_ms, 90)),
    )


def _check_counts(warmup: int, runs: int, time_budget_s: float | None) -> None:
    if runs < 1 or warmup < 0 or (time_budget_s is not None and time_budget_s <= 0):
        raise EdgecompError(
            f"benchmark needs runs >= 1, warmup >= 0 and a positive time budget, "
            f"got runs={runs}, warmup={warmup}, time_budget_s={time_budget_s}"
        )


def _latencies_ms(
    call: Callable[[], object], warmup: int, runs: int, time_budget_s: float | None, min_time_s: float = 0.0
) -> np.ndarray:
    """Milliseconds of each timed call, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    budget = (runs, min_time_s) if time_budget_s is None else (1, time_budget_s)  # one run at least, then on
    times_ns = _timed_runs(call, *budget)
    return times_ns / 1e6


def _postprocess_latencies_ms(
    runner: Runner, mode: str, warmup: int, runs: int, time_budget_s: float | None
) -> np.ndarray | None:
    """Latencies of the detection post-processing of the runner's last outputs (as many runs, or as long a
    time budget, as the model had), or None where there is none."""
    if mode == "none":
        return None
    outputs = runner.outputs()
    if not detect.is_detector_file(_metadata(runner.path), [out.shape for out in outputs]):
        if mode == "auto":
            return None
        shapes = ", ".join(str(tuple(out.shape)) for out in outputs)
        raise EdgecompError(
            f"{runner.path}: outputs {shapes} are not a detector's (logits [N, A, C+1] and boxes [N, A, 4]); "
            "benchmark it with postprocess 'auto' or 'none'"
        )
    return _latencies_ms(partial(detect.postprocess, outputs), warmup, runs, time_budget_s)


def _metadata(path: Path | None) -> dict[str, str]:
    """The file's metadata; {} for a runner without a readable file of a known target (the shapes decide)."""
    if path is None:
        return {}
    try:
        return get_target(target_for_file(Path(path)).name).read_metadata(path)
    except Exception:  # any runtime's reader error: metadata only refines what the shapes already say
        return {}


def _timed_runs(infer: Callable[[], object], runs: int, min_time_s: float = 0.0) -> np.ndarray:
    """`runs` timed calls, then more until `min_time_s` seconds have passed since the first."""
    times_ns: list[int] = []
    deadline = time.perf_counter_ns() + int(min_time_s * 1e9)
    while len(times_ns) < runs or time.perf_counter_ns() < deadline:
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
        *_postprocess_rows(result),
        ("threads", str(result.threads)),
        ("input", "x".join(map(str, result.input_shape))),
        ("peak memory", f"{result.peak_rss_mb:.1f} MiB"),
        ("runtime", result.runtime),
        ("device", result.device),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _postprocess_rows(result: BenchResult) -> list[tuple[str, str]]:
    if result.postprocess_ms_p50 is None or result.postprocess_ms_p90 is None:
        return []
    return [
        ("post-process p50", f"{result.postprocess_ms_p50:.3f} ms"),
        ("post-process p90", f"{result.postprocess_ms_p90:.3f} ms"),
    ]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m targets.bench", description="Latency of .tflite, OpenVINO .xml or .onnx model files."
    )
    parser.add_argument(
        "model", nargs="+", help="model file(s) (.tflite, .onnx, or .xml with its .bin beside it); several: interleaved"
    )
    parser.add_argument(
        "--threads",
        type=_thread_counts,
        default=[os.cpu_count() or 1],
        help="CPU threads, or several joined by commas, e.g. 1,2: each file with each (default: all cores)",
    )
    parser.add_argument("--runs", type=int, default=100, help="timed inferences (default: 100)")
    parser.add_argument(
        "--min-time",
        type=float,
        default=MIN_TIME_S,
        help=f"one file: time more than --runs until this many seconds (default: {MIN_TIME_S}; 0: --runs only)",
    )
    parser.add_argument("--time-budget", type=float, help="time inferences for this many seconds instead of --runs")
    parser.add_argument("--warmup", type=int, default=10, help="untimed inferences first (default: 10)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS,
        help=f"with several files or thread counts: rounds the runs are split over (default: {ROUNDS})",
    )
    parser.add_argument("--batch", type=int, help="batch size (default: the file's)")
    parser.add_argument("--shape", help="input shape, e.g. 1x3x224x224 (needed when the file's input is dynamic)")
    parser.add_argument(
        "--postprocess",
        choices=POSTPROCESS_CHOICES,
        default="auto",
        help="also time a detector's numpy post-processing (default auto: when the outputs are a detector's)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON: one object (several files: one line each) instead of a table"
    )
    return parser.parse_args(argv)


def _thread_counts(text: str) -> list[int]:
    """'2' -> [2], '1,2' -> [1, 2]."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive thread counts joined by commas, e.g. 1,2")
    return counts


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    jobs = [(model, threads) for model in args.model for threads in args.threads]
    try:
        shape = parse_shape(args.shape) if args.shape else None
        if len(jobs) > 1:
            return _main_interleaved(args, jobs, shape)
        runner = open_for_bench(args.model[0], threads=args.threads[0], shape=shape, batch=args.batch)
        result = benchmark(
            runner,
            warmup=args.warmup,
            runs=args.runs,
            time_budget_s=args.time_budget,
            postprocess=args.postprocess,
            min_time_s=args.min_time,
        )
    except EdgecompError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.to_json() if args.json else format_table(result))
    return 0


def interleave_files(
    jobs: list[tuple[str | Path, int | None]],
    shape: tuple[int, ...] | None,
    batch: int | None,
    postprocess: str,
    warmup: int,
    runs: int,
    rounds: int,
) -> list[BenchResult | EdgecompError]:
    """Each (file, threads) job opened and all timed together by `interleave`, in `jobs`' order; a file that cannot
    be opened (no runtime for it here, a bad file) gets its error as its result, and the others are still timed."""
    loaded: dict[int, RunnerTimer] = {}
    results: dict[int, BenchResult | EdgecompError] = {}
    for index, (model, threads) in enumerate(jobs):
        try:
            loaded[index] = RunnerTimer(open_for_bench(model, threads, shape, batch), postprocess)
        except EdgecompError as error:
            results[index] = error
    results.update(zip(loaded, interleave(list(loaded.values()), warmup, runs, rounds), strict=True))
    return [results[index] for index in range(len(jobs))]


def _main_interleaved(args: argparse.Namespace, jobs: list[tuple[str, int]], shape: tuple[int, ...] | None) -> int:
    """Several files or thread counts, loaded together and timed by `interleave`: one JSON line (or table) per
    file and thread count, in that order, a failed one saying why (``"error"``); exit status 2 if any failed."""
    if args.time_budget is not None:
        raise EdgecompError("--time-budget times one file at one thread count; several are timed in rounds of --runs")
    timed = interleave_files(jobs, shape, args.batch, args.postprocess, args.warmup, args.runs, args.rounds)
    for (model, threads), result in zip(jobs, timed, strict=True):
        if isinstance(result, EdgecompError):
            line = json.dumps({"model": model, "threads": threads, "error": str(result)}) if args.json else None
            print(line or f"error: {model}: {result}", file=sys.stdout if args.json else sys.stderr)
        else:
            print(
                json.dumps({"model": model, **result.as_dict()}) if args.json else f"{model}\n{format_table(result)}\n"
            )
    return 2 if any(isinstance(result, EdgecompError) for result in timed) else 0


if __name__ == "__main__":
    sys.exit(main())
