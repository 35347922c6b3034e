"""``telemetry-inject``: instrument, strip or check trees of source files; manage the cache.

Exit codes:
    0  done (files left alone are reported with their reason)
    1  ``--check``: some eligible function has no telemetry
    2  usage or configuration error
    3  some file could not be read, written or safely instrumented (it was left unchanged)
  130  interrupted
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .arguments import PROG, cache_parser, configure_trace
from .arguments import main_parser as _parser
from .errors import ConfigError, TelemetryInjectError
from .settings import Settings, find_project_root

if TYPE_CHECKING:
    from .engine.runner import RunOptions, RunSummary
    from .types import Mode

EXIT_OK, EXIT_CHECK, EXIT_USAGE, EXIT_ERRORS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "cache":
            return _cache_main(args[1:])
        # The LLM layer's own front doors (imported only when asked for).
        if (args and args[0] == "models" and not os.path.exists("models")) or "--list-models" in args:
            from .llm.cli import models_main

            return models_main([a for a in args if a not in ("models", "--list-models")])
        if "--configure" in args or "--check-api" in args:
            from .llm.cli import setup_main

            return setup_main(args)
        if "--traditional" in args:
            from .llm.cli import traditional_main

            return traditional_main(args)
        return _main(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (TelemetryInjectError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # the cache or a folder cannot be used; nothing was lost
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{PROG}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERRORS


def _cache_main(argv: list[str]) -> int:
    from .engine.cache import ScriptCache

    args = cache_parser().parse_args(argv)
    root = find_project_root(args.root)
    settings = Settings.load(root, overrides={"cache_dir": args.cache_dir})
    cache = ScriptCache(root / settings.cache_dir)
    if args.action == "stats":
        result = cache.stats()
    elif args.action == "clear":
        result = {"path": str(cache.root), "files_removed": cache.clear()}
    else:
        result = {"path": str(cache.root), **cache.prune(max_age_days=args.max_age_days)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
    return EXIT_OK


def _main(argv: list[str]) -> int:
    from .engine.runner import RunOptions, run

    args = _parser().parse_args(argv)
    _check_paths(args.paths)
    root = (args.root or find_project_root(args.paths[0])).resolve()
    overrides = {
        "style": args.style, "target": args.target, "validate": args.validate,
        "max_parallel": args.max_parallel, "cache_dir": args.cache_dir,
        "vendored_module": args.vendored_module,
        "parallel": False if args.no_parallel else None,
        "use_cache": False if args.no_cache else None,
    }
    settings = Settings.load(root, overrides=overrides)
    if "cache_dir" not in settings.origins and not _is_project(root):
        # No project around the files: not a cache of hundreds of MB in whatever folder the
        # command ran in, but one in the user's cache folder (the summary says where).
        settings.cache_dir = str(user_cache_folder() / "cache")
    if args.exclude:
        settings.exclude = settings.exclude + args.exclude
    mode: Mode = "strip" if args.strip else "check" if args.check else "instrument"
    options = RunOptions(mode=mode, output_dir=args.output.resolve() if args.output else None,
                         in_place=args.in_place, dry_run=args.dry_run, diff=args.diff,
                         write_read_only=args.write_read_only)
    configure_trace(args)
    llm = None
    if mode == "instrument":
        from .llm.options import start_script_mode

        llm = start_script_mode(args, root)  # None unless a model is configured
    progress = _Progress(enabled=not args.quiet and not args.json)
    try:
        summary = run(args.paths, settings, options, project_root=root,
                      progress=progress.update, on_total=progress.start,
                      refactorer=llm.refactorer if llm is not None else None)
    finally:
        progress.close()
        if llm is not None:
            llm.finish(quiet=args.quiet)
    code = _report(summary, args, options)
    if llm is None and mode == "instrument":  # functions no template fits: a model could try them
        from .llm.options import no_model_hint

        no_model_hint(summary, args)
    return code


# What makes a folder a project's root (``settings.find_project_root`` looks for the first
# four; a JavaScript or Go project has its own).
PROJECT_MARKERS = ("pyproject.toml", ".git", "setup.cfg", "setup.py", "package.json", "go.mod")


def _check_paths(paths: Sequence[str]) -> None:
    """Every PATH can be looked at: one line for each kind of path that cannot."""
    for path in paths:
        try:
            os.stat(path)
        except FileNotFoundError:
            continue  # the run reports it with the other files it cannot read
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConfigError(f"{path}: a loop of symbolic links (it points back to itself)") from None
            raise ConfigError(f"{path}: {exc.strerror or exc}") from None


def _is_project(root: Path) -> bool:
    return any((root / marker).exists() for marker in PROJECT_MARKERS)


def user_cache_folder() -> Path:
    """This tool's folder in the user's cache folder (where the cache key lives too)."""
    from .engine.seal import user_folder

    return Path(user_folder())


class _Progress:
    """A progress bar on a terminal, shown only for runs that last over a second
    (``TELEMETRY_INJECT_PROGRESS_DELAY`` seconds)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.bar = None

    def start(self, total: int) -> None:
        if self.enabled and total:
            from tqdm import tqdm

            tqdm.monitor_interval = 0  # no monitor thread: workers are forked
            delay = float(os.environ.get("TELEMETRY_INJECT_PROGRESS_DELAY") or 1.0)
            self.bar = tqdm(total=total, unit="file", delay=delay, file=sys.stderr, leave=False)

    def update(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _report(summary: RunSummary, args: argparse.Namespace, options: RunOptions) -> int:
    data = summary.to_json(details=bool(args.json))
    errors = [r for r in summary.files if r.status == "error"]
    for report in summary.files:
        if report.status == "error":
            print(f"{PROG}: error: {report.path}: {report.reason}", file=sys.stderr)
        elif report.status == "skipped" and not args.quiet and report.reason != "not a supported language":
            print(f"{PROG}: skipped {report.path}: {report.reason}", file=sys.stderr)
    for message in summary.errors:
        print(f"{PROG}: error: {message}", file=sys.stderr)
    if summary.cache_warning and not args.quiet:
        print(f"{PROG}: warning: {summary.cache_warning}", file=sys.stderr)
    if summary.workers_warning and not args.quiet:
        print(f"{PROG}: warning: {summary.workers_warning}", file=sys.stderr)
    if args.diff:
        for report in summary.files:
            if report.diff:
                sys.stdout.write(report.diff)
    missing = data["missing"]
    if args.json:
        print(json.dumps(data, indent=2))
    elif not args.quiet:
        if options.mode == "check":
            for item in missing:
                print(f"{item['path']}:{item['line']}: {item['qualname']} has no telemetry")
        for report in summary.files if args.verbose else ():
            line = f"{report.status:>12}  {report.path}"
            if report.reason:
                line += f"  ({report.reason})"
            print(line)
            if args.verbose > 1:
                for f in report.functions:
                    detail = f.reason or f.template
                    if f.status == "instrumented" and f.reason and f.template:
                        detail = f"{f.template}  ({f.reason})"
                    print(f"{'':>14}{f.line:>6}  {f.status:<12} {f.qualname}  {detail}")
        for message in summary.vendored:
            print(f"{PROG}: vendored module: {message}")
        for message in summary.left_out:
            print(f"{PROG}: left out {message}")
        _print_summary(data, options)
    if errors or summary.errors:
        return EXIT_ERRORS
    if options.mode == "check" and missing:
        return EXIT_CHECK
    return EXIT_OK


def _print_summary(data: dict[str, Any], options: RunOptions) -> None:
    files, functions, cache = data["files"], data["functions"], data["cache"]
    verb = {"instrument": "instrumented", "strip": "stripped", "check": "instrumented"}[options.mode]
    counts = ", ".join(f"{functions.get(k, 0)} {k}" for k in ("instrumented", "stripped", "missing", "skipped", "failed")
                       if functions.get(k))
    changed = files.get(verb, 0) if options.mode != "check" else 0
    print(f"{PROG}: {files['total']} source files ({changed} {verb}, {files.get('unchanged', 0)} unchanged, "
          f"{files.get('skipped', 0)} skipped, {files.get('error', 0)} errors), "
          f"{functions['total']} functions ({counts or 'none'}) in {data['elapsed_s']:.2f} s"
          + (f" ({functions['per_function_ms']:.3f} ms per function)" if functions["per_function_ms"] else ""))
    if cache["path"]:
        print(f"{PROG}: cache {cache['path']}: {cache['memo_hits']} file hits, {cache['memo_misses']} misses, "
              f"{cache['script_hits']} script hits, {cache['script_misses']} new scripts")
    for label, key in (("skipped", "skipped_reasons"), ("failed", "failed_reasons")):
        reasons = functions[key]
        if reasons:
            top = sorted(reasons.items(), key=lambda kv: -kv[1])[:6]
            print(f"{PROG}: {label}: " + "; ".join(f"{n} {r}" for r, n in top))
    if not options.writes and options.mode != "check":
        why = "--dry-run" if options.dry_run else "no -o DIR or --in-place"
        print(f"{PROG}: nothing written ({why})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
