"""Issue 3's compression methods: pruning targets and schedules, sweeps, feature KD, teachers."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from compress.distill import Distillation
from compress.measure import count
from compress.models import architecture_id, build_model, save_checkpoint
from compress.prune import IMPORTANCE, prune
from compress.recipe import parse_recipe
from compress.schema import FeatureKD, FinetuneSpec, ModelSpec, PruneSpec, expand
from targets.base import EdgecompError

SPEC = ModelSpec(arch="mobilenet_v2", width_mult=0.35, small_input=True)
X = torch.randn(1, 3, 16, 16)


def batches():
    generator = torch.Generator().manual_seed(0)
    return iter([(torch.randn(8, 3, 16, 16, generator=generator), torch.arange(8) % 10)] * 4)


def fresh(arch: str = "mobilenet_v2"):
    torch.manual_seed(0)
    return build_model(SPEC.model_copy(update={"arch": arch}), num_classes=10).eval()


@pytest.mark.parametrize("importance", IMPORTANCE.names())
@pytest.mark.parametrize(("kind", "fraction"), [("macs", 0.5), ("params", 0.4)])
def test_macs_and_params_targets_land_within_5_percent(importance: str, kind: str, fraction: float) -> None:
    model = fresh()
    dense = dict(zip(("macs", "params"), count(model, X), strict=True))
    prune(model, X, PruneSpec(importance=importance, **{kind: fraction}), batches, F.cross_entropy)
    got = dict(zip(("macs", "params"), count(model, X), strict=True))
    assert got[kind] / dense[kind] == pytest.approx(fraction, abs=0.05)
    assert got[kind] <= fraction * dense[kind]


def test_global_macs_target_on_mobilenet_v3_with_se_blocks() -> None:
    model = fresh("mobilenet_v3_small")
    dense_macs, _ = count(model, X)
    prune(model, X, PruneSpec(importance="l2", macs=0.5, global_pruning=True))
    macs, _ = count(model, X)
    assert macs / dense_macs == pytest.approx(0.5, abs=0.05)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_unreachable_target_says_so() -> None:
    # Kept whole: the 1280-channel last conv and the classifier hold more than 1% of the parameters.
    with pytest.raises(EdgecompError, match="cannot go below"):
        prune(fresh(), X, PruneSpec(params=0.01, ignore=["features.18.0"]))


def channels(model) -> dict[str, int]:
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def test_layer_ratios_override_by_glob() -> None:
    dense = channels(fresh())
    plain, override = fresh(), fresh()
    prune(plain, X, PruneSpec(ratio=0.5))
    prune(override, X, PruneSpec(ratio=0.5, layer_ratios={"features.1*": 0.0001}))
    plain, override = channels(plain), channels(override)
    inside = [name for name in dense if name.startswith("features.1.")]
    assert any(override[name] > plain[name] for name in inside)  # the glob's layers keep more channels
    assert override["features.4.conv.0.0"] == plain["features.4.conv.0.0"] < dense["features.4.conv.0.0"]
    with pytest.raises(EdgecompError, match="matches no Conv2d"):
        prune(fresh(), X, PruneSpec(ratio=0.5, layer_ratios={"nothing.*": 0.2}))


def test_iterative_schedule_calls_between_steps_and_reaches_the_same_target() -> None:
    calls: list[int] = []

    def between(model) -> None:
        calls.append(count(model, X)[0])

    model = fresh()
    dense_macs, _ = count(model, X)
    prune(model, X, PruneSpec(macs=0.4, iterative_steps=3), between_steps=between)
    assert len(calls) == 2 and calls[0] > calls[1] > count(model, X)[0]
    assert calls[0] / dense_macs == pytest.approx(0.8, abs=0.05)  # milestones at 0.8, 0.6, then 0.4
    assert count(model, X)[0] / dense_macs == pytest.approx(0.4, abs=0.05)


def test_same_ratio_gives_same_architecture_whatever_the_criterion() -> None:
    archs = set()
    for importance in ("l1", "l2", "random"):
        model = fresh()
        prune(model, X, PruneSpec(importance=importance, ratio=0.5))
        archs.add(architecture_id(model))
    assert len(archs) == 1
    assert architecture_id(fresh()) not in archs


def test_sweep_expansion_and_branches() -> None:
    assert [tag for tag, _ in expand(PruneSpec(importance=["l2", "random"], macs=[0.5, 0.3]))] == [
        "l2-macs0.5", "l2-macs0.3", "random-macs0.5", "random-macs0.3",
    ]  # fmt: skip
    assert expand(PruneSpec()) == [("", PruneSpec())]
    recipe = parse_recipe(
        {
            "name": "sweep",
            "model": {"arch": "mobilenet_v2"},
            "data": {"dataset": "digits"},
            "stages": [
                {"prune": {"macs": [0.6, 0.4], "importance": ["l2", "taylor"]}},
                {"finetune": {"epochs": [1, 2]}},
            ],
        }
    )
    branches = recipe.branches()
    assert len(branches) == 8
    assert len({b.prune_tag for b in branches}) == 4  # scratch baselines once per pruned architecture
    assert {b.tag for b in branches} >= {"l2-macs0.6-epochs1", "taylor-macs0.4-epochs2"}
    assert all(not isinstance(b.prune.macs, list) and not isinstance(b.finetune.epochs, list) for b in branches)


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"prune": {"ratio": 0.5, "macs": 0.5}}, "one pruning target, not ratio and macs"),
        ({"prune": {"macs": 0.5, "layer_ratios": {"a": 0.1}}}, "layer_ratios go with a ratio target"),
        ({"prune": {"importance": ["l2", "l9"]}}, "unknown importance criterion 'l9'"),
        ({"prune": {"macs": [0.5, 1.5]}}, "stages.0.prune.macs"),
        ({"finetune": {"distill": {"teacher": "/no/teacher.pt"}}}, "no such checkpoint"),
    ],
)
def test_bad_method_specs(stage: dict, message: str) -> None:
    with pytest.raises(EdgecompError, match=re.escape(message)):
        parse_recipe({"name": "x", "model": {"arch": "mobilenet_v2"}, "data": {"dataset": "digits"}, "stages": [stage]})


def test_feature_kd_adapters_bridge_pruned_channels_and_train() -> None:
    teacher = fresh()
    student = fresh()
    prune(student, X, PruneSpec(ratio=0.5))
    features = [FeatureKD(student="features.3"), FeatureKD(student="features.6", teacher="features.6", weight=0.5)]
    criterion = Distillation(teacher, F.cross_entropy, 0.5, 4.0, features, student, X)
    assert all(isinstance(a, torch.nn.Conv2d) for a in criterion.adapters)  # pruned: fewer channels than teacher
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    loss = criterion(student.train(), x, y)
    loss.backward()
    assert all(a.weight.grad is not None and a.weight.grad.abs().sum() > 0 for a in criterion.adapters)
    plain = Distillation(teacher, F.cross_entropy, 0.5, 4.0)(student, x, y)
    assert loss.item() > plain.item()  # the feature terms add a positive MSE


def test_feature_kd_names_are_checked() -> None:
    with pytest.raises(EdgecompError, match=r"no module named 'features\.99'"):
        Distillation(fresh(), F.cross_entropy, 0.5, 4.0, [FeatureKD(student="features.99")], fresh(), X)


def test_teacher_from_checkpoint(tmp_path) -> None:
    from compress.candidates import Training
    from compress.schema import DistillSpec

    teacher = fresh()
    save_checkpoint(teacher, tmp_path / "teacher.pt", SPEC, 10)
    loaded, key = Training.teacher(DistillSpec(teacher=str(tmp_path / "teacher.pt")), dense=None)
    assert torch.equal(loaded(X), teacher(X)) and len(key) == 16
    assert FinetuneSpec(distill=DistillSpec(teacher=str(tmp_path / "teacher.pt"))).distill.teacher.endswith(".pt")
