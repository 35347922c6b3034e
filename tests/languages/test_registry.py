"""The language registry: built-in languages are found by extension without importing the
others."""

from __future__ import annotations

import subprocess
import sys

from pytest_telemetry_inject import languages
from pytest_telemetry_inject.languages import get_language, language_for


def test_each_builtin_extension_finds_its_language() -> None:
    for name, (_module, _cls, extensions, interpreters) in languages.BUILTIN.items():
        language = get_language(name)
        assert language.name == name
        assert tuple(language.extensions) == extensions
        assert tuple(language.interpreters) == interpreters
        for ext in extensions:
            assert language_for(f"file{ext}") is language
            assert language_for(f"FILE{ext.upper()}") is language


def test_a_python_file_imports_the_python_language_only() -> None:
    code = ("import sys\n"
            "from pytest_telemetry_inject.languages import language_for\n"
            "assert language_for('pkg/mod.py').name == 'python'\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('pytest_telemetry_inject.languages.'))\n"
            "print(loaded)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['pytest_telemetry_inject.languages.base', 'pytest_telemetry_inject.languages.python']"


def test_shebang_and_unknown_files() -> None:
    assert language_for("tool", b"#!/usr/bin/env python3\nprint(1)\n").name == "python"
    assert language_for("tool", b"#!/usr/bin/env node\n").name == "javascript"
    assert language_for("notes.txt", b"#!/usr/bin/env python3\n") is None
    assert language_for("tool", b"no shebang\n") is None
