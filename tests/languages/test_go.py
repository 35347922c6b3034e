"""Go: span names, the inserted defer and import, strip, and the real Go toolchain.

Instrumented packages pass ``go vet`` and ``go build``, their tests still pass, programs
print what they printed before, panics come out unchanged (same value, same stack lines),
recover() in user code still works, and no call allocates.
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest

from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.engine.runner import RunOptions, run
from pytest_telemetry_inject.errors import SourceSyntaxError
from pytest_telemetry_inject.languages import get_language
from pytest_telemetry_inject.languages.go_package import RUNTIME_FILE, TEST_MAIN_FILE, gopath_import_path
from pytest_telemetry_inject.settings import Settings
from pytest_telemetry_inject.testkit import import_path

toolchains = import_path(Path(__file__).resolve().parents[1] / "realcode" / "toolchains.py",
                         "telemetry_inject_realcode_toolchains")
GO = get_language("go")
IMPORT = "example.com/shapes/telemetryinject"


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def settings(**overrides) -> Settings:
    return Settings.load(None, env={}, overrides={"parallel": False, "use_cache": False, **overrides})


def records(text: str) -> dict[str, object]:
    return {r.qualname: r for r in GO.parse(text, "x.go", settings()).functions}


def instrument(text: str, import_name: str = IMPORT) -> str:
    result = Engine(settings()).instrument(text.encode(), "x.go", import_name=import_name)
    assert result.output is not None, (result.status, result.reason, list(result.functions))
    return result.output.decode()


SHAPES = src('''
    // Package shapes is a sample.
    package shapes

    import (
    	"errors"
    	"fmt"
    )

    // Square is a square.
    type Square struct{ side float64 }

    // List is a generic list.
    type List[T any] struct{ items []T }

    // Push appends.
    func (l *List[T]) Push(v T) {
    	l.items = append(l.items, v)
    	_ = len(l.items)
    }

    // Area of the square.
    func (s *Square) Area() float64 {
    	area := s.side * s.side
    	if area < 0 {
    		return 0
    	}
    	return area
    }

    // Perimeter of the square.
    func (s Square) Perimeter() float64 { total := 4 * s.side; if total < 0 { return 0 }; return total + 0 }

    // Side is tiny (inlined by the compiler).
    func (s Square) Side() float64 { return s.side }

    // Map maps.
    func Map[T any](xs []T, f func(T) T) []T {
    	out := make([]T, 0, len(xs))
    	for _, x := range xs {
    		out = append(out, f(x))
    	}
    	return out
    }

    var double = func(x int) int { y := x * 2; return y }

    // Risky recovers its own panic.
    func Risky(n int) (result int, err error) {
    	defer func() {
    		if r := recover(); r != nil {
    			err = fmt.Errorf("recovered: %v", r)
    		}
    	}()
    	if n < 0 {
    		panic("negative")
    	}
    	return n, nil
    }

    // Boom panics.
    func Boom() {
    	message := fmt.Sprintf("%s", "boom")
    	if message == "" {
    		return
    	}
    	panic(errors.New(message))
    }

    func init() {
    	_ = double(1)
    	func() { _ = 1 }()
    }

    //go:nosplit
    func fast() int { a := 1; b := 2; return a + b + 3 + 4 + 5 }

    func empty() {}

    // Sum is implemented in assembly.
    func Sum(b []byte) uint64

    func Skipped() int { // telemetry: skip
    	return 1
    }

    // Nested closures.
    func Nested() int {
    	f := func() int {
    		g := func() int { v := 1; return v }
    		return g()
    	}
    	return f()
    }
''')


def test_span_names_follow_go_function_names() -> None:
    found = records(SHAPES)
    assert set(found) == {
        "shapes.(*List[...]).Push", "shapes.(*Square).Area", "shapes.Square.Perimeter", "shapes.Square.Side",
        "shapes.Map[...]", "shapes.Map[...].func1", "shapes.glob..func1", "shapes.Risky", "shapes.Risky.func1",
        "shapes.Boom", "shapes.init.0", "shapes.init.0.func1", "shapes.fast", "shapes.empty", "shapes.Sum",
        "shapes.Skipped", "shapes.Nested", "shapes.Nested.func1", "shapes.Nested.func1.1",
    } - {"shapes.Map[...].func1"}  # a func type in a signature is no function
    reasons = {q: r.skip_reason for q, r in found.items() if r.skip_reason}
    tiny = "tiny body (the compiler likely inlines it; a deferred call would stop that)"
    assert reasons == {
        "shapes.Square.Side": tiny,
        # Function literals count toward the tiny-body rule like named functions.
        "shapes.glob..func1": tiny, "shapes.init.0.func1": tiny, "shapes.Nested.func1.1": tiny,
        "shapes.Square.Perimeter": "its first statement is on the line of its opening brace (an inserted line "
                                   "would split that line)",
        "shapes.fast": "a compiler directive that a deferred call could break (//go:nosplit)",
        "shapes.empty": "trivial body (empty)",
        "shapes.Sum": "no body (implemented elsewhere)",
        "shapes.Skipped": "opted out (// telemetry: skip)",
    }
    assert found["shapes.(*Square).Area"].is_method and not found["shapes.Map[...]"].is_method
    assert found["shapes.Nested.func1.1"].nested_in == "shapes.Nested.func1"


def test_init_functions_are_numbered_across_the_package(tmp_path: Path) -> None:
    """Go names the init functions of a package init.0, init.1, ... in the order it reads
    the files (by name, test files last): span names follow, file by file."""
    (tmp_path / "a.go").write_text("package p\n\nfunc init() {\n\tx := 1\n\t_ = x\n}\n\nfunc init() {}\n")
    (tmp_path / "b.go").write_text(
        "package p\n\nfunc init() {\n\tfor i := 0; i < 3; i++ {\n\t\t_ = i\n\t}\n\tgo func() {\n"
        "\t\tfor j := 0; j < 2; j++ {\n\t\t\t_ = j\n\t\t}\n\t}()\n}\n")
    (tmp_path / "b_windows.go").write_text("package p\n\nfunc init() {}\n")  # not built here
    (tmp_path / "c_test.go").write_text("package p\n\nfunc init() {\n\tfor i := 0; i < 2; i++ {\n\t\t_ = i\n\t}\n}\n")
    names = {name: sorted(r.qualname for r in GO.parse((tmp_path / name).read_text(), str(tmp_path / name),
                                                      settings()).functions)
             for name in ("a.go", "b.go", "c_test.go")}
    assert names == {"a.go": ["p.init.0", "p.init.1"], "b.go": ["p.init.2", "p.init.2.func1"],
                     "c_test.go": ["p.init.3"]}
    # The number enters the import name, hence the memo's key: b.go's result depends on a.go.
    (tmp_path / "go.mod").write_text("module example.com/p\n\ngo 1.18\n")
    assert GO.vendored_runtime(tmp_path / "b.go", tmp_path, settings()).import_name == \
        "init=2:example.com/p/telemetryinject"


def test_files_left_alone() -> None:
    generated = GO.parse("// Code generated by stringer. DO NOT EDIT.\n\npackage p\n\nfunc F() int { x := 1; return x }\n",
                         "x.go", settings())
    assert generated.file_skip_reason == "generated code (// Code generated ... DO NOT EDIT.)"
    from pytest_telemetry_inject.languages.go_package import runtime_source

    runtime = GO.parse(runtime_source().decode(), "telemetryinject.go", settings())
    assert runtime.file_skip_reason == "the vendored telemetry runtime"
    assert "supports only the vendored target" in GO.parse("package p\n", "x.go", settings(target="otel")).file_skip_reason
    clash_text = "package p\n\nvar _telemetry = 1\n\nfunc F() int {\n\tx := _telemetry\n\treturn x\n}\n"
    clash = GO.parse(clash_text, "x.go", settings())
    assert clash.file_skip_reason == "the file already uses a name this tool inserts (_telemetry)"
    assert GO.strip(clash_text).text == clash_text  # a name of the file's own: nothing to strip, no error
    # The name in a comment or a string is no clash.
    fine = GO.parse('package p\n\n// _telemetry is ours.\nvar s = "_telemetry"\n', "x.go", settings())
    assert fine.file_skip_reason is None


def test_the_inserted_lines_exactly() -> None:
    """The import and every statement on a line of its own, each followed by what gives the
    next line its original number; strip gives the file back byte for byte."""
    text = src('''
        package p

        import "fmt" // why

        // F sums.
        func F(n int) int {
        	x := 0
        	for i := 0; i < n; i++ {
        		x += i
        	}
        	return x
        }

        var _ = fmt.Sprint
    ''')
    out = instrument(text, import_name="m/t")
    assert out == src('''
        package p

        import "fmt" // why

        //line :1:1
        import _telemetry "m/t" /*line :3:1*/

        // F sums.
        func F(n int) int {
        	defer _telemetry.End(_telemetry.Start("p.F"))
        //line :7:1
        	x := 0
        	for i := 0; i < n; i++ {
        		x += i
        	}
        	return x
        }

        var _ = fmt.Sprint
    ''')
    assert GO.strip(out).text == text
    # A file without imports: a blank line first (gofmt wants one after the package clause).
    bare = "package p\n\nfunc G(n int) int {\n\tfor n > 10 {\n\t\tn -= 10\n\t\tn = n * 2 / 3\n\t}\n\treturn n + 1\n}\n"
    out = instrument(bare, import_name="m/t")
    assert out.startswith('package p\n\n//line :1:1\nimport _telemetry "m/t" /*line :1:1*/\n\nfunc G(n int) int {\n'
                          '\tdefer _telemetry.End(_telemetry.Start("p.G"))\n//line :4:1\n\tfor n > 10 {\n')
    assert GO.strip(out).text == bare


def test_round_trip_is_exact_and_idempotent() -> None:
    out = instrument(SHAPES)
    stripped = GO.strip(out)
    assert stripped.text == SHAPES and stripped.header_removed
    assert len(stripped.spans) == 9
    again = Engine(settings()).instrument(out.encode(), "x.go", import_name=IMPORT)
    assert again.output is None
    assert ('func (s *Square) Area() float64 {\n\tdefer _telemetry.End(_telemetry.Start("shapes.(*Square).Area"))\n'
            '//line :23:1\n\tarea := s.side * s.side\n') in out


OLD_FORM = src('''
    package p

    import (
    	"fmt"
    ); import _telemetry "example.com/m/telemetryinject"

    // F is.
    func F(n int) int { defer _telemetry.End(_telemetry.Start("p.F"));
    	x := n * 2
    	if x > 10 {
    		fmt.Println(x)
    	}
    	return x
    }
''')


def test_old_forms_strip_and_are_instrumented_anew() -> None:
    """Files written by the previous version (the statement after the brace, the import
    after the last import, on their lines), as written and after gofmt: strip takes them
    out, and a new run rewrites them in the current form."""
    original = OLD_FORM.replace('; import _telemetry "example.com/m/telemetryinject"', "").replace(
        ' defer _telemetry.End(_telemetry.Start("p.F"));', "")
    assert GO.strip(OLD_FORM).text == original
    found = {r.qualname: r for r in GO.parse(OLD_FORM, "x.go", settings()).functions}
    assert found["p.F"].stale  # in an old form: done anew
    out = instrument(OLD_FORM, import_name="example.com/m/telemetryinject")
    assert out == instrument(original, import_name="example.com/m/telemetryinject")
    assert "//line :9:1\n" in out and "); import" not in out
    toolchains.require("go")
    assert gofmt(OLD_FORM) != OLD_FORM  # gofmt moves the old form's texts to lines of their own
    assert GO.strip(gofmt(OLD_FORM)).text == gofmt(original)


def test_directives_out_of_date_are_renumbered() -> None:
    """A line added above instrumented functions makes their //line directives wrong: the
    next run writes them anew (and validation never lets a wrong one through)."""
    text = "package p\n\nfunc F(n int) int {\n\tfor n > 3 {\n\t\tn--\n\t\tn = n * 2 / 3\n\t}\n\treturn n + 1\n}\n"
    out = instrument(text, import_name="m/t")
    edited = "// Licence.\n" + out
    assert [r.stale for r in GO.parse(edited, "x.go", settings()).functions] == [True]
    again = instrument(edited, import_name="m/t")
    assert again == instrument("// Licence.\n" + text, import_name="m/t")
    assert '//line :1:1\nimport _telemetry "m/t" /*line :2:1*/\n' in again and "//line :5:1\n" in again
    assert not any(r.stale for r in GO.parse(again, "x.go", settings()).functions)


def test_strip_refuses_telemetry_it_does_not_recognise(tmp_path: Path) -> None:
    """Telemetry moved by hand (or by a tool) into a form strip does not know is not left
    behind silently: the file is an error, the command says where and exits non-zero."""
    import subprocess
    import sys

    text = ('package p\n\nimport (\n\t"fmt"\n)\n\nfunc F(n int) int {\n\tfor n > 3 {\n\t\tn--\n'
            '\t\tfmt.Println(n * 2 / 3)\n\t}\n\treturn n + 1\n}\n')
    out = instrument(text, import_name="m/t")
    # An editor merged the import into the import block (as goimports does with others).
    moved = out.replace('\n//line :1:1\nimport _telemetry "m/t" /*line :5:1*/\n', "").replace(
        '\t"fmt"\n', '\t"fmt"\n\n\t_telemetry "m/t"\n')
    assert moved != out
    with pytest.raises(SourceSyntaxError, match=r"cannot strip: telemetry at line 6 is not in a form this tool wrote"):
        GO.strip(moved)
    (tmp_path / "x.go").write_text(moved)
    done = subprocess.run([sys.executable, "-m", "pytest_telemetry_inject.cli", "--strip", "--in-place", "x.go"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "x.go: cannot strip: telemetry at line 6 is not in a form this tool wrote" in done.stderr
    assert (tmp_path / "x.go").read_text() == moved


def gofmt(text: str) -> str:
    import subprocess

    root = subprocess.run([toolchains.go(), "env", "GOROOT"], capture_output=True, text=True).stdout.strip()
    done = subprocess.run([str(Path(root) / "bin" / "gofmt")], input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_runtime_files_and_import_path(tmp_path: Path) -> None:
    module = tmp_path / "mod"
    (module / "pkg" / "inner").mkdir(parents=True)
    (module / "go.mod").write_text("module example.com/mod\n\ngo 1.18\n")
    (module / "pkg" / "inner" / "a.go").write_text("package inner\n")
    plan = GO.vendored_runtime(module / "pkg" / "inner" / "a.go", module, settings())
    # Not internal/: a program can import the runtime of any instrumented module (Close).
    assert plan.import_name == "example.com/mod/telemetryinject"
    assert [f[0] for f in plan.files] == [RUNTIME_FILE]
    # A scan root inside the module: the runtime goes under that root, the path follows.
    plan = GO.vendored_runtime(module / "pkg" / "inner" / "a.go", module / "pkg", settings())
    assert plan.import_name == "example.com/mod/pkg/telemetryinject"
    assert [f[0] for f in plan.files] == [RUNTIME_FILE]
    # A package with tests and no TestMain of its own gets one: go test then writes the report.
    (module / "pkg" / "inner" / "a_test.go").write_text("package inner_test\n")
    plan = GO.vendored_runtime(module / "pkg" / "inner" / "a.go", module, settings())
    assert [f[0] for f in plan.files] == [RUNTIME_FILE, Path("pkg/inner") / TEST_MAIN_FILE]
    test_main = plan.files[1][1].decode()
    assert test_main.startswith("// Code generated by pytest-telemetry-inject") and "package inner_test\n" in test_main
    assert '_telemetry "example.com/mod/telemetryinject"' in test_main and "_telemetry.Close()" in test_main
    (module / "pkg" / "inner" / "main_test.go").write_text("package inner\n\nfunc TestMain(m *testing.M) {}\n")
    assert len(GO.vendored_runtime(module / "pkg" / "inner" / "a.go", module, settings()).files) == 1
    gopath = tmp_path / "gopath" / "src" / "github.com" / "x" / "y"
    gopath.mkdir(parents=True)
    assert gopath_import_path(gopath) == "github.com/x/y"
    plan = GO.vendored_runtime(gopath / "a.go", gopath, settings())
    assert plan.import_name == "github.com/x/y/telemetryinject"


def test_no_module_path_is_an_error_not_a_broken_file(tmp_path: Path) -> None:
    (tmp_path / "a.go").write_text("package a\n\nfunc F() int {\n\tx := 1\n\tfor i := 0; i < 3; i++ {\n\t\tx += i\n\t}\n\treturn x\n}\n")
    summary = run([str(tmp_path)], settings(), RunOptions(output_dir=tmp_path / "out"), project_root=tmp_path)
    report = next(r for r in summary.files if r.path.endswith("a.go"))
    assert report.status == "error" and "cannot name the runtime package" in report.reason


# -- the real toolchain ----------------------------------------------------------------------------

MAIN = src('''
    package main

    import (
    	"errors"
    	"fmt"
    	"os"
    	"strings"

    	"example.com/shapes/shapes"
    )

    func describe(words []string) string {
    	joined := strings.Join(words, " ")
    	return strings.ToUpper(joined)
    }

    func mayFail(n int) (int, error) {
    	if n > 2 {
    		return 0, errors.New("too big")
    	}
    	return n * 10, nil
    }

    func main() {
    	s := &shapes.Square{}
    	l := &shapes.List[int]{}
    	l.Push(1)
    	fmt.Println(s.Area(), s.Perimeter(), shapes.Map([]int{1, 2}, func(x int) int { y := x + 1; return y }))
    	fmt.Println(shapes.Risky(1))
    	fmt.Println(shapes.Risky(-1))
    	fmt.Println(describe([]string{"a", "b"}), shapes.Nested())
    	for i := 0; i < 4; i++ {
    		v, err := mayFail(i)
    		fmt.Println(v, err)
    	}
    	if len(os.Args) > 1 && os.Args[1] == "boom" {
    		shapes.Boom()
    	}
    }
''')

SHAPES_TEST = src('''
    package shapes

    import "testing"

    func TestArea(t *testing.T) {
    	s := &Square{side: 3}
    	if got := s.Area(); got != 9 {
    		t.Fatalf("area %v", got)
    	}
    }

    func TestNoAllocation(t *testing.T) {
    	s := &Square{side: 2}
    	allocs := testing.AllocsPerRun(100, func() { _ = s.Area(); _ = s.Perimeter() })
    	if allocs != 0 {
    		t.Fatalf("%v allocations per call", allocs)
    	}
    }

    func TestParallelSubtests(t *testing.T) {
    	for _, n := range []int{1, 2, 3} {
    		n := n
    		t.Run("n", func(t *testing.T) {
    			t.Parallel()
    			if v, err := Risky(n); err != nil || v != n {
    				t.Fatal(v, err)
    			}
    		})
    	}
    }
''')


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    toolchains.require("go")
    root = tmp_path_factory.mktemp("go")
    project = root / "project"
    (project / "shapes").mkdir(parents=True)
    (project / "go.mod").write_text("module example.com/shapes\n\ngo 1.18\n")
    (project / "shapes" / "shapes.go").write_text(SHAPES.replace("\n// Sum is implemented in assembly.\nfunc Sum(b []byte) uint64\n", "\n"))
    (project / "shapes" / "shapes_test.go").write_text(SHAPES_TEST)
    (project / "main.go").write_text(MAIN)
    out = root / "out"
    summary = run([str(project)], settings(), RunOptions(output_dir=out), project_root=project)
    assert sorted(Path(p).relative_to(out) for p in summary.vendored) == [Path("shapes") / TEST_MAIN_FILE, RUNTIME_FILE]
    assert all(r.status == "instrumented" for r in summary.files), [(r.path, r.reason) for r in summary.files]
    return project, out


def go(args: list[str], cwd: Path, **env: str):
    return toolchains.run([toolchains.go(), *args], cwd, env=toolchains.go_env(**env), timeout=300)


def test_vet_build_and_tests_pass(module: tuple[Path, Path], tmp_path: Path) -> None:
    _project, out = module
    vet = go(["vet", "./..."], out)
    assert vet.returncode == 0, vet.stderr
    report = tmp_path / "report-{pid}.json"
    tests = go(["test", "-count=1", "./..."], out, TELEMETRY_INJECT_REPORT=str(report))
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "ok  \texample.com/shapes/shapes" in tests.stdout
    # go test writes the report (the TestMain this tool wrote for the package ends with Close).
    reports = list(tmp_path.glob("report-*.json"))
    assert len(reports) == 1, reports
    rows = {row["name"]: row["count"] for row in json.loads(reports[0].read_text())["functions"]}
    assert rows["shapes.TestArea"] == 1 and rows["shapes.Risky"] == 3 and rows["shapes.(*Square).Area"] >= 101


def test_program_output_panics_and_telemetry(module: tuple[Path, Path], tmp_path: Path) -> None:
    project, out = module
    binaries = {}
    for name, folder in (("original", project), ("instrumented", out)):
        binary = tmp_path / name
        built = go(["build", "-o", str(binary), "."], folder)
        assert built.returncode == 0, built.stderr
        binaries[name] = binary
    plain = toolchains.run([binaries["original"]], tmp_path)
    events, trace, report = tmp_path / "events.jsonl", tmp_path / "trace.json", tmp_path / "report.json"
    env = dict(toolchains.go_env(), TELEMETRY_INJECT_JSONL=str(events), TELEMETRY_INJECT_TRACE=str(trace),
               TELEMETRY_INJECT_REPORT=str(report))
    traced = toolchains.run([binaries["instrumented"]], tmp_path, env=env)
    assert plain.returncode == traced.returncode == 0, traced.stderr
    assert traced.stdout == plain.stdout
    rows = {row["name"]: row for row in json.loads(report.read_text())["functions"]}
    assert rows["main.mayFail"]["count"] == 4
    # The library package's calls are in the program's report.
    assert rows["shapes.Risky"]["count"] == 2 and rows["shapes.Risky.func1"]["count"] == 2
    assert rows["main.main"]["count"] == 1 and rows["shapes.init.0"]["count"] == 1
    assert rows["shapes.Nested.func1"]["count"] == 1
    assert "shapes.Square.Side" not in rows and "main.main.func1" not in rows  # tiny: left alone
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert sum(1 for e in lines if e["name"] == "main.mayFail") == 4
    assert {e["name"] for e in lines} == {name for name, row in rows.items() if row["count"]}
    assert len([e for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"]) == len(lines)

    # A panic goes through unchanged: same value, same exit status, same stack, to the line.
    crashed = {name: toolchains.run([binary, "boom"], tmp_path) for name, binary in binaries.items()}
    assert crashed["original"].returncode == crashed["instrumented"].returncode == 2

    def frames(text: str) -> list[str]:
        return [re.sub(r" \+0x[0-9a-f]+$", "", line.strip()).rsplit("/", 1)[-1] for line in text.splitlines()
                if ".go:" in line and "telemetryinject" not in line]

    assert crashed["instrumented"].stderr.splitlines()[0] == crashed["original"].stderr.splitlines()[0] == \
        "panic: boom"
    assert frames(crashed["instrumented"].stderr) == frames(crashed["original"].stderr)
    assert any(f.startswith("shapes.go:") for f in frames(crashed["original"].stderr))
    counted = toolchains.run([binaries["instrumented"], "boom"], tmp_path, env=dict(
        toolchains.go_env(), TELEMETRY_INJECT_PANICS="1", TELEMETRY_INJECT_JSONL=str(tmp_path / "p.jsonl")))
    assert counted.returncode == 2
    panics = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines() if "exception" in line]
    # Risky's own recovered panic is a panic of its deferred func's caller... Risky returns
    # normally; Boom (and main, which it panics through) end in a panic.
    assert {e["name"] for e in panics} >= {"shapes.Boom", "main.main"}
    assert "shapes.Risky" not in {e["name"] for e in panics}


def test_strip_gives_back_the_sources(module: tuple[Path, Path], tmp_path: Path) -> None:
    project, out = module
    back = tmp_path / "back"
    run([str(out)], settings(), RunOptions(mode="strip", output_dir=back), project_root=out)
    for name in ("main.go", "shapes/shapes.go", "shapes/shapes_test.go"):
        assert (back / name).read_bytes() == (project / name).read_bytes()


GEO = src(r"""
    // Copyright 2024 The Authors.

    // Package geo measures shapes.
    package geo

    import (
    	"errors"
    	"fmt" // formatting
    	"sort"
    )

    // ErrNegative is returned for negative sizes.
    var ErrNegative = errors.New("negative")

    // Area is the area of a w by h rectangle.
    //
    //go:noinline
    func Area(w, h float64) (float64, error) {
    	// Sizes are checked first.
    	if w < 0 || h < 0 {
    		return 0, ErrNegative
    	}
    	return w * h, nil
    }

    // Find returns the index of x in the sorted xs.
    func Find(xs []int, x int) int {
    	i := sort.Search(len(xs), func(i int) bool { return xs[i] >= x })
    	if i < len(xs) && xs[i] == x {
    		return i
    	}
    	return -1
    }

    // Walk visits a grid.
    func Walk(n int) (visited int) {
    	// the outer loop
    outer:
    	for i := 0; i < n; i++ {
    		for j := 0; j < n; j++ {
    			if j > i {
    				continue outer
    			}
    			visited++
    		}
    	}
    	return visited
    }

    // Describe says what v is.
    func Describe(v interface{}) string {

    	switch x := v.(type) {
    	case int:
    		return fmt.Sprintf("int %d", x)
    	default:
    		return fmt.Sprint(x)
    	}
    }

    // Explode fails on its fifth line.
    func Explode(m map[string]int) int {
    	total := 0
    	for k, v := range m {
    		total += len(k) * v
    	}
    	return total / len(m)
    }
