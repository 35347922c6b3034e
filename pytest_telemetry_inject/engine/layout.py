"""Where each file of a cache folder lives: the one owner of its paths.

::

    CACHEDIR.TAG, .gitignore                 (so backups and git leave it alone)
    scripts/<language>/<xx>/<sha256>.script  insertion scripts, named by the sha256 of their text
    tests/<language>/<stem>_<key16>.cases    generated tests of one source file's scripts
    metadata/index.lock                      the lock of index appends, ``prune`` and ``clear``
    metadata/index/<xx>.jsonl                function index: key -> script, edits, status
    metadata/files/<xx>/<key>                file memos: whole-file results
    metadata/code/<xx>/<key>                 compiled code of instrumented modules (the plugin)
    metadata/checked/<tests name>.keys       the generated test cases that passed
    .ti-<pid>-<n>.tmp (in any folder)        a write in progress, or left by a killed writer

``<xx>`` is the first two hex digits of the name that follows, like git's objects: creating
tens of thousands of files in one folder is several times slower. No name ends in ``.py``:
nothing in the cache is ever imported, by this tool or by a pytest run that walks into the
folder (``--doctest-modules`` imports every ``.py`` file). What the files hold is
``formats``'s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

SCRIPT_SUFFIX = ".script"
TESTS_SUFFIX = ".cases"
CHECKED_SUFFIX = ".keys"
SHARD_SUFFIX = ".jsonl"
TEMP_PREFIX = ".ti-"
_UNSAFE = re.compile(r"[^A-Za-z0-9_]+")


class CacheLayout:
    """Every path in a cache folder. The folders above each file are checked once per
    process by the cache (a symbolic link among them refuses the cache); files are opened
    without following links."""

    FIXED = ("scripts", "tests", "metadata", "metadata/index", "metadata/files", "metadata/code",
             "metadata/checked")

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.base = os.fspath(self.root)

    @classmethod
    def of_test_module(cls, test_file: str) -> tuple[CacheLayout, str]:
        """(the layout, the language) of the cache that holds a generated test module (its
        tests run from there, and read their scripts beside it)."""
        folder = os.path.dirname(os.path.abspath(test_file))
        return cls(os.path.dirname(os.path.dirname(folder))), os.path.basename(folder)

    # -- one file each ---------------------------------------------------------------------

    def script(self, language: str, sha: str) -> str:
        return os.path.join(self.base, "scripts", language, sha[:2], sha + SCRIPT_SUFFIX)

    def tests(self, language: str, name: str) -> str:
        return os.path.join(self.base, "tests", language, name)

    @staticmethod
    def tests_name(source_path: str, key: str) -> str:
        """The name of a source file's generated test module: ``<stem>_<key16>.cases``, the
        stem reduced to ``[A-Za-z0-9_]`` (at most 40 characters), the key the file's memo key."""
        stem = source_path.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        stem = _UNSAFE.sub("_", stem).strip("_")[:40] or "source"
        return f"{stem}_{key[:16]}{TESTS_SUFFIX}"

    def checked(self, tests_name: str) -> str:
        return os.path.join(self.base, "metadata", "checked", tests_name + CHECKED_SUFFIX)

    def shard(self, key: str) -> str:
        """The index shard of a key (or of a two-digit prefix)."""
        return os.path.join(self.base, "metadata", "index", key[:2] + SHARD_SUFFIX)

    def memo(self, key: str) -> str:
        return os.path.join(self.base, "metadata", "files", key[:2], key)

    def code(self, key: str) -> str:
        """Compiled code of the import hook, by its content key."""
        return os.path.join(self.base, "metadata", "code", key[:2], key)

    def lock(self) -> str:
        return os.path.join(self.base, "metadata", "index.lock")

    def tag(self) -> str:
        """The cache directory tag (backup tools skip the folder)."""
        return os.path.join(self.base, "CACHEDIR.TAG")

    def gitignore(self) -> str:
        return os.path.join(self.base, ".gitignore")

    # -- folders, for maintenance (``stats``, ``prune``, ``clear``) ----------------------------

    @property
    def metadata_folder(self) -> Path:
        return self.root / "metadata"

    @property
    def index_folder(self) -> Path:
        return self.root / "metadata" / "index"

    @property
    def memos_folder(self) -> Path:
        return self.root / "metadata" / "files"

    @property
    def code_folder(self) -> Path:
        return self.root / "metadata" / "code"

    @property
    def checked_folder(self) -> Path:
        return self.root / "metadata" / "checked"

    @property
    def scripts_folder(self) -> Path:
        return self.root / "scripts"

    @property
    def tests_folder(self) -> Path:
        return self.root / "tests"

    # -- what a file's name says ---------------------------------------------------------------

    @staticmethod
    def is_temporary(path: Path) -> bool:
        """A temporary file of a write (never read as an entry)."""
        return path.name.startswith(TEMP_PREFIX)

    @staticmethod
    def temporary_in(folder: Path) -> Iterator[Path]:
        """The temporary files directly in ``folder``."""
        return folder.glob(TEMP_PREFIX + "*")

    @staticmethod
    def is_shard(path: Path) -> bool:
        return path.suffix == SHARD_SUFFIX

    @staticmethod
    def script_sha(path: Path) -> str:
        """The sha256 a script file is named by."""
        return path.name[:-len(SCRIPT_SUFFIX)]

    @staticmethod
    def checked_tests_name(path: Path) -> str:
        """The test module a record of passed tests is about."""
        return path.name[:-len(CHECKED_SUFFIX)]

    def link_problem(self) -> str:
        """A symbolic link where the cache's own folders and files are, or ''."""
        candidates = [self.base] + [os.path.join(self.base, *part.split("/")) for part in self.FIXED]
        candidates += [self.tag(), self.gitignore(), self.lock()]
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
