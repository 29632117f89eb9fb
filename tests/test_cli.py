"""The command line as a user meets it: real processes, exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def edgecomp(*args: str, cwd: Path, path_first: Path | None = None) -> subprocess.CompletedProcess:
    """`edgecomp ARGS` from this checkout; `path_first` goes before it on PYTHONPATH (a module that shadows one)."""
    pythonpath = os.pathsep.join(str(p) for p in (path_first, ROOT) if p)
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": pythonpath, "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )


def quickstart_with(tmp_path: Path, change) -> Path:
    recipe = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())
    change(recipe)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["train"].update(epoch=3), "train.epoch: unknown key"),
        (lambda r: r["model"].update(weights="missing.pt"), "model.weights: no such file"),
        (lambda r: r["model"].update(arch="mobilenet_v5"), "unknown model 'mobilenet_v5'"),
        (lambda r: r["data"].update(dataset="mnist_digits"), "unknown data set 'mnist_digits'"),
    ],
)
def test_user_errors_exit_2_with_one_line_and_write_nothing(tmp_path: Path, change, message: str) -> None:
    done = edgecomp("run", str(quickstart_with(tmp_path, change)), cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "runs").exists()


def test_a_misspelt_key_is_answered_before_torch_is_imported(tmp_path: Path) -> None:
    """The schema takes or refuses a recipe before the registries and the pipeline import torch (~6 s): here a
    torch that refuses to import would turn the one-line answer into an ImportError."""
    (tmp_path / "no_torch" / "torch").mkdir(parents=True)
    (tmp_path / "no_torch" / "torch" / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    done = edgecomp("run", "quickstart", "--set", "train.epoch=3", cwd=tmp_path, path_first=tmp_path / "no_torch")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().endswith("quickstart.yaml: train.epoch: unknown key")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "quickstart", "--out", "x"), "No such option: --out"),
        (("run",), "Missing argument 'recipe'"),
        (("frobnicate",), "No such command 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2_with_the_usage_not_a_traceback(tmp_path: Path, args: tuple, message: str) -> None:
    done = edgecomp(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and "Usage: edgecomp" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "runs").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    done = edgecomp(
        "--debug", "run", str(quickstart_with(tmp_path, lambda r: r["train"].update(epoch=3))), cwd=tmp_path
    )
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_bench_missing_and_unknown_files(tmp_path: Path) -> None:
    missing = edgecomp("bench", "nope.tflite", cwd=tmp_path)
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "model.pb").write_bytes(b"x")
    unknown = edgecomp("bench", "model.pb", cwd=tmp_path)
    assert unknown.returncode == 2 and "no target opens '.pb'" in unknown.stderr


def test_listing_commands() -> None:
    """In this process (eight interpreters took ~17 s of CI); the other tests here run the CLI as a user does."""
    from typer.testing import CliRunner

    from cli import app

    def invoke(*args: str) -> str:
        done = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
        assert done.exit_code == 0, done.output
        return done.output

    assert "quickstart" in invoke("recipes")
    assert {"mobilenet_v2", "timm:NAME"} <= set(invoke("models").split())
    assert "digits" in invoke("datasets")
    for command in ("run", "bench", "recipes", "models", "datasets"):
        assert "Usage" in invoke(command, "--help")


def test_recipe_by_shipped_name_and_set_override_errors(tmp_path: Path) -> None:
    done = edgecomp("run", "quickstart", "--set", "stages.9.prune.ratio=0.2", cwd=tmp_path)
    assert done.returncode == 2 and "stages has no item '9'" in done.stderr


def test_openmp_waits_passively_unless_the_user_chose_otherwise() -> None:
    """The CLI sets OMP_WAIT_POLICY before anything loads torch's OpenMP runtime (spinning threads made a
    training step 25x slower while another process was busy), and leaves a user's own setting alone."""
    probe = "import os, sys; import cli; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    for given, expected in ((None, "PASSIVE False"), ("ACTIVE", "ACTIVE False")):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if given:
            env["OMP_WAIT_POLICY"] = given
        out = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True)
        assert out.stdout.strip() == expected, out.stderr


