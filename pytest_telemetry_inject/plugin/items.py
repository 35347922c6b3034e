"""The ``path::telemetry`` items: one per instrumented file, running the generated tests of
that file's insertion scripts, and asking the LLM refactorer (when one is configured) to
repair a script that fails them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..formats import read_cases

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr

    from ..engine.tasks import FileReport
    from .session import TelemetrySession


def module_key(language: str, name: str, text: str, cases: int) -> str:
    """The key, kept with the keys of the cases that passed, that says every case of this
    generated test module passed: its text (so each case's script sha256, function and span
    name), how many cases it has, and this tool's and Python's versions, as ``ScriptCheck.key``."""
    import hashlib
    import sys

    from .. import __version__

    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    parts = ("every case passed", __version__, sys.version, language, name, str(cases), digest)
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


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
        parent: TelemetryFile = self.parent  # type: ignore[assignment]
        session, report = parent.telemetry, parent.report
        language = report.language or "python"
        # A case that passed before with the same inputs (script, function, tool and Python
        # versions) passes again, and is not run. The record is in the cache, beside the
        # generated tests, and counts only with this machine's seal. When it says every case
        # of this very module passed, nothing more is read: not the cases, not the scripts
        # (the code that runs comes from the sealed memo; a script is read, its sha256 checked,
        # only when it is run or the file is built again). --telemetry-recheck runs them all.
        cache = session.cache
        recheck = self.config.getoption("telemetry_recheck", False)
        module = self._sealed_module(session, report)
        count = report.tally[0].get("instrumented", 0)  # (one case a function)
        passed_before: set[str] = set()
        if module is not None and cache is not None and not recheck:
            passed_before = cache.checked(module[0])
            if module_key(language, *module, count) in passed_before:
                self.user_properties += [("insertion_scripts", count), ("checked_now", 0)]
                return
        from ..testkit import ScriptCheck

        name, cases = self._cases(session, report, module)
        failures: list[tuple[str, str]] = []
        passed: set[str] = set()
        for sha, span_name, original, origin, script in cases:
            check = ScriptCheck(script, language=language, span_name=span_name, original=original, origin=origin)
            key = check.key(sha)
            if key in passed_before:
                continue
            reasons = check.run_all()
            failures += [(span_name, reason) for reason in reasons]
            if not reasons:
                passed.add(key)
        self.user_properties.append(("insertion_scripts", len(cases)))
        self.user_properties.append(("checked_now", len(passed) + len({n for n, _r in failures})))
        if not failures and module is not None and module[0] == name and len(cases) == count:
            passed.add(module_key(language, *module, count))  # every case of this module passed
        if passed and cache is not None and name:
            cache.add_checked(name, passed)
        if failures:
            failures = self._repair(session, report, cases, failures)
            # The memo holds this file built with the failing scripts: the next run rebuilds it,
            # checking every script again (a repaired one comes from the cache then).
            self._forget_memo(session, report)
        if failures:
            raise ScriptTestFailure(failures)

    @staticmethod
    def _forget_memo(session: TelemetrySession, report: FileReport, data: bytes | None = None) -> None:
        """Drop the memo of the file (as it is now, or as ``data``): it is built again."""
        from ..languages import language_name_for

        if data is None:
            data = Path(report.path).read_bytes()
        language = language_name_for(report.path, data[:256])
        if session.cache is not None and language is not None:
            session.cache.drop_memo(session.engine.memo_key(data, language, "", ""))

    def _repair(self, session: TelemetrySession, report: FileReport, cases: list[tuple[str, str, str, str, str]],
                failures: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Ask the LLM refactorer (when one is configured and the budget allows) to fix each
        failing script; a fix is cached and used when the file is next instrumented. The
        failures left, with what the repair said."""
        if session.cache is None:
            return failures
        from ..llm.config import LLMConfig

        config = LLMConfig.load(session.root)
        if not config.enabled:
            return [(name, f"{reason} (no LLM refactorer is configured: no repair tried)")
                    for name, reason in failures]
        from ..llm.refactorer import record_fix, repair

        by_name = {name: (original, script) for _sha, name, original, _origin, script in cases}
        reasons: dict[str, list[str]] = {}
        for name, reason in failures:  # one request per function, with all its failures
            reasons.setdefault(name, []).append(reason)
        language = report.language or "python"
        left: list[tuple[str, str]] = []
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
    def _sealed_module(session: TelemetrySession, report: FileReport) -> tuple[str, str] | None:
        """(name, text) of the file's generated test module, as its memo named it when the
        session started (the file as it was instrumented), when this machine sealed it; None
        without it (no cache, no memo, a module from elsewhere)."""
        cache = session.cache
        if cache is None or not report.tests:
            return None
        text = cache.read_test_module(report.language or "python", report.tests)
        return (report.tests, text) if text is not None else None

    @staticmethod
    def _cases(session: TelemetrySession, report: FileReport,
               module: tuple[str, str] | None) -> tuple[str, list[tuple[str, str, str, str, str]]]:
        """(name of the generated test module, its cases with their scripts' texts). The
        module is read as data, never imported, and only with this machine's seal; the
        scripts only when their sha256 is their name. Without them (no cache, a read-only
        or foreign one) the file is instrumented again here and its cases come from that."""
        language = report.language or "python"
        data = Path(report.path).read_bytes()
        cache = session.cache
        if cache is not None:
            rows = read_cases(module[1]) if module is not None else None
            if module is not None and rows is not None:
                cases = []
                for case in rows:
                    script = cache.read_script(language, case.sha)
                    if script is None:
                        break
                    cases.append((*case, script))
                else:
                    return module[0], cases
            TelemetryItem._forget_memo(session, report, data)  # rebuilt (and stored sealed, where it can be)
        rebuilt = session.engine.instrument(data, report.path, import_name="")
        session.items_corrupt += rebuilt.counters.corrupt
        if rebuilt.checks is None:
            raise ScriptTestFailure([("-", f"the file could not be instrumented again: {rebuilt.reason or rebuilt.status}")])
        return rebuilt.tests, list(rebuilt.checks)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | TerminalRepr:
        if isinstance(excinfo.value, ScriptTestFailure):
            lines = ["insertion scripts failed their generated tests (a function whose script fails is "
                     "never instrumented with it: the file is rebuilt on its next import):"]
            lines += [f"  {name}: {reason}" for name, reason in excinfo.value.args[0]]
            return "\n".join(lines)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.name}: generated tests of the insertion scripts"

