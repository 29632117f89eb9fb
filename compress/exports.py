"""Making a run's export files, several at once.

Converters spend most of their time in single-threaded Python: litert-torch's ``torch.export`` and its
three ``run_decompositions`` passes were ~90% of a TFLite fp32 export of the SSDLite quickstart, so on 2
cores one of them idled through the conversions. A run therefore makes every file it needs first, in worker
processes that share the cores out, and only then loads and measures the files one at a time, on a machine
where nothing else of ours runs: no latency is timed beside a conversion.

Workers are spawned, not forked (the parent has torch's, JAX's and OpenVINO's threads running), and each
loads its model from the candidate's checkpoint, tensors only (``weights_only=True``): no job carries a
pickled module. A worker's failure is raised here as it was raised there:
a converter's refusal stays the one-line `EdgecompError` that names the op.

>>> model = Checkpoint(Path("runs/q/dense/model.pt"))
>>> job = ExportJob("tflite", model, (1, 3, 224, 224), Path("m.tflite"), ExportRequest("fp32"))
>>> make_files([job], processes=2)
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

import targets
from compress.models import load_checkpoint
from compress.schema import ModelSpec
from compress.train import cpu_threads
from compress.workers import spawned_pool
from targets.base import EdgecompError, ExportRequest
from targets.fileio import temp_prefix

MAX_PROCESSES = 4  # each worker holds torch, a converter and a model: ~1.5 GB resident for SSDLite


@dataclass(frozen=True)
class Checkpoint:
    """A model saved by `compress.models.save_checkpoint`: tensors only, so a worker loads it with
    ``weights_only=True`` (`load_checkpoint`); `spec` rebuilds its architecture (default: the saved one)."""

    path: Path
    spec: ModelSpec | None = None

    def load(self) -> nn.Module:
        return load_checkpoint(self.path, self.spec)


@dataclass(eq=False)
class ExportJob:
    """One file to write: ``targets.export(target, model, zeros(input_shape), path, request)``.

    `model` is a `Checkpoint` (what a run's candidates are: a worker process loads it) or a module in memory,
    which only this process can export: a job is not pickled with a whole module (unpickling one runs code).
    """

    target: str
    model: nn.Module | Checkpoint
    input_shape: tuple[int, ...]
    path: Path
    request: ExportRequest

    @property
    def precision(self) -> str:
        return self.request.precision

    def run(self) -> Path:
        model = self.model.load() if isinstance(self.model, Checkpoint) else self.model
        return targets.export(self.target, model.eval(), torch.zeros(self.input_shape), self.path, self.request)

    def __getstate__(self) -> dict:
        if not isinstance(self.model, Checkpoint):
            raise TypeError(
                f"{self.path.name}: a job of an in-memory model runs in this process only; give it a Checkpoint "
                "to make it in a worker"
            )
        return self.__dict__


def worker_count(jobs: int, processes: int | None = None) -> int:
    """How many processes make `jobs` files: `processes`, by default one per core this process may use and at
    most `MAX_PROCESSES`, never more than there are jobs."""
    return max(1, min(processes or min(cpu_threads(), MAX_PROCESSES), jobs))


def make_files(
    jobs: Sequence[ExportJob],
    processes: int | None = None,
    done: Callable[[ExportJob, float], None] | None = None,
    failed: Callable[[ExportJob, EdgecompError], None] | None = None,
) -> None:
    """Write every job's file: jobs of a `Checkpoint` in `worker_count(len(jobs), processes)` worker processes
    (with one process, or one job, in this process), jobs of an in-memory model in this process first.
    `done(job, seconds)` is called as each file is written.

    An export that fails with an `EdgecompError` (a converter refusing the model: its one-line reason) goes
    to `failed(job, error)` and the other jobs go on; without `failed` it is raised. On any other failure
    (or Ctrl-C) the jobs not yet started are dropped, the running ones are stopped and their temporaries
    deleted (files are written atomically: none is left half-written), and the failure is raised as the
    worker raised it.
    """
    here = [job for job in jobs if not isinstance(job.model, Checkpoint)]  # in-memory models: see ExportJob
    in_workers = [job for job in jobs if isinstance(job.model, Checkpoint)]
    processes = worker_count(len(in_workers), processes)
    if processes <= 1:
        here, in_workers = list(jobs), []
    for job in here:
        _settle(job, partial(_run, job), done, failed)
    if in_workers:
        _make_in_workers(in_workers, processes, done, failed)


def _settle(
    job: ExportJob,
    result: Callable[[], float],
    done: Callable[[ExportJob, float], None] | None,
    failed: Callable[[ExportJob, EdgecompError], None] | None,
) -> None:
    """Wait for `job`'s `result` (its seconds) and tell `done`, or `failed` of an `EdgecompError`."""
    try:
        seconds = result()
    except EdgecompError as e:
        if failed is None:
            raise
        failed(job, e)
        return
    if done:
        done(job, seconds)


def _make_in_workers(
    jobs: Sequence[ExportJob],
    processes: int,
    done: Callable[[ExportJob, float], None] | None,
    failed: Callable[[ExportJob, EdgecompError], None] | None,
) -> None:
    threads = max(1, cpu_threads() // processes)  # calibration runs the model: the cores are shared out
    pool = spawned_pool(processes, _worker_init, (threads,))
    pending = {pool.submit(_run, job): job for job in jobs}
    try:
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                try:
                    _settle(job, future.result, done, failed)  # raises the worker's exception
                except BrokenProcessPool:  # every unfinished job fails so: which one killed it is not known
                    raise EdgecompError(
                        f"an export process died (killed, e.g. out of memory, or a converter crashed) while "
                        f"making one of {_names([job, *pending.values()])}: make fewer files at once with "
                        "--export-jobs 1, or drop the export that crashes"
                    ) from None
    except BaseException:  # a failed export, Ctrl-C: stop the others now rather than after their conversions
        _stop(pool, {job.path.parent for job in jobs})
        raise
    pool.shutdown()


def _names(jobs: Sequence[ExportJob], most: int = 4) -> str:
    names = [f"{job.path.parent.name}/{job.path.name}" for job in jobs]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _stop(pool: ProcessPoolExecutor, folders: set[Path]) -> None:
    """Kill the workers, drop the jobs not started, and delete the temporaries the workers were writing."""
    # Python 3.14 has pool.terminate_workers(); before it the processes are only reachable here, and only
    # until shutdown() forgets them.
    workers = list((getattr(pool, "_processes", None) or {}).values())
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join()
    pool.shutdown(wait=True, cancel_futures=True)  # the workers are gone: this returns at once
    for worker in workers:
        for folder in folders:
            for temporary in folder.glob(f"{temp_prefix(worker.pid)}*"):
                temporary.unlink(missing_ok=True)


def _worker_init(threads: int) -> None:
    # Ctrl-C reaches every process of the terminal's group: the parent stops its workers, which would
    # otherwise each print a KeyboardInterrupt traceback. (A parent killed outright cannot: `spawned_pool`'s
    # workers leave when it is gone.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm (NNCF's and litert-torch's progress bars) otherwise makes a multiprocessing lock: a named
    # semaphore that a stopped worker leaves registered, and the resource tracker warns about at exit.
    tqdm.set_lock(threading.RLock())
    torch.set_num_threads(threads)


def _run(job: ExportJob) -> float:
    started = time.perf_counter()
    job.run()
    return time.perf_counter() - started
