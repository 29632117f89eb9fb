"""Every registered target: export the tiny net, open the file in the target's runtime, compare to PyTorch."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import INPUT_SHAPE, export_options
from torch import nn

import targets
from targets.accuracy_control import layer_groups
from targets.base import PRECISIONS, AccuracyControl, EdgecompError, key_error_line, ops_named_in, predict_in_batches


def cpu_computes(precision: str) -> bool:
    """Whether this machine's CPU computes in `precision`'s arithmetic (bf16 needs AVX-512 BF16 or AMX)."""
    computed_in = PRECISIONS[precision].computed_in
    return targets.get_target("openvino").cpu_computes(computed_in)


PAIRS = [
    pytest.param(name, precision, marks=pytest.mark.skipif(not cpu_computes(precision), reason=f"no {precision} CPU"))
    for name, spec in targets.TARGETS.items()
    for precision in spec.precisions
]
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
    assert runner.runtime.split()[0] in {"ai_edge_litert", "tflite_runtime", "openvino", "onnxruntime"}

    outputs = runner.predict(images[:8])
    assert [out.shape for out in outputs] == [(8, NUM_CLASSES)]
    assert outputs[0].dtype == np.float32

    logits = runner.predict(images)[0]
    tolerance = targets.get_target(target).TOLERANCE.get(precision)
    if tolerance is not None:  # a float precision: parity within the target's own tolerance
        assert np.abs(logits - reference).max() <= tolerance
        if precision != "fp32":  # fp16 weights do move the logits: a silently-fp32 file would not
            assert np.abs(logits - reference).max() > 1e-6
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
    metadata = module.read_metadata(path)
    assert metadata.items() >= {"candidate": "tiny", "precision": precision}.items()
    # int8_ac's search; what a bf16 IR is computed in
    assert set(metadata) - {"candidate", "precision"} <= {"keep_float", "accuracy_control", "inference_precision"}
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
        assert np.abs(g - e).max() <= module.TOLERANCE["fp32"]


class _Singular(nn.Module):
    """Singular values: no converter here has a conversion rule for them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svdvals(x[0, 0])


