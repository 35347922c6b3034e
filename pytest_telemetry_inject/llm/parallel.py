"""Asking one or several models for an answer that passes a validator.

- ``SingleModel``: one model per request, in turn when there are several (round robin).
- ``ParallelExecutor``: every model at once; the first answer that passes the validator
  wins and the other requests are cancelled, so the latency follows the fastest VALID model.
- ``JudgeEnsemble`` (``--perform-benchmark``): every model at once, waits for all, validates
  every answer, votes (answers that validate to the same result agree), picks the best of
  the largest group (then the fastest), and keeps per-model figures for a benchmark report.

A validator takes the answer's text and returns (value, "") or (None, reason); it may be
slow (the sandbox) and runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..trace import DEBUG, INFO, TRACE
from ._litellm import LLMError
from .client import LLMClient, Message, run_sync
from .config import LLMConfig, ModelSpec
from .cost import BudgetExceeded
from .pool import OllamaModelPool
from .tokens import PromptTooLarge

Validator = Callable[[str], "tuple[Any, str]"]
VoteKey = Callable[[Any], str]
# Errors after which a model is not asked again in this run.
FATAL_KINDS = frozenset({"auth", "not_found", "unavailable"})


@dataclass
class Answer:
    model: str
    text: str = ""
    value: Any = None
    reason: str = ""
    latency: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    error_kind: str = ""
    """Set when no answer came (the request failed, the budget refused it, ...)."""

    @property
    def valid(self) -> bool:
        return self.value is not None and not self.reason

    @property
    def sent(self) -> bool:
        """The request went out (answered or failed on the way); False for one the budget or
        the token limit stopped before sending, or with no usable model to send it to."""
        return self.error_kind not in ("budget", "too_large", "unavailable")


@dataclass
class Outcome:
    best: Answer | None
    answers: list[Answer] = field(default_factory=list)
    latency: float = 0.0

    @property
    def reasons(self) -> list[str]:
        return [f"{a.model}: {a.reason}" for a in self.answers if not a.valid and a.reason]


class Asker:
    def __init__(self, client: LLMClient, models: Sequence[ModelSpec]) -> None:
        if not models:
            raise ValueError("no model to ask")
        self.client = client
        self.models = list(models)
        self.disabled: dict[str, str] = {}
        self._lock = threading.Lock()

    def ask(self, messages: Sequence[Message], validate: Validator, *, purpose: str = "",
            vote_key: VoteKey | None = None) -> Outcome:
        return run_sync(self.aask(messages, validate, purpose=purpose, vote_key=vote_key))

    async def aask(self, messages: Sequence[Message], validate: Validator, *, purpose: str = "",
                   vote_key: VoteKey | None = None) -> Outcome:
        raise NotImplementedError

    def usable(self) -> list[ModelSpec]:
        return [m for m in self.models if m.name not in self.disabled]

    async def _one(self, model: ModelSpec, messages: Sequence[Message], validate: Validator, purpose: str) -> Answer:
        started = time.perf_counter()
        try:
            response = await self.client.acomplete(model, messages, purpose=purpose)
        except BudgetExceeded as exc:
            return Answer(model.name, reason=str(exc), error_kind="budget", latency=time.perf_counter() - started)
        except PromptTooLarge as exc:
            return Answer(model.name, reason=str(exc), error_kind="too_large", latency=time.perf_counter() - started)
        except LLMError as exc:
            if exc.kind in FATAL_KINDS:
                with self._lock:
                    self.disabled[model.name] = str(exc)
            return Answer(model.name, reason=str(exc), error_kind=exc.kind, latency=time.perf_counter() - started)
        loop = asyncio.get_running_loop()
        try:
            value, reason = await loop.run_in_executor(None, validate, response.text)
        except Exception as exc:  # a validator bug must not lose the other answers
            value, reason = None, f"the answer could not be checked: {type(exc).__name__}: {exc}"
        answer = Answer(model.name, response.text, value, reason if value is None else "",
                        time.perf_counter() - started, response.input_tokens, response.output_tokens, response.cost)
        if value is None and not answer.reason:
            answer.reason = "the answer was not valid"
        if TRACE.on:
            TRACE.event(DEBUG, "validation", "answer checked", model=model.name, purpose=purpose,
                        valid=answer.valid, reason=answer.reason, latency_s=round(answer.latency, 4))
        return answer

    def _no_model(self) -> Outcome:
        reasons = "; ".join(f"{name}: {why}" for name, why in self.disabled.items())
        return Outcome(None, [Answer("-", reason=f"no usable model left ({reasons})", error_kind="unavailable")])


class SingleModel(Asker):
    """One model per request; several configured models take turns."""

    def __init__(self, client: LLMClient, models: Sequence[ModelSpec]) -> None:
        super().__init__(client, models)
        self.pool = OllamaModelPool(models)

    async def aask(self, messages: Sequence[Message], validate: Validator, *, purpose: str = "",
                   vote_key: VoteKey | None = None) -> Outcome:
        model = self.pool.next(skip=set(self.disabled))
        if model is None:
            return self._no_model()
        started = time.perf_counter()
        answer = await self._one(model, messages, validate, purpose)
        return Outcome(answer if answer.valid else None, [answer], time.perf_counter() - started)


class ParallelExecutor(Asker):
    """Every model at once; the first valid answer wins and the rest are cancelled."""

    async def aask(self, messages: Sequence[Message], validate: Validator, *, purpose: str = "",
                   vote_key: VoteKey | None = None) -> Outcome:
        models = self.usable()
        if not models:
            return self._no_model()
        started = time.perf_counter()
        pending = {asyncio.ensure_future(self._one(m, messages, validate, purpose)): m for m in models}
        answers: list[Answer] = []
        winner: Answer | None = None
        try:
            while pending and winner is None:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    pending.pop(task)
                    answer = task.result()
                    answers.append(answer)
                    if answer.valid and winner is None:
                        winner = answer
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if TRACE.on and pending:
            TRACE.event(DEBUG, "model.rotation", "cancelled slower models", purpose=purpose,
                        winner=winner.model if winner else None, cancelled=[m.name for m in pending.values()])
        return Outcome(winner, answers, time.perf_counter() - started)


class JudgeEnsemble(Asker):
    """Every model, every answer validated, a vote, the best answer. The figures of each
    model go to the budget's ledger (shared by worker processes): ``benchmark_report``."""

    async def aask(self, messages: Sequence[Message], validate: Validator, *, purpose: str = "",
                   vote_key: VoteKey | None = None) -> Outcome:
        models = self.usable()
        if not models:
            return self._no_model()
        started = time.perf_counter()
        answers = list(await asyncio.gather(*(self._one(m, messages, validate, purpose) for m in models)))
        key = vote_key or (lambda value: json.dumps(value, sort_keys=True, default=str))
        groups: dict[str, list[Answer]] = {}
        for answer in answers:
            if answer.valid:
                groups.setdefault(key(answer.value), []).append(answer)
        best: Answer | None = None
        majority: list[Answer] = []
        if groups:
            majority = max(groups.values(), key=lambda group: (len(group), -min(a.latency for a in group)))
            best = min(majority, key=lambda a: (a.latency, a.cost))
        for answer in answers:
            if answer.error_kind:
                self.client.costs.note(answer.model, asked=1, errors=1)
            else:
                self.client.costs.note(answer.model, asked=1, answers=1, valid=int(answer.valid),
                                       agreed=int(answer in majority), wins=int(answer is best))
        if TRACE.on:
            TRACE.event(INFO, "validation", "vote", purpose=purpose, votes={k[:12]: len(v) for k, v in groups.items()},
                        winner=best.model if best else None)
        return Outcome(best, answers, time.perf_counter() - started)

    def report(self) -> dict[str, Any]:
        return benchmark_report(self.client.costs.snapshot())

    def write_report(self, directory: str | os.PathLike[str]) -> list[Path]:
        return write_benchmark_report(self.report(), directory)


