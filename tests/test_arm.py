"""The device-side predict entry point, and the ARM lane: the same runner on aarch64 builds, under qemu.

Tests marked `arm` build (once, into ~/.cache/edgecomp/arm) a Debian arm64 sysroot and the aarch64 wheel
of ai-edge-litert, then run one tiny file under emulation; they skip, saying why, where debootstrap or qemu
cannot be installed. The full lane over the quickstart's 16 files is `make arm-check`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import targets
from targets.base import EdgecompError
from targets.predict import agreement, load_outputs, save_outputs

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "arm" / "python-aarch64"
RUNTIME = "ai_edge_litert"  # the runtime edgecomp installs; the lane also runs tflite_runtime and openvino


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "x.npy"
    np.save(path, np.random.default_rng(1).standard_normal((40, 3, 32, 32)).astype(np.float32))
    return path


def tampered_copy(model: Path, out: Path) -> Path:
    """A copy of a .tflite with its largest weight buffer negated: what an Arm kernel computing wrong would give."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model.read_bytes()))
    buffer = max(tree.buffers, key=lambda b: 0 if b.data is None else len(b.data))
    buffer.data = (-np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), np.float32)).view(np.uint8)
    builder = flatbuffers.Builder(model.stat().st_size + 1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    out.write_bytes(bytes(builder.Output()))
    return out


def predict_cli(args: list[str], python: list[str], env: dict[str, str] | None = None) -> tuple[int, dict]:
    result = subprocess.run(
        [*python, "-m", "targets.predict", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose `torch` refuses to import, as on a device without torch."""
    folder = tmp_path_factory.mktemp("no_torch")
    (folder / "torch").mkdir()
    (folder / "torch" / "__init__.py").write_text("raise ImportError('torch is not installed on this device')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


@pytest.mark.parametrize("target", targets.TARGETS)
def test_predict_cli_runs_without_torch_and_saves_every_output(
    target: str, exported: Callable[[str, str], Path], inputs: Path, no_torch_env: dict[str, str], tmp_path: Path
) -> None:
    model, out = exported(target, "int8"), tmp_path / "y.npz"
    code, summary = predict_cli(
        [str(model), "--input", str(inputs), "--output", str(out)], [sys.executable], no_torch_env
    )
    assert code == 0
    assert summary["n"] == 40 and summary["output_shapes"] == [[40, 10]]
    assert summary["runtime"] == targets.load_runner(model).runtime and summary["machine"]
    expected = targets.load_runner(model).predict(np.load(inputs))
    saved = load_outputs(out)
    assert len(saved) == len(expected) and np.array_equal(saved[0], expected[0])


def test_predict_cli_agrees_with_its_own_reference(
    exported: Callable[[str, str], Path], inputs: Path, tmp_path: Path
) -> None:
    model, reference = exported("tflite", "fp32"), tmp_path / "x86.npz"
    predict_cli([str(model), "--input", str(inputs), "--output", str(reference)], [sys.executable])
    code, summary = predict_cli([str(model), "--input", str(inputs), "--reference", str(reference)], [sys.executable])
    assert code == 0 and summary["agrees"] is True
    assert summary["top1_agreement"] == 1.0 and summary["max_abs_diff"] == 0.0


def test_predict_cli_reports_a_mismatch_and_exits_1(
    exported: Callable[[str, str], Path], inputs: Path, tmp_path: Path
) -> None:
    original = exported("tflite", "fp32")
    reference = tmp_path / "x86.npz"
    predict_cli([str(original), "--input", str(inputs), "--output", str(reference)], [sys.executable])
    bad = tampered_copy(original, tmp_path / "tampered.tflite")
    code, summary = predict_cli([str(bad), "--input", str(inputs), "--reference", str(reference)], [sys.executable])
    assert code == 1 and summary["agrees"] is False
    assert summary["top1_agreement"] < 0.9 and summary["max_abs_diff"] > 0.1


def test_agreement_counts_top1_and_refuses_other_shapes(tmp_path: Path) -> None:
    reference = [np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.1], [0.0, 3.0]], np.float32)]
    outputs = [np.array([[0.0, 1.5], [1.0, 0.0], [0.1, 0.2], [0.0, 3.0]], np.float32)]
    result = agreement(reference, outputs)
    assert result["top1_agreement"] == 0.75
    assert result["max_abs_diff"] == pytest.approx(0.5)
    save_outputs(tmp_path / "o.npz", outputs)
    assert np.array_equal(load_outputs(tmp_path / "o.npz")[0], outputs[0])
    with pytest.raises(EdgecompError, match="cannot be compared"):
        agreement(reference, [outputs[0][:3]])


# The ARM lane, under qemu.


@pytest.fixture(scope="module")
def arm_site() -> None:
    """The sysroot and the ai-edge-litert site, built once into the cache; skip where that cannot be done."""
    result = subprocess.run(
        [sys.executable, "-m", "arm.check", "--setup-only", "--runtimes", RUNTIME],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    if result.returncode == 2:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr


@pytest.mark.arm
def test_lane_verifies_a_file_on_aarch64_and_catches_a_wrong_one(
    arm_site: None, exported: Callable[[str, str], Path], inputs: Path, tmp_path: Path
) -> None:
    original = exported("tflite", "fp32")
    reference = tmp_path / "x86.npz"
    predict_cli([str(original), "--input", str(inputs), "--output", str(reference)], [sys.executable])
    emulated = [str(HELPER), RUNTIME]

    code, summary = predict_cli([str(original), "--input", str(inputs), "--reference", str(reference)], emulated)
    assert (code, summary["machine"], summary["agrees"]) == (0, "aarch64", True)
    assert summary["runtime"].startswith(RUNTIME) and summary["max_abs_diff"] < 1e-3

    bad = tampered_copy(original, tmp_path / "tampered.tflite")
    code, summary = predict_cli([str(bad), "--input", str(inputs), "--reference", str(reference)], emulated)
    assert (code, summary["machine"], summary["agrees"]) == (1, "aarch64", False)
    assert summary["top1_agreement"] < 0.9


@pytest.mark.arm
def test_lane_writes_arm_rows_for_a_run(arm_site: None, exported: Callable[[str, str], Path], tmp_path: Path) -> None:
    """`python -m arm.check` on a run directory: the quickstart's recipe (digits at 32x32) and one export."""
    run_dir = tmp_path / "tiny"
    (run_dir / "exports" / "tiny").mkdir(parents=True)
    (run_dir / "recipe.resolved.yaml").write_text((ROOT / "recipes" / "quickstart.yaml").read_text())
    model = run_dir / "exports" / "tiny" / "tflite-int8.tflite"
    model.write_bytes(exported("tflite", "int8").read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "arm.check", "--run-dir", str(run_dir), "--runtimes", RUNTIME],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tflite-int8.tflite" in result.stdout and "top-1 agreement" in result.stdout
    report = json.loads((run_dir / "arm.json").read_text())
    assert report["verified"] is True and report["task"] == "classification"
    (row,) = report["rows"]
    assert row["file"] == "exports/tiny/tflite-int8.tflite" and row["arch"] == "aarch64 (qemu)"
    assert row["precision"] == "int8" and row["runtime"].startswith(RUNTIME)
    assert row["n"] == report["n"] > 100 and row["top1_agreement"] >= 0.99 and row["verified"] is True
    assert abs(row["metric_x86"] - row["metric_aarch64"]) <= 0.01
    assert not any(key.startswith("latency") for key in row)  # emulated time is never a device latency
    assert [b["ok"] for b in report["bench"]] == [True]