class Unconvertible(nn.Module):
    """A convertible layer, then the unconvertible op inside a named submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1)
        self.spectrum = _Singular()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spectrum(self.stem(x))


@pytest.mark.parametrize(("target", "precision"), PAIRS)
def test_unsupported_op_fails_cleanly_and_writes_nothing(
    target: str, precision: str, calibration: np.ndarray, tmp_path: Path
) -> None:
    out = tmp_path / f"bad{targets.TARGETS[target].suffix}"
    with pytest.raises(EdgecompError) as error:
        options = export_options(precision, calibration[:8])
        targets.get_target(target).export(
            Unconvertible(), torch.zeros(INPUT_SHAPE), precision, out, calibration, {}, **options
        )
    message = str(error.value)
    assert message.startswith(f"{target} {precision} export failed:")
    assert "svd" in message
    assert "in spectrum (_Singular)" in message  # the module to replace, not only the op
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


@pytest.mark.parametrize("target", targets.TARGETS)
def test_export_creates_the_folder_it_writes_into(target: str, tiny_net: nn.Module, tmp_path: Path) -> None:
    out = tmp_path / "runs" / "exports" / f"model{targets.TARGETS[target].suffix}"
    targets.get_target(target).export(tiny_net, torch.zeros(INPUT_SHAPE), "fp32", out, None, {})
    assert out.is_file() and not list(out.parent.glob(".tmp-*"))


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
    good_onnx = exported("onnx", "fp32").read_bytes()
    files = {
        "truncated.tflite": good_tflite[: len(good_tflite) // 2],
        "random.tflite": np.random.default_rng(0).bytes(4096),
        "empty.tflite": b"",
        "nobin.xml": good_xml,
        "random.xml": np.random.default_rng(1).bytes(4096),
        "random.bin": b"",
        "truncated.onnx": good_onnx[: len(good_onnx) // 2],
        "empty.onnx": b"",
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return {name: folder / name for name in files if not name.endswith(".bin")}


@pytest.mark.parametrize(
    "name",
    ["truncated.tflite", "random.tflite", "empty.tflite", "nobin.xml", "random.xml", "truncated.onnx", "empty.onnx"],
)
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


def test_op_names_are_read_from_each_converters_wording() -> None:
    assert ops_named_in("Lowering not found: aten._linalg_svd.default") == {"linalg_svd"}
    assert ops_named_in("No conversion rule found for operations: aten::linalg_svdvals") == {"linalg_svdvals"}
    assert ops_named_in("No ONNX function found for <OpOverload(op='aten._linalg_svd', overload='default')>") == {
        "linalg_svd"
    }
    assert ops_named_in("out of memory") == set()


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
        "import sys, targets, targets.tflite, targets.openvino, targets.onnx, targets.bench\n"
        "heavy = ('torch', 'litert_torch', 'nncf', 'openvino', 'ai_edge_litert', 'tflite_runtime', 'onnx',\n"
        "         'onnxruntime')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- int8 on a trained model: agreement with PyTorch, and the CPU overflow fix ----------------------------

QUANTIZED = [
    (name, precision)
    for name, spec in targets.TARGETS.items()
    for precision in spec.precisions
    if PRECISIONS[precision].integer and precision not in targets.get_target(name).TOLERANCE
]


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    """Real data: scikit-learn's digits at the tiny net's input size; train, calibration and test arrays."""
    from compress.data import DATASETS, as_numpy
    from compress.schema import DataSpec

    splits = DATASETS.get("digits")(DataSpec(dataset="digits", image_size=INPUT_SHAPE[-1]))
    arrays = {}
    for split in ("train", "test"):
        batches = list(as_numpy(getattr(splits, split)))
        arrays[split] = np.concatenate([x for x, _ in batches])
        arrays[f"{split}_labels"] = np.concatenate([y for _, y in batches])
    arrays["calibration"] = arrays["train"][np.random.default_rng(0).choice(len(arrays["train"]), 256, replace=False)]
    return arrays


@pytest.fixture(scope="module")
def trained_net(digits: dict[str, np.ndarray]) -> nn.Module:
    """The tiny net trained on digits for a few seconds: real, peaked logits, where int8 errors flip classes
    (random weights give near-ties that any rounding flips, or logits so far apart that nothing does)."""
    from conftest import TinyNet

    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    x, y = torch.from_numpy(digits["train"]), torch.from_numpy(digits["train_labels"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread is as fast, and immune to a busy machine
    try:
        for _ in range(6):
            for index in torch.randperm(len(x)).split(64):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x[index]), y[index]).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.mark.parametrize(("target", "precision"), QUANTIZED)
def test_quantized_export_agrees_with_pytorch_on_a_trained_net(
    target: str, precision: str, trained_net: nn.Module, digits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    with torch.no_grad():
        reference = trained_net(torch.from_numpy(digits["test"])).numpy()
    # the net did learn (chance is 0.1): a bar well clear of how training numerics move across CPUs
    # (0.797 on an AVX-512 machine, over 0.8 on an AVX2 one, same seed)
    assert np.mean(reference.argmax(1) == digits["test_labels"]) > 0.5
    out = tmp_path / f"trained{targets.TARGETS[target].suffix}"
    module = targets.get_target(target)
    options = export_options(precision, digits["calibration"][:32])
    module.export(trained_net, torch.zeros(INPUT_SHAPE), precision, out, digits["calibration"], {}, **options)
    logits = targets.load_runner(out, threads=2).predict(digits["test"])[0]
    assert np.mean(logits.argmax(1) == reference.argmax(1)) >= 0.95


def _fake_quantize_ops(xml: Path) -> int:
    import openvino as ov

    return sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(xml)).get_ops())


def test_openvino_int8_ac_keeps_layers_in_float_until_the_drop_is_met(
    trained_net: nn.Module, digits: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """With a metric that any rounding lowers (closeness to the float logits), a drop that plain int8 meets
    changes nothing, and one it misses sends layers back to float until the file meets it. Which layers go
    first is NNCF's ranking; what is checked here is that our metric and drop are the ones it obeys."""
    samples = digits["test"][:64]
    with torch.no_grad():
        reference = trained_net(torch.from_numpy(samples)).numpy()

    def closeness(outputs: list[np.ndarray], indices: np.ndarray) -> float:
        return float(np.exp(-np.abs(outputs[0] - reference[indices]).mean() / np.abs(reference).mean()))

    def drop(path: Path) -> float:  # points below the float model, which scores 1
        outputs = targets.load_runner(path, threads=2).predict(samples)
        return 100 * (1 - closeness(outputs, np.arange(len(samples))))

    module, example, calibration = targets.get_target("openvino"), torch.zeros(INPUT_SHAPE), digits["calibration"]
    plain = module.export(trained_net, example, "int8", tmp_path / "int8.xml", calibration, {})

    def controlled(max_drop: float) -> Path:
        control = AccuracyControl(samples, closeness, max_drop)
        out = tmp_path / f"ac{max_drop:g}.xml"
        return module.export(trained_net, example, "int8_ac", out, calibration, {}, accuracy_control=control)

    assert drop(plain) > 0.5
    loose = controlled(max_drop=2 * drop(plain))
    assert _fake_quantize_ops(loose) == _fake_quantize_ops(plain) > 0
    assert drop(loose) == pytest.approx(drop(plain), abs=1e-3)
    strict = controlled(max_drop=0.5)
    assert _fake_quantize_ops(strict) < _fake_quantize_ops(plain)
    assert drop(strict) <= 0.5 + 0.01  # NNCF's own float run differs from PyTorch's by ~1e-4 pts
    # the row says which layer groups NNCF sent back to float (named as TFLite's and ONNX's int8_ac name them)
    kept = json.loads(module.read_metadata(strict)["keep_float"])
    assert kept and set(kept) <= set(layer_groups(trained_net))
    assert json.loads(module.read_metadata(loose)["keep_float"]) == []


