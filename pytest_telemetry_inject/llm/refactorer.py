"""The refactorer: an insertion script failed its test (or no template applies), ask a model
for a fixed one. Script mode's only LLM call, made only then.

Each answer goes through, in order: the security allowlist, the sandbox (the script's
output for the function), ``engine.derive.derive_edits`` (the output may only ADD to the
function), and the checks of the generated test on the script rendered from those edits
(``testkit.ScriptCheck``, run in the sandbox). A rejected answer is sent back with its
reason, up to ``max_retries`` attempts. The fix the engine keeps is the derived edits and
the canonical script rendered from them (pinned to the function's sha256, so applying it
twice changes nothing), cached with origin ``llm``.

``repair(...)`` is the same for the pytest plugin: a ``path::telemetry`` item whose
generated test failed hands over the function's source, the failing script and the
failures, and gets a ``RepairResult``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..engine.derive import derive_edits
from ..engine.scripts import check_security, render_script, sha256_text
from ..errors import SecurityViolation, TelemetryInjectError, ValidationError
from ..redact import one_line
from ..scriptlib import Edit, apply
from ..scriptlib import sha256 as text_sha256
from ..trace import DEBUG, ERROR, INFO, TRACE, WARNING, traced
from ..types import RefactorReply, RefactorRequest
from .config import LLMConfig
from .forms import target_problem
from .prompts import extract_code, feedback_message, refactor_messages

LLM_TEMPLATE_NAME = "llm/1"
NEVER_CHANGE = "an LLM may add telemetry, never change the code"
# Failures after which another attempt cannot help in this run (nothing is cached for them).
TRANSIENT_KINDS = frozenset({"budget", "timeout", "server", "rate_limit", "unavailable", "auth", "not_found",
                             "too_large", "bad_request", "error"})


@dataclass
class RepairResult:
    script: str | None
    """The canonical script of the fix (None: no fix)."""
    edits: list[Edit] | None
    attempts: int = 0
    reasons: list[str] = field(default_factory=list)
    """Why each rejected answer or failed request failed, in order."""
    model: str = ""
    cost: float = 0.0
    cacheable_failure: bool = False
    """Models answered and every answer was rejected (worth remembering); False when the
    failure was the budget, the network or the provider (worth trying again later)."""
    requests: int = 0
    """Requests sent to models over all attempts that came back, answered or failed (several
    per attempt when models are asked side by side); not those the budget or the token limit
    stopped before sending."""

    @property
    def ok(self) -> bool:
        return self.edits is not None

    @property
    def reason(self) -> str:
        if self.ok:
            return f"fixed by {self.model} (attempt {self.attempts})"
        last = self.reasons[-1] if self.reasons else "no answer"
        return f"LLM refactoring failed after {self.attempts} attempt(s): {last}"

    def reply(self) -> RefactorReply:
        """What the engine keeps of this result (``types.RefactorReply``)."""
        return RefactorReply(self.edits, self.script or "", self.reason, self.cacheable_failure)


@dataclass
class _Candidate:
    script: str
    edits: list[Edit]
    output: str


class ScriptRefactorer:
    """The engine's ``types.Refactorer`` (``refactor(request)``); called with keywords it gives
    the whole ``RepairResult`` (attempts, cost, model), as ``repair`` does."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.config: LLMConfig = session.config

    @property
    def fingerprint(self) -> str:
        return self.config.fingerprint

    def refactor(self, request: RefactorRequest) -> RefactorReply:
        """The engine's call: what it needs of the ``RepairResult``."""
        result = self(language=request.language, span_name=request.span_name, source=request.source,
                      failing_script=request.failing_script, failures=list(request.failures),
                      keep=request.keep, style=request.style, target=request.target,
                      is_generator=request.is_generator, path=request.path)
        return result.reply()

    @traced("refactor")
    def __call__(self, *, language: str, span_name: str, source: str, failing_script: str = "",
                 failures: Sequence[str] = (), keep: Sequence[int] | None = None, style: str = "with",
                 target: str = "vendored", is_generator: bool | None = None, path: str = "") -> RepairResult:
        try:
            return self._repair(language=language, span_name=span_name, source=source,
                                failing_script=failing_script, failures=failures, keep=keep, style=style,
                                target=target, is_generator=is_generator, path=path)
        except Exception as exc:  # a fault here must cost one function its telemetry, never a file
            if TRACE.on:
                TRACE.event(ERROR, "refactor", "internal error", span=span_name, error=f"{type(exc).__name__}: {exc}")
            detail = one_line(f"{type(exc).__name__}: {exc}")
            return RepairResult(None, None, 0, [f"internal error in the LLM layer: {detail}"])

    def _repair(self, *, language: str, span_name: str, source: str, failing_script: str,
                failures: Sequence[str], keep: Sequence[int] | None, style: str, target: str,
                is_generator: bool | None, path: str) -> RepairResult:
        del is_generator  # the kind of function is read from its source (the prompt's examples)
        source_sha = text_sha256(source)
        messages = refactor_messages(self.config, language=language, span_name=span_name, source=source,
                                     source_sha256=source_sha, failing_script=failing_script,
                                     failures=list(failures), style=style, target=target)
        if TRACE.on:
            TRACE.event(INFO, "refactor", "start", span=span_name, path=path, language=language,
                        failing_script=bool(failing_script), failures=list(failures)[:5])

        def validate(text: str) -> tuple[_Candidate | None, str]:
            return self._validate(text, language=language, span_name=span_name, source=source,
                                  source_sha=source_sha, keep=keep, target=target)

        result = RepairResult(None, None)
        answered = transient = False
        for attempt in range(1, self.config.max_retries + 1):
            result.attempts = attempt
            outcome = self.session.asker.ask(messages, validate, purpose=f"refactor {span_name}",
                                             vote_key=lambda c: json_edits(c.edits))
            result.cost += sum(a.cost for a in outcome.answers)
            result.requests += sum(a.sent for a in outcome.answers)
            if outcome.best is not None:
                candidate: _Candidate = outcome.best.value
                result.script, result.edits, result.model = candidate.script, candidate.edits, outcome.best.model
                if TRACE.on:
                    TRACE.event(INFO, "refactor", "fixed", span=span_name, model=result.model, attempt=attempt)
                return result
            for answer in outcome.answers:
                prefix = "" if answer.reason.startswith(answer.model) else f"{answer.model}: "
                result.reasons.append(prefix + answer.reason)
                if answer.error_kind:
                    transient = transient or answer.error_kind in TRANSIENT_KINDS
                else:
                    answered = True
            if TRACE.on:
                TRACE.event(WARNING, "refactor", "attempt rejected", span=span_name, attempt=attempt,
                            reasons=[a.reason for a in outcome.answers])
            if all(a.error_kind for a in outcome.answers):
                break  # no model answered: another attempt now would fail the same way
            rejected = next(a for a in outcome.answers if not a.error_kind)
            messages = messages + [{"role": "assistant", "content": rejected.text}, feedback_message(rejected.reason)]
        result.cacheable_failure = answered and not transient
        return result

    def _validate(self, text: str, *, language: str, span_name: str, source: str, source_sha: str,
                  keep: Sequence[int] | None, target: str) -> tuple[_Candidate | None, str]:
        from ..engine.sandbox import run_script
        from ..testkit import ScriptCheck

        script = extract_code(text)
        if not script:
            return None, "the answer holds no script (expected one ```python code block)"
        try:
            check_security(script)
        except SecurityViolation as exc:
            return None, f"refused by the security allowlist: {exc}"
        except ValidationError as exc:
            return None, str(exc)
        try:
            output = run_script(script, source, check=False)
        except TelemetryInjectError as exc:
            reason = str(exc)  # the sandbox's own errors already say where they happened
            return None, reason if reason.startswith(("the script", "the sandbox")) else \
                f"the script failed in the sandbox: {reason}"
        edits = derive_edits(source, output, keep=keep, language=language)
        if edits is None:
            return None, NEVER_CHANGE + " (its output changes or removes original text)"
        if not edits:
            return None, "the script adds nothing"
        problem = target_problem(language, target, span_name, source, edits)
        if problem:
            return None, problem
        canonical = render_script(language=language, span_name=span_name, template=LLM_TEMPLATE_NAME,
                                  source_sha256=source_sha, output_sha256=text_sha256(apply(source, edits)),
                                  edits=edits)
        failures = ScriptCheck(canonical, language=language, span_name=span_name, original=source,
                               origin="llm").run_all()
        if failures:
            return None, one_line("; ".join(failures), 400)
        if TRACE.on:
            TRACE.event(DEBUG, "validation", "LLM script accepted", span=span_name, edits=len(edits),
                        script=sha256_text(canonical)[:16])
        return _Candidate(canonical, edits, output), ""


