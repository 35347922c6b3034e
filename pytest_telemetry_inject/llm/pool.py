"""``OllamaModelPool``: hands out models in turn (round robin), safe to share between threads.

With several local models (one per GPU, say) the ``round-robin`` strategy sends each
request to the next model, spreading the load; every hand-out is a ``model.rotation``
trace event.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..trace import DEBUG, TRACE
from .config import ModelSpec


class OllamaModelPool:
    def __init__(self, models: Sequence[ModelSpec]) -> None:
        if not models:
            raise ValueError("the model pool needs at least one model")
        self._models = list(models)
        self._next = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._models)

    @property
    def models(self) -> list[ModelSpec]:
        return list(self._models)

    def next(self, skip: frozenset[str] | set[str] = frozenset()) -> ModelSpec | None:
        """The next model in turn, passing over those named in ``skip`` (None if all are)."""
        with self._lock:
            for _ in range(len(self._models)):
                model = self._models[self._next % len(self._models)]
                self._next += 1
                if model.name not in skip:
                    if TRACE.on:
                        TRACE.event(DEBUG, "model.rotation", "next model", model=model.name, gpu=model.gpu,
                                    api_base=model.api_base, turn=self._next)
                    return model
        return None
