"""One request through litellm's real HTTP path to a local fake server: answers, retries,
Retry-After, errors, timeouts, Ollama. Every failure is one clear, redacted line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fakellm import KEY, Reply, openai_env, session_for

from pytest_telemetry_inject.llm.client import LLMError

pytestmark = pytest.mark.usefixtures("litellm_module")
HELLO = [{"role": "user", "content": "Say hello."}]


def ask(tmp_path: Path, fake, **env):  # type: ignore[no-untyped-def]
    session = session_for(tmp_path, openai_env(fake, **env))
    return session, session.client.complete(session.config.models[0], HELLO)


def test_a_good_answer_has_text_tokens_and_cost(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    fake = fake_llm([Reply("hello there", prompt_tokens=12, completion_tokens=3)])
    session, response = ask(tmp_path, fake)
    assert response.text == "hello there"
    assert (response.input_tokens, response.output_tokens) == (12, 3)
    assert response.cost == pytest.approx(12 * 0.15e-6 + 3 * 0.6e-6)  # gpt-4o-mini's price
    request = fake.chat_requests[0]
    assert request.path == "/v1/chat/completions" and request.model == "gpt-4o-mini"
    assert request.headers.get("authorization") == f"Bearer {KEY}"  # the key does reach the server
    assert request.body["max_tokens"] <= 16384
    assert session.costs.snapshot()["calls"] == 1


def test_429_waits_for_retry_after(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    fake = fake_llm([Reply("slow down", status=429, headers={"Retry-After": "1"}), Reply("done")])
    started = time.perf_counter()
    _session, response = ask(tmp_path, fake)
    waited = fake.chat_requests[1].at - fake.chat_requests[0].at
    assert response.text == "done" and response.tries == 2
    assert 0.9 <= waited < 3.0, waited
    assert time.perf_counter() - started >= 0.9


def test_a_retry_after_past_the_limit_ends_with_a_clear_message(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    fake = fake_llm([Reply("quota", status=429, headers={"Retry-After": "3600"})])
    with pytest.raises(LLMError) as info:
        ask(tmp_path, fake)
    assert info.value.kind == "rate_limit"
    assert "wait 3600 s" in str(info.value) and "try later" in str(info.value)
    assert len(fake.chat_requests) == 1


@pytest.mark.parametrize("failure", [Reply("boom", status=500), Reply(raw=b"{not json"), Reply(drop=True)],
                         ids=["500", "malformed-json", "dropped"])
def test_server_failures_are_retried_then_succeed(tmp_path: Path, fake_llm, failure: Reply) -> None:  # type: ignore[no-untyped-def]
    fake = fake_llm([failure, Reply("recovered")])
    _session, response = ask(tmp_path, fake)
    assert response.text == "recovered" and len(fake.chat_requests) == 2


def test_a_server_that_keeps_failing_gives_up_after_the_retries(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    fake = fake_llm([Reply("boom", status=503)])
    with pytest.raises(LLMError) as info:
        ask(tmp_path, fake, LLM_TRANSPORT_RETRIES="2")
    assert info.value.kind == "server" and len(fake.chat_requests) == 3
    assert "\n" not in str(info.value) and "(after 3 tries)" in str(info.value)


def test_a_slow_server_times_out(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    fake = fake_llm([Reply("too late", delay=3)])
    with pytest.raises(LLMError) as info:
        ask(tmp_path, fake, LLM_TIMEOUT="1")
    gave_up = time.monotonic()
    assert info.value.kind == "timeout" and "LLM_TIMEOUT" in str(info.value)
    assert 0.9 < gave_up - fake.chat_requests[0].at < 2.5  # the 1 s limit, not the server's 3 s
    assert len(fake.chat_requests) == 1  # a timeout is not retried


def test_an_unknown_model_and_a_wrong_key_are_not_retried(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    fake = fake_llm([Reply("The model `gpt-9` does not exist", status=404)])
    with pytest.raises(LLMError) as info:
        ask(tmp_path, fake)
    assert info.value.kind == "not_found" and "telemetry-inject models" in str(info.value)
    fake = fake_llm([Reply(f"Incorrect API key provided: {KEY}", status=401)])
    with pytest.raises(LLMError) as info:
        ask(tmp_path, fake)
    assert info.value.kind == "auth" and "--check-api" in str(info.value)
    assert KEY not in str(info.value)  # the provider echoed it; the message does not
    assert len(fake.chat_requests) == 1


def test_ollama_through_its_own_api(tmp_path: Path, fake_llm) -> None:  # type: ignore[no-untyped-def]
    fake = fake_llm([Reply("hi from ollama")], context_length=16384)
    session = session_for(tmp_path, {"LLM_MODEL": "llama3.1:8b", "OLLAMA_HOST": fake.url}, gpu_probes=[])
    model = session.config.models[0]
    assert model.gpu == "cpu"  # no GPU here: CPU mode
    response = session.client.complete(model, HELLO)
    assert response.text == "hi from ollama" and response.cost == 0.0
    chat = fake.chat_requests[0]
    assert chat.path == "/api/chat" and chat.model == "llama3.1:8b"
    assert chat.body["options"]["num_ctx"] == 16384  # from /api/show
    assert any(r.path == "/api/show" for r in fake.requests)


def test_at_exit_litellm_s_http_handlers_are_released_before_the_modules_are_torn_down(  # type: ignore[no-untyped-def]
        tmp_path: Path, fake_llm, litellm_module) -> None:
    # Their __del__ imports a module; left to the interpreter's teardown, that import hung
    # --check-api after its "ok" line now and then (the only thread in _get_module_lock).
    import gc

    from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler

    from pytest_telemetry_inject.llm import _litellm

    def handlers() -> list[object]:
        return [each for each in gc.get_objects() if isinstance(each, AsyncHTTPHandler)]

    fake = fake_llm([Reply("hello")])
    ask(tmp_path, fake)
    cached = [each for each in litellm_module.in_memory_llm_clients_cache.cache_dict.values()
              if isinstance(each, AsyncHTTPHandler)]
    assert cached and handlers(), "nothing to release"
    _litellm._release_clients()
    assert not litellm_module.in_memory_llm_clients_cache.cache_dict
