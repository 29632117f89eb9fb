"""The ARM lane: run the torch-free device-side runner on real aarch64 builds of the runtimes, under qemu.

Nothing here has an Arm CPU, so the aarch64 wheels of each runtime (XNNPACK's Arm kernels in TFLite, the
OpenVINO ARM CPU plugin) run in qemu user-mode emulation on a Debian arm64 sysroot. Every exported file
of a run is predicted on the run's test split on x86 and under emulation, and the two are compared:
fp32 files must agree on every top-1 prediction, int8 files on at least 99%. This proves correctness on
aarch64 code, never speed: latency under emulation is not reported.

    python -m arm.check                          # runs/quickstart if `make demo` ran, else a reduced run
    python -m arm.check --run-dir runs/my_recipe --runtimes openvino
    python -m arm.check --setup-only             # only build the cache (sysroot + wheel sites)

The sysroot and the wheel sites are built once into ``~/.cache/edgecomp/arm`` (``EDGECOMP_ARM_CACHE``),
each into a temporary folder renamed when complete, so an interrupted build is redone, never half used.
The result is ``<run dir>/arm.json``; it exits 0 when every file is verified, 1 when one is not, 2 when
the lane cannot run here (no debootstrap or qemu, no network).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from targets import TARGETS, target_for_file
from targets.base import EdgecompError
from targets.device import device_string
from targets.fileio import write_json
from targets.predict import load_outputs, predict_file, save_outputs

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "arm" / "python-aarch64"
CACHE = Path(os.environ.get("EDGECOMP_ARM_CACHE", Path.home() / ".cache" / "edgecomp" / "arm"))
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
CPU = os.environ.get("EDGECOMP_ARM_CPU", "cortex-a76")  # Raspberry Pi 5's core; qemu's default "max" has SVE

# The aarch64 wheels for the sysroot's CPython 3.11. numpy stays below 2: tflite-runtime 2.14 needs it.
NUMPY = ("numpy==1.26.4",)
RUNTIMES: dict[str, tuple[str, ...]] = {
    "ai_edge_litert": ("ai-edge-litert==2.3.0",),
    "tflite_runtime": ("tflite-runtime==2.14.0",),
    "openvino": ("openvino==2026.4.1", "openvino-telemetry==2025.2.0"),
}
RUNTIME_TARGET = {"ai_edge_litert": "tflite", "tflite_runtime": "tflite", "openvino": "openvino"}
# Wheels are tagged with one manylinux level each; pip does not expand a level to the ones below it.
PLATFORMS = ("manylinux2014_aarch64", *(f"manylinux_2_{n}_aarch64" for n in (17, 24, 27, 28, 31, 34, 35, 36)))
MIN_AGREEMENT = {"fp32": 1.0, "fp16": 1.0, "int8": 0.99}
ARCH = "aarch64 (qemu)"

# cpuinfo (used by XNNPACK in ai-edge-litert) parses /proc/cpuinfo; qemu 7.2 shows the x86 host's, and
# cpuinfo then crashes on a null pointer. qemu -L serves <sysroot>/proc/cpuinfo instead: a Cortex-A76's.
_CPUINFO_ENTRY = """processor\t: {i}
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1
"""


class LaneUnavailable(EdgecompError):
    """The lane cannot run on this machine (no debootstrap/qemu, not root, no network)."""


def log(message: str) -> None:
    print(f"arm: {message}", flush=True)


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def ensure_tools() -> None:
    """debootstrap and qemu-aarch64-static, installed with apt when missing and allowed."""
    missing = [tool for tool in ("debootstrap", "qemu-aarch64-static") if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise LaneUnavailable(f"{' and '.join(missing)} missing and cannot be installed here (needs root and apt-get)")
    log("installing debootstrap and qemu-user-static with apt-get")
    result = _run(["apt-get", "install", "-y", "-qq", "debootstrap", "qemu-user-static"])
    if result.returncode != 0:
        _run(["apt-get", "update", "-qq"])
        result = _run(["apt-get", "install", "-y", "-qq", "debootstrap", "qemu-user-static"])
    if result.returncode != 0:
        raise LaneUnavailable(
            f"apt-get could not install debootstrap and qemu-user-static: {result.stderr.strip()[-300:]}"
        )


def build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """`final` as `build` makes it: built into a temporary sibling and renamed when complete, so a
    folder under the final name is always whole; an existing one is reused."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        start = time.perf_counter()
        build(tmp)
        os.replace(tmp, final)
        log(f"built {final} in {time.perf_counter() - start:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _debootstrap(dest: Path) -> None:
    """A Debian arm64 minbase with Python 3.11, unpacked without chroot (no binfmt_misc needed)."""
    cmd = ["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", "--include=python3,libpython3.11"]
    result = _run(["nice", "-n", "5", *cmd, SUITE, str(dest), MIRROR])
    if result.returncode != 0:
        raise LaneUnavailable(f"debootstrap failed (offline?): {(result.stdout + result.stderr).strip()[-300:]}")
    for deb in sorted((dest / "var" / "cache" / "apt" / "archives").glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(dest)]).check_returncode()
    _compile(dest / "usr" / "lib" / "python3.11")
    (dest / "proc").mkdir(exist_ok=True)
    (dest / "proc" / "cpuinfo").write_text("\n".join(_CPUINFO_ENTRY.format(i=i) for i in range(os.cpu_count() or 1)))


