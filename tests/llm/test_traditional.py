"""The traditional pipeline: a model inserts the telemetry for languages without templates;
accepted only when removing the inserted lines gives back the original byte for byte."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fakellm import KEY, Reply, openai_env, session_for
from pytest_telemetry_inject.cli import main
from pytest_telemetry_inject.llm.traditional import MARKER, TraditionalPipeline, strip_marked

pytestmark = pytest.mark.usefixtures("litellm_module")

GO = b"""package shop

import "fmt"

func Total(items []int) int {\r
\tsum := 0\r
\tfor _, item := range items {\r
\t\tsum += item\r
\t}\r
\treturn sum\r
}\r

func Hello(name string) string {\r
\treturn fmt.Sprintf("hello %s", name)\r
}\r
"""
GO_FUNCTIONS = json.dumps([{"name": "Total", "start_line": 5, "end_line": 11},
                           {"name": "Hello", "start_line": 13, "end_line": 15}])
GO_INSERTIONS = json.dumps([
    {"after_line": 5, "text": '\tdefer func(t0 time.Time) { log.Printf("Total took %s", time.Since(t0)) }(time.Now()) '
                              f"// {MARKER}"},
    {"after_line": 13, "text": '\tdefer func(t0 time.Time) { log.Printf("Hello took %s", time.Since(t0)) }(time.Now()) '
                               f"// {MARKER}"},
])
# Elixir: no tree-sitter grammar wheel, so the model lists the functions.
EX = b"""defmodule Shop do
  def total(items) do
    Enum.sum(items)
  end

  def hello(name) do
    "hello #{name}"
  end
