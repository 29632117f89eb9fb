"""edgecomp's command line: parse, call the library, print. No logic lives here.

edgecomp run quickstart                         # compress, export, measure, report (a shipped name, or a file)
edgecomp bench model.tflite --threads 2 --json  # latency of any .tflite or OpenVINO .xml
edgecomp bench model.tflite --remote pi@raspberrypi.local  # ... timed on another machine over SSH
edgecomp recipes | models | datasets            # what is shipped and registered
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from targets.base import EdgecompError
from targets.bench import MIN_TIME_S

if TYPE_CHECKING:
    from compress.results import Results

# Before torch loads its OpenMP runtime (nothing above imports torch): OpenMP's threads spin while they
# wait, and when another process holds a core they spin against a descheduled partner. One detector
# training step with 2 threads took 14.6 s instead of 0.58 s on this 2-core machine while another
# training run was busy. Passive waiting costs little when the machine is quiet; users may still set it.
# PyTorch eager rows are timed in a process without it (`compress.eager.EagerTimers`): passive threads made
# small models' eager inference 5-6x slower. The marker says the policy is edgecomp's, not the user's.
# A process spawned to time PyTorch eager re-imports this module: it says so with EDGECOMP_DEFAULT_OMP.
if "OMP_WAIT_POLICY" not in os.environ and not os.environ.get("EDGECOMP_DEFAULT_OMP"):
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["EDGECOMP_SET_OMP_WAIT_POLICY"] = "1"

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


@app.command()
def run(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML file, or the name of a shipped recipe.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: --set train.epochs=5 (repeatable).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rerun every stage, ignoring cached results.")] = False,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where run directories go.")] = Path("runs"),
    trust: Annotated[
        bool, typer.Option("--trust", help="Let model.weights be a pickled module (runs its code: trusted files only).")
    ] = False,
    nproc: Annotated[
        int, typer.Option("--nproc", min=1, help="Training workers on this machine, started through torchrun.")
    ] = 1,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu or cuda: where training runs (overrides train.device).")
    ] = None,
    export_jobs: Annotated[
        int | None,
        typer.Option(
            "--export-jobs",
            min=1,
            help="Export files made at once, each in its own process (default: one per core, at most 4).",
        ),
    ] = None,
) -> None:
    """Run a recipe end to end; writes runs/<name>/ with results.json and the report."""
    from compress.recipe import load_recipe

    overrides = [*(set_ or []), *([f"train.device={device}"] if device else [])]
    parsed = load_recipe(recipe, overrides=overrides)  # a bad recipe fails here, once, before the pipeline loads

    from compress import distributed
    from compress.models import trusted_pickles
    from compress.pipeline import Pipeline
    from compress.runlock import run_lock

    run_dir = runs_dir / parsed.name
    if nproc > 1 and not distributed.launched_by_torchrun():
        distributed.check_global_batch(parsed.data.batch_size, nproc)  # once here, not once per worker
        distributed.check_launch(parsed.train.device, nproc)
        argv = ["--debug"] * state["debug"] + ["run", recipe, "--runs-dir", str(runs_dir)]
        argv += [arg for value in overrides for arg in ("--set", value)] + ["--force"] * force + ["--trust"] * trust
        argv += ["--export-jobs", str(export_jobs)] if export_jobs else []
        raise typer.Exit(distributed.launch(argv, nproc))
    command = shlex.join(["edgecomp", *sys.argv[1:]])
    with (
        distributed.process_group(parsed.train.device),
        trusted_pickles(trust),
        run_lock(run_dir) if distributed.is_main() else nullcontext(),  # rank 0 writes; it holds the lock
    ):
        results = Pipeline(
            parsed, run_dir, force=force, command=command, console=errors, export_processes=export_jobs
        ).run()
    if results is not None:  # None: a worker other than rank 0; it trained its share, rank 0 reports
        _print_outcome(results, run_dir, parsed.report.max_accuracy_drop)


def _print_outcome(results: dict, run_dir: Path, max_drop: float | None = None) -> None:
    """The results table, the int8 files that cost more than `max_drop` points against their fp32 twin (the
    report's lines) and where the report is; with failed exports, which and why, and exit status 1."""
    from compress.report import failed_lines
    from compress.report.int8 import costly_int8
    from compress.report.text import metric_label
    from compress.results import Results

    typed = Results.parse(results)
    console.print(results_table(typed))
    for line in costly_int8(typed, metric_label(typed), max_drop):
        console.print(f"int8: {line}", markup=False, highlight=False)
    console.print(f"Report: {run_dir / 'report.md'}  (also report.html, plot.png, results.json)")
    if typed.failed:
        errors.print(f"[red]{len(typed.failed)} export(s) failed[/red]; the others were measured:")
        for line in failed_lines(typed):
            errors.print(f"  {line}", markup=False, highlight=False)
        raise typer.Exit(1)


def results_table(results: Results) -> Table:
    from compress.report import KIND_LABELS

    table = Table(title=f"{results.recipe}: {results.metric} on the test split, measured in each runtime")
    for column in (
        "candidate",
        "kind",
        "target",
        "precision",
        "threads",
        str(results.metric),
        "p50 ms",
        "p90 ms",
        "MMACs",
        "size KB",
    ):
        table.add_column(column, justify="left" if column in ("candidate", "kind", "target", "precision") else "right")
    for row in results.rows:
        table.add_row(
            row.candidate if row.seed is None else f"{row.candidate} (seed {row.seed})",
            KIND_LABELS.get(row.kind, row.kind),
            row.target,
            row.precision,
            str(row.threads),
            f"{100 * row.accuracy:.2f}%",
            _number(row.latency_ms_p50, ".3f"),
            _number(row.latency_ms_p90, ".3f"),
            _number(row.macs and row.macs / 1e6, ".2f"),
            _number(row.size_kb, ".0f"),  # KB = 1000 bytes, as in the report
        )
    return table


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


_MIN_TIME_HELP = "One file: time more than --runs until this many seconds (0: --runs only)."


@app.command()
def bench(
    model_files: Annotated[
        list[Path],
        typer.Argument(
            help="A .tflite, .onnx or OpenVINO .xml file (its .bin beside it), made here or not; several are timed "
            "together, interleaved in rounds, so that their p50s compare.",
            metavar="MODEL_FILE...",
        ),
    ],
    threads: Annotated[int | None, typer.Option(help="Inference threads (default: all cores).")] = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs.")] = 100,
    min_time: Annotated[float, typer.Option("--min-time", min=0.0, help=_MIN_TIME_HELP)] = MIN_TIME_S,
    time_budget: Annotated[
        float | None, typer.Option("--time-budget", min=0.001, help="Time runs for this many seconds instead.")
    ] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs first.")] = 10,
    batch: Annotated[int | None, typer.Option(min=1, help="Batch size (default: the file's).")] = None,
    shape: Annotated[str | None, typer.Option(help="Input shape such as 1x3x224x224, for dynamic inputs.")] = None,
    postprocess: Annotated[
        Literal["auto", "detection", "none"],
        typer.Option(help="Also time a detector's numpy post-processing (auto: when the outputs are a detector's)."),
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    remote: Annotated[
        str | None, typer.Option(help="Time it on this machine over SSH instead: user@host (keys: agent, ~/.ssh).")
    ] = None,
    python: Annotated[str, typer.Option(help="With --remote: the Python to run there.")] = "python3",
    ssh_option: Annotated[
        list[str] | None, typer.Option("--ssh-option", help="With --remote: ssh -o KEY=VALUE (repeatable).")
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.001, help="With --remote: seconds the benchmark may take.")] = 600.0,
    rounds: Annotated[int, typer.Option(min=1, help="With several files: rounds the runs are split over.")] = 100,
) -> None:
    """Latency of a model file in its runtime: p50 / p90 / mean over timed runs, throughput, peak memory;
    for a detector, the latency of its post-processing (threshold, top-k, NMS) as well. With --remote, the
    file is timed on another machine (which needs Python, numpy and the file's runtime, not edgecomp).
    Several files are loaded together and timed in interleaved rounds (each round a short burst of each, in a
    shuffled order), as `edgecomp run` times its rows: timed one after another, a drifting machine's speed
    would show as a difference between the files."""
    from targets.bench import benchmark, open_for_bench, parse_shape

    if len(model_files) > 1:
        remote_args = (remote, python, ssh_option, timeout)
        results = _bench_several(model_files, threads, runs, warmup, rounds, batch, shape, time_budget, remote_args)
        _print_bench_several(results, as_json, remote)
        return
    model_file = model_files[0]
    options = dict(runs=runs, warmup=warmup, time_budget_s=time_budget, postprocess=postprocess, min_time_s=min_time)
    if remote is None:
        runner = open_for_bench(model_file, threads=threads, shape=parse_shape(shape) if shape else None, batch=batch)
        fields = benchmark(runner, **options).as_dict()
    else:
        from targets.remote import Remote, RemoteSession

        with RemoteSession(Remote(remote, python, tuple(ssh_option or ()), timeout)) as session:
            result = session.bench(model_file, threads=threads, batch=batch, shape=shape, **options)
        fields = {**result.as_dict(), "remote": session.description}
    _print_bench_one(fields, model_file, as_json, remote)


def _print_bench_one(fields: dict[str, Any], model_file: Path, as_json: bool, remote: str | None) -> None:
    """One file's benchmark: its JSON object, or a table of its fields."""
    if as_json:
        console.print_json(json.dumps(fields))
        return
    table = Table(title=str(model_file) + (f" on {remote}" if remote else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in fields.items():
        value = value["host"] if key == "remote" else value  # its CPU is the device row's
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def _bench_several(
    files: list[Path],
    threads: int | None,
    runs: int,
    warmup: int,
    rounds: int,
    batch: int | None,
    shape: str | None,
    time_budget: float | None,
    remote_args: tuple,
) -> list[tuple[Path, Any]]:
    """Each file's `BenchResult`, or the `EdgecompError` it met, timed together (`targets.bench.interleave`)."""
    from targets.bench import interleave_files, parse_shape

    if time_budget is not None:
        raise EdgecompError("--time-budget times one file; several are timed in rounds of --runs")
    remote, python, ssh_option, timeout = remote_args
    if remote is None:
        jobs = [(path, threads) for path in files]
        timed = interleave_files(jobs, parse_shape(shape) if shape else None, batch, "auto", warmup, runs, rounds)
        return list(zip(files, timed, strict=True))
    if threads is None or batch is not None or shape is not None:
        raise EdgecompError(
            "several files on --remote: give --threads (the host's core count is not known here); "
            "--batch and --shape time one file"
        )
    from targets.remote import Remote, RemoteSession

    with RemoteSession(Remote(remote, python, tuple(ssh_option or ()), timeout)) as session:
        timed = session.bench_interleaved(files, [threads], runs, warmup, rounds)
        return [(path, result) for path, result in zip(files, timed, strict=True)]


def _print_bench_several(results: list[tuple[Path, Any]], as_json: bool, remote: str | None) -> None:
    """One JSON line or table row per file; a file that failed says why, and the exit status is then 2."""
    failed = [(path, result) for path, result in results if isinstance(result, EdgecompError)]
    if as_json:
        for path, result in results:
            fields = {"error": str(result)} if isinstance(result, EdgecompError) else result.as_dict()
            console.print(json.dumps({"model": str(path), **fields}), soft_wrap=True)
    else:
        table = Table(title="timed together, interleaved" + (f", on {remote}" if remote else ""))
        for column in ("file", "p50 ms", "p90 ms", "mean ms", "runs", "threads", "runtime"):
            table.add_column(column, justify="left" if column in ("file", "runtime") else "right")
        for path, r in results:
            if not isinstance(r, EdgecompError):
                table.add_row(
                    str(path),
                    f"{r.latency_ms_p50:.4g}",
                    f"{r.latency_ms_p90:.4g}",
                    f"{r.latency_ms_mean:.4g}",
                    str(r.runs),
                    str(r.threads),
                    r.runtime,
                )
        console.print(table)
    for path, error in failed:
        errors.print(f"error: {path}: {error}")
    if failed:
        raise typer.Exit(2)


@app.command()
def sensitivity(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML file, or the name of a shipped recipe.")],
    target: Annotated[str, typer.Option("--target", help="The int8 target to measure through (tflite, ...).")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: --set train.epochs=5 (repeatable).")
    ] = None,
    group: Annotated[
        list[str] | None,
        typer.Option("--group", help="A layer group (module-name glob) to rank; repeatable (default: the blocks)."),
    ] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where run directories go.")] = Path("runs"),
    out: Annotated[Path | None, typer.Option("--out", help="Also write the ranking as JSON here.")] = None,
) -> None:
    """Rank the recipe's dense model's layer groups by what int8 costs them on one target: each group alone
    kept in float, exported through the target's own int8, scored on the val split (one export per group).
    The dense model comes from the run's cache (runs/<name>/) when `edgecomp run` made it."""
    from compress.recipe import load_recipe

    parsed = load_recipe(recipe, overrides=set_ or [])

    from compress.pipeline import Pipeline
    from compress.runlock import run_lock
    from targets.fileio import write_json

    run_dir = runs_dir / parsed.name
    pipeline = Pipeline(parsed, run_dir, console=errors)
    with run_lock(run_dir):
        search = pipeline.sensitivity(target, group)
    metric = pipeline.task.metric
    table = Table(
        title=f"{parsed.name}: int8 sensitivity on {target}, val split (float {100 * search.reference:.2f}, "
        f"all int8 {100 * search.int8:.2f})"
    )
    db = dict(search.sqnr_db)
    for column in ("layer group", f"{metric} % with it alone in float", "recovered pts", "outputs' SQNR dB"):
        table.add_column(column, justify="left" if column == "layer group" else "right")
    for name, value in search.ranking:  # in the search's order: by SQNR where the outputs compare
        table.add_row(
            name,
            f"{100 * value:.2f}",
            f"{100 * (value - search.int8):+.2f}",
            f"{db[name]:.1f}" if name in db else "n/a",
        )
    console.print(table)
    if out is not None:
        write_json(
            out,
            {
                "target": target,
                "reference": search.reference,
                "int8": search.int8,
                "ranking": [list(pair) for pair in search.ranking],
                "sqnr_db": [list(pair) for pair in search.sqnr_db],
            },
        )


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (runs/<name>), one or more.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Where the report goes (default: the run directory, if one).")
    ] = None,
    latency_budget_ms: Annotated[
        float | None, typer.Option("--latency-budget-ms", help="Recommend the most accurate row within this p50.")
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option("--max-accuracy-drop", help="Points below dense fp32 PyTorch a recommended row may lose."),
    ] = None,
) -> None:
    """Write one report (md, html, plot, csv) over one or more runs, e.g. one recipe on two machines."""
    from compress.report import report_runs

    paths = report_runs(run_dirs, out, latency_budget_ms=latency_budget_ms, max_accuracy_drop=max_accuracy_drop)
    console.print(f"Report: {paths['md']}  (also {paths['html'].name}, {paths['plot'].name}, {paths['csv'].name})")


@app.command()
def recipes() -> None:
    """List the shipped recipes (run one with `edgecomp run NAME`)."""
    import yaml

    from compress.shipped import shipped_recipes

    for stem, file in shipped_recipes().items():
        text = file.read_text(encoding="utf-8")
        first = next((line[1:].strip() for line in text.splitlines() if line.startswith("#")), "")
        name = yaml.safe_load(text).get("name", stem)
        console.print(f"[bold]{stem}[/bold]  {first}" + (f"  (name: {name})" if name != stem else ""))


@app.command()
def models() -> None:
    """List the registered model architectures (or use arch: timm:NAME, pkg.module:function, path/file.py:function)."""
    from compress.models import MODELS

    for name in MODELS.names():
        console.print(name)
    console.print("timm:NAME (any of timm.list_models(), with timm installed)", highlight=False)


@app.command()
def datasets() -> None:
    """List the registered data sets."""
    from compress.data import DATASETS

    for name in DATASETS.names():
        console.print(name)


def _fail(message: str) -> None:
    """One red line (the message is text, never rich markup: it may quote a user's key) and exit code 2."""
    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False, emoji=False, soft_wrap=True)
    sys.exit(2)