""")

GEO_BARE = src("""
    package geo

    // Half halves.
    func Half(n int) int {
    	steps := 0
    	for n > 100 {
    		n = n / 2
    		steps++
    	}
    	return n/2 + steps
    }
""")

GEO_TEST = src("""
    package geo

    import "testing"

    func TestFind(t *testing.T) {
    	if Find([]int{1, 3, 5}, 3) != 1 {
    		t.Fatal("find")
    	}
    }

    func TestWalkFails(t *testing.T) {
    	for i := 0; i < 2; i++ {
    		_ = Walk(i)
    	}
    	t.Errorf("walked %d", Walk(3))
    }
""")

GEO_MAIN = src("""
    package main

    import (
    	"fmt"
    	"os"

    	"example.com/geo"
    )

    func main() {
    	fmt.Println(geo.Find([]int{1, 2, 3}, 2), geo.Walk(4), geo.Describe(3), geo.Half(1000))
    	if len(os.Args) > 1 {
    		fmt.Println(geo.Explode(map[string]int{}))
    	}
    }
""")


@pytest.fixture(scope="module")
def geo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A gofmt-clean module: a library package with tests (no TestMain), a file without
    imports, and a program with a short main."""
    toolchains.require("go")
    root = tmp_path_factory.mktemp("geo")
    project = root / "project"
    (project / "cmd" / "geo").mkdir(parents=True)
    (project / "go.mod").write_text("module example.com/geo\n\ngo 1.18\n")
    for name, text in (("geo.go", GEO), ("half.go", GEO_BARE), ("geo_test.go", GEO_TEST),
                       ("cmd/geo/main.go", GEO_MAIN)):
        (project / name).write_text(text)
        assert gofmt(text) == text, name
    out = root / "out"
    summary = run([str(project)], settings(), RunOptions(output_dir=out), project_root=project)
    assert all(r.status == "instrumented" for r in summary.files), [(r.path, r.status, r.reason) for r in summary.files]
    return project, out


