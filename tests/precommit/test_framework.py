"""The hook under the real pre-commit framework: `git commit` runs pre-commit, which runs
`telemetry-inject-hook` on the staged files (after stashing unstaged edits)."""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DECORATOR = re.compile(rb'^\s*@_telemetry\.instrument\("([^"]+)"\)\r?$', re.M)


def spans(data: bytes) -> list[str]:
    return [m.decode() for m in DECORATOR.findall(data)]


def many_functions(count: int) -> str:
    return "".join(f"\n\ndef f{i}(x):\n    y = x + {i}\n    return y * 2\n" for i in range(count)).lstrip("\n")


def added_and_removed(before: bytes, after: bytes) -> tuple[list[str], list[str]]:
    old, new = before.decode().splitlines(), after.decode().splitlines()
    diff = [line for line in difflib.ndiff(old, new) if line[:2] in ("+ ", "- ")]
    return [d[2:] for d in diff if d.startswith("+")], [d[2:] for d in diff if d.startswith("-")]


def test_first_commit_instruments_new_functions_then_passes_and_strips_back(pc_repo) -> None:
    repo = pc_repo
    source = textwrap.dedent('''\
        """A module."""
        import math


        def area(r):
            return math.pi * r * r


        async def fetch(x):
            return x


        class Shape:
            def grow(self, k):
                return k * 2

            def trivial(self):
                pass
    ''')
    repo.write("pkg/__init__.py", "")
    repo.write("pkg/geo.py", source)
    repo.write("pkg/geo.pyi", "def area(r: float) -> float: ...\n")
    repo.git("add", "-A")
    done = repo.commit("first")
    out = repo.text(done)
    assert done.returncode != 0, out
    assert repo.head_id() == "", "the commit is blocked until the changes are added"
    assert "Instrumented pkg/geo.py: 3 functions" in out
    assert "files were modified by this hook" in out
    assert "Wrote the vendored telemetry module pkg/telemetry_utils.py" in out
    geo = repo.read("pkg/geo.py")
    assert spans(geo) == ["area", "fetch", "Shape.grow"]
    assert b"from pkg import telemetry_utils as _telemetry_runtime" in geo
    assert repo.read("pkg/geo.pyi") == b"def area(r: float) -> float: ...\n", "stubs are left alone"
    assert repo.staged("pkg/geo.py") == source.encode(), "the hook stages nothing itself"
    assert repo.read("pkg/__init__.py") == b""

    # Added as the hook asked: the commit passes, and a second run changes nothing.
    repo.git("add", "-A")
    done = repo.commit("first")
    assert done.returncode == 0, repo.text(done)
    assert repo.head("pkg/geo.py") == geo
    assert repo.head("pkg/telemetry_utils.py").startswith(b"# telemetry-inject: vendored runtime")
    again = repo.pre_commit("run", "--all-files")
    assert again.returncode == 0, repo.text(again)
    assert repo.status() == ""

    # The committed code runs with its spans, on nothing but the standard library.
    run = repo.run(sys.executable, "-I", "-c",
                   "import sys; sys.path.insert(0, ''); import json, pkg.geo as g; g.area(1.0); g.Shape().grow(2); "
                   "assert 'pytest_telemetry_inject' not in sys.modules; "
                   "print(json.dumps(sorted(s['name'] for s in g._telemetry_runtime.snapshot() if s['count'])))",
                   check=False)
    assert run.returncode == 0, repo.text(run)
    assert json.loads(run.stdout) == ["Shape.grow", "area"]

    # --strip gives back the bytes from before the hook, and removes the vendored module.
    stripped = repo.cli("--strip", "--in-place", "pkg")
    assert stripped.returncode == 0, repo.text(stripped)
    assert repo.read("pkg/geo.py") == source.encode()
    assert not (repo.root / "pkg" / "telemetry_utils.py").exists()


def test_only_the_changed_function_gets_telemetry(pc_repo) -> None:
    repo = pc_repo
    original = many_functions(30)
    repo.write("mod.py", original)
    repo.git("add", "-A")
    repo.commit("plain code", "--no-verify")
    changed = original.replace("y = x + 17\n", "y = x + 1700\n")
    repo.write("mod.py", changed)
    repo.git("add", "mod.py")
    done = repo.commit("change f17")
    out = repo.text(done)
    assert done.returncode != 0
    assert "Instrumented mod.py: 1 function" in out
    after = repo.read("mod.py")
    assert spans(after) == ["f17"]
    added, removed = added_and_removed(changed.encode(), after)
    assert removed == [], "nothing the commit did not touch is modified"
    assert added == ["import telemetry_utils as _telemetry_runtime",
                     "_telemetry = _telemetry_runtime.tracer(__name__)",
                     '@_telemetry.instrument("f17")']
    # Every other function is byte-identical.
    for i in (0, 16, 18, 29):
        block = f"def f{i}(x):\n    y = x + {i}\n    return y * 2\n".encode()
        assert block in after and f'instrument("f{i}")'.encode() not in after


