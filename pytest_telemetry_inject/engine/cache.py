"""The cache folder (``.telemetry_cache/`` by default): reading and writing its files.

Where each file lives is ``engine/layout.py``'s (``CacheLayout``); what each file holds, and
the format numbers, are ``formats``'s. This module adds the seals, the checks and the
concurrency-safe writes.

Keys are sha256 digests of content and settings, never of mtimes, so a cache travels
between CI machines. Whoever can write the cache is not trusted (engine/seal.py says why and
how): memos and index entries are checked against the original source before use (or carry
this machine's seal, proof that they were checked or computed here); compiled code, generated
tests and the records of passed tests are used only with this machine's seal. Nothing in the
cache is reached through a symbolic link: the cache's folders are checked once (a link is
refused with one line), its files are opened with ``O_NOFOLLOW``, and ``prune``/``clear``
delete only regular files.

Every write is safe with concurrent writers and a kill at any moment: memos, test modules
and code are written to a temporary name and ``os.replace``-d; a script is created in place
(its name is the sha256 of its text, which every reader checks); index records are appended,
one line each (``<crc32> <JSON array>``), under a ``filelock``. A reader that finds a
truncated or damaged line, a memo whose content does not match its crc32, or a script whose
text no longer matches its name ignores it, and the engine rebuilds it.

A cache that cannot be written (a read-only tree) is still read; failed writes are
counted, never raised.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import CacheError
from ..formats import CACHE_FORMAT as CACHE_FORMAT
from ..formats import (
    CACHEDIR_TAG,
    CHECKED,
    GITIGNORE,
    TEST_MODULE,
    CodeFile,
    MemoFile,
    decode_checked_keys,
    encode_checked_keys,
    function_list_scripts,
)
from ..formats import IndexEntry as IndexEntry
from ..record import Record
from ..sourcefile import write_atomic
from ..trace import DEBUG, TRACE
from . import seal
from .layout import CacheLayout

LOCK_TIMEOUT = 60.0
STALE_TEMP_SECONDS = 3600.0
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


class CacheCounters(Record):
    __slots__ = ("memo_hits", "memo_misses", "script_hits", "script_misses", "corrupt", "write_errors")
    memo_hits: int
    memo_misses: int
    script_hits: int
    script_misses: int
    corrupt: int
    write_errors: int

    def __init__(self, memo_hits: int = 0, memo_misses: int = 0, script_hits: int = 0, script_misses: int = 0,
                 corrupt: int = 0, write_errors: int = 0) -> None:
        self.memo_hits, self.memo_misses, self.script_hits = memo_hits, memo_misses, script_hits
        self.script_misses, self.corrupt, self.write_errors = script_misses, corrupt, write_errors

    def add(self, other: CacheCounters) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class Memo(Record):
    __slots__ = ("header", "sections", "payload", "sealed")
    header: dict[str, Any]
    sections: list[bytes]
    """Raw parts the reader decodes only if it needs them (function lists, line maps)."""
    payload: bytes
    sealed: bool
    """Whether it carries this machine's seal (else it must be checked before use)."""

    def __init__(self, header: dict[str, Any], sections: list[bytes], payload: bytes, sealed: bool = False) -> None:
        self.header, self.sections, self.payload, self.sealed = header, sections, payload, sealed


_KEEP_AT_MOST = 32 << 20
"""Bytes of memos ``keep_memos`` keeps in memory at most (a project's instrumented sources
and function lists: toolz's 11 modules take 0.3 MB)."""

_LASTING_ERRORS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ELOOP}


