"""`pytest --inject-telemetry` where the project or the cache is not the usual: no cache, a
cache that cannot be written, a module this Python cannot compile, modules named like tool
files inside a package."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

MODULE = '''\
def double(x):
    y = x * 2
    return y
'''

TESTS = '''\
from pkg.core import double


def test_double():
    assert double(2) == 4
'''


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\naddopts = "-p no:cacheprovider"\n')
    (pytester.path / "pkg").mkdir()
    (pytester.path / "pkg" / "__init__.py").write_text("")
    (pytester.path / "pkg" / "core.py").write_text(MODULE)
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_core.py").write_text(TESTS)
    return pytester


def test_without_a_cache_the_generated_tests_run_from_memory(project: pytest.Pytester,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMETRY_INJECT_USE_CACHE", "false")
    for _ in range(2):
        result = project.runpytest_subprocess("--inject-telemetry")
        result.assert_outcomes(passed=2)  # the test and pkg/core.py::telemetry
        result.stdout.fnmatch_lines(["*1 functions instrumented in 1 files*; 1 called, 1 calls*",
                                     "cache: off (use_cache = false)*run in memory*"])
        assert result.stdout.str().count("cache: off") == 1
    assert not (project.path / ".telemetry_cache").exists()


def test_a_cache_that_cannot_be_written_warns_once_and_loses_nothing(project: pytest.Pytester,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (project.path / "blocker").write_text("a file where the cache's parent folder should be\n")
    monkeypatch.setenv("TELEMETRY_INJECT_CACHE_DIR", str(project.path / "blocker" / "cache"))
    result = project.runpytest_subprocess("--inject-telemetry", "--telemetry-report=report.json")
    result.assert_outcomes(passed=2)
    lines = [line for line in result.stdout.lines if line.startswith("cache: ")]
    assert len(lines) == 1 and "cannot write the cache" in lines[0], lines
    report = json.loads((project.path / "report.json").read_text())
    assert [f["name"] for f in report["functions"] if f["count"]] == ["double"]


def test_a_module_this_python_cannot_compile_is_left_out_and_counted_as_skipped(project: pytest.Pytester) -> None:
    # Python 2: tree-sitter reads it, this Python does not compile it.
    (project.path / "pkg" / "legacy.py").write_text('def old(x):\n    print "x", x\n    return x\n')
    result = project.runpytest_subprocess("--inject-telemetry")
    result.assert_outcomes(passed=2)  # no telemetry item for pkg/legacy.py, and none failing
    result.stdout.fnmatch_lines(["*1 functions instrumented in 1 files*"])
    assert "legacy.py::telemetry" not in result.stdout.str()


def test_modules_named_like_tool_files_inside_a_package_are_the_projects(project: pytest.Pytester) -> None:
    for name in ("tasks", "conf", "setup"):
        (project.path / "pkg" / f"{name}.py").write_text(f"def run_{name}(x):\n    y = x + 1\n    return y\n")
    (project.path / "tasks.py").write_text("def task(c):\n    c = 1\n    return c\n")  # the project's own tool file
    (project.path / "docs").mkdir()
    (project.path / "docs" / "conf.py").write_text("def setup(app):\n    app = 1\n    return app\n")
    (project.path / "tests" / "test_tools.py").write_text(textwrap.dedent("""\
        from pkg.conf import run_conf
        from pkg.setup import run_setup
        from pkg.tasks import run_tasks


        def test_them():
            assert run_tasks(1) + run_conf(1) + run_setup(1) == 6
        """))
    result = project.runpytest_subprocess("--inject-telemetry")
    result.assert_outcomes(passed=6)  # two tests, four telemetry items
    result.stdout.fnmatch_lines(["*4 functions instrumented in 4 files*; 4 called*"])
    out = result.stdout.str()
    assert "pkg.tasks:run_tasks" in out and "pkg.conf:run_conf" in out and "pkg.setup:run_setup" in out
    assert "docs/conf.py::telemetry" not in out and "tasks.py::telemetry" not in out.replace("pkg/tasks.py", "")


def test_every_import_mode_and_finder_gets_telemetry(project: pytest.Pytester) -> None:
    """pytest's importlib mode imports a package's ``__init__.py`` by path (after asking the
    finders with the package's own folder as the path): it is instrumented too, and so is a
    module that a finder of the project's own on ``sys.meta_path`` serves."""
    (project.path / "pkg" / "__init__.py").write_text(textwrap.dedent('''\
        """The package."""


        def answer():
            """
            >>> answer()
            42
            """
            value = 42
            return value
        '''))
    (project.path / "pkg" / "core.py").write_text(MODULE + textwrap.dedent('''\


        def documented():
            """
            >>> double(3)
            6
            """
            value = 1
            return value
        '''))
    (project.path / "extra").mkdir()
    (project.path / "extra" / "served.py").write_text("def served(x):\n    y = x + 1\n    return y\n")
    (project.path / "conftest.py").write_text(textwrap.dedent('''\
        import importlib.machinery
        import os
        import sys

        HERE = os.path.dirname(__file__)


        class ProjectFinder:
            """A finder of the project's own: serves `served` from a folder not on sys.path."""

            def find_spec(self, name, path=None, target=None):
                if name != "served":
                    return None
                return importlib.machinery.PathFinder.find_spec(name, [os.path.join(HERE, "extra")])


        sys.meta_path.append(ProjectFinder())
        '''))
    (project.path / "tests" / "test_served.py").write_text("import served\n\n\ndef test_served():\n    assert served.served(1) == 2\n")
    project.makepyprojecttoml('[tool.pytest.ini_options]\naddopts = "-p no:cacheprovider --doctest-modules '
                              '--import-mode=importlib"\n')
    result = project.runpytest_subprocess("--inject-telemetry")
    result.assert_outcomes(passed=7)  # 2 tests, 2 doctests, 3 telemetry items
    result.stdout.fnmatch_lines(["*4 functions instrumented in 3 files*; 3 called*"])
    out = result.stdout.str()
    for name in ("pkg:answer", "pkg.core:double", "served:served"):
        assert name in out, name
    assert "not instrumented" not in out


def test_a_module_loaded_around_the_hook_is_named_in_the_summary(project: pytest.Pytester) -> None:
    (project.path / "pkg" / "loose.py").write_text("def loose(x):\n    y = x + 1\n    return y\n")
    (project.path / "tests" / "test_loose.py").write_text(textwrap.dedent('''\
        import importlib.util
        from pathlib import Path


        def test_loaded_by_path():
            path = Path(__file__).parents[1] / "pkg" / "loose.py"
            spec = importlib.util.spec_from_file_location("pkg.loose", path)
            module = importlib.util.module_from_spec(spec)
            import sys
            sys.modules["pkg.loose"] = module
            spec.loader.exec_module(module)
            assert module.loose(1) == 2


        def test_an_alias_of_an_instrumented_module():
            # as toolz's tlz package does: the module's namespace under another name, by a
            # loader of its own (the functions are the instrumented ones: not a module left out)
            import importlib.machinery
            import sys
            import types
            import pkg.core

            alias = types.ModuleType("pkg_alias")
            alias.__dict__.update(pkg.core.__dict__)
            alias.__name__ = "pkg_alias"
            alias.__spec__ = importlib.machinery.ModuleSpec("pkg_alias", object(), origin=pkg.core.__file__)
            sys.modules["pkg_alias"] = alias
            assert alias.double(2) == 4


        def test_an_alias_of_a_module_with_nothing_to_instrument():
            # (tlz.compatibility: toolz/compatibility.py has no function: the hook left it as it was)
            import importlib.machinery
            import sys
            import types
            import pkg.consts

            alias = types.ModuleType("consts_alias")
            alias.__dict__.update(pkg.consts.__dict__)
            alias.__spec__ = importlib.machinery.ModuleSpec("consts_alias", object(), origin=pkg.consts.__file__)
            sys.modules["consts_alias"] = alias
            assert alias.VALUE == 1
        '''))
    (project.path / "pkg" / "consts.py").write_text("VALUE = 1\n")
    result = project.runpytest_subprocess("--inject-telemetry")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["not instrumented: pkg.loose: imported by SourceFileLoader without going through "
                                 "the telemetry import hook"])
    assert "pkg_alias" not in result.stdout.str() and "consts_alias" not in result.stdout.str()