def test_output_is_gofmt_clean_and_strips_exactly_after_gofmt(geo: tuple[Path, Path], tmp_path: Path) -> None:
    project, out = geo
    done = toolchains.run([Path(toolchains.go()).resolve().parent / "gofmt", "-l", "."], out)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr
    formatted = tmp_path / "formatted"
    shutil.copytree(out, formatted)
    done = toolchains.run([Path(toolchains.go()).resolve().parent / "gofmt", "-w", "."], formatted)
    assert done.returncode == 0, done.stderr
    back = tmp_path / "back"
    summary = run([str(formatted)], settings(), RunOptions(mode="strip", output_dir=back), project_root=formatted)
    assert all(r.status == "stripped" for r in summary.files if r.language == "go" and "telemetry" not in r.path)
    for name in ("geo.go", "half.go", "geo_test.go", "cmd/geo/main.go"):
        assert (back / name).read_bytes() == (project / name).read_bytes(), name
    instrumented = (out / "geo.go").read_text()
    assert "Find.func1" not in instrumented  # the literal passed to sort.Search is tiny: left alone
    assert 'defer _telemetry.End(_telemetry.Start("main.main"))' in (out / "cmd/geo/main.go").read_text()


def test_positions_are_the_original_lines(geo: tuple[Path, Path], tmp_path: Path) -> None:
    """Panics, go test failures and go vet findings name the lines of the original file."""
    project, out = geo
    results = {}
    for label, folder in (("original", project), ("instrumented", out)):
        (folder / "vet_me.go").write_text(src("""
            package geo

            import "fmt"

            // Bad formats an int as a string.
            func Bad(n int) string {
            	for n > 10 {
            		n--
            	}
            	return fmt.Sprintf("%s", n)
            }
        """))
        run([str(folder / "vet_me.go")], settings(), RunOptions(in_place=True), project_root=folder)
        vet = go(["vet", "."], folder)
        (folder / "vet_me.go").unlink()
        tests = go(["test", "-count=1", "-run", "TestWalkFails", "."], folder)
        built = go(["build", "-o", str(tmp_path / label), "./cmd/geo"], folder)
        assert built.returncode == 0, built.stderr
        crash = toolchains.run([tmp_path / label, "boom"], tmp_path)
        results[label] = (vet.stderr, tests.stdout, crash.stderr)
    original, instrumented = results["original"], results["instrumented"]
    assert "vet_me.go:10:" in original[0] and "Sprintf format %s has arg n of wrong type int" in original[0]
    assert re.findall(r"vet_me\.go:\d+", instrumented[0]) == re.findall(r"vet_me\.go:\d+", original[0])
    assert "geo_test.go:15: walked 6" in original[1] and "geo_test.go:15: walked 6" in instrumented[1]
    assert "integer divide by zero" in original[2]
    lines = lambda text: re.findall(r"\w+\.go:\d+", text)  # noqa: E731
    assert lines(instrumented[2])[:3] == lines(original[2])[:3] and "geo.go:67" in original[2]


