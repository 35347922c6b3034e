"""--configure (driven through a real terminal), --check-api and `telemetry-inject models`."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import sys
import time
from pathlib import Path

import pytest
from fakellm import KEY, Reply, openai_env

from pytest_telemetry_inject.cli import main
from pytest_telemetry_inject.llm.config import LLMConfig
from pytest_telemetry_inject.llm.setup import Prompter, check_api, configure, list_models


def _read_until(fd: int, text: str, seen: bytearray, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no prompt {text!r}; the terminal shows: {seen.decode(errors='replace')!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                raise AssertionError(f"the wizard ended before {text!r}: {seen.decode(errors='replace')!r}")
            seen.extend(chunk)


def test_the_wizard_on_a_terminal_writes_env_and_never_echoes_the_key(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    argv = [sys.executable, "-m", "pytest_telemetry_inject.cli", "--configure", "--root", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "OPENAI_"))}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the wizard, with the pty as its controlling terminal
        os.chdir(tmp_path)
        os.execve(sys.executable, argv, env)
    seen = bytearray()
    try:
        for prompt, answer in [("Provider", "openai"), ("Model", ""), ("Base URL", "http://127.0.0.1:9/v1"),
                               ("API key for OPENAI_API_KEY", KEY), ("Budget per run", "0.5"), ("Write ", "")]:
            _read_until(fd, prompt, seen)
            os.write(fd, answer.encode() + b"\r")
        _read_until(fd, "--check-api", seen)
    finally:
        _pid, status = os.waitpid(pid, 0)
        os.close(fd)
    shown = seen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, shown
    assert KEY not in shown  # typed without echo, and not repeated
    assert "not in .gitignore" in shown
    dotenv = tmp_path / ".env"
    assert (dotenv.stat().st_mode & 0o777) == 0o600
    values = dict(line.split("=", 1) for line in dotenv.read_text().splitlines())
    assert values == {"LLM_PROVIDER": "openai", "LLM_MODEL": "gpt-4o-mini", "LLM_BASE_URL": "http://127.0.0.1:9/v1",
                      "OPENAI_API_KEY": KEY, "LLM_BUDGET": "0.5"}
    config = LLMConfig.load(tmp_path, env={})
    assert config.models[0].name == "openai/gpt-4o-mini" and config.budget == 0.5


def test_the_wizard_for_ollama_lists_the_servers_models_and_keeps_other_lines(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    fake = fake_llm(models=["qwen2.5-coder:7b", "llama3.1:8b"])
    (tmp_path / ".env").write_text("# mine\nOTHER=1\nLLM_MODEL=old\n")
    (tmp_path / ".gitignore").write_text(".env\n")
    out = io.StringIO()
    answers = io.StringIO(f"ollama\n{fake.url}\n\n\ny\n")
    assert configure(tmp_path, Prompter(answers, out)) == 0
    assert "models on that server: qwen2.5-coder:7b, llama3.1:8b" in out.getvalue()
    assert "not in .gitignore" not in out.getvalue()
    lines = (tmp_path / ".env").read_text().splitlines()
    assert lines[:2] == ["# mine", "OTHER=1"]
    assert "LLM_MODEL=qwen2.5-coder:7b" in lines and f"OLLAMA_HOST={fake.url}" in lines
    assert not any(line.startswith("LLM_BUDGET") for line in lines)


def test_check_api_reports_each_model_in_one_line(tmp_path: Path, fake_llm, litellm_module) -> None:  # type: ignore[no-untyped-def]
    good = fake_llm([Reply("OK")])
    out = io.StringIO()
    assert check_api(LLMConfig.load(tmp_path, env=openai_env(good)), out) == 0
    assert out.getvalue().startswith("ok    openai/gpt-4o-mini") and "answered in" in out.getvalue()
    assert good.chat_requests[0].body["max_tokens"] == 8
    bad = fake_llm([Reply(f"Incorrect API key provided: {KEY}", status=401)])
    out = io.StringIO()
    assert check_api(LLMConfig.load(tmp_path, env=openai_env(bad)), out) == 3
    assert out.getvalue().startswith("FAIL  openai/gpt-4o-mini") and KEY not in out.getvalue()
    out = io.StringIO()
    assert check_api(LLMConfig.load(tmp_path, env={"LLM_MODEL": "gpt-4o-mini"}), out) == 3
    assert "no API key (set OPENAI_API_KEY)" in out.getvalue()


def test_check_api_from_the_command_line(tmp_path: Path, fake_llm, monkeypatch, capsys, litellm_module) -> None:  # type: ignore[no-untyped-def]
    fake = fake_llm([Reply("OK")])
    for name, value in openai_env(fake).items():
        monkeypatch.setenv(name, value)
    assert main(["--check-api", "--root", str(tmp_path)]) == 0
    assert "ok    openai/gpt-4o-mini" in capsys.readouterr().out
    monkeypatch.delenv("LLM_MODEL")
    assert main(["--check-api", "--root", str(tmp_path)]) == 2
    assert "no model is configured" in capsys.readouterr().out


def test_models_lists_what_can_be_reached_with_a_recommendation(tmp_path: Path, fake_llm, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from fakellm import nvml  # the recorded NVML answers

    from pytest_telemetry_inject.llm.gpu import probe_nvml

    fake = fake_llm(models=["qwen2.5-coder:32b", "qwen2.5-coder:7b", "llama3.3:70b"])
    config = LLMConfig.load(tmp_path, env={"OLLAMA_HOST": fake.url, "LLM_MODEL": "gpt-4o-mini,claude-3-5-haiku-latest",
                                           "OPENAI_API_KEY": KEY})
    data = list_models(config, gpus=probe_nvml(nvml("nvml_two_gpus.json")))
    assert [m["model"] for m in data["local"]] == ["ollama_chat/qwen2.5-coder:32b", "ollama_chat/qwen2.5-coder:7b",
                                                   "ollama_chat/llama3.3:70b"]
    assert data["recommendation"].startswith("ollama_chat/qwen2.5-coder:7b")  # the largest that fits 16.9 GB
    assert [(c["model"], c["key_set"]) for c in data["cloud"]] == [("openai/gpt-4o-mini", True),
                                                                     ("anthropic/claude-3-5-haiku-latest", False)]
    assert KEY not in json.dumps(data)
    monkeypatch.setenv("OLLAMA_HOST", fake.url)
    monkeypatch.chdir(tmp_path)
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["ollama_servers"][0] == {"server": fake.url, "label": "default", "reachable": True}
    assert main(["--list-models"]) == 0
    assert "recommended:" in capsys.readouterr().out


def test_nothing_reachable_says_what_to_do(tmp_path: Path) -> None:
    config = LLMConfig.load(tmp_path, env={"OLLAMA_HOST": "http://127.0.0.1:9"})
    data = list_models(config, gpus=[])
    assert data["local"] == [] and "ollama serve" in data["recommendation"]
    assert data["ollama_servers"] == [{"server": "http://127.0.0.1:9", "label": "default", "reachable": False}]


def test_the_network_guard_refuses_other_hosts() -> None:
    import socket

    with pytest.raises(AssertionError, match="a test tried to"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    with pytest.raises(AssertionError, match="a test tried to resolve 'api.openai.com'"):
        socket.getaddrinfo("api.openai.com", 443)
    with socket.socket() as sock, pytest.raises(AssertionError, match="a test tried to reach"):
        sock.connect(("192.0.2.1", 80))
