"""The real toolchains' word on an instrumented file, where they are installed.

Tree-sitter sees the grammar only: not a name declared twice, not an ES module that calls
``require``, not what ``gofmt`` makes of a file. So before a JavaScript, TypeScript or Go
file is written (on cold instrumentation only: a file served from the memo was checked
when it was made), it must also pass what its own toolchain checks:

- JavaScript: Node.js compiles it the way it will load it (a CommonJS function body or an
  ES module, as ``node --check`` does: duplicate declarations and other early errors), and
  the runtime import is the kind that module system has (``require`` is not defined in an
  ES module).
- TypeScript: the TypeScript compiler's own parser (``ts.createSourceFile``) reports no
  syntax error.
- Go: ``gofmt`` reads it, formatting it then stripping the telemetry gives what formatting
  the original gives (and a gofmt-clean original stays gofmt-clean), and its package
  compiles (the instrumented file and the runtime laid over the tree with ``-overlay``,
  nothing written or linked) with no error the original does not have: once per package
  and process.

Where the original itself fails a check the toolchain cannot vouch for the output, and the
check is passed (the grammar checks still hold). A toolchain that is missing, times out or
breaks is no check at all, never a failure. The checks are batched where the toolchain
allows it: one Node.js process per process answers every JavaScript and TypeScript file of
a run. ``TELEMETRY_INJECT_TOOLCHAIN_CHECKS=0`` turns them off; ``STATS`` counts them and
the time they take (``bench/languages_realcode.py`` prints it).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Literal

STATS = {"checks": 0, "seconds": 0.0, "rejected": 0}
TIMEOUT = 60.0


def enabled() -> bool:
    return os.environ.get("TELEMETRY_INJECT_TOOLCHAIN_CHECKS", "1").strip().lower() not in ("0", "false", "no", "off")


class _Timer:
    def __enter__(self) -> _Timer:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        STATS["checks"] += 1
        STATS["seconds"] += time.perf_counter() - self.started


def _rejected(reason: str) -> str:
    STATS["rejected"] += 1
    return reason


# -- JavaScript and TypeScript: one Node.js process ------------------------------------------------

_NODE_SCRIPT = r"""
'use strict';
const vm = require('vm');
const readline = require('readline');
const loaded = new Map();
function where(error) {
  const first = String(error && error.stack || '').split('\n')[0];
  const found = /:(\d+)$/.exec(first);
  const message = String(error && error.message || error);
  return found ? `line ${found[1]}: ${message}` : message;
}
function check(request) {
  const source = request.source.replace(/^\uFEFF/, '').replace(/^#!.*/, (line) => '//' + line.slice(2));
  if (request.kind === 'cjs') {
    vm.compileFunction(source, ['exports', 'require', 'module', '__filename', '__dirname'], { filename: request.path });
    return null;
  }
  if (request.kind === 'esm') {
    new vm.SourceTextModule(source, { identifier: 'file://' + request.path });
    return null;
  }
  let ts = loaded.get(request.typescript);
  if (!ts) { ts = require(request.typescript); loaded.set(request.typescript, ts); }
  const kind = /x$/i.test(request.path) ? ts.ScriptKind.TSX : ts.ScriptKind.TS;
  const file = ts.createSourceFile(request.path, source, ts.ScriptTarget.Latest, false, kind);
  const found = file.parseDiagnostics || [];
  if (!found.length) return null;
  const at = file.getLineAndCharacterOfPosition(found[0].start || 0);
  return `line ${at.line + 1}: ${ts.flattenDiagnosticMessageText(found[0].messageText, ' ')}`;
}
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let request;
  try { request = JSON.parse(line); } catch (e) { return; }
  let error = null;
  try { error = check(request); } catch (e) { error = where(e); }
  process.stdout.write(JSON.stringify({ id: request.id, error }) + '\n');
});
"""


class _Node:
    """A Node.js process that checks sources sent to it, one JSON line each (started on
    first use, one per process: a forked worker starts its own)."""

    _lock = threading.Lock()
    _instance: _Node | None = None

    def __init__(self, binary: str) -> None:
        self.pid = os.getpid()
        self.proc = subprocess.Popen([binary, "--experimental-vm-modules", "--no-warnings", "-e", _NODE_SCRIPT],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.next_id = 0
        self.buffer = b""

    @classmethod
    def get(cls) -> _Node | None:
        binary = shutil.which("node")
        if binary is None:
            return None
        if cls._instance is None or cls._instance.pid != os.getpid() or cls._instance.proc.poll() is not None:
            cls._instance = _Node(binary)
        return cls._instance

    def ask(self, kind: str, path: str, source: str, typescript: str = "") -> str | None | Literal[False]:
        """The first problem found (None: none); False when Node.js gave no answer."""
        self.next_id += 1
        request = json.dumps({"id": self.next_id, "kind": kind, "path": path, "source": source,
                              "typescript": typescript}) + "\n"
        try:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(request.encode("utf-8", "surrogatepass"))
            self.proc.stdin.flush()
            deadline = time.monotonic() + TIMEOUT
            while b"\n" not in self.buffer:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
                if not ready:
                    raise TimeoutError
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    raise EOFError
                self.buffer += chunk
            line, _, self.buffer = self.buffer.partition(b"\n")
            answer = json.loads(line)
        except (OSError, ValueError, TimeoutError, EOFError, AssertionError):
            self.close()
            return False
        if answer.get("id") != self.next_id:
            self.close()
            return False
        error: str | None = answer.get("error")
        return error

    def close(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if _Node._instance is self:
            _Node._instance = None


@atexit.register
def _close_node() -> None:
    if _Node._instance is not None and _Node._instance.pid == os.getpid():
        _Node._instance.close()


def _node_check(kind: str, path: str, original: str, output: str, typescript: str = "") -> str | None:
    with _Node._lock:
        node = _Node.get()
        if node is None:
            return None
        problem = node.ask(kind, os.path.abspath(path), output, typescript)
        if problem is None or problem is False:
            return None
        before = node.ask(kind, os.path.abspath(path), original, typescript)
    if before is None:  # the original passes, the output does not
        return problem
    return None


def node_module_kind(path: str) -> str:
    """How Node.js loads ``path``: ``esm`` or ``cjs`` (by extension, then the ``type`` of
    the nearest package.json)."""
    lower = path.lower()
    if lower.endswith(".mjs"):
        return "esm"
    if lower.endswith(".cjs"):
        return "cjs"
    return "esm" if _package_type(str(Path(os.path.abspath(path)).parent)) == "module" else "cjs"


@lru_cache(maxsize=4096)
def _package_type(folder: str) -> str:
    probe = Path(folder)
    while True:
        candidate = probe / "package.json"
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return ""
            return data.get("type", "") if isinstance(data, dict) else ""
        if probe.parent == probe:
            return ""
        probe = probe.parent


def check_javascript(path: str, original: str, output: str, header: str) -> str | None:
    """None when Node.js accepts ``output`` as it will load it (or cannot vouch for it);
    else a one-line reason. ``header``: the kind of runtime import the file got
    (``require``, ``import`` or '' for none)."""
    if not enabled() or not os.path.isfile(path):
        return None
    with _Timer():
        kind = node_module_kind(path)
        if kind == "esm" and header == "require":
            return _rejected("the file is an ES module for Node.js (its package.json says \"type\": \"module\"), "
                             "where require() is not defined")
        if kind == "cjs" and header == "import" and not _has_esm_syntax(original):
            return _rejected("the file is CommonJS for Node.js, where an import declaration is a syntax error")
        if path.lower().endswith(".jsx"):
            return None
        problem = _node_check(kind, path, original, output)
        return _rejected(f"node: {problem}") if problem else None


_ESM_SYNTAX = re.compile(r"^\s*(?:import\s*[\w*{\"']|export\s)", re.M)


def _has_esm_syntax(text: str) -> bool:
    return bool(_ESM_SYNTAX.search(text))


def check_typescript(path: str, original: str, output: str) -> str | None:
    """None when TypeScript's own parser finds no syntax error in ``output`` (or cannot
    vouch for it, or is not installed); else a one-line reason."""
    if not enabled():
        return None
    typescript = typescript_module(str(Path(os.path.abspath(path)).parent))
    if typescript is None:
        return None
    with _Timer():
        problem = _node_check("ts", path, original, output, typescript)
        return _rejected(f"typescript: {problem}") if problem else None


def typescript_parse_errors(path: str, text: str) -> str | None | bool:
    """TypeScript's parser on ``text``: its first syntax error, None for none, False when no
    TypeScript compiler is at hand."""
    if not enabled():
        return False
    typescript = typescript_module(str(Path(os.path.abspath(path)).parent))
    if typescript is None:
        return False
    with _Node._lock:
        node = _Node.get()
        if node is None:
            return False
        return node.ask("ts", os.path.abspath(path), text, typescript)


@lru_cache(maxsize=1024)
def typescript_module(folder: str) -> str | None:
    """The TypeScript compiler's module (``.../typescript/lib/typescript.js``):
    ``$TELEMETRY_INJECT_TYPESCRIPT`` (the package folder or that file), else the nearest
    ``node_modules/typescript``, else the package of the ``tsc`` on PATH."""
    given = os.environ.get("TELEMETRY_INJECT_TYPESCRIPT", "").strip()
    candidates = []
    if given:
        candidates += [Path(given), Path(given) / "lib" / "typescript.js"]
    probe = Path(folder)
    while True:
        candidates.append(probe / "node_modules" / "typescript" / "lib" / "typescript.js")
        if probe.parent == probe:
            break
        probe = probe.parent
    tsc = shutil.which("tsc")
    if tsc:
        candidates.append(Path(os.path.realpath(tsc)).parent.parent / "lib" / "typescript.js")
    for candidate in candidates:
        if candidate.is_file() and candidate.name.endswith(".js"):
            return str(candidate)
    return None


# -- Go ---------------------------------------------------------------------------------------------

_VETTED: set[tuple[str, bool]] = set()


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GOPROXY", "off")  # never a download while instrumenting
    env.setdefault("GOTOOLCHAIN", "local")
    env.setdefault("GOFLAGS", "")
    return env


@lru_cache(maxsize=1)
def _gofmt() -> str | None:
    found = shutil.which("gofmt")
    if found:
        return found
    go = shutil.which("go")
    if go is None:
        return None
    try:
        root = subprocess.run([go, "env", "GOROOT"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    candidate = Path(root) / "bin" / "gofmt"
    return str(candidate) if candidate.is_file() else None


def _format(gofmt: str, text: str) -> tuple[str | None, str]:
    """(gofmt's output, its first error) for ``text``."""
    try:
        done = subprocess.run([gofmt, "-e"], input=text.encode("utf-8", "surrogatepass"), capture_output=True,
                              timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None, ""
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return None, (lines[0].replace("<standard input>", "line") if lines else "gofmt failed")
    return done.stdout.decode("utf-8", "surrogatepass"), ""


def check_go(path: str, original: str, output: str, import_path: str) -> str | None:
    """None when gofmt and the compiler accept ``output`` (the instrumented ``original`` at
    ``path``) or cannot vouch for it; else a one-line reason."""
    if not enabled():
        return None
    gofmt = _gofmt()
    if gofmt is None:
        return None
    with _Timer():
        formatted, error = _format(gofmt, output)
        if formatted is None:
            if not error:
                return None
            before, _ = _format(gofmt, original)
            return _rejected(f"gofmt: {error}") if before is not None else None
        # A gofmt-clean output strips to the original, which is then gofmt-clean too (the
        # telemetry's lines are gofmt's own): one gofmt run suffices for the common case.
        before, _ = (original, "") if formatted == output else _format(gofmt, original)
        if before is not None:
            from . import get_language

            go = get_language("go")
            try:
                stripped = go.strip(formatted).text
            except Exception as exc:  # noqa: BLE001 - whatever strip says, it is a failure here
                return _rejected(f"after gofmt, strip fails: {exc}")
            if stripped != before:
                return _rejected("after gofmt the telemetry does not strip back to the formatted original")
            if before == original and formatted != output:
                return _rejected("gofmt would change the output of a gofmt-clean file")
        if import_path and os.path.isfile(path):
            return _vet(path, output, import_path)
    return None


_FINDING = re.compile(r"^(?:vet: )?(.*?\.go):(\d+)(?::\d+)?: (.*)$")


def _findings(text: str) -> set[str]:
    found = set()
    for line in text.splitlines():
        match = _FINDING.match(line.strip())
        if match:
            found.add(f"{os.path.basename(match.group(1))}:{match.group(2)}: {match.group(3)}")
    return found


def _vet(path: str, output: str, import_path: str) -> str | None:
    """The package of ``path`` compiled with the output and the runtime laid over the tree
    (``go list -export -overlay``: the compiler reads overlays, nothing is written or
    linked), and with its tests when ``path`` is a test file: an error the original does not
    have is the output's. Once per package and process: what a compilation finds here (the
    runtime's import path, a name that clashes with it) is the package's. (``go vet``'s
    analyzers read the files on disk, not the overlay, in the Go versions this was written
    for: its type check is this compilation.)"""
    from .go_package import RUNTIME_FILE, TEST_MAIN_FILE, find_module, runtime_source, test_main_source

    folder = os.path.dirname(os.path.abspath(path))
    tests = path.endswith("_test.go")
    go = shutil.which("go")
    if go is None or (folder, tests) in _VETTED or (folder, False) in _VETTED:
        return None
    module_dir, module_path = find_module(Path(folder))
    if module_dir is None or not module_path or not (import_path == module_path or
                                                     import_path.startswith(module_path + "/")):
        return None  # GOPATH mode, or a path outside the module: go build will say
    runtime_dir = module_dir / import_path[len(module_path):].lstrip("/")
    command = [go, "list", *(["-test"] if tests else []), "-export", "-f", "{{.ImportPath}}"]
    with tempfile.TemporaryDirectory(prefix="telemetry-check-") as scratch:
        replace = {}
        for name, content, target in (
                ("output.go", output.encode("utf-8", "surrogatepass"), os.path.abspath(path)),
                ("runtime.go", runtime_source(), str(runtime_dir / RUNTIME_FILE.name)),
                ("main_test.go", test_main_source(folder, import_path), os.path.join(folder, TEST_MAIN_FILE))):
            if content is None:
                continue
            where = os.path.join(scratch, name)
            with open(where, "wb") as handle:
                handle.write(content)
            replace[target] = where
        overlay = os.path.join(scratch, "overlay.json")
        with open(overlay, "w", encoding="utf-8") as handle:
            json.dump({"Replace": replace}, handle)
        try:
            after = subprocess.run([*command, "-overlay", overlay, "."], cwd=folder, capture_output=True, text=True,
                                   timeout=300, env=_go_env())
            if after.returncode == 0:
                _VETTED.add((folder, tests))
                return None
            before = subprocess.run([*command, "."], cwd=folder, capture_output=True, text=True, timeout=300,
                                    env=_go_env())
        except (OSError, subprocess.TimeoutExpired):
            return None
    new = sorted(_findings(after.stderr + after.stdout) - _findings(before.stderr + before.stdout))
    if not new:
        _VETTED.add((folder, tests))
        return None
    return _rejected(f"go: {new[0]}")
