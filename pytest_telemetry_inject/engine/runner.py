"""Run the engine over trees of files: scan, process in parallel, write, summarise.

Files whose whole result is in the file memo are served in this process (a warm run
starts no worker); the others go to a pool of worker processes (``engine._worker``), each
with its own engine and view of the shared cache, started from a ``WorkerSetup`` (the
refactorer the run was given included). Outputs are written atomically, keeping each
file's mode (``engine.tasks``); the vendored runtime goes where ``engine.vendoring`` says.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..record import Record
from ..runtime.vendor import write_vendored
from ..scan import VENDORED_REASON, ScanItem, scan
from ..settings import Settings
from .cache import CacheCounters, ScriptCache
from .pipeline import Engine
from .tasks import MODES as MODES
from .tasks import Done, FileProcessor
from .tasks import FileReport as FileReport
from .tasks import FileTask as FileTask
from .tasks import RunOptions as RunOptions
from .vendoring import vendored_targets_of

if TYPE_CHECKING:
    from ..types import Mode, Refactorer
    from ._worker import WorkerSetup


class RunSummary(Record):
    __slots__ = ("mode", "files", "other_files", "vendored", "errors", "elapsed", "workers", "cache_path",
                 "cache_warning", "left_out", "workers_warning")
    mode: Mode
    files: list[FileReport]
    other_files: int
    vendored: list[str]
    errors: list[str]
    elapsed: float
    workers: int
    cache_path: str
    cache_warning: str
    left_out: list[str]
    """Folders the scan left out (build output no entry point leads to), with the reason."""
    workers_warning: str
    """One line when the worker processes stopped and the files left were done here."""

    def __init__(self, mode: Mode) -> None:
        self.mode, self.files, self.other_files, self.vendored, self.errors = mode, [], 0, [], []
        self.elapsed, self.workers, self.cache_path, self.cache_warning, self.left_out = 0.0, 1, "", "", []
        self.workers_warning = ""

    def function_counts(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for report in self.files:
            total.update(report.tally[0])
        return total

    def reasons(self, status: str) -> Counter[str]:
        total: Counter[str] = Counter()
        for report in self.files:
            total.update(report.tally[1].get(status, {}))
        return total

    def counters(self) -> CacheCounters:
        total = CacheCounters()
        for report in self.files:
            total.add(report.counters)
        return total

    def to_json(self, details: bool = True) -> dict[str, Any]:
        """The summary; ``details`` adds every skipped, failed and missing function (which
        reads the function lists a warm run otherwise never decodes)."""
        counts = self.function_counts()
        counters = self.counters()
        files = Counter(r.status for r in self.files)
        functions_total = sum(counts.values())
        return {
            "format": 1,
            "mode": self.mode,
            "elapsed_s": round(self.elapsed, 4),
            "workers": self.workers,
            "workers_warning": self.workers_warning,
            "files": {"total": len(self.files), **dict(sorted(files.items())), "other": self.other_files,
                      "skipped_reasons": dict(Counter(r.reason for r in self.files if r.status == "skipped")),
                      "errors": [{"path": r.path, "reason": r.reason} for r in self.files if r.status == "error"]},
            "functions": {
                "total": functions_total,
                **dict(sorted(counts.items())),
                "skipped_reasons": dict(self.reasons("skipped")),
                "failed_reasons": dict(self.reasons("failed")),
                "per_function_ms": round(self.elapsed * 1000 / functions_total, 5) if functions_total else None,
            },
            "cache": {"path": self.cache_path, "memo_hits": counters.memo_hits,
                      "memo_misses": counters.memo_misses, "script_hits": counters.script_hits,
                      "script_misses": counters.script_misses, "corrupt_entries": counters.corrupt,
                      "write_errors": counters.write_errors, "warning": self.cache_warning},
            "vendored_modules": self.vendored,
            "left_out": self.left_out,
            "errors": self.errors,
            "skipped": [{"path": r.path, "qualname": f.qualname, "line": f.line, "reason": f.reason}
                        for r in self.files for f in r.functions if f.status in ("skipped", "failed")]
            if details else None,
            "missing": [{"path": r.path, "qualname": f.qualname, "line": f.line}
                        for r in self.files if r.tally[0].get("missing") for f in r.functions
                        if f.status == "missing"],
        }


_BATCH = 8  # files a worker processes between two appends to the cache index


class _Found:
    """The source files of a run, and the vendored runtime each one needs (by its path)."""

    def __init__(self) -> None:
        self.tasks: list[FileTask] = []
        self.vendored: dict[str, dict[str, bytes | None]] = {}


class _Collected:
    """The reports as they come in (by path), and the files that changed."""

    def __init__(self, progress: Callable[[int], Any] | None) -> None:
        self.reports: dict[str, FileReport] = {}
        self.changed: set[str] = set()
        self._progress = progress

    def add(self, tasks: Sequence[FileTask], results: Iterable[Done]) -> None:
        for task, (report, did_change) in zip(tasks, results):
            self.reports[task.display] = report
            if did_change:
                self.changed.add(task.display)
            if self._progress:
                self._progress(1)


def run(paths: Iterable[str], settings: Settings, options: RunOptions, *, project_root: Path,
        cache: ScriptCache | None = None,
        progress: Callable[[int], Any] | None = None,
        on_total: Callable[[int], Any] | None = None,
        refactorer: Refactorer | None = None) -> RunSummary:
    """Process every source file under ``paths``; ``refactorer`` (optional) is asked for the
    functions every template fails on, in this process and in the workers."""
    started = time.perf_counter()
    summary = RunSummary(options.mode)
    found = _collect(paths, settings, options, project_root, summary)
    if cache is None and settings.use_cache:
        cache = ScriptCache(project_root / settings.cache_dir)
    summary.cache_path = str(cache.root) if cache else ""
    if on_total:
        on_total(len(found.tasks))
    collected = _Collected(progress)
    processor = FileProcessor(Engine(settings, cache, refactorer=refactorer), options)
    warm = options.mode == "instrument" and cache is not None
    misses = _serve_memos(processor, found.tasks, collected) if warm else found.tasks
    summary.workers, summary.workers_warning = _process(misses, processor, cache, options, refactorer, collected)
    summary.files.extend(collected.reports[t.display] for t in found.tasks if t.display in collected.reports)
    summary.cache_warning = _cache_warning(cache, summary, options)
    if found.vendored and options.writes:
        _write_vendored(found.vendored, collected.changed, summary)
    summary.elapsed = time.perf_counter() - started
    return summary


def _collect(paths: Iterable[str], settings: Settings, options: RunOptions, project_root: Path,
             summary: RunSummary) -> _Found:
    """Scans ``paths``: a task for each source file; the other files are copied to ``-o``
    (or, stripping in place, a vendored module is removed) here."""
    exclude = [options.output_dir] if options.output_dir is not None else []
    items = scan(paths, settings, project_root=project_root, exclude_dirs=exclude)
    summary.left_out = [f"{folder} ({why})" for folder, why in getattr(items, "left_out", ())]
    found = _Found()
    vendors = settings.target == "vendored" and options.mode == "instrument"
    for item in items:
        display = str(item.path)
        destination = os.path.join(str(options.output_dir), str(item.relative)) \
            if options.output_dir is not None else display
        if item.language is None:
            _other_file(item, destination, options, summary)
            continue
        import_name = ""
        if vendors:
            import_name, targets = vendored_targets_of(item, settings, options, project_root)
            if targets:
                found.vendored.setdefault(display, targets)
        found.tasks.append(FileTask(display, destination, display, import_name))
    return found


def _serve_memos(processor: FileProcessor, tasks: list[FileTask], collected: _Collected) -> list[FileTask]:
    """Finishes here the files whose memo is there (a warm run starts no worker); returns
    the others. (Threads were tried: contention made them slower.)"""
    misses: list[FileTask] = []
    for task in tasks:
        done = processor.from_memo(task)
        if done is None:
            misses.append(task)
        else:
            collected.add([task], [done])
    return misses


def _process(tasks: list[FileTask], processor: FileProcessor, cache: ScriptCache | None, options: RunOptions,
             refactorer: Refactorer | None, collected: _Collected) -> tuple[int, str]:
    """Processes ``tasks`` in a pool of workers, or here when one would do; returns how many
    processes worked, and one line when the pool stopped and the files left were processed
    here. (The workers' module is imported only for a pool: a warm run, whose files all come
    from the memo, has no task left.)"""
    settings = processor.engine.settings
    workers = min(settings.workers(), len(tasks))
    if workers > 1:
        from . import _worker

        setup = _worker.WorkerSetup(settings, str(cache.root) if cache else None, options, refactorer, os.getpid())
        left = _in_pool(tasks, workers, setup, collected)
        if not left:
            return workers, ""
        _in_process(left, processor, collected)
        return 1, (f"the worker processes stopped before they were done, and {len(left)} of {len(tasks)} files "
                   "were processed in this one (a worker that cannot start: a script that calls pytest.main() "
                   "or the engine needs an `if __name__ == \"__main__\":` guard for its spawned workers)")
    _in_process(tasks, processor, collected)
    return 1, ""


def _in_pool(tasks: list[FileTask], workers: int, setup: WorkerSetup, collected: _Collected) -> list[FileTask]:
    """Largest files first, in batches (a worker appends to the index once per batch).
    Returns the tasks of the batches not done when the pool broke (a worker killed, or one
    that could not start), for this process to do: nothing is lost."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from . import _worker

    method = setup.options.start_method or ("fork" if sys.platform == "linux" else "spawn")
    batches = _batches(sorted(tasks, key=lambda t: _size(t.source), reverse=True), _BATCH)
    done = 0
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                 initializer=_worker.start, initargs=(setup,)) as pool:
            for batch, results in zip(batches, pool.map(_worker.process_batch, batches)):
                collected.add(batch, results)
                done += 1
    except BrokenProcessPool:
        return [task for batch in batches[done:] for task in batch]
    return []