def test_a_file_that_does_not_parse_blocks_the_commit_untouched(pc_repo) -> None:
    repo = pc_repo
    broken = b"def ok(x):\n    return x\n\n\ndef broken(:\n    return 1\n"
    repo.write("broken.py", broken)
    repo.write("fine.py", "def fine(x):\n    return x + 1\n")
    repo.git("add", "-A")
    done = repo.commit("broken")
    out = repo.text(done)
    assert done.returncode != 0
    assert repo.head_id() == ""
    assert repo.read("broken.py") == broken
    errors = [line for line in out.splitlines() if "error" in line]
    assert len(errors) == 1, out
    assert "broken.py: does not parse (line 5" in errors[0] and "left unchanged" in errors[0]
    assert spans(repo.read("fine.py")) == ["fine"], "the other files are still processed"


def test_partially_staged_file_keeps_its_unstaged_edits(pc_repo) -> None:
    repo = pc_repo
    original = many_functions(12)
    repo.write("mod.py", original)
    repo.git("add", "-A")
    repo.commit("plain code", "--no-verify")
    staged = original.replace("y = x + 2\n", "y = x + 200\n")
    repo.write("mod.py", staged)
    repo.git("add", "mod.py")
    worktree = staged.replace("y = x + 10\n", "y = x + 1000  # not staged\n")
    repo.write("mod.py", worktree)

    done = repo.commit("change f2")
    out = repo.text(done)
    assert done.returncode != 0
    assert "Instrumented mod.py: 1 function" in out
    after = repo.read("mod.py")
    assert b"y = x + 1000  # not staged\n" in after, "the unstaged edit survives"
    assert spans(after) == ["f2"], "the staged change is instrumented; the unstaged one is not"
    assert repo.staged("mod.py") == staged.encode(), "the index is as the user left it"
    added, removed = added_and_removed(worktree.encode(), after)
    assert removed == [] and added[-1] == '@_telemetry.instrument("f2")'


def test_partially_staged_edit_next_to_the_fix_still_survives(pc_repo) -> None:
    """When the unstaged edits collide with the hook's change, pre-commit rolls the fix
    back; the unstaged edits survive either way."""
    repo = pc_repo
    repo.write("mod.py", "import os\n\n\ndef f(x):\n    return x\n")
    repo.git("add", "-A")
    repo.commit("plain code", "--no-verify")
    staged = "import os\n\n\ndef f(x):\n    return x + 1\n"
    repo.write("mod.py", staged)
    repo.git("add", "mod.py")
    worktree = "import os\n# unstaged comment\n\ndef f(x):\n    return x + 1\n"
    repo.write("mod.py", worktree)
    done = repo.commit("change f")
    assert done.returncode != 0
    after = repo.read("mod.py")
    assert b"# unstaged comment\n" in after
    assert repo.staged("mod.py") == staged.encode()
    compile(after, "mod.py", "exec")


def test_crlf_bom_and_mode_are_kept_and_strip_restores_the_bytes(pc_repo) -> None:
    repo = pc_repo
    source = ("\ufeff# -*- coding: utf-8 -*-\r\ndef héllo(name):\r\n    return f'hi {name}'\r\n\r\n\r\n"
              "def two():\r\n    return 2\r\n")
    path = repo.write("crlf.py", source.encode("utf-8"))
    path.chmod(0o755)
    repo.git("add", "-A")
    done = repo.commit("crlf")
    assert done.returncode != 0
    assert "Instrumented crlf.py: 2 functions" in repo.text(done)
    after = repo.read("crlf.py")
    assert after.startswith(b"\xef\xbb\xbf")
    assert after.count(b"\n") == after.count(b"\r\n"), "every line ending is CRLF"
    assert b'@_telemetry.instrument("h\xc3\xa9llo")\r\n' in after
    assert path.stat().st_mode & 0o777 == 0o755
    stripped = repo.cli("--strip", "--in-place", "crlf.py", "telemetry_utils.py")
    assert stripped.returncode == 0, repo.text(stripped)
    assert repo.read("crlf.py") == source.encode("utf-8")


