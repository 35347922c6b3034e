"""The refactorer inside the engine: asked only when every template failed; its fix is
derived into edits, composed, validated and cached with origin "llm"; wrong, hostile and
garbage answers leave the source intact with a clear reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakellm import HOSTILE, KEY, Reply, code_changing_fix, decorator_fix, openai_env, session_for

from pytest_telemetry_inject.engine.cache import ScriptCache
from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.engine.planning import llm_template
from pytest_telemetry_inject.engine.scripts import render_script
from pytest_telemetry_inject.engine.testgen import parse_cases
from pytest_telemetry_inject.languages import get_language
from pytest_telemetry_inject.languages.python import PythonLanguage
from pytest_telemetry_inject.llm.refactorer import NEVER_CHANGE, ScriptRefactorer, record_fix, repair
from pytest_telemetry_inject.scriptlib import apply as apply_edits
from pytest_telemetry_inject.scriptlib import insert, sha256
from pytest_telemetry_inject.settings import Settings
from pytest_telemetry_inject.testkit import ScriptCheck

pytestmark = pytest.mark.usefixtures("litellm_module")

SOURCE = b'''"""Shop."""


def fine(a):
    return a + 1


def broken_total(items):
    """Sum."""
    total = 0
    for item in items:
        total += item
    return total


class Cart:
    def broken_count(self):
        def helper(x):
            return x
        return helper(len(self.items))
'''


@pytest.fixture
def broken_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in for a template bug: for functions named broken_*, the with template
    forgets its `with` line and the decorator template indents its line too far."""
    real_plan = PythonLanguage.plan

    def plan(self: PythonLanguage, template: Any, record: Any, parsed: Any) -> list:
        edits = real_plan(self, template, record, parsed)
        if not record.name.startswith("broken"):
            return edits
        if template.style == "with":
            return edits[:1]  # the indent without its with line: the output does not parse
        return [insert(record.relative(record.def_line), record.indent + '   @_telemetry.instrument("wrong")')]

    monkeypatch.setattr(PythonLanguage, "plan", plan)


def instrument(engine: Engine, data: bytes = SOURCE) -> Any:
    return engine.instrument(data, "shop.py", import_name="telemetry_utils")


def outcomes(result: Any) -> dict[str, Any]:
    return {o.qualname: o for o in result.functions}


