"""The LLM budget is a hard cap, through the real paths: the command line in subprocesses,
litellm's real HTTP path to a local OpenAI-compatible server (``tests/llm/fakellm.py``),
worker processes sharing one ledger file.

- a provider that reports far more tokens than the request allowed is charged what it
  reports, the summary says by how much that passed the call's reservation, and no further
  request reaches the server;
- every refusal is counted in the ledger, also in worker processes and when ``reserve``
  raises, and the summary prints them all.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Before anything imports litellm: its price table from the package, never from the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "llm"))
from fakellm import KEY, FakeLLM, Reply, openai_env  # noqa: E402

from pytest_telemetry_inject.llm.cost import MESSAGE_OVERHEAD_TOKENS, BudgetExceeded, CostTracker, usd  # noqa: E402

CLI = [sys.executable, "-m", "pytest_telemetry_inject.cli"]
needs_litellm = pytest.mark.skipif(importlib.util.find_spec("litellm") is None, reason="litellm is not installed")
CART = '''"""Cart helpers."""


def total(items):
    s = 0
    for item in items:
        s += item
    return s
'''


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LLM_", "OPENAI_", "OLLAMA_", "DEBUG_TRACE", "PYTHON", "LITELLM_"))}
    return {**env, "XDG_CACHE_HOME": str(tmp_path / "xdg"), **extra}


def summary_line(output: str) -> str:
    (line,) = [line for line in output.splitlines() if "telemetry-inject: LLM: " in line]
    return line


@needs_litellm
def test_a_provider_reporting_a_million_tokens_is_charged_shown_and_stops_the_run(tmp_path: Path) -> None:
    from pytest_telemetry_inject.llm._litellm import load_litellm

    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'shop'\n")
    (project / "cart.py").write_text(CART)
    # A rejected answer (so the pipeline would ask again), reported at 1,000,000 + 1,000,000 tokens.
    with FakeLLM([Reply("I would rather not.", prompt_tokens=1_000_000, completion_tokens=1_000_000,
                        uncapped=True)]) as fake:
        env = environment(tmp_path, **openai_env(fake))
        done = subprocess.run(CLI + ["--traditional", "cart.py", "--in-place", "--budget", "0.01"],
                              capture_output=True, text=True, env=env, cwd=project, timeout=300)
    assert done.returncode == 3, done.stdout + done.stderr  # the file failed: the budget stopped it
    assert len(fake.chat_requests) == 1  # nothing after the overrun reached the server
    assert (project / "cart.py").read_text() == CART
    # The figures, from the request the server saw and litellm's own price table.
    price = load_litellm().model_cost["gpt-4o-mini"]
    body = fake.chat_requests[0].body
    prompt = "\n".join(m["content"] for m in body["messages"])
    reserved = ((len(prompt.encode()) + MESSAGE_OVERHEAD_TOKENS * len(body["messages"])) * price["input_cost_per_token"]
                + body["max_tokens"] * price["output_cost_per_token"])
    charged = 1_000_000 * (price["input_cost_per_token"] + price["output_cost_per_token"])
    line = summary_line(done.stdout)
    print(f"\nBUDGET overrun: {line}")
    assert reserved < 0.01 < charged
    assert f"1000000 input + 1000000 output tokens, ${charged:.6f} of a $0.0100 budget" in line
    assert f"(passed by ${usd(charged - 0.01)})" in line
    assert "1 calls refused by the budget" in line
    assert (f"the provider reported ${usd(charged)} for a call reserved at ${usd(reserved)}: "
            f"${usd(charged - reserved)} over the reservation") in line
    refusals = [line for line in done.stderr.splitlines() if "refused:" in line and "budget" in line]
    assert len(refusals) == 1 and "is spent" in refusals[0] and "no further call is made" in refusals[0]
    assert KEY not in done.stdout + done.stderr


@needs_litellm
def test_refusals_in_worker_processes_are_counted_and_printed(tmp_path: Path) -> None:
    """Script mode, two worker processes sharing the ledger. A call costs exactly its
    reservation ($0.01: 10 output tokens at a configured $1000 per million), the budget is
    $0.015: one call fits, every other request is refused, wherever it was made."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    files = 16  # two batches of eight: two workers
    for i in range(files):  # a body on the def line: no template of the logging target applies
        (tmp_path / f"m{i}.py").write_text(f"def quick{i}(x): return x + {i}\n")
    logs = tmp_path / "logs"
    with FakeLLM([Reply("no script in this answer", completion_tokens=10)]) as fake:
        env = environment(tmp_path, **openai_env(fake, LLM_MAX_RETRIES="2", LLM_MAX_OUTPUT_TOKENS="10",
                                                 LLM_INPUT_COST_PER_MTOK="0", LLM_OUTPUT_COST_PER_MTOK="1000"),
                          DEBUG_TRACE="1", DEBUG_TRACE_DIR=str(logs), DEBUG_TRACE_CONSOLE="0")
        done = subprocess.run(CLI + [".", "--target", "logging", "--in-place", "--max-parallel", "2",
                                     "--budget", "0.015", "--no-cache"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for path in logs.glob("debug_trace_*.jsonl") for line in path.read_text().splitlines()]
    refused_events = [e for e in events if e["cat"] == "cost" and e["msg"] == "call refused by the budget"]
    workers = {e["pid"] for e in events if e["cat"] == "refactor"}
    line = summary_line(done.stderr)
    print(f"\nBUDGET workers={len(workers)} refusal_events={len(refused_events)} {line}")
    assert len(workers) == 2  # the refusals happened in two worker processes
    assert len(fake.chat_requests) == 1 and "LLM: 1 calls" in line and "$0.010000 of a $0.0150 budget" in line
    assert len(refused_events) >= files  # each function once, and the asked one's second attempt
    assert f", {len(refused_events)} calls refused by the budget" in line  # every one of them counted
    for i in range(files):
        assert (tmp_path / f"m{i}.py").read_text() == f"def quick{i}(x): return x + {i}\n"


SHARER = """
import sys
from pytest_telemetry_inject.llm.cost import BudgetExceeded, CostTracker

tracker = CostTracker(0.01, sys.argv[1])
made = 0
for _ in range(5):
    try:
        reserved = tracker.reserve("m", 0.004)
    except BudgetExceeded:
        continue
    tracker.settle("m", reserved, 0.004, input_tokens=1, output_tokens=1)
    made += 1
print(made)
"""


def test_a_ledger_shared_by_two_processes_counts_every_refusal(tmp_path: Path) -> None:
    """Two processes, five calls of $0.004 each against a $0.01 budget: two calls in all fit;
    the eight refusals (``reserve`` raising inside the ledger's lock) are all written back."""
    ledger = tmp_path / "ledger.json"
    CostTracker(0.01, ledger)  # creates it, as the run's parent does
    children = [subprocess.Popen([sys.executable, "-c", SHARER, str(ledger)], stdout=subprocess.PIPE, text=True)
                for _ in range(2)]
    made = sum(int(child.communicate(timeout=120)[0]) for child in children)
    assert all(child.returncode == 0 for child in children)
    state = json.loads(ledger.read_text())
    assert made == 2 and state["calls"] == 2 and state["refused"] == 8 and state["reserved"] == 0
    assert state["spent"] == pytest.approx(0.008)
    line = CostTracker(0.01, ledger).summary_line()
    assert line.endswith("$0.008000 of a $0.0100 budget, 8 calls refused by the budget")


def test_after_an_overrun_every_reservation_is_refused_and_counted(tmp_path: Path) -> None:
    tracker = CostTracker(0.01, tmp_path / "ledger.json")
    reserved = tracker.reserve("m", 0.002)
    tracker.settle("m", reserved, 0.75, input_tokens=1_000_000, output_tokens=1_000_000)
    for estimate in (0.0, 0.001):  # even a free call: the budget is spent
        with pytest.raises(BudgetExceeded, match="is spent"):
            tracker.reserve("m", estimate)
    state = tracker.snapshot()
    assert state["refused"] == 2 and state["overruns"] == 1
    assert state["largest_overrun"] == {"model": "m", "reserved": 0.002, "cost": 0.75, "input_tokens": 1_000_000,
                                        "output_tokens": 1_000_000}
    assert tracker.summary_line() == (
        "LLM: 1 calls, 1000000 input + 1000000 output tokens, $0.750000 of a $0.0100 budget (passed by $0.74), "
        "2 calls refused by the budget; the provider reported $0.75 for a call reserved at $0.002: "
        "$0.748 over the reservation")
    in_memory = CostTracker(0.01)  # a single process keeps the same figures in memory
    with pytest.raises(BudgetExceeded):
        in_memory.reserve("m", 0.02)
    assert in_memory.snapshot()["refused"] == 1


@needs_litellm
def test_the_plugins_repairs_in_one_process_share_one_budget(tmp_path: Path) -> None:
    """``repair()`` (the pytest plugin's entry) once per failing function: the second call
    must not get the whole budget again. One call fits ($0.01 of $0.015), the next is refused
    before it is sent."""
    from pytest_telemetry_inject.llm.config import LLMConfig
    from pytest_telemetry_inject.llm.refactorer import repair, shared_summary_lines

    with FakeLLM([Reply("no script in this answer", completion_tokens=10)]) as fake:
        env = openai_env(fake, LLM_MAX_RETRIES="1", LLM_MAX_OUTPUT_TOKENS="10", LLM_BUDGET="0.015",
                         LLM_INPUT_COST_PER_MTOK="0", LLM_OUTPUT_COST_PER_MTOK="1000")
        results = [repair(f"def f{i}(a):\n    return a\n", f"f{i}", "", ["no template applies"],
                          config=LLMConfig.load(tmp_path, env=env)) for i in range(3)]
    assert len(fake.chat_requests) == 1 and [r.requests for r in results] == [1, 0, 0]
    assert not any(r.ok for r in results)
    assert all("budget of $0.0150 would be passed" in r.reasons[-1] for r in results[1:])
    (line,) = [line for line in shared_summary_lines() if "$0.0150 budget" in line]
    assert line.startswith("LLM: 1 calls, ") and line.endswith(
        " + 10 output tokens, $0.010000 of a $0.0150 budget, 2 calls refused by the budget")
