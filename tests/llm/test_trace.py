"""The debug trace: JSON lines, levels, categories, console copy, redaction, free when off."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from fakellm import KEY

from pytest_telemetry_inject import trace as trace_module
from pytest_telemetry_inject.redact import redact, register_secret
from pytest_telemetry_inject.trace import DEBUG, ERROR, INFO, TRACE, TRACE_LEVEL, Tracer, traced


def events(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_off_writes_nothing_and_costs_little(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tracer = Tracer()
    assert not tracer.on
    started = time.perf_counter()
    for _ in range(100_000):
        if tracer.on:
            tracer.event(DEBUG, "cache", "hit", path="x")
    per_check = (time.perf_counter() - started) / 100_000
    tracer.event(ERROR, "llm.error", "ignored while off", key=KEY)
    assert not (tmp_path / "logs").exists()
    assert per_check < 5e-6


def test_levels_categories_console_and_redaction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    register_secret(KEY)
    tracer = Tracer()
    tracer.configure(enabled=True, level="INFO", console=True, directory=tmp_path)
    tracer.event(DEBUG, "cache", "below the level")
    tracer.event(INFO, "llm.request", "sent", model="openai/gpt-4o-mini", api_key=KEY,
                 headers={"Authorization": f"Bearer {KEY}"})
    tracer.event(ERROR, "llm.error", f"provider said: Incorrect API key provided: {KEY}")
    tracer.close()
    found = events(tracer.path)
    assert [e["cat"] for e in found] == ["llm.request", "llm.error"]
    assert found[0]["level"] == "INFO" and found[0]["model"] == "openai/gpt-4o-mini"
    assert Path(tracer.path).name.startswith("debug_trace_") and tracer.path.endswith(".jsonl")
    text = Path(tracer.path).read_text()
    console = capsys.readouterr().err
    assert KEY not in text and KEY not in console
    assert "***" in text and "[trace]" in console
    tracer.configure(enabled=True, level="TRACE", console=False, directory=tmp_path / "quiet")
    tracer.event(TRACE_LEVEL, "function", "call")
    assert capsys.readouterr().err == ""
    assert events(tracer.path)[0]["level"] == "TRACE"
    tracer.configure(enabled=False)


def test_traced_records_calls_with_durations(tmp_path: Path) -> None:
    TRACE.configure(enabled=True, level="TRACE", console=False, directory=tmp_path)

    @traced()
    def work(x: int) -> int:
        return x * 2

    assert work(21) == 42
    with pytest.raises(ZeroDivisionError):
        traced()(lambda: 1 / 0)()
    TRACE.close()
    found = [e for e in events(TRACE.path) if e["cat"] == "function"]
    assert [e["msg"] for e in found] == ["call", "return", "call", "raise"]
    assert found[1]["duration_s"] >= 0 and found[3]["error"] == "ZeroDivisionError"
    assert os.environ["DEBUG_TRACE_FILE"] == TRACE.path  # child processes append to the same file


def test_environment_turns_it_on_and_bad_levels_are_refused(tmp_path: Path) -> None:
    tracer = Tracer()
    tracer.configure_from_env({"DEBUG_TRACE": "1", "DEBUG_TRACE_LEVEL": "WARNING", "DEBUG_TRACE_CONSOLE": "0",
                               "DEBUG_TRACE_FILE": str(tmp_path / "t.jsonl")})
    assert tracer.on and tracer.level == 30 and not tracer.console
    tracer.event(INFO, "gpu", "below")
    tracer.event(ERROR, "gpu", "kept")
    tracer.close()
    assert [e["msg"] for e in events(str(tmp_path / "t.jsonl"))] == ["kept"]
    from pytest_telemetry_inject.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown trace level"):
        trace_module.parse_level("LOUD")
    tracer.configure(enabled=False)


def test_redaction_of_key_shapes_nobody_registered() -> None:
    text = redact("Authorization: Bearer abcdefghijklmnop1234 and sk-proj-ZZZZZZZZZZZZ and api_key=hunter2hunter2")
    assert "abcdefghijklmnop1234" not in text and "ZZZZZZZZZZZZ" not in text and "hunter2hunter2" not in text
