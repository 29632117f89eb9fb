"""Worker processes that never outlive the edgecomp process that started them.

A `ProcessPoolExecutor` worker waits on its call queue, and with the spawn start method it holds that queue's
writing end too: when its parent is killed outright (SIGKILL, the out-of-memory killer) the read never ends, and
the orphan keeps its memory, a model or a converter, and the parent's stdout and stderr, for ever. A caller
reading those pipes to their end (a shell's ``$(edgecomp ...)``, a test's ``communicate()``) then hangs too.
Each worker here watches its parent and leaves when it is gone.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

PARENT_POLL_S = 0.5


def spawned_pool(
    processes: int, initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()
) -> ProcessPoolExecutor:
    """A pool of `processes` spawned workers (fork is unsafe beside torch's and the runtimes' threads) that each
    run `initializer(*initargs)` and exit when this process is gone."""
    return ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init,
        initargs=(os.getpid(), initializer, initargs),
    )


def _init(parent: int, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="edgecomp-parent-watch").start()
    if initializer is not None:
        initializer(*initargs)


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)
