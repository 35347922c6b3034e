"""What every call costs, and the budget: a hard cap checked BEFORE each call.

Before a request, ``reserve`` adds an upper bound of its cost (one token per byte of the
prompt, plus the ``max_tokens`` the request asks for) to what is already spent and
reserved; if that passes the budget the call is not made (``BudgetExceeded``, counted as a
refusal). After the answer, ``settle`` replaces the reservation by the cost the provider
reports (litellm's price table, else the configured or a conservative default price).

The bound holds for an honest provider; one that reports more tokens than the request
allowed is still charged what it reports (that is what it will bill), the excess over the
reservation is recorded (``overruns``) and printed in the summary, and once the settled
total passes the budget no further call starts: ``reserve`` refuses every one. So the
budget is passed by at most what one misreporting call (or the calls already in flight
with it) reported, and the summary says by how much.

Worker processes share one budget through a ledger file (JSON under a file lock); a single
process keeps it in memory. Every change, refusals included, is written back to the ledger,
also when the change ends in an exception.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import TelemetryInjectError
from .config import LLMConfig, ModelSpec

# For models whose price nobody knows: the dearest public prices (per token), so that an
# estimate errs on the safe side.
UNKNOWN_INPUT_PRICE = 15.0 / 1_000_000
UNKNOWN_OUTPUT_PRICE = 75.0 / 1_000_000
MESSAGE_OVERHEAD_TOKENS = 8


class BudgetExceeded(TelemetryInjectError):
    """The next call could pass the budget; it was not made."""


@dataclass(frozen=True)
class Price:
    input: float
    """USD per input token."""
    output: float
    known: bool
    source: str


def price_of(model: ModelSpec, config: LLMConfig) -> Price:
    if config.input_cost_per_mtok is not None or config.output_cost_per_mtok is not None:
        return Price((config.input_cost_per_mtok or 0.0) / 1e6, (config.output_cost_per_mtok or 0.0) / 1e6,
                     True, "configured")
    if model.local:
        return Price(0.0, 0.0, True, "local model")
    try:
        from ._litellm import load_litellm

        table = load_litellm().model_cost
    except ImportError:
        table = {}
    for key in (model.name, model.short, f"{model.provider}/{model.short}"):
        info = table.get(key)
        if info and info.get("input_cost_per_token") is not None:
            return Price(float(info.get("input_cost_per_token") or 0.0),
                         float(info.get("output_cost_per_token") or 0.0), True, "litellm")
    return Price(UNKNOWN_INPUT_PRICE, UNKNOWN_OUTPUT_PRICE, False, "unknown (conservative default)")


def estimate_upper(price: Price, prompt: str, messages: int, max_tokens: int) -> float:
    """An upper bound of a call's cost: byte-level tokenizers never make more tokens than bytes."""
    input_tokens = len(prompt.encode("utf-8")) + MESSAGE_OVERHEAD_TOKENS * messages
    return input_tokens * price.input + max_tokens * price.output


