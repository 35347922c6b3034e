"""`--telemetry-otel` delivers: every span reaches a real OTLP/HTTP receiver (a local server
that decodes each request with opentelemetry-proto), or the loss is counted and printed; a
tracer provider set up in conftest.py is the one used; test spans carry their outcome."""

from __future__ import annotations

import http.server
import json
import textwrap
import threading

import pytest

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

MODULE = '''\
def leaf(x):
    return x + 1


def middle(n):
    total = 0
    for i in range(n):
        total += leaf(i)
    return total


def broken(x):
    raise KeyError(x)
'''

TESTS = '''\
import pytest

from pkg.work import broken, middle


@pytest.mark.parametrize("n", range(40))
def test_middle(n):
    assert middle(50) == 1275


def test_fails():
    assert middle(2) == 99


def test_raises():
    with pytest.raises(KeyError):
        broken(1)


@pytest.mark.skip(reason="not today")
def test_skipped():
    pass
'''


class Receiver(http.server.BaseHTTPRequestHandler):
    """Decodes each request; answers ``status`` (200, or an error to make the export fail)."""

    status = 200
    spans: list = []
    requests = 0
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            type(self).requests += 1
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    type(self).spans.extend((scope.scope.name, span) for span in scope.spans)
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch):
    Receiver.spans, Receiver.requests, Receiver.status = [], 0, 200
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{server.server_port}/v1/traces")
    yield Receiver
    server.shutdown()


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    (pytester.path / "pkg").mkdir()
    (pytester.path / "pkg" / "__init__.py").write_text("")
    (pytester.path / "pkg" / "work.py").write_text(MODULE)
    pytester.makepyfile(test_work=TESTS)
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\naddopts = "-p no:cacheprovider"\n')
    return pytester


def _calls(project: pytest.Pytester) -> int:
    return json.loads((project.path / "r.json").read_text())["totals"]["calls"]


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["single", "xdist"])
def test_every_span_arrives_and_the_summary_says_so(project: pytest.Pytester, receiver, workers) -> None:
    result = project.runpytest_subprocess("--inject-telemetry", "--telemetry-otel", "--telemetry-report=r.json",
                                          *workers)
    result.assert_outcomes(passed=42, failed=1, skipped=1)  # 42: 41 tests and the telemetry item
    calls = _calls(project)
    assert calls == 40 * 51 + 3 + 1
    items = 44  # every test run (the skipped one's span too), and pkg/work.py::telemetry
    expected = calls + items + 1  # and the session span
    assert len(receiver.spans) == expected
    result.stdout.fnmatch_lines([f"spans over OTLP: {expected} ended, {expected} delivered, 0 lost"])
    ids = [span.span_id for _, span in receiver.spans]
    assert len(set(ids)) == len(ids) and all(len(i) == 8 for i in ids)


def test_function_spans_nest_under_their_test_with_the_conventions_attributes(project: pytest.Pytester,
                                                                              receiver) -> None:
    project.runpytest_subprocess("--inject-telemetry", "--telemetry-otel")
    spans = [span for _, span in receiver.spans]
    by_id = {span.span_id: span for span in spans}
    tests = {span.name: span for span in spans if span.name.startswith("test ")}
    fails = tests["test test_work.py::test_fails"]
    assert fails.status.code == 2 and "assert 3 == 99" in fails.status.message  # STATUS_CODE_ERROR
    attributes = {a.key: a.value for a in fails.attributes}
    assert attributes["pytest.outcome"].string_value == "failed"
    assert attributes["code.function.name"].string_value == "test_fails"
    assert any(event.name == "exception" for event in fails.events)
    passed = tests["test test_work.py::test_middle[0]"]
    assert passed.status.code == 1 and {a.key: a.value for a in passed.attributes}["pytest.outcome"].string_value == \
        "passed"
    skipped = tests["test test_work.py::test_skipped"]
    assert {a.key: a.value for a in skipped.attributes}["pytest.outcome"].string_value == "skipped"
    middles = [span for span in spans if span.name == "middle"]
    assert all(by_id[span.parent_span_id].name.startswith("test ") for span in middles)
    assert all(span.trace_id == by_id[span.parent_span_id].trace_id for span in middles)
    leaves = [span for span in spans if span.name == "leaf"]
    assert all(by_id[span.parent_span_id].name == "middle" for span in leaves)
    leaf = {a.key: a.value for a in leaves[0].attributes}
    assert leaf["code.function.name"].string_value == "pkg.work.leaf"
    assert leaf["code.file.path"].string_value.endswith("work.py") and leaf["code.line.number"].int_value == 1
    assert not {"code.function", "code.filepath", "code.lineno"} & set(leaf)  # the deprecated names
    (broken,) = [span for span in spans if span.name == "broken"]
    assert broken.status.code == 2 and broken.events[0].name == "exception"
    assert all(s.end_time_unix_nano >= s.start_time_unix_nano > 1_600_000_000 * 10**9 for s in spans)


def test_a_loss_is_counted_and_printed(project: pytest.Pytester, receiver) -> None:
    receiver.status = 400  # not retried: every request fails
    result = project.runpytest_subprocess("--inject-telemetry", "--telemetry-otel")
    result.assert_outcomes(passed=42, failed=1, skipped=1)
    line = next(text for text in result.stdout.lines if text.startswith("spans over OTLP:"))
    ended = int(line.split()[3])
    assert ended > 2000 and f"0 delivered, {ended} lost" in line and "HTTP 400" in line


def test_a_provider_set_up_in_conftest_gets_the_spans(project: pytest.Pytester, receiver) -> None:
    (project.path / "conftest.py").write_text(textwrap.dedent('''\
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        EXPORTER = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(provider)


        def pytest_sessionfinish(session):
            names = [span.name for span in EXPORTER.get_finished_spans()]
            with open("mine.json", "w") as handle:
                import json
                json.dump(names, handle)
        '''))
    result = project.runpytest_subprocess("--inject-telemetry", "--telemetry-otel")
    result.assert_outcomes(passed=42, failed=1, skipped=1)
    names = json.loads((project.path / "mine.json").read_text())
    assert names.count("middle") == 41 and names.count("leaf") == 40 * 50 + 2
    assert "test test_work.py::test_fails" in names
    assert receiver.requests == 0, "the project's provider was not used"
    result.stdout.fnmatch_lines(["spans went to the project's own OpenTelemetry tracer provider*"])


def test_the_otel_target_is_counted_in_the_summary(project: pytest.Pytester) -> None:
    (project.path / "conftest.py").write_text(textwrap.dedent('''\
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        trace.set_tracer_provider(TracerProvider())
        '''))
    result = project.runpytest_subprocess("--inject-telemetry", "-o", "telemetry_target=otel")
    result.assert_outcomes(passed=42, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*3 functions instrumented in 1 files*; 3 called, 2044 calls*"])


def test_the_otel_target_without_a_provider_says_nothing_is_recorded(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("--inject-telemetry", "-o", "telemetry_target=otel")
    result.assert_outcomes(passed=42, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["telemetry_target = otel: the instrumented code calls OpenTelemetry's API, and no "
                                 "SDK tracer provider is set up, so nothing is recorded*"])
