"""The import hook's finder alone: which specs it claims, whose answer it takes, and that
names it never wants cost no finder a question.

No module is imported here: ``find_spec`` is called directly, with ``sys.meta_path`` (and,
where a test needs it, ``sys.path``) set to finders the test controls. The engine is never
reached: it runs only when a claimed module is loaded.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, cast

import pytest

from pytest_telemetry_inject.plugin.importhook import TelemetryFinder, TelemetryLoader

if TYPE_CHECKING:
    from pytest_telemetry_inject.engine.pipeline import Engine

ModuleSpec = importlib.machinery.ModuleSpec


def _finder(project: Path, prefixes: tuple[str, ...] = ()) -> TelemetryFinder:
    """A finder that wants the files under ``project`` (as the session wants its candidates)."""
    inside = os.path.realpath(project) + os.sep

    def wants(origin: str) -> bool:
        return os.path.realpath(origin).startswith(inside)

    return TelemetryFinder(cast("Engine", object()), wants, prefixes=prefixes)


def _write(path: Path, text: str = "def f():\n    return 1\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


class MappingFinder:
    """A finder that knows some modules by name, as setuptools' editable finder does: a
    module's spec points at a file that is on no ``sys.path`` entry."""

    def __init__(self, make: Callable[[str], ModuleSpec | None]) -> None:
        self.make = make
        self.asked: list[str] = []

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        self.asked.append(fullname)
        return self.make(fullname)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    _write(root / "pkg" / "__init__.py", "")
    _write(root / "pkg" / "mod.py")
    return root


