"""One request to one model through litellm: limits, budget, retries, cost, trace.

litellm is imported on the first request (``_litellm.load_litellm``). Requests run on one
event loop in a background thread, so several models can be asked at once and the losers
of a race cancelled (``parallel``).

Retries: a 429 waits for its Retry-After (at most ``max_retry_wait`` seconds), a 5xx, a
malformed answer or a dropped connection waits 0.5 s, 1 s, ...; up to
``transport_retries`` extra tries. Authentication errors, unknown models, bad requests and
timeouts are not retried. Every error is one redacted line that says what to do.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import re
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..redact import one_line, register_secret
from ..trace import DEBUG, ERROR, TRACE, WARNING
from ._litellm import LLMError, load_litellm
from .config import LLMConfig, ModelSpec
from .cost import BudgetExceeded, CostTracker, Price, estimate_upper, price_of
from .tokens import TokenDetector

T = TypeVar("T")
Message = dict[str, str]


@dataclass
class LLMResponse:
    text: str
    model: str
    input_tokens: int
    output_tokens: int
    cost: float
    latency: float
    tries: int = 1


# -- one event loop per process -----------------------------------------------------------------


class _LoopThread:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid() or not self._thread or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="telemetry-inject-llm", daemon=True)
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("run_sync called from the LLM event loop itself")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop()).result()


LOOP = _LoopThread()


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    return LOOP.run(coroutine)


# -- the client ----------------------------------------------------------------------------------


class LLMClient:
    def __init__(self, config: LLMConfig, *, costs: CostTracker | None = None,
                 tokens: TokenDetector | None = None) -> None:
        self.config = config
        self.costs = costs or CostTracker(config.budget)
        self.tokens = tokens or TokenDetector(config)
        for model in config.models:
            register_secret(config.api_key(model))

    def complete(self, model: ModelSpec, messages: Sequence[Message], *, max_tokens: int | None = None,
                 purpose: str = "") -> LLMResponse:
        return run_sync(self.acomplete(model, messages, max_tokens=max_tokens, purpose=purpose))

    def output_tokens(self, model: ModelSpec, wanted: int | None = None) -> int:
        limit = self.tokens.limits(model).output
        cap = wanted or self.config.max_output_tokens or 4096
        return max(1, min(cap, limit))

    async def acomplete(self, model: ModelSpec, messages: Sequence[Message], *, max_tokens: int | None = None,
                        purpose: str = "") -> LLMResponse:
        litellm = load_litellm()
        prompt = "\n".join(m.get("content", "") for m in messages)
        max_out = self.output_tokens(model, max_tokens)
        prompt_tokens = self.tokens.check_fit(model, prompt, max_out)
        price = price_of(model, self.config)
        estimate = estimate_upper(price, prompt, len(messages), max_out)
        try:
            reserved = self.costs.reserve(model.name, estimate)
        except BudgetExceeded as exc:
            if TRACE.on:
                TRACE.event(WARNING, "cost", "call refused by the budget", model=model.name, purpose=purpose,
                            estimate_usd=estimate, error=str(exc))
            raise
        kwargs: dict[str, Any] = {"model": model.name, "messages": list(messages), "timeout": model.timeout,
                                  "max_tokens": max_out}
        if model.api_base:
            kwargs["api_base"] = model.api_base
        key = self.config.api_key(model)
        if key:
            kwargs["api_key"] = key
        if model.provider == "ollama":
            kwargs["num_ctx"] = self.tokens.limits(model).input
        else:
            kwargs["max_retries"] = 0  # the SDK's own retries would hide Retry-After from us
        tries = 0
        started = time.perf_counter()
        while True:
            tries += 1
            if TRACE.on:
                TRACE.event(DEBUG, "llm.request", purpose or "request", model=model.name, attempt=tries,
                            api_base=model.api_base, gpu=model.gpu, prompt_tokens_est=prompt_tokens,
                            max_tokens=max_out, estimate_usd=round(estimate, 8), price_source=price.source)
                if TRACE.enabled(5):
                    TRACE.event(5, "llm.request", "messages", model=model.name, messages=list(messages))
            call_started = time.perf_counter()
            try:
                response = await asyncio.wait_for(litellm.acompletion(**kwargs), timeout=model.timeout + 5)
            except asyncio.CancelledError:
                # A provider may bill a request it already started: count it at its bound.
                self.costs.settle(model.name, reserved, estimate if price.input or price.output else 0.0,
                                  latency=time.perf_counter() - call_started)
                if TRACE.on:
                    TRACE.event(DEBUG, "llm.response", "cancelled", model=model.name,
                                counted_usd=round(estimate, 8))
                raise
            except Exception as exc:
                error = classify(exc, model)
                wait = self._retry_wait(error, tries)
                if TRACE.on:
                    TRACE.event(WARNING if wait is not None else ERROR, "llm.error", error.kind, model=model.name,
                                attempt=tries, error=str(error), retry_in_s=wait)
                if wait is None:
                    self.costs.release(reserved)
                    if tries > 1:
                        error.args = (f"{error.args[0]} (after {tries} tries)",)
                    raise error from None
                await asyncio.sleep(wait)
                continue
            break
        latency = time.perf_counter() - started
        text, input_tokens, output_tokens = _read(response)
        cost = _cost(litellm, response, price, input_tokens, output_tokens)
        self.costs.settle(model.name, reserved, cost, input_tokens=input_tokens, output_tokens=output_tokens,
                          latency=latency)
        if TRACE.on:
            TRACE.event(DEBUG, "llm.response", purpose or "response", model=model.name, tries=tries,
                        input_tokens=input_tokens, output_tokens=output_tokens, duration_s=round(latency, 4),
                        cost_usd=round(cost, 8), chars=len(text))
            if TRACE.enabled(5):
                TRACE.event(5, "llm.response", "text", model=model.name, text=text)
        return LLMResponse(text, model.name, input_tokens, output_tokens, cost, latency, tries)

    def _retry_wait(self, error: LLMError, tries: int) -> float | None:
        if not error.retryable or tries > self.config.transport_retries:
            return None
        if error.retry_after is not None:
            if error.retry_after > self.config.max_retry_wait:
                error.args = (f"{error.args[0]} (the server asks to wait {error.retry_after:.0f} s, more than "
                              f"{self.config.max_retry_wait:.0f} s: try later)",)
                return None
            return max(0.0, error.retry_after)
        backoff: float = min(0.5 * 2 ** (tries - 1), 8.0)  # (int ** int is typed Any: the sign decides)
        return backoff


def _read(response: Any) -> tuple[str, int, int]:
    try:
        text = response.choices[0].message.content or ""
    except (AttributeError, IndexError, KeyError, TypeError):
        raise LLMError("the answer holds no message (a malformed response)", kind="bad_response") from None
    usage = getattr(response, "usage", None)
    input_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    output_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    return str(text), input_tokens, output_tokens


def _cost(litellm: Any, response: Any, price: Price, input_tokens: int, output_tokens: int) -> float:
    if price.source == "litellm":
        hidden = getattr(response, "_hidden_params", None) or {}
        cost = hidden.get("response_cost")
        if cost is None:
            try:
                cost = litellm.completion_cost(completion_response=response)
            except Exception:
                cost = None
        if cost is not None:
            return float(cost)
    return input_tokens * price.input + output_tokens * price.output


_STATUS_KINDS = {400: "bad_request", 401: "auth", 403: "auth", 404: "not_found", 408: "timeout", 413: "bad_request",
                 422: "bad_request", 429: "rate_limit"}


def classify(exc: BaseException, model: ModelSpec) -> LLMError:
    """A one-line ``LLMError`` for whatever litellm (or the network) raised."""
    if isinstance(exc, LLMError):
        return exc
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    try:
        status = int(status) if status is not None else None
    except (TypeError, ValueError):
        status = None
    where = f" at {model.api_base}" if model.api_base else ""
    detail = _detail(exc)
    if isinstance(exc, asyncio.TimeoutError) or name in ("Timeout", "APITimeoutError") or status == 408:
        return LLMError(f"{model.name}: no answer within {model.timeout:.0f} s{where}; raise LLM_TIMEOUT or use a "
                        "faster model", kind="timeout", model=model.name)
    if name in ("AuthenticationError", "PermissionDeniedError") or status in (401, 403):
        return LLMError(f"{model.name}: the provider refused the credentials ({detail}); check the API key "
                        "(telemetry-inject --configure, then --check-api)", kind="auth", model=model.name)
    if name == "NotFoundError" or status == 404:
        return LLMError(f"{model.name}: no such model{where} ({detail}); check LLM_MODEL "
                        "('telemetry-inject models' lists the reachable ones)", kind="not_found", model=model.name)
    if name == "RateLimitError" or status == 429:
        return LLMError(f"{model.name}: rate limited{where} ({detail})", kind="rate_limit", model=model.name,
                        retryable=True, retry_after=_retry_after(exc))
    if name in ("ContextWindowExceededError", "BadRequestError", "UnprocessableEntityError") \
            or status in (400, 413, 422):
        return LLMError(f"{model.name}: the request was refused ({detail})", kind="bad_request", model=model.name)
    if name in ("InternalServerError", "ServiceUnavailableError", "APIConnectionError", "APIError",
                "BadGatewayError", "JSONDecodeError") or (status is not None and status >= 500) \
            or isinstance(exc, (ConnectionError, ValueError)):
        return LLMError(f"{model.name}: the server failed{where} ({detail})", kind="server", model=model.name,
                        retryable=True, retry_after=_retry_after(exc))
    return LLMError(f"{model.name}: {name}: {detail}", kind="error", model=model.name)


def _detail(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc)
    # litellm prefixes its class names; the provider's own words come after the last " - ".
    for prefix in ("litellm.", "OpenAIException - ", "Ollama_chatException - ", "AnthropicException - "):
        text = text.replace(prefix, "")
    text = text.split("Traceback (most recent call last)")[0]
    text = re.sub(r"\b(\w+(?:Error|Exception)): (?:\1: )+", r"\1: ", text)  # litellm repeats class names
    return one_line(text, 160)


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        value = headers.get("retry-after") or headers.get("Retry-After")
    except AttributeError:
        return None
    if value is None:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
