"""The plugin's promise on the reports that broke it: the suite runs as it runs without the
plugin, and ``pytest --cov --cov-branch`` reports the same lines and branches (real pytest,
pytest-cov, coverage and cloudpickle, in subprocesses)."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

PACKAGE = {
    "pkg/__init__.py": "",
    # The reproduction of the coverage report: a final if/else whose first branch ends in a
    # nested if, and a generator whose loops end its branches.
    "pkg/m.py": '''
        class S:
            def __init__(self, included, excluded):
                self._included, self._excluded = included, excluded

            def add(self, item):
                if self._included is None:
                    if item in self._excluded:
                        self._excluded.remove(item)
                else:
                    self._included.add(item)


        def pairs(root, multi):
            curr = root
            if multi:
                while curr:
                    yield curr
                    curr = curr - 1
            else:
                while curr:
                    yield curr
                    curr = curr - 2


        def check(x):
            if x < 0: raise ValueError(x)
    ''',
    # What a function reads of its own frame, and one-line bodies (the text decorates them).
    "pkg/frames.py": '''
        import sys
        import warnings


        class Options:
            def __init__(self, a, b):
                self.a, self.b = a, b


        def make(a=1, b=2):
            kwargs = dict(locals())
            return Options(**kwargs)


        def old(): warnings.warn("old", DeprecationWarning, stacklevel=2)


        def caller(): return sys._getframe(1).f_code.co_name
    ''',
    # cloudpickle pickles a nested function by value, with the globals it uses: the module's
    # _telemetry tracer among them once the plugin instruments it.
    "pkg/factory.py": '''
        def make_adder(n):
            def add(x):
                return x + n
            return add
    ''',
}

TESTS = '''
    import inspect
    import warnings

    import cloudpickle
    import pytest

    from pkg import factory, frames, m


    def test_reproduction():
        m.S(None, set()).add(1)
        assert list(m.pairs(2, True)) == [2, 1]
        m.check(1)


    def test_frames():
        options = frames.make()
        assert (options.a, options.b) == (1, 2)
        assert frames.make.__code__.co_varnames == ("a", "b", "kwargs")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            frames.old()
        assert [w.filename for w in seen] == [__file__]
        assert frames.caller() == "test_frames"
        assert frames.caller.__code__.co_name == "caller"


    def test_cloudpickle():
        assert cloudpickle.loads(cloudpickle.dumps(factory.make_adder(2)))(1) == 3
'''


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    for name, text in PACKAGE.items():
        path = pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_fidelity.py").write_text(textwrap.dedent(TESTS).lstrip("\n"))
    pytester.makeini("[pytest]\ntestpaths = tests\n")
    return pytester


def coverage(project: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict, dict]:
    """The run, the term-missing lines per file, and per file the JSON report's lines and
    branches with every arc the data file holds (a line's way out that is no branch too)."""
    import coverage as coverage_py

    out = project.path / "cov.json"
    result = project.runpytest_subprocess("--cov=pkg", "--cov-branch", "--cov-report=term-missing",
                                          f"--cov-report=json:{out}", "-p", "no:cacheprovider", *args)
    missing = {}
    for line in result.stdout.lines:
        found = re.match(r"(pkg/\S+\.py)\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+%\s*(.*)$", line)
        if found:
            missing[found.group(1)] = found.group(2).strip()
    data = json.loads(out.read_text())
    files = {name: {key: sorted(map(tuple, f[key])) if "branches" in key else sorted(f[key])
                    for key in ("executed_lines", "missing_lines", "executed_branches", "missing_branches")}
             for name, f in data["files"].items()}
    stored = coverage_py.CoverageData(basename=str(project.path / ".coverage"))
    stored.read()
    for path in stored.measured_files():
        files[str(Path(path).relative_to(project.path))]["arcs"] = sorted(stored.arcs(path) or ())
    (project.path / ".coverage").unlink()
    return result, missing, files


@pytest.mark.parametrize("style", ["try", "with"])
def test_the_suite_and_its_coverage_are_the_same(project: pytest.Pytester, style: str) -> None:
    plain_run, plain_missing, plain = coverage(project)
    plain_run.assert_outcomes(passed=3)
    # Without the plugin: lines 8-10 and 20-22 never run, check's exit branch is taken.
    assert plain_missing["pkg/m.py"] == "8-10, 20-22"
    assert (26, -25) in plain["pkg/m.py"]["arcs"]  # `if x < 0: raise` falls off: 26->exit
    run, missing, instrumented = coverage(project, "--inject-telemetry", "-o", f"telemetry_style={style}")
    run.assert_outcomes(passed=6)  # the three tests and each module's telemetry item
    run.stdout.fnmatch_lines(["*10 functions instrumented in 3 files*"])
    assert missing == plain_missing
    assert instrumented == plain


def test_the_suite_passes_instrumented_without_coverage(project: pytest.Pytester) -> None:
    """(No tracer at all: the code runs its fastest path.)"""
    project.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=3)
    result = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    # The unpickled copy of add (pickled by value) still counts its call on the module's tracer.
    result.stdout.fnmatch_lines(["*pkg.factory:make_adder.<locals>.add * 1 *"])
    result.stdout.fnmatch_lines(["*pkg.frames:make * 1 *"])
