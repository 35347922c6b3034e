"""Temporary git repositories driven by real git, the real pre-commit framework and the
installed ``telemetry-inject-hook`` console script (no mocks).

Every subprocess gets a clean environment: no global or system git configuration (a user's
``core.hooksPath`` or ``core.autocrlf`` must not change what is tested), a private
PRE_COMMIT_HOME, and the virtualenv's bin folder first on PATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOOK = BIN / "telemetry-inject-hook"
CLI = BIN / "telemetry-inject"


class Repo:
    """A git work tree and the commands a developer would type in it."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env

    def run(self, *args: Any, check: bool = True, input: bytes | None = None,
            env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run([str(a) for a in args], cwd=self.root, capture_output=True, input=input,
                              env={**self.env, **(env or {})}, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{args} failed ({done.returncode}):\n{self.text(done)}")
        return done

    @staticmethod
    def text(done: subprocess.CompletedProcess) -> str:
        return (done.stdout + done.stderr).decode("utf-8", "replace")

    def git(self, *args: Any, check: bool = True, input: bytes | None = None) -> bytes:
        return self.run("git", *args, check=check, input=input).stdout

    def hook(self, *args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return self.run(HOOK, *args, check=False, env=env)

    def cli(self, *args: Any) -> subprocess.CompletedProcess:
        return self.run(CLI, *args, check=False)

    def pre_commit(self, *args: Any) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "pre_commit", *args, check=False)

    def commit(self, message: str = "change", *args: str) -> subprocess.CompletedProcess:
        return self.run("git", "commit", "-m", message, *args, check=False)

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def staged(self, name: str) -> bytes:
        return self.git("show", f":{name}")

    def head(self, name: str, rev: str = "HEAD") -> bytes:
        return self.git("show", f"{rev}:{name}")

    def head_id(self) -> str:
        return self.git("rev-parse", "-q", "--verify", "HEAD", check=False).decode().strip()

    def status(self) -> str:
        return self.git("status", "--porcelain", "--untracked-files=all").decode()


@pytest.fixture(scope="session")
def git_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")
    (home / ".gitconfig").write_text(
        "[user]\n\tname = Hook Test\n\temail = hook@example.invalid\n"
        "[init]\n\tdefaultBranch = main\n[commit]\n\tgpgsign = false\n"
        "[core]\n\tautocrlf = false\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GIT_", "TELEMETRY_INJECT_", "PRE_COMMIT", "PYTHONPATH"))}
    env.update(HOME=str(home), GIT_CONFIG_GLOBAL=str(home / ".gitconfig"), GIT_CONFIG_NOSYSTEM="1",
               PRE_COMMIT_HOME=str(home / "pre-commit-home"), PRE_COMMIT_COLOR="never",
               PATH=str(BIN) + os.pathsep + env.get("PATH", ""))
    return env


def _new_repo(root: Path, env: dict[str, str]) -> Repo:
    root.mkdir(parents=True, exist_ok=True)
    repo = Repo(root, env)
    repo.git("init", "-q")
    return repo


@pytest.fixture
def repo(tmp_path: Path, git_env: dict[str, str]) -> Repo:
    """An empty repository (no hook installed)."""
    return _new_repo(tmp_path / "repo", git_env)


def local_config() -> str:
    """A ``.pre-commit-config.yaml`` with this project's hooks as ``language: system`` local
    hooks (no environment to build), taken from its ``.pre-commit-hooks.yaml`` so that
    ``types_or`` and the entries are the ones users get. JSON is YAML."""
    import yaml  # pre-commit's own dependency

    hooks = []
    for hook in yaml.safe_load((PROJECT / ".pre-commit-hooks.yaml").read_text()):
        command, *rest = hook["entry"].split()
        hook = {**hook, "language": "system", "entry": " ".join([str(BIN / command), *rest])}
        if hook["id"].endswith("-check"):
            hook["stages"] = ["manual"]  # run on demand: `pre-commit run --hook-stage manual`
        hooks.append(hook)
    return json.dumps({"repos": [{"repo": "local", "hooks": hooks}]}, indent=2) + "\n"


@pytest.fixture
def pc_repo(tmp_path: Path, git_env: dict[str, str]) -> Repo:
    """A repository with the pre-commit framework installed and this project's hooks
    configured (the configuration is staged, not committed)."""
    repo = _new_repo(tmp_path / "pc", git_env)
    repo.write(".pre-commit-config.yaml", local_config())
    repo.git("add", ".pre-commit-config.yaml")
    done = repo.pre_commit("install")
    assert done.returncode == 0, repo.text(done)
    return repo


@pytest.fixture
def git_hook_repo(tmp_path: Path, git_env: dict[str, str]) -> Repo:
    """A repository whose pre-commit hook is a copy of this project's ``hooks/pre-commit``."""
    repo = _new_repo(tmp_path / "plain", git_env)
    target = repo.root / ".git" / "hooks" / "pre-commit"
    target.write_bytes((PROJECT / "hooks" / "pre-commit").read_bytes())
    target.chmod(0o755)
    return repo
