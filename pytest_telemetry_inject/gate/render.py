"""The gate's results as terminal lines, Markdown (CI step summaries) and a self-contained
HTML page (inline CSS and JS, no network; the look of the telemetry HTML report)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ..runtime.report import fill_page
from .affected import Selection
from .compare import Comparison, Finding, Rule

TERMINAL_TOP = 25
MARKDOWN_TOP = 50


def selection_lines(selection: Selection, selected: dict[str, str], deselected: list[str], *,
                    verbose: bool) -> list[str]:
    total = len(selected) + len(deselected)
    commits = ", ".join(c[:12] for c in selection.commits)
    lines = [f"telemetry-affected: since {selection.ref} ({commits}): {len(selected)} of {total} tests selected, "
             f"{len(deselected)} deselected"]
    if selection.everything:
        lines.append(f"  every test runs: {selection.everything}")
    for change in selection.changes[:40]:
        lines.append(f"  change: {change}")
    if len(selection.changes) > 40:
        lines.append(f"  ... {len(selection.changes) - 40} more changes")
    if not selection.everything:
        reasons = Counter(selected.values())
        for why, count in reasons.most_common(None if verbose else 15):
            lines.append(f"  {count:>5} selected: {why}")
        if not verbose and len(reasons) > 15:
            lines.append(f"  ... {len(reasons) - 15} more reasons (-v lists every test)")
        if verbose:
            for nodeid, why in sorted(selected.items()):
                lines.append(f"  selected {nodeid}: {why}")
    return lines


def _violated(comparison: Comparison) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for rule, finding in comparison.violations:
        found.setdefault(id(finding), []).append(rule.text)
    return found


def terminal_lines(comparison: Comparison, rules: list[Rule], *, verbose: bool) -> Iterable[tuple[str, bool]]:
    base = comparison.baseline
    yield f"compared with the baseline: {base.describe()}", False
    yield (f"{len(comparison.compared_tests)} tests compared, {len(comparison.new_tests)} new, "
           f"{len(comparison.not_run)} not run now, {len(comparison.not_compared)} not passing in both "
           f"(not compared)"), False
    counts = comparison.counts()
    real = comparison.real_findings
    if real:
        yield "findings: " + ", ".join(f"{n} {k}" for k, n in counts.items()), False
    else:
        moved = counts.get("moved", 0)
        yield "no finding: call counts, exceptions and functions are as in the baseline" + (
            f" ({moved} call counts moved between tests, the totals unchanged)" if moved else ""), False
    yield comparison.timing.describe(), False
    violated = _violated(comparison)
    shown = real if verbose else real[:TERMINAL_TOP]
    for finding in shown:
        rules_hit = violated.get(id(finding))
        yield ("  " + finding.describe() + (f"  [fails {', '.join(rules_hit)}]" if rules_hit else "")), bool(rules_hit)
    if len(real) > len(shown):
        yield f"  ... {len(real) - len(shown)} more findings (-v lists them all)", False
    for finding in comparison.faster[:10]:
        yield "  faster: " + finding.describe(), False
    if rules:
        if comparison.violations:
            yield (f"FAILED telemetry gate ({', '.join(r.text for r in rules)}): {len(comparison.violations)} "
                   f"finding{'s' if len(comparison.violations) != 1 else ''} over the limits:"), True
            for rule, finding in comparison.violations[:50]:
                yield f"  {rule.text}: {finding.describe()}", True
            if len(comparison.violations) > 50:
                yield f"  ... {len(comparison.violations) - 50} more", True
        else:
            yield f"telemetry gate passed ({', '.join(r.text for r in rules)})", False


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def _finding_cells(finding: Finding) -> tuple[str, str, str, str]:
    if finding.kind == "time":
        return (f"x{finding.after / finding.before:.2f} per call", "", "", finding.note)
    change = "new here" if math.isinf(finding.change) else f"{finding.change * 100:+.1f}%"
    return (change, _num(finding.before), _num(finding.after), finding.note)


def _num(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.3f}"


def markdown(comparison: Comparison, rules: list[Rule], selection: dict[str, Any] | None = None) -> str:
    violated = _violated(comparison)
    real = comparison.real_findings
    verdict = ("❌ failed" if comparison.violations else "✅ passed") if rules else ("⚠️ findings" if real else "✅ no finding")
    out = [f"## Telemetry gate: {verdict}", "",
           f"Compared with the baseline: {_md(comparison.baseline.describe())}.", "",
           f"- {len(comparison.compared_tests)} tests compared, {len(comparison.new_tests)} new, "
           f"{len(comparison.not_run)} not run now, {len(comparison.not_compared)} not passing in both",
           "- findings: " + (", ".join(f"{n} {k}" for k, n in comparison.counts().items()) or "none"),
           f"- {_md(comparison.timing.describe())}"]
    if rules:
        out.append(f"- rules: {', '.join('`' + r.text + '`' for r in rules)}: "
                   f"{len(comparison.violations)} finding(s) over the limits")
    if selection:
        out.append(f"- tests selected by `--telemetry-affected` since `{_md(selection['ref'])}`: "
                   f"{selection['selected']} run, {selection['deselected']} deselected"
                   + (f" (every test: {_md(selection['everything'])})" if selection.get("everything") else ""))
    out.append("")
    if real:
        out += ["| | kind | function | test | change | before | after | note |", "|---|---|---|---|---|---|---|---|"]
        for finding in real[:MARKDOWN_TOP]:
            change, before, after, note = _finding_cells(finding)
            mark = "❌" if id(finding) in violated else ""
            out.append(f"| {mark} | {finding.kind} | `{_md(finding.function)}` | {_md(finding.test or '')} | {change} | "
                       f"{before} | {after} | {_md(note)} |")
        if len(real) > MARKDOWN_TOP:
            out.append(f"\n{len(real) - MARKDOWN_TOP} more findings are in the HTML report.")
        out.append("")
    if comparison.faster:
        out.append("Faster beyond the noise: " + ", ".join(
            f"`{_md(f.function)}` x{f.after:.2f}" for f in comparison.faster[:20]))
        out.append("")
    return "\n".join(out)


def html(comparison: Comparison, rules: list[Rule], selection: dict[str, Any] | None = None,
         title: str = "Telemetry comparison") -> str:
    violated = _violated(comparison)
    rows = []
    for finding in comparison.findings + comparison.faster:
        rows.append({"kind": finding.kind if finding in comparison.findings else "faster",
                     "function": finding.function, "test": finding.test or "",
                     "before": finding.before, "after": finding.after,
                     "change": None if math.isinf(finding.change) else round(finding.change, 6),
                     "note": finding.note, "moved": finding.moved, "rules": violated.get(id(finding), [])})
    data = {"title": title, "baseline": comparison.baseline.describe(),
            "compared": len(comparison.compared_tests), "new_tests": comparison.new_tests[:500],
            "not_run": len(comparison.not_run), "not_compared": len(comparison.not_compared),
            "timing": comparison.timing.describe(), "rules": [r.text for r in rules],
            "failed": bool(comparison.violations), "selection": selection, "findings": rows}
    return fill_page(_PAGE, title, data)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
:root { --fg: #1d2330; --muted: #667085; --line: #e4e7ec; --head: #f5f6f8; --accent: #2f6feb; --bad: #c62828; --good: #2e7d32; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); margin: 0; padding: 24px 32px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.muted { color: var(--muted); }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 130px; }
.card b { display: block; font-size: 20px; }
.card.bad b { color: var(--bad); } .card.good b { color: var(--good); }
input[type=search], select { padding: 6px 10px; border: 1px solid var(--line); border-radius: 6px; }
input[type=search] { width: 320px; }
table { border-collapse: collapse; width: 100%; margin-top: 8px; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { background: var(--head); cursor: pointer; user-select: none; position: sticky; top: 0; }
th.l, td.l { text-align: left; white-space: normal; word-break: break-all; }
th.sorted.asc::after { content: " \\25B2"; } th.sorted.desc::after { content: " \\25BC"; }
tr.violation td { color: var(--bad); font-weight: 600; } tr.moved td { color: var(--muted); }
tr:hover td { background: #fafbff; }
ul { margin: 4px 0; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<div class="muted" id="meta"></div>
<div class="cards" id="cards"></div>
<div id="notes"></div>
<h2>Findings</h2>
<input type="search" id="filter" placeholder="Filter by function or test">
<select id="kind"><option value="">every kind</option></select>
<table id="findings">
<thead><tr>
<th data-key="kind" class="l">Kind</th><th data-key="function" class="l">Function</th><th data-key="test" class="l">Test</th>
<th data-key="change">Change</th><th data-key="before">Before</th><th data-key="after">After</th><th data-key="note" class="l">Note</th>
</tr></thead>
<tbody></tbody>
</table>
<p class="muted" id="empty" hidden>No finding.</p>
<script type="application/json" id="gate-data">__DATA__</script>
<script>
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("gate-data").textContent);
  function el(tag, attrs, text) { var e = document.createElement(tag); for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text; return e; }
  function num(v) { return Number.isInteger(v) ? v.toLocaleString("en") : (+v).toFixed(3); }
  document.getElementById("meta").textContent = "Baseline: " + data.baseline + ". " + data.timing;
  var real = data.findings.filter(function (f) { return !f.moved && f.kind !== "faster"; });
  var cards = [["verdict", data.rules.length ? (data.failed ? "failed" : "passed") : (real.length ? "findings" : "no finding"),
                data.failed || (!data.rules.length && real.length) ? "bad" : "good"],
               ["tests compared", data.compared], ["new tests", data.new_tests.length], ["findings", real.length],
               ["over the limits", data.findings.filter(function (f) { return f.rules.length; }).length]];
  if (data.selection) cards.push(["tests deselected", data.selection.deselected]);
  cards.forEach(function (c) { var d = el("div", {"class": "card " + (c[2] || "")}); d.appendChild(el("b", {}, String(c[1])));
    d.appendChild(document.createTextNode(c[0])); document.getElementById("cards").appendChild(d); });
  var notes = document.getElementById("notes");
  if (data.rules.length) notes.appendChild(el("p", {}, "Rules: " + data.rules.join(", ")));
  if (data.selection) { notes.appendChild(el("p", {}, "Selected by --telemetry-affected since " + data.selection.ref + ": " +
      data.selection.selected + " run, " + data.selection.deselected + " deselected" +
      (data.selection.everything ? " (every test: " + data.selection.everything + ")" : "")));
    var ul = el("ul"); data.selection.changes.slice(0, 200).forEach(function (c) { ul.appendChild(el("li", {}, c)); }); notes.appendChild(ul); }
  var kinds = {}; data.findings.forEach(function (f) { kinds[f.kind] = 1; });
  Object.keys(kinds).sort().forEach(function (k) { document.getElementById("kind").appendChild(el("option", {value: k}, k)); });
  var table = document.getElementById("findings"), body = table.tBodies[0];
  var state = {key: "kind", dir: "asc"};
  function value(f, key) { if (key === "change") return f.change === null ? Infinity : f.change; return f[key]; }
  function render() {
    var q = document.getElementById("filter").value.toLowerCase(), kind = document.getElementById("kind").value;
    var rows = data.findings.filter(function (f) { return (!kind || f.kind === kind) &&
      (!q || (f.function + " " + f.test).toLowerCase().indexOf(q) >= 0); });
    rows.sort(function (a, b) { var x = value(a, state.key), y = value(b, state.key);
      var c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return state.dir === "asc" ? c : -c; });
    body.innerHTML = "";
    rows.forEach(function (f) {
      var tr = el("tr", {"data-function": f.function, "data-kind": f.kind});
      if (f.rules.length) tr.className = "violation"; else if (f.moved) tr.className = "moved";
      var change = f.kind === "time" || f.kind === "faster" ? "x" + (f.after / f.before).toFixed(2)
        : f.change === null ? "new here" : (f.change > 0 ? "+" : "") + (f.change * 100).toFixed(1) + "%";
      [[f.kind + (f.moved ? " (moved)" : ""), "l"], [f.function, "l"], [f.test, "l"], [change], [f.kind === "time" || f.kind === "faster" ? "" : num(f.before)],
       [f.kind === "time" || f.kind === "faster" ? "" : num(f.after)], [f.note + (f.rules.length ? " [fails " + f.rules.join(", ") + "]" : ""), "l"]]
        .forEach(function (c) { tr.appendChild(el("td", c[1] ? {"class": c[1]} : {}, c[0])); });
      body.appendChild(tr); });
    document.getElementById("empty").hidden = rows.length > 0;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.classList.toggle("sorted", th.dataset.key === state.key); th.classList.toggle("asc", state.dir === "asc");
      th.classList.toggle("desc", state.dir === "desc"); });
    table.dataset.sort = state.key; table.dataset.dir = state.dir;
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
    th.addEventListener("click", function () { state.dir = state.key === th.dataset.key && state.dir === "asc" ? "desc" : "asc";
      state.key = th.dataset.key; render(); }); });
  document.getElementById("filter").addEventListener("input", render);
  document.getElementById("kind").addEventListener("change", render);
  var hash = new URLSearchParams((location.hash || location.search).replace(/^[#?]/, ""));
  if (hash.get("filter")) document.getElementById("filter").value = hash.get("filter");
  if (hash.get("kind")) document.getElementById("kind").value = hash.get("kind");
  if (hash.get("sort")) { state.key = hash.get("sort"); state.dir = hash.get("dir") || "asc"; }
  render();
  document.body.dataset.ready = "1";
})();
</script>
</body>
</html>
"""
