"""The `telemetry-inject` command, run as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "shop"


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_telemetry_inject.cli", *args], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'proj'\n")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "sub" / "__init__.py").write_text("")
    (root / "pkg" / "core.py").write_text(textwrap.dedent('''
        def double(x):
            return 2 * x


        def broken():
            raise RuntimeError("no")
    ''').lstrip())
    (root / "pkg" / "sub" / "leaf.py").write_text("def leaf():\n    return 'leaf'\n")
    (root / "pkg" / "data.txt").write_text("not python\n")
    (root / "script").write_text("#!/usr/bin/env python3\ndef main():\n    print('hi')\n")
    return root


def test_output_dir_mirrors_the_tree_and_writes_the_vendored_module(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = cli("pkg", "script", "-o", str(out), cwd=project)
    assert done.returncode == 0, done.stderr
    assert (out / "core.py").read_text().count("_telemetry.span(") == 2
    assert "from pkg import telemetry_utils as _telemetry_runtime" in (out / "core.py").read_text()
    assert "from pkg import telemetry_utils as _telemetry_runtime" in (out / "sub" / "leaf.py").read_text()
    assert (out / "telemetry_utils.py").read_text().startswith("# telemetry-inject: vendored runtime")
    assert (out / "data.txt").read_text() == "not python\n"
    assert "_telemetry.span(\"main\")" in (out / "script").read_text()  # found by its shebang
    assert "vendored module" in done.stdout
    assert (project / "pkg" / "core.py").read_text().count("_telemetry") == 0, "sources untouched"


def test_single_file_goes_to_dir_by_name(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "single"
    assert cli("pkg/sub/leaf.py", "-o", str(out), "--target", "runtime", cwd=project).returncode == 0
    assert "runtime.tracer" in (out / "leaf.py").read_text()


def test_instrumented_code_runs_and_reports_calls_durations_exceptions(tmp_path: Path) -> None:
    out = tmp_path / "shop"
    done = cli(str(EXAMPLE), "-o", str(out), "--exclude", "tests/*", "--cache-dir", str(tmp_path / "cache"),
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    run = subprocess.run([sys.executable, "-S", "-m", "shop"], cwd=out, capture_output=True, text=True,
                         env={**env, "TELEMETRY_INJECT_REPORT": "1", "TELEMETRY_INJECT_JSONL": str(tmp_path / "ev.jsonl")},
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert "sorry: pot: 1 asked, 0 left" in run.stdout
    table = {line.split()[0]: line.split()[1:] for line in run.stderr.splitlines()[2:]}
    calls, total_ms, _mean, _max, errors = table["shop.pricing:with_tax"]
    assert calls == "2" and float(total_ms) >= 4.0  # it sleeps 2 ms per call
    assert table["shop.inventory:Inventory.reserve"][4] == "1"  # the one OutOfStock
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert {"module": "shop.inventory", "name": "Inventory.reserve", "exception": "OutOfStock"}.items() <= \
        next(e for e in events if e.get("exception")).items()


def sources(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*.py") if ".telemetry_cache" not in p.parts}


def test_in_place_strip_and_check(project: Path) -> None:
    before = sources(project)
    assert cli("pkg", "--check", cwd=project).returncode == 1
    done = cli("pkg", "--in-place", "--style", "decorator", cwd=project)
    assert done.returncode == 0, done.stderr
    core = (project / "pkg" / "core.py").read_text()
    assert '@_telemetry.instrument("double")\ndef double(x):' in core
    check = cli("pkg", "--check", "--style", "decorator", cwd=project)
    assert check.returncode == 0, check.stdout + check.stderr
    again = cli("pkg", "--in-place", "--style", "decorator", "--json", cwd=project)
    assert json.loads(again.stdout)["files"].get("instrumented", 0) == 0, "a second run changes nothing"
    stripped = cli("pkg", "--in-place", "--strip", cwd=project)
    assert stripped.returncode == 0, stripped.stderr
    assert sources(project) == before
    assert not (project / "pkg" / "telemetry_utils.py").exists(), "strip removes the vendored module"


def test_check_lists_what_lacks_telemetry(project: Path) -> None:
    done = cli("pkg", "--check", cwd=project)
    assert done.returncode == 1
    assert "pkg/core.py:1: double has no telemetry" in done.stdout
    assert "pkg/sub/leaf.py:1: leaf has no telemetry" in done.stdout


def test_dry_run_and_diff_write_nothing(project: Path) -> None:
    before = (project / "pkg" / "core.py").read_bytes()
    done = cli("pkg", "--in-place", "--dry-run", "--diff", cwd=project)
    assert done.returncode == 0
    assert "+    with _telemetry.span(\"double\"):" in done.stdout
    assert "nothing written (--dry-run)" in done.stdout
    assert (project / "pkg" / "core.py").read_bytes() == before


def test_json_summary_has_a_reason_for_every_skip(project: Path) -> None:
    (project / "pkg" / "skips.py").write_text("def t():\n    pass\nf = lambda: 1\ndef bad(:\n")
    (project / "pkg" / "ok.py").write_text("def t():\n    pass\nf = lambda: 1\n")
    done = cli("pkg", "--dry-run", "--json", cwd=project)
    data = json.loads(done.stdout)
    assert data["functions"]["skipped"] == 2
    assert {s["reason"] for s in data["skipped"]} == {"lambda", "trivial body (only a docstring, pass or ...)"}
    assert data["files"]["skipped_reasons"] == {"missing ')' at line 4": 1} or \
        list(data["files"]["skipped_reasons"])[0].endswith("at line 4")
    assert "skipped pkg/skips.py:" in done.stderr


def test_settings_precedence(project: Path, tmp_path: Path) -> None:
    (project / "pyproject.toml").write_text("[project]\nname='p'\n[tool.telemetry-inject]\nstyle = 'decorator'\n"
                                            "target = 'runtime'\n")
    out = tmp_path / "a"
    cli("pkg", "-o", str(out), cwd=project)
    assert '@_telemetry.instrument("double")' in (out / "core.py").read_text()
    out = tmp_path / "b"
    cli("pkg", "-o", str(out), cwd=project, env={"TELEMETRY_INJECT_STYLE": "with"})
    assert '_telemetry.span("double")' in (out / "core.py").read_text()
    out = tmp_path / "c"
    cli("pkg", "-o", str(out), "--style", "decorator", cwd=project, env={"TELEMETRY_INJECT_STYLE": "with"})
    assert '@_telemetry.instrument("double")' in (out / "core.py").read_text()
    (project / ".env").write_text("TELEMETRY_INJECT_TARGET=otel\n")
    out = tmp_path / "d"
    cli("pkg", "-o", str(out), cwd=project)
    assert "from opentelemetry import trace" in (out / "core.py").read_text()


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "no such file or folder: nowhere"),
    (["pkg", "--style", "sideways"], "invalid choice"),
])
def test_usage_errors_exit_2(project: Path, args: list[str], message: str) -> None:
    done = cli(*args, cwd=project)
    assert done.returncode == 2
    assert message in done.stderr
    assert len([line for line in done.stderr.splitlines() if "error" in line]) == 1


def test_bad_config_is_one_line(project: Path) -> None:
    (project / "pyproject.toml").write_text("[tool.telemetry-inject]\nstyle = 'sideways'\n")
    done = cli("pkg", cwd=project)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "style must be one of with, try, decorator, not 'sideways'" in done.stderr


def test_unwritable_output_is_an_error_and_loses_nothing(project: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    done = cli("pkg", "-o", str(blocker / "out"), cwd=project)
    assert done.returncode == 3
    assert "cannot write" in done.stderr
    assert "_telemetry" not in (project / "pkg" / "core.py").read_text()


def test_cache_commands(project: Path) -> None:
    cli("pkg", "--dry-run", cwd=project)
    stats = json.loads(cli("cache", "stats", "--json", cwd=project).stdout)
    # Four source files, but the two empty __init__.py files share one memo (same content).
    assert stats["scripts"] == 3 and stats["memos"] == 3 and stats["index_entries"] == 3
    cleared = cli("cache", "clear", cwd=project)
    assert cleared.returncode == 0
    assert json.loads(cli("cache", "stats", "--json", cwd=project).stdout)["scripts"] == 0


def test_console_script_is_installed() -> None:
    script = shutil.which("telemetry-inject", path=os.path.dirname(sys.executable))
    assert script is not None
    done = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("telemetry-inject ")


def _tree(root: Path, files: int) -> None:
    for i in range(files):
        body = "".join(f"def f{j}(x):\n    y = x + {j}\n    return y * 2\n\n" for j in range(30))
        (root / f"m{i}.py").write_text(body)


def test_progress_bar_on_a_terminal_for_long_runs(tmp_path: Path) -> None:
    import fcntl
    import pty
    import select
    import struct
    import termios

    root = tmp_path / "big"
    root.mkdir()
    _tree(root, 150)
    primary, secondary = pty.openpty()
    # A terminal of 80 columns (a fresh pty has none, and tqdm would draw a bar of width 0).
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "pytest_telemetry_inject.cli", str(root), "--dry-run",
                             "--no-cache", "--no-parallel"], cwd=tmp_path, stdout=subprocess.PIPE,
                            env={**os.environ, "TELEMETRY_INJECT_PROGRESS_DELAY": "0"},
                            stderr=secondary, text=True)
    os.close(secondary)
    seen = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(primary, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=120)
    os.close(primary)
    assert proc.returncode == 0
    # tqdm draws "<n>/150" and a rate (at once here: the delay is 0, not a second).
    assert b"/150 " in seen and b"file/s" in seen, seen[-500:]


def test_no_progress_bar_when_not_a_terminal(tmp_path: Path) -> None:
    root = tmp_path / "big"
    root.mkdir()
    _tree(root, 150)
    done = cli(str(root), "--dry-run", "--no-cache", "--no-parallel", cwd=tmp_path)
    assert done.returncode == 0 and "file/s" not in done.stderr


def test_the_readme_example_runs_under_the_pytest_command(tmp_path: Path) -> None:
    """README's first command: the ``pytest`` console script (not ``python -m pytest``, which
    puts the folder on sys.path) in the example's folder, with --inject-telemetry."""
    shop = tmp_path / "shop"
    shutil.copytree(EXAMPLE, shop, ignore=shutil.ignore_patterns(".telemetry_cache", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TELEMETRY_INJECT_", "PYTHONPATH"))}
    done = subprocess.run([str(Path(sys.executable).parent / "pytest"), "--inject-telemetry", "-p", "no:xdist"],
                          cwd=shop, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "8 passed" in done.stdout
    assert "13 functions instrumented in 5 files" in done.stdout
    assert "shop.cart:Cart.add" in done.stdout


def test_the_readme_commands_work_pasted_in_order(tmp_path: Path) -> None:
    """README's "Try it" commands, one after the other in one shell, from the repository's
    root, as a new user pastes them (the install step is the installed package here)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Try it", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", section, re.S)
    assert len(blocks) == 2, blocks
    first = blocks[0].split("pip install . && ", 1)[1]
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo / "examples" / "shop", ignore=shutil.ignore_patterns(".telemetry_cache", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TELEMETRY_INJECT_", "PYTHONPATH"))}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    done = subprocess.run(["bash", "-c", f"set -e\n{first}\n{blocks[1]}"], cwd=repo, capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "8 passed" in done.stdout and "shop.cart:Cart.add" in done.stdout
    assert (repo / "build" / "shop" / "shop" / "telemetry_utils.py").is_file()
    assert "13 functions called" in done.stderr  # the shipped copy's report (on stderr)
