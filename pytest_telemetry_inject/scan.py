"""Find the files to process under the given paths.

Language by extension, else by a shebang line; inside a git work tree, what git ignores is
skipped (git itself answers, so every ``.gitignore`` rule means what it means to git);
virtualenvs, ``site-packages``, ``node_modules``, build output and the cache folder are
always skipped; a symbolic link is never followed out of the tree.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from .languages import extensions_of, language_name_for
from .runtime.vendor import DEFAULT_MODULE, is_vendored
from .settings import Settings

SKIP_DIRS = frozenset({
    ".git", ".hg", ".svn", ".bzr", "__pycache__", "node_modules", "site-packages", "dist-packages",
    "build", "dist", ".eggs", ".tox", ".nox", ".venv", ".mypy_cache", ".pytest_cache",
    ".ruff_cache", ".telemetry_cache", ".idea", ".vscode",
})
BUILD_DIRS = frozenset({"build", "dist"})
"""Build output, left out unless the package.json beside it names a file in it as an entry
point (``"main": "dist/index.js"``: for many npm packages the code that runs). Either way
the run says so (``ScanResult.left_out``)."""
VENDORED_REASON = "the vendored telemetry module"


class ScanResult(list["ScanItem"]):
    """The files found (a list of ScanItem), and the folders left out that a reader of the
    output would miss: (folder relative to its PATH argument, why)."""

    left_out: list[tuple[str, str]]

    def __init__(self) -> None:
        super().__init__()
        self.left_out = []


def _entry_points(folder: str) -> list[str]:
    """The files the package.json in ``folder`` names as entry points (main, module,
    browser, bin, exports), relative to it ('' when there is none)."""
    import json

    try:
        with open(os.path.join(folder, "package.json"), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return []
    found: list[str] = []

    def collect(value: object) -> None:
        if isinstance(value, str):
            found.append(os.path.normpath(value.replace("\\", "/")).replace(os.sep, "/"))
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    if isinstance(data, dict):
        for key in ("main", "module", "browser", "bin", "exports"):
            collect(data.get(key))
    return found


class ScanItem(NamedTuple):
    path: Path
    """The file, as found."""
    root: Path
    """The path argument it was found under (its folder for a file argument)."""
    relative: Path
    """Its path relative to ``root`` (where ``-o DIR`` puts it)."""
    language: str | None
    skip_reason: str | None = None
    symlink_target: str | None = None
    """For a link that stays inside the tree: what it points to (``-o`` copies the link)."""


_LS_FILES = ("ls-files", "-z", "--cached", "--others", "--exclude-standard")
_started: dict[str, subprocess.Popen[bytes]] = {}


def start_git_files(folder: str) -> None:
    """Start the ``git ls-files`` that ``_git_files(folder)`` will read, so that git works
    while this process does something else (the pytest plugin starts it before importing
    its session, ~15 ms on 2 cores). Nothing is started twice; ``stop_git_files`` waits for
    any not read."""
    if folder not in _started:
        try:
            _started[folder] = subprocess.Popen(["git", "-C", folder, *_LS_FILES], stdout=subprocess.PIPE,
                                                stderr=subprocess.DEVNULL)
        except OSError:
            pass


def stop_git_files() -> None:
    """Wait for every ``git ls-files`` started and not read (no process is left behind)."""
    while _started:
        _started.popitem()[1].communicate()


def _git_files(folder: str) -> set[str] | None:
    """The files under ``folder`` that git does not ignore, relative to it (one ``git
    ls-files``, run in the folder: git lists that folder's files, with paths relative to
    it; the one ``start_git_files`` started, else one started now), or None outside a git
    work tree (or without git)."""
    start_git_files(folder)
    started = _started.pop(folder, None)
    if started is None:
        return None
    listing, _ = started.communicate()
    if started.returncode:
        return None
    return {os.fsdecode(name) for name in listing.split(b"\0") if name}


def scan(paths: Iterable[str | os.PathLike[str]], settings: Settings, *, project_root: Path,
         exclude_dirs: Iterable[Path] = (), languages: Iterable[str] | None = None) -> ScanResult:
    """Every file under ``paths`` with its language (None: not a source file). With
    ``languages``, only the files found in folders whose extension is one of theirs (the
    pytest plugin wants Python modules: no other language is loaded, no file is read). A
    ``build`` or ``dist`` folder is scanned when the package.json beside it names an entry
    point in it, else left out and listed in ``left_out``."""
    wanted = None if languages is None else {ext for name in languages for ext in extensions_of(name)}
    excluded = {os.path.realpath(p) for p in exclude_dirs}
    excluded.add(os.path.realpath(project_root / settings.cache_dir))
    excluded_names = {os.path.basename(p) for p in excluded}
    vendored_name = (settings.vendored_module.rpartition(".")[2] or DEFAULT_MODULE) + ".py"
    root_real = os.path.realpath(project_root)
    items = ScanResult()
    for raw in paths:
        arg = Path(raw)
        if not arg.exists() and not arg.is_symlink():
            raise FileNotFoundError(f"no such file or folder: {arg}")
        if not arg.is_dir():
            items.append(_item(arg, arg.parent, Path(arg.name), vendored_name))
            continue
        top = str(arg)
        top_real = os.path.realpath(top)
        git = _git_files(top) if settings.respect_gitignore else None
        rel_to_project = os.path.relpath(top_real, root_real).replace(os.sep, "/")
        rel_to_project = "" if rel_to_project == "." else rel_to_project + "/"
        pending = [("", top)]
        while pending:
            relative_dir, folder = pending.pop()
            try:
                with os.scandir(folder) as listing:
                    entries = sorted(listing, key=lambda e: e.name)
            except OSError:
                continue
            if relative_dir and any(e.name in ("pyvenv.cfg", "conda-meta") for e in entries):
                continue  # a virtualenv (or conda environment), whatever its name
            subfolders = []
            for entry in entries:
                name = entry.name
                relative = relative_dir + name
                if entry.is_dir(follow_symlinks=False):
                    if name in BUILD_DIRS and (name not in excluded_names or
                                               os.path.realpath(entry.path) not in excluded):
                        if any(p.split("/", 1)[0] == name for p in _entry_points(folder)):
                            subfolders.append((relative + "/", entry.path))  # the code that runs
                        else:
                            items.left_out.append((relative + "/", "build output (no entry point of a package.json "
                                                                   "beside it leads there; name it as a PATH to "
                                                                   "include it)"))
                    elif name not in SKIP_DIRS and not name.endswith(".egg-info") and (
                            name not in excluded_names or os.path.realpath(entry.path) not in excluded):
                        subfolders.append((relative + "/", entry.path))
                    continue
                if wanted is not None and os.path.splitext(name)[1].lower() not in wanted:
                    continue
                if git is not None and relative not in git:
                    continue
                if settings.exclude and _excluded(relative, rel_to_project + relative, settings.exclude):
                    continue
                path = Path(entry.path)
                if entry.is_symlink():
                    resolved = os.path.realpath(entry.path)
                    inside = resolved == top_real or resolved.startswith(top_real + os.sep)
                    reason = ("symbolic link (its target is processed where it lies)" if inside
                              else "symbolic link out of the tree (not followed)")
                    items.append(ScanItem(path, arg, Path(relative), None, reason,
                                          os.readlink(entry.path) if inside else None))
                    continue
                items.append(_item(path, arg, Path(relative), vendored_name))
            pending.extend(reversed(subfolders))
    return items


def _item(path: Path, root: Path, relative: Path, vendored_name: str) -> ScanItem:
    head = None
    if not path.suffix:
        try:
            with open(path, "rb") as handle:
                head = handle.read(256)
        except OSError as exc:
            return ScanItem(path, root, relative, None, f"cannot read: {exc.strerror}")
    language = language_name_for(str(path), head)
    if language is not None and path.name == vendored_name and is_vendored(path):
        return ScanItem(path, root, relative, None, VENDORED_REASON)
    return ScanItem(path, root, relative, language)


def _excluded(relative: str, project_relative: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(c, p) or fnmatch.fnmatch(c, p.rstrip("/") + "/*")
               for c in (relative, project_relative) for p in patterns)


def module_name(path: Path) -> str:
    """The dotted module name of a file: its package chain, else its stem."""
    parts = [path.stem] if path.name != "__init__.py" else []
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        if folder.parent == folder:
            break
        folder = folder.parent
    return ".".join(parts) or path.stem
