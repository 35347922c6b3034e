"""Languages are plugins: a module that answers the ``telemetry_inject_languages`` hook.

Third-party packages add languages through the ``pytest_telemetry_inject.languages`` entry
point group; the built-in ones are registered here.
"""

from __future__ import annotations

import os
from functools import lru_cache

import pluggy

from .base import FunctionRecord, Language, ParsedFile, StripResult, Template

__all__ = [
    "FunctionRecord",
    "Language",
    "ParsedFile",
    "StripResult",
    "Template",
    "all_languages",
    "get_language",
    "language_for",
]

PROJECT = "pytest_telemetry_inject"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class LanguageSpec:
    @hookspec
    def telemetry_inject_languages(self) -> list[Language]:  # type: ignore[empty-body]
        """Return the languages this plugin provides."""


class _Builtins:
    @hookimpl
    def telemetry_inject_languages(self) -> list[Language]:
        from .go import GoLanguage
        from .javascript import JavaScriptLanguage
        from .python import PythonLanguage
        from .typescript import TypeScriptLanguage

        return [PythonLanguage(), JavaScriptLanguage(), TypeScriptLanguage(), GoLanguage()]


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
    if name in _builtins():
        return _builtins()[name]
    try:
        return _registry()[name]
    except KeyError:
        raise KeyError(f"no language {name!r}; known: {', '.join(sorted(_registry()))}") from None


def language_for(path: str, head: bytes | None = None) -> Language | None:
    """The language of ``path``: by extension, else by the interpreter in a shebang line."""
    ext = os.path.splitext(path)[1].lower()
    for language in _builtins().values():
        if ext in language.extensions:
            return language
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
