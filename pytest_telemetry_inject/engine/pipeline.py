"""The engine: one file in, instrumented file (and line map) out, through cached scripts.

For each eligible function: look its key up in the cache; on a miss, plan the edits of
the first template that applies, render the insertion script and its generated test. The
edits of all functions are composed into the file; the result is validated (it compiles,
stripping it gives back the original byte for byte, every span has its function's name)
before anything is cached or written. When that fails, each new script is checked alone
(the checks of its generated test) and the failing ones fall back to the next template;
a function nothing can instrument is left exactly as it was, with the reason recorded.

``Engine`` is the façade: planning each function is ``engine.planning``, composing and
validating the file is ``engine.compose`` (which returns what to store); the engine stores
it and memoises the whole file.

The LLM refactorer (optional, a ``types.Refactorer`` given to ``Engine``) is asked only when
every template failed for a function: its fix comes back as edits (``engine.derive``) and is
composed, validated and cached like a template's, with origin ``llm``
(``Planner._plan_llm``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import SourceError, TemplateNotApplicable
from ..formats import (
    NO_LINE_MAP,
    FunctionRow,
    decode_function_list,
    decode_line_map,
    encode_function_list,
    encode_line_map,
    memo_header,
    memo_key,
    read_function_list,
)
from ..languages import get_language, language_for, language_name_for
from ..record import Record
from ..settings import Settings
from ..sourcefile import decode_source
from ..trace import DEBUG, TRACE
from .cache import CacheCounters, IndexEntry, Memo, ScriptCache

# Composing, planning, line maps, generated tests and the languages' parsers are imported
# when a file is first instrumented, not with the engine: a run (the pytest plugin's warm
# start-up above all) whose files all come from the memo never needs them, and importing
# them (their dataclasses are built at import) cost ~10 ms of each such session.
if TYPE_CHECKING:
    from ..languages import Language
    from ..languages.base import FunctionRecord, ParsedFile, Template
    from ..types import FileStatus, FunctionStatus, Refactorer
    from .compose import Composition
    from .planning import Plan, Planner
    from .reconstruct import LineMap


class FunctionOutcome(Record):
    """What happened to one function; in a memo, a ``formats.FunctionRow``."""

    __slots__ = ("qualname", "line", "status", "reason", "template", "script", "cached")
    qualname: str
    line: int
    status: FunctionStatus
    reason: str
    template: str
    script: str
    cached: bool

    def __init__(self, qualname: str, line: int, status: FunctionStatus, reason: str = "", template: str = "",
                 script: str = "", cached: bool = False) -> None:
        self.qualname, self.line, self.status, self.reason = qualname, line, status, reason
        self.template, self.script, self.cached = template, script, cached

    def to_row(self) -> FunctionRow:
        return FunctionRow(self.qualname, self.line, self.status, self.reason, self.template, self.script,
                           self.cached)

    def to_list(self) -> list[Any]:
        return list(self.to_row())

    @classmethod
    def from_list(cls, item: Sequence[Any]) -> FunctionOutcome:
        return cls(*item)

    @classmethod
    def from_memo(cls, row: FunctionRow) -> FunctionOutcome:
        """The outcome a memo's row stands for: what a memo says was cached."""
        return cls(*row[:6], cached=True)

    @classmethod
    def from_row(cls, item: Any) -> FunctionOutcome:
        """A row of a memo's function list, its shape checked (it comes from a cache)."""
        return cls.from_memo(FunctionRow.decode(item))


class LazyOutcomes(Sequence[FunctionOutcome]):
    """The function outcomes of a memoised file, decoded only when someone looks at them
    (a warm run that prints a summary never does)."""

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._items: list[FunctionOutcome] | None = None

    def _load(self) -> list[FunctionOutcome]:
        if self._items is None:
            self._items = [FunctionOutcome.from_memo(row) for row in read_function_list(self._raw)]
        return self._items

    def __len__(self) -> int:
        return len(self._load())

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        return self._load()[index]

    def __iter__(self) -> Iterator[FunctionOutcome]:
        return iter(self._load())


