"""A run's latencies, taken together once its rows are scored, so that a CPU whose speed drifts (a VM, another
process) slows every row alike instead of the rows timed last.

Every row of the run, whether scored now or loaded from its record (`compress.cache.RowRecord`: it keeps the
accuracy and parity, written before any latency is taken), is timed here: all its files are loaded at once (one
runner per file and thread count) and its PyTorch models copied into one timing process
(`compress.eager.EagerTimers`), then `targets.bench.interleave` takes the recipe's `bench.runs` of each in
`bench.rounds` rounds, each round a short burst of every one in turn, in an order shuffled per round with a
fixed seed: the files together, then the PyTorch models together (see `take`). With `bench.remote` the files
are timed on that device in one command that interleaves them there the same way
(`targets.remote.RemoteSession.bench_interleaved`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

import targets
from compress.eager import EagerTimers
from compress.schema import BenchSpec
from targets.base import EdgecompError
from targets.bench import BenchResult, RunnerTimer, Timed, interleave
from targets.remote import RemoteSession

# A row's fields that its timing sets besides the latencies, dropped from a recorded row before it is timed again.
TIMED_EXTRAS = ("postprocess_ms_p50", "postprocess_ms_p90", "device")


@dataclass(frozen=True)
class TimingJob:
    """One row's latency to take: an exported file, or a PyTorch model (timed eager), with a thread count."""

    subject: Path | nn.Module
    threads: int


def time_rows(
    rows: list[list[dict]],
    subjects: list[Path | nn.Module],
    bench: BenchSpec,
    input_shape: tuple[int, ...],
    remote: RemoteSession | None = None,
) -> tuple[list[list[dict]], dict[int, str]]:
    """`rows` (one list per record: its rows, one per thread count) with the latencies of `subjects` (one per
    record), all taken together (`take`); and the records whose timing failed (index -> why), left without rows."""
    jobs = [TimingJob(subjects[index], row["threads"]) for index, group in enumerate(rows) for row in group]
    results = iter(take(jobs, bench, input_shape, remote))
    timed: list[list[dict]] = []
    failed: dict[int, str] = {}
    for index, group in enumerate(rows):
        done = [(row, next(results)) for row in group]
        errors = [str(result) for _, result in done if isinstance(result, EdgecompError)]
        if errors:
            failed[index] = errors[0]
        on = remote.description if remote is not None and isinstance(subjects[index], Path) else None
        timed.append([] if errors else [with_latency(row, result, on) for row, result in done])
    return timed, failed


def take(
    jobs: list[TimingJob], bench: BenchSpec, input_shape: tuple[int, ...], remote: RemoteSession | None = None
) -> list[BenchResult | EdgecompError]:
    """The latency of every job (or why it could not be taken), in order. The files are interleaved with each
    other (here, or on the remote device when there is one), then the PyTorch models with each other, here.

    Not all in one interleaving: an eager burst, which has the timing process's threads take both cores, left the
    TFLite bursts after it 30-50% slower than the same files interleaved alone or timed standalone (2-core VM;
    a 50 ms pause after each eager burst did not help, and 50 ms of warm-up did only sometimes).
    """
    files = [i for i, job in enumerate(jobs) if isinstance(job.subject, Path)]
    eager = [i for i, job in enumerate(jobs) if isinstance(job.subject, nn.Module)]
    results: dict[int, BenchResult | EdgecompError] = {}
    if files and remote is not None:
        results.update(zip(files, _files_there([jobs[i] for i in files], bench, remote), strict=True))
    elif files:
        loaders = [partial(_runner_timer, jobs[i]) for i in files]
        results.update(zip(files, _loaded_and_interleaved(loaders, bench), strict=True))
    if eager:
        with EagerTimers() as pool:
            loaders = [partial(pool.timer, jobs[i].subject, input_shape, jobs[i].threads) for i in eager]
            results.update(zip(eager, _loaded_and_interleaved(loaders, bench), strict=True))
    return [results[i] for i in range(len(jobs))]


def _runner_timer(job: TimingJob) -> Timed:
    return RunnerTimer(targets.load_runner(job.subject, threads=job.threads))


def _files_there(jobs: list[TimingJob], bench: BenchSpec, remote: RemoteSession) -> list[BenchResult | EdgecompError]:
    """The files' latencies on the remote device, all timed by one interleaved command there."""
    paths = list(dict.fromkeys(job.subject for job in jobs))
    threads = sorted({job.threads for job in jobs})
    measured = remote.bench_interleaved(paths, threads, bench.runs, bench.warmup, bench.rounds)
    by_job = dict(zip([(path, count) for path in paths for count in threads], measured, strict=True))
    return [by_job[job.subject, job.threads] for job in jobs]


def _loaded_and_interleaved(loaders: list[Callable[[], Timed]], bench: BenchSpec) -> list[BenchResult | EdgecompError]:
    """Load every one at once (one that does not load gets its error), then `interleave` them."""
    timers: dict[int, Timed] = {}
    results: dict[int, BenchResult | EdgecompError] = {}
    for index, load in enumerate(loaders):
        try:
            timers[index] = load()
        except EdgecompError as error:
            results[index] = error
    timed = interleave(list(timers.values()), bench.warmup, bench.runs, bench.rounds)
    results.update(zip(timers, timed, strict=True))
    return [results[i] for i in range(len(loaders))]


def with_latency(row: dict, timing: BenchResult, device: dict[str, Any] | None = None) -> dict:
    """`row` with `timing`'s latencies in place of any it had; a detector's post-processing and, for a file timed
    on another machine, that `device` (with the runtime that timed it there) come right after its runtime."""
    after_runtime: dict[str, Any] = {}
    if timing.postprocess_ms_p50 is not None and timing.postprocess_ms_p90 is not None:
        after_runtime["postprocess_ms_p50"] = round(timing.postprocess_ms_p50, 4)
        after_runtime["postprocess_ms_p90"] = round(timing.postprocess_ms_p90, 4)
    if device is not None:
        after_runtime["device"] = {**device, "runtime": timing.runtime}
    latency = {"latency_ms_p50": round(timing.latency_ms_p50, 4), "latency_ms_p90": round(timing.latency_ms_p90, 4)}
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key not in TIMED_EXTRAS:
            out[key] = latency.get(key, value)
        if key == "runtime":
            out.update(after_runtime)
    return out
