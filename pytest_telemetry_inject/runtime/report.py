"""Reports of the runtime's telemetry: a terminal table, a versioned JSON document and a
self-contained HTML page (inline CSS and JS, no network) with a sortable function table and
a flame chart per test. See docs/reports.md.

The input is what the runtime (or several, e.g. pytest-xdist workers) hands out:
``snapshot()`` rows, ``snapshot(per_test=True)`` rows and ``events()`` dicts. Build a report
dict with ``build_report`` (or ``from_runtime``), then ``write_json`` / ``write_html`` /
``format_terminal``. ``python -m pytest_telemetry_inject.runtime.report`` converts a JSON
report or a JSONL event file into the others.

This module is not part of the vendored runtime, which stays standard-library only (it
happens to be standard-library only too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import _core

FORMAT = "telemetry-inject-report"
# The JSON report's ``version``. Readers accept every version listed here; each line says
# what changed (coverage.py style):
#
# 1: first version: meta, totals, functions, tests, never_called, events, events_dropped.
# 2: self_ns and self_samples on functions and on tests' functions; self_time (how it was
#    sampled, or null); per test, events_kept (calls of the test that have an event).
#    Later, without a new version (readers ignore keys they do not know): on a function or
#    a test's function whose total is estimated (the runtime timed a sample of its calls),
#    estimated (true), untimed (calls counted, not timed) and total_error_ns (the bound).
VERSION = 2

MAX_EVENTS_PER_TEST = 2000  # in the HTML flame charts (the longest calls are kept)
MAX_TESTS_CHARTED = 300
MAX_TABLE_ROWS = 200  # functions in a test's table (when its chart misses calls); the JSON has all


def _function_key(row: Mapping[str, Any]) -> str:
    return f"{row['module']}:{row['name']}"


def _estimate_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The keys saying a row's total is estimated (``_core._mark_estimated``); none for an
    exact row, so exact reports are as they were."""
    if not row.get("estimated"):
        return {}
    return {"estimated": True, "untimed": row.get("untimed") or 0, "total_error_ns": row.get("total_error_ns") or 0}


