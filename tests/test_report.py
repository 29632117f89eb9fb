"""The report layer: numbers recomputed independently, escaping, a readable PNG, and all-or-nothing files."""

from __future__ import annotations

import base64
import copy
import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from compress import report
from compress.report import pareto_front, plot_points, scratch_verdicts, table_rows, write_report
from compress.report.plot import figure
from compress.results import Results, pack_correct
from compress.schema import ReportSpec
from targets.base import EdgecompError

FIXTURE = Path(__file__).parent / "fixtures" / "results_quickstart.json"
FILES = {"report.md", "report.html", "plot.png", "results.csv"}
MALICIOUS = "<script>alert(1)</script>"


@pytest.fixture
def results() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def brute_force_front(points: list[tuple[float, float]]) -> list[int]:
    """Non-dominated indices straight from the definition: nobody at most as slow and at least as accurate
    while strictly better in one."""
    return [
        i
        for i, (lat, acc) in enumerate(points)
        if not any(
            lat2 <= lat and acc2 >= acc and (lat2 < lat or acc2 > acc)
            for j, (lat2, acc2) in enumerate(points)
            if j != i
        )
    ]


def find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [row for row in rows if all(row[key] == value for key, value in match.items())]
    assert len(found) == 1, match
    return found[0]


def results_with(rows: list[tuple[str, str, str, float]], macs: int = 880_000) -> dict[str, Any]:
    """Minimal results from (kind, target, precision, accuracy) rows sharing one pruned architecture."""
    return {
        "schema": 1,
        "recipe": "t",
        "rows": [
            {"candidate": kind, "kind": kind, "target": t, "precision": p, "accuracy": a, "macs": macs}
            for kind, t, p, a in rows
        ],
    }


def with_images(results: dict[str, Any], images: int) -> dict[str, Any]:
    """Each row's per-image right/wrong on `images` shared test images, nested: a more accurate row gets right
    every image a less accurate one did, so any gap is one-sided (McNemar's strongest case)."""
    order = np.random.default_rng(0).permutation(images)
    for row in results["rows"]:
        correct = np.zeros(images, bool)
        correct[order[: round(row["accuracy"] * images)]] = True
        row.update(samples=images, correct=pack_correct(correct))
    return results


# ---------------------------------------------------------------------------------------------- pareto


def test_pareto_front_on_ties_duplicates_and_dominated_points() -> None:
    points = [
        (1.0, 0.90),  # 0 front
        (1.0, 0.90),  # 1 exact duplicate of 0: neither dominates the other
        (1.0, 0.85),  # 2 same latency, less accurate: dominated by 0
        (2.0, 0.95),  # 3 front
        (3.0, 0.95),  # 4 same accuracy, slower: dominated by 3
        (0.5, 0.80),  # 5 fastest: front
        (2.5, 0.93),  # 6 dominated by 3
        (4.0, 0.97),  # 7 most accurate: front
    ]
    assert sorted(pareto_front(points)) == brute_force_front(points) == [0, 1, 3, 5, 7]


def test_pareto_front_is_in_latency_order_and_handles_empty() -> None:
    points = [(4.0, 0.97), (0.5, 0.80), (2.0, 0.95)]
    assert pareto_front(points) == [1, 2, 0]
    assert pareto_front([]) == []


@given(st.lists(st.tuples(st.integers(0, 4).map(float), st.integers(0, 4).map(float)), max_size=14))
def test_pareto_front_matches_brute_force(points: list[tuple[float, float]]) -> None:
    front = pareto_front(points)
    assert sorted(front) == brute_force_front(points)
    assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)


# ---------------------------------------------------------------------------------------------- table


def test_table_delta_and_speedup_recomputed(results: dict[str, Any]) -> None:
    rows, table = results["rows"], table_rows(results)
    for kind, target, precision, threads in [("kd", "openvino", "int8", 2), ("scratch_b", "tflite", "fp32", 1)]:
        raw = find(rows, kind=kind, target=target, precision=precision, threads=threads)
        dense = find(rows, kind="dense", target=target, precision=precision, threads=threads)
        computed = find(table, kind=kind, target=target, precision=precision, threads=threads)
        assert computed["delta_pts"] == pytest.approx(100 * (raw["accuracy"] - dense["accuracy"]))
        assert computed["speedup"] == pytest.approx(dense["latency_ms_p50"] / raw["latency_ms_p50"])
        assert computed["accuracy_pct"] == pytest.approx(100 * raw["accuracy"])


def test_table_is_sorted_by_target_precision_then_accuracy(results: dict[str, Any]) -> None:
    table = table_rows(results)
    targets = ["pytorch", "tflite", "openvino"]
    keys = [(targets.index(r["target"]), ["fp32", "int8"].index(r["precision"]), -r["accuracy"]) for r in table]
    assert keys == sorted(keys)
    assert len(table) == len(results["rows"])


def test_missing_numbers_stay_missing() -> None:
    results = results_with([("dense", "tflite", "fp32", 0.9), ("kd", "tflite", "fp32", 0.8)])
    kd = find(table_rows(results), kind="kd")
    assert kd["delta_pts"] == pytest.approx(-10.0)
    assert kd["speedup"] is None and kd["size_kb"] is None and kd["parity_top1_pct"] is None


def test_unknown_schema_is_a_user_error(results: dict[str, Any]) -> None:
    with pytest.raises(EdgecompError, match="schema"):
        table_rows(results | {"schema": 2})


