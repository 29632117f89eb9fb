"""PyTorch eager rows are timed in a process with OpenMP's default wait policy (`compress.eager.EagerTimers`)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from conftest import INPUT_SHAPE
from torch import nn

from compress.eager import DEFAULT_OMP, PASSIVE_BY_EDGECOMP, EagerTimers, _default_wait_policy

ROOT = Path(__file__).resolve().parents[1]


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


_KILLED_PARENT = """
import os, signal, sys
from compress.eager import EagerTimers
from compress.workers import spawned_pool

if __name__ == "__main__":
    timers = EagerTimers(in_process=False).__enter__()
    pool = spawned_pool(1)
    children = [timers._pool.submit(os.getpid).result(), pool.submit(os.getpid).result()]
    print(*children, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_worker_processes_leave_when_their_parent_is_killed(tmp_path) -> None:
    """A pool worker holds its own call queue's writing end, so without a watch it waits for ever once its parent
    is SIGKILLed, keeping the parent's stderr open: the chaos test's communicate() hung CI for 90 minutes."""
    script = tmp_path / "killed_parent.py"
    script.write_text(_KILLED_PARENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err = process.communicate(timeout=60)  # returns once no process holds the pipes
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("a worker outlived its SIGKILLed parent and kept its pipes open")
    assert process.returncode == -signal.SIGKILL, err.decode()
    children = [int(pid) for pid in out.split()]
    assert len(children) == 2
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
