"""PyTorch eager as a runner, so the reference rows go through the same evaluation and benchmark code
as the exported files, and `EagerTimers`, which times it the way a user's process would run it, in turns with
the files (`targets.bench.interleave`)."""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.workers import spawned_pool
from targets.bench import RunnerTimer, peak_rss_mb

# Set by the CLI when it, not the user, chose OpenMP's passive wait policy (see cli.py); DEFAULT_OMP tells a
# spawned process, which imports the parent's main module (the CLI) again, not to choose it.
PASSIVE_BY_EDGECOMP = "EDGECOMP_SET_OMP_WAIT_POLICY"
DEFAULT_OMP = "EDGECOMP_DEFAULT_OMP"


class TorchRunner:
    """A `targets.base.Runner` over an in-memory module (fp32, eager, CPU)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], threads: int | None = None) -> None:
        self.model = model.eval()
        self.path = Path("<pytorch>")
        self.runtime = f"torch {torch.__version__.split('+')[0]}"
        self.input_shape = tuple(input_shape)
        self.threads = threads or torch.get_num_threads()
        self._last: list[np.ndarray] = []

    def _set_threads(self) -> None:
        torch.set_num_threads(self.threads)

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        self._set_threads()
        out = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return [tensor.numpy() for tensor in _as_list(out)]

    def bind(self, x: np.ndarray) -> Callable[[], None]:
        self._set_threads()
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

        def infer() -> None:
            with torch.no_grad():
                self._last = [tensor.detach() for tensor in _as_list(self.model(tensor))]

        return infer

    def outputs(self) -> list[np.ndarray]:
        return [tensor.numpy() for tensor in self._last]


def _as_list(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


class EagerTimers:
    """One spawned process that holds a run's PyTorch models and times them in bursts (`targets.bench.Timed`), so
    that they take their turns in `targets.bench.interleave` beside the exported files timed here.

    The process starts with OpenMP's default wait policy, unless the user set one. The CLI makes OpenMP's threads
    wait passively (training beside another busy process stalled 25x with spinning threads); OpenMP reads that
    once, when torch loads it. Passive threads sleep between the parallel regions of every op, so eager inference
    of small models, hundreds of tiny ops, timed in the CLI's process read 5-6x slow: the quickstart's
    MobileNetV2 x0.5 at 32 px 11.3-13.3 ms there against 1.9-2.6 ms in a plain process (2 threads, AVX-512
    VNNI). The exported files' runtimes have thread pools of their own and are unaffected.

    Where edgecomp did not choose this process's wait policy (a Python caller of `compress.pipeline`, or a user
    who set ``OMP_WAIT_POLICY``), a spawned process would wait as this one does, so the models are timed here
    (`in_process`, None: decided so), on copies, with each timer's thread count set for its bursts only: the
    process's start, 4-5 s of imports, is saved on every run (the test suite makes ~50).
    """

    def __init__(self, in_process: bool | None = None) -> None:
        self.in_process = in_process
        self._pool: ProcessPoolExecutor | None = None
        self._keys = itertools.count()

    def __enter__(self) -> EagerTimers:
        if self.in_process is None:
            self.in_process = not os.environ.get(PASSIVE_BY_EDGECOMP)
        if self.in_process:
            return self
        with _default_wait_policy():
            self._pool = spawned_pool(1)
            self._pool.submit(os.getpid).result()  # the process starts now, in that environment
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def timer(self, model: nn.Module, input_shape: tuple[int, ...], threads: int) -> EagerTimer | HereTimer:
        """`model` copied into the process, to be timed with `threads` on a random input of `input_shape`."""
        if self.in_process:
            return HereTimer(model, input_shape, threads)
        assert self._pool is not None, "use EagerTimers as a context manager"
        key = next(self._keys)
        described = self._pool.submit(_hold, key, model, tuple(input_shape), threads).result()
        return EagerTimer(self._pool, key, **described)


class EagerTimer:
    """A `targets.bench.Timed` whose model `EagerTimers`' process holds: each burst runs there."""

    def __init__(
        self, pool: ProcessPoolExecutor, key: int, threads: int, input_shape: tuple[int, ...], runtime: str
    ) -> None:
        self._pool, self._key = pool, key
        self.threads, self.input_shape, self.runtime = threads, input_shape, runtime

    def burst(self, warmup: int, runs: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self._pool.submit(_burst, self._key, warmup, runs).result()

    def peak_rss_mb(self) -> float:
        return self._pool.submit(peak_rss_mb).result()


class HereTimer:
    """A `targets.bench.Timed` over a copy of `model` in this process: `threads` for its bursts, the caller's
    thread count (training's) back after each."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], threads: int) -> None:
        with _torch_threads(threads):  # binding the runner sets its count
            self._timer = RunnerTimer(TorchRunner(copy.deepcopy(model), input_shape, threads))
        self.threads, self.input_shape, self.runtime = self._timer.threads, self._timer.input_shape, self._timer.runtime

    def burst(self, warmup: int, runs: int) -> tuple[np.ndarray, np.ndarray | None]:
        with _torch_threads(self.threads):
            return self._timer.burst(warmup, runs)

    def peak_rss_mb(self) -> float:
        return self._timer.peak_rss_mb()


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_HELD: dict[int, RunnerTimer] = {}  # in the timing process: the models `EagerTimers` sent it, by key


def _hold(key: int, model: nn.Module, input_shape: tuple[int, ...], threads: int) -> dict[str, Any]:
    timer = RunnerTimer(TorchRunner(model, input_shape, threads))
    _HELD[key] = timer
    return {"threads": timer.threads, "input_shape": timer.input_shape, "runtime": timer.runtime}


def _burst(key: int, warmup: int, runs: int) -> tuple[np.ndarray, np.ndarray | None]:
    timer = _HELD[key]
    torch.set_num_threads(timer.threads)  # one process times every thread count in turn
    return timer.burst(warmup, runs)


@contextmanager
def _default_wait_policy() -> Iterator[None]:
    """The environment a spawned process inherits, without the wait policy edgecomp (not the user) chose."""
    saved = {key: os.environ.get(key) for key in ("OMP_WAIT_POLICY", PASSIVE_BY_EDGECOMP, DEFAULT_OMP)}
    if os.environ.get(PASSIVE_BY_EDGECOMP):
        os.environ.pop("OMP_WAIT_POLICY", None)
        os.environ.pop(PASSIVE_BY_EDGECOMP, None)
        os.environ[DEFAULT_OMP] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
