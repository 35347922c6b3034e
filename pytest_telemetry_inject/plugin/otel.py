"""OpenTelemetry in a plugin session: counting the spans of ``telemetry_target = otel``, the
OTLP export's counts of this process, and what the summary says of them.

The session holds the ``OtelSession`` objects (``otlp``); these functions only read them, so
that the counting and its wording live apart from the session's hooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # (imported when OpenTelemetry is used: most sessions never do)
    from ..otlp import OtelSession

NO_OTEL = "telemetry_target = otel, but OpenTelemetry is not installed: nothing is recorded"
NO_PROVIDER = ("telemetry_target = otel: the instrumented code calls OpenTelemetry's API, and no SDK "
               "tracer provider is set up, so nothing is recorded (use --telemetry-otel, or set "
               "one up in conftest.py)")


def count_otel_target(config: pytest.Config, otel: OtelSession | None,
                      modules: Iterable[str]) -> tuple[str, OtelSession | None]:
    """``telemetry_target = otel``: the instrumented code calls OpenTelemetry's API, not this
    runtime; its spans (those of ``modules``) are counted for the summary from the provider,
    if any. Returns a note for the summary ('' when counting) and the session made only to
    count (None when ``otel``, the exporting session, counts them)."""
    if otel is None:
        try:
            from opentelemetry import trace
        except ImportError:
            return NO_OTEL, None
        provider = trace.get_tracer_provider()
        if not hasattr(provider, "add_span_processor"):
            return NO_PROVIDER, None
        from ..otlp import OtelSession

        counter = OtelSession(config, provider, None)
        counter.count_spans_of(set(modules))
        return "", counter
    try:  # the instrumented code asks the global provider for its tracers
        from opentelemetry import trace

        if otel.processor is not None:
            trace.set_tracer_provider(otel.provider)
    except Exception:
        pass
    otel.count_spans_of(set(modules))
    return "", None


def otlp_counts(otel: OtelSession | None) -> dict[str, Any] | None:
    """This process's spans sent over OTLP (the session's and tests' through the SDK, the
    functions' through the runtime's sink): ended, delivered, lost."""
    from .. import runtime

    processor = otel.processor if otel is not None else None
    if processor is None:
        return None
    sink = runtime.otlp_counts() or {"sent": 0, "delivered": 0, "lost": 0, "error": ""}
    return {"ended": processor.ended + sink["sent"], "delivered": processor.delivered + sink["delivered"],
            "lost": processor.lost + sink["lost"], "error": sink["error"] or processor.last_error}


def otel_rows(otel: OtelSession | None, counter_session: OtelSession | None) -> list[Any]:
    """The per-function rows counted from OpenTelemetry spans (``telemetry_target = otel``)."""
    session = otel if otel is not None and otel.counter is not None else counter_session
    return session.counter.snapshot() if session is not None and session.counter is not None else []


def otel_lines(otel: OtelSession | None, note: str, data: dict[str, Any]) -> list[str]:
    """What the summary says of OpenTelemetry: where the spans went, and how many of them
    arrived (every process's count: pytest-xdist workers export their own)."""
    lines = []
    if otel is not None:
        counts = data.get("otlp")
        if counts:
            line = (f"spans over OTLP: {counts['ended']} ended, {counts['delivered']} delivered, "
                    f"{counts['lost']} lost")
            if counts["lost"]:
                line += f" ({counts['error'] or 'the exporter failed'})"
            lines.append(line)
        else:
            lines.extend(otel.summary())
    if note:
        lines.append(note)
    return lines
