"""The state of a worker process of the runner, and nothing else: the pool starts each
worker with ``start(setup)`` and sends it batches of files (``process_batch``).

The state lives here, in one module global that only a worker sets: the runner's own
process works through a ``FileProcessor`` it holds (``engine.tasks``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ..settings import Settings
from ..types import Refactorer
from .cache import ScriptCache
from .pipeline import Engine
from .tasks import Done, FileProcessor, FileTask, RunOptions


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker starts from (it pickles: a spawned worker inherits nothing)."""

    settings: Settings
    cache_root: str | None
    options: RunOptions
    refactorer: Refactorer | None = None
    parent: int = 0
    """The runner's process id: the worker ends when that process is gone (0: never)."""


_PROCESSOR: FileProcessor | None = None


def start(setup: WorkerSetup) -> None:
    """The pool's initializer: this worker's engine, over its own view of the cache."""
    global _PROCESSOR
    if setup.parent:
        _die_with(setup.parent)
    cache = ScriptCache(setup.cache_root) if setup.cache_root else None
    if cache is not None:
        cache.defer_index = True  # flushed after each batch (FileProcessor.process_batch)
    _PROCESSOR = FileProcessor(Engine(setup.settings, cache, refactorer=setup.refactorer), setup.options)


def process_batch(tasks: list[FileTask]) -> list[Done]:
    """A batch of files, in this worker."""
    assert _PROCESSOR is not None, "a worker's batch before its start"
    return _PROCESSOR.process_batch(tasks)


def _die_with(parent: int) -> None:
    """End this worker when its parent is gone: a parent killed with SIGKILL cannot tell
    its workers, which would wait on their pipe forever (adopted by init). A daemon thread
    looks every half second (portable, unlike Linux's PR_SET_PDEATHSIG, which also fires
    when the thread that started the worker ends)."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="telemetry-inject parent watch", daemon=True).start()