def _os_error_message(error: OSError) -> str:
    """A full disk or a folder that cannot be written, in one line that says what to do."""
    where = f"{error.filename}: " if error.filename else ""
    return (
        f"{where}{error.strerror or error} (errno {error.errno}); finished stages are kept: "
        "free space or fix the permissions, then run the same command again to resume"
    )


def _interrupted() -> None:
    command = shlex.join(["edgecomp", *sys.argv[1:]])
    errors.print(
        f"interrupted: finished stages are saved; to resume, run the same command again: {command}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    sys.exit(130)


def main() -> None:
    """The console script: user errors become one red line and exit code 2 (tracebacks with --debug)."""
    try:
        # not standalone, typer returns 130 for Ctrl-C and typer.Exit's code; usage says edgecomp, not cli.py
        code = app(standalone_mode=False, prog_name="edgecomp")
    except (EdgecompError, OSError) as error:
        if state["debug"]:
            raise
        _fail(str(error) if isinstance(error, EdgecompError) else _os_error_message(error))
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        sys.exit(1)
    except typer.exceptions.TyperException as error:  # usage errors: typer 0.29 parses with its own copy of click
        show = getattr(error, "show", None)
        if show is None or state["debug"]:
            raise
        show()
        sys.exit(getattr(error, "exit_code", 2))
    if code == 130:
        _interrupted()
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
