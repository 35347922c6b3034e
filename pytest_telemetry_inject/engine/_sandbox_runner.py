"""The child-process half of ``engine.sandbox``: runs ONE untrusted insertion script.

STDLIB ONLY. The sandbox starts this file as ``python -I -S -B _sandbox_runner.py``, so
site-packages (and this package) are not importable here; ``scriptlib.py`` is loaded by the
path given in the request.

Protocol: stdin carries one JSON object ``{"scriptlib": path, "script": text, "source": text}``;
the answer is one JSON object written to the ORIGINAL stdout (taken before the script runs):
``{"ok": true, "output": text}`` or ``{"ok": false, "error": "TypeName: message", "kind": ...}``
where ``kind`` is ``"error"``, ``"memory"`` or ``"forbidden"`` (then ``"event"`` names the
audit event that was refused). The process always exits 0 once it has answered; any other
exit (a signal, a non-zero status) means it was stopped before it could answer.

Order matters: everything that legitimately needs the dangerous machinery (reading stdin,
importing, compiling) happens first; then an audit hook is installed that refuses EVERY
audit event except the one ``exec`` of the script's own code object. Default-deny rather
than a list of dangerous events: a benign transform fires no audit event at all, so any
event is a sign of an escape attempt, and no event added by a later CPython can slip by.
"""

from __future__ import annotations

import builtins
import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

HELPER_MODULE = "pytest_telemetry_inject.scriptlib"

# A copy of engine/scripts.py ALLOWED_BUILTINS (this file cannot import the package);
# tests/engine/test_security.py checks that the two stay equal.
ALLOWED_BUILTINS = frozenset({
    "abs", "all", "any", "bool", "chr", "dict", "enumerate", "filter", "float", "frozenset",
    "int", "isinstance", "len", "list", "map", "max", "min", "ord", "range", "repr",
    "reversed", "set", "sorted", "str", "sum", "tuple", "zip",
    "Exception", "IndexError", "KeyError", "RuntimeError", "TypeError", "ValueError",
    "True", "False", "None",
})

_MAX_ERROR_CHARS = 500
# Pre-encoded so that it can be sent even when memory is exhausted.
_MEMORY_ANSWER = b'{"ok": false, "kind": "memory", "error": "MemoryError: out of memory"}'


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)  # os.write fires no audit event: usable under the hook
        view = view[written:]


def _finish(fd: int, answer: dict[str, Any]) -> NoReturn:
    """Send the answer and leave at once: os._exit skips interpreter finalization, so no
    object the script left behind (and no exit-time audit event) can run code after this."""
    try:
        data = json.dumps(answer, ensure_ascii=True).encode("ascii")
    except MemoryError:
        data = _MEMORY_ANSWER
    try:
        _write_all(fd, data)
    except OSError:
        os._exit(3)  # the parent is gone or stopped reading: nobody to answer
    os._exit(0)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:_MAX_ERROR_CHARS]


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    try:
        message = str(exc)
    except BaseException:  # a hostile exception's __str__ may itself raise
        message = ""
    return _one_line(f"{name}: {message}" if message else name)


def _failure(exc: BaseException) -> dict[str, Any]:
    kind = "memory" if isinstance(exc, MemoryError) else "error"
    return {"ok": False, "kind": kind, "error": _describe(exc)}


def _read_request() -> dict[str, Any]:
    request = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    if not isinstance(request, dict):
        raise ValueError("the request is not a JSON object")
    for key in ("scriptlib", "script", "source"):
        if not isinstance(request.get(key), str):
            raise ValueError(f"the request has no text for {key!r}")
    return request


def _load_helper(path: str) -> Any:
    """scriptlib, loaded by path and registered under its package name (the script's only
    import resolves to this very module object)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(HELPER_MODULE, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {HELPER_MODULE} from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[HELPER_MODULE] = module
    spec.loader.exec_module(module)
    return module


def _restricted_builtins(helper: Any) -> dict[str, Any]:
    allowed = {name: getattr(builtins, name) for name in ALLOWED_BUILTINS if hasattr(builtins, name)}

    def restricted_import(name: str, globals: Any = None, locals: Any = None,
                          fromlist: Any = (), level: int = 0) -> Any:
        if name == HELPER_MODULE and not level:
            return helper
        raise ImportError(f"insertion scripts may not import {name}")

    allowed["__import__"] = restricted_import
    return allowed


def _install_guard(code: Any, answer_fd: int) -> None:
    """Refuse every audit event from now on but the single exec of ``code``.

    A refused event does not just raise (a script could catch that and carry on): the
    runner answers "forbidden" and exits on the spot, so the operation never happens and
    the script never gets control back. State lives in this closure, not in module
    globals, so a script that reaches this module's namespace cannot switch it off."""
    pending_exec = [code]
    exit_now = os._exit
    write_all = _write_all
    dumps = json.dumps

    def guard(event: str, args: tuple[Any, ...]) -> None:
        if event == "exec" and pending_exec and args and args[0] is pending_exec[0]:
            pending_exec.clear()
            return
        answer = {"ok": False, "kind": "forbidden", "event": event,
                  "error": f"PermissionError: the sandbox forbids the operation {event!r}"}
        try:
            write_all(answer_fd, dumps(answer, ensure_ascii=True).encode("ascii"))
        finally:
            exit_now(0)

    sys.addaudithook(guard)


def _run(answer_fd: int) -> dict[str, Any]:
    request = _read_request()
    helper = _load_helper(request["scriptlib"])
    code = compile(request["script"], "<insertion script>", "exec", dont_inherit=True)
    source = request["source"]
    namespace: dict[str, Any] = {"__builtins__": _restricted_builtins(helper),
                                 "__name__": "insertion_script"}
    del request  # the script has no business with the request (or the scriptlib path)
    _install_guard(code, answer_fd)
    exec(code, namespace)
    transform: Callable[[str], Any] | None = namespace.get("transform")
    if not callable(transform):
        raise NameError("the script defines no transform(source) function")
    result = transform(source)
    # The exact type: a str subclass could run code of the script's while being encoded.
    if type(result) is not str:
        raise TypeError(f"transform(source) returned {type(result).__name__}, not str")
    return {"ok": True, "output": result}


def main() -> NoReturn:
    # The answer channel is a private copy of stdout; fd 1 itself is pointed at stderr so
    # that a stray print cannot corrupt the JSON answer.
    answer_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        answer = _run(answer_fd)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are answered too
        # Drop the traceback first: its frames keep the script's data (maybe the very
        # allocation that exhausted memory) alive while the answer is encoded.
        try:
            exc.__traceback__ = None
        except BaseException:
            pass
        answer = _failure(exc)
    _finish(answer_fd, answer)


if __name__ == "__main__":
    main()
