"""The sandbox runs real insertion scripts like the in-process loader does, and stops the
ones that break a limit: CPU, wall clock, memory, output size, result type.

Every test starts real interpreters; limits are kept small so that the module finishes in
a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from pytest_telemetry_inject import scriptlib
from pytest_telemetry_inject.engine import sandbox
from pytest_telemetry_inject.engine.sandbox import run_script
from pytest_telemetry_inject.engine.scripts import check_security, load_transform, render_script, sha256_text
from pytest_telemetry_inject.errors import SandboxError, ValidationError

# The rlimit layers exist on POSIX only; elsewhere only the timeout bounds a script.
needs_rlimits = pytest.mark.skipif(sandbox.resource is None, reason="no resource module here")

FUNCTION = textwrap.dedent('''\
    @cache
    def area(side):
        """The area of a square."""
        note = """two
    lines"""
        return side * side
''')

# What the logging template plans for this function: all three kinds of edit.
EDITS = [
    scriptlib.indent(4, 6, "    ", "    ", [5]),
    scriptlib.insert(4, "    _telemetry_t0 = _telemetry_clock()"),
    scriptlib.insert(4, "    try:"),
    scriptlib.insert_after(6, "    finally:"),
    scriptlib.insert_after(6, '        _telemetry.debug("%s took %.6f s", "area", _telemetry_clock() - _telemetry_t0)'),
]
OUTPUT = scriptlib.apply(FUNCTION, EDITS)
TEMPLATE_SCRIPT = render_script(language="python", span_name="area", template="python/with/logging",
                                source_sha256=sha256_text(FUNCTION), output_sha256=sha256_text(OUTPUT),
                                edits=EDITS)

LOOP = "def transform(source):\n    for i in range(10 ** 12):\n        pass\n    return source\n"


def _fn(body: str) -> str:
    return "def transform(source):\n" + textwrap.indent(textwrap.dedent(body), "    ")


# -- real scripts -----------------------------------------------------------------------------


def test_a_template_script_gives_the_same_output_as_in_process() -> None:
    in_process = load_transform(TEMPLATE_SCRIPT)(FUNCTION)
    assert in_process == OUTPUT != FUNCTION
    assert run_script(TEMPLATE_SCRIPT, FUNCTION) == in_process
    # Applied to its own output it changes nothing, in the sandbox too.
    assert run_script(TEMPLATE_SCRIPT, OUTPUT) == OUTPUT


def test_a_script_refusing_another_source_reports_why() -> None:
    with pytest.raises(SandboxError, match="^the script failed in the sandbox: ScriptMismatch: this script "
                                           "was made for another version of the function$"):
        run_script(TEMPLATE_SCRIPT, FUNCTION.replace("side * side", "side ** 2"))


def test_text_survives_the_trip_byte_for_byte() -> None:
    """Non-ASCII, CRLF, NUL, a lone surrogate (from surrogateescape) all come back intact."""
    source = "def f():\r\n    return 'h\u00e9llo \u2603 \U0001f600 \x00 \udcff'\r\n"
    script = ("from pytest_telemetry_inject.scriptlib import apply, insert\n"
              "def transform(source):\n"
              "    return apply(source, [insert(2, '    pass')])\n")
    expected = load_transform(script)(source)
    assert "    pass\r\n" in expected
    assert run_script(script, source) == expected


def test_the_testkit_runs_untrusted_scripts_in_the_sandbox() -> None:
    from pytest_telemetry_inject.testkit import ScriptCheck

    check = ScriptCheck(TEMPLATE_SCRIPT, language="python", span_name="area", original=FUNCTION,
                        origin="llm")
    assert check.run(FUNCTION) == OUTPUT


# -- limits -----------------------------------------------------------------------------------


@needs_rlimits
def test_a_long_for_loop_passes_the_allowlist_but_not_the_cpu_limit() -> None:
    check_security(LOOP)  # bounded by count, so the allowlist cannot tell
    start = time.monotonic()
    with pytest.raises(SandboxError, match=r"^the script exceeded its CPU limit \(1 s\) and was killed$"):
        run_script(LOOP, FUNCTION, cpu_seconds=1, timeout=20)
    assert time.monotonic() - start < 10


def test_the_wall_clock_timeout_kills_it() -> None:
    start = time.monotonic()
    with pytest.raises(SandboxError, match=r"^the script timed out after 0.5 s and was killed$"):
        run_script(LOOP, FUNCTION, cpu_seconds=60, timeout=0.5)
    assert time.monotonic() - start < 5


@needs_rlimits
@pytest.mark.parametrize("body", [
    "return 'x' * (10 ** 10)\n",
    "chunks = []\nfor i in range(10 ** 9):\n    chunks.append(str(i) * 1000)\nreturn source\n",
], ids=["one-allocation", "growing-list"])
def test_a_memory_bomb_runs_out_of_memory(body: str) -> None:
    script = _fn(body)
    check_security(script)
    with pytest.raises(SandboxError, match=r"^the script ran out of memory \(limit 96 MB\)$"):
        run_script(script, FUNCTION, memory_mb=96, timeout=20)


def test_deep_recursion_is_stopped() -> None:
    script = "def down(n):\n    return down(n + 1)\n" + _fn("return down(0)\n")
    check_security(script)
    with pytest.raises(SandboxError, match="RecursionError: maximum recursion depth exceeded"):
        run_script(script, FUNCTION)


def test_a_flood_of_output_is_cut_off() -> None:
    script = _fn("return source * 100000\n")
    limit = sandbox.OUTPUT_FACTOR * len(json.dumps(FUNCTION)) + sandbox.OUTPUT_ALLOWANCE
    assert len(FUNCTION) * 100000 > limit
    with pytest.raises(SandboxError, match=rf"^the script's output exceeded the limit of {limit} bytes$"):
        run_script(script, FUNCTION)


def test_output_just_under_the_limit_comes_back() -> None:
    script = _fn("return source * 10\n")
    assert run_script(script, FUNCTION) == FUNCTION * 10


# -- results that are not a str ---------------------------------------------------------------


@pytest.mark.parametrize("value, name", [("42", "int"), ("None", "NoneType"), ("[source]", "list")])
def test_a_transform_must_return_a_str(value: str, name: str) -> None:
    with pytest.raises(SandboxError, match=rf"^the script failed in the sandbox: TypeError: "
                                           rf"transform\(source\) returned {name}, not str$"):
        run_script(_fn(f"return {value}\n"), FUNCTION)


def test_a_script_without_transform() -> None:
    script = "EDITS = []\n"
    with pytest.raises(ValidationError, match="no transform"):
        run_script(script, FUNCTION)
    with pytest.raises(SandboxError, match=r"^the script failed in the sandbox: NameError: the script "
                                           r"defines no transform\(source\) function$"):
        run_script(script, FUNCTION, check=False)


def test_the_script_s_own_error_comes_back_on_one_line() -> None:
    script = _fn("raise ValueError('first line\\nsecond line')\n")
    with pytest.raises(SandboxError) as info:
        run_script(script, FUNCTION)
    assert str(info.value) == "the script failed in the sandbox: ValueError: first line second line"


def test_a_script_that_does_not_compile() -> None:
    with pytest.raises(SandboxError, match="SyntaxError"):
        run_script("def transform(source:\n", FUNCTION, check=False)


# -- isolation from the parent ----------------------------------------------------------------


def test_the_parent_environment_does_not_reach_the_child(tmp_path, monkeypatch) -> None:
    """A PYTHONPATH shadowing json and a sitecustomize would run code at start-up in a
    normal interpreter; the sandbox's empty environment and -I -S ignore both."""
    marker = tmp_path / "ran"
    payload = f"open({str(marker)!r}, 'w').close()\n"
    (tmp_path / "json.py").write_text(payload + "from _json import *\n")
    (tmp_path / "sitecustomize.py").write_text(payload)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("PYTHONSTARTUP", str(tmp_path / "sitecustomize.py"))
    # The control: the same environment does run the payload in a plain interpreter.
    subprocess.run([sys.executable, "-c", "import json"], check=True, cwd=tmp_path)
    assert marker.exists()
    marker.unlink()
    assert run_script(TEMPLATE_SCRIPT, FUNCTION) == OUTPUT
    assert not marker.exists()


def _child_limits(cpu_seconds: int, memory_mb: int) -> dict[str, list[int]]:
    code = ("import json, resource; print(json.dumps({n: resource.getrlimit(getattr(resource, n)) "
            "for n in ('RLIMIT_CPU', 'RLIMIT_AS', 'RLIMIT_FSIZE', 'RLIMIT_NOFILE', 'RLIMIT_CORE')}))")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, env={},
                          preexec_fn=sandbox._preexec(sandbox._limits(cpu_seconds, memory_mb)),
                          check=True, timeout=30)
    return {name: list(value) for name, value in json.loads(done.stdout).items()}


@needs_rlimits
def test_the_child_gets_the_resource_limits() -> None:
    limits = _child_limits(3, 200)
    assert limits["RLIMIT_CPU"] == [3, 4]
    assert limits["RLIMIT_AS"] == [200 * 2 ** 20] * 2
    assert limits["RLIMIT_FSIZE"] == [0, 0]
    assert limits["RLIMIT_NOFILE"] == [sandbox.MAX_OPEN_FILES] * 2
    assert limits["RLIMIT_CORE"] == [0, 0]


@needs_rlimits
def test_the_file_size_limit_stops_a_writer(tmp_path) -> None:
    """The layer under the audit hook: were a write to slip past it, the kernel refuses it
    (CPython ignores SIGXFSZ, so the write fails with EFBIG instead of killing)."""
    target = tmp_path / "big"
    code = f"f = open({str(target)!r}, 'w'); f.write('x' * 10); f.flush()"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], env={},
                          preexec_fn=sandbox._preexec(sandbox._limits(5, 256)),
                          capture_output=True, timeout=30)
    assert done.returncode == 1
    assert b"File too large" in done.stderr
    assert target.stat().st_size == 0


def test_no_temporary_folder_is_left_behind(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # make tempfile re-read TMPDIR
    run_script(TEMPLATE_SCRIPT, FUNCTION)
    with pytest.raises(SandboxError):
        run_script(LOOP, FUNCTION, cpu_seconds=60, timeout=0.3)
    assert os.listdir(tmp_path) == []


def test_bad_limits_are_refused() -> None:
    with pytest.raises(SandboxError, match="positive"):
        run_script(TEMPLATE_SCRIPT, FUNCTION, timeout=0)
