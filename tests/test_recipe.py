"""The recipe schema: every mistake is caught at load time with the key's path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compress.recipe import load_recipe, parse_recipe
from compress.shipped import shipped_recipes
from targets.base import EdgecompError

ROOT = Path(__file__).resolve().parents[1]


def minimal() -> dict:
    return {"name": "t", "model": {"arch": "mobilenet_v2"}, "data": {"dataset": "digits"}}


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("name", shipped_recipes())
def test_shipped_recipes_validate_by_name(name: str) -> None:
    assert load_recipe(name).name


def test_recipes_at_the_top_of_a_checkout_are_the_shipped_ones() -> None:
    """README and Makefile commands (`edgecomp run recipes/quickstart.yaml`) read the package's own files."""
    assert (ROOT / "recipes").resolve() == (ROOT / "compress" / "recipes").resolve()


def test_a_file_is_read_before_a_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, minimal()).rename(tmp_path / "quickstart")
    monkeypatch.chdir(tmp_path)
    assert load_recipe("quickstart").name == "t"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["model"].update(archh="x"), "model.archh: unknown key"),
        (lambda r: r.update(train={"epochs": -1}), "train.epochs"),
        (lambda r: r["model"].update(arch="mobilenet_v9"), "model.arch: unknown model 'mobilenet_v9'"),
        (lambda r: r["data"].update(dataset="digitz"), "did you mean 'digits'"),
        (lambda r: r.update(stages=[{"prune": {"ratio": 1.5}}]), "stages.0.prune.ratio"),
        (lambda r: r.update(stages=[{"prune": {}, "finetune": {}}]), "exactly one of"),
        (lambda r: r.update(stages=[{"prune": {"importance": "l3"}}]), "stages.0.prune.importance"),
        (
            lambda r: r.update(exports=[{"target": "tflite", "precision": ["int4"]}]),
            "does not support precision 'int4'",
        ),
        (lambda r: r.update(exports=[{"target": "tflitee"}]), "did you mean 'tflite'"),
        (lambda r: r.update(stages=[{"finetune": {}}, {"prune": {}}]), "finetune must come after prune"),
        (lambda r: r["model"].update(weights="/no/such/file.pt"), "model.weights: no such file"),
        (lambda r: r.pop("data"), "data: Field required"),
        (lambda r: r.update(name="../escape"), "name"),
    ],
)
def test_bad_recipes_name_the_key(change, message: str) -> None:
    recipe = minimal()
    change(recipe)
    with pytest.raises(
        EdgecompError, match="(?s)" + message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        parse_recipe(recipe)


def test_yaml_errors_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(EdgecompError, match="not valid YAML at line 3"):
        load_recipe(write(tmp_path, "name: x\nmodel: {arch: [x\n  data: 1\n"))
    with pytest.raises(EdgecompError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(EdgecompError, match="did you mean 'quickstart'"):
        load_recipe("quickstrat")
    with pytest.raises(EdgecompError, match="expected a mapping"):
        load_recipe(write(tmp_path, "- just\n- a list\n"))


def test_python_tags_are_refused(tmp_path: Path) -> None:
    with pytest.raises(EdgecompError, match="not valid YAML"):
        load_recipe(write(tmp_path, "name: !!python/object/apply:os.system ['echo hacked']\n"))


def test_overrides(tmp_path: Path) -> None:
    data = {**minimal(), "stages": [{"prune": {"ratio": 0.5}}]}
    path = write(tmp_path, data)
    recipe = load_recipe(path, ["train.epochs=3", "stages.0.prune.ratio=0.25", "data.root=/x", "bench.threads=[1, 2]"])
    assert recipe.train.epochs == 3
    assert recipe.prune.ratio == 0.25
    assert recipe.data.root == "/x"
    assert recipe.bench.threads == [1, 2]
    with pytest.raises(EdgecompError, match="no item '3'"):
        load_recipe(path, ["stages.3.prune.ratio=0.1"])
    with pytest.raises(EdgecompError, match="expected KEY=VALUE"):
        load_recipe(path, ["train.epochs"])
    with pytest.raises(EdgecompError, match=r"train\.epochz: unknown key"):
        load_recipe(path, ["train.epochz=3"])


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"seeds": []}, "recipe: train: seeds is empty: give one or more, e.g. seeds: [0, 1, 2]"),
        ({"seeds": [0, 1, 0, 2, 1]}, "recipe: train: seeds: 0, 1 listed more than once"),
        ({"seed": 0, "seeds": [0, 1]}, "recipe: train: seed and seeds are both given"),
        ({"seeds": [0, -1]}, "recipe: train.seeds.1: Input should be greater than or equal to 0"),
        ({"seeds": 3}, "recipe: train.seeds: Input should be a valid list"),
    ],
)
def test_bad_seeds_are_one_clear_line(train: dict, message: str) -> None:
    with pytest.raises(EdgecompError) as caught:
        parse_recipe({**minimal(), "train": train})
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_seed_is_the_one_seed_shorthand_of_seeds(tmp_path: Path) -> None:
    """`seed: N` (or none: 0) is one run; `seeds` several, the first also `seed`. A resolved recipe holds one of
    the two keys, so it loads again; a one-seed train spec dumps as it did before `seeds` existed (the trained
    stages' cache keys hold that dump), and so does each seed's own spec."""
    from compress.recipe import dump_recipe

    one = parse_recipe({**minimal(), "train": {"seed": 5}}).train
    assert one.seed_list == [5] and not one.several_seeds and "seeds" not in one.model_dump()
    several = parse_recipe({**minimal(), "train": {"seeds": [3, 1]}})
    assert several.train.seed == 3 and several.train.seed_list == [3, 1] and several.train.several_seeds
    assert [several.train.seed_tag(seed) for seed in (3, 1)] == ["", "seed1"]
    assert (
        several.train.with_seed(1).model_dump() == parse_recipe({**minimal(), "train": {"seed": 1}}).train.model_dump()
    )
    dumped = yaml.safe_load(dump_recipe(several))["train"]
    assert dumped["seeds"] == [3, 1] and "seed" not in dumped
    assert parse_recipe(yaml.safe_load(dump_recipe(several))) == several
    assert not parse_recipe({**minimal(), "train": {"seeds": [7]}}).train.several_seeds  # one seed, as a list


