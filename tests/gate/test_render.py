"""The comparison as Markdown and as an HTML page (drawn in headless Chromium when it is there)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_telemetry_inject.gate.baseline import Baseline
from pytest_telemetry_inject.gate.compare import compare, parse_rules
from pytest_telemetry_inject.gate.render import html, markdown

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def run(counts: dict[str, int]) -> Baseline:
    rows = [{"module": "pkg.mod", "name": name, "test": f"tests/test_x.py::test_{name}", "count": count,
             "total_ns": count * 100, "min_ns": 100, "max_ns": 100, "errors": 0, "exceptions": {}}
            for name, count in counts.items()]
    return Baseline.from_rows(rows, outcomes={f"tests/test_x.py::test_{n}": "passed" for n in counts},
                              test_fixtures={}, fixture_setups={}, instrumented=[], modules={}, meta={"commit": "abc"})


def comparison():  # type: ignore[no-untyped-def]
    result = compare(run({"grow": 10, "shrink": 10, "same": 5, "a|b<c>": 1}),
                     run({"grow": 30, "shrink": 5, "same": 5, "a|b<c>": 2}))
    rules = parse_rules("calls:+10%")
    result.gate(rules)
    return result, rules


def test_markdown() -> None:
    result, rules = comparison()
    text = markdown(result, rules, {"ref": "main", "everything": None, "selected": 3, "deselected": 1, "changes": []})
    assert text.startswith("## Telemetry gate: ❌ failed")
    assert "| ❌ | calls | `pkg.mod:grow` | tests/test_x.py::test_grow | +200.0% | 10 | 30 |  |" in text
    assert "|  | calls | `pkg.mod:shrink` | tests/test_x.py::test_shrink | -50.0% | 10 | 5 |  |" in text
    assert "`pkg.mod:a\\|b&lt;c&gt;`" in text  # a name cannot break the table or the page
    assert "3 run, 1 deselected" in text


def test_html_is_self_contained_and_escaped(tmp_path: Path) -> None:
    result, rules = comparison()
    page = html(result, rules)
    island = re.search(r'<script type="application/json" id="gate-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in island and ">" not in island
    data = json.loads(island)
    assert data["failed"] and [f["function"] for f in data["findings"] if f["rules"]] == \
        ["pkg.mod:a|b<c>", "pkg.mod:grow"]
    assert not re.search(r"(src|href)=\"https?:", page)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")
def test_html_draws_sorts_and_filters_in_a_browser(tmp_path: Path) -> None:
    result, rules = comparison()
    path = tmp_path / "diff.html"
    path.write_text(html(result, rules))

    def dom(fragment: str) -> str:
        done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                               f"{path.as_uri()}#{fragment}"], capture_output=True, text=True, timeout=120)
        return done.stdout

    page = dom("sort=change&dir=desc")
    assert 'data-ready="1"' in page and 'data-sort="change" data-dir="desc"' in page
    order = re.findall(r'<tr data-function="([^"]+)"', page)
    assert [o.replace("&lt;", "<").replace("&gt;", ">") for o in order] == \
        ["pkg.mod:grow", "pkg.mod:a|b<c>", "pkg.mod:shrink"]  # +200%, +100%, -50%
    assert '<td>+200.0%</td>' in page and 'class="violation"' in page
    filtered = dom("filter=shrink")
    assert re.findall(r'<tr data-function="([^"]+)"', filtered) == ["pkg.mod:shrink"]
