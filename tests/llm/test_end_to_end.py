"""The command line in real subprocesses: a run with no LLM work never imports litellm, a
script-mode run over part of the standard library makes zero LLM calls (the trace shows
it), and a run that does ask a model keeps the key out of every output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from fakellm import KEY, Reply, openai_env

CLI = [sys.executable, "-m", "pytest_telemetry_inject.cli"]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
# A part of the standard library every template handles.
SAMPLE = ["json", "textwrap.py", "string.py", "shlex.py", "fnmatch.py", "colorsys.py", "bisect.py", "heapq.py",
          "calendar.py", "csv.py", "html", "glob.py", "operator.py", "contextvars.py", "graphlib.py"]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLM_", "OPENAI_", "OLLAMA_", "DEBUG_TRACE", "PYTHON"))}
    env.pop("LITELLM_LOCAL_MODEL_COST_MAP", None)  # the package must set it itself
    env.pop("LITELLM_MODE", None)
    return {**env, **extra}


def trace_events(folder: Path) -> list[dict]:
    events = []
    for path in sorted(folder.glob("debug_trace_*.jsonl")):
        events += [json.loads(line) for line in path.read_text().splitlines()]
    return events


def test_importing_the_package_never_imports_litellm() -> None:
    code = ("import sys, pytest_telemetry_inject, pytest_telemetry_inject.cli, pytest_telemetry_inject.plugin, "
            "pytest_telemetry_inject.engine.pipeline, pytest_telemetry_inject.llm.options, "
            "pytest_telemetry_inject.llm.config, pytest_telemetry_inject.trace\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('litellm', 'openai', 'httpx', 'pynvml')))")
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          env=environment(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert "litellm" not in done.stderr  # -X importtime lists every module imported


def test_a_standard_library_run_makes_no_llm_call(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    fake = fake_llm([Reply("should never be asked")])
    src = tmp_path / "src"
    for name in SAMPLE:
        source = STDLIB / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__", "tests"))
        elif source.is_file():
            shutil.copy(source, src / name)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'stdlib-sample'\n")
    logs = tmp_path / "logs"
    env = environment(**openai_env(fake), DEBUG_TRACE="1", DEBUG_TRACE_DIR=str(logs), DEBUG_TRACE_CONSOLE="0")
    for round_ in ("cold", "warm"):
        done = subprocess.run(CLI + [str(src), "-o", str(tmp_path / "out"), "--json", "--max-parallel", "2"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        functions = summary["functions"]
        assert functions.get("failed", 0) == 0 and functions["instrumented"] > 300, functions
        assert "LLM: 0 calls" in done.stderr
        assert KEY not in done.stdout + done.stderr
        if round_ == "warm":
            assert summary["cache"]["memo_hits"] == summary["files"]["total"]
    events = trace_events(logs)
    categories = {e["cat"] for e in events}
    print(f"\nSTDLIB files={summary['files']['total']} functions={functions['total']} "
          f"llm_requests={sum(e['cat'] == 'llm.request' for e in events)} trace_events={len(events)}")
    assert "cache" in categories and "process" in categories
    assert not categories & {"llm.request", "llm.response", "llm.import", "refactor"}
    exits = [e for e in events if e["cat"] == "process" and e["msg"] == "exit"]
    assert len(exits) == 2 and not any(e["litellm_imported"] for e in exits)
    assert any(e["msg"] == "file memo hit" for e in events)
    assert fake.requests == []
    assert KEY not in "".join(p.read_text() for p in logs.iterdir())


def test_a_run_that_asks_a_model_keeps_the_key_out_of_every_output(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    """With the logging target, a body on the def line has no template: the model is asked.
    The server refuses the key and echoes it back; nothing shows it."""
    fake = fake_llm([Reply(f"Incorrect API key provided: {KEY}. You can find your key at ...", status=401)])
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    source = "def quick(x): return x + 1\n\n\ndef slow(x):\n    total = x\n    return total\n"
    (tmp_path / "mod.py").write_text(source)
    env = environment(**openai_env(fake))
    done = subprocess.run(CLI + ["mod.py", "--target", "logging", "-vv", "--in-place", "--debug-trace",
                                 "--trace-level", "DEBUG"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "refused the credentials" in output and "1 failed" in output
    assert "[trace]" in done.stderr  # the console copy
    assert len(fake.chat_requests) == 1  # an authentication error is not retried
    assert fake.chat_requests[0].headers["authorization"] == f"Bearer {KEY}"
    traces = list((tmp_path / "logs").glob("debug_trace_*.jsonl"))
    events = trace_events(tmp_path / "logs")
    assert {"llm.import", "llm.request", "llm.error", "refactor"} <= {e["cat"] for e in events}
    assert KEY not in output and all(KEY not in p.read_text() for p in traces)
    text = (tmp_path / "mod.py").read_text()
    assert "def quick(x): return x + 1\n" in text  # left exactly as it was
    assert "_telemetry_t0 = _telemetry_clock()" in text  # the other function got its telemetry


def test_spawned_workers_ask_the_model_too(tmp_path: Path, fake_llm, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Worker processes started with "spawn" (as inside threaded hosts) inherit nothing: the
    runner hands them the refactorer it was given, and they reach the model."""
    from pytest_telemetry_inject.engine.runner import RunOptions, run
    from pytest_telemetry_inject.llm.config import LLMConfig
    from pytest_telemetry_inject.llm.options import LazyRefactorer
    from pytest_telemetry_inject.settings import Settings

    fake = fake_llm([Reply("no fix today", status=500)] * 40)
    env = openai_env(fake, LLM_MAX_RETRIES="1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for i in range(4):
        (tmp_path / f"m{i}.py").write_text(f"def quick{i}(x): return x + {i}\n")
    refactorer = LazyRefactorer(LLMConfig.load(tmp_path, env=env), str(tmp_path / "ledger.json"))
    settings = Settings.load(tmp_path, env={}, overrides={"target": "logging", "max_parallel": 2, "use_cache": False})
    summary = run([str(tmp_path)], settings, RunOptions(dry_run=True, start_method="spawn"),
                  project_root=tmp_path, refactorer=refactorer)
    assert summary.workers == 2
    assert summary.function_counts().get("failed") == 4
    assert len(fake.chat_requests) >= 4, "every worker's failing function went to the model"
    assert all(f.read_text() == f"def quick{i}(x): return x + {i}\n"
               for i, f in enumerate(sorted(tmp_path.glob("m*.py"))))
