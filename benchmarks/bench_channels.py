"""Whether channel counts that are multiples of 4, 8 or 16 pay on each runtime: measured, not assumed (issue #19).

`make bench-channels` runs this. Two parts, each timed in one interleaved run (`targets.bench.interleave_files`:
every file loaded, then the runs taken in rounds, each round every file in a shuffled order), so the variants
compare as ratios of one run even where the machine's speed drifts:

1. Whole networks: the quickstart's architecture (torchvision MobileNetV2 x0.5, 10 classes) at 224x224,
   pruned by edgecomp's `compress.prune` to about `--macs` of its MACs with `PruneSpec.round_to` None, 4, 8
   and 16, each exported to fp32 and int8 of every target. Per file: MACs, p50, and ms per GMAC relative to
   the round_to=None file of the same target and precision (rounding moves the MACs a little, so the per-MAC
   ratio is the fair one). The round_to=None file is timed twice, as two runners: their ratio is the noise.
2. A micro sweep that isolates the effect: 1x1 conv C->C, depthwise 3x3 on C, 1x1 conv C->C (BN, ReLU6), on a
   56x56 map, for every C in `--channels` (default 60..72), each exported to fp32 and int8 of every target.
   Per C and file: p50 and ms per GMAC relative to that file's sweep median, so steps at multiples of 4/8/16
   show.

It ends with a verdict per runtime computed from those numbers: how much faster per MAC round_to=m ran than
round_to=None, and how much faster per MAC each multiple of m in the sweep ran than its +-1 neighbours, next
to the spread between adjacent counts that are not multiples of 4 (what "no effect" looks like).
Weights are random and calibration inputs random normal: latency depends on neither.

    python benchmarks/bench_channels.py [--threads 2] [--runs 100] [--targets tflite openvino onnx]
        [--precisions fp32 int8] [--round-to none 4 8 16] [--channels 60..72] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

import targets
from compress.measure import count
from compress.models import build_model
from compress.prune import prune
from compress.schema import ModelSpec, PruneSpec
from targets.base import EdgecompError
from targets.bench import interleave_files
from targets.device import BUSY_CORES, OtherProcesses, cpu_model

MULTIPLES = (4, 8, 16)
CALIBRATION_SAMPLES = 8  # int8 calibration inputs: latency does not depend on them, export time does
CLEAR = 2.0  # a per-MAC gain counts as clear when it is over this many times the spread of non-multiples
console = Console(width=160)  # read in logs and CI output too, not only in a terminal


@dataclass(frozen=True)
class File:
    """One exported file of one variant: a round_to (part 1) or a channel count C (part 2)."""

    variant: int | None  # round_to (None: no rounding) or C
    target: str
    precision: str
    path: Path
    macs: int

    @property
    def runtime(self) -> str:
        return f"{self.target} {self.precision}"


@dataclass(frozen=True)
class Timed:
    file: File
    p50_ms: float

    @property
    def ms_per_gmac(self) -> float:
        return self.p50_ms / (self.file.macs / 1e9)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="inference threads (default: 2)")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per file (default: 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs before each burst (default: 10)")
    parser.add_argument("--rounds", type=int, default=100, help="rounds the runs are split over (default: 100)")
    parser.add_argument("--targets", nargs="+", default=list(targets.TARGETS), choices=list(targets.TARGETS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"], help="default: fp32 int8")
    parser.add_argument("--round-to", nargs="+", type=round_to, default=[None, 4, 8, 16], help="default: none 4 8 16")
    parser.add_argument("--macs", type=float, default=0.5, help="fraction of the dense MACs to prune to")
    parser.add_argument("--image-size", type=int, default=224, help="whole networks' input size (default: 224)")
    parser.add_argument("--channels", type=channel_range, default=range(60, 73), help="sweep's C (default: 60..72)")
    parser.add_argument("--map-size", type=int, default=56, help="sweep's feature map size (default: 56)")
    parser.add_argument("--keep", type=Path, help="export into (and reuse files from) this folder")
    parser.add_argument("--skip-networks", action="store_true", help="only the micro sweep")
    parser.add_argument("--skip-sweep", action="store_true", help="only the whole networks")
    args = parser.parse_args(argv)
    if None not in args.round_to:
        parser.error("--round-to needs 'none' among its values: the other files are compared with it")
    return args


def round_to(text: str) -> int | None:
    """'none' -> None, '8' -> 8."""
    if text.lower() == "none":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 'none' or a positive integer")
    return int(text)


def channel_range(text: str) -> range:
    """'60..72' -> range(60, 73) (both ends included)."""
    low, _, high = text.partition("..")
    if not (low.isdigit() and high.isdigit()) or not 0 < int(low) < int(high):
        raise argparse.ArgumentTypeError(f"{text!r}: expected LOW..HIGH, e.g. 60..72")
    return range(int(low), int(high) + 1)


def cpu_line(threads: int) -> str:
    """ "AMD EPYC (AVX-512 VNNI), 2 cores, 2 threads": what the timings were taken on."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    isa = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX2" if "avx2" in flags else platform.machine()
    return f"{cpu_model()} ({isa}), {os.cpu_count()} cores, {threads} threads"


def networks(args: argparse.Namespace) -> dict[int | None, nn.Module]:
    """The quickstart's dense architecture pruned to `args.macs` of its MACs once per round_to, from the same
    random weights."""
    torch.manual_seed(0)
    spec = ModelSpec(arch="mobilenet_v2", width_mult=0.5, num_classes=10)
    dense = build_model(spec, 10).eval()
    example = torch.zeros(1, 3, args.image_size, args.image_size)
    pruned = {}
    for rounding in args.round_to:
        model = build_model(spec, 10).eval()
        model.load_state_dict(dense.state_dict())
        started = time.perf_counter()
        prune(model, example, PruneSpec(macs=args.macs, round_to=rounding))
        console.log(f"pruned round_to={rounding} in {time.perf_counter() - started:.0f} s: {channels(model)}")
        pruned[rounding] = model.eval()
    return pruned


def channels(model: nn.Module) -> str:
    """The distinct output channel counts of the model's convolutions."""
    return " ".join(map(str, sorted({m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)})))


def stack(c: int) -> nn.Module:
    """1x1 conv C->C, depthwise 3x3, 1x1 conv C->C: an inverted residual without its expansion, C everywhere."""
    torch.manual_seed(c)
    return nn.Sequential(
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU6(),
        nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU6(),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c),
    ).eval()


def export_all(
    name: str, variants: dict[int | None, tuple[nn.Module, tuple[int, ...]]], args: argparse.Namespace, folder: Path
) -> list[File]:
    """Every variant (its model and input shape) exported to every asked target x precision; a file already in
    `folder` is reused."""
    files = []
    for variant, (model, shape) in variants.items():
        example = torch.zeros(shape)
        calibration = np.random.default_rng(0).standard_normal((CALIBRATION_SAMPLES, *shape[1:]))
        calibration = calibration.astype(np.float32)
        macs = count(model, example)[0]
        for target in args.targets:
            for precision in args.precisions:
                if precision not in targets.TARGETS[target].precisions:
                    raise EdgecompError(f"{target} makes no {precision} files")
                path = folder / f"{name}-{variant}-{target}-{precision}{targets.TARGETS[target].suffix}"
                if not path.is_file():
                    console.log(f"exporting {name} {variant} {target} {precision}")
                    targets.get_target(target).export(model, example, precision, path, calibration, {})
                files.append(File(variant, target, precision, path, macs))
    return files


def time_all(files: list[File], args: argparse.Namespace, twice: set[Path] = frozenset()) -> list[list[Timed]]:
    """Every file timed in one interleaved run; a file in `twice` is opened as two runners (two timings)."""
    jobs = [file for file in files for _ in range(2 if file.path in twice else 1)]
    console.log(f"timing {len(jobs)} runners interleaved, {args.runs} runs each, {args.threads} threads")
    started, others = time.perf_counter(), OtherProcesses()
    results = interleave_files(
        [(job.path, args.threads) for job in jobs], None, None, "none", args.warmup, args.runs, args.rounds
    )
    busy = others.cores()
    console.print(
        f"timed in {time.perf_counter() - started:.0f} s; other processes used {busy:.2f} cores meanwhile"
        + (": indicative only, the p50s may mix a free and a busy machine" if busy > BUSY_CORES else "")
    )
    timed: dict[Path, list[Timed]] = {}
    for job, result in zip(jobs, results, strict=True):
        if isinstance(result, EdgecompError):
            raise result
        timed.setdefault(job.path, []).append(Timed(job, result.latency_ms_p50))
    return [timed[file.path] for file in files]


