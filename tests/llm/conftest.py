"""Fixtures of the LLM layer's tests: a local fake LLM server, a clean environment, and a
guard that makes any connection outside 127.0.0.1 fail the test (no test may reach the
network, and no real LLM can be reached here)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# Before anything imports litellm: its price table from the package, not from the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")

from fakellm import FakeLLM  # noqa: E402

_ENV_PREFIXES = ("LLM_", "OPENAI_", "ANTHROPIC_", "OLLAMA_", "DEBUG_TRACE", "TELEMETRY_INJECT_", "GEMINI_",
                 "GROQ_", "MISTRAL_")


class NetworkBlocked(AssertionError):
    pass


def _loopback(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # a unix socket
        return True
    host = str(address[0])
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address):
            raise NetworkBlocked(f"a test tried to reach {address!r}")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address):
            raise NetworkBlocked(f"a test tried to reach {address!r}")
        return real_connect_ex(self, address)

    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if host is not None and not _loopback((name,)) and name not in ("", "0.0.0.0"):
            raise NetworkBlocked(f"a test tried to resolve {name!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    key_file = os.environ.get("TELEMETRY_INJECT_KEY_FILE")  # the session's machine (tests/conftest.py)
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    if key_file:
        monkeypatch.setenv("TELEMETRY_INJECT_KEY_FILE", key_file)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    monkeypatch.setenv("LITELLM_MODE", "PRODUCTION")
    yield
    from pytest_telemetry_inject.trace import TRACE

    TRACE.configure(enabled=False)


@pytest.fixture
def fake_llm() -> Iterator[Callable[..., FakeLLM]]:
    """``fake_llm(script, ...)`` starts a server (stopped after the test)."""
    servers: list[FakeLLM] = []

    def start(script: Any = None, **kwargs: Any) -> FakeLLM:
        server = FakeLLM(script, **kwargs).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture(scope="session")
def litellm_module() -> Any:
    pytest.importorskip("litellm")
    from pytest_telemetry_inject.llm._litellm import load_litellm

    return load_litellm()