class ScriptCache:
    """One cache folder. Cheap to create; loads index shards only when asked."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.layout = CacheLayout(root)
        self.counters = CacheCounters()
        self._shards: dict[str, dict[str, IndexEntry]] = {}
        self._verified: set[str] = set()
        self._made: set[str] = set()
        self._safe: set[str] = set()
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
        # Memos read here and sealed by this machine, kept for the next read of their key
        # (see ``keep_memos``): key -> (memo, its size in bytes); None: not kept.
        self._kept: dict[str, tuple[Memo, int]] | None = None
        self._kept_bytes = 0
        self.writable = True
        self.write_error = ""
        self.refused = ""
        """Why the cache is not used at all (a symbolic link found in it), or ''."""
        if self.root.is_symlink():
            raise CacheError(f"the cache path {self.root} is a symbolic link: refusing to use it "
                             "(point cache_dir at the real folder)")
        if self.root.exists() and not self.root.is_dir():
            raise CacheError(f"the cache path {self.root} exists and is not a folder")
        problem = self.layout.link_problem()
        if problem:
            raise CacheError(problem)

    # -- paths (the layout's) -------------------------------------------------------------------

    def script_path(self, language: str, sha: str) -> str:
        return self.layout.script(language, sha)

    def test_module_path(self, language: str, name: str) -> str:
        return self.layout.tests(language, name)

    # -- reading and writing without links -----------------------------------------------------

    def _folder_is_safe(self, folder: str) -> bool:
        """Whether ``folder`` (inside the cache) and the folders between it and the root are
        real folders (or missing); a link found refuses the cache from then on."""
        if folder in self._safe:
            return True
        if self.refused:
            return False
        path = folder
        while len(path) > len(self.layout.base):
            if os.path.islink(path):
                self.refused = f"the cache at {self.root} holds a symbolic link ({path}): it is no longer used"
                self.write_error = self.write_error or self.refused
                self.counters.write_errors += 1
                self.writable = False
                return False
            path = os.path.dirname(path)
        self._safe.add(folder)
        return True

    def _read(self, path: str) -> bytes:
        """A file of the cache; OSError when it is missing, a link, or under a link."""
        if not self._folder_is_safe(os.path.dirname(path)):
            raise OSError(errno.ELOOP, "a symbolic link in the cache", path)
        fd = os.open(path, _READ_FLAGS)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _ensure_dir(self, folder: str) -> None:
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            if not self._folder_is_safe(folder):
                raise OSError(errno.ELOOP, "a symbolic link in the cache", folder)
            self._made.add(folder)

    def _lock(self) -> Any:
        if self._filelock is None:
            from filelock import FileLock

            path = self.layout.lock()
            if os.path.islink(path):  # filelock would open (and truncate) the link's target
                raise OSError(errno.ELOOP, "the cache's lock file is a symbolic link", path)
            self._filelock = FileLock(path, timeout=LOCK_TIMEOUT)
        return self._filelock

    # -- generated tests that passed -------------------------------------------------------

    def checked(self, test_module: str) -> set[str]:
        """The keys (``ScriptCheck.key``) of the cases of a generated test module that passed,
        as this machine recorded them (a record without its seal counts for nothing)."""
        path = self.layout.checked(test_module)
        try:
            data = self._read(path)
        except OSError:
            return set()
        framed = CHECKED.decode(data)
        if framed is None or not _verify_hex(framed[0], b"checked", test_module, framed[1]):
            return set()
        return decode_checked_keys(framed[1])

    def add_checked(self, test_module: str, keys: Iterable[str]) -> None:
        """Remember that these cases passed; a damaged record only means they run again."""
        path = self.layout.checked(test_module)
        known = self.checked(test_module) | set(keys)
        body = encode_checked_keys(known)
        tag = seal.seal(b"checked", test_module, body)
        if tag is None:
            return  # without a key nothing would trust the record
        try:
            self._ensure_dir(os.path.dirname(path))
            write_atomic(path, CHECKED.encode(tag, body), mode=0o644)
        except OSError as exc:
            self._write_failed(exc)

    # -- writing helpers -------------------------------------------------------------------

    def _ensure_layout(self) -> bool:
        if not self.writable:
            return False
        if self._layout_ready:
            return True
        try:
            self._ensure_dir(os.fspath(self.layout.index_folder))
            # Each checked on its own: a kill between the two writes must not lose one for good.
            ignore = self.layout.gitignore()
            if not os.path.lexists(ignore):
                write_atomic(ignore, GITIGNORE)
            tag = self.layout.tag()
            if not os.path.lexists(tag):
                write_atomic(tag, CACHEDIR_TAG)
        except OSError as exc:
            self._write_failed(exc)
            return False
        self._layout_ready = True
        return True

    def _write_failed(self, exc: OSError) -> None:
        self.counters.write_errors += 1
        if not self.write_error:
            self.write_error = f"cannot write the cache at {self.root}: {exc.strerror or exc}"
        if isinstance(exc, PermissionError) or exc.errno in _LASTING_ERRORS:
            self.writable = False  # no use trying again for every file

    def _write_file(self, path: str, data: bytes) -> bool:
        try:
            self._ensure_dir(os.path.dirname(path))
            write_atomic(path, data, mode=0o644)
            return True
        except OSError as exc:
            self._write_failed(exc)
            return False

    # -- the function index ----------------------------------------------------------------

    def _shard(self, key: str) -> dict[str, IndexEntry]:
        prefix = key[:2]
        shard = self._shards.get(prefix)
        if shard is None:
            shard = self._shards[prefix] = self._read_shard(self.layout.shard(key))
        return shard

    def _read_shard(self, path: str | Path) -> dict[str, IndexEntry]:
        entries: dict[str, IndexEntry] = {}
        try:
            data = self._read(os.fspath(path))
        except OSError:
            return entries
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                entry = IndexEntry.from_line(raw)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                self._rejected("index line", os.fspath(path), str(exc) or type(exc).__name__)
                continue
            entries[entry.key] = entry
        return entries

    def lookup(self, key: str) -> IndexEntry | None:
        """The entry for ``key``; for an ``ok`` entry only when its script is intact (a
        missing or tampered file makes it a miss, so it is rebuilt). The engine still checks
        an entry's edits before it uses them (they are not this machine's word)."""
        entry = self._shard(key).get(key)
        if entry is None or entry.version != __version__:
            return None
        if entry.status == "ok" and not self._intact(entry):
            self._rejected("index entry", key, f"its script {entry.script} is missing or not what its name says")
            return None
        return entry

    def forget(self, key: str) -> None:
        """Drop an entry found wrong from this process's view of the index (the engine counts
        it and writes a new one)."""
        self._shard(key).pop(key, None)

    def read_script(self, language: str, sha: str) -> str | None:
        """A script's text when its sha256 is its name, else None."""
        try:
            data = self._read(self.layout.script(language, sha))
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != sha:
            return None
        return data.decode("utf-8", "surrogatepass")

    def _rejected(self, what: str, where: str, why: str) -> None:
        """A file (or line) of the cache refused: counted as corrupt, and traced with its
        reason, as pytest traces each cached pyc it rejects. It is never used, and never an
        error for the user: what it held is made again."""
        self.counters.corrupt += 1
        if TRACE.on:
            TRACE.event(DEBUG, "cache", f"rejected {what}", where=where, reason=why)

    def _intact(self, entry: IndexEntry) -> bool:
        if entry.script in self._verified:
            return True
        if self.read_script(entry.language, entry.script) is None:
            return False
        self._verified.add(entry.script)
        return True

    def _write_script(self, language: str, sha: str, text: str) -> bool:
        """Scripts are named by their content's sha256, so they are created in place (no
        temporary file): a torn write is caught by the check on every read, and then the
        file is replaced atomically."""
        path = self.layout.script(language, sha)
        data = text.encode("utf-8", "surrogatepass")
        try:
            self._ensure_dir(os.path.dirname(path))
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
            except FileExistsError:
                if self.read_script(language, sha) is not None:
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
        """Write new scripts (sha -> text), a generated test module (language, name, text),
        sealed, and append the entries to the index."""
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
            body = text.encode("utf-8", "surrogatepass")
            tag = seal.seal(b"tests", f"{language}/{name}", body)
            if tag is not None and not self._write_file(self.layout.tests(language, name),
                                                        TEST_MODULE.encode(tag, body)):
                return
        if not batch:
            return
        lines = self._pending
        for entry in batch:
            lines.setdefault(entry.key[:2], []).append(entry.to_line())
            self._shard(entry.key)[entry.key] = entry
        if not self.defer_index:
            self.flush_index()

    def read_test_module(self, language: str, name: str) -> str | None:
        """A generated test module's text (its seal line taken off) when this machine sealed
        it; None when it is missing, or came from elsewhere (counted as corrupt: it is then
        rebuilt)."""
        try:
            data = self._read(self.layout.tests(language, name))
        except OSError:
            return None
        framed = TEST_MODULE.decode(data)
        if framed is None or not _verify_hex(framed[0], b"tests", f"{language}/{name}", framed[1]):
            self._rejected("test module", f"{language}/{name}",
                           "no seal line" if framed is None else "not sealed on this machine")
            return None
        return framed[1].decode("utf-8", "surrogatepass")

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
                    fd = os.open(self.layout.shard(prefix), os.O_WRONLY | os.O_CREAT | os.O_APPEND | _NOFOLLOW,
                                 0o644)
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

    def keep_memos(self, on: bool) -> None:
        """While on, a memo read from disk and sealed by this machine stays in memory for the
        next read of its key, once: a pytest session reads each module's memo in its dry run
        and again when the import hook serves the module, and the second read (the file, its
        checksum, its seal, its header) is then a dictionary lookup. The memo was checked in
        this process; a memo written or dropped under the key meanwhile is forgotten here.
        At most ``_KEEP_AT_MOST`` bytes are kept. Off: the kept ones are dropped."""
        self._kept = {} if on else None
        self._kept_bytes = 0

    def read_memo(self, key: str) -> tuple[Memo | None, bool]:
        """(the memo or None, whether one was there but damaged). Touches no counter, so
        threads may call it."""
        kept = self._kept
        if kept is not None:
            found = kept.pop(key, None)
            if found is not None:
                self._kept_bytes -= found[1]
                return found[0], False
        try:
            data = self._read(self.layout.memo(key))
        except OSError:
            return None, False
        memo = _decode_memo(data, key)
        if kept is not None and memo is not None and memo.sealed and self._kept_bytes + len(data) <= _KEEP_AT_MOST:
            kept[key] = (memo, len(data))
            self._kept_bytes += len(data)
        return memo, memo is None

    def _forget_kept(self, key: str) -> None:
        if self._kept:
            found = self._kept.pop(key, None)
            if found is not None:
                self._kept_bytes -= found[1]

    def get_memo(self, key: str) -> Memo | None:
        memo, damaged = self.read_memo(key)
        if memo is None:
            self.counters.memo_misses += 1
            if damaged:
                self._rejected("memo", key, "damaged, or of another version")
        else:
            self.counters.memo_hits += 1
        return memo

    def drop_memo(self, key: str) -> None:
        """Forget a file's memo, so its next run rebuilds (and revalidates) it."""
        self._forget_kept(key)
        path = self.layout.memo(key)
        if self._folder_is_safe(os.path.dirname(path)):
            try:
                os.unlink(path)
            except OSError:
                pass

    def put_memo(self, key: str, header: dict[str, Any], sections: list[bytes], payload: bytes) -> None:
        """Layout: one line ``TI-MEMO <format> <crc32> <seal> <header length> <section
        lengths>``, then the header JSON, the sections and the payload. The crc32 covers the
        lengths and everything after the first line, so a torn or damaged memo is never
        used; the seal (hex, or ``-`` without a key) is this machine's HMAC of the key and the
        same bytes: a memo with it was computed, or checked, here."""
        self._forget_kept(key)
        if not self._ensure_layout():
            return
        data = encode_memo(key, header, sections, payload)
        if self.defer_index:
            self._pending_memos.append((self.layout.memo(key), data))
        else:
            self._write_memo(self.layout.memo(key), data)

    def _write_memo(self, path: str, data: bytes) -> None:
        try:
            self._ensure_dir(os.path.dirname(path))
            write_atomic(path, data, mode=0o644)
        except OSError as exc:
            self._write_failed(exc)

    # -- compiled code ---------------------------------------------------------------------

    def read_code(self, key: str) -> bytes | None:
        """The marshalled code stored under ``key``, when this machine sealed it."""
        try:
            data = self._read(self.layout.code(key))
        except OSError:
            return None
        framed = CodeFile.decode(data)
        if framed is None or not seal.verify(framed[0], b"code", key, framed[1]):  # compiled again
            self._rejected("compiled code", key, "damaged" if framed is None else "not sealed on this machine")
            return None
        return framed[1]

    def write_code(self, key: str, marshalled: bytes) -> None:
        """Best effort, like pytest's own cache of rewritten modules; nothing without a key."""
        tag = seal.seal(b"code", key, marshalled)
        if tag is None or not self._ensure_layout():
            return
        self._write_file(self.layout.code(key), CodeFile.encode(tag, marshalled))

    # -- maintenance -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts and sizes of everything in the cache (and how much of the index is damaged)."""
        result: dict[str, Any] = {"path": str(self.root), "format": CACHE_FORMAT, "exists": self.root.is_dir()}
        counts = {"scripts": 0, "tests": 0, "memos": 0, "code": 0, "temp_files": 0}
        size = 0
        layout = self.layout
        for folder, kind in ((layout.scripts_folder, "scripts"), (layout.tests_folder, "tests"),
                             (layout.memos_folder, "memos"), (layout.code_folder, "code")):
            for path in _files(folder):
                size += _size(path)
                counts["temp_files" if layout.is_temporary(path) else kind] += 1
        entries = ok = failed = 0
        before = self.counters.corrupt
        for path in _files(layout.index_folder):
            if not layout.is_shard(path):
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
        """Remove every regular file in the cache (the index lock excepted, held meanwhile)
        and the folders left empty; the number of files removed."""
        if not self.root.is_dir():
            return 0
        lock = Path(self.layout.lock())
        removed = 0
        with self._lock():
            for path in _files(self.root):
                if path != lock and _remove_file(path):
                    removed += 1
            _remove_empty_folders(self.root, keep=lock.parent)
        self._shards.clear()
        self._verified.clear()
        self._made.clear()
        self._safe.clear()
        self._layout_ready = False
        return removed

    def prune(self, *, max_age_days: float = 30.0) -> dict[str, int]:
        """Delete memos of other versions or unused for ``max_age_days``; compact the index
        (drop damaged lines, duplicates and entries of other versions); delete the scripts
        and test modules nothing uses any more, compiled code unused for ``max_age_days``,
        and temporary files left by killed writers. Only regular files are deleted."""
        summary = {"memos_removed": 0, "index_lines_dropped": 0, "scripts_removed": 0,
                   "tests_removed": 0, "code_removed": 0, "temp_files_removed": 0}
        if not self.root.is_dir():
            return summary
        now = time.time()
        layout = self.layout

        def stale_temp(path: Path) -> bool:
            if not layout.is_temporary(path):
                return False
            if now - _mtime(path) > STALE_TEMP_SECONDS and _remove_file(path):
                summary["temp_files_removed"] += 1
            return True

        def drop(path: Path, what: str) -> None:
            if _remove_file(path):
                summary[what] += 1

        with self._lock():
            used_scripts: set[str] = set()
            used_tests: set[str] = set()
            for path in _files(layout.memos_folder):
                if stale_temp(path):
                    continue
                age = now - _atime(path)  # before reading it: a read refreshes the access time
                memo = _read_memo(path)
                scripts = _memo_scripts(memo) if memo is not None else None
                if memo is None or scripts is None or age > max_age_days * 86400:
                    drop(path, "memos_removed")
                    continue
                used_tests.add(str(memo.header.get("tests") or ""))
                used_scripts.update(scripts)
            for path in _files(layout.index_folder):
                if not layout.is_shard(path) or not path.is_file() or path.is_symlink():
                    continue
                lines = sum(1 for raw in path.read_bytes().split(b"\n") if raw.strip())
                keep = {k: e for k, e in self._read_shard(path).items() if e.version == __version__}
                used_scripts.update(e.script for e in keep.values() if e.status == "ok")
                body = b"".join(e.to_line() + b"\n" for e in keep.values())
                write_atomic(str(path), body)
                summary["index_lines_dropped"] += lines - len(keep)
            for folder in (layout.root, layout.metadata_folder, layout.index_folder):
                for path in layout.temporary_in(folder):
                    stale_temp(path)
            for path in _files(layout.code_folder):
                if not stale_temp(path) and now - _atime(path) > max_age_days * 86400:
                    drop(path, "code_removed")
            for path in _files(layout.scripts_folder):
                if not stale_temp(path) and layout.script_sha(path) not in used_scripts:
                    drop(path, "scripts_removed")
            for path in _files(layout.tests_folder):
                if not stale_temp(path) and path.name not in used_tests:
                    drop(path, "tests_removed")
            for path in _files(layout.checked_folder):
                if not stale_temp(path) and layout.checked_tests_name(path) not in used_tests:
                    _remove_file(path)
        self._shards.clear()
        self._verified.clear()
        return summary