def network_table(timings: list[list[Timed]], args: argparse.Namespace) -> Table:
    baseline = {t[0].file.runtime: t[0] for t in timings if t[0].file.variant is None}
    table = Table(
        title=f"MobileNetV2 x0.5 pruned to ~{args.macs:g} of its MACs, {args.image_size} px, "
        f"{cpu_line(args.threads)}; ratios against round_to=None of the same target and precision"
    )
    for column in ("target", "precision", "round_to", "MMACs", "p50 ms", "p50 ratio", "ms/GMAC ratio"):
        table.add_column(column, justify="left" if column in ("target", "precision") else "right")
    for runs in timings:
        first, base = runs[0], baseline[runs[0].file.runtime]
        table.add_row(
            first.file.target,
            first.file.precision,
            str(first.file.variant),
            f"{first.file.macs / 1e6:.1f}",
            " / ".join(f"{t.p50_ms:.3f}" for t in runs),
            " / ".join(f"{t.p50_ms / base.p50_ms:.3f}" for t in runs),
            " / ".join(f"{t.ms_per_gmac / base.ms_per_gmac:.3f}" for t in runs),
        )
    table.caption = "round_to=None was opened and timed twice (a / b): its second ratio is the same file's noise"
    return table


def sweep_table(timings: list[Timed], args: argparse.Namespace) -> Table:
    """One row per C, one column per runtime: p50 ms and ms per GMAC over that runtime's sweep median."""
    runtimes = list(dict.fromkeys(t.file.runtime for t in timings))
    per_mac = {runtime: per_mac_by_c(timings, runtime) for runtime in runtimes}
    table = Table(
        title=f"Micro sweep: 1x1 C->C, depthwise 3x3, 1x1 C->C at {args.map_size}x{args.map_size}, "
        f"{cpu_line(args.threads)}; each cell: p50 ms, ms/GMAC over the column's median"
    )
    for column in ("C", "multiple of", "MMACs", *runtimes):
        table.add_column(column, justify="right")
    for c in args.channels:
        row = [t for t in timings if t.file.variant == c]
        cells = [
            f"{t.p50_ms:.3f}  {per_mac[t.file.runtime][c] / median(per_mac[t.file.runtime].values()):.2f}" for t in row
        ]
        table.add_row(str(c), largest_multiple(c), f"{row[0].file.macs / 1e6:.1f}", *cells)
    return table


def largest_multiple(c: int) -> str:
    return next((str(m) for m in sorted(MULTIPLES, reverse=True) if c % m == 0), "")


def per_mac_by_c(timings: list[Timed], runtime: str) -> dict[int, float]:
    return {t.file.variant: t.ms_per_gmac for t in timings if t.file.runtime == runtime}


def neighbour_gain(per_mac: dict[int, float], multiple: int, alone: bool = False) -> float | None:
    """How much faster per MAC the multiples of `multiple` ran than their +-1 neighbours in the sweep, as a
    fraction (0.1: 10% faster), averaged over the multiples that have a neighbour; None when none has. With
    `alone`, only the multiples of no larger one in MULTIPLES (60 and 68 for 4: 64 is a multiple of 16)."""
    larger = [m for m in MULTIPLES if m > multiple and m % multiple == 0] if alone else []
    gains = []
    for c, cost in per_mac.items():
        neighbours = [per_mac[n] for n in (c - 1, c + 1) if n in per_mac]
        if c % multiple == 0 and neighbours and not any(c % m == 0 for m in larger):
            gains.append(float(np.mean(neighbours)) / cost - 1)
    return float(np.mean(gains)) if gains else None


def spread(per_mac: dict[int, float]) -> float | None:
    """The median |per-MAC ratio - 1| between adjacent counts that are not multiples of the smallest multiple:
    how far apart two counts with no rounding between them read (noise and any smaller step)."""
    step = min(MULTIPLES)
    pairs = [(c, c + 1) for c in per_mac if c + 1 in per_mac and c % step and (c + 1) % step]
    return median(abs(per_mac[b] / per_mac[a] - 1) for a, b in pairs) if pairs else None