def _in_process(tasks: list[FileTask], processor: FileProcessor, collected: _Collected) -> None:
    """In batches too, the index appended once per batch (a cache that defers already is
    flushed by whoever set it so)."""
    cache = processor.engine.cache
    deferred = cache if cache is not None and not cache.defer_index else None
    if deferred is not None:
        deferred.defer_index = True
    try:
        for batch in _batches(tasks, _BATCH):
            collected.add(batch, processor.process_batch(batch))
    finally:
        if deferred is not None:
            deferred.flush_index()
            deferred.defer_index = False


def _batches(tasks: list[FileTask], size: int) -> list[list[FileTask]]:
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]


def _cache_warning(cache: ScriptCache | None, summary: RunSummary, options: RunOptions) -> str:
    """The one line the summary says of the cache ('' when all is well)."""
    if cache is not None and cache.write_error:
        return cache.write_error
    for report in summary.files:
        if report.counters.write_errors:
            return report.cache_warning or f"the cache at {summary.cache_path} could not be written"
    if cache is not None and options.mode == "instrument":
        from . import seal

        return seal.problem()  # no key: nothing sealed, memos checked on every use
    return ""


def _write_vendored(vendored: dict[str, dict[str, bytes | None]], changed: set[str], summary: RunSummary) -> None:
    """The vendored runtime of the files that changed, each destination once."""
    wanted: dict[str, bytes | None] = {}
    for path in changed:
        wanted.update(vendored.get(path, {}))
    for destination in sorted(wanted):
        try:
            if write_vendored(destination, wanted[destination]):
                summary.vendored.append(destination)
        except OSError as exc:
            summary.errors.append(f"cannot write the vendored module {destination}: {exc.strerror or exc}")


