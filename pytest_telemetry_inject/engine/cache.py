"""The cache folder (``.telemetry_cache/`` by default): the one owner of its layout.

Layout (see ``CacheLayout``)::

    CACHEDIR.TAG, .gitignore                 (so backups and git leave it alone)
    scripts/<language>/<xx>/<sha256>.script  insertion scripts, named by the sha256 of their text
    tests/<language>/<stem>_<key16>.cases    generated tests of one source file's scripts
    metadata/index/<xx>.jsonl                function index: key -> script, edits, status
    metadata/files/<xx>/<key>                file memos: whole-file results
    metadata/code/<xx>/<key>                 compiled code of instrumented modules (the plugin)
    metadata/checked/<tests name>.keys       the generated test cases that passed

No name in the cache ends in ``.py``: nothing in it is ever imported, by this tool or by a
pytest run that walks into the folder (``--doctest-modules`` imports every ``.py`` file).

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

Format versions (``CACHE_FORMAT``):
    1: first format.
    2: index lines are ``<crc32> <JSON array>``; a memo's crc32 also covers the lengths in
       its first line.
    3: a memo's first line carries its seal; scripts end in ``.script`` and generated tests
       in ``.cases`` (no ``.py`` in the cache); generated tests, records of passed tests and
       compiled code carry seals.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import CacheError
from ..sourcefile import write_atomic
from . import seal

CACHE_FORMAT = 3
LOCK_TIMEOUT = 60.0
STALE_TEMP_SECONDS = 3600.0
_TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
        "# This file is a cache directory tag created by pytest-telemetry-inject.\n"
        "# For information about cache directory tags, see https://bford.info/cachedir/\n")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
SCRIPT_SUFFIX = ".script"
TESTS_SUFFIX = ".cases"
CODE_MAGIC = b"TI-CODE3"
_TESTS_SEAL = "# seal "


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
    def from_line(cls, line: bytes) -> IndexEntry:
        """The entry of an index line; ValueError for a damaged or truncated one."""
        if line[8:9] != b" " or int(line[:8], 16) != zlib.crc32(line[9:]):
            raise ValueError("damaged index line")
        key, status, template, script, language, qualname, origin, edits, reason, version = json.loads(line[9:])
        if not all(isinstance(v, str) for v in (key, status, template, script, language, qualname, origin,
                                                 reason, version)) or not (edits is None or isinstance(edits, list)):
            raise ValueError("an index line of the wrong shape")
        return cls(key, status, template, script, language, qualname, origin, edits, reason, version)


@dataclass
class CacheCounters:
    memo_hits: int = 0
    memo_misses: int = 0
    script_hits: int = 0
    script_misses: int = 0
    corrupt: int = 0
    write_errors: int = 0

    def add(self, other: CacheCounters) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Memo:
    header: dict[str, Any]
    sections: list[bytes]
    """Raw parts the reader decodes only if it needs them (function lists, line maps)."""
    payload: bytes
    sealed: bool = False
    """Whether it carries this machine's seal (else it must be checked before use)."""


MEMO_MAGIC = b"TI-MEMO"
_LASTING_ERRORS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ELOOP}