class CostTracker:
    def __init__(self, budget: float | None = None, ledger: str | os.PathLike[str] | None = None) -> None:
        self.budget = budget
        self.ledger = os.fspath(ledger) if ledger else None
        self._lock = threading.Lock()
        self._state: dict[str, Any] = _empty()
        if self.ledger and not os.path.exists(self.ledger):
            with self._locked() as state:
                state.update(_empty())

    # -- the shared state -------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            if not self.ledger:
                yield self._state
                return
            from filelock import FileLock

            with FileLock(self.ledger + ".lock", timeout=60):
                try:
                    with open(self.ledger, encoding="utf-8") as handle:
                        loaded = json.load(handle)
                except (OSError, ValueError):
                    loaded = {}
                state = {**_empty(), **(loaded if isinstance(loaded, dict) else {})}
                try:
                    yield state
                finally:  # a refusal raises BudgetExceeded here: it is counted all the same
                    self._save(state)

    def _save(self, state: dict[str, Any]) -> None:
        assert self.ledger is not None
        temporary = f"{self.ledger}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(state, handle)
        os.replace(temporary, self.ledger)

    # -- calls ------------------------------------------------------------------------------

    def reserve(self, model: str, estimate: float) -> float:
        """Reserve ``estimate`` for a call to ``model``; BudgetExceeded (nothing reserved)
        when spent + reserved + estimate would pass the budget."""
        with self._locked() as state:
            if self.budget is not None and state["spent"] > self.budget + 1e-12:
                state["refused"] += 1
                raise BudgetExceeded(
                    f"the LLM budget of ${self.budget:.4f} is spent (the calls so far cost ${state['spent']:.4f}, "
                    "more than was reserved for them); no further call is made; raise --budget to allow more")
            if self.budget is not None and state["spent"] + state["reserved"] + estimate > self.budget + 1e-12:
                state["refused"] += 1
                raise BudgetExceeded(
                    f"the LLM budget of ${self.budget:.4f} would be passed (spent ${state['spent']:.4f}, "
                    f"this call could cost up to ${estimate:.4f}); raise --budget to allow more")
            state["reserved"] += estimate
        return estimate

    def settle(self, model: str, reserved: float, cost: float, *, input_tokens: int = 0, output_tokens: int = 0,
               latency: float = 0.0) -> None:
        with self._locked() as state:
            state["reserved"] = max(0.0, state["reserved"] - reserved)
            state["spent"] += cost
            state["calls"] += 1
            over = cost - reserved
            if over > 1e-12:  # the provider reported more than the request allowed
                state["overruns"] += 1
                state["overrun_usd"] += over
                largest = state["largest_overrun"]
                if largest is None or over > largest["cost"] - largest["reserved"]:
                    state["largest_overrun"] = {"model": model, "reserved": reserved, "cost": cost,
                                                "input_tokens": input_tokens, "output_tokens": output_tokens}
            per = state["models"].setdefault(model, {"calls": 0, "input_tokens": 0, "output_tokens": 0,
                                                      "cost": 0.0, "latency_s": 0.0})
            per["calls"] += 1
            per["input_tokens"] += input_tokens
            per["output_tokens"] += output_tokens
            per["cost"] += cost
            per["latency_s"] += latency

    def release(self, reserved: float, *, failed: bool = True) -> None:
        """A call that produced nothing billable: give its reservation back."""
        with self._locked() as state:
            state["reserved"] = max(0.0, state["reserved"] - reserved)
            if failed:
                state["failed"] += 1

    def note(self, model: str, **increments: int) -> None:
        """Add counts to a model's figures (the judge's votes: answers, valid, errors, wins, agreed)."""
        with self._locked() as state:
            per = state["models"].setdefault(model, {"calls": 0, "input_tokens": 0, "output_tokens": 0,
                                                      "cost": 0.0, "latency_s": 0.0})
            for name, value in increments.items():
                per[name] = per.get(name, 0) + value

    def would_allow(self, estimate: float) -> bool:
        if self.budget is None:
            return True
        snapshot = self.snapshot()
        allowed: bool = snapshot["spent"] + snapshot["reserved"] + estimate <= self.budget + 1e-12
        return allowed

    # -- reports ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self._locked() as state:
            copy: dict[str, Any] = json.loads(json.dumps(state))
        copy["budget"] = self.budget
        return copy

    @property
    def spent(self) -> float:
        return float(self.snapshot()["spent"])

    def summary_line(self) -> str:
        s = self.snapshot()
        tokens_in = sum(m["input_tokens"] for m in s["models"].values())
        tokens_out = sum(m["output_tokens"] for m in s["models"].values())
        line = (f"LLM: {s['calls']} calls, {tokens_in} input + {tokens_out} output tokens, "
                f"${s['spent']:.6f}")
        if self.budget is not None:
            line += f" of a ${self.budget:.4f} budget"
            if s["spent"] > self.budget + 1e-12:
                line += f" (passed by ${usd(s['spent'] - self.budget)})"
        if s["refused"]:
            line += f", {s['refused']} calls refused by the budget"
        if s["failed"]:
            line += f", {s['failed']} failed requests"
        largest = s["largest_overrun"]
        if s["overruns"] and largest:
            line += (f"; the provider reported ${usd(largest['cost'])} for a call reserved at "
                     f"${usd(largest['reserved'])}: ${usd(largest['cost'] - largest['reserved'])} over the reservation")
            if s["overruns"] > 1:
                line += f" ({s['overruns']} calls over their reservation, ${usd(s['overrun_usd'])} in all)"
        return line


def usd(amount: float) -> str:
    """An amount in dollars with up to six decimals and no trailing zeros: 0.75, 0.002572."""
    text = f"{amount:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _empty() -> dict[str, Any]:
    return {"spent": 0.0, "reserved": 0.0, "calls": 0, "refused": 0, "failed": 0, "models": {},
            "overruns": 0, "overrun_usd": 0.0, "largest_overrun": None}
