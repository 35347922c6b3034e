"""The pytest plugin: ``pytest --inject-telemetry`` (the ``pytest11`` entry point).

Installed with the package, it does nothing unless asked: this module imports only the
standard library and pytest (and ``plugin_registry``, which imports no more), and
everything else waits for the flag.

With ``--inject-telemetry``, before conftest files load (so the project's modules are not
imported yet), the session (``session``):

1. finds the project's modules (``discovery``: files under the rootdir but tests,
   ``conftest.py``, virtualenvs and ``site-packages``; or the packages named by
   ``--telemetry-modules``) and runs the engine over them (in parallel on a cold cache;
   from the memo on a warm one);
2. installs the import hook (``importhook``), which serves those modules instrumented and
   compiled with their original line numbers;
3. adds one ``path::telemetry`` item per instrumented file (``items``), marked
   ``telemetry``, that runs the generated tests of that file's insertion scripts;
4. attributes every call to the test that made it and reports (``reports``: terminal,
   JSON, HTML, Chrome trace; ``otel``: OpenTelemetry), merging pytest-xdist workers'
   telemetry on the controller; ``shipping`` writes the instrumented sources to ship.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

# Also read from here: active_session (by other plugins and tests).
from ..plugin_registry import LOADED_BEFORE, SESSION_NAME, active_session, gc_paused  # noqa: F401

_PACKAGE = __name__.rpartition(".")[0]
"""The distribution's top-level package (``pytest_telemetry_inject``)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("telemetry-inject", "function-level telemetry (pytest-telemetry-inject)")
    group.addoption("--inject-telemetry", action="store_true", dest="inject_telemetry", default=False,
                    help="instrument the project's modules on the fly and report a span per call")
    group.addoption("--telemetry-modules", dest="telemetry_modules", metavar="PREFIXES",
                    help="comma-separated module prefixes to instrument (default: the project's own "
                         "modules under the rootdir); installed packages may be named too")
    group.addoption("--telemetry-report", dest="telemetry_report", metavar="FILE.json",
                    help="write the telemetry report as JSON")
    group.addoption("--telemetry-html", dest="telemetry_html", metavar="FILE.html",
                    help="write a self-contained HTML report")
    group.addoption("--telemetry-trace", dest="telemetry_trace", metavar="FILE.json",
                    help="write a Chrome trace (opens in Perfetto or chrome://tracing)")
    group.addoption("--telemetry-otel", action="store_true", dest="telemetry_otel", default=False,
                    help="send spans over OTLP (configured by the standard OTEL_* variables), a session "
                         "span and a span per test as parents of the function spans")
    group.addoption("--telemetry-top", dest="telemetry_top", type=int, metavar="N",
                    help="functions listed in the terminal summary (default: the telemetry_summary_top ini, 15)")
    group.addoption("--telemetry-sort", dest="telemetry_sort", choices=("calls", "total", "self", "mean", "errors"),
                    help="order of the summary's functions: calls, total (default), self, mean or errors")
    group.addoption("--telemetry-max-events", dest="telemetry_max_events", type=int, metavar="N",
                    help="events (one per call) kept for the HTML flame charts and the trace; the calls past it "
                         "are still counted (default: the telemetry_max_events ini, 200000)")
    group.addoption("--telemetry-self-time", dest="telemetry_self_time", type=float, metavar="MS",
                    help="sample each function's self time every MS milliseconds (1 is a good start; 0: off; "
                         "default: the telemetry_self_time ini, 0)")
    group.addoption("--telemetry-recheck", action="store_true", dest="telemetry_recheck", default=False,
                    help="run every generated test of the insertion scripts, also those that passed "
                         "before with the same script, function and versions")
    group.addoption("--telemetry-output", dest="telemetry_output", metavar="DIR",
                    help="write the instrumented sources, the vendored runtime and a manifest to DIR")
    parser.addini("telemetry_modules", "module prefixes to instrument (default: the project's own modules)",
                  type="linelist", default=[])
    parser.addini("telemetry_exclude", "glob patterns (relative to the rootdir) of files not to instrument",
                  type="linelist", default=[])
    parser.addini("telemetry_min_duration", "calls shorter than this many seconds are counted but not "
                  "emitted as events", default="0")
    parser.addini("telemetry_style", "try (default: the fastest, no extra frame), with, or decorator", default="")
    parser.addini("telemetry_target", "runtime (default) or otel", default="runtime")
    parser.addini("telemetry_report", "default for --telemetry-report", default="")
    parser.addini("telemetry_html", "default for --telemetry-html", default="")
    parser.addini("telemetry_trace", "default for --telemetry-trace", default="")
    parser.addini("telemetry_summary_top", "functions listed in the terminal summary", default="15")
    _add_gate_options(parser)


GATE_OPTIONS = ("telemetry_save", "telemetry_compare", "telemetry_affected")
"""The gate's options (docs/ci-gate.md); save and compare imply --inject-telemetry."""