def build_report(functions: Sequence[Mapping[str, Any]], *, tests: Sequence[Mapping[str, Any]] | None = None,
                 events: Sequence[Mapping[str, Any]] | None = None, instrumented: Iterable[str] | None = None,
                 events_dropped: int = 0, meta: Mapping[str, Any] | None = None,
                 self_time: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report (version ``VERSION``) from snapshot rows.

    ``functions``: ``snapshot()`` rows (merged with ``merge_snapshots`` when there are
    several processes). ``tests``: ``snapshot(per_test=True)`` rows. ``events``: event dicts.
    ``instrumented``: ``module:qualname`` of every instrumented function, to list those never
    called. ``meta``: anything JSON-serialisable to keep with it. ``self_time``: how self
    time was sampled (``_core.self_time()``), None when it was not."""
    per_test: dict[Any, list[Mapping[str, Any]]] = {}
    for row in tests or ():
        if row.get("count"):
            per_test.setdefault(row.get("test"), []).append(row)
    tests_of: dict[str, int] = {}
    for test, rows in per_test.items():
        if test is not None:
            for row in rows:
                tests_of[_function_key(row)] = tests_of.get(_function_key(row), 0) + 1
    out_functions = []
    for row in sorted(functions, key=lambda r: (-r["total_ns"], r["module"], r["name"])):
        count = row["count"]
        out_functions.append({
            "module": row["module"], "name": row["name"], "file": row.get("file"), "line": row.get("line"),
            "count": count, "total_ns": row["total_ns"], "mean_ns": row["total_ns"] // count if count else 0,
            "min_ns": row["min_ns"], "max_ns": row["max_ns"], "errors": row["errors"],
            "exceptions": dict(row.get("exceptions") or {}), "tests": tests_of.get(_function_key(row), 0),
            "self_ns": row.get("self_ns") or 0, "self_samples": row.get("self_samples") or 0,
            **_estimate_of(row)})
    kept: dict[Any, int] = {}
    for event in events or ():
        kept[event.get("test")] = kept.get(event.get("test"), 0) + 1
    out_tests = []
    for test, rows in per_test.items():
        rows = sorted(rows, key=lambda r: -r["total_ns"])
        out_tests.append({
            "test": test, "calls": sum(r["count"] for r in rows), "total_ns": sum(r["total_ns"] for r in rows),
            "errors": sum(r["errors"] for r in rows), "events_kept": kept.get(test, 0),
            "functions": [{"module": r["module"], "name": r["name"], "count": r["count"], "total_ns": r["total_ns"],
                           "min_ns": r["min_ns"], "max_ns": r["max_ns"], "errors": r["errors"],
                           "self_ns": r.get("self_ns") or 0, "self_samples": r.get("self_samples") or 0,
                           **_estimate_of(r)}
                          for r in rows]})
    out_tests.sort(key=lambda t: (t["test"] is None, -t["total_ns"]))
    called = [f for f in out_functions if f["count"]]
    never = None
    if instrumented is not None:
        names = set(instrumented)
        never = sorted(names - {_function_key(f) for f in called})
    from .. import __version__

    return {
        "format": FORMAT,
        "version": VERSION,
        "meta": {"generated_unix": time.time(), "tool": f"pytest-telemetry-inject {__version__}",
                 "runtime_version": _core.RUNTIME_VERSION, **(meta or {})},
        "totals": {"functions_called": len(called), "calls": sum(f["count"] for f in called),
                   "errors": sum(f["errors"] for f in called), "total_ns": sum(f["total_ns"] for f in called),
                   "instrumented": len(set(instrumented)) if instrumented is not None else None,
                   "never_called": len(never) if never is not None else None},
        "functions": out_functions,
        "tests": out_tests,
        "never_called": never,
        "events": list(events or ()),
        "events_dropped": events_dropped,
        "self_time": self_time,
    }


def from_runtime(runtime: Any = None, *, instrumented: Iterable[str] | None = None,
                 meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report of a live runtime module (default: this package's)."""
    runtime = runtime or _core
    sampled = getattr(runtime, "self_time", None)
    return build_report(runtime.snapshot(), tests=runtime.snapshot(per_test=True), events=runtime.events(),
                        instrumented=instrumented, events_dropped=runtime.dropped_events(), meta=meta,
                        self_time=sampled() if sampled is not None else None)


def write_from_runtime(path: str, runtime: Any = None) -> None:
    """Write ``path`` (``.json`` or ``.html``) from a live runtime (used at exit)."""
    report = from_runtime(runtime)
    if path.endswith(".html"):
        write_html(path, report)
    else:
        write_json(path, report)


# -- JSON ---------------------------------------------------------------------------------------


def write_json(path: str | os.PathLike[str], report: Mapping[str, Any]) -> None:
    """Write the report as JSON (indented, UTF-8)."""
    Path(path).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


class ReportFormatError(ValueError):
    """Not a report this version can read."""


def load_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON report, checking its format and version (upgrading older versions)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportFormatError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ReportFormatError(f"{path}: not a {FORMAT} document")
    version = data.get("version")
    if not isinstance(version, int) or version < 1 or version > VERSION:
        raise ReportFormatError(f"{path}: report version {version!r}; this version reads 1 to {VERSION}")
    return data


def from_jsonl(path: str | os.PathLike[str], *, instrumented: Iterable[str] | None = None) -> dict[str, Any]:
    """A report from a JSONL event file (``TELEMETRY_INJECT_JSONL``): the aggregate is
    rebuilt from the events, so it covers only the calls that were emitted (see
    ``min_duration`` and the sample rate)."""
    events = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line:
                events.append(json.loads(line))
    functions: dict[tuple[Any, ...], list[Any]] = {}
    tests: dict[tuple[Any, ...], list[Any]] = {}
    for event in events:
        error = event.get("exception")
        for table, key in ((functions, (event["module"], event["name"])),
                           (tests, (event["module"], event["name"], event.get("test")))):
            stats = table.setdefault(key, [0, 0, 0, 0, 0, None])
            _core._fold(stats, [1, event["duration_ns"], event["duration_ns"], event["duration_ns"],
                                1 if error else 0, {error: 1} if error else None])

    def rows(table: dict[tuple[Any, ...], list[Any]], per_test: bool) -> list[dict[str, Any]]:
        out = []
        for key, s in table.items():
            row = {"module": key[0], "name": key[1], "count": s[0], "total_ns": s[1], "min_ns": s[2],
                   "max_ns": s[3], "errors": s[4], "exceptions": dict(s[5] or {})}
            if per_test:
                row["test"] = key[2]
            out.append(row)
        return out

    return build_report(rows(functions, False), tests=rows(tests, True), events=events, instrumented=instrumented,
                        meta={"source": str(path)})


# -- terminal -----------------------------------------------------------------------------------


def format_terminal(report: Mapping[str, Any], *, top: int = 25, width: int = 60) -> str:
    """The terminal table: top functions by total time, the exceptions, the functions never
    called (when the report knows what was instrumented) and the slowest tests."""
    instrumented = None
    if report.get("never_called") is not None:
        called = {_function_key(f) for f in report["functions"] if f["count"]}
        instrumented = called | set(report["never_called"])
    text = _core.format_report(report["functions"], top=top, instrumented=instrumented, width=width,
                               with_self=bool(report.get("self_time")))
    tests = [t for t in report.get("tests") or () if t["test"] is not None]
    if tests:
        lines = [text, f"slowest tests (time inside instrumented functions, {len(tests)} tests):"]
        for entry in tests[:min(top, 10)]:
            lines.append(f"  {entry['total_ns'] / 1e6:>10.3f} ms {entry['calls']:>8} calls  {entry['test']}")
        text = "\n".join(lines)
    return text


# -- HTML -----------------------------------------------------------------------------------------


def _chart_events(report: Mapping[str, Any]) -> dict[str, list[list[Any]]]:
    """Per test, the events the page draws (the longest ``MAX_EVENTS_PER_TEST``), with the
    fields it uses only."""
    by_test: dict[Any, list[Mapping[str, Any]]] = {}
    for event in report.get("events") or ():
        by_test.setdefault(event.get("test"), []).append(event)
    order = [t["test"] for t in report.get("tests") or ()]
    order += [t for t in by_test if t not in order]
    out: dict[str, list[list[Any]]] = {}
    for test in order[:MAX_TESTS_CHARTED]:
        items = by_test.get(test)
        if not items:
            continue
        if len(items) > MAX_EVENTS_PER_TEST:
            items = sorted(items, key=lambda e: -e["duration_ns"])[:MAX_EVENTS_PER_TEST]
        out["" if test is None else test] = [
            [e["name"], e["module"], e["start_ns"], e["duration_ns"], e.get("thread") or str(e.get("tid")),
             e.get("id"), e.get("parent"), e.get("exception"), e.get("pid")] for e in items]
    return out


def render_html(report: Mapping[str, Any], *, title: str = "Telemetry report") -> str:
    """The report as one self-contained HTML page (no network access)."""
    charts = _chart_events(report)
    tests = []
    for t in report.get("tests") or ():
        shown = len(charts.get("" if t["test"] is None else t["test"]) or ())
        rows = None
        if shown < t["calls"]:  # the chart misses calls (the cap, or no events): the table has them all
            rows = [[f"{f['module']}:{f['name']}", f["count"], f["total_ns"], f.get("self_ns") or 0, f["errors"]]
                    for f in t.get("functions") or ()]
        tests.append([t["test"], t["calls"], t["total_ns"], t["errors"], shown,
                      rows[:MAX_TABLE_ROWS] if rows is not None else None,
                      len(rows) - MAX_TABLE_ROWS if rows is not None and len(rows) > MAX_TABLE_ROWS else 0])
    data = {"meta": report.get("meta", {}), "totals": report.get("totals", {}),
            "functions": [[f["module"], f["name"], f["count"], f["total_ns"], f["mean_ns"], f["min_ns"], f["max_ns"],
                           f["errors"], f["tests"], f.get("file"), f.get("line"),
                           ", ".join(f"{k} x{v}" for k, v in sorted(f.get("exceptions", {}).items())),
                           f.get("self_ns") or 0, f.get("total_error_ns") if f.get("estimated") else None]
                          for f in report["functions"]],
            "never": report.get("never_called"), "self": report.get("self_time"),
            "tests": tests, "charts": charts, "dropped": report.get("events_dropped", 0)}
    return fill_page(_HTML, title, data)


def fill_page(page: str, title: str, data: object) -> str:
    """``page`` with its ``__TITLE__`` (escaped) and ``__DATA__`` (``data`` as JSON inside a
    <script>, with what could end the element, open a comment or end a line escaped) filled."""
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    escaped_title = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return page.replace("__TITLE__", escaped_title).replace("__DATA__", payload)


def write_html(path: str | os.PathLike[str], report: Mapping[str, Any], *, title: str = "Telemetry report") -> None:
    """Write the report as one self-contained HTML page."""
    Path(path).write_text(render_html(report, title=title), encoding="utf-8")


_HTML = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
:root { --fg: #1d2330; --muted: #667085; --line: #e4e7ec; --head: #f5f6f8; --accent: #2f6feb; --bad: #c62828; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
       margin: 0; padding: 24px 32px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.muted { color: var(--muted); }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 130px; }
.card b { display: block; font-size: 20px; }
input[type=search] { padding: 6px 10px; border: 1px solid var(--line); border-radius: 6px; width: 320px; }
table { border-collapse: collapse; width: 100%; margin-top: 8px; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { background: var(--head); cursor: pointer; user-select: none; position: sticky; top: 0; }
th:first-child, td:first-child { text-align: left; white-space: normal; word-break: break-all; }
th.sorted.asc::after { content: " \25B2"; } th.sorted.desc::after { content: " \25BC"; }
td.err { color: var(--bad); font-weight: 600; }
tr:hover td { background: #fafbff; }
.fn small { color: var(--muted); }
.chart { position: relative; border: 1px solid var(--line); border-radius: 6px; margin: 6px 0 16px; overflow: hidden; }
.lane-label { font-size: 11px; color: var(--muted); padding: 2px 6px; background: var(--head);
              border-bottom: 1px solid var(--line); }
.lane { position: relative; }
.bar { position: absolute; height: 17px; font-size: 11px; line-height: 17px; padding: 0 3px; overflow: hidden;
       white-space: nowrap; text-overflow: ellipsis; border-radius: 2px; color: #111;
       border: 1px solid rgba(0,0,0,.15); }
.bar.error { border: 2px solid var(--bad); }
details { margin: 4px 0; } summary { cursor: pointer; }
ul.never { columns: 2; font-family: ui-monospace, monospace; font-size: 12px; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<div class="muted" id="meta"></div>
<div class="cards" id="cards"></div>
<h2>Functions</h2>
<input type="search" id="filter" placeholder="Filter functions">
<table id="functions">
<thead><tr>
<th data-key="name" data-type="text">Function</th><th data-key="count">Calls</th><th data-key="total">Total ms</th>
<th data-key="self" class="self" title="sampled: the function's own time, its instrumented callees' taken off">Self ms</th>
<th data-key="mean">Mean &micro;s</th><th data-key="min">Min &micro;s</th><th data-key="max">Max &micro;s</th>
<th data-key="errors">Errors</th><th data-key="tests">Tests</th>
</tr></thead>
<tbody></tbody>
</table>
<div id="never-section"></div>
<h2>Tests</h2>
<div class="muted" id="tests-note"></div>
<div id="tests"></div>
<script type="application/json" id="telemetry-data">__DATA__</script>
<script>
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("telemetry-data").textContent);
  var COL = {name: 1, count: 2, total: 3, mean: 4, min: 5, max: 6, errors: 7, tests: 8, self: 12};
  var hasSelf = !!data.self;
  if (!hasSelf) { var selfHead = document.querySelector("#functions th.self"); selfHead.parentNode.removeChild(selfHead); }
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) node.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  function ms(ns) { return (ns / 1e6).toFixed(3); }
  function us(ns) { return (ns / 1e3).toFixed(2); }

  // Summary
  var t = data.totals, meta = data.meta;
  document.getElementById("meta").textContent = (meta.tool || "") + " \u2014 generated " +
    (meta.generated_unix ? new Date(meta.generated_unix * 1000).toISOString() : "");
  var cards = [["Functions called", t.functions_called], ["Calls", t.calls], ["Exceptions", t.errors],
               ["Time in functions", ms(t.total_ns || 0) + " ms"]];
  if (data.dropped) cards.push(["Calls without an event (cap)", data.dropped]);
  if (t.instrumented !== null && t.instrumented !== undefined) {
    cards.push(["Never called", t.never_called + " / " + t.instrumented]);
  }
  cards.forEach(function (c) {
    var d = el("div", {"class": "card"});
    d.appendChild(el("b", null, String(c[1])));
    d.appendChild(document.createTextNode(c[0]));
    document.getElementById("cards").appendChild(d);
  });

  // Functions table: sortable by clicking a header; #sort=KEY&dir=asc|desc and
  // #click=KEY[,KEY...] (scripted header clicks) drive it from the URL.
  var table = document.getElementById("functions"), tbody = table.tBodies[0];
  var rows = data.functions.slice(), sortKey = "total", sortDir = "desc";
  function cell(tr, text, cls) { var td = el("td", cls ? {"class": cls} : null, text); tr.appendChild(td); return td; }
  function render() {
    var needle = document.getElementById("filter").value.toLowerCase();
    tbody.textContent = "";
    rows.forEach(function (f) {
      var name = f[0] + ":" + f[1];
      if (needle && name.toLowerCase().indexOf(needle) < 0) return;
      var tr = el("tr", {"data-name": name});
      var first = cell(tr, null, "fn");
      first.appendChild(document.createTextNode(name));
      if (f[9]) {
        first.appendChild(el("br"));
        first.appendChild(el("small", null, f[9] + (f[10] ? ":" + f[10] : "")));
      }
      cell(tr, String(f[2]));
      var tot = cell(tr, (f[13] != null ? "~" : "") + ms(f[3]));
      if (f[13] != null) tot.title = "estimated from a sample of the calls' timings, +-" + ms(f[13]) +
        " ms (about 95%); the count is exact";
      if (hasSelf) cell(tr, ms(f[12]));
      cell(tr, us(f[4])); cell(tr, us(f[5])); cell(tr, us(f[6]));
      var e = cell(tr, String(f[7]), f[7] ? "err" : null); if (f[11]) e.title = f[11];
      cell(tr, String(f[8]));
      tbody.appendChild(tr);
    });
    table.setAttribute("data-sort", sortKey); table.setAttribute("data-dir", sortDir);
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.className = th.getAttribute("data-key") === sortKey ? "sorted " + sortDir : "";
    });
  }
  function sortBy(key, dir) {
    var i = COL[key]; if (i === undefined) return;
    sortKey = key; sortDir = dir;
    rows.sort(function (a, b) {
      var x = key === "name" ? (a[0] + ":" + a[1]) : a[i], y = key === "name" ? (b[0] + ":" + b[1]) : b[i];
      var c = x < y ? -1 : x > y ? 1 : 0;
      if (c === 0) c = (a[0] + ":" + a[1]) < (b[0] + ":" + b[1]) ? -1 : 1;
      return dir === "asc" ? c : -c;
    });
    render();
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
    th.addEventListener("click", function () {
      var key = th.getAttribute("data-key");
      var dir = key === sortKey ? (sortDir === "asc" ? "desc" : "asc") : (key === "name" ? "asc" : "desc");
      sortBy(key, dir);
    });
  });
  document.getElementById("filter").addEventListener("input", render);

  // Never called
  if (data.never) {
    var section = document.getElementById("never-section");
    section.appendChild(el("h2", null, "Never called (" + data.never.length + ")"));
    var ul = el("ul", {"class": "never", "id": "never"});
    data.never.forEach(function (n) { ul.appendChild(el("li", null, n)); });
    section.appendChild(ul);
  }

  // Per-test flame charts: one lane per thread, depth from parent ids (else nesting in time).
  function hue(s) { var h = 0; for (var i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) % 360; return h; }
  function chart(events) {
    var box = el("div", {"class": "chart"});
    var t0 = Infinity, t1 = -Infinity;
    events.forEach(function (e) { t0 = Math.min(t0, e[2]); t1 = Math.max(t1, e[2] + e[3]); });
    var span = Math.max(t1 - t0, 1), lanes = {};
    events.forEach(function (e) { var k = (e[8] || "") + " " + e[4]; (lanes[k] = lanes[k] || []).push(e); });
    Object.keys(lanes).forEach(function (k) {
      var items = lanes[k].sort(function (a, b) { return a[2] - b[2] || b[3] - a[3]; });
      var depthOf = {}, stack = [], maxDepth = 0;
      items.forEach(function (e) {
        while (stack.length && stack[stack.length - 1][2] + stack[stack.length - 1][3] <= e[2]) stack.pop();
        var d = (e[6] !== null && depthOf[e[6]] !== undefined) ? depthOf[e[6]] + 1 : stack.length;
        if (e[5] !== null) depthOf[e[5]] = d;
        e.depth = d; maxDepth = Math.max(maxDepth, d); stack.push(e);
      });
      box.appendChild(el("div", {"class": "lane-label"}, "thread " + lanes[k][0][4] + " \u2014 " + ms(span) + " ms"));
      var lane = el("div", {"class": "lane"}); lane.style.height = ((maxDepth + 1) * 19 + 2) + "px";
      items.forEach(function (e) {
        var bar = el("div", {"class": "bar" + (e[7] ? " error" : ""), "data-name": e[1] + ":" + e[0]}, e[0]);
        bar.style.left = ((e[2] - t0) / span * 100) + "%";
        bar.style.width = "max(" + (e[3] / span * 100) + "%, 2px)";
        bar.style.top = (e.depth * 19 + 1) + "px";
        bar.style.background = "hsl(" + hue(e[1]) + ", 70%, 78%)";
        bar.title = e[1] + ":" + e[0] + " \u2014 " + us(e[3]) + " \u00b5s" + (e[7] ? " \u2014 raised " + e[7] : "");
        lane.appendChild(bar);
      });
      box.appendChild(lane);
    });
    return box;
  }
  var testsBox = document.getElementById("tests"), charted = 0;
  document.getElementById("tests-note").textContent = data.tests.length + " tests with calls" +
    (data.dropped ? "; " + data.dropped + " calls have no event (the cap: --telemetry-max-events); " +
      "tests whose charts miss calls show every call in a table" : "") +
    (hasSelf ? "; self time sampled every " + (data.self.interval_s * 1000) + " ms" : "") +
    (Object.keys(data.charts).length ? ""
      : "; no events were recorded (flame charts need events: keep_events, JSONL or trace)");
  data.tests.forEach(function (test, index) {
    var name = test[0] === null ? "(outside tests)" : test[0];
    var d = el("details", {"class": "test", "data-test": name});
    if (index < 5) d.open = true;
    d.appendChild(el("summary", null, name + " \u2014 " + test[1] + " calls, " + ms(test[2]) + " ms" +
                     (test[3] ? ", " + test[3] + " raised" : "")));
    var events = data.charts[test[0] === null ? "" : test[0]];
    if (events && events.length) { d.appendChild(chart(events)); charted++; }
    if (test[5]) {
      // The chart misses calls: every call of the test, per function, as a table.
      d.appendChild(el("div", {"class": "muted"}, (events && events.length ? test[4] + " of " + test[1] +
        " calls charted; " : "no flame chart for this test; ") + "all " + test[1] + " calls by function:"));
      var tt = el("table", {"class": "test-functions"}), head = el("tr");
      ["Function", "Calls", "Total ms"].concat(hasSelf ? ["Self ms"] : []).concat(["Errors"]).forEach(
        function (h) { head.appendChild(el("th", null, h)); });
      tt.appendChild(head);
      test[5].forEach(function (r) {
        var tr = el("tr");
        cell(tr, r[0]); cell(tr, String(r[1])); cell(tr, ms(r[2])); if (hasSelf) cell(tr, ms(r[3]));
        cell(tr, String(r[4]), r[4] ? "err" : null);
        tt.appendChild(tr);
      });
      d.appendChild(tt);
      if (test[6]) d.appendChild(el("div", {"class": "muted"}, "and " + test[6] + " more functions (in the JSON report)"));
    }
    testsBox.appendChild(d);
  });
  testsBox.setAttribute("data-charted", String(charted));

  function fromHash() {
    var params = {};
    (location.hash.replace(/^#/, "") + "&" + location.search.replace(/^\?/, "")).split("&").forEach(function (p) {
      if (!p) return; var kv = p.split("="); params[decodeURIComponent(kv[0])] = decodeURIComponent(kv[1] || "");
    });
    if (params.filter) { document.getElementById("filter").value = params.filter; }
    if (params.sort) sortBy(params.sort, params.dir === "asc" ? "asc" : "desc"); else sortBy("total", "desc");
    if (params.click) params.click.split(",").forEach(function (k) {
      var th = table.querySelector('th[data-key="' + k + '"]'); if (th) th.click();
    });
  }
  fromHash();
  window.addEventListener("hashchange", fromHash);
  document.body.setAttribute("data-ready", "1");
})();
</script>
</body>
</html>
"""


# -- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: read a JSON report or a JSONL file, print the table, write others."""
    parser = argparse.ArgumentParser(prog="python -m pytest_telemetry_inject.runtime.report",
                                     description="Turn a JSON report or a JSONL event file into a terminal table, "
                                                 "a JSON report or an HTML report.")
    parser.add_argument("input", help="a JSON report (.json) or a JSONL event file (.jsonl)")
    parser.add_argument("--json", metavar="PATH", help="write the JSON report")
    parser.add_argument("--html", metavar="PATH", help="write the HTML report")
    parser.add_argument("--top", type=int, default=25, help="rows in the terminal table (default 25)")
    args = parser.parse_args(argv)
    try:
        report = from_jsonl(args.input) if args.input.endswith(".jsonl") else load_json(args.input)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        write_json(args.json, report)
    if args.html:
        write_html(args.html, report)
    print(format_terminal(report, top=args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