def test_renamed_functions_get_their_span_names_updated(pc_repo) -> None:
    repo = pc_repo
    baseline = textwrap.dedent('''\
        import telemetry_utils as _telemetry_runtime
        _telemetry = _telemetry_runtime.tracer(__name__)


        class Old:
            @_telemetry.instrument("Old.method")
            def method(self):
                return 1


        @_telemetry.instrument("before")
        def before(x):
            return x


        def short(x):
            return x + 1


        def untouched(x):
            return x + 2
    ''')
    repo.write("mod.py", baseline)
    repo.git("add", "-A")
    assert repo.commit("baseline", "--no-verify").returncode == 0
    # Rename a class (its method's lines do not change) and a function, and change a
    # two-line function below them: the spans taken off the renamed ones move it up two
    # lines while the engine works, which must not change what is selected.
    renamed = (baseline.replace("class Old:", "class New:").replace("def before(x):", "def after(x):")
               .replace("return x + 1\n", "return x + 100\n"))
    repo.write("mod.py", renamed)
    repo.git("add", "mod.py")
    done = repo.commit("rename")
    out = repo.text(done)
    assert done.returncode != 0, out
    assert "Instrumented mod.py: 3 functions" in out
    after = repo.read("mod.py")
    assert spans(after) == ["New.method", "after", "short"], after.decode()
    added, removed = added_and_removed(renamed.encode(), after)
    assert sorted(removed) == ['    @_telemetry.instrument("Old.method")', '@_telemetry.instrument("before")']
    assert sorted(added) == ['    @_telemetry.instrument("New.method")', '@_telemetry.instrument("after")',
                             '@_telemetry.instrument("short")']


def test_check_hook_changes_nothing_and_fails_until_instrumented(pc_repo) -> None:
    repo = pc_repo
    repo.write("mod.py", many_functions(3))
    repo.git("add", "-A")
    before = repo.read("mod.py")
    done = repo.pre_commit("run", "telemetry-inject-check", "--hook-stage", "manual")
    assert done.returncode != 0
    assert "Would instrument mod.py: 3 functions" in repo.text(done)
    assert repo.read("mod.py") == before and not (repo.root / "telemetry_utils.py").exists()
    assert repo.pre_commit("run").returncode != 0  # the fixing hook
    repo.git("add", "-A")
    done = repo.pre_commit("run", "telemetry-inject-check", "--hook-stage", "manual")
    assert done.returncode == 0, repo.text(done)


def test_vendored_module_must_be_in_the_commit(pc_repo) -> None:
    repo = pc_repo
    repo.write("mod.py", "def f(x):\n    return x\n")
    repo.git("add", "-A")
    assert repo.commit("first").returncode != 0
    repo.git("add", "mod.py")  # but not telemetry_utils.py
    done = repo.commit("first")
    assert done.returncode != 0
    assert "telemetry_utils.py is not staged: git add telemetry_utils.py" in repo.text(done)
    repo.git("add", "telemetry_utils.py")
    assert repo.commit("first").returncode == 0


@pytest.mark.slow
def test_try_repo_installs_the_hook_from_a_copy_of_this_project(pc_repo, tmp_path) -> None:
    """`pre-commit try-repo` clones a repository and pip-installs it (with its dependencies:
    tree-sitter and friends) into a fresh virtualenv, as users get it. Offline that needs
    a wheelhouse: set TELEMETRY_INJECT_WHEELHOUSE to a folder holding wheels of the
    dependencies and of the build backend (`.ci/run` fills one with `pip download` from the
    lists in pyproject.toml)."""
    wheelhouse = os.environ.get("TELEMETRY_INJECT_WHEELHOUSE", "")
    if not wheelhouse or not any(p.startswith("tree_sitter") for p in os.listdir(wheelhouse)):
        pytest.skip("pre-commit try-repo pip-installs the package and its dependencies into a new virtualenv: "
                    "offline it needs TELEMETRY_INJECT_WHEELHOUSE (a folder of wheels)")
    project = Path(__file__).resolve().parents[2]
    copy = tmp_path / "project-copy"
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=project,
                            capture_output=True, check=True).stdout
    for name in filter(None, listed.split(b"\0")):
        source = project / os.fsdecode(name)
        if source.is_file():
            (copy / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / os.fsdecode(name))
    clone = pc_repo.__class__(copy, pc_repo.env)
    clone.git("init", "-q")
    clone.git("add", "-A")
    clone.git("commit", "-q", "-m", "copy", "--no-verify")

    repo = pc_repo
    repo.write("mod.py", "def f(x):\n    return x + 1\n")
    repo.git("add", "mod.py")
    offline = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": wheelhouse, "PIP_CONFIG_FILE": os.devnull}
    done = repo.run(sys.executable, "-m", "pre_commit", "try-repo", copy, "telemetry-inject", check=False,
                    env=offline, timeout=600)
    out = repo.text(done)
    assert done.returncode == 1, out
    assert "Instrumented mod.py: 1 function" in out
    assert spans(repo.read("mod.py")) == ["f"]
    repo.git("add", "-A")
    done = repo.run(sys.executable, "-m", "pre_commit", "try-repo", copy, "telemetry-inject", check=False,
                    env=offline, timeout=600)
    assert done.returncode == 0, repo.text(done)