def json_edits(edits: Sequence[Edit]) -> str:
    import json

    from ..engine.scripts import edits_to_json

    return json.dumps(edits_to_json(edits))


def repair(record_source: str, span_name: str, failing_script: str, failures: Sequence[str], *,
           language: str = "python", style: str = "with", target: str = "runtime",
           keep: Sequence[int] | None = None, root: Any = None, config: LLMConfig | None = None,
           session: Any = None, ledger: str | None = None) -> RepairResult:
    """Ask the configured model(s) to fix ``failing_script`` for the function ``record_source``
    (the ``path::telemetry`` item's failing case). Without a configured model, a result
    with no fix and the reason. Without ``session``, the calls of one process with the same
    configuration share one session (``shared_session``), hence ONE budget: a new session
    per call would give every failing function the whole budget again. ``ledger``: the file
    the processes of one run share their spending through (pytest-xdist's workers)."""
    if session is None:
        config = config or LLMConfig.load(root)
        if not config.enabled:
            return RepairResult(None, None, 0, ["no LLM is configured (set LLM_MODEL, or run telemetry-inject "
                                                "--configure)"])
        session = shared_session(config, ledger)
    return ScriptRefactorer(session)(language=language, span_name=span_name, source=record_source,
                                     failing_script=failing_script, failures=list(failures), keep=keep,
                                     style=style, target=target)