def _site_builder(requirements: tuple[str, ...]) -> Callable[[Path], None]:
    """Download the aarch64 wheels of `requirements` (no dependencies) and unpack them into a folder."""

    def build(dest: Path) -> None:
        wheels = dest / ".wheels"
        platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        cmd += ["--python-version", "3.11", "--implementation", "cp", *platforms, "-d", str(wheels), *requirements]
        result = _run(cmd)
        if result.returncode != 0:
            raise LaneUnavailable(f"pip could not download {' '.join(requirements)}: {result.stderr.strip()[-300:]}")
        for wheel in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(dest)
        shutil.rmtree(wheels)
        _compile(dest)

    return build


def _compile(folder: Path) -> None:
    """Byte-compile with this (x86) CPython 3.11, whose .pyc files the aarch64 one reads: emulated, compiling
    numpy and openvino's Python on every start costs seconds (PYTHONDONTWRITEBYTECODE stops it caching them)."""
    if sys.version_info[:2] == (3, 11):
        _run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(folder)])


def setup(runtimes: list[str]) -> None:
    """Tools, sysroot and the sites of `runtimes`, built once into the cache."""
    ensure_tools()
    build_once(CACHE / "sysroot", _debootstrap)
    build_once(CACHE / "site" / "numpy", _site_builder(NUMPY))
    for runtime in runtimes:
        build_once(CACHE / "site" / runtime, _site_builder(RUNTIMES[runtime]))


