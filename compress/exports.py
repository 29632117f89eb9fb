"""Making a run's export files, several at once.

Converters spend most of their time in single-threaded Python: litert-torch's ``torch.export`` and its
three ``run_decompositions`` passes were ~90% of a TFLite fp32 export of the SSDLite quickstart, so on 2
cores one of them idled through the conversions. A run therefore makes every file it needs first, in worker
processes that share the cores out, and only then loads and measures the files one at a time, on a machine
where nothing else of ours runs: no latency is timed beside a conversion.

Workers are spawned, not forked (the parent has torch's, JAX's and OpenVINO's threads running), and each
gets its model as bytes from ``torch.save``. A worker's failure is raised here as it was raised there:
a converter's refusal stays the one-line `EdgecompError` that names the op.

>>> make_files([ExportJob("tflite", model, (1, 3, 224, 224), "fp32", Path("m.tflite"), None, {})], processes=2)
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import targets
from compress.train import cpu_threads
from targets.base import EdgecompError
from targets.fileio import temp_prefix

MAX_PROCESSES = 4  # each worker holds torch, a converter and a model: ~1.5 GB resident for SSDLite


@dataclass
class ExportJob:
    """One file to write: `targets.<target>.export(model, zeros(input_shape), precision, path, ...)`."""

    target: str
    model: nn.Module
    input_shape: tuple[int, ...]
    precision: str
    path: Path
    calibration: np.ndarray | None
    metadata: dict[str, str] = field(default_factory=dict)
    io: str = "float"
    options: dict[str, Any] = field(default_factory=dict)  # more keyword arguments of the target's export

    def run(self) -> Path:
        example = torch.zeros(self.input_shape)
        module = targets.get_target(self.target)
        return module.export(
            self.model, example, self.precision, self.path, self.calibration, self.metadata, io=self.io, **self.options
        )

    def __getstate__(self) -> dict:
        # The whole module (any architecture a recipe can build), saved by torch: tensors go as bytes, not
        # as shared-memory handles a worker would have to map.
        buffer = io.BytesIO()
        torch.save(self.model, buffer)
        return {**self.__dict__, "model": buffer.getvalue()}

    def __setstate__(self, state: dict) -> None:
        # Bytes this run's own process wrote a moment ago, not a user's file: unpickling them is safe.
        model = torch.load(io.BytesIO(state["model"]), map_location="cpu", weights_only=False)
        self.__dict__.update({**state, "model": model})


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
    """Write every job's file, in `worker_count(len(jobs), processes)` worker processes; with one
    process, or one job, in this process. `done(job, seconds)` is called as each file is written.

    An export that fails with an `EdgecompError` (a converter refusing the model: its one-line reason) goes
    to `failed(job, error)` and the other jobs go on; without `failed` it is raised. On any other failure
    (or Ctrl-C) the jobs not yet started are dropped, the running ones are stopped and their temporaries
    deleted (files are written atomically: none is left half-written), and the failure is raised as the
    worker raised it.
    """
    processes = worker_count(len(jobs), processes)
    if processes <= 1:
        for job in jobs:
            started = time.perf_counter()
            try:
                job.run()
            except EdgecompError as e:
                if failed is None:
                    raise
                failed(job, e)
                continue
            if done:
                done(job, time.perf_counter() - started)
        return
    threads = max(1, cpu_threads() // processes)  # calibration runs the model: the cores are shared out
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_worker_init, initargs=(os.getpid(), threads))
    pending = {pool.submit(_run, job): job for job in jobs}
    try:
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                try:
                    seconds = future.result()  # raises the worker's exception
                except EdgecompError as e:
                    if failed is None:
                        raise
                    failed(job, e)
                    continue
                except BrokenProcessPool:  # every unfinished job fails so: which one killed it is not known
                    raise EdgecompError(
                        f"an export process died (killed, e.g. out of memory, or a converter crashed) while "
                        f"making one of {_names([job, *pending.values()])}: make fewer files at once with "
                        "--export-jobs 1, or drop the export that crashes"
                    ) from None
                if done:
                    done(job, seconds)
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


def _worker_init(parent: int, threads: int) -> None:
    # Ctrl-C reaches every process of the terminal's group: the parent stops its workers, which would
    # otherwise each print a KeyboardInterrupt traceback. A parent killed outright (SIGKILL) cannot, so a
    # worker also leaves when its parent is gone instead of converting on for nobody.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm (NNCF's and litert-torch's progress bars) otherwise makes a multiprocessing lock: a named
    # semaphore that a stopped worker leaves registered, and the resource tracker warns about at exit.
    tqdm.set_lock(threading.RLock())
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _run(job: ExportJob) -> float:
    started = time.perf_counter()
    job.run()
    return time.perf_counter() - started
