"""One ``Settings`` object: defaults < ``[tool.telemetry-inject]`` < environment/.env < flags.

Every field is documented where it is declared; ``docs/configuration.md`` lists them all.
Environment variables are ``TELEMETRY_INJECT_<FIELD>`` (``TELEMETRY_INJECT_STYLE=decorator``);
``max_parallel`` also reads ``MAX_PARALLEL`` when no ``TELEMETRY_INJECT_MAX_PARALLEL`` is set;
pyproject keys may use dashes or underscores (``max-parallel`` or ``max_parallel``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

STYLES = ("with", "try", "decorator")
TARGETS = ("runtime", "vendored", "otel", "logging")
ENV_PREFIX = "TELEMETRY_INJECT_"
ENV_ALIASES = {"MAX_PARALLEL": "max_parallel"}
"""Unprefixed variables some settings also accept (the names of the tool this one replaces);
the prefixed variable wins wherever it is set (.env or the environment)."""


def _setting(default: Any, doc: str, *, output: bool = False, choices: tuple[str, ...] = ()) -> Any:
    meta = {"doc": doc, "output": output, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Settings:
    style: str = _setting(
        "with",
        "How the span is added: `with` wraps the body in a `with` block (no extra frame); `try` "
        "wraps it in try/except/finally (no extra frame, the fastest: no object per call); "
        "`decorator` adds one decorator line (the smallest diff).",
        output=True, choices=STYLES)
    target: str = _setting(
        "vendored",
        "What the inserted code calls: `runtime` (this package), `vendored` (a stdlib-only "
        "module written into the project), `otel` (the OpenTelemetry API), `logging` (stdlib).",
        output=True, choices=TARGETS)
    skip_trivial: bool = _setting(
        True, "Skip functions whose body is only a docstring, `pass` or `...`.", output=True)
    vendored_module: str = _setting(
        "", "Dotted import name of the vendored module. Empty: `telemetry_utils` inside each "
        "file's top-level package (beside a file that is in no package).", output=True)
    vendored_path: str = _setting(
        "", "Where to write the vendored module when `vendored_module` is set (relative to the "
        "project root). Empty: derived from the module name.")
    cache_dir: str = _setting(".telemetry_cache", "The cache folder, relative to the project root.")
    use_cache: bool = _setting(True, "Read and write the cache.")
    validate: bool = _setting(
        True, "Check every new insertion script (syntax, security allowlist, equivalence, "
        "its generated test) before it is used and cached.")
    max_parallel: int = _setting(0, "Worker processes for files; 0 means one per CPU.")
    parallel: bool = _setting(True, "Process files in parallel worker processes.")
    exclude: list[str] = _setting([], "Glob patterns (relative to the project root) of files to skip.")
    respect_gitignore: bool = _setting(True, "Inside a git repository, skip what git ignores.")

    # Where each value came from, for error messages ("from TELEMETRY_INJECT_STYLE").
    origins: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, root: str | os.PathLike[str] | None = None, *,
             env: Mapping[str, str] | None = None,
             overrides: Mapping[str, Any] | None = None,
             defaults: Mapping[str, Any] | None = None) -> Settings:
        """Settings for the project at ``root``. ``defaults`` replaces the built-in defaults
        (a front door's own, such as the pre-commit hook's decorator style)."""
        settings = cls()
        for name, value in (defaults or {}).items():
            settings._set(name, value, "defaults")
        root_path = Path(root) if root is not None else None
        if root_path is not None:
            pyproject = root_path / "pyproject.toml"
            for name, value in _read_pyproject(pyproject).items():
                settings._set(name, value, f"[tool.telemetry-inject] in {pyproject}")
        layers: list[tuple[Mapping[str, str], str]] = []
        if root_path is not None:
            dotenv = root_path / ".env"
            if dotenv.is_file():
                layers.append((_read_dotenv(dotenv), f" in {dotenv}"))
        layers.append((os.environ if env is None else env, ""))
        # An alias (MAX_PARALLEL, the seed tool's name) counts only where no prefixed
        # variable of the same setting is set, in .env or in the environment.
        prefixed = {name for values, _where in layers for name in _env_fields(values)}
        for values, where in layers:
            for name, value in _env_fields(values).items():
                settings._set(name, value, f"{ENV_PREFIX}{name.upper()}{where}")
            for alias, name in ENV_ALIASES.items():
                if name not in prefixed and str(values.get(alias) or "").strip():
                    settings._set(name, values[alias], f"{alias}{where}")
        for name, value in (overrides or {}).items():
            if value is not None:
                settings._set(name, value, "the command line")
        return settings

    def _set(self, name: str, value: Any, origin: str) -> None:
        key = name.replace("-", "_")
        fields = {f.name: f for f in dataclasses.fields(self) if f.name != "origins"}
        if key not in fields:
            raise ConfigError(f"unknown setting {name!r} ({origin}); known: {', '.join(sorted(fields))}")
        spec = fields[key]
        kind = type(spec.default) if spec.default is not dataclasses.MISSING else list
        try:
            value = _coerce(value, kind)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"setting {key} ({origin}): {exc}") from None
        choices = spec.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"setting {key} must be one of {', '.join(choices)}, not {value!r} ({origin})")
        if kind is int and value < 0:
            raise ConfigError(f"setting {key} must be >= 0, not {value} ({origin})")
        setattr(self, key, value)
        self.origins[key] = origin

    def output_fingerprint(self) -> str:
        """The settings that change what the engine writes, as a stable string (a cache key part)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.metadata.get("output")}
        return json.dumps(values, sort_keys=True, separators=(",", ":"))

    def workers(self) -> int:
        if not self.parallel:
            return 1
        return self.max_parallel or (os.cpu_count() or 1)


