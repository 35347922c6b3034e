"""Hostile insertion scripts: the allowlist refuses each one, and the sandbox contains each
one even when the allowlist is skipped (``check=False``).

Every containment test checks that the side effect really did not happen (a file, a marker
made by a child process, a connection to a socket this test listens on). The scripts that
escape the restricted builtins are also run in-process WITHOUT the sandbox, to show that
they do work there: the sandbox, not a typo in the script, is what stops them.
"""

from __future__ import annotations

import ast
import os
import socket
import textwrap
import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from pytest_telemetry_inject import scriptlib
from pytest_telemetry_inject.engine import _sandbox_runner, scripts
from pytest_telemetry_inject.engine.sandbox import run_script
from pytest_telemetry_inject.engine.scripts import check_security, load_transform, render_script
from pytest_telemetry_inject.errors import SandboxError, SecurityViolation, ValidationError

# The hostile scripts use /bin/sh, posix_spawn and the POSIX rlimits.
pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX only")

SOURCE = "def f():\n    return 1\n"

# The classic escape from restricted builtins: from any object up to `object`, down to a
# class defined in `os`, into its module globals (the real os functions and builtins).
ESCAPE = """\
    wrap = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0]
    osg = wrap.__init__.__globals__
    real = osg['__builtins__']
"""


class Hostile(NamedTuple):
    id: str
    script: str  # formatted with {path}, {marker}, {port}
    reason: str  # check_security's one-line refusal
    effect: str  # "file" (writes {path}), "marker" (a child creates {marker}), "connect"
    escapes: bool = False  # gets real builtins without the sandbox (checked in-process)


def _fn(body: str, head: str = "") -> str:
    return head + "def transform(source):\n" + body + "    return source\n"


HOSTILE = [
    # -- writing files --
    Hostile("open", _fn("    open({path!r}, 'w').write('x')\n"),
            "line 2: the name 'open' is not allowed", "file"),
    Hostile("open-escaped", _fn(ESCAPE + "    real['open']({path!r}, 'w').write('x')\n"),
            "line 2: access to the attribute '__class__' is not allowed", "file", True),
    Hostile("os-open-escaped", _fn(ESCAPE + "    osg['open']({path!r}, osg['O_WRONLY'] | osg['O_CREAT'])\n"),
            "line 2: access to the attribute '__class__' is not allowed", "file", True),
    # -- the network --
    Hostile("socket-import", _fn("    __import__('socket').create_connection(('127.0.0.1', {port}))\n"),
            "line 2: the name '__import__' is not allowed", "connect"),
    Hostile("socket-escaped",
            _fn(ESCAPE + "    s = real['__import__']('socket').create_connection(('127.0.0.1', {port}))\n"),
            "line 2: access to the attribute '__class__' is not allowed", "connect", True),
    # -- starting processes --
    Hostile("os-system-escaped", _fn(ESCAPE + "    osg['system'](': > {marker}')\n"),
            "line 2: access to the attribute '__class__' is not allowed", "marker", True),
    Hostile("subprocess-escaped",
            _fn(ESCAPE + "    real['__import__']('subprocess').run(['/bin/sh', '-c', ': > {marker}'])\n"),
            "line 2: access to the attribute '__class__' is not allowed", "marker", True),
    Hostile("posix-spawn-escaped",
            _fn(ESCAPE + "    pid = osg['posix_spawn']('/bin/sh', ['/bin/sh', '-c', ': > {marker}'], {{}})\n"
                "    osg['waitpid'](pid, 0)\n"),
            "line 2: access to the attribute '__class__' is not allowed", "marker", True),
    # -- import tricks --
    Hostile("dunder-import", _fn("    __import__('os').system(': > {marker}')\n"),
            "line 2: the name '__import__' is not allowed", "marker"),
    Hostile("import-os", _fn("    import os\n    os.system(': > {marker}')\n"),
            "line 2: Import is not allowed in an insertion script", "marker"),
    Hostile("importlib", _fn("    from importlib import import_module\n"
                             "    import_module('os').system(': > {marker}')\n"),
            "line 2: only `from pytest_telemetry_inject.scriptlib import ...` is allowed", "marker"),
    Hostile("builtins-global", _fn("    __builtins__['open']({path!r}, 'w').write('x')\n"),
            "line 2: the name '__builtins__' is not allowed", "file"),
    Hostile("helper-builtins",
            _fn("    __builtins__['open']({path!r}, 'w').write('x')\n",
                head="from pytest_telemetry_inject.scriptlib import __builtins__\n"),
            "line 1: pytest_telemetry_inject.scriptlib has no public name '__builtins__'", "file", True),
    # -- dunder escapes --
    Hostile("subclasses", _fn("    found = ().__class__.__bases__[0].__subclasses__()\n"
                              "    [c for c in found if c.__name__ == '_wrap_close'][0]"
                              ".__init__.__globals__['system'](': > {marker}')\n"),
            "line 2: access to the attribute '__class__' is not allowed", "marker", True),
    Hostile("transform-globals", _fn("    transform.__globals__['__builtins__']['open']({path!r}, 'w')\n"),
            "line 2: access to the attribute '__globals__' is not allowed", "file"),
    Hostile("helper-globals", _fn("    apply.__globals__['__builtins__']['open']({path!r}, 'w')\n",
                                  head="from pytest_telemetry_inject.scriptlib import apply\n"),
            "line 3: access to the attribute '__globals__' is not allowed", "file", True),
    Hostile("getattr-concat", _fn("    k = getattr((), '__cl' + 'ass__')\n    open({path!r}, 'w')\n"),
            "line 2: the name 'getattr' is not allowed", "file"),
    # -- exec / eval / compile / open / getattr in their other forms --
    Hostile("exec", _fn("    exec(\"open({path!r}, 'w')\")\n"),
            "line 2: the name 'exec' is not allowed", "file"),
    Hostile("eval", _fn("    eval(\"open({path!r}, 'w')\")\n"),
            "line 2: the name 'eval' is not allowed", "file"),
    Hostile("compile", _fn("    c = compile(\"open({path!r}, 'w')\", 's', 'exec')\n"),
            "line 2: the name 'compile' is not allowed", "file"),
    Hostile("alias-open", _fn("    w = open\n    w({path!r}, 'w')\n"),
            "line 2: the name 'open' is not allowed", "file"),
    Hostile("exec-escaped", _fn(ESCAPE + "    real['exec'](\"open({path!r}, 'w')\", {{'__builtins__': real}})\n"),
            "line 2: access to the attribute '__class__' is not allowed", "file", True),
    Hostile("eval-escaped", _fn(ESCAPE + "    real['eval'](\"open({path!r}, 'w')\", {{'__builtins__': real}})\n"),
            "line 2: access to the attribute '__class__' is not allowed", "file", True),
    Hostile("compile-escaped",
            _fn(ESCAPE + "    code = real['compile'](\"open({path!r}, 'w')\", 's', 'exec')\n"
                "    real['exec'](code, {{'__builtins__': real}})\n"),
            "line 2: access to the attribute '__class__' is not allowed", "file", True),
    Hostile("getattr-escaped",
            _fn(ESCAPE + "    real['getattr'](real['__import__']('io'), 'open')({path!r}, 'w')\n"),
            "line 2: access to the attribute '__class__' is not allowed", "file", True),
    # -- a refused operation stays refused when the script catches the error --
    Hostile("caught",
            _fn(ESCAPE + "    try:\n        real['open']({path!r}, 'w')\n    except Exception:\n        pass\n"
                "    real['open']({path!r} + '.2', 'w')\n"),
            "line 5: Try is not allowed in an insertion script", "file", True),
]


