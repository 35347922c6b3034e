"""An attacker who can write the cache (a CI cache restored from another branch, a cache copied
with a project) but not read this machine's key: what the security tests use to forge
entries. Every entry is made through the cache's own writer (``ScriptCache``), so it is well
formed whatever the format; it is sealed with the attacker's own key, which is what a cache
from another machine carries.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pytest_telemetry_inject.engine import seal
from pytest_telemetry_inject.engine.cache import ScriptCache, _decode_memo
from pytest_telemetry_inject.engine.reconstruct import LineMap

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLI = [sys.executable, "-m", "pytest_telemetry_inject.cli"]
TRACER_LINE = "_telemetry = _telemetry_runtime.tracer(__name__)"

MODULE = '''\
"""A module with a few shapes of function."""
import os


def greet(name):
    """Say hello."""
    return f"hello {name}"


class Counter:
    def __init__(self):
        self.n = 0

    def bump(self, by=1):
        self.n += by
        return self.n


def outer(x):
    def inner(y):
        return x + y
    return inner(1)


def total(items):
    result = 0
    for item in items:
        result += item
    return result
'''

TESTS = '''\
from pkg.mod import Counter, greet, outer, total


def test_greet():
    assert greet("ada") == "hello ada"


def test_counter():
    counter = Counter()
    counter.bump()
    assert counter.bump(2) == 3


def test_outer():
    assert outer(2) == 3


def test_total():
    assert total([1, 2, 3]) == 6
'''


def payload(marker: Path) -> str:
    """A line of Python that leaves ``marker`` behind if it ever runs."""
    return f'__import__("pathlib").Path({str(marker)!r}).touch()'


def make_project(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "mod.py").write_text(MODULE)
    (root / "tests" / "test_mod.py").write_text(TESTS)
    (root / "pyproject.toml").write_text(textwrap.dedent("""\
        [tool.pytest.ini_options]
        addopts = "-p no:cacheprovider"
        """))
    return root


@contextlib.contextmanager
def attacker(key_dir: Path) -> Iterator[None]:
    """Seal with the attacker's key (another machine's) while the block runs."""
    before = os.environ.get("TELEMETRY_INJECT_KEY_FILE")
    os.environ["TELEMETRY_INJECT_KEY_FILE"] = str(key_dir / "attacker.key")
    seal.forget()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TELEMETRY_INJECT_KEY_FILE", None)
        else:
            os.environ["TELEMETRY_INJECT_KEY_FILE"] = before
        seal.forget()


def memos(cache_dir: Path) -> list[Path]:
    return sorted(p for p in (cache_dir / "metadata" / "files").rglob("*") if p.is_file())


def forge_memos(cache_dir: Path, change: Callable[[list[str]], list[str] | None], key_dir: Path) -> int:
    """Rewrite every memo of an instrumented file: ``change(output lines)`` gives the new
    lines (None: leave that memo). The line map is made to fit, as a careful attacker would:
    a line kept keeps its entry, a new one maps to the line below it. Returns how many
    memos were forged."""
    import difflib

    forged = 0
    with attacker(key_dir):
        cache = ScriptCache(cache_dir)
        for path in memos(cache_dir):
            memo = _decode_memo(path.read_bytes(), path.name)
            if memo is None or not memo.header.get("changed"):
                continue
            lines = memo.payload.decode("utf-8").splitlines(keepends=True)
            new_lines = change(list(lines))
            if new_lines is None:
                continue
            old = LineMap.from_segments(json.loads(memo.sections[1]))
            original: list[int] = []
            shift: list[int] = []
            for tag, a, b, c, d in difflib.SequenceMatcher(None, lines, new_lines, autojunk=False).get_opcodes():
                if tag == "equal":
                    original += old.original[a:b]
                    shift += old.shift[a:b]
                else:
                    below = old.original[a] if a < len(old.original) else old.original[-1]
                    original += [below] * (d - c)
                    shift += [0] * (d - c)
            segments = json.dumps(LineMap(tuple(original), tuple(shift)).to_segments(),
                                  separators=(",", ":")).encode()
            cache.put_memo(path.name, {k: v for k, v in memo.header.items() if k != "version"},
                           [memo.sections[0], segments], "".join(new_lines).encode())
            forged += 1
    return forged


def after_tracer(line: str) -> Callable[[list[str]], list[str] | None]:
    """A change that puts ``line`` right after the module's tracer line."""
    def change(lines: list[str]) -> list[str] | None:
        for index, text in enumerate(lines):
            if text.strip() == TRACER_LINE:
                return lines[:index + 1] + [line + "\n"] + lines[index + 1:]
        return None
    return change


def forge_code(cache_dir: Path, key_dir: Path, marker: Path) -> int:
    """Replace every compiled module in ``metadata/code`` by code that runs the payload."""
    code = compile(payload(marker) + "\n", "<forged>", "exec")
    magic = __import__("importlib.util").util.MAGIC_NUMBER
    count = 0
    with attacker(key_dir):
        cache = ScriptCache(cache_dir)
        for path in sorted((cache_dir / "metadata" / "code").rglob("*")):
            if path.is_file():
                cache.write_code(path.name, b"TI-CODE2" + magic + marshal.dumps(code))
                count += 1
    return count


def forge_tests(cache_dir: Path, key_dir: Path, marker: Path) -> int:
    """Replace every generated test module by one that runs the payload when imported."""
    count = 0
    with attacker(key_dir):
        cache = ScriptCache(cache_dir)
        for path in sorted((cache_dir / "tests").rglob("*")):
            if path.is_file():
                text = payload(marker) + "\nSCRIPTS = []\n"
                cache.store([], test_module=(path.parent.name, path.name, text))
                count += 1
    return count


def run_cli(*args: Any, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target
