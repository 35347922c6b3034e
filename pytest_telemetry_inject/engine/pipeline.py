"""The engine: one file in, instrumented file (and line map) out, through cached scripts.

For each eligible function: look its key up in the cache; on a miss, plan the edits of
the first template that applies, render the insertion script and its generated test. The
edits of all functions are composed into the file; the result is validated (it compiles,
stripping it gives back the original byte for byte, every span has its function's name)
before anything is cached or written. When that fails, each new script is checked alone
(the checks of its generated test) and the failing ones fall back to the next template;
a function nothing can instrument is left exactly as it was, with the reason recorded.

The LLM refactorer (optional, ``llm.refactorer``) is asked only when every template failed
for a function: its fix comes back as edits (``engine.derive``) and is composed, validated
and cached like a template's, with origin ``llm`` (the refactorer hook: ``_plan_llm``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..errors import FormNotAvailable, SourceError, TemplateNotApplicable
from ..languages import Language, language_for
from ..languages.base import FunctionRecord, ParsedFile, Template
from ..scriptlib import Edit, ScriptMismatch, apply
from ..scriptlib import sha256 as text_sha256
from ..settings import Settings
from ..sourcefile import decode_source
from ..trace import DEBUG, TRACE
from .cache import CACHE_FORMAT, CacheCounters, IndexEntry, Memo, ScriptCache
from .reconstruct import LineMap, Reconstruction, reconstruct
from .scripts import edits_from_json, edits_to_json, render_script, sha256_text
from .testgen import render_test_module, test_module_name

ENGINE_FORMAT = 1


@dataclass
class FunctionOutcome:
    qualname: str
    line: int
    status: str
    """``instrumented``, ``skipped`` (a reason of policy), ``failed`` (nothing could
    instrument it), ``missing`` (``check``: it lacks telemetry) or ``stripped``."""
    reason: str = ""
    template: str = ""
    script: str = ""
    cached: bool = False

    def to_list(self) -> list[Any]:
        return [self.qualname, self.line, self.status, self.reason, self.template, self.script, self.cached]

    @classmethod
    def from_list(cls, item: Sequence[Any]) -> FunctionOutcome:
        return cls(*item)

    @classmethod
    def from_row(cls, item: Any) -> FunctionOutcome:
        """A row of a memo's function list, its shape checked (it comes from a cache)."""
        qualname, line, status, reason, template, script, cached = item
        if not (isinstance(qualname, str) and isinstance(line, int) and not isinstance(line, bool) and line > 0
                and status in ("instrumented", "skipped", "failed", "missing", "stripped")
                and all(isinstance(v, str) for v in (reason, template, script)) and isinstance(cached, bool)):
            raise ValueError("a function row of the wrong shape")
        return cls(qualname, line, status, reason, template, script, True)


class LazyOutcomes(Sequence[FunctionOutcome]):
    """The function outcomes of a memoised file, decoded only when someone looks at them
    (a warm run that prints a summary never does)."""

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._items: list[FunctionOutcome] | None = None

    def _load(self) -> list[FunctionOutcome]:
        if self._items is None:
            self._items = [FunctionOutcome(*item[:6], cached=True) for item in json.loads(self._raw)]
        return self._items

    def __len__(self) -> int:
        return len(self._load())

    def __getitem__(self, index):  # type: ignore[no-untyped-def, override]
        return self._load()[index]

    def __iter__(self) -> Iterator[FunctionOutcome]:
        return iter(self._load())