class Targets(NamedTuple):
    path: str
    marker: str
    port: int
    listener: socket.socket


@pytest.fixture
def targets(tmp_path) -> Iterator[Targets]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield Targets(str(tmp_path / "written.txt"), str(tmp_path / "marker"),
                      listener.getsockname()[1], listener)
    finally:
        listener.close()


def _script(case: Hostile, t: Targets) -> str:
    return case.script.format(path=t.path, marker=t.marker, port=t.port)


def _accepted_a_connection(listener: socket.socket, wait: float) -> bool:
    listener.settimeout(wait)
    try:
        conn, _addr = listener.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


def _effect_happened(case: Hostile, t: Targets, wait: float) -> bool:
    if case.effect == "file":
        return os.path.exists(t.path) or os.path.exists(t.path + ".2")
    if case.effect == "marker":
        deadline = time.monotonic() + wait  # a started child may still be on its way
        while time.monotonic() < deadline:
            if os.path.exists(t.marker):
                return True
            time.sleep(0.02)
        return os.path.exists(t.marker)
    return _accepted_a_connection(t.listener, wait)


@pytest.mark.parametrize("case", HOSTILE, ids=[c.id for c in HOSTILE])
def test_the_allowlist_refuses_it(case: Hostile, targets: Targets) -> None:
    with pytest.raises(SecurityViolation) as info:
        check_security(_script(case, targets))
    assert str(info.value) == case.reason


@pytest.mark.parametrize("case", HOSTILE, ids=[c.id for c in HOSTILE])
def test_the_sandbox_contains_it(case: Hostile, targets: Targets) -> None:
    with pytest.raises(SandboxError) as info:
        run_script(_script(case, targets), SOURCE, check=False, timeout=10)
    message = str(info.value)
    assert "\n" not in message and message
    assert not _effect_happened(case, targets, wait=0.3), f"{case.id} got through: {message}"
    if case.escapes:
        # It got hold of the real builtins: only the audit hook stood in its way.
        assert "forbidden operation" in message


