"""A scripted, local LLM server: OpenAI-compatible and Ollama-compatible, on 127.0.0.1.

Tests point litellm's real HTTP path at it (``api_base`` / ``LLM_BASE_URL``). Each test
scripts the answers: a ``Reply`` per request (or a function of the request that returns
one), with a delay, a status, headers, a body that may be malformed on purpose. Every
request is recorded, authorization header included, so tests can check what was sent.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any


@dataclass
class Reply:
    text: str = ""
    """The assistant's answer (for a 200)."""
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    """The body as it is sent (malformed JSON, an error document); overrides ``text``."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    drop: bool = False
    """Close the connection without answering."""
    uncapped: bool = False
    """Report ``prompt_tokens``/``completion_tokens`` as they are, even beyond the request's
    ``max_tokens`` (a provider that misreports, or bills more than it was allowed)."""


@dataclass
class Request:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def prompt(self) -> str:
        return "\n".join(str(m.get("content", "")) for m in self.body.get("messages", []))


Handler = Callable[[Request], Reply]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
KEY = "sk-test-SECRETKEY-0123456789abcdef"
"""The API key every test configures: it must never appear in any output."""


class FakeLLM:
    """One server. ``script`` is a list of replies served in order (the last repeats), or a
    function of the request. Ollama's ``/api/tags`` and ``/api/show`` answer from ``models``
    and ``context_length``."""

    def __init__(self, script: list[Reply] | Handler | None = None, *, models: list[str] | None = None,
                 context_length: int = 8192, name: str = "fake") -> None:
        # The tool talks to this server through litellm: without the llm extra, a test that
        # starts one is skipped, saying so (the core tests install without it).
        import pytest

        pytest.importorskip("litellm", reason="litellm is not installed (pip install -e '.[llm]')")
        self.script = script if script is not None else [Reply("OK")]
        self.models = models or ["llama3.1:8b"]
        self.context_length = context_length
        self.name = name
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._served = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> FakeLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def chat_requests(self) -> list[Request]:
        return [r for r in self.requests if r.path.endswith(("/chat/completions", "/api/chat", "/api/generate"))]

    # -- serving ----------------------------------------------------------------------------

    def _next(self, request: Request) -> Reply:
        if callable(self.script):
            return self.script(request)
        with self._lock:
            index = min(self._served, len(self.script) - 1)
            self._served += 1
        return self.script[index]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else b""
                try:
                    return json.loads(data or b"{}")
                except ValueError:
                    return {"_raw": data.decode("latin-1")}

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self) -> None:
                request = Request(self.path, {}, {k.lower(): v for k, v in self.headers.items()}, time.monotonic())
                fake.requests.append(request)
                if self.path.startswith("/api/tags"):
                    models = [{"name": m, "model": m, "size": 4_900_000_000,
                               "details": {"parameter_size": "8.0B", "quantization_level": "Q4_K_M"}}
                              for m in fake.models]
                    self._send(200, json.dumps({"models": models}).encode())
                elif self.path.startswith("/v1/models") or self.path.startswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [
                        {"id": m, "object": "model"} for m in fake.models]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:
                body = self._body()
                request = Request(self.path, body, {k.lower(): v for k, v in self.headers.items()}, time.monotonic())
                fake.requests.append(request)
                if self.path.startswith("/api/show"):
                    name = body.get("model") or body.get("name") or ""
                    if name not in fake.models:
                        self._send(404, json.dumps({"error": f"model '{name}' not found"}).encode())
                        return
                    info = {"general.architecture": "llama",
                            "llama.context_length": fake.context_length}
                    self._send(200, json.dumps({"model_info": info, "parameters": "stop \"<|eot_id|>\"",
                                                "details": {"parameter_size": "8.0B"}}).encode())
                    return
                reply = fake._next(request)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    try:
                        self.connection.shutdown(2)
                    except OSError:
                        pass
                    return
                if reply.raw is not None:
                    self._send(reply.status, reply.raw, reply.headers)
                    return
                if reply.status != 200:
                    error = {"error": {"message": reply.text or f"status {reply.status}",
                                       "type": "error", "code": str(reply.status)}}
                    self._send(reply.status, json.dumps(error).encode(), reply.headers)
                    return
                prompt_tokens = reply.prompt_tokens or max(1, len(request.prompt) // 4)
                completion_tokens = reply.completion_tokens or max(1, len(reply.text) // 4)
                # A real server never answers with more tokens than the request allows.
                limit = body.get("max_tokens") or (body.get("options") or {}).get("num_predict")
                if isinstance(limit, int) and limit > 0 and not reply.uncapped:
                    completion_tokens = min(completion_tokens, limit)
                if self.path.startswith("/api/chat"):
                    answer = {"model": request.model, "created_at": "2024-07-01T00:00:00Z",
                              "message": {"role": "assistant", "content": reply.text},
                              "done": True, "done_reason": "stop", "total_duration": 1,
                              "prompt_eval_count": prompt_tokens, "eval_count": completion_tokens}
                elif self.path.startswith("/api/generate"):
                    answer = {"model": request.model, "created_at": "2024-07-01T00:00:00Z",
                              "response": reply.text, "done": True,
                              "prompt_eval_count": prompt_tokens, "eval_count": completion_tokens}
                else:
                    answer = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1719792000,
                              "model": request.model,
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": reply.text}}],
                              "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                        "total_tokens": prompt_tokens + completion_tokens}}
                self._send(200, json.dumps(answer).encode(), reply.headers)

        return _Handler


# -- helpers of the tests ------------------------------------------------------------------------


def openai_env(fake: FakeLLM, **extra: str) -> dict[str, str]:
    """The environment of a project whose model is served by ``fake`` (OpenAI-compatible)."""
    return {"LLM_MODEL": "openai/gpt-4o-mini", "LLM_BASE_URL": fake.url + "/v1", "OPENAI_API_KEY": KEY,
            "LLM_MAX_RETRY_WAIT": "5", **extra}


def session_for(tmp_path: Path, env: dict[str, str], **kwargs: Any) -> Any:
    from pytest_telemetry_inject.llm.config import LLMConfig
    from pytest_telemetry_inject.llm.session import LLMSession

    return LLMSession(LLMConfig.load(tmp_path, env=env), **kwargs)


def script_answer(edits: str, *, extra: str = "") -> str:
    """An answer holding an insertion script with ``edits`` (the body of the EDITS list)."""
    return ("Here is the fixed script.\n\n```python\n"
            "from pytest_telemetry_inject.scriptlib import apply, indent, insert, insert_after, insert_text\n\n"
            f"{extra}EDITS = [\n{edits}\n]\n\n\ndef transform(source):\n    return apply(source, EDITS)\n```\n")



_NUMBERED = re.compile(r"^\s*(\d+) \| (.*)$", re.M)
_SPAN = re.compile(r"SPAN_NAME = '([^']*)'")


def request_function(request: Request) -> tuple[str, list[str]]:
    """(span name, the function's lines) of a refactoring request."""
    prompt = request.prompt
    span = _SPAN.search(prompt)
    lines = [m.group(2) for m in _NUMBERED.finditer(prompt.split("Function `", 1)[-1])]
    return (span.group(1) if span else ""), lines


def decorator_fix(request: Request) -> Reply:
    """A correct answer: the decorator form above the def line of the requested function."""
    span, lines = request_function(request)
    for number, line in enumerate(lines, 1):
        stripped = line.lstrip()
        if stripped.startswith(("def ", "async def ")):
            indent = line[: len(line) - len(stripped)]
            line = f'{indent}@_telemetry.instrument("{span}")'
            return Reply(script_answer(f"    insert(before={number}, text={line!r}),"))
    return Reply("I found no function.")


def code_changing_fix(request: Request) -> Reply:
    """A wrong answer: the telemetry is right but the script also changes the code."""
    span, _lines = request_function(request)
    return Reply("```python\nfrom pytest_telemetry_inject.scriptlib import apply\n\n\ndef transform(source):\n"
                 f"    return '@_telemetry.instrument(\"{span}\")\\n' + source.replace('return', 'yield')\n```")


HOSTILE = ("```python\nimport os\nfrom pytest_telemetry_inject.scriptlib import apply\n\n\n"
           "def transform(source):\n    os.system('touch {marker}')\n    open('{marker}', 'w').write('pwned')\n"
           "    return source\n```")


class RecordedNVML:
    """Replays a recorded NVML session with pynvml's function names and return shapes."""

    def __init__(self, recording: dict[str, Any]) -> None:
        self.recording = recording
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.recording["devices"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        name = self.recording["devices"][handle]["name"]
        return name.encode() if self.recording.get("name_as_bytes") else name

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(**self.recording["devices"][handle]["memory"])


def nvml(name: str) -> RecordedNVML:
    return RecordedNVML(json.loads((FIXTURES / name).read_text()))
