"""Languages are plugins: a module that answers the ``telemetry_inject_languages`` hook.

Third-party packages add languages through the ``pytest_telemetry_inject.languages`` entry
point group; the built-in ones are registered here.
"""

from __future__ import annotations

import importlib
import os
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .base import FunctionRecord, Language, ParsedFile, StripResult, Template

__all__ = [
    "FunctionRecord",
    "Language",
    "ParsedFile",
    "StripResult",
    "Template",
    "all_languages",
    "extensions_of",
    "get_language",
    "language_for",
    "language_name_for",
]

_BASE_NAMES = ("FunctionRecord", "Language", "ParsedFile", "StripResult", "Template")


def __getattr__(name: str) -> Any:
    # The base classes are imported when first asked for: a session whose files all come
    # from the memo never builds them (see language_name_for).
    if name in _BASE_NAMES:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


PROJECT = "pytest_telemetry_inject"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class LanguageSpec:
    @hookspec
    def telemetry_inject_languages(self) -> list[Language]:  # type: ignore[empty-body]  # a hook specification
        """Return the languages this plugin provides."""


# The built-in languages: name -> (module, class, extensions, shebang interpreters). The
# classes take their extensions and interpreters from here, so a file's language is found by
# importing that language's module alone, and its name (``language_name_for``: all a memo's
# key needs) by importing nothing: the pytest plugin's warm start-up imports no language.
BUILTIN: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...]]] = {
    "python": ("python", "PythonLanguage", (".py", ".pyw"), ("python", "pypy", "python3")),
    "javascript": ("javascript", "JavaScriptLanguage", (".js", ".mjs", ".cjs", ".jsx"),
                   ("node", "nodejs", "deno", "bun")),
    "typescript": ("typescript", "TypeScriptLanguage", (".ts", ".tsx", ".mts", ".cts"), ("ts-node", "tsx")),
    "go": ("go", "GoLanguage", (".go",), ()),
}
_BY_EXTENSION = {ext: name for name, spec in BUILTIN.items() for ext in spec[2]}


@cache
def _builtin(name: str) -> Language:
    module, cls = BUILTIN[name][:2]
    language: Language = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
    return language


class _Builtins:
    @hookimpl
    def telemetry_inject_languages(self) -> list[Language]:
        return [_builtin(name) for name in BUILTIN]


def _collect(manager: pluggy.PluginManager) -> dict[str, Language]:
    found: dict[str, Language] = {}
    for languages in manager.hook.telemetry_inject_languages():
        for language in languages:
            found.setdefault(language.name, language)
    return found


@lru_cache(maxsize=1)
def _builtins() -> dict[str, Language]:
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(LanguageSpec)
    manager.register(_Builtins(), "builtins")
    return _collect(manager)


@lru_cache(maxsize=1)
def _registry() -> dict[str, Language]:
    """Built-in languages and those of installed plugins. Reading entry points costs tens of
    milliseconds, so it waits until a file is in no built-in language."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(LanguageSpec)
    manager.register(_Builtins(), "builtins")
    manager.load_setuptools_entrypoints(f"{PROJECT}.languages")
    return {**_builtins(), **_collect(manager)}


def all_languages() -> dict[str, Language]:
    return dict(_registry())


def get_language(name: str) -> Language:
    if name in BUILTIN:
        return _builtin(name)
    try:
        return _registry()[name]
    except KeyError:
        raise KeyError(f"no language {name!r}; known: {', '.join(sorted(_registry()))}") from None


def language_name_for(path: str, head: bytes | None = None) -> str | None:
    """The name of ``path``'s language (``language_for``'s), found without importing a
    built-in language's module when its extension says which: a memo's key needs the name
    alone, and the plugin's warm start-up then imports no parser at all."""
    builtin = _BY_EXTENSION.get(os.path.splitext(path)[1].lower())
    if builtin is not None:
        return builtin
    language = language_for(path, head)
    return language.name if language is not None else None


def extensions_of(name: str) -> tuple[str, ...]:
    """A language's file extensions (a built-in one's without importing it)."""
    return BUILTIN[name][2] if name in BUILTIN else get_language(name).extensions


def language_for(path: str, head: bytes | None = None) -> Language | None:
    """The language of ``path``: by extension, else by the interpreter in a shebang line."""
    ext = os.path.splitext(path)[1].lower()
    builtin = _BY_EXTENSION.get(ext)
    if builtin is not None:
        return _builtin(builtin)
    registry = _registry()
    for language in registry.values():
        if ext in language.extensions:
            return language
    if ext or head is None or not head.startswith(b"#!"):
        return None
    first = head.split(b"\n", 1)[0].decode("latin-1").strip()
    words = first[2:].split()
    if not words:
        return None
    program = os.path.basename(words[0])
    if program == "env":
        args = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        program = args[0] if args else ""
    for language in registry.values():
        for interpreter in language.interpreters:
            if program == interpreter or (program.startswith(interpreter)
                                          and program[len(interpreter):].replace(".", "").isdigit()):
                return language
    return None
