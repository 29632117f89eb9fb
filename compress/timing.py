"""A run's latencies, taken together once its rows are scored, so that a CPU whose speed drifts (a VM, another
process) slows every row alike instead of the rows timed last.

Every row of the run, whether scored now or loaded from its record (`compress.cache.RowRecord`: it keeps the
accuracy and parity, written before any latency is taken), is timed here: all its files are loaded at once (one
runner per file and thread count) and its PyTorch models copied into one timing process
(`compress.eager.EagerTimers`), then `targets.bench.interleave` takes the recipe's `bench.runs` of each in
`bench.rounds` rounds, each round a short burst of every one in turn, in an order shuffled per round with a
fixed seed. With `bench.remote` the files are timed on that device in one command that interleaves them there
the same way (`targets.remote.RemoteSession.bench_interleaved`); the PyTorch rows, which stay here, are
interleaved with each other.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
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
    """The latency of every job (or why it could not be taken), in order: files on the remote device when there
    is one, everything else here, each set interleaved."""
    there = [i for i, job in enumerate(jobs) if remote is not None and isinstance(job.subject, Path)]
    results: dict[int, BenchResult | EdgecompError] = {}
    if remote is not None and there:
        paths = list(dict.fromkeys(jobs[i].subject for i in there))
        threads = sorted({jobs[i].threads for i in there})
        measured = remote.bench_interleaved(paths, threads, bench.runs, bench.warmup, bench.rounds)
        by_job = dict(zip([(p, t) for p in paths for t in threads], measured, strict=True))
        results.update((i, by_job[jobs[i].subject, jobs[i].threads]) for i in there)
    here = [i for i in range(len(jobs)) if i not in results]
    results.update(zip(here, _take_here([jobs[i] for i in here], bench, input_shape), strict=True))
    return [results[i] for i in range(len(jobs))]


def _take_here(
    jobs: list[TimingJob], bench: BenchSpec, input_shape: tuple[int, ...]
) -> list[BenchResult | EdgecompError]:
    """Load every job at once (a file that does not load is that job's error), then `interleave` them."""
    eager = any(isinstance(job.subject, nn.Module) for job in jobs)
    with EagerTimers() if eager else nullcontext() as pool:
        timers: dict[int, Timed] = {}
        results: dict[int, BenchResult | EdgecompError] = {}
        for index, job in enumerate(jobs):
            try:
                if isinstance(job.subject, nn.Module):
                    timers[index] = pool.timer(job.subject, input_shape, job.threads)
                else:
                    timers[index] = RunnerTimer(targets.load_runner(job.subject, threads=job.threads))
            except EdgecompError as error:
                results[index] = error
        timed = interleave(list(timers.values()), bench.warmup, bench.runs, bench.rounds)
        results.update(zip(timers, timed, strict=True))
    return [results[i] for i in range(len(jobs))]


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
