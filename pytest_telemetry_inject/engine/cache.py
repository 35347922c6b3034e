"""The cache folder (``.telemetry_cache/`` by default).

Layout::

    CACHEDIR.TAG, .gitignore           (so backups and git leave it alone)
    scripts/<language>/<xx>/<sha256>.py  insertion scripts, named by the sha256 of their text
    tests/<language>/test_<stem>_<key>.py  generated tests: one module per source file
    metadata/index/<xx>.jsonl          function index: key -> script, test, edits, status
    metadata/files/<xx>/<key>          file memos: whole-file results

Keys are sha256 digests of content and settings, never of mtimes, so a cache travels
between CI machines. Every write is safe with concurrent writers and a kill at any moment:
memos and test modules are written to a temporary name and ``os.replace``-d; a script is
created in place (its name is the sha256 of its text, which every reader checks); index
records are appended, one line each (``<crc32> <JSON array>``), under a ``filelock``. A
reader that finds a truncated or damaged line, a memo whose content does not match its
crc32, or a script whose text no longer matches its name ignores it, and the engine
rebuilds it.

A cache that cannot be written (a read-only tree) is still read; failed writes are
counted, never raised.

Format versions (``CACHE_FORMAT``):
    1: first format.
    2: index lines are ``<crc32> <JSON array>``; a memo's crc32 also covers the lengths in
       its first line.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .. import __version__
from ..errors import CacheError
from ..sourcefile import read_bytes, write_atomic

CACHE_FORMAT = 2
LOCK_TIMEOUT = 60.0
STALE_TEMP_SECONDS = 3600.0
_TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
        "# This file is a cache directory tag created by pytest-telemetry-inject.\n"
        "# For information about cache directory tags, see https://bford.info/cachedir/\n")


@dataclass
class IndexEntry:
    """What the index knows of one function key."""

    key: str
    status: str
    """``ok`` (a validated script) or ``failed`` (no template works; ``reason`` says why)."""
    template: str = ""
    script: str = ""
    language: str = ""
    qualname: str = ""
    origin: str = "template"
    edits: list | None = None
    reason: str = ""
    version: str = __version__

    def to_line(self) -> bytes:
        """One index line: the crc32 of the JSON record, a space, the record."""
        record = json.dumps([self.key, self.status, self.template, self.script, self.language, self.qualname,
                             self.origin, self.edits, self.reason, self.version],
                            separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
        return b"%08x %s" % (zlib.crc32(record), record)

    @classmethod
    def from_line(cls, line: bytes) -> "IndexEntry":
        """The entry of an index line; ValueError for a damaged or truncated one."""
        if line[8:9] != b" " or int(line[:8], 16) != zlib.crc32(line[9:]):
            raise ValueError("damaged index line")
        key, status, template, script, language, qualname, origin, edits, reason, version = json.loads(line[9:])
        return cls(key, status, template, script, language, qualname, origin, edits, reason, version)


@dataclass
class CacheCounters:
    memo_hits: int = 0
    memo_misses: int = 0
    script_hits: int = 0
    script_misses: int = 0
    corrupt: int = 0
    write_errors: int = 0

    def add(self, other: "CacheCounters") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Memo:
    header: dict[str, Any]
    sections: list[bytes]
    """Raw parts the reader decodes only if it needs them (function lists, line maps)."""
    payload: bytes


MEMO_MAGIC = b"TI-MEMO"
_LASTING_ERRORS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EACCES, errno.EPERM}


class ScriptCache:
    """One cache folder. Cheap to create; loads index shards only when asked."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.counters = CacheCounters()
        self._shards: dict[str, dict[str, IndexEntry]] = {}
        self._verified: set[str] = set()
        self._made: set[str] = set()
        self._layout_ready = False
        self._filelock: Any = None
        # Index lines not yet appended (see ``defer_index``): shard prefix -> lines; and the
        # memos written after them: (path, bytes).
        self._pending: dict[str, list[bytes]] = {}
        self._pending_memos: list[tuple[str, bytes]] = []
        self.defer_index = False
        """Keep new index lines and memos in memory until ``flush_index()`` (the runner's
        workers flush after each batch of files: one lock and one append per shard instead
        of one per file and shard). The memos are written after the index lines, so a memo
        always has its functions in the index; what a kill before the flush loses (scripts
        are written at once) is recomputed by the next run."""
        self.writable = True
        self.write_error = ""
        if self.root.exists() and not self.root.is_dir():
            raise CacheError(f"the cache path {self.root} exists and is not a folder")

    # -- paths -----------------------------------------------------------------------------
    # Plain strings and os.path on purpose: this is the hot path of a cold run.

    def script_path(self, language: str, sha: str) -> str:
        # Sharded by the first two hex digits, like git's objects: creating tens of
        # thousands of files in one folder is several times slower.
        return os.path.join(self.root, "scripts", language, sha[:2], sha + ".py")

    def test_module_path(self, language: str, name: str) -> str:
        return os.path.join(self.root, "tests", language, name)

    # -- generated tests that passed -------------------------------------------------------

    def _checked_path(self, test_module: str) -> str:
        return os.path.join(self.root, "metadata", "checked", test_module + ".keys")

    def checked(self, test_module: str) -> set[str]:
        """The keys (``ScriptCheck.key``) of the cases of a generated test module that passed."""
        try:
            data = read_bytes(self._checked_path(test_module))
        except OSError:
            return set()
        return {line for line in data.decode("ascii", "replace").split("\n") if len(line) == 64}

    def add_checked(self, test_module: str, keys: Iterable[str]) -> None:
        """Remember that these cases passed; a damaged record only means they run again."""
        path = self._checked_path(test_module)
        known = self.checked(test_module) | set(keys)
        try:
            self._ensure_dir(os.path.dirname(path))
            write_atomic(path, "\n".join(sorted(known)).encode("ascii") + b"\n", mode=0o644)
        except OSError as exc:
            self._write_failed(exc)

    def _shard_path(self, key: str) -> str:
        return os.path.join(self.root, "metadata", "index", key[:2] + ".jsonl")

    def _memo_path(self, key: str) -> str:
        return os.path.join(self.root, "metadata", "files", key[:2], key)

    def _lock(self) -> Any:
        if self._filelock is None:
            from filelock import FileLock

            self._filelock = FileLock(os.path.join(self.root, "metadata", "index.lock"), timeout=LOCK_TIMEOUT)
        return self._filelock

    # -- writing helpers -------------------------------------------------------------------

    def _ensure_layout(self) -> bool:
        if not self.writable:
            return False
        if self._layout_ready:
            return True
        try:
            os.makedirs(os.path.join(self.root, "metadata", "index"), exist_ok=True)
            # Each checked on its own: a kill between the two writes must not lose one for good.
            ignore = os.path.join(self.root, ".gitignore")
            if not os.path.exists(ignore):
                write_atomic(ignore, b"# Created by pytest-telemetry-inject.\n*\n")
            tag = os.path.join(self.root, "CACHEDIR.TAG")
            if not os.path.exists(tag):
                write_atomic(tag, _TAG.encode())
        except OSError as exc:
            self._write_failed(exc)
            return False
        self._layout_ready = True
        return True

    def _ensure_dir(self, folder: str) -> None:
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)

    def _write_failed(self, exc: OSError) -> None:
        self.counters.write_errors += 1
        if not self.write_error:
            self.write_error = f"cannot write the cache at {self.root}: {exc.strerror or exc}"
        if isinstance(exc, PermissionError) or exc.errno in _LASTING_ERRORS:
            self.writable = False  # no use trying again for every file

    def _write_file(self, path: str, text: str) -> bool:
        try:
            self._ensure_dir(os.path.dirname(path))
            write_atomic(path, text.encode("utf-8", "surrogatepass"), mode=0o644)
            return True
        except OSError as exc:
            self._write_failed(exc)
            return False

    # -- the function index ----------------------------------------------------------------

    def _shard(self, key: str) -> dict[str, IndexEntry]:
        prefix = key[:2]
        shard = self._shards.get(prefix)
        if shard is None:
            shard = self._shards[prefix] = self._read_shard(self._shard_path(key))
        return shard

    def _read_shard(self, path: str | Path) -> dict[str, IndexEntry]:
        entries: dict[str, IndexEntry] = {}
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            return entries
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                entry = IndexEntry.from_line(raw)
            except (ValueError, KeyError, TypeError, AttributeError):
                self.counters.corrupt += 1
                continue
            entries[entry.key] = entry
        return entries

    def lookup(self, key: str) -> IndexEntry | None:
        """The entry for ``key``; for an ``ok`` entry only when its script and test files are
        intact (a missing or tampered file makes it a miss, so it is rebuilt)."""
        entry = self._shard(key).get(key)
        if entry is None or entry.version != __version__:
            return None
        if entry.status == "ok" and not self._intact(entry):
            self.counters.corrupt += 1
            return None
        return entry

    def _intact(self, entry: IndexEntry) -> bool:
        if entry.script in self._verified:
            return True
        try:
            with open(self.script_path(entry.language, entry.script), "rb") as handle:
                data = handle.read()
        except OSError:
            return False
        if hashlib.sha256(data).hexdigest() != entry.script:
            return False
        self._verified.add(entry.script)
        return True

    def _write_script(self, language: str, sha: str, text: str) -> bool:
        """Scripts are named by their content's sha256, so they are created in place (no
        temporary file): a torn write is caught by the check on every read, and then the
        file is replaced atomically."""
        path = self.script_path(language, sha)
        data = text.encode("utf-8", "surrogatepass")
        try:
            self._ensure_dir(os.path.dirname(path))
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                with open(path, "rb") as handle:
                    if hashlib.sha256(handle.read()).hexdigest() == sha:
                        return True
                write_atomic(path, data, mode=0o644)
                return True
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            return True
        except OSError as exc:
            self._write_failed(exc)
            return False

    def store(self, entries: Iterable[IndexEntry], scripts: dict[str, str] | None = None,
              test_module: tuple[str, str, str] | None = None) -> None:
        """Write new scripts (sha -> text), a generated test module (language, name, text)
        and append the entries to the index."""
        batch = list(entries)
        if not (batch or test_module) or not self._ensure_layout():
            return
        by_sha = {e.script: e.language for e in batch if e.script}
        for sha, text in (scripts or {}).items():
            if sha not in self._verified:
                if not self._write_script(by_sha.get(sha, "python"), sha, text):
                    return
                self._verified.add(sha)
        if test_module is not None:
            language, name, text = test_module
            if not self._write_file(self.test_module_path(language, name), text):
                return
        if not batch:
            return
        lines = self._pending
        for entry in batch:
            lines.setdefault(entry.key[:2], []).append(entry.to_line())
            self._shard(entry.key)[entry.key] = entry
        if not self.defer_index:
            self.flush_index()

    def flush_index(self) -> None:
        """Append the pending index lines, then write the pending memos (see ``defer_index``)."""
        lines, self._pending = self._pending, {}
        memos, self._pending_memos = self._pending_memos, []
        if lines and self._ensure_layout():
            self._append_index(lines)
        for path, data in memos:
            self._write_memo(path, data)

    def _append_index(self, lines: dict[str, list[bytes]]) -> None:
        try:
            with self._lock():
                for prefix, records in lines.items():
                    # A leading newline keeps a line cut short by a kill from swallowing this one.
                    chunk = b"\n" + b"\n".join(records) + b"\n"
                    fd = os.open(self._shard_path(prefix), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                    try:
                        os.write(fd, chunk)
                    finally:
                        os.close(fd)
        except OSError as exc:
            self._write_failed(exc)
        except Exception as exc:  # filelock.Timeout
            self.counters.write_errors += 1
            self.write_error = self.write_error or f"cannot lock the cache index: {exc}"

    # -- file memos ------------------------------------------------------------------------

    def read_memo(self, key: str) -> tuple[Memo | None, bool]:
        """(the memo or None, whether one was there but damaged). Touches no counter, so
        threads may call it."""
        try:
            data = read_bytes(self._memo_path(key))
        except OSError:
            return None, False
        memo = _decode_memo(data)
        return memo, memo is None

    def get_memo(self, key: str) -> Memo | None:
        memo, damaged = self.read_memo(key)
        if memo is None:
            self.counters.memo_misses += 1
            self.counters.corrupt += damaged
        else:
            self.counters.memo_hits += 1
        return memo

    def drop_memo(self, key: str) -> None:
        """Forget a file's memo, so its next run rebuilds (and revalidates) it."""
        try:
            os.unlink(self._memo_path(key))
        except OSError:
            pass

    def put_memo(self, key: str, header: dict[str, Any], sections: list[bytes], payload: bytes) -> None:
        """Layout: one line ``TI-MEMO <format> <crc32> <header length> <section lengths>``,
        then the header JSON, the sections and the payload. The crc32 covers the lengths and
        everything after the first line, so a torn or damaged memo is never used (a sha256
        would cost ten times as much on a warm run, and protects no better against someone
        who can write the cache)."""
        if not self._ensure_layout():
            return
        head = json.dumps(dict(header, version=__version__), separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8", "surrogatepass")
        body = b"".join([head, *sections, payload])
        lengths = (",".join(str(len(part)) for part in sections) or "-").encode()
        shape = b"%d %s" % (len(head), lengths)
        first = b"%s %d %08x %s\n" % (MEMO_MAGIC, CACHE_FORMAT, zlib.crc32(shape + b"\n" + body), shape)
        if self.defer_index:
            self._pending_memos.append((self._memo_path(key), first + body))
        else:
            self._write_memo(self._memo_path(key), first + body)

    def _write_memo(self, path: str, data: bytes) -> None:
        try:
            self._ensure_dir(os.path.dirname(path))
            write_atomic(path, data, mode=0o644)
        except OSError as exc:
            self._write_failed(exc)

    # -- maintenance -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts and sizes of everything in the cache (and how much of the index is damaged)."""
        result: dict[str, Any] = {"path": str(self.root), "format": CACHE_FORMAT, "exists": self.root.is_dir()}
        counts = {"scripts": 0, "tests": 0, "memos": 0, "temp_files": 0}
        size = 0
        for folder, kind in (("scripts", "scripts"), ("tests", "tests"), ("metadata/files", "memos")):
            for path in _files(self.root / folder):
                size += _size(path)
                counts["temp_files" if path.name.startswith(".ti-") else kind] += 1
        entries = ok = failed = 0
        before = self.counters.corrupt
        for path in _files(self.root / "metadata" / "index"):
            if path.suffix != ".jsonl":
                continue
            size += _size(path)
            shard = self._read_shard(path)
            entries += len(shard)
            ok += sum(1 for e in shard.values() if e.status == "ok")
            failed += sum(1 for e in shard.values() if e.status == "failed")
        result.update(counts, index_entries=entries, index_ok=ok, index_failed=failed,
                      index_corrupt_lines=self.counters.corrupt - before, bytes=size)
        return result

    def clear(self) -> int:
        """Remove everything in the cache; the number of files removed."""
        if not self.root.is_dir():
            return 0
        lock = self.root / "metadata" / "index.lock"
        removed = sum(1 for path in _files(self.root) if path != lock)
        with self._lock():
            for child in list(self.root.iterdir()):
                if child.name in ("metadata",):
                    for sub in list(child.iterdir()):
                        if sub.name != "index.lock":
                            _remove(sub)
                else:
                    _remove(child)
        self._shards.clear()
        self._verified.clear()
        self._made.clear()
        self._layout_ready = False
        return removed

    def prune(self, *, max_age_days: float = 30.0) -> dict[str, int]:
        """Delete memos of other versions or unused for ``max_age_days``; compact the index
        (drop damaged lines, duplicates and entries of other versions); delete the scripts
        and test modules nothing uses any more, and temporary files left by killed writers."""
        summary = {"memos_removed": 0, "index_lines_dropped": 0, "scripts_removed": 0,
                   "tests_removed": 0, "temp_files_removed": 0}
        if not self.root.is_dir():
            return summary
        now = time.time()

        def stale_temp(path: Path) -> bool:
            if not path.name.startswith(".ti-"):
                return False
            if now - _mtime(path) > STALE_TEMP_SECONDS:
                _remove(path)
                summary["temp_files_removed"] += 1
            return True

        with self._lock():
            used_scripts: set[str] = set()
            used_tests: set[str] = set()
            for path in _files(self.root / "metadata" / "files"):
                if stale_temp(path):
                    continue
                age = now - _atime(path)  # before reading it: a read refreshes the access time
                memo = _read_memo(path)
                scripts = _memo_scripts(memo) if memo is not None else None
                if scripts is None or age > max_age_days * 86400:
                    _remove(path)
                    summary["memos_removed"] += 1
                    continue
                used_tests.add(memo.header.get("tests") or "")
                used_scripts.update(scripts)
            for path in _files(self.root / "metadata" / "index"):
                if path.suffix != ".jsonl":
                    continue
                lines = sum(1 for raw in path.read_bytes().split(b"\n") if raw.strip())
                keep = {k: e for k, e in self._read_shard(path).items() if e.version == __version__}
                used_scripts.update(e.script for e in keep.values() if e.status == "ok")
                body = b"".join(e.to_line() + b"\n" for e in keep.values())
                write_atomic(str(path), body)
                summary["index_lines_dropped"] += lines - len(keep)
            for folder in (self.root, self.root / "metadata", self.root / "metadata" / "index"):
                for path in folder.glob(".ti-*"):
                    stale_temp(path)
            for path in _files(self.root / "metadata" / "code"):
                stale_temp(path)
            for path in _files(self.root / "scripts"):
                if not stale_temp(path) and path.name[:-3] not in used_scripts:
                    _remove(path)
                    summary["scripts_removed"] += 1
            for path in _files(self.root / "tests"):
                if not stale_temp(path) and path.name not in used_tests:
                    _remove(path)
                    summary["tests_removed"] += 1
            for path in _files(self.root / "metadata" / "checked"):
                if not stale_temp(path) and path.name[:-len(".keys")] not in used_tests:
                    _remove(path)
        self._shards.clear()
        self._verified.clear()
        return summary


def _files(folder: Path) -> Iterable[Path]:
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            yield Path(dirpath) / name


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _atime(path: Path) -> float:
    try:
        stat = path.stat()
        return max(stat.st_atime, stat.st_mtime)
    except OSError:
        return 0.0


def _decode_memo(data: bytes) -> Memo | None:
    first, sep, body = data.partition(b"\n")
    try:
        magic, fmt, crc, head_length, lengths = first.split(b" ")
        shape = head_length + b" " + lengths
        if not sep or magic != MEMO_MAGIC or int(fmt) != CACHE_FORMAT \
                or int(crc, 16) != zlib.crc32(shape + b"\n" + body):
            return None
        offset = int(head_length)
        header = json.loads(body[:offset])
        sections = []
        for length in ([] if lengths == b"-" else [int(n) for n in lengths.split(b",")]):
            sections.append(body[offset:offset + length])
            offset += length
    except (ValueError, TypeError):
        return None
    if not isinstance(header, dict) or header.get("version") != __version__:
        return None
    return Memo(header, sections, body[offset:])


def _memo_scripts(memo: Memo) -> set[str] | None:
    """The scripts a memo's function list names; None when that list does not decode."""
    if not memo.sections:
        return set()
    try:  # [qualname, line, status, reason, template, script, cached] per function
        return {item[5] for item in json.loads(memo.sections[0]) if item[5]}
    except (ValueError, TypeError, IndexError, KeyError):
        return None


def _read_memo(path: Path) -> Memo | None:
    try:
        return _decode_memo(path.read_bytes())
    except OSError:
        return None


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass

