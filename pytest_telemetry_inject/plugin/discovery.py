"""Which files the plugin instruments, found without importing any of them, and the module
names it gives them.

The files come from ``scan`` (the command line's own walk: git's ignore rules, virtualenvs,
build output, the cache folder) with the same glob matching for excludes, the
``telemetry_exclude`` ini option's among them; what is left out here is what only a pytest
session knows: test files, ``conftest.py``, tools' files and this package itself.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.machinery
import os
from collections.abc import Sequence
from pathlib import Path

from ..scan import module_name as module_name
from ..scan import scan
from ..settings import Settings

TOOL_FILES = frozenset({"setup.py", "noxfile.py", "conf.py", "fabfile.py", "tasks.py"})
"""The files of tools (packaging, task runners, Sphinx) that are never the project's code
under test, outside a package: a module of these names inside a package is the project's."""
TEST_DIRS = frozenset({"tests", "test", "testing"})
OWN_PACKAGE = str(Path(__file__).resolve().parents[1])
"""This package's folder: never instrumented (it would trace itself)."""


def search_roots(prefixes: Sequence[str], rootdir: Path) -> tuple[list[Path], list[str]]:
    """Where to look: the file or folder of each named module (the prefixes that name none
    come back apart, for the summary), else the rootdir."""
    if not prefixes:
        return [rootdir], []
    roots: list[Path] = []
    unknown: list[str] = []
    for prefix in prefixes:
        location = module_location(prefix)
        if location is not None:
            roots.append(location)
        else:
            unknown.append(prefix)
    return roots, unknown


def project_files(roots: Sequence[Path], settings: Settings, *, rootdir: Path, test_globs: Sequence[str] | None,
                  excludes: Sequence[str] = ()) -> list[Path]:
    """The Python files under ``roots`` to instrument, resolved and sorted. ``excludes`` are
    globs added to the ``exclude`` setting's, matched by ``scan`` exactly as the setting's;
    ``test_globs`` (pytest's ``python_files`` and ``conftest.py``) leave test files out, and
    None keeps them (modules named by prefix are wanted whatever their names)."""
    if excludes:
        settings = dataclasses.replace(settings, exclude=[*settings.exclude, *excludes])
    found: list[Path] = []
    for root in roots:
        if root.is_file():
            found.append(root.resolve())
            continue
        for item in scan([root], settings, project_root=rootdir, languages=("python",)):
            if item.language != "python" or item.skip_reason:
                continue
            path = item.path.resolve()
            if _never_instrumented(path):
                continue
            # Test files: pytest's python_files, conftest.py, and anything in a tests folder.
            # (Not testpaths: a project may point it at its package, tests inside.)
            if test_globs is not None and _is_test_file(path.name, item.relative, test_globs):
                continue
            found.append(path)
    return sorted(set(found))


def _never_instrumented(path: Path) -> bool:
    """This package's own modules, any ``conftest.py``, and tools' files outside a package."""
    return (str(path).startswith(OWN_PACKAGE + os.sep) or path.name == "conftest.py"
            or (path.name in TOOL_FILES and not (path.parent / "__init__.py").is_file()))


def _is_test_file(name: str, relative: Path, test_globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, glob) for glob in test_globs) or bool(TEST_DIRS & set(relative.parts[:-1]))


def module_location(name: str) -> Path | None:
    """The file or package folder of a module, found without importing it."""
    parts = name.split(".")
    spec = importlib.machinery.PathFinder.find_spec(parts[0])
    for part in parts[1:]:
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = importlib.machinery.PathFinder.find_spec(f"{spec.name}.{part}", list(spec.submodule_search_locations))
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin) if spec.origin else None
