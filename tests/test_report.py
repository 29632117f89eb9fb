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
import pytest
from hypothesis import given
from hypothesis import strategies as st

from compress import report
from compress.report import pareto_front, plot_points, scratch_verdicts, table_rows, write_report
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
    [line] = scratch_verdicts(results_with(rows))
    assert "pruned+KD 97.2% vs Scratch-E 95.1% (+2.1 pts) and Scratch-B 96.0% (+1.2 pts)" in line
    assert line.endswith("fine-tuning the pruned weights won.")


def test_verdict_scratch_b_wins() -> None:
    rows = [("kd", "pytorch", "fp32", 0.956), ("scratch_e", "pytorch", "fp32", 0.951)]
    rows.append(("scratch_b", "pytorch", "fp32", 0.960))
    [line] = scratch_verdicts(results_with(rows))
    assert "Scratch-B won by 0.4 pts" in line
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
    tflite, openvino = scratch_verdicts(results)
    assert tflite.startswith("0.88 M MACs, tflite int8") and "fine-tuning the pruned weights won" in tflite
    assert openvino.startswith("0.88 M MACs, openvino fp32") and "Scratch-E won by 2.0 pts" in openvino


def test_verdict_tie_claims_no_winner() -> None:
    line = scratch_verdicts(results_with([("kd", "pytorch", "fp32", 0.9500), ("scratch_b", "pytorch", "fp32", 0.9502)]))
    assert "tie" in line[0] and "won" not in line[0]


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
    assert "![accuracy vs latency](plot.png)" in md
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


def test_plot_uses_log_axis_for_a_wide_latency_range(results: dict[str, Any]) -> None:
    figure = report._figure(results, table_rows(results))
    assert figure.axes[0].get_xscale() == "log"  # fixture spans 0.09 to 3.9 ms


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

    monkeypatch.setattr(report, "_plot_png", broken)
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
