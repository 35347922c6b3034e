"""The real toolchains the JavaScript, TypeScript and Go tests run, and where they come from.

- ``node``: on PATH (Node.js 18 or newer).
- ``tsc`` and the npm packages the real-code tests instrument: ``tests/realcode/.npm``
  (``.ci/run`` installs them there with npm), or ``$TELEMETRY_INJECT_NPM_DIR``; ``tsc`` may
  also be on PATH.
- ``go``: on PATH; the Go sources of the real-code tests: Debian's ``golang-*-dev`` packages
  under ``/usr/share/gocode/src`` (``.ci/run`` installs them).

A test that needs a missing one is skipped with a reason that says how to get it. Loaded by
path (``testkit.import_path``) from the tests and from ``bench/languages_realcode.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[1]
NPM_DIR = Path(os.environ.get("TELEMETRY_INJECT_NPM_DIR", HERE / ".npm"))
NODE_MODULES = NPM_DIR / "node_modules"
GOCODE = Path("/usr/share/gocode/src")
HOW = "(.ci/run installs it: see tests/realcode/toolchains.py)"


def node() -> str | None:
    return shutil.which("node")


def tsc() -> str | None:
    local = NODE_MODULES / ".bin" / "tsc"
    if local.exists():
        return str(local)
    return shutil.which("tsc")


def go() -> str | None:
    return shutil.which("go")


def npm_package(name: str) -> Path | None:
    folder = NODE_MODULES / name
    return folder if (folder / "package.json").is_file() else None


def go_source(import_path: str) -> Path | None:
    folder = GOCODE / import_path
    return folder if folder.is_dir() else None


def skip_reason(*needs: str) -> str | None:
    """Why a test that needs these tools cannot run (None: it can). Names: node, tsc, go,
    npm:<package>, go:<import path>."""
    for need in needs:
        if need == "node" and node() is None:
            return f"node (Node.js) is not installed {HOW}"
        if need == "tsc" and tsc() is None:
            return f"tsc (npm typescript) is not installed {HOW}"
        if need == "go" and go() is None:
            return f"go is not installed (apt-get install golang-go) {HOW}"
        if need.startswith("npm:") and npm_package(need[4:]) is None:
            return f"the npm package {need[4:]} is not in {NODE_MODULES} {HOW}"
        if need.startswith("go:") and go_source(need[3:]) is None:
            return f"the Go sources of {need[3:]} are not in {GOCODE} (a golang-*-dev package) {HOW}"
    return None


def require(*needs: str) -> None:
    import pytest

    reason = skip_reason(*needs)
    if reason:
        pytest.skip(reason)


def go_env(**extra: str) -> dict[str, str]:
    """Offline module mode: no proxy, no checksum database, this Go only."""
    env = dict(os.environ)
    env.update(GO111MODULE="on", GOFLAGS="-mod=mod", GOPROXY="off", GOSUMDB="off", GOTOOLCHAIN="local",
               GONOSUMCHECK="1", CGO_ENABLED=env.get("CGO_ENABLED", "0"))
    env.update(extra)
    return env


def node_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["NODE_PATH"] = str(NODE_MODULES)
    for key in [k for k in env if k.startswith("TELEMETRY_INJECT_")]:
        del env[key]
    env.update(extra)
    return env


def run(args: Sequence[Any], cwd: Path | str, *, env: dict[str, str] | None = None,
        timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(str(a) for a in args)} failed ({done.returncode}) in {cwd}:\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def node_check(files: Sequence[Path], cwd: Path, workers: int = 0) -> list[str]:
    """``node --check`` on every file (one node process each, in parallel); the failures."""
    from concurrent.futures import ThreadPoolExecutor

    binary = node()

    def check(path: Path) -> str | None:
        done = run([binary, "--check", path], cwd, timeout=120)
        if done.returncode == 0:
            return None
        return f"{path}: " + " | ".join(done.stderr.strip().splitlines()[:5])

    with ThreadPoolExecutor(workers or (os.cpu_count() or 2)) as pool:
        return [problem for problem in pool.map(check, files) if problem]


def copy_tree(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination, symlinks=True)
    for folder, _dirs, names in os.walk(destination):
        os.chmod(folder, 0o755)
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o644)
    return destination
