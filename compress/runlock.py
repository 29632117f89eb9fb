"""One run at a time per run directory.

Two runs writing the same stages would interleave their checkpoints, so `edgecomp run` holds an
exclusive `flock` on ``<run dir>/.lock`` for as long as it runs. The kernel drops the lock when the
process dies, however it dies (SIGKILL included), so a killed run never leaves a stale lock behind:
the file stays, the lock does not. The holder writes its PID into the file so that a refused run can
say who holds it.

Once the lock is held no other edgecomp process writes in the directory, so the temporary files a
killed run left behind (``.tmp-<pid>-<name>``, see `targets.fileio`) are removed then.

>>> with run_lock(Path("runs/quickstart")):
...     Pipeline(recipe, Path("runs/quickstart")).run()
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from targets.base import EdgecompError

LOCK_NAME = ".lock"
TEMP_GLOB = ".tmp-*"


def _holder(handle) -> str:
    handle.seek(0)
    pid = handle.read().strip()
    return f"PID {pid}" if pid.isdigit() else "another process (PID not yet written)"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Create `run_dir` if needed and hold its lock for the block; refuse at once if another run holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_NAME, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EdgecompError(
                f"{run_dir} is in use by another edgecomp run ({_holder(handle)}); wait for it to finish "
                "or stop it, or use another --runs-dir"
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        remove_stale_temporaries(run_dir)
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the half-written temporaries of killed runs (call only while holding the lock)."""
    stale = sorted(path for path in Path(run_dir).rglob(TEMP_GLOB) if path.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
