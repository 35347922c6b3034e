"""How many tokens a model takes in and gives out: ``TokenDetector.limits(model)``.

Sources, first that answers wins:

1. the user's cache (``$XDG_CACHE_HOME/pytest-telemetry-inject/token_limits.json``, else
   ``~/.cache/...``; entries live a week), unless ``OLLAMA_NUM_CTX`` is set;
2. Ollama models: ``OLLAMA_NUM_CTX``, else the server's ``/api/show`` (a ``num_ctx``
   parameter of the model file, else the model's context length, capped: Ollama is asked
   for that window with every request);
   other models: litellm's model info (``max_input_tokens`` / ``max_output_tokens``);
3. a table of known models;
4. a conservative default: 8192 in, 2048 out.

A prompt that does not fit is split by function by its caller, or refused with
``PromptTooLarge`` (one line that says what to do).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import TelemetryInjectError
from ..trace import DEBUG, TRACE
from .config import LLMConfig, ModelSpec

DEFAULT_INPUT, DEFAULT_OUTPUT = 8192, 2048
OLLAMA_CONTEXT_CAP = 32768
"""The largest window asked of Ollama by default (VRAM grows with it); OLLAMA_NUM_CTX overrides."""
CACHE_TTL = 7 * 24 * 3600.0
BYTES_PER_TOKEN = 3.0
"""For fitting prompts: code averages 3.5-4 bytes a token; 3 errs on the safe side."""

# (pattern on the model name without its prefix, input limit, output limit)
KNOWN_LIMITS: tuple[tuple[str, int, int], ...] = (
    (r"^gpt-4\.1", 1_047_576, 32_768),
    (r"^gpt-4o", 128_000, 16_384),
    (r"^gpt-4-turbo", 128_000, 4_096),
    (r"^gpt-4(-\d+)?$", 8_192, 4_096),
    (r"^gpt-3\.5-turbo", 16_385, 4_096),
    (r"^gpt-5", 272_000, 128_000),
    (r"^o[134](-mini|-preview)?", 200_000, 100_000),
    (r"^claude-(opus-4|4-opus)", 200_000, 32_000),
    (r"^claude-(sonnet-4|4-sonnet|3-7-sonnet)", 200_000, 64_000),
    (r"^claude-3-5", 200_000, 8_192),
    (r"^claude-(haiku-4|3-5-haiku)", 200_000, 8_192),
    (r"^claude-3", 200_000, 4_096),
    (r"^claude", 200_000, 8_192),
    (r"^gemini-(1\.5|2\.0|2\.5)-pro", 1_048_576, 8_192),
    (r"^gemini", 1_048_576, 8_192),
    (r"^llama3\.[123]", 131_072, 4_096),
    (r"^llama3", 8_192, 2_048),
    (r"^(qwen2\.5|qwen3)", 32_768, 8_192),
    (r"^(codellama|deepseek-coder:)", 16_384, 4_096),
    (r"^deepseek-coder-v2", 163_840, 8_192),
    (r"^(mistral|mixtral)", 32_768, 4_096),
    (r"^phi[34]", 16_384, 4_096),
    (r"^gemma3", 131_072, 8_192),
    (r"^gemma", 8_192, 2_048),
)


class PromptTooLarge(TelemetryInjectError):
    """A prompt does not fit a model's input limit."""


@dataclass(frozen=True)
class TokenLimits:
    input: int
    output: int
    source: str


def estimate_tokens(text: str) -> int:
    return tokens_of_bytes(len(text.encode("utf-8", "surrogatepass")))


def tokens_of_bytes(size: int) -> int:
    """The estimate of ``estimate_tokens`` for a text of ``size`` bytes."""
    return math.ceil(size / BYTES_PER_TOKEN) + 4


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-telemetry-inject" / "token_limits.json"


Fetch = Callable[[str, dict[str, Any]], dict[str, Any]]


