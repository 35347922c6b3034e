"""The import hook: a finder on ``sys.meta_path`` that serves instrumented code.

Like pytest's assertion rewriting (its model), the finder bails out early on a cheap check
and asks the other finders on ``sys.meta_path`` for the spec (as Logfire's does) only for
candidate modules (and hands over the answer it got for a module that is not one: the
import system would get the same answer from the same finders); the loader is a
``SourceFileLoader`` (so ``importlib.resources``, ``python -m`` through ``get_code`` and
everything else keep working) whose ``get_code`` returns the instrumented module compiled
with the original positions. Compiled code is cached by content (source hash, settings,
tool and interpreter version), never by mtime, and never written to ``__pycache__``; it is
read back only with this machine's seal (engine/seal.py), its file name fixed to the module's.

It never breaks an import: on any error the original module is compiled and imported as
usual, and the problem is recorded for the session's report.

Two seams, as pytest's rewrite hook has, let a test drive the finder without importing
anything: ``_early_bailout`` (the decision from the name alone) and ``_find_spec`` (the
other finders' answer), an attribute a test can replace.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import marshal
import os
import sys
import threading
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import CodeType, ModuleType
from typing import TYPE_CHECKING

from ..plugin_registry import gc_paused

if TYPE_CHECKING:
    from ..engine.pipeline import Engine, FileResult

# The form of the compiled code (``engine.bytecode.CODE_FORM``: its comment lists them)
# and the interpreter's bytecode version: a cached code object of another form is compiled
# again. (The cache adds its own magic and this machine's seal around it.)
# (Read when first needed, from the bytecode module, which binding needs anyway: the
# compiler's import, with the Python language's, is not paid by a session that compiles
# nothing.)
@functools.cache
def _code_magic() -> bytes:
    from ..engine.bytecode import CODE_FORM

    return f"TI-CODE{CODE_FORM}".encode() + importlib.util.MAGIC_NUMBER


class HookState:
    """What the hook did, for the session's summary."""

    def __init__(self) -> None:
        self.instrumented: dict[str, str] = {}
        """module name -> file, for modules imported instrumented."""
        self.problems: dict[str, str] = {}
        """module name -> one-line reason it was imported uninstrumented."""
        self.corrupt = 0
        """Cache entries found damaged or foreign (and rebuilt) while importing."""


