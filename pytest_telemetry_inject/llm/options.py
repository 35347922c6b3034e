"""The LLM flags of ``telemetry-inject`` and what script mode does with them.

Stdlib only at import: the CLI imports this on every run. A model is asked for nothing
until a function fails every template; the session (client, GPU probe, budget ledger) is
built on that first call, so a run that needs no model never imports litellm.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..trace import INFO, TRACE


KEYS_HELP = ("API keys come only from the environment or the project's .env (OPENAI_API_KEY, ANTHROPIC_API_KEY, "
             "<PROVIDER>_API_KEY, or LLM_API_KEY for any; --configure writes .env): there is no --api-key, "
             "since a key on the command line stays in the shell history and the process list.")


class _RefuseAPIKey(argparse.Action):
    """``--api-key`` is refused in one line that never repeats the value (argparse's own
    "unrecognized arguments" would print the key)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from ..errors import ConfigError
        from .redact import register_secret

        if isinstance(values, str):
            register_secret(values)
        raise ConfigError("--api-key is not accepted: a key on the command line stays in the shell history and the "
                          "process list; set OPENAI_API_KEY, ANTHROPIC_API_KEY, <PROVIDER>_API_KEY or LLM_API_KEY "
                          "in the environment or in .env (telemetry-inject --configure writes it)")


def add_base_url_argument(parser: Any) -> None:
    """``--base-url`` (LLM_BASE_URL's meaning; the flag wins) and the refused ``--api-key``."""
    parser.add_argument("--base-url", metavar="URL",
                        help="the server of every model: a proxy, an OpenAI-compatible server, an Ollama host "
                             "(default: LLM_BASE_URL)")
    parser.add_argument("--api-key", nargs="?", action=_RefuseAPIKey, help=argparse.SUPPRESS)


def add_llm_arguments(parser: argparse.ArgumentParser, *, traditional: bool = False) -> None:
    group = parser.add_argument_group("LLM (optional extra: pip install \"pytest-telemetry-inject[llm]\")",
                                      KEYS_HELP)
    group.add_argument("--model", metavar="NAME[,NAME]",
                       help="model(s) to ask when no template works (default: LLM_MODEL); several at once race")
    add_base_url_argument(group)
    group.add_argument("--budget", type=float, metavar="USD",
                       help="hard limit on the money the models may cost in this run (checked before each call)")
    group.add_argument("--max-retries", type=int, metavar="N",
                       help="attempts per refactoring or file (default 3)")
    group.add_argument("--perform-benchmark", action="store_true",
                       help="ask every model, validate every answer, vote, and write a benchmark report per model")
    group.add_argument("--traditional", action="store_true",
                       help="the LLM pipeline for languages without templates (any extension)")
    group.add_argument("--reflection-threshold", type=int, metavar="N",
                       help="--traditional: after N failed answers, ask the model why and guide the next try")
    group.add_argument("--configure", action="store_true", help="write .env interactively (provider, model, key)")
    group.add_argument("--check-api", action="store_true", help="test the connection and key of each configured model")
    trace = parser.add_argument_group("debug trace")
    trace.add_argument("--debug-trace", action="store_true",
                       help="write JSON-lines events to logs/debug_trace_<timestamp>.jsonl (also DEBUG_TRACE=1)")
    trace.add_argument("--trace-level", metavar="LEVEL", help="TRACE, DEBUG (default), INFO, WARNING or ERROR")
    trace.add_argument("--no-trace-console", action="store_true", help="do not copy trace events to stderr")


def configure_trace(args: argparse.Namespace) -> None:
    if getattr(args, "debug_trace", False) or args.trace_level or (TRACE.on and args.no_trace_console):
        TRACE.configure(enabled=True, level=args.trace_level or (TRACE.level if TRACE.on else None),
                        console=False if args.no_trace_console else None,
                        path=TRACE.path if TRACE.on else None)
    if TRACE.on:
        TRACE.event(INFO, "process", "start", argv=sys.argv[1:], cwd=os.getcwd())


def llm_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "base_url": getattr(args, "base_url", None), "budget": args.budget,
            "max_retries": args.max_retries,
            "reflection_threshold": getattr(args, "reflection_threshold", None),
            "benchmark": True if args.perform_benchmark else None}


class LazyRefactorer:
    """What the engine holds: builds the session on the first refactoring (per process)."""

    def __init__(self, config: Any, ledger: str) -> None:
        self.config = config
        self.ledger = ledger
        self.fingerprint = config.fingerprint
        self._refactorer: Any = None
        self._pid = 0
        self.session: Any = None

    def __call__(self, **request: Any) -> Any:
        if self._refactorer is None or self._pid != os.getpid():
            from .session import LLMSession

            self.session = LLMSession(self.config, ledger=self.ledger)
            self._refactorer, self._pid = self.session.refactorer(), os.getpid()
        return self._refactorer(**request)

    def __getstate__(self) -> dict[str, Any]:
        # A spawned worker gets the configuration and the shared ledger, never this
        # process's session (its HTTP clients and threads): it builds its own.
        return {**self.__dict__, "_refactorer": None, "_pid": 0, "session": None}


class ScriptModeLLM:
    """The LLM side of one script-mode run: installs the refactorer, reports at the end."""

    def __init__(self, config: Any) -> None:
        from ..engine.pipeline import set_default_refactorer

        self.config = config
        self.folder = tempfile.mkdtemp(prefix="telemetry-inject-llm-")
        self.ledger = os.path.join(self.folder, "ledger.json")
        from .cost import CostTracker

        self.costs = CostTracker(config.budget, self.ledger)  # creates the shared ledger
        self.refactorer = LazyRefactorer(config, self.ledger)
        set_default_refactorer(self.refactorer)

    def finish(self, quiet: bool = False) -> None:
        from ..engine.pipeline import set_default_refactorer

        set_default_refactorer(None)
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

