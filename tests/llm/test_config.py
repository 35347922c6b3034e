"""LLMConfig: models and providers, timeouts, keys from .env, [tool.telemetry-inject.llm]."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_telemetry_inject.errors import ConfigError
from pytest_telemetry_inject.llm.config import LLMConfig, configured, parse_hosts, resolve_model


@pytest.mark.parametrize(("name", "provider", "full"), [
    ("gpt-4o-mini", "openai", "openai/gpt-4o-mini"),
    ("o3-mini", "openai", "openai/o3-mini"),
    ("claude-3-5-sonnet-latest", "anthropic", "anthropic/claude-3-5-sonnet-latest"),
    ("llama3.1:8b", "ollama", "ollama_chat/llama3.1:8b"),
    ("ollama/qwen2.5-coder:7b", "ollama", "ollama_chat/qwen2.5-coder:7b"),
    ("ollama_chat/phi4", "ollama", "ollama_chat/phi4"),
    ("groq/llama-3.1-70b-versatile", "groq", "groq/llama-3.1-70b-versatile"),
    ("anthropic/claude-3-haiku-20240307", "anthropic", "anthropic/claude-3-haiku-20240307"),
])
def test_the_provider_comes_from_the_model_name(name: str, provider: str, full: str) -> None:
    assert resolve_model(name) == (provider, full)


def test_llm_provider_names_the_provider_of_bare_names() -> None:
    assert resolve_model("my-finetune", "openai") == ("openai", "openai/my-finetune")
    assert resolve_model("codestral", "ollama") == ("ollama", "ollama_chat/codestral")
    with pytest.raises(ConfigError, match="set LLM_PROVIDER"):
        resolve_model("mystery-model")


def test_several_models_timeouts_and_keys(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ANTHROPIC_API_KEY=sk-ant-fromdotenv-123456\nLLM_TIMEOUT=\n")
    config = LLMConfig.load(tmp_path, env={"LLM_MODEL": "gpt-4o-mini, llama3.1:8b,claude-3-5-haiku-latest",
                                           "OPENAI_API_KEY": "sk-openai-fromenv-123456"})
    assert [m.name for m in config.models] == ["openai/gpt-4o-mini", "ollama_chat/llama3.1:8b",
                                               "anthropic/claude-3-5-haiku-latest"]
    assert [m.timeout for m in config.models] == [120.0, 600.0, 120.0]
    assert config.models[1].api_base == "http://localhost:11434"
    assert config.api_key(config.models[0]) == "sk-openai-fromenv-123456"
    assert config.api_key(config.models[2]) == "sk-ant-fromdotenv-123456"  # from .env
    assert config.api_key(config.models[1]) is None
    assert config.effective_strategy == "parallel"
    assert "sk-" not in repr(config)


def test_environment_beats_dotenv_beats_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.telemetry-inject]\nstyle = "with"\n\n[tool.telemetry-inject.llm]\nmodel = ["gpt-4o"]\n'
        'budget = 0.5\nmax-retries = 5\ntimeout = 30\nollama-hosts = { gpu0 = "127.0.0.1:11434" }\n')
    config = LLMConfig.load(tmp_path, env={})
    assert [m.name for m in config.models] == ["openai/gpt-4o"]
    assert (config.budget, config.max_retries, config.models[0].timeout) == (0.5, 5, 30.0)
    assert config.ollama_hosts == {"gpu0": "http://127.0.0.1:11434"}
    (tmp_path / ".env").write_text("LLM_BUDGET=0.25\n")
    assert LLMConfig.load(tmp_path, env={}).budget == 0.25
    assert LLMConfig.load(tmp_path, env={"LLM_BUDGET": "0.1"}).budget == 0.1
    assert LLMConfig.load(tmp_path, env={"LLM_BUDGET": "0.1"}, overrides={"budget": 2.0}).budget == 2.0
    # The main settings loader keeps ignoring the sub-table.
    from pytest_telemetry_inject.settings import Settings

    assert Settings.load(tmp_path, env={}).style == "with"


def test_a_key_in_pyproject_is_refused_without_showing_it(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.telemetry-inject.llm]\napi-key = "sk-leaked-0123456789"\n')
    with pytest.raises(ConfigError) as info:
        LLMConfig.load(tmp_path, env={})
    assert "environment or .env" in str(info.value)
    assert "sk-leaked" not in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_values_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a number"):
        LLMConfig.load(tmp_path, env={"LLM_MODEL": "gpt-4o", "LLM_BUDGET": "lots"})
    with pytest.raises(ConfigError, match="unknown LLM strategy"):
        LLMConfig.load(tmp_path, env={"LLM_MODEL": "gpt-4o", "LLM_STRATEGY": "fastest"})
    with pytest.raises(ConfigError, match="gpuN=URL"):
        parse_hosts("http://127.0.0.1:11434")
    (tmp_path / "pyproject.toml").write_text('[tool.telemetry-inject.llm]\nmodels-please = 1\n')
    with pytest.raises(ConfigError, match="unknown LLM setting"):
        LLMConfig.load(tmp_path, env={})


def test_no_model_means_not_configured(tmp_path: Path) -> None:
    assert not configured(tmp_path, env={})
    assert configured(tmp_path, env={"LLM_MODEL": "llama3.1:8b"})
    assert parse_hosts("gpu0=127.0.0.1:11434, gpu1=http://127.0.0.1:11435") == {
        "gpu0": "http://127.0.0.1:11434", "gpu1": "http://127.0.0.1:11435"}


def test_the_lessons_are_package_data(tmp_path: Path) -> None:
    """An installed package (a wheel, not this checkout) sends the same lessons: they are in
    the wheel, and the prompt builder finds them beside its own module."""
    import subprocess
    import sys
    import zipfile

    from pytest_telemetry_inject.llm.prompts import load_lessons

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(tmp_path), str(root)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    lessons = sorted(n for n in names if n.startswith("pytest_telemetry_inject/llm/lessons/") and n.endswith(".md"))
    assert len(lessons) == 6, lessons  # five lessons and their README
    text = load_lessons(LLMConfig.load(tmp_path))
    assert "telemetry" in text.lower() and len(text) > 1000  # the lessons, not the three-line fallback