def test_go_test_report_is_complete(geo: tuple[Path, Path], tmp_path: Path) -> None:
    """go test writes the report and the JSONL file (the last partial batch too), with the
    library's calls; a short main.main writes the program's."""
    _project, out = geo
    events = tmp_path / "events.jsonl"
    (out / "many_test.go").write_text(src("""
        package geo

        import "testing"

        func TestMany(t *testing.T) {
        	for i := 0; i < 10000; i++ {
        		_ = Describe(i)
        	}
        }
    """))
    try:
        done = go(["test", "-count=1", "-run", "TestMany|TestFind", "."], out, TELEMETRY_INJECT_JSONL=str(events),
                  TELEMETRY_INJECT_REPORT=str(tmp_path / "report.json"))
    finally:
        (out / "many_test.go").unlink()
    assert done.returncode == 0, done.stdout + done.stderr
    names = [json.loads(line)["name"] for line in events.read_text().splitlines()]
    assert names.count("geo.Describe") == 10000 and names.count("geo.Find") == 1  # not 2 x 4096
    rows = {r["name"]: r["count"] for r in json.loads((tmp_path / "report.json").read_text())["functions"]}
    assert rows["geo.Describe"] == 10000 and rows["geo.TestFind"] == 1
    program = tmp_path / "geo"
    assert go(["build", "-o", str(program), "./cmd/geo"], out).returncode == 0
    ran = toolchains.run([program], tmp_path, env=dict(toolchains.go_env(), TELEMETRY_INJECT_REPORT="1"))
    assert ran.returncode == 0, ran.stderr
    assert "main.main" in ran.stderr and "geo.Walk" in ran.stderr and "geo.Half" in ran.stderr


