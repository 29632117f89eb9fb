"""benchmarks/bench_channels.py (`make bench-channels`) on a tiny setting, so that its code path cannot rot
between the runs whose figures the README quotes, and its verdict arithmetic on numbers made up to show it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_script

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_channels.py"


@pytest.fixture(scope="module")
def bench():
    yield from load_script(BENCH)


def test_a_tiny_run_prints_both_tables_and_a_verdict(bench, tmp_path: Path, capsys) -> None:
    tiny = ["--targets", "onnx", "--precisions", "fp32", "--runs", "2", "--warmup", "0", "--rounds", "2"]
    tiny += ["--image-size", "32", "--macs", "0.9", "--round-to", "none", "8", "--channels", "15..17"]
    assert bench.main([*tiny, "--map-size", "8", "--keep", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "MobileNetV2 x0.5 pruned" in out and "Micro sweep" in out
    assert "onnx fp32:" in out and "round_to=8" in out and "multiples of 16" in out and "largest p50 step" in out
    assert sorted(path.name for path in tmp_path.glob("stack-*")) == [f"stack-{c}-onnx-fp32.onnx" for c in (15, 16, 17)]


def test_multiples_are_compared_with_their_neighbours_per_mac(bench) -> None:
    per_mac = {c: 1.0 for c in range(60, 73)} | {64: 0.8, 72: 0.9}
    assert bench.neighbour_gain(per_mac, 16) == pytest.approx(0.25)  # 64 only: 1.0 / 0.8 - 1
    assert bench.neighbour_gain(per_mac, 8) == pytest.approx((0.25 + 1 / 0.9 - 1) / 2)  # 72 has 71 only
    assert bench.neighbour_gain(per_mac, 4) == pytest.approx((0 + 0.25 + 0 + 1 / 0.9 - 1) / 4)
    assert bench.neighbour_gain({64: 1.0}, 8) is None
    assert bench.neighbour_gain(per_mac, 4, alone=True) == pytest.approx(0.0)  # 60 and 68: no faster
    assert bench.neighbour_gain(per_mac, 8, alone=True) == pytest.approx(1 / 0.9 - 1)  # 72 only
    assert bench.spread(per_mac | {61: 1.1}) == pytest.approx(0.0)  # (61, 62) is one of six pairs
    assert bench.spread({63: 1.0, 64: 1.0}) is None
    assert bench.largest_step({63: 1.0, 64: 1.0, 65: 1.5, 66: 1.5}) == (64, pytest.approx(0.5))


def test_channel_range_and_round_to_arguments(bench) -> None:
    assert bench.channel_range("60..72") == range(60, 73)
    assert bench.round_to("none") is None and bench.round_to("8") == 8
    with pytest.raises(SystemExit):
        bench.parse_args(["--round-to", "4", "8"])  # nothing to compare with