AC_TARGETS = [name for name, spec in targets.TARGETS.items() if "int8_ac" in spec.precisions]


@pytest.mark.parametrize("target", AC_TARGETS)
def test_int8_ac_needs_its_validation_and_metric(
    target: str, tiny_net: nn.Module, calibration: np.ndarray, tmp_path: Path
) -> None:
    module, out = targets.get_target(target), tmp_path / f"m{targets.TARGETS[target].suffix}"
    with pytest.raises(EdgecompError, match="int8_ac needs accuracy_control"):
        module.export(tiny_net, torch.zeros(INPUT_SHAPE), "int8_ac", out, calibration, {})
    empty = AccuracyControl(np.zeros((0, 3, 32, 32), np.float32), lambda outputs, indices: 1.0, 1.0)
    with pytest.raises(EdgecompError, match="needs validation samples"):
        module.export(tiny_net, torch.zeros(INPUT_SHAPE), "int8_ac", out, calibration, {}, accuracy_control=empty)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", [name for name in AC_TARGETS if name != "openvino"])
def test_int8_ac_search_keeps_the_most_sensitive_groups_in_float_until_the_drop_holds(
    target: str, trained_net: nn.Module, digits: dict[str, np.ndarray], tmp_path: Path, monkeypatch
) -> None:
    """TFLite and ONNX have no accuracy control of their own: `targets.accuracy_control` ranks the layer
    groups by the outputs' SQNR with each alone in float (through the target's own int8 export), then keeps them
    in float in that order until the drop holds, and writes what it did into the file's metadata."""
    samples = digits["test"][:64]
    with torch.no_grad():
        reference = trained_net(torch.from_numpy(samples)).numpy()

    def closeness(outputs: list[np.ndarray], indices: np.ndarray) -> float:
        return float(np.exp(-np.abs(outputs[0] - reference[indices]).mean() / np.abs(reference).mean()))

    module, example, calibration = targets.get_target(target), torch.zeros(INPUT_SHAPE), digits["calibration"]
    suffix = targets.TARGETS[target].suffix

    exports = []
    export = module.export

    def counted(*args: Any, **kwargs: Any) -> Path:
        exports.append(args[2])  # the precision
        return export(*args, **kwargs)

    monkeypatch.setattr(module, "export", counted)

    def controlled(max_drop: float) -> tuple[Path, dict]:
        control = AccuracyControl(samples, closeness, max_drop)
        out = tmp_path / f"ac{max_drop:g}{suffix}"
        exports.clear()
        path = module.export(trained_net, example, "int8_ac", out, calibration, {}, accuracy_control=control)
        return path, module.read_metadata(path)

    loose, loose_meta = controlled(max_drop=50)
    assert json.loads(loose_meta["keep_float"]) == []
    assert exports == ["int8_ac", "int8"]  # the one probe is the file
    plain_drop = 100 * (1 - json.loads(loose_meta["accuracy_control"])["int8"])
    assert plain_drop > 0.3
    strict, meta = controlled(max_drop=plain_drop / 3)
    search = json.loads(meta["accuracy_control"])
    assert search["samples"] == len(samples) == json.loads(loose_meta["accuracy_control"])["samples"]
    kept = json.loads(meta["keep_float"])
    ranking = [group for group, _ in search["ranking"]]
    assert sorted(ranking) == sorted(layer_groups(trained_net)) and kept == ranking[: len(kept)] and kept
    # ranked by the outputs' SQNR against float, best first (the metric on few samples ties)
    assert [group for group, _ in search["sqnr_db"]] == ranking
    assert [db for _, db in search["sqnr_db"]] == sorted((db for _, db in search["sqnr_db"]), reverse=True)
    achieved = closeness(targets.load_runner(strict, threads=2).predict(samples), np.arange(len(samples)))
    assert achieved == pytest.approx(search["final"], abs=1e-4)
    assert 100 * (1 - achieved) <= plain_drop / 3 + 1e-6 or len(kept) == len(ranking)
    assert exports.count("int8") == 1 + len(ranking) + len(kept)  # the probes: all int8, each group, the search
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([loose.name, strict.name])  # no probe left


