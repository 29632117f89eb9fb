"""What a latency number was measured on: the CPU and the installed runtimes.

Standard library only: a device that has nothing but numpy and one runtime reports itself too.
``{**device_info(), "runtimes": runtime_versions()}`` (`description`) is the ``device`` object of results.json;
``python -m targets.device`` prints it as JSON, which is how `targets.remote` learns what another machine is.
"""

from __future__ import annotations

import json
import os
import platform
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


def description() -> dict[str, object]:
    """{"cpu", "cores", "machine", "runtimes"}: what a latency measured here was measured on."""
    return {**device_info(), "runtimes": runtime_versions()}


if __name__ == "__main__":
    print(json.dumps(description()))
