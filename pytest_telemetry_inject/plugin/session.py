"""What ``pytest --inject-telemetry`` does (imported only when the flag is given): the
session object, registered as a plugin, that reads the configuration, prepares the
instrumented modules and the runtime before any conftest loads, and answers pytest's hooks
by handing the work to ``discovery``, ``items``, ``reports``, ``otel`` and ``shipping``."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pytest import TestReport

from ..engine.cache import ScriptCache
from ..engine.pipeline import Engine
from ..engine.runner import run
from ..engine.tasks import FileReport, RunOptions
from ..errors import CacheError, ConfigError
from ..plugin_registry import gc_paused
from ..settings import Settings
from . import discovery, otel, reports
from .importhook import TelemetryFinder
from .items import TelemetryFile, TelemetryItem
from .reports import Payload

if TYPE_CHECKING:
    from ..otlp import OtelSession


class TelemetrySession:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.root = Path(str(config.rootpath))
        self.settings = self._load_settings()
        self.summary_top = _ini_count(config, "telemetry_summary_top")
        if self.option("telemetry_top") is not None:
            self.summary_top = self.option("telemetry_top")
        self.summary_sort = self.option("telemetry_sort") or "total"
        try:
            self.cache = ScriptCache(self.root / self.settings.cache_dir) if self.settings.use_cache else None
        except CacheError as exc:  # a cache with a symbolic link in it, or a file in its place
            raise pytest.UsageError(f"--inject-telemetry: {exc}") from None
        self.engine = Engine(self.settings, self.cache)
        prefixes = self.option("telemetry_modules") or ",".join(config.getini("telemetry_modules"))
        self.prefixes = tuple(p.strip() for p in prefixes.split(",") if p.strip())
        self.reports: dict[str, FileReport] = {}
        self.candidates: set[str] = set()
        self.finder: TelemetryFinder | None = None
        self.early: list[str] = []
        self.unknown_prefixes: list[str] = []
        self.worker_snapshots: list[Payload] = []
        self.written: list[str] = []
        self.keep_events = False
        self.otel: OtelSession | None = None
        self.prepare_seconds = 0.0
        self.workers_warning = ""  # the start's worker processes stopped (runner._process)
        # Requests this process sent to LLMs (the telemetry items' repairs; nothing else in a
        # plugin session asks a model): summed over xdist workers, printed and reported.
        self.llm_requests = 0
        # Cache entries the telemetry items found damaged or foreign, and rebuilt.
        self.items_corrupt = 0
        self._ledger = ""
        self._ledger_dir: Any = None
        self.otel_note = ""
        self.otel_counter_session: OtelSession | None = None

    def _load_settings(self) -> Settings:
        """The project's settings, with the ini options over them. On the fly the try style:
        no object per call and no extra frame (the with style costs twice as much per call;
        see bench/runtime_overhead.py)."""
        config, ini = self.config, self.config.getini
        try:
            settings = Settings.load(self.root, defaults={"target": "runtime", "style": "try"})
            for ini_name, field in (("telemetry_style", "style"), ("telemetry_target", "target")):
                if ini(ini_name):
                    settings._set(field, ini(ini_name), ini_origin(config, ini_name))
        except ConfigError as exc:
            raise pytest.UsageError(f"--inject-telemetry: {exc}") from None
        if settings.target not in ("runtime", "otel"):
            if settings.origins.get("target", "").startswith(("-o ", "telemetry_target")):
                raise pytest.UsageError(f"--inject-telemetry: telemetry_target must be runtime or otel, not "
                                        f"{settings.target!r} ({settings.origins['target']})")
            # A project's own target (for the command line's output, say): on the fly the code
            # calls an importable runtime.
            settings.target = "runtime"
        return settings

    def option(self, name: str) -> Any:
        """A command-line option; before conftests load only the known args are parsed."""
        value = getattr(self.config.known_args_namespace, name, None)
        return value if value is not None else self.config.getoption(name, default=None)

    @property
    def is_worker(self) -> bool:
        # pytest-xdist sets workerinput after the command line is parsed, when this object
        # already exists: ask each time.
        return hasattr(self.config, "workerinput")

    # -- start: find, instrument, hook ------------------------------------------------------

    def start(self) -> None:
        started = time.perf_counter()
        files = self.project_files()
        self.candidates = {str(p) for p in files}
        if files:
            if self.cache is not None:
                self.cache.keep_memos(True)  # (read again by the import hook: until the tests run)
            options = RunOptions(mode="instrument", dry_run=True, start_method="spawn")
            summary = run([str(p) for p in files], self.settings, options, project_root=self.root, cache=self.cache)
            self.reports = {r.path: r for r in summary.files}
            self.workers_warning = summary.workers_warning
        self.finder = TelemetryFinder(self.engine, lambda origin: os.path.realpath(origin) in self.candidates,
                                      prefixes=self.prefixes)
        self.finder.install()
        self.early = sorted(name for name, module in list(sys.modules.items())
                            if (getattr(module, "__file__", None) or "") in self.candidates
                            and name not in self.finder.state.instrumented)
        self._configure_runtime()
        self.prepare_seconds = time.perf_counter() - started

    def project_files(self) -> list[Path]:
        """The files to instrument: the packages named by prefixes, else the project's own."""
        roots, unknown = discovery.search_roots(self.prefixes, self.root)
        self.unknown_prefixes.extend(unknown)
        test_globs = None if self.prefixes else [*self.config.getini("python_files"), "conftest.py"]
        return discovery.project_files(roots, self.settings, rootdir=self.root, test_globs=test_globs,
                                       excludes=self.config.getini("telemetry_exclude"))

    def _configure_runtime(self) -> None:
        from .. import runtime

        try:
            min_duration = float(self.config.getini("telemetry_min_duration") or 0)
        except ValueError:
            raise pytest.UsageError(f"--inject-telemetry: telemetry_min_duration must be a number of seconds, not "
                                    f"{self.config.getini('telemetry_min_duration')!r} "
                                    f"({ini_origin(self.config, 'telemetry_min_duration')})") from None
        self._make_report_folders()
        # Events (one per call) only when something draws them: the HTML flame charts, the trace.
        self.keep_events = bool(self.report_path("html") or self.report_path("trace"))
        max_events = self.option("telemetry_max_events")
        if max_events is None:
            max_events = _ini_count(self.config, "telemetry_max_events")
        elif max_events < 0:
            raise pytest.UsageError(f"--inject-telemetry: --telemetry-max-events must be >= 0, not {max_events}")
        self._max_events = max_events
        self.self_time_ms = self._self_time_ms()
        if self.summary_sort == "self" and not self.self_time_ms:
            raise pytest.UsageError("--inject-telemetry: --telemetry-sort self needs self time, which is off: "
                                    "sample it with --telemetry-self-time MS (1, say)")
        runtime.configure(min_duration=min_duration, keep_events=self.keep_events, max_events=max_events,
                          self_time=self.self_time_ms / 1000)

    def _make_report_folders(self) -> None:
        """As pytest-cov does: each report's folder is made before any test runs, so that a
        folder that cannot be made is a usage error then, not a lost report at the end."""
        for kind in ("json", "html", "trace"):
            path = self.report_path(kind)
            if path:
                try:
                    Path(path).absolute().parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise pytest.UsageError(f"--inject-telemetry: cannot make the folder of the {kind} report "
                                            f"{path}: {exc.strerror or exc}") from None

    def _self_time_ms(self) -> float:
        """Milliseconds between self-time samples (0: off), from the option or the ini."""
        value: Any = self.option("telemetry_self_time")
        origin = "--telemetry-self-time"
        if value is None:
            value = str(self.config.getini("telemetry_self_time") or "0").strip()
            origin = ini_origin(self.config, "telemetry_self_time")
        try:
            ms = float(value)
        except ValueError:
            ms = -1.0
        if not 0 <= ms <= 60_000:
            raise pytest.UsageError(f"--inject-telemetry: telemetry_self_time must be milliseconds from 0 to "
                                    f"60000, not {value!r} ({origin})")
        return ms

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """OpenTelemetry starts here, after the conftest files have loaded: a tracer
        provider one of them (or a plugin, or the environment) set up is the one used."""
        from .. import runtime

        if self.option("telemetry_otel"):
            from ..otlp import OtelSession  # (only with the OpenTelemetry target)

            self.otel = OtelSession.start(self.config)
            runtime.configure(**self.otel.runtime_settings())
            # Each test's outcome goes on its span: a hook only a session with spans has (a
            # wrapper on every phase of every test costs each suite that has none).
            self.config.pluginmanager.register(_OtelOutcomes(self.otel), "telemetry-otel-outcomes")
        if self.settings.target == "otel":
            modules = {discovery.module_name(Path(path)) for path, report in self.reports.items()
                       if report.tally[0].get("instrumented")}
            self.otel_note, self.otel_counter_session = otel.count_otel_target(self.config, self.otel, modules)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        """Collection is over (or, on pytest-xdist's controller, not made here): the memos
        kept for the import hook are dropped; a module imported later reads its own."""
        if self.cache is not None:
            self.cache.keep_memos(False)

    def report_path(self, kind: str) -> str:
        """Where to write the ``json``/``html``/``trace`` report (option, else ini), or ''."""
        option = {"json": "telemetry_report", "html": "telemetry_html", "trace": "telemetry_trace"}[kind]
        return self.option(option) or self.config.getini(option) or ""

    # -- items --------------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        for path, report in sorted(self.reports.items()):
            if report.status == "instrumented" or report.tally[0].get("instrumented"):
                file = TelemetryFile.from_parent(session, path=Path(path))
                file.telemetry = self
                file.report = report
                items.extend(file.collect())

    def pytest_report_collectionfinish(self, config: pytest.Config, start_path: Path,
                                       items: Sequence[pytest.Item]) -> str | None:
        """Under pytest's "collected N items": how many of the items run are this plugin's."""
        added = sum(1 for item in items if isinstance(item, TelemetryItem))
        if not added or self.is_worker:
            return None
        return (f"telemetry: {added} more items, one per instrumented file (path::telemetry: the generated tests "
                f"of its insertion scripts); {len(items)} items in all")

    # -- per-test attribution -----------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
        from .. import runtime

        runtime.set_current_test(item.nodeid)
        test_span = self.otel.start_test(item) if self.otel is not None else None
        try:
            return (yield)
        finally:
            if test_span is not None:
                self.otel.end_test(item.nodeid, test_span)  # type: ignore[union-attr]
            runtime.set_current_test(None)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        # pytest-xdist, on the controller: each worker's test spans have the session span as parent.
        if self.otel is not None:
            node.workerinput["telemetry_traceparent"] = self.otel.traceparent()
        # The workers' repairs spend one LLM budget, through one ledger file.
        node.workerinput["telemetry_llm_ledger"] = self.llm_ledger()

    def llm_ledger(self) -> str:
        """The file where this run's processes share their LLM spending: the controller's
        (made on first use, removed with the run's temporary folder), or the one a
        pytest-xdist worker was given."""
        workerinput = getattr(self.config, "workerinput", None)
        if workerinput is not None:
            return str(workerinput.get("telemetry_llm_ledger") or "")
        if not self._ledger:
            import tempfile

            self._ledger_dir = tempfile.TemporaryDirectory(prefix="telemetry-llm-")
            self._ledger = os.path.join(self._ledger_dir.name, "ledger.json")
        return self._ledger

    # -- xdist and the end of the session ------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        data = getattr(node, "workeroutput", {}).get("telemetry")
        if data:
            self.worker_snapshots.append(json.loads(data))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        with gc_paused():
            self._finish()

    def _finish(self) -> None:
        from .. import runtime

        runtime.flush()
        if self.is_worker:
            if self.otel is not None:
                self.otel.finish()  # first: its counts go home with the rest
            self.config.workeroutput["telemetry"] = json.dumps(self.local_payload())  # type: ignore[attr-defined]
            return
        output = self.option("telemetry_output")
        if output:
            manifest = self.write_output(Path(output))
            self.written.append(f"instrumented sources ({len(manifest['files'])} files) and a manifest in {output}")
        if self.otel is not None:
            self.otel.finish()
        self.write_reports()

    def write_reports(self) -> None:
        paths = {kind: self.report_path(kind) for kind in ("json", "html", "trace")}
        if any(paths.values()):
            self.written += reports.write_reports(paths, self.merged(), self.instrumented_names())

    def write_output(self, folder: Path) -> dict[str, Any]:
        """The project's modules instrumented for shipping (``shipping.write_output``)."""
        from . import shipping  # (only with --telemetry-output)

        return shipping.write_output(folder, self.candidates, self.settings, self.cache, self.root)

    def otel_lines(self, data: Payload) -> list[str]:
        """What the summary says of OpenTelemetry (``otel.otel_lines``)."""
        return otel.otel_lines(self.otel, self.otel_note, data)

    def llm_lines(self, requests: int) -> list[str]:
        """The LLM budget's summary line(s) when a model was asked (or refused by the
        budget): from the ledger the workers shared, else from this process's sessions.
        (The LLM layer is imported only then: a session that asked no model does not pay it.)"""
        if self._ledger and os.path.exists(self._ledger):
            from ..llm.config import LLMConfig
            from ..llm.cost import CostTracker

            tracker = CostTracker(LLMConfig.load(self.root).budget, self._ledger)
            snapshot = tracker.snapshot()
            return [tracker.summary_line()] if snapshot["calls"] or snapshot["refused"] else []
        if not requests:
            return []
        from ..llm.refactorer import shared_summary_lines

        return shared_summary_lines()

    def early_why(self, name: str) -> str:
        """Who imported a project module before the hook was in place, and what to do."""
        return reports.early_why(name, by_prefix=bool(self.prefixes),
                                 plugins_given=getattr(self.config.option, "plugins", None) or ())

    def loaded_elsewhere(self) -> dict[str, str]:
        """Modules of the project's files imported during the session around the hook, each
        with who loaded it (``reports.loaded_elsewhere``)."""
        if self.finder is None:
            return {}
        return reports.loaded_elsewhere(self.candidates, self.finder.state.instrumented, self.early)

    def cache_state(self) -> str:
        """One line when the cache does not work as it should ('' when it does): it is off,
        it cannot be written, or nothing can be sealed (no usable key)."""
        from ..engine import seal

        if self.cache is None:
            return ("off (use_cache = false): files were instrumented and their generated tests run in memory, "
                    "every session")
        warning = self.cache.write_error or next((r.cache_warning for r in self.reports.values()
                                                   if r.cache_warning), "")
        if warning:
            return f"{warning}; what could not be stored is computed again next session (tests run in memory)"
        if seal.problem():
            return f"{seal.problem()}; nothing is sealed, so every memo is checked on every use"
        return ""

    def instrumented_names(self) -> list[str]:
        """``module:qualname`` of every instrumented function (for "never called")."""
        names: list[str] = []
        for path, result in sorted(self.reports.items()):
            module = discovery.module_name(Path(path))
            names.extend(f"{module}:{f.qualname}" for f in result.functions if f.status == "instrumented")
        return names

    def local_payload(self, *, full: bool = True) -> Payload:
        """This process's telemetry, plain JSON (a pytest-xdist worker sends it home);
        ``full=False``: without the per-test rows and the events (the terminal summary's).
        It reads and never clears: any plugin may call it (or ``merged()``) in any order."""
        from .. import runtime

        finder = self.finder
        return {"functions": runtime.snapshot(), "tests": runtime.snapshot(per_test=True) if full else [],
                "events": runtime.events() if self.keep_events and full else [],
                "dropped": runtime.dropped_events(), "llm_requests": self.llm_requests,
                "otlp": otel.otlp_counts(self.otel), "self_time": runtime.self_time(),
                "losses": runtime.sink_losses(), "faults": runtime.internal_faults(),
                "otel_rows": otel.otel_rows(self.otel, self.otel_counter_session),
                "corrupt_cache_entries": self.items_corrupt + (finder.state.corrupt if finder else 0)
                + sum(r.counters.corrupt for r in self.reports.values()),
                "problems": {**self.loaded_elsewhere(), **(finder.state.problems if finder else {})},
                "instrumented_modules": sorted(finder.state.instrumented) if finder else []}

    def merged(self, *, full: bool = True) -> Payload:
        """This process's telemetry and its workers', combined exactly (``full``: see
        ``local_payload``). Without workers the local snapshot is the answer as it is."""
        return reports.merge_payloads(self.local_payload(full=full), self.worker_snapshots, full=full)

    # -- summary --------------------------------------------------------------------------------

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if self.is_worker:
            return
        with gc_paused():
            data = self.merged(full=False)
            lines = reports.summary_lines(data, self._summary_facts(data))
        terminalreporter.section("telemetry")
        for line in lines:
            terminalreporter.write_line(line)

    def _summary_facts(self, data: Payload) -> reports.SummaryFacts:
        """What the summary says beside the figures, gathered from this session."""
        return reports.SummaryFacts(
            files=sum(1 for r in self.reports.values() if r.tally[0].get("instrumented")),
            functions=sum(r.tally[0].get("instrumented", 0) for r in self.reports.values()),
            prepare_seconds=self.prepare_seconds, top=self.summary_top, sort=self.summary_sort,
            self_time_ms=self.self_time_ms, keep_events=self.keep_events, max_events=self._max_events,
            written=self.written, unknown_prefixes=self.unknown_prefixes, cache_state=self.cache_state(),
            workers_warning=self.workers_warning,
            llm_lines=self.llm_lines(data["llm_requests"]), otel_lines=self.otel_lines(data),
            early=[(name, self.early_why(name)) for name in self.early])


def ini_origin(config: pytest.Config, name: str) -> str:
    """Where an ini option's value came from, for error messages: ``-o NAME=...`` on the
    command line, else the configuration file."""
    overrides = getattr(getattr(config, "known_args_namespace", None), "override_ini", None) \
        or getattr(config.option, "override_ini", None) or ()
    if any(str(item).partition("=")[0].strip() == name for item in overrides):
        return f"-o {name}"
    where = config.inipath.name if config.inipath is not None else "the configuration file"
    return f"{name} in {where}"


def _ini_count(config: pytest.Config, name: str) -> int:
    value = str(config.getini(name) or "").strip()
    try:
        count = int(value)
        if count < 0:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(f"--inject-telemetry: {name} must be a whole number >= 0, not {value!r} "
                                f"({ini_origin(config, name)})") from None
    return count


class _OtelOutcomes:
    """The outcome of each phase of each test, for its OpenTelemetry span."""

    def __init__(self, otel: OtelSession) -> None:
        self.otel = otel

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item,
                                  call: pytest.CallInfo[None]) -> Generator[None, TestReport, TestReport]:
        report = yield
        excinfo = call.excinfo
        self.otel.report(report, excinfo.value if excinfo is not None and report.failed else None)
        return report
