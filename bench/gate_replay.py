"""Replay a real project's history and check the telemetry gate on it (docs/ci-gate.md).

No network git is reachable from the development machines, so the history is built from
the project's released source distributions on the package index: every release from
``--first`` on becomes one commit per changed file (non-Python files first, then the
package's modules, then the tests), so each commit is a real change of one file taken from
the project's own history, and intermediate commits may well fail (new code, old tests).

For every commit C (after the first), with the baseline saved at C's parent:

- the full suite runs (the truth: which tests fail);
- ``--telemetry-affected=<parent>`` runs the selected tests: every test the full suite
  fails must be among them and fail there too;
- ``pytest --testmon`` runs what pytest-testmon selects (its data from the parent's run);
- ``--telemetry-compare=<parent's baseline> --telemetry-save=<C's>`` records the findings.

Then two commits are added on top of the last release: a comment-only change (the gate must
find nothing) and a change that makes an algorithm do more work (it must flag calls).

    python bench/gate_replay.py [--workdir DIR] [--project cachetools] [--first 3.1.0] [--limit N]
    python bench/gate_replay.py --gate-only ...     # the gate alone on every commit (faster)

Prints one line per commit and a summary; writes ``replay.json`` in the work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIT = ["git", "-c", "user.name=replay", "-c", "user.email=replay@example.invalid", "-c", "commit.gpgsign=false"]


def sh(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = True,
       timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, check=check, capture_output=True, text=True, timeout=timeout)


def version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.]", version))


def download(project: str, first: str, folder: Path) -> list[tuple[str, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = sh(sys.executable, "-m", "pip", "index", "versions", project).stdout
    versions = [v.strip() for v in out.splitlines()[1].split(":", 1)[1].split(",")]
    versions = sorted((v for v in versions if re.fullmatch(r"\d+(\.\d+)*", v) and version_key(v) >= version_key(first)),
                      key=version_key)
    found = []
    for version in versions:
        existing = [p for p in folder.iterdir() if p.name.startswith(f"{project}-{version}.tar")]
        if not existing:
            sh(sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
               f"{project}=={version}", "-d", str(folder), check=False)
            existing = [p for p in folder.iterdir() if p.name.startswith(f"{project}-{version}.tar")]
        if existing:
            found.append((version, existing[0]))
    return found


def unpack(archive: Path, into: Path) -> dict[str, bytes]:
    """The release's files (metadata folders left out), by path."""
    files: dict[str, bytes] = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            parts = member.name.split("/")[1:]
            if not parts or any(p.endswith(".egg-info") for p in parts) or parts[-1] == "PKG-INFO":
                continue
            handle = tar.extractfile(member)
            if handle is not None:
                files["/".join(parts)] = handle.read()
    return files


def order(path: str) -> tuple[int, str]:
    if not path.endswith(".py"):
        return 0, path
    if path.startswith("tests/") or "/tests/" in path:
        return 2, path
    return 1, path


def build_history(releases: list[tuple[str, Path]], repo: Path, limit: int | None) -> list[tuple[str, str]]:
    """(commit, message) of every commit, oldest first."""
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    sh(*GIT, "init", "-q", "-b", "main", cwd=repo)
    (repo / ".gitignore").write_text(".telemetry/\n.telemetry_cache/\n.testmondata*\n__pycache__/\n.pytest_cache/\n*.egg-info/\n")
    current: dict[str, bytes] = {}
    commits: list[tuple[str, str]] = []
    for version, archive in releases:
        files = unpack(archive, repo)
        changed = sorted({p for p in set(files) | set(current) if files.get(p) != current.get(p)}, key=order)
        if not commits:
            changed = [None]  # type: ignore[list-item]  # the first release: one commit
        for path in changed:
            paths = sorted(files) if path is None else [path]
            for name in paths:
                target = repo / name
                if name in files:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(files[name])
                elif target.exists():
                    target.unlink()
            sh(*GIT, "add", "-A", cwd=repo)
            message = f"{version}: {'release' if path is None else path}"
            done = sh(*GIT, "commit", "-q", "-m", message, cwd=repo, check=False)
            if done.returncode == 0:
                commits.append((sh("git", "rev-parse", "HEAD", cwd=repo).stdout.strip(), message))
            if limit and len(commits) >= limit:
                return commits
        current = files
    return commits


def junit(path: Path) -> dict[str, str]:
    """test id -> passed | failed | skipped."""
    if not path.exists():
        return {}
    found = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        key = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            found[key] = "failed"
        elif case.find("skipped") is not None:
            found[key] = "skipped"
        else:
            found[key] = "passed"
    return found


class Replay:
    def __init__(self, workdir: Path, python: str) -> None:
        self.workdir = workdir
        self.repo = workdir / "repo"
        self.python = python
        self.out = workdir / "out"
        self.baselines = workdir / "baselines"

    def env(self) -> dict:
        path = "src" if (self.repo / "src").is_dir() else "."
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "GITHUB_"))}
        env.update(PYTHONPATH=path, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
        return env

    def pytest(self, name: str, *args: str) -> tuple[dict[str, str], float, str]:
        xml = self.out / f"{name}.xml"
        if xml.exists():
            xml.unlink()
        started = time.perf_counter()
        # pytest-testmon needs pytest's cache; the other runs go without it.
        cache = [] if "--testmon" in args else ["-p", "no:cacheprovider"]
        done = sh(self.python, "-m", "pytest", "-q", *cache, "-p", "no:randomly",
                  f"--junitxml={xml}", *args, cwd=self.repo, env=self.env(), check=False, timeout=900)
        return junit(xml), time.perf_counter() - started, done.stdout + done.stderr

    def checkout(self, commit: str) -> None:
        sh("git", "checkout", "-q", "--force", commit, cwd=self.repo)
        sh("git", "clean", "-q", "-fd", cwd=self.repo)  # untracked files only; ignored ones stay

    def run(self, commits: list[tuple[str, str]], gate_only: bool = False) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.baselines.exists():
            shutil.rmtree(self.baselines)
        self.baselines.mkdir(parents=True)
        for stale in [*self.repo.glob(".testmondata*"), self.workdir / "rows.jsonl"]:
            if stale.exists():
                stale.unlink()
        rows = []
        first, _ = commits[0]
        self.checkout(first)
        self.pytest("save", f"--telemetry-save={self.baselines / (first + '.json.gz')}")
        if not gate_only:
            self.pytest("testmon", "--testmon")
        for index, (commit, message) in enumerate(commits[1:], 1):
            parent = commits[index - 1][0]
            self.checkout(commit)
            if gate_only:
                rows.append(self.gate_row(index, commit, message, parent))
                continue
            full, t_full, _ = self.pytest("full")
            affected, t_aff, aff_out = self.pytest("affected", f"--telemetry-affected={parent}",
                                                   "-o", f"telemetry_baseline={self.baselines / (parent + '.json.gz')}")
            testmon, t_mon, _ = self.pytest("testmon", "--testmon")
            compared, _t, cmp_out = self.pytest("compare", f"--telemetry-compare={self.baselines / (parent + '.json.gz')}",
                                                f"--telemetry-save={self.baselines / (commit + '.json.gz')}")
            failed_full = {t for t, o in full.items() if o == "failed"}
            failed_aff = {t for t, o in affected.items() if o == "failed"}
            failed_mon = {t for t, o in testmon.items() if o == "failed"}
            everything = re.search(r"every test runs: (.*)", aff_out)
            findings = re.search(r"^findings: (.*)$", cmp_out, re.M)
            row = {"commit": commit[:10], "message": message, "tests": len(full), "failed": len(failed_full),
                   "affected_run": len(affected), "affected_failed": len(failed_aff),
                   "missed_by_affected": sorted(failed_full - failed_aff),
                   "testmon_run": len(testmon), "testmon_failed": len(failed_mon),
                   "missed_by_testmon": sorted(failed_full - failed_mon),
                   "everything": everything.group(1) if everything else None,
                   "findings": findings.group(1) if findings else "",
                   "seconds": {"full": round(t_full, 2), "affected": round(t_aff, 2), "testmon": round(t_mon, 2)}}
            rows.append(row)
            with open(self.workdir / "rows.jsonl", "a") as handle:  # partial results survive a stop
                handle.write(json.dumps(row) + "\n")
            print(f"{index:>4} {message[:48]:<48} tests {row['tests']:>4} failed {row['failed']:>3} | affected "
                  f"{row['affected_run']:>4} missed {len(row['missed_by_affected'])} | testmon {row['testmon_run']:>4} "
                  f"missed {len(row['missed_by_testmon'])} | {row['findings'] or '-'}", flush=True)
        return {"rows": rows}

    def gate_row(self, index: int, commit: str, message: str, parent: str) -> dict:
        """(``--gate-only``) The gate alone: compared with the parent's baseline, saved."""
        compared, _t, out = self.pytest("compare", f"--telemetry-compare={self.baselines / (parent + '.json.gz')}",
                                        f"--telemetry-save={self.baselines / (commit + '.json.gz')}")
        findings = re.search(r"^findings: (.*)$", out, re.M)
        row = {"commit": commit[:10], "message": message, "tests": len(compared),
               "code": _changes_code(message), "findings": findings.group(1) if findings else ""}
        with open(self.workdir / "gate_rows.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"{index:>4} {message[:48]:<48} tests {row['tests']:>4} | {row['findings'] or '-'}", flush=True)
        return row

    def synthetic(self, last: str) -> list[dict]:
        """A comment-only commit and a more-work commit on top of the last one, each compared
        with the baseline of its parent."""
        results = []
        module = next(p for p in sorted((self.repo / ("src" if (self.repo / "src").is_dir() else ".")).rglob("*.py"))
                      if p.name == "__init__.py" and p.parent.name == "cachetools")
        cases = [
            ("comment only", lambda text: text.replace("    def __setitem__(self, key, value):\n",
                                                      "    def __setitem__(self, key, value):\n"
                                                      "        # a comment, nothing else\n", 1)),
            ("more work", lambda text: re.sub(r"^( +)(item)?size = self\.getsizeof\(value\)$",
                                              r"\1\2size = max(self.getsizeof(value), self.getsizeof(value))",
                                              text, count=1, flags=re.M)),
        ]
        parent = last
        for name, edit in cases:
            self.checkout(parent)
            text = module.read_text()
            changed = edit(text)
            if changed == text:
                results.append({"case": name, "error": "the edit found nothing to change"})
                print(f"synthetic {name}: the edit found nothing to change", flush=True)
                continue
            module.write_text(changed)
            sh(*GIT, "commit", "-q", "-am", f"synthetic: {name}", cwd=self.repo)
            commit = sh("git", "rev-parse", "HEAD", cwd=self.repo).stdout.strip()
            _r, _t, out = self.pytest("synthetic", f"--telemetry-compare={self.baselines / (parent + '.json.gz')}",
                                      "--telemetry-fail-on=calls:+10%",
                                      f"--telemetry-save={self.baselines / (commit + '.json.gz')}")
            affected, _t2, aff_out = self.pytest("synthetic-affected", f"--telemetry-affected={parent}",
                                                 "-o", f"telemetry_baseline={self.baselines / (parent + '.json.gz')}")
            findings = re.search(r"^findings: (.*)$", out, re.M)
            gate = re.findall(r"^  calls:\+10%: (.*)$", out, re.M)
            results.append({"case": name, "commit": commit[:10], "findings": findings.group(1) if findings else "none",
                            "failed_gate": "FAILED telemetry gate" in out, "violations": gate[:5],
                            "affected_run": len(affected)})
            print(f"synthetic {name}: findings {results[-1]['findings']}; gate failed: {results[-1]['failed_gate']}; "
                  f"affected ran {len(affected)} tests", flush=True)
            for line in gate[:3]:
                print(f"    {line}")
            parent = commit
        return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/telemetry-gate-replay"))
    parser.add_argument("--project", default="cachetools")
    parser.add_argument("--first", default="3.1.0")
    parser.add_argument("--limit", type=int, default=None, help="stop after this many commits")
    parser.add_argument("--python", default=None,
                        help="interpreter with this package, pytest-xdist and pytest-testmon installed "
                             "(default: a virtualenv made in the work folder)")
    parser.add_argument("--gate-only", action="store_true",
                        help="only the gate (--telemetry-compare against the parent's baseline) on every commit: "
                             "which commits it reports findings on, those that change no code above all")
    parser.add_argument("--summarize", action="store_true",
                        help="print the summary of the rows a (maybe stopped) replay kept in rows.jsonl")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    if args.summarize:
        name, summary = ("gate_rows.jsonl", summarize_gate) if args.gate_only else ("rows.jsonl", summarize)
        rows = [json.loads(line) for line in (workdir / name).read_text().splitlines() if line.strip()]
        print(json.dumps(summary(rows), indent=1))
        return 0
    workdir.mkdir(parents=True, exist_ok=True)
    python = args.python
    if python is None:
        venv = workdir / "venv"
        python = str(venv / "bin" / "python")
        if not Path(python).exists():
            sh(sys.executable, "-m", "venv", str(venv))
            sh(python, "-m", "pip", "install", "-q", "-e", str(ROOT), "pytest-xdist", "pytest-testmon")
    releases = download(args.project, args.first, workdir / "sdists")
    print(f"{len(releases)} releases of {args.project} from {args.first}: {releases[0][0]} .. {releases[-1][0]}")
    replay = Replay(workdir, python)
    commits = build_history(releases, replay.repo, args.limit)
    print(f"{len(commits)} commits")
    if args.gate_only:
        stale = workdir / "gate_rows.jsonl"
        if stale.exists():
            stale.unlink()
        gate = summarize_gate(replay.run(commits, gate_only=True)["rows"])
        print(json.dumps(gate, indent=1))
        return 0 if not gate["without_code_with_findings"] else 1
    result = replay.run(commits)
    result["synthetic"] = replay.synthetic(commits[-1][0])
    summary = summarize(result["rows"])
    result["summary"] = summary
    (workdir / "replay.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))
    return 0 if summary["missed_by_affected"] == 0 else 1


def _changes_code(message: str) -> bool:
    """Whether a replayed commit (message ``VERSION: PATH``) changed Python code."""
    return message.split(": ", 1)[-1].endswith(".py")


def summarize_gate(rows: list[dict]) -> dict:
    return {"commits": len(rows), "with_findings": sum(1 for r in rows if r["findings"]),
            "code_commits": sum(1 for r in rows if r["code"]),
            "without_code": sum(1 for r in rows if not r["code"]),
            "without_code_with_findings": [f"{r['message']}: {r['findings']}" for r in rows
                                           if not r["code"] and r["findings"]]}


def summarize(rows: list[dict]) -> dict:
    full = sum(r["tests"] for r in rows)
    aff = sum(r["affected_run"] for r in rows)
    mon = sum(r["testmon_run"] for r in rows)
    return {
        "commits": len(rows), "tests_full": full, "tests_affected": aff, "tests_testmon": mon,
        "commits_failing": sum(1 for r in rows if r["failed"]),
        "failures_full": sum(r["failed"] for r in rows),
        "missed_by_affected": sum(len(r["missed_by_affected"]) for r in rows),
        "missed_by_testmon": sum(len(r["missed_by_testmon"]) for r in rows),
        "affected_more_than_testmon": sum(1 for r in rows if r["affected_run"] > r["testmon_run"]),
        "affected_everything": sum(1 for r in rows if r["everything"]),
        "commits_with_findings": sum(1 for r in rows if r["findings"]),
        "commits_affected_ran_more": [r["message"] for r in rows if r["affected_run"] > r["testmon_run"]],
        "commits_testmon_missed": [r["message"] for r in rows if r["missed_by_testmon"]],
        "commits_full_failed": [r["message"] for r in rows if r["failed"]],
    }


if __name__ == "__main__":
    sys.exit(main())
