"""The command line of ``telemetry-inject``: its parser and the flags its front doors share.

``cli`` (script mode) and ``llm.cli`` (``--traditional``, ``--configure``, ``--check-api``,
``models``) parse with these, so neither imports the other's parser. Stdlib only at import
(the LLM flags are only declared here): the command imports this on every run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .settings import STYLES, TARGETS
from .trace import INFO, TRACE

PROG = "telemetry-inject"


def main_parser() -> argparse.ArgumentParser:
    """The parser of ``telemetry-inject PATH...`` (script mode and ``--traditional`` alike)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Put function-level telemetry (a span per call) into source files, "
                    "deterministically, verified and cached.",
        epilog="Also: 'telemetry-inject cache stats|clear|prune', 'telemetry-inject models' (LLM models that can "
               "be reached; --list-models where a path is named models). Exit codes: 0 done, 1 --check found "
               "functions without telemetry, 2 usage error, 3 some file could not be processed.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to process")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", metavar="DIR", type=Path,
                       help="write every file under DIR at its path relative to its PATH argument")
    where.add_argument("--in-place", action="store_true",
                       help="rewrite the files where they are (a symbolic link's target; the link stays)")
    parser.add_argument("--write-read-only", action="store_true",
                        help="with --in-place: also rewrite files that are read-only (refused by default, "
                             "as editors do), keeping their mode")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--strip", action="store_true", help="remove the telemetry this tool inserted")
    mode.add_argument("--check", action="store_true",
                      help="change nothing; exit 1 when an eligible function has no telemetry")
    parser.add_argument("--dry-run", action="store_true", help="write nothing; report what would change")
    parser.add_argument("--diff", action="store_true", help="print a unified diff of every change")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="list files (-v) and functions (-vv)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    parser.add_argument("--style", choices=STYLES, help="with: wrap the body; decorator: one added line")
    parser.add_argument("--target", choices=TARGETS, help="what the inserted code calls")
    parser.add_argument("--validate", action=argparse.BooleanOptionalAction, default=None,
                        help="check every new insertion script before using it (default: on)")
    parser.add_argument("--max-parallel", type=int, metavar="N", help="worker processes (default: one per CPU)")
    parser.add_argument("--no-parallel", action="store_true", help="process files in this process only")
    parser.add_argument("--cache-dir", metavar="DIR", help="cache folder (default: .telemetry_cache)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument("--exclude", action="append", metavar="GLOB", help="skip files matching GLOB (repeatable)")
    parser.add_argument("--vendored-module", metavar="NAME", help="dotted import name of the vendored module")
    parser.add_argument("--root", type=Path, metavar="DIR",
                        help="project root (pyproject.toml, cache); default: found from the first PATH")
    parser.add_argument("--use-scripts", action="store_true",
                        help="script mode (the default; accepted for compatibility)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_llm_arguments(parser)
    return parser


# -- the LLM layer's flags (declared here; what they do is in llm.options) -------------------------------

KEYS_HELP = ("API keys come only from the environment or the project's .env (OPENAI_API_KEY, ANTHROPIC_API_KEY, "
             "<PROVIDER>_API_KEY, or LLM_API_KEY for any; --configure writes .env): there is no --api-key, "
             "since a key on the command line stays in the shell history and the process list.")


class _RefuseAPIKey(argparse.Action):
    """``--api-key`` is refused in one line that never repeats the value (argparse's own
    "unrecognized arguments" would print the key)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from .errors import ConfigError
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


def cache_parser() -> argparse.ArgumentParser:
    """``telemetry-inject cache stats|clear|prune``."""
    parser = argparse.ArgumentParser(prog=f"{PROG} cache", description="Inspect or maintain the cache.")
    parser.add_argument("action", choices=("stats", "clear", "prune"))
    parser.add_argument("--cache-dir", metavar="DIR", help="cache folder (default: from the project's settings)")
    parser.add_argument("--root", type=Path, default=Path("."), metavar="DIR", help="project root")
    parser.add_argument("--max-age-days", type=float, default=30.0,
                        help="prune: remove file memos unused for this many days (default 30)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser
