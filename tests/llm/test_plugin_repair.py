"""A path::telemetry item whose generated tests fail asks the configured model for a repair
(the local fake server here, through litellm's real HTTP path) and reports what it said."""

from __future__ import annotations

import json

import pytest

from pytest_telemetry_inject.engine.cache import ScriptCache
from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.settings import Settings

from .fakellm import KEY, Reply


def test_a_failing_item_asks_the_model_and_reports_the_answer(pytester: pytest.Pytester, fake_llm,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(calc="def add(a, b):\n    return a + b\n",
                        test_calc="from calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n")
    first = pytester.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider")
    first.assert_outcomes(passed=2)
    first.stdout.fnmatch_lines(["*functions instrumented*; LLM requests: 0"])
    # A generated test that fails as a bug of the tool would make it fail: its case names
    # another version of the function than the one its script was made for (written sealed,
    # as this machine's own: a foreign or tampered one would be rebuilt, not run).
    cache = ScriptCache(pytester.path / ".telemetry_cache")
    (module,) = (pytester.path / ".telemetry_cache" / "tests" / "python").glob("*.cases")
    text = cache.read_test_module("python", module.name)
    assert text is not None and "return a + b" in text
    cache.store([], test_module=("python", module.name, text.replace("return a + b", "return b + a")))
    server = fake_llm([Reply("I cannot help with that.")])
    monkeypatch.setenv("LLM_MODEL", "openai/gpt-4o-mini")
    monkeypatch.setenv("LLM_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("LLM_MAX_RETRIES", "1")
    result = pytester.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "-k", "telemetry",
                                           "--telemetry-report=report.json")
    result.assert_outcomes(failed=1)
    # One request (one model, one attempt), counted in the summary and in the JSON report.
    result.stdout.fnmatch_lines(["*functions instrumented*; LLM requests: 1"])
    assert json.loads((pytester.path / "report.json").read_text())["meta"]["llm_requests"] == len(server.chat_requests) == 1
    result.stdout.fnmatch_lines(["*add: *made for another version of the function*; repair: *"])
    assert server.chat_requests, "the model was not asked"
    assert "def add(a, b):" in server.chat_requests[0].prompt
    assert KEY not in result.stdout.str() + result.stderr.str()


def test_the_workers_of_a_run_spend_one_budget_and_the_summary_shows_it(pytester: pytest.Pytester, fake_llm,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Under pytest-xdist every worker's repairs go through one ledger, which the
    controller's summary reads: a budget that allows no call refuses both workers' calls,
    and the one summary line counts both."""
    for name in ("calc", "more"):
        pytester.makepyfile(**{name: f"def {name}_add(a, b):\n    return a + b\n"})
    pytester.makepyfile(test_calc="from calc import calc_add\nfrom more import more_add\n\n"
                                  "def test_add():\n    assert calc_add(1, 2) == more_add(1, 2) == 3\n")
    pytester.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider").assert_outcomes(passed=3)
    cache = ScriptCache(pytester.path / ".telemetry_cache")
    for module in (pytester.path / ".telemetry_cache" / "tests" / "python").glob("*.cases"):
        text = cache.read_test_module("python", module.name)
        cache.store([], test_module=("python", module.name, text.replace("return a + b", "return b + a")))
    server = fake_llm([Reply("unused")])
    monkeypatch.setenv("LLM_MODEL", "openai/gpt-4o-mini")
    monkeypatch.setenv("LLM_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("LLM_BUDGET", "0")
    result = pytester.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "-n", "2",
                                           "--dist", "loadfile", "-k", "telemetry")
    result.assert_outcomes(failed=2)
    assert not server.chat_requests
    result.stdout.fnmatch_lines(["LLM: 0 calls, * of a $0.0000 budget, 2 calls refused by the budget*"])


def test_a_repair_is_used_by_the_next_session_and_its_generated_test_passes(pytester: pytest.Pytester, fake_llm,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The request buys the function its telemetry: record_fix() marks the failed template and
    stores the model's fix, and from the next session on the engine instruments the function
    with that fix (no call), and its generated test (run in the sandbox) passes."""
    from pytest_telemetry_inject.engine.testgen import parse_cases

    from .fakellm import decorator_fix

    # (Written as is: makepyfile drops the last newline, and the try form does not apply to a
    # function that ends the file without one.)
    (pytester.path / "calc.py").write_text("def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n")
    pytester.makepyfile(test_calc="import calc\n\n\ndef test_calc():\n    assert calc.add(1, 2) == 3 and calc.sub(3, 2) == 1\n")
    pytester.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider").assert_outcomes(passed=2)
    cache = ScriptCache(pytester.path / ".telemetry_cache")
    (module,) = (pytester.path / ".telemetry_cache" / "tests" / "python").glob("*.cases")
    text = cache.read_test_module("python", module.name)
    scripts = {name: (sha, origin) for sha, name, origin, _original in parse_cases(text)}
    assert scripts["add"][1] == scripts["sub"][1] == "template"
    assert all("TEMPLATE = 'python.try.runtime/1'" in cache.read_script("python", sha) for sha, _o in scripts.values())
    # A bug of the tool: add's case runs sub's script (the module written sealed, as this
    # machine's own), so add's generated test fails and the item asks for a repair.
    cache.store([], test_module=("python", module.name, text.replace(scripts["add"][0], scripts["sub"][0])))
    server = fake_llm(decorator_fix)
    monkeypatch.setenv("LLM_MODEL", "openai/gpt-4o-mini")
    monkeypatch.setenv("LLM_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("LLM_MAX_RETRIES", "1")
    repaired = pytester.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "-k", "telemetry")
    repaired.assert_outcomes(passed=1)
    repaired.stdout.fnmatch_lines(["*functions instrumented*; LLM requests: 1"])
    assert len(server.chat_requests) == 1 and "def add(a, b):" in server.chat_requests[0].prompt
    # The next session, with no model configured: the file is instrumented again (its memo was
    # dropped) with the model's fix for add and the template for sub, and every generated test
    # passes, add's included (rechecked, not taken from an earlier pass).
    for name in ("LLM_MODEL", "LLM_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name)
    after = pytester.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "--telemetry-recheck",
                                          "--telemetry-report=report.json")
    after.assert_outcomes(passed=2)
    after.stdout.fnmatch_lines(["*functions instrumented*; LLM requests: 0"])
    assert len(server.chat_requests) == 1
    (module,) = (pytester.path / ".telemetry_cache" / "tests" / "python").glob("*.cases")
    cases = {name: (sha, origin) for sha, name, origin, _original in
             parse_cases(cache.read_test_module("python", module.name))}
    assert cases["add"][1] == "llm" and cases["sub"] == scripts["sub"]
    assert '@_telemetry.instrument("add")' in cache.read_script("python", cases["add"][0])
    # What the import hook compiled: the file's memo, as the plugin's engine reads it.
    settings = Settings.load(pytester.path, defaults={"target": "runtime", "style": "try"})
    memo = Engine(settings, cache).lookup_memo((pytester.path / "calc.py").read_bytes(), "calc.py", import_name="")
    assert memo is not None
    outcomes = {f.qualname: f for f in memo.functions}
    assert outcomes["add"].template == "python.llm.try.runtime/1" and "fixed by an LLM" in outcomes["add"].reason
    assert outcomes["sub"].template == "python.try.runtime/1"
    assert '@_telemetry.instrument("add")\ndef add(a, b):' in memo.output.decode()
    calls = {f["name"]: f["count"] for f in json.loads((pytester.path / "report.json").read_text())["functions"]}
    assert calls.get("add") == 1 and calls.get("sub") == 1, calls
