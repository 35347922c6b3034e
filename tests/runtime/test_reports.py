"""The reports: the terminal table, the versioned JSON document, the HTML page (rendered by
headless Chromium when it is installed), and the import cost of the runtime."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from pytest_telemetry_inject import runtime
from pytest_telemetry_inject.runtime import report

CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason=f"{CHROMIUM} is not installed (apt-get install chromium): the HTML report is not rendered")

SOURCE = '''
    import time
    def busy(n):
        with _telemetry.span("busy"):
            time.sleep(0.002 * n)
            return [light(i) for i in range(n)]
    def light(i):
        with _telemetry.span("light"):
            if i == 3:
                try:
                    fail()
                except ValueError:
                    pass
            return i
    def fail():
        with _telemetry.span("fail"):
            raise ValueError("nope")
'''


@pytest.fixture
def sample(kit):  # type: ignore[no-untyped-def]
    """A report with three called functions over two tests, and one never called."""
    runtime.configure(keep_events=True)
    m = kit.load(SOURCE)
    runtime.set_current_test("tests/test_a.py::test_one")
    m.busy(5)
    runtime.set_current_test("tests/test_a.py::test_two")
    m.busy(2)
    m.light(0)
    runtime.set_current_test(None)
    functions = [r for r in runtime.snapshot() if r["module"] == m.__name__]
    tests = [r for r in runtime.snapshot(per_test=True) if r["module"] == m.__name__]
    events = [e for e in runtime.events() if e["module"] == m.__name__]
    instrumented = [f"{m.__name__}:{n}" for n in ("busy", "light", "fail", "never_called")]
    return m, report.build_report(functions, tests=tests, events=events, instrumented=instrumented)


def test_terminal_table(sample) -> None:
    m, data = sample
    text = report.format_terminal(data)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["function", "calls", "total"]
    assert lines[1].startswith(f"{m.__name__}:busy") and lines[1].split()[1] == "2"
    assert lines[2].startswith(f"{m.__name__}:light") and lines[2].split()[1] == "8"
    assert f"{m.__name__}:fail: 1 (ValueError x1)" in text
    assert "never called: 1 of 4 instrumented functions" in text and f"  {m.__name__}:never_called" in text
    assert "tests/test_a.py::test_one" in text.split("slowest tests")[1]
    short = runtime.format_report(data["functions"], top=1)
    assert "... and 2 more functions called" in short


def test_json_report_is_versioned_and_validated(sample, tmp_path: Path) -> None:
    m, data = sample
    path = tmp_path / "report.json"
    report.write_json(path, data)
    loaded = report.load_json(path)
    assert loaded["format"] == report.FORMAT and loaded["version"] == report.VERSION == 2
    assert loaded["totals"]["calls"] == 2 + 8 + 1 and loaded["totals"]["never_called"] == 1
    busy = loaded["functions"][0]
    assert busy["name"] == "busy" and busy["tests"] == 2 and busy["mean_ns"] == busy["total_ns"] // 2
    assert [t["test"] for t in loaded["tests"]] == ["tests/test_a.py::test_one", "tests/test_a.py::test_two"]
    assert len(loaded["events"]) == 11
    # A version 1 report (no self time, no events_kept) is still read, and drawn.
    old = {k: v for k, v in loaded.items() if k != "self_time"}
    old["version"] = 1
    old["functions"] = [{k: v for k, v in f.items() if not k.startswith("self")} for f in old["functions"]]
    path.write_text(json.dumps(old))
    assert report.load_json(path)["version"] == 1
    assert "busy" in report.format_terminal(report.load_json(path))
    assert "busy" in report.render_html(report.load_json(path))
    for broken, message in (({"format": "other"}, "not a telemetry-inject-report"),
                            ({"format": report.FORMAT, "version": 99}, "report version 99")):
        path.write_text(json.dumps(broken))
        with pytest.raises(report.ReportFormatError, match=message):
            report.load_json(path)


def test_jsonl_to_reports_on_the_command_line(kit, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    runtime.configure(jsonl=str(events))
    m = kit.load(SOURCE)
    runtime.set_current_test("t::jsonl")
    m.busy(4)
    runtime.flush()
    html, out = tmp_path / "r.html", tmp_path / "r.json"
    assert report.main([str(events), "--html", str(html), "--json", str(out)]) == 0
    rebuilt = report.load_json(out)
    counts = {f["name"]: f["count"] for f in rebuilt["functions"]}
    assert counts == {"busy": 1, "light": 4, "fail": 1}
    assert rebuilt["tests"][0]["test"] == "t::jsonl" and "busy" in html.read_text()
    assert report.main([str(tmp_path / "missing.json")]) == 2


def test_html_is_self_contained_and_escapes_names(sample, tmp_path: Path) -> None:
    m, data = sample
    data["functions"][0]["name"] = "</script><script>alert(1)</script>"
    data["events"][0]["name"] = "<img src=x onerror=alert(2)>"
    page = report.render_html(data, title="Report <&>")
    assert "</script><script>alert" not in page and "<img src=x" not in page
    assert "<title>Report &lt;&amp;&gt;</title>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "no external resources"
    assert "@import" not in page and "url(" not in page
    assert page.count("<script") == 2  # the data island and the inline script


def _chromium(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", *extra, url],
        capture_output=True, text=True, timeout=60)


def _rows(dom: str) -> list[str]:
    body = dom.split('id="functions"', 1)[1].split("</table>", 1)[0]
    return [name.split(":", 1)[1] for name in re.findall(r'<tr data-name="([^"]+)"', body)]


@needs_chromium
def test_html_report_renders_and_sorts_in_chromium(sample, tmp_path: Path) -> None:
    m, data = sample
    page = tmp_path / "report.html"
    report.write_html(page, data)
    url = page.as_uri()
    # Scripted header clicks (#click=...) run the page's own click handler before the DOM
    # is dumped: one click on "Calls" sorts by calls, descending; a second one, ascending.
    runs = {fragment: _chromium(f"{url}#{fragment}", tmp_path, "--dump-dom")
            for fragment in ("", "click=count", "click=count,count", "sort=name&dir=asc")}
    doms = {fragment: run.stdout for fragment, run in runs.items()}
    assert all('data-ready="1"' in dom for dom in doms.values()), runs[""].stderr[-2000:]
    assert _rows(doms[""]) == ["busy", "light", "fail"]  # by total time
    assert _rows(doms["click=count"]) == ["light", "busy", "fail"]
    assert 'data-sort="count" data-dir="desc"' in doms["click=count"]
    assert _rows(doms["click=count,count"]) == ["fail", "busy", "light"]
    assert _rows(doms["sort=name&dir=asc"]) == ["busy", "fail", "light"]
    dom = doms[""]
    assert 'data-charted="2"' in dom
    for test, calls in (("tests/test_a.py::test_one", 7), ("tests/test_a.py::test_two", 4)):
        section = dom.split(f'data-test="{test}"', 1)[1].split("</details>", 1)[0]
        assert section.count('class="bar') == calls, test
    assert dom.count('class="bar error"') == 1  # fail() raised once
    assert f"{m.__name__}:never_called" in dom.split('id="never"', 1)[1]

    shot = tmp_path / "shot.png"
    _chromium(url, tmp_path, "--window-size=1000,800", f"--screenshot={shot}")
    width, height, pixels = _png_pixels(shot.read_bytes(), rows=120)  # the title and the cards
    assert (width, height) == (1000, 800)
    colours = {pixels[i:i + 3] for i in range(0, len(pixels), 3 * 7)}
    assert len(colours) > 20, "the screenshot is blank"


def _png_pixels(data: bytes, rows: int) -> tuple[int, int, bytes]:
    """Width, height and the RGB bytes of the first ``rows`` rows of an 8-bit RGB(A) PNG
    (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6)
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    out, previous = bytearray(), bytearray(stride)
    for row in range(min(rows, height)):
        kind, line = raw[row * (stride + 1)], bytearray(raw[row * (stride + 1) + 1:(row + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        previous = line
        for x in range(width):
            out += line[x * channels:x * channels + 3]
    return width, height, bytes(out)


def test_importing_the_runtime_stays_cheap(kit) -> None:
    """No OpenTelemetry, json, inspect, random, asyncio or logging at import."""
    result = kit.run_python('''
        import sys
        before = set(sys.modules)
        import pytest_telemetry_inject.runtime
        added = sorted(set(sys.modules) - before)
        import json
        print(json.dumps(added))
    ''')
    added = set(kit.last_json(result))
    heavy = {"opentelemetry", "json", "inspect", "random", "asyncio", "logging", "typing", "dataclasses",
             "pytest_telemetry_inject.runtime.report"}
    assert not {name for name in added if name.split(".")[0] in heavy or name in heavy}, added
    assert {"pytest_telemetry_inject.runtime", "pytest_telemetry_inject.runtime._core"} <= added


def test_the_overhead_benchmark_runs(kit, tmp_path: Path) -> None:
    """A smoke run of bench/runtime_overhead.py (one round of 2000 calls): every row and
    verdict is printed; the figures themselves are not judged here."""
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [__import__("sys").executable, str(kit.root / "bench" / "runtime_overhead.py"), "--rounds", "1",
         "--max-number", "2000", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    for label in ("runtime: default aggregator", "runtime: disabled", "runtime: JSONL sink",
                  "runtime: Chrome trace sink", "runtime: OpenTelemetry sink", "OpenTelemetry SDK span by hand"):
        assert label in result.stdout
    assert "Logfire auto-tracing" in result.stdout or "logfire: not installed" in result.stdout
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["runtime: default aggregator"]["result"] in ("PASS", "FAIL")
    assert rows["runtime: OpenTelemetry sink"]["target"].startswith("<= 1.2 x")
    assert "minimum over minimum" in rows["runtime: OpenTelemetry sink"]["result"]  # beside the paired ratio


def test_the_instruction_count_child_calls_its_variant(kit) -> None:
    """The process --instructions runs under valgrind for each row: it sets the named variant
    up and calls it (an unknown row fails, so the parent leaves it out)."""
    bench = [__import__("sys").executable, str(kit.root / "bench" / "runtime_overhead.py"), "--run-calls"]
    assert subprocess.run([*bench, "runtime: default aggregator", "50"], capture_output=True, timeout=300).returncode == 0
    unknown = subprocess.run([*bench, "no such row", "50"], capture_output=True, text=True, timeout=300)
    assert unknown.returncode != 0 and "ValueError" in unknown.stderr


@needs_chromium
def test_html_self_column_and_a_table_for_tests_whose_chart_misses_calls(kit, tmp_path: Path) -> None:
    runtime.configure(keep_events=True, max_events=3, self_time=0.001)
    m = kit.load(SOURCE)
    runtime.set_current_test("tests/test_a.py::test_one")
    m.busy(5)
    runtime.set_current_test(None)
    runtime.configure(self_time=0)
    data = report.from_runtime()
    page = tmp_path / "capped.html"
    report.write_html(page, data)
    dom = _chromium(page.as_uri(), tmp_path, "--dump-dom").stdout
    assert 'data-ready="1"' in dom
    assert ">Self ms</th>" in dom.split('id="functions"', 1)[1].split("</thead>", 1)[0]
    section = dom.split('data-test="tests/test_a.py::test_one"', 1)[1].split("</details>", 1)[0]
    assert "3 of 7 calls charted" in section and 'class="test-functions"' in section
    cells = re.findall(r"<tr><td>([^<]+)</td><td>(\d+)</td>", section)
    assert {name.split(":")[1]: int(calls) for name, calls in cells} == {"busy": 1, "light": 5, "fail": 1}
