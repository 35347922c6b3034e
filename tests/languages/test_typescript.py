"""TypeScript: records, what is left alone, and the real compiler.

The instrumented sources type-check with ``tsc --noEmit`` (strict, under several module
settings and an ES5 target), compile, and run with Node.js exactly like the originals while
reporting their calls.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.engine.runner import RunOptions, run
from pytest_telemetry_inject.languages import get_language, language_for
from pytest_telemetry_inject.languages.javascript import RUNTIME_FILES, runtime_source
from pytest_telemetry_inject.settings import Settings
from pytest_telemetry_inject.testkit import import_path

toolchains = import_path(Path(__file__).resolve().parents[1] / "realcode" / "toolchains.py",
                         "telemetry_inject_realcode_toolchains")
TS = get_language("typescript")


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def settings(**overrides) -> Settings:
    return Settings.load(None, env={}, overrides={"parallel": False, "use_cache": False, **overrides})


def records(text: str, path: str = "a.ts") -> dict[str, object]:
    """The functions by qualname, without their module (``a.ts:``)."""
    return {r.qualname.partition(":")[2]: r for r in TS.parse(text, path, settings()).functions}


def instrument_tree(root: Path, out: Path):
    summary = run([str(root)], settings(), RunOptions(output_dir=out), project_root=root)
    assert all(r.status != "error" for r in summary.files), [(r.path, r.reason) for r in summary.files]
    return summary


SAMPLE = src('''
    import { strict as assert } from "assert";

    export interface Shape { area(): number }

    export abstract class Base implements Shape {
      abstract area(): number;
      describe(this: Base): string { return `${this.constructor.name} ${this.area().toFixed(1)}`; }
    }

    export class Square extends Base {
      constructor(private readonly side: number) { super(); }
      area(): number { return this.side * this.side; }
    }

    export class Circle extends Base {
      constructor(public r: number) {
        super();
      }
      area(): number { return Math.PI * this.r ** 2; }
    }

    export class Plain extends Base {
      constructor(n: number) {
        super();
        this.n = n;
      }
      n: number;
      area(): number { return this.n; }
    }

    export namespace Geometry {
      export function total(shapes: readonly Shape[]): number {
        return shapes.reduce((sum, s) => sum + s.area(), 0);
      }
    }

    export function parse(text: string): number;
    export function parse(text: number): number;
    export function parse(text: string | number): number {
      const value = typeof text === "number" ? text : Number(text);
      if (Number.isNaN(value)) throw new TypeError(`not a number: ${text}`);
      return value;
    }

    export function* range(n: number): Generator<number, void, unknown> {
      for (let i = 0; i < n; i++) yield i;
    }

    export async function later<T>(value: T): Promise<T> {
      await new Promise<void>(resolve => setTimeout(resolve, 2));
      return value;
    }

    export const double = <T extends number>(x: T): number => x * 2;
    export const pick = (o: { a: number }): number => o.a;

    export function assertPositive(x: number): asserts x is number {
      if (x <= 0) throw new RangeError("not positive");
    }

    export function outer(): number {
      function helper(): number { return 1; }
      return helper();
    }

    export async function main(): Promise<void> {
      const shapes: Shape[] = [new Square(2), new Circle(1), new Plain(3)];
      console.log(Geometry.total(shapes).toFixed(3), (shapes[0] as Base).describe());
      console.log(parse("4") + parse(5), [...range(3)].join(","), await later("done"), double(21), pick({ a: 7 }));
      try { parse("x"); } catch (e: unknown) { console.log((e as Error).message); }
      assertPositive(1);
      assert.equal(outer(), 1);
    }
''')


def test_records_and_what_is_left_alone() -> None:
    found = records(SAMPLE)
    assert set(found) >= {"Base.describe", "Square.constructor", "Square.area", "Circle.constructor",
                          "Plain.constructor", "Geometry.total", "Geometry.total.<anonymous#1>", "parse",
                          "range", "later", "double", "pick", "assertPositive", "outer", "outer.helper", "main"}
    # Overload signatures and abstract methods have no body: no record at all.
    assert sum(1 for q in found if q == "parse") == 1
    assert "Base.area" not in found
    # Parameter properties: TypeScript wants super() at the top level of the body.
    assert "super() call at the top level" in found["Square.constructor"].skip_reason
    assert "super() call at the top level" in found["Circle.constructor"].skip_reason
    assert found["Plain.constructor"].skip_reason is None
    # A function declared directly in a body would be in a block (TS1252 when targeting ES5).
    assert "targeting ES5" in found["outer"].skip_reason
    assert found["outer.helper"].skip_reason is None
    assert found["range"].is_generator and found["later"].is_async


def test_files_left_alone_and_the_import_forms() -> None:
    script = TS.parse("function f(): number { return 1; }\n", "script.ts", settings())
    assert script.file_skip_reason == "a TypeScript script (no import or export): an import would make it a module"
    declarations = TS.parse("export declare function f(): number;\n", "types.d.ts", settings())
    assert declarations.functions == [] and declarations.file_skip_reason is None
    for name in ("a.ts", "a.tsx", "a.mts", "a.cts"):
        assert language_for(name).name == "typescript"
    engine = Engine(settings())
    body = "export function f(): number { return 1; }\n"
    for path, head in (("a.ts", 'import * as _telemetry from "./telemetry_utils.cjs"; '),
                       ("a.mts", 'import * as _telemetry from "./telemetry_utils.cjs"; '),
                       ("a.cts", 'import _telemetry = require("./telemetry_utils.cjs"); ')):
        out = engine.instrument(body.encode(), path, import_name="./telemetry_utils").output.decode()
        assert out.startswith(head + "export function f(): number { const _telemetry_s")
        assert TS.strip(out).text == body
    required = "import fs = require(\"fs\");\nexport function f(): number { return fs ? 1 : 0; }\n"
    out = engine.instrument(required.encode(), "b.ts", import_name="./telemetry_utils").output.decode()
    assert out.startswith('import _telemetry = require("./telemetry_utils.cjs"); import fs = require("fs");')


def test_tsx_components() -> None:
    text = src('''
        import * as React from "react";
        export const Button = (props: { label: string }) => <button onClick={() => alert(props.label)}>{props.label}</button>;
        export function List<T>({ items }: { items: T[] }) {
          return <ul>{items.map((item, i) => <li key={i}>{String(item)}</li>)}</ul>;
        }
    ''')
    found = records(text, "c.tsx")
    assert set(found) == {"Button", "Button.<anonymous#1>", "List", "List.<anonymous#1>"}
    out = Engine(settings()).instrument(text.encode(), "c.tsx", import_name="./telemetry_utils").output.decode()
    assert out.count("\n") == text.count("\n")
    assert TS.strip(out).text == text
    assert TS.check_syntax(out, "c.tsx") is None


NODE_SHIM = src('''
    declare module "assert" { export const strict: { equal(a: unknown, b: unknown): void }; }
    declare const console: { log(...a: unknown[]): void; error(...a: unknown[]): void };
    declare function setTimeout(f: () => void, ms: number): unknown;
    declare const process: { exit(code: number): never };
''')


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    toolchains.require("tsc", "node")
    root = tmp_path_factory.mktemp("ts")
    project = root / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "demo", "version": "1.0.0"}')
    (project / "src").mkdir()
    (project / "src" / "shapes.ts").write_text(SAMPLE)
    (project / "src" / "run.ts").write_text('import { main } from "./shapes";\nmain().catch(e => { console.error(e); process.exit(1); });\n')
    out = root / "out"
    instrument_tree(project, out)
    # `assert`, `console`, `setTimeout` and `process` come from Node's types: declared here so
    # that the checks need no @types package.
    for folder in (project, out):
        (folder / "node-shim.d.ts").write_text(NODE_SHIM)
    return root


TSCONFIGS = {
    "commonjs-es5": {"module": "commonjs", "target": "es5", "lib": ["es2017"], "downlevelIteration": True},
    "node16": {"module": "node16", "moduleResolution": "node16", "target": "es2022"},
    "nodenext": {"module": "nodenext", "target": "es2022", "noUnusedLocals": True, "noImplicitReturns": True},
    "bundler": {"module": "esnext", "moduleResolution": "bundler", "target": "es2022",
                "exactOptionalPropertyTypes": True, "noFallthroughCasesInSwitch": True},
}


@pytest.mark.parametrize("config", sorted(TSCONFIGS))
def test_tsc_type_checks_the_instrumented_sources(compiled: Path, config: str) -> None:
    out = compiled / "out"
    options = {"strict": True, "noEmit": True, "types": [], "skipLibCheck": False, "lib": ["es2022"],
               **TSCONFIGS[config]}
    tsconfig = out / f"tsconfig.{config}.json"
    tsconfig.write_text(json.dumps({"compilerOptions": options, "files": ["src/run.ts", "src/shapes.ts", "node-shim.d.ts"]}))
    done = toolchains.run([toolchains.tsc(), "-p", tsconfig.name], out, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    # The same check fails when the runtime's declarations are missing: tsc reads them.
    assert (out / "telemetry_utils.d.cts").is_file()


def test_compiled_program_runs_like_the_original(compiled: Path, tmp_path: Path) -> None:
    project, out = compiled / "project", compiled / "out"
    results = []
    for folder in (project, out):
        build = tmp_path / f"build-{folder.name}"
        (folder / "tsconfig.json").write_text(json.dumps({
            "compilerOptions": {"strict": True, "module": "commonjs", "target": "es2020", "outDir": str(build),
                                "rootDir": "src", "types": [], "lib": ["es2022"]},
            "files": ["src/run.ts", "src/shapes.ts", "node-shim.d.ts"]}))
        done = toolchains.run([toolchains.tsc(), "-p", "tsconfig.json"], folder, timeout=300)
        assert done.returncode == 0, done.stdout
        if folder == out:
            # tsc copies no runtime into outDir: put it where the compiled files import it.
            shutil.copy(out / "telemetry_utils.cjs", build.parent / "telemetry_utils.cjs")
        report = tmp_path / f"report-{folder.name}.json"
        ran = toolchains.run([toolchains.node(), build / "run.js"], build, env=toolchains.node_env(
            TELEMETRY_INJECT_REPORT=str(report)))
        assert ran.returncode == 0, ran.stderr
        results.append((ran.stdout, report))
    assert results[0][0] == results[1][0]
    assert not results[0][1].exists()  # the original has no telemetry
    rows = {row["name"]: row for row in json.loads(results[1][1].read_text())["functions"]}
    assert rows["parse"]["count"] == 3 and rows["parse"]["errors"] == 1
    assert rows["parse"]["exceptions"] == {"TypeError": 1}
    assert rows["range"]["count"] == 1 and rows["later"]["count"] == 1
    assert rows["Square.area"]["count"] == 2 and rows["Geometry.total"]["count"] == 1
    assert "Square.constructor" not in rows  # left alone (parameter property)


@pytest.mark.parametrize("config", ["node16", "nodenext", "bundler"])
def test_the_es_module_entry_is_typed(tmp_path: Path, config: str) -> None:
    """``telemetry_utils.d.mts`` re-exports the declarations of the CommonJS entry: an ES
    module that imports ``telemetry_utils.mjs`` gets the same types (and their errors)."""
    toolchains.require("tsc")
    for name in RUNTIME_FILES:
        (tmp_path / name).write_bytes(runtime_source(name))
    (tmp_path / "good.mts").write_text(
        'import runtime, { span, type Span } from "./telemetry_utils.mjs";\n'
        'const s: Span = span("x");\ns.end();\nexport const version: number = runtime.RUNTIME_VERSION;\n'
        'export const rows = runtime.snapshot();\n')
    (tmp_path / "bad.mts").write_text(
        'import runtime, { span } from "./telemetry_utils.mjs";\nruntime.nosuch();\n'
        'export const s: string = span("x");\n')
    options = ["--noEmit", "--strict", "--lib", "es2022", "--target", "es2022"]
    options += ["--module", TSCONFIGS[config]["module"]]
    if "moduleResolution" in TSCONFIGS[config]:
        options += ["--moduleResolution", TSCONFIGS[config]["moduleResolution"]]
    good = toolchains.run([toolchains.tsc(), *options, "good.mts"], tmp_path, timeout=300)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = toolchains.run([toolchains.tsc(), *options, "bad.mts"], tmp_path, timeout=300)
    assert "'nosuch' does not exist" in bad.stdout and "not assignable to type 'string'" in bad.stdout, bad.stdout


VARIANCE = src('''
    export interface Box<out T> { readonly value: T }
    export interface Sink<in T> { put(item: T): void }

    export class Cell<in out T> implements Box<T>, Sink<T> {
      constructor(public value: T) {}
      put(item: T): void {
        const old = this.value;
        this.value = item;
        void old;
      }
    }

    export function fill<T>(sink: Sink<T>, items: readonly T[]): number {
      let n = 0;
      for (const item of items) {
        sink.put(item);
        n++;
      }
      return n;
    }
''')


def test_variance_annotations_are_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`interface Box<out T>` (TypeScript 4.7), which tree-sitter-typescript refuses: the
    file is instrumented (not skipped as a syntax error), tsc accepts it, strip is exact."""
    toolchains.require("tsc")
    monkeypatch.setenv("TELEMETRY_INJECT_TYPESCRIPT", str(toolchains.NODE_MODULES / "typescript"))
    found = records(VARIANCE, "box.ts")
    assert {q: r.skip_reason for q, r in found.items()} == {
        "Cell.constructor": "trivial body (empty)", "Cell.put": None, "fill": None}
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "box.ts").write_text(VARIANCE)
    out = tmp_path / "out"
    summary = instrument_tree(tmp_path / "src", out)
    assert summary.function_counts()["instrumented"] == 2  # the constructor is empty
    written = (out / "box.ts").read_text()
    assert 'span("box.ts:Cell.put")' in written and "export interface Box<out T>" in written
    done = toolchains.run([toolchains.tsc(), "--noEmit", "--strict", "--target", "es2022", "--module", "commonjs",
                           "box.ts"], out, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert TS.strip(written).text == VARIANCE


def test_the_typescript_parser_checks_each_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the compiler is installed, its own parser reads every output: an error it
    finds that tree-sitter does not is the output's, when the original has none."""
    toolchains.require("tsc", "node")
    monkeypatch.setenv("TELEMETRY_INJECT_TYPESCRIPT", str(toolchains.NODE_MODULES / "typescript"))
    from pytest_telemetry_inject.languages import toolcheck

    original = "export function f(x: number): number {\n  const y = x + 1;\n  return y;\n}\n"
    (tmp_path / "a.ts").write_text(original)
    broken = original.replace("x + 1", "x + 010")
    assert TS.check_syntax(broken, "a.ts") is None  # tree-sitter sees nothing wrong
    assert toolcheck.check_typescript(str(tmp_path / "a.ts"), original, broken) == \
        "typescript: line 2: Octal literals are not allowed. Use the syntax '0o10'."
    assert toolcheck.check_typescript(str(tmp_path / "a.ts"), broken, broken + "\n") is None  # not the output's
    out = Engine(settings()).instrument(original.encode(), str(tmp_path / "a.ts"), import_name="./telemetry_utils")
    assert out.status == "instrumented" and toolcheck.check_typescript(str(tmp_path / "a.ts"), original,
                                                                         out.output.decode()) is None
