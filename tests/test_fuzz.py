"""Malformed recipes, generated: every one is refused by the real CLI entry in one line, with the key and the
problem, no traceback, exit code 2, and nothing written where runs go.

CI runs a fixed set (derandomized); ``make fuzz`` runs 1,000+ fresh examples
(``EDGECOMP_FUZZ_EXAMPLES=1000``). The CLI runs in-process here (a subprocess costs seconds of torch
import per example); `test_real_process_refuses_bad_recipes` checks a few cases through a real process.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tempfile
from contextlib import nullcontext, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import cli
from compress import schema

ROOT = Path(__file__).resolve().parents[1]
FUZZ_EXAMPLES = int(os.environ.get("EDGECOMP_FUZZ_EXAMPLES", "150"))

# Valid: the quickstart's shape with every section present, so every level can be broken.
BASE: dict[str, Any] = {
    "name": "fuzz",
    "model": {"arch": "mobilenet_v2", "width_mult": 0.5, "small_input": True, "num_classes": 10},
    "data": {"dataset": "digits", "image_size": 8, "batch_size": 64, "train_subset": 100},
    "train": {
        "epochs": 1,
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 4e-5,
        "schedule": "cosine",
        "label_smoothing": 0.1,
        "seed": 0,
    },
    "stages": [
        {"prune": {"importance": "l2", "ratio": 0.5, "iterative_steps": 1, "round_to": 8, "ignore": []}},
        {"finetune": {"epochs": 1, "lr": 0.01, "distill": {"teacher": "dense", "alpha": 0.7, "temperature": 4.0}}},
    ],
    "baselines": {"scratch": ["E", "B"], "max_epochs": 2},
    "exports": [{"target": "openvino", "precision": ["fp32"]}],
    "bench": {"threads": [1], "warmup": 1, "runs": 2},
}
MAPPINGS = [
    "",
    "model",
    "data",
    "train",
    "stages.0",
    "stages.0.prune",
    "stages.1.finetune",
    "stages.1.finetune.distill",
    "baselines",
    "exports.0",
    "bench",
]
NUMBERS = [
    "model.width_mult",
    "model.num_classes",
    "data.image_size",
    "data.batch_size",
    "data.train_subset",
    "train.epochs",
    "train.lr",
    "train.momentum",
    "train.weight_decay",
    "train.label_smoothing",
    "train.seed",
    "stages.0.prune.ratio",
    "stages.0.prune.iterative_steps",
    "stages.0.prune.round_to",
    "stages.1.finetune.epochs",
    "stages.1.finetune.lr",
    "stages.1.finetune.distill.alpha",
    "stages.1.finetune.distill.temperature",
    "baselines.max_epochs",
    "bench.warmup",
    "bench.runs",
    "bench.rounds",
]
STRINGS = ["name", "model.arch", "data.dataset", "data.root", "model.weights", "exports.0.target"]
BOOLS = ["model.small_input", "stages.0.prune.global_pruning"]
LISTS = ["stages", "exports", "stages.0.prune.ignore", "baselines.scratch", "exports.0.precision", "bench.threads"]
REQUIRED = ["name", "model", "data", "model.arch", "data.dataset", "exports.0.target"]
KNOWN_KEYS = {name for spec in schema.Spec.__subclasses__() for name in spec.model_fields}

ints = st.integers
floats = st.floats


def below(limit: float, inclusive: bool) -> st.SearchStrategy:
    """Numbers under `limit` (or equal when `inclusive`), huge ones and -inf included."""
    whole = ints(max_value=int(limit) if inclusive else int(limit) - 1) if float(limit).is_integer() else st.nothing()
    return whole | floats(max_value=limit, exclude_max=not inclusive)


def above(limit: float, inclusive: bool) -> st.SearchStrategy:
    return floats(min_value=limit, exclude_min=not inclusive)


OUT_OF_RANGE: dict[str, st.SearchStrategy] = {
    "model.width_mult": below(0, True) | above(4, False),
    "model.num_classes": ints(max_value=0),
    "data.image_size": ints(max_value=0),
    "data.batch_size": ints(max_value=0),
    "data.train_subset": ints(max_value=0),
    "train.epochs": ints(max_value=-1),
    "train.lr": below(0, True) | st.just(float("nan")),
    "train.momentum": below(0, False) | above(1, True),
    "train.weight_decay": below(0, False),
    "train.label_smoothing": below(0, False) | above(1, True),
    "stages.0.prune.ratio": below(0, True) | above(1, True),
    "stages.0.prune.iterative_steps": ints(max_value=0),
    "stages.0.prune.round_to": ints(max_value=0),
    "stages.1.finetune.epochs": ints(max_value=-1),
    "stages.1.finetune.lr": below(0, True),
    "stages.1.finetune.distill.alpha": below(0, False) | above(1, False),
    "stages.1.finetune.distill.temperature": below(0, True),
    "baselines.max_epochs": ints(max_value=0),
    "bench.warmup": ints(max_value=-1),
    "bench.runs": ints(max_value=0),
    "bench.rounds": ints(max_value=0),
    "bench.threads.0": ints(max_value=0),
}
# Text a reader would call one line: no control characters, surrogates or line/paragraph separators.
line_text = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=24)
YAML_BREAKERS = [
    "{",
    "[",
    "]",
    "}",
    ": : :",
    "\t- tabbed",
    "'unterminated",
    '"unterminated',
    "*no_such_anchor",
    "&a &b twice",
    "key: value: more",
    "- item in a mapping",
    "%YAML 9.9",
    "? ? ?",
    "@reserved",
    "`reserved",
    "\x07bell",
]
PYTHON_TAGS = [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "!!python/object:builtins.object {{}}",
    "!!python/name:os.system",
    "!!python/module:os",
]
BAD_OVERRIDES = [
    ("train.epochs", "expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
    ("stages.9.prune.ratio=0.2", "stages has no item '9'"),
    ("model.arch.x=1", "model.arch is not a mapping or list"),
    ("train.epochs=[1", "train.epochs"),
    ("train.epochz=3", "train.epochz: unknown key"),
    ("bench.threads=[]", "bench.threads"),
    ("stages.0.prune.ratio=2", "stages.0.prune.ratio"),
    ("model=3", "model"),
    ("exports.0.precision=[int3]", "exports.0"),
]


@dataclass
class Case:
    """One malformed recipe: what the file holds, extra CLI arguments, and what the error must say."""

    kind: str
    text: str | bytes
    expect: list[str]
    args: list[str] = field(default_factory=list)
    marker: str | None = None  # a file that a python tag would create if it were obeyed


def base() -> dict[str, Any]:
    return yaml.safe_load(yaml.safe_dump(BASE))


def locate(data: Any, path: str) -> tuple[Any, Any]:
    """The container of `path` ("a.0.b") and the last key or index in it."""
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = data
    for part in parts[:-1]:
        node = node[part]
    return node, parts[-1]


def node_at(data: Any, path: str) -> Any:
    if not path:
        return data
    container, key = locate(data, path)
    return container[key]


def recipe_case(kind: str, data: Any, *expect: str) -> Case:
    return Case(kind, yaml.safe_dump(data, allow_unicode=True, sort_keys=False), list(expect))


def shown(key: str) -> str:
    """How an error names a key: as written, or quoted when it holds odd characters (so ':' stays readable)."""
    return key if re.fullmatch(r"[\w-]+", key) else repr(key)


@st.composite
def unknown_keys(draw) -> Case:
    path = draw(st.sampled_from(MAPPINGS))
    key = draw(line_text.filter(lambda k: k.strip() == k and k not in KNOWN_KEYS and k))
    data = base()
    node_at(data, path)[key] = draw(st.none() | ints() | line_text)
    return recipe_case("unknown key", data, f"{path + '.' if path else ''}{shown(key)}: unknown key")


def wrong_value(path: str) -> st.SearchStrategy:
    mappings = st.dictionaries(st.text(max_size=4), ints(), max_size=2)
    if path in NUMBERS:
        return mappings | line_text.filter(lambda s: not _number_like(s))
    if path in BOOLS:
        return mappings | st.sampled_from(["perhaps", 2, 0.5, [True]])
    if path in LISTS:
        return mappings | line_text.filter(bool)
    if path in STRINGS or path in ("train.optimizer", "train.schedule"):
        return mappings
    return ints() | line_text | st.lists(ints(), max_size=3)  # a mapping


def _number_like(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text.strip().lower() in ("", "true", "false")
    return True


@st.composite
def wrong_types(draw) -> Case:
    path = draw(
        st.sampled_from([*NUMBERS, *STRINGS, *BOOLS, *LISTS, "train.optimizer", "train.schedule", *MAPPINGS[1:]])
    )
    data = base()
    container, key = locate(data, path)
    container[key] = draw(wrong_value(path))
    return recipe_case("wrong type", data, path)


@st.composite
def missing_keys(draw) -> Case:
    path = draw(st.sampled_from(REQUIRED))
    data = base()
    container, key = locate(data, path)
    del container[key]
    return recipe_case("missing key", data, f"{path}: Field required")


@st.composite
def out_of_range(draw) -> Case:
    path = draw(st.sampled_from(sorted(OUT_OF_RANGE)))
    data = base()
    container, key = locate(data, path)
    container[key] = draw(OUT_OF_RANGE[path])
    return recipe_case("out of range", data, path)


@st.composite
def empty_lists(draw) -> Case:
    data = base()
    path = draw(st.sampled_from(["exports.0.precision", "bench.threads", "stages.0"]))
    container, key = locate(data, path)
    container[key] = {} if path == "stages.0" else []
    return recipe_case("empty", data, path)


UNICODE_NAMES = {
    "model.arch": "",
    "data.dataset": "",
    "stages.0.prune.importance": "",
    "train.optimizer": "",
    "train.schedule": "",
    "exports.0.target": "exports.0",
    "exports.0.precision": "exports.0",
    "baselines.scratch": "baselines.scratch.0",
    "name": "",
}


@st.composite
def unicode_names(draw) -> Case:
    path = draw(st.sampled_from(sorted(UNICODE_NAMES)))
    valid = {"mobilenet_v2", "digits", "l2", "sgd", "cosine", "openvino", "fp32", "E", "B", "dense"}
    # `pkg.module:function` names import a module: those are fuzzed by the explicit examples below.
    value = draw(line_text.filter(lambda s: s not in valid and ":" not in s))
    if path == "name":
        value = draw(
            st.sampled_from([value + "é", "../" + value, "x" * 101 + value, "-" + value, value + " ", value + "/"])
        )
    data = base()
    container, key = locate(data, path)
    container[key] = [value] if path in ("exports.0.precision", "baselines.scratch") else value
    return recipe_case("unicode name", data, UNICODE_NAMES[path] or path)


@st.composite
def yaml_syntax(draw) -> Case:
    lines = yaml.safe_dump(BASE, sort_keys=False).splitlines()
    at = draw(st.integers(0, len(lines)))
    indent = draw(st.sampled_from(["", "  ", "    "]))
    lines.insert(at, indent + draw(st.sampled_from(YAML_BREAKERS)))
    text = "\n".join(lines) + "\n"
    try:
        yaml.safe_load(text)
    except yaml.YAMLError:
        return Case("YAML syntax", text, ["not valid YAML"])
    assume(False)
    raise AssertionError  # unreachable: assume(False) stops the example


@st.composite
def python_tags(draw) -> Case:
    marker = f"pwned-{draw(st.integers(0, 10**6))}"
    tag = draw(st.sampled_from(PYTHON_TAGS)).format(marker=marker)
    lines = yaml.safe_dump(BASE, sort_keys=False).splitlines()
    keys = [i for i, line in enumerate(lines) if re.match(r"^\s*\w+: \S", line)]
    i = draw(st.sampled_from(keys))
    lines[i] = lines[i].split(": ")[0] + ": " + tag
    return Case("python tag", "\n".join(lines) + "\n", ["not valid YAML", "python/"], marker=marker)


def not_mappings() -> st.SearchStrategy:
    texts = st.sampled_from(["", "- a\n- b\n", "42\n", "null\n", "just words\n", "~\n", "'quoted'\n", "[1, 2]\n"])
    return texts.map(lambda text: Case("not a mapping", text, ["expected a mapping"]))


def not_utf8() -> st.SearchStrategy:
    return (
        st.binary(min_size=1, max_size=40)
        .map(lambda b: b"name: \xff\xfe" + b)
        .map(lambda data: Case("not UTF-8", data, ["not a UTF-8 text file"]))
    )


@st.composite
def bad_overrides(draw) -> Case:
    text = yaml.safe_dump(BASE, sort_keys=False)
    if draw(st.booleans()):
        assignment, expect = draw(st.sampled_from(BAD_OVERRIDES))
        return Case("bad --set", text, [expect], args=["--set", assignment])
    section = draw(st.sampled_from(["train", "model", "data", "bench", "baselines"]))
    key = draw(line_text.filter(lambda k: k and k.strip() == k and not set(k) & set(".=") and k not in KNOWN_KEYS))
    return Case("bad --set", text, [f"{section}.{shown(key)}: unknown key"], args=["--set", f"{section}.{key}=1"])


def bad_recipes() -> st.SearchStrategy[Case]:
    return st.one_of(
        unknown_keys(),
        wrong_types(),
        missing_keys(),
        out_of_range(),
        empty_lists(),
        unicode_names(),
        yaml_syntax(),
        python_tags(),
        not_mappings(),
        not_utf8(),
        bad_overrides(),
    )


class AcceptedRecipe(Exception):
    """Raised instead of running a pipeline: the recipe under test was accepted."""


def run_cli(args: list[str], allow_run: bool = False) -> tuple[int, str, str]:
    """`edgecomp ARGS` through the console-script entry, in this process; (exit code, stdout, stderr).

    Unless `allow_run`, a recipe that gets as far as the pipeline raises AcceptedRecipe instead of running."""
    out, err = io.StringIO(), io.StringIO()

    def refuse_to_run(*_: Any, **__: Any) -> None:
        raise AcceptedRecipe(f"edgecomp {' '.join(args)} accepted the recipe and would have run it")

    with (
        mock.patch.object(sys, "argv", ["edgecomp", *args]),
        mock.patch("compress.pipeline.Pipeline.run", refuse_to_run) if not allow_run else nullcontext(),
        redirect_stdout(out),
        redirect_stderr(err),
    ):
        try:
            cli.main()
        except SystemExit as exit_:
            return int(exit_.code or 0), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def check_refused(case: Case) -> None:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        path = folder / "recipe.yaml"
        if isinstance(case.text, bytes):
            path.write_bytes(case.text)
        else:
            path.write_text(case.text, encoding="utf-8")
        cwd = os.getcwd()
        os.chdir(folder)  # a python tag, if obeyed, would touch its marker here
        try:
            code, out, err = run_cli(["run", str(path), "--runs-dir", str(folder / "runs"), *case.args])
        finally:
            os.chdir(cwd)
        lines = err.strip().splitlines()
        assert code == 2, (case.kind, code, err)
        assert "Traceback" not in out + err
        assert len(lines) == 1, f"{case.kind}: expected one line, got {len(lines)}:\n{err}"
        assert lines[0].startswith("error: "), err
        for expected in case.expect:
            assert expected in lines[0], f"{case.kind}: {expected!r} not in {lines[0]!r}"
        assert sorted(p.name for p in folder.iterdir()) == ["recipe.yaml"], "something was written"
        assert case.marker is None or not (folder / case.marker).exists()


def test_base_recipe_is_valid() -> None:
    """The fuzz breaks one thing at a time in a recipe that is otherwise accepted."""
    with pytest.raises(AcceptedRecipe), tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.yaml"
        path.write_text(yaml.safe_dump(BASE))
        argv = ["edgecomp", "run", str(path), "--runs-dir", f"{folder}/runs"]
        with (
            mock.patch.object(sys, "argv", argv),
            mock.patch("compress.pipeline.Pipeline.run", side_effect=AcceptedRecipe),
        ):
            cli.main()


@pytest.mark.fuzz
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    derandomize="EDGECOMP_FUZZ_EXAMPLES" not in os.environ,  # CI: the same examples every time
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(case=bad_recipes())
@example(case=recipe_case("import name", {**base(), "model": {"arch": ":x"}}, "model.arch"))
@example(case=recipe_case("import name", {**base(), "model": {"arch": ".x:y"}}, "model.arch"))
@example(case=recipe_case("import name", {**base(), "model": {"arch": "no_such_pkg.mod:build"}}, "model.arch"))
@example(case=recipe_case("markup", {**base(), "model": {"arch": "[/red] [bold]x"}}, "[/red] [bold]x"))
@example(case=recipe_case("emoji", {**base(), "data": {"dataset": ":smile:"}}, ":smile:"))
def test_every_malformed_recipe_is_refused_in_one_line(case: Case) -> None:
    check_refused(case)


# Found by this fuzz and fixed: the schema had no upper bounds (a 2**70 seed crashed torch mid-run),
# load_recipe let a RecursionError out, and a key with a line break split the message.
HUGE_VALUES = [
    ("train.seed=1180591620717411303424", "train.seed"),  # accepted; torch.manual_seed overflows mid-run
    ("train.lr=.inf", "train.lr"),
    ("train.epochs=1000000000000", "train.epochs"),
    ("data.image_size=1000000", "data.image_size"),
    ("data.batch_size=1000000000000", "data.batch_size"),
    ("bench.runs=1000000000000", "bench.runs"),
    ("bench.rounds=1000000", "bench.rounds"),
]


@pytest.mark.parametrize(("assignment", "key"), HUGE_VALUES, ids=[a.split("=")[0] for a, _ in HUGE_VALUES])
def test_huge_values_are_refused(assignment: str, key: str) -> None:
    check_refused(Case("huge value", yaml.safe_dump(BASE), [key], args=["--set", assignment]))


def test_deeply_nested_yaml_is_refused() -> None:
    # YAML nesting is refused while parsing, before any key is read: the message says what is wrong instead.
    check_refused(Case("deep nesting", "name: " + "[" * 5000 + "]" * 5000 + "\n", ["nested too deeply"]))


def test_a_key_with_a_line_break_stays_on_one_line() -> None:
    check_refused(recipe_case("newline key", {**base(), "train": {"a\nb": 1}}, "train."))


REAL_PROCESS_CASES = [
    ("name: !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
    (yaml.safe_dump({**BASE, "bench": {"thrëads": [1]}}, allow_unicode=True), "bench.thrëads: unknown key"),
]


@pytest.mark.parametrize(("text", "expect"), REAL_PROCESS_CASES, ids=["python-tag", "unicode-key"])
def test_real_process_refuses_bad_recipes(tmp_path: Path, text: str, expect: str) -> None:
    (tmp_path / "recipe.yaml").write_text(text, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "cli", "run", "recipe.yaml", "--runs-dir", "runs"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "200", "PYTHONIOENCODING": "utf-8"},
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and expect in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]
