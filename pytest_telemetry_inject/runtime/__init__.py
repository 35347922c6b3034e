"""The telemetry runtime (target ``runtime``): what instrumented code calls.

Everything lives in ``_core`` (standard library only), which is also the vendored module
(target ``vendored``). Reports (JSON, HTML, the terminal table) are in ``report``, imported
only when asked for. See docs/runtime.md and docs/reports.md.
"""

from ._core import (
    RUNTIME_VERSION,
    Tracer,
    chrome_trace,
    configure,
    current_test,
    dropped_events,
    events,
    flush,
    format_report,
    merge_snapshots,
    no_telemetry,
    reset,
    set_current_test,
    snapshot,
    tracer,
)

__all__ = [
    "RUNTIME_VERSION",
    "Tracer",
    "chrome_trace",
    "configure",
    "current_test",
    "dropped_events",
    "events",
    "flush",
    "format_report",
    "merge_snapshots",
    "no_telemetry",
    "reset",
    "set_current_test",
    "snapshot",
    "tracer",
]
