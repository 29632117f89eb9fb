"""Shared fixtures: a tiny convolutional net and its exports, made once per test session."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see cli.py

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch import nn

import targets
from targets.base import AccuracyControl

INPUT_SHAPE = (1, 3, 32, 32)


def load_script(path: Path) -> Iterator[ModuleType]:
    """A script of benchmarks/ imported as a module, for a fixture to ``yield from``: it stays in sys.modules while
    the fixture lives (its dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def photo_folder(root: Path, photos: dict[str, int]) -> Path:
    """root/<class folder>/<n photos> of random pixels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in photos.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (9, 11, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def export_options(precision: str, samples: np.ndarray, max_drop: float = 1.0) -> dict:
    """The extra `export` arguments a precision needs: int8_ac's validation samples and metric.

    The metric here is constant, so nothing is ever kept in float and the file is an ordinary int8 one;
    test_targets checks the accuracy control itself with a metric that does move.
    """
    if precision != "int8_ac":
        return {}
    return {"accuracy_control": AccuracyControl(samples, lambda outputs, indices: 1.0, max_drop)}


def conv_bn_relu(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyNet(nn.Module):
    """MobileNet in miniature: conv-BN-ReLU, depthwise conv, global pool, linear classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, 16, stride=2),
            conv_bn_relu(16, 16, groups=16),
            conv_bn_relu(16, 32, stride=2),
            conv_bn_relu(32, 32, groups=32),
        )
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def make_tiny_net(seed: int = 0) -> TinyNet:
    """Random weights with non-trivial BN statistics (fresh BN layers would be identities) and logits
    of a trained net's scale (a few units), so that tolerances on them mean something."""
    torch.manual_seed(seed)
    model = TinyNet()
    nn.init.normal_(model.classifier.weight, std=2.0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_net() -> TinyNet:
    return make_tiny_net()


@pytest.fixture(scope="session")
def calibration() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((64, *INPUT_SHAPE[1:])).astype(np.float32)


@pytest.fixture(scope="session")
def exported(
    tiny_net: TinyNet, calibration: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, str], Path]:
    """`exported(target, precision)`: the tiny net's file for that pair, exported on first use."""
    folder = tmp_path_factory.mktemp("exports")
    cache: dict[tuple[str, str], Path] = {}

    def get(target: str, precision: str) -> Path:
        if (target, precision) not in cache:
            out = folder / f"tiny-{target}-{precision}{targets.TARGETS[target].suffix}"
            module = targets.get_target(target)
            metadata = {"candidate": "tiny", "precision": precision}
            cache[target, precision] = module.export(
                tiny_net,
                torch.zeros(INPUT_SHAPE),
                precision,
                out,
                calibration,
                metadata,
                **export_options(precision, calibration[:8]),
            )
        return cache[target, precision]

    return get


# The test files that take longest, longest first: each holds a test or fixture of 1-3 min (`make test`'s
# --durations=0 summed by file, 2026-12-03; see `pytest_collection_modifyitems`).
SLOWEST_FILES = (
    "test_pipeline.py",
    "test_real_int8.py",
    "test_distributed.py",
    "test_chaos.py",
    "test_targets.py",
    "test_qat.py",
    "test_methods.py",
    "test_detectors.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the `SLOWEST_FILES` first, the rest in collection order. `make test` hands whole files to its workers
    (``--dist loadfile``) in this order (``--no-loadscope-reorder``: xdist would order them by their number of
    tests): a long file that started last ran alone for minutes while the other worker idled."""
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


# After the whole suite, a native runtime (litert/JAX, OpenVINO, onnxruntime or Chromium's helpers) can
# segfault in its destructors at interpreter exit, turning a passed run into exit 139. Every result has
# been reported by then, so leave with pytest's own exit status without running those destructors.
_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _exit_status:
        import os
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[0])
