"""The telemetry runtime (target ``runtime``): what instrumented code calls.

Everything lives in ``_core`` (standard library only), which is also the vendored module
(target ``vendored``). Reports (JSON, HTML, the terminal table) are in ``report``, imported
only when asked for. See docs/runtime.md and docs/reports.md.
"""

from . import _core
from ._core import *  # noqa: F403 (exactly the names of _core.__all__)

__all__ = list(_core.__all__)


def _write_report_file(path: str, core: object) -> None:
    """``TELEMETRY_INJECT_REPORT=PATH.json`` (or ``.html``) at exit: the report module, imported
    then (it imports ``_core``; ``_core`` never imports it)."""
    from . import report

    report.write_from_runtime(path, core)


_core._report_writer = _write_report_file
