"""``check_inserted_lines``: a model's lines are telemetry of the language's grammar, or refused.

Accepted outputs are also run (Python in a subprocess, JavaScript with node when it is
installed) to show that the accepted lines change no result."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_telemetry_inject.llm.telemetry_check import MARKER, check_inserted_lines

PY = '''"""Cart helpers."""
from __future__ import annotations

import time


def total(items, *rest):
    """The sum."""
    s = 0
    for i in items:
        s += i
    time.sleep(0)
    return s


class Cart:
    """A cart."""

    def count(self, items):
        return len(items)


TEMPLATE = """
text
"""
'''


def insert(original: str, lines: dict[int, list[str]], comment: str = "#") -> str:
    """``original`` with each text inserted after the original line number (0: at the top)."""
    out = []
    for number, line in enumerate([""] + original.splitlines(True)):
        out.append(line)
        out.extend(f"{text}  {comment} {MARKER}\n" for text in lines.get(number, ()))
    return "".join(out)


def check(original: str, lines: dict[int, list[str]], language: str = "python", **kwargs) -> str | None:  # type: ignore[no-untyped-def]
    comment = "#" if language == "python" else "//"
    return check_inserted_lines(original, insert(original, lines, comment), language=language, **kwargs)


GOOD_PY = {
    "timing and a logger": {4: ["import logging"], 8: ["    _t0 = time.perf_counter()"],
                            12: ["    logging.getLogger(__name__).info(f'total of {items!r} took "
                                 "{(time.perf_counter() - _t0) * 1000:.3f} ms', stacklevel=2)"]},
    "a module logger": {4: ["import logging", "_log = logging.getLogger(__name__)"],
                        8: ["    _log.debug('%s took %.6f s', 'total', time.perf_counter() - time.perf_counter())"]},
    "from-imports": {4: ["from time import perf_counter as _clock"],
                     19: ["        _t1 = _clock()", "        import logging",
                          "        logging.getLogger('cart').warning('count %s %s', self, _clock() - _t1)"]},
    "the runtime": {4: ["from pytest_telemetry_inject import runtime as _rt", "_tr = _rt.tracer(__name__)"],
                    8: ["    _state = _tr.start()"], 12: ["    _tr.end('total', _state)"]},
    "in a loop body": {10: ["        _t2 = time.monotonic()", "        import logging",
                            "        logging.getLogger(__name__).debug(f'{_t2 - 1}')"]},
}
BAD_PY = {
    "__import__ payload": ({8: ["    __import__('os').system('touch x')"]}, "the name '__import__' is not allowed"),
    "above the module docstring": ({0: ["import logging"]}, "goes before the module's docstring"),
    "above a function docstring": ({7: ["    import logging"]}, "goes before the docstring of total"),
    "before __future__": ({1: ["import logging"]}, "goes before the `from __future__` imports"),
    "open() disguised as a log": ({4: ["import logging"], 8: [
        "    logging.getLogger(__name__).info(open('/etc/passwd').read())"]},
        "first argument is a string or an f-string"),
    "open() as a log argument": ({4: ["import logging"], 8: [
        "    logging.getLogger(__name__).info('%s', open('/etc/passwd').read())"]}, "'open' is not bound"),
    "exec": ({8: ["    exec('import os')"]}, "'exec' is not bound"),
    "eval as a value": ({8: ["    _x = eval('1')"]}, "'eval' is not bound"),
    "a dunder chain": ({8: ["    _x = ().__class__.__base__.__subclasses__()"]}, "'__subclasses__' is not allowed"),
    "a subscript": ({4: ["import logging"], 8: ["    logging.getLogger(__name__).info('%s', items[0])"]},
                    "Subscript is not allowed"),
    "a parameter rebound": ({8: ["    items = time.perf_counter()"]}, "'items' is already used by the file"),
    "a global made local": ({8: ["    import time"]}, "'time' is already used by the file"),
    "an import of os": ({4: ["import os"]}, "importing os is not allowed"),
    "two statements": ({8: ["    _a = time.time(); _b = time.time()"]}, "one statement per line"),
    "inside a string": ({24: ["_t9 = time.time()"]}, "not a statement of its own"),
    "in a class body": ({17: ["    _t3 = time.time()"]}, "in the body of class Cart"),
    "read outside its block": ({10: ["        _t4 = time.time()"], 12: ["    _t5 = time.time() - _t4"]},
                               "'_t4' is not bound"),
    "a format spec on a parameter": ({4: ["import logging"], 8: [
        "    logging.getLogger(__name__).info(f'{items:>10}')"]}, "the parameter 'items' is not known to be a number"),
    "a string multiplied": ({4: ["import logging"], 8: ["    logging.getLogger(__name__).info('x', 'x' * 99)"]},
                            "arithmetic only on numbers"),
    "a call at module level": ({4: ["import logging", "logging.getLogger(__name__).info('x')"]},
                               "calls go inside a function"),
    "another comment": ({8: ["    _t6 = time.time()  # note"]}, "hold no other comment"),
    "a lambda": ({8: ["    _f = lambda: time.time()"]}, "Lambda is not allowed"),
    "a walrus": ({4: ["import logging"], 8: ["    logging.getLogger(__name__).info('%s', (_w := 1))"]},
                 "NamedExpr is not allowed"),
    "division by a name": ({8: ["    _t7 = time.time()", "    _t8 = 1 / _t7"]}, "divide only by a non-zero constant"),
}


@pytest.mark.parametrize("case", sorted(GOOD_PY))
def test_python_telemetry_is_accepted_and_changes_no_result(case: str, tmp_path: Path) -> None:
    lines = GOOD_PY[case]
    assert check(PY, lines) is None
    (tmp_path / "plain.py").write_text(PY)
    (tmp_path / "instrumented.py").write_text(insert(PY, lines))
    code = ("import logging, plain, instrumented\nlogging.basicConfig(level=logging.DEBUG)\n"
            "for m in (plain, instrumented):\n"
            "    print(repr((m.total([1, 2, 3]), m.Cart().count('ab'), m.total.__doc__, m.__doc__, m.TEMPLATE)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    plain, instrumented = done.stdout.splitlines()
    assert plain == instrumented == repr((6, 2, "The sum.", "Cart helpers.", "\ntext\n"))
    if "logging" in str(lines):
        assert "DEBUG" in done.stderr or "INFO" in done.stderr or "WARNING" in done.stderr  # the telemetry ran


@pytest.mark.parametrize("case", sorted(BAD_PY))
def test_python_lines_that_are_not_telemetry_are_refused(case: str) -> None:
    lines, expected = BAD_PY[case]
    reason = check(PY, lines)
    assert reason is not None and expected in reason, reason
    assert "\n" not in reason


def test_the_check_needs_the_original_back_and_something_inserted() -> None:
    assert "does not give back the original" in check_inserted_lines(
        PY, PY.replace("s = 0", f"s = 1  # {MARKER}"), language="python")
    assert check_inserted_lines(PY, PY, language="python") == "no telemetry was inserted"
    long = "    _t0 = time.perf_counter() + " + " + ".join(["1"] * 200)
    assert "longer than 400 characters" in check(PY, {8: [long]})


def test_function_names_limit_where_calls_go() -> None:
    lines = {4: ["import logging"], 8: ["    logging.getLogger(__name__).info('total')"]}
    assert check(PY, lines, function_names=["total"]) is None
    assert "not inside one of the functions to instrument" in check(PY, lines, function_names=["count"])


JS = """export function total(items) {
  let s = 0;
  for (const i of items) {
    s += i;
  }
  return s;
}

export const hello = (name) => {
  return `hello ${name}`;
};
"""
GOOD_JS = {
    "a timer": {1: ["  const _t0 = Date.now();"], 5: ["  console.log(`total took ${Date.now() - _t0} ms`);"]},
    "performance.now": {9: ["  let _t1 = performance.now();",
                            "  console.debug('hello', ((performance.now() - _t1) / 1000).toFixed(3), 'ms');"]},
}
BAD_JS = {
    "require": ({1: ["  require('child_process').execSync('touch x');"]}, "is not allowed"),
    "eval in a log": ({1: ["  console.log(eval('1'));"]}, "'eval' is not allowed"),
    "a constructor chain": ({1: ["  console.log(items.constructor.constructor('return process')());"]},
                            "is not allowed"),
    "a call in a template": ({1: ["  console.log(`${process.exit(1)}`);"]}, "'process' is not allowed"),
    "top level": ({0: ["console.log('x');"]}, "not a statement of a function's body"),
    "no semicolon": ({1: ["  console.log('x')"]}, "end the statement with ';'"),
    "optional chaining": ({1: ["  console?.log('x');"]}, "plain member access only"),
    "a name of the file": ({1: ["  const s = Date.now();"]}, "'s' is already used by the file"),
    "bound twice": ({1: ["  const _t0 = Date.now();", "  const _t0 = Date.now();"]}, "bound twice"),
    "read outside its block": ({3: ["    const _t2 = Date.now();"], 5: ["  console.log(_t2);"]},
                               "'_t2' is not bound"),
    "console.error": ({1: ["  console.error('x');"]}, "console.error is not allowed"),
}


@pytest.mark.parametrize("language", ["javascript", "typescript", "tsx"])
@pytest.mark.parametrize("case", sorted(GOOD_JS))
def test_javascript_telemetry_is_accepted(case: str, language: str) -> None:
    assert check(JS, GOOD_JS[case], language) is None


@pytest.mark.parametrize("case", sorted(BAD_JS))
def test_javascript_lines_that_are_not_telemetry_are_refused(case: str) -> None:
    lines, expected = BAD_JS[case]
    for language in ("javascript", "typescript"):
        reason = check(JS, lines, language)
        assert reason is not None and expected in reason, reason
        assert "\n" not in reason


def test_a_shadowed_global_is_refused() -> None:
    source = "import { performance } from './clock.js';\n" + JS
    assert "declares its own 'performance'" in check(source, {2: ["  const _t0 = performance.now();"]}, "javascript")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_accepted_javascript_runs_with_the_same_results(tmp_path: Path) -> None:
    lines = {**GOOD_JS["a timer"], **GOOD_JS["performance.now"]}
    (tmp_path / "plain.mjs").write_text(JS)
    (tmp_path / "instrumented.mjs").write_text(insert(JS, lines, "//"))
    (tmp_path / "run.mjs").write_text(
        "import * as a from './plain.mjs'; import * as b from './instrumented.mjs';\n"
        "process.stderr.write(JSON.stringify([a.total([1, 2]), a.hello('x'), b.total([1, 2]), b.hello('x')]));\n")
    done = subprocess.run(["node", "run.mjs"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr) == [3, "hello x", 3, "hello x"]  # the same results
    logged = done.stdout.splitlines()  # console.log and console.debug write to stdout
    assert len(logged) == 2 and logged[0].startswith("total took ") and logged[1].startswith("hello ")


GO = """package shop

