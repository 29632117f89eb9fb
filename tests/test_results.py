"""results.json as types: every committed file loads and writes back byte for byte, and every way a file can
be wrong is one clear user error; the report and the CLI table read the same typed rows."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from compress.recipe import load_recipe
from compress.report import write_report
from compress.results import KB, RESULTS_SCHEMA, Results, Row
from targets.base import EdgecompError

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted((ROOT / "reports").glob("*/results.json"))
FIXTURE = ROOT / "tests" / "fixtures" / "results_quickstart.json"


@pytest.fixture
def results() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def test_there_are_committed_results_to_check() -> None:
    assert len(COMMITTED) >= 3


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_results_round_trip_byte_for_byte(path: Path, tmp_path: Path) -> None:
    loaded = Results.load(path)
    assert loaded.rows and all(isinstance(row, Row) for row in loaded.rows)
    assert loaded.write(tmp_path / "results.json").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_reports_regenerate_unchanged(path: Path, tmp_path: Path) -> None:
    """report.md and results.csv from the committed results.json (plot.png and report.html, which embeds it,
    depend on matplotlib's version and fonts, so they are left to the eye)."""
    recipe = ROOT / "recipes" / f"{path.parent.name}.yaml"
    spec = load_recipe(recipe).report if recipe.is_file() else None
    paths = write_report(Results.load(path), tmp_path, spec)
    for key in ("md", "csv"):
        assert paths[key].read_bytes() == (path.parent / paths[key].name).read_bytes(), key


def test_set_keys_stay_and_unset_ones_stay_out(results: dict[str, Any]) -> None:
    """An explicit null is kept, an absent key stays absent, an int stays an int: the file round-trips."""
    dumped = Results.parse(results).dump()
    assert dumped == results
    assert dumped["rows"][0]["parity"] is None and "failed" not in dumped and "git_commit" not in dumped
    assert isinstance(dumped["rows"][0]["threads"], int) and isinstance(dumped["rows"][0]["accuracy"], float)
    assert list(dumped) == list(results) and list(dumped["rows"][0]) == list(results["rows"][0])


def test_a_dict_and_its_results_make_the_same_report(results: dict[str, Any], tmp_path: Path) -> None:
    from_dict = write_report(results, tmp_path / "dict")
    from_typed = write_report(Results.parse(results), tmp_path / "typed")
    for key in ("md", "csv", "html", "plot"):
        assert from_dict[key].read_bytes() == from_typed[key].read_bytes(), key


def test_schema_is_defined_once_and_a_wrong_one_is_one_clear_error(results: dict[str, Any], tmp_path: Path) -> None:
    import compress.pipeline

    assert compress.pipeline.RESULTS_SCHEMA is RESULTS_SCHEMA
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results | {"schema": 2, "rows": [{"junk": 1}]}))
    with pytest.raises(EdgecompError) as error:
        Results.load(path)
    assert str(error.value).startswith(f"{path}: results schema 2 is not 1") and "\n" not in str(error.value)
    assert "regenerate results.json" in str(error.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["rows"][0].update(speed=1), "row 0 ('dense'): unknown key 'speed'"),
        (lambda r: r["rows"][0].update(accuracy="0.9"), "row 0 ('dense'): accuracy must be numbers"),
        (lambda r: r["rows"][0].update(threads=True), "threads must be numbers"),
        (lambda r: r["rows"][0].pop("target"), "row 0 ('dense') has no target"),
        (lambda r: r["rows"][0].update(kind=None), "row 0 ('dense') has no kind"),
        (lambda r: r.update(rows={"a": 1}), "rows must be a list of objects"),
        (lambda r: r.update(failed=[{"reason": "x"}]), "results 'failed'"),
        (lambda r: r.update(schema="1"), "schema '1' is not 1"),
    ],
)
def test_bad_results_are_one_line_user_errors(results: dict[str, Any], change, message: str) -> None:
    bad = copy.deepcopy(results)
    change(bad)
    with pytest.raises(EdgecompError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        Results.parse(bad)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "message"), [(None, "not found"), ("{oops", "not valid results JSON"), ("[1]", "expected a JSON object")]
)
def test_unreadable_files_are_user_errors(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / "results.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(EdgecompError, match=message):
        Results.load(path)


def test_sizes_are_in_kb_of_1000_bytes_in_the_report_and_the_cli_table(results: dict[str, Any]) -> None:
    from cli import results_table

    typed = Results.parse(results)
    row = next(row for row in typed.rows if row.size_bytes)
    assert KB == 1000 and row.size_kb == pytest.approx(row.size_bytes / 1000)
    console = Console(width=300, record=True)
    console.print(results_table(typed))
    assert f" {row.size_kb:.0f} " in console.export_text()
    assert f" {row.size_bytes / 1024:.0f} " not in console.export_text()
