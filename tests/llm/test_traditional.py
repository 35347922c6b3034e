"""The traditional pipeline: a model inserts the telemetry for languages without templates;
accepted only when removing the inserted lines gives back the original byte for byte and
every inserted line is telemetry of the language's grammar (``llm/telemetry_check.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakellm import KEY, Reply, openai_env, session_for

from pytest_telemetry_inject.cli import main
from pytest_telemetry_inject.llm.extensions import language_of
from pytest_telemetry_inject.llm.traditional import MARKER, LLMAnalyzer, TraditionalPipeline, strip_marked

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


def go_timing(after_line: int, name: str) -> list[dict]:
    return [{"after_line": after_line, "text": f"\tstart := time.Now() // {MARKER}"},
            {"after_line": after_line,
             "text": f'\tdefer func() {{ log.Printf("{name} took %s", time.Since(start)) }}() // {MARKER}'}]


GO_INSERTIONS = json.dumps([{"after_line": 3, "text": f'import "time" // {MARKER}'},
                            {"after_line": 3, "text": f'import "log" // {MARKER}'},
                            *go_timing(5, "Total"), *go_timing(13, "Hello")])
JS = b"""export function total(items) {
  let sum = 0;
  for (const item of items) sum += item;
  return sum;
}

export function hello(name) {
  return `hello ${name}`;
}
"""
JS_INSERTIONS = json.dumps([
    {"after_line": 1, "text": f"  const _t0 = performance.now(); // {MARKER}"},
    {"after_line": 3, "text": f"  console.debug(`total took ${{performance.now() - _t0}} ms`); // {MARKER}"},
    {"after_line": 7, "text": f"  console.debug('hello called'); // {MARKER}"},
])


def answers(request):  # type: ignore[no-untyped-def]
    prompt = request.prompt
    if "review failed attempts" in prompt:
        return Reply("Insert whole lines only; never repeat or change a line of the file.")
    return Reply(JS_INSERTIONS if "export function" in prompt else GO_INSERTIONS)


def test_a_go_file_keeps_every_byte_and_must_parse(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    broken = json.dumps([{"after_line": 5, "text": f"\tdefer func( // {MARKER}"}])
    injections = []

    def script(request):  # type: ignore[no-untyped-def]
        injections.append(request)
        return Reply(broken) if len(injections) == 1 else answers(request)

    fake = fake_llm(script)
    pipeline = TraditionalPipeline(session_for(tmp_path, openai_env(fake)))
    result = pipeline.instrument("shop/cart.go", GO)
    assert result.status == "instrumented", result.reason
    assert (result.language, result.functions, result.inserted) == ("go", 2, 6)
    assert result.analyzer == "tree-sitter"  # tree-sitter-go is a dependency: no model lists functions
    assert result.covered == ["Total", "Hello"]
    assert strip_marked(result.output).encode() == GO  # byte for byte, CRLF kept
    assert '\tdefer func() { log.Printf("Total took %s", time.Since(start)) }()' in result.output
    assert result.output.count("\r\n") == GO.count(b"\r\n") + 4  # lines inside functions take their ending
    # The first answer did not parse: rejected, then retried with the reason.
    assert result.attempts == 2 and len(result.rejected) == 1
    assert "does not parse" in fake.chat_requests[-1].prompt


def test_a_wrong_answer_is_rejected_reflected_on_and_retried(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    served = []

    def script(request):  # type: ignore[no-untyped-def]
        prompt = request.prompt
        if "review failed attempts" in prompt:
            return Reply("Do not change existing lines; end each inserted line with the marker.")
        served.append(prompt)
        if len(served) == 1:  # changes an original line
            return Reply("```javascript\n" + JS.decode().replace("return sum;", f"return sum; // {MARKER}") + "```")
        if len(served) == 2:  # no marker
            return Reply(json.dumps([{"after_line": 1, "text": '  console.log("total");'}]))
        return Reply(JS_INSERTIONS)

    fake = fake_llm(script)
    pipeline = TraditionalPipeline(session_for(tmp_path, openai_env(fake, LLM_REFLECTION_THRESHOLD="2")))
    result = pipeline.instrument("shop.js", JS)
    assert result.status == "instrumented" and result.attempts == 3 and result.analyzer == "tree-sitter"
    assert "Earlier attempts were rejected" in served[1]
    assert "does not give back the original file exactly" in served[1]
    assert "Guidance from the earlier failed attempts" in served[2]  # the reflection went in
    assert any("review failed attempts" in r.prompt for r in fake.chat_requests)
    assert strip_marked(result.output).encode() == JS
    assert len(result.rejected) == 2 and all("\n" not in r for r in result.rejected)


def test_a_language_nobody_can_check_is_refused_before_any_request(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    fake = fake_llm([Reply(json.dumps([{"after_line": 2, "text": f"    :telemetry.execute([:a], %{{}}) # {MARKER}"}]))])
    pipeline = TraditionalPipeline(session_for(tmp_path, openai_env(fake)))
    result = pipeline.instrument("shop.ex", b"defmodule Shop do\n  def total(items) do\n    Enum.sum(items)\n  end\nend\n")
    assert result.status == "skipped" and result.output is None
    assert result.reason.startswith("model insertions into elixir files are refused") and "\n" not in result.reason
    assert fake.requests == []  # nothing was asked (and nothing was spent)


def test_the_model_lists_functions_when_no_grammar_is_at_hand(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    """``LLMAnalyzer`` (used for a checked language whose grammar wheel is missing): a JSON list,
    validated; a list with lines outside the file is rejected and asked again."""
    fake = fake_llm([Reply(json.dumps([{"name": "Total", "start_line": 5, "end_line": 99}])),
                     Reply(f"```json\n{GO_FUNCTIONS}\n```")])
    session = session_for(tmp_path, openai_env(fake))
    analyzer = LLMAnalyzer(session.asker)
    language = language_of("cart.go")
    from pytest_telemetry_inject.llm.traditional import TraditionalError

    with pytest.raises(TraditionalError, match="outside the file"):
        analyzer.functions(GO.decode(), language, "cart.go")
    spans = analyzer.functions(GO.decode(), language, "cart.go")
    assert [(f.name, f.start_line, f.end_line) for f in spans] == [("Total", 5, 11), ("Hello", 13, 15)]
    assert len(fake.chat_requests) == 2 and "List every function" in fake.chat_requests[0].prompt


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
        return Reply(json.dumps([{"after_line": line, "text": f"    import logging # {MARKER}"},
                                 {"after_line": line, "text": f"    logging.getLogger(__name__).debug('enter') # {MARKER}"}]))

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
    (project / "src" / "shop.js").write_bytes(JS)
    (project / "README.txt").write_text("not source\n")
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    for name, value in openai_env(fake).items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    code = main(["--traditional", str(project), "-o", str(out), "--no-parallel"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "1 instrumented" in captured.out and "LLM: 1 calls" in captured.out
    written = (out / "src" / "shop.js").read_bytes()
    assert written != JS and strip_marked(written.decode()).encode() == JS
    assert (out / "README.txt").read_text() == "not source\n"
    assert (project / "src" / "shop.js").read_bytes() == JS  # the source tree is untouched
    assert KEY not in captured.out + captured.err
    assert main(["--traditional", "--strip", str(out), "--in-place"]) == 0
    assert (out / "src" / "shop.js").read_bytes() == JS
    capsys.readouterr()
    # No model: a one-line error that says what to do.
    monkeypatch.delenv("LLM_MODEL")
    assert main(["--traditional", str(project)]) == 2
    assert "set LLM_MODEL" in capsys.readouterr().err


def test_traditional_writes_like_a_run_a_read_only_file_is_refused(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """--traditional writes through the runner's writer: in place, a read-only file is refused
    (one line, the file unchanged, exit 3) unless --write-read-only says to rewrite it, and
    its mode is kept."""
    source = tmp_path / "shop.py"
    marked = f"import logging  # {MARKER}\n\n\ndef total(a, b):\n    return a + b\n"
    source.write_text(marked)
    source.chmod(0o444)
    try:
        assert main(["--traditional", "--strip", str(source), "--in-place"]) == 3
        assert "read-only" in capsys.readouterr().err
        assert source.read_text() == marked
        assert main(["--traditional", "--strip", str(source), "--in-place", "--write-read-only"]) == 0
        assert source.read_text() == strip_marked(marked) != marked
        assert source.stat().st_mode & 0o777 == 0o444
    finally:
        source.chmod(0o644)
