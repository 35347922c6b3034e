"""Keep secrets out of everything this package prints or writes.

API keys are registered as they are read (``register_secret``); ``redact`` replaces every
registered value, and anything shaped like a key or a bearer token, with ``***``. Logs,
the debug trace, reports and error messages all pass through it. Stdlib only: the trace
imports it on a run that does no LLM work.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
# Names of environment variables whose values are secrets.
SECRET_NAME = re.compile(r"(?i)(API_?KEY|_TOKEN|SECRET|PASSWORD|PASSWD|_KEY|CREDENTIALS?)$")
# Shapes of keys that leak through error messages even when nobody registered them.
_SHAPES = (
    re.compile(r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"),
    re.compile(r"\bgsk_[A-Za-z0-9]{16,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{16,}"),
    re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/\-]{8,}=*"),
    re.compile(r"(?i)((?:api[_-]?key|x-api-key|authorization)[\"']?\s*[:=]\s*[\"']?)[^\"'\s,;}]{6,}"),
)
# Shorter values are too likely to appear in ordinary text to be replaced safely.
MIN_SECRET_LENGTH = 6

_lock = threading.Lock()
_secrets: set[str] = set()
_ordered: tuple[str, ...] = ()


def register_secret(value: str | None) -> None:
    """Redact ``value`` wherever it appears from now on."""
    global _ordered
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        if value not in _secrets:
            _secrets.add(value)
            _ordered = tuple(sorted(_secrets, key=len, reverse=True))


def register_from_env(env: Mapping[str, str]) -> list[str]:
    """Register the values of every variable whose name says it is a secret; their names."""
    names = []
    for name, value in env.items():
        if value and SECRET_NAME.search(name):
            register_secret(value)
            names.append(name)
    return names


def secrets() -> Iterable[str]:
    return _ordered


def redact(text: str) -> str:
    if not text:
        return text
    for value in _ordered:
        if value in text:
            text = text.replace(value, MASK)
    for shape in _SHAPES:
        if shape.groups:
            text = shape.sub(lambda m: m.group(1) + MASK, text)
        else:
            text = shape.sub(MASK, text)
    return text


def redact_obj(value: Any) -> Any:
    """``redact`` applied to every string inside dicts, lists and tuples."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_obj(k): redact_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_obj(v) for v in value]
    return value


def one_line(message: Any, limit: int = 300) -> str:
    """A redacted, single-line, bounded message (error texts from providers can be pages)."""
    text = " ".join(str(message).split())
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