class CacheLayout:
    """Every path in a cache folder. The folders above each file are checked once per
    process (a symbolic link among them refuses the cache); files are opened without
    following links."""

    FIXED = ("scripts", "tests", "metadata", "metadata/index", "metadata/files", "metadata/code",
             "metadata/checked")

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.base = os.fspath(self.root)

    def script(self, language: str, sha: str) -> str:
        # Sharded by the first two hex digits, like git's objects: creating tens of
        # thousands of files in one folder is several times slower.
        return os.path.join(self.base, "scripts", language, sha[:2], sha + SCRIPT_SUFFIX)

    def tests(self, language: str, name: str) -> str:
        return os.path.join(self.base, "tests", language, name)

    def checked(self, tests_name: str) -> str:
        return os.path.join(self.base, "metadata", "checked", tests_name + ".keys")

    def shard(self, key: str) -> str:
        return os.path.join(self.base, "metadata", "index", key[:2] + ".jsonl")

    def memo(self, key: str) -> str:
        return os.path.join(self.base, "metadata", "files", key[:2], key)

    def code(self, key: str) -> str:
        return os.path.join(self.base, "metadata", "code", key[:2], key)

    def lock(self) -> str:
        return os.path.join(self.base, "metadata", "index.lock")

    def link_problem(self) -> str:
        """A symbolic link where the cache's own folders and files are, or ''."""
        candidates = [self.base] + [os.path.join(self.base, *part.split("/")) for part in self.FIXED]
        candidates += [os.path.join(self.base, name) for name in ("CACHEDIR.TAG", ".gitignore")]
        candidates.append(self.lock())
        for folder in ("scripts", "tests"):
            try:
                candidates += [entry.path for entry in os.scandir(os.path.join(self.base, folder))]
            except OSError:
                pass
        for path in candidates:
            if os.path.islink(path):
                return f"the cache at {self.base} holds a symbolic link ({path}): refusing to use it " \
                       "(remove the link, or point cache_dir at a real folder)"
        return ""


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
        first, _, rest = data.partition(b"\n")
        if not first.startswith(b"seal ") or not _verify_hex(first[5:], b"checked", test_module, rest):
            return set()
        return {line for line in rest.decode("ascii", "replace").split("\n") if len(line) == 64}

    def add_checked(self, test_module: str, keys: Iterable[str]) -> None:
        """Remember that these cases passed; a damaged record only means they run again."""
        path = self.layout.checked(test_module)
        known = self.checked(test_module) | set(keys)
        body = "\n".join(sorted(known)).encode("ascii") + b"\n"
        tag = seal.seal(b"checked", test_module, body)
        if tag is None:
            return  # without a key nothing would trust the record
        try:
            self._ensure_dir(os.path.dirname(path))
            write_atomic(path, b"seal " + tag.hex().encode() + b"\n" + body, mode=0o644)
        except OSError as exc:
            self._write_failed(exc)

    # -- writing helpers -------------------------------------------------------------------

    def _ensure_layout(self) -> bool:
        if not self.writable:
            return False
        if self._layout_ready:
            return True
        try:
            self._ensure_dir(os.path.join(self.layout.base, "metadata", "index"))
            # Each checked on its own: a kill between the two writes must not lose one for good.
            ignore = os.path.join(self.layout.base, ".gitignore")
            if not os.path.lexists(ignore):
                write_atomic(ignore, b"# Created by pytest-telemetry-inject.\n*\n")
            tag = os.path.join(self.layout.base, "CACHEDIR.TAG")
            if not os.path.lexists(tag):
                write_atomic(tag, _TAG.encode())
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
            except (ValueError, KeyError, TypeError, AttributeError):
                self.counters.corrupt += 1
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
            self.counters.corrupt += 1
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
                                                        (_TESTS_SEAL + tag.hex() + "\n").encode() + body):
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
        first, _, body = data.partition(b"\n")
        if not first.startswith(_TESTS_SEAL.encode()) or \
                not _verify_hex(first[len(_TESTS_SEAL):], b"tests", f"{language}/{name}", body):
            self.counters.corrupt += 1
            return None
        return body.decode("utf-8", "surrogatepass")

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

    def read_memo(self, key: str) -> tuple[Memo | None, bool]:
        """(the memo or None, whether one was there but damaged). Touches no counter, so
        threads may call it."""
        try:
            data = self._read(self.layout.memo(key))
        except OSError:
            return None, False
        memo = _decode_memo(data, key)
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
        start = len(CODE_MAGIC) + seal.SEAL_BYTES
        if not data.startswith(CODE_MAGIC) or not seal.verify(data[len(CODE_MAGIC):start], b"code", key, data[start:]):
            self.counters.corrupt += 1  # damaged, or not sealed here: compiled again
            return None
        return data[start:]

    def write_code(self, key: str, marshalled: bytes) -> None:
        """Best effort, like pytest's own cache of rewritten modules; nothing without a key."""
        tag = seal.seal(b"code", key, marshalled)
        if tag is None or not self._ensure_layout():
            return
        self._write_file(self.layout.code(key), CODE_MAGIC + tag + marshalled)

    # -- maintenance -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts and sizes of everything in the cache (and how much of the index is damaged)."""
        result: dict[str, Any] = {"path": str(self.root), "format": CACHE_FORMAT, "exists": self.root.is_dir()}
        counts = {"scripts": 0, "tests": 0, "memos": 0, "code": 0, "temp_files": 0}
        size = 0
        for folder, kind in (("scripts", "scripts"), ("tests", "tests"), ("metadata/files", "memos"),
                             ("metadata/code", "code")):
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
        """Remove every regular file in the cache (the index lock excepted, held meanwhile)
        and the folders left empty; the number of files removed."""
        if not self.root.is_dir():
            return 0
        lock = self.root / "metadata" / "index.lock"
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

        def stale_temp(path: Path) -> bool:
            if not path.name.startswith(".ti-"):
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
            for path in _files(self.root / "metadata" / "files"):
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
            for path in _files(self.root / "metadata" / "index"):
                if path.suffix != ".jsonl" or not path.is_file() or path.is_symlink():
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
                if not stale_temp(path) and now - _atime(path) > max_age_days * 86400:
                    drop(path, "code_removed")
            for path in _files(self.root / "scripts"):
                if not stale_temp(path) and path.name[:-len(SCRIPT_SUFFIX)] not in used_scripts:
                    drop(path, "scripts_removed")
            for path in _files(self.root / "tests"):
                if not stale_temp(path) and path.name not in used_tests:
                    drop(path, "tests_removed")
            for path in _files(self.root / "metadata" / "checked"):
                if not stale_temp(path) and path.name[:-len(".keys")] not in used_tests:
                    _remove_file(path)
        self._shards.clear()
        self._verified.clear()
        return summary


