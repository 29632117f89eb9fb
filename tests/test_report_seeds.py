"""The report over several seeds (`train.seeds`): one table row per candidate, target and precision with the mean
and sample sd over the seeds, every seed's row kept in the csv, and verdicts that call a margin the seed-to-seed
spread explains a tie (Welch's t-test over the seeds). Numbers are recomputed here with the standard library and
scipy, not read back from the code under test."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compress import report
from compress.report import scratch_verdicts, table_rows, write_report
from compress.report.stats import student_t_p, welch
from compress.results import Results, pack_correct
from compress.schema import ReportSpec

SPREAD_OUT = {"kd": [0.95, 0.90, 0.97], "scratch_e": [0.93, 0.88, 0.91]}  # 3.3 pts apart, sd 3.6 and 2.5
TIGHT = {"kd": [0.950, 0.951, 0.949], "scratch_e": [0.930, 0.931, 0.929]}  # 2 pts apart, sd 0.1 each


def seeded(accuracies: dict[str, list[float]], images: int | None = None, **fields: Any) -> dict[str, Any]:
    """Results of a recipe with seeds 0, 1, ...: one pytorch fp32 row per kind and seed (the kind names the
    candidate); with `images`, each row's right/wrong on that many shared test images, nested (any two rows of
    different accuracy differ one-sidedly, so McNemar on one seed's pair would call every gap a win)."""
    order = np.random.default_rng(0).permutation(images or 1)
    rows = []
    for kind, values in accuracies.items():
        for seed, accuracy in enumerate(values):
            row = {"candidate": kind, "kind": kind, "target": "pytorch", "precision": "fp32", "accuracy": accuracy}
            row |= {"macs": 880_000, "seed": seed, **fields}
            if images:
                correct = np.zeros(images, bool)
                correct[order[: round(accuracy * images)]] = True
                row |= {"samples": images, "correct": pack_correct(correct)}
            rows.append(row)
    return {"schema": 1, "recipe": "t", "metric": "top1", "seeds": [0, 1, 2], "rows": rows}


def summary(values: list[float]) -> str:
    """'94.0% ± 3.6 (n=3)', computed here."""
    return f"{100 * statistics.fmean(values):.1f}% ± {100 * statistics.stdev(values):.1f} (n={len(values)})"


def scipy_p(a: list[float], b: list[float]) -> float:
    stats = pytest.importorskip("scipy.stats")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_welch_and_students_t_match_scipy() -> None:
    rng = np.random.default_rng(1)
    for _ in range(300):
        n_a, n_b = rng.integers(2, 8, 2)
        a = list(rng.normal(0.9, rng.uniform(0.001, 0.05), n_a))
        b = list(rng.normal(rng.uniform(0.85, 0.95), rng.uniform(0.001, 0.05), n_b))
        assert welch(a, b) == pytest.approx(scipy_p(a, b), rel=1e-9, abs=1e-12)
    stats = pytest.importorskip("scipy.stats")
    for t, df in [(0.3, 1.0), (2.0, 1.7), (12.0, 3.2), (-4.0, 30.0)]:
        assert student_t_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    assert welch([0.9, 0.9], [0.9, 0.9]) == 1.0 and welch([0.9, 0.9], [0.8, 0.8]) == 0.0  # no spread at all


def test_a_margin_within_the_seed_spread_is_a_tie_even_where_each_seeds_pair_differs() -> None:
    """3.3 pts between the means, but the seeds spread 2.5-3.6 pts: Welch's p is about 0.28, a tie, though on
    10,000 nested test images McNemar would call every one of the three seed pairs a win."""
    [line] = scratch_verdicts(seeded(SPREAD_OUT, images=10_000))
    kd, scratch = SPREAD_OUT["kd"], SPREAD_OUT["scratch_e"]
    p = scipy_p(kd, scratch)
    assert 0.05 < p < 0.5
    assert line.startswith(f"0.88 M MACs, pytorch fp32: pruned+KD {summary(kd)} vs Scratch-E {summary(scratch)} ")
    assert line.endswith(f"a tie within noise with Scratch-E (Welch's t-test p = {p:.2f} over 3 and 3 seeds).")
    assert "won" not in line and "McNemar" not in line


def test_a_margin_beyond_the_seed_spread_is_a_win() -> None:
    [line] = scratch_verdicts(seeded(TIGHT))
    assert scipy_p(TIGHT["kd"], TIGHT["scratch_e"]) < 0.001
    assert line.endswith("fine-tuning the pruned weights won (Welch's t-test p < 0.001 over 3 and 3 seeds).")
    flipped = seeded({"kd": TIGHT["scratch_e"], "scratch_b": TIGHT["kd"]})
    assert "Scratch-B won by 2.0 pts (Welch's t-test p < 0.001 over 3 and 3 seeds)" in scratch_verdicts(flipped)[0]


def test_one_seed_a_side_is_untested_and_a_collapsed_seed_gets_no_verdict() -> None:
    [line] = scratch_verdicts(seeded({"kd": [0.95, 0.94], "scratch_e": [0.90]}))
    assert line.endswith(
        "pruned+KD ahead by 4.5 pts, untested: 2 and 1 seeds, and the spread over seeds needs two or more a side."
    )
    collapsed = seeded({"kd": [0.95, 0.10, 0.94], "scratch_e": [0.90, 0.91, 0.90]}, images=1000) | {"classes": 10}
    assert "no verdict: pruned+KD at chance" in scratch_verdicts(collapsed)[0]


