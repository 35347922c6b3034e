"""Which models, where, with which keys and limits: ``LLMConfig.load(root)``.

Order (later wins): defaults < ``[tool.telemetry-inject.llm]`` in pyproject.toml < the
project root's ``.env`` < the environment < command-line flags. API keys come only from
the environment or ``.env`` (a key in pyproject.toml is refused: it would be committed).

Environment:
    LLM_MODEL        one model, or several separated by commas
    LLM_PROVIDER     provider of model names that carry none (openai, anthropic, ollama, ...)
    LLM_BASE_URL     the server of every model (an OpenAI-compatible proxy, an Ollama host); --base-url
    LLM_TIMEOUT      seconds per request (default 600 for Ollama, 120 for cloud models)
    LLM_BUDGET       hard limit on the money spent in one run (USD)
    LLM_MAX_RETRIES  attempts per refactoring (default 3)
    LLM_STRATEGY     several models: parallel (first valid answer), round-robin, judge
    LLM_MAX_OUTPUT_TOKENS   cap on each answer (default: the model's output limit, <= 4096)
    LLM_INPUT_COST_PER_MTOK / LLM_OUTPUT_COST_PER_MTOK   prices of models litellm does not know
    OLLAMA_HOST      the Ollama server (default http://localhost:11434)
    OLLAMA_HOSTS     one server per GPU: gpu0=http://127.0.0.1:11434,gpu1=http://127.0.0.1:11435
    OLLAMA_NUM_CTX   the context window Ollama is asked for (and the input limit assumed)
    OPENAI_API_KEY, ANTHROPIC_API_KEY, <PROVIDER>_API_KEY, LLM_API_KEY   keys

This module is stdlib (plus python-dotenv) only: deciding whether an LLM is configured
must not import litellm.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..redact import register_from_env, register_secret
from ..settings import read_tool_table

OLLAMA_DEFAULT_HOST = "http://localhost:11434"
STRATEGIES = ("parallel", "round-robin", "judge", "single")
DEFAULT_MAX_RETRIES = 3
DEFAULT_REFLECTION_THRESHOLD = 2
OLLAMA_TIMEOUT = 600.0
CLOUD_TIMEOUT = 120.0

# Prefixes litellm understands, with the provider name used for keys and defaults.
_PREFIXES = {
    "ollama_chat": "ollama", "ollama": "ollama", "openai": "openai", "anthropic": "anthropic",
    "azure": "azure", "gemini": "gemini", "vertex_ai": "vertex_ai", "bedrock": "bedrock",
    "groq": "groq", "mistral": "mistral", "deepseek": "deepseek", "together_ai": "together_ai",
    "openrouter": "openrouter", "fireworks_ai": "fireworks_ai", "cohere": "cohere",
    "xai": "xai", "huggingface": "huggingface", "perplexity": "perplexity", "hosted_vllm": "hosted_vllm",
    "lm_studio": "lm_studio", "text-completion-openai": "openai",
}
# Model names without a prefix: the provider told by the name.
_NAME_HINTS = (
    (re.compile(r"^(gpt-|o[1-9](-|$)|chatgpt|text-davinci|davinci|babbage)"), "openai"),
    (re.compile(r"^claude"), "anthropic"),
    (re.compile(r"^gemini"), "gemini"),
    (re.compile(r"^(command|command-r)"), "cohere"),
    (re.compile(r"^grok"), "xai"),
    # Ollama tags (llama3.1:8b, qwen2.5-coder:7b) and the open models it usually serves.
    (re.compile(r"^[\w.\-]+:[\w.\-]+$"), "ollama"),
    (re.compile(r"^(llama|qwen|phi|gemma|mistral|mixtral|codellama|deepseek-coder|starcoder|codegemma|"
                r"granite|smollm|tinyllama|nemotron)"), "ollama"),
)
# Where each provider's key lives (besides <PROVIDER>_API_KEY and LLM_API_KEY).
KEY_VARIABLES = {
    "openai": ("OPENAI_API_KEY",), "anthropic": ("ANTHROPIC_API_KEY",), "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "azure": ("AZURE_API_KEY", "AZURE_OPENAI_API_KEY"), "mistral": ("MISTRAL_API_KEY",), "groq": ("GROQ_API_KEY",),
    "deepseek": ("DEEPSEEK_API_KEY",), "openrouter": ("OPENROUTER_API_KEY",), "together_ai": ("TOGETHERAI_API_KEY",),
    "xai": ("XAI_API_KEY",), "cohere": ("COHERE_API_KEY",), "huggingface": ("HF_TOKEN", "HUGGINGFACE_API_KEY"),
    "ollama": ("OLLAMA_API_KEY",),
}
LOCAL_PROVIDERS = frozenset({"ollama", "hosted_vllm", "lm_studio"})


@dataclass(frozen=True)
class ModelSpec:
    """One model, as litellm is asked for it."""

    name: str
    """The litellm model string: ``openai/gpt-4o-mini``, ``ollama_chat/llama3.1:8b``."""
    provider: str
    api_base: str = ""
    timeout: float = CLOUD_TIMEOUT
    gpu: str = ""
    """The GPU its Ollama server runs on (set by the GPU scheduler), ``cpu``, or ''."""

    @property
    def short(self) -> str:
        """The name without the provider prefix (what Ollama calls it)."""
        return self.name.split("/", 1)[1] if "/" in self.name else self.name

    @property
    def local(self) -> bool:
        return self.provider in LOCAL_PROVIDERS

    def __str__(self) -> str:
        return self.name


@dataclass
class LLMConfig:
    models: list[ModelSpec] = field(default_factory=list)
    provider: str = ""
    base_url: str = ""
    timeout: float | None = None
    budget: float | None = None
    max_retries: int = DEFAULT_MAX_RETRIES
    strategy: str = ""
    reflection_threshold: int = DEFAULT_REFLECTION_THRESHOLD
    max_output_tokens: int | None = None
    input_cost_per_mtok: float | None = None
    output_cost_per_mtok: float | None = None
    ollama_hosts: dict[str, str] = field(default_factory=dict)
    ollama_host: str = OLLAMA_DEFAULT_HOST
    ollama_num_ctx: int | None = None
    transport_retries: int = 2
    """Extra tries of one request after a 429, a 5xx or a dropped connection."""
    max_retry_wait: float = 60.0
    """The longest Retry-After honoured; a longer one ends the request with a clear message."""
    lessons_dir: Path | None = None
    root: Path = field(default_factory=Path.cwd)
    benchmark: bool = False
    env: dict[str, str] = field(default_factory=dict, repr=False)
    """Environment and .env merged (for keys); never printed."""

    @property
    def enabled(self) -> bool:
        return bool(self.models)

    @property
    def fingerprint(self) -> str:
        """What identifies this configuration's answers (models, in order)."""
        return ",".join(m.name for m in self.models)

    @property
    def effective_strategy(self) -> str:
        if self.benchmark:
            return "judge"
        if self.strategy:
            return self.strategy
        return "parallel" if len(self.models) > 1 else "single"

    def api_key(self, model: ModelSpec) -> str | None:
        """The key for ``model``'s provider, from the environment or .env (None: none needed
        or none set)."""
        names = KEY_VARIABLES.get(model.provider, ()) + (f"{model.provider.upper()}_API_KEY", "LLM_API_KEY")
        for name in names:
            value = self.env.get(name)
            if value:
                return value
        return None

    def key_variable(self, model: ModelSpec) -> str:
        names = KEY_VARIABLES.get(model.provider, (f"{model.provider.upper()}_API_KEY",))
        return names[0]

    @classmethod
    def load(cls, root: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None,
             overrides: Mapping[str, Any] | None = None) -> LLMConfig:
        root_path = Path(root) if root is not None else Path.cwd()
        values: dict[str, Any] = {}
        pyproject = root_path / "pyproject.toml"
        values.update(_read_pyproject(pyproject))
        origins = {key: f"{key.replace('_', '-')} in [tool.telemetry-inject.llm] of {pyproject}" for key in values}
        merged: dict[str, str] = {}
        dotenv = root_path / ".env"
        from_dotenv: dict[str, str] = {}
        if dotenv.is_file():
            from_dotenv = _read_dotenv(dotenv)
            merged.update(from_dotenv)
        process = os.environ if env is None else env
        merged.update(process)
        register_from_env(merged)
        values.update(_from_env(merged))
        for name, key in _ENV_NAMES.items():
            if str(process.get(name) or "").strip():
                origins[key] = name
            elif str(from_dotenv.get(name) or "").strip():
                origins[key] = f"{name} in {dotenv}"
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = value
                origins[key] = f"--{key.replace('_', '-')}"
        config = cls(root=root_path, env=merged)
        config._apply(values, merged, origins)
        return config

    def _apply(self, values: dict[str, Any], env: Mapping[str, str], origins: Mapping[str, str] | None = None) -> None:
        origins = origins or {}
        self.provider = str(values.get("provider") or "").strip().lower()
        self.base_url = check_base_url(values.get("base_url"), origins.get("base_url", "base_url"))
        self.timeout = _number(values.get("timeout"), "timeout", float)
        self.budget = _number(values.get("budget"), "budget", float)
        if self.budget is not None and self.budget < 0:
            raise ConfigError("the LLM budget must be >= 0 (it is in USD)")
        retries = _number(values.get("max_retries"), "max_retries", int)
        self.max_retries = DEFAULT_MAX_RETRIES if retries is None else max(1, retries)
        threshold = _number(values.get("reflection_threshold"), "reflection_threshold", int)
        self.reflection_threshold = DEFAULT_REFLECTION_THRESHOLD if threshold is None else max(1, threshold)
        self.max_output_tokens = _number(values.get("max_output_tokens"), "max_output_tokens", int)
        self.input_cost_per_mtok = _number(values.get("input_cost_per_mtok"), "input_cost_per_mtok", float)
        self.output_cost_per_mtok = _number(values.get("output_cost_per_mtok"), "output_cost_per_mtok", float)
        self.ollama_num_ctx = _number(values.get("ollama_num_ctx"), "OLLAMA_NUM_CTX", int)
        wait = _number(values.get("max_retry_wait"), "max_retry_wait", float)
        if wait is not None:
            self.max_retry_wait = wait
        transport = _number(values.get("transport_retries"), "transport_retries", int)
        if transport is not None:
            self.transport_retries = max(0, transport)
        self.benchmark = bool(values.get("benchmark") or False)
        strategy = str(values.get("strategy") or "").strip().lower()
        if strategy and strategy not in STRATEGIES:
            raise ConfigError(f"unknown LLM strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
        self.strategy = strategy
        host = str(values.get("ollama_host") or "").strip()
        if host:
            self.ollama_host = _with_scheme(host).rstrip("/")
        hosts = values.get("ollama_hosts")
        self.ollama_hosts = parse_hosts(hosts) if hosts else {}
        lessons = values.get("lessons_dir")
        self.lessons_dir = (self.root / str(lessons)) if lessons else None
        models = values.get("model") or values.get("models") or ""
        names = models if isinstance(models, list) else str(models).split(",")
        self.models = [self.model_spec(n.strip()) for n in names if str(n).strip()]

    def model_spec(self, name: str) -> ModelSpec:
        """``name`` as litellm wants it, with its provider, server and timeout."""
        provider, full = resolve_model(name, self.provider)
        if provider == "ollama":
            base = self.base_url or self.ollama_host
        else:
            base = self.base_url
        timeout = self.timeout if self.timeout is not None else (
            OLLAMA_TIMEOUT if provider in LOCAL_PROVIDERS else CLOUD_TIMEOUT)
        return ModelSpec(full, provider, base, timeout)

    def with_models(self, models: list[ModelSpec]) -> LLMConfig:
        return replace(self, models=list(models))


def resolve_model(name: str, default_provider: str = "") -> tuple[str, str]:
    """(provider, litellm model string) of a model name."""
    if not name:
        raise ConfigError("an empty model name; set LLM_MODEL=provider/model")
    prefix, sep, rest = name.partition("/")
    if sep and prefix in _PREFIXES:
        provider = _PREFIXES[prefix]
        if provider == "ollama":
            return provider, f"ollama_chat/{rest}"  # the chat endpoint keeps system prompts apart
        return provider, name
    provider = default_provider
    if not provider:
        for pattern, hinted in _NAME_HINTS:
            if pattern.search(name):
                provider = hinted
                break
    if not provider:
        raise ConfigError(f"cannot tell the provider of model {name!r}: prefix it (openai/{name}, "
                          f"anthropic/{name}, ollama/{name}) or set LLM_PROVIDER")
    if provider == "ollama":
        return provider, f"ollama_chat/{name}"
    return provider, f"{provider}/{name}"


def parse_hosts(value: Any) -> dict[str, str]:
    """``gpu0=http://h:11434,gpu1=http://h:11435`` (or a TOML table) as {gpu: url}."""
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = []
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ConfigError(f"OLLAMA_HOSTS entry {part!r} is not gpuN=URL "
                                  "(example: gpu0=http://127.0.0.1:11434,gpu1=http://127.0.0.1:11435)")
            key, address = part.split("=", 1)
            items.append((key.strip(), address.strip()))
    hosts = {}
    for gpu, url in items:
        gpu = str(gpu).lower()
        if not re.fullmatch(r"gpu\d+|cpu", gpu):
            raise ConfigError(f"OLLAMA_HOSTS names {gpu!r}: use gpu0, gpu1, ... or cpu")
        hosts[gpu] = _with_scheme(str(url)).rstrip("/")
    return hosts


def check_base_url(value: Any, origin: str) -> str:
    """The server URL of every model (LLM_BASE_URL, --base-url), without a trailing slash; ''
    when unset; a ConfigError in one line when it is not an http(s) URL with a host."""
    if value is None:
        return ""
    text = str(value).strip()
    if not text:
        if origin.startswith("--"):
            raise ConfigError(f"{origin} needs a URL, for example {origin} http://127.0.0.1:8000/v1")
        return ""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError as exc:
        problem = f"it cannot be read ({exc})"
    else:
        if any(c.isspace() or ord(c) < 32 for c in text):
            problem = "it holds a space or a control character"
        elif parts.scheme.lower() not in ("http", "https"):
            problem = "it does not start with http:// or https://"
        elif not host:
            problem = "it names no host"
        else:
            return text.rstrip("/")
    shown = re.sub(r"//[^/@]*@", "//***@", text)  # never echo credentials in a URL
    raise ConfigError(f"the LLM base URL {shown!r} ({origin}) is not usable: {problem}; for example "
                      "http://127.0.0.1:8000/v1 (an OpenAI-compatible server) or http://127.0.0.1:11434 (Ollama)")


def _with_scheme(url: str) -> str:
    return url if "://" in url else f"http://{url}"


_ENV_NAMES = {
    "LLM_MODEL": "model", "LLM_PROVIDER": "provider", "LLM_BASE_URL": "base_url", "LLM_TIMEOUT": "timeout",
    "LLM_BUDGET": "budget", "LLM_MAX_RETRIES": "max_retries", "LLM_STRATEGY": "strategy",
    "LLM_REFLECTION_THRESHOLD": "reflection_threshold", "LLM_MAX_OUTPUT_TOKENS": "max_output_tokens",
    "LLM_INPUT_COST_PER_MTOK": "input_cost_per_mtok", "LLM_OUTPUT_COST_PER_MTOK": "output_cost_per_mtok",
    "LLM_MAX_RETRY_WAIT": "max_retry_wait", "LLM_TRANSPORT_RETRIES": "transport_retries",
    "OLLAMA_HOST": "ollama_host", "OLLAMA_HOSTS": "ollama_hosts", "OLLAMA_NUM_CTX": "ollama_num_ctx",
    "LLM_LESSONS_DIR": "lessons_dir",
}
_PYPROJECT_KEYS = set(_ENV_NAMES.values()) | {"models", "benchmark"}


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    return {key: env[name] for name, key in _ENV_NAMES.items() if env.get(name, "").strip()}


def _number(value: Any, name: str, kind: type) -> Any:
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"LLM setting {name} must be a number, not {value!r}") from None


def _read_pyproject(path: Path) -> dict[str, Any]:
    """``[tool.telemetry-inject.llm]`` (the main settings loader leaves sub-tables alone)."""
    section = read_tool_table(path, "llm")
    values = {}
    for key, value in section.items():
        name = key.replace("-", "_")
        if "key" in name.lower() and name not in ("ollama_hosts",):
            register_secret(str(value))
            raise ConfigError(f"[tool.telemetry-inject.llm] in {path} holds {key!r}: API keys belong in the "
                              "environment or .env, never in pyproject.toml")
        if name not in _PYPROJECT_KEYS:
            raise ConfigError(f"unknown LLM setting {key!r} in [tool.telemetry-inject.llm] of {path}; known: "
                              + ", ".join(sorted(k.replace("_", "-") for k in _PYPROJECT_KEYS)))
        values[name] = value
    return values


def _read_dotenv(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def configured(root: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Whether a model is configured (cheap: reads settings, imports nothing heavy)."""
    try:
        return LLMConfig.load(root, env=env).enabled
    except ConfigError:
        return True  # let the caller load it again and report the error
