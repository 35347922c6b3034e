"""Which tests a change can affect, from a baseline's per-test call map.

The changed lines come from the pre-commit hook's machinery (``gitdiff.Repository.changes``
and ``FileChanges.touches`` over the Python parser's function records): a function is
changed when the hook would call it changed. Then Python's own parser refines that: a
function whose syntax tree is the same before and after (a comment, blank lines, formatting)
is not changed. A test is selected when:

- it called a changed or deleted function (in its setup, call or teardown, or in the setup of
  a shared fixture it used);
- it is not in the baseline (new), or failed there (a skipped test is judged as a passed
  one: what decides its skip is in its file or in code it calls);
- its own file changed (test modules, and source modules for their doctests), or a
  ``conftest.py`` or another non-test Python file in a test folder above it changed;
- a new function may override or shadow one it called (same name);
- and every test runs when something cannot be reasoned about: a module-level statement
  changed (decorators and class bodies included; a comment or docstring-free formatting change
  is not one), a changed function was not instrumented in the baseline (so who calls it is
  unknown), a changed function was called outside any test (at import), a new dunder method
  (it changes how instances behave without a call anyone recorded), a new name that
  rebinds one the module had, a file that does not parse, or any other changed file that the
  ignore globs do not cover.

The selection is plain JSON (:meth:`Selection.to_json`), so the pytest-xdist controller
computes it once and sends it to its workers.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..gitdiff import FileChanges, GitError, Repository
from .baseline import Baseline

DEFAULT_IGNORE = ("*.md", "*.rst", "requirements*.txt", "docs/*", "doc/*", "LICENSE*", "COPYING*", "AUTHORS*", "CHANGES*",
                  "CHANGELOG*", "HISTORY*", "NEWS*", ".gitignore", ".gitattributes", ".github/*", ".gitlab-ci.yml",
                  ".pre-commit-config.yaml", ".readthedocs.y*ml", ".coveragerc", ".editorconfig", "MANIFEST.in",
                  "setup.cfg", "tox.ini", "pyproject.toml", "*.pyi", "py.typed", ".telemetry/*")
"""Changed files that select no test: documentation, repository and packaging metadata, type
stubs (``.pyi``, ``py.typed``: nothing imports them at run time). The
file pytest read its configuration from (``setup.cfg``, ``tox.ini``, ``pyproject.toml``,
``pytest.ini``) always runs every test, whatever these globs say."""
TEST_DIRS = {"tests", "test", "testing"}
TOOL_FILES = {"setup.py", "noxfile.py", "conf.py", "fabfile.py", "tasks.py"}
"""Files of tools that tests do not import (outside a package): what they read is not
followed. (A change of one of them still runs every test.)"""

_IndexEntry = tuple[str, str | None, str, dict[str, set[str]], list[tuple[int, set[str] | None, set[str]]], set[str]]
"""A Python file of the project (``project_index``): (path, module, kind, {qualname: names it
mentions}, [(line, names bound or None, names mentioned)] of its module-level statements,
every name it mentions)."""


class AffectedError(Exception):
    """The selection cannot be made (no git, no such ref...); the message is one line."""


@dataclass
class Selection:
    ref: str
    commits: list[str]
    everything: str | None = None
    """Why every test runs (None: only the selected ones)."""
    tests: dict[str, str] = field(default_factory=dict)
    """Baseline tests selected -> why."""
    files: dict[str, str] = field(default_factory=dict)
    """Changed files (rootdir-relative) whose tests run -> why."""
    folders: dict[str, str] = field(default_factory=dict)
    """Folders (rootdir-relative; '' is the rootdir) all of whose tests run -> why."""
    known: dict[str, str] = field(default_factory=dict)
    """Every baseline test -> its outcome there."""
    changes: list[str] = field(default_factory=list)
    """What changed, one line each, for the report."""

    def decide(self, nodeid: str) -> str | None:
        """Why the test runs, or None when it cannot be affected."""
        if self.everything:
            return self.everything
        if nodeid in self.tests:
            return self.tests[nodeid]
        if nodeid not in self.known:
            return "new test (not in the baseline)"
        if self.known[nodeid] not in ("passed", "skipped"):
            return f"{self.known[nodeid]} in the baseline"
        file = nodeid.split("::", 1)[0]
        if file in self.files:
            return self.files[file]
        for folder, why in self.folders.items():
            if not folder or file.startswith(folder.rstrip("/") + "/"):
                return why
        return None

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "commits": self.commits, "everything": self.everything, "tests": self.tests,
                "files": self.files, "folders": self.folders, "known": self.known, "changes": self.changes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Selection:
        return cls(**data)


def select(baseline: Baseline, rootdir: Path, ref: str | None, *, test_globs: Iterable[str],
           ignore: Iterable[str] = DEFAULT_IGNORE, inifile: Path | None = None) -> Selection:
    """The tests of ``rootdir`` that the changes since ``ref`` (None: the merge base with the
    default branch) and since the baseline's own commit can affect."""
    try:
        repo = Repository.find(str(rootdir))
    except FileNotFoundError:
        raise AffectedError("git is not installed (or not on PATH): cannot tell what changed") from None
    except GitError as exc:
        raise AffectedError(str(exc)) from None
    base: str | None
    if ref is None:
        base, ref = _default_base(repo)
    else:
        base = repo.resolve(ref)
        if base is None and os.path.exists(ref):
            raise AffectedError(f"{ref!r} is a path, not a git ref: write --telemetry-affected=REF, or put the "
                                "option after the paths")
        if base is None:
            raise AffectedError(f"{ref!r} names no commit in {repo.top}")
    commits = [base]
    notes: list[str] = []
    own = baseline.meta.get("commit")
    if isinstance(own, str) and own and own != base:
        resolved = repo.resolve(own)
        if resolved is not None:
            commits.append(resolved)  # the call map describes that commit: its changes count too
        else:
            notes.append(f"the baseline's commit {own[:12]} is not in this repository: changes are taken from "
                         f"{ref} only")
    if baseline.meta.get("dirty"):
        notes.append("the baseline was saved from a work tree with uncommitted changes")
    selection = Selection(ref, commits, known={t: r.outcome for t, r in baseline.tests.items()}, changes=notes)
    analysis = _Analysis(baseline, repo, Path(rootdir), list(test_globs), list(ignore), selection)
    analysis.inifile = Path(os.path.realpath(inifile)) if inifile is not None else None
    analysis.run()
    return selection


