"""Every registered target: export the tiny net, open the file in the target's runtime, compare to PyTorch."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import INPUT_SHAPE
from torch import nn

import targets
from targets.base import EdgecompError, key_error_line, predict_in_batches

PAIRS = [(name, precision) for name, spec in targets.TARGETS.items() for precision in spec.precisions]
NUM_CLASSES = 10


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((32, *INPUT_SHAPE[1:])).astype(np.float32)


@pytest.fixture(scope="module")
def reference(tiny_net: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return tiny_net(torch.from_numpy(images)).numpy()


@pytest.mark.parametrize(("target", "precision"), PAIRS)
def test_export_predicts_like_pytorch(
    target: str, precision: str, exported: Callable[[str, str], Path], images: np.ndarray, reference: np.ndarray
) -> None:
    runner = targets.load_runner(exported(target, precision), threads=2)
    assert runner.input_shape == INPUT_SHAPE
    assert runner.threads == 2
    assert runner.runtime.split()[0] in {"ai_edge_litert", "tflite_runtime", "openvino"}

    outputs = runner.predict(images[:8])
    assert [out.shape for out in outputs] == [(8, NUM_CLASSES)]
    assert outputs[0].dtype == np.float32

    logits = runner.predict(images)[0]
    if precision == "fp32":
        assert np.abs(logits - reference).max() <= targets.get_target(target).TOLERANCE
    else:
        assert np.mean(logits.argmax(1) == reference.argmax(1)) >= 0.75
        # int8 is close, yet not the fp32 graph: a silently-float "int8" file would match to ~1e-7
        assert 1e-5 < np.abs(logits - reference).max() < 0.25 * np.abs(reference).max()


@pytest.mark.parametrize(("target", "precision"), PAIRS)
def test_bind_runs_the_same_inference_as_predict(
    target: str, precision: str, exported: Callable[[str, str], Path], images: np.ndarray
) -> None:
    runner = targets.load_runner(exported(target, precision))
    expected = runner.predict(images[3:4])
    infer = runner.bind(images[3:4])
    assert infer() is None
    for got, want in zip(runner.outputs(), expected, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("target", "precision"), PAIRS)
def test_metadata_is_embedded_and_size_counts_every_file(
    target: str, precision: str, exported: Callable[[str, str], Path]
) -> None:
    path = exported(target, precision)
    module = targets.get_target(target)
    assert module.read_metadata(path) == {"candidate": "tiny", "precision": precision}
    written = list(path.parent.glob(f"{path.stem}.*"))  # OpenVINO: the .xml and its .bin
    assert module.size_bytes(path) == sum(f.stat().st_size for f in written)
    assert not list(path.parent.glob(".tmp-*"))


class TwoHeads(nn.Module):
    """Outputs of different widths, so a swapped output order cannot go unnoticed."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.body.features(x).mean((2, 3))
        return self.body.classifier(pooled), pooled


@pytest.mark.parametrize("target", targets.TARGETS)
def test_outputs_keep_pytorch_order(
    target: str, tiny_net: nn.Module, calibration: np.ndarray, images: np.ndarray, tmp_path: Path
) -> None:
    model = TwoHeads(tiny_net).eval()
    out = tmp_path / f"two{targets.TARGETS[target].suffix}"
    module = targets.get_target(target)
    module.export(model, torch.zeros(INPUT_SHAPE), "fp32", out, calibration, {})
    with torch.no_grad():
        expected = [t.numpy() for t in model(torch.from_numpy(images[:5]))]
    got = targets.load_runner(out).predict(images[:5])
    assert [g.shape for g in got] == [(5, NUM_CLASSES), (5, 32)]
    for g, e in zip(got, expected, strict=True):
        assert np.abs(g - e).max() <= module.TOLERANCE


class Unconvertible(nn.Module):
    """Singular values: neither litert-torch nor OpenVINO's PyTorch frontend has a conversion rule."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svdvals(x[0, 0])


@pytest.mark.parametrize(("target", "precision"), PAIRS)
def test_unsupported_op_fails_cleanly_and_writes_nothing(
    target: str, precision: str, calibration: np.ndarray, tmp_path: Path
) -> None:
    out = tmp_path / f"bad{targets.TARGETS[target].suffix}"
    with pytest.raises(EdgecompError) as error:
        targets.get_target(target).export(Unconvertible(), torch.zeros(INPUT_SHAPE), precision, out, calibration, {})
    message = str(error.value)
    assert message.startswith(f"{target} {precision} export failed:")
    assert "svd" in message
    assert "\n" not in message and len(message) < 600
    assert error.value.__cause__ is not None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", targets.TARGETS)
def test_bad_arguments_are_refused_before_converting(target: str, tiny_net: nn.Module, tmp_path: Path) -> None:
    module = targets.get_target(target)
    with pytest.raises(EdgecompError, match=r"did you mean 'fp32'"):
        module.export(tiny_net, torch.zeros(INPUT_SHAPE), "fp23", tmp_path / "m", None, {})
    with pytest.raises(EdgecompError, match=r"int8 needs calibration samples"):
        module.export(tiny_net, torch.zeros(INPUT_SHAPE), "int8", tmp_path / "m", np.zeros((8, 3)), {})


def test_openvino_save_failure_keeps_the_old_pair_and_no_temp(
    exported: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch, tiny_net: nn.Module, tmp_path: Path
) -> None:
    import openvino as ov

    xml = tmp_path / "m.xml"
    old = exported("openvino", "fp32")
    xml.write_bytes(old.read_bytes())
    xml.with_suffix(".bin").write_bytes(old.with_suffix(".bin").read_bytes())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def save_then_fail(model: object, path: Path, **kwargs: object) -> None:
        Path(path).write_text("<half")
        Path(path).with_suffix(".bin").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ov, "save_model", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        targets.get_target("openvino").export(tiny_net, torch.zeros(INPUT_SHAPE), "fp32", xml, None, {})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_tflite_write_failure_leaves_no_file(
    monkeypatch: pytest.MonkeyPatch, tiny_net: nn.Module, tmp_path: Path
) -> None:
    from targets import tflite

    def fail(content: bytes, metadata: dict[str, str]) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr(tflite, "_with_metadata", fail)
    with pytest.raises(OSError, match="disk full"):
        tflite.export(tiny_net, torch.zeros(INPUT_SHAPE), "fp32", tmp_path / "m.tflite", None, {})
    assert list(tmp_path.iterdir()) == []


def _bad_files(folder: Path, exported: Callable[[str, str], Path]) -> dict[str, Path]:
    good_tflite = exported("tflite", "fp32").read_bytes()
    good_xml = exported("openvino", "fp32").read_bytes()
    files = {
        "truncated.tflite": good_tflite[: len(good_tflite) // 2],
        "random.tflite": np.random.default_rng(0).bytes(4096),
        "empty.tflite": b"",
        "nobin.xml": good_xml,
        "random.xml": np.random.default_rng(1).bytes(4096),
        "random.bin": b"",
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return {name: folder / name for name in files if not name.endswith(".bin")}


@pytest.mark.parametrize("name", ["truncated.tflite", "random.tflite", "empty.tflite", "nobin.xml", "random.xml"])
def test_bad_file_raises_one_line_error(name: str, exported: Callable[[str, str], Path], tmp_path: Path) -> None:
    path = _bad_files(tmp_path, exported)[name]
    with pytest.raises(EdgecompError) as error:
        targets.load_runner(path)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(EdgecompError, match="no such file"):
        targets.load_runner(tmp_path / "absent.tflite")
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(EdgecompError, match="known suffixes"):
        targets.load_runner(tmp_path / "m.pt")


class FakeRunner:
    """Static batch of 4; output = per-sample sum, so padding and order are visible."""

    input_shape = (4, 2)

    def bind(self, x: np.ndarray) -> Callable[[], None]:
        assert x.shape == self.input_shape
        self._x = x.copy()
        return lambda: None

    def outputs(self) -> list[np.ndarray]:
        return [self._x.sum(1), self._x[:, :1]]


def test_predict_in_batches_pads_the_last_batch_and_trims_it() -> None:
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    sums, firsts = predict_in_batches(FakeRunner(), x)
    np.testing.assert_array_equal(sums, x.sum(1))
    np.testing.assert_array_equal(firsts, x[:, :1])
    with pytest.raises(EdgecompError, match="does not fit"):
        predict_in_batches(FakeRunner(), np.zeros((3, 5), np.float32))


def test_tflite_int8_tensors_use_their_scale_and_zero_point() -> None:
    from targets.tflite import _dequantize, _quantize

    detail = {"dtype": np.int8, "quantization": (0.1, 5)}
    q = _quantize(np.array([0.0, 1.0, -0.5, 100.0, -100.0], np.float32), detail)
    np.testing.assert_array_equal(q, np.array([5, 15, 0, 127, -128], np.int8))
    np.testing.assert_allclose(_dequantize(q, detail), [0.0, 1.0, -0.5, 12.2, -13.3], rtol=1e-6)
    assert _dequantize(q, detail).dtype == np.float32


def test_key_error_line_picks_the_line_that_names_the_problem() -> None:
    openvino_style = RuntimeError(
        "Check 'false' failed at src/frontends/unconverted_ops_report.cpp:151:\n"
        "FrontEnd API failed with OpConversionFailure:\n"
        "Summary:\n-- No conversion rule found for operations: aten::linalg_svdvals\n"
    )
    assert (
        key_error_line(openvino_style) == "RuntimeError: No conversion rule found for operations: aten::linalg_svdvals"
    )
    runtime_style = RuntimeError("Exception from src/core.cpp:132:\nEmpty weights data in bin file!\n")
    assert key_error_line(runtime_style) == "RuntimeError: Empty weights data in bin file!"
    assert key_error_line(ValueError("x" * 1000)).endswith("...")
    assert len(key_error_line(ValueError("x" * 1000))) == 300


def test_importing_targets_imports_no_sdk() -> None:
    """The runners and the benchmark must work on a device with only numpy and one runtime."""
    code = (
        "import sys, targets, targets.tflite, targets.openvino, targets.bench\n"
        "heavy = ('torch', 'litert_torch', 'nncf', 'openvino', 'ai_edge_litert', 'tflite_runtime')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