def largest_step(p50: dict[int, float]) -> tuple[int, float] | None:
    """(C, fraction) of the largest p50 rise from C to C + 1 in the sweep: where the runtime's kernels round up
    (a step at a multiple of 16 says: one channel over 64 costs as much as sixteen)."""
    rises = [(c, p50[c + 1] / p50[c] - 1) for c in p50 if c + 1 in p50]
    return max(rises, key=lambda rise: rise[1]) if rises else None


def faster(fraction: float) -> str:
    return f"{abs(fraction):.1%} {'faster' if fraction >= 0 else 'slower'}"


def sweep_verdict(timings: list[Timed], runtime: str) -> str:
    per_mac = per_mac_by_c(timings, runtime)
    noise = spread(per_mac)
    parts = []
    for multiple in MULTIPLES:
        gain = neighbour_gain(per_mac, multiple)
        if gain is None:
            continue
        clear = "" if noise is None else (" (clear)" if gain > CLEAR * noise else " (within the spread)")
        alone = neighbour_gain(per_mac, multiple, alone=True)
        alone_text = "" if alone in (None, gain) else f", {faster(alone)} those of no larger multiple"
        parts.append(f"multiples of {multiple} {faster(gain)} per MAC than their +-1 neighbours{clear}{alone_text}")
    noise_text = "" if noise is None else f"; adjacent non-multiples of {min(MULTIPLES)} differ by {noise:.1%}"
    step = largest_step({t.file.variant: t.p50_ms for t in timings if t.file.runtime == runtime})
    step_text = "" if step is None else f"; largest p50 step: {step[0]} -> {step[0] + 1} channels, {step[1]:+.1%}"
    return "sweep: " + ", ".join(parts) + noise_text + step_text


def network_verdict(runs: list[list[Timed]]) -> str:
    base = next(t for t in runs if t[0].file.variant is None)
    noise = abs(base[-1].p50_ms / base[0].p50_ms - 1)
    parts = [
        f"round_to={t[0].file.variant} {faster(base[0].ms_per_gmac / t[0].ms_per_gmac - 1)} per MAC "
        f"(p50 {faster(base[0].p50_ms / t[0].p50_ms - 1)})"
        for t in runs
        if t[0].file.variant is not None
    ]
    return f"network: {', '.join(parts)} than round_to=None (the same file timed twice: {noise:.1%} apart)"


def verdicts(network: list[list[Timed]], sweep: list[Timed]) -> list[str]:
    """One line per runtime: what the numbers above say about rounding channel counts on it."""
    runtimes = dict.fromkeys([t[0].file.runtime for t in network] + [t.file.runtime for t in sweep])
    lines = []
    for runtime in runtimes:
        parts = []
        own = [t for t in network if t[0].file.runtime == runtime]
        if len(own) > 1:
            parts.append(network_verdict(own))
        if any(t.file.runtime == runtime for t in sweep):
            parts.append(sweep_verdict(sweep, runtime))
        lines.append(f"{runtime}:\n" + "\n".join(f"    {part}" for part in parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    console.print(f"CPU: {cpu_line(args.threads)}; load average {os.getloadavg()[0]:.2f}")
    network: list[list[Timed]] = []
    sweep: list[Timed] = []
    with tempfile.TemporaryDirectory(prefix="edgecomp-channels-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        if not args.skip_networks:
            shape = (1, 3, args.image_size, args.image_size)
            files = export_all("mobilenet_v2", {r: (m, shape) for r, m in networks(args).items()}, args, folder)
            network = time_all(files, args, twice={f.path for f in files if f.variant is None})
            console.print(network_table(network, args))
        if not args.skip_sweep:
            stacks = {c: (stack(c), (1, c, args.map_size, args.map_size)) for c in args.channels}
            files = export_all("stack", stacks, args, folder)
            sweep = [runs[0] for runs in time_all(files, args)]
            console.print(sweep_table(sweep, args))
    console.print("Verdict per runtime (computed from the tables above):")
    for line in verdicts(network, sweep):
        console.print(f"  {line}")
    console.print(f"CPU: {cpu_line(args.threads)}; total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
