"""`telemetry-inject-hook` run directly, as pre-commit would (files on disk, staged):
which functions count as changed, settings, concurrency, and what it imports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

DECORATOR = re.compile(rb'^\s*@_telemetry\.instrument\("([^"]+)"\)\r?$', re.M)


def spans(data: bytes) -> list[str]:
    return [m.decode() for m in DECORATOR.findall(data)]


BASE = textwrap.dedent('''\
    import functools


    def first(x):
        y = x + 1
        return y


    def second(x):
        return x * 2


    @functools.lru_cache
    def third(x):
        y = x - 1
        return y


    def fourth(x):
        return x
''')


def committed(repo, name: str, text: str) -> None:
    repo.write(name, text)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "base", "--no-verify")


def test_deletions_touch_the_function_they_fall_in_only(repo) -> None:
    committed(repo, "mod.py", BASE)
    # Delete a whole function (second): neither neighbour is touched. Replace two lines of
    # third's body by one: third is.
    edited = BASE.replace("def second(x):\n    return x * 2\n\n\n", "")
    edited = edited.replace("    y = x - 1\n    return y\n", "    return x - 1\n")
    repo.write("mod.py", edited)
    repo.git("add", "mod.py")
    done = repo.hook("mod.py")
    assert done.returncode == 1, repo.text(done)
    assert spans(repo.read("mod.py")) == ["third"]

    # Only the last body line deleted, and only a decorator deleted: both count.
    committed(repo, "two.py", BASE)
    edited = BASE.replace("    y = x + 1\n    return y\n", "    y = x + 1\n")
    edited = edited.replace("@functools.lru_cache\n", "")
    repo.write("two.py", edited)
    repo.git("add", "two.py")
    assert repo.hook("two.py").returncode == 1
    assert spans(repo.read("two.py")) == ["first", "third"]


def test_moved_file_and_odd_names_count_only_changed_functions(repo) -> None:
    committed(repo, "old name.py", BASE)
    repo.git("mv", "old name.py", 'new "näme".py')
    text = BASE.replace("return x * 2", "return x * 3")
    repo.write('new "näme".py', text)
    repo.git("add", "-A")
    done = repo.hook('new "näme".py')
    assert done.returncode == 1, repo.text(done)
    assert spans(repo.read('new "näme".py')) == ["second"], "a renamed file is not a new file"


def test_new_untracked_and_all(repo) -> None:
    committed(repo, "mod.py", BASE)
    repo.write("fresh.py", BASE)  # not known to git: everything in it is new
    done = repo.hook("fresh.py", "mod.py")
    assert done.returncode == 1, repo.text(done)
    assert spans(repo.read("fresh.py")) == ["first", "second", "third", "fourth"]
    assert repo.read("mod.py") == BASE.encode(), "unchanged since HEAD: not touched"
    done = repo.hook("--all", "mod.py")
    assert done.returncode == 1 and spans(repo.read("mod.py")) == ["first", "second", "third", "fourth"]
    again = repo.hook("--all", "mod.py", "fresh.py")
    assert again.returncode == 1, "the vendored module is not staged yet"
    assert "Instrumented" not in repo.text(again)
    repo.git("add", "-A")
    again = repo.hook("--all", "mod.py", "fresh.py")
    assert again.returncode == 0 and again.stdout == b"", repo.text(again)


def test_settings_are_honoured(repo) -> None:
    repo.write("pyproject.toml", textwrap.dedent('''\
        [tool.telemetry-inject]
        style = "with"
        vendored_module = "tools.rt"
        vendored_path = "tools/rt.py"
        exclude = ["generated/*"]
    '''))
    repo.write("src/app.py", "def run(x):\n    y = x\n    return y\n")
    repo.write("generated/gen.py", "def gen(x):\n    return x\n")
    repo.write("optout.py", "# telemetry: skip-file\ndef nope(x):\n    return x\n")
    repo.git("add", "-A")
    done = repo.hook("src/app.py", "generated/gen.py", "optout.py")
    out = repo.text(done)
    assert done.returncode == 1, out
    app = repo.read("src/app.py").decode()
    assert app.startswith("from tools import rt as _telemetry_runtime\n")
    assert '    with _telemetry.span("run"):\n        y = x\n' in app
    assert (repo.root / "tools" / "rt.py").read_text().startswith("# telemetry-inject: vendored runtime")
    assert "Wrote the vendored telemetry module tools/rt.py" in out
    assert repo.read("generated/gen.py") == b"def gen(x):\n    return x\n"
    assert repo.read("optout.py").startswith(b"# telemetry: skip-file")
    assert "skipped optout.py: opted out (# telemetry: skip-file)" in out


def test_parallel_batches_share_the_cache_and_write_the_module_once(repo) -> None:
    repo.write("pkg/__init__.py", "")
    for i in range(8):
        repo.write(f"pkg/m{i}.py", BASE.replace("first", f"first{i}"))
    repo.git("add", "-A")
    hook = os.path.join(os.path.dirname(sys.executable), "telemetry-inject-hook")
    procs = [subprocess.Popen([hook, f"pkg/m{2 * k}.py", f"pkg/m{2 * k + 1}.py"], cwd=repo.root, env=repo.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for k in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [1, 1, 1, 1], outputs
    text = b"".join(o + e for o, e in outputs).decode()
    assert text.count("Wrote the vendored telemetry module pkg/telemetry_utils.py") == 1, text
    assert text.count("Instrumented pkg/m") == 8
    for i in range(8):
        assert spans(repo.read(f"pkg/m{i}.py")) == [f"first{i}", "second", "third", "fourth"]
    from pytest_telemetry_inject.runtime.vendor import vendored_source

    assert (repo.root / "pkg" / "telemetry_utils.py").read_text() == vendored_source()
    assert not [p for p in (repo.root / "pkg").iterdir() if p.name.startswith(".ti-")], "no temporary files left"


IMPORT_GUARD = '''
import sys
attempts = []
class Guard:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("litellm", "openai", "opentelemetry"):
            attempts.append(name)
        return None
sys.meta_path.insert(0, Guard())
from pytest_telemetry_inject.precommit import main
code = main(sys.argv[1:])
print("RESULT", code, sorted(attempts), "tree_sitter" in sys.modules, file=sys.stderr)
'''


def test_the_hook_never_imports_litellm_and_a_warm_run_parses_nothing(repo) -> None:
    committed(repo, "mod.py", BASE)
    changed = BASE.replace("return x * 2", "return x * 4").encode()
    repo.write("mod.py", changed)
    repo.git("add", "mod.py")
    cold = repo.run(sys.executable, "-c", IMPORT_GUARD, "mod.py", check=False)
    assert "RESULT 1 [] True" in repo.text(cold), repo.text(cold)
    repo.write("mod.py", changed)  # the same change again: the file memo answers
    warm = repo.run(sys.executable, "-c", IMPORT_GUARD, "mod.py", check=False)
    assert "RESULT 1 [] False" in repo.text(warm), repo.text(warm)
    assert spans(repo.read("mod.py")) == ["second"]
    importtime = repo.run(sys.executable, "-X", "importtime", "-m", "pytest_telemetry_inject.precommit", "mod.py",
                          check=False)
    assert b"litellm" not in importtime.stderr and b"pytest_telemetry_inject.engine" in importtime.stderr


def test_check_against_pre_commit_refs(repo) -> None:
    """`pre-commit run --from-ref A --to-ref B` (CI) sets PRE_COMMIT_FROM_REF/TO_REF: the
    check compares with their merge base, not with HEAD."""
    committed(repo, "mod.py", BASE)
    repo.write("mod.py", BASE.replace("return x * 2", "return x * 5"))
    repo.git("commit", "-q", "-am", "unchecked change", "--no-verify")
    plain = repo.hook("--check", "mod.py")
    assert plain.returncode == 0, "against HEAD nothing changed"
    refs = {"PRE_COMMIT_FROM_REF": "HEAD~1", "PRE_COMMIT_TO_REF": "HEAD"}
    done = repo.hook("--check", "mod.py", env=refs)
    assert done.returncode == 1 and "Would instrument mod.py: 1 function" in repo.text(done), repo.text(done)
    assert repo.status() == ""


def test_a_users_git_configuration_does_not_change_what_is_read(repo) -> None:
    """Merged hunks (diff.interHunkContext), no prefixes, colours, renames as copies,
    an external diff: none of them may change which functions count as changed."""
    for key, value in (("diff.interHunkContext", "20"), ("diff.noprefix", "true"), ("color.ui", "always"),
                       ("diff.renames", "copies"), ("diff.external", "false"), ("diff.mnemonicPrefix", "true")):
        repo.git("config", key, value)
    committed(repo, "mod.py", BASE)
    edited = BASE.replace("y = x + 1\n", "y = x + 10\n").replace("y = x - 1\n", "y = x - 10\n")
    repo.write("mod.py", edited)
    repo.git("add", "mod.py")
    done = repo.hook("mod.py")
    assert done.returncode == 1, repo.text(done)
    assert spans(repo.read("mod.py")) == ["first", "third"], "second lies between them, untouched"


def test_line_changes_reads_two_texts_as_git_diff_does(repo) -> None:
    """``line_changes`` (for texts in no blob: a file with its telemetry taken out) gives
    the functions the same changed lines and deletion gaps as git's own diff."""
    from pytest_telemetry_inject.gitdiff import line_changes

    edits = [
        BASE.replace("return x * 2", "return x * 3"),  # a changed line
        BASE.replace("        y = x - 1\n", ""),  # a deleted line inside a body
        BASE.replace("@functools.lru_cache\n", ""),  # a deleted decorator
        BASE.replace("def fourth(x):\n    return x\n", "def fourth(x):\n    return x\n\n\ndef fifth():\n    return 5\n"),
        BASE.replace("    y = x + 1\n    return y\n", ""),  # the end of a body cut
    ]
    committed(repo, "mod.py", BASE)
    for edited in edits:
        repo.write("mod.py", edited)
        changes = repo_changes(repo)
        mine = line_changes(BASE, edited)
        assert (mine.ranges, mine.gaps) == (changes.ranges, changes.gaps), edited


def repo_changes(repo):
    from pytest_telemetry_inject.gitdiff import Repository

    return Repository(str(repo.root)).changes(["mod.py"], base="HEAD", cached=False)["mod.py"]
