"""PyTorch eager rows are timed in a process with OpenMP's default wait policy (`compress.eager.EagerTimers`)."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
from conftest import INPUT_SHAPE
from torch import nn

from compress.eager import DEFAULT_OMP, PASSIVE_BY_EDGECOMP, EagerTimers, _default_wait_policy


def _spawned_environment() -> dict[str, str | None]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return {key: pool.submit(os.getenv, key).result() for key in ("OMP_WAIT_POLICY", DEFAULT_OMP)}


def test_the_timing_process_drops_the_wait_policy_edgecomp_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's passive OpenMP threads made small models' eager inference 5-6x slower (11.3-13.3 ms against
    1.9-2.6 ms for the quickstart's nets); the process that times them must not inherit that choice."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv(PASSIVE_BY_EDGECOMP, "1")
    with _default_wait_policy():
        assert _spawned_environment() == {"OMP_WAIT_POLICY": None, DEFAULT_OMP: "1"}
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ[PASSIVE_BY_EDGECOMP] == "1"
    assert DEFAULT_OMP not in os.environ


def test_a_wait_policy_the_user_chose_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.delenv(PASSIVE_BY_EDGECOMP, raising=False)
    with _default_wait_policy():
        assert _spawned_environment()["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_eager_timing_process_has_the_default_wait_policy(
    tiny_net: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv(PASSIVE_BY_EDGECOMP, "1")
    with EagerTimers() as timers:
        assert timers._pool is not None and timers._pool.submit(os.getenv, "OMP_WAIT_POLICY").result() is None
        ms, post_ms = timers.timer(tiny_net, INPUT_SHAPE, threads=1).burst(warmup=1, runs=3)
    assert len(ms) == 3 and post_ms is None and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