end
"""
EX_FUNCTIONS = json.dumps([{"name": "total", "start_line": 2, "end_line": 4},
                           {"name": "hello", "start_line": 6, "end_line": 8}])
EX_INSERTIONS = json.dumps([{"after_line": 2, "text": f'    :telemetry.execute([:shop, :total], %{{}}) # {MARKER}'},
                            {"after_line": 6, "text": f'    :telemetry.execute([:shop, :hello], %{{}}) # {MARKER}'}])


def answers(request):  # type: ignore[no-untyped-def]
    prompt = request.prompt
    if "List every function" in prompt:
        return Reply(f"```json\n{EX_FUNCTIONS if 'defmodule' in prompt else GO_FUNCTIONS}\n```")
    if "review failed attempts" in prompt:
        return Reply("Insert whole lines only; never repeat or change a line of the file.")
    return Reply(EX_INSERTIONS if "defmodule" in prompt else GO_INSERTIONS)


def test_a_go_file_keeps_every_byte_and_must_parse(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    grammar = importlib.util.find_spec("tree_sitter_go") is not None
    broken = json.dumps([{"after_line": 5, "text": f"\tdefer func( // {MARKER}"}])
    injections = []

    def script(request):  # type: ignore[no-untyped-def]
        if "List every function" in request.prompt:
            return Reply(GO_FUNCTIONS)
        injections.append(request)
        return Reply(broken) if len(injections) == 1 and grammar else answers(request)

    fake = fake_llm(script)
    pipeline = TraditionalPipeline(session_for(tmp_path, openai_env(fake)))
    result = pipeline.instrument("shop/cart.go", GO)
    assert result.status == "instrumented", result.reason
    assert (result.language, result.functions, result.inserted) == ("go", 2, 2)
    assert result.analyzer == ("tree-sitter" if grammar else "llm")
    assert result.covered == ["Total", "Hello"]
    assert strip_marked(result.output).encode() == GO  # byte for byte, CRLF kept
    assert '\tdefer func(t0 time.Time) { log.Printf("Total took %s"' in result.output
    assert result.output.count("\r\n") == GO.count(b"\r\n") + 2  # inserted lines take the file's ending
    if grammar:  # the first answer did not parse: rejected, then retried
        assert result.attempts == 2
        assert "does not parse" in fake.chat_requests[-1].prompt


def test_a_wrong_answer_is_rejected_reflected_on_and_retried(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    served = []

    def script(request):  # type: ignore[no-untyped-def]
        prompt = request.prompt
        if "List every function" in prompt:
            return Reply(EX_FUNCTIONS)
        if "review failed attempts" in prompt:
            return Reply("Do not change existing lines; end each inserted line with the marker.")
        served.append(prompt)
        if len(served) == 1:  # changes an original line
            return Reply("```elixir\n" + EX.decode().replace("Enum.sum(items)", f"Enum.sum(items) # {MARKER}") + "```")
        if len(served) == 2:  # no marker
            return Reply(json.dumps([{"after_line": 2, "text": '    IO.puts("total")'}]))
        return Reply(EX_INSERTIONS)

    fake = fake_llm(script)
    pipeline = TraditionalPipeline(session_for(tmp_path, openai_env(fake, LLM_REFLECTION_THRESHOLD="2")))
    result = pipeline.instrument("shop.ex", EX)
    assert result.status == "instrumented" and result.attempts == 3 and result.analyzer == "llm"
    assert "Earlier attempts were rejected" in served[1]
    assert "does not give back the original file exactly" in served[1]
    assert "Guidance from the earlier failed attempts" in served[2]  # the reflection went in
    assert any("review failed attempts" in r.prompt for r in fake.chat_requests)
    assert strip_marked(result.output).encode() == EX


def test_python_uses_tree_sitter_and_a_failure_leaves_the_file_alone(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    fake = fake_llm([Reply("garbage"), Reply("[]"), Reply(json.dumps([{"after_line": 99, "text": "x"}]))])
    pipeline = TraditionalPipeline(session_for(tmp_path, openai_env(fake, LLM_REFLECTION_THRESHOLD="9")))
    source = b"def f(a):\n    return a\n\n\ndef g():\n    pass\n"
    result = pipeline.instrument("mod.py", source)
    assert result.analyzer == "tree-sitter" and result.functions == 2
    assert result.status == "failed" and result.output is None and result.attempts == 3
    assert "outside the file" in result.reason
    assert not any("List every function" in r.prompt for r in fake.chat_requests)


def test_a_file_too_large_for_the_model_is_sent_function_by_function(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    body = "".join(f"    x{i} = {i}\n" for i in range(120))
    source = (f"def first():\n{body}    return 1\n\n\ndef second():\n{body}    return 2\n").encode()
    second_line = source.decode().split("\n").index("def second():") + 1
    seen = []

    def script(request):  # type: ignore[no-untyped-def]
        seen.append(request.prompt)
        line = 1 if "- first:" in request.prompt else second_line
        return Reply(json.dumps([{"after_line": line, "text": f"    print('enter') # {MARKER}"}]))

    fake = fake_llm(script, models=["llama3.1:8b"])
    env = {"LLM_MODEL": "llama3.1:8b", "OLLAMA_HOST": fake.url, "OLLAMA_NUM_CTX": "3000"}
    pipeline = TraditionalPipeline(session_for(tmp_path, env, gpu_probes=[]))
    result = pipeline.instrument("big.py", source)
    assert result.status == "instrumented", result.reason
    assert len(seen) == 2 and "- first:" in seen[0] and "- second:" in seen[1]
    assert "- second:" not in seen[0]
    assert strip_marked(result.output).encode() == source
    huge = (f"def only():\n{body * 4}    return 1\n").encode()
    refused = pipeline.instrument("huge.py", huge)
    assert refused.status == "failed" and "does not fit" in refused.reason and "\n" not in refused.reason


def test_the_cli_writes_strips_and_reports(tmp_path: Path, fake_llm, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    fake = fake_llm(answers)
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "shop.ex").write_bytes(EX)
    (project / "README.txt").write_text("not source\n")
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    for name, value in openai_env(fake).items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    code = main(["--traditional", str(project), "-o", str(out), "--no-parallel"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "1 instrumented" in captured.out and "LLM: 2 calls" in captured.out
    written = (out / "src" / "shop.ex").read_bytes()
    assert written != EX and strip_marked(written.decode()).encode() == EX
    assert (out / "README.txt").read_text() == "not source\n"
    assert (project / "src" / "shop.ex").read_bytes() == EX  # the source tree is untouched
    assert KEY not in captured.out + captured.err
    assert main(["--traditional", "--strip", str(out), "--in-place"]) == 0
    assert (out / "src" / "shop.ex").read_bytes() == EX
    capsys.readouterr()
    # No model: a one-line error that says what to do.
    monkeypatch.delenv("LLM_MODEL")
    assert main(["--traditional", str(project)]) == 2
    assert "set LLM_MODEL" in capsys.readouterr().err
