"""`pytest --inject-telemetry`, run for real in a subprocess on small projects."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = {
    "pkg/__init__.py": '"""The package."""\n',
    "pkg/data.txt": "resource text\n",
    "pkg/core.py": '''
        """Core module."""
        import functools
        import importlib.resources
        import inspect
        import warnings


        def double(x):
            """Twice x."""
            return 2 * x


        def fails(x):
            value = x + 1
            raise ValueError(f"bad {value}")


        def logged(func):
            @functools.wraps(func)
            def wrapper(*args, **kwargs):
                return func(*args, **kwargs)
            return wrapper


        @logged
        def wrapped(a):
            return a + 1


        def deprecated():
            warnings.warn("old", DeprecationWarning, stacklevel=2)
            return 1


        class Base:
            def hello(self):
                return "base"


        class Child(Base):
            def hello(self):
                return "child+" + super().hello()


        def resource():
            return importlib.resources.files("pkg").joinpath("data.txt").read_text()


        def own_source():
            return inspect.getsource(double)
    ''',
    "pkg/__main__.py": '''
        from pkg.core import double
        print("main", double(21))
    ''',
}

TESTS = '''
    import pickle
    import runpy
    import sys

    import pytest

    from pkg import core


    def test_behaviour():
        assert core.double(4) == 8
        assert core.double.__doc__ == "Twice x."
        assert core.wrapped(1) == 2 and core.wrapped.__wrapped__.__name__ == "wrapped"
        assert core.Child().hello() == "child+base"
        assert core.resource() == "resource text\\n"
        assert core.own_source().startswith("def double(x):\\n    \\"\\"\\"Twice x.\\"\\"\\"\\n    return 2 * x")
        assert pickle.loads(pickle.dumps(core.double)) is core.double
        assert pickle.loads(pickle.dumps(core.Child())).hello() == "child+base"


    def test_warning_points_at_the_caller():
        with pytest.warns(DeprecationWarning) as record:
            core.deprecated()
        assert record[0].filename == __file__
        assert record[0].lineno == sys._getframe().f_lineno - 2


    def test_python_dash_m(capsys):
        runpy.run_module("pkg", run_name="__main__")
        assert capsys.readouterr().out == "main 42\\n"


    def test_fails():
        core.fails(1)
'''


@pytest.fixture
def project(pytester: pytest.Pytester):
    for name, text in PACKAGE.items():
        path = pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_core.py").write_text(textwrap.dedent(TESTS).lstrip("\n"))
    pytester.makeini("[pytest]\ntestpaths = tests\n")
    return pytester


def test_instrumented_project_behaves_the_same(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--inject-telemetry", "-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, failed=1)  # 3 tests pass, 1 fails on purpose, + one telemetry item
    result.stdout.fnmatch_lines(["*pkg/core.py::telemetry PASSED*"])
    # The traceback points at the original line, with the original source.
    result.stdout.fnmatch_lines(["*def fails(x):*", "*raise ValueError(f\"bad {value}\")*", "E       ValueError: bad 2",
                                 "pkg/core.py:15: ValueError"])
    result.stdout.fnmatch_lines(["*= telemetry =*", "*10 functions instrumented in 1 files*",
                                 "*pkg.core:fails*1*1"])


def test_the_same_tests_pass_without_the_plugin(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.no_fnmatch_line("*= telemetry =*")


def test_off_unless_asked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_probe='''
        import sys

        def test_nothing_loaded():
            assert not any(type(f).__name__ == "TelemetryFinder" for f in sys.meta_path)
            assert "tree_sitter" not in sys.modules
            assert "pytest_telemetry_inject.plugin.session" not in sys.modules
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_warm_session_loads_neither_the_compiler_nor_the_llm_layer(project: pytest.Pytester) -> None:
    # The second session finds every module's compiled code in the cache: it binds it
    # (engine.bytecode) and compiles nothing, and it asked no model. Importing the compiler
    # (and the Python language's module with it) and the LLM layer cost a short suite
    # ~0.6 billion instructions a session, most of its fixed cost. Nor does it import the
    # languages (a memo's key needs the name alone), planning, composing, line maps,
    # generated tests, the worker module or OTLP: ~10 ms of each session; nor the shared
    # types (annotations only), the script library (a memo holds no edits) or the shipping
    # of instrumented sources (--telemetry-output only): 13 million instructions more.
    # And the only dataclass it builds is Settings (142 to 108 million instructions).
    (project.path / "tests" / "test_probe.py").write_text(textwrap.dedent('''
        import sys

        def test_probe():
            assert "pkg.core" in sys.modules
            loaded = {name for name in sys.modules if name.startswith("pytest_telemetry_inject.")}
            print("LOADED", sorted(loaded))
            assert "pytest_telemetry_inject.engine.bytecode" in loaded
            unwanted = {"pytest_telemetry_inject." + name for name in (
                "engine.compiler", "llm.refactorer", "languages.base", "languages.python", "engine.compose",
                "engine.planning", "engine.reconstruct", "engine.testgen", "engine._worker", "otlp",
                "types", "scriptlib", "plugin.shipping")}
            assert not loaded & unwanted, loaded & unwanted
            # Nor does it build a dataclass but Settings (each compiles its methods from
            # text: ~1 ms; eleven took 10.8 ms of a session): records are record.Record.
            import dataclasses
            made = sorted(f"{name}.{attr}" for name in loaded for attr, value in vars(sys.modules[name]).items()
                          if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == name)
            assert made == ["pytest_telemetry_inject.settings.Settings"], made
    '''))
    (project.path / "tests" / "test_core.py").write_text("import pkg.core\n")
    first = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "-k", "not probe")
    first.assert_outcomes(passed=1)  # the telemetry item: the cache is filled
    warm = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "-s", "-k", "probe")
    warm.assert_outcomes(passed=1)


GC_CONFTEST = '''
import gc

_stats = gc.get_stats()
YOUNG = _stats[0]["collections"] + _stats[1]["collections"]  # made before this file loaded
FULL = _stats[2]["collections"]


def pytest_report_header(config):
    return f"YOUNG {YOUNG} FULL {FULL} ENABLED {gc.isenabled()}"
'''


def _gc_header(result: pytest.RunResult) -> tuple[int, int, str]:
    line = next(line for line in result.outlines if line.startswith("YOUNG "))
    _, young, _, full, _, enabled = line.split()
    return int(young), int(full), enabled


def test_the_sessions_own_work_sets_off_no_collections_of_the_project(project: pytest.Pytester) -> None:
    # The session's start (its imports, the cache's records) allocates thousands of objects
    # that stay alive. With the collector on, they made ~6 young collections before the
    # project's first conftest loaded, and those count towards the project's own full
    # collections (toolz's suite got a full collection it has none of without the plugin:
    # ~15 ms). Held off (plugin_registry.gc_paused), they make one at most, and the
    # collector is on again when the project's code runs.
    (project.path / "conftest.py").write_text(GC_CONFTEST)
    project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider").assert_outcomes(passed=4, failed=1)
    plain = project.runpytest_subprocess("-p", "no:cacheprovider")
    warm = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider")
    warm.assert_outcomes(passed=4, failed=1)
    (young_plain, full_plain, on_plain), (young_warm, full_warm, on_warm) = _gc_header(plain), _gc_header(warm)
    assert on_plain == on_warm == "True"
    assert young_warm - young_plain <= 1, (young_plain, young_warm)
    assert full_warm == full_plain


def test_a_collector_turned_off_stays_off(project: pytest.Pytester) -> None:
    # A process that runs pytest with its collector off (gc.disable() before pytest.main)
    # still has it off in the project's code: the session sets back what it found.
    (project.path / "conftest.py").write_text(GC_CONFTEST)
    (project.path / "run.py").write_text(
        "import gc, sys\nimport pytest\n\nif __name__ == '__main__':\n    gc.disable()\n"
        "    sys.exit(pytest.main(['--inject-telemetry', '-p', 'no:cacheprovider']))\n")
    result = project.run(sys.executable, str(project.path / "run.py"))
    result.assert_outcomes(passed=4, failed=1)
    assert _gc_header(result)[2] == "False"


def test_the_plugins_modules_are_not_assert_rewritten(pytester: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Installed from a wheel, this package's RECORD lists its modules, and pytest marks every
    # module of a pytest11 distribution for assertion rewriting: compiled from source in each
    # session where pytest cannot write its bytecode cache. The editable install under test
    # lists none, so a distribution that does (as a wheel's would) is put on the path.
    import pytest_telemetry_inject

    package = pytest_telemetry_inject.__name__
    site = pytester.mkdir("site")
    info = site / f"{package}_wheel-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}-wheel\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[pytest11]\ntelemetry_inject = {package}.plugin\n")
    (info / "RECORD").write_text("".join(f"{package}/{name}.py,,\n" for name in
                                         ("__init__", "plugin/__init__", "plugin/session", "engine/pipeline")))
    pytester.makepyfile(test_probe=f'''
        import sys

        def loader(name):
            return type(sys.modules[name].__loader__).__name__

        def test_loaders():
            assert loader("{package}.plugin") == "AssertionRewritingHook"  # marked (the control)
            assert loader("{package}.plugin.session") != "AssertionRewritingHook"
            assert loader("{package}.engine.pipeline") != "AssertionRewritingHook"
    ''')
    # pytest finds a marked module on sys.path only: an editable install by an import hook
    # (setuptools' finder) is not there, so the package's folder goes on the path too.
    source_root = Path(pytest_telemetry_inject.__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(source_root)]), prepend=os.pathsep)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    result = pytester.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_module_that_cannot_be_instrumented_imports_normally(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(clash="_telemetry = 'mine'\ndef f():\n    return _telemetry\n",
                        test_clash="import clash\ndef test_it():\n    assert clash.f() == 'mine'\n")
    result = pytester.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*0 functions instrumented in 0 files*"])


def test_modules_imported_early_are_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(early="def f():\n    return 1\n",
                        early_plugin="import early\n",
                        test_early="import early\ndef test_it():\n    assert early.f() == 1\n")
    result = pytester.runpytest_subprocess("--inject-telemetry", "-p", "early_plugin", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*imported before telemetry could be injected*early*make that import lazy*"])


def test_named_installed_package(pytester: pytest.Pytester, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    (site / "extlib").mkdir(parents=True)
    (site / "extlib" / "__init__.py").write_text("def ext(x):\n    return x * 3\n")
    pytester.makepyfile(test_ext="import extlib\ndef test_it():\n    assert extlib.ext(2) == 6\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    result = pytester.runpytest_subprocess("--inject-telemetry", "--telemetry-modules=extlib", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*extlib:ext*1*"])


def test_a_tampered_script_is_rebuilt_before_its_item_runs_it(project: pytest.Pytester) -> None:
    project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider")
    scripts = sorted((project.path / ".telemetry_cache" / "scripts" / "python").rglob("*.script"))
    assert scripts
    for script in scripts:
        script.write_text(script.read_text().replace("EDITS = [", "EDITS = [  # changed\n"))
    tampered = {script: script.read_bytes() for script in scripts}
    # Every case passed before, as the sealed record says: the item reads no script (the code
    # that runs comes from the sealed memo), so the changed ones are neither run nor noticed.
    result = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "-k", "telemetry")
    result.assert_outcomes(passed=1)
    assert "cache entries were found" not in result.stdout.str()
    assert {script: script.read_bytes() for script in scripts} == tampered
    # With --telemetry-recheck every case runs, so its script is read: one whose sha256 is not
    # its name is never run, the file is instrumented again, its scripts are written afresh,
    # and the item checks those.
    result = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "-k", "telemetry",
                                          "--telemetry-recheck")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*{len(scripts)} damaged or foreign cache entries were found and rebuilt*"])
    for script in scripts:
        assert hashlib.sha256(script.read_bytes()).hexdigest() == script.name.removesuffix(".script")
    again = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "-k", "telemetry",
                                         "--telemetry-recheck")
    again.assert_outcomes(passed=1)
    assert "cache entries were found" not in again.stdout.str()


def test_an_item_whose_cases_all_passed_reads_neither_cases_nor_scripts(project: pytest.Pytester) -> None:
    import xml.etree.ElementTree as ET

    def run(*args: str) -> tuple[pytest.RunResult, dict[str, int]]:
        xml = project.path / "junit.xml"
        result = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "-k", "telemetry",
                                              f"--junitxml={xml}", *args)
        result.assert_outcomes(passed=1)
        return result, {p.get("name"): int(p.get("value")) for p in ET.parse(xml).iter("property")}

    _result, first = run()
    cache = project.path / ".telemetry_cache"
    scripts = sorted((cache / "scripts" / "python").rglob("*.script"))
    assert len(scripts) == first["insertion_scripts"] >= 3
    for script in scripts:
        script.unlink()
    # The sealed record says every case of this module passed: the scripts are not needed.
    result, again = run()
    assert again == {"insertion_scripts": first["insertion_scripts"], "checked_now": 0}
    assert not list((cache / "scripts" / "python").rglob("*.script"))
    # The record names the module's text: a module changed by anyone but this machine is
    # refused, and the file is built again, its scripts written afresh and checked.
    (module,) = (cache / "tests" / "python").iterdir()
    module.write_text(module.read_text().replace("Generated tests", "Generated  tests"))
    result, third = run()
    assert third == first
    result.stdout.fnmatch_lines(["*damaged or foreign cache entries were found and rebuilt*"])
    assert len(list((cache / "scripts" / "python").rglob("*.script"))) == len(scripts)


def test_scripts_that_passed_are_not_checked_again_unless_asked(project: pytest.Pytester) -> None:
    import xml.etree.ElementTree as ET

    def properties(*args: str) -> dict[str, int]:
        xml = project.path / "junit.xml"
        result = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "-k", "telemetry",
                                              f"--junitxml={xml}", *args)
        result.assert_outcomes(passed=1)
        found = {p.get("name"): int(p.get("value")) for p in ET.parse(xml).iter("property")}
        return found

    first = properties()
    assert first["insertion_scripts"] >= 3 and first["checked_now"] == first["insertion_scripts"]
    again = properties()
    assert again == {"insertion_scripts": first["insertion_scripts"], "checked_now": 0}
    assert properties("--telemetry-recheck")["checked_now"] == first["insertion_scripts"]
    # A damaged record only means the checks run again.
    for record in (project.path / ".telemetry_cache" / "metadata" / "checked").iterdir():
        record.write_bytes(b"\x00garbage")
    assert properties()["checked_now"] == first["insertion_scripts"]


def test_compiled_code_is_cached(project: pytest.Pytester) -> None:
    project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider")
    code = project.path / ".telemetry_cache" / "metadata" / "code"
    first = {p: p.stat().st_mtime_ns for p in code.rglob("*") if p.is_file()}
    assert len(first) == 1  # only pkg/core.py has functions to instrument
    project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider")
    assert {p: p.stat().st_mtime_ns for p in code.rglob("*") if p.is_file()} == first


def test_xdist_merges_the_workers_telemetry(project: pytest.Pytester) -> None:
    def calls(result: pytest.RunResult) -> dict[str, int]:
        lines = result.stdout.str().split("= telemetry =")[1].splitlines()
        return {line.split()[0]: int(line.split()[1]) for line in lines if line.startswith("pkg.")}

    single = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider")
    result = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=4, failed=1)
    assert result.stdout.str().count("= telemetry =") == 1
    merged, alone = calls(result), calls(single)
    # Calls made by tests are the same; the decorator runs once per process that imports it.
    assert merged.pop("pkg.core:logged") == 2 and alone.pop("pkg.core:logged") == 1
    assert merged == alone and merged["pkg.core:double"] == 2


SHAPES = Path(__file__).parents[1] / "engine" / "branch_shapes.py"  # the compiler test's functions
BRANCH_TESTS = """
    import pytest

    from pkg import branch_shapes as shapes


    def test_branches():
        shapes.tail_if(0)
        shapes.first_loop([1])
        assert list(shapes.gen(2)) == [0, 1]
        assert shapes.nested(0) is None
        assert shapes.while_first(1) == "done"
        with pytest.raises(ValueError):
            shapes.fails(1)
        with pytest.raises(KeyError):
            shapes.decorated([0, 1])