def encode_memo(key: str, header: dict[str, Any], sections: list[bytes], payload: bytes) -> bytes:
    """A memo's bytes (see ``ScriptCache.put_memo``), sealed when this machine has a key."""
    head = json.dumps(dict(header, version=__version__), separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8", "surrogatepass")
    body = b"".join([head, *sections, payload])
    lengths = (",".join(str(len(part)) for part in sections) or "-").encode()
    shape = b"%d %s" % (len(head), lengths)
    covered = shape + b"\n" + body
    tag = seal.seal(b"memo", key, covered)
    mark = tag.hex().encode() if tag is not None else b"-"
    return b"%s %d %08x %s %s\n" % (MEMO_MAGIC, CACHE_FORMAT, zlib.crc32(covered), mark, shape) + body


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
    first, sep, body = data.partition(b"\n")
    try:
        magic, fmt, crc, mark, head_length, lengths = first.split(b" ")
        shape = head_length + b" " + lengths
        covered = shape + b"\n" + body
        if not sep or magic != MEMO_MAGIC or int(fmt) != CACHE_FORMAT or int(crc, 16) != zlib.crc32(covered):
            return None
        offset = int(head_length)
        header = json.loads(body[:offset])
        sections = []
        for length in ([] if lengths == b"-" else [int(n) for n in lengths.split(b",")]):
            if length < 0 or offset + length > len(body):
                return None
            sections.append(body[offset:offset + length])
            offset += length
    except (ValueError, TypeError):
        return None
    if not isinstance(header, dict) or header.get("version") != __version__ or len(sections) != 2:
        return None
    sealed = mark != b"-" and _verify_hex(mark, b"memo", key, covered)
    return Memo(header, sections, body[offset:], sealed)


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
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        return _decode_memo(path.read_bytes(), path.name)
    except OSError:
        return None
