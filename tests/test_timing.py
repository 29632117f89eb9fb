"""A run's latencies taken together (issue #19): `targets.bench.interleave` times every file in the same rounds,
`compress.timing` gives every row of a run (exported files and PyTorch eager models) to one interleaving, and
`python -m targets.bench` times several files so on a device. No assert here is about how fast anything is."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import INPUT_SHAPE, make_tiny_net
from torch import nn

import compress.timing
from compress.eager import PASSIVE_BY_EDGECOMP, EagerTimers
from compress.schema import BenchSpec
from compress.timing import TimingJob, take, time_rows, with_latency
from targets.base import EdgecompError
from targets.bench import BenchResult, interleave, main, round_order, round_sizes


class FakeTimer:
    """A `targets.bench.Timed` that writes each burst it is asked for into a shared log."""

    def __init__(self, name: str, log: list[tuple[str, int, int]], fail_at: int | None = None) -> None:
        self.name, self.log, self.fail_at = name, log, fail_at
        self.threads, self.input_shape, self.runtime = 1, (1, 3, 8, 8), "fake 1.0"
        self.bursts = 0

    def burst(self, warmup: int, runs: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self.bursts == self.fail_at:
            raise EdgecompError(f"{self.name}: the device went away")
        self.bursts += 1
        self.log.append((self.name, warmup, runs))
        return np.full(runs, float(len(self.log))), None

    def peak_rss_mb(self) -> float:
        return 1.0


def rounds_of(log: list[tuple[str, int, int]], count: int) -> list[list[str]]:
    return [[name for name, _, _ in log[i : i + count]] for i in range(0, len(log), count)]


def test_every_round_is_a_burst_of_every_timer_in_a_shuffled_order() -> None:
    log: list[tuple[str, int, int]] = []
    names = ["a", "b", "c", "d"]
    results = interleave([FakeTimer(name, log) for name in names], warmup=7, runs=100, rounds=10, seed=3)

    rounds = rounds_of(log, len(names))
    assert len(rounds) == 10 and all(sorted(each) == names for each in rounds)  # no timer twice before the others
    assert len({tuple(each) for each in rounds}) > 1  # the order changes from round to round
    assert rounds == [[names[i] for i in round_order(len(names), index, seed=3)] for index in range(10)]
    for name in names:
        bursts = [(warmup, runs) for who, warmup, runs in log if who == name]
        assert bursts == [(7, 10)] * 10  # the recipe's warm-up before every burst: other models ran between
    for result in results:
        assert isinstance(result, BenchResult) and (result.runs, result.warmup) == (100, 7)


def test_the_same_seed_gives_the_same_order_and_every_run_is_pooled() -> None:
    first: list[tuple[str, int, int]] = []
    second: list[tuple[str, int, int]] = []
    interleave([FakeTimer(n, first) for n in "xyz"], warmup=0, runs=23, rounds=10)
    interleave([FakeTimer(n, second) for n in "xyz"], warmup=0, runs=23, rounds=10)
    assert first == second
    assert [runs for name, _, runs in first if name == "x"] == round_sizes(23, 10) == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert round_sizes(7, 10) == [1] * 7 and round_sizes(100, 1) == [100]


def test_a_pooled_result_holds_the_samples_of_every_round() -> None:
    """Each fake burst reads as its position in the log, so the pooled p50 lies between the first and last."""
    log: list[tuple[str, int, int]] = []
    (result,) = interleave([FakeTimer("only", log)], warmup=0, runs=4, rounds=4)
    assert result.runs == 4 and (result.latency_ms_mean, result.latency_ms_p50) == (2.5, 2.5)


def test_a_timer_that_fails_gets_its_error_and_no_more_turns() -> None:
    log: list[tuple[str, int, int]] = []
    timers = [FakeTimer("good", log), FakeTimer("flaky", log, fail_at=2), FakeTimer("other", log)]
    results = interleave(timers, warmup=1, runs=10, rounds=5)
    assert [name for name, _, _ in log].count("flaky") == 2
    assert [name for name, _, _ in log].count("good") == [name for name, _, _ in log].count("other") == 5
    assert isinstance(results[1], EdgecompError) and "went away" in str(results[1])
    assert results[0].runs == results[2].runs == 10
    with pytest.raises(EdgecompError, match="rounds >= 1"):
        interleave(timers, rounds=0)


def test_bench_cli_times_several_files_and_thread_counts_together(
    exported: Callable[[str, str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(exported("tflite", "fp32")), str(exported("openvino", "fp32")), str(tmp_path / "gone.onnx")]
    args = [*files, "--threads", "1,2", "--runs", "6", "--warmup", "1", "--rounds", "3", "--json"]
    capsys.readouterr()  # what the exports printed
    assert main(args) == 2  # one job failed: it says so, the others were timed
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["model"], line["threads"]) for line in lines] == [(f, t) for f in files for t in (1, 2)]
    for line in lines[:4]:
        assert line["runs"] == 6 and line["warmup"] == 1 and line["latency_ms_p50"] > 0
    assert all("no such file" in line["error"] for line in lines[4:])
    assert main([files[0], files[1], "--time-budget", "1"]) == 2
    assert "--time-budget times one file" in capsys.readouterr().err


def test_every_row_gets_its_latency_files_interleaved_then_models(
    exported: Callable[[str, str], Path], tiny_net: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's files, each at two thread counts, go to one `interleave`, then its PyTorch eager models to another
    (an eager burst between file bursts slowed the next TFLite bursts)."""
    calls: list[int] = []
    real = compress.timing.interleave

    def spy(timers, *args, **kwargs):
        calls.append(len(timers))
        return real(timers, *args, **kwargs)

    monkeypatch.setattr(compress.timing, "interleave", spy)
    path = exported("onnx", "fp32")
    rows = [[_row(threads) for threads in (1, 2)] for _ in range(2)]
    bench = BenchSpec(threads=[1, 2], runs=4, warmup=1, rounds=2)
    timed, failed = time_rows(rows, [path, tiny_net], bench, INPUT_SHAPE)
    assert calls == [2, 2] and failed == {}
    for group in timed:
        assert [row["threads"] for row in group] == [1, 2]
        assert all(row["latency_ms_p50"] > 0 and row["latency_ms_p90"] >= row["latency_ms_p50"] for row in group)
        assert "device" not in group[0]  # timed here


def test_a_file_that_does_not_load_fails_its_record_only(exported: Callable[[str, str], Path], tmp_path: Path) -> None:
    rows = [[_row(1)], [_row(1)]]
    timed, failed = time_rows(rows, [tmp_path / "gone.tflite", exported("tflite", "fp32")], BenchSpec(runs=2), (1,))
    assert timed[0] == [] and "no such file" in failed[0]
    assert timed[1][0]["latency_ms_p50"] > 0 and 1 not in failed


def test_eager_models_are_timed_in_their_own_process_one_thread_count_per_burst(tiny_net: nn.Module) -> None:
    with EagerTimers(in_process=False) as pool:
        one, two = pool.timer(tiny_net, INPUT_SHAPE, 1), pool.timer(tiny_net, INPUT_SHAPE, 2)
        results = interleave([one, two], warmup=1, runs=3, rounds=3)
        assert pool._pool is not None and pool._pool.submit(os.getpid).result() != os.getpid()
    assert [(r.threads, r.runs, r.runtime.startswith("torch")) for r in results] == [(1, 3, True), (2, 3, True)]
    assert take([TimingJob(tiny_net, 1)], BenchSpec(runs=2, warmup=0), INPUT_SHAPE)[0].runs == 2


class _ThreadsSeen(nn.Module):
    """Records the torch thread count of each forward (in a list its copies share)."""

    seen: ClassVar[list[int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).seen.append(torch.get_num_threads())
        return x.mean((2, 3))


def test_eager_models_are_timed_here_when_edgecomp_did_not_choose_the_wait_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No process to start (4-5 s per run) where this one's OpenMP already waits as a spawned one would; each burst
    runs with its own thread count, the caller's (training's) count is back after, and the model is untouched."""
    monkeypatch.delenv(PASSIVE_BY_EDGECOMP, raising=False)
    model, before = _ThreadsSeen().train(), torch.get_num_threads()
    _ThreadsSeen.seen.clear()
    torch.set_num_threads(3)
    try:
        with EagerTimers() as pool:
            timers = [pool.timer(model, INPUT_SHAPE, 1), pool.timer(model, INPUT_SHAPE, 2)]
            assert pool.in_process and pool._pool is None and torch.get_num_threads() == 3
            results = interleave(timers, warmup=1, runs=3, rounds=3)
        assert torch.get_num_threads() == 3 and model.training
    finally:
        torch.set_num_threads(before)
    assert [(r.threads, r.runs, r.runtime.startswith("torch")) for r in results] == [(1, 3, True), (2, 3, True)]
    assert set(_ThreadsSeen.seen) == {1, 2}


def test_with_latency_keeps_the_row_order_and_replaces_what_an_earlier_timing_set() -> None:
    timing = BenchResult(1.23456, 2.0, 1.5, 0.1, 600.0, 10, 1, 2, 1, [1, 3, 8, 8], 50.0, "ort", "cpu", 0.5, 0.7)
    recorded = {**_row(2), "latency_ms_p50": 9.0, "postprocess_ms_p50": 9.0, "device": {"host": "old"}, "x": 1}
    row = with_latency(recorded, timing, {"host": "pi", "cpu": "Cortex-A76"})
    assert row["latency_ms_p50"] == 1.2346 and row["latency_ms_p90"] == 2.0
    assert row["device"] == {"host": "pi", "cpu": "Cortex-A76", "runtime": "ort"}
    keys = list(row)
    assert keys[keys.index("runtime") + 1 :][:3] == ["postprocess_ms_p50", "postprocess_ms_p90", "device"]
    assert keys.index("latency_ms_p50") == list(recorded).index("latency_ms_p50") and keys[-1] == "x"
    assert "device" not in with_latency(recorded, timing)  # timed here this time


def _row(threads: int) -> dict:
    return {"candidate": "c", "latency_ms_p50": None, "latency_ms_p90": None, "threads": threads, "runtime": "r"}


def test_a_latency_probe_is_timed_interleaved_with_the_dense_file_exported_once(
    tiny_net: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A latency target's probes (`compress.candidates.timed_against`): the dense model's file is exported once, and
    each probe's file is timed with it in one `take`, so the fraction is of two p50s of the same timing."""
    import torch

    import compress.candidates
    import targets
    from targets import TargetSpec

    monkeypatch.setitem(targets.TARGETS, "toy", TargetSpec("toy", "toy_target", ".toyjit", ("fp32",)))
    exported: list[Path] = []
    timed: list[list[Path]] = []
    real_export, real_take = targets.export, compress.candidates.take
    monkeypatch.setattr(targets, "export", lambda *args: exported.append(args[3]) or real_export(*args))
    monkeypatch.setattr(
        compress.candidates, "take", lambda jobs, *a: timed.append([j.subject for j in jobs]) or real_take(jobs, *a)
    )
    said: list[str] = []
    bench = BenchSpec(threads=[1], runs=4, warmup=1, rounds=2)
    with compress.candidates.timed_against(tiny_net, "toy", torch.zeros(INPUT_SHAPE), bench, said.append) as time_it:
        timings = [time_it(make_tiny_net(seed)) for seed in (1, 2)]
    dense = exported[0]
    assert exported == [dense, timed[0][0], timed[1][0]] and len(set(exported)) == 3  # the dense file once
    assert timed == [[exported[1], dense], [exported[2], dense]]
    for timing, line in zip(timings, said, strict=True):
        assert timing.probe_ms > 0 and timing.dense_ms > 0 and timing.fraction == timing.probe_ms / timing.dense_ms
        assert f"{timing.fraction:.3f} of the dense p50" in line and "timed together" in line
    assert not dense.exists()  # the files are gone on exit
