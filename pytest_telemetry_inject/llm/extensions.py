"""The language of a file from its extension, without any language module: for the
traditional pipeline, which handles languages that have no templates."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class LanguageInfo:
    name: str
    comment: str
    """How a line comment starts (the marker of inserted lines goes after it)."""
    grammar: str = ""
    """The tree-sitter grammar wheel's module, when one exists (tree_sitter_go, ...)."""
    grammar_function: str = "language"


_TABLE: dict[str, LanguageInfo] = {}


def _add(extensions: str, name: str, comment: str, grammar: str = "", function: str = "language") -> None:
    for extension in extensions.split():
        _TABLE[extension] = LanguageInfo(name, comment, grammar, function)


_add(".py .pyw", "python", "#", "tree_sitter_python")
_add(".js .mjs .cjs .jsx", "javascript", "//", "tree_sitter_javascript")
_add(".ts .mts .cts", "typescript", "//", "tree_sitter_typescript", "language_typescript")
_add(".tsx", "tsx", "//", "tree_sitter_typescript", "language_tsx")
_add(".go", "go", "//", "tree_sitter_go")
_add(".rs", "rust", "//", "tree_sitter_rust")
_add(".java", "java", "//", "tree_sitter_java")
_add(".kt .kts", "kotlin", "//", "tree_sitter_kotlin")
_add(".swift", "swift", "//", "tree_sitter_swift")
_add(".c .h", "c", "//", "tree_sitter_c")
_add(".cc .cpp .cxx .hpp .hh .hxx", "cpp", "//", "tree_sitter_cpp")
_add(".cs", "c_sharp", "//", "tree_sitter_c_sharp")
_add(".rb", "ruby", "#", "tree_sitter_ruby")
_add(".php", "php", "//", "tree_sitter_php", "language_php")
_add(".lua", "lua", "--", "tree_sitter_lua")
_add(".sh .bash", "bash", "#", "tree_sitter_bash")
_add(".r", "r", "#")
_add(".scala .sc", "scala", "//", "tree_sitter_scala")
_add(".dart", "dart", "//")
_add(".ex .exs", "elixir", "#")
_add(".erl .hrl", "erlang", "%")
_add(".hs", "haskell", "--", "tree_sitter_haskell")
_add(".jl", "julia", "#", "tree_sitter_julia")
_add(".pl .pm", "perl", "#")
_add(".zig", "zig", "//")
_add(".nim", "nim", "#")
_add(".clj .cljs", "clojure", ";")
_add(".sql", "sql", "--")
_add(".m", "objective_c", "//")
_add(".vb", "vbnet", "'")
_add(".ps1", "powershell", "#")


def language_of(path: str) -> LanguageInfo | None:
    """The language of ``path`` by its extension; None for files that are not source."""
    return _TABLE.get(os.path.splitext(path)[1].lower())


def known_extensions() -> list[str]:
    return sorted(_TABLE)