def test_plot_points_one_per_variant_at_max_threads(results: dict[str, Any]) -> None:
    points = plot_points(table_rows(results))
    variants = {(r["candidate"], r["target"], r["precision"]) for r in results["rows"]}
    assert sorted((p["candidate"], p["target"], p["precision"]) for p in points) == sorted(variants)
    assert {p["threads"] for p in points} == {2}


# ---------------------------------------------------------------------------------------------- verdicts


def test_verdict_kd_wins() -> None:
    rows = [("kd", "pytorch", "fp32", 0.972), ("scratch_e", "pytorch", "fp32", 0.951)]
    rows.append(("scratch_b", "pytorch", "fp32", 0.960))
    [line] = scratch_verdicts(with_images(results_with(rows), 1000))
    assert "pruned+KD 97.2% vs Scratch-E 95.1% (+2.1 pts) and Scratch-B 96.0% (+1.2 pts)" in line
    assert line.endswith("fine-tuning the pruned weights won (McNemar p < 0.001 on 1000 paired test images).")


def test_criteria_are_also_ranked_right_after_pruning() -> None:
    """Each fine-tuned candidate's pruned model before its fine-tune, best first, under the verdict."""
    results = results_with([("scratch_e", "pytorch", "fp32", 0.95)])
    for name, after, before in [("pruned-kd-random", 0.953, 0.121), ("pruned-kd-l2", 0.951, 0.612)]:
        results["rows"].append(
            {"candidate": name, "kind": "kd", "target": "pytorch", "precision": "fp32", "accuracy": after}
            | {"macs": 880_000, "pruned_accuracy": before}
        )
    verdict, before = scratch_verdicts(results)
    assert "pruned-kd-random (pruned+KD) 95.3%" in verdict  # after fine-tuning random leads, before it l2
    assert before.endswith(
        "right after pruning (BN re-estimated, no fine-tune): pruned-kd-l2 61.2%, pruned-kd-random 12.1%"
    )
    assert (
        len(scratch_verdicts(results_with([("kd", "pytorch", "fp32", 0.9), ("scratch_e", "pytorch", "fp32", 0.9)])))
        == 1
    )


def test_verdict_scratch_b_wins() -> None:
    rows = [("kd", "pytorch", "fp32", 0.956), ("scratch_e", "pytorch", "fp32", 0.951)]
    rows.append(("scratch_b", "pytorch", "fp32", 0.960))
    [line] = scratch_verdicts(with_images(results_with(rows), 10_000))
    assert "Scratch-B won by 0.4 pts (McNemar p < 0.001 on 10000 paired test images)" in line
    assert "fine-tuning the pruned weights won" not in line


def test_verdicts_per_target_when_no_pytorch_row_and_only_for_equal_macs() -> None:
    rows = [("finetune", "tflite", "int8", 0.95), ("scratch_e", "tflite", "int8", 0.93)]
    rows += [("finetune", "openvino", "fp32", 0.94), ("scratch_e", "openvino", "fp32", 0.96)]
    results = results_with(rows)
    results["rows"].append(
        {
            "candidate": "other",
            "kind": "scratch_b",
            "target": "tflite",
            "precision": "int8",
            "accuracy": 0.99,
            "macs": 123,
        }
    )  # another architecture: not a rival
    tflite, openvino = scratch_verdicts(with_images(results, 1000))
    assert tflite.startswith("0.88 M MACs, tflite int8") and "fine-tuning the pruned weights won" in tflite
    assert openvino.startswith("0.88 M MACs, openvino fp32") and "Scratch-E won by 2.0 pts" in openvino


def test_verdict_tie_claims_no_winner() -> None:
    line = scratch_verdicts(results_with([("kd", "pytorch", "fp32", 0.9500), ("scratch_b", "pytorch", "fp32", 0.9502)]))
    assert "level with Scratch-B, untested" in line[0] and "won" not in line[0]


def test_a_margin_within_noise_is_a_tie_and_one_without_per_image_results_is_untested() -> None:
    """The sweep's case: 0.2 pts on 10,000 images where the two models disagree on 600 of them is noise
    (McNemar p ~ 0.6); the same margin from rows that carry no per-image results names no winner either."""
    rows = [("kd", "pytorch", "fp32", 0.910), ("scratch_b", "pytorch", "fp32", 0.912)]
    results = results_with(rows)
    kd, scratch = np.zeros(10_000, bool), np.zeros(10_000, bool)
    kd[:9100], scratch[:8800], scratch[9100:9420] = True, True, True  # 300 only kd, 320 only scratch
    for row, correct in zip(results["rows"], (kd, scratch), strict=True):
        row.update(samples=10_000, correct=pack_correct(correct))
    [line] = scratch_verdicts(results)
    assert line.endswith("a tie within noise with Scratch-B (McNemar p = 0.45 on 10000 paired test images).")
    [untested] = scratch_verdicts(results_with(rows))
    assert "Scratch-B ahead by 0.2 pts, untested" in untested and "won" not in untested


def test_no_verdict_from_a_candidate_at_chance() -> None:
    """A collapsed fine-tune (10% on 10 classes) against a trained scratch baseline is not a Liu et al. result."""
    results = with_images(
        results_with([("kd", "pytorch", "fp32", 0.100), ("scratch_e", "pytorch", "fp32", 0.254)]), 1000
    )
    [line] = scratch_verdicts(results | {"classes": 10})
    assert line.endswith(
        "no verdict: pruned+KD at chance (10.0% for 10 classes), a training that collapsed, not a result."
    )
    assert "won" not in line