def test_run_with_a_failed_export_exits_1_after_reporting_the_rest(tmp_path: Path, monkeypatch) -> None:
    """The pipeline measured what it could (its own test makes an export fail); the command prints the table,
    the report's path and every failure, and its exit status says one failed."""
    from typer.testing import CliRunner

    import cli
    import compress.pipeline

    row = {"candidate": "dense", "kind": "dense", "target": "pytorch", "precision": "fp32", "accuracy": 0.9}
    row |= {"threads": 1, "latency_ms_p50": 1.0, "latency_ms_p90": 1.1, "macs": 10**6, "size_bytes": None}
    failure = {"candidate": "dense", "target": "tflite", "precision": "int8", "reason": "tflite int8 export failed: X"}

    class Finished:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def run(self) -> dict:
            return {"schema": 1, "recipe": "quickstart", "metric": "top1", "rows": [row], "failed": [failure]}

    monkeypatch.setattr(compress.pipeline, "Pipeline", Finished)
    done = CliRunner().invoke(cli.app, ["run", "quickstart", "--runs-dir", str(tmp_path / "runs")])
    assert done.exit_code == 1, done.output
    assert "1 export(s) failed" in done.output and "dense tflite int8: tflite int8 export failed: X" in done.output
    assert "Report:" in done.output


def test_run_prints_each_int8_file_that_costs_more_than_allowed(tmp_path: Path, monkeypatch) -> None:
    """The report's int8 accuracy lines also reach the terminal, under the recipe's report.max_accuracy_drop."""
    from typer.testing import CliRunner

    import cli
    import compress.pipeline
    from compress.results import pack_correct

    right = np.arange(100) < 90
    rows = [
        {"candidate": "dense", "kind": "dense", "target": t, "precision": p, "accuracy": a, "threads": 1}
        | {"samples": 100, "correct": pack_correct(right & (np.arange(100) < 100 * a))}
        for t, p, a in (("pytorch", "fp32", 0.9), ("tflite", "int8", 0.8))
    ]

    class Finished:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def run(self) -> dict:
            return {"schema": 1, "recipe": "quickstart", "metric": "top1", "rows": rows}

    monkeypatch.setattr(compress.pipeline, "Pipeline", Finished)
    runs = ["run", "quickstart", "--runs-dir", str(tmp_path / "runs")]
    done = CliRunner().invoke(cli.app, runs)
    assert done.exit_code == 0, done.output
    assert "int8: dense tflite int8: top-1 80.0%, 10.0 points under the PyTorch model's 90.0%" in done.output
    assert "int8: tflite int8 can keep the layers it costs most in float" in done.output
    done = CliRunner().invoke(cli.app, [*runs, "--set", "report.max_accuracy_drop=15"])
    assert done.exit_code == 0 and "points under" not in done.output, done.output


def test_bench_times_several_files_together(exported: Callable[[str, str], Path], tmp_path: Path) -> None:
    """Several files: one JSON line each, timed in the same interleaved rounds; a file that cannot be opened
    says why on its own line and the others are still timed (exit 2)."""
    files = [exported("tflite", "fp32"), exported("onnx", "fp32")]
    done = edgecomp("bench", *map(str, files), "nope.xml", "--json", "--runs", "6", "--rounds", "3", cwd=tmp_path)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert done.returncode == 2 and [line["model"] for line in lines] == [*map(str, files), "nope.xml"]
    assert [line["runtime"].split()[0] for line in lines[:2]] == ["ai_edge_litert", "onnxruntime"]
    assert all(line["runs"] == 6 and line["latency_ms_p50"] > 0 for line in lines[:2])
    assert "no such file" in lines[2]["error"] and "Traceback" not in done.stderr
    budget = edgecomp("bench", *map(str, files), "--time-budget", "1", cwd=tmp_path)
    assert budget.returncode != 0 and "--time-budget times one file" in budget.stderr