def _default_base(repo: Repository) -> tuple[str, str]:
    """(commit, description) of the merge base of HEAD with the default branch."""
    candidates = []
    head = repo.git("symbolic-ref", "-q", "refs/remotes/origin/HEAD", check=False).decode().strip()
    if head:
        candidates.append(head.removeprefix("refs/remotes/"))
    candidates += ["origin/main", "origin/master", "main", "master"]
    if repo.resolve("HEAD") is None:
        raise AffectedError("the repository has no commits yet: nothing to compare with")
    for name in candidates:
        if repo.resolve(name) is None:
            continue
        base = repo.git("merge-base", "HEAD", name, check=False).decode().strip()
        if base:
            return base, f"merge-base HEAD {name}"
    raise AffectedError("cannot find the default branch (origin/HEAD, main or master) to take the merge base "
                        "with: give one, --telemetry-affected=REF")


class _Analysis:
    def __init__(self, baseline: Baseline, repo: Repository, rootdir: Path, test_globs: list[str],
                 ignore: list[str], selection: Selection) -> None:
        self.baseline = baseline
        self.repo = repo
        self.rootdir = rootdir.resolve()
        self.top = Path(repo.top).resolve()
        self.test_globs = test_globs + ["conftest.py"]
        self.ignore = ignore
        self.sel = selection
        self.module_of = {file: module for module, file in baseline.modules.items()}
        # function -> tests that called it (directly, or through a shared fixture they used)
        self.callers: dict[tuple[str, str], set[str]] = {}
        users: dict[str, set[str]] = {}
        for nodeid, record in baseline.tests.items():
            for fn in record.calls:
                self.callers.setdefault(fn, set()).add(nodeid)
            for fixture in record.fixtures:
                users.setdefault(fixture, set()).add(nodeid)
        for key, fixture_record in baseline.fixtures.items():
            for fn in fixture_record.calls:
                self.callers.setdefault(fn, set()).update(users.get(key, ()))
        self._index: list[_IndexEntry] | None = None
        self._by_file: dict[str, list[str]] | None = None
        self.inifile: Path | None = None
        self.names: dict[str, set[tuple[str, str]]] = {}
        for fn in self.callers:
            self.names.setdefault(fn[1].rpartition(".")[2], set()).add(fn)

    # -- results ----------------------------------------------------------------------------

    def everything(self, why: str) -> None:
        if self.sel.everything is None:
            self.sel.everything = why
        self.sel.changes.append(why)

    def select_callers(self, fn: tuple[str, str], why: str) -> int:
        tests = self.callers.get(fn, set())
        for test in sorted(tests):
            self.sel.tests.setdefault(test, why)
        return len(tests)

    # -- the changes ------------------------------------------------------------------------------

    def run(self) -> None:
        seen: set[tuple[str, str]] = set()
        for commit in self.sel.commits:
            for path, kind, changes in self.changed_files(commit):
                if (path, kind) in seen and kind != "modified":
                    continue
                seen.add((path, kind))
                self.file(commit, path, kind, changes)

    def changed_files(self, commit: str) -> list[tuple[str, str, FileChanges | None]]:
        """(path relative to the top, 'modified' | 'added' | 'deleted', changes) of every file
        that differs between ``commit`` and the work tree, untracked files included."""
        try:
            changes = self.repo.changes(None, base=commit, cached=False)
            deleted = self.repo.git("diff", "--name-only", "-z", "--no-renames", "--diff-filter=D", "--no-relative",
                                    commit).split(b"\0")
            untracked = self.repo.git("ls-files", "--others", "--exclude-standard", "-z").split(b"\0")
        except GitError as exc:
            raise AffectedError(str(exc)) from None
        found: list[tuple[str, str, FileChanges | None]] = []
        for path, change in sorted(changes.items()):
            found.append((path, "added" if change.whole else "modified", change))
        found += [(os.fsdecode(p), "deleted", None) for p in deleted if p]
        found += [(os.fsdecode(p), "added", FileChanges(whole=True)) for p in untracked if p]
        return found

    def relative(self, top_path: str) -> str:
        absolute = self.top / top_path
        return Path(os.path.relpath(absolute, self.rootdir)).as_posix()

    def pytest_section_same(self, commit: str, top_path: str) -> bool:
        """Whether the pytest configuration in pytest's configuration file is the same as at
        ``commit`` (the rest of a ``pyproject.toml``, ``setup.cfg`` or ``tox.ini`` is other tools')."""
        try:
            new = (self.top / top_path).read_bytes()
            old = self.repo.git("show", f"{commit}:{top_path}")
        except (OSError, GitError):
            return False
        before, after = _pytest_section(top_path, old), _pytest_section(top_path, new)
        return before is not None and before == after

    def ignored(self, rel: str, top_path: str) -> bool:
        """A glob without a ``/`` matches a file's name in any folder (as in ``.gitignore``)."""
        name = PurePosixPath(rel).name
        return any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(top_path, g) or ("/" not in g and fnmatch.fnmatch(name, g))
                   for g in self.ignore)

    def is_test_file(self, rel: str) -> bool:
        path = PurePosixPath(rel)
        return any(fnmatch.fnmatch(path.name, g) for g in self.test_globs) or bool(TEST_DIRS & set(path.parts[:-1]))

    def file(self, commit: str, top_path: str, kind: str, changes: FileChanges | None) -> None:
        rel = self.relative(top_path)
        if self.inifile is not None and Path(os.path.realpath(self.top / top_path)) == self.inifile:
            if self.pytest_section_same(commit, top_path):
                self.sel.changes.append(f"{rel} changed, not its pytest configuration")
                return
            self.everything(f"{rel} changed: pytest reads its configuration from it")
            return
        if self.ignored(rel, top_path):
            return
        is_python = rel.endswith((".py", ".pyw"))
        if is_python and self.is_test_file(rel):
            name = PurePosixPath(rel).name
            folder = str(PurePosixPath(rel).parent)
            folder = "" if folder == "." else folder
            if any(fnmatch.fnmatch(name, g) for g in self.test_globs if g != "conftest.py"):
                self.test_module(commit, top_path, rel, kind)
            elif not self.test_helper(commit, top_path, rel, folder, kind):
                self.sel.folders.setdefault(folder, f"{rel} changed (tests under {folder or 'the rootdir'})")
                self.sel.changes.append(f"{rel} {kind}: every test under {folder or 'the rootdir'}")
            return
        if not is_python:
            if rel.startswith("../"):
                self.sel.changes.append(f"{top_path} changed, outside the rootdir: ignored")
                return
            if TEST_DIRS & set(PurePosixPath(rel).parts[:-1]):
                parts = PurePosixPath(rel).parts
                folder = "/".join(parts[:max(i for i, p in enumerate(parts[:-1]) if p in TEST_DIRS) + 1])
                self.sel.folders.setdefault(folder, f"{rel} changed (a file in the test folder {folder})")
                self.sel.changes.append(f"{rel} {kind}: every test under {folder}")
                return
            self.everything(f"{rel} changed ({kind}): what it does to tests is unknown")
            return
        self.sel.files.setdefault(rel, f"its file changed ({rel})")  # doctests of a source module
        module = self.module_of.get(rel)
        if kind == "deleted":
            if module is None:
                self.everything(f"{rel} was deleted and was not instrumented in the baseline")
                return
            count = 0
            for fn in list(self.callers):
                if fn[0] == module:
                    count += self.select_callers(fn, f"called {fn[0]}:{fn[1]}, whose module {rel} was deleted")
            self.sel.changes.append(f"{rel} deleted: {count} tests called its functions")
            return
        self.python_file(commit, top_path, rel, module, kind, changes or FileChanges(whole=True))

    # -- a test module ------------------------------------------------------------------------------

    def test_module(self, commit: str, top_path: str, rel: str, kind: str) -> None:
        """A changed test module: only the tests whose own function changed (comments and
        formatting aside), when nothing else in the file did; else every test of the file.
        (Tests the file did not have are new, and run anyway.)"""
        whole = f"its file changed ({rel})"
        trees = self._trees(commit, top_path, rel) if kind == "modified" else None
        if trees is None:
            self.sel.files.setdefault(rel, whole)
            self.sel.changes.append(f"test file {rel} {kind}")
            return
        old_tree, new_tree = trees
        old_defs, new_defs = _definitions(old_tree), _definitions(new_tree)
        added = set(new_defs) - set(old_defs)
        deleted = set(old_defs) - set(new_defs)
        changed = {q for q in set(old_defs) & set(new_defs) if _dump(old_defs[q]) != _dump(new_defs[q])} | deleted
        (before, _n1), (after, _n2) = _statements(old_tree, deleted), _statements(new_tree, added)

        def test_name(qualname: str) -> bool:
            return qualname.partition(".<locals>.")[0].rpartition(".")[2].startswith("test")

        others = sorted(q for q in changed | added if not test_name(q))
        if before != after or others:
            why = f"a helper, fixture or module-level code of it changed ({', '.join(others[:3]) or 'module level'})"
            self.sel.files.setdefault(rel, f"its file changed ({rel}: {why})")
            self.sel.changes.append(f"test file {rel}: {why}: all its tests")
            return
        # (A test its class inherits from another file is unchanged: that file did not change,
        # or its own rule selects it; one defined here now, shadowing it, is added.)
        outer = {q.partition(".<locals>.")[0] for q in changed | added}
        count = 0
        for nodeid in self.tests_of_file().get(rel, ()):
            qualname = ".".join(nodeid.split("::")[1:]).partition("[")[0]
            if qualname in outer:
                self.sel.tests.setdefault(nodeid, f"its test function changed ({rel}::{qualname})")
                count += 1
        self.sel.changes.append(f"test file {rel}: {len(outer)} test functions changed, {len(added)} added: "
                                f"{count} tests")

    def test_helper(self, commit: str, top_path: str, rel: str, folder: str, kind: str) -> bool:
        """A changed helper module of the tests (not conftest.py): when only test methods
        changed (a mixin's, which test classes elsewhere inherit) and nothing else in it, the
        tests of those names under its folder; False when that cannot be said."""
        if PurePosixPath(rel).name == "conftest.py" or kind != "modified":
            return False
        trees = self._trees(commit, top_path, rel)
        if trees is None:
            return False
        old_tree, new_tree = trees
        old_defs, new_defs = _definitions(old_tree), _definitions(new_tree)
        added, deleted = set(new_defs) - set(old_defs), set(old_defs) - set(new_defs)
        changed = {q for q in set(old_defs) & set(new_defs) if _dump(old_defs[q]) != _dump(new_defs[q])}
        if _statements(old_tree, deleted)[0] != _statements(new_tree, added)[0]:
            return False
        touched = {q.partition(".<locals>.")[0] for q in changed | added | deleted}
        names = {q.rpartition(".")[2] for q in touched}
        if not all(name.startswith("test") for name in names):
            return False
        count = 0
        prefix = folder.rstrip("/") + "/" if folder else ""
        for nodeid in self.baseline.tests:
            if nodeid.startswith(prefix) and nodeid.split("::")[-1].partition("[")[0] in names:
                self.sel.tests.setdefault(nodeid, f"its test method changed in {rel} "
                                                  f"({nodeid.split('::')[-1].partition('[')[0]})")
                count += 1
        self.sel.changes.append(f"{rel}: test methods {', '.join(sorted(names)) or '(none)'} changed: {count} tests")
        return True

    def tests_of_file(self) -> dict[str, list[str]]:
        if self._by_file is None:
            self._by_file = {}
            for nodeid in self.baseline.tests:
                self._by_file.setdefault(nodeid.split("::", 1)[0], []).append(nodeid)
        return self._by_file

    def _trees(self, commit: str, top_path: str, rel: str) -> tuple[ast.Module, ast.Module] | None:
        try:
            new = ast.parse(_decode((self.top / top_path).read_bytes()), rel)
            old = ast.parse(_decode(self.repo.git("show", f"{commit}:{top_path}")), rel)
        except (OSError, GitError, SyntaxError, ValueError):
            return None
        return old, new

    # -- a Python source module -------------------------------------------------------------------

    def python_file(self, commit: str, top_path: str, rel: str, module: str | None, kind: str,
                    changes: FileChanges) -> None:
        from ..languages import language_for
        from ..settings import Settings

        try:
            new_bytes = (self.top / top_path).read_bytes()
        except OSError as exc:
            self.everything(f"{rel} cannot be read ({exc.strerror or exc})")
            return
        old_bytes = None
        if kind != "added":
            try:
                old_bytes = self.repo.git("show", f"{commit}:{top_path}")
            except GitError:
                old_bytes = None
        new_text = _decode(new_bytes)
        old_text = _decode(old_bytes) if old_bytes is not None else ""
        try:
            new_tree = ast.parse(new_text, rel)
            old_tree = ast.parse(old_text, rel) if old_bytes is not None else ast.Module(body=[], type_ignores=[])
        except (SyntaxError, ValueError) as exc:
            self.everything(f"{rel} does not parse ({type(exc).__name__}: {getattr(exc, 'msg', exc)})")
            return
        # The hook's changed functions: records whose lines the diff touches.
        touched: set[str] = set()
        language = language_for(rel, new_bytes[:256])
        if language is not None and language.name == "python" and not changes.whole:
            try:
                parsed = language.parse(new_text, rel, Settings())
            except Exception:  # the syntax trees below still decide
                parsed = None
            if parsed is not None:
                touched = {r.qualname for r in parsed.functions
                           if changes.touches(r.start_line, r.end_line, r.indent)}
        old_defs, new_defs = _definitions(old_tree), _definitions(new_tree)
        changed = sorted(q for q in set(old_defs) & set(new_defs)
                         if _dump(old_defs[q]) != _dump(new_defs[q]))
        cosmetic = sorted(touched & set(old_defs) & set(new_defs) - set(changed))
        added = sorted(set(new_defs) - set(old_defs))
        deleted = sorted(set(old_defs) - set(new_defs))
        if cosmetic:
            self.sel.changes.append(f"{rel}: {', '.join(cosmetic)}: comments or formatting only (not a change)")
        if old_bytes is not None and not self.module_level(rel, old_tree, new_tree, old_defs, new_defs,
                                                           set(deleted), set(added)):
            return
        if module is None and (changed or deleted or (added and old_bytes is not None)):
            self.everything(f"{rel} changed and was not instrumented in the baseline: who calls it is unknown")
            return
        instrumented = self.baseline.instrumented
        for qualname in changed + deleted:
            fn = (module or "", qualname)
            what = "changed" if qualname in changed else "deleted"
            if fn in self.callers or fn in instrumented:
                if fn in self.baseline.outside:
                    self.everything(f"{module}:{qualname} {what}: it was called outside any test (at import)")
                    return
                count = self.select_callers(fn, f"called {module}:{qualname} ({what})")
                self.sel.changes.append(f"{module}:{qualname} {what}: {count} tests called it")
            elif not self._enclosed_by_changed(qualname, changed, module):
                self.everything(f"{module}:{qualname} {what} but was not instrumented in the baseline "
                                "(trivial or opted out): who calls it is unknown")
                return
        old_bound = _top_level_names(old_tree)
        for qualname in added:
            name = qualname.rpartition(".")[2]
            if name.startswith("__") and name.endswith("__") and "<locals>" not in qualname:
                self.everything(f"{module or rel}:{qualname} is a new special method: instances may behave "
                                "differently without a recorded call")
                return
            if "." not in qualname and name in old_bound:
                self.everything(f"{module or rel}:{qualname} is new and rebinds the module's name {name!r}")
                return
            if "<locals>" in qualname:
                continue  # inside a function that is changed (its tree differs) or new itself
            count = 0
            for fn in sorted(self.names.get(name, ())):
                count += self.select_callers(fn, f"called {fn[0]}:{fn[1]}, which new {module or rel}:{qualname} "
                                             "may override or shadow")
            self.sel.changes.append(f"{module or rel}:{qualname} new: {count} tests called a function of that name")

    def module_level(self, rel: str, old_tree: ast.Module, new_tree: ast.Module, old_defs: dict[str, ast.AST],
                     new_defs: dict[str, ast.AST],
                     deleted: set[str], added: set[str]) -> bool:
        """Judge the module-level statements that differ (class bodies included). A statement
        that only binds names (an assignment, an import, a docstring) affects the code that
        reads those names: every function, test file and module-level statement of the
        project that mentions one of them (by name or as an attribute) is taken as changed.
        Anything else at module level (a call, an ``if``, a loop, changed decorators or class
        bases) runs every test. False when every test runs."""
        (before, old_nodes), (after, new_nodes) = _statements(old_tree, deleted), _statements(new_tree, added)
        differing = list((before - after).elements()) + list((after - before).elements())
        nodes = {**old_nodes, **new_nodes}
        names: set[str] = set()
        old_bound = _top_level_names(old_tree)
        for key in differing:
            kind, qualname = key[0], key[1]
            statement = nodes[key]
            if kind == "def":
                self.everything(f"the decorators of {rel}:{qualname} changed: they run at import")
                return False
            if kind == "class":
                if qualname in {k[1] for k in before if k[0] == "class"} and \
                        qualname in {k[1] for k in after if k[0] == "class"}:
                    self.everything(f"the bases or decorators of class {rel}:{qualname} changed")
                    return False
                name = qualname.rpartition(".")[2]
                if "." not in qualname and key in after and name in old_bound:
                    self.everything(f"new class {rel}:{qualname} rebinds the module's name {name!r}")
                    return False
                names.add(name)
                continue
            bound = _binds(statement)
            if bound is None:
                line = getattr(statement, "lineno", None)
                what = {"Assign": "an assignment that calls something", "AnnAssign": "an assignment that calls something",
                        "AugAssign": "an assignment that calls something", "Expr": "an expression statement (a call)"}
                self.everything(f"module-level code of {rel} changed{f' (line {line})' if line else ''}: "
                                f"{what.get(type(statement).__name__, 'a ' + type(statement).__name__ + ' statement')} "
                                "runs at import, every test may see it")
                return False
            names |= bound
        if names:
            self.names_changed(rel, names)
        return self.sel.everything is None

    def names_changed(self, rel: str, names: set[str]) -> None:
        """Select what reads ``names``: the callers of every function that mentions one, the
        tests of every test file that does, every test under a folder whose conftest or helper
        does; a module-level statement that mentions one binds more names (followed to a fixed
        point) or, when it does more than bind, runs every test."""
        names = set(names)
        pending = set(names)
        done_statements: set[tuple[str, int]] = set()
        while pending:
            found: set[str] = set()
            for entry in self.project_index():
                path, module, kind, functions, statements, refs = entry
                if not (refs & pending):
                    continue
                if kind == "test":
                    self.sel.files.setdefault(path, f"it reads {', '.join(sorted(refs & names))}, which {rel} changed")
                    continue
                if kind == "test-helper":
                    folder = str(PurePosixPath(path).parent)
                    folder = "" if folder == "." else folder
                    self.sel.folders.setdefault(folder, f"{path} reads {', '.join(sorted(refs & names))}, "
                                                        f"which {rel} changed")
                    continue
                for qualname, used in functions.items():
                    if not (used & pending):
                        continue
                    fn = (module or "", qualname)
                    if module is None or (fn not in self.baseline.instrumented and fn not in self.callers):
                        if module is None or not self._enclosed(qualname, functions, pending, module):
                            self.everything(f"{path}:{qualname} reads {', '.join(sorted(used & pending))} "
                                            f"(changed in {rel}) and was not instrumented in the baseline")
                            return
                        continue
                    if fn in self.baseline.outside:
                        self.everything(f"{module}:{qualname} reads {', '.join(sorted(used & pending))} "
                                        f"(changed in {rel}) and was called outside any test")
                        return
                    count = self.select_callers(fn, f"called {module}:{qualname}, which reads "
                                                    f"{', '.join(sorted(used & names))} ({rel} changed)")
                    self.sel.changes.append(f"{module}:{qualname} reads {', '.join(sorted(used & pending))}: "
                                            f"{count} tests called it")
                for line, bound, used in statements:
                    if not (used & pending) or (path, line) in done_statements:
                        continue
                    done_statements.add((path, line))
                    if bound is None:
                        self.everything(f"module-level code of {path} (line {line}) reads "
                                        f"{', '.join(sorted(used & pending))}, which {rel} changed")
                        return
                    found |= bound - names
            names |= found
            pending = found
        self.sel.changes.append(f"{rel}: module-level names changed: {', '.join(sorted(names))}")

    def project_index(self) -> list[_IndexEntry]:
        """Every Python file of the project under the rootdir, parsed once: (path, module,
        kind, {qualname: names it mentions}, [(line, names bound or None, names mentioned)]
        of its module-level statements, every name it mentions)."""
        if self._index is not None:
            return self._index
        index: list[_IndexEntry] = []
        out = self.repo.git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
        for name in sorted({os.fsdecode(p) for p in out.split(b"\0") if p.endswith((b".py", b".pyw"))}):
            rel = self.relative(name)
            if rel.startswith("../") or not (self.top / name).is_file() or self.ignored(rel, name) \
                    or (PurePosixPath(rel).name in TOOL_FILES and not (self.top / name).with_name("__init__.py").exists()):
                continue
            try:
                tree = ast.parse(_decode((self.top / name).read_bytes()), rel)
            except (SyntaxError, ValueError, OSError):
                continue
            if self.is_test_file(rel):
                kind = "test" if any(fnmatch.fnmatch(PurePosixPath(rel).name, g) for g in self.test_globs
                                     if g != "conftest.py") else "test-helper"
            else:
                kind = "source"
            functions = {q: _mentions(node) for q, node in _definitions(tree).items()}
            statements: list[tuple[int, set[str] | None, set[str]]] = []
            for line, statement in _module_statements(tree):
                statements.append((line, _binds(statement), _mentions(statement)))
            index.append((rel, self.module_of.get(rel), kind, functions, statements, _mentions(tree)))
        self._index = index
        return index

    def _enclosed(self, qualname: str, functions: dict[str, set[str]], pending: set[str], module: str) -> bool:
        parts = qualname.split(".<locals>.")
        for end in range(len(parts) - 1, 0, -1):
            outer = ".<locals>.".join(parts[:end])
            if (module, outer) in self.baseline.instrumented or (module, outer) in self.callers:
                return True
        return False

    def _enclosed_by_changed(self, qualname: str, changed: list[str], module: str | None) -> bool:
        """A nested function's changes are its enclosing function's: covered when that one is
        changed and its callers are known."""
        parts = qualname.split(".<locals>.")
        for end in range(len(parts) - 1, 0, -1):
            outer = ".<locals>.".join(parts[:end])
            if outer in changed and ((module or "", outer) in self.baseline.instrumented
                                     or (module or "", outer) in self.callers):
                return True
        return False


