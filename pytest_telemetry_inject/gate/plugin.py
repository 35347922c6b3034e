"""The gate's pytest side: ``--telemetry-save``, ``--telemetry-compare``, ``--telemetry-fail-on``
and ``--telemetry-affected`` (registered by the package's plugin only when one is given).

Every process (a pytest-xdist worker too) records which shared fixtures each test used, and,
when telemetry is on, attributes the calls made while a fixture of a wider scope than a
function is set up to a pseudo-test of that fixture (so a test's calls do not depend on
whether it happened to be the first to use a session fixture in its worker). Workers send that
home in ``workeroutput``; the controller reads the merged telemetry from the session
(``TelemetrySession.merged()``, which reads without clearing: the reports see the same data)
in its ``pytest_sessionfinish``, after the session's own (``trylast``: the runtime's buffers
are flushed by then), saves and compares, and sets the exit status before the terminal
summary is written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..scan import module_name
from .affected import DEFAULT_IGNORE, AffectedError, Selection, select
from .baseline import DEFAULT_NAME, FIXTURE_PREFIX, Baseline, BaselineError, TestOutcome, resolve, run_meta
from .compare import Comparison, RuleError, compare, parse_rules

NAME = "telemetry-gate"
WORKER_KEY = "telemetry_gate"


class GatePlugin:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.rootdir = Path(str(config.rootpath))
        self.worker = hasattr(config, "workerinput")
        option = config.getoption
        default_name = str(config.getini("telemetry_baseline") or DEFAULT_NAME).strip() or DEFAULT_NAME
        save = option("telemetry_save", None)
        compare_to = option("telemetry_compare", None)
        affected = option("telemetry_affected", None)
        self.telemetry = save is not None or compare_to is not None
        self.seed_random = _truthy(config.getini("telemetry_seed_random"))
        self.started = time.time()
        self.outcomes: dict[str, TestOutcome] = {}
        self.test_fixtures: dict[str, set[str]] = {}
        self.fixture_setups: dict[str, list[Any]] = {}
        self.worker_parts: list[dict[str, Any]] = []
        self.selection: Selection | None = None
        self.selected: dict[str, str] = {}
        self.deselected: list[str] = []
        self.lines: list[str] = []
        self.printed = False
        self.errors: list[str] = []
        self.comparison: Comparison | None = None
        self.baseline: Baseline | None = None
        self.save_path = self.compare_path = None
        self.md_path = option("telemetry_compare_md", None) or config.getini("telemetry_compare_md") or ""
        self.html_path = option("telemetry_compare_html", None) or config.getini("telemetry_compare_html") or ""
        fail_on = option("telemetry_fail_on", None)
        self.rules = []
        try:
            if fail_on is not None:
                if compare_to is None:
                    raise pytest.UsageError("--telemetry-fail-on needs --telemetry-compare (a baseline to compare with)")
                self.rules = parse_rules(fail_on)
            elif compare_to is not None:
                self.rules = parse_rules(config.getini("telemetry_fail_on"))
        except RuleError as exc:
            where = "--telemetry-fail-on" if fail_on is not None else "telemetry_fail_on (ini)"
            raise pytest.UsageError(f"{where}: {exc}") from None
        if self.worker:
            data = config.workerinput.get(WORKER_KEY)  # type: ignore[attr-defined]  # set by pytest-xdist
            if data:
                self.selection = Selection.from_json(json.loads(data))
            return
        try:
            if save is not None:
                self.save_path = resolve(save or default_name, self.rootdir, option="--telemetry-save")
                _make_folder(self.save_path, "--telemetry-save")
            if compare_to is not None:
                self.compare_path = resolve(compare_to or default_name, self.rootdir, option="--telemetry-compare")
                self.baseline = Baseline.read(self.compare_path)
            for path, what in ((self.md_path, "--telemetry-compare-md"), (self.html_path, "--telemetry-compare-html")):
                if path:
                    if compare_to is None:
                        raise pytest.UsageError(f"{what} needs --telemetry-compare")
                    _make_folder(Path(path).absolute(), what)
            if affected is not None:
                if self.baseline is None:
                    path = resolve(default_name, self.rootdir, option="--telemetry-affected")
                    self.baseline = Baseline.read(path)
                    self.compare_path = self.compare_path or path
                ref = affected or None
                ignore = list(config.getini("telemetry_affected_ignore")) or list(DEFAULT_IGNORE)
                self.selection = select(self.baseline, self.rootdir, ref, ignore=ignore,
                                        test_globs=list(config.getini("python_files")), inifile=config.inipath)
        except BaselineError as exc:
            raise pytest.UsageError(f"telemetry baseline: {exc}") from None
        except AffectedError as exc:
            raise pytest.UsageError(f"--telemetry-affected: {exc}") from None

    # -- pytest-xdist ------------------------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self.selection is not None:
            node.workerinput[WORKER_KEY] = json.dumps(self.selection.to_json())

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        data = getattr(node, "workeroutput", {}).get(WORKER_KEY)
        if data:
            self.worker_parts.append(json.loads(data))

    # -- selection ---------------------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        if self.selection is None:
            return
        keep, drop = [], []
        for item in items:
            why = self.selection.decide(item.nodeid)
            if why is None:
                drop.append(item)
            else:
                keep.append(item)
                self.selected[item.nodeid] = why
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
        self.deselected = [item.nodeid for item in drop]

    def pytest_report_collectionfinish(self, config: pytest.Config, start_path: Path, items: Any) -> list[str] | None:
        if self.selection is None or self.worker:
            return None
        self.printed = True
        return self.selection_lines(verbose=config.get_verbosity() > 0)

    def selection_lines(self, *, verbose: bool) -> list[str]:
        from .render import selection_lines

        assert self.selection is not None  # (its callers check)
        return selection_lines(self.selection, self.selected, self.deselected, verbose=verbose)

    # -- what each test used -------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        # Call counts are exact only when the run is deterministic: code that draws from the
        # global random generator (a random-replacement cache, a shuffle) would make other calls
        # in every run. As pytest-randomly does, each test starts from a seed of its own (from
        # its nodeid: the same in every run and every pytest-xdist worker).
        if self.telemetry and self.seed_random:
            import random
            import sys

            random.seed(f"telemetry-gate:{item.nodeid}")
            numpy = sys.modules.get("numpy")
            if numpy is not None:
                try:
                    numpy.random.seed(int.from_bytes(random.randbytes(4), "big"))
                except Exception:  # an old or partial numpy: the standard generator is seeded still
                    pass

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: Any) -> Iterator[Any]:
        scope = getattr(fixturedef, "scope", "function")
        if not self.telemetry or scope == "function":
            return (yield)
        from .. import runtime

        key = _fixture_key(fixturedef)
        entry = self.fixture_setups.setdefault(key, [scope, 0])
        entry[1] += 1
        item = getattr(request, "_pyfuncitem", None)
        if item is not None:
            self.test_fixtures.setdefault(item.nodeid, set()).add(key)
        previous = runtime.current_test()
        runtime.set_current_test(FIXTURE_PREFIX + key)
        try:
            return (yield)
        finally:
            runtime.set_current_test(previous)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        defs = getattr(getattr(item, "_request", None), "_fixture_defs", None)
        if not isinstance(defs, dict):
            info = getattr(item, "_fixtureinfo", None)
            defs = {name: fixturedefs[-1] for name, fixturedefs in
                    (getattr(info, "name2fixturedefs", None) or {}).items() if fixturedefs}
        keys = {_fixture_key(d) for d in defs.values() if getattr(d, "scope", "function") != "function"}
        if keys:
            self.test_fixtures.setdefault(item.nodeid, set()).update(keys)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.worker:
            return
        before = self.outcomes.get(report.nodeid)
        outcome: TestOutcome
        if report.when == "call":
            outcome = report.outcome
        elif report.failed:
            outcome = "error"
        elif report.skipped:
            outcome = "skipped"
        else:
            outcome = "passed"
        rank = {None: -1, "passed": 0, "skipped": 1, "failed": 2, "error": 3}
        if rank.get(outcome, 0) > rank.get(before, -1):
            self.outcomes[report.nodeid] = outcome

    # -- the end -------------------------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.worker:
            self.config.workeroutput[WORKER_KEY] = json.dumps({  # type: ignore[attr-defined]  # pytest-xdist's
                "fixtures": {t: sorted(k) for t, k in self.test_fixtures.items()},
                "setups": self.fixture_setups, "deselected": self.deselected, "selected": self.selected})
            return
        for part in self.worker_parts:
            for test, keys in part.get("fixtures", {}).items():
                self.test_fixtures.setdefault(test, set()).update(keys)
            for key, (scope, count) in part.get("setups", {}).items():
                entry = self.fixture_setups.setdefault(key, [scope, 0])
                entry[1] += count
            self.selected.update(part.get("selected", {}))
        if self.worker_parts and self.selection is not None:
            # Every worker collects the same items: the first one's deselection is the run's.
            self.deselected = list(self.worker_parts[0].get("deselected", []))
        if self.selection is not None and self.deselected and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            # Nothing the change can affect: a success, not pytest's "no tests ran".
            session.exitstatus = pytest.ExitCode.OK
            self.lines.append("no test can be affected by the changes: none ran")
        if not self.telemetry:
            return
        current = self.current_run()
        if current is None:
            return
        if self.save_path is not None:
            self.save(current)
        if self.baseline is not None and self.compare_path is not None and \
                self.config.getoption("telemetry_compare", None) is not None:
            self.comparison = compare(self.baseline, current)
            violations = self.comparison.gate(self.rules)
            self.write_outputs()
            if violations and session.exitstatus == 0:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def current_run(self) -> Baseline | None:
        from ..plugin_registry import active_session

        telemetry = active_session(self.config)
        if telemetry is None:
            self.errors.append("no telemetry session: nothing to save or compare")
            return None
        data = telemetry.merged()
        processes = max(1, len(self.worker_parts)) if self.worker_parts else 1
        modules = {}
        for path in getattr(telemetry, "reports", {}):
            modules[module_name(Path(path))] = Path(os.path.relpath(path, self.rootdir)).as_posix()
        meta = run_meta(self.rootdir, processes=processes, tests=len(self.outcomes),
                        duration_s=time.time() - self.started)
        return Baseline.from_rows(data["tests"], outcomes=self.outcomes,
                                  test_fixtures=self.test_fixtures,
                                  fixture_setups={k: (v[0], v[1]) for k, v in self.fixture_setups.items()},
                                  instrumented=telemetry.instrumented_names(), modules=modules, meta=meta)

    def save(self, current: Baseline) -> None:
        assert self.save_path is not None
        carried = 0
        if self.selection is not None and self.baseline is not None and self.deselected:
            # Tests deselected by --telemetry-affected called nothing that changed: their
            # records are still true; carry them over so that the saved baseline stays whole.
            for nodeid in self.deselected:
                record = self.baseline.tests.get(nodeid)
                if record is not None and nodeid not in current.tests:
                    current.tests[nodeid] = record
                    carried += 1
            for key, fixture in self.baseline.fixtures.items():
                current.fixtures.setdefault(key, fixture)
            current.meta["carried_tests"] = carried
            current.meta["carried_from"] = self.baseline.meta.get("commit")
        try:
            size = current.write(self.save_path)
        except OSError as exc:
            self.errors.append(f"could not write the baseline {self.save_path}: {exc.strerror or exc}")
            return
        self.lines.append(f"saved the baseline {_shown(self.save_path)}: {len(current.tests)} tests"
                          + (f" ({carried} carried over from the previous baseline)" if carried else "")
                          + f", {sum(len(r.calls) for r in current.tests.values())} (test, function) rows, "
                          f"{size:,} bytes")

    def write_outputs(self) -> None:
        from .render import html, markdown

        assert self.comparison is not None
        text = markdown(self.comparison, self.rules, self.selection_summary())
        if self.md_path:
            Path(self.md_path).write_text(text, encoding="utf-8")
            self.lines.append(f"wrote the comparison as Markdown to {self.md_path}")
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary and _truthy(self.config.getini("telemetry_step_summary")):
            try:
                with open(summary, "a", encoding="utf-8") as handle:
                    handle.write(text + "\n")
                self.lines.append("appended the comparison to $GITHUB_STEP_SUMMARY")
            except OSError as exc:
                self.errors.append(f"could not append to $GITHUB_STEP_SUMMARY ({summary}): {exc.strerror or exc}")
        if self.html_path:
            Path(self.html_path).write_text(html(self.comparison, self.rules, self.selection_summary()),
                                            encoding="utf-8")
            self.lines.append(f"wrote the comparison as HTML to {self.html_path}")

    def selection_summary(self) -> dict[str, Any] | None:
        if self.selection is None:
            return None
        return {"ref": self.selection.ref, "everything": self.selection.everything,
                "selected": len(self.selected), "deselected": len(self.deselected),
                "changes": list(self.selection.changes)}

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if self.worker:
            return
        from .render import terminal_lines

        show_selection = self.selection is not None and not self.printed
        if not (show_selection or self.lines or self.comparison is not None or self.errors):
            return
        terminalreporter.section("telemetry gate")
        write = terminalreporter.write_line
        if show_selection:
            for line in self.selection_lines(verbose=config.get_verbosity() > 0):
                write(line)
        if self.comparison is not None:
            for line, bad in terminal_lines(self.comparison, self.rules, verbose=config.get_verbosity() > 0):
                write(line, red=bad, bold=bad)
        for line in self.lines:
            write(line)
        for line in self.errors:
            write(f"error: {line}", red=True)


def _fixture_key(fixturedef: Any) -> str:
    return f"{getattr(fixturedef, 'scope', '?')} {getattr(fixturedef, 'baseid', '') or '<plugin>'}::" \
           f"{getattr(fixturedef, 'argname', '?')}"


def _make_folder(path: Path, option: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise pytest.UsageError(f"{option}: cannot make the folder {path.parent}: {exc.strerror or exc}") from None
    if path.is_dir():
        raise pytest.UsageError(f"{option}: {path} is a folder")


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() not in ("0", "false", "no", "off", "")


def _shown(path: Path) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative
