"""Which files are processed: .gitignore (through real git), virtualenvs, build output,
symbolic links, shebangs, exclusions."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pytest_telemetry_inject import scan as scan_module
from pytest_telemetry_inject.scan import scan
from pytest_telemetry_inject.settings import Settings


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"})


def write(root: Path, relative: str, text: str = "def f():\n    return 1\n") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def found(root: Path, **settings) -> dict[str, tuple[str | None, str | None]]:
    items = scan([root], Settings(**settings), project_root=root)
    return {item.relative.as_posix(): (item.language, item.skip_reason) for item in items}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for name in ("app/main.py", "app/util.py", "node_modules/x/index.py", "build/lib/app.py",
                 "dist/out.py", "app/__pycache__/m.py", "site-packages/s.py", "pkg.egg-info/e.py",
                 ".telemetry_cache/scripts/python/ab/s.py", "venv/lib/v.py", "envs/py311/lib/c.py",
                 "app/venv/real_package_named_venv.py"):
        write(root, name)
    (root / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    (root / "envs" / "py311" / "conda-meta").mkdir(parents=True)
    write(root, "tools/run", "#!/usr/bin/env python3\nprint(1)\n")
    write(root, "notes.md", "# notes\n")
    return root


def test_always_skipped_folders(tree: Path) -> None:
    files = found(tree)
    assert set(files) == {"app/main.py", "app/util.py", "tools/run", "notes.md", "app/venv/real_package_named_venv.py"}
    assert files["tools/run"] == ("python", None)
    assert files["notes.md"] == (None, None)


def test_only_the_files_of_given_languages(tree: Path) -> None:
    write(tree, "web/app.js", "function f() { return 1; }\n")
    items = scan([tree], Settings(), project_root=tree, languages=("python",))
    assert {item.relative.as_posix(): item.language for item in items} == {
        "app/main.py": "python", "app/util.py": "python", "app/venv/real_package_named_venv.py": "python"}
    items = scan([tree], Settings(), project_root=tree, languages=("python", "javascript"))
    assert {item.relative.as_posix() for item in items} >= {"web/app.js", "app/main.py"}


def test_gitignore_through_git(tree: Path) -> None:
    write(tree, ".gitignore", "app/util.py\n*.md\n")
    git("init", "-q", cwd=tree)
    git("add", "app/main.py", ".gitignore", cwd=tree)
    git("commit", "-qm", "init", cwd=tree)
    write(tree, "app/new_untracked.py")
    files = found(tree)
    assert "app/util.py" not in files and "notes.md" not in files
    assert "app/main.py" in files and "app/new_untracked.py" in files
    assert "app/util.py" in found(tree, respect_gitignore=False)


def test_a_listing_started_early_is_the_one_read_and_none_is_left_running(tree: Path) -> None:
    # The pytest plugin starts git ls-files before importing its session (start_git_files);
    # scan reads that listing: the same files as a listing run then, and no process left.
    write(tree, ".gitignore", "app/util.py\n*.md\n")
    git("init", "-q", cwd=tree)
    expected = found(tree)
    scan_module.start_git_files(str(tree))
    started = scan_module._started[str(tree)]
    assert found(tree) == expected and "app/util.py" not in expected
    assert started.returncode == 0 and not scan_module._started  # read, and gone
    # Outside a work tree git fails: no listing, every file found, as without one.
    outside = tree / "app"
    (tree / ".git").rename(tree / "not-git")
    scan_module.start_git_files(str(outside))
    assert "util.py" in {item.relative.as_posix() for item in scan([outside], Settings(), project_root=tree)}
    # One started and never read is waited for.
    scan_module.start_git_files(str(tree))
    waiting = scan_module._started[str(tree)]
    scan_module.stop_git_files()
    assert waiting.returncode is not None and not scan_module._started


def test_subfolder_of_a_repository(tree: Path) -> None:
    write(tree, ".gitignore", "app/util.py\n")
    git("init", "-q", cwd=tree)
    items = scan([tree / "app"], Settings(), project_root=tree)
    assert {item.relative.as_posix() for item in items} == {"main.py", "venv/real_package_named_venv.py"}


def test_symbolic_links_are_never_followed(tree: Path, tmp_path: Path) -> None:
    outside = write(tmp_path, "outside/secret.py")
    (tree / "app" / "escape.py").symlink_to(outside)
    (tree / "app" / "alias.py").symlink_to("main.py")
    (tree / "linked_dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    files = found(tree)
    assert files["app/escape.py"] == (None, "symbolic link out of the tree (not followed)")
    assert files["app/alias.py"] == (None, "symbolic link (its target is processed where it lies)")
    assert files["linked_dir"] == (None, "symbolic link out of the tree (not followed)")
    assert not any(name.startswith("linked_dir/") for name in files)


def test_exclude_globs(tree: Path) -> None:
    files = found(tree, exclude=["app/util.py", "tools/*"])
    assert "app/util.py" not in files and "tools/run" not in files and "app/main.py" in files


def test_a_file_argument(tree: Path) -> None:
    items = scan([tree / "app" / "main.py"], Settings(), project_root=tree)
    assert [(i.relative.as_posix(), i.language) for i in items] == [("main.py", "python")]


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        scan([tmp_path / "nope"], Settings(), project_root=tmp_path)