def test_no_verdict_without_both_sides(results: dict[str, Any]) -> None:
    assert scratch_verdicts(results_with([("kd", "pytorch", "fp32", 0.9)])) == []
    assert len(scratch_verdicts(results)) == 1


# ---------------------------------------------------------------------------------------------- files


def test_write_report_writes_the_four_files(results: dict[str, Any], tmp_path: Path) -> None:
    paths = write_report(results, tmp_path)
    assert {p.name for p in paths.values()} == FILES
    assert {p.name for p in tmp_path.iterdir()} == FILES  # and no temporary left over


def test_markdown_has_one_table_line_per_row(results: dict[str, Any], tmp_path: Path) -> None:
    md = write_report(results, tmp_path)["md"].read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(results["rows"])  # header and separator
    assert "](plot.png)" in md
    assert "edgecomp run recipes/quickstart.yaml" in md and "AMD EPYC 7B13" in md
    for kind, target, precision, threads in [("kd", "openvino", "int8", 2), ("scratch_b", "tflite", "fp32", 1)]:
        raw = find(results["rows"], kind=kind, target=target, precision=precision, threads=threads)
        dense = find(results["rows"], kind="dense", target=target, precision=precision, threads=threads)
        cells = [
            c.strip()
            for c in table[2:]
            if f"| {raw['candidate']} |" in c and f"| {target} | {precision} | {threads} |" in c
        ]
        assert len(cells) == 1
        assert f"| {100 * (raw['accuracy'] - dense['accuracy']):+.1f} |" in cells[0]
        assert f"| {dense['latency_ms_p50'] / raw['latency_ms_p50']:.2f}× |" in cells[0]


def test_html_escapes_every_string_from_results(results: dict[str, Any], tmp_path: Path) -> None:
    evil = copy.deepcopy(results)
    evil["recipe"] = "<b>recipe</b>"
    evil["command"] = 'edgecomp run "<img src=x onerror=alert(1)>"'
    evil["device"]["cpu"] = "<i>cpu</i>"
    for row in evil["rows"]:
        if row["candidate"] == "scratch-e":
            row["candidate"] = MALICIOUS
            row["lineage"] = ["<u>lineage</u>"]
    paths = write_report(evil, tmp_path)
    page, md = paths["html"].read_text(), paths["md"].read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for raw in ("<script>alert", "<img src=x", "<b>recipe", "<i>cpu", "<u>lineage"):
        assert raw not in page
    for raw in ("<script>alert", "<b>recipe", "<i>cpu", "<u>lineage"):  # the command sits in a code block
        assert raw not in md


def test_html_is_self_contained(results: dict[str, Any], tmp_path: Path) -> None:
    paths = write_report(results, tmp_path)
    page = paths["html"].read_text()
    assert "http://" not in page and "https://" not in page
    [image] = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert base64.b64decode(image) == paths["plot"].read_bytes()
    assert page.count("<tr>") == 1 + len(results["rows"])


def test_plot_is_a_non_blank_png(results: dict[str, Any], tmp_path: Path) -> None:
    png = write_report(results, tmp_path)["plot"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] >= 600 and pixels.shape[1] >= 1000
    assert pixels[..., :3].std() > 0.05


def test_plot_has_a_panel_per_target_and_one_for_macs(results: dict[str, Any]) -> None:
    drawing = figure(Results.parse(results), table_rows(results))
    titles = [axes.get_title(loc="left") for axes in drawing.axes if axes.get_visible()]
    assert titles == ["pytorch, 2 threads", "tflite, 2 threads", "openvino, 2 threads", "all targets: against MACs"]
    assert all(axes.get_xscale() == "linear" for axes in drawing.axes)  # each target spans less than 10x


def test_plot_uses_log_axis_for_a_wide_latency_range(results: dict[str, Any]) -> None:
    wide = copy.deepcopy(results)
    for row in wide["rows"]:
        if row["target"] == "tflite" and row["kind"] == "dense":
            row["latency_ms_p50"] *= 100
    drawing = figure(Results.parse(wide), table_rows(wide))
    scales = {axes.get_title(loc="left"): axes.get_xscale() for axes in drawing.axes}
    assert scales["tflite, 2 threads"] == "log" and scales["openvino, 2 threads"] == "linear"


def test_csv_has_one_line_per_row_with_flat_parity(results: dict[str, Any], tmp_path: Path) -> None:
    with write_report(results, tmp_path)["csv"].open(newline="") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == len(results["rows"])
    assert "parity" not in lines[0] and {"parity_max_abs_diff", "parity_top1_agreement", "speedup"} <= set(lines[0])
    kd = find(lines, candidate="pruned-l2-0.5-kd", target="openvino", precision="int8", threads="2")
    raw = find(results["rows"], candidate="pruned-l2-0.5-kd", target="openvino", precision="int8", threads=2)
    assert float(kd["parity_max_abs_diff"]) == raw["parity"]["max_abs_diff"]


def test_no_file_left_when_plotting_raises(results: dict[str, Any], tmp_path: Path, monkeypatch) -> None:
    def broken(*args: Any) -> bytes:
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report, "plot_png", broken)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_report(results, tmp_path / "new")
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())


