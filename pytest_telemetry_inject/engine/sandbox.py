"""Run an untrusted insertion script in a separate, locked-down Python process.

``run_script(script, source)`` checks the script against the allowlist
(``scripts.check_security``), then runs ``transform(source)`` in a child interpreter
(``_sandbox_runner.py``) and returns its output. The layers, outermost first:

- a fresh interpreter: ``python -I -S -B`` (no environment variables honoured, no
  site-packages, no user site, no bytecode written), with an EMPTY environment, in a new
  session (its own process group, so a timeout kills everything it started) and a
  temporary working directory that is deleted afterwards;
- resource limits set before the interpreter starts (POSIX only): CPU seconds, address
  space, file size 0 (any write to a regular file fails with EFBIG), a handful of file
  descriptors, no core dumps, no new processes (the kernel ignores that one for root);
- inside, the script runs with restricted builtins and an audit hook that refuses every
  audit event (open, import, socket, subprocess, os.system, exec, ...) once the script's
  code is compiled;
- a wall-clock timeout and a cap on the size of the answer, enforced here;
- the result travels back as JSON on the child's stdout, never as pickles or code.

Without the ``resource`` module (Windows) there are no rlimits and no process group: the
script still runs in the child interpreter under the audit hook and the timeout, but its
CPU time, memory and file writes are bounded only by the timeout. See docs/sandbox.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

from .. import scriptlib
from ..errors import SandboxError
from .scripts import check_security

try:
    import resource
except ImportError:  # Windows: no rlimits
    resource = None  # type: ignore[assignment]

RUNNER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_runner.py")
SCRIPTLIB_PATH = os.path.abspath(scriptlib.__file__)

# 16 is enough for the interpreter (0-2, the answer's copy of stdout, the module being
# imported) and too few for anything that needs many.
MAX_OPEN_FILES = 16
# Output may be at most this many times the (JSON-encoded) source, plus a fixed allowance.
OUTPUT_FACTOR = 10
OUTPUT_ALLOWANCE = 1_000_000
_STDERR_KEEP = 64 * 1024
_READ_CHUNK = 64 * 1024
# How long to wait for the pipes to close once the child is gone.
_DRAIN_GRACE = 5.0


def run_script(script: str, source: str, *, timeout: float = 10.0, cpu_seconds: int = 5,
               memory_mb: int = 512, check: bool = True) -> str:
    """``transform(source)`` of ``script``, computed in the sandbox.

    Raises SecurityViolation / ValidationError when ``check`` is true and the script fails
    the allowlist, and SandboxError (one line) when it cannot be run, fails, breaks a
    limit or tries a forbidden operation."""
    if check:
        check_security(script)
    if timeout <= 0 or cpu_seconds < 1 or memory_mb < 1:
        raise SandboxError("the sandbox needs a positive timeout, CPU limit and memory limit")
    encoded_source = json.dumps(source, ensure_ascii=True)
    request = ('{"scriptlib": ' + json.dumps(SCRIPTLIB_PATH, ensure_ascii=True)
               + ', "script": ' + json.dumps(script, ensure_ascii=True)
               + ', "source": ' + encoded_source + "}").encode("ascii")
    max_output = OUTPUT_FACTOR * len(encoded_source) + OUTPUT_ALLOWANCE
    run = _run_child(request, timeout=timeout, max_output=max_output,
                     limits=_limits(cpu_seconds, memory_mb))
    return _interpret(run, timeout=timeout, cpu_seconds=cpu_seconds, memory_mb=memory_mb,
                      max_output=max_output)


# -- starting the child -----------------------------------------------------------------------


def _limits(cpu_seconds: int, memory_mb: int) -> list[tuple[int, int, int]]:
    """The rlimits for the child, computed here: the preexec function only applies them."""
    if resource is None:
        return []
    wanted = [
        # SIGXCPU at the soft limit, SIGKILL one second later should the signal be ignored.
        ("RLIMIT_CPU", cpu_seconds, cpu_seconds + 1),
        ("RLIMIT_AS", memory_mb * 1024 * 1024, memory_mb * 1024 * 1024),
        ("RLIMIT_FSIZE", 0, 0),
        ("RLIMIT_NOFILE", MAX_OPEN_FILES, MAX_OPEN_FILES),
        ("RLIMIT_CORE", 0, 0),
        ("RLIMIT_NPROC", 0, 0),
    ]
    limits = []
    for name, soft, hard in wanted:
        which = getattr(resource, name, None)
        if which is None:
            continue
        _cur_soft, cur_hard = resource.getrlimit(which)
        # An unprivileged process may only lower its hard limit: never ask above it.
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        limits.append((which, soft, hard))
    return limits


def _preexec(limits: Sequence[tuple[int, int, int]]) -> Callable[[], None]:
    # Lists are built in the parent; between fork and exec this only makes syscalls.
    optional = {getattr(resource, "RLIMIT_AS", None), getattr(resource, "RLIMIT_NPROC", None)}

    def apply_limits() -> None:
        for which, soft, hard in limits:
            try:
                resource.setrlimit(which, (soft, hard))
            except (ValueError, OSError):
                # macOS refuses some RLIMIT_AS / RLIMIT_NPROC values; the other limits are
                # essential, and a failure there aborts the start (Popen raises).
                if which not in optional:
                    raise

    return apply_limits


def _child_env() -> dict[str, str]:
    if os.name == "nt":
        # Windows' Python cannot start without SYSTEMROOT (its crypto and sockets need it).
        return {"SYSTEMROOT": os.environ.get("SYSTEMROOT", r"C:\Windows")}
    return {}


class _ChildRun:
    """What came back from one child: exit status, answer bytes, stderr tail, and why it
    was stopped, if it was."""

    def __init__(self) -> None:
        self.returncode: int | None = None
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.timed_out = False
        self.overflowed = False


def _run_child(request: bytes, *, timeout: float, max_output: int,
               limits: Sequence[tuple[int, int, int]]) -> _ChildRun:
    if not sys.executable:
        raise SandboxError("the sandbox cannot find the Python interpreter (sys.executable is empty)")
    run = _ChildRun()
    with tempfile.TemporaryDirectory(prefix="telemetry-sandbox-") as cwd:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", RUNNER_PATH],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=cwd, env=_child_env(), close_fds=True, start_new_session=True,
                preexec_fn=_preexec(limits) if limits else None,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"the sandbox could not start its interpreter: {_one_line(str(exc))}") from None
        try:
            _supervise(proc, run, request, timeout=timeout, max_output=max_output)
        finally:
            # Whatever happened, nothing of the child's may outlive this call.
            _kill_group(proc)
            if proc.returncode is None:
                proc.wait()
    return run


def _supervise(proc: subprocess.Popen[bytes], run: _ChildRun, request: bytes, *,
               timeout: float, max_output: int) -> None:
    """Feed the request, collect the answer (at most ``max_output`` bytes) and stderr,
    and wait at most ``timeout`` seconds. Threads, not selectors: pipes cannot be
    selected on Windows."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    def on_overflow() -> None:
        run.overflowed = True
        _kill_group(proc)

    threads = [
        threading.Thread(target=_feed, args=(proc.stdin, request), daemon=True),
        threading.Thread(target=_collect, args=(proc.stdout, run.stdout, max_output, on_overflow),
                         daemon=True),
        threading.Thread(target=_collect_tail, args=(proc.stderr, run.stderr), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        run.timed_out = True
    # Kill the group before draining: anything the child left behind (it should have
    # been unable to start anything) would otherwise hold the pipes open.
    _kill_group(proc)
    proc.wait()
    for thread in threads:
        thread.join(_DRAIN_GRACE)
    run.returncode = proc.returncode


def _feed(pipe: IO[bytes], data: bytes) -> None:
    try:
        pipe.write(data)
    except OSError:  # the child died or stopped reading; its exit status tells why
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _collect(pipe: IO[bytes], sink: bytearray, cap: int, on_overflow: Callable[[], None]) -> None:
    with pipe:
        while True:
            chunk = os.read(pipe.fileno(), _READ_CHUNK)
            if not chunk:
                return
            if len(sink) + len(chunk) > cap:
                on_overflow()
                return
            sink += chunk


def _collect_tail(pipe: IO[bytes], sink: bytearray) -> None:
    with pipe:
        while True:
            chunk = os.read(pipe.fileno(), _READ_CHUNK)
            if not chunk:
                return
            sink += chunk
            if len(sink) > _STDERR_KEEP:
                del sink[:-_STDERR_KEEP]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group (it leads its own session)."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass  # already gone


# -- reading the result -----------------------------------------------------------------------


def _interpret(run: _ChildRun, *, timeout: float, cpu_seconds: int, memory_mb: int,
               max_output: int) -> str:
    if run.timed_out:
        raise SandboxError(f"the script timed out after {timeout:g} s and was killed")
    if run.overflowed:
        raise SandboxError(f"the script's output exceeded the limit of {max_output} bytes")
    code = run.returncode if run.returncode is not None else -1
    if code < 0:
        raise SandboxError(_signal_reason(-code, cpu_seconds=cpu_seconds, memory_mb=memory_mb))
    if code != 0:
        raise SandboxError(_exit_reason(code, bytes(run.stderr), memory_mb=memory_mb))
    answer = _parse_answer(bytes(run.stdout))
    output = answer.get("output")
    if answer.get("ok") is True and isinstance(output, str):
        return output
    error = _one_line(str(answer.get("error", "unknown error")))
    kind = answer.get("kind")
    if kind == "memory":
        raise SandboxError(f"the script ran out of memory (limit {memory_mb} MB)")
    if kind == "forbidden":
        raise SandboxError(f"the script tried a forbidden operation ({_one_line(str(answer.get('event')))}) "
                           "and was stopped")
    raise SandboxError(f"the script failed in the sandbox: {error}")


def _parse_answer(data: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise SandboxError("the sandbox exited without a readable answer")
    if answer["ok"] and not isinstance(answer.get("output"), str):
        raise SandboxError("the sandbox answered without output text")
    return answer


def _signal_reason(signum: int, *, cpu_seconds: int, memory_mb: int) -> str:
    if signum == getattr(signal, "SIGXCPU", None):
        return f"the script exceeded its CPU limit ({cpu_seconds} s) and was killed"
    if signum == getattr(signal, "SIGSEGV", None):
        return "the script crashed (SIGSEGV), most likely from recursion too deep for the C stack"
    if signum == getattr(signal, "SIGKILL", None):
        # Our own kills are reported as timeout/overflow before this; this one came from
        # the CPU hard limit or the kernel's OOM killer.
        return (f"the script was killed (SIGKILL): it exceeded its CPU limit ({cpu_seconds} s) "
                f"or ran out of memory (limit {memory_mb} MB)")
    if signum == getattr(signal, "SIGABRT", None):
        return f"the script's interpreter aborted (SIGABRT), usually from running out of memory (limit {memory_mb} MB)"
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return f"the script was killed by {name}"


def _exit_reason(code: int, stderr: bytes, *, memory_mb: int) -> str:
    text = stderr.decode("utf-8", "replace")
    if "MemoryError" in text or "Cannot allocate memory" in text:
        return f"the script ran out of memory (limit {memory_mb} MB) before it could answer"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = f": {_one_line(lines[-1])}" if lines else ""
    return f"the sandbox exited with status {code} before it could answer{last}"


def _one_line(text: str, limit: int = 500) -> str:
    return " ".join(text.split())[:limit]