ESCAPING = [c for c in HOSTILE if c.escapes and c.id != "caught"]


@pytest.mark.parametrize("case", ESCAPING, ids=[c.id for c in ESCAPING])
def test_without_the_sandbox_it_does_get_through(case: Hostile, targets: Targets) -> None:
    """The control: in-process, restricted builtins alone do not stop these scripts."""
    transform = load_transform(_script(case, targets), check=False)
    transform(SOURCE)
    assert _effect_happened(case, targets, wait=5.0)


# -- what the allowlist lets through is still contained --------------------------------------

FRAME_WALK = _fn(
    "    box = []\n"
    "    gen = (box[0].gi_frame.f_back.f_back.f_globals for _ in [0])\n"
    "    box.append(gen)\n"
    "    caller = list(gen)[0]\n"
    "    caller['__builtins__'].open({path!r}, 'w').write('x')\n"
)


def test_the_allowlist_refuses_frame_walking(targets: Targets) -> None:
    with pytest.raises(SecurityViolation, match="access to the attribute 'gi_frame' is not allowed"):
        check_security(FRAME_WALK.format(path=targets.path))


def test_the_sandbox_contains_frame_walking_past_the_check(targets: Targets) -> None:
    with pytest.raises(SandboxError, match=r"forbidden operation \(object.__getattr__\)"):
        run_script(FRAME_WALK.format(path=targets.path), SOURCE, check=False)
    assert not os.path.exists(targets.path)


def test_an_endless_while_loop_is_refused_and_contained() -> None:
    script = "def transform(source):\n    while True:\n        pass\n"
    with pytest.raises(SecurityViolation, match="^line 2: While is not allowed in an insertion script$"):
        check_security(script)
    start = time.monotonic()
    with pytest.raises(SandboxError, match="exceeded its CPU limit"):
        run_script(script, SOURCE, check=False, cpu_seconds=1, timeout=20)
    assert time.monotonic() - start < 10


# -- the allowlist against what the templates write -------------------------------------------

FUNCTION = textwrap.dedent('''\
    @cache
    def area(side):
        """Docstring."""
        note = """two
    lines"""
        return side * side
''')


@pytest.mark.parametrize("edits", [
    [scriptlib.indent(4, 6, "    ", "    ", [5])],
    [scriptlib.insert(2, '@_telemetry.instrument("area")')],
    [scriptlib.insert_after(6, "    # done")],
    [scriptlib.indent(4, 6, "    ", "    ", [5]), scriptlib.insert(4, "    try:"),
     scriptlib.insert_after(6, "    finally:"), scriptlib.insert_after(6, "        pass")],
], ids=["indent", "insert", "insert_after", "all-three"])
def test_the_allowlist_accepts_rendered_scripts(edits: list) -> None:
    output = scriptlib.apply(FUNCTION, edits)
    script = render_script(language="python", span_name="area", template="test",
                           source_sha256=scripts.sha256_text(FUNCTION),
                           output_sha256=scripts.sha256_text(output), edits=edits)
    tree = check_security(script)
    assert isinstance(tree, ast.Module)
    assert load_transform(script)(FUNCTION) == output != FUNCTION


def test_a_script_without_transform_is_refused() -> None:
    with pytest.raises(ValidationError, match="^the script defines no transform\\(source\\) function$"):
        check_security("X = 1\n")


def test_the_runner_allows_the_same_builtins_as_the_allowlist() -> None:
    assert _sandbox_runner.ALLOWED_BUILTINS == scripts.ALLOWED_BUILTINS
    assert _sandbox_runner.HELPER_MODULE == scripts.HELPER_MODULE


def test_the_runner_is_stdlib_only() -> None:
    """It runs with -I -S: an import of this package or a third-party one would fail there."""
    import sys

    tree = ast.parse(open(_sandbox_runner.__file__, encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in the runner"
            imported.add((node.module or "").split(".")[0])
    imported.discard("__future__")
    assert imported and imported <= set(sys.stdlib_module_names), imported


@pytest.mark.parametrize("script, reason", [
    ("from pytest_telemetry_inject.scriptlib import hashlib\ndef transform(source):\n    return source\n",
     "line 1: pytest_telemetry_inject.scriptlib has no public name 'hashlib'"),
    ("from pytest_telemetry_inject.scriptlib import apply\n"
     "def transform(source):\n    return '{0.__globals__}'.format(apply)\n",
     "line 3: access to the attribute 'format' is not allowed"),
    ("def transform(source):\n    return str.format_map('{x}', {'x': source})\n",
     "line 2: access to the attribute 'format_map' is not allowed"),
])
def test_the_allowlist_refuses_non_public_helpers_and_format_fields(script: str, reason: str) -> None:
    with pytest.raises(SecurityViolation) as info:
        check_security(script)
    assert str(info.value) == reason
