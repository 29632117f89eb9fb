"""Timing a model file on another machine over SSH, with the system's OpenSSH client.

The torch-free `targets` package is the whole device side: it is copied to the host once (kept there under
``~/.cache/edgecomp/remote/<content hash>/``, so later runs of the same code reuse it), each model file goes
into a temporary folder of the session (``mktemp -d``, removed when the session closes), and the host runs
``python -m targets.bench FILE --json``. The JSON comes back as a `BenchResult` whose ``device`` is the
host's own; `RemoteSession.description` is what ``python -m targets.device`` says there (CPU, cores,
machine, runtimes).

    with RemoteSession(Remote("pi@raspberrypi.local")) as session:
        result = session.bench(Path("runs/quickstart/exports/dense/tflite-int8.tflite"), threads=4)

ssh runs with ``BatchMode=yes`` (a host that wants a password or an unknown host key fails instead of
prompting: keys come from the user's agent or ~/.ssh/config, which ssh reads as always) and one master
connection per session (``ControlMaster``), so a run that times many files logs in once. Options the user
passes (``Remote.ssh_options``) come first on ssh's command line, and ssh keeps the first value it gets for
each option, so they win over edgecomp's. The host needs a POSIX ``sh``, ``tar``, and Python with numpy and
the file's runtime; each failure (unreachable host, refused key, no Python there, no runtime there, a
timeout) is one `EdgecompError` line that names the host and what to do.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from targets.base import EdgecompError
from targets.bench import ROUNDS, BenchResult

PACKAGE = Path(__file__).resolve().parent
CONNECT_TIMEOUT_S = 10
SETUP_TIMEOUT_S = 60  # the least any step but the benchmark gets: logging in, copying, asking the device
CACHE = '"${XDG_CACHE_HOME:-$HOME/.cache}/edgecomp/remote"'  # on the host: one folder per version of targets/
UNUSED_DAYS = 30  # versions of targets/ no run used for this long are removed from the host's cache
_OPTION = re.compile(r"^[A-Za-z][A-Za-z0-9]*=.+$")


@dataclass(frozen=True)
class Remote:
    """Where and how to time files: ``user@host`` (or a Host alias of ~/.ssh/config, or ssh://user@host:port),
    the Python to run there, extra ``ssh -o`` options (KEY=VALUE) and the seconds one benchmark may take."""

    host: str
    python: str = "python3"
    ssh_options: tuple[str, ...] = ()
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.host or self.host.startswith("-") or any(c.isspace() for c in self.host):
            raise EdgecompError(f"remote host {self.host!r}: expected user@host, a Host alias or ssh://user@host:port")
        wrong = [option for option in self.ssh_options if not _OPTION.match(option)]
        if wrong:
            raise EdgecompError(f"ssh option {wrong[0]!r}: expected KEY=VALUE, e.g. Port=2222, IdentityFile=~/.ssh/pi")
        if not self.python.strip() or self.timeout_s <= 0:
            raise EdgecompError(f"remote python {self.python!r} and timeout {self.timeout_s} s: need a path and > 0")


class RemoteSession:
    """One SSH session with a host: its master connection, its copy of `targets` and its temporary folder."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self.description: dict[str, Any] = {}  # {"host", "cpu", "cores", "machine", "runtimes"}, once open
        self._local: Path | None = None  # the control socket's folder
        self._package = ""  # the host's copy of targets/ (the PYTHONPATH entry)
        self._folder = ""  # the session's temporary folder on the host
        self._uploaded: dict[str, str] = {}  # local file's content hash -> its path on the host

    def __enter__(self) -> RemoteSession:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Log in (one master connection), copy `targets` where this version is not there yet, make the
        session's folder, and ask the host what it is."""
        self._local = Path(tempfile.mkdtemp(prefix="ec-ssh-"))  # short: a socket path has ~100 characters
        try:
            self._ssh(["-N", "-f"], None, SETUP_TIMEOUT_S, master=True)
            digest, archive = package_archive()
            said = self._run(setup_script(digest, self.remote.python), archive, "setting up").splitlines()
            found = dict(line.partition("=")[::2] for line in said if line.startswith(("session=", "package=")))
            self._folder, self._package = found.get("session", ""), found.get("package", "")
            self.description = {"host": self.remote.host, **self._json(said, "setting up")}
        except BaseException:
            self.close()
            raise

    def bench(
        self,
        path: Path,
        threads: int | None = None,
        runs: int = 100,
        warmup: int = 10,
        time_budget_s: float | None = None,
        batch: int | None = None,
        shape: str | None = None,
        postprocess: str = "auto",
        min_time_s: float | None = None,
    ) -> BenchResult:
        """`python -m targets.bench` on the host, on a copy of `path` (and of its .bin, for an OpenVINO .xml);
        the arguments are that command's (threads None: all the host's cores)."""
        remote_path = self._upload(Path(path))
        args = [remote_path, "--json", "--runs", str(runs), "--warmup", str(warmup), "--postprocess", postprocess]
        options = {"--threads": threads, "--time-budget": time_budget_s, "--batch": batch, "--min-time": min_time_s}
        for flag, value in options.items():
            if value is not None:
                args += [flag, str(value)]
        if shape:
            args += ["--shape", shape]
        command = self._python_command("targets.bench", args)
        output = self._run(command, None, f"timing {Path(path).name}", self.remote.timeout_s)
        data = self._json(output.splitlines(), f"timing {Path(path).name}")
        return _bench_result(data)

    def bench_interleaved(
        self, paths: list[Path], threads: list[int], runs: int = 100, warmup: int = 10, rounds: int = ROUNDS
    ) -> list[BenchResult | EdgecompError]:
        """Every file of `paths` with every thread count of `threads` (in that order, file by file), loaded together
        on the host and timed there in interleaved rounds (`python -m targets.bench` of several files, see
        `targets.bench.interleave`). Each result is a `BenchResult` or the error that one job met (a file that
        did not copy or load, no runtime for it there) or the whole command met (every job then has it); the host's
        time limit is the session's timeout per file and thread count."""
        results: dict[tuple[int, int], BenchResult | EdgecompError] = {}
        uploaded: dict[int, str] = {}  # index in paths -> the copy on the host
        for index, path in enumerate(paths):
            try:
                uploaded[index] = self._upload(Path(path))
            except EdgecompError as error:
                results.update(((index, count), error) for count in threads)
        jobs = [(index, count) for index in uploaded for count in threads]
        counts = ",".join(map(str, threads))
        args = [*uploaded.values(), "--json", "--threads", counts, "--runs", str(runs), "--warmup", str(warmup)]
        try:
            lines = self._bench_lines([*args, "--rounds", str(rounds)], len(jobs)) if jobs else []
            timed = [
                EdgecompError(f"{self.remote.host}: {x['error']}") if "error" in x else _bench_result(x) for x in lines
            ]
        except EdgecompError as error:
            timed = [error for _ in jobs]
        results.update(zip(jobs, timed, strict=True))
        return [results[index, count] for index in range(len(paths)) for count in threads]

    def _bench_lines(self, args: list[str], count: int) -> list[dict[str, Any]]:
        """The last `count` JSON lines `python -m targets.bench ARGS` prints on the host (with several jobs, exit 2
        says some failed, and their lines say why)."""
        doing = f"timing {count} file(s) and thread count(s), {self.remote.timeout_s:g} s each"
        limit = self.remote.timeout_s * count
        script = self._python_command("targets.bench", args, limit)
        done = self._ssh([], f"sh -c {shlex.quote(script)}", limit, None, doing, check=False)
        lines = [line for line in done.stdout.decode(errors="replace").splitlines() if line.strip()][-count:]
        if len(lines) == count and (done.returncode == 0 or (done.returncode == 2 and count > 1)):
            return [self._json([line], doing) for line in lines]
        raise EdgecompError(self._failure(done, doing))

    def close(self) -> None:
        """Remove the session's folder on the host and end the master connection (each at most once)."""
        if self._local is None:
            return
        try:
            if self._folder:
                self._ssh([], f"rm -rf {shlex.quote(self._folder)}", SETUP_TIMEOUT_S, check=False)
            self._ssh(["-O", "exit"], None, SETUP_TIMEOUT_S, check=False)
        finally:
            shutil.rmtree(self._local, ignore_errors=True)
            self._local, self._folder = None, ""

    # -- the steps -------------------------------------------------------------------------------------

    def _json(self, lines: list[str], doing: str) -> dict[str, Any]:
        """The JSON object a command printed last (a login script may print before it)."""
        last = next((line for line in reversed(lines) if line.strip()), "")
        try:
            data = json.loads(last)
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise EdgecompError(f"{self.remote.host}: {doing} printed {last[:200]!r}, not the JSON expected")
        return data

    def _upload(self, path: Path) -> str:
        """Copy `path` (and an .xml's .bin) into the session's folder once; its path on the host."""
        files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise EdgecompError(f"{missing[0]}: no such file" + (" (an OpenVINO .xml needs it)" * (len(files) > 1)))
        digest = hashlib.sha256(b"".join(file_digest(f) for f in files)).hexdigest()[:16]
        if digest not in self._uploaded:
            folder = f"{self._folder}/{digest}"
            archive = tar_bytes({f.name: f for f in files}, compress=False)
            script = f"mkdir -p {shlex.quote(folder)} && tar -xf - -C {shlex.quote(folder)}"
            self._run(script, archive, f"copying {path.name}")
            self._uploaded[digest] = f"{folder}/{path.name}"
        return self._uploaded[digest]

    def _python_command(self, module: str, args: list[str], timeout_s: float | None = None) -> str:
        """The host's Python running `module` of its copy of targets, stopped there by `timeout` (where the
        host has it) when the benchmark runs past `timeout_s` (default: the session's limit)."""
        seconds = math.ceil(timeout_s or self.remote.timeout_s)
        run = f"env PYTHONPATH={shlex.quote(self._package)} {shlex.quote(self.remote.python)} -m {module}"
        limit = f"if command -v timeout >/dev/null 2>&1; then set -- timeout -s KILL {seconds}; else set --; fi"
        return f'{limit}; cd {shlex.quote(self._folder)} && exec "$@" {run} {shlex.join(args)}'

    def _run(self, script: str, stdin: bytes | None, doing: str, timeout_s: float | None = None) -> str:
        """`script` through the host's sh; its stdout, or one `EdgecompError` line that says what failed."""
        limit = timeout_s or max(self.remote.timeout_s, SETUP_TIMEOUT_S)
        done = self._ssh([], f"sh -c {shlex.quote(script)}", limit, stdin, doing)
        return done.stdout.decode(errors="replace")

    def _ssh(
        self,
        flags: list[str],
        command: str | None,
        timeout_s: float,
        stdin: bytes | None = None,
        doing: str = "connecting",
        check: bool = True,
        master: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        """ssh to the host through the session's master connection (`master`: start it; it ends by itself
        after five idle minutes if this process dies without closing the session)."""
        assert self._local is not None, "RemoteSession.open() first"
        options = [*self.remote.ssh_options, "BatchMode=yes", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
        options += [f"ControlPath={self._local / 'master'}"]  # the first value given wins: the user's first
        options += ["ControlMaster=yes", "ControlPersist=300"] if master else ["ControlMaster=no"]
        argv = ["ssh", *(arg for option in options for arg in ("-o", option)), *flags, "--", self.remote.host]
        argv += [command] if command else []
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise EdgecompError(
                f"{self.remote.host}: {doing} took over {timeout_s:g} s; raise the timeout (--timeout, "
                "bench.remote_timeout in a recipe) or time fewer runs"
            ) from None
        except FileNotFoundError:
            raise EdgecompError("ssh: not found; install the OpenSSH client (apt install openssh-client)") from None
        if check and done.returncode != 0:
            raise EdgecompError(self._failure(done, doing))
        return done

    def _failure(self, done: subprocess.CompletedProcess[bytes], doing: str) -> str:
        """One line for a failed ssh command, from its exit status and the last line it wrote to stderr."""
        host, python, code = self.remote.host, self.remote.python, done.returncode
        lines = [line.strip() for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
        last = lines[-1] if lines else "no message"
        if code == 255:
            return (
                f"{host}: cannot log in over SSH ({last}); check that `ssh {host}` logs in without a prompt "
                "(a key in your agent or ~/.ssh/config; --ssh-option for a port or a key file)"
            )
        if code in (126, 127):  # the shell's "not found" and "cannot execute"
            return f"{host}: no Python at {python!r} there ({last}); pass --python PATH (bench.remote_python)"
        if code == 137 and doing.startswith("timing"):  # killed by the host's `timeout -s KILL`
            return (
                f"{host}: {doing} took over {self.remote.timeout_s:g} s; raise the timeout (--timeout, "
                "bench.remote_timeout in a recipe) or time fewer runs"
            )
        if last.startswith("error: "):  # targets.bench's own EdgecompError (no runtime there, a bad file, ...)
            return f"{host}: {last.removeprefix('error: ')}"
        return (
            f"{host}: {doing} failed with {python} (exit {code}: {last}); that Python needs numpy and the file's "
            "runtime (pip install numpy onnxruntime, ...), or pass --python PATH"
        )


def _bench_result(data: dict[str, Any]) -> BenchResult:
    """`python -m targets.bench --json`'s object as a `BenchResult` (keys a later version adds are left out)."""
    return BenchResult(**{field.name: data[field.name] for field in fields(BenchResult) if field.name in data})


def setup_script(digest: str, python: str) -> str:
    """Shell for the host: unpack targets/ from stdin into the cache unless this version is there, make the
    session's folder, print it and the package's folder, then what ``python -m targets.device`` says."""
    folder = f"{CACHE}/{digest}"
    return "\n".join(
        [
            "set -e",
            f"P={folder}",
            'if [ -d "$P/targets" ]; then cat >/dev/null; else',
            f'  mkdir -p {CACHE}; T=$(mktemp -d "$P.XXXXXX"); tar -xzf - -C "$T"',
            '  [ -d "$P" ] || mv "$T" "$P"; rm -rf "$T"',
            "fi",
            f'touch "$P"; find {CACHE} -mindepth 1 -maxdepth 1 -mtime +{UNUSED_DAYS} -exec rm -rf {{}} + || true',
            'S=$(mktemp -d "${TMPDIR:-/tmp}/edgecomp.XXXXXX")',
            'echo "session=$S"; echo "package=$P"; cd "$S"',
            f'env PYTHONPATH="$P" {shlex.quote(python)} -m targets.device || {{ c=$?; rm -rf "$S"; exit $c; }}',
        ]
    )


def package_archive() -> tuple[str, bytes]:
    """The `targets` package as a gzipped tar (its .py files under targets/) and a hash of its content."""
    files = {f"targets/{path.relative_to(PACKAGE)}": path for path in sorted(PACKAGE.rglob("*.py"))}
    digest = hashlib.sha256(b"".join(name.encode() + file_digest(path) for name, path in files.items()))
    return digest.hexdigest()[:16], tar_bytes(files, compress=True)


def tar_bytes(files: dict[str, Path], compress: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w", format=tarfile.USTAR_FORMAT) as archive:
        for name, path in files.items():
            archive.add(path, arcname=name, recursive=False)
    return buffer.getvalue()


def file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()
