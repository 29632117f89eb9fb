"""Crash safety, resume and determinism on a tiny recipe: SIGKILL at random moments, Ctrl-C, a full disk.

CI kills the run twice; ``make chaos`` ten times (``EDGECOMP_CHAOS_KILLS=10``). After the kills, the same
command finishes the run, and its results must equal an uninterrupted run's (latencies aside), with no
temporary file left, every JSON parsing and every checkpoint and exported file loading.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
from test_fuzz import run_cli

import targets
from compress.models import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
KILLS = int(os.environ.get("EDGECOMP_CHAOS_KILLS", "2"))
SEED = int(os.environ.get("EDGECOMP_CHAOS_SEED", "8"))
TINY = [
    "data.image_size=8",
    "data.train_subset=300",
    "train.epochs=2",
    "stages.1.finetune.epochs=1",
    "baselines.max_epochs=2",
    "bench.runs=2",
    "bench.warmup=0",
    "bench.threads=[1]",
    "exports=[{target: openvino, precision: [fp32]}]",
]
STAGES = ("dense", "prune", "finetune", "scratch_e", "scratch_b")


def run_args(runs_dir: Path, *extra: str) -> list[str]:
    sets = [arg for assignment in [*TINY, *extra] for arg in ("--set", assignment)]
    return ["run", "quickstart", "--runs-dir", str(runs_dir), *sets]


def outcome(run_dir: Path) -> dict:
    """What must not depend on interruptions: candidates and accuracies, and each stage's final loss."""
    results = json.loads((run_dir / "results.json").read_text())
    rows = sorted((r["candidate"], r["kind"], r["target"], r["precision"], r["accuracy"]) for r in results["rows"])
    losses = {name: json.loads((run_dir / name / "stage.json").read_text())["metrics"] for name in STAGES}
    return {"rows": rows, "losses": {name: metrics.get("final_loss") for name, metrics in losses.items()}}


def assert_whole(run_dir: Path) -> None:
    assert not [p for p in run_dir.rglob(".tmp-*")], "temporary files left behind"
    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text())
    for path in run_dir.rglob("model.pt"):
        load_checkpoint(path)
    for path in (run_dir / "exports").rglob("*.xml"):
        targets.load_runner(path)


def failed_in_one_line(code: int, err: str) -> str:
    """The run's log lines come first; the failure is one last `error:` line, with no traceback."""
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err
    assert lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1, err
    return lines[-1]


def stage_times(run_dir: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in run_dir.glob("*/model.pt")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, float]:
    """An uninterrupted run, in this process: its outcome and how long it took."""
    runs = tmp_path_factory.mktemp("reference")
    started = time.perf_counter()
    code, _, err = run_cli(run_args(runs), allow_run=True)
    assert code == 0, err
    assert_whole(runs / "quickstart")
    return outcome(runs / "quickstart"), time.perf_counter() - started


@pytest.mark.slow
def test_same_recipe_and_seed_give_identical_accuracies(reference, tmp_path: Path) -> None:
    code, _, err = run_cli(run_args(tmp_path), allow_run=True)
    assert code == 0, err
    assert outcome(tmp_path / "quickstart") == reference[0]


def edgecomp(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(cwd)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # even when pytest runs in the background
    )


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.timeout(600 + 120 * KILLS)
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_results(reference, tmp_path: Path) -> None:
    expected, seconds = reference
    rng = random.Random(SEED)
    kills, chains = 0, 0
    while kills < KILLS:
        runs = tmp_path / f"chain{chains}"
        chains += 1
        while True:  # kill attempts in one run directory until one finishes
            process = edgecomp(run_args(runs), tmp_path)
            try:
                process.wait(timeout=rng.uniform(1.0, seconds + 8.0))  # + the subprocess's imports
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate(timeout=60)  # hangs if a worker process outlives its killed parent
                kills += 1
                continue
            _, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
            break
        assert_whole(runs / "quickstart")
        assert outcome(runs / "quickstart") == expected, f"after {kills} kills"


@pytest.mark.slow
def test_ctrl_c_stops_between_batches_says_how_to_resume_and_exits_130(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "quickstart"
    process = edgecomp(run_args(tmp_path / "runs", "train.epochs=200"), tmp_path)
    deadline = time.monotonic() + 240
    while not (run_dir / "recipe.resolved.yaml").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # into the dense model's training
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "to resume, run the same command again: edgecomp run quickstart" in err
    assert "Traceback" not in err
    assert not (run_dir / "dense" / "stage.json").exists()
    assert not list(run_dir.rglob(".tmp-*"))


@pytest.mark.slow
def test_an_unwritable_stage_folder_and_a_full_disk_keep_finished_stages_for_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "quickstart"
    run_dir.mkdir()
    (run_dir / "finetune").write_text("a file where a folder must go")
    code, _, err = run_cli(run_args(tmp_path), allow_run=True)
    error = failed_in_one_line(code, err)
    assert "finetune" in error and "resume" in error
    finished = stage_times(run_dir)
    assert set(finished) == {"dense", "prune"}
    (run_dir / "finetune").unlink()

    real_replace = os.replace

    def disk_full_on_export(src, dst, *args, **kwargs):
        if str(dst).endswith((".bin", ".xml", ".tflite")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    # One export process, this one: the patched os.replace does not reach spawned workers.
    with mock.patch("os.replace", disk_full_on_export):
        code, _, err = run_cli([*run_args(tmp_path), "--export-jobs", "1"], allow_run=True)
    error = failed_in_one_line(code, err)
    assert "No space left on device" in error and "resume" in error
    assert_whole(run_dir)
    assert not list((run_dir / "exports").rglob("*.bin")) and not list((run_dir / "exports").rglob("*.xml"))
    assert {name: t for name, t in stage_times(run_dir).items() if name in finished} == finished
    assert set(stage_times(run_dir)) == set(STAGES)

    code, _, err = run_cli(run_args(tmp_path), allow_run=True)
    assert code == 0, err
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(stage["cached"] for stage in manifest["stages"].values())
    assert_whole(run_dir)
