"""The seed tool's own switches, through the real command line: ``--base-url`` as a flag (the
meaning of LLM_BASE_URL, the flag winning), ``MAX_PARALLEL`` as an environment variable (the
prefixed TELEMETRY_INJECT_MAX_PARALLEL winning), and ``--api-key`` refused on purpose (keys
come only from the environment or .env), which ``--help`` says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakellm import KEY, Reply

from pytest_telemetry_inject.cli import main
from pytest_telemetry_inject.errors import ConfigError
from pytest_telemetry_inject.llm.telemetry_check import MARKER
from pytest_telemetry_inject.settings import Settings

CLI = [sys.executable, "-m", "pytest_telemetry_inject.cli"]
DEAD = "http://127.0.0.1:9/v1"
"""A server nobody answers on (the discard port): where LLM_BASE_URL points when the flag must win."""


def run_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("LLM_", "OPENAI_", "OLLAMA_", "DEBUG_TRACE", "TELEMETRY_INJECT_MAX", "MAX_PARALLEL"))}
    return subprocess.run(CLI + args, capture_output=True, text=True, cwd=cwd, env={**base, **env}, timeout=300)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("telemetry-inject: error: "), done.stderr
    return lines[0]


# -- --base-url ------------------------------------------------------------------------------------


def test_base_url_flag_reaches_the_server_and_wins_over_the_variable(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    answer = json.dumps([{"after_line": 1, "text": f"    import logging  # {MARKER}"},
                         {"after_line": 1, "text": f"    logging.getLogger(__name__).debug('f')  # {MARKER}"}])
    fake = fake_llm([Reply(answer)])
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "mod.py").write_text("def f(a):\n    return a\n")
    env = {"LLM_MODEL": "openai/gpt-4o-mini", "OPENAI_API_KEY": KEY, "LLM_BASE_URL": DEAD,
           "LLM_TRANSPORT_RETRIES": "0", "LLM_TIMEOUT": "20"}
    # The variable alone: its dead server, one FAIL line.
    dead = run_cli(["--check-api"], tmp_path, **env)
    assert dead.returncode == 3 and "FAIL" in dead.stdout + dead.stderr and not fake.chat_requests
    # The flag: the fake server, for --check-api and for a --traditional run.
    checked = run_cli(["--check-api", "--base-url", fake.url + "/v1"], tmp_path, **env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ok" in checked.stdout and len(fake.chat_requests) == 1
    done = run_cli(["--traditional", "mod.py", "-o", "out", "--base-url", fake.url + "/v1"], tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert len(fake.chat_requests) == 2 and "1 instrumented" in done.stdout
    assert "logging.getLogger(__name__).debug('f')" in (tmp_path / "out" / "mod.py").read_text()
    assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in fake.chat_requests)
    assert KEY not in checked.stdout + checked.stderr + done.stdout + done.stderr


@pytest.mark.parametrize("args, env, expected", [
    (["--base-url", "localhost:8000"], {}, "'localhost:8000' (--base-url) is not usable: it does not start with http"),
    (["--base-url", ""], {}, "--base-url needs a URL"),
    (["--base-url", "http:///v1"], {}, "(--base-url) is not usable: it names no host"),
    ([], {"LLM_BASE_URL": "ftp://user:hunter2-password@example.org"}, "'ftp://***@example.org' (LLM_BASE_URL)"),
    (["--base-url", "http://127.0.0.1:99999/v1"], {}, "it cannot be read (Port out of range"),
])
def test_a_bad_base_url_is_one_line_naming_where_it_came_from(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch, args: list[str],
                                                              env: dict[str, str], expected: str) -> None:
    (tmp_path / "mod.py").write_text("def f(a):\n    return a\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for front in ([str(tmp_path / "mod.py")], ["--traditional", str(tmp_path / "mod.py")], ["--check-api"]):
        assert main(front + args + ["--root", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("telemetry-inject: error: ") and expected in err, err
        assert "hunter2" not in err


def test_the_base_url_of_pyproject_env_and_flag_in_that_order(tmp_path: Path) -> None:
    from pytest_telemetry_inject.llm.config import LLMConfig

    (tmp_path / "pyproject.toml").write_text("[tool.telemetry-inject.llm]\nmodel = 'gpt-4o-mini'\n"
                                             "base-url = 'http://pyproject:1/v1/'\n")
    assert LLMConfig.load(tmp_path, env={}).models[0].api_base == "http://pyproject:1/v1"
    env = {"LLM_BASE_URL": "http://env:2/v1"}
    assert LLMConfig.load(tmp_path, env=env).base_url == "http://env:2/v1"
    assert LLMConfig.load(tmp_path, env=env, overrides={"base_url": "https://flag:3"}).base_url == "https://flag:3"
    (tmp_path / "pyproject.toml").write_text("[tool.telemetry-inject.llm]\nbase-url = 'nope'\n")
    with pytest.raises(ConfigError, match=r"base-url in \[tool.telemetry-inject.llm\] of .*pyproject.toml"):
        LLMConfig.load(tmp_path, env={})


# -- --api-key -------------------------------------------------------------------------------------


@pytest.mark.parametrize("front", [["mod.py"], ["--traditional", "mod.py"], ["--check-api"], ["models"]])
def test_api_key_is_refused_in_one_line_that_never_repeats_it(tmp_path: Path, front: list[str]) -> None:
    (tmp_path / "mod.py").write_text("def f(a):\n    return a\n")
    secret = "sk-cli-SECRET-0123456789abcdef"
    for args in (front + ["--api-key", secret], front + [f"--api-key={secret}"]):
        done = run_cli(args, tmp_path)
        line = one_error_line(done)
        assert "--api-key is not accepted" in line and "OPENAI_API_KEY" in line and ".env" in line
        assert secret not in done.stdout + done.stderr
    assert (tmp_path / "mod.py").read_text() == "def f(a):\n    return a\n"


def test_help_says_why_there_is_no_api_key(tmp_path: Path) -> None:
    done = run_cli(["--help"], tmp_path)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "--base-url URL" in text and "(default: LLM_BASE_URL)" in text
    assert "there is no --api-key" in text and "OPENAI_API_KEY" in text and "environment or the project's .env" in text


# -- MAX_PARALLEL ----------------------------------------------------------------------------------


def workers(tmp_path: Path, *args: str, **env: str) -> int:
    done = run_cli(["src", "--json", "--no-cache", *args], tmp_path, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["workers"]


def test_max_parallel_is_read_and_the_prefixed_variable_and_the_flag_win(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "src").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "src" / f"{name}.py").write_text(f"def {name}(x):\n    return x\n")
    assert workers(tmp_path, MAX_PARALLEL="1") == 1
    assert workers(tmp_path, MAX_PARALLEL="1", TELEMETRY_INJECT_MAX_PARALLEL="3") == 3
    assert workers(tmp_path, "--max-parallel", "3", MAX_PARALLEL="1") == 3
    # The prefixed one wins wherever it is set: in .env over MAX_PARALLEL in the environment.
    (tmp_path / ".env").write_text("TELEMETRY_INJECT_MAX_PARALLEL=3\n")
    assert workers(tmp_path, MAX_PARALLEL="1") == 3
    (tmp_path / ".env").write_text("MAX_PARALLEL=1\n")
    assert workers(tmp_path) == 1


@pytest.mark.parametrize("value, expected", [
    ("many", "setting max_parallel (MAX_PARALLEL): invalid literal for int() with base 10: 'many'"),
    ("-2", "setting max_parallel must be >= 0, not -2 (MAX_PARALLEL)"),
])
def test_a_bad_max_parallel_is_one_line_naming_the_variable(tmp_path: Path, value: str, expected: str) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "mod.py").write_text("def f(a):\n    return a\n")
    line = one_error_line(run_cli(["mod.py"], tmp_path, MAX_PARALLEL=value))
    assert line == f"telemetry-inject: error: {expected}"


def test_max_parallel_precedence_and_origins(tmp_path: Path) -> None:
    assert Settings.load(tmp_path, env={"MAX_PARALLEL": "4"}).max_parallel == 4
    assert Settings.load(tmp_path, env={"MAX_PARALLEL": "4"}).origins["max_parallel"] == "MAX_PARALLEL"
    both = Settings.load(tmp_path, env={"MAX_PARALLEL": "4", "TELEMETRY_INJECT_MAX_PARALLEL": "2"})
    assert (both.max_parallel, both.origins["max_parallel"]) == (2, "TELEMETRY_INJECT_MAX_PARALLEL")
    assert Settings.load(tmp_path, env={"MAX_PARALLEL": " "}).max_parallel == 0  # blank: not set
    (tmp_path / "pyproject.toml").write_text("[tool.telemetry-inject]\nmax-parallel = 6\n")
    assert Settings.load(tmp_path, env={"MAX_PARALLEL": "4"}).max_parallel == 4  # the environment over pyproject
    assert Settings.load(tmp_path, env={"MAX_PARALLEL": "4"}, overrides={"max_parallel": 1}).max_parallel == 1
    (tmp_path / ".env").write_text("MAX_PARALLEL=5\n")
    from_dotenv = Settings.load(tmp_path, env={})
    assert from_dotenv.max_parallel == 5 and from_dotenv.origins["max_parallel"] == f"MAX_PARALLEL in {tmp_path / '.env'}"
    assert Settings.load(tmp_path, env={"MAX_PARALLEL": "3"}).max_parallel == 3  # the environment over .env