_SHARED: dict[str, Any] = {}
_SHARED_PID = [0]
_SHARED_LOCK = threading.Lock()


def shared_session(config: LLMConfig, ledger: str | None = None) -> Any:
    """This process's session for ``config`` (its repr: models, servers, budget, root; never
    the keys), made on first use. A forked child makes its own. ``ledger``: a file shared
    with the run's other processes, so that they spend one budget."""
    from .session import LLMSession

    with _SHARED_LOCK:
        if _SHARED_PID[0] != os.getpid():
            _SHARED.clear()
            _SHARED_PID[0] = os.getpid()
        key = repr((config, ledger))
        if key not in _SHARED:
            _SHARED[key] = LLMSession(config, ledger=ledger)
        return _SHARED[key]


def shared_summary_lines() -> list[str]:
    """The budget's summary line of each shared session of this process (for the pytest
    plugin's terminal summary), in the order they were made."""
    with _SHARED_LOCK:
        sessions = list(_SHARED.values()) if _SHARED_PID[0] == os.getpid() else []
    return [session.costs.summary_line() for session in sessions]


def record_fix(cache: Any, *, settings: Any, language: str, span_name: str, source: str, failing_script: str,
               reason: str, result: RepairResult | None) -> None:
    """Store a repair the way the engine stores its own (for the pytest plugin): the failing
    script's template entry becomes ``failed`` with ``reason`` (so the engine stops reusing
    it), and a fix becomes the function's LLM entry (origin ``llm``). From then on the engine
    uses the fix in place of the failed template (``engine.planning.Planner._cached_llm_fix``: a failed
    template's entry is followed by the function's cached fix, checked, before the next
    template), with no call: the request bought the function its telemetry. The file's memo
    still holds the old result: instrument the file again without it (a rebuild)."""
    from ..formats import IndexEntry, ScriptHeader, edits_to_json, function_key
    from ..languages import get_language

    source_sha256 = text_sha256(source)
    entries = []
    failed = ScriptHeader.template_of(failing_script or "")
    if failed is not None:
        template_id, version = failed
        key = function_key(language=language, template_id=template_id, template_version=version,
                           qualname=span_name, source_sha256=source_sha256)
        entries.append(IndexEntry(key, "failed", template=f"{template_id}/{version}", language=language,
                                  qualname=span_name, reason=one_line(reason)))
    scripts = {}
    if result is not None and result.ok and result.script:
        from ..engine.planning import llm_template

        template = llm_template(get_language(language), settings)
        sha = sha256_text(result.script)
        scripts[sha] = result.script
        key = function_key(language=language, template_id=template.id, template_version=template.version,
                           qualname=span_name, source_sha256=source_sha256)
        entries.append(IndexEntry(key, "ok", template=f"{template.id}/{template.version}", script=sha,
                                  language=language, qualname=span_name, origin="llm",
                                  edits=edits_to_json(result.edits or [])))
    if entries:
        cache.store(entries, scripts)
