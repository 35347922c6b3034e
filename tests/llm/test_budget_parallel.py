"""The budget is a hard limit; several models race (first valid answer wins) or are judged."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fakellm import Reply, decorator_fix, openai_env, session_for

from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.llm.parallel import JudgeEnsemble, ParallelExecutor
from pytest_telemetry_inject.llm.refactorer import ScriptRefactorer
from pytest_telemetry_inject.settings import Settings

pytestmark = pytest.mark.usefixtures("litellm_module")

FUNCTIONS = 5
SOURCE = "".join(f"def f{i}(a):\n    return a + {i}\n\n\n" for i in range(FUNCTIONS)).encode()


def fail_every_template(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_telemetry_inject.errors import TemplateNotApplicable
    from pytest_telemetry_inject.languages.python import PythonLanguage

    real_plan = PythonLanguage.plan

    def plan(self, template, record, parsed):  # type: ignore[no-untyped-def]
        if record.name in {f"f{i}" for i in range(FUNCTIONS)}:
            raise TemplateNotApplicable("stand-in for a function no template handles")
        return real_plan(self, template, record, parsed)

    monkeypatch.setattr(PythonLanguage, "plan", plan)


def expensive(request):  # type: ignore[no-untyped-def]
    reply = decorator_fix(request)
    reply.completion_tokens = 2500  # a long answer: about $0.0017 at gpt-4o-mini's price
    return reply


def run(tmp_path: Path, fake, budget: str | None):  # type: ignore[no-untyped-def]
    env = openai_env(fake, LLM_MAX_OUTPUT_TOKENS="3000", LLM_MAX_RETRIES="1")
    if budget is not None:
        env["LLM_BUDGET"] = budget
    session = session_for(tmp_path, env)
    result = Engine(Settings(), None, refactorer=ScriptRefactorer(session)).instrument(SOURCE, "mod.py")
    return session, result


def test_the_budget_is_never_exceeded(tmp_path: Path, fake_llm, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    fail_every_template(monkeypatch)
    free = fake_llm(expensive)
    unlimited, result = run(tmp_path, free, None)
    without_check = unlimited.costs.spent
    assert len(free.chat_requests) == FUNCTIONS
    assert sum(o.status == "instrumented" for o in result.functions) == FUNCTIONS
    budget = without_check * 0.75  # every function would cost a third more than the budget
    limited_fake = fake_llm(expensive)
    limited, result = run(tmp_path, limited_fake, f"{budget:.8f}")
    snapshot = limited.costs.snapshot()
    print(f"\nBUDGET budget=${budget:.6f} spent_with_check=${snapshot['spent']:.6f} "
          f"calls={snapshot['calls']} refused={snapshot['refused']} spent_without_check=${without_check:.6f} "
          f"calls_without_check={FUNCTIONS}")
    assert without_check > budget  # the run would pass the budget without the check
    assert snapshot["spent"] <= budget
    assert snapshot["reserved"] == 0
    assert 1 <= snapshot["calls"] < FUNCTIONS and snapshot["refused"] >= 1
    assert len(limited_fake.chat_requests) == snapshot["calls"]
    refused = [o for o in result.functions if o.status == "failed"]
    assert refused and all("budget" in o.reason and "--budget" in o.reason for o in refused)
    assert result.output is not None and b"def f0(a):\n    return a + 0\n" in result.output  # code intact


def valid_after(delay: float):  # type: ignore[no-untyped-def]
    def handler(request):  # type: ignore[no-untyped-def]
        reply = decorator_fix(request)
        reply.delay = delay
        return reply

    return handler


def invalid_after(delay: float):  # type: ignore[no-untyped-def]
    return lambda request: Reply("no script here", delay=delay)


def race(tmp_path: Path, fakes: list, strategy: str = "parallel"):  # type: ignore[no-untyped-def]
    env = openai_env(fakes[0], LLM_STRATEGY=strategy)
    session = session_for(tmp_path, env)
    # One model per server: the same litellm model name, a different api_base each.
    models = [session.config.model_spec("openai/gpt-4o-mini") for _ in fakes]
    models = [type(m)(m.name, m.provider, fake.url + "/v1", m.timeout) for m, fake in zip(models, fakes, strict=True)]
    asker = (ParallelExecutor if strategy == "parallel" else JudgeEnsemble)(session.client, models)
    session.asker = asker
    refactorer = ScriptRefactorer(session)
    started = time.perf_counter()
    result = refactorer(language="python", span_name="f", source="def f(a):\n    return a\n",
                        failures=["no template applies"])
    return result, time.perf_counter() - started, asker


def test_the_first_valid_answer_wins_and_the_rest_are_cancelled(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    delays = (0.3, 2.5, 4.0)
    fakes = [fake_llm(valid_after(d)) for d in delays]
    race(tmp_path, fakes[:1])  # warm-up: litellm's clients and the sandbox
    result, elapsed, _asker = race(tmp_path, fakes)
    assert result.ok
    # Validation (the sandbox) adds a little; the slower models are not waited for.
    print(f"\nEXECUTOR valid delays={delays} first_valid_latency={elapsed:.3f}s")
    assert elapsed < delays[1], elapsed
    # When the fastest answer is invalid, the next valid one wins.
    slow = [fake_llm(invalid_after(0.2)), fake_llm(valid_after(1.0)), fake_llm(valid_after(4.0))]
    result, elapsed, _asker = race(tmp_path, slow)
    print(f"EXECUTOR fastest invalid (0.2s), valid 1.0s/4.0s: latency={elapsed:.3f}s")
    assert result.ok and 1.0 <= elapsed < 4.0, elapsed


def test_the_judge_waits_for_all_votes_and_reports_per_model(tmp_path: Path, fake_llm, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    fakes = [fake_llm(valid_after(0.05)), fake_llm(valid_after(0.4)), fake_llm(invalid_after(0.1))]
    result, elapsed, asker = race(tmp_path, fakes, strategy="judge")
    assert result.ok and elapsed >= 0.4  # it waited for the slowest
    assert all(len(f.chat_requests) == 1 for f in fakes)
    report = asker.report()
    (model,) = report["models"].values()  # the three share one model name here
    assert model["asked"] == 3 and model["valid"] == 2 and model["valid_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert model["wins"] == 1 and model["agreed_with_majority"] == 2
    assert model["input_tokens"] > 0 and model["cost_usd"] > 0 and model["mean_latency_s"] > 0
    json_path, md_path = asker.write_report(tmp_path / "logs")
    assert json.loads(json_path.read_text())["models"] and "valid rate" in md_path.read_text()