@dataclass
class FileResult:
    path: str
    language: str = ""
    status: str = "unchanged"
    """``instrumented`` / ``stripped`` (output differs), ``unchanged``, ``skipped`` (left
    alone for a reason) or ``error`` (it could not be processed safely)."""
    reason: str = ""
    output: bytes | None = None
    functions: Sequence[FunctionOutcome] = field(default_factory=list)
    memo_hit: bool = False
    line_map: LineMap | bytes | None = None
    """The line map; raw JSON segments until ``get_line_map`` decodes them."""
    counters: CacheCounters = field(default_factory=CacheCounters)
    elapsed: float = 0.0
    tests: str = ""
    """File name of the generated test module of this file's scripts (in the cache)."""
    checks: list[tuple[str, str, str, str, str]] | None = None
    """When the file was instrumented in this process: (script sha256, span name, original
    function source, origin, script text) of each instrumented function, what its generated
    tests check (the plugin runs them from here when the cache has no sealed test module)."""
    tally: tuple[dict[str, int], dict[str, dict[str, int]]] | None = None
    """(count per status, reason counts per status), known without decoding ``functions``."""

    @property
    def changed(self) -> bool:
        return self.output is not None

    def get_line_map(self) -> LineMap | None:
        if isinstance(self.line_map, bytes):
            self.line_map = LineMap.from_segments(json.loads(self.line_map))
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


@dataclass
class _Plan:
    record: FunctionRecord
    template: Template | None = None
    edits: Sequence[Edit] | None = None
    key: str = ""
    entry: IndexEntry | None = None
    failures: list[str] = field(default_factory=list)
    unfit: list[str] = field(default_factory=list)
    """The failures that are this function's (not a style the target lacks): the note of a
    function instrumented by a later template says them."""
    tried: int = 0
    origin: str = "template"
    script: str = ""
    """The script of an LLM fix (templates' scripts are rendered from their edits)."""
    note: str = ""
    """What the outcome says of an instrumented function (which model fixed it)."""


# The refactorer of every Engine built without one: the CLI sets it when a model is
# configured, so that the runner's engines (forked workers included) use it.
_default_refactorer: Callable[..., Any] | None = None


def set_default_refactorer(refactorer: Callable[..., Any] | None) -> None:
    global _default_refactorer
    _default_refactorer = refactorer


def default_refactorer() -> Callable[..., Any] | None:
    return _default_refactorer


def llm_template(language: Language, settings: Settings) -> Template:
    """The pseudo-template of LLM fixes: its function keys are those of the cache entries of
    fixes for this style and target (whichever model made them)."""
    return Template(f"{language.name}.llm.{settings.style}.{settings.target}", 1, settings.style, settings.target)


