"""The plain git hook, ``hooks/pre-commit`` (``telemetry-inject-hook --staged``): it works on
the staged blobs, writes them back to the index and keeps the working tree in step."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]

DECORATOR = re.compile(rb'^\s*@_telemetry\.instrument\("([^"]+)"\)\r?$', re.M)


def spans(data: bytes) -> list[str]:
    return [m.decode() for m in DECORATOR.findall(data)]


def functions(count: int, changed: dict[int, str] | None = None) -> str:
    changed = changed or {}
    return "".join(f"\n\ndef f{i}(x):\n    {changed.get(i, f'y = x + {i}')}\n    return y * 2\n"
                   for i in range(count)).lstrip("\n")


def test_fully_staged_files_are_instrumented_and_added(git_hook_repo) -> None:
    repo = git_hook_repo
    repo.write("app/__init__.py", "")
    repo.write("app/core.py", functions(3))
    repo.git("add", "-A")
    done = repo.commit("first")
    out = repo.text(done)
    assert done.returncode == 0, out
    assert "Instrumented app/core.py: 3 functions" in out
    assert "Staged the vendored telemetry module app/telemetry_utils.py" in out
    committed = repo.head("app/core.py")
    assert spans(committed) == ["f0", "f1", "f2"]
    assert repo.read("app/core.py") == committed
    assert repo.head("app/telemetry_utils.py").startswith(b"# telemetry-inject: vendored runtime")
    assert repo.status() == "", "nothing left behind: the fixes went into the commit"

    # The next commit changes one function: only it gets telemetry; a commit with nothing
    # to instrument goes through untouched.
    repo.write("app/core.py", committed.replace(b"y = x + 1\n", b"y = x - 1\n")
               .replace(b'@_telemetry.instrument("f1")\n', b""))
    repo.write("app/other.py", "def untouched(x):\n    return x\n")
    repo.git("add", "app/core.py")
    done = repo.commit("second")
    assert done.returncode == 0, repo.text(done)
    assert spans(repo.head("app/core.py")) == ["f0", "f1", "f2"]
    assert repo.read("app/other.py") == b"def untouched(x):\n    return x\n", "not staged: not touched"
    rerun = repo.hook("--staged")
    assert rerun.returncode == 0 and rerun.stdout == b"", repo.text(rerun)


def test_partially_staged_file_gets_the_same_telemetry_in_both(git_hook_repo) -> None:
    repo = git_hook_repo
    repo.write("mod.py", functions(12))
    repo.git("add", "-A")
    repo.commit("plain", "--no-verify")
    staged = functions(12, {2: "y = x * 200"})
    repo.write("mod.py", staged)
    repo.git("add", "mod.py")
    worktree = functions(12, {2: "y = x * 200", 9: "y = x * 900  # not staged"})
    repo.write("mod.py", worktree)

    done = repo.commit("change f2")
    out = repo.text(done)
    assert done.returncode == 0, out
    assert "Instrumented mod.py: 1 function (staged part; unstaged edits kept)" in out
    committed = repo.head("mod.py")
    assert spans(committed) == ["f2"]
    assert b"# not staged" not in committed, "the unstaged edit is not committed"
    assert b"y = x * 200" in committed
    after = repo.read("mod.py")
    assert b"y = x * 900  # not staged" in after, "the unstaged edit survives"
    assert spans(after) == ["f2"]
    # What remains unstaged is exactly the user's edit.
    unstaged = repo.git("diff", "-U0").decode()
    assert [line for line in unstaged.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")] == \
        ["-    y = x + 9", "+    y = x * 900  # not staged"]


def test_a_syntax_error_stops_the_commit_and_changes_nothing(git_hook_repo) -> None:
    repo = git_hook_repo
    repo.write("good.py", "def good(x):\n    return x\n")
    repo.git("add", "-A")
    repo.commit("base", "--no-verify")
    head = repo.head_id()
    repo.write("good.py", "def good(x):\n    return x + 1\n")
    broken = b"def bad(x)\n    return x\n"
    repo.write("bad.py", broken)
    repo.git("add", "-A")
    done = repo.commit("broken")
    out = repo.text(done)
    assert done.returncode != 0
    assert repo.head_id() == head
    assert repo.read("bad.py") == broken and repo.staged("bad.py") == broken
    assert repo.read("good.py") == b"def good(x):\n    return x + 1\n", "nothing changes when the commit stops"
    assert repo.staged("good.py") == b"def good(x):\n    return x + 1\n"
    assert not (repo.root / "telemetry_utils.py").exists()
    first = [line for line in out.splitlines() if "error" in line]
    assert first[0].startswith("telemetry-inject-hook: error: bad.py: does not parse (line 1"), out


def test_broken_unstaged_edits_stop_the_commit(git_hook_repo) -> None:
    repo = git_hook_repo
    repo.write("mod.py", functions(4))
    repo.git("add", "-A")
    repo.commit("plain", "--no-verify")
    staged = functions(4, {1: "y = x * 100"})
    repo.write("mod.py", staged)
    repo.git("add", "mod.py")
    worktree = staged + "\ndef half_written(:\n"
    repo.write("mod.py", worktree)
    done = repo.commit("change f1")
    assert done.returncode != 0
    assert "stage or stash them and commit again" in repo.text(done)
    assert repo.read("mod.py") == worktree.encode() and repo.staged("mod.py") == staged.encode()


def test_commit_all_and_hooks_path_install(git_hook_repo) -> None:
    """`git commit -a` gives the hook a temporary index (GIT_INDEX_FILE); the hook also
    works when installed with `git config core.hooksPath` pointing at this project's hooks."""
    repo = git_hook_repo
    (repo.root / ".git" / "hooks" / "pre-commit").unlink()
    repo.git("config", "core.hooksPath", str(PROJECT / "hooks"))
    repo.write("mod.py", functions(3))
    repo.git("add", "-A")
    repo.commit("plain", "--no-verify")
    repo.write("mod.py", functions(3, {0: "y = -x"}))
    done = repo.commit("all", "-a")
    out = repo.text(done)
    assert done.returncode == 0, out
    assert spans(repo.head("mod.py")) == ["f0"]
    assert repo.read("mod.py") == repo.head("mod.py")
    assert repo.git("ls-tree", "--name-only", "HEAD").split() == [b"mod.py", b"telemetry_utils.py"]
    assert repo.status() == ""


