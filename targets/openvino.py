"""OpenVINO: ``ov.convert_model`` to a static-shape IR (.xml + .bin), int8 through NNCF, CPU runtime.

The IR is two files. Both are written under temporary names, then the .bin is renamed before the
.xml, so the .xml (the name users open) never points at a missing or foreign .bin.

torch, openvino and nncf are imported only inside the functions that need them.

>>> path = export(model, torch.randn(1, 3, 32, 32), "int8", Path("m.xml"), calibration, {"recipe": "q"})
>>> load(path, threads=2).predict(images)[0].shape
(len(images), num_classes)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from importlib import metadata as dist_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from targets import TARGETS
from targets.base import EdgecompError, check_export_args, export_failed, key_error_line, predict_in_batches
from targets.fileio import atomic_path

if TYPE_CHECKING:
    import torch

# fp32 IR on the CPU plugin (inference precision pinned to f32 by `load`) matches PyTorch to float
# rounding (~1e-6); 1e-3 leaves room for larger logits and other CPUs' kernels.
TOLERANCE = 1e-3

_METADATA_KEY = "edgecomp"  # rt_info section holding the metadata dict


def export(
    model: torch.nn.Module,
    example: torch.Tensor,
    precision: str,
    out: Path,
    calibration: np.ndarray | None,
    metadata: dict[str, str],
) -> Path:
    """Convert `model` to an OpenVINO IR at `out` (.xml, with its .bin beside it), written atomically."""
    check_export_args("openvino", precision, TARGETS["openvino"].precisions, calibration)
    try:
        ov_model = _convert(model, example)
        if precision == "int8":
            ov_model = _quantize_int8(ov_model, calibration)
    except Exception as e:
        raise export_failed("openvino", precision, e) from e
    for key, value in metadata.items():
        ov_model.set_rt_info(str(value), [_METADATA_KEY, key])
    _save_pair(ov_model, Path(out))
    return Path(out)


def _convert(model: torch.nn.Module, example: torch.Tensor) -> Any:
    import openvino as ov

    with warnings.catch_warnings():
        # ov.convert_model traces with torch.jit (deprecated, still works) and its telemetry forks a
        # process, which JAX (imported by litert-torch) warns about; neither is the user's concern.
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        # `input` makes the IR's shape static; `example_input` alone leaves it dynamic.
        return ov.convert_model(model.eval(), example_input=example, input=[list(example.shape)])


def _quantize_int8(ov_model: Any, calibration: np.ndarray) -> Any:
    import nncf

    dataset = nncf.Dataset(np.asarray(calibration, np.float32), lambda sample: sample[None])
    return nncf.quantize(ov_model, dataset, subset_size=len(calibration))


def _save_pair(ov_model: Any, xml: Path) -> None:
    """Save .xml + .bin under temporary names, then rename .bin, then .xml; a failure leaves no half pair."""
    import openvino as ov

    final_bin = xml.with_suffix(".bin")
    try:
        with atomic_path(xml) as tmp_xml:
            tmp_bin = tmp_xml.with_suffix(".bin")
            try:
                ov.save_model(ov_model, tmp_xml, compress_to_fp16=False)
                xml.unlink(missing_ok=True)  # an old .xml must never meet the new .bin
                os.replace(tmp_bin, final_bin)
            finally:
                tmp_bin.unlink(missing_ok=True)
    except BaseException:
        if not xml.is_file():  # a .bin without its .xml is half a pair
            final_bin.unlink(missing_ok=True)
        raise


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata dict `export` put into the IR's rt_info ({} for IRs made elsewhere)."""
    import openvino as ov

    rt_info = ov.Core().read_model(str(path)).get_rt_info()
    if _METADATA_KEY not in rt_info:
        return {}
    return {key: value.astype(str) for key, value in rt_info[_METADATA_KEY].items()}


def size_bytes(path: Path) -> int:
    """What the deployment ships, in bytes: the .xml and its .bin."""
    path = Path(path)
    return path.stat().st_size + path.with_suffix(".bin").stat().st_size


def load(path: Path, threads: int | None = None) -> OpenVINORunner:
    """Compile an IR for the CPU, tuned for single-request latency."""
    return OpenVINORunner(Path(path), threads or os.cpu_count() or 1)


class OpenVINORunner:
    """One compiled model and one infer request, reused; see `targets.base.Runner`.

    Inference precision is pinned to f32: on CPUs with bf16/fp16 support the plugin would otherwise
    run an fp32 IR in lower precision, and the measured accuracy would not be the file's.
    """

    def __init__(self, path: Path, threads: int) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise EdgecompError("OpenVINO is not installed: pip install openvino") from None
        self.path = path
        self.threads = threads
        self.runtime = f"openvino {dist_metadata.version('openvino')}"
        if not path.with_suffix(".bin").is_file():
            raise EdgecompError(f"{path}: its weights {path.with_suffix('.bin').name} are missing beside it")
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        try:
            compiled = ov.Core().compile_model(str(path), "CPU", config)
        except RuntimeError as e:
            raise EdgecompError(f"{path}: OpenVINO cannot open it ({key_error_line(e)})") from e
        if len(compiled.inputs) != 1:
            raise EdgecompError(f"{path}: has {len(compiled.inputs)} inputs; edgecomp runs single-input models")
        shape = compiled.input(0).get_partial_shape()
        if not shape.is_static:
            raise EdgecompError(f"{path}: input shape {shape} is dynamic; export it with a static shape")
        self.input_shape = tuple(int(d) for d in shape.to_shape())
        self._request = compiled.create_infer_request()

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        return predict_in_batches(self, x)

    def bind(self, x: np.ndarray) -> Callable[[], None]:
        import openvino as ov

        self._request.set_input_tensor(ov.Tensor(np.ascontiguousarray(x, dtype=np.float32)))
        return self._run

    def _run(self) -> None:
        self._request.start_async()
        self._request.wait()

    def outputs(self) -> list[np.ndarray]:
        return [np.array(tensor.data, dtype=np.float32) for tensor in self._request.output_tensors]
