"""Every configuration error of `pytest --inject-telemetry` is one line, before any test runs,
naming the option and where its value came from; report paths get their folders made."""

from __future__ import annotations

import pytest

MODULE = "def double(x):\n    y = x * 2\n    return y\n"
TESTS = "from pkg.core import double\n\n\ndef test_double():\n    assert double(2) == 4\n"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    (pytester.path / "pkg").mkdir()
    (pytester.path / "pkg" / "__init__.py").write_text("")
    (pytester.path / "pkg" / "core.py").write_text(MODULE)
    pytester.makepyfile(test_core=TESTS)
    return pytester


def _one_line_usage_error(result: pytest.RunResult, *needles: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1, errors
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert "passed" not in result.stdout.str() and "Traceback" not in result.stderr.str()


@pytest.mark.parametrize(("where", "needles"), [
    ("-o", ("style must be one of with, try, decorator, not 'sideways'", "(-o telemetry_style)")),
    ("ini", ("style must be one of with, try, decorator, not 'sideways'", "(telemetry_style in pyproject.toml)")),
    ("env", ("style must be one of with, try, decorator, not 'sideways'", "(TELEMETRY_INJECT_STYLE)")),
])
def test_a_bad_style_is_one_line_naming_where_it_came_from(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                            where: str, needles: tuple[str, ...]) -> None:
    args = ["--inject-telemetry", "-p", "no:cacheprovider"]
    if where == "-o":
        args += ["-o", "telemetry_style=sideways"]
    elif where == "ini":
        project.makepyprojecttoml('[tool.pytest.ini_options]\ntelemetry_style = "sideways"\n')
    else:
        monkeypatch.setenv("TELEMETRY_INJECT_STYLE", "sideways")
    _one_line_usage_error(project.runpytest_subprocess(*args), *needles)


def test_a_target_the_plugin_cannot_use_is_one_line(project: pytest.Pytester) -> None:
    project.makepyprojecttoml('[tool.pytest.ini_options]\ntelemetry_target = "vendored"\n')
    _one_line_usage_error(project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider"),
                          "telemetry_target must be runtime or otel, not 'vendored'", "in pyproject.toml")


@pytest.mark.parametrize(("option", "value"), [("telemetry_summary_top", "abc"), ("telemetry_summary_top", "-3"),
                                               ("telemetry_min_duration", "soon")])
def test_bad_numbers_are_one_line_before_any_test_runs(project: pytest.Pytester, option: str, value: str) -> None:
    result = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "-o", f"{option}={value}")
    _one_line_usage_error(result, option, repr(value), f"(-o {option})")


def test_report_folders_are_made(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider",
                                          "--telemetry-html=out/html/report.html",
                                          "--telemetry-report=out/json/deeper/report.json")
    result.assert_outcomes(passed=2)
    assert (project.path / "out" / "html" / "report.html").is_file()
    assert (project.path / "out" / "json" / "deeper" / "report.json").is_file()


def test_a_report_folder_that_cannot_be_made_is_one_line(project: pytest.Pytester) -> None:
    (project.path / "blocked").write_text("a file\n")
    result = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider",
                                          "--telemetry-report=blocked/report.json")
    _one_line_usage_error(result, "cannot make the folder of the json report", "blocked/report.json")


def test_telemetry_modules_naming_nothing_is_said(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider",
                                          "--telemetry-modules=pkg,no_such_package")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*1 functions instrumented in 1 files*",
                                 "telemetry_modules: 'no_such_package' names no module that could be found*"])
