"""The gate on an unchanged commit: no finding in N repeated runs (docs/ci-gate.md).

Unpacks a real project's source distribution (default: cachetools 7.0.0, a git repository of
one commit), saves a baseline once, then runs ``--telemetry-compare`` against it ``--runs``
times (default 20) and counts the findings of each run, once without and once with
pytest-xdist (``-n 2``, a baseline saved with ``-n 2``). Then, to show the timing rule is not
blind, a copy where one function sleeps 2 ms per call is compared once: it must be flagged.

    python bench/gate_stability.py [--workdir DIR] [--runs 20] [--project cachetools==7.0.0]

Prints one line per run (findings, the timing model's drift and noise) and a summary; exits
1 when an unchanged run has a finding or the slowed function is not flagged.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "-c", "commit.gpgsign=false"]


def sh(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, check=check, capture_output=True, text=True, timeout=900)


def prepare(spec: str, workdir: Path) -> Path:
    downloads = workdir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    name, _, version = spec.partition("==")
    found = [p for p in downloads.iterdir() if p.name.startswith(f"{name}-{version}")]
    if not found:
        sh(sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", spec, "-d", str(downloads))
        found = [p for p in downloads.iterdir() if p.name.startswith(f"{name}-{version}")]
    project = workdir / "project"
    if project.exists():
        shutil.rmtree(project)
    with tarfile.open(found[0]) as tar:
        tar.extractall(workdir / "unpacked", filter="data")
    shutil.move(str(next((workdir / "unpacked").iterdir())), project)
    shutil.rmtree(workdir / "unpacked")
    (project / ".gitignore").write_text(".telemetry/\n.telemetry_cache/\n__pycache__/\n*.egg-info/\n")
    sh(*GIT, "init", "-q", "-b", "main", cwd=project)
    sh(*GIT, "add", "-A", cwd=project)
    sh(*GIT, "commit", "-q", "-m", spec, cwd=project)
    return project


def run(project: Path, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "GITHUB_"))}
    env["PYTHONPATH"] = "src" if (project / "src").is_dir() else "."
    done = sh(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *args,
              cwd=project, env=env, check=False)
    return done.returncode, done.stdout + done.stderr


def findings(output: str) -> tuple[int, str, str]:
    match = re.search(r"^findings: (.*)$", output, re.M)
    timing = re.search(r"^(timing .*)$", output, re.M)
    listed = "\n".join(line for line in output.splitlines() if line.startswith("  ") and " -> " in line
                       or line.startswith("  ") and ": time per call" in line)
    count = sum(int(n) for n in re.findall(r"(\d+) [a-z-]+", match.group(1))) if match else 0
    return count, timing.group(1) if timing else "", listed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/telemetry-gate-stability"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--project", default="cachetools==7.0.0")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    project = prepare(args.project, workdir)
    bad = 0
    for label, extra in (("one process", []), ("pytest-xdist -n 2", ["-n", "2"])):
        baseline = workdir / f"baseline-{len(extra)}.json.gz"
        code, out = run(project, *extra, f"--telemetry-save={baseline}")
        saved = re.search(r"saved the baseline .*", out)
        print(f"{label}: {saved.group(0) if saved else out[-2000:]}")
        totals = []
        for index in range(1, args.runs + 1):
            started = time.perf_counter()
            code, out = run(project, *extra, f"--telemetry-compare={baseline}", "--telemetry-fail-on=calls:+0,time:+25%,"
                            "exceptions,new,vanished")
            count, timing, listed = findings(out)
            totals.append(count)
            print(f"  run {index:>2}: exit {code}, {count} findings, {time.perf_counter() - started:.1f} s; {timing}")
            if listed:
                print(listed)
            if count or code:
                bad += 1
        print(f"{label}: {sum(1 for t in totals if t)} of {len(totals)} unchanged runs with a finding "
              f"({sum(totals)} findings in all)")
    # The rule is not blind: one function 2 ms slower per call is flagged.
    slowed = workdir / "slowed"
    if slowed.exists():
        shutil.rmtree(slowed)
    shutil.copytree(project, slowed)
    module = next(p for p in slowed.rglob("__init__.py") if p.parent.name == "cachetools")
    text = module.read_text()
    edited = text.replace("    def __missing__(self, key):\n        raise KeyError(key)\n",
                          "    def __missing__(self, key):\n        import time; time.sleep(0.002)\n"
                          "        raise KeyError(key)\n", 1)
    module.write_text(edited)
    code, out = run(slowed, f"--telemetry-compare={workdir / 'baseline-0.json.gz'}", "--telemetry-fail-on=time:+25%")
    flagged = re.findall(r"^  time:\+25%: (.*)$", out, re.M)
    print(f"slowed Cache.__missing__ by 2 ms a call: exit {code}; flagged: {flagged or 'nothing'}")
    if edited == text or not any("__missing__" in f for f in flagged):
        bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