def _post_json(url: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (a configured server)
        answer: dict[str, Any] = json.loads(response.read() or b"{}")
        return answer


class TokenDetector:
    def __init__(self, config: LLMConfig, *, cache_path: Path | None = None, fetch: Fetch | None = None) -> None:
        self.config = config
        self.cache_path = cache_path or cache_file()
        self.fetch = fetch or _post_json
        self._memory: dict[str, TokenLimits] = {}

    def limits(self, model: ModelSpec) -> TokenLimits:
        key = f"{model.name}@{model.api_base}"
        if key in self._memory:
            return self._memory[key]
        found = None
        if model.provider == "ollama" and self.config.ollama_num_ctx:
            ctx = self.config.ollama_num_ctx
            found = TokenLimits(ctx, _ollama_output(ctx), "OLLAMA_NUM_CTX")
        if found is None:
            found = self._cached(key)
        if found is None:
            found = self._ollama(model) if model.provider == "ollama" else self._litellm(model)
            found = found or _known(model) or TokenLimits(DEFAULT_INPUT, DEFAULT_OUTPUT, "default")
            self._store(key, found)
        self._memory[key] = found
        if TRACE.on:
            TRACE.event(DEBUG, "tokens", "limits", model=model.name, input=found.input, output=found.output,
                        source=found.source)
        return found

    def check_fit(self, model: ModelSpec, prompt: str, output_tokens: int) -> int:
        """The estimated tokens of ``prompt``; PromptTooLarge when it and the answer do not fit."""
        limits = self.limits(model)
        tokens = estimate_tokens(prompt)
        answer = min(output_tokens, limits.output)
        if tokens + answer > limits.input:
            # What is left matters, not the limit: the answer's tokens come out of it too.
            left = max(0, limits.input - tokens)
            raise PromptTooLarge(f"{model.name}: the prompt (~{tokens} tokens) does not fit: it leaves ~{left} of "
                                 f"its {limits.input} tokens (from {limits.source}) for the answer, which needs "
                                 f"{answer}; a prompt may have ~{max(0, limits.input - answer)} tokens. Use a "
                                 "model with a larger context or smaller files")
        return tokens

    # -- sources ----------------------------------------------------------------------------

    def _ollama(self, model: ModelSpec) -> TokenLimits | None:
        base = model.api_base or self.config.ollama_host
        try:
            info = self.fetch(f"{base}/api/show", {"model": model.short})
        except (OSError, ValueError, urllib.error.URLError):
            return None
        parameters = str(info.get("parameters") or "")
        match = re.search(r"(?m)^\s*num_ctx\s+(\d+)", parameters)
        if match:
            ctx = int(match.group(1))
            return TokenLimits(ctx, _ollama_output(ctx), "ollama /api/show num_ctx")
        for name, value in (info.get("model_info") or {}).items():
            if name.endswith(".context_length") and isinstance(value, int) and value > 0:
                ctx = min(value, OLLAMA_CONTEXT_CAP)
                return TokenLimits(ctx, _ollama_output(ctx), "ollama /api/show context_length")
        return None

    def _litellm(self, model: ModelSpec) -> TokenLimits | None:
        try:
            from ._litellm import load_litellm

            info = load_litellm().get_model_info(model.name)
        except Exception:  # not mapped, not installed: the table and the default follow
            return None
        max_in = info.get("max_input_tokens") or info.get("max_tokens")
        max_out = info.get("max_output_tokens") or info.get("max_tokens")
        if not max_in:
            return None
        return TokenLimits(int(max_in), int(max_out or DEFAULT_OUTPUT), "litellm model info")

    # -- the user's cache -------------------------------------------------------------------

    def _read_cache(self) -> dict[str, Any]:
        try:
            with open(self.cache_path, encoding="utf-8") as handle:
                data = json.load(handle)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _cached(self, key: str) -> TokenLimits | None:
        entry = self._read_cache().get(key)
        if not isinstance(entry, dict) or time.time() - float(entry.get("at", 0)) > CACHE_TTL:
            return None
        try:
            return TokenLimits(int(entry["input"]), int(entry["output"]), f"cache ({entry['source']})")
        except (KeyError, TypeError, ValueError):
            return None

    def _store(self, key: str, limits: TokenLimits) -> None:
        data = self._read_cache()
        data[key] = {**asdict(limits), "at": time.time()}
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.cache_path.with_name(f"{self.cache_path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(data, indent=1), encoding="utf-8")
            os.replace(temporary, self.cache_path)
        except OSError:
            pass  # a cache that cannot be written only costs a lookup next time


def _ollama_output(ctx: int) -> int:
    return max(256, min(4096, ctx // 4))


def _known(model: ModelSpec) -> TokenLimits | None:
    name = model.short.lower()
    for pattern, max_in, max_out in KNOWN_LIMITS:
        if re.search(pattern, name):
            return TokenLimits(max_in, max_out, "known limits table")
    return None
