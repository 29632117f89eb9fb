"""Timing files on another machine over SSH (`targets.remote`, `edgecomp bench --remote`, `bench.remote`),
against an sshd this module starts on 127.0.0.1 as the current user: its own host key, a client key in its
authorized_keys, its config, port and pid file in a temporary folder; no system configuration is read or
changed. Skipped, saying why, where Debian's openssh-server is not installed (.ci/run installs it)."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import INPUT_SHAPE, make_tiny_net
from test_pipeline import QUICKSTART, REDUCED

import targets
from compress.pipeline import Pipeline
from compress.recipe import load_recipe
from compress.results import Results
from compress.schema import BenchSpec, ExportSpec
from targets.base import EdgecompError, ExportRequest
from targets.device import device_info, runtime_versions
from targets.remote import Remote, RemoteSession

ROOT = Path(__file__).resolve().parents[1]
SSHD = Path("/usr/sbin/sshd")


def _skip_reason() -> str | None:
    if not SSHD.is_file():
        return f"{SSHD} is not installed (apt install openssh-server; .ci/run does)"
    if not (shutil.which("ssh") and shutil.which("ssh-keygen")):
        return "the OpenSSH client (ssh, ssh-keygen) is not installed"
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():  # sshd as root needs its privilege separation folder
        return "sshd run as root needs /run/sshd: mkdir -m 755 /run/sshd (.ci/run makes it)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(port: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.skip(f"sshd did not start: {log.read_text().strip()[-300:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.skip("sshd did not listen within 10 s")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(user@127.0.0.1, the ssh options that log in to it with the generated key)."""
    folder = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    user, port = getpass.getuser(), _free_port()
    config = [
        "ListenAddress 127.0.0.1",
        f"HostKey {folder / 'host_key'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}",
        f"PidFile {folder / 'sshd.pid'}",
        "StrictModes no",
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "AcceptEnv XDG_CACHE_HOME",
        f"AllowUsers {user}",
    ]
    (folder / "sshd_config").write_text("\n".join(config) + "\n")
    log = folder / "sshd.log"
    with log.open("w") as out:
        command = [str(SSHD), "-D", "-e", "-f", str(folder / "sshd_config"), "-p", str(port)]
        server = subprocess.Popen(command, stderr=out)
    try:
        _wait_for(port, server, log)
        options = (
            f"Port={port}",
            f"IdentityFile={folder / 'client_key'}",
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "LogLevel=ERROR",
            f"SetEnv=XDG_CACHE_HOME={folder / 'cache'}",  # the host's copy of targets/ goes here, not in ~/.cache
        )
        yield f"{user}@127.0.0.1", options
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("remote") / "tiny.onnx"
    return targets.export("onnx", make_tiny_net(), torch.zeros(INPUT_SHAPE), out, ExportRequest("fp32"))


def edgecomp(*args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": os.environ.get("HOME", "/")}
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=120, env=env)


def remote_args(sshd: tuple[str, tuple[str, ...]], python: str = sys.executable) -> list[str]:
    host, options = sshd
    return ["--remote", host, "--python", python, *(arg for option in options for arg in ("--ssh-option", option))]


def test_bench_remote_prints_the_local_fields_and_the_remote_device(sshd, onnx_file: Path) -> None:
    exact = ("--runs", "5", "--min-time", "0", "--threads", "1", "--json")  # --min-time reaches the remote side
    local = edgecomp("bench", str(onnx_file), *exact)
    remote = edgecomp("bench", str(onnx_file), *exact, *remote_args(sshd))
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr
    local_fields, remote_fields = json.loads(local.stdout), json.loads(remote.stdout)
    assert set(remote_fields) == {*local_fields, "remote"}
    assert remote_fields["latency_ms_p50"] > 0 and (remote_fields["runs"], remote_fields["threads"]) == (5, 1)
    described = remote_fields.pop("remote")
    assert described == {"host": sshd[0], **device_info(), "runtimes": runtime_versions()}  # this machine
    assert remote_fields["runtime"] == local_fields["runtime"] and remote_fields["device"] == local_fields["device"]


def test_a_session_reuses_its_copies_and_removes_its_folder(sshd, onnx_file: Path) -> None:
    remote = Remote(sshd[0], sys.executable, sshd[1])
    with RemoteSession(remote) as session:
        first, second = session.bench(onnx_file, threads=1, runs=2), session.bench(onnx_file, threads=2, runs=2)
        folder, package = Path(session._folder), Path(session._package)
        assert (first.threads, second.threads) == (1, 2) and len(list(folder.iterdir())) == 1  # one copy
        unpacked = (package / "targets" / "bench.py").stat().st_mtime_ns
    assert not folder.exists()  # the session's folder is gone; the package is kept for the next run
    with RemoteSession(remote) as session:
        assert Path(session._package) == package
    assert (package / "targets" / "bench.py").stat().st_mtime_ns == unpacked


def test_a_session_times_several_files_interleaved_there(sshd, onnx_file: Path, tmp_path: Path) -> None:
    """One command on the host loads every file and thread count and times them in rounds; a file that is not
    there fails alone, and a file no runtime there opens fails alone with the device's own message."""
    other = tmp_path / "other.onnx"
    targets.export("onnx", make_tiny_net(seed=1), torch.zeros(INPUT_SHAPE), other, ExportRequest("fp32"))
    unknown = tmp_path / "model.unknown"
    unknown.write_bytes(b"no target opens this")
    paths = [onnx_file, tmp_path / "gone.onnx", other, unknown]
    with RemoteSession(Remote(sshd[0], sys.executable, sshd[1])) as session:
        results = session.bench_interleaved(paths, [1, 2], runs=4, warmup=1, rounds=2)
    assert len(results) == 8
    for result, threads in zip([*results[:2], *results[4:6]], [1, 2, 1, 2], strict=True):
        assert not isinstance(result, EdgecompError) and (result.runs, result.threads) == (4, threads)
    assert all(isinstance(r, EdgecompError) and "gone.onnx: no such file" in str(r) for r in results[2:4])
    assert all(isinstance(r, EdgecompError) and str(r).startswith(f"{sshd[0]}: ") for r in results[6:])
    assert "no target opens '.unknown'" in str(results[6])


def _one_line_error(sshd, onnx_file: Path, *args: str, python: str = sys.executable) -> str:
    done = edgecomp("bench", str(onnx_file), "--runs", "2", *remote_args(sshd, python), *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {sshd[0]}: "), done.stderr
    return lines[0]


def test_an_unreachable_host_is_one_line(sshd, onnx_file: Path) -> None:
    closed = (sshd[0], (f"Port={_free_port()}", *(option for option in sshd[1] if not option.startswith("Port="))))
    line = _one_line_error(closed, onnx_file)
    assert "cannot log in over SSH" in line and "Connection refused" in line


def test_no_python_there_is_one_line(sshd, onnx_file: Path) -> None:
    line = _one_line_error(sshd, onnx_file, python="/nonexistent/python3")
    assert "no Python at '/nonexistent/python3'" in line and "--python PATH" in line


def test_no_runtime_there_is_the_devices_own_error(sshd, onnx_file: Path, tmp_path: Path) -> None:
    (tmp_path / "onnxruntime").mkdir()
    (tmp_path / "onnxruntime" / "__init__.py").write_text("raise ImportError('not on this device')\n")
    python = tmp_path / "python-without-onnxruntime"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="$PYTHONPATH:{tmp_path}" exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    line = _one_line_error(sshd, onnx_file, python=str(python))
    assert line.endswith("onnxruntime is not installed: pip install onnxruntime")


def test_a_benchmark_past_the_timeout_is_one_line(sshd, onnx_file: Path) -> None:
    started = time.monotonic()
    remote = Remote(sshd[0], sys.executable, sshd[1], timeout_s=0.5)
    with pytest.raises(EdgecompError) as error, RemoteSession(remote) as session:
        session.bench(onnx_file, threads=1, runs=10**8)
    assert "timing tiny.onnx took over 0.5 s" in str(error.value) and "\n" not in str(error.value)
    assert time.monotonic() - started < 30


def test_a_recipe_with_bench_remote_writes_rows_timed_there(sshd, tmp_path: Path) -> None:
    overrides = [*REDUCED, "data.image_size=8", "train.epochs=1", "baselines.scratch=[]", "bench.runs=2"]
    recipe = load_recipe(QUICKSTART, overrides)
    remote = {"remote": sshd[0], "remote_python": sys.executable, "remote_ssh_options": list(sshd[1])}
    bench = BenchSpec(**{**recipe.bench.model_dump(), **remote, "threads": [1, 2]})  # two jobs: timed interleaved
    exports = [ExportSpec(target="onnx", precision=["fp32"])]
    recipe = recipe.model_copy(update={"stages": [], "exports": exports, "bench": bench})  # the dense model alone
    run_dir = tmp_path / "q"
    Pipeline(recipe, run_dir, export_processes=1).run()

    rows = Results.load(run_dir / "results.json").rows
    timed_there = [row for row in rows if row.target == "onnx"]
    assert [(row.candidate, row.threads) for row in timed_there] == [("dense", 1), ("dense", 2)]
    runtime = f"onnxruntime {runtime_versions()['onnxruntime']}"
    expected = {"host": sshd[0], **device_info(), "runtimes": runtime_versions(), "runtime": runtime}
    assert all(row.device == expected and row.latency_ms_p50 > 0 for row in timed_there)
    assert all(row.device is None for row in rows if row.target == "pytorch")  # timed here, as results.json says
    record = json.loads((run_dir / "exports" / "dense" / "onnx-fp32.json").read_text())
    assert record["inputs"]["measured_with"]["remote"]["host"] == sshd[0]
    assert "remote" not in record["inputs"]["bench"]  # how to log in is not what the latency depends on