def test_the_collection_header_counts_the_telemetry_items(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--inject-telemetry")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["collected 1 item",
                                 "telemetry: 1 more items, one per instrumented file (path::telemetry*); 2 items in all"])


def test_modules_imported_before_the_hook_are_named_with_who_imported_them(project: pytest.Pytester,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (project.path / "pkg" / "plugin.py").write_text("from pkg import core  # imported with the plugin\n")
    startup = project.path.parent / f"{project.path.name}-startup"
    startup.mkdir()
    (startup / "sitecustomize.py").write_text("import pkg.early\n")
    (project.path / "pkg" / "early.py").write_text("def early(x):\n    y = x\n    return y\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(startup), str(project.path)]))
    result = project.runpytest_subprocess("--inject-telemetry", "-p", "pkg.plugin")
    result.assert_outcomes(passed=3)  # the test and two files' telemetry items (their scripts are fine)
    result.stdout.fnmatch_lines([
        "imported before telemetry could be injected (it runs without it): pkg.core: pytest imported it for "
        "`-p pkg.plugin`*load that plugin from conftest.py instead, or use telemetry_exclude*",
        "imported before telemetry could be injected (it runs without it): pkg.early: imported at interpreter "
        "start-up*sitecustomize*",
    ])
    assert "--telemetry-modules" not in result.stdout.str()
