"""Everything one run of the LLM layer shares: configuration (with GPU routing), the budget,
token limits, the client and the strategy that picks models."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from .client import LLMClient
from .config import LLMConfig
from .cost import CostTracker
from .gpu import GPU, GPUScheduler
from .parallel import Asker, make_asker
from .tokens import TokenDetector


class LLMSession:
    def __init__(self, config: LLMConfig, *, ledger: str | os.PathLike[str] | None = None,
                 gpu_probes: Sequence[Callable[[], list[GPU]]] | None = None,
                 scheduler: GPUScheduler | None = None, tokens: TokenDetector | None = None) -> None:
        if not config.enabled:
            raise ValueError("no model is configured")
        self.scheduler: GPUScheduler | None = scheduler
        if any(m.provider == "ollama" for m in config.models):
            # Local models get a GPU each (or CPU mode); with one server per GPU their
            # requests go to the server of their GPU.
            if self.scheduler is None:
                self.scheduler = GPUScheduler(probes=gpu_probes)
            config = config.with_models(self.scheduler.route(config))
        self.config = config
        self.costs = CostTracker(config.budget, ledger)
        self.tokens = tokens or TokenDetector(config)
        self.client = LLMClient(config, costs=self.costs, tokens=self.tokens)
        self.asker: Asker = make_asker(self.client, config)