def emulated(runtime: str, args: list[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`python3.11 ARGS` on aarch64 with `runtime`'s site, through arm/python-aarch64."""
    env = {**os.environ, "EDGECOMP_ARM_CACHE": str(CACHE), "EDGECOMP_ARM_CPU": CPU}
    return _run([str(HELPER), runtime, *args], env=env, timeout=timeout, cwd=ROOT)


def verify_file(
    model: Path, runtime: str, inputs: Path, reference: Path, out: Path, min_agreement: float
) -> dict[str, Any]:
    """Predict `model` on aarch64 and compare with the x86 outputs in `reference` (the runner's own check)."""
    args = ["-m", "targets.predict", str(model), "--input", str(inputs), "--output", str(out)]
    result = emulated(runtime, [*args, "--reference", str(reference), "--min-agreement", str(min_agreement)])
    lines = result.stdout.strip().splitlines()
    if result.returncode not in (0, 1) or not lines:
        message = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgecompError(f"{model} with {runtime} on aarch64 failed (exit {result.returncode}): {message}")
    summary = json.loads(lines[-1])
    if summary["machine"] != "aarch64":
        raise EdgecompError(f"{model} ran on {summary['machine']}, not aarch64: the emulator was not used")
    return summary


def bench_ok(model: Path, runtime: str) -> dict[str, Any]:
    """Whether `python -m targets.bench` runs the file on aarch64 (its latency is emulated: not kept)."""
    result = emulated(runtime, ["-m", "targets.bench", str(model), "--json", "--threads", "1", "--runs", "2"])
    try:
        decoded = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"ok": False, "error": (result.stderr.strip().splitlines() or ["no output"])[-1]}
    return {"ok": result.returncode == 0 and decoded["device"].endswith("aarch64"), "runtime": decoded["runtime"]}


def load_test_split(run_dir: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    """The run's test split (as its recipe resolves it) as float32 NCHW and labels, and its task."""
    from compress.data import DATASETS, as_numpy
    from compress.recipe import load_recipe
    from compress.tasks import TASKS

    recipe = load_recipe(run_dir / "recipe.resolved.yaml")
    batches = list(as_numpy(DATASETS.get(recipe.data.dataset)(recipe.data).test))
    x = np.concatenate([b[0] for b in batches]).astype(np.float32)
    return x, np.concatenate([b[1] for b in batches]), TASKS.get(recipe.task)


def exported_files(run_dir: Path) -> list[Path]:
    suffixes = {spec.suffix for spec in TARGETS.values()}
    return sorted(p for p in (run_dir / "exports").glob("*/*") if p.suffix in suffixes and not p.name.startswith("."))


def precision_of(model: Path) -> str:
    """`<target>-<precision>.<suffix>`, the pipeline's export name."""
    return model.stem.rpartition("-")[2]


def check_run(run_dir: Path, runtimes: list[str], work: Path) -> dict[str, Any]:
    """Every exported file of `run_dir` on x86 and on aarch64 with each of `runtimes`: the arm.json object."""
    x, labels, task = load_test_split(run_dir)
    inputs = work / "test_x.npy"
    np.save(inputs, x)
    rows, bench, unverified = [], [], []
    for model in exported_files(run_dir):
        precision, target = precision_of(model), target_for_file(model).name
        if not any(RUNTIME_TARGET[r] == target for r in runtimes):
            unverified.append(str(model.relative_to(run_dir)))
            log(f"{unverified[-1]}: no aarch64 runtime for {target} in this lane; not verified")
            continue
        name = f"{model.parent.name}-{model.stem}"
        reference_outputs, x86_runtime = predict_file(model, x)
        reference = work / f"{name}.x86.npz"
        save_outputs(reference, reference_outputs)
        metric_x86 = task.score(reference_outputs, labels)[task.metric]
        for runtime in (r for r in runtimes if RUNTIME_TARGET[r] == target):
            start = time.perf_counter()
            out = work / f"{name}.{runtime}.npz"
            summary = verify_file(model, runtime, inputs, reference, out, MIN_AGREEMENT[precision])
            metric_arm = task.score(load_outputs(out), labels)[task.metric]
            row = {
                "candidate": model.parent.name,
                "file": str(model.relative_to(run_dir)),
                "target": target,
                "precision": precision,
                "runtime": summary["runtime"],
                "arch": ARCH,
                "x86_runtime": x86_runtime,
                "n": summary["n"],
                "top1_agreement": summary["top1_agreement"],
                "max_abs_diff": summary["max_abs_diff"],
                "metric_x86": metric_x86,
                "metric_aarch64": metric_arm,
                "min_agreement": MIN_AGREEMENT[precision],
                "verified": summary["agrees"],
            }
            rows.append(row)
            log(_row_line(row, time.perf_counter() - start))
            if not any(b["runtime_name"] == runtime and b["precision"] == precision for b in bench):
                bench.append(
                    {"runtime_name": runtime, "precision": precision, "file": row["file"], **bench_ok(model, runtime)}
                )
    return {
        "schema": 1,
        "task": task.name,
        "metric": task.metric,
        "arch": ARCH,
        "emulator": f"qemu-aarch64-static -cpu {CPU}, Debian {SUITE} arm64 sysroot, CPython 3.11",
        "x86": device_string(),
        "n": len(x),
        "rows": rows,
        "bench": bench,
        "unverified": unverified,
        "verified": bool(rows) and all(r["verified"] for r in rows) and all(b["ok"] for b in bench),
    }


def _row_line(row: dict[str, Any], seconds: float) -> str:
    verdict = "ok" if row["verified"] else f"MISMATCH (needs >= {row['min_agreement']:.0%})"
    return (
        f"{row['file']:<34} {row['runtime']:<22} top-1 agreement {row['top1_agreement']:7.2%}  "
        f"max |diff| {row['max_abs_diff']:.2e}  {verdict}  [{seconds:.0f} s emulated]"
    )


def default_run_dir() -> Path:
    """runs/quickstart when `make demo` made its exports, else a reduced quickstart run in the cache."""
    demo = ROOT / "runs" / "quickstart"
    if exported_files(demo):
        return demo
    runs = CACHE / "runs"
    log(f"no exports in {demo}: running a reduced quickstart into {runs} (a few minutes, once)")
    # Trained well enough to have the demo's margins: int8 kernels may flip near-tied top-1 classes.
    overrides = ["data.image_size=16", "train.epochs=8", "stages.1.finetune.epochs=4", "baselines.scratch=[]"]
    overrides += ["bench.runs=5", "bench.warmup=1", "bench.threads=[1]"]
    cmd = [str(Path(sys.executable).parent / "edgecomp"), "run", "quickstart", "--runs-dir", str(runs)]
    subprocess.run([*cmd, *(arg for o in overrides for arg in ("--set", o))], check=True, cwd=ROOT)
    return runs / "quickstart"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m arm.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, help="a run directory with exports/ (default: the quickstart)")
    parser.add_argument(
        "--runtimes", default=",".join(RUNTIMES), help=f"comma-separated (default: {','.join(RUNTIMES)})"
    )
    parser.add_argument("--out", type=Path, help="where to write the result (default: <run dir>/arm.json)")
    parser.add_argument("--setup-only", action="store_true", help="only build the cache (sysroot, wheel sites)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    try:
        unknown = sorted(set(runtimes) - set(RUNTIMES))
        if unknown:
            raise EdgecompError(f"unknown runtime(s) {', '.join(unknown)}; known: {', '.join(RUNTIMES)}")
        setup(runtimes)
        if args.setup_only:
            return 0
        run_dir = args.run_dir or default_run_dir()
        with tempfile.TemporaryDirectory(prefix="edgecomp-arm-") as work:
            result = check_run(run_dir, runtimes, Path(work))
    except LaneUnavailable as e:
        print(f"arm: cannot run the ARM lane here: {e}", file=sys.stderr)
        return 2
    except EdgecompError as e:
        print(f"arm: error: {e}", file=sys.stderr)
        return 1
    out = args.out or run_dir / "arm.json"
    write_json(out, {"recipe": run_dir.name, **result})
    failed = [r for r in result["rows"] if not r["verified"]] + [b for b in result["bench"] if not b["ok"]]
    log(f"{len(result['rows'])} file x runtime pairs, {len(failed)} not verified; wrote {out}")
    return 0 if result["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
