"""Model builders (the MODELS registry) and checkpoints that survive pruning.

A builder takes the recipe's ModelSpec and a class count and returns a randomly initialised
``nn.Module``; pretrained weights come from a checkpoint path (``model.weights``), never from the
network at run time. ``arch`` may also be ``pkg.module:function`` for a user's own builder.

Checkpoints hold tensors and the integer shape attributes of every conv, norm and linear layer, so
a pruned model is rebuilt from its base architecture without pickled modules and loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import ModuleType

import torch
import torchvision
from torch import nn

from compress import timm_models
from compress.detectors import BUILDERS as DETECTORS
from compress.registry import Registry
from compress.schema import TIMM_PREFIX, TIMM_WEIGHTS, TORCHVISION_WEIGHTS, ModelSpec
from targets.base import EdgecompError
from targets.fileio import atomic_path

Builder = Callable[[ModelSpec, int], nn.Module]
MODELS: Registry[Builder] = Registry("model")

CHECKPOINT_FORMAT = 1
# Unpickling runs code: a pickled module as model.weights loads only under `edgecomp run --trust`.
TRUST_PICKLES: ContextVar[bool] = ContextVar("TRUST_PICKLES", default=False)


def _stride1_stem(model: nn.Module) -> nn.Module:
    """Make the first conv stride 1: at 32x32 input a stride-2 stem leaves too little resolution."""
    model.features[0][0].stride = (1, 1)
    return model


@MODELS.register("mobilenet_v2")
def mobilenet_v2(spec: ModelSpec, num_classes: int) -> nn.Module:
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=spec.width_mult)
    return _stride1_stem(model) if spec.small_input else model


def _mobilenet_v3(factory: Callable[..., nn.Module]) -> Builder:
    def build(spec: ModelSpec, num_classes: int) -> nn.Module:
        model = factory(weights=None, num_classes=num_classes, width_mult=spec.width_mult)
        return _stride1_stem(model) if spec.small_input else model

    return build


MODELS.register("mobilenet_v3_small")(_mobilenet_v3(torchvision.models.mobilenet_v3_small))
MODELS.register("mobilenet_v3_large")(_mobilenet_v3(torchvision.models.mobilenet_v3_large))
for _name, _builder in DETECTORS.items():  # SSDLite cores, see compress/detectors.py
    MODELS.register(_name)(_builder)


def _import_builder(arch: str) -> Builder:
    module_name, _, function_name = arch.rpartition(":")
    try:
        module = _module_file(module_name) if module_name.endswith(".py") else importlib.import_module(module_name)
        function = getattr(module, function_name)
    except (ImportError, AttributeError, ValueError, TypeError, OSError) as error:  # ':f' and '.relative:f' too
        raise EdgecompError(f"cannot import model builder {arch!r}: {error}") from None
    return lambda spec, num_classes: function(num_classes=num_classes)


def _module_file(path: str) -> ModuleType:
    """The Python file at `path` (relative to the working directory), imported by its name with its folder put
    on ``sys.path``: export workers, spawned with this process's path, import it again to unpickle the model."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise FileNotFoundError(f"no such file {file}")
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))
    module = importlib.import_module(file.stem)
    if Path(module.__file__ or "").resolve() != file:
        raise ImportError(f"the name {file.stem!r} is already taken by {module.__file__}: rename {file.name}")
    return module


def parse_arch(arch: str, registry: Registry[Builder] = MODELS) -> Builder:
    """The builder for `arch`: a registered name, ``timm:NAME`` (`compress.timm_models`), ``pkg.module:function``
    or ``path/to/file.py:function``, called as ``function(num_classes=...)``."""
    if arch.startswith(TIMM_PREFIX):
        return timm_models.timm_builder(arch)
    if ":" in arch:
        return _import_builder(arch)
    return registry.get(arch)


def build_model(spec: ModelSpec, num_classes: int) -> nn.Module:
    return parse_arch(spec.arch)(spec, num_classes)


def reinitialize(model: nn.Module) -> nn.Module:
    """Fresh weights for the scratch baselines: the model's own `reinitialize()` when it has one (a detector
    initialises as torchvision's SSDLite does), else torchvision's MobileNet initialisation."""
    if callable(getattr(model, "reinitialize", None)):
        model.reinitialize()
        return model
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)
    return model


_SHAPE_ATTRS = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.BatchNorm2d: ("num_features",),
    nn.Linear: ("in_features", "out_features"),
}


def _layer_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    return {
        name: {attr: int(getattr(module, attr)) for attr in attrs}
        for name, module in model.named_modules()
        for kind, attrs in _SHAPE_ATTRS.items()
        if type(module) is kind
    }


def architecture_id(model: nn.Module) -> str:
    """A short hash of every layer's shape: two models share it iff they have the same architecture."""
    return hashlib.sha256(json.dumps(_layer_shapes(model), sort_keys=True).encode()).hexdigest()[:12]


def _reshape_layers(model: nn.Module, shapes: dict[str, dict[str, int]], state: dict[str, torch.Tensor]) -> None:
    """Resize layers to the saved (possibly pruned) shapes so that ``load_state_dict`` fits."""
    modules = dict(model.named_modules())
    for name, attrs in shapes.items():
        if name not in modules:
            raise EdgecompError(f"checkpoint layer {name!r} is not in this architecture")
        module = modules[name]
        for attr, value in attrs.items():
            setattr(module, attr, value)
        for tensor_name, tensor in list(module.named_parameters(recurse=False)) + list(
            module.named_buffers(recurse=False)
        ):
            key = f"{name}.{tensor_name}" if name else tensor_name
            if key in state and state[key].shape != tensor.shape:
                resized = torch.empty_like(state[key])
                if isinstance(tensor, nn.Parameter):
                    setattr(module, tensor_name, nn.Parameter(resized))
                else:
                    module.register_buffer(tensor_name, resized)


