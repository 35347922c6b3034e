"""The LLM front doors of ``telemetry-inject``: ``--traditional``, ``--configure``,
``--check-api`` and ``telemetry-inject models``. Imported only when one of them is asked for."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..arguments import PROG, add_base_url_argument, configure_trace, main_parser
from ..errors import TelemetryInjectError
from ..settings import Settings, find_project_root
from ..trace import INFO, TRACE
from .options import llm_overrides

if TYPE_CHECKING:
    from ..scan import ScanItem
    from .traditional import TraditionalResult

EXIT_OK, EXIT_USAGE, EXIT_ERRORS = 0, 2, 3
MAX_FILE_THREADS = 4


def _root(args: argparse.Namespace, paths: Sequence[str]) -> Path:
    root = getattr(args, "root", None)
    return (Path(root) if root else find_project_root(paths[0] if paths else ".")).resolve()


# -- telemetry-inject models ------------------------------------------------------------------------


def models_main(argv: list[str]) -> int:
    from .config import LLMConfig
    from .setup import list_models, print_models

    parser = argparse.ArgumentParser(prog=f"{PROG} models",
                                     description="List the models that can be reached, with a recommendation.")
    parser.add_argument("--root", type=Path, default=None, metavar="DIR", help="project root (.env, pyproject.toml)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_base_url_argument(parser)
    args = parser.parse_args(argv)
    config = LLMConfig.load(_root(args, ["."]), overrides={"base_url": args.base_url})
    data = list_models(config)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_models(data)
    return EXIT_OK


# -- --configure and --check-api ----------------------------------------------------------------------


def setup_main(argv: list[str]) -> int:
    from .config import LLMConfig
    from .setup import check_api, configure

    parser = argparse.ArgumentParser(prog=PROG, description="Set up the LLM layer.")
    parser.add_argument("--configure", action="store_true")
    parser.add_argument("--check-api", action="store_true")
    parser.add_argument("--root", type=Path, default=None, metavar="DIR")
    parser.add_argument("--model", metavar="NAME[,NAME]")
    add_base_url_argument(parser)
    parser.add_argument("--debug-trace", action="store_true")
    parser.add_argument("--trace-level")
    parser.add_argument("--no-trace-console", action="store_true")
    args, _rest = parser.parse_known_args(argv)
    configure_trace(args)
    root = _root(args, ["."])
    if args.configure:
        try:
            status = configure(root)
        except (EOFError, KeyboardInterrupt):
            print(f"\n{PROG}: configuration cancelled; nothing written", file=sys.stderr)
            return EXIT_USAGE
        if status or not args.check_api:
            return status
    config = LLMConfig.load(root, overrides={"model": args.model, "base_url": args.base_url})
    return check_api(config)


# -- --traditional --------------------------------------------------------------------------------------


def traditional_main(argv: list[str]) -> int:
    from ..scan import scan
    from ..sourcefile import read_bytes
    from .config import LLMConfig
    from .extensions import language_of
    from .traditional import TraditionalPipeline, TraditionalResult, strip_marked

    args = main_parser().parse_args(argv)
    configure_trace(args)
    root = (args.root or find_project_root(args.paths[0])).resolve()
    settings = Settings.load(root, overrides={"cache_dir": args.cache_dir, "max_parallel": args.max_parallel,
                                              "parallel": False if args.no_parallel else None})
    if args.exclude:
        settings.exclude = settings.exclude + args.exclude
    output_dir = args.output.resolve() if args.output else None
    writes = not args.dry_run and (args.in_place or output_dir is not None)
    items = scan(args.paths, settings, project_root=root, exclude_dirs=[output_dir] if output_dir else [])
    sources = [item for item in items if language_of(str(item.path)) is not None]
    others = [item for item in items if language_of(str(item.path)) is None]
    session = None
    if not args.strip:
        config = LLMConfig.load(root, overrides=llm_overrides(args))
        if not config.enabled:
            print(f"{PROG}: error: --traditional needs a model: set LLM_MODEL (or --model), or run "
                  f"{PROG} --configure", file=sys.stderr)
            return EXIT_USAGE
        from .session import LLMSession

        session = LLMSession(config)
        pipeline = TraditionalPipeline(session)

    def process(item: Any) -> TraditionalResult:
        display = str(item.path)
        try:
            data = read_bytes(display)
        except OSError as exc:
            return TraditionalResult(display, "", "failed", f"cannot read: {exc.strerror or exc}")
        if args.strip:
            language = language_of(display)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                return TraditionalResult(display, language.name if language else "", "skipped", "not UTF-8 text")
            stripped = strip_marked(text)
            changed = stripped != text
            return TraditionalResult(display, language.name if language else "", "stripped" if changed else "unchanged",
                                     output=stripped if changed else None)
        try:
            return pipeline.instrument(display, data)
        except TelemetryInjectError as exc:
            return TraditionalResult(display, "", "failed", str(exc))

    threads = max(1, min(MAX_FILE_THREADS, settings.workers(), len(sources) or 1))
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(process, sources))
    if writes:
        _write_all(sources, results, others, args, output_dir)
    errors = sum(result.status == "failed" for result in results)
    _report(results, args, session, writes)
    if session is not None and args.perform_benchmark:
        for path in session.asker.write_report(Path("logs")) if hasattr(session.asker, "write_report") else ():
            print(f"{PROG}: benchmark report {path}", file=sys.stderr)
    return EXIT_ERRORS if errors else EXIT_OK


def _write_all(sources: list[ScanItem], results: list[TraditionalResult], others: list[ScanItem],
               args: argparse.Namespace, output_dir: Path | None) -> None:
    """Write the results the way a run of the engine writes its files (``OutputWriter``),
    and under ``-o DIR`` copy the files there is nothing to do to. A file that cannot be
    written (or is read-only, in place) makes its result ``failed`` with the reason."""
    from ..engine.tasks import OutputWriter, RunOptions
    from ..sourcefile import read_bytes

    writer = OutputWriter(RunOptions(output_dir=output_dir, in_place=args.in_place,
                                     write_read_only=getattr(args, "write_read_only", False)))
    todo = [*zip(sources, results, strict=True), *((item, None) for item in others)]
    for item, result in todo:
        source = str(item.path)
        destination = os.path.join(str(output_dir), str(item.relative)) if output_dir is not None else source
        output = result.output.encode("utf-8") if result is not None and result.output is not None else None
        if output is None and output_dir is None:
            continue
        try:
            data = read_bytes(source) if output is None else b""
        except OSError as exc:
            problem = f"cannot read {source}: {exc.strerror or exc}"
        else:
            problem = writer.write(output, data, source, destination)[1]
        if problem and result is not None:
            result.status, result.reason = "failed", problem
        elif problem:
            print(f"{PROG}: error: {problem}", file=sys.stderr)


def _report(results: list[Any], args: argparse.Namespace, session: Any, writes: bool) -> None:
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    cost = session.costs.snapshot() if session is not None else None
    if TRACE.on:
        TRACE.event(INFO, "traditional", "summary", counts=counts, spent_usd=cost["spent"] if cost else 0.0)
    if args.json:
        data = {"format": 1, "mode": "traditional-strip" if args.strip else "traditional",
                "files": [{"path": r.path, "language": r.language, "status": r.status, "reason": r.reason,
                           "functions": r.functions, "covered": len(r.covered), "inserted": r.inserted,
                           "analyzer": r.analyzer, "attempts": r.attempts, "rejected": r.rejected}
                          for r in results],
                "counts": counts, "llm": cost}
        print(json.dumps(data, indent=2))
        return
    for result in results:
        if not args.quiet:  # every refused answer, also when a later one was accepted: one line each
            for number, reason in enumerate(result.rejected, 1):
                print(f"{PROG}: {result.path}: answer {number} refused: {reason}", file=sys.stderr)
        if result.status == "failed":
            print(f"{PROG}: error: {result.path}: {result.reason}; it is left unchanged", file=sys.stderr)
        elif args.verbose or result.status == "skipped" and not args.quiet:
            detail = result.reason or (f"{len(result.covered)} of {result.functions} functions, "
                                       f"{result.inserted} lines, {result.analyzer}"
                                       if result.status == "instrumented" else "")
            print(f"{result.status:>12}  {result.path}" + (f"  ({detail})" if detail else ""))
        if args.diff and result.output is not None:
            import difflib

            original = Path(result.path).read_text(encoding="utf-8")
            sys.stdout.writelines(difflib.unified_diff(original.splitlines(True), result.output.splitlines(True),
                                                       f"a/{result.path}", f"b/{result.path}"))
    if not args.quiet:
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no source files"
        print(f"{PROG}: traditional: {len(results)} files ({summary})")
        if session is not None:
            print(f"{PROG}: {session.costs.summary_line()}")
        if not writes:
            print(f"{PROG}: nothing written ({'--dry-run' if args.dry_run else 'no -o DIR or --in-place'})")