class FileResult(Record):
    __slots__ = ("path", "language", "status", "reason", "output", "functions", "memo_hit", "line_map", "counters",
                 "elapsed", "tests", "checks", "tally")
    path: str
    language: str
    status: FileStatus
    """``instrumented`` / ``stripped`` (output differs), ``unchanged``, ``skipped`` (left
    alone for a reason) or ``error`` (it could not be processed safely)."""
    reason: str
    output: bytes | None
    functions: Sequence[FunctionOutcome]
    memo_hit: bool
    line_map: LineMap | bytes | None
    """The line map; raw JSON segments until ``get_line_map`` decodes them."""
    counters: CacheCounters
    elapsed: float
    tests: str
    """File name of the generated test module of this file's scripts (in the cache)."""
    checks: list[tuple[str, str, str, str, str]] | None
    """When the file was instrumented in this process: (script sha256, span name, original
    function source, origin, script text) of each instrumented function, what its generated
    tests check (the plugin runs them from here when the cache has no sealed test module)."""
    tally: tuple[dict[str, int], dict[str, dict[str, int]]] | None
    """(count per status, reason counts per status), known without decoding ``functions``."""

    def __init__(self, path: str, language: str = "", status: FileStatus = "unchanged", reason: str = "",
                 output: bytes | None = None, functions: Sequence[FunctionOutcome] | None = None,
                 memo_hit: bool = False, line_map: LineMap | bytes | None = None,
                 counters: CacheCounters | None = None, elapsed: float = 0.0, tests: str = "",
                 checks: list[tuple[str, str, str, str, str]] | None = None,
                 tally: tuple[dict[str, int], dict[str, dict[str, int]]] | None = None) -> None:
        self.path, self.language, self.status, self.reason, self.output = path, language, status, reason, output
        self.functions = [] if functions is None else functions
        self.memo_hit, self.line_map = memo_hit, line_map
        self.counters = CacheCounters() if counters is None else counters
        self.elapsed, self.tests, self.checks, self.tally = elapsed, tests, checks, tally

    @property
    def changed(self) -> bool:
        return self.output is not None

    def get_line_map(self) -> LineMap | None:
        if isinstance(self.line_map, bytes):
            from .reconstruct import LineMap

            self.line_map = LineMap.from_segments(decode_line_map(self.line_map))
        return self.line_map

    def counts(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        if self.tally is None:
            self.tally = _tally(self.functions)
        return self.tally


def _tally(functions: Iterable[FunctionOutcome]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    counts: dict[str, int] = {}
    reasons: dict[str, dict[str, int]] = {}
    for outcome in functions:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if outcome.reason:
            by_reason = reasons.setdefault(outcome.status, {})
            by_reason[outcome.reason] = by_reason.get(outcome.reason, 0) + 1
    return counts, reasons


class Engine:
    """Instruments, strips and checks source files. One per process (it holds parsers and
    the loaded parts of the cache)."""

    def __init__(self, settings: Settings, cache: ScriptCache | None = None,
                 refactorer: Refactorer | None = None) -> None:
        self.settings = settings
        self.cache = cache if settings.use_cache else None
        self.refactorer = refactorer
        self.output_fingerprint = settings.output_fingerprint()
        """The settings that change what is written (``Settings.output_fingerprint``), once."""
        self._base_fingerprint = self.output_fingerprint
        self._fingerprint = self._base_fingerprint
        if refactorer is not None:
            # A run that may ask a model must not reuse the memo of a run that could not.
            self._fingerprint += "\0llm:" + str(refactorer.fingerprint)
        self._planner_made: Planner | None = None
        self._doubted: dict[str, bytes] = {}
        """Memo key -> the output of an unsealed memo the check could not settle (compared
        with the rebuilt output)."""

    @property
    def _planner(self) -> Planner:
        if self._planner_made is None:
            from .planning import Planner

            self._planner_made = Planner(self.settings, self.cache, self.refactorer)
        return self._planner_made

    # -- keys -------------------------------------------------------------------------------

    def function_key(self, record: FunctionRecord, template: Template) -> str:
        from .planning import function_key

        return function_key(record, template)

    def memo_key(self, data: bytes, language: Language | str, import_name: str, selection: str,
                 fingerprint: str | None = None) -> str:
        """The key of a file's memo; ``language`` is the language or its name."""
        name = language if isinstance(language, str) else language.name
        return memo_key(language=name, fingerprint=self._fingerprint if fingerprint is None else fingerprint,
                        validate=self.settings.validate, import_name=import_name, selection=selection, data=data)

    # -- instrument -------------------------------------------------------------------------

    def instrument(self, data: bytes, path: str, *, import_name: str = "telemetry_utils",
                   select: Callable[[FunctionRecord], bool] | None = None, selection: str = "") -> FileResult:
        """Instrument one file's bytes. ``select`` limits the work to some functions (the
        pre-commit hook's changed ones); ``selection`` must then name that choice uniquely."""
        started = time.perf_counter()
        name = language_name_for(path, data[:256])
        if name is None:
            return FileResult(path, status="skipped", reason="not a supported language")
        key = self.memo_key(data, name, import_name, selection) if self.cache is not None else ""
        result = self.lookup_memo(data, path, import_name=import_name, key=key)
        if result is None:
            language = get_language(name)
            fixes_before, transient_before = self._planner.new_llm_fixes, self._planner.llm_transient
            doubted = self._doubted.pop(key, None)
            result = self._instrument(data, path, language, import_name, select, key)
            if doubted is not None and self.cache is not None and (result.output or b"") != doubted:
                self.cache.counters.corrupt += 1  # a memo the text check could not settle, and wrong
            if self.cache is not None:
                # A model that could not be reached (budget, network) is asked again next run.
                if result.status != "error" and self._planner.llm_transient == transient_before:
                    header, sections = _memo_parts(result)
                    self.cache.put_memo(key, header, sections, result.output or b"")
                    if self._planner.new_llm_fixes != fixes_before and self._fingerprint != self._base_fingerprint:
                        # A run without a model finds these fixes in the cache: same result.
                        base = self.memo_key(data, language, import_name, selection, self._base_fingerprint)
                        self.cache.put_memo(base, header, sections, result.output or b"")
                result.counters, self.cache.counters = self.cache.counters, CacheCounters()
            if TRACE.on:
                TRACE.event(DEBUG, "cache", "file instrumented", path=path, status=result.status,
                            script_hits=result.counters.script_hits, new_scripts=result.counters.script_misses)
        result.elapsed = time.perf_counter() - started
        return result

    def lookup_memo(self, data: bytes, path: str, *, import_name: str = "telemetry_utils",
                    selection: str = "", key: str = "", counted: bool = True) -> FileResult | None:
        """The whole-file result from the memo, without parsing anything; None on a miss.
        ``counted=False`` leaves the cache's counters alone (for threads)."""
        if self.cache is None:
            return None
        if not key:
            name = language_name_for(path, data[:256])
            if name is None:
                return None
            key = self.memo_key(data, name, import_name, selection)
        if counted:
            memo = self.cache.get_memo(key)
        else:
            memo, _damaged = self.cache.read_memo(key)
        if TRACE.on:
            TRACE.event(DEBUG, "cache", "file memo hit" if memo is not None else "file memo lookup: miss", path=path)
        if memo is None:
            return None
        if not memo.sealed:
            memo = self._check_memo(data, path, key, memo, import_name, counted)
            if memo is None:
                return None
        result = _result_from_memo(path, memo.header, memo.sections, memo.payload)
        if counted:
            result.counters, self.cache.counters = self.cache.counters, CacheCounters()
        else:
            result.counters = CacheCounters(memo_hits=1)
        return result

    def _check_memo(self, data: bytes, path: str, key: str, memo: Memo, import_name: str,
                    counted: bool) -> Memo | None:
        """A memo this machine did not seal (a cache from elsewhere, or written by someone
        else): used only if its output is the original plus this tool's telemetry, with the
        line map and function counts that output has; then sealed here, so the next run reads
        it as fast as its own. A wrong memo is a miss counted as corrupt; one the text alone
        cannot settle is a plain miss, counted as corrupt if the rebuilt output differs."""
        assert self.cache is not None
        verdict, reason, checked = _check_memo(data, path, memo, self.settings.target, import_name)
        if TRACE.on:
            TRACE.event(DEBUG, "cache", f"unsealed memo: {verdict}", path=path, reason=reason)
        if verdict == "corrupt":
            if counted:
                self.cache.counters.corrupt += 1
                self.cache.counters.memo_hits -= 1
                self.cache.counters.memo_misses += 1
            return None
        if verdict == "unsure" or checked is None:
            self._doubted[key] = memo.payload
            if counted:
                self.cache.counters.memo_hits -= 1
                self.cache.counters.memo_misses += 1
            return None
        self.cache.put_memo(key, checked.header, checked.sections, checked.payload)
        return checked

    def _instrument(self, data: bytes, path: str, language: Language, import_name: str,
                    select: Callable[[FunctionRecord], bool] | None, key: str) -> FileResult:
        from .compose import compose

        result = FileResult(path, language=language.name)
        try:
            decoded = decode_source(data)
            parsed, stale = self._parse(decoded.text, path, language, select)
        except SourceError as exc:
            return _skipped(result, str(exc))
        outcomes: list[FunctionOutcome] = []
        plans: list[Plan] = []
        for record in parsed.functions:
            if record.skip_reason:
                outcomes.append(FunctionOutcome(record.qualname, record.def_line, "skipped", record.skip_reason))
            elif select is None or select(record):
                plans.append(self._planner.plan(language, parsed, record))
        header = language.header(parsed, self.settings, import_name)
        composition = compose(language, parsed, plans, header, validate=self.settings.validate,
                              replan=lambda plan, reason: self._planner.next_template(language, parsed, plan, reason))
        self._keep(language, parsed, composition, result, key)
        outcomes.extend(_outcome(plan, result) for plan in composition.plans)
        result.functions = sorted(outcomes, key=lambda o: o.line)
        if result.status == "error":
            return result
        text = composition.text
        if text is None and stale:
            text = parsed.text  # only spans were taken off (their functions failed again)
        if text is not None and text != decoded.text:
            result.output = decoded.encode(text)
            result.status = "instrumented"
        return result

    def _parse(self, text: str, path: str, language: Language,
               select: Callable[[FunctionRecord], bool] | None) -> tuple[ParsedFile, bool]:
        """The file's functions, with the spans of renamed or moved ones taken off (then
        instrumented anew); whether there were such. Raises ``SourceError`` with the reason
        the file is left alone."""
        parsed = language.parse(text, path, self.settings)
        if parsed.file_skip_reason:
            raise SourceError(parsed.file_skip_reason)
        if parsed.header_present and parsed.header_present != self.settings.target:
            raise SourceError(f"already instrumented for target {parsed.header_present!r} "
                              f"(strip it first, or use --target {parsed.header_present})")
        stale = {r.def_line for r in parsed.functions if r.stale and (select is None or select(r))}
        if stale:
            try:
                text = language.strip(parsed.text, only=stale).text
                parsed = language.parse(text, path, self.settings)
            except SourceError as exc:
                raise SourceError(f"cannot rename the spans of moved functions: {exc}") from exc
        return parsed, bool(stale)

    def _keep(self, language: Language, parsed: ParsedFile, composition: Composition, result: FileResult,
              key: str) -> None:
        """Stores what composition made (one write to the cache) and puts on ``result`` what
        the file's outcome says of it."""
        if composition.status == "skipped":  # the whole file is left alone (this Python cannot compile it)
            _skipped(result, composition.reason)
        elif composition.status == "error":
            result.status, result.reason = "error", composition.reason
        from .testgen import render_test_module, test_module_name

        test_module = None
        if composition.text is not None:
            result.checks = [(sha, name, original, origin, composition.scripts.get(sha) or self._script_of(language, plan))
                             for (sha, name, original, origin), plan in zip(composition.cases, composition.chosen)]
            if self.cache is not None:
                name = test_module_name(parsed.path, key)
                test_module = (language.name, name,
                               render_test_module(path=parsed.path, language=language.name, cases=composition.cases))
                result.tests = name
            result.line_map = composition.line_map
        self._store(composition.entries, composition.scripts or None, test_module)

    def _plan(self, language: Language, parsed: ParsedFile, record: FunctionRecord) -> Plan:
        """One function's plan, as instrumenting the file would make it first."""
        return self._planner.plan(language, parsed, record)

    def _make_entry(self, language: Language, parsed: ParsedFile, plan: Plan) -> tuple[IndexEntry, str]:
        """The index entry and the text of a plan's insertion script."""
        from .planning import plan_entry

        return plan_entry(language, parsed, plan)

    def _script_of(self, language: Language, plan: Plan) -> str:
        """The text of a cached plan's script (rendered again for a template's, from the
        cache, its name checked, for an LLM fix's)."""
        if plan.origin == "llm" and self.cache is not None and plan.entry is not None:
            return self.cache.read_script(language.name, plan.entry.script) or ""
        return plan.script or ""

    def _store(self, entries: list[IndexEntry], scripts: dict[str, str] | None = None,
               test_module: tuple[str, str, str] | None = None) -> None:
        if self.cache is not None and (entries or test_module):
            self.cache.store(entries, scripts, test_module)

    # -- strip and check --------------------------------------------------------------------

    def strip(self, data: bytes, path: str) -> FileResult:
        """Remove everything the tool inserted (the exact inverse of instrumenting)."""
        started = time.perf_counter()
        language = language_for(path, data[:256])
        if language is None:
            return FileResult(path, status="skipped", reason="not a supported language")
        result = FileResult(path, language=language.name)
        try:
            decoded = decode_source(data)
            stripped = language.strip(decoded.text)
        except SourceError as exc:
            if getattr(exc, "file_error", False):  # telemetry strip cannot take out: the run fails
                result.status, result.reason = "error", str(exc)
                return result
            return _skipped(result, str(exc))
        result.functions = [FunctionOutcome(name, line, "stripped") for line, name in stripped.spans]
        if stripped.text != decoded.text:
            result.output = decoded.encode(stripped.text)
            result.status = "stripped"
        result.elapsed = time.perf_counter() - started
        return result

    def check(self, data: bytes, path: str) -> FileResult:
        """Which eligible functions lack telemetry (those a template could instrument)."""
        started = time.perf_counter()
        language = language_for(path, data[:256])
        if language is None:
            return FileResult(path, status="skipped", reason="not a supported language")
        result = FileResult(path, language=language.name)
        try:
            decoded = decode_source(data)
            parsed = language.parse(decoded.text, path, self.settings)
        except SourceError as exc:
            return _skipped(result, str(exc))
        if parsed.file_skip_reason:
            return _skipped(result, parsed.file_skip_reason)
        result.functions = [self._check_one(language, parsed, record) for record in parsed.functions]
        result.elapsed = time.perf_counter() - started
        return result

    def _check_one(self, language: Language, parsed: ParsedFile, record: FunctionRecord) -> FunctionOutcome:
        """``missing`` when a template could instrument the function, else why not."""
        if record.instrumented:
            return FunctionOutcome(record.qualname, record.def_line, "instrumented")
        if record.skip_reason:
            return FunctionOutcome(record.qualname, record.def_line, "skipped", record.skip_reason)
        reasons = []
        for template in language.templates(record, self.settings):
            try:
                language.plan(template, record, parsed)
            except TemplateNotApplicable as exc:
                reasons.append(f"{template.id}: {exc}")
                continue
            return FunctionOutcome(record.qualname, record.def_line, "missing", "no telemetry")
        return FunctionOutcome(record.qualname, record.def_line, "failed", "; ".join(reasons))


def _outcome(plan: Plan, result: FileResult) -> FunctionOutcome:
    """What the file's outcome says of one planned function."""
    record = plan.record
    if result.status == "error":
        return FunctionOutcome(record.qualname, record.def_line, "failed", result.reason)
    if result.status == "skipped":  # the whole file is left alone (this Python cannot compile it)
        return FunctionOutcome(record.qualname, record.def_line, "skipped", result.reason)
    if plan.edits is None:
        reason = "; ".join(plan.failures) or "no template applies"
        return FunctionOutcome(record.qualname, record.def_line, "failed", reason)
    template = f"{plan.template.id}/{plan.template.version}" if plan.template else ""
    script = plan.entry.script if plan.entry else ""
    return FunctionOutcome(record.qualname, record.def_line, "instrumented", plan.note, template, script,
                           plan.tried == 0)


def _skipped(result: FileResult, reason: str) -> FileResult:
    result.status = "skipped"
    result.reason = reason
    result.output = None
    return result


def _memo_parts(result: FileResult) -> tuple[dict[str, Any], list[bytes]]:
    """A memo's header and sections (``formats.MemoFile``) for a file's result."""
    counts, reasons = result.counts()
    header = memo_header(status=result.status, reason=result.reason, language=result.language,
                         changed=result.output is not None, tests=result.tests, counts=counts, reasons=reasons)
    line_map = result.get_line_map()
    functions = encode_function_list(f.to_row() for f in result.functions)
    return header, [functions, encode_line_map(line_map.to_segments() if line_map is not None else None)]


def _check_memo(data: bytes, path: str, memo: Memo, target: str,
                import_name: str) -> tuple[str, str, Memo | None]:
    """(verdict, reason, the memo as its checked output says it must be) of a memo read
    from a cache this machine did not seal (``Language.check_cached_output``)."""
    header = memo.header
    try:
        functions = [FunctionOutcome.from_memo(row) for row in decode_function_list(memo.sections[0])]
        language = language_for(path, data[:256])
        changed = header["changed"]
        if language is None or header["language"] != language.name or not isinstance(changed, bool):
            return "corrupt", "a memo of another language", None
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        return "corrupt", f"a memo that cannot be read: {exc}", None
    instrumented = [(f.qualname, f.line) for f in functions if f.status == "instrumented"]
    counts, reasons = _tally(functions)
    checked_header = dict(header, counts=counts, reasons=reasons)
    checked_header.pop("version", None)
    if not changed:
        if memo.payload or instrumented or header.get("status") == "instrumented":
            return "corrupt", "an unchanged file's memo with telemetry in it", None
        return "ok", "", Memo(checked_header, [memo.sections[0], NO_LINE_MAP], b"", True)
    if header.get("status") != "instrumented":
        return "corrupt", "a changed file's memo that does not say instrumented", None
    try:
        original = decode_source(data)
        output = decode_source(memo.payload)
    except SourceError as exc:
        return "corrupt", f"an output that cannot be read: {exc}", None
    if (output.encoding, output.bom) != (original.encoding, original.bom):
        return "corrupt", "an output in another encoding than its original", None
    verdict = language.check_cached_output(original.text, output.text, target=target, import_name=import_name,
                                           functions=instrumented)
    if verdict.status != "ok":
        return verdict.status, verdict.reason, None
    from .reconstruct import LineMap

    try:
        line_map = LineMap.from_segments(decode_line_map(memo.sections[1]))
    except (ValueError, TypeError) as exc:
        return "corrupt", f"a line map that cannot be read: {exc}", None
    if (line_map.original, line_map.shift) != (verdict.original, verdict.shift):
        return "corrupt", "a line map that is not the output's", None
    return "ok", "", Memo(checked_header, memo.sections, memo.payload, True)


def _result_from_memo(path: str, header: dict[str, Any], sections: list[bytes], payload: bytes) -> FileResult:
    functions_raw, line_map_raw = sections
    return FileResult(path, language=header["language"], status=header["status"], reason=header["reason"],
                      output=payload if header["changed"] else None, functions=LazyOutcomes(functions_raw),
                      memo_hit=True, line_map=line_map_raw if line_map_raw != NO_LINE_MAP else None,
                      tests=header.get("tests", ""), tally=(header["counts"], header["reasons"]))