import "fmt"

func Total(items []int) int {
\tsum := 0
\tfor _, item := range items {
\t\tsum += item
\t}
\treturn sum
}

func Hello(name string) string {
\treturn fmt.Sprintf("hello %s", name)
}
"""
GOOD_GO = {
    "a deferred closure": {3: ['import "time"', 'import "log"'],
                           5: ["\tstart := time.Now()",
                               '\tdefer func() { log.Printf("Total took %s", time.Since(start)) }()']},
    "a deferred call": {3: ['import "time"', 'import "log"'],
                        13: ["\tbegin := time.Now()", '\tdefer log.Printf("Hello %v", time.Since(begin).Seconds())']},
    "a log line": {3: ['import "log"'], 5: ['\tlog.Println("Total called")']},
}
BAD_GO = {
    "os/exec": ({3: ['import "os/exec"']}, 'only "time" and "log" may be imported'),
    "fmt": ({5: ['\tfmt.Println("x")']}, "fmt.Println is not allowed"),
    "no import": ({5: ["\tstart := time.Now()"]}, 'the file does not import "time"'),
    "unused variable": ({3: ['import "time"'], 5: ["\tstart := time.Now()"]}, "is never read"),
    "unused import": ({3: ['import "log"']}, "is not used by any inserted line"),
    "log.Fatal": ({3: ['import "log"'], 5: ['\tlog.Fatal("x")']}, "log.Fatal is not allowed"),
    "a name of the file": ({3: ['import "time"'], 5: ["\tsum := time.Now()"]}, "'sum' is already used"),
    "a second import": ({3: ['import "fmt"']}, 'only "time" and "log"'),
}


@pytest.mark.parametrize("case", sorted(GOOD_GO))
def test_go_telemetry_is_accepted(case: str) -> None:
    assert check(GO, GOOD_GO[case], "go") is None


@pytest.mark.parametrize("case", sorted(BAD_GO))
def test_go_lines_that_are_not_telemetry_are_refused(case: str) -> None:
    lines, expected = BAD_GO[case]
    reason = check(GO, lines, "go")
    assert reason is not None and expected in reason, reason


def test_a_go_package_of_another_name_is_refused() -> None:
    source = GO.replace('import "fmt"', 'import (\n\t"fmt"\n\tlog "github.com/x/logger"\n)')
    reason = check(source, {4: ['\t"time"'], 8: ["\tstart := time.Now()", '\tlog.Println("x", start)']}, "go")
    assert reason is not None and "declares its own 'log'" in reason, reason


@pytest.mark.parametrize("language", ["rust", "elixir", "ruby", "c"])
def test_other_languages_are_refused_outright(language: str) -> None:
    reason = check_inserted_lines("fn a() {}\n", f"// {MARKER}\nfn a() {{}}\n", language=language)
    assert reason is not None and reason.startswith(f"model insertions into {language} files are refused")