def test_a_candidates_seeds_that_pruned_to_different_shapes_stay_one_architecture() -> None:
    """Global pruning may give each seed its own layer shapes: the seeds of one candidate are still compared
    together, not split into one-seed verdicts."""
    results = seeded(TIGHT)
    for row in results["rows"]:
        row["arch"] = f"arch-of-seed-{row['seed']}"
    [line] = scratch_verdicts(results)
    assert "over 3 and 3 seeds" in line


def test_table_rows_are_means_over_seeds_with_their_sample_sd() -> None:
    accuracies = {"dense": [0.97, 0.96, 0.98], "kd": [0.95, 0.90], "scratch_e": [0.93, 0.88, 0.91]}
    results = seeded(accuracies, latency_ms_p50=None, threads=2)
    latencies = {"dense": [2.0, 2.2, 2.1], "kd": [1.0, 1.4], "scratch_e": [1.1, 1.0, 1.2]}
    for row in results["rows"]:
        row["latency_ms_p50"] = latencies[row["kind"]][row["seed"]]
    table = {row["candidate"]: row for row in table_rows(results)}
    assert len(table) == 3
    for name, values in accuracies.items():
        row = table[name]
        assert row["accuracy_pct"] == pytest.approx(100 * statistics.fmean(values))
        assert row["spread"] == (pytest.approx(100 * statistics.stdev(values)), len(values))
        assert row["p50_ms"] == pytest.approx(statistics.fmean(latencies[name]))
        assert row["seeds"] == list(range(len(values))) and row["interval_pct"] is None
        dense_mean = statistics.fmean(accuracies["dense"])
        assert row["delta_pts"] == pytest.approx(100 * (statistics.fmean(values) - dense_mean))
        assert row["speedup"] == pytest.approx(statistics.fmean(latencies["dense"]) / statistics.fmean(latencies[name]))


def test_two_rows_of_one_seed_are_two_table_rows_not_a_mean() -> None:
    """int8 with float I/O and with int8 I/O are both `int8` rows of one candidate: not seeds of one row."""
    results = seeded({"kd": [0.9, 0.8]})
    results["rows"] += [dict(row, accuracy=0.5) for row in results["rows"]]
    assert sorted(row["accuracy"] for row in table_rows(results)) == pytest.approx([0.5, 0.85])


def test_the_report_files_show_mean_sd_and_n_and_keep_every_seeds_row(tmp_path: Path) -> None:
    accuracies = {"dense": [0.97, 0.96, 0.98], "kd": [0.95, 0.90, 0.97], "scratch_e": [0.93, 0.88, 0.91]}
    results = seeded(accuracies, images=1000, latency_ms_p50=1.0, threads=2)
    results["failed"] = [
        {"candidate": "kd", "target": "tflite", "precision": "int8", "reason": "no int8 today", "seed": 2}
    ]
    paths = write_report(results, tmp_path)
    md = paths["md"].read_text()
    kd = accuracies["kd"]
    mean, sd = 100 * statistics.fmean(kd), 100 * statistics.stdev(kd)
    assert "| top-1 % (mean over seeds) | ± sd (n seeds) |" in md
    assert f"| kd | pruned+KD | pytorch | fp32 | 2 | {mean:.1f} | ± {sd:.1f} (n=3) |" in md
    assert "Welch's t-test on their per-seed accuracies" in md and "- seeds: 0, 1, 2" in md
    assert "- kd (pruned+KD): —; seeds 0, 1, 2" in md and "- kd (seed 2) tflite int8: no int8 today" in md
    assert "± sd (n seeds)" in paths["html"].read_text()
    lines = list(csv.DictReader(paths["csv"].open()))
    assert len(lines) == len(Results.parse(results).rows) == 9
    kd_lines = [line for line in lines if line["candidate"] == "kd"]
    assert [line["seed"] for line in kd_lines] == ["0", "1", "2"]
    assert [float(line["accuracy"]) for line in kd_lines] == kd
    assert {
        (float(line["accuracy_mean"]), float(line["accuracy_sd"]), line["accuracy_seeds"]) for line in kd_lines
    } == {(round(statistics.fmean(kd), 6), round(statistics.stdev(kd), 6), "3")}


def test_a_budget_pick_names_its_spread_and_a_tie_over_seeds() -> None:
    """Within 1.5 ms kd (mean 94.0%) is the most accurate; the faster ft (90.7%) is 3.3 pts below it, within
    the seeds' spread: the pick says so, by Welch's test."""
    results = seeded({"dense": [0.97, 0.96, 0.98], "kd": SPREAD_OUT["kd"], "finetune": SPREAD_OUT["scratch_e"]})
    for row in results["rows"]:
        row |= {"threads": 2, "latency_ms_p50": {"dense": 2.0, "kd": 1.2, "finetune": 1.0}[row["kind"]]}
    [pick] = report.recommend(table_rows(results), ReportSpec(latency_budget_ms=1.5))
    kd, ft = SPREAD_OUT["kd"], SPREAD_OUT["scratch_e"]
    assert pick.text.startswith(f"kd (pruned+KD), fp32, 2 threads: 94.0% ± {100 * statistics.stdev(kd):.1f} (n=3), ")
    assert pick.text.endswith(
        f"a tie within noise with the faster finetune fp32 (90.7%, p50 1.00 ms; Welch's t-test p = "
        f"{scipy_p(kd, ft):.2f} over 3 and 3 seeds)"
    )
