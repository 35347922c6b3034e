"""Settings: precedence, coercion, one-line errors, and the documentation of every field."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_telemetry_inject.errors import ConfigError
from pytest_telemetry_inject.settings import Settings, find_project_root

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_precedence_defaults_pyproject_dotenv_env_flags(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.telemetry-inject]\nstyle = 'decorator'\nmax-parallel = 3\nexclude = ['a/*']\n"
        "[tool.telemetry-inject.llm]\nmodel = 'ignored here'\n")
    assert Settings.load(tmp_path, env={}).style == "decorator"
    assert Settings.load(tmp_path, env={}).max_parallel == 3
    assert Settings.load(tmp_path, env={}).exclude == ["a/*"]
    (tmp_path / ".env").write_text("TELEMETRY_INJECT_MAX_PARALLEL=5\n")
    assert Settings.load(tmp_path, env={}).max_parallel == 5
    env = {"TELEMETRY_INJECT_MAX_PARALLEL": "7", "TELEMETRY_INJECT_VALIDATE": "off",
           "TELEMETRY_INJECT_EXCLUDE": "x/*, y/*", "OTHER": "1"}
    settings = Settings.load(tmp_path, env=env)
    assert (settings.max_parallel, settings.validate, settings.exclude) == (7, False, ["x/*", "y/*"])
    assert settings.origins["max_parallel"] == "TELEMETRY_INJECT_MAX_PARALLEL"
    flags = Settings.load(tmp_path, env=env, overrides={"max_parallel": 1, "style": None})
    assert flags.max_parallel == 1 and flags.style == "decorator"
    assert Settings.load(tmp_path, env={}, defaults={"target": "otel"}).target == "otel"


@pytest.mark.parametrize("toml, message", [
    ("style = 'sideways'", "setting style must be one of with, try, decorator, not 'sideways'"),
    ("max_parallel = 'many'", "setting max_parallel"),
    ("max_parallel = -1", "must be >= 0"),
    ("validate = 'perhaps'", "expected true or false"),
    ("colour = 'red'", "unknown setting 'colour'"),
])
def test_bad_values_are_one_line_errors(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "pyproject.toml").write_text(f"[tool.telemetry-inject]\n{toml}\n")
    with pytest.raises(ConfigError) as info:
        Settings.load(tmp_path, env={})
    assert message in str(info.value)
    assert "pyproject.toml" in str(info.value) and "\n" not in str(info.value)


def test_broken_pyproject_is_reported(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.telemetry-inject\n")
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.load(tmp_path, env={})


@pytest.mark.parametrize("table", ["[tool.telemetry-inject]", "[tool.'telemetry-inject']",
                                   '[tool."telemetry-inject"]', '[tool."telemetry\\u002Dinject"]',
                                   '[tool."\\U00000074elemetry-inject"]'])
def test_the_table_is_read_however_its_key_is_written(tmp_path: Path, table: str) -> None:
    (tmp_path / "pyproject.toml").write_text(f"[tool.black]\nline-length = 100\n{table}\nstyle = 'decorator'\n")
    settings = Settings.load(tmp_path, env={})
    assert settings.style == "decorator" and "pyproject.toml" in settings.origins["style"]


def test_a_pyproject_that_cannot_hold_the_table_is_not_parsed(tmp_path: Path) -> None:
    # Not ours to judge (pytest and the other tools say what they think of it), and not
    # worth the TOML parser's import at each session's start.
    (tmp_path / "pyproject.toml").write_text("[tool.black\nline-length = 'broken\n")
    script = ("import sys; from pytest_telemetry_inject.settings import Settings; "
              f"s = Settings.load({str(tmp_path)!r}, env={{}}); print(s.style, 'tomllib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [Settings().style, "False"]
    (tmp_path / "pyproject.toml").write_text("[tool.black\n[tool.telemetry-inject]\nstyle = 'try'\n")
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.load(tmp_path, env={})


def test_a_pyproject_that_is_not_utf_8_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_bytes("[tool.telemetry-inject]\n# caf\u00e9\nstyle = 'try'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="cannot read") as info:
        Settings.load(tmp_path, env={})
    assert "\n" not in str(info.value)


def test_output_fingerprint_covers_only_output_settings() -> None:
    base = Settings()
    assert Settings(max_parallel=9).output_fingerprint() == base.output_fingerprint()
    assert Settings(style="decorator").output_fingerprint() != base.output_fingerprint()


def test_project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "repo" / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "repo" / "pyproject.toml").write_text("")
    assert find_project_root(tmp_path / "repo" / "src" / "pkg") == (tmp_path / "repo").resolve()
    (tmp_path / "loose" / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "loose")
    assert find_project_root(tmp_path / "loose" / "a") == (tmp_path / "loose").resolve()


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    for field in dataclasses.fields(Settings):
        if field.name != "origins":
            assert f"| `{field.name}` | `TELEMETRY_INJECT_{field.name.upper()}` |" in text, field.name
