"""JavaScript: records and qualnames, the inserted code, strip, and real Node.js runs.

Every instrumented program here is checked with ``node --check`` and run by Node.js: it
prints exactly what the original prints, and its telemetry (report, JSONL, Chrome trace)
names the functions that ran, counts the throws, and ends generator and async spans when
they finish.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.engine.runner import RunOptions, run
from pytest_telemetry_inject.languages import get_language, language_for
from pytest_telemetry_inject.languages.javascript import RUNTIME_FILES
from pytest_telemetry_inject.settings import Settings
from pytest_telemetry_inject.testkit import ScriptCheck, import_path

toolchains = import_path(Path(__file__).resolve().parents[1] / "realcode" / "toolchains.py",
                         "telemetry_inject_realcode_toolchains")

JS = get_language("javascript")


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def settings(**overrides) -> Settings:
    return Settings.load(None, env={}, overrides={"parallel": False, "use_cache": False, **overrides})


def records(text: str, path: str = "a.js") -> dict[str, object]:
    """The functions by qualname, without their module (``a.js:``)."""
    parsed = JS.parse(text, path, settings())
    return {r.qualname.partition(":")[2]: r for r in parsed.functions}


def instrument_text(text: str, path: str = "a.js", import_name: str = "./telemetry_utils") -> str:
    result = Engine(settings()).instrument(text.encode(), path, import_name=import_name)
    assert result.status == "instrumented", (result.status, result.reason, list(result.functions))
    return result.output.decode()


def instrument_tree(root: Path, out: Path | None = None, mode: str = "instrument", **overrides):
    options = RunOptions(mode=mode, output_dir=out, in_place=out is None)
    summary = run([str(root)], settings(**overrides), options, project_root=root)
    assert not summary.errors, summary.errors
    assert all(r.status != "error" for r in summary.files), [(r.path, r.reason) for r in summary.files]
    return summary


# -- records --------------------------------------------------------------------------------------

NAMES = src('''
    "use strict";
    function top(a) { return a + 1; }
    function outer() {
      function inner() { return 1; }
      const arrow = () => { return inner(); };
      return [1].map(function (x) { return x; }).concat([2].map(y => y * 2), arrow());
    }
    class Shape {
      constructor(side) { this.side = side; }
      get area() { return this.side ** 2; }
      set area(v) { this.side = Math.sqrt(v); }
      static unit() { return new Shape(1); }
      *corners() { yield 1; }
      async load() { return await 1; }
      #secret() { return 2; }
      [Symbol.iterator]() { return [].values(); }
      onClick = () => { return this.side; };
    }
    const api = {
      parse(x) { return JSON.parse(x); },
      nested: { deep: function () { return 1; } },
      "quoted-key": () => { return 3; },
    };
    Shape.prototype.describe = function () { return "shape"; };
    module.exports.helper = async function* () { yield 1; };
    export default function () { return 0; }
    const Klass = class { method() { return 1; } };
    function empty() {}
    const ident = x => x;
    function skipped() { // telemetry: skip
      return 1;
    }
''')


def test_qualnames_follow_the_documented_rules() -> None:
    found = records(NAMES)
    expected = {
        "top", "outer", "outer.inner", "outer.arrow", "outer.<anonymous#1>", "outer.<anonymous#2>",
        "Shape.constructor", "Shape.get area", "Shape.set area", "Shape.unit", "Shape.corners", "Shape.load",
        "Shape.#secret", "Shape.[Symbol.iterator]", "Shape.onClick", "api.parse", "api.nested.deep",
        "api.quoted-key", "Shape.describe", "module.exports.helper", "default", "Klass.method", "empty", "ident",
        "skipped",
    }
    assert set(found) == expected
    assert found["Shape.corners"].is_generator and not found["Shape.corners"].is_async
    assert found["Shape.load"].is_async and not found["Shape.load"].is_generator
    assert found["module.exports.helper"].is_async and found["module.exports.helper"].is_generator
    assert found["Shape.unit"].is_method and not found["top"].is_method
    assert found["outer.inner"].nested_in == "a.js:outer"
    assert found["empty"].skip_reason.startswith("trivial")
    assert found["ident"].skip_reason == "trivial body (a name or a constant)"
    assert found["skipped"].skip_reason == "opted out (// telemetry: skip)"
    assert all(r.skip_reason is None for q, r in found.items() if q not in ("empty", "ident", "skipped"))
    # Lines of the records: a function's own lines, 1-based.
    assert found["top"].start_line == found["top"].end_line == 2
    assert (found["outer"].start_line, found["outer"].end_line) == (3, 7)


def test_blocks_that_cannot_move_into_a_try_are_left_alone() -> None:
    found = records(src('''
        function twice() { function g() { return 1; } function g() { return 2; } return g(); }
        function withVar() { var g = 1; function g() { return 2; } return g; }
        function fine() { function g() { return 2; } return g(); }
    '''))
    assert "declared in its body twice, or also with var" in found["twice"].skip_reason
    assert "declared in its body twice, or also with var" in found["withVar"].skip_reason
    assert found["fine"].skip_reason is None


def test_a_file_using_the_tools_names_is_left_alone() -> None:
    parsed = JS.parse("const _telemetry_s = 1;\nfunction f() { return _telemetry_s; }\n", "a.js", settings())
    assert parsed.file_skip_reason == "the file already uses a name this tool inserts (_telemetry...)"


def test_languages_by_extension_and_shebang() -> None:
    for name in ("a.js", "a.mjs", "a.cjs", "a.jsx"):
        assert language_for(name).name == "javascript"
    assert language_for("tool", b"#!/usr/bin/env node\nconsole.log(1)\n").name == "javascript"
    assert JS.parse("x", "vendor/app.min.js", settings()).file_skip_reason == "minified code"
    assert "supports only the vendored target" in JS.parse("function f() { return 1 }", "a.js",
                                                          settings(target="runtime")).file_skip_reason


# -- the inserted code ----------------------------------------------------------------------------

def test_no_line_moves_and_strip_gives_back_the_original_exactly() -> None:
    out = instrument_text(NAMES.replace("export default", "module.exports.other ="))
    original = NAMES.replace("export default", "module.exports.other =")
    assert out.count("\n") == original.count("\n")
    for before, after in zip(original.splitlines(), out.splitlines()):
        # Only insertions: the original line's characters are all there, in order.
        it = iter(after)
        assert all(ch in it for ch in before), (before, after)
    stripped = JS.strip(out)
    assert stripped.text == original
    assert stripped.header_removed
    assert len(stripped.spans) == 22
    # The "use strict" directive stays the file's first statement: the import goes after it.
    assert out.splitlines()[0] == '"use strict";'
    assert out.splitlines()[1].startswith('const _telemetry = require("./telemetry_utils.cjs"); function top(a) {')
    # Idempotent: a second run finds everything instrumented.
    again = Engine(settings()).instrument(out.encode(), "a.js", import_name="./telemetry_utils")
    assert again.output is None
    assert {f.status for f in again.functions} == {"skipped"}
    assert JS.check_syntax(out, "a.js") is None


def test_the_inserted_text_exactly() -> None:
    out = instrument_text(src('''
        function add(a, b) {
          return a + b;
        }
        const twice = x => x * 2;
        function strict() {
          "use strict"
          return 1;
        }
    '''))
    assert out == src('''
        const _telemetry = require("./telemetry_utils.cjs"); function add(a, b) { const _telemetry_s = _telemetry.span("a.js:add"); try {
          return a + b;
        } catch (_telemetry_e) { _telemetry_s.error(_telemetry_e); throw _telemetry_e; } finally { _telemetry_s.end(); } }
        const twice = x => { const _telemetry_a = _telemetry.span("a.js:twice"); try { return (x * 2); } catch (_telemetry_e) { _telemetry_a.error(_telemetry_e); throw _telemetry_e; } finally { _telemetry_a.end(); } };
        function strict() {
          "use strict"
          const _telemetry_s = _telemetry.span("a.js:strict"); try { return 1;
        } catch (_telemetry_e) { _telemetry_s.error(_telemetry_e); throw _telemetry_e; } finally { _telemetry_s.end(); } }
    ''')


def test_strip_leaves_lookalike_strings_comments_and_templates_alone() -> None:
    lookalike = 'const _telemetry_s = _telemetry.span("x"); try {'
    text = src(f'''
        // {lookalike}
        const s = '{lookalike}';
        const t = `{lookalike} ${{1}}`;
        /* {lookalike} */
        function f() {{ return s + t; }}
    ''')
    out = instrument_text(text.replace("_telemetry", "_tele") + "\n")  # the real file would be skipped
    assert JS.strip(out).text == text.replace("_telemetry", "_tele") + "\n"
    # Stripping the text itself (telemetry-like strings, no telemetry) changes nothing.
    assert JS.strip(text).text == text
    assert JS.strip(text).spans == []


def test_one_line_nesting_and_curried_arrows_compose() -> None:
    text = "const add = a => b => c => a + b + c; function f() { return () => g()} function g() { return [1].map(x => { return x; }); }\n"
    out = instrument_text(text)
    assert out.count("\n") == 1
    assert JS.strip(out).text == text
    assert [name for _line, name in JS.strip(out).spans] == ["a.js:" + name for name in (
        "add", "add.<anonymous#1>", "add.<anonymous#1>.<anonymous#1>", "f", "f.<anonymous#1>", "g", "g.<anonymous#1>")]


def test_every_script_passes_its_generated_checks() -> None:
    parsed = JS.parse(NAMES, "a.js", settings())
    engine = Engine(settings())
    checked = 0
    for record in parsed.functions:
        if record.skip_reason:
            continue
        plan = engine._plan(JS, parsed, record)
        _entry, script = engine._make_entry(JS, parsed, plan)
        check = ScriptCheck(script, language="javascript", span_name=record.qualname,
                            original=record.source(parsed.lines))
        assert check.run_all() == [], record.qualname
        checked += 1
    assert checked == 22


def test_snippet_checks_catch_a_broken_output() -> None:
    good = 'function f() { const _telemetry_s = _telemetry.span("f"); try { return 1; } catch (_telemetry_e) { _telemetry_s.error(_telemetry_e); throw _telemetry_e; } finally { _telemetry_s.end(); } }\n'
    assert JS.snippet_parses(good) is None
    # An opening without its end: the original (stripped) parses, the output does not.
    assert "line 1" in JS.snippet_parses('function f() { const _telemetry_s = _telemetry.span("f"); try { return 1; }\n')
    method = '  m() { const _telemetry_s = _telemetry.span("C.m"); try { return 1; } catch (_telemetry_e) { _telemetry_s.error(_telemetry_e); throw _telemetry_e; } finally { _telemetry_s.end(); } },\n'
    assert JS.snippet_parses(method) is None  # a method taken out of its object literal


# -- module kinds and the runtime files -------------------------------------------------------------

def test_module_kind_decides_the_import(tmp_path: Path) -> None:
    (tmp_path / "esm").mkdir()
    (tmp_path / "esm" / "package.json").write_text('{"type": "module"}')
    (tmp_path / "esm" / "lib").mkdir()
    body = "function f() { return 1; }\nconsole.log(f());\n"
    (tmp_path / "esm" / "lib" / "plain.js").write_text(body)
    (tmp_path / "esm" / "b.cjs").write_text(body)
    (tmp_path / "cjs").mkdir()
    (tmp_path / "cjs" / "plain.js").write_text(body)
    (tmp_path / "cjs" / "syntax.js").write_text("export " + body)
    (tmp_path / "cjs" / "m.mjs").write_text(body)
    (tmp_path / "cjs" / "tool").write_text("#!/usr/bin/env node\n'use strict';\n" + body)
    out = tmp_path / "out"
    summary = instrument_tree(tmp_path, out)
    head = {p: (out / p).read_text().split("\n")[0 if p != "cjs/tool" else 2] for p in
            ("esm/lib/plain.js", "esm/b.cjs", "cjs/plain.js", "cjs/syntax.js", "cjs/m.mjs", "cjs/tool")}
    assert head["esm/lib/plain.js"].startswith('import * as _telemetry from "../telemetry_utils.mjs"; ')
    assert head["esm/b.cjs"].startswith('const _telemetry = require("./telemetry_utils.cjs"); ')
    assert head["cjs/plain.js"].startswith('const _telemetry = require("../telemetry_utils.cjs"); ')
    assert head["cjs/syntax.js"].startswith('import * as _telemetry from "../telemetry_utils.mjs"; ')
    assert head["cjs/m.mjs"].startswith('import * as _telemetry from "../telemetry_utils.mjs"; ')
    assert head["cjs/tool"].startswith('const _telemetry = require("../telemetry_utils.cjs"); ')
    # The runtime goes beside the nearest package.json (else at the root), once.
    written = sorted(str(Path(p).relative_to(out)) for p in summary.vendored)
    assert written == sorted([f"esm/{n}" for n in RUNTIME_FILES] + list(RUNTIME_FILES))
    toolchains.require("node")
    for name, expected in (("esm/lib/plain.js", "1"), ("esm/b.cjs", "1"), ("cjs/plain.js", "1"),
                           ("cjs/syntax.js", "1"), ("cjs/m.mjs", "1"), ("cjs/tool", "1")):
        done = toolchains.run([toolchains.node(), out / name], out, env=toolchains.node_env(), timeout=60)
        assert (done.returncode, done.stdout.strip()) == (0, expected), (name, done.stderr)


# -- real Node.js runs ------------------------------------------------------------------------------

PROGRAM = src(r'''
    "use strict";
    const assert = require("assert");

    function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

    class Account {
      #balance = 0;
      constructor(owner) { this.owner = owner; }
      get balance() { return this.#balance; }
      deposit(amount) {
        if (amount <= 0) throw new RangeError("amount must be positive");
        this.#balance += amount;
        return this;
      }
      *history() { yield "opened"; yield `owner ${this.owner}`; }
      static of(owner) { return new Account(owner); }
    }

    class Savings extends Account {
      constructor(owner, rate) { super(owner); this.rate = rate; }
      interest() { return this.balance * this.rate; }
    }

    async function delayed(value) {
      await new Promise(resolve => setTimeout(resolve, 5));
      return value * 2;
    }

    async function* ticks(n) {
      for (let i = 0; i < n; i++) { await null; yield i; }
    }

    function legacy() {
      hoisted();
      function hoisted() { legacy.called = (legacy.called || 0) + 1; }
      label: for (const x of [1, 2, 3]) { for (const y of [1, 2]) { if (x * y === 4) break label; } }
      return arguments.length;
    }

    const square = x => x * x;
    const objects = { make: (a, b) => ({ a, b }), describe() { return "objects"; } };

    async function main() {
      console.log(fib(10));
      const acc = Account.of("ann").deposit(5);
      console.log(acc.balance, [...acc.history()].join(","));
      try { acc.deposit(-1); } catch (e) { console.log(e.name, e.message); }
      const s = new Savings("bob", 0.5); s.deposit(4);
      console.log(s.interest(), s instanceof Account);
      console.log(await delayed(21));
      const seen = []; for await (const t of ticks(3)) seen.push(t);
      console.log(seen.join(","));
      console.log(legacy(1, 2, 3), legacy.called);
      console.log([1, 2, 3].map(square).join(","), JSON.stringify(objects.make(1, 2)), objects.describe());
      const gen = acc.history(); gen.next(); gen.return();
      assert.strictEqual(typeof main, "function");
    }

    main().catch(e => { console.error(e); process.exit(1); });
''')


@pytest.fixture
def program(tmp_path: Path) -> tuple[Path, Path]:
    toolchains.require("node")
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "demo", "version": "1.0.0"}')
    (project / "main.js").write_text(PROGRAM)
    out = tmp_path / "out"
    instrument_tree(project, out)
    return project, out


def test_instrumented_program_behaves_the_same_and_reports(program: tuple[Path, Path], tmp_path: Path) -> None:
    project, out = program
    node = toolchains.node()
    assert toolchains.node_check([out / "main.js"], out) == []
    before = toolchains.run([node, "main.js"], project, env=toolchains.node_env())
    events, trace, report = tmp_path / "events.jsonl", tmp_path / "trace.json", tmp_path / "report.txt"
    after = toolchains.run([node, "main.js"], out, env=toolchains.node_env(
        TELEMETRY_INJECT_JSONL=str(events), TELEMETRY_INJECT_TRACE=str(trace), TELEMETRY_INJECT_REPORT=str(report)))
    assert before.returncode == after.returncode == 0, after.stderr
    assert after.stdout == before.stdout
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    calls: dict[str, int] = {}
    for event in lines:
        calls[event["name"]] = calls.get(event["name"], 0) + 1
    assert calls["fib"] == 177
    assert calls["Account.deposit"] == 3
    assert calls["Account.history"] == 2  # exhausted once, closed early once: both end
    assert calls["ticks"] == 1 and calls["delayed"] == 1 and calls["main"] == 1
    assert calls["legacy"] == 1 and calls["legacy.hoisted"] == 1
    assert calls["Savings.constructor"] == 1 and calls["Account.constructor"] == 2
    failed = [e for e in lines if e.get("exception")]
    assert [(e["name"], e["exception"]) for e in failed] == [("Account.deposit", "RangeError")]
    delayed = next(e for e in lines if e["name"] == "delayed")
    assert delayed["duration_ns"] >= 4_000_000  # the span lasts until the promise settles
    main_event = next(e for e in lines if e["name"] == "main")
    assert main_event["duration_ns"] >= delayed["duration_ns"]
    document = json.loads(trace.read_text())
    spans = [e for e in document["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == len(lines)
    assert document["otherData"]["runtime"] == "javascript"
    table = report.read_text()
    assert "fib" in table and "Account.deposit" in table and "RangeError x1" in table


def test_disabled_runtime_counts_nothing(program: tuple[Path, Path], tmp_path: Path) -> None:
    _project, out = program
    events = tmp_path / "events.jsonl"
    done = toolchains.run([toolchains.node(), "main.js"], out, env=toolchains.node_env(
        TELEMETRY_INJECT_DISABLED="1", TELEMETRY_INJECT_JSONL=str(events), TELEMETRY_INJECT_REPORT="1"))
    assert done.returncode == 0
    assert not events.exists()
    assert "telemetry:" not in done.stderr


def test_the_runtime_api_and_one_state_for_every_copy(tmp_path: Path) -> None:
    toolchains.require("node")
    from pytest_telemetry_inject.languages.javascript import runtime_source

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for name in RUNTIME_FILES:
            (tmp_path / folder / name).write_bytes(runtime_source(name))
    (tmp_path / "check.mjs").write_text(src('''
        import * as esm from "./a/telemetry_utils.mjs";
        import { createRequire } from "module";
        const require = createRequire(import.meta.url);
        const cjs = require("./b/telemetry_utils.cjs");
        const s = esm.span("lib/a.js:f"); s.end();
        const t = cjs.span("lib/a.js:f"); t.error(new TypeError("x")); t.end();
        const rows = cjs.snapshot();
        console.log(JSON.stringify(rows.map(r => [r.module, r.name, r.count, r.errors, r.exceptions])));
        console.log(esm.formatReport().split("\\n").slice(-2).join("|"));
        cjs.configure({ disabled: true });
        esm.span("g").end();
        console.log(cjs.snapshot().length, esm.RUNTIME_VERSION);
        try { cjs.configure({ nope: 1 }); } catch (e) { console.log(e.name); }
    '''))
    done = toolchains.run([toolchains.node(), "check.mjs"], tmp_path, env=toolchains.node_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        '[["lib/a.js","f",2,1,{"TypeError":1}]]',
        "exceptions:|  lib/a.js:f: 1 (TypeError x1)",
        "1 3",
        "TypeError",
    ]


def test_opentelemetry_spans_when_an_sdk_is_registered(tmp_path: Path) -> None:
    toolchains.require("node", "npm:@opentelemetry/api", "npm:@opentelemetry/sdk-trace-base")
    (tmp_path / "app.js").write_text(src('''
        const { trace } = require("@opentelemetry/api");
        const { BasicTracerProvider, SimpleSpanProcessor, InMemorySpanExporter } = require("@opentelemetry/sdk-trace-base");
        const exporter = new InMemorySpanExporter();
        trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
        function work(x) {
          if (x < 0) throw new RangeError("negative");
          return x * 2;
        }
        work(2); try { work(-1); } catch (e) {}
        console.log(JSON.stringify(exporter.getFinishedSpans().map(s => [s.name, s.status.code, s.events.length])));
    '''))
    out = tmp_path / "out"
    instrument_tree(tmp_path, out)
    done = toolchains.run([toolchains.node(), "app.js"], out, env=toolchains.node_env())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [["work", 0, 0], ["work", 2, 1]]
    off = toolchains.run([toolchains.node(), "app.js"], out, env=toolchains.node_env(TELEMETRY_INJECT_OTEL="0"))
    assert json.loads(off.stdout) == []


# -- the command line, the cache and strip on a tree -----------------------------------------------

def test_cli_instrument_check_strip_and_cache(tmp_path: Path) -> None:
    import subprocess
    import sys

    project = tmp_path / "p"
    project.mkdir()
    (project / "package.json").write_text("{}")
    (project / "src").mkdir()
    (project / "src" / "a.js").write_text(PROGRAM)
    (project / "src" / "b.mjs").write_text("export const f = (x) => x + 1;\nexport function g() { return f(1); }\n")
    cli = [sys.executable, "-m", "pytest_telemetry_inject.cli"]

    def call(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args], cwd=project, capture_output=True, text=True, timeout=120)

    check = call("src", "--check", "--json")
    assert check.returncode == 1
    missing = json.loads(check.stdout)["missing"]
    assert {m["qualname"] for m in missing} >= {"p/src/a.js:fib", "p/src/a.js:Account.deposit", "p/src/b.mjs:f",
                                                "p/src/b.mjs:g"}
    cold = call("src", "--in-place", "--json")
    assert cold.returncode == 0, cold.stderr
    data = json.loads(cold.stdout)
    assert data["files"]["instrumented"] == 2 and data["cache"]["script_misses"] > 0
    assert sorted(Path(p).name for p in data["vendored_modules"]) == sorted(RUNTIME_FILES)
    instrumented = (project / "src" / "a.js").read_text()
    assert call("src", "--check").returncode == 0
    # A second run changes nothing; the memo answers without parsing.
    warm = json.loads(call("src", "--in-place", "--json").stdout)
    assert warm["files"].get("instrumented", 0) == 0
    # Strip gives the original back byte for byte.
    stripped = call("src", "--strip", "--in-place", "--json")
    assert stripped.returncode == 0
    assert (project / "src" / "a.js").read_text() == PROGRAM
    # Instrumenting again hits the cache (memo of the original bytes) and gives the same text.
    again = json.loads(call("src", "--in-place", "--json").stdout)
    assert again["files"]["instrumented"] == 2 and again["cache"]["memo_misses"] == 0
    assert (project / "src" / "a.js").read_text() == instrumented


# -- module kinds, the import and the names, as real packages have them ------------------------------

def test_an_es_module_that_mentions_require_gets_an_import(tmp_path: Path) -> None:
    """"type": "module" and no import/export declaration: a `require(` in a comment or a
    string says nothing (it used to give the file a require() that Node.js refuses)."""
    toolchains.require("node")
    package = tmp_path / "esm"
    package.mkdir()
    (package / "package.json").write_text('{"name": "esm", "type": "module"}')
    text = src('''
        // Unlike require(), this file runs as an ES module.
        const note = "see require('x')";
        function shout(s) {
          const t = s.toUpperCase();
          return t + "!";
        }
        console.log(shout(note));
    ''')
    (package / "tool.js").write_text(text)
    out = tmp_path / "out"
    instrument_tree(package, out)
    written = (out / "tool.js").read_text()
    assert written.splitlines()[1].startswith('import * as _telemetry from "./telemetry_utils.mjs"; const note')
    report = tmp_path / "report.json"
    before = toolchains.run([toolchains.node(), package / "tool.js"], package, env=toolchains.node_env())
    after = toolchains.run([toolchains.node(), "tool.js"], out, env=toolchains.node_env(TELEMETRY_INJECT_REPORT=str(report)))
    assert before.returncode == after.returncode == 0, after.stderr
    assert after.stdout == before.stdout == "SEE REQUIRE('X')!\n"
    rows = json.loads(report.read_text())["functions"]
    assert [(r["module"], r["name"], r["count"]) for r in rows] == [("esm/tool.js", "shout", 1)]


def test_an_import_a_formatter_moved_is_not_added_twice(tmp_path: Path) -> None:
    """After the project's own formatter or import sorter (the import on a line of its own,
    other quotes, no semicolon), a new run adds no second import; strip removes it."""
    toolchains.require("node")
    project = tmp_path / "p"
    project.mkdir()
    (project / "package.json").write_text('{"name": "p", "type": "module"}')
    (project / "util.js").write_text("export const base = 10;\n")
    text = src('''
        import { base } from "./util.js";
        export function area(w, h) {
          const a = w * h;
          return a + base;
        }
        console.log(area(2, 3));
    ''')
    (project / "main.js").write_text(text)
    instrument_tree(project, None)
    first = (project / "main.js").read_text()
    assert first.startswith('import * as _telemetry from "./telemetry_utils.mjs"; import { base }')
    # The import sorter's work: the import on a line of its own, after the others, single quotes.
    sorted_text = first.replace('import * as _telemetry from "./telemetry_utils.mjs"; ', "").replace(
        'import { base } from "./util.js";\n',
        "import { base } from './util.js'\nimport * as _telemetry from './telemetry_utils.mjs'\n")
    # and a function added since, which the next run instruments
    sorted_text += "export function perimeter(w, h) {\n  const p = 2 * (w + h);\n  return p;\n}\n"
    (project / "main.js").write_text(sorted_text)
    parsed = JS.parse(sorted_text, str(project / "main.js"), settings())
    assert parsed.header_present == "vendored" and parsed.file_skip_reason is None
    instrument_tree(project, None)
    second = (project / "main.js").read_text()
    assert second.count("_telemetry from") == 1 and 'span("p/main.js:perimeter")' in second
    assert toolchains.node_check([project / "main.js"], project) == []
    done = toolchains.run([toolchains.node(), "main.js"], project, env=toolchains.node_env())
    assert (done.returncode, done.stdout) == (0, "16\n"), done.stderr
    stripped = JS.strip(second).text
    assert "_telemetry" not in stripped
    assert stripped == ("import { base } from './util.js'\n" + text.split("\n", 1)[1]
                        + "export function perimeter(w, h) {\n  const p = 2 * (w + h);\n  return p;\n}\n")


def test_a_file_that_declares_the_tools_name_is_left_alone() -> None:
    """The runtime imported in a form this tool did not write (another file name): a second
    import would be declared twice. Instrumented spans elsewhere in the file change nothing."""
    text = ('const _telemetry = require("./vendor/telemetry.js");\n'
            'function done() { const _telemetry_s = _telemetry.span("a.js:done"); try {\n  return 1;\n'
            '} catch (_telemetry_e) { _telemetry_s.error(_telemetry_e); throw _telemetry_e; } finally '
            '{ _telemetry_s.end(); } }\nfunction fresh(x) {\n  const y = x + 1;\n  return y * 2;\n}\n')
    parsed = JS.parse(text, "a.js", settings())
    assert parsed.header_present is None and any(r.instrumented for r in parsed.functions)
    assert parsed.file_skip_reason == "the file already uses a name this tool inserts (_telemetry...)"
    # In a comment or a string the name is no clash.
    fine = JS.parse('// _telemetry\nconst s = "_telemetry_s";\nfunction f(x) { return x + s; }\n', "a.js", settings())
    assert fine.file_skip_reason is None


def test_node_refuses_what_the_grammar_lets_through(tmp_path: Path) -> None:
    """Where Node.js is installed a written file must compile as Node.js will load it, with
    the runtime import of its module system: else it is left unchanged, with the reason."""
    toolchains.require("node")
    from pytest_telemetry_inject.languages import toolcheck

    package = tmp_path / "esm"
    package.mkdir()
    (package / "package.json").write_text('{"type": "module"}')
    text = "function twice(x) {\n  const y = x * 2;\n  return y;\n}\nconsole.log(twice(2));\n"
    (package / "a.js").write_text(text)
    # An import name that asks for CommonJS (as a wrong setting would): tree-sitter sees
    # nothing wrong with require() in an ES module; Node.js would throw when it runs.
    result = Engine(settings()).instrument(text.encode(), str(package / "a.js"), import_name="commonjs:./telemetry_utils")
    assert result.status == "error" and result.output is None
    assert "an ES module for Node.js" in result.reason and "left unchanged" in result.reason
    # A name declared twice (what a second import does) is an early error only Node.js sees.
    (tmp_path / "b.js").write_text(text)
    twice = 'const _telemetry = require("./telemetry_utils.cjs"); ' * 2 + text
    assert JS.check_syntax(twice, "b.js") is None
    problem = toolcheck.check_javascript(str(tmp_path / "b.js"), text, twice, "require")
    assert problem == "node: line 1: Identifier '_telemetry' has already been declared"
    assert toolcheck.check_javascript(str(tmp_path / "b.js"), text, text, "") is None


DELETES_GLOBALS = src(r'''
    "use strict";
    function work(n) {
      let s = 0;
      for (let i = 0; i < n; i++) s += i;
      return s;
    }
    const seen = [work(10)];
    delete globalThis.Date;            // a test suite that simulates ES5
    seen.push(work(100), typeof Date);
    globalThis.Date = class { static now() { return 0; } };   // fake timers
    performance.now = () => 0;
    delete globalThis.Map;
    delete globalThis.Symbol;
    seen.push(work(1000));
    console.log(seen.join(" "));
''')


def test_the_runtime_survives_a_program_that_deletes_or_fakes_its_globals(tmp_path: Path) -> None:
    toolchains.require("node")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "package.json").write_text('{"name": "p"}')
    (tmp_path / "p" / "main.js").write_text(DELETES_GLOBALS)
    out = tmp_path / "out"
    instrument_tree(tmp_path / "p", out)
    report, events = tmp_path / "report.json", tmp_path / "events.jsonl"
    done = toolchains.run([toolchains.node(), "main.js"], out, env=toolchains.node_env(
        TELEMETRY_INJECT_REPORT=str(report), TELEMETRY_INJECT_JSONL=str(events)))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "45 4950 undefined 499500\n"
    rows = {r["name"]: r for r in json.loads(report.read_text())["functions"]}
    assert rows["work"]["count"] == 3 and rows["work"]["module"] == "p/main.js"
    # The clock is the one the runtime took when it loaded: the fakes do not stop it.
    assert rows["work"]["total_ns"] > 0 and rows["work"]["min_ns"] >= 0
    assert [json.loads(line)["name"] for line in events.read_text().splitlines()] == ["work"] * 3


def test_span_names_carry_the_module_and_the_binding(tmp_path: Path) -> None:
    """Anonymous functions of two files of a package are two spans, not one, and a function
    takes the name of the binding it ends in (through a wrapping call, an IIFE)."""
    toolchains.require("node")
    package = tmp_path / "lib"
    (package / "sub").mkdir(parents=True)
    (package / "package.json").write_text('{"name": "lib", "main": "index.js"}')
    body = src('''
        const wrap = (f) => f;
        exports.run = function () {
          return [1, 2, 3].map(function (x) {
            const y = x * 2;
            return y + 1;
          });
        };
        const handler = wrap(function (v) {
          const w = v + 1;
          return w;
        });
        const once = (function () {
          const made = [];
          return function () {
            made.push(1);
            return made.length;
          };
        })();
        exports.handler = handler;
        exports.once = once;
    ''')
    (package / "index.js").write_text(body)
    (package / "sub" / "index.js").write_text(body)
    out = tmp_path / "out"
    instrument_tree(package, out)
    (out / "use.js").write_text(src('''
        const a = require("./index.js"), b = require("./sub/index.js");
        console.log(a.run().join(","), b.run().join(","), a.handler(1), b.once(), b.once());
    '''))
    report = tmp_path / "report.json"
    done = toolchains.run([toolchains.node(), "use.js"], out, env=toolchains.node_env(TELEMETRY_INJECT_REPORT=str(report)))
    assert (done.returncode, done.stdout) == (0, "3,5,7 3,5,7 2 1 2\n"), done.stderr
    rows = {(r["module"], r["name"]): r["count"] for r in json.loads(report.read_text())["functions"]}
    assert rows == {
        ("lib/index.js", "exports.run"): 1, ("lib/index.js", "exports.run.<anonymous#1>"): 3,
        ("lib/sub/index.js", "exports.run"): 1, ("lib/sub/index.js", "exports.run.<anonymous#1>"): 3,
        ("lib/index.js", "handler"): 1, ("lib/sub/index.js", "once.<anonymous#1>"): 2,
        ("lib/index.js", "once"): 1, ("lib/sub/index.js", "once"): 1,
    }


def test_the_code_that_runs_is_not_left_out(tmp_path: Path) -> None:
    """`-o` follows a package's entry points into dist/ (the code that runs), and says what
    build output it leaves out, and why."""
    toolchains.require("node")
    import subprocess
    import sys

    package = tmp_path / "pkg"
    for folder in ("dist", "build", "src"):
        (package / folder).mkdir(parents=True)
    (package / "package.json").write_text('{"name": "pkg", "main": "./dist/index.js"}')
    code = "function greet(who) {\n  const text = 'hi ' + who;\n  return text;\n}\nmodule.exports = { greet };\n"
    (package / "dist" / "index.js").write_text(code)
    (package / "build" / "tmp.js").write_text(code)
    (package / "src" / "index.js").write_text(code)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "pytest_telemetry_inject.cli", str(package), "-o", str(out), "--json",
                           "--no-cache"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["files"]["instrumented"] == 2  # src/ and dist/
    assert data["left_out"] == ["build/ (build output (no entry point of a package.json beside it leads there; "
                                "name it as a PATH to include it))"]
    assert 'span("pkg/dist/index.js:greet")' in (out / "dist" / "index.js").read_text()
    assert not (out / "build").exists()
    ran = toolchains.run([toolchains.node(), "-e", "console.log(require('./').greet('you'))"], out,
                         env=toolchains.node_env())
    assert (ran.returncode, ran.stdout) == (0, "hi you\n"), ran.stderr
    text = subprocess.run([sys.executable, "-m", "pytest_telemetry_inject.cli", str(package), "-o", str(out),
                           "--no-cache"], capture_output=True, text=True, timeout=120)
    assert "telemetry-inject: left out build/ (build output" in text.stdout


def test_strip_refuses_telemetry_it_does_not_recognise() -> None:
    """A span opening a formatter spread over lines is no longer this tool's text: strip
    says where it is instead of leaving half of the telemetry behind."""
    from pytest_telemetry_inject.errors import SourceSyntaxError

    text = "function f(x) {\n  const y = x + 1;\n  return y;\n}\nmodule.exports = { f };\n"
    out = instrument_text(text)
    reformatted = out.replace('{ const _telemetry_s = _telemetry.span("a.js:f"); try {',
                              '{\n  const _telemetry_s = _telemetry.span("a.js:f");\n  try {')
    assert reformatted != out
    with pytest.raises(SourceSyntaxError, match=r"cannot strip: telemetry at line 2 is not in a form this tool wrote"):
        JS.strip(reformatted)
    assert JS.strip(out).text == text