def save_checkpoint(model: nn.Module, path: Path, spec: ModelSpec, num_classes: int) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": spec.model_dump(mode="json"),
        "num_classes": num_classes,
        "layers": _layer_shapes(model),
        "state_dict": model.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, spec: ModelSpec | None = None) -> nn.Module:
    """Rebuild a model (dense or pruned) from an edgecomp checkpoint; `spec` defaults to the saved one."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EdgecompError(f"{path}: no such checkpoint") from None
    except Exception as error:
        if _unsafe_pickle(error):
            raise EdgecompError(
                f"{path}: refused: it holds pickled Python objects, which could run code when loaded; "
                "edgecomp checkpoints hold only tensors, so this file is not one of them"
            ) from None
        raise EdgecompError(f"{path}: not a loadable checkpoint ({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise EdgecompError(f"{path}: not an edgecomp checkpoint (format {CHECKPOINT_FORMAT})")
    spec = spec or ModelSpec.model_validate(payload["model"])
    model = build_model(spec, payload["num_classes"])
    saved = payload["model"].get("arch")
    try:
        _reshape_layers(model, payload["layers"], payload["state_dict"])
    except EdgecompError as error:
        raise EdgecompError(f"{path}: a {saved} checkpoint, not {spec.arch}: {error}") from None
    load_weights(model, payload["state_dict"], str(path))
    return model.eval()  # ready to predict; training loops switch to train mode themselves


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise EdgecompError(f"{source}: weights do not fit this architecture: {detail}") from None


def _unsafe_pickle(error: Exception) -> bool:
    """torch.load(weights_only=True) met a pickled object that is not a tensor or a plain container."""
    return "Weights only load failed" in str(error) and "Unsupported global" in str(error)


@contextmanager
def trusted_pickles(trust: bool) -> Iterator[None]:
    """Within the block, `load_pretrained` unpickles whole modules when `trust` (`edgecomp run --trust`)."""
    token = TRUST_PICKLES.set(trust)
    try:
        yield
    finally:
        TRUST_PICKLES.reset(token)


def load_pretrained(model: nn.Module, source: str, arch: str | None = None) -> list[str]:
    """Load `source` into `model`: a state dict or edgecomp checkpoint path, or ``torchvision`` for
    torchvision's pretrained weights of `arch` (ImageNet for classifiers, COCO for
    ssdlite320_mobilenet_v3_large; downloaded, or read from torch's hub cache). With another class count than
    the weights', the output layers (classifier, or a detector's class predictors) keep their fresh init and
    everything else loads; returned are the names of the tensors so left untrained (none when the classes fit).
    Pickled Python objects (a whole saved module) load only inside ``trusted_pickles(True)``
    (``edgecomp run --trust``)."""
    library = {TORCHVISION_WEIGHTS: _torchvision_state, TIMM_WEIGHTS: timm_models.timm_state}.get(source)
    state = library(arch or "") if library else _read_weights(source)
    own = model.state_dict()
    outputs = output_layers(model)
    head = [f"{name}.{p}" for name, m in model.named_modules() if m in outputs for p in ("weight", "bias")]
    fresh = [k for k in head if k in own and k in state and state[k].shape != own[k].shape]
    state = {k: v for k, v in state.items() if k not in fresh}
    load_weights(model, {**{k: own[k] for k in head if k in own}, **state}, source)
    return fresh


def _read_weights(source: str) -> dict[str, torch.Tensor]:
    if Path(source).suffix == ".safetensors":  # Hugging Face's format (timm's weights): tensors only, no pickle
        return _read_safetensors(source)
    trust = TRUST_PICKLES.get()
    try:
        payload = torch.load(Path(source).expanduser(), map_location="cpu", weights_only=not trust)
    except Exception as error:
        if _unsafe_pickle(error):
            raise EdgecompError(
                f"{source}: refused: it holds pickled Python objects, which could run code when loaded; "
                "if you made the file yourself and trust it, pass --trust"
            ) from None
        raise _unloadable(source, error) from None
    if isinstance(payload, nn.Module):  # only reachable when trusted
        return payload.state_dict()
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise EdgecompError(f"{source}: expected a state dict")
    return state


def _read_safetensors(source: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(Path(source).expanduser(), device="cpu")
    except (OSError, SafetensorError) as error:
        raise _unloadable(source, error) from None


def _unloadable(source: str, error: Exception) -> EdgecompError:
    return EdgecompError(f"{source}: cannot load weights ({type(error).__name__}: {str(error)[:200]})")


def _torchvision_state(arch: str) -> dict[str, torch.Tensor]:
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError):
        raise EdgecompError(f"torchvision has no pretrained weights for {arch!r}") from None
    try:
        return weights.get_state_dict(progress=False)
    except Exception as error:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise EdgecompError(
            f"could not download torchvision's {weights} ({type(error).__name__}); offline, download "
            f"{weights.url} elsewhere and put it at {cached} (torch's hub cache, under $TORCH_HOME), or set "
            "model.weights to the local .pth file (--set model.weights=path/to/file.pth)"
        ) from None


def output_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose outputs are the task's outputs, never pruned: the model's own ``output_layers()``
    (a detector's class and box predictors), else the last Linear or Conv2d in module order (the classifier)."""
    if callable(getattr(model, "output_layers", None)):
        return list(model.output_layers())
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise EdgecompError("the model has no Linear or Conv2d layer")
    return [layers[-1]]
