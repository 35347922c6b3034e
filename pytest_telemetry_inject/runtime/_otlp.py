"""The function spans over OTLP/HTTP, encoded here: an event sink of the runtime.

The OpenTelemetry SDK costs about 20 µs a span where it is made (``bench/runtime_overhead.py``)
and its OTLP exporter about 70 µs more to encode it: a suite of half a million calls took
minutes, and the SDK's batch processor dropped a quarter of them when its queue filled. This
sink takes the runtime's events instead (a few µs a call, as the JSONL sink), and a thread
of its own encodes them to the OTLP protobuf wire format (a site's name, kind and code
attributes are encoded once; per span only its ids and times are packed) and posts them.
When it falls behind, the code that hands it events waits (a bounded queue): nothing is
dropped for speed. Every span is counted: handed over, delivered (HTTP 2xx), lost (a request
that still failed after its retries), and the counts say why.

Standard library only, like the runtime: ``struct``, ``http.client``, ``gzip``.

Ids: a span's id is this process's random 4-byte prefix and the event's 32-bit number, so
spans of pytest-xdist workers never clash; its parent is the function span it was called
from, else the span of the test that made it (``parents``: nodeid -> (trace id, span id), set
by the pytest plugin as each test starts), else none; its trace is that test's, else one
trace of this process.
"""

from __future__ import annotations

import gzip
import http.client
import os
import queue
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

_Q = struct.Struct("<Q").pack
_I = struct.Struct(">I").pack
_KIND_INTERNAL = b"\x30\x01"  # Span.kind (6) = SPAN_KIND_INTERNAL
_ERROR_STATUS = b"\x18\x02"  # Status.code (3) = STATUS_CODE_ERROR
BATCH = 2048  # spans a request, at most