class Engine:
    """Instruments, strips and checks source files. One per process (it holds parsers and
    the loaded parts of the cache)."""

    def __init__(self, settings: Settings, cache: ScriptCache | None = None,
                 refactorer: Callable[..., Any] | None = None) -> None:
        self.settings = settings
        self.cache = cache if settings.use_cache else None
        self.refactorer = refactorer if refactorer is not None else _default_refactorer
        self._base_fingerprint = settings.output_fingerprint()
        self._fingerprint = self._base_fingerprint
        if self.refactorer is not None:
            # A run that may ask a model must not reuse the memo of a run that could not.
            self._fingerprint += "\0llm:" + str(getattr(self.refactorer, "fingerprint", "llm"))
        self._new_llm_fixes = 0
        self._llm_transient = 0
        self._rendered: dict[str, str] = {}
        self._doubted: dict[str, bytes] = {}
        """Memo key -> the output of an unsealed memo the check could not settle (compared
        with the rebuilt output)."""

    # -- keys -------------------------------------------------------------------------------

    def function_key(self, record: FunctionRecord, template: Template) -> str:
        parts = ("function", __version__, str(ENGINE_FORMAT), record.language, template.id,
                 str(template.version), record.qualname, record.sha256)
        return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()

    def memo_key(self, data: bytes, language: Language, import_name: str, selection: str,
                 fingerprint: str | None = None) -> str:
        parts = ("file", __version__, str(ENGINE_FORMAT), str(CACHE_FORMAT), language.name,
                 self._fingerprint if fingerprint is None else fingerprint, str(self.settings.validate),
                 import_name, selection,
                 hashlib.sha256(data).hexdigest())
        return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()

    # -- instrument -------------------------------------------------------------------------

    def instrument(self, data: bytes, path: str, *, import_name: str = "telemetry_utils",
                   select: Callable[[FunctionRecord], bool] | None = None, selection: str = "") -> FileResult:
        """Instrument one file's bytes. ``select`` limits the work to some functions (the
        pre-commit hook's changed ones); ``selection`` must then name that choice uniquely."""
        started = time.perf_counter()
        language = language_for(path, data[:256])
        if language is None:
            return FileResult(path, status="skipped", reason="not a supported language")
        key = self.memo_key(data, language, import_name, selection) if self.cache is not None else ""
        result = self.lookup_memo(data, path, import_name=import_name, key=key)
        if result is None:
            fixes_before, transient_before = self._new_llm_fixes, self._llm_transient
            doubted = self._doubted.pop(key, None)
            result = self._instrument(data, path, language, import_name, select, key)
            if doubted is not None and self.cache is not None and (result.output or b"") != doubted:
                self.cache.counters.corrupt += 1  # a memo the text check could not settle, and wrong
            if self.cache is not None:
                # A model that could not be reached (budget, network) is asked again next run.
                if result.status != "error" and self._llm_transient == transient_before:
                    header, sections = _memo_parts(result)
                    self.cache.put_memo(key, header, sections, result.output or b"")
                    if self._new_llm_fixes != fixes_before and self._fingerprint != self._base_fingerprint:
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
            language = language_for(path, data[:256])
            if language is None:
                return None
            key = self.memo_key(data, language, import_name, selection)
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
        result = FileResult(path, language=language.name)
        try:
            decoded = decode_source(data)
            parsed = language.parse(decoded.text, path, self.settings)
        except SourceError as exc:
            return _skipped(result, str(exc))
        if parsed.file_skip_reason:
            return _skipped(result, parsed.file_skip_reason)
        if parsed.header_present and parsed.header_present != self.settings.target:
            return _skipped(result, f"already instrumented for target {parsed.header_present!r} "
                                    f"(strip it first, or use --target {parsed.header_present})")
        stale = {r.def_line for r in parsed.functions if r.stale and (select is None or select(r))}
        if stale:
            # Renamed or moved functions: take their old spans off, then instrument them anew.
            try:
                text = language.strip(parsed.text, only=stale).text
                parsed = language.parse(text, path, self.settings)
            except SourceError as exc:
                return _skipped(result, f"cannot rename the spans of moved functions: {exc}")
        plans: list[_Plan] = []
        for record in parsed.functions:
            if record.skip_reason:
                result.functions.append(FunctionOutcome(record.qualname, record.def_line, "skipped", record.skip_reason))
            elif select is None or select(record):
                plans.append(self._plan(language, parsed, record))
        header = language.header(parsed, self.settings, import_name)
        text = self._compose_validated(language, parsed, plans, header, result, key)
        for plan in plans:
            record = plan.record
            if result.status == "error":
                result.functions.append(FunctionOutcome(record.qualname, record.def_line, "failed", result.reason))
            elif result.status == "skipped":  # the whole file is left alone (this Python cannot compile it)
                result.functions.append(FunctionOutcome(record.qualname, record.def_line, "skipped", result.reason))
            elif plan.edits is None:
                reason = "; ".join(plan.failures) or "no template applies"
                result.functions.append(FunctionOutcome(record.qualname, record.def_line, "failed", reason))
            else:
                template = f"{plan.template.id}/{plan.template.version}" if plan.template else ""
                script = plan.entry.script if plan.entry else ""
                result.functions.append(FunctionOutcome(record.qualname, record.def_line, "instrumented", plan.note,
                                                        template, script, plan.tried == 0))
        result.functions.sort(key=lambda o: o.line)
        if result.status == "error":
            return result
        if text is None and stale:
            text = parsed.text  # only spans were taken off (their functions failed again)
        if text is not None and text != decoded.text:
            result.output = decoded.encode(text)
            result.status = "instrumented"
        return result

    def _plan(self, language: Language, parsed: ParsedFile, record: FunctionRecord,
              start: int = 0, failures: Sequence[str] = (), failing_script: str = "",
              unfit: Sequence[str] = ()) -> _Plan:
        plan = _Plan(record)
        plan.failures.extend(failures)
        plan.unfit.extend(unfit)
        for template in language.templates(record, self.settings)[start:]:
            key = self.function_key(record, template)
            entry = self.cache.lookup(key) if self.cache is not None else None
            if entry is not None and entry.status == "ok":
                edits = self._checked_template_edits(language, parsed, record, template, entry)
                if edits is not None:
                    self.cache.counters.script_hits += 1
                    plan.template, plan.key, plan.entry, plan.edits = template, key, entry, edits
                    plan.script = self._rendered.pop(key, "")
                    plan.note = _in_place_of(plan.unfit)
                    return plan
                entry = None  # not this template's edits for this function: made anew
            if entry is not None:
                plan.failures.append(f"{template.id}: {entry.reason}")
                plan.unfit.append(plan.failures[-1])
                # -- LLM repairs (llm/refactorer.record_fix): a template that failed (for the
                # pytest plugin, its generated test) and was repaired by a model is replaced by
                # that repair from then on, before the next template is tried.
                repaired = self._cached_llm_fix(language, parsed, plan, template)
                if repaired is not None:
                    return repaired
                # -- end of LLM repairs
                continue
            try:
                edits = language.plan(template, record, parsed)
            except TemplateNotApplicable as exc:
                plan.failures.append(f"{template.id}: {exc}")
                if not isinstance(exc, FormNotAvailable):
                    plan.unfit.append(plan.failures[-1])
                continue
            if self.cache is not None:
                self.cache.counters.script_misses += 1
            plan.template, plan.key, plan.edits, plan.tried = template, key, edits, 1
            plan.note = _in_place_of(plan.unfit)
            return plan
        return self._plan_llm(language, parsed, plan, failing_script)

    def _plan_llm(self, language: Language, parsed: ParsedFile, plan: _Plan, failing_script: str) -> _Plan:
        """Every template failed: a cached LLM fix, else (with a refactorer) a new one."""
        record, template = plan.record, llm_template(language, self.settings)
        key = self.function_key(record, template)
        entry = self.cache.lookup(key) if self.cache is not None else None
        fingerprint = f"llm/{getattr(self.refactorer, 'fingerprint', '')}"
        edits = None
        if entry is not None and entry.status == "ok":
            edits = self._checked_llm_edits(language, parsed, record, entry)
            if edits is None:
                entry = None  # not telemetry of this function: as if there were none
        if entry is not None:
            if edits is not None:
                self.cache.counters.script_hits += 1
                plan.template, plan.key, plan.entry, plan.origin = template, key, entry, "llm"
                plan.edits = edits
                plan.note = "fixed by an LLM (cached)"
                return plan
            if self.refactorer is None or entry.template == fingerprint:
                plan.failures.append(f"llm: {entry.reason}")  # these models failed before
                return plan
        if self.refactorer is None:
            return plan
        result = self.refactorer(language=language.name, span_name=record.qualname,
                                 source=record.source(parsed.lines), failing_script=failing_script,
                                 failures=list(plan.failures),
                                 keep=tuple(record.relative(k) for k in record.keep), style=self.settings.style,
                                 target=self.settings.target, is_generator=record.is_generator, path=parsed.path)
        if result.edits is None:
            reason = result.reason
            plan.failures.append(f"llm: {reason}")
            if result.cacheable_failure:
                self._store([IndexEntry(key, "failed", template=fingerprint, language=language.name,
                                        qualname=record.qualname, origin="llm", reason=reason)])
            else:
                self._llm_transient += 1
            return plan
        if self.cache is not None:
            self.cache.counters.script_misses += 1
        plan.template, plan.key, plan.edits, plan.tried = template, key, list(result.edits), 1
        plan.origin, plan.script, plan.note = "llm", result.script or "", result.reason
        self._new_llm_fixes += 1
        return plan

    def _cached_llm_fix(self, language: Language, parsed: ParsedFile, plan: _Plan, failed: Template) -> _Plan | None:
        """``plan`` with the function's cached LLM fix (checked like every cached fix), or None
        when there is none (no call is made here). Looked up only after a template failed."""
        if self.cache is None:
            return None
        template = llm_template(language, self.settings)
        key = self.function_key(plan.record, template)
        entry = self.cache.lookup(key)
        if entry is None or entry.status != "ok":
            return None
        edits = self._checked_llm_edits(language, parsed, plan.record, entry)
        if edits is None:
            return None
        self.cache.counters.script_hits += 1
        plan.template, plan.key, plan.entry, plan.origin, plan.edits = template, key, entry, "llm", edits
        plan.note = f"fixed by an LLM (cached; in place of {failed.id}, which failed)"
        return plan

    # -- index entries are checked before use -------------------------------------------------

    def _corrupt_entry(self, entry: IndexEntry, why: str) -> None:
        assert self.cache is not None
        self.cache.counters.corrupt += 1
        self.cache.forget(entry.key)
        if TRACE.on:
            TRACE.event(DEBUG, "cache", "index entry refused", key=entry.key, qualname=entry.qualname, reason=why)

    def _checked_template_edits(self, language: Language, parsed: ParsedFile, record: FunctionRecord,
                                template: Template, entry: IndexEntry) -> list[Edit] | None:
        """A template's cached edits, when they are exactly what the template plans for this
        function now and the entry names the script they render to (planning is cheap; it is
        the validation of their output that the entry saves). None, counted as corrupt,
        when they are not."""
        try:
            cached = edits_from_json(entry.edits or [])
            planned = language.plan(template, record, parsed)
        except (ValueError, TypeError, IndexError, TemplateNotApplicable) as exc:
            self._corrupt_entry(entry, f"edits that cannot be read or planned: {exc}")
            return None
        if cached != planned:
            self._corrupt_entry(entry, "edits that are not the template's")
            return None
        probe = _Plan(record, template=template, edits=planned, key=entry.key)
        try:
            _expected, script = self._make_entry(language, parsed, probe)
        except (ValueError, ScriptMismatch) as exc:
            self._corrupt_entry(entry, f"edits that do not apply: {exc}")
            return None
        if sha256_text(script) != entry.script:
            self._corrupt_entry(entry, "a script that is not the one its edits render to")
            return None
        self._rendered[entry.key] = script
        return planned

    def _checked_llm_edits(self, language: Language, parsed: ParsedFile, record: FunctionRecord,
                           entry: IndexEntry) -> list[Edit] | None:
        """A cached LLM fix's edits, when applied to this function they give what a fix must:
        the output parses, stripping it gives back the function, and its one span is named
        after the function (the checks of the fix's generated test). None, counted as
        corrupt, when they do not."""
        source = record.source(parsed.lines)
        try:
            edits = edits_from_json(entry.edits or [])
            output = apply(source, edits)
            problem = language.snippet_parses(output)
            stripped = language.strip(output)
        except (ValueError, TypeError, IndexError, ScriptMismatch, SourceError) as exc:
            self._corrupt_entry(entry, f"an LLM fix that cannot be applied: {exc}")
            return None
        if problem is not None or (stripped.text != source and not language.equivalent(source, stripped.text)) \
                or [name for _line, name in stripped.spans] != [record.qualname]:
            self._corrupt_entry(entry, "an LLM fix that is not this function's telemetry")
            return None
        return edits

    def _compose_validated(self, language: Language, parsed: ParsedFile, plans: list[_Plan],
                           header: list[str], result: FileResult, key: str) -> str | None:
        """The instrumented text, validated; None when nothing changes. New scripts that
        fail are replaced by the next template, or dropped."""
        failed: list[IndexEntry] = []
        for _round in range(5):  # template, next template, LLM fix, dropping it
            chosen = [p for p in plans if p.edits is not None]
            if not chosen:
                self._store(failed)
                return None
            if header and not parsed.header_line:
                for plan in chosen:
                    plan.failures.append("no place for the module import")
                    plan.edits = None
                return None
            rebuilt = reconstruct(parsed.lines, [(p.record, p.edits) for p in chosen], header, parsed.header_line)
            new = [p for p in chosen if p.entry is None]
            problem = self._validate_file(language, parsed, rebuilt) if self.settings.validate else None
            if problem is None:
                scripts: dict[str, str] = {}
                for plan in new:
                    plan.entry, script = self._make_entry(language, parsed, plan)
                    scripts[plan.entry.script] = script
                cases = [(p.entry.script, p.record.qualname, p.record.source(parsed.lines), p.entry.origin)
                         for p in chosen]
                result.checks = [(sha, name, original, origin, scripts.get(sha) or self._script_of(language, plan))
                                 for (sha, name, original, origin), plan in zip(cases, chosen)]
                test_module = None
                if self.cache is not None:
                    name = test_module_name(parsed.path, key)
                    test_module = (language.name, name,
                                   render_test_module(path=parsed.path, language=language.name, cases=cases))
                    result.tests = name
                self._store(failed + [p.entry for p in new], scripts, test_module)
                result.line_map = rebuilt.line_map
                return rebuilt.text
            if TRACE.on:
                TRACE.event(DEBUG, "validation", "file failed validation", path=parsed.path, problem=problem,
                            new_scripts=len(new))
            if problem.startswith("does not compile with this Python"):
                _skipped(result, problem)
                return None
            # Find the scripts that fail on their own; the next template takes their place.
            culprits = False
            for plan in new:
                failures = self._check_alone(language, parsed, plan)
                if failures:
                    culprits = True
                    failed_template = plan.template
                    reason = f"{failed_template.id}: {failures[0]}"
                    if plan.origin == "llm":  # checked before it was accepted; nothing comes after it
                        plans[plans.index(plan)] = _Plan(plan.record, failures=plan.failures + [reason])
                        continue
                    failed.append(IndexEntry(plan.key, "failed", template=f"{failed_template.id}/{failed_template.version}",
                                             language=language.name, qualname=plan.record.qualname,
                                             reason=failures[0]))
                    templates = language.templates(plan.record, self.settings)
                    _entry, script = self._make_entry(language, parsed, plan)
                    replacement = self._plan(language, parsed, plan.record, templates.index(failed_template) + 1,
                                             failures=plan.failures + [reason], failing_script=script,
                                             unfit=plan.unfit + [reason])
                    plans[plans.index(plan)] = replacement
            if not culprits:
                # Each new script passes alone but the file does not: drop new LLM fixes first.
                fixes = [p for p in new if p.origin == "llm"]
                for plan in fixes:
                    plans[plans.index(plan)] = _Plan(plan.record, failures=plan.failures + [
                        f"llm: the file fails validation with this fix ({problem})"])
                if not fixes:
                    break
        result.status = "error"
        result.reason = f"the instrumented file failed validation ({problem}); it is left unchanged"
        self._store(failed)
        return None

    def _script_of(self, language: Language, plan: _Plan) -> str:
        """The text of a cached plan's script (rendered again for a template's, from the
        cache, its name checked, for an LLM fix's)."""
        if plan.origin == "llm" and self.cache is not None and plan.entry is not None:
            return self.cache.read_script(language.name, plan.entry.script) or ""
        return plan.script or ""

    def _store(self, entries: list[IndexEntry], scripts: dict[str, str] | None = None,
               test_module: tuple[str, str, str] | None = None) -> None:
        if self.cache is not None and (entries or test_module):
            self.cache.store(entries, scripts, test_module)

    def _validate_file(self, language: Language, parsed: ParsedFile, rebuilt: Reconstruction) -> str | None:
        try:
            return language.validate_output(parsed, rebuilt.text, rebuilt.new_rows)
        except SourceError as exc:
            return f"the output cannot be stripped: {exc}"

    def _make_entry(self, language: Language, parsed: ParsedFile, plan: _Plan) -> tuple[IndexEntry, str]:
        """The index entry and the text of a new plan's insertion script."""
        record, template = plan.record, plan.template
        assert template is not None and plan.edits is not None
        template_name = f"{template.id}/{template.version}"
        if plan.script:
            script = plan.script  # an LLM fix: the canonical script rendered from its edits
        else:
            output = apply(record.source(parsed.lines), plan.edits)
            script = render_script(language=language.name, span_name=record.qualname, template=template_name,
                                   source_sha256=record.sha256, output_sha256=text_sha256(output), edits=plan.edits)
        entry = IndexEntry(plan.key, "ok", template=template_name, script=sha256_text(script),
                           language=language.name, qualname=record.qualname, origin=plan.origin,
                           edits=edits_to_json(plan.edits))
        return entry, script

    def _check_alone(self, language: Language, parsed: ParsedFile, plan: _Plan) -> list[str]:
        """The checks of the script's generated test, run on the function alone."""
        from ..testkit import ScriptCheck

        _entry, script = self._make_entry(language, parsed, plan)
        check = ScriptCheck(script, language=language.name, span_name=plan.record.qualname,
                            original=plan.record.source(parsed.lines), origin=plan.origin)
        return check.run_all()

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
        for record in parsed.functions:
            if record.instrumented:
                result.functions.append(FunctionOutcome(record.qualname, record.def_line, "instrumented"))
            elif record.skip_reason:
                result.functions.append(FunctionOutcome(record.qualname, record.def_line, "skipped", record.skip_reason))
            else:
                reasons = []
                for template in language.templates(record, self.settings):
                    try:
                        language.plan(template, record, parsed)
                        break
                    except TemplateNotApplicable as exc:
                        reasons.append(f"{template.id}: {exc}")
                else:
                    result.functions.append(FunctionOutcome(record.qualname, record.def_line, "failed", "; ".join(reasons)))
                    continue
                result.functions.append(FunctionOutcome(record.qualname, record.def_line, "missing",
                                                        "no telemetry"))
        result.elapsed = time.perf_counter() - started
        return result


