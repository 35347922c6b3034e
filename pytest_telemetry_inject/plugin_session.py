"""What ``pytest --inject-telemetry`` does (imported only when the flag is given)."""

from __future__ import annotations

import fnmatch
import importlib.machinery
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from .engine.cache import ScriptCache
from .engine.pipeline import Engine
from .engine.runner import FileReport, RunOptions, run
from .engine.testgen import parse_cases
from .errors import CacheError, ConfigError
from .importhook import TelemetryFinder
from .otlp import OtelSession
from .settings import Settings

# The files of tools (packaging, task runners, Sphinx) that are never the project's code
# under test, outside a package: a module of these names inside a package is the project's.
_TOOL_FILES = {"setup.py", "noxfile.py", "conf.py", "fabfile.py", "tasks.py"}
_TEST_DIRS = {"tests", "test", "testing"}
_OWN_PACKAGE = str(Path(__file__).resolve().parent)


class TelemetrySession:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.root = Path(str(config.rootpath))
        ini = config.getini
        # On the fly the try style: no object per call and no extra frame (the with style
        # costs twice as much per call; see bench/runtime_overhead.py).
        try:
            self.settings = Settings.load(self.root, defaults={"target": "runtime", "style": "try"})
            for ini_name, field in (("telemetry_style", "style"), ("telemetry_target", "target")):
                if ini(ini_name):
                    self.settings._set(field, ini(ini_name), ini_origin(config, ini_name))
        except ConfigError as exc:
            raise pytest.UsageError(f"--inject-telemetry: {exc}") from None
        if self.settings.target not in ("runtime", "otel"):
            if self.settings.origins.get("target", "").startswith(("-o ", "telemetry_target")):
                raise pytest.UsageError(f"--inject-telemetry: telemetry_target must be runtime or otel, not "
                                        f"{self.settings.target!r} ({self.settings.origins['target']})")
            # A project's own target (for the command line's output, say): on the fly the code
            # calls an importable runtime.
            self.settings.target = "runtime"
        self.summary_top = _ini_count(config, "telemetry_summary_top")
        if self.option("telemetry_top") is not None:
            self.summary_top = self.option("telemetry_top")
        self.summary_sort = self.option("telemetry_sort") or "total"
        try:
            self.cache = ScriptCache(self.root / self.settings.cache_dir) if self.settings.use_cache else None
        except CacheError as exc:  # a cache with a symbolic link in it, or a file in its place
            raise pytest.UsageError(f"--inject-telemetry: {exc}") from None
        self.engine = Engine(self.settings, self.cache)
        prefixes = self.option("telemetry_modules") or ",".join(ini("telemetry_modules"))
        self.prefixes = tuple(p.strip() for p in prefixes.split(",") if p.strip())
        self.reports: dict[str, FileReport] = {}
        self.candidates: set[str] = set()
        self.finder: TelemetryFinder | None = None
        self.early: list[str] = []
        self.unknown_prefixes: list[str] = []
        self.worker_snapshots: list[dict] = []
        self.written: list[str] = []
        self.keep_events = False
        self.otel: OtelSession | None = None
        self.prepare_seconds = 0.0
        # Requests this process sent to LLMs (the telemetry items' repairs; nothing else in a
        # plugin session asks a model): summed over xdist workers, printed and reported.
        self.llm_requests = 0
        # Cache entries the telemetry items found damaged or foreign, and rebuilt.
        self.items_corrupt = 0
        self._ledger = ""
        self._ledger_dir: Any = None
        self.otel_note = ""
        self.otel_counter_session: OtelSession | None = None

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
            options = RunOptions(mode="instrument", dry_run=True, start_method="spawn")
            summary = run([str(p) for p in files], self.settings, options, project_root=self.root, cache=self.cache)
            self.reports = {r.path: r for r in summary.files}
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
        from .scan import scan

        roots: list[Path] = []
        if self.prefixes:
            for prefix in self.prefixes:
                location = _module_location(prefix)
                if location is not None:
                    roots.append(location)
                else:
                    self.unknown_prefixes.append(prefix)
        else:
            roots.append(self.root)
        test_globs = list(self.config.getini("python_files")) + ["conftest.py"]
        excludes = list(self.settings.exclude) + list(self.config.getini("telemetry_exclude"))
        found: list[Path] = []
        for root in roots:
            if root.is_file():
                found.append(root.resolve())
                continue
            for item in scan([root], self.settings, project_root=self.root, languages=("python",)):
                if item.language != "python" or item.skip_reason:
                    continue
                path = item.path.resolve()
                relative = item.relative.as_posix()
                if str(path).startswith(_OWN_PACKAGE + os.sep) or path.name == "conftest.py" \
                        or (path.name in _TOOL_FILES and not (path.parent / "__init__.py").is_file()):
                    continue
                # Test files: pytest's python_files, conftest.py, and anything in a tests folder.
                # (Not testpaths: a project may point it at its package, tests inside.)
                if not self.prefixes and (any(fnmatch.fnmatch(path.name, glob) for glob in test_globs)
                                          or _TEST_DIRS & set(item.relative.parts[:-1])):
                    continue
                if any(fnmatch.fnmatch(relative, g) or fnmatch.fnmatch(relative, g.rstrip("/") + "/*")
                       for g in excludes):
                    continue
                found.append(path)
        return sorted(set(found))

    def _configure_runtime(self) -> None:
        from . import runtime

        try:
            min_duration = float(self.config.getini("telemetry_min_duration") or 0)
        except ValueError:
            raise pytest.UsageError(f"--inject-telemetry: telemetry_min_duration must be a number of seconds, not "
                                    f"{self.config.getini('telemetry_min_duration')!r} "
                                    f"({ini_origin(self.config, 'telemetry_min_duration')})") from None
        for kind in ("json", "html", "trace"):
            path = self.report_path(kind)
            if path:  # as pytest-cov does: the report's folder is made (before any test runs)
                try:
                    Path(path).absolute().parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise pytest.UsageError(f"--inject-telemetry: cannot make the folder of the {kind} report "
                                            f"{path}: {exc.strerror or exc}") from None
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
        from . import runtime

        if self.option("telemetry_otel"):
            self.otel = OtelSession.start(self.config)
            runtime.configure(**self.otel.runtime_settings())
        if self.settings.target == "otel":
            self._count_otel_target()

    def _count_otel_target(self) -> None:
        """``telemetry_target = otel``: the instrumented code calls OpenTelemetry's API, not
        this runtime; its spans are counted for the summary from the provider, if any."""
        from .otlp import OtelSession as _Session

        if self.otel is None:
            try:
                from opentelemetry import trace
            except ImportError:
                self.otel_note = "telemetry_target = otel, but OpenTelemetry is not installed: nothing is recorded"
                return
            provider = trace.get_tracer_provider()
            if not hasattr(provider, "add_span_processor"):
                self.otel_note = ("telemetry_target = otel: the instrumented code calls OpenTelemetry's API, and no SDK "
                                  "tracer provider is set up, so nothing is recorded (use --telemetry-otel, or set "
                                  "one up in conftest.py)")
                return
            self.otel_counter_session = _Session(self.config, provider, None)
            session = self.otel_counter_session
        else:
            session = self.otel
            try:  # the instrumented code asks the global provider for its tracers
                from opentelemetry import trace

                if session.processor is not None:
                    trace.set_tracer_provider(session.provider)
            except Exception:
                pass
        modules = {_module_name(Path(path), self.root) for path, report in self.reports.items()
                   if report.tally[0].get("instrumented")}
        session.count_spans_of(modules)

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
        from . import runtime

        runtime.set_current_test(item.nodeid)
        test_span = self.otel.start_test(item) if self.otel is not None else None
        try:
            return (yield)
        finally:
            if test_span is not None:
                self.otel.end_test(item.nodeid, test_span)  # type: ignore[union-attr]
            runtime.set_current_test(None)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
        report = yield
        if self.otel is not None:
            excinfo = call.excinfo
            self.otel.report(report, excinfo.value if excinfo is not None and report.failed else None)
        return report

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

    # -- xdist ----------------------------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        data = getattr(node, "workeroutput", {}).get("telemetry")
        if data:
            self.worker_snapshots.append(json.loads(data))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        from . import runtime

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
        from . import runtime
        from .runtime import report

        paths = {kind: self.report_path(kind) for kind in ("json", "html", "trace")}
        if not any(paths.values()):
            return
        data = self.merged()
        built = report.build_report(data["functions"] or data.get("otel_rows") or [], tests=data["tests"],
                                    events=data["events"], instrumented=self.instrumented_names(),
                                    events_dropped=data["dropped"], meta={"llm_requests": data["llm_requests"]},
                                    self_time=data.get("self_time"))
        if paths["json"]:
            report.write_json(paths["json"], built)
            self.written.append(f"the JSON report to {paths['json']}")
        if paths["html"]:
            report.write_html(paths["html"], built)
            self.written.append(f"the HTML report to {paths['html']}")
        if paths["trace"]:
            with open(paths["trace"], "w", encoding="utf-8") as handle:
                json.dump(runtime.chrome_trace(data["events"], dropped=data["dropped"], functions=data["functions"],
                                               self_time=data.get("self_time")), handle)
            self.written.append(f"the Chrome trace to {paths['trace']}")

    def _otlp_counts(self) -> dict | None:
        """This process's spans sent over OTLP (the session's and tests' through the SDK, the
        functions' through the runtime's sink): ended, delivered, lost."""
        from . import runtime

        processor = self.otel.processor if self.otel is not None else None
        if processor is None:
            return None
        sink = runtime.otlp_counts() or {"sent": 0, "delivered": 0, "lost": 0, "error": ""}
        return {"ended": processor.ended + sink["sent"], "delivered": processor.delivered + sink["delivered"],
                "lost": processor.lost + sink["lost"], "error": sink["error"] or processor.last_error}

    def _otel_rows(self) -> list:
        session = self.otel if self.otel is not None and self.otel.counter is not None else self.otel_counter_session
        return session.counter.snapshot() if session is not None and session.counter is not None else []

    def otel_lines(self, data: dict) -> list[str]:
        """What the summary says of OpenTelemetry: where the spans went, and how many of them
        arrived (every process's count: pytest-xdist workers export their own)."""
        lines = []
        if self.otel is not None:
            counts = data.get("otlp")
            if counts:
                line = (f"spans over OTLP: {counts['ended']} ended, {counts['delivered']} delivered, "
                        f"{counts['lost']} lost")
                if counts["lost"]:
                    line += f" ({counts['error'] or 'the exporter failed'})"
                lines.append(line)
            else:
                lines.extend(self.otel.summary())
        if self.otel_note:
            lines.append(self.otel_note)
        return lines

    def llm_lines(self, requests: int) -> list[str]:
        """The LLM budget's summary line(s) when a model was asked (or refused by the
        budget): from the ledger the workers shared, else from this process's sessions."""
        from .llm.refactorer import shared_summary_lines

        if self._ledger and os.path.exists(self._ledger):
            from .llm.config import LLMConfig
            from .llm.cost import CostTracker

            tracker = CostTracker(LLMConfig.load(self.root).budget, self._ledger)
            snapshot = tracker.snapshot()
            return [tracker.summary_line()] if snapshot["calls"] or snapshot["refused"] else []
        return shared_summary_lines() if requests else []

    def early_why(self, name: str) -> str:
        """Who imported a project module before the hook was in place, and what to do."""
        from .plugin_registry import LOADED_BEFORE

        top = name.partition(".")[0]
        for entry in self._pytest_plugins():
            if entry.value.partition(".")[0].partition(":")[0] == top:
                dist = getattr(getattr(entry, "dist", None), "name", "") or "its distribution"
                return (f"pytest loaded it with the plugin {entry.name!r} (an entry point of {dist}) before this one; "
                        f"run with `-p no:{entry.name}` to instrument it, if the suite runs without that plugin")
        where = "--telemetry-modules" if self.prefixes else "telemetry_exclude (ini) to leave it out"
        order = list(sys.modules)  # in the order they were imported
        if "_pytest" in order and name in order and order.index(name) < order.index("_pytest"):
            return ("imported at interpreter start-up, before pytest itself (a .pth file, sitecustomize, "
                    f"PYTHONSTARTUP); make that import lazy, or use {where}")
        for given in getattr(self.config.option, "plugins", None) or ():
            if not given.startswith("no:") and given.partition(".")[0] == top:
                return (f"pytest imported it for `-p {given}` before this plugin was active (with -p, a plugin's "
                        "package runs without telemetry); load that plugin from conftest.py instead, or use " + where)
        if name in LOADED_BEFORE:
            return (f"imported by a plugin that pytest loaded before this one; make that import lazy, or use {where}")
        return ("imported while pytest read its configuration (a plugin given with -p, or one a plugin imports); "
                f"make that import lazy, or use {where}")

    @staticmethod
    def _pytest_plugins() -> list[Any]:
        from importlib.metadata import entry_points

        try:
            return list(entry_points(group="pytest11"))
        except Exception:  # a broken distribution's metadata: no attribution, the rest still says
            return []

    def loaded_elsewhere(self) -> dict[str, str]:
        """Modules of the project's files that were imported during the session, but not
        through the hook (a loader of someone else's, pytest's own path import): each
        with who loaded it, so that no module goes without telemetry silently."""
        from .importhook import TelemetryLoader

        found: dict[str, str] = {}
        if self.finder is None:
            return found
        names = {os.path.basename(c) for c in self.candidates}
        # An alias of a module that went through the hook (toolz's tlz package copies toolz's
        # modules under its own names: the functions are the instrumented ones, and a module
        # the hook left as it was, with nothing to instrument, has none) is not one.
        through_hook = {os.path.realpath(p) for p in self.finder.state.instrumented.values()}
        for module in list(sys.modules.values()):
            if isinstance(getattr(getattr(module, "__spec__", None), "loader", None), TelemetryLoader):
                origin = getattr(module, "__file__", None)
                if origin:
                    through_hook.add(os.path.realpath(origin))
        for name, module in list(sys.modules.items()):
            origin = getattr(module, "__file__", None) or ""
            if os.path.basename(origin) not in names or name in self.finder.state.instrumented or name in self.early:
                continue
            if origin not in self.candidates and os.path.realpath(origin) not in self.candidates:
                continue
            loader = getattr(getattr(module, "__spec__", None), "loader", None)
            if isinstance(loader, TelemetryLoader):
                continue  # through the hook, and left as it is for a reason it recorded
            if os.path.realpath(origin) in through_hook:
                continue
            found[name] = (f"imported by {type(loader).__name__ if loader is not None else 'an unknown loader'} "
                           "without going through the telemetry import hook")
        return found

    def cache_state(self) -> str:
        """One line when the cache does not work as it should ('' when it does): it is off,
        it cannot be written, or nothing can be sealed (no usable key)."""
        from .engine import seal

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
        names = []
        for path, result in sorted(self.reports.items()):
            module = _module_name(Path(path), self.root)
            names.extend(f"{module}:{f.qualname}" for f in result.functions if f.status == "instrumented")
        return names

    def write_output(self, folder: Path) -> dict:
        """The project's modules instrumented for shipping (target ``vendored``: no dependency
        on this package), the vendored runtime and ``telemetry-manifest.json``, under
        ``folder`` at their paths relative to the rootdir."""
        import dataclasses
        import hashlib

        from . import __version__
        from .engine.runner import vendored_import
        from .runtime.vendor import write_vendored
        from .scan import ScanItem
        from .sourcefile import write_atomic

        settings = dataclasses.replace(self.settings, target="vendored", origins={})
        engine = Engine(settings, self.cache)
        manifest: dict = {"format": 1, "tool": f"pytest-telemetry-inject {__version__}",
                          "settings": json.loads(settings.output_fingerprint()), "files": [], "vendored": []}
        vendored: set[Path] = set()
        for name in sorted(self.candidates):
            path = Path(name)
            try:
                relative = path.relative_to(self.root)
            except ValueError:
                relative = Path(path.name)
            item = ScanItem(path, self.root, relative, "python")
            import_name, location = vendored_import(item, settings)
            data = path.read_bytes()
            result = engine.instrument(data, str(relative), import_name=import_name)
            output = result.output if result.output is not None else data
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(str(target), output, like=str(path))
            counts = result.counts()[0]
            manifest["files"].append({"path": relative.as_posix(), "status": result.status, "reason": result.reason,
                                      "source_sha256": hashlib.sha256(data).hexdigest(),
                                      "output_sha256": hashlib.sha256(output).hexdigest(),
                                      "functions_instrumented": counts.get("instrumented", 0),
                                      "functions_skipped": counts.get("skipped", 0) + counts.get("failed", 0)})
            if result.output is not None and location is not None:
                vendored.add(folder / location)
        for module in sorted(vendored):
            write_vendored(module)
            manifest["vendored"].append(module.relative_to(folder).as_posix())
        write_atomic(str(folder / "telemetry-manifest.json"), json.dumps(manifest, indent=2).encode())
        return manifest

    def local_payload(self, *, full: bool = True) -> dict:
        """This process's telemetry, plain JSON (a pytest-xdist worker sends it home);
        ``full=False``: without the per-test rows and the events (the terminal summary's).
        It reads and never clears: any plugin may call it (or ``merged()``) in any order."""
        from . import runtime

        finder = self.finder
        return {"functions": runtime.snapshot(), "tests": runtime.snapshot(per_test=True) if full else [],
                "events": runtime.events() if self.keep_events and full else [],
                "dropped": runtime.dropped_events(), "llm_requests": self.llm_requests,
                "otlp": self._otlp_counts(), "self_time": runtime.self_time(), "losses": runtime.sink_losses(),
                "faults": runtime.internal_faults(),
                "otel_rows": self._otel_rows(),
                "corrupt_cache_entries": self.items_corrupt + (finder.state.corrupt if finder else 0)
                + sum(r.counters.corrupt for r in self.reports.values()),
                "problems": {**self.loaded_elsewhere(), **(finder.state.problems if finder else {})},
                "instrumented_modules": sorted(finder.state.instrumented) if finder else []}

    def merged(self, *, full: bool = True) -> dict:
        """This process's telemetry and its workers', combined exactly (``full``: see
        ``local_payload``). Without workers the local snapshot is the answer as it is."""
        from . import runtime

        local = self.local_payload(full=full)
        if not self.worker_snapshots:
            return local
        parts = [local, *self.worker_snapshots]
        problems: dict[str, str] = {}
        for part in parts:
            problems.update(part["problems"])
        return {"functions": runtime.merge_snapshots([p["functions"] for p in parts]),
                "tests": runtime.merge_snapshots([p["tests"] for p in parts]) if full else [],
                "events": [event for p in parts for event in p["events"]],
                "dropped": sum(p["dropped"] for p in parts), "problems": problems,
                "llm_requests": sum(p["llm_requests"] for p in parts),
                "corrupt_cache_entries": sum(p.get("corrupt_cache_entries", 0) for p in parts),
                "otlp": _sum_counts([p.get("otlp") for p in parts]),
                "self_time": _sum_counts([p.get("self_time") for p in parts]),
                "losses": {key: _sum_counts([(p.get("losses") or {}).get(key) for p in parts])
                           for key in sorted({k for p in parts for k in p.get("losses") or {}})},
                "faults": _merge_faults([p.get("faults") or {} for p in parts]),
                "otel_rows": runtime.merge_snapshots([p.get("otel_rows") or [] for p in parts]),
                "instrumented_modules": sorted({m for p in parts for m in p["instrumented_modules"]})}

    # -- summary --------------------------------------------------------------------------------

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if self.is_worker:
            return
        data = self.merged(full=False)
        write = terminalreporter.write_line
        terminalreporter.section("telemetry")
        source = data["functions"] if any(r["count"] for r in data["functions"]) else data.get("otel_rows") or []
        rows = [r for r in source if r["count"]]
        files = sum(1 for r in self.reports.values() if r.tally[0].get("instrumented"))
        functions = sum(r.tally[0].get("instrumented", 0) for r in self.reports.values())
        write(f"{functions} functions instrumented in {files} files (prepared in {self.prepare_seconds:.2f} s); "
              f"{len(rows)} called, {sum(r['count'] for r in rows)} calls; LLM requests: {data['llm_requests']}")
        sampled = data.get("self_time")
        for line in summary_table(rows, top=self.summary_top, sort=self.summary_sort, with_self=bool(sampled)):
            write(line)
        if sampled and rows and self.summary_top:
            write(f"self ms: the function's own time, its instrumented callees' taken off, sampled every "
                  f"{self.self_time_ms:g} ms ({sampled['samples']} samples, an estimate: reliable from a few ms up); "
                  f"{sampled['tool_ns'] / 1e6:.1f} ms sampled in the telemetry runtime itself is charged to no "
                  "function")
        for line in self.written:
            write(f"wrote {line}")
        if data["corrupt_cache_entries"]:
            write(f"cache: {data['corrupt_cache_entries']} damaged or foreign cache entries were found and rebuilt "
                  "(nothing from them was used)")
        for prefix in self.unknown_prefixes:
            write(f"telemetry_modules: {prefix!r} names no module that could be found when the session started: "
                  "nothing of it was instrumented")
        cache_state = self.cache_state()
        if cache_state:
            write(f"cache: {cache_state}")
        for line in self.llm_lines(data["llm_requests"]):
            write(line)
        for line in self.otel_lines(data):
            write(line)
        if data.get("dropped") and self.keep_events:
            write(f"events: {data['dropped']} calls have no event in the HTML flame charts and the trace (the cap "
                  f"is {self._max_events} events a process: --telemetry-max-events); the per-test and per-function "
                  "figures count every call")
        for key, loss in sorted((data.get("losses") or {}).items()):
            write(f"events: {loss['lost']} could not be written to the {key} sink: {loss['error']}")
        for where, fault in sorted((data.get("faults") or {}).items()):
            write(f"runtime: {fault['count']} internal fault(s) in {where}, swallowed (the tests went on; "
                  f"calls there may be missing from the figures): first {fault['first']}; please report it")
        for module, reason in sorted(data["problems"].items()):
            write(f"not instrumented: {module}: {reason}")
        for name in self.early:
            write(f"imported before telemetry could be injected (it runs without it): {name}: {self.early_why(name)}")


