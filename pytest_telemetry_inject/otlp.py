"""``--telemetry-otel``: the test session as OpenTelemetry traces, delivered.

A session span, a span per test (made current while the test runs, so the runtime's function
spans nest under it) and the function spans go to the tracer provider the process has: the
one a ``conftest.py``, a plugin or the environment set up (looked up when the session starts,
after the conftest files load), else one this module makes, exporting over OTLP/HTTP as the
standard ``OTEL_*`` variables say. Test spans follow pytest-opentelemetry's conventions:
``pytest.nodeid``, ``pytest.outcome`` (``passed``, ``failed``, ``skipped``) and the code
attributes of the test function; a failed test's span has status ERROR and the exception as
an event.

The provider this module makes exports through :class:`DeliveringSpanProcessor`, not the
SDK's ``BatchSpanProcessor``: that one drops spans when its queue of 2,048 is full, which a
test suite making hundreds of thousands of calls does in seconds. Here the code that ends a
span waits instead when the exporter falls behind (a bounded queue of batches), and every
span is counted: ended, delivered, lost (an export that failed after the exporter's own
retries). The summary prints those counts, so a loss is never silent.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

import pytest

SCOPE = "pytest_telemetry_inject.plugin"


class DeliveringSpanProcessor:
    """Exports ended spans in batches from a thread of its own, without dropping any: when
    ``max_pending`` batches wait, ``on_end`` blocks until one is sent (back-pressure). Counts
    what it was given, delivered and lost."""

    def __init__(self, exporter: Any, *, batch_size: int = 1024, max_pending: int = 16) -> None:
        self.exporter = exporter
        self.batch_size = batch_size
        self._batch: list[Any] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[list[Any] | threading.Event | None] = queue.Queue(maxsize=max_pending)
        self.ended = 0
        self.delivered = 0
        self.lost = 0
        self.last_error = ""
        self._thread = threading.Thread(target=self._work, name="telemetry-inject OTLP export", daemon=True)
        self._thread.start()

    # -- the SpanProcessor interface --

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def _on_ending(self, span: Any) -> None:  # (newer SDKs call it before on_end)
        pass

    def on_end(self, span: Any) -> None:
        with self._lock:
            self._batch.append(span)
            self.ended += 1
            if len(self._batch) < self.batch_size:
                return
            batch, self._batch = self._batch, []
        self._queue.put(batch)  # blocks while the exporter is behind: back-pressure, no loss

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        with self._lock:
            batch, self._batch = self._batch, []
        if batch:
            self._queue.put(batch)
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout_millis / 1000)

    def shutdown(self) -> None:
        self.force_flush()
        self._queue.put(None)
        self._thread.join(30)
        try:
            self.exporter.shutdown()
        except Exception:
            pass

    # -- the export thread --

    def _work(self) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                result = self.exporter.export(item)
            except Exception as exc:  # the exporter's own failure: counted, never raised
                result = None
                self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if result == SpanExportResult.SUCCESS:
                self.delivered += len(item)
            else:
                self.lost += len(item)
                if result is not None:
                    self.last_error = self.last_error or "the exporter reported a failure"


class SpanCounter:
    """A span processor that counts the spans of the instrumented modules per name, for the
    summary of ``telemetry_target = otel`` (there the code calls OpenTelemetry directly,
    not this package's runtime): count, total and errors, keyed like the runtime's rows."""

    def __init__(self, modules: set[str]) -> None:
        self.modules = modules
        self.rows: dict[tuple[str, str], list[int]] = {}
        self._lock = threading.Lock()

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def _on_ending(self, span: Any) -> None:
        pass

    def on_end(self, span: Any) -> None:
        try:
            scope = span.instrumentation_scope.name if span.instrumentation_scope is not None else ""
            if scope not in self.modules:
                return
            duration = (span.end_time or 0) - (span.start_time or 0)
            failed = span.status is not None and span.status.status_code.name == "ERROR"
            with self._lock:
                row = self.rows.setdefault((scope, span.name), [0, 0, 0])
                row[0] += 1
                row[1] += duration
                row[2] += failed
        except Exception:  # a span of another shape: not ours to count
            pass

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"module": module, "name": name, "count": count, "total_ns": total, "min_ns": 0, "max_ns": 0,
                     "errors": errors, "exceptions": {}} for (module, name), (count, total, errors) in self.rows.items()]

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        pass


class OtelSession:
    """The session's OpenTelemetry side (see the module docstring). A pytest-xdist worker's
    tests go under the controller's session span: its W3C traceparent comes in the worker's
    input, which exists only once the worker runs (hence lazily)."""

    def __init__(self, config: pytest.Config, provider: Any, processor: DeliveringSpanProcessor | None) -> None:
        self.config = config
        self.provider = provider
        self.processor = processor
        """The processor this session added (None: the project's own provider exports)."""
        self.tracer = provider.get_tracer(SCOPE)
        self.session_span: Any = None
        self._parent: Any = None
        self.outcomes: dict[str, tuple[str, BaseException | None, str]] = {}
        self.counter: SpanCounter | None = None
        self.contexts: dict[str, tuple[bytes, bytes]] = {}
        """nodeid -> (trace id, span id) of its test span: the parent of its function spans
        that the runtime's OTLP sink sends."""

    @classmethod
    def start(cls, config: pytest.Config) -> OtelSession:
        try:
            from opentelemetry import trace
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
        except ImportError:
            raise pytest.UsageError("--telemetry-otel needs OpenTelemetry: "
                                    "pip install 'pytest-telemetry-inject[otel]'") from None
        provider = trace.get_tracer_provider()
        if _is_configured(provider):  # the project's own (conftest.py, a plugin, the environment)
            return cls(config, provider, None)
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise pytest.UsageError("--telemetry-otel needs the OTLP exporter: "
                                    "pip install 'pytest-telemetry-inject[otel]'") from None
        protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                    or "http/protobuf").strip()
        if protocol != "http/protobuf":
            raise pytest.UsageError(f"--telemetry-otel exports over OTLP/HTTP (http/protobuf), not {protocol!r} "
                                    "(OTEL_EXPORTER_OTLP_PROTOCOL); set up a tracer provider of your own in "
                                    "conftest.py for another protocol")
        provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get(
            "OTEL_SERVICE_NAME", "pytest")}))
        processor = DeliveringSpanProcessor(OTLPSpanExporter())
        # A SpanProcessor by its methods, not by its class: this module imports opentelemetry
        # only when the session exports.
        provider.add_span_processor(processor)  # type: ignore[arg-type]
        return cls(config, provider, processor)

    def runtime_settings(self) -> dict[str, Any]:
        """How the runtime sends the function spans: with a provider of the project's, through
        it (OpenTelemetry's SDK makes them); with this session's own, its OTLP sink encodes
        them (``runtime/_otlp.py``: a few µs a span instead of the SDK's ~90 µs, with
        back-pressure and counts), parented under the test spans this session makes."""
        if self.processor is None:
            return {"otel": True, "otel_provider": self.provider}
        from .runtime._otlp import endpoint_from_environment

        url, headers, compression, timeout = endpoint_from_environment()
        resource = dict(getattr(getattr(self.provider, "resource", None), "attributes", {}) or {})
        return {"otel": False, "otlp": {"url": url, "headers": headers, "compression": compression,
                                        "timeout": timeout, "resource": resource, "parents": self.contexts.get}}

    def count_spans_of(self, modules: set[str]) -> bool:
        """Count the spans of these modules (``telemetry_target = otel``); False when the
        provider takes no processor (an API-only one records nothing to count)."""
        add = getattr(self.provider, "add_span_processor", None)
        if add is None:
            return False
        self.counter = SpanCounter(modules)
        add(self.counter)
        return True

    def parent(self) -> Any:
        """The context test spans go under: the controller's session span (from a worker's
        input), else this process's own session span, started now."""
        if self._parent is None:
            from opentelemetry import context, propagate, trace

            workerinput = getattr(self.config, "workerinput", None) or {}
            if workerinput.get("telemetry_traceparent"):
                self._parent = propagate.extract({"traceparent": workerinput["telemetry_traceparent"]})
            else:
                self.session_span = self.tracer.start_span(
                    "pytest session", attributes={"pytest.rootdir": str(self.config.rootpath)})
                self._parent = trace.set_span_in_context(self.session_span, context.get_current())
        return self._parent

    def traceparent(self) -> str:
        from opentelemetry import propagate

        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=self.parent())
        return carrier.get("traceparent", "")

    def start_test(self, item: pytest.Item) -> tuple[Any, Any]:
        from opentelemetry import context, trace

        attributes: dict[str, Any] = {"pytest.nodeid": item.nodeid}
        path, line, name = item.location
        attributes["code.function.name"] = name
        attributes["code.file.path"] = path
        if line is not None:
            attributes["code.line.number"] = line + 1
        span = self.tracer.start_span(f"test {item.nodeid}", context=self.parent(), attributes=attributes)
        ids = span.get_span_context()
        self.contexts[item.nodeid] = (ids.trace_id.to_bytes(16, "big"), ids.span_id.to_bytes(8, "big"))
        return span, context.attach(trace.set_span_in_context(span))

    def report(self, report: pytest.TestReport, exception: BaseException | None) -> None:
        """Remember a phase's outcome (setup, call, teardown): the worst one is the test's."""
        previous = self.outcomes.get(report.nodeid)
        outcome: str = report.outcome
        if report.when != "call" and outcome == "failed":
            outcome = "error" if report.when == "setup" else "failed"
        rank = {"passed": 0, "skipped": 1, "failed": 2, "error": 2}
        if previous is None or rank.get(outcome, 0) > rank.get(previous[0], 0):
            message = ""
            if outcome in ("failed", "error"):
                if exception is not None:
                    message = f"{type(exception).__name__}: {exception}".strip().splitlines()[0]
                else:
                    message = ((getattr(report, "longreprtext", "") or "").strip().splitlines() or [""])[-1]
                message = message[:200]
            self.outcomes[report.nodeid] = (outcome, exception, message)

    def end_test(self, nodeid: str, handle: tuple[Any, Any]) -> None:
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        span, token = handle
        try:
            context.detach(token)
        except Exception:
            pass
        outcome, exception, message = self.outcomes.pop(nodeid, ("passed", None, ""))
        try:
            span.set_attribute("pytest.outcome", outcome)
            if outcome in ("failed", "error"):
                if exception is not None:
                    span.record_exception(exception)
                span.set_status(Status(StatusCode.ERROR, message or f"the test {outcome}"))
            elif outcome == "passed":
                span.set_status(Status(StatusCode.OK))
        finally:
            span.end()

    def finish(self) -> None:
        if self.session_span is not None:
            self.session_span.end()
        try:
            self.provider.force_flush()
        except Exception:  # an exporter that cannot reach its collector: the run goes on
            pass

    def summary(self) -> list[str]:
        """What the summary says of the export (the counts of this process's processor)."""
        processor = self.processor
        if processor is None:
            return ["spans went to the project's own OpenTelemetry tracer provider (its processors decide "
                    "what is exported)"]
        line = (f"spans over OTLP: {processor.ended} ended, {processor.delivered} delivered, "
                f"{processor.lost} lost")
        if processor.lost:
            line += f" ({processor.last_error or 'the exporter failed'})"
        return [line]


def _is_configured(provider: Any) -> bool:
    """A provider someone set up (not OpenTelemetry's own placeholders)."""
    kind = type(provider)
    return not (kind.__module__.startswith("opentelemetry.trace")
                and kind.__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"))
