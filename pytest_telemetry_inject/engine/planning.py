"""Planning: for one function, the edits to compose, and where they come from.

In order: the cached index entry of a template (its edits checked against what the
template plans now), the template itself, a cached LLM fix (after a template failed, or
when all did), and last a new LLM fix from the refactorer the engine was given. A plan
names its template, key and (for a cached one) its index entry; composition
(``engine.compose``) asks for the next template's plan when a new script fails its checks.

Planning reads the cache's index and counts hits and misses; the only thing it writes is a
refactorer's failure worth remembering (an ``llm`` entry with status ``failed``), so that
the same models are not asked again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import formats
from ..errors import FormNotAvailable, SourceError, TemplateNotApplicable
from ..languages import Language
from ..languages.base import FunctionRecord, ParsedFile, Template
from ..scriptlib import Edit, ScriptMismatch, apply
from ..scriptlib import sha256 as text_sha256
from ..settings import Settings
from ..trace import DEBUG, TRACE
from ..types import Refactorer, RefactorRequest
from .cache import IndexEntry, ScriptCache
from .scripts import edits_from_json, edits_to_json, render_script, sha256_text


@dataclass
class Plan:
    """How one function is to be instrumented (``edits`` None: it is left as it was, and
    ``failures`` say why)."""

    record: FunctionRecord
    template: Template | None = None
    edits: Sequence[Edit] | None = None
    key: str = ""
    entry: IndexEntry | None = None
    """The cached index entry the edits come from; None for new edits (stored once the file
    they are part of validates)."""
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


def function_key(record: FunctionRecord, template: Template) -> str:
    """The cache key of a template's plan for a function: what can change the edits (tool
    version, template and its version, qualname, the function's source)."""
    return formats.function_key(language=record.language, template_id=template.id,
                                template_version=template.version, qualname=record.qualname,
                                source_sha256=record.sha256)


def llm_template(language: Language, settings: Settings) -> Template:
    """The pseudo-template of LLM fixes: its function keys are those of the cache entries of
    fixes for this style and target (whichever model made them)."""
    return Template(f"{language.name}.llm.{settings.style}.{settings.target}", 1, settings.style, settings.target)


def plan_entry(language: Language, parsed: ParsedFile, plan: Plan) -> tuple[IndexEntry, str]:
    """The index entry and the text of a plan's insertion script (what the cache stores, and
    what a cached entry's script must be)."""
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


def _in_place_of(failures: Sequence[str]) -> str:
    """An instrumented function's note when the style asked for did not fit and another did
    (say, a body that ends the file without a line ending gets the with style): why."""
    return f"in place of {'; '.join(failures)}" if failures else ""