def _other_file(item: ScanItem, destination: str, options: RunOptions, summary: RunSummary) -> None:
    """A file that is no source: copied to ``-o DIR`` as it is (a vendored module is left
    out when stripping; an in-tree symbolic link is copied as a link)."""
    summary.other_files += 1
    if options.output_dir is None or not options.writes:
        if options.mode == "strip" and options.in_place and options.writes \
                and item.skip_reason == VENDORED_REASON:
            try:
                os.unlink(item.path)
                summary.vendored.append(f"removed {item.path}")
            except OSError as exc:
                summary.errors.append(f"cannot remove {item.path}: {exc.strerror or exc}")
        return
    if options.mode == "strip" and item.skip_reason == VENDORED_REASON:
        return
    target = Path(destination)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if item.path.is_symlink():
            if item.symlink_target is not None:
                if target.is_symlink() or target.exists():
                    target.unlink()
                os.symlink(item.symlink_target, target)
            return
        import shutil

        source_stat = os.stat(item.path)
        try:
            mine = os.stat(target)
            if mine.st_size == source_stat.st_size and mine.st_mtime_ns == source_stat.st_mtime_ns:
                return  # copied before (copy2 keeps the time)
        except OSError:
            pass
        shutil.copy2(item.path, target)
    except OSError as exc:
        summary.errors.append(f"cannot copy {item.path} to {target}: {exc.strerror or exc}")


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0

