"""The telemetry runtime (target ``runtime``). See ``_core`` for what it records and how."""

from ._core import (
    RUNTIME_VERSION,
    Tracer,
    format_report,
    no_telemetry,
    reset,
    snapshot,
    tracer,
)

__all__ = ["RUNTIME_VERSION", "Tracer", "format_report", "no_telemetry", "reset", "snapshot", "tracer"]
