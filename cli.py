"""edgecomp's command line: parse, call the library, print. No logic lives here.

edgecomp run recipes/quickstart.yaml            # compress, export, measure, report
edgecomp bench model.tflite --threads 2 --json  # latency of any .tflite or OpenVINO .xml
edgecomp recipes | models | datasets            # what is shipped and registered
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from targets.base import EdgecompError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
KIND_LABELS = {
    "dense": "dense",
    "finetune": "pruned+ft",
    "kd": "pruned+KD",
    "scratch_e": "Scratch-E",
    "scratch_b": "Scratch-B",
    "qat": "QAT",
}

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compress vision models for edge devices and measure what it cost and bought.",
)
# Without a terminal (CI logs, pipes) rich would wrap the results table at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
state = {"debug": False}


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False) -> None:
    state["debug"] = debug


def _recipe_path(recipe: str) -> Path:
    """A path, or the name of a shipped recipe (`quickstart`)."""
    path = Path(recipe)
    if not path.exists() and (RECIPES_DIR / f"{recipe}.yaml").is_file():
        return RECIPES_DIR / f"{recipe}.yaml"
    return path


@app.command()
def run(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML file, or the name of a shipped recipe.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: --set train.epochs=5 (repeatable).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rerun every stage, ignoring cached results.")] = False,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where run directories go.")] = Path("runs"),
) -> None:
    """Run a recipe end to end; writes runs/<name>/ with results.json and the report."""
    from compress.pipeline import Pipeline
    from compress.recipe import load_recipe

    parsed = load_recipe(_recipe_path(recipe), overrides=set_ or [])
    run_dir = runs_dir / parsed.name
    command = shlex.join(["edgecomp", *sys.argv[1:]])
    results = Pipeline(parsed, run_dir, force=force, command=command, console=errors).run()
    console.print(results_table(results))
    console.print(f"Report: {run_dir / 'report.md'}  (also report.html, plot.png, results.json)")


def results_table(results: dict) -> Table:
    table = Table(title=f"{results['recipe']}: {results['metric']} on the test split, measured in each runtime")
    for column in (
        "candidate",
        "kind",
        "target",
        "precision",
        "threads",
        results["metric"],
        "p50 ms",
        "p90 ms",
        "MMACs",
        "size KB",
    ):
        table.add_column(column, justify="left" if column in ("candidate", "kind", "target", "precision") else "right")
    for row in results["rows"]:
        size = f"{row['size_bytes'] / 1024:.0f}" if row.get("size_bytes") else "-"
        table.add_row(
            row["candidate"],
            KIND_LABELS.get(row["kind"], row["kind"]),
            row["target"],
            row["precision"],
            str(row["threads"]),
            f"{100 * row['accuracy']:.2f}%",
            f"{row['latency_ms_p50']:.3f}",
            f"{row['latency_ms_p90']:.3f}",
            f"{row['macs'] / 1e6:.2f}",
            size,
        )
    return table


@app.command()
def bench(
    model_file: Annotated[Path, typer.Argument(help="A .tflite file or an OpenVINO .xml (its .bin beside it).")],
    threads: Annotated[int | None, typer.Option(help="Inference threads (default: all cores).")] = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs.")] = 100,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs first.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Latency of one model file in its runtime: p50 / p90 / mean over timed runs."""
    import targets
    from targets.bench import benchmark

    runner = targets.load_runner(model_file, threads=threads)
    result = benchmark(runner, warmup=warmup, runs=runs)
    if as_json:
        console.print_json(result.to_json())
        return
    table = Table(title=str(model_file))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.as_dict().items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command()
def recipes() -> None:
    """List the shipped recipes (run one with `edgecomp run NAME`)."""
    import yaml

    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        first = next((line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        name = yaml.safe_load(path.read_text()).get("name", path.stem)
        console.print(f"[bold]{path.stem}[/bold]  {first}" + (f"  (name: {name})" if name != path.stem else ""))


@app.command()
def models() -> None:
    """List the registered model architectures (or use arch: pkg.module:function)."""
    from compress.models import MODELS

    for name in MODELS.names():
        console.print(name)


@app.command()
def datasets() -> None:
    """List the registered data sets."""
    from compress.data import DATASETS

    for name in DATASETS.names():
        console.print(name)


def main() -> None:
    """The console script: user errors become one red line and exit code 2 (tracebacks with --debug)."""
    try:
        app(standalone_mode=False)
    except EdgecompError as error:
        if state["debug"]:
            raise
        errors.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        errors.print("interrupted: finished stages are saved; run the same command again to resume")
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as error:  # click usage errors and the like
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise


if __name__ == "__main__":
    main()