def _merge_faults(parts: list[dict]) -> dict:
    """The runtime's internal faults of every process: counts added, the first text kept."""
    merged: dict = {}
    for part in parts:
        for where, fault in part.items():
            entry = merged.setdefault(where, {"count": 0, "first": fault.get("first", "")})
            entry["count"] += int(fault.get("count", 0))
    return merged


class TelemetryFile(pytest.File):
    """A source file the plugin instrumented; its one item runs its scripts' generated tests."""

    telemetry: TelemetrySession
    report: FileReport

    def collect(self) -> list[pytest.Item]:
        item = TelemetryItem.from_parent(self, name="telemetry")
        item.add_marker(pytest.mark.telemetry)
        return [item]


class ScriptTestFailure(Exception):
    """Some insertion scripts of a file failed their generated tests."""


class TelemetryItem(pytest.Item):
    """Runs the generated tests of one file's insertion scripts (one per instrumented function)."""

    def runtest(self) -> None:
        from .testkit import ScriptCheck

        parent: TelemetryFile = self.parent  # type: ignore[assignment]
        session, report = parent.telemetry, parent.report
        name, cases = self._cases(session, report)
        failures: list[tuple[str, str]] = []
        # A case that passed before with the same inputs (script, function, tool and Python
        # versions) passes again: only its script's integrity is checked again, unless
        # --telemetry-recheck. The record is in the cache, beside the generated tests, and
        # counts only with this machine's seal.
        cache = session.cache
        recheck = self.config.getoption("telemetry_recheck", False)
        passed_before = set() if recheck or cache is None or not name else cache.checked(name)
        passed: set[str] = set()
        for sha, span_name, original, origin, script in cases:
            check = ScriptCheck(script, language=report.language or "python", span_name=span_name,
                                original=original, origin=origin)
            key = check.key(sha)
            if key in passed_before:
                continue
            reasons = check.run_all()
            failures += [(span_name, reason) for reason in reasons]
            if not reasons:
                passed.add(key)
        if passed and cache is not None and name:
            cache.add_checked(name, passed)
        self.user_properties.append(("insertion_scripts", len(cases)))
        self.user_properties.append(("checked_now", len(passed) + len({n for n, _r in failures})))
        if failures:
            failures = self._repair(session, report, cases, failures)
            # The memo holds this file built with the failing scripts: the next run rebuilds it,
            # checking every script again (a repaired one comes from the cache then).
            self._forget_memo(session, report)
        if failures:
            raise ScriptTestFailure(failures)

    @staticmethod
    def _forget_memo(session: TelemetrySession, report: FileReport) -> None:
        from .languages import language_for

        data = Path(report.path).read_bytes()
        language = language_for(report.path, data[:256])
        if session.cache is not None and language is not None:
            session.cache.drop_memo(session.engine.memo_key(data, language, "", ""))

    def _repair(self, session: TelemetrySession, report: FileReport, cases: list[tuple[str, str, str, str, str]],
                failures: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Ask the LLM refactorer (when one is configured and the budget allows) to fix each
        failing script; a fix is cached and used when the file is next instrumented. The
        failures left, with what the repair said."""
        if session.cache is None:
            return failures
        from .llm.config import LLMConfig

        config = LLMConfig.load(session.root)
        if not config.enabled:
            return [(name, f"{reason} (no LLM refactorer is configured: no repair tried)")
                    for name, reason in failures]
        from .llm.refactorer import record_fix, repair

        by_name = {name: (original, script) for _sha, name, original, _origin, script in cases}
        reasons: dict[str, list[str]] = {}
        for name, reason in failures:  # one request per function, with all its failures
            reasons.setdefault(name, []).append(reason)
        language = report.language or "python"
        left = []
        for name, found in reasons.items():
            original, script = by_name[name]
            result = repair(original, name, script, found, language=language, style=session.settings.style,
                            target=session.settings.target, root=session.root,
                            ledger=session.llm_ledger() if session.is_worker or session._ledger else None)
            session.llm_requests += result.requests
            record_fix(session.cache, settings=session.settings, language=language, span_name=name,
                       source=original, failing_script=script, reason="; ".join(found), result=result)
            if result.ok:
                self.user_properties.append(("repaired", name))
            else:
                left.extend((name, f"{reason}; repair: {result.reason}") for reason in found)
        return left

    @staticmethod
    def _cases(session: TelemetrySession, report: FileReport) -> tuple[str, list[tuple[str, str, str, str, str]]]:
        """(name of the generated test module, its cases with their scripts' texts). The
        module is read as data, never imported, and only with this machine's seal; the
        scripts only when their sha256 is their name. Without them (no cache, a read-only
        or foreign one) the file is instrumented again here and its cases come from that."""
        from .languages import language_for

        language = report.language or "python"
        data = Path(report.path).read_bytes()
        cache = session.cache
        if cache is not None:
            result = session.engine.lookup_memo(data, report.path, import_name="")
            text = cache.read_test_module(language, result.tests) if result is not None and result.tests else None
            rows = parse_cases(text) if text is not None else None
            if rows is not None:
                cases = []
                for sha, name, origin, original in rows:
                    script = cache.read_script(language, sha)
                    if script is None:
                        break
                    cases.append((sha, name, original, origin, script))
                else:
                    return result.tests, cases  # type: ignore[union-attr]
            found = language_for(report.path, data[:256])
            if found is not None:  # rebuilt (and, where the cache can be written, stored sealed)
                cache.drop_memo(session.engine.memo_key(data, found, "", ""))
        rebuilt = session.engine.instrument(data, report.path, import_name="")
        session.items_corrupt += rebuilt.counters.corrupt
        if rebuilt.checks is None:
            raise ScriptTestFailure([("-", f"the file could not be instrumented again: {rebuilt.reason or rebuilt.status}")])
        return rebuilt.tests, list(rebuilt.checks)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ScriptTestFailure):
            lines = ["insertion scripts failed their generated tests (a function whose script fails is "
                     "never instrumented with it: the file is rebuilt on its next import):"]
            lines += [f"  {name}: {reason}" for name, reason in excinfo.value.args[0]]
            return "\n".join(lines)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.name}: generated tests of the insertion scripts"


NAME_WIDTH = 60
SORT_KEYS = {
    "calls": lambda r: r["count"],
    "total": lambda r: r["total_ns"],
    "self": lambda r: r.get("self_ns") or 0,
    "mean": lambda r: r["total_ns"] / r["count"],
    "errors": lambda r: r["errors"],
}


def summary_table(rows: list[dict], *, top: int, sort: str, with_self: bool = True) -> list[str]:
    """The terminal summary's table: the ``top`` functions by ``sort``, self time beside
    total time when it was sampled (a function's own cost, its instrumented callees' taken
    off), names longer than the column shortened from the left behind a visible ``…``."""
    if not rows or not top:
        return []
    key = SORT_KEYS[sort]
    ordered = sorted(rows, key=lambda r: (-key(r), r["module"], r["name"]))[:top]
    has_self = with_self and any("self_ns" in r for r in rows)
    head = f"{'function':<{NAME_WIDTH}} {'calls':>8} {'total ms':>10}" + (f" {'self ms':>10}" if has_self else "")
    lines = [head + f" {'mean us':>9} {'errors':>6}   (by {sort})"]
    for row in ordered:
        name = f"{row['module']}:{row['name']}"
        if len(name) > NAME_WIDTH:
            name = "…" + name[-(NAME_WIDTH - 1):]
        line = f"{name:<{NAME_WIDTH}} {row['count']:>8} {row['total_ns'] / 1e6:>10.3f}"
        if has_self:
            line += f" {(row.get('self_ns') or 0) / 1e6:>10.3f}"
        lines.append(line + f" {row['total_ns'] / row['count'] / 1e3:>9.2f} {row['errors']:>6}")
    if len(rows) > top:
        lines.append(f"(and {len(rows) - top} more functions: --telemetry-top N shows more)")
    return lines


def _sum_counts(parts: list[dict | None]) -> dict | None:
    """Counts of several processes (the OTLP export's, the self-time sampler's), added up;
    a text or a setting is the first process's that has one. None when no process has any."""
    found = [p for p in parts if p]
    if not found:
        return None
    out: dict = {}
    for part in found:
        for key, value in part.items():
            if isinstance(value, int) and not isinstance(value, bool) and key in out:
                out[key] += value
            elif not out.get(key):
                out[key] = value
    return out


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


def _module_name(path: Path, root: Path) -> str:
    """The dotted module name of a file: its package chain, else its stem."""
    parts = [path.stem] if path.name != "__init__.py" else []
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        if folder.parent == folder:
            break
        folder = folder.parent
    return ".".join(parts) or path.stem


def _module_location(name: str) -> Path | None:
    """The file or package folder of a module, found without importing it."""
    parts = name.split(".")
    spec = importlib.machinery.PathFinder.find_spec(parts[0])
    for part in parts[1:]:
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = importlib.machinery.PathFinder.find_spec(f"{spec.name}.{part}", list(spec.submodule_search_locations))
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin) if spec.origin else None