def benchmark_report(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Per model: how often it was asked, how many answers were valid, wins, latency, tokens, cost."""
    models = {}
    for name, m in sorted(snapshot.get("models", {}).items()):
        asked = m.get("asked", 0)
        calls = m.get("calls", 0)
        models[name] = {
            "asked": asked, "answers": m.get("answers", 0), "valid": m.get("valid", 0), "errors": m.get("errors", 0),
            "valid_rate": round(m.get("valid", 0) / asked, 4) if asked else 0.0,
            "wins": m.get("wins", 0), "agreed_with_majority": m.get("agreed", 0),
            "mean_latency_s": round(m.get("latency_s", 0.0) / calls, 4) if calls else None,
            "input_tokens": m.get("input_tokens", 0), "output_tokens": m.get("output_tokens", 0),
            "cost_usd": round(m.get("cost", 0.0), 8)}
    return {"format": 1, "total_cost_usd": round(snapshot.get("spent", 0.0), 8), "models": models}


def write_benchmark_report(data: dict[str, Any], directory: str | os.PathLike[str]) -> list[Path]:
    """``benchmark_<timestamp>.json`` and ``.md`` in ``directory``; their paths."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    json_path = folder / f"benchmark_{stamp}.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    rows = ["| model | asked | valid rate | wins | mean latency (s) | input tokens | output tokens | cost (USD) |",
            "|---|---|---|---|---|---|---|---|"]
    for name, m in data["models"].items():
        latency = "-" if m["mean_latency_s"] is None else f"{m['mean_latency_s']:.3f}"
        rows.append(f"| {name} | {m['asked']} | {m['valid_rate']:.0%} | {m['wins']} | {latency} | "
                    f"{m['input_tokens']} | {m['output_tokens']} | {m['cost_usd']:.6f} |")
    md_path = folder / f"benchmark_{stamp}.md"
    md_path.write_text("# LLM benchmark\n\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return [json_path, md_path]


def make_asker(client: LLMClient, config: LLMConfig, models: Sequence[ModelSpec] | None = None) -> Asker:
    models = list(models if models is not None else config.models)
    strategy = config.effective_strategy
    if strategy == "judge":
        return JudgeEnsemble(client, models)
    if strategy == "parallel" and len(models) > 1:
        return ParallelExecutor(client, models)
    return SingleModel(client, models)