SpanEvent = tuple[Any, int, int, int, int | None, int | None, object, object]
"""One event of the runtime's ``_emit``: (site, start, duration, thread id, span id, parent
span id, error, test)."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (bytes, a string, an embedded message)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _any(value: object) -> bytes:
    if isinstance(value, bool):
        return _varint(2 << 3) + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return _varint(3 << 3) + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return _varint(4 << 3 | 1) + struct.pack("<d", value)
    return _field(1, str(value).encode("utf-8", "surrogatepass"))


def key_value(key: str, value: object) -> bytes:
    """A ``KeyValue`` message."""
    return _field(1, key.encode("utf-8", "surrogatepass")) + _field(2, _any(value))


def _attributes(number: int, attributes: dict[str, object]) -> bytes:
    return b"".join(_field(number, key_value(key, value)) for key, value in attributes.items())


def site_attributes(module: str, name: str, file: str | None, line: int | None) -> dict[str, object]:
    """The code attributes of a function span, by the current semantic conventions."""
    attributes: dict[str, object] = {"code.function.name": f"{module}.{name}"}
    if file:
        attributes["code.file.path"] = file
    if line:
        attributes["code.line.number"] = line
    return attributes


def endpoint_from_environment(environ: Mapping[str, str] | None = None) -> tuple[str, dict[str, str], str, float]:
    """(traces URL, headers, compression, timeout in seconds) as the ``OTEL_*`` variables
    of the OTLP/HTTP exporter set them."""
    env = os.environ if environ is None else environ
    url = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
    if not url:
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "") or "http://localhost:4318"
        url = base.rstrip("/") + "/v1/traces"
    headers = {}
    for part in (env.get("OTEL_EXPORTER_OTLP_HEADERS", ""), env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "")):
        for item in part.split(","):
            key, sep, value = item.partition("=")
            if sep and key.strip():
                headers[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    compression = (env.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION") or env.get("OTEL_EXPORTER_OTLP_COMPRESSION")
                   or "none").strip().lower()
    try:
        timeout = float(env.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or env.get("OTEL_EXPORTER_OTLP_TIMEOUT") or 10)
    except ValueError:
        timeout = 10.0
    if timeout > 1000:  # the variables are in milliseconds since the spec's 1.x; small values are seconds
        timeout /= 1000
    return url, headers, compression, timeout


class OtlpSink:
    """An event sink (``take`` a batch, ``write`` at flush) that sends spans over OTLP/HTTP."""

    settings: dict[str, Any]
    """The settings it was made with: the runtime sets them once it has made the sink (and
    makes a new sink when they change)."""

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, compression: str = "none",
                 timeout: float = 10.0, resource: dict[str, object] | None = None, epoch_ns: int = 0,
                 parents: Callable[[object], tuple[bytes, bytes] | None] | None = None,
                 max_pending: int = 32) -> None:
        self.url = url
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._parsed = parsed
        self.headers = {"Content-Type": "application/x-protobuf", **(headers or {})}
        self.gzip = compression == "gzip"
        if self.gzip:
            self.headers["Content-Encoding"] = "gzip"
        self.timeout = timeout
        self.resource = _field(1, _attributes(1, resource or {}))  # ResourceSpans.resource
        self.epoch_ns = epoch_ns
        self.parents = parents or (lambda test: None)
        self._salt = os.urandom(4)
        self._trace = os.urandom(16)  # the trace of spans made outside any test
        self._sites: dict[int, tuple[bytes, bytes]] = {}  # id(site) -> (scope name, name + kind + attributes)
        self._queue: queue.Queue[list[SpanEvent] | threading.Event] = queue.Queue(maxsize=max_pending)
        self._connection: http.client.HTTPConnection | None = None
        self.sent = 0
        self.delivered = 0
        self.lost = 0
        self.error = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="telemetry-inject OTLP", daemon=True)
        self._thread.start()

    # -- the sink interface (called by the runtime, under its lock) --

    def take(self, batch: list[SpanEvent]) -> None:
        """Hand a batch of events over; waits while the sender is behind (back-pressure)."""
        self.sent += len(batch)
        self._queue.put(batch)

    def write(self) -> None:
        """Wait until every event handed over was sent (at flush, and at exit)."""
        if not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait(self.timeout * 4 + 30)

    # -- the sending thread --

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            for start in range(0, len(item), BATCH):
                part = item[start:start + BATCH]
                try:
                    body = self.encode(part)
                except Exception as exc:  # an event this encoder cannot read: counted
                    self._lose(len(part), f"cannot encode: {type(exc).__name__}: {exc}")
                    continue
                self._post(body, len(part))

    def _lose(self, count: int, why: str) -> None:
        with self._lock:
            self.lost += count
            self.error = why

    def _post(self, body: bytes, count: int) -> None:
        if self.gzip:
            body = gzip.compress(body, 1)
        path = self._parsed.path or "/v1/traces"
        if self._parsed.query:
            path += "?" + self._parsed.query
        why = ""
        for attempt in range(4):  # the OTLP spec's retryable answers, with backoff
            try:
                connection = self._connection or self._connect()
                connection.request("POST", path, body, self.headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                self._connection = None
                why = f"{type(exc).__name__}: {exc}".splitlines()[0]
            else:
                if 200 <= status < 300:
                    with self._lock:
                        self.delivered += count
                    return
                why = f"HTTP {status} from {self.url}"
                if status not in (429, 502, 503, 504):
                    break
            time.sleep(min(0.5 * 2 ** attempt, 4.0))
        self._lose(count, why)

    def _connect(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._parsed.scheme == "https" else http.client.HTTPConnection
        host = self._parsed.hostname
        assert host is not None  # __init__ refuses a URL without one
        self._connection = kind(host, self._parsed.port, timeout=self.timeout)
        return self._connection

    # -- encoding --

    def _site(self, site: Any) -> tuple[bytes, bytes]:
        found = self._sites.get(id(site))
        if found is None:
            static = (_field(5, site.name.encode("utf-8", "surrogatepass")) + _KIND_INTERNAL
                      + _attributes(9, site_attributes(site.module, site.name, site.file, site.line)))
            found = self._sites[id(site)] = (site.module.encode("utf-8", "surrogatepass"), static)
        return found

    def encode(self, events: list[SpanEvent]) -> bytes:
        """An ``ExportTraceServiceRequest`` of these events (tuples of the runtime's ``_emit``)."""
        salt, epoch, parents, default_trace = self._salt, self.epoch_ns, self.parents, self._trace
        by_scope: dict[bytes, list[bytes]] = {}
        for site, start, duration, _tid, span_id, parent, error, test in events:
            scope, static = self._site(site)
            context = parents(test) if test is not None else None
            trace_id = context[0] if context is not None else default_trace
            if parent is not None:
                parent_bytes = b"\x22\x08" + salt + _I(parent & 0xFFFFFFFF)
            elif context is not None:
                parent_bytes = b"\x22\x08" + context[1]
            else:
                parent_bytes = b""
            begin = start + epoch
            span = (b"\x0a\x10" + trace_id + b"\x12\x08" + salt + _I((span_id or 0) & 0xFFFFFFFF) + parent_bytes
                    + static + b"\x39" + _Q(begin) + b"\x41" + _Q(begin + duration))
            if error is not None:
                kind = getattr(error, "__qualname__", None) or getattr(error, "__name__", None) or repr(error)
                span += (_field(11, b"\x09" + _Q(begin + duration) + _field(2, b"exception")
                                + _field(3, key_value("exception.type", kind)))
                         + _field(15, _field(2, kind.encode("utf-8", "surrogatepass")) + _ERROR_STATUS))
            by_scope.setdefault(scope, []).append(b"\x12" + _varint(len(span)) + span)
        scopes = b"".join(_field(2, _field(1, _field(1, name)) + b"".join(spans)) for name, spans in by_scope.items())
        return _field(1, self.resource + scopes)