@pytest.mark.usefixtures("broken_templates")
def test_a_fix_is_composed_cached_and_reused_without_any_call(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    fake = fake_llm(decorator_fix)
    session = session_for(tmp_path, openai_env(fake))
    cache = ScriptCache(tmp_path / "cache")
    settings = Settings()
    engine = Engine(settings, cache, refactorer=ScriptRefactorer(session))
    result = instrument(engine)
    assert result.status == "instrumented", result.reason
    found = outcomes(result)
    assert {q for q, o in found.items() if o.status == "instrumented"} == {
        "fine", "broken_total", "Cart.broken_count", "Cart.broken_count.<locals>.helper"}
    assert found["broken_total"].reason.startswith("fixed by openai/gpt-4o-mini")
    assert found["broken_total"].template.startswith("python.llm.with.vendored/")
    assert len(fake.chat_requests) == 2  # one per broken function, none for the others
    # What was sent: the failing script, its test's failures, the lessons, never the key.
    prompt = fake.chat_requests[0].prompt
    assert "The current script failed its test" in prompt and 'instrument("wrong")' in prompt
    assert "the output does not parse" in prompt and "Lessons learned" in prompt
    assert KEY not in prompt
    text = result.output.decode()
    assert '    @_telemetry.instrument("Cart.broken_count")\n    def broken_count' in text
    assert 'with _telemetry.span("Cart.broken_count.<locals>.helper"):' in text  # nested: a template
    python = get_language("python")
    assert python.strip(text).text == SOURCE.decode()
    # The index: ok, origin llm, with its edits; the generated test runs it in the sandbox.
    parsed = python.parse(SOURCE.decode(), "shop.py", settings)
    record = next(r for r in parsed.functions if r.qualname == "broken_total")
    entry = cache.lookup(engine.function_key(record, llm_template(python, settings)))
    assert entry is not None and entry.status == "ok" and entry.origin == "llm" and entry.edits
    module = tmp_path / "cache" / "tests" / "python" / result.tests
    llm_cases = [case for case in parse_cases(cache.read_test_module("python", result.tests)) if case[2] == "llm"]
    assert [case[1] for case in llm_cases] == ["broken_total", "Cart.broken_count"]
    for sha, name, origin, original in llm_cases:
        ScriptCheck.for_test_file(str(module), sha, language="python", span_name=name, original=original,
                                  origin=origin).assert_all()
    # Again: the memo answers. Without any model: the same output, from the cache.
    assert instrument(engine).output == result.output and len(fake.chat_requests) == 2
    plain = instrument(Engine(settings, cache))
    assert plain.memo_hit and plain.output == result.output
    for memo in (tmp_path / "cache" / "metadata" / "files").rglob("*"):
        if memo.is_file():
            memo.unlink()
    rebuilt = instrument(Engine(settings, cache))
    assert not rebuilt.memo_hit and rebuilt.output == result.output
    assert "cached" in outcomes(rebuilt)["broken_total"].reason
    assert len(fake.chat_requests) == 2


@pytest.mark.usefixtures("broken_templates")
def test_a_fix_that_changes_code_is_rejected_and_remembered(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    fake = fake_llm(code_changing_fix)
    session = session_for(tmp_path, openai_env(fake, LLM_MAX_RETRIES="2"))
    cache = ScriptCache(tmp_path / "cache")
    engine = Engine(Settings(), cache, refactorer=ScriptRefactorer(session))
    result = instrument(engine)
    found = outcomes(result)
    assert found["broken_total"].status == "failed"
    assert NEVER_CHANGE in found["broken_total"].reason and "2 attempt" in found["broken_total"].reason
    assert found["fine"].status == "instrumented"
    assert len(fake.chat_requests) == 4  # 2 functions x 2 attempts
    assert "That script was rejected" in fake.chat_requests[1].prompt  # the reason went back
    # The user's code is intact: only telemetry was added, and not to the failed functions.
    text = result.output.decode()
    assert get_language("python").strip(text).text == SOURCE.decode()
    assert "yield" not in text and 'instrument("broken_total")' not in text
    # Remembered: the same models are not asked again about the same function.
    for memo in (tmp_path / "cache" / "metadata" / "files").rglob("*"):
        if memo.is_file():
            memo.unlink()
    again = instrument(Engine(Settings(), cache, refactorer=ScriptRefactorer(session)))
    assert len(fake.chat_requests) == 4
    assert NEVER_CHANGE in outcomes(again)["broken_total"].reason


@pytest.mark.usefixtures("broken_templates")
def test_hostile_and_garbage_answers_are_refused_and_never_run(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"
    fake = fake_llm([Reply(HOSTILE.format(marker=marker)), Reply("Sorry, I can't do that."),
                     Reply(raw=b"<html>502 Bad Gateway</html>", status=502), Reply("{}")])
    session = session_for(tmp_path, openai_env(fake, LLM_MAX_RETRIES="3", LLM_TRANSPORT_RETRIES="0"))
    engine = Engine(Settings(), None, refactorer=ScriptRefactorer(session))
    result = instrument(engine)
    reason = outcomes(result)["broken_total"].reason
    assert outcomes(result)["broken_total"].status == "failed"
    assert not marker.exists()
    assert "server failed" in reason  # the last attempt's reason; the earlier ones went back to the model:
    texts = [r.prompt for r in fake.chat_requests]
    assert any("refused by the security allowlist" in t for t in texts)
    assert any("holds no script" in t for t in texts)
    assert get_language("python").strip(result.output.decode()).text == SOURCE.decode()


def test_repair_for_the_plugin(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    source = "    def total(self, items):\n        return sum(items)\n"
    fake = fake_llm(decorator_fix)
    result = repair(source, "Cart.total", "EDITS = []", ["the output has no span"],
                    session=session_for(tmp_path, openai_env(fake)))
    assert result.ok and result.attempts == 1 and result.model == "openai/gpt-4o-mini"
    assert result.edits and "SOURCE_SHA256" in result.script and result.cost > 0
    assert result.requests == len(fake.chat_requests) == 1
    check = ScriptCheck(result.script, language="python", span_name="Cart.total", original=source, origin="llm")
    assert check.run_all() == []
    assert '    @_telemetry.instrument("Cart.total")' in check.output
    nothing = repair(source, "Cart.total", "", [], root=tmp_path)
    assert not nothing.ok and "no LLM is configured" in nothing.reasons[0]


def test_requests_count_what_was_sent(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    """A request the budget stops is never sent, and not counted; a rejected answer is."""
    source = "def total(items):\n    return sum(items)\n"
    fake = fake_llm([Reply("I cannot help with that.")])
    broke = repair(source, "total", "EDITS = []", ["the output has no span"],
                   session=session_for(tmp_path, openai_env(fake, LLM_BUDGET="0", LLM_MAX_RETRIES="1")))
    assert not broke.ok and broke.requests == 0 and fake.chat_requests == [] and "budget" in broke.reasons[0]
    rejected = repair(source, "total", "EDITS = []", ["the output has no span"],
                      session=session_for(tmp_path, openai_env(fake, LLM_MAX_RETRIES="1")))
    assert not rejected.ok and rejected.requests == len(fake.chat_requests) == 1


def test_no_refactorer_no_call_and_templates_as_before(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    """With working templates, a configured refactorer is never called."""
    fake = fake_llm(decorator_fix)
    session = session_for(tmp_path, openai_env(fake))
    with_model = instrument(Engine(Settings(), None, refactorer=ScriptRefactorer(session)))
    without = instrument(Engine(Settings(), None))
    assert with_model.output == without.output and with_model.output is not None
    assert fake.chat_requests == []


FAILURES = {
    "timeout": (Reply("late", delay=3), {"LLM_TIMEOUT": "1"}, "no answer within 1 s"),
    "rate-limited": (Reply("slow down", status=429, headers={"Retry-After": "600"}), {}, "try later"),
    "server-error": (Reply("boom", status=500), {"LLM_TRANSPORT_RETRIES": "1"}, "the server failed"),
    "malformed-json": (Reply(raw=b'{"choices": [', status=200), {"LLM_TRANSPORT_RETRIES": "0"}, "server failed"),
    "unknown-model": (Reply("The model `gpt-4o-mini` does not exist", status=404), {}, "no such model"),
}


@pytest.mark.usefixtures("broken_templates")
@pytest.mark.parametrize("case", sorted(FAILURES))
def test_every_failure_leaves_the_source_intact_with_a_clear_reason(tmp_path: Path, fake_llm, case: str) -> None:  # type: ignore[no-untyped-def]
    reply, env, expected = FAILURES[case]
    fake = fake_llm([reply])
    session = session_for(tmp_path, openai_env(fake, **env))
    source = b"def broken_one(a):\n    b = a * 2\n    return b\n"
    result = Engine(Settings(), ScriptCache(tmp_path / "cache"),
                    refactorer=ScriptRefactorer(session)).instrument(source, "mod.py")
    (outcome,) = result.functions
    assert outcome.status == "failed" and result.output is None  # nothing else to instrument: unchanged
    llm_part = outcome.reason.split("llm: ", 1)[1]
    assert expected in llm_part and "\n" not in llm_part, llm_part
    assert llm_part.startswith("LLM refactoring failed after 1 attempt(s): openai/gpt-4o-mini: ")  # not retried
    assert "openai/gpt-4o-mini: openai/gpt-4o-mini" not in llm_part and KEY not in outcome.reason


@pytest.mark.usefixtures("broken_templates")
def test_a_model_that_could_not_be_reached_is_asked_again_next_run(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    """Budget, network and provider failures are not remembered: neither in the index nor in
    the file memo."""
    source = b"def broken_one(a):\n    b = a * 2\n    return b\n"
    cache = ScriptCache(tmp_path / "cache")
    down = fake_llm([Reply("boom", status=500)])
    first = Engine(Settings(), cache, refactorer=ScriptRefactorer(session_for(tmp_path, openai_env(
        down, LLM_TRANSPORT_RETRIES="0")))).instrument(source, "mod.py")
    assert first.functions[0].status == "failed" and "server failed" in first.functions[0].reason
    up = fake_llm(decorator_fix)
    second = Engine(Settings(), cache, refactorer=ScriptRefactorer(session_for(tmp_path, openai_env(up)))).instrument(
        source, "mod.py")
    assert not second.memo_hit and second.functions[0].status == "instrumented"
    assert len(up.chat_requests) == 1


def test_telemetry_of_another_target_is_rejected(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    """No template fits an async one-liner under OpenTelemetry; an answer with the runtime's
    decorator would strip cleanly but fail when the code runs, so it is refused."""
    fake = fake_llm(decorator_fix)  # always @_telemetry.instrument(...)
    session = session_for(tmp_path, openai_env(fake, LLM_MAX_RETRIES="1"))
    result = Engine(Settings(target="otel"), None, refactorer=ScriptRefactorer(session)).instrument(
        b"async def other(x): return x\n", "mod.py")
    (outcome,) = result.functions
    assert outcome.status == "failed" and result.output is None
    assert "is not telemetry of the target 'otel'" in outcome.reason
    assert ('with _telemetry.start_as_current_span("other", attributes={"code.function.name": __name__ + ".other", '
            in outcome.reason)  # what would be right, naming this function
    assert len(fake.chat_requests) == 1


@pytest.mark.usefixtures("broken_templates")
def test_the_plugin_path_repair_then_record_fix_then_rebuild(tmp_path: Path, fake_llm, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A generated test fails (here: a template script that does not parse); the plugin asks
    repair(), stores the fix with record_fix(), and the rebuild uses it without a call."""
    source = "def broken_one(a):\n    b = a * 2\n    return b\n"
    settings = Settings()
    python = get_language("python")
    parsed = python.parse(source, "mod.py", settings)
    record = parsed.functions[0]
    template = python.templates(record, settings)[0]
    edits = python.plan(template, record, parsed)
    failing = render_script(language="python", span_name="broken_one", template=f"{template.id}/{template.version}",
                            source_sha256=sha256(source), output_sha256=sha256(apply_edits(source, edits)),
                            edits=edits)
    reasons = ScriptCheck(failing, language="python", span_name="broken_one", original=source).run_all()
    assert reasons  # the generated test's checks fail
    fake = fake_llm(decorator_fix)
    result = repair(source, "broken_one", failing, reasons, target=settings.target,
                    session=session_for(tmp_path, openai_env(fake)))
    assert result.ok
    cache = ScriptCache(tmp_path / "cache")
    record_fix(cache, settings=settings, language="python", span_name="broken_one", source=source,
               failing_script=failing, reason=reasons[0], result=result)
    rebuilt = Engine(settings, ScriptCache(tmp_path / "cache")).instrument(source.encode(), "mod.py")
    (outcome,) = rebuilt.functions
    assert outcome.status == "instrumented" and "cached" in outcome.reason
    assert b'@_telemetry.instrument("broken_one")\ndef broken_one' in rebuilt.output
    assert len(fake.chat_requests) == 1
