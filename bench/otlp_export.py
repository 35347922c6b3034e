"""OpenTelemetry export at scale: does every span arrive, and what does it cost?

A generated project of ``--tests`` tests making about ``--calls`` function calls in all runs
three ways, side by side: plain pytest, ``pytest --inject-telemetry``, and ``pytest
--inject-telemetry --telemetry-otel`` exporting over OTLP/HTTP to a local receiver (another
process) that decodes each request with ``opentelemetry-proto`` and counts the spans.
Printed: wall times and the ratio of the OTLP run to the plain instrumented one, the calls
the plugin counted, the spans the receiver decoded (function spans, test spans and the
session span), and what the plugin's summary says it lost.

    python bench/otlp_export.py [--tests 500] [--calls 446000] [--repeats 1]

Target (issue: reports that lose nothing): every span arrives, or the loss is counted and
printed; the OTLP run within 3x the plain instrumented run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TARGET_RATIO = 3.0

MODULE = '''\
"""Work for the bench: small functions that call each other."""


def leaf(x):
    return x * 2 + 1


def middle(x):
    total = 0
    for i in range(3):
        total += leaf(x + i)
    return total


def top(n):
    acc = 0
    for i in range(n):
        acc += middle(i)
    return acc


def fails(x):
    if x % 7 == 0:
        raise ValueError(x)
    return x
'''


def make_project(root: Path, tests: int, calls: int) -> None:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "work.py").write_text(MODULE)
    (root / "tests").mkdir()
    # top(n) makes 1 + n * (1 + 3) calls; fails() one more (raising every 7th time).
    per_test = max(1, calls // tests)
    n = max(1, (per_test - 2) // 4)
    lines = ["import pytest\n\nfrom pkg.work import fails, top\n\n"]
    for i in range(tests):
        lines.append(f"\ndef test_{i}():\n    assert top({n}) >= 0\n    try:\n        fails({i})\n"
                     f"    except ValueError:\n        pass\n")
    (root / "tests" / "test_work.py").write_text("".join(lines))
    (root / "pyproject.toml").write_text('[tool.pytest.ini_options]\naddopts = "-p no:cacheprovider"\n')


# -- the receiver ---------------------------------------------------------------------------


def _serve(port_queue: multiprocessing.Queue, count_file: str) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    counts = {"spans": 0, "requests": 0, "names": {}}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    counts["spans"] += len(scope.spans)
                    for span in scope.spans[:1]:
                        counts["names"][span.name] = counts["names"].get(span.name, 0) + 1
            counts["requests"] += 1
            payload = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            with open(count_file, "w") as handle:
                json.dump({"spans": counts["spans"], "requests": counts["requests"]}, handle)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_queue.put(server.server_address[1])
    server.serve_forever()


class Receiver:
    """An OTLP/HTTP receiver in its own process, counting the spans it decodes."""

    def __enter__(self) -> Receiver:
        self.folder = tempfile.mkdtemp(prefix="otlp-receiver-")
        self.count_file = os.path.join(self.folder, "count.json")
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        self.process = context.Process(target=_serve, args=(queue, self.count_file), daemon=True)
        self.process.start()
        self.port = queue.get(timeout=30)
        return self

    def spans(self) -> int:
        try:
            with open(self.count_file) as handle:
                return int(json.load(handle)["spans"])
        except (OSError, ValueError):
            return 0

    def reset(self) -> None:
        try:
            os.unlink(self.count_file)
        except OSError:
            pass

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join(5)
        shutil.rmtree(self.folder, ignore_errors=True)


# -- runs ---------------------------------------------------------------------------------------


def run(project: Path, *args: str, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", *args], cwd=project, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=3600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"pytest {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return elapsed, done


def check_reports(project: Path, calls: int) -> bool:
    """One more run (not timed) with the JSON, HTML and trace reports and -n 2: each holds
    every call the summary counts, or says how many have no event."""
    _, done = run(project, "--inject-telemetry", "-n", "2", "--telemetry-report=all.json",
                  "--telemetry-html=all.html", "--telemetry-trace=all-trace.json")
    summary = next(line for line in done.stdout.splitlines() if " calls; LLM requests" in line)
    counted = int(re.search(r"(\d+) calls;", summary).group(1))
    data = json.loads((project / "all.json").read_text())
    trace = json.loads((project / "all-trace.json").read_text())
    page = (project / "all.html").read_text()
    island = json.loads(page.split('id="telemetry-data">', 1)[1].split("</script>", 1)[0])
    spans = sum(1 for e in trace["traceEvents"] if e["ph"] == "X")
    per_test = sum(t["calls"] for t in data["tests"])
    tabled = [t for t in island["tests"] if t[4] < t[1]]
    print(f"reports (-n 2): summary {counted} calls; JSON totals {data['totals']['calls']}, per test {per_test}, "
          f"events {len(data['events'])} + dropped {data['events_dropped']}; trace {spans} events + dropped "
          f"{trace['otherData']['dropped_events']}, otherData.functions {sum(f['count'] for f in trace['otherData']['functions'])}; "
          f"HTML {sum(t[1] for t in island['tests'])} calls in {len(island['tests'])} tests, {len(tabled)} with a table "
          f"({sum(1 for t in tabled if t[5])} filled)")
    return (counted == calls == data["totals"]["calls"] == per_test
            == len(data["events"]) + data["events_dropped"] == spans + trace["otherData"]["dropped_events"]
            == sum(f["count"] for f in trace["otherData"]["functions"]) == sum(t[1] for t in island["tests"])
            and all(t[5] for t in tabled))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=500)
    parser.add_argument("--calls", type=int, default=446_000)
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs (the fastest of each kind counts)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="otlp-bench-"))
    try:
        project = work / "project"
        make_project(project, args.tests, args.calls)
        run(project, "--inject-telemetry")  # warm the cache: what is timed is the runs, not the first build
        times: dict[str, list[float]] = {"plain": [], "instrumented": [], "otlp": []}
        with Receiver() as receiver:
            env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver.port}/v1/traces",
                   "OTEL_SERVICE_NAME": "otlp-bench"}
            for _ in range(args.repeats):
                times["plain"].append(run(project)[0])
                seconds, done = run(project, "--inject-telemetry", "--telemetry-report=plain.json")
                times["instrumented"].append(seconds)
                receiver.reset()
                seconds, otlp_done = run(project, "--inject-telemetry", "--telemetry-otel", "--telemetry-report=otel.json",
                                         env=env)
                times["otlp"].append(seconds)
                time.sleep(0.5)
                received = receiver.spans()
        report = json.loads((project / "otel.json").read_text())
        calls = report["totals"]["calls"]
        reports_ok = check_reports(project, calls)
        summary = [line for line in otlp_done.stdout.splitlines() if "OTLP" in line or "spans" in line]
        best = {kind: min(values) for kind, values in times.items()}
        ratio = best["otlp"] / best["instrumented"]
        expected = calls + args.tests + 2  # function spans, test spans (with the telemetry item), session
        print(f"{args.tests} tests, {calls} calls counted by the plugin")
        print(f"{'run':<40} {'seconds':>8}")
        for kind in ("plain", "instrumented", "otlp"):
            print(f"{kind:<40} {best[kind]:>8.2f}")
        print(f"OTLP run / instrumented run: {ratio:.2f} (target <= {TARGET_RATIO})")
        print(f"spans received: {received} of {expected} expected ({expected - received} missing)")
        for line in summary:
            print(f"summary: {line.strip()}")
        ok = reports_ok and ratio <= TARGET_RATIO and (received == expected or any(re.search(r"\blost\b|\bdropped\b", text)
                                                                   for text in summary))
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
