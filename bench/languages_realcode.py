"""Real code in JavaScript, TypeScript and Go through the engine, beside a Python sample.

For each package: copy it, instrument the copy (cold: an empty cache; warm: the same sources
again with that cache), check the result with the real toolchain, run the package's own
code, strip the copy and compare it with the original byte for byte.

- npm (from tests/realcode/.npm, see tests/realcode/toolchains.py): semver, commander,
  yargs, date-fns: ``node --check`` on every instrumented file, then a usage script that
  must print the same as with the original package (and the instrumented run must report
  calls); rxjs's TypeScript sources: ``tsc --noEmit`` with the package's own ES5/CommonJS
  tsconfig, then compiled and run.
- Go (Debian's golang-*-dev sources under /usr/share/gocode): google/uuid, pkg/errors,
  cespare/xxhash, google/go-cmp: ``go vet`` (no new finding), ``go build``, ``go test``
  (every package that passed before passes).
- Python: a sample of the standard library, same runner and settings, for the speed figures.

Speeds are milliseconds per instrumented function, one process (no workers), so the
languages compare; "of which checks" is the part of the cold figure the toolchain checks of
the written files take (``languages/toolcheck.py``: Node.js, TypeScript's parser, gofmt,
go vet; cold runs only). Prints a table (``--json``: the figures as JSON).

    python bench/languages_realcode.py [--workdir DIR] [--quick] [--only NAME,...] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_telemetry_inject.engine.runner import RunOptions, run
from pytest_telemetry_inject.languages import toolcheck
from pytest_telemetry_inject.settings import Settings
from pytest_telemetry_inject.testkit import import_path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent


toolchains = import_path(PROJECT / "tests" / "realcode" / "toolchains.py", "telemetry_inject_realcode_toolchains")
SOURCE_SUFFIXES = (".js", ".mjs", ".cjs", ".jsx", ".ts", ".tsx", ".mts", ".cts", ".go", ".py")


def settings(cache: Path | None) -> Settings:
    overrides: dict[str, Any] = {"parallel": False, "use_cache": cache is not None}
    if cache is not None:
        overrides["cache_dir"] = str(cache)
    return Settings.load(None, env={}, overrides=overrides)


def instrument(paths: list[Path], root: Path, cache: Path | None, *, out: Path | None = None,
               mode: str = "instrument") -> tuple[Any, float]:
    options = RunOptions(mode=mode, output_dir=out, in_place=out is None)
    started = time.perf_counter()
    summary = run([str(p) for p in paths], settings(cache), options, project_root=root)
    return summary, time.perf_counter() - started


def tally(summary: Any) -> dict[str, Any]:
    counts = summary.function_counts()
    return {
        "files": sum(1 for r in summary.files if r.language),
        "instrumented": counts.get("instrumented", 0),
        "skipped": counts.get("skipped", 0) + counts.get("failed", 0),
        "failed": counts.get("failed", 0),
        "errors": [f"{r.path}: {r.reason}" for r in summary.files if r.status == "error"] + list(summary.errors),
        "skip_reasons": dict(summary.reasons("skipped").most_common(4)),
    }


def sources(root: Path) -> dict[str, bytes]:
    """The source files, less those the tool writes (the runtimes, Go's TestMain)."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in SOURCE_SUFFIXES and "telemetry_utils" not in path.name \
                and "telemetryinject" not in path.parts and path.name != "telemetry_inject_main_test.go":
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


def round_trip(name: str, work: Path, prepare: Callable[[Path], list[Path]], root_of: Callable[[Path], Path]
               ) -> tuple[dict[str, Any], Path, Path]:
    """Cold run on one copy, warm run on a second copy with the same cache, strip check on a
    third. Returns the figures, the pristine copy and the instrumented one."""
    cache = work / f"{name}-cache"
    pristine = work / f"{name}-orig"
    inst = work / f"{name}-inst"
    again = work / f"{name}-warm"
    prepare(pristine)
    shutil.copytree(pristine, inst, symlinks=True)
    shutil.copytree(pristine, again, symlinks=True)
    paths = _paths(prepare, inst)
    checks_before = dict(toolcheck.STATS)
    summary, cold = instrument(paths, root_of(inst), cache)
    figures = tally(summary)
    # The toolchain checks of the written files (node, TypeScript's parser, gofmt and go
    # vet): cold runs only, part of the cold figure.
    figures["check_ms"] = (toolcheck.STATS["seconds"] - checks_before["seconds"]) * 1000 / max(
        figures["instrumented"], 1)
    figures["checks"] = toolcheck.STATS["checks"] - checks_before["checks"]
    warm_summary, warm = instrument(_paths(prepare, again), root_of(again), cache)
    figures["memo_hits"] = warm_summary.counters().memo_hits
    figures["cold_ms"] = cold * 1000 / max(figures["instrumented"], 1)
    figures["warm_ms"] = warm * 1000 / max(figures["instrumented"], 1)
    figures["warm_same"] = sources(again) == sources(inst)
    stripped = work / f"{name}-strip"
    shutil.copytree(inst, stripped, symlinks=True)
    instrument(_paths(prepare, stripped), root_of(stripped), None, mode="strip")
    figures["strip_exact"] = sources(stripped) == sources(pristine)
    original = sources(pristine)
    figures["changed"] = sum(1 for k, v in sources(inst).items() if original.get(k) != v)
    for folder in (again, stripped):
        shutil.rmtree(folder, ignore_errors=True)
    return figures, pristine, inst


def _paths(prepare: Callable[[Path], list[Path]], root: Path) -> list[Path]:
    return prepare.paths(root)  # type: ignore[attr-defined]


# -- npm packages ----------------------------------------------------------------------------------

NPM_USAGE = {
    "semver": """
        const semver = require("semver");
        console.log(semver.valid("1.2.3"), semver.satisfies("1.2.3", "^1.0.0 || ^2"), semver.inc("1.2.3", "minor"));
        console.log(semver.sort(["1.10.0", "1.2.0", "1.2.0-beta.1"]).join(" "), semver.maxSatisfying(["1.2.3", "1.4.0"], "~1.2"));
        console.log(semver.coerce("v3.4 final").version, semver.diff("1.2.3", "2.0.0"), semver.gt("2.0.0", "1.9.9"));
        try { new semver.SemVer("not a version"); } catch (e) { console.log(e.name, e.message); }
        console.log(new semver.Range(">=1.2.3 <2.0.0 || 3.x").format(), semver.intersects("^1.2", "1.3.x"));
    """,
    "commander": """
        const { Command, Option } = require("commander");
        const program = new Command("tool").exitOverride().configureOutput({ writeOut: s => console.log(s.trim()), writeErr: s => console.log(s.trim()) });
        program.option("-d, --debug", "debug").addOption(new Option("-s, --size <size>").choices(["small", "big"]));
        program.command("build <target>").option("--fast").action((target, opts) => console.log("build", target, !!opts.fast));
        program.parse(["node", "tool", "-d", "-s", "big", "build", "app", "--fast"]);
        console.log(JSON.stringify(program.opts()));
        try { program.parse(["node", "tool", "-s", "huge"]); } catch (e) { console.log(e.code); }
        console.log(program.helpInformation().split("\\n")[0]);
    """,
    "yargs": """
        (async () => {
          const { default: yargs } = await import("yargs");
          const argv = yargs(["--name", "x", "serve", "--port", "8080", "-v"])
            .command("serve", "start", y => y.option("port", { type: "number" }))
            .option("name", { type: "string" }).option("v", { alias: "verbose", type: "boolean" }).strict().parse();
          console.log(argv.name, argv.port, argv.verbose, argv._.join(","));
          const help = await yargs(["--help"]).scriptName("tool").option("x", { describe: "an x" }).exitProcess(false).getHelp();
          console.log(help.split("\\n").length > 2);
        })().catch(e => { console.error(e); process.exit(1); });
    """,
    "date-fns": """
        const fns = require("date-fns");
        const d = new Date(Date.UTC(2020, 0, 31, 12));
        console.log(fns.formatISO(fns.addMonths(d, 1), { representation: "date" }), fns.differenceInCalendarDays(fns.addDays(d, 10), d));
        console.log(fns.isLeapYear(d), fns.getISOWeek(d), fns.eachDayOfInterval({ start: d, end: fns.addDays(d, 3) }).length);
        console.log(fns.format(new Date(2021, 5, 6, 7, 8), "yyyy-MM-dd HH:mm EEE"), fns.isValid(new Date("nope")));
        console.log(fns.parse("2022-03-04", "yyyy-MM-dd", new Date(0)).getMonth(), fns.formatDistanceStrict(d, fns.addHours(d, 5)));
    """,
}
NPM_ENTRY = {"yargs": ["", "build"]}


def npm_prepare(name: str, select: Callable[[Path], list[Path]] | None = None) -> Callable[[Path], list[Path]]:
    """Copy the package and its dependencies (left alone) into ``<copy>/node_modules``;
    ``select`` picks what to instrument in the package folder (default: all of it)."""

    def prepare(destination: Path) -> list[Path]:
        modules = destination / "node_modules"
        modules.mkdir(parents=True)
        for entry in sorted(toolchains.NODE_MODULES.iterdir()):
            if entry.name.startswith(".") or entry.name in ("typescript", "rxjs", "@opentelemetry"):
                continue
            if entry.name == name or entry.name not in NPM_USAGE:
                shutil.copytree(entry, modules / entry.name, symlinks=True)
        return paths(destination)

    def paths(root: Path) -> list[Path]:
        base = root / "node_modules" / name
        if select is not None:
            return select(base)
        return [base / sub if sub else base for sub in NPM_ENTRY.get(name, [""])]

    prepare.paths = paths  # type: ignore[attr-defined]
    return prepare


def date_fns_commonjs(base: Path) -> list[Path]:
    """date-fns's CommonJS build that ``require("date-fns")`` loads: the top-level .cjs
    modules and _lib (not the locales, the fp variants or the browser bundles)."""
    return sorted(p for p in base.glob("*.cjs") if not p.name.startswith("cdn")) + [base / "_lib"]


def npm_case(name: str, work: Path, *, select: Callable[[Path], list[Path]] | None = None) -> dict[str, Any]:
    prepare = npm_prepare(name, select)
    root_of = lambda copy: copy / "node_modules" / name  # noqa: E731
    figures, pristine, inst = round_trip(name, work, prepare, root_of)
    package = inst / "node_modules" / name
    files = sorted(p for p in package.rglob("*") if p.suffix in (".js", ".mjs", ".cjs") and ".min." not in p.name
                   and "telemetry_utils" not in p.name and sources_changed(p, pristine, inst))
    problems = toolchains.node_check(files, inst)
    figures["checked"] = len(files)
    figures["check_failures"] = problems[:5]
    usage = "usage.cjs"
    for folder in (pristine, inst):
        (folder / usage).write_text(_dedent(NPM_USAGE[name]))
    report = work / f"{name}-report.json"
    before = toolchains.run([toolchains.node(), usage], pristine, env=toolchains.node_env(), timeout=300)
    after = toolchains.run([toolchains.node(), usage], inst, env=toolchains.node_env(
        TELEMETRY_INJECT_REPORT=str(report)), timeout=300)
    figures["usage_same"] = before.returncode == 0 and after.returncode == 0 and before.stdout == after.stdout
    if not figures["usage_same"]:
        figures["check_failures"].append("usage output differs:\n" + (before.stdout + before.stderr)[-400:]
                                         + "\n--- instrumented:\n" + (after.stdout + after.stderr)[-800:])
    rows = json.loads(report.read_text())["functions"] if report.exists() else []
    figures["spans_reported"] = sum(1 for r in rows if r["count"])
    figures["calls_reported"] = sum(r["count"] for r in rows)
    figures["toolchain"] = (f"node --check {len(files) - len(problems)}/{len(files)} ok; usage "
                            f"{'same output' if figures['usage_same'] else 'DIFFERS'}, "
                            f"{figures['spans_reported']} functions called")
    figures["ok"] = (not problems and figures["usage_same"] and figures["spans_reported"] > 0
                     and figures["strip_exact"] and figures["warm_same"] and not figures["errors"])
    return {"package": f"npm {name}", "language": "javascript", **figures}


def sources_changed(path: Path, pristine: Path, inst: Path) -> bool:
    other = pristine / path.relative_to(inst)
    return not other.exists() or other.read_bytes() != path.read_bytes()


def _dedent(text: str) -> str:
    import textwrap

    return textwrap.dedent(text).lstrip("\n")


RXJS_USAGE = """
const { of, interval, firstValueFrom, Subject } = require("./build/index.js");
const { map, filter, take, toArray, catchError, scan } = require("./build/operators/index.js");
(async () => {
  console.log(await firstValueFrom(of(1, 2, 3, 4).pipe(map(x => x * 2), filter(x => x > 2), toArray())));
  console.log(await firstValueFrom(interval(1).pipe(take(3), scan((a, b) => a + b, 0), toArray())));
  of(1).pipe(map(() => { throw new Error("x"); }), catchError(e => of("caught " + e.message))).subscribe(v => console.log(v));
  const s = new Subject(); const seen = []; s.subscribe(v => seen.push(v)); s.next(1); s.next(2); s.complete(); console.log(seen);
})();
"""


def rxjs_case(work: Path) -> dict[str, Any]:
    """rxjs's TypeScript sources: instrumented, type-checked with its own ES5/CommonJS
    tsconfig, compiled and run."""

    def prepare(destination: Path) -> list[Path]:
        toolchains.copy_tree(toolchains.NODE_MODULES / "rxjs", destination)
        return [destination / "src"]

    prepare.paths = lambda root: [root / "src"]  # type: ignore[attr-defined]
    figures, pristine, inst = round_trip("rxjs", work, prepare, lambda copy: copy / "src")
    tsc = toolchains.tsc()
    check = toolchains.run([tsc, "--noEmit", "--incremental", "false", "-p", "src/tsconfig.cjs.json"], inst, timeout=600)
    figures["check_failures"] = [line for line in check.stdout.splitlines() if "error" in line][:5]
    outputs = []
    for folder in (pristine, inst):
        build = folder / "build"
        done = toolchains.run([tsc, "-p", "src/tsconfig.cjs.json", "--outDir", str(build), "--incremental", "false",
                               "--sourceMap", "false", "--removeComments", "false"], folder, timeout=600)
        if done.returncode != 0:
            outputs.append(None)
            continue
        if (folder / "src" / "telemetry_utils.cjs").exists():
            shutil.copy(folder / "src" / "telemetry_utils.cjs", build / "telemetry_utils.cjs")
        (folder / "usage.cjs").write_text(_dedent(RXJS_USAGE))
        report = work / f"rxjs-report-{folder.name}.json"
        ran = toolchains.run([toolchains.node(), "usage.cjs"], folder, env=toolchains.node_env(
            TELEMETRY_INJECT_REPORT=str(report)), timeout=300)
        rows = json.loads(report.read_text())["functions"] if report.exists() else []
        outputs.append((ran.returncode, ran.stdout, sum(1 for r in rows if r["count"])))
    figures["usage_same"] = None not in outputs and outputs[0][0] == outputs[1][0] == 0 and outputs[0][1] == outputs[1][1]
    figures["spans_reported"] = outputs[1][2] if outputs[1] else 0
    figures["toolchain"] = (f"tsc --noEmit (ES5, CommonJS, strict) {'ok' if check.returncode == 0 else 'FAILED'}; "
                            f"compiled run {'same output' if figures['usage_same'] else 'DIFFERS'}, "
                            f"{figures['spans_reported']} functions called")
    figures["ok"] = (check.returncode == 0 and figures["usage_same"] and figures["spans_reported"] > 0
                     and figures["strip_exact"] and figures["warm_same"] and not figures["errors"])
    return {"package": "npm rxjs (src/*.ts)", "language": "typescript", **figures}


# -- Go packages -----------------------------------------------------------------------------------

GO_PACKAGES = ("github.com/google/uuid", "github.com/pkg/errors", "github.com/cespare/xxhash",
               "github.com/google/go-cmp")


def go_case(import_path: str, work: Path) -> dict[str, Any]:
    """A Debian Go source tree in a GOPATH-like layout (its tests expect it), with a go.mod
    when it has none (module mode, offline: none of these has dependencies)."""
    name = import_path.rsplit("/", 1)[-1]

    def prepare(destination: Path) -> list[Path]:
        target = destination / "src" / import_path
        target.parent.mkdir(parents=True)
        toolchains.copy_tree(toolchains.go_source(import_path), target)
        if not (target / "go.mod").exists():
            (target / "go.mod").write_text(f"module {import_path}\n\ngo 1.13\n")
        return [target]

    prepare.paths = lambda root: [root / "src" / import_path]  # type: ignore[attr-defined]
    figures, pristine, inst = round_trip(name, work, prepare, lambda copy: copy / "src" / import_path)
    results = {}
    for label, folder in (("original", pristine), ("instrumented", inst)):
        module = folder / "src" / import_path
        env = toolchains.go_env()
        vet = toolchains.run([toolchains.go(), "vet", "./..."], module, env=env, timeout=600)
        build = toolchains.run([toolchains.go(), "build", "./..."], module, env=env, timeout=600)
        test = toolchains.run([toolchains.go(), "test", "-count=1", "./..."], module, env=env, timeout=900)
        passed = {line.split()[1] for line in test.stdout.splitlines() if line.startswith("ok ")}
        failed = {line.split()[1] for line in test.stdout.splitlines() if line.startswith("FAIL\t")}
        findings = {_vet_finding(line) for line in vet.stderr.splitlines() if ".go:" in line}
        results[label] = {"vet": findings, "build": build.returncode == 0, "passed": passed, "failed": failed,
                          "output": (test.stdout + test.stderr)[-1500:]}
    original, instrumented = results["original"], results["instrumented"]
    new_findings = sorted(instrumented["vet"] - original["vet"])
    lost = sorted(original["passed"] - instrumented["passed"])
    figures["check_failures"] = new_findings[:5] + [f"test no longer passes: {p}" for p in lost]
    if lost:
        figures["test_output"] = instrumented["output"]
    figures["toolchain"] = (f"go vet {'no new finding' if not new_findings else f'{len(new_findings)} NEW'}; "
                            f"go build {'ok' if instrumented['build'] else 'FAILED'}; go test "
                            f"{len(instrumented['passed'])}/{len(original['passed'])} packages pass")
    figures["ok"] = (not new_findings and instrumented["build"] and not lost and figures["strip_exact"]
                     and figures["warm_same"] and not figures["errors"] and original["passed"])
    return {"package": f"go {import_path}", "language": "go", **figures}


def _vet_finding(line: str) -> str:
    """A vet finding without its column (line numbers do not move)."""
    parts = line.split(":")
    return ":".join(parts[:2] + parts[3:]) if len(parts) > 3 else line


# -- Python, for comparison --------------------------------------------------------------------------

def python_case(work: Path, sample: int = 120) -> dict[str, Any]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py"))
    step = max(1, len(files) // sample)

    def prepare(destination: Path) -> list[Path]:
        destination.mkdir(parents=True)
        for path in files[::step]:
            shutil.copy2(path, destination / path.name)
        return [destination]

    prepare.paths = lambda root: [root]  # type: ignore[attr-defined]
    figures, _pristine, inst = round_trip("python-stdlib", work, prepare, lambda copy: copy)
    broken = []
    for path in sorted(inst.glob("*.py")):
        try:
            compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        except SyntaxError as exc:
            broken.append(f"{path.name}: {exc}")
    figures["check_failures"] = broken[:5]
    figures["toolchain"] = f"compile() {figures['files'] - len(broken)}/{figures['files']} ok"
    figures["ok"] = not broken and figures["strip_exact"] and figures["warm_same"] and not figures["errors"]
    return {"package": f"python stdlib sample ({len(files[::step])} modules)", "language": "python", **figures}


# -- the table ---------------------------------------------------------------------------------------

CASES = ["semver", "commander", "yargs", "date-fns", "rxjs", *GO_PACKAGES, "python"]


def warm_up() -> None:
    """Load every grammar and language module once, so the first case's cold figure is not
    the import of tree-sitter grammars."""
    from pytest_telemetry_inject.engine.pipeline import Engine

    engine = Engine(settings(None))
    for path, text in (("w.js", "function f(a) { return a + 1; }\n"), ("w.ts", "export function f(a: number) { return a + 1; }\n"),
                       ("w.tsx", "export const f = () => <b>{1}</b>;\n"), ("w.py", "def f(a):\n    return a + 1\n"),
                       ("w.go", "package w\n\nfunc F(a int) int {\n\tfor a < 3 {\n\t\ta++\n\t}\n\treturn a + 1\n}\n")):
        engine.instrument(text.encode(), path, import_name="w/t")


def run_cases(work: Path, only: list[str] | None = None, quick: bool = False) -> list[dict[str, Any]]:
    if toolchains.npm_package("typescript") is not None:
        # The TypeScript compiler the output checks use (toolcheck.typescript_module).
        import os

        os.environ.setdefault("TELEMETRY_INJECT_TYPESCRIPT", str(toolchains.NODE_MODULES / "typescript"))
    warm_up()
    rows = []
    for case in CASES:
        if only and not any(o in case for o in only):
            continue
        if case in ("rxjs", "python"):
            needs: tuple[str, ...] = ("node", "tsc", "npm:rxjs") if case == "rxjs" else ()
        elif case.startswith("github.com"):
            needs = ("go", f"go:{case}")
        else:
            needs = ("node", f"npm:{case}")
        reason = toolchains.skip_reason(*needs)
        if reason:
            rows.append({"package": case, "language": "", "unavailable": reason, "ok": False})
            continue
        started = time.perf_counter()
        if case == "rxjs":
            row = rxjs_case(work)
        elif case == "python":
            row = python_case(work)
        elif case.startswith("github.com"):
            row = go_case(case, work)
        else:
            row = npm_case(case, work, select=date_fns_commonjs if quick and case == "date-fns" else None)
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'package':<34} {'lang':<10} {'files':>5} {'instr':>6} {'skip':>5} {'cold ms/fn':>10} "
            f"{'of which checks':>15} {'warm ms/fn':>10}  {'strip':<5}  toolchain")
    lines = [head, "-" * len(head)]
    for row in rows:
        if "unavailable" in row:
            lines.append(f"{row['package']:<34} not run: {row['unavailable']}")
            continue
        lines.append(f"{row['package']:<34} {row['language']:<10} {row['files']:>5} {row['instrumented']:>6} "
                     f"{row['skipped']:>5} {row['cold_ms']:>10.3f} {row.get('check_ms', 0.0):>15.3f} "
                     f"{row['warm_ms']:>10.4f}  "
                     f"{'exact' if row['strip_exact'] else 'DIFF':<5}  {row['toolchain']}")
        for problem in row.get("check_failures") or ():
            lines.append(f"{'':<36}! {problem}")
        for error in row.get("errors") or ():
            lines.append(f"{'':<36}! {error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--only", help="comma-separated case names (substrings)")
    parser.add_argument("--quick", action="store_true", help="date-fns: only its CommonJS build (as the tests)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ti-realcode-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = run_cases(work, args.only.split(",") if args.only else None, args.quick)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2, default=sorted))
    else:
        print(format_table(rows))
    return 0 if all(row.get("ok") for row in rows if "unavailable" not in row) else 1


if __name__ == "__main__":
    sys.exit(main())
