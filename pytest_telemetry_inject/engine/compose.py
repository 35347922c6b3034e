"""Composition: the plans of a file's functions become its new text, validated.

``compose`` splices every planned function's edits (and the module header) into the file and
validates the result. When that fails, each new script is checked alone (the checks of its
generated test); a failing one is replaced by the plan that comes after it (a callback: the
next template, or an LLM fix), a new LLM fix that passes alone but breaks the file is
dropped, and the file is composed again, up to five rounds.

Nothing here writes: the ``Composition`` says what the engine is to store (index entries,
new scripts, the cases of the generated test module) and report (the final plans, whose
``failures`` say which fell back and why).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from ..errors import SourceError
from ..formats import TestCase
from ..languages import Language
from ..languages.base import ParsedFile
from ..trace import DEBUG, TRACE
from ..types import FileStatus
from .cache import IndexEntry
from .planning import Plan, plan_entry
from .reconstruct import LineMap, Reconstruction, reconstruct

Replan = Callable[[Plan, str], Plan]
"""(a plan whose new script failed its checks, the reason) -> the plan that takes its place."""

ROUNDS = 5  # template, next template, LLM fix, dropping it
NO_COMPILE = "does not compile with this Python"


@dataclass
class Composition:
    """What composing a file's plans gives. ``text`` None: nothing changes (``status`` says
    whether the file is ``skipped`` or in ``error``, or neither)."""

    plans: list[Plan]
    """The final plans, in the order given (``edits`` None: the function is left alone)."""
    text: str | None = None
    line_map: LineMap | None = None
    entries: list[IndexEntry] = field(default_factory=list)
    """Index entries to store: failed templates, and the new scripts of a validated file."""
    scripts: dict[str, str] = field(default_factory=dict)
    """New scripts to store, by sha256."""
    cases: list[TestCase] = field(default_factory=list)
    """Each instrumented function's case in the file's generated test module."""
    status: FileStatus | None = None
    reason: str = ""

    @property
    def chosen(self) -> list[Plan]:
        """The plans that instrument their function."""
        return [plan for plan in self.plans if plan.edits is not None]


def compose(language: Language, parsed: ParsedFile, plans: Sequence[Plan], header: Sequence[str], *,
            validate: bool, replan: Replan) -> Composition:
    """The file's instrumented text, validated, with what to store; new scripts that fail are
    replaced through ``replan``, or dropped."""
    current = list(plans)
    failed: list[IndexEntry] = []
    problem: str | None = None
    for _round in range(ROUNDS):
        chosen = [p for p in current if p.edits is not None]
        if not chosen:
            return Composition(current, entries=failed)
        if header and not parsed.header_line:
            return Composition(_without_header(current))
        edits = [(p.record, p.edits) for p in chosen if p.edits is not None]
        rebuilt = reconstruct(parsed.lines, edits, header, parsed.header_line)
        new = [p for p in chosen if p.entry is None]
        problem = validate_file(language, parsed, rebuilt) if validate else None
        if problem is None:
            return _accepted(language, parsed, current, new, rebuilt, failed)
        if TRACE.on:
            TRACE.event(DEBUG, "validation", "file failed validation", path=parsed.path, problem=problem,
                        new_scripts=len(new))
        if problem.startswith(NO_COMPILE):
            return Composition(current, status="skipped", reason=problem)
        if not _fall_back(language, parsed, current, new, problem, failed, replan):
            break
    return Composition(current, entries=failed, status="error",
                       reason=f"the instrumented file failed validation ({problem}); it is left unchanged")


def _without_header(plans: list[Plan]) -> list[Plan]:
    """The file has no place for the module import: no function can be instrumented."""
    return [replace(p, edits=None, failures=p.failures + ["no place for the module import"])
            if p.edits is not None else p for p in plans]


def _accepted(language: Language, parsed: ParsedFile, plans: list[Plan], new: list[Plan],
              rebuilt: Reconstruction, failed: list[IndexEntry]) -> Composition:
    """The validated file: new plans get their index entries and scripts."""
    made: dict[int, Plan] = {}
    scripts: dict[str, str] = {}
    entries = list(failed)
    for plan in new:
        entry, script = plan_entry(language, parsed, plan)
        scripts[entry.script] = script
        entries.append(entry)
        made[id(plan)] = replace(plan, entry=entry)
    final = [made.get(id(p), p) for p in plans]
    composition = Composition(final, rebuilt.text, rebuilt.line_map, entries, scripts)
    composition.cases = [_case(parsed, plan) for plan in composition.chosen]
    return composition


def _case(parsed: ParsedFile, plan: Plan) -> TestCase:
    assert plan.entry is not None
    return TestCase(plan.entry.script, plan.record.qualname, plan.record.source(parsed.lines), plan.entry.origin)


def _fall_back(language: Language, parsed: ParsedFile, plans: list[Plan], new: list[Plan], problem: str,
               failed: list[IndexEntry], replan: Replan) -> bool:
    """Replaces, in ``plans``, the new scripts that fail on their own (a template's by the
    next plan, its failure added to ``failed``; an LLM fix's by nothing); when none does,
    drops the new LLM fixes. False when nothing changed (another round cannot help)."""
    culprits = False
    for plan in new:
        failures = check_alone(language, parsed, plan)
        if not failures:
            continue
        culprits = True
        template = plan.template
        assert template is not None
        reason = f"{template.id}: {failures[0]}"
        if plan.origin == "llm":  # checked before it was accepted; nothing comes after it
            _swap(plans, plan, Plan(plan.record, failures=plan.failures + [reason]))
            continue
        failed.append(IndexEntry(plan.key, "failed", template=f"{template.id}/{template.version}",
                                 language=language.name, qualname=plan.record.qualname, reason=failures[0]))
        _swap(plans, plan, replan(plan, reason))
    if culprits:
        return True
    # Each new script passes alone but the file does not: drop new LLM fixes first.
    fixes = [p for p in new if p.origin == "llm"]
    for plan in fixes:
        _swap(plans, plan, Plan(plan.record, failures=plan.failures + [
            f"llm: the file fails validation with this fix ({problem})"]))
    return bool(fixes)


def _swap(plans: list[Plan], old: Plan, new: Plan) -> None:
    plans[next(i for i, plan in enumerate(plans) if plan is old)] = new


def validate_file(language: Language, parsed: ParsedFile, rebuilt: Reconstruction) -> str | None:
    """Why the new text must not be written (None: it may)."""
    try:
        return language.validate_output(parsed, rebuilt.text, rebuilt.new_rows)
    except SourceError as exc:
        return f"the output cannot be stripped: {exc}"


def check_alone(language: Language, parsed: ParsedFile, plan: Plan) -> list[str]:
    """The checks of the script's generated test, run on the function alone."""
    from ..testkit import ScriptCheck

    _entry, script = plan_entry(language, parsed, plan)
    check = ScriptCheck(script, language=language.name, span_name=plan.record.qualname,
                        original=plan.record.source(parsed.lines), origin=plan.origin)
    return check.run_all()
