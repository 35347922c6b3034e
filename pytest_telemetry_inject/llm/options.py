"""What script mode does with the LLM flags of ``telemetry-inject`` (declared in ``arguments``).

Stdlib only at import: the CLI imports this on every run that instruments. A model is asked
for nothing until a function fails every template; the session (client, GPU probe, budget
ledger) is built on that first call, so a run that needs no model never imports litellm.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..trace import INFO, TRACE
from ..types import RefactorReply, RefactorRequest


def llm_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "base_url": getattr(args, "base_url", None), "budget": args.budget,
            "max_retries": args.max_retries,
            "reflection_threshold": getattr(args, "reflection_threshold", None),
            "benchmark": True if args.perform_benchmark else None}


class LazyRefactorer:
    """What the engine holds (a ``types.Refactorer``): builds the session on the first
    refactoring (per process)."""

    def __init__(self, config: Any, ledger: str) -> None:
        self.config = config
        self.ledger = ledger
        self.fingerprint = config.fingerprint
        self._refactorer: Any = None
        self._pid = 0
        self.session: Any = None

    def refactor(self, request: RefactorRequest) -> RefactorReply:
        if self._refactorer is None or self._pid != os.getpid():
            from .refactorer import ScriptRefactorer
            from .session import LLMSession

            self.session = LLMSession(self.config, ledger=self.ledger)
            self._refactorer, self._pid = ScriptRefactorer(self.session), os.getpid()
        reply: RefactorReply = self._refactorer.refactor(request)
        return reply

    def __getstate__(self) -> dict[str, Any]:
        # A spawned worker gets the configuration and the shared ledger, never this
        # process's session (its HTTP clients and threads): it builds its own.
        return {**self.__dict__, "_refactorer": None, "_pid": 0, "session": None}


class ScriptModeLLM:
    """The LLM side of one script-mode run: the refactorer the run hands its engines
    (``refactorer``), and the report at the end."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.folder = tempfile.mkdtemp(prefix="telemetry-inject-llm-")
        self.ledger = os.path.join(self.folder, "ledger.json")
        from .cost import CostTracker

        self.costs = CostTracker(config.budget, self.ledger)  # creates the shared ledger
        self.refactorer = LazyRefactorer(config, self.ledger)

    def finish(self, quiet: bool = False) -> None:
        snapshot = self.costs.snapshot()
        if TRACE.on:
            TRACE.event(INFO, "cost", "run total", calls=snapshot["calls"], spent_usd=snapshot["spent"],
                        budget_usd=self.config.budget, refused=snapshot["refused"], models=snapshot["models"])
        if not quiet:
            print(f"telemetry-inject: {self.costs.summary_line()}", file=sys.stderr)
        if self.config.benchmark and snapshot["calls"]:
            from .parallel import benchmark_report, write_benchmark_report

            for path in write_benchmark_report(benchmark_report(snapshot), Path("logs")):
                print(f"telemetry-inject: benchmark report {path}", file=sys.stderr)
        for name in os.listdir(self.folder):
            try:
                os.unlink(os.path.join(self.folder, name))
            except OSError:
                pass
        try:
            os.rmdir(self.folder)
        except OSError:
            pass


def start_script_mode(args: argparse.Namespace, root: Path) -> ScriptModeLLM | None:
    """The LLM side of a script-mode run, or None when no model is configured."""
    from .config import LLMConfig

    config = LLMConfig.load(root, overrides=llm_overrides(args))
    if not config.enabled:
        return None
    return ScriptModeLLM(config)


def no_model_hint(summary: Any, args: argparse.Namespace) -> str | None:
    """Script mode without a model: one line on stderr (not with --quiet or --json) when some
    functions failed every template, saying that a model could try them. Returns the line."""
    if getattr(args, "quiet", False) or getattr(args, "json", False):
        return None
    # A file in error or skipped reports its own reason for every function; the others'
    # failed functions are those no template could instrument.
    failed = sum(report.tally[0].get("failed", 0) for report in summary.files
                 if report.status not in ("error", "skipped"))
    if not failed:
        return None
    import importlib.util

    what, them = ("function failed", "it") if failed == 1 else ("functions failed", "them")
    line = (f"telemetry-inject: hint: {failed} {what} every template; a model could try {them}: set LLM_MODEL "
            "(or --model), or run telemetry-inject --configure (docs/llm.md)")
    if importlib.util.find_spec("litellm") is None:
        line += '; it needs pip install "pytest-telemetry-inject[llm]"'
    print(line, file=sys.stderr)
    return line

