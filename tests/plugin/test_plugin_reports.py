"""The plugin's reports: JSON, HTML, Chrome trace, OpenTelemetry over OTLP (a real local
receiver on 127.0.0.1), with and without pytest-xdist."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

MODULE = '''
def add(a, b):
    return a + b


def total(items):
    result = 0
    for item in items:
        result = add(result, item)
    return result


def broken():
    raise KeyError("missing")


def unused():
    return "never"
'''

TESTS = '''
import pytest

from calc import add, broken, total


def test_total():
    assert total([1, 2, 3]) == 6


def test_add():
    assert add(2, 2) == 4


def test_broken():
    with pytest.raises(KeyError):
        broken()
'''


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(calc=MODULE)
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_calc.py").write_text(TESTS)
    pytester.makeini("[pytest]\ntestpaths = tests\n")
    return pytester


def run_reports(project: pytest.Pytester, *extra: str) -> tuple[dict, dict, str]:
    result = project.runpytest_subprocess("--inject-telemetry", "-p", "no:cacheprovider", "--telemetry-report=r.json",
                                          "--telemetry-html=r.html", "--telemetry-trace=t.json", *extra)
    result.assert_outcomes(passed=4)  # three tests and calc.py::telemetry
    report = json.loads((project.path / "r.json").read_text())
    trace = json.loads((project.path / "t.json").read_text())
    return report, trace, (project.path / "r.html").read_text()


def test_reading_the_telemetry_first_takes_nothing_from_the_reports(project: pytest.Pytester) -> None:
    # Another plugin (the gate's, say) reads the merged telemetry before the reports are written.
    project.makeconftest('''
import pytest
from pytest_telemetry_inject.plugin import active_session

READ = []


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    READ.append(active_session(session.config).merged())
    READ.append(active_session(session.config).merged())
    first, second = READ
    assert first["events"] and first["events"] == second["events"], (len(first["events"]), len(second["events"]))
''')
    report, trace, _ = run_reports(project)
    names = [event["name"] for event in trace["traceEvents"] if event.get("ph") == "X"]
    assert names.count("add") == 4 and "broken" in names
    assert by_name(report)["add"]["count"] == 4


def by_name(report: dict) -> dict:
    return {row["name"]: row for row in report["functions"]}


def test_json_html_and_trace_reports(project: pytest.Pytester) -> None:
    report, trace, html = run_reports(project)
    functions = by_name(report)
    assert functions["add"]["count"] == 4 and functions["total"]["count"] == 1
    assert functions["broken"]["errors"] == 1 and functions["broken"]["exceptions"] == {"KeyError": 1}
    assert report["never_called"] == ["calc:unused"]
    per_test = {(test["test"], row["name"]): row["count"] for test in report["tests"] for row in test["functions"]}
    assert per_test[("tests/test_calc.py::test_total", "add")] == 3
    assert per_test[("tests/test_calc.py::test_add", "add")] == 1
    names = [event["name"] for event in trace["traceEvents"] if event.get("ph") == "X"]
    assert names.count("add") == 4 and "broken" in names
    # Self-contained: its data inline, nothing fetched from anywhere.
    assert "<script" in html and '["calc","add",4,' in html  # the function table's rows, inline
    assert not any(f'{attr}="{scheme}' in html for attr in ("src", "href") for scheme in ("http", "//"))


def test_xdist_reports_are_merged_exactly(project: pytest.Pytester) -> None:
    single, _, _ = run_reports(project)
    merged, trace, _ = run_reports(project, "-n", "2")
    keys = ("count", "errors", "exceptions")
    assert {n: [r[k] for k in keys] for n, r in by_name(merged).items()} == \
        {n: [r[k] for k in keys] for n, r in by_name(single).items()}
    def per_test(report: dict) -> list:
        return sorted((t["test"], r["name"], r["count"]) for t in report["tests"] for r in t["functions"])
    assert per_test(merged) == per_test(single)
    assert [e["name"] for e in trace["traceEvents"] if e.get("ph") == "X"].count("add") == 4


class _Receiver(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        length = int(self.headers.get("Content-Length", 0))
        type(self).bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def otlp(monkeypatch: pytest.MonkeyPatch):
    """A local OTLP/HTTP receiver; the spans it got, decoded."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    _Receiver.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{server.server_port}/v1/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "calc-tests")

    def spans() -> list:
        found = []
        for body in _Receiver.bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
                for scope in resource.scope_spans:
                    found.extend((service, span) for span in scope.spans)
        return found

    yield spans
    server.shutdown()


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["single", "xdist"])
def test_otel_session_test_and_function_spans(project: pytest.Pytester, otlp, workers: list[str]) -> None:
    result = project.runpytest_subprocess("--inject-telemetry", "--telemetry-otel", "-p", "no:cacheprovider", *workers)
    result.assert_outcomes(passed=4)
    spans = otlp()
    assert {service for service, _ in spans} == {"calc-tests"}
    by_id = {span.span_id: span for _, span in spans}
    (session,) = [span for _, span in spans if span.name == "pytest session"]
    tests = {span.name: span for _, span in spans if span.name.startswith("test ")}
    assert set(tests) >= {"test tests/test_calc.py::test_total", "test tests/test_calc.py::test_add",
                          "test tests/test_calc.py::test_broken"}
    assert all(span.parent_span_id == session.span_id and span.trace_id == session.trace_id for span in tests.values())
    adds = [span for _, span in spans if span.name == "add"]
    assert len(adds) == 4
    under_total = [span for span in adds if by_id[span.parent_span_id].name == "total"]
    assert len(under_total) == 3
    assert by_id[next(s for s in adds if s not in under_total).parent_span_id].name == "test tests/test_calc.py::test_add"
    (broken,) = [span for _, span in spans if span.name == "broken"]
    assert broken.status.code == 2  # STATUS_CODE_ERROR
    assert {a.key for a in broken.attributes} >= {"code.function.name", "code.file.path", "code.line.number"}