def test_the_hook_manifest_is_valid_for_pre_commit(pc_repo) -> None:
    project = Path(__file__).resolve().parents[2]
    done = pc_repo.pre_commit("validate-manifest", project / ".pre-commit-hooks.yaml")
    assert done.returncode == 0, pc_repo.text(done)
    import yaml

    hooks = {h["id"]: h for h in yaml.safe_load((project / ".pre-commit-hooks.yaml").read_text())}
    assert set(hooks) == {"telemetry-inject", "telemetry-inject-check"}
    assert hooks["telemetry-inject-check"]["entry"] == "telemetry-inject-hook --check"
    assert all(h["language"] == "python" for h in hooks.values())
    # types_or covers every extension of every supported language that pre-commit can tag
    # (it has no tag for .mts and .cts), and nothing else.
    from identify import identify

    from pytest_telemetry_inject.languages import all_languages

    tags = set()
    for language in all_languages().values():
        for extension in language.extensions:
            tags |= identify.tags_from_filename("x" + extension) - {"text"}
    assert tags >= {"python", "javascript", "jsx", "ts", "tsx", "go"}
    assert all(set(h["types_or"]) == tags for h in hooks.values()), tags


def test_javascript_typescript_and_go_commits_keep_every_line_and_strip_back(pc_repo) -> None:
    """The hook treats the brace languages as it treats Python: only what the commit changed,
    the runtime written beside the code (and to be added), idempotent, strip exact; and no
    line of the JavaScript and TypeScript files moves (Go's inserted lines are kept out of
    the line numbers by //line directives)."""
    repo = pc_repo
    js = "export function area(r) {\n  return Math.PI * r * r;\n}\n\nexport function keep(x) {\n  return x;\n}\n"
    ts = "export function twice(x: number): number {\n  const y = x * 2;\n  return y;\n}\n"
    go = ("package geo\n\nimport \"fmt\"\n\nfunc Describe(xs []int) string {\n\ttotal := 0\n"
          "\tfor _, x := range xs {\n\t\ttotal += x\n\t}\n\treturn fmt.Sprint(total)\n}\n")
    repo.write("go.mod", "module example.com/geo\n\ngo 1.19\n")
    repo.write("web/package.json", '{"type": "module"}\n')
    repo.write("web/geo.js", js)
    repo.git("add", "-A")
    assert repo.commit("plain code", "--no-verify").returncode == 0
    # The commit changes one JavaScript function, adds a TypeScript and a Go file.
    changed = js.replace("return x;", "return x + 1;")
    repo.write("web/geo.js", changed)
    repo.write("web/twice.ts", ts)
    repo.write("geo.go", go)
    repo.git("add", "-A")
    done = repo.commit("second")
    out = repo.text(done)
    assert done.returncode != 0, out
    for name in ("web/geo.js", "web/twice.ts", "geo.go"):
        assert f"Instrumented {name}: 1 function" in out, out
    for runtime in ("web/telemetry_utils.mjs", "web/telemetry_utils.cjs", "telemetryinject/telemetryinject.go"):
        assert f"git add {runtime}" in out, out
    after = {name: repo.read(name) for name in ("web/geo.js", "web/twice.ts", "geo.go")}
    for name, before in (("web/geo.js", changed), ("web/twice.ts", ts)):
        assert after[name].count(b"\n") == before.count("\n"), f"{name}: a line moved"
    assert b'span("web/geo.js:keep")' in after["web/geo.js"] and b'geo.js:area' not in after["web/geo.js"], \
        "the function the commit did not touch is left alone"
    assert after["web/geo.js"].splitlines()[1:3] == changed.encode().splitlines()[1:3]
    assert b'"example.com/geo/telemetryinject"' in after["geo.go"]
    assert b'Start("geo.Describe")' in after["geo.go"]

    repo.git("add", "-A")
    done = repo.commit("second")
    assert done.returncode == 0, repo.text(done)
    again = repo.pre_commit("run", "--all-files")
    assert again.returncode == 0, repo.text(again)
    assert repo.status() == ""

    if shutil.which("node"):
        ran = repo.run("node", "--input-type=module", "-e",
                       "import {keep} from './web/geo.js'; import {snapshot} from './web/telemetry_utils.mjs';"
                       "keep(1); console.log(JSON.stringify(snapshot().filter(s => s.count).map(s => s.name)))")
        assert json.loads(ran.stdout) == ["keep"]
    if shutil.which("go"):
        repo.run("go", "vet", "./...", env={"GOFLAGS": "-mod=mod", "GOCACHE": str(repo.root / ".gocache")})

    stripped = repo.cli("--strip", "--in-place", "web", "geo.go")
    assert stripped.returncode == 0, repo.text(stripped)
    assert repo.read("web/geo.js") == changed.encode()
    assert repo.read("web/twice.ts") == ts.encode()
    assert repo.read("geo.go") == go.encode()
