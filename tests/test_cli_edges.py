"""The command line at the edges a user hits: links, read-only files, link loops, a killed
run, a run outside any project. Each through the real command line in a subprocess."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "pytest_telemetry_inject.cli"]
SOURCE = "def double(x):\n    y = x * 2\n    return y\n"


def cli(*args: object, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "core.py").write_text(SOURCE)
    return root


def test_in_place_through_a_link_rewrites_the_target_and_keeps_the_link(project: Path) -> None:
    link = project / "pkg" / "link.py"
    link.symlink_to("core.py")
    done = cli(link, "--in-place", "--target", "runtime", cwd=project)
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and os.readlink(link) == "core.py"
    assert '_telemetry.span("double")' in (project / "pkg" / "core.py").read_text()


def test_a_read_only_file_is_refused_in_one_line_unless_asked(project: Path) -> None:
    core = project / "pkg" / "core.py"
    core.chmod(0o444)
    done = cli(core, "--in-place", "--target", "runtime", cwd=project)
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1 and "is read-only" in done.stderr and "--write-read-only" in done.stderr
    assert core.read_text() == SOURCE
    done = cli(core, "--in-place", "--write-read-only", "--target", "runtime", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "_telemetry" in core.read_text() and stat.S_IMODE(core.stat().st_mode) == 0o444


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="changing a file's group needs root")
def test_in_place_keeps_the_files_group(project: Path) -> None:
    core = project / "pkg" / "core.py"
    os.chown(core, -1, 1)
    assert cli(core, "--in-place", "--target", "runtime", cwd=project).returncode == 0
    assert core.stat().st_gid == 1 and "_telemetry" in core.read_text()


def test_a_loop_of_links_as_path_is_one_line_and_exit_2(project: Path) -> None:
    (project / "loop").symlink_to("loop")
    done = cli("loop", "-o", "out", cwd=project)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "loop of symbolic links" in done.stderr


def _proc(pid: int | str, name: str) -> bytes | None:
    """``/proc/<pid>/<name>``, or None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return None


def _children(pid: int) -> set[int]:
    parent = f"\nPPid:\t{pid}\n".encode()
    return {int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and parent in (_proc(entry.name, "status") or b"")}


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_workers_die_with_a_killed_run(tmp_path: Path) -> None:
    root = tmp_path / "big"
    (root / "pkg").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    body = "".join(f"def f{j}(x):\n    y = x + {j}\n    return y * 2\n\n" for j in range(60))
    for i in range(400):
        (root / "pkg" / f"m{i}.py").write_text(body)
    run = subprocess.Popen([*CLI, "pkg", "-o", "out", "--max-parallel", "2", "-q"], cwd=root,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers: set[int] = set()
    while time.monotonic() < deadline and len(workers) < 2 and run.poll() is None:
        workers = _children(run.pid)
        time.sleep(0.05)
    if run.poll() is not None or not workers:
        pytest.skip("the run ended before its workers could be seen")
    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in workers if Path(f"/proc/{pid}").exists()
                 and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()}
        time.sleep(0.1)
    assert not alive, f"workers still alive after their parent was killed: {alive}"


def _forked(pid: int) -> set[int]:
    """The children of ``pid`` that are forks of it (its command line): its workers, not a
    ``git`` it runs."""
    own = _proc(pid, "cmdline")
    return {child for child in _children(pid) if own is not None and _proc(child, "cmdline") == own}


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_a_killed_worker_loses_no_file_and_the_json_summary_says_so(tmp_path: Path) -> None:
    # A worker killed in the middle of a run (the kernel's OOM killer, say): the run does the
    # files left in its own process, writes every one, and says so in one line, on stderr
    # and in the --json summary (which a CI step reads instead of stderr).
    import json

    root = tmp_path / "big"
    (root / "pkg").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    for i in range(400):  # (no two alike: none is a memo of another)
        (root / "pkg" / f"m{i}.py").write_text("".join(f"def f{j}(x):\n    y = x + {i}\n    return y * {j}\n\n"
                                                       for j in range(60)))
    run = subprocess.Popen([*CLI, "pkg", "-o", "out", "--max-parallel", "2", "--json"], cwd=root,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # A worker: a fork of the run seen in two looks in a row (a `git` the run starts is a
    # fork of it too, for the moment before it becomes git).
    deadline = time.monotonic() + 60
    seen: set[int] = set()
    killed = None
    while time.monotonic() < deadline and killed is None and run.poll() is None:
        forks = _forked(run.pid)
        for pid in sorted(forks & seen):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # (gone meanwhile: try the next)
                continue
            killed = pid
            break
        seen = forks
        time.sleep(0.02)
    if killed is None:
        run.communicate()
        pytest.skip("the run ended before a worker could be killed")
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["workers"] == 1
    assert summary["workers_warning"].startswith("the worker processes stopped before they were done")
    assert f"warning: {summary['workers_warning']}" in stderr
    assert summary["files"]["total"] == 400 and summary["files"].get("instrumented") == 400, summary["files"]
    assert len(list((root / "out").glob("m*.py"))) == 400
    assert summary["functions"]["instrumented"] == 400 * 60


def test_a_whole_run_leaves_the_json_summary_without_a_workers_warning(project: Path) -> None:
    import json

    done = cli("pkg", "--dry-run", "--json", cwd=project)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["workers_warning"] == ""


def test_a_temporary_file_left_by_a_killed_writer_is_removed_by_the_next_run(project: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    assert cli("pkg", "-o", "out", cwd=project).returncode == 0
    leftover = project / "out" / f".ti-{pid}-3.tmp"
    leftover.write_text("half a file")
    mine = project / "out" / f".ti-{os.getpid()}-1.tmp"  # a live process's: kept
    mine.write_text("in progress")
    (project / "pkg" / "core.py").write_text(SOURCE + "\n\ndef more(x):\n    y = x\n    return y\n")
    assert cli("pkg", "-o", "out", cwd=project).returncode == 0
    assert not leftover.exists() and mine.exists()


def test_outside_any_project_the_cache_goes_to_the_users_cache_folder(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "tool.py").write_text(SOURCE)
    xdg = tmp_path / "xdg"
    done = cli("tool.py", "-o", "out", cwd=loose, env={"XDG_CACHE_HOME": str(xdg)})
    assert done.returncode == 0, done.stderr
    expected = xdg / "pytest-telemetry-inject" / "cache"
    assert f"cache {expected}:" in done.stdout
    assert (expected / "metadata").is_dir() and not (loose / ".telemetry_cache").exists()
    # A project keeps its own, and an explicit cache folder wins everywhere.
    done = cli("tool.py", "-o", "out2", "--cache-dir", "here", cwd=loose, env={"XDG_CACHE_HOME": str(xdg)})
    assert (loose / "here" / "metadata").is_dir(), done.stderr