def test_plain_hook_keeps_crlf_and_strip_restores_the_commit(git_hook_repo) -> None:
    repo = git_hook_repo
    source = textwrap.dedent('''\
        def a(x):
            return x


        class K:
            def b(self):
                return 2
    ''').replace("\n", "\r\n").encode()
    repo.write("win.py", source)
    repo.git("add", "-A")
    assert repo.commit("crlf").returncode == 0
    committed = repo.head("win.py")
    assert committed.count(b"\n") == committed.count(b"\r\n") and spans(committed) == ["a", "K.b"]
    done = repo.cli("--strip", "--in-place", ".")
    assert done.returncode == 0, repo.text(done)
    assert repo.read("win.py") == source
    assert not (repo.root / "telemetry_utils.py").exists()


def test_the_hook_finds_its_command_or_stops_the_commit(git_hook_repo) -> None:
    """Git GUIs run hooks without the virtualenv on PATH: TELEMETRY_INJECT_HOOK names the
    command; without any, the commit stops with a message instead of going on unchecked."""
    repo = git_hook_repo
    bare_path = os.pathsep.join(p for p in ("/usr/local/bin", "/usr/bin", "/bin") if os.path.isdir(p))
    repo.write("mod.py", "def f(x):\n    return x\n")
    repo.git("add", "-A")
    lost = repo.run("git", "commit", "-m", "no hook command", check=False,
                    env={"PATH": bare_path, "TELEMETRY_INJECT_HOOK": ""})
    if b"Instrumented" in lost.stdout + lost.stderr:
        pytest.skip("a python3 on the bare PATH has pytest_telemetry_inject installed")
    assert lost.returncode != 0 and "telemetry-inject-hook not found" in repo.text(lost)
    assert repo.head_id() == ""
    done = repo.run("git", "commit", "-m", "named", check=False,
                    env={"PATH": bare_path, "TELEMETRY_INJECT_HOOK": str(Path(sys.executable).parent /
                                                                         "telemetry-inject-hook")})
    assert done.returncode == 0, repo.text(done)
    assert spans(repo.head("mod.py")) == ["f"]


def test_javascript_commits_touch_only_the_changed_functions(git_hook_repo) -> None:
    """The staged blobs of a brace language: the import shares the first function's line,
    and that does not make the first function "changed" in the next commits."""
    repo = git_hook_repo
    js = "export function area(r) {\n  return r * r;\n}\n\nexport function keep(x) {\n  return x;\n}\n"
    repo.write("geo.mjs", js)
    repo.git("add", "-A")
    repo.commit("plain", "--no-verify")
    repo.write("geo.mjs", js.replace("return x;", "return x + 1;"))
    repo.git("add", "geo.mjs")
    done = repo.commit("change keep")
    assert done.returncode == 0, repo.text(done)
    assert "Staged the vendored telemetry module telemetry_utils.mjs" in repo.text(done)
    committed = repo.head("geo.mjs")
    assert committed.count(b"\n") == js.count("\n")
    assert committed.startswith(b'import * as _telemetry from "./telemetry_utils.mjs"; export function area')
    assert b'span("geo.mjs:keep")' in committed and b'span("geo.mjs:area")' not in committed
    # Changing keep again (its telemetry is there): area stays as it is.
    repo.write("geo.mjs", committed.replace(b"return x + 1;", b"return x + 2;"))
    repo.git("add", "geo.mjs")
    done = repo.commit("change keep again")
    assert done.returncode == 0, repo.text(done)
    assert b'span("geo.mjs:area")' not in repo.head("geo.mjs")
    assert repo.status() == ""
    # Changing area now instruments it.
    repo.write("geo.mjs", repo.read("geo.mjs").replace(b"return r * r;", b"return r * r * 1;"))
    repo.git("add", "geo.mjs")
    done = repo.commit("change area")
    assert done.returncode == 0, repo.text(done)
    assert "Instrumented geo.mjs: 1 function" in repo.text(done)
    assert repo.head("geo.mjs").count(b"span(") == 2