def _add_gate_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("telemetry-gate", "telemetry baselines, comparisons and affected tests "
                            "(pytest-telemetry-inject; docs/ci-gate.md)")
    group.addoption("--telemetry-save", dest="telemetry_save", nargs="?", const="", default=None,
                    metavar="NAME|PATH",
                    help="save this run's per-test telemetry as a baseline (default name: the telemetry_baseline "
                         "ini, 'default': .telemetry/baselines/NAME.json.gz); implies --inject-telemetry")
    group.addoption("--telemetry-compare", dest="telemetry_compare", nargs="?", const="", default=None,
                    metavar="NAME|PATH",
                    help="compare this run with a baseline: call counts (exact), new and vanished functions, "
                         "exceptions, timing beyond the noise; implies --inject-telemetry")
    group.addoption("--telemetry-fail-on", dest="telemetry_fail_on", metavar="RULES",
                    help="fail the run when the comparison finds these, e.g. calls:+10%%,time:+50%%,exceptions,new "
                         "(ini: telemetry_fail_on)")
    group.addoption("--telemetry-affected", dest="telemetry_affected", nargs="?", const="", default=None,
                    metavar="GIT_REF",
                    help="run only the tests that called a function changed since GIT_REF (default: the merge base "
                         "with the default branch), by the baseline's per-test calls, and new and changed tests")
    group.addoption("--telemetry-compare-md", dest="telemetry_compare_md", metavar="FILE.md",
                    help="write the comparison as Markdown (for CI step summaries)")
    group.addoption("--telemetry-compare-html", dest="telemetry_compare_html", metavar="FILE.html",
                    help="write the comparison as a self-contained HTML page")
    parser.addini("telemetry_baseline", "the baseline name (or path) --telemetry-save, --telemetry-compare and "
                  "--telemetry-affected use when given none", default="default")
    parser.addini("telemetry_fail_on", "default --telemetry-fail-on rules when comparing", type="linelist", default=[])
    parser.addini("telemetry_compare_md", "default for --telemetry-compare-md", default="")
    parser.addini("telemetry_compare_html", "default for --telemetry-compare-html", default="")
    parser.addini("telemetry_step_summary", "append the comparison's Markdown to $GITHUB_STEP_SUMMARY when that is "
                  "set (true/false)", default="true")
    parser.addini("telemetry_seed_random", "with --telemetry-save or --telemetry-compare, seed the random module "
                  "before each test from its nodeid, so that call counts repeat (true/false)", default="true")
    parser.addini("telemetry_affected_ignore", "globs of changed files --telemetry-affected ignores (they select no "
                  "test); default: documentation and repository metadata", type="linelist", default=[])
    parser.addini("telemetry_max_events", "events kept for the HTML flame charts and the trace", default="200000")
    # Off by default: the sampler reads the other threads' stacks, which gives each frame it
    # walks a Python frame object, and a test that counts gc.get_objects() sees them
    # (markupsafe's test_markup_leaks fails with it on).
    parser.addini("telemetry_self_time", "milliseconds between self-time samples (0: off)", default="0")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser,
                                  args: list[str]) -> Iterator[None]:
    # The earliest moment with the command line parsed and no conftest imported yet (the
    # moment pytest-cov starts coverage).
    known = early_config.known_args_namespace
    if getattr(known, "inject_telemetry", False) or getattr(known, "telemetry_save", None) is not None \
            or getattr(known, "telemetry_compare", None) is not None:
        if _starting_worker():
            raise pytest.UsageError(
                "pytest-telemetry-inject: --inject-telemetry in a worker process that is starting up: "
                "multiprocessing imports the calling script again in each worker it spawns, and that script "
                "calls pytest.main() as it is imported; put the call under `if __name__ == \"__main__\":`")
        _not_rewritten(early_config.pluginmanager)
        with gc_paused():  # (no project code runs here: its conftests load after)
            from .. import scan

            # git lists the project's files while the session's modules import (the listing
            # the session's start reads when it looks for files under the rootdir, as it does
            # unless telemetry_modules names others; see scan.start_git_files).
            scan.start_git_files(str(early_config.rootpath))
            try:
                from .session import TelemetrySession

                session = TelemetrySession(early_config)
                early_config.pluginmanager.register(session, SESSION_NAME)
                session.start()
            finally:
                scan.stop_git_files()
    return (yield)


def _starting_worker() -> bool:
    """This process is one that multiprocessing spawned, still importing its parent's main
    script: the state in which multiprocessing itself refuses to start processes (and the
    session's start spawns the engine's workers on a cold cache). Multiprocessing marks it
    on the current process (``_inheriting``, what its own check reads); a worker running its
    target, done importing, is not marked."""
    process = sys.modules.get("multiprocessing.process")
    return process is not None and bool(getattr(process.current_process(), "_inheriting", False))


def _not_rewritten(pluginmanager: pytest.PytestPluginManager) -> None:
    """Keep pytest's assertion rewriting off this package's other modules.

    pytest rewrites the asserts of every module of a distribution that declares a ``pytest11``
    entry point (it marks the top-level package), and of a plugin given with ``-p`` (it marks
    that name, which covers this package's own submodules), which means parsing and compiling
    each from source whenever it cannot keep its own bytecode cache
    (``PYTHONDONTWRITEBYTECODE``, as many container images set, or a read-only
    ``site-packages``): ~0.1 s per session for the modules the flag imports, which hold no
    test asserts. They then import as Python does (pip's byte-compiled files). This module
    and the package's ``__init__`` are rewritten already; nothing else changes.
    """
    marked = getattr(getattr(pluginmanager, "rewrite_hook", None), "_must_rewrite", None)
    if not isinstance(marked, set):
        return
    ours = {name for name in marked if name == _PACKAGE or name.startswith(_PACKAGE + ".")}
    if ours:
        marked.difference_update(ours)
        cache = getattr(pluginmanager.rewrite_hook, "_marked_for_rewrite_cache", None)
        if isinstance(cache, dict):
            cache.clear()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "telemetry: the generated tests of a file's insertion scripts")
    if any(config.getoption(name, None) is not None for name in GATE_OPTIONS) \
            or config.getoption("telemetry_fail_on", None) is not None:
        from ..gate.plugin import NAME, GatePlugin

        config.pluginmanager.register(GatePlugin(config), NAME)