class _TwoScaleHeads(nn.Module):
    """SSD's shape: two heads whose outputs differ 20x in range, concatenated, then a float tail (exp)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.small, self.large = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            self.large.weight.mul_(20)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        joined = torch.cat([self.small(x).flatten(2), self.large(x).flatten(2)], dim=1)
        return joined, torch.exp(joined[:, -1:].clamp(max=2.0))


@pytest.mark.parametrize("target", ["tflite", "openvino"])
def test_int8_concat_keeps_every_inputs_range(target: str, tmp_path: Path) -> None:
    """A concatenation of tensors with different ranges is quantised with one scale that covers them all.

    litert-torch's cat annotator never matches graphs from torch 2.14's torch.export, and its converter then
    requantised every input to one input's scale: the 20x larger head was clipped to the small head's range
    (SSDLite's TFLite int8 mAP@.5 was 52 against 72 in fp32).
    """
    model = _TwoScaleHeads().eval()
    rng = np.random.default_rng(0)
    calibration, x = rng.random((32, *INPUT_SHAPE[1:]), np.float32), rng.random((8, *INPUT_SHAPE[1:]), np.float32)
    with torch.no_grad():
        joined, tail = (t.numpy() for t in model(torch.from_numpy(x)))
    out = tmp_path / f"heads{targets.TARGETS[target].suffix}"
    targets.get_target(target).export(model, torch.zeros(INPUT_SHAPE), "int8", out, calibration, {})
    got_joined, got_tail = targets.load_runner(out, threads=1).predict(x)
    large = np.abs(joined[:, 4:]).max()  # ~20; the small head's ~0.8
    assert np.abs(got_joined[:, 4:] - joined[:, 4:]).max() < 0.1 * large  # clipped to the small range: ~0.95
    assert np.abs(got_tail - tail).max() < 0.15 * np.abs(tail).max()  # exp(2) magnifies one int8 step ~7x


def _int8_weights(target: str, path: Path) -> list[np.ndarray]:
    """The int8 weights of every convolution and matrix multiply whose kernel sums pairs of products:
    depthwise (grouped) convolutions have no such pairs, and NNCF rightly leaves them 8-bit."""
    if target == "openvino":
        import openvino as ov

        def consumer(node: object, hops: int = 6) -> str:  # through Convert / Subtract / Multiply / Reshape
            targets_ = list(node.output(0).get_target_inputs())
            kind = targets_[0].get_node().get_type_name() if targets_ else ""
            return (
                kind
                if kind not in ("Convert", "Subtract", "Multiply", "Reshape") or hops == 0
                else consumer(targets_[0].get_node(), hops - 1)
            )

        model = ov.Core().read_model(str(path))
        constants = [
            op for op in model.get_ops() if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8
        ]
        return [op.get_data() for op in constants if consumer(op) in ("Convolution", "MatMul")]
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.dims[1:]]


@pytest.mark.parametrize("target", ["openvino", "onnx"])
def test_int8_weights_use_8_bits_past_the_first_layer(target: str, exported: Callable[[str, str], Path]) -> None:
    """7-bit weights everywhere (the old default, safe from the int16 saturation of x86 CPUs without VNNI) cost
    the real ImageNet MobileNetV2 3 (OpenVINO) and 10 (ONNX) points of agreement on every CPU; NNCF keeps 7 bits
    in the first layer only, onnxruntime in none."""
    weights = _int8_weights(target, exported(target, "int8"))
    assert len(weights) >= 3  # the two pointwise convolutions and the linear layer, at least
    assert sum(int(np.abs(w).max()) > 64 for w in weights) >= len(weights) - 1


def test_tflite_int8_has_float_io_unless_int8_io_is_asked(
    exported: Callable[[str, str], Path],
    tiny_net: nn.Module,
    calibration: np.ndarray,
    images: np.ndarray,
    tmp_path: Path,
) -> None:
    from ai_edge_litert.interpreter import Interpreter

    def io_types(path: Path) -> list[type]:
        interpreter = Interpreter(model_path=str(path))
        return [d["dtype"] for d in interpreter.get_input_details() + interpreter.get_output_details()]

    float_io = exported("tflite", "int8")
    int8_io = targets.get_target("tflite").export(
        tiny_net, torch.zeros(INPUT_SHAPE), "int8", tmp_path / "io.tflite", calibration, {}, io="int8"
    )
    assert io_types(float_io) == [np.float32, np.float32]
    assert io_types(int8_io) == [np.int8, np.int8]
    # the same quantised graph either way: the runner quantises int8 inputs with the tensor's scale/zero point
    got_float, got_int8 = (targets.load_runner(p).predict(images)[0] for p in (float_io, int8_io))
    assert np.mean(got_float.argmax(1) == got_int8.argmax(1)) >= 0.9
    assert np.abs(got_float - got_int8).max() < 0.1 * np.abs(got_float).max()


# -- the capability table ------------------------------------------------------------------------------


def test_every_target_declares_its_capabilities_and_tolerances() -> None:
    for name, spec in targets.TARGETS.items():
        module = targets.get_target(name)
        assert spec.name == name and spec.precisions and "float" in spec.io and spec.devices == ("CPU",)
        assert "fp32" in module.TOLERANCE and set(module.TOLERANCE) <= set(spec.precisions)
        for attribute in ("export", "load", "read_metadata", "size_bytes"):
            assert callable(getattr(module, attribute))


def _recipe(export: dict) -> dict:
    return {"name": "t", "model": {"arch": "mobilenet_v2"}, "data": {"dataset": "digits"}, "exports": [export]}


@pytest.mark.parametrize(
    ("export", "message"),
    [
        (
            {"target": "tflite", "precision": ["int4"]},
            "tflite does not support precision 'int4' (did you mean 'int8'?); "
            "supported: fp32, fp16, int8, int8_ac, int8_dynamic",
        ),
        (
            {"target": "openvino", "precision": ["int8"], "io": "int8"},
            "openvino does not support io 'int8'; supported: float",
        ),
        ({"target": "onnx", "precision": ["fp16"]}, "onnx does not support precision 'fp16'"),
        ({"target": "tflite", "precision": ["fp32"], "io": "int8"}, "io 'int8' goes with precision [int8] only"),
        ({"target": "tflight", "precision": ["fp32"]}, "did you mean 'tflite'"),
        ({"target": "onnx", "precision": ["int8_dynamic"]}, "onnx does not support precision 'int8_dynamic'"),
        (
            {"target": "openvino", "precision": ["int8"], "max_accuracy_drop": 0.5},
            "max_accuracy_drop goes with precision int8_ac",
        ),
        ({"target": "openvino", "precision": ["int8_ac"], "max_accuracy_drop": -1}, "greater than or equal to 0"),
        ({"target": "onnx", "precision": ["fp32"], "keep_float": ["classifier"]}, "keep_float goes with an int8"),
    ],
)
def test_recipe_is_checked_against_the_capability_table_at_load_time(export: dict, message: str) -> None:
    from compress.recipe import parse_recipe

    with pytest.raises(EdgecompError) as error:
        parse_recipe(_recipe(export), source="r.yaml")
    assert message in str(error.value)
    assert "exports.0" in str(error.value)


def test_recipe_accepts_every_declared_capability() -> None:
    from compress.recipe import parse_recipe

    for name, spec in targets.TARGETS.items():
        parse_recipe(_recipe({"target": name, "precision": list(spec.precisions)}))
    parse_recipe(_recipe({"target": "tflite", "precision": ["int8"], "io": "int8"}))


def test_int8_ac_allows_one_point_unless_the_recipe_says_otherwise() -> None:
    from compress.recipe import parse_recipe

    default = parse_recipe(_recipe({"target": "openvino", "precision": ["int8", "int8_ac"]}))
    assert default.exports[0].max_accuracy_drop == 1.0
    chosen = parse_recipe(_recipe({"target": "openvino", "precision": ["int8_ac"], "max_accuracy_drop": 0.2}))
    assert chosen.exports[0].max_accuracy_drop == 0.2
    assert parse_recipe(_recipe({"target": "openvino", "precision": ["int8"]})).exports[0].max_accuracy_drop is None


def test_export_refuses_io_the_target_cannot_make(tiny_net: nn.Module, calibration: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(EdgecompError, match="openvino cannot make 'int8' input/output tensors; it makes: float"):
        targets.get_target("openvino").export(
            tiny_net, torch.zeros(INPUT_SHAPE), "int8", tmp_path / "m.xml", calibration, {}, io="int8"
        )


def test_openvino_bf16_runs_the_fp32_ir_in_bfloat16_where_the_cpu_has_it(tiny_net: nn.Module, tmp_path: Path) -> None:
    """bf16 is how OpenVINO runs an fp32 IR by default on CPUs with bf16: the file says so, the runner asks for
    it (its outputs move by bf16's rounding, not f32's) and its rows say so; elsewhere it is one clear refusal."""
    module = targets.get_target("openvino")
    example = torch.zeros(INPUT_SHAPE)
    if not module.cpu_computes("bf16"):
        with pytest.raises(EdgecompError, match="this CPU cannot compute in bf16"):
            module.export(tiny_net, example, "bf16", tmp_path / "bf16.xml", None, {})
        return
    module.export(tiny_net, example, "bf16", tmp_path / "bf16.xml", None, {"candidate": "tiny"})
    module.export(tiny_net, example, "fp32", tmp_path / "fp32.xml", None, {})
    assert module.read_metadata(tmp_path / "bf16.xml") == {"candidate": "tiny", "inference_precision": "bf16"}
    x = np.random.default_rng(0).standard_normal((64, *INPUT_SHAPE[1:])).astype(np.float32)
    with torch.no_grad():
        reference = tiny_net(torch.from_numpy(x)).numpy()
    bf16, fp32 = module.load(tmp_path / "bf16.xml"), module.load(tmp_path / "fp32.xml")
    assert bf16.runtime.endswith("(bf16)") and not fp32.runtime.endswith(")")
    bf16_diff = np.abs(bf16.predict(x)[0] - reference).max()
    fp32_diff = np.abs(fp32.predict(x)[0] - reference).max()
    assert fp32_diff < 1e-4 < bf16_diff < 0.1 * np.abs(reference).max()
    assert np.mean(bf16.predict(x)[0].argmax(1) == reference.argmax(1)) >= 0.9


@pytest.mark.parametrize(("consent", "sends"), [(None, False), ("0", False), ("1", True)])
def test_openvino_telemetry_is_sent_only_when_the_user_opted_in(monkeypatch, tmp_path, consent, sends) -> None:
    """Each send forks this process beside torch's threads and waits for the network: 0.6-0.7 s per
    ov.convert_model offline. openvino_telemetry sends unless opted out; under edgecomp, only if opted in."""
    from openvino_telemetry import Telemetry
    from openvino_telemetry.utils.opt_in_checker import OptInChecker

    import targets.openvino  # noqa: F401  (wraps the consent check)

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    if consent is not None:
        path = Path(OptInChecker().consent_file())
        path.parent.mkdir(parents=True)
        path.write_text(consent)
    telemetry = Telemetry()
    telemetry.init("edgecomp-test", "0", tid="G-TEST", backend="ga4", enable_opt_in_dialog=False, disable_in_ci=True)
    assert telemetry.consent is sends