def test_failed_rewrite_keeps_the_old_report_whole(results: dict[str, Any], tmp_path: Path, monkeypatch) -> None:
    old = {p.name: p.read_bytes() for p in write_report(results, tmp_path).values()}
    real_write = Path.write_bytes

    def full_disk(self: Path, data: bytes) -> int:
        if self.name.endswith("results.csv"):
            raise OSError("no space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    changed = copy.deepcopy(results)
    changed["recipe"] = "changed"
    with pytest.raises(OSError):
        write_report(changed, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old


def test_import_is_cheap() -> None:
    code = "import sys, compress.report; assert not {'matplotlib', 'torch'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------- pareto in the table


def test_table_marks_the_pareto_set_of_each_target_and_thread_count(results: dict[str, Any], tmp_path: Path) -> None:
    table = table_rows(results)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in results["rows"]:
        groups.setdefault((row["target"], row["threads"]), []).append(row)
    expected = set()
    for rows in groups.values():
        front = brute_force_front([(r["latency_ms_p50"], r["accuracy"]) for r in rows])
        expected |= {(rows[i]["candidate"], rows[i]["target"], rows[i]["precision"], rows[i]["threads"]) for i in front}
    marked = {(r["candidate"], r["target"], r["precision"], r["threads"]) for r in table if r["front"]}
    assert marked == expected
    assert ("pruned-l2-0.5-kd", "tflite", "fp32", 2) in marked and ("scratch-e", "tflite", "fp32", 2) not in marked
    md = write_report(results, tmp_path)["md"].read_text()
    assert sum(line.endswith("| yes |") for line in md.splitlines()) == len(expected)


# ---------------------------------------------------------------------------------------------- recommendation


def timed(candidate: str, kind: str, target: str, precision: str, accuracy: float, p50: float) -> dict[str, Any]:
    return {
        "candidate": candidate,
        "kind": kind,
        "target": target,
        "precision": precision,
        "accuracy": accuracy,
        "latency_ms_p50": p50,
        "threads": 2,
        "macs": 1_000_000 if kind == "dense" else 400_000,
    }


def picks(rows: list[dict[str, Any]], **constraints: float) -> dict[str, report.Recommendation]:
    results = {"schema": 1, "recipe": "t", "metric": "top1", "rows": rows}
    return {pick.target: pick for pick in report.recommend(table_rows(results), ReportSpec(**constraints))}


CASE = [
    timed("dense", "dense", "pytorch", "fp32", 0.950, 10.0),
    timed("dense", "dense", "tflite", "fp32", 0.950, 4.0),
    timed("dense", "dense", "tflite", "int8", 0.930, 3.0),  # int8's own loss: 2 points below dense fp32
    timed("kd", "kd", "tflite", "fp32", 0.945, 2.0),
    timed("kd", "kd", "tflite", "int8", 0.940, 1.0),
    timed("ft", "finetune", "tflite", "fp32", 0.945, 1.5),  # as accurate as kd fp32 and faster
    timed("tiny", "finetune", "tflite", "int8", 0.800, 0.5),
]


def chosen(pick: report.Recommendation) -> tuple[str, str] | None:
    return None if pick.row is None else (pick.row["candidate"], pick.row["precision"])


def test_budget_met_by_several_rows_picks_the_most_accurate_then_the_faster() -> None:
    found = picks(CASE, latency_budget_ms=2.0)
    assert chosen(found["tflite"]) == ("ft", "fp32")  # kd fp32 ties on accuracy, ft is faster
    assert found["tflite"].text.startswith("ft (pruned+ft), fp32, 2 threads: 94.5%, -0.5 pts vs dense fp32 pytorch")
    assert chosen(picks(CASE, latency_budget_ms=1.0)["tflite"]) == ("kd", "int8")
    assert chosen(picks(CASE, latency_budget_ms=100)["tflite"]) == ("dense", "fp32")


def test_a_pick_within_noise_of_a_faster_row_says_so() -> None:
    """Within a 2 ms budget ft fp32 (94.5%) is the most accurate; kd int8 (94.0%, 1 ms) is half a point below it
    on 1,000 shared images. Disagreeing on 15 + 10 images that is noise (McNemar p = 0.42): the pick says so.
    The same half point missed one-sidedly on 10,000 images (50 of 50 disagreements kd's misses) is a real
    difference, and then nothing is said."""
    rows = with_images({"rows": [dict(row) for row in CASE]}, 1000)["rows"]
    noisy = [dict(row) for row in rows]
    ft, kd = np.zeros(1000, bool), np.zeros(1000, bool)
    ft[:940], ft[940:945] = True, True
    kd[:930], kd[945:955] = True, True
    for row in noisy:
        if (row["candidate"], row["precision"]) in (("ft", "fp32"), ("kd", "int8")):
            row["correct"] = pack_correct(ft if row["candidate"] == "ft" else kd)
    text = picks(noisy, latency_budget_ms=2.0)["tflite"].text
    assert text.endswith(
        "; a tie within noise with the faster kd int8 (94.0%, p50 1.00 ms; McNemar p = 0.42 on 1000 paired test images)"
    )
    nested = with_images({"rows": [dict(row) for row in CASE]}, 10_000)["rows"]
    assert "tie within noise" not in picks(nested, latency_budget_ms=2.0)["tflite"].text


def test_budget_met_by_none_says_so_and_how_far_off() -> None:
    found = picks(CASE, latency_budget_ms=0.4)
    assert found["tflite"].row is None and found["pytorch"].row is None
    assert found["tflite"].text == "no row meets the constraints (fastest p50 0.500 ms)"
    assert "fastest p50 10.0 ms" in found["pytorch"].text


def test_max_drop_picks_the_fastest_within_it_against_dense_fp32_pytorch() -> None:
    assert chosen(picks(CASE, max_accuracy_drop=1.0)["tflite"]) == ("kd", "int8")  # 0.95 -> 0.94: exactly 1.0 pt
    assert chosen(picks(CASE, max_accuracy_drop=0.5)["tflite"]) == ("ft", "fp32")
    assert chosen(picks(CASE, max_accuracy_drop=0.0)["tflite"]) == ("dense", "fp32")
    assert chosen(picks(CASE, max_accuracy_drop=20)["tflite"]) == ("tiny", "int8")
    # dense int8 is 2 points below dense fp32: its own quantization loss counts
    assert all(chosen(picks(CASE, max_accuracy_drop=d)["tflite"]) != ("dense", "int8") for d in (0.5, 1.5, 2.0))


def test_max_drop_met_by_none_and_without_a_dense_reference() -> None:
    worse = [row | {"accuracy": row["accuracy"] - 0.05} for row in CASE if row["kind"] != "dense"] + CASE[:1]
    assert picks(worse, max_accuracy_drop=1.0)["tflite"].text == "no row meets the constraints (smallest drop 5.5 pts)"
    headless = [row for row in CASE if row["kind"] != "dense"]
    assert "no dense fp32 row" in picks(headless, max_accuracy_drop=1.0)["tflite"].text
    assert chosen(picks(headless, latency_budget_ms=1.0)["tflite"]) == ("kd", "int8")  # a budget needs no reference


def test_both_constraints_and_the_dense_reference_of_the_target_when_no_pytorch_row() -> None:
    assert chosen(picks(CASE, latency_budget_ms=1.9, max_accuracy_drop=1.0)["tflite"]) == ("ft", "fp32")
    no_pytorch = [row for row in CASE if row["target"] != "pytorch"]
    found = picks(no_pytorch, max_accuracy_drop=0.5)
    assert chosen(found["tflite"]) == ("ft", "fp32") and "vs dense fp32 tflite" in found["tflite"].text


def test_no_constraint_no_pick_and_the_report_says_how_to_ask(results: dict[str, Any], tmp_path: Path) -> None:
    assert report.recommend(table_rows(results), None) == report.recommend(table_rows(results), ReportSpec()) == []
    md = write_report(results, tmp_path)["md"].read_text()
    assert "No constraint set" in md and "latency_budget_ms" in md


def test_recommendation_in_the_report(results: dict[str, Any], tmp_path: Path) -> None:
    paths = write_report(results, tmp_path, ReportSpec(latency_budget_ms=0.1))
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert "- tflite: pruned-l2-0.5-kd (pruned+KD), fp32, 2 threads: 96.9%" in md
    assert "- openvino: pruned-l2-0.5-kd (pruned+KD), int8, 2 threads: 96.7%" in md
    assert "- pytorch: no row meets the constraints" in md
    assert page.count('<tr class="pick"') == 2


# ---------------------------------------------------------------------------------------------- architectures


def arch_row(candidate: str, kind: str, accuracy: float, arch: str | None, macs: int) -> dict[str, Any]:
    row = {"candidate": candidate, "kind": kind, "target": "pytorch", "precision": "fp32", "accuracy": accuracy}
    return row | {"macs": macs} | ({"arch": arch} if arch else {})


def test_verdicts_group_by_arch_and_name_several_candidates_of_one_kind() -> None:
    rows = [
        arch_row("l2-kd", "kd", 0.95, "aaaaaaaaaaaa", 500_000),
        arch_row("l1-kd", "kd", 0.96, "aaaaaaaaaaaa", 500_000),
        arch_row("l2-ft", "finetune", 0.93, "aaaaaaaaaaaa", 500_000),
        arch_row("scratch-e", "scratch_e", 0.94, "aaaaaaaaaaaa", 500_000),
        arch_row("other-kd", "kd", 0.90, "bbbbbbbbbbbb", 500_000),  # same MACs, another architecture
        arch_row("other-scratch-b", "scratch_b", 0.92, "bbbbbbbbbbbb", 500_000),
    ]
    first, second = scratch_verdicts(with_images({"schema": 1, "rows": rows}, 1000))
    assert first.startswith("0.50 M MACs (arch aaaaaaaa), pytorch fp32: l1-kd (pruned+KD) 96.0%")
    assert "(and l2-kd (pruned+KD) 95.0%, pruned+ft 93.0%) vs Scratch-E 94.0% (+2.0 pts)" in first
    assert second.startswith("0.50 M MACs (arch bbbbbbbb), pytorch fp32: pruned+KD 90.0% vs Scratch-B 92.0%")
    assert "Scratch-B won by 2.0 pts" in second


def test_verdicts_fall_back_to_macs_without_arch() -> None:
    rows = [arch_row("kd", "kd", 0.95, None, 500_000), arch_row("se", "scratch_e", 0.94, None, 500_000)]
    rows.append(arch_row("se-big", "scratch_e", 0.99, None, 900_000))
    [line] = scratch_verdicts({"schema": 1, "rows": rows})
    assert line.startswith("0.50 M MACs, pytorch fp32: pruned+KD 95.0% vs Scratch-E 94.0%")


# ---------------------------------------------------------------------------------------------- several runs


def two_machines(results: dict[str, Any]) -> list[dict[str, Any]]:
    other = copy.deepcopy(results)
    other["device"]["cpu"] = "Cortex-A76"
    other["device"]["cores"] = 4
    for row in other["rows"]:
        row["latency_ms_p50"] *= 3
    return [results, other]


def test_combined_runs_get_a_run_column_and_compare_within_a_run(results: dict[str, Any], tmp_path: Path) -> None:
    combined = report.combine_runs(two_machines(results))
    table = table_rows(combined)
    labels = ["quickstart @ AMD EPYC 7B13, 2 cores", "quickstart @ Cortex-A76, 4 cores"]
    assert sorted({row["run"] for row in table}) == labels and len(table) == 2 * len(results["rows"])
    slow = find(table, run=labels[1], candidate="pruned-l2-0.5-kd", target="tflite", precision="int8", threads=2)
    fast = find(table, run=labels[0], candidate="pruned-l2-0.5-kd", target="tflite", precision="int8", threads=2)
    assert slow["speedup"] == pytest.approx(fast["speedup"])  # against the dense row of its own machine
    paths = write_report(combined, tmp_path, ReportSpec(latency_budget_ms=0.15))
    md = paths["md"].read_text()
    assert md.count(f"| {labels[1]} | ") == len(results["rows"])
    assert f"- {labels[0]}, tflite: pruned-l2-0.5-kd" in md and f"- {labels[1]}, tflite: no row meets" in md
    assert md.count("## Reproduce") == 1 and md.count("### quickstart @") == 2


def test_the_header_names_the_machine_the_files_were_timed_on(results: dict[str, Any], tmp_path: Path) -> None:
    """With bench.remote the files' rows carry the device that timed them: the header (and a combined report's
    run label) names it, and says the accuracy and the PyTorch rows come from the machine the run ran on."""
    pi = {
        "host": "pi@rpi",
        "cpu": "Cortex-A76",
        "cores": 4,
        "machine": "aarch64",
        "runtimes": {"ai_edge_litert": "2.3.0"},
    }
    for row in results["rows"]:
        if row["target"] != "pytorch":
            row["device"] = {**pi, "runtime": "ai_edge_litert 2.3.0"}
    md = write_report(results, tmp_path)["md"].read_text()
    header = md.splitlines()[2]
    assert "files timed on pi@rpi: Cortex-A76, 4 cores, aarch64 · runtimes: ai_edge_litert 2.3.0" in header
    assert header.index("Cortex-A76") < header.index("accuracy and PyTorch rows here: AMD EPYC 7B13, 2 cores")
    labels = [run.label for run in report.combine_runs([results, copy.deepcopy(results)]).runs or []]
    assert labels == ["quickstart @ Cortex-A76, 4 cores #1", "quickstart @ Cortex-A76, 4 cores #2"]


def test_same_recipe_same_machine_runs_are_numbered(results: dict[str, Any]) -> None:
    combined = report.combine_runs([results, copy.deepcopy(results)])
    assert [run.label for run in combined.runs] == [
        "quickstart @ AMD EPYC 7B13, 2 cores #1",
        "quickstart @ AMD EPYC 7B13, 2 cores #2",
    ]


def test_runs_with_different_metrics_do_not_mix(results: dict[str, Any]) -> None:
    with pytest.raises(EdgecompError, match="different metrics"):
        report.combine_runs([results, results | {"metric": "map50"}])


def run_dir(tmp_path: Path, name: str, results: Any) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "results.json").write_text(results if isinstance(results, str) else json.dumps(results))
    return folder


def test_report_runs_reads_run_dirs_and_the_recipes_report_section(results: dict[str, Any], tmp_path: Path) -> None:
    first, second = (run_dir(tmp_path, name, r) for name, r in zip("ab", two_machines(results), strict=True))
    for folder in (first, second):
        (folder / "recipe.resolved.yaml").write_text("name: quickstart\nreport: {latency_budget_ms: 0.1}\n")
    paths = report.report_runs([first, second], tmp_path / "out")
    assert paths["md"].parent == tmp_path / "out" and "p50 latency at most 0.1 ms" in paths["md"].read_text()
    paths = report.report_runs([first], max_accuracy_drop=1.0)  # options replace the recipe's section
    assert paths["md"] == first / "report.md" and "at most 1 pts below" in paths["md"].read_text()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp, r: tmp / "nowhere", "no such run directory"),
        (lambda tmp, r: (tmp / "empty").mkdir() or tmp / "empty", "results.json: not found"),
        (lambda tmp, r: run_dir(tmp, "broken", "{not json"), "not valid results JSON"),
        (lambda tmp, r: run_dir(tmp, "v2", r | {"schema": 2}), "schema 2 is not 1"),
        (lambda tmp, r: run_dir(tmp, "list", [1, 2]), "expected a JSON object"),
        (lambda tmp, r: run_dir(tmp, "text", r | {"rows": [r["rows"][0] | {"accuracy": "high"}]}), "must be numbers"),
    ],
)
def test_bad_run_dirs_are_one_line_user_errors(results: dict[str, Any], tmp_path: Path, make, message: str) -> None:
    with pytest.raises(EdgecompError, match=message) as error:
        report.report_runs([make(tmp_path, results)], tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_bad_constraints_and_several_runs_without_out(results: dict[str, Any], tmp_path: Path) -> None:
    folder = run_dir(tmp_path, "a", results)
    with pytest.raises(EdgecompError, match="latency_budget_ms"):
        report.report_runs([folder], latency_budget_ms=-1)
    with pytest.raises(EdgecompError, match="--out"):
        report.report_runs([folder, folder])


def edgecomp(*args: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=root, capture_output=True, text=True, timeout=120, env=env
    )


def test_cli_report_over_two_runs_and_its_errors(results: dict[str, Any], tmp_path: Path) -> None:
    first, second = (run_dir(tmp_path, name, r) for name, r in zip("ab", two_machines(results), strict=True))
    done = edgecomp("report", str(first), str(second), "--out", str(tmp_path / "out"), "--max-accuracy-drop", "1")
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (tmp_path / "out").iterdir()} == FILES
    assert "| quickstart @ Cortex-A76, 4 cores |" in (tmp_path / "out" / "report.md").read_text()
    failed = edgecomp("report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out2"))
    assert failed.returncode == 2 and "no such run directory" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr


# ---------------------------------------------------------------------------------------------- provenance


def test_source_commit_is_this_checkout_or_none() -> None:
    commit = report.source_commit()
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit)


def test_reproduce_block_has_commit_seed_versions_and_command(results: dict[str, Any], tmp_path: Path) -> None:
    md = write_report(results | {"git_commit": "0123abc"}, tmp_path)["md"].read_text()
    assert "- git commit: 0123abc" in md and "- seed: 0" in md and "torch 2.14.1" in md
    assert "```\nedgecomp run recipes/quickstart.yaml\n```" in md


# ---------------------------------------------------------------------------------------------- int8


def test_int8_section_flags_int8_slower_than_its_fp32_twin_and_says_what_stayed_float(tmp_path: Path) -> None:
    search = {"reference": 0.9, "int8": 0.7, "final": 0.85, "ranking": [["features.11", 0.8], ["features.3", 0.72]]}
    search["sqnr_db"] = [["features.11", 14.24], ["features.3", 9.5]]
    rows = [
        timed("dense", "dense", "tflite", "fp32", 0.9, 1.0),
        timed("dense", "dense", "tflite", "int8", 0.895, 1.5),  # slower: flagged
        {
            **timed("dense", "dense", "tflite", "int8_ac", 0.895, 0.8),
            "keep_float": ["features.11"],
            "sensitivity": search,
        },
        timed("dense", "dense", "tflite", "int8_dynamic", 0.9, 3.0),  # slower, with its known reason
        timed("dense", "dense", "openvino", "fp32", 0.9, 1.0),
        timed("dense", "dense", "openvino", "int8", 0.89, 0.5),  # faster: not flagged
        timed("pruned", "finetune", "tflite", "int8", 0.6, 1.2),  # no fp32 twin of its own: not flagged
    ]
    results = {"schema": 1, "recipe": "t", "metric": "top1", "rows": rows}
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    section = text.split("## int8\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("- ")]
    assert lines[0] == "- dense tflite int8: p50 1.5 ms, 1.50x its fp32 twin's 1 ms"
    assert lines[1].startswith("- dense tflite int8_dynamic: p50 3 ms, 3.00x") and "XNNPACK" in lines[1]
    assert lines[2] == (
        "- dense tflite int8_ac: kept in float: features.11; search on the val split: float 90.0, all int8 70.0, "
        "chosen 85.0 (top-1 %); most sensitive groups (top-1 % with the group alone in float; outputs' SQNR "
        "against float): features.11 80.0 (14.2 dB), features.3 72.0 (9.5 dB)"
    )
    assert len(lines) == 3
    assert "<h2>int8</h2>" in (tmp_path / "report.html").read_text()


def test_int8_section_flags_int8_that_costs_more_than_allowed_against_its_fp32_twin(tmp_path: Path) -> None:
    """Against the target's own fp32 file, else the PyTorch model; one line per file whatever its thread counts;
    an int8_ac row by its own bar; the advice only where every layer is int8; report.max_accuracy_drop as the
    bar where set."""
    rows = [
        ("dense", "pytorch", "fp32", 0.90),
        ("dense", "tflite", "fp32", 0.90),
        ("dense", "tflite", "int8", 0.85),
        ("dense", "openvino", "fp32", 0.90),
        ("dense", "openvino", "int8", 0.895),  # half a point: within the default 1
        ("dense", "onnx", "int8", 0.87),  # no onnx fp32 file: against PyTorch
        ("dense", "openvino", "int8_ac", 0.88),  # 2 points, within its own max_accuracy_drop of 3
        ("dense", "openvino", "int8-qat", 0.85),  # flagged; no search advice for a trained int8 file
    ]
    results = with_images(results_with(rows), 1000) | {"metric": "top1"}
    results["rows"].append({**results["rows"][2], "threads": 4})  # the same file timed on 4 threads
    results["rows"][5]["keep_float"] = ["features.11"]
    results["rows"][6]["max_accuracy_drop"] = 3.0
    write_report(results, tmp_path)
    section = (tmp_path / "report.md").read_text().split("## int8\n", 1)[1].split("\n## ", 1)[0]
    assert section.splitlines()[1:5] == [
        "- dense tflite int8: top-1 85.0%, 5.0 points under its fp32 twin's 90.0% (more than the 1 allowed; McNemar "
        "p &lt; 0.001 on 1000 paired test images)",
        "- dense onnx int8: top-1 87.0%, 3.0 points under the PyTorch model's 90.0% (more than the 1 allowed; "
        "McNemar p &lt; 0.001 on 1000 paired test images)",
        "- dense openvino int8-qat: top-1 85.0%, 5.0 points under its fp32 twin's 90.0% (more than the 1 allowed; "
        "McNemar p &lt; 0.001 on 1000 paired test images)",
        "- tflite int8 can keep the layers it costs most in float: precision int8_ac finds them for each file, "
        "\"edgecomp sensitivity t --target tflite\" ranks the dense model's for a recipe's keep_float",
    ]
    assert section.count("points under") == 3 and section.count("can keep the layers") == 1
    write_report(results, tmp_path, ReportSpec(max_accuracy_drop=6.0))
    assert "points under" not in (tmp_path / "report.md").read_text()
    other = copy.deepcopy(results) | {"recipe": "u"}  # a report over two runs names each run's own recipe
    write_report(report.combine_runs([results, other]), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert md.count("points under") == 6
    assert '"edgecomp sensitivity t --target tflite"' in md and '"edgecomp sensitivity u --target tflite"' in md


def test_int8_ac_line_says_when_one_val_sample_weighs_more_than_the_allowed_drop() -> None:
    """On 32 val images one image is 3.1 points of top-1: "within 1 point" then means no image lost, and the
    search keeps groups in float until int8 scores as float does. The line says so; with enough samples, or for
    mAP (no per-image step), it gives the count alone."""
    from compress.report.int8 import kept_float
    from compress.results import Sensitivity

    search = {"reference": 1.0, "int8": 0.84375, "final": 1.0, "ranking": [["features.11", 0.9375]], "samples": 32}
    row = {**timed("dense", "dense", "tflite", "int8_ac", 0.75, 1.0), "max_accuracy_drop": 1.0}
    row |= {"precision": "int8_ac", "keep_float": ["features.11"], "sensitivity": Sensitivity(**search)}
    assert kept_float([row], "top-1")[0].startswith(
        "dense tflite int8_ac: kept in float: features.11; search on the val split (32 samples: one is 3.1 points, "
        "over the 1 allowed: it holds only where int8 scores as float does): float 100.0, all int8 84.4"
    )
    assert "(32 samples): float" in kept_float([row], "mAP@.5")[0]
    row["sensitivity"] = Sensitivity(**(search | {"samples": 1000}))
    assert "search on the val split (1000 samples): float" in kept_float([row], "top-1")[0]


def test_no_int8_section_without_anything_to_say(results: dict[str, Any], tmp_path: Path) -> None:
    for row in results["rows"]:
        if row["precision"].startswith("int8"):
            row["latency_ms_p50"] = 1e-3  # faster than any fp32 twin
    write_report(results, tmp_path)
    assert "## int8" not in (tmp_path / "report.md").read_text()


def test_a_detection_rows_bootstrap_interval_is_shown_written_and_named_as_such(tmp_path: Path) -> None:
    """mAP rows carry their 95% interval (a bootstrap made where the detections were): the table shows it, the
    note says what it is, the CSV flattens it, results.json keeps it, and no paired test is claimed."""
    results = results_with([("kd", "pytorch", "fp32", 0.412), ("scratch_b", "pytorch", "fp32", 0.398)])
    results["metric"] = "map50"
    for row, bounds in zip(results["rows"], ([0.371, 0.455], [0.356, 0.441]), strict=True):
        row.update(samples=500, accuracy_interval=bounds)
    paths = write_report(results, tmp_path)
    md = paths["md"].read_text()
    assert "37.1–45.5" in md and "95% interval of mAP@.5: ± 1.96 standard deviations of its bootstrap" in md
    assert "Wilson" not in md
    with paths["csv"].open(newline="") as f:
        kd = find(list(csv.DictReader(f)), candidate="kd")
    assert (kd["accuracy_low95"], kd["accuracy_high95"]) == ("0.371", "0.455") and "accuracy_interval" not in kd
    assert Results.parse(results).dump()["rows"][0]["accuracy_interval"] == [0.371, 0.455]
    [line] = scratch_verdicts(results)
    assert "untested: mAP has no per-image right or wrong to pair" in line and "won" not in line
    with pytest.raises(EdgecompError, match=r"accuracy_interval must be \[low, high\], two numbers"):
        Results.parse(results | {"rows": [results["rows"][0] | {"accuracy_interval": [0.3]}]})


# ---------------------------------------------------------------------------------------------- committed reports

COMMITTED = sorted(path.parent for path in (Path(__file__).parents[1] / "reports").glob("*/results.json"))


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda folder: folder.name)
def test_committed_reports_render_again_byte_for_byte(folder: Path, tmp_path: Path) -> None:
    """A one-seed run's report does not move when the report code does (seeds, or any other change that should
    leave it alone): each committed results.json, rendered with its shipped recipe's `report:` section, gives
    the committed files back exactly."""
    from compress.recipe import load_recipe

    spec = load_recipe(Path(__file__).parents[1] / "recipes" / f"{folder.name}.yaml").report
    for path in write_report(Results.load(folder / "results.json"), tmp_path, spec).values():
        assert path.read_bytes() == (folder / path.name).read_bytes(), path.name