def _in_place_of(failures: Sequence[str]) -> str:
    """An instrumented function's note when the style asked for did not fit and another did
    (say, a body that ends the file without a line ending gets the with style): why."""
    return f"in place of {'; '.join(failures)}" if failures else ""


def _skipped(result: FileResult, reason: str) -> FileResult:
    result.status = "skipped"
    result.reason = reason
    result.output = None
    return result


def _memo_parts(result: FileResult) -> tuple[dict[str, Any], list[bytes]]:
    counts, reasons = result.counts()
    header = {"status": result.status, "reason": result.reason, "language": result.language,
              "changed": result.output is not None, "tests": result.tests, "counts": counts, "reasons": reasons}
    functions = json.dumps([f.to_list() for f in result.functions], separators=(",", ":"), ensure_ascii=False)
    line_map = result.get_line_map()
    segments = json.dumps(line_map.to_segments() if line_map is not None else None, separators=(",", ":"))
    return header, [functions.encode("utf-8", "surrogatepass"), segments.encode()]


def _check_memo(data: bytes, path: str, memo: Memo, target: str,
                import_name: str) -> tuple[str, str, Memo | None]:
    """(verdict, reason, the memo as its checked output says it must be) of a memo read
    from a cache this machine did not seal (``Language.check_cached_output``)."""
    header = memo.header
    try:
        functions = [FunctionOutcome.from_row(item) for item in json.loads(memo.sections[0])]
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
        return "ok", "", Memo(checked_header, [memo.sections[0], b"null"], b"", True)
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
    try:
        line_map = LineMap.from_segments(json.loads(memo.sections[1]))
    except (ValueError, TypeError) as exc:
        return "corrupt", f"a line map that cannot be read: {exc}", None
    if (line_map.original, line_map.shift) != (verdict.original, verdict.shift):
        return "corrupt", "a line map that is not the output's", None
    return "ok", "", Memo(checked_header, memo.sections, memo.payload, True)


def _result_from_memo(path: str, header: dict[str, Any], sections: list[bytes], payload: bytes) -> FileResult:
    functions_raw, line_map_raw = sections
    return FileResult(path, language=header["language"], status=header["status"], reason=header["reason"],
                      output=payload if header["changed"] else None, functions=LazyOutcomes(functions_raw),
                      memo_hit=True, line_map=line_map_raw if line_map_raw != b"null" else None,
                      tests=header.get("tests", ""), tally=(header["counts"], header["reasons"]))