# -- syntax trees ---------------------------------------------------------------------------------


def _pytest_section(name: str, data: bytes) -> str | None:
    """The pytest part of a configuration file, comparable; None when it cannot be read (or for
    ``pytest.ini``, which is all pytest's)."""
    import configparser

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if name.endswith(".toml"):
        if sys.version_info < (3, 11):  # Python 3.10: not judged
            return None
        else:  # (an else, not code after the return: mypy checks the import only for 3.11+)
            import tomllib

            try:
                return repr(tomllib.loads(text).get("tool", {}).get("pytest"))
            except ValueError:
                return None
    if name.endswith((".cfg", ".ini")) and not name.endswith("pytest.ini"):
        parser = configparser.RawConfigParser()
        try:
            parser.read_string(text)
        except configparser.Error:
            return None
        section = "tool:pytest" if name.endswith(".cfg") else "pytest"
        return repr(sorted(parser.items(section))) if parser.has_section(section) else repr(None)
    return None


def _decode(data: bytes) -> str:
    from ..sourcefile import decode_source

    try:
        return decode_source(data).text
    except Exception:
        return data.decode("utf-8", "replace")


def _definitions(tree: ast.AST) -> dict[str, ast.AST]:
    """qualname -> the def node of every function, at any depth."""
    found: dict[str, ast.AST] = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qualname = f"{prefix}{child.name}"
                found.setdefault(qualname, child)
                walk(child, f"{qualname}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(tree, "")
    return found


def _dump(node: ast.AST) -> str:
    return ast.dump(node, include_attributes=False)


def _statements(tree: ast.Module, drop: set[str]
                ) -> tuple[Counter[tuple[str, str, str]], dict[tuple[str, str, str], ast.AST]]:
    """What runs at import, as comparable keys: every module-level and class-body statement
    (its syntax tree without positions), a function as its decorators (they run at import),
    a class as its header; the functions in ``drop`` (new or deleted ones, handled by their
    own rules) are left out."""
    found: Counter[tuple[str, str, str]] = Counter()
    nodes: dict[tuple[str, str, str], ast.AST] = {}

    def body(statements: list[ast.stmt], prefix: str) -> None:
        for statement in statements:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qualname = f"{prefix}{statement.name}"
                if qualname not in drop:
                    key = ("def", qualname, "|".join(_dump(d) for d in statement.decorator_list))
                    nodes[key] = statement
                    found[key] += 1
            elif isinstance(statement, ast.ClassDef):
                qualname = f"{prefix}{statement.name}"
                head = ast.ClassDef(name=statement.name, bases=statement.bases, keywords=statement.keywords,
                                    body=[], decorator_list=statement.decorator_list,
                                    **({"type_params": statement.type_params} if hasattr(statement, "type_params") else {}))
                key = ("class", qualname, _dump(head))
                nodes[key] = statement
                found[key] += 1
                body(statement.body, f"{qualname}.")
            else:
                key = ("stmt", prefix, _dump(statement))
                nodes[key] = statement
                found[key] += 1

    body(tree.body, "")
    return found, nodes


def _module_statements(tree: ast.Module) -> list[tuple[int, ast.stmt]]:
    """The statements that run at import, outside functions: module level and class bodies."""
    found: list[tuple[int, ast.stmt]] = []

    def body(statements: list[ast.stmt]) -> None:
        for statement in statements:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(statement, ast.ClassDef):
                body(statement.body)
                continue
            found.append((statement.lineno, statement))

    body(tree.body)
    return found


def _binds(statement: ast.AST) -> set[str] | None:
    """The names a statement only binds (an assignment, an import, a docstring), or None when
    it does more than that at import (a call, an ``if``, a loop...)."""
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return {"__doc__"}
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        if any(alias.name == "*" for alias in statement.names):
            return None
        return {(alias.asname or alias.name).partition(".")[0] for alias in statement.names}
    if isinstance(statement, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        value = getattr(statement, "value", None)
        if value is not None and any(isinstance(n, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr))
                                     for n in ast.walk(value)):
            return None  # it calls something at import: whatever that does
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        names: set[str] = set()
        for target in targets:
            for node in ast.walk(target):
                if isinstance(node, ast.Name):
                    names.add(node.id)
                elif isinstance(node, (ast.Attribute, ast.Subscript)):
                    return None  # it changes another object
        return names
    if isinstance(statement, ast.Pass):
        return set()
    return None


def _mentions(node: ast.AST) -> set[str]:
    found: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            found.add(child.id)
        elif isinstance(child, ast.Attribute):
            found.add(child.attr)
        elif isinstance(child, ast.alias):
            found.add((child.asname or child.name).partition(".")[0])
            found.add(child.name.rpartition(".")[2])
    return found


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for statement in tree.body:
        if isinstance(statement, (ast.Import, ast.ImportFrom)):
            for alias in statement.names:
                names.add((alias.asname or alias.name).partition(".")[0])
        elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(statement.name)
        else:
            for node in ast.walk(statement):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    names.add(node.id)
    return names


def git_available() -> bool:
    try:
        subprocess.run(["git", "--version"], capture_output=True, check=True)
        return True
    except (OSError, subprocess.CalledProcessError):
        return False