"""


@pytest.mark.parametrize("style, workers", [("try", ()), ("with", ()), ("try", ("-n", "2"))])
def test_coverage_is_the_same_with_and_without(project: pytest.Pytester, style: str, workers: tuple) -> None:
    """Lines and branches (arcs): the wrapper's exit code has no line of its own. With xdist,
    pytest-cov measures in the workers and combines."""
    (project.path / "pkg" / "branch_shapes.py").write_text(SHAPES.read_text())
    (project.path / "tests" / "test_branches.py").write_text(textwrap.dedent(BRANCH_TESTS).lstrip("\n"))

    def covered(*args: str) -> tuple[pytest.RunResult, dict]:
        out = project.path / "cov.json"
        result = project.runpytest_subprocess("--cov=pkg", "--cov-branch", f"--cov-report=json:{out}",
                                              "-p", "no:cacheprovider", *args)
        data = json.loads(out.read_text())
        return result, {name: {key: sorted(map(tuple, f[key])) if "branches" in key else sorted(f[key])
                               for key in ("executed_lines", "missing_lines", "executed_branches",
                                           "missing_branches")}
                        for name, f in data["files"].items()}

    _, plain = covered(*workers)
    result, instrumented = covered("--inject-telemetry", "-o", f"telemetry_style={style}", *workers)
    result.stdout.fnmatch_lines(["*18 functions instrumented in 2 files*"])
    assert plain["pkg/branch_shapes.py"]["missing_branches"]  # the cases leave some branches missed
    assert plain == instrumented


def test_telemetry_output_writes_a_shippable_tree(project: pytest.Pytester, tmp_path) -> None:
    out = tmp_path / "artifact"
    result = project.runpytest_subprocess("--inject-telemetry", f"--telemetry-output={out}", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([f"*wrote instrumented sources (3 files) and a manifest in {out}*"])
    manifest = json.loads((out / "telemetry-manifest.json").read_text())
    assert {f["path"]: f["functions_instrumented"] for f in manifest["files"]} == \
        {"pkg/__init__.py": 0, "pkg/__main__.py": 0, "pkg/core.py": 10}
    assert manifest["vendored"] == ["pkg/telemetry_utils.py"]
    assert "from pkg import telemetry_utils as _telemetry_runtime" in (out / "pkg" / "core.py").read_text()
    # The artifact runs with the standard library only: no pytest_telemetry_inject on the path.
    (out / "pkg" / "data.txt").write_text("resource text\n")
    import subprocess
    import sys
    run = subprocess.run([sys.executable, "-S", "-E", "-c",
                          "import sys; assert not any(\"site-packages\" in p for p in sys.path); "
                          "import pkg.core as c; print(c.double(5))"],
                         cwd=out, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout == "10\n", run.stderr


NO_GUARD = '''
import sys

import pytest

sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--inject-telemetry"]))
'''


def test_a_script_without_a_main_guard_gets_one_line_and_loses_nothing(pytester: pytest.Pytester) -> None:
    # A cold session spawns the engine's workers, and multiprocessing imports the calling
    # script again in each: a script that calls pytest.main() at its top level runs it again
    # there, where starting processes is refused. The worker says why in one line and stops;
    # the session does the files in its own process, says so, and every test runs.
    import subprocess

    pkg = pytester.path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "one.py").write_text("def a(x):\n    return x + 1\n")
    (pkg / "two.py").write_text("def b(x):\n    return x * 2\n")
    pytester.makepyfile(test_ab="from pkg.one import a\nfrom pkg.two import b\n\n\n"
                                "def test_ab():\n    assert (a(1), b(2)) == (2, 4)\n")
    (pytester.path / "run.py").write_text(NO_GUARD)
    env = {**os.environ, "TELEMETRY_INJECT_MAX_PARALLEL": "2", "PYTHONPATH": str(pytester.path)}
    done = subprocess.run([sys.executable, "run.py"], cwd=pytester.path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    # (the test and the two files' ::telemetry items; both files instrumented)
    assert "3 passed" in done.stdout and "failed" not in done.stdout
    assert "2 functions instrumented in 2 files" in done.stdout
    assert "workers: the worker processes stopped before they were done" in done.stdout
    refusals = [line for line in done.stdout.splitlines() + done.stderr.splitlines()
                if "in a worker process that is starting up" in line]
    assert refusals and all(line.startswith("ERROR: pytest-telemetry-inject:") for line in refusals)
    assert "Traceback" not in done.stdout + done.stderr
    assert "__main__: the script that started this process and called pytest.main()" in done.stdout
    # The next session, warm, starts no worker and says nothing of them.
    again = subprocess.run([sys.executable, "run.py"], cwd=pytester.path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "workers:" not in again.stdout and "starting up" not in again.stdout + again.stderr