def encode_memo(key: str, header: dict[str, Any], sections: list[bytes], payload: bytes) -> bytes:
    """A memo's bytes (``formats.MemoFile``), sealed when this machine has a key."""
    covered = MemoFile.cover(header, sections, payload)
    tag = seal.seal(b"memo", key, covered)
    return MemoFile.encode(covered, tag.hex().encode() if tag is not None else b"-")


def _verify_hex(tag: bytes, kind: bytes, name: str, body: bytes) -> bool:
    try:
        raw = bytes.fromhex(tag.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    return seal.verify(raw, kind, name, body)


def _files(folder: Path) -> Iterable[Path]:
    """The files under ``folder``, links to folders not followed (nor the folder itself, if
    it is a link)."""
    if folder.is_symlink():
        return
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            yield Path(dirpath) / name


def _remove_file(path: Path) -> bool:
    """Delete ``path`` if it is a regular file (never a link or what it points to)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def _remove_empty_folders(root: Path, *, keep: Path) -> None:
    for dirpath, _dirs, _names in os.walk(root, topdown=False):
        folder = Path(dirpath)
        if folder in (root, keep) or folder.is_symlink():
            continue
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (a link, or a file written meanwhile)


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def _atime(path: Path) -> float:
    try:
        info = path.lstat()
        return max(info.st_atime, info.st_mtime)
    except OSError:
        return 0.0


def _decode_memo(data: bytes, key: str) -> Memo | None:
    """The memo stored under ``key``, when it is intact and of this version; sealed when its
    seal is this machine's."""
    frame = MemoFile.decode(data)
    if frame is None or frame.header.get("version") != __version__:
        return None
    sealed = frame.mark != b"-" and _verify_hex(frame.mark, b"memo", key, frame.covered)
    return Memo(frame.header, frame.sections, frame.payload, sealed)


def _memo_scripts(memo: Memo) -> set[str] | None:
    """The scripts a memo's function list names; None when that list does not decode."""
    if not memo.sections:
        return set()
    try:
        return function_list_scripts(memo.sections[0])
    except (ValueError, TypeError, IndexError, KeyError):
        return None


def _read_memo(path: Path) -> Memo | None:
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        return _decode_memo(path.read_bytes(), path.name)
    except OSError:
        return None