def _coerce(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected true or false, not {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, not {value!r}")
        return int(value)
    if kind is float:
        return float(value)
    if kind is list:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return [str(part) for part in value]
        raise ValueError(f"expected a list, not {value!r}")
    if not isinstance(value, str):
        raise ValueError(f"expected text, not {value!r}")
    return value


def _env_fields(env: Mapping[str, str]) -> dict[str, str]:
    names = {f.name for f in dataclasses.fields(Settings) if f.name != "origins"}
    found = {}
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX):].lower()
            if name in names:
                found[name] = value
    return found


def read_tool_table(path: Path, *sub: str) -> dict[str, Any]:
    """``[tool.telemetry-inject]`` (or a sub-table of it, such as ``llm``) of a pyproject.toml;
    {} when the file or the table is absent; a ConfigError when it cannot be read.

    A file that cannot hold the table is not parsed (the parse costs a session's start ~1 ms,
    the TOML parser's import ~3 ms more when pytest did not need it, and most projects'
    pyproject.toml is only other tools'). The key ``telemetry-inject`` can be written only as
    itself (bare, or quoted: a literal string has no escapes) or in a basic string with
    ``\\u``/``\\U`` escapes (no other escape makes a letter or a hyphen), so a file with
    neither is not ours to read, even when it is broken."""
    if not path.is_file():
        return {}
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"telemetry-inject" not in raw and b"\\u" not in raw and b"\\U" not in raw:
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    section, name = data.get("tool", {}).get("telemetry-inject", {}), "tool.telemetry-inject"
    for part in sub:
        if not isinstance(section, dict):
            break
        section, name = section.get(part, {}), f"{name}.{part}"
    if not isinstance(section, dict):
        raise ConfigError(f"[{name}] in {path} must be a table")
    return section


def _read_pyproject(path: Path) -> dict[str, Any]:
    # Sub-tables belong to other parts (the pytest plugin, the LLM layer); keep plain values.
    return {k: v for k, v in read_tool_table(path).items() if not isinstance(v, dict)}


def _read_dotenv(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def find_project_root(start: str | os.PathLike[str]) -> Path:
    """The nearest folder at or above ``start`` holding pyproject.toml, setup.cfg, setup.py or
    .git; else the current folder when ``start`` is inside it, else ``start``'s folder."""
    path = Path(start).resolve()
    if path.is_file():
        path = path.parent
    for folder in (path, *path.parents):
        for marker in ("pyproject.toml", ".git", "setup.cfg", "setup.py"):
            if (folder / marker).exists():
                return folder
    cwd = Path.cwd().resolve()
    if path == cwd or cwd in path.parents:
        return cwd
    return path