class Planner:
    """Plans the functions of the files of one engine. It counts the new LLM fixes and the
    refactorer's transient failures (the engine memoises no file that had one)."""

    def __init__(self, settings: Settings, cache: ScriptCache | None, refactorer: Refactorer | None) -> None:
        self.settings = settings
        self.cache = cache
        self.refactorer = refactorer
        self.new_llm_fixes = 0
        self.llm_transient = 0
        self._rendered: dict[str, str] = {}
        """Function key -> the script a checked template entry renders to (rendered once)."""

    # -- the plan of a function ---------------------------------------------------------------

    def plan(self, language: Language, parsed: ParsedFile, record: FunctionRecord,
             start: int = 0, failures: Sequence[str] = (), failing_script: str = "",
             unfit: Sequence[str] = ()) -> Plan:
        """The first of the templates from ``start`` that works (cached or planned), else an
        LLM fix, else a plan with no edits and the reasons."""
        plan = Plan(record)
        plan.failures.extend(failures)
        plan.unfit.extend(unfit)
        for template in language.templates(record, self.settings)[start:]:
            key = function_key(record, template)
            entry = self.cache.lookup(key) if self.cache is not None else None
            if entry is not None and entry.status == "ok":
                edits = self._checked_template_edits(language, parsed, record, template, entry)
                if edits is not None:
                    self._count(hit=True)
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
            self._count(hit=False)
            plan.template, plan.key, plan.edits, plan.tried = template, key, edits, 1
            plan.note = _in_place_of(plan.unfit)
            return plan
        return self._plan_llm(language, parsed, plan, failing_script)

    def next_template(self, language: Language, parsed: ParsedFile, failed: Plan, reason: str) -> Plan:
        """The plan that takes the place of ``failed``, whose new script failed its checks
        (``reason``): the templates after its own, then an LLM fix shown the failing script."""
        template = failed.template
        assert template is not None
        templates = language.templates(failed.record, self.settings)
        _entry, script = plan_entry(language, parsed, failed)
        return self.plan(language, parsed, failed.record, templates.index(template) + 1,
                         failures=failed.failures + [reason], failing_script=script,
                         unfit=failed.unfit + [reason])

    def _count(self, *, hit: bool) -> None:
        if self.cache is not None:
            if hit:
                self.cache.counters.script_hits += 1
            else:
                self.cache.counters.script_misses += 1

    # -- LLM fixes ------------------------------------------------------------------------------

    def _plan_llm(self, language: Language, parsed: ParsedFile, plan: Plan, failing_script: str) -> Plan:
        """Every template failed: a cached LLM fix, else (with a refactorer) a new one."""
        record, template = plan.record, llm_template(language, self.settings)
        key = function_key(record, template)
        entry = self.cache.lookup(key) if self.cache is not None else None
        fingerprint = f"llm/{self.refactorer.fingerprint if self.refactorer is not None else ''}"
        edits = None
        if entry is not None and entry.status == "ok":
            edits = self._checked_llm_edits(language, parsed, record, entry)
            if edits is None:
                entry = None  # not telemetry of this function: as if there were none
        if entry is not None:
            if edits is not None:
                self._count(hit=True)
                plan.template, plan.key, plan.entry, plan.origin = template, key, entry, "llm"
                plan.edits = edits
                plan.note = "fixed by an LLM (cached)"
                return plan
            if self.refactorer is None or entry.template == fingerprint:
                plan.failures.append(f"llm: {entry.reason}")  # these models failed before
                return plan
        if self.refactorer is None:
            return plan
        return self._new_llm_fix(language, parsed, plan, template, key, failing_script, fingerprint)

    def _new_llm_fix(self, language: Language, parsed: ParsedFile, plan: Plan, template: Template, key: str,
                     failing_script: str, fingerprint: str) -> Plan:
        """Asks the refactorer; a failure worth remembering is stored at once (a fix is
        stored with its file, once that validates)."""
        assert self.refactorer is not None
        record = plan.record
        reply = self.refactorer.refactor(RefactorRequest(
            language=language.name, span_name=record.qualname, source=record.source(parsed.lines),
            failing_script=failing_script, failures=tuple(plan.failures),
            keep=tuple(record.relative(k) for k in record.keep), style=self.settings.style,
            target=self.settings.target, is_generator=record.is_generator, path=parsed.path))
        if reply.edits is None:
            plan.failures.append(f"llm: {reply.reason}")
            if reply.cacheable_failure:
                if self.cache is not None:
                    self.cache.store([IndexEntry(key, "failed", template=fingerprint, language=language.name,
                                                 qualname=record.qualname, origin="llm", reason=reply.reason)])
            else:
                self.llm_transient += 1
            return plan
        self._count(hit=False)
        plan.template, plan.key, plan.edits, plan.tried = template, key, list(reply.edits), 1
        plan.origin, plan.script, plan.note = "llm", reply.script, reply.reason
        self.new_llm_fixes += 1
        return plan

    def _cached_llm_fix(self, language: Language, parsed: ParsedFile, plan: Plan, failed: Template) -> Plan | None:
        """``plan`` with the function's cached LLM fix (checked like every cached fix), or None
        when there is none (no call is made here). Looked up only after a template failed."""
        if self.cache is None:
            return None
        template = llm_template(language, self.settings)
        key = function_key(plan.record, template)
        entry = self.cache.lookup(key)
        if entry is None or entry.status != "ok":
            return None
        edits = self._checked_llm_edits(language, parsed, plan.record, entry)
        if edits is None:
            return None
        self._count(hit=True)
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
        probe = Plan(record, template=template, edits=planned, key=entry.key)
        try:
            _expected, script = plan_entry(language, parsed, probe)
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
