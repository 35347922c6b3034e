"""The vendored module (target ``vendored``): the runtime's one file, written into a project.

Its first line is a marker the scanner recognises, so the module is never instrumented and
``--strip`` can remove it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..sourcefile import write_atomic

MARKER = "# telemetry-inject: vendored runtime. Written by pytest-telemetry-inject; do not edit.\n"
DEFAULT_MODULE = "telemetry_utils"


def vendored_source() -> str:
    core = Path(__file__).with_name("_core.py").read_text(encoding="utf-8")
    return MARKER + core


def is_vendored(path: str | os.PathLike[str]) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(MARKER)) == MARKER.encode()
    except OSError:
        return False


def write_vendored(path: str | os.PathLike[str], content: bytes | None = None) -> bool:
    """Write the vendored module at ``path`` (or another runtime file: ``content``) unless
    it is already there, current; True when it was written."""
    text = vendored_source().encode("utf-8") if content is None else content
    try:
        if Path(path).read_bytes() == text:
            return False
    except OSError:
        pass
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(str(path), text)
    return True
