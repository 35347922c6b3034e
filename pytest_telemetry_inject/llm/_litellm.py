"""litellm, imported once and only when first needed, and the error of a failed request.

``load_litellm`` is the only place litellm is imported: on the first request, or when a
price or a token limit is looked up in its tables (``cost``, ``tokens``). It sets
``LITELLM_LOCAL_MODEL_COST_MAP`` first (no download of the price table) and
``LITELLM_MODE=PRODUCTION`` (litellm would otherwise load a ``.env`` it finds near its own
files). Without litellm installed it raises ``LLMUnavailable``.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import threading
import time
import warnings
from typing import Any

from ..errors import TelemetryInjectError
from ..redact import one_line
from ..trace import INFO, TRACE


class LLMError(TelemetryInjectError):
    """A request failed; ``kind`` says how (auth, not_found, rate_limit, server, timeout,
    bad_request, bad_response, unavailable, error)."""

    def __init__(self, message: str, *, kind: str = "error", model: str = "", retryable: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(one_line(message))
        self.kind = kind
        self.model = model
        self.retryable = retryable
        self.retry_after = retry_after


class LLMUnavailable(LLMError, ImportError):
    """litellm is not installed."""


# -- litellm, imported once, lazily -------------------------------------------------------------

_LITELLM: Any = None
_IMPORT_LOCK = threading.Lock()


def _release_clients() -> None:
    """(At exit, before the interpreter tears its modules down) drop litellm's cached HTTP
    handlers (its client cache: where its completions keep them), so that their ``__del__`` runs now. It imports a module; run while the
    modules are torn down, that import waited forever on the import lock now and then
    (``--check-api`` hung after its "ok" line, one run in six on a loaded machine: the
    process's only thread in ``_get_module_lock``, called from
    ``AsyncHTTPHandler.__del__``)."""
    litellm = _LITELLM
    if litellm is None:
        return
    try:
        cache = getattr(getattr(litellm, "in_memory_llm_clients_cache", None), "cache_dict", None)
        if isinstance(cache, dict):
            cache.clear()
        gc.collect()
    except Exception:  # (never in the way of the exit)
        pass


def load_litellm() -> Any:
    global _LITELLM
    if _LITELLM is not None:
        return _LITELLM
    with _IMPORT_LOCK:
        if _LITELLM is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
            started = time.perf_counter()
            try:
                with warnings.catch_warnings():  # its own import-time warnings (pydantic) are not ours
                    warnings.simplefilter("ignore")
                    import litellm
            except ImportError:
                raise LLMUnavailable('the LLM layer needs litellm: pip install "pytest-telemetry-inject[llm]"',
                                     kind="unavailable") from None
            # pydantic warns about litellm's own types on their first use: not the user's concern.
            warnings.filterwarnings("ignore", message=r".*`ReadOnly` qualifier.*", category=UserWarning)
            atexit.register(_release_clients)  # (after litellm's own: runs before them)
            litellm.suppress_debug_info = True
            litellm.drop_params = True  # num_ctx and friends are dropped for providers without them
            litellm.telemetry = False
            for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
            _LITELLM = litellm
            if TRACE.on:
                TRACE.event(INFO, "llm.import", "litellm imported", seconds=round(time.perf_counter() - started, 3))
    return _LITELLM