def test_a_module_under_the_project_is_claimed(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finder = _finder(project)
    monkeypatch.setattr(sys, "meta_path", [finder, importlib.machinery.PathFinder])
    spec = finder.find_spec("pkg.mod", [str(project / "pkg")])
    assert spec is not None
    assert isinstance(spec.loader, TelemetryLoader)
    assert spec.origin == str(project / "pkg" / "mod.py")


def test_a_module_outside_the_project_is_not(project: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "elsewhere" / "pkg" / "__init__.py", "")
    _write(tmp_path / "elsewhere" / "pkg" / "mod.py")
    finder = _finder(project)
    monkeypatch.setattr(sys, "meta_path", [finder, importlib.machinery.PathFinder])
    assert importlib.machinery.PathFinder.find_spec("pkg.mod", [str(tmp_path / "elsewhere" / "pkg")]) is not None
    spec = finder.find_spec("pkg.mod", [str(tmp_path / "elsewhere" / "pkg")])
    # Not ours: the path finder's own answer, unchanged (the import system would get it next).
    assert spec is not None and type(spec.loader) is importlib.machinery.SourceFileLoader
    assert spec.origin == str(tmp_path / "elsewhere" / "pkg" / "mod.py")


def test_a_finder_that_answers_first_is_respected(project: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # An editable install: its finder maps the name to the project's file, while sys.path
    # holds another copy of the package that the standard path finder would find.
    _write(tmp_path / "site" / "pkg" / "__init__.py", "")
    _write(tmp_path / "site" / "pkg" / "mod.py")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site")])
    mapped = {"pkg": project / "pkg" / "__init__.py"}

    def make(name: str) -> ModuleSpec | None:
        if name not in mapped:
            return None
        return importlib.util.spec_from_file_location(name, mapped[name],
                                                      submodule_search_locations=[str(mapped[name].parent)])

    editable = MappingFinder(make)
    finder = _finder(project)
    monkeypatch.setattr(sys, "meta_path", [finder, editable, importlib.machinery.PathFinder])
    spec = finder.find_spec("pkg")
    assert editable.asked == ["pkg"]
    assert spec is not None and isinstance(spec.loader, TelemetryLoader)
    assert spec.origin == str(project / "pkg" / "__init__.py")


def test_a_finder_after_the_path_finder_is_asked_too(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # setuptools appends its editable finder: the path finder, asked before it, finds nothing.
    editable = MappingFinder(lambda name: importlib.util.spec_from_file_location(name, project / "pkg" / "mod.py")
                             if name == "flat_mod" else None)
    finder = _finder(project)
    monkeypatch.setattr(sys, "path", [])
    monkeypatch.setattr(sys, "meta_path", [finder, importlib.machinery.PathFinder, editable])
    spec = finder.find_spec("flat_mod")
    assert spec is not None and isinstance(spec.loader, TelemetryLoader)
    assert spec.origin == str(project / "pkg" / "mod.py")


def test_a_spec_that_is_no_source_file_is_left_alone(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An extension module in the project, found first, decides the import: the source file
    # of the same name that the path finder would give is not served in its place.
    extension = project / "pkg" / "mod.cpython-311-x86_64-linux-gnu.so"

    def make(name: str) -> ModuleSpec | None:
        loader = importlib.machinery.ExtensionFileLoader(name, str(extension))
        return importlib.util.spec_from_file_location(name, extension, loader=loader)

    native = MappingFinder(make)
    finder = _finder(project)
    monkeypatch.setattr(sys, "meta_path", [finder, native, importlib.machinery.PathFinder])
    spec = finder.find_spec("pkg.mod", [str(project / "pkg")])
    assert spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
    assert native.asked == ["pkg.mod"]


class OwnLoader(importlib.abc.Loader):
    """A project's own loader for a source file (not a ``SourceFileLoader``)."""

    def exec_module(self, module: ModuleType) -> None:
        raise AssertionError("never run here")


def test_a_source_file_with_someone_elses_loader_is_left_alone(project: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    own = MappingFinder(lambda name: importlib.util.spec_from_file_location(name, project / "pkg" / "mod.py",
                                                                           loader=OwnLoader()))
    finder = _finder(project)
    monkeypatch.setattr(sys, "meta_path", [finder, own, importlib.machinery.PathFinder])
    spec = finder.find_spec("pkg.mod", [str(project / "pkg")])
    assert spec is not None and isinstance(spec.loader, OwnLoader)
    assert own.asked == ["pkg.mod"]


def test_a_namespace_package_is_left_alone(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / "space").mkdir()
    _write(project / "space" / "inner.py")
    finder = _finder(project)
    monkeypatch.setattr(sys, "path", [str(project)])
    monkeypatch.setattr(sys, "meta_path", [finder, importlib.machinery.PathFinder])
    plain = importlib.machinery.PathFinder.find_spec("space")
    assert plain is not None and plain.submodule_search_locations  # the path finder's namespace spec
    spec = finder.find_spec("space")
    assert spec is not None and spec.origin == plain.origin and not isinstance(spec.loader, TelemetryLoader)
    assert list(spec.submodule_search_locations or ()) == list(plain.submodule_search_locations)
    assert finder.find_spec("space.inner", [str(project / "space")]) is not None  # its modules are claimed


def test_a_module_not_ours_is_looked_up_once_per_import(project: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The hook hands over the answer it got, so the finders are not asked a second time.
    _write(tmp_path / "elsewhere" / "not_ours_once.py", "VALUE = 7\n")
    counting = MappingFinder(lambda name: importlib.util.spec_from_file_location(
        name, tmp_path / "elsewhere" / "not_ours_once.py") if name == "not_ours_once" else None)
    finder = _finder(project)
    monkeypatch.setattr(sys, "meta_path", [finder, counting, importlib.machinery.PathFinder])
    monkeypatch.delitem(sys.modules, "not_ours_once", raising=False)
    module = importlib.import_module("not_ours_once")
    assert module.VALUE == 7 and type(module.__spec__.loader) is importlib.machinery.SourceFileLoader
    assert counting.asked == ["not_ours_once"]
    monkeypatch.delitem(sys.modules, "not_ours_once")


def test_after_a_finder_fails_the_import_system_asks_again_and_sees_the_failure(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "elsewhere" / "not_ours_failing.py")

    def fail(name: str) -> ModuleSpec | None:
        raise RuntimeError("this finder is broken")

    broken = MappingFinder(fail)
    later = MappingFinder(lambda name: importlib.util.spec_from_file_location(
        name, tmp_path / "elsewhere" / "not_ours_failing.py"))
    finder = _finder(project)
    monkeypatch.setattr(sys, "meta_path", [finder, broken, later])
    assert finder.find_spec("not_ours_failing") is None  # (the later finder's answer is not handed over)
    with pytest.raises(RuntimeError, match="this finder is broken"):
        importlib.import_module("not_ours_failing")


def test_names_never_wanted_ask_no_finder(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def spy(fullname: str, path: Sequence[str] | None, target: ModuleType | None) -> ModuleSpec | None:
        calls.append(fullname)
        return importlib.util.spec_from_file_location(fullname, project / "pkg" / "mod.py")

    finder = _finder(project)
    monkeypatch.setattr(finder, "_find_spec", spy)
    for name in ("json", "json.decoder", "_pytest.python", "pytest_telemetry_inject.plugin.session", "xdist"):
        assert finder._early_bailout(name)
        assert finder.find_spec(name) is None
    assert calls == []
    assert not finder._early_bailout("pkg.mod")
    assert finder.find_spec("pkg.mod") is not None
    assert calls == ["pkg.mod"]  # the spy does count


def test_with_prefixes_other_names_ask_no_finder(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def spy(fullname: str, path: Sequence[str] | None, target: ModuleType | None) -> ModuleSpec | None:
        calls.append(fullname)
        return importlib.util.spec_from_file_location(fullname, project / "pkg" / "mod.py")

    finder = _finder(project, prefixes=("pkg",))
    monkeypatch.setattr(finder, "_find_spec", spy)
    for name in ("pkgextra", "other.pkg", "mod"):
        assert finder._early_bailout(name)
        assert finder.find_spec(name) is None
    assert calls == []
    assert finder.find_spec("pkg") is not None and finder.find_spec("pkg.mod") is not None
    assert calls == ["pkg", "pkg.mod"]


def test_a_module_loaded_around_the_hook_is_found_through_a_link_and_a_namesake_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``reports.loaded_elsewhere``: a project file imported by a plain loader under another
    path (a folder linked to the project's) is reported; another package's ``__init__.py``,
    which shares the candidate's name only, is not, nor is a module the hook loaded."""
    from pytest_telemetry_inject.plugin.reports import loaded_elsewhere

    project = tmp_path / "project"
    _write(project / "pkg" / "__init__.py")
    _write(project / "pkg" / "mod.py")
    _write(tmp_path / "other" / "__init__.py")
    (tmp_path / "linked").symlink_to(project / "pkg", target_is_directory=True)
    candidates = {os.path.realpath(p) for p in (project / "pkg" / "__init__.py", project / "pkg" / "mod.py")}

    def module(name: str, path: Path) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None
        found = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, found)
        return found

    module("linked_mod", tmp_path / "linked" / "mod.py")
    module("other", tmp_path / "other" / "__init__.py")
    module("pkg", project / "pkg" / "__init__.py")
    found = loaded_elsewhere(candidates, {"pkg": str(project / "pkg" / "__init__.py")}, [])
    assert set(found) == {"linked_mod"}
    assert "without going through the telemetry import hook" in found["linked_mod"]
