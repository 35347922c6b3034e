"""Set-up helpers: ``--configure`` (a wizard that writes .env), ``--check-api`` (a tiny
request to each configured model) and ``telemetry-inject models`` (what can be reached)."""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ..errors import ConfigError
from ..redact import one_line, register_secret
from .config import KEY_VARIABLES, LLMConfig, resolve_model

PROVIDERS = ("openai", "anthropic", "ollama", "other")
DEFAULT_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest", "ollama": "qwen2.5-coder:7b"}


# -- .env --------------------------------------------------------------------------------------------


def update_dotenv(path: Path, values: dict[str, str]) -> None:
    """Set ``values`` in the .env at ``path``, keeping every other line; mode 0600."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    done: set[str] = set()
    out = []
    for line in lines:
        name = line.split("=", 1)[0].strip().removeprefix("export ").strip() if "=" in line else ""
        if name in values:
            if name not in done and values[name] != "":
                out.append(f"{name}={_quote(values[name])}")
            done.add(name)
        else:
            out.append(line)
    for name, value in values.items():
        if name not in done and value != "":
            out.append(f"{name}={_quote(value)}")
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(out) + "\n")
    os.replace(temporary, path)
    os.chmod(path, 0o600)


def _quote(value: str) -> str:
    if any(c in value for c in " #'\"$\\"):
        return "'" + value.replace("'", "") + "'"
    return value


# -- the wizard ----------------------------------------------------------------------------------------


class Prompter:
    """Questions on a terminal (or any pair of streams, for tests); keys are read without echo."""

    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None,
                 secret: Callable[[str], str] | None = None) -> None:
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self._secret = secret

    def ask(self, question: str, default: str = "") -> str:
        suffix = f" [{default}]" if default else ""
        self.stdout.write(f"{question}{suffix}: ")
        self.stdout.flush()
        line = self.stdin.readline()
        if not line:
            raise EOFError("no answer (end of input)")
        return line.strip() or default

    def secret(self, question: str) -> str:
        if self._secret is not None:
            return self._secret(question + ": ")
        if self.stdin.isatty():
            return getpass.getpass(question + ": ", stream=self.stdout)
        self.stdout.write(question + ": ")
        self.stdout.flush()
        return self.stdin.readline().strip()

    def say(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()


def configure(root: Path, prompter: Prompter | None = None) -> int:
    """Ask for a provider, model, server, key and budget; write them to ``root/.env``."""
    prompter = prompter or Prompter()
    env_path = root / ".env"
    try:
        current = LLMConfig.load(root)
    except ConfigError as exc:  # the settings being replaced may be the broken ones
        prompter.say(f"  (the current settings cannot be used: {exc})")
        current = LLMConfig(root=root)
    prompter.say(f"telemetry-inject: configure the LLM layer (written to {env_path})")
    provider = ""
    while provider not in PROVIDERS:
        provider = prompter.ask(f"Provider ({', '.join(PROVIDERS)})", current.models[0].provider
                                if current.models and current.models[0].provider in PROVIDERS else "openai").lower()
        if provider not in PROVIDERS:
            prompter.say(f"  please answer one of: {', '.join(PROVIDERS)}")
    values: dict[str, str] = {}
    if provider == "ollama":
        host = prompter.ask("Ollama server", current.ollama_host)
        values["OLLAMA_HOST"] = host
        names = ollama_models(host)
        if names:
            prompter.say("  models on that server: " + ", ".join(names))
        model = prompter.ask("Model", names[0] if names else DEFAULT_MODELS["ollama"])
        values["LLM_PROVIDER"] = "ollama"
        values["LLM_MODEL"] = model
    else:
        if provider == "other":
            provider = prompter.ask("litellm provider name (groq, mistral, gemini, openrouter, ...)").lower()
        model = prompter.ask("Model", DEFAULT_MODELS.get(provider, ""))
        try:
            resolve_model(model, provider)
        except Exception as exc:
            prompter.say(f"telemetry-inject: error: {exc}")
            return 2
        values["LLM_PROVIDER"] = provider
        values["LLM_MODEL"] = model
        base = prompter.ask("Base URL (empty: the provider's own)", current.base_url)
        values["LLM_BASE_URL"] = base
        variable = KEY_VARIABLES.get(provider, (f"{provider.upper()}_API_KEY",))[0]
        have = bool(current.env.get(variable))
        key = prompter.secret(f"API key for {variable} (hidden{'; empty keeps the current one' if have else ''})")
        if key:
            register_secret(key)
            values[variable] = key
        elif not have:
            prompter.say(f"  no key given: set {variable} before using {model}")
    budget = prompter.ask("Budget per run in USD (empty: none)",
                          "" if current.budget is None else f"{current.budget:g}")
    if budget:
        try:
            float(budget)
        except ValueError:
            prompter.say(f"telemetry-inject: error: the budget {budget!r} is not a number")
            return 2
    values["LLM_BUDGET"] = budget
    answer = prompter.ask(f"Write {env_path}? (y/n)", "y").lower()
    if answer not in ("y", "yes"):
        prompter.say("telemetry-inject: nothing written")
        return 1
    update_dotenv(env_path, values)
    shown = {k: ("***" if k.endswith(("_KEY", "_TOKEN")) else v) for k, v in values.items() if v}
    prompter.say(f"telemetry-inject: wrote {env_path}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    if not _ignored_by_git(root):
        prompter.say("telemetry-inject: warning: .env holds a key and is not in .gitignore; add it there")
    prompter.say("telemetry-inject: next, 'telemetry-inject --check-api' tests the connection")
    return 0


def _ignored_by_git(root: Path) -> bool:
    ignore = root / ".gitignore"
    try:
        lines = [line.strip() for line in ignore.read_text(encoding="utf-8").splitlines()]
    except OSError:
        return False
    return any(line in (".env", "/.env", "*.env", ".env*") for line in lines)


# -- reachability ----------------------------------------------------------------------------------------


def ollama_models(host: str, timeout: float = 3.0) -> list[str]:
    """Model names on an Ollama server (/api/tags); [] when it cannot be reached."""
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/api/tags", timeout=timeout) as response:  # noqa: S310
            data = json.loads(response.read() or b"{}")
    except (OSError, ValueError, urllib.error.URLError):
        return []
    return [str(m.get("name") or m.get("model")) for m in data.get("models", []) if m.get("name") or m.get("model")]


def check_api(config: LLMConfig, out: TextIO | None = None) -> int:
    """One tiny request to each configured model; 0 when all answer, 3 otherwise."""
    from ._litellm import LLMError
    from .client import LLMClient
    from .cost import BudgetExceeded
    from .tokens import PromptTooLarge

    out = out or sys.stdout
    if not config.enabled:
        out.write("telemetry-inject: no model is configured (set LLM_MODEL, or run telemetry-inject --configure)\n")
        return 2
    client = LLMClient(config)
    failures = 0
    for model in config.models:
        key = config.api_key(model)
        where = model.api_base or "the provider's default server"
        if not model.local and not key:
            out.write(f"FAIL  {model.name}: no API key (set {config.key_variable(model)})\n")
            failures += 1
            continue
        started = time.perf_counter()
        try:
            response = client.complete(model, [{"role": "user", "content": "Reply with the single word OK."}],
                                       max_tokens=8, purpose="check-api")
        except (LLMError, BudgetExceeded, PromptTooLarge) as exc:
            out.write(f"FAIL  {model.name} ({where}): {one_line(exc)}\n")
            failures += 1
            continue
        out.write(f"ok    {model.name} ({where}): answered in {time.perf_counter() - started:.2f} s, "
                  f"{response.input_tokens}+{response.output_tokens} tokens, ${response.cost:.6f}\n")
    return 3 if failures else 0


def list_models(config: LLMConfig, *, gpus: Any = None) -> dict[str, Any]:
    """What can be reached: Ollama servers' models, configured cloud models (with whether
    their key is set, never its value), and a recommendation."""
    from .gpu import GPUScheduler, vram_needed_gb

    hosts = {"default": config.ollama_host, **config.ollama_hosts}
    if config.base_url and any(m.provider == "ollama" for m in config.models):
        hosts["configured"] = config.base_url
    local: list[dict[str, Any]] = []
    servers = []
    for label, host in dict.fromkeys(hosts.items()):
        names = ollama_models(host)
        servers.append({"server": host, "label": label, "reachable": bool(names)})
        for name in names:
            need, estimated = vram_needed_gb(name)
            local.append({"model": f"ollama_chat/{name}", "server": host, "vram_gb": need, "size_estimated": estimated})
    cloud = []
    for model in config.models:
        if model.local:
            continue
        cloud.append({"model": model.name, "key_variable": config.key_variable(model),
                      "key_set": bool(config.api_key(model)), "server": model.api_base or "provider default"})
    scheduler = GPUScheduler(gpus) if gpus is not None else GPUScheduler()
    recommendation = _recommend(local, cloud, scheduler)
    return {"gpus": [{"device": g.key, "name": g.name, "free_gb": round(g.free_gb, 2),
                      "total_gb": round(g.total_gb, 2)} for g in scheduler.gpus],
            "ollama_servers": servers, "local": local, "cloud": cloud, "recommendation": recommendation}


def _recommend(local: list[dict[str, Any]], cloud: list[dict[str, Any]], scheduler: Any) -> str:
    if local:
        biggest_free = max((g.free_gb for g in scheduler.gpus), default=0.0)
        fitting = [m for m in local if m["vram_gb"] <= biggest_free]
        if fitting:
            best = max(fitting, key=lambda m: m["vram_gb"])
            return f"{best['model']}: the largest local model that fits a GPU ({best['vram_gb']:.1f} GB)"
        if not scheduler.gpus:
            best = min(local, key=lambda m: m["vram_gb"])
            return f"{best['model']}: no GPU found, the smallest local model runs best on the CPU"
        best = min(local, key=lambda m: m["vram_gb"])
        return f"{best['model']}: no local model fits a GPU; this smallest one spills over"
    ready = [m for m in cloud if m["key_set"]]
    if ready:
        return f"{ready[0]['model']}: configured and its key is set"
    if cloud:
        return f"{cloud[0]['model']}: configured, but set {cloud[0]['key_variable']} first"
    return "none reachable: start Ollama (ollama serve) or run telemetry-inject --configure"


def print_models(data: dict[str, Any], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    if data["gpus"]:
        for gpu in data["gpus"]:
            out.write(f"gpu     {gpu['device']}: {gpu['name']}, "
                      f"{gpu['free_gb']:.1f} of {gpu['total_gb']:.1f} GB free\n")
    else:
        out.write("gpu     none found (CPU mode)\n")
    for server in data["ollama_servers"]:
        out.write(f"ollama  {server['server']}: {'reachable' if server['reachable'] else 'not reachable'}\n")
    for model in data["local"]:
        out.write(f"local   {model['model']}  (~{model['vram_gb']:.1f} GB VRAM) on {model['server']}\n")
    for model in data["cloud"]:
        state = "key set" if model["key_set"] else f"no key: set {model['key_variable']}"
        out.write(f"cloud   {model['model']}  ({state})\n")
    out.write(f"recommended: {data['recommendation']}\n")