LIB = src("""
    package calc

    // Sum adds.
    func Sum(xs []int) int {
    	total := 0
    	for _, x := range xs {
    		total += x
    	}
    	return total
    }
""")


def test_a_librarys_telemetry_reaches_a_programs_report(tmp_path: Path) -> None:
    """A library and a program in modules of their own, each instrumented (each with its
    runtime): the program's report has the library's calls, and a program that is not
    instrumented can import the library's runtime to write it."""
    toolchains.require("go")
    lib, prog, plain = tmp_path / "lib", tmp_path / "prog", tmp_path / "plain"
    (lib / "calc").mkdir(parents=True)
    (lib / "go.mod").write_text("module example.com/lib\n\ngo 1.18\n")
    (lib / "calc" / "calc.go").write_text(LIB)
    for folder, main in ((prog, "func main() { fmt.Println(calc.Sum([]int{1, 2})) }\n"),
                         (plain, "func main() {\n\tfmt.Println(calc.Sum([]int{1, 2}))\n\ttelemetryinject.Close()\n}\n")):
        folder.mkdir()
        (folder / "go.mod").write_text(f"module example.com/{folder.name}\n\ngo 1.18\n\nrequire example.com/lib v0.0.0\n\n"
                                       "replace example.com/lib => ../lib\n")
        extra = '\n\t"example.com/lib/telemetryinject"' if folder == plain else ""
        (folder / "main.go").write_text(f'package main\n\nimport (\n\t"fmt"\n\n\t"example.com/lib/calc"{extra}\n)\n\n' + main)
    for folder in (lib, prog):
        summary = run([str(folder)], settings(), RunOptions(in_place=True), project_root=folder)
        assert all(r.status == "instrumented" for r in summary.files), [(r.path, r.reason) for r in summary.files]
    # A one-line main.main takes the deferred call on its line (gofmt keeps it whole).
    assert 'func main() { defer _telemetry.End(_telemetry.Start("main.main")); fmt.Println(' in \
        (prog / "main.go").read_text()
    for folder in (prog, plain):
        ran = go(["run", "."], folder, TELEMETRY_INJECT_REPORT=str(tmp_path / f"{folder.name}.json"))
        assert ran.returncode == 0 and ran.stdout == "3\n", ran.stderr
        rows = {r["name"]: r["count"] for r in json.loads((tmp_path / f"{folder.name}.json").read_text())["functions"]}
        assert rows == ({"main.main": 1, "calc.Sum": 1} if folder == prog else {"calc.Sum": 1}), rows


