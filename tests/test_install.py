"""A non-editable install has what a checkout has: the shipped recipes, listed and loaded by name, and data files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from compress.shipped import shipped_recipes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project installed with pip into a folder of its own: no dependencies, no index, no build isolation
    (offline), built from a copy so that the checkout gets no build/ or egg-info."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("compress", "targets"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "cli.py"):
        shutil.copy(ROOT / name, source / name)
    target = tmp / "site"
    offline = ["--no-deps", "--no-index", "--no-build-isolation"]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", *offline, "--target", str(target), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def from_install(installed: Path, code: str) -> subprocess.CompletedProcess:
    """Python code run outside the checkout with only the install on PYTHONPATH (the dependencies come from
    this interpreter's site-packages, after it)."""
    env = {"PYTHONPATH": str(installed), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=installed.parent, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_install_ships_every_recipe(installed: Path) -> None:
    assert sorted(path.stem for path in (installed / "compress" / "recipes").glob("*.yaml")) == list(shipped_recipes())


def test_the_install_ships_imagenets_class_list(installed: Path) -> None:
    code = "from compress.data.class_names import imagenet_classes\nprint(imagenet_classes().names[999][0])"
    done = from_install(installed, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["n15075141"]


def test_edgecomp_recipes_lists_them_from_the_install(installed: Path) -> None:
    done = from_install(installed, "import sys, cli; sys.argv = ['edgecomp', 'recipes']; cli.main()")
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines() if line and not line[0].isspace()]
    assert set(shipped_recipes()) <= set(listed)


def test_a_shipped_recipe_loads_by_name_from_the_install(installed: Path) -> None:
    code = (
        "import compress.recipe\n"
        "from compress.recipe import load_recipe\n"
        "print(compress.recipe.__file__)\n"
        "print(load_recipe('quickstart', overrides=['train.epochs=1']).name)\n"
    )
    done = from_install(installed, code)
    assert done.returncode == 0, done.stderr
    module, name = done.stdout.split()
    assert Path(module).is_relative_to(installed)  # the install, not the checkout or an editable one
    assert name == "quickstart"


def test_a_shipped_recipe_runs_by_name_from_the_install(installed: Path) -> None:
    """`edgecomp run quickstart` from the install, outside the checkout (reduced to seconds: 8 px, one epoch,
    PyTorch rows only): the run writes its report."""
    args = [
        "run", "quickstart", "--runs-dir", "runs",
        *("--set", "data.image_size=8", "--set", "train.epochs=1", "--set", "stages.1.finetune.epochs=1"),
        *("--set", "baselines.scratch=[]", "--set", "exports=[]", "--set", "bench.runs=2", "--set", "bench.warmup=0"),
    ]  # fmt: skip
    done = from_install(installed, f"import sys, cli; sys.argv = ['edgecomp', *{args!r}]; cli.main()")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (installed.parent / "runs" / "quickstart" / "report.md").is_file()