class TelemetryFinder:
    """Finds the modules to instrument: those whose file ``wants(path)`` accepts, or, with
    explicit prefixes, those whose name starts with one of them."""

    def __init__(self, engine: Engine, wants: Callable[[str], bool], *, prefixes: tuple[str, ...] = (),
                 results: Callable[[str], FileResult | None] | None = None) -> None:
        self.engine = engine
        self.wants = wants
        self.prefixes = prefixes
        self.results = results
        self.state = HookState()
        self._busy = threading.local()
        self._skip_tops = set(sys.stdlib_module_names) | set(sys.builtin_module_names) | {
            "pytest", "_pytest", "pluggy", "py", "pytest_telemetry_inject", "tree_sitter", "tree_sitter_python",
            "xdist", "execnet", "coverage", "pytest_cov", "filelock", "tqdm", "dotenv", "opentelemetry"}

    # -- the finder ------------------------------------------------------------------------

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if getattr(self._busy, "active", False):
            return None  # an import made by the engine itself, or our own question to the others
        if self._early_bailout(fullname):
            return None
        self._busy.active = True
        self._busy.settled = False
        try:
            spec = self._find_spec(fullname, path, target)
        finally:
            self._busy.active = False
        if spec is None:
            return None
        if not self._claims(spec):
            # Not ours: the import system would now ask the same finders, in the same order,
            # and get this same answer; handing it over saves that second search (the stat
            # calls of every folder on the path, for each test module and dependency). Only
            # when every finder asked answered cleanly: after a failure the import system
            # asks again and raises it, as without this finder.
            return spec if self._busy.settled else None
        # Like Logfire's finder, we decide here, before any loader runs: once a loader is
        # returned the import is committed to it, and ours falls back to the original code.
        spec.loader = TelemetryLoader(fullname, spec.origin or "", self)
        return spec

    def _early_bailout(self, fullname: str) -> bool:
        """True when ``fullname`` cannot be a module to instrument, decided from the name
        alone, before any finder is asked or any file looked at (most imports are of the
        standard library and the tools around pytest): with prefixes, a name outside them;
        else a top-level package that is never the project's."""
        if self.prefixes:
            return not any(fullname == p or fullname.startswith(p + ".") for p in self.prefixes)
        return fullname.partition(".")[0] in self._skip_tops

    def _claims(self, spec: ModuleSpec) -> bool:
        """Whether the spec the import system would use is one to serve instrumented: a plain
        source file (``SourceFileLoader``, a ``.py`` origin) that the session wants. Namespace
        packages, extension modules, byte-compiled files, zip imports and any loader of
        someone else's are left to load as they would."""
        if not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return False
        origin = spec.origin or ""
        return origin.endswith(".py") and (bool(self.prefixes) or self.wants(origin))

    def _find_spec(self, fullname: str, path: Sequence[str] | None,
                   target: ModuleType | None) -> ModuleSpec | None:
        """The spec the import system would use without this finder (a seam for tests, as
        pytest's assertion rewriter has): every other finder on ``sys.meta_path`` is asked
        in turn (setuptools' editable finder, a project's own, the standard path finder), as
        the import system would, and the first answer is the one. A later finder's answer
        never replaces it: an earlier finder that gives an extension module or a zip import
        for the name decides what is imported, and the module is not ours.

        One case none of them answers: pytest's ``--import-mode=importlib`` looks a
        package up by its own folder (``find_spec("pkg", ["<root>/pkg"])``) and, when no
        finder answers, loads its ``__init__.py`` itself, uninstrumented. That lookup is
        answered here with the package's spec."""
        failed = False
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            try:
                spec = finder.find_spec(fullname, path, target)
            except Exception:  # another finder's failure is not ours to raise
                failed = True
                continue
            if spec is not None:
                self._busy.settled = not failed
                return spec
        return _package_by_folder(fullname, path)

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def uninstall(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass

    # -- compiling -------------------------------------------------------------------------

    def instrumented_code(self, fullname: str, path: str, data: bytes) -> CodeType | None:
        """The instrumented module's code, or None when it is left as it is (reason recorded)."""
        self._busy.active = True
        try:
            with gc_paused():  # (the module's own code runs after, with the collector back on)
                return self._instrumented_code(fullname, path, data)
        finally:
            self._busy.active = False

    def _instrumented_code(self, fullname: str, path: str, data: bytes) -> CodeType | None:
        result = self.engine.instrument(data, path, import_name="")
        self.state.corrupt += result.counters.corrupt
        if result.status == "unchanged" and result.output is None:
            return None  # nothing to instrument
        if result.output is None:
            self.state.problems[fullname] = result.reason or result.status
            return None
        key = self._code_key(data, result.output)
        code = self._load_code(key, path)
        if code is None:
            from ..engine.compiler import compile_mapped  # (only on a miss: see _code_magic)

            text = result.output.decode(_encoding_of(result.output))
            line_map = result.get_line_map()
            if line_map is None:
                self.state.problems[fullname] = "no line map"
                return None
            code = compile_mapped(text.lstrip("\ufeff"), line_map, path, style=self.engine.settings.style,
                                  bindable=True)
            self._store_code(key, code)
        self.state.instrumented[fullname] = path
        return _bound(code, fullname if self.engine.settings.target == "runtime" else None)

    def _code_key(self, data: bytes, output: bytes) -> str:
        """The compiled code's cache key: the source and the instrumented text it is compiled
        from (the same source can have another output: after an LLM repair, say)."""
        from .. import __version__

        parts = (__version__, self.engine.output_fingerprint, sys.implementation.cache_tag or "",
                 _code_magic().decode("latin-1"), hashlib.sha256(data).hexdigest(), hashlib.sha256(output).hexdigest())
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    def _load_code(self, key: str, path: str) -> CodeType | None:
        """Compiled code from the cache: only with this machine's seal (marshal runs no code,
        but the code it gives back is executed), and fixed to the file it is loaded for (the
        key is the content's, so it may have been compiled for an identical file elsewhere,
        or before the project moved: pytest's ``_fix_code_filename`` does the same)."""
        cache = self.engine.cache
        if cache is None:
            return None
        before = cache.counters.corrupt
        data = cache.read_code(key)
        self.state.corrupt += cache.counters.corrupt - before
        cache.counters.corrupt = before  # counted here, not again with the next file's result
        magic = _code_magic()
        if data is None or not data.startswith(magic):
            return None
        try:
            code = marshal.loads(data[len(magic):])
        except (ValueError, EOFError, TypeError):
            return None
        if not isinstance(code, CodeType):
            return None
        return _fix_filename(code, path) if code.co_filename != path else code

    def _store_code(self, key: str, code: CodeType) -> None:
        cache = self.engine.cache
        if cache is not None:
            cache.write_code(key, _code_magic() + marshal.dumps(code))


def _package_by_folder(fullname: str, path: Sequence[str] | None) -> ModuleSpec | None:
    """The spec of package ``fullname`` looked up by its own folder (``path`` is that one
    folder, named as the package's last part, with an ``__init__.py``), or None."""
    if not isinstance(path, (list, tuple)) or len(path) != 1 or not isinstance(path[0], str):
        return None
    folder = path[0]
    init = os.path.join(folder, "__init__.py")
    if os.path.basename(os.path.normpath(folder)) == fullname.rpartition(".")[2] and os.path.isfile(init):
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[folder])
    return None


def _bound(code: CodeType, module: str | None) -> CodeType:
    """``code`` with each try-form function's site bound into it (``bytecode.bind_sites``), on
    every load, cached or not: its ``end()`` then skips the lookup of the site by name, and
    its entry can leave a sampled site's calls untimed. A site the runtime cannot give (or
    ``module`` None: not the runtime's target) leaves its function unbound (it finds its site
    by name)."""
    from ..engine.bytecode import bind_sites
    from ..runtime import _core

    def site_of(name: str, function: CodeType) -> object:
        if module is None:
            return None
        try:
            return _core.bind_site(module, name, function.co_filename, function.co_firstlineno)
        except Exception:
            return None

    return bind_sites(code, site_of)


def _fix_filename(code: CodeType, path: str) -> CodeType:
    """``code`` and every code object in it with ``co_filename`` set to ``path``."""
    constants = tuple(_fix_filename(c, path) if isinstance(c, CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=path, co_consts=constants)


class TelemetryLoader(importlib.machinery.SourceFileLoader):
    """A source loader whose code is the instrumented module's (the original on any error)."""

    def __init__(self, fullname: str, path: str, finder: TelemetryFinder) -> None:
        super().__init__(fullname, path)
        self._finder = finder

    def get_code(self, fullname: str) -> CodeType | None:
        path = self.get_filename(fullname)
        try:
            data = self.get_data(path)
            code = self._finder.instrumented_code(fullname, path, data)
        except Exception as exc:  # never break an import
            self._finder.state.problems[fullname] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            code = None
        if code is not None:
            return code
        return super().get_code(fullname)


def _encoding_of(data: bytes) -> str:
    from ..sourcefile import detect_encoding

    return detect_encoding(data)[0]