def test_toolchain_rejects_what_the_grammar_lets_through(tmp_path: Path) -> None:
    """A package-level name _telemetry in another file of the package: each file parses,
    but the package does not compile; the file is left unchanged, with the compiler's reason."""
    toolchains.require("go")
    (tmp_path / "go.mod").write_text("module example.com/clash\n\ngo 1.18\n")
    (tmp_path / "names.go").write_text("package clash\n\nvar _telemetry = 1\n")
    (tmp_path / "work.go").write_text(GEO_BARE.replace("package geo", "package clash"))
    summary = run([str(tmp_path / "work.go")], settings(), RunOptions(output_dir=tmp_path / "out"), project_root=tmp_path)
    report = summary.files[0]
    assert report.status == "error", (report.status, report.reason)
    assert "go: names.go:3: _telemetry already declared through import" in report.reason, report.reason
    assert "left unchanged" in report.reason
    assert (tmp_path / "out" / "work.go").read_text() == (tmp_path / "work.go").read_text()


def test_init_span_names_are_the_names_go_gives(tmp_path: Path) -> None:
    """Two files with init functions (and one in a test file): the spans are named as
    runtime.FuncForPC names the functions, init.0, init.1, init.2."""
    toolchains.require("go")
    (tmp_path / "go.mod").write_text("module example.com/inits\n\ngo 1.18\n")
    (tmp_path / "names.go").write_text(src('''
        package main

        import (
        	"fmt"
        	"runtime"
        	"strings"
        )

        var seen []string

        func record() {
        	pc, _, _, _ := runtime.Caller(1)
        	name := runtime.FuncForPC(pc).Name()
        	seen = append(seen, strings.TrimPrefix(name, "main."))
        }

        func init() {
        	for i := 0; i < 1; i++ {
        		record()
        	}
        }

        func main() {
        	fmt.Println(strings.Join(seen, " "))
        }
    '''))
    (tmp_path / "other.go").write_text(src('''
        package main

        func init() {
        	for i := 0; i < 1; i++ {
        		record()
        	}
        }

        func init() {
        	for i := 0; i < 1; i++ {
        		record()
        	}
        }
    '''))
    run([str(tmp_path)], settings(), RunOptions(in_place=True), project_root=tmp_path)
    report = tmp_path / "report.json"
    done = go(["run", "."], tmp_path, TELEMETRY_INJECT_REPORT=str(report))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["init.0", "init.1", "init.2"]
    rows = {r["name"] for r in json.loads(report.read_text())["functions"]}
    assert {"main.init.0", "main.init.1", "main.init.2", "main.main"} <= rows
