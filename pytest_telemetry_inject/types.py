"""The names that cross module boundaries: statuses as ``Literal`` types, the records that
one module hands another, and the refactorer seam as a ``Protocol``.

This module imports nothing from the package (it sits at the bottom of the dependency
picture in docs/architecture.md), so that any module may name these types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

# --- statuses -------------------------------------------------------------------------

FunctionStatus = Literal["instrumented", "skipped", "failed", "missing", "stripped"]
"""What happened to one function: ``instrumented``, ``skipped`` (a reason of policy),
``failed`` (nothing could instrument it), ``missing`` (``check``: it lacks telemetry) or
``stripped``."""

FileStatus = Literal["instrumented", "stripped", "unchanged", "skipped", "error"]
"""What happened to one file: ``instrumented`` / ``stripped`` (output differs),
``unchanged``, ``skipped`` (left alone for a reason) or ``error`` (it could not be processed
safely)."""

EntryStatus = Literal["ok", "failed"]
"""An index entry: ``ok`` (a validated script) or ``failed`` (the template cannot instrument
the function; its reason says why)."""

Mode = Literal["instrument", "strip", "check"]
"""What a run does to each file."""

# --- records that cross modules --------------------------------------------------------

# --- the refactorer seam ---------------------------------------------------------------


@dataclass(frozen=True)
class RefactorRequest:
    """What the engine tells a refactorer about a function every template failed on: enough
    to ask a model for a fix and to check the answer, nothing of the engine's state."""

    language: str
    span_name: str
    """The qualname: the one span the fix must add."""
    source: str
    """The function's own lines, as the fix must leave them."""
    failing_script: str = ""
    """The insertion script that failed (empty when no template could even plan edits)."""
    failures: tuple[str, ...] = ()
    """Why each template failed, in the order they were tried."""
    keep: tuple[int, ...] = ()
    """Rows of ``source`` (from 1) that start inside a string: their text must not change."""
    style: str = "with"
    target: str = "vendored"
    is_generator: bool | None = None
    path: str = ""
    """The file, for the trace only."""


@dataclass(frozen=True)
class RefactorReply:
    """A refactorer's answer: a fix (its edits and canonical script) or why there is none."""

    edits: Sequence[Any] | None
    """The fix as ``scriptlib`` edits on ``source`` (typed loosely: this module imports
    nothing of the package); None: no fix."""
    script: str = ""
    """The fix's canonical insertion script."""
    reason: str = ""
    """Who fixed it (a fix), or why no fix came (none)."""
    cacheable_failure: bool = False
    """Models answered and every answer was rejected: worth remembering. False when the
    budget, the network or the provider failed: worth trying again in a later run."""


class Refactorer(Protocol):
    """The optional LLM seam: asked only when every template failed for a function. The
    engine receives one (``Engine(settings, cache, refactorer=...)``) and the runner hands
    it to its workers, so it must pickle."""

    @property
    def fingerprint(self) -> str:
        """Names the models and settings asked: a memo made with them is not reused by a run
        asking others, and a failure they cached is not asked again."""
        ...

    def refactor(self, request: RefactorRequest) -> RefactorReply:
        """A fix for ``request``; never raises (a fault costs the function its telemetry)."""
        ...
