"""The checks behind every generated test (and the validator, which runs the same checks).

``ScriptCheck`` holds one script, the original function source it was made for, the
language and the expected span name; each method is one property the script must have and
raises ``AssertionError`` with a one-line reason when it does not.
"""

from __future__ import annotations

import functools
import os
import types
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import TelemetryInjectError

if TYPE_CHECKING:
    from .languages import Language


def import_path(path: str | os.PathLike[str], name: str) -> types.ModuleType:
    """The Python file at ``path`` as module ``name``, imported once per process (test
    helpers and benchmarks are files of no package; they load each other with this)."""
    import importlib.util
    import sys

    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return module


class ScriptCheck:
    def __init__(self, script: str, *, language: str, span_name: str, original: str,
                 origin: str = "template") -> None:
        from .languages import BUILTIN, get_language

        if language not in BUILTIN:
            get_language(language)  # a name no language has fails here, as it always did
        self.script = script
        self.language_name = language
        self.span_name = span_name
        self.original = original
        self.origin = origin
        self._output: str | None = None
        self._transform: Callable[[str], str] | None = None

    @functools.cached_property
    def language(self) -> Language:
        """The language (its module imported only when a check runs: ``key`` needs the name
        alone, and a case that passed before is not run again)."""
        from .languages import get_language

        return get_language(self.language_name)

    @classmethod
    def for_test_file(cls, test_file: str, script_sha256: str, **kwargs: str) -> ScriptCheck:
        """The check for a generated test that lives in ``<cache>/tests/<language>/``."""
        from .engine.layout import CacheLayout
        from .engine.scripts import sha256_text

        layout, language = CacheLayout.of_test_module(test_file)
        path = layout.script(language, script_sha256)
        with open(path, encoding="utf-8") as handle:
            script = handle.read()
        if sha256_text(script) != script_sha256:
            raise AssertionError(f"{path} was changed after it was written (its sha256 no longer matches)")
        return cls(script, **kwargs)

    def run(self, source: str) -> str:
        """The script's output for ``source``: in this process for template scripts, in the
        sandbox for untrusted ones."""
        if self.origin == "template":
            if self._transform is None:
                from .engine.scripts import load_transform

                self._transform = load_transform(self.script)
            return self._transform(source)
        from .engine.sandbox import run_script

        return run_script(self.script, source)

    @property
    def output(self) -> str:
        if self._output is None:
            try:
                self._output = self.run(self.original)
            except TelemetryInjectError as exc:
                raise AssertionError(f"the script failed: {exc}") from None
            except Exception as exc:  # the script's own error, reported in one line
                raise AssertionError(f"the script raised {type(exc).__name__}: {exc}") from None
        return self._output

    def output_parses(self) -> None:
        problem = self.language.snippet_parses(self.output)
        if problem is not None:
            raise AssertionError(f"the output does not parse: {problem}")

    def strip_gives_back_the_original(self) -> None:
        stripped = self.language.strip(self.output).text
        if stripped != self.original and not self.language.equivalent(self.original, stripped):
            raise AssertionError("stripping the telemetry does not give back the original function")

    def span_name_is_the_qualname(self) -> None:
        names = [name for _line, name in self.language.strip(self.output).spans]
        if not names:
            raise AssertionError("the output has no span")
        if names[0] != self.span_name:
            raise AssertionError(f"the span is named {names[0]!r}, not {self.span_name!r}")

    def applying_twice_changes_nothing(self) -> None:
        try:
            again = self.run(self.output)
        except Exception as exc:
            raise AssertionError(f"applying the script to its output failed: {exc}") from None
        if again != self.output:
            raise AssertionError("applying the script to its own output changed it")

    def key(self, sha256: str) -> str:
        """What the outcome of ``run_all`` depends on (its inputs, this tool's version and the
        interpreter's): the same key, the same outcome."""
        import hashlib
        import sys

        from . import __version__

        parts = (__version__, sys.version, self.language_name, self.origin, sha256, self.span_name, self.original)
        return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()

    def run_all(self) -> list[str]:
        """Every check; the reasons of those that failed (empty: the script passed)."""
        failures = []
        for check in (self.output_parses, self.strip_gives_back_the_original,
                      self.span_name_is_the_qualname, self.applying_twice_changes_nothing):
            try:
                check()
            except AssertionError as exc:
                failures.append(str(exc))
            except TelemetryInjectError as exc:
                failures.append(f"{check.__name__.replace('_', ' ')}: {exc}")
                if check is self.output_parses:
                    break
        return failures

    def assert_all(self) -> None:
        failures = self.run_all()
        if failures:  # (raise, not assert: pytest rewrites asserts into many lines)
            raise AssertionError("; ".join(failures))
