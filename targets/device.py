"""What a latency number was measured on: the CPU and the installed runtimes.

Standard library only: a device that has nothing but numpy and one runtime reports itself too.
``{**device_info(), "runtimes": runtime_versions()}`` (`description`) is the ``device`` object of results.json;
``python -m targets.device`` prints it as JSON, which is how `targets.remote` learns what another machine is.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

# Distribution name -> the name edgecomp reports it under (its import name).
_RUNTIMES = {
    "ai-edge-litert": "ai_edge_litert",
    "tflite-runtime": "tflite_runtime",
    "openvino": "openvino",
    "onnxruntime": "onnxruntime",
}
# /proc/cpuinfo keys that name the CPU: x86, Raspberry Pi and other ARM boards, MIPS/others.
_CPUINFO_KEYS = ("model name", "Model", "Hardware", "cpu model")


def cpu_model() -> str:
    """The CPU's marketing name, e.g. "AMD EPYC 7B13" or "Raspberry Pi 4 Model B Rev 1.4"."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines)}
    except OSError:  # not Linux
        fields = {}
    for key in _CPUINFO_KEYS:
        if fields.get(key):
            return fields[key]
    return platform.processor() or platform.machine() or "unknown CPU"


def device_info() -> dict[str, str | int]:
    """{"cpu": model name, "cores": logical cores, "machine": architecture}."""
    return {"cpu": cpu_model(), "cores": os.cpu_count() or 1, "machine": platform.machine()}


def device_string() -> str:
    """One line for a table: "AMD EPYC 7B13, 2 cores, x86_64"."""
    info = device_info()
    return f"{info['cpu']}, {info['cores']} cores, {info['machine']}"


def runtime_versions() -> dict[str, str]:
    """Installed runtimes and their versions, read from package metadata without importing them."""
    return installed_versions(_RUNTIMES)


def installed_versions(names: Mapping[str, str] | Iterable[str]) -> dict[str, str]:
    """{name: version} of the installed distributions among `names` (a mapping renames them), from package
    metadata, without importing them; absent ones are left out."""
    renamed = names if isinstance(names, Mapping) else {name: name for name in names}
    versions = {}
    for dist, name in renamed.items():
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


# CPU other processes used while a benchmark timed, in cores, above which its figures are indicative: with
# 2 threads on 2 cores, p50s then mix a free and a busy machine (a file's median flips between the two).
BUSY_CORES = 0.25


class OtherProcesses:
    """The CPU other processes use from now on, in cores (Linux): the machine's busy time (/proc/stat) less this
    process's and its waited-for children's (e.g. benchmark_app). A load average would count our own threads."""

    def __init__(self) -> None:
        self.start = (time.monotonic(), self._machine_busy_s(), self._own_s())

    @staticmethod
    def _machine_busy_s() -> float:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle, iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is inside user already

    @staticmethod
    def _own_s() -> float:
        times = os.times()
        return times.user + times.system + times.children_user + times.children_system

    def cores(self) -> float:
        wall, busy, own = self.start
        elapsed = time.monotonic() - wall
        return max(0.0, (self._machine_busy_s() - busy) - (self._own_s() - own)) / elapsed if elapsed > 0 else 0.0


def description() -> dict[str, object]:
    """{"cpu", "cores", "machine", "runtimes"}: what a latency measured here was measured on."""
    return {**device_info(), "runtimes": runtime_versions()}


if __name__ == "__main__":
    print(json.dumps(description()))