def test_a_recipes_seed_is_dropped_on_the_command_line_for_seeds(tmp_path: Path) -> None:
    path = write(tmp_path, {**minimal(), "train": {"seed": 0}})
    with pytest.raises(EdgecompError, match=r"--set train\.seed=null drops the recipe's seed"):
        load_recipe(path, ["train.seeds=[0, 1]"])
    assert load_recipe(path, ["train.seed=null", "train.seeds=[0, 1]"]).train.seed_list == [0, 1]


# ---- prune alternatives: a latency target next to a MACs one, in one recipe (issue #19) ----------------------

LATENCY_AND_MACS = [
    {"latency": 0.5, "measured_on": ["tflite", "openvino"], "round_to": 8},
    {"macs": 0.5, "round_to": 8},
]


def test_prune_alternatives_each_expand_and_name_their_candidates_by_target() -> None:
    recipe = parse_recipe({**minimal(), "stages": [{"prune": LATENCY_AND_MACS}, {"finetune": {"epochs": [1, 2]}}]})
    branches = recipe.branches()
    assert list(dict.fromkeys(b.prune_tag for b in branches)) == [
        "latency0.5-on-tflite", "latency0.5-on-openvino", "macs0.5",
    ]  # fmt: skip
    assert [b.tag for b in branches][-2:] == ["macs0.5-epochs1", "macs0.5-epochs2"]
    latency = branches[0].prune
    assert (latency.latency, latency.measured_on, latency.round_to) == (0.5, "tflite", 8)
    swept = parse_recipe({**minimal(), "stages": [{"prune": [{"ratio": 0.3, "importance": ["l2", "taylor"]}, {}]}]})
    assert [b.prune_tag for b in swept.branches()] == ["l2-ratio0.3", "taylor-ratio0.3", "ratio0.5"]


def test_one_prune_mapping_keeps_its_tags_and_its_stage_keys() -> None:
    """A recipe without alternatives names (and keys) its stages as before: a run resumes from them."""
    one = parse_recipe({**minimal(), "stages": [{"prune": LATENCY_AND_MACS[0]}]})
    assert [b.prune_tag for b in one.branches()] == ["measured_on-tflite", "measured_on-openvino"]
    assert parse_recipe({**minimal(), "stages": [{"prune": {"macs": 0.5}}]}).branches()[0].prune_tag == ""
    alternatives = parse_recipe({**minimal(), "stages": [{"prune": LATENCY_AND_MACS}]})
    assert one.branches()[0].prune == alternatives.branches()[0].prune  # the same scalar spec: the same key
    assert parse_recipe(yaml.safe_load(yaml.safe_dump(alternatives.model_dump(mode="json")))) == alternatives


@pytest.mark.parametrize(
    ("prune", "message"),
    [
        (
            [{"macs": 0.5}, {"macs": 0.5, "importance": "taylor"}],
            "recipe: stages.0: prune: more than one candidate would be named 'macs0.5'",
        ),
        ([{"macs": 0.5}, {"macs": [0.3, 1.5]}], "recipe: stages.0.prune.1.macs"),
        ([{"macs": 0.5}, {"macs": 0.3, "bogus": 1}], "recipe: stages.0.prune.1.bogus: unknown key"),
        ([{"importance": "l9"}], "recipe: stages.0.prune.0.importance: unknown importance criterion 'l9'"),
        ([{"latency": 0.5}], "recipe: stages.0.prune.0: a latency target names the target that measures it"),
        ([{"macs": 0.5}, 3], "recipe: stages.0.prune.1: Input should be a valid dictionary"),
        ([], "recipe: stages.0.prune: List should have at least 1 item"),
    ],
)
def test_bad_prune_alternatives_are_one_clear_line(prune: list, message: str) -> None:
    with pytest.raises(EdgecompError) as caught:
        parse_recipe({**minimal(), "stages": [{"prune": prune}]})
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_overrides_reach_into_prune_alternatives(tmp_path: Path) -> None:
    path = write(tmp_path, {**minimal(), "stages": [{"prune": LATENCY_AND_MACS}]})
    assert load_recipe(path, ["stages.0.prune.1.macs=0.4"]).branches()[-1].prune_tag == "macs0.4"
    hint = r"stages\.0\.prune has no item 'macs' \(a list: .* e\.g\. stages\.0\.prune\.0\.macs\)"
    with pytest.raises(EdgecompError, match=hint):
        load_recipe(path, ["stages.0.prune.macs=0.4"])


def test_the_latency_quickstart_compares_latency_targets_with_a_macs_one() -> None:
    tags = [b.prune_tag for b in load_recipe("latency-quickstart").branches()]
    assert tags == [
        "latency0.5-on-tflite",
        "latency0.5-on-openvino",
        "latency0.5-on-tflite-per-layer",
        "latency0.5-on-openvino-per-layer",
        "macs0.5",
    ]
