"""Real-world conformance: real projects' own test suites, plain and with --inject-telemetry.

For each project of the corpus: download its source distribution from the package index,
unpack it, install it (editable) with pytest into a virtualenv where this package is installed
from the working tree (built, as users get it), and run its suite from its folder: once plain,
then with ``--inject-telemetry`` on a cold cache (its own package instrumented, its tests
not), then warm and plain, interleaved: ``--repeats`` pairs (default 3), more for a short
suite (as many as fit in ``--budget`` seconds of plain runs, at most 15). Outcomes are
compared test by test (from JUnit XML); the wall-time ratio instrumented/plain uses the
fastest warm run and the fastest plain run of the interleaved pairs (the cold ratio: the cold
run over that plain run). Printed beside it, for reading the noise: the
ratio of the medians of the same runs, the paired ratio (the median over the pairs of each
warm run over the plain run right after it: a slow spell of the host that spans a pair moves
both of its runs) and the ratio of the fastest CPU times (user + system of pytest and its
children). Every run may write Python's bytecode cache
(``PYTHONDONTWRITEBYTECODE`` is taken out of the environment, as on a developer's machine):
the first plain run leaves the project's modules and pytest's rewritten test modules
compiled, and every timed run reads them. With it set, each plain run compiled every module
from source while the warm runs read the instrumented modules' code from the cache, which
made the warm ratios look better than a user sees them (toolz: 1.07 then, ~1.26 with the
cache). With ``--coverage``, after the timed runs: one plain run,
one cold run (the project's cache removed first) and one warm run under ``pytest --cov=.
--cov-branch``, and whether every file's covered and missed lines and branches are the same
in each instrumented run as in the plain one. ``--style`` sets the plugin's style
(``telemetry_style``) for every instrumented run; without it, the plugin's default.

    python bench/conformance.py [--workdir DIR] [--only NAME ...] [--repeats N] [--budget S] [--coverage]
                                [--style try|with]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import NamedTuple

import tomllib

ROOT = Path(__file__).resolve().parent.parent
CORPUS = [
    ("more-itertools", "11.2.1"),
    ("toolz", "1.2.0"),
    ("cachetools", "8.0.1"),
    ("tabulate", "0.10.0"),
    ("parse", "1.22.4"),
    ("markupsafe", "3.0.4"),
]


def sh(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, check=check, capture_output=True, text=True)


def fetch(name: str, version: str, workdir: Path) -> Path:
    """The unpacked source distribution's folder."""
    downloads = workdir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    found = [p for p in downloads.iterdir() if p.name.lower().replace("_", "-").startswith(f"{name}-{version}".lower())]
    if not found:
        sh(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           f"{name}=={version}", "-d", str(downloads))
        found = [p for p in downloads.iterdir()
                 if p.name.lower().replace("_", "-").startswith(f"{name}-{version}".lower())]
    archive = found[0]
    target = workdir / "src" / f"{name}-{version}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(dir=target.parent))
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z:
                z.extractall(temp)
        else:
            with tarfile.open(archive) as t:
                t.extractall(temp, filter="data")
        (inner,) = list(temp.iterdir())
        inner.rename(target)
        temp.rmdir()
    return target


def make_venv(workdir: Path) -> Path:
    venv = workdir / "venv"
    python = venv / "bin" / "python"
    if not python.exists():
        sh(sys.executable, "-m", "venv", str(venv))
        sh(str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip")
        # pytest-cov: some projects' own configuration passes --cov options.
        sh(str(python), "-m", "pip", "install", "--quiet", "pytest", "pytest-cov")
    # This package as users get it: built and installed (pip byte-compiles it), not an
    # editable checkout whose modules a PYTHONDONTWRITEBYTECODE shell would recompile on
    # every run; reinstalled each time, so the figures are the working tree's.
    # Its dependencies first (a fresh virtualenv has none of them; pip skips those present),
    # as pyproject.toml names them, then the package itself without touching them.
    with open(ROOT / "pyproject.toml", "rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    sh(str(python), "-m", "pip", "install", "--quiet", *dependencies)
    sh(str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(ROOT))
    return python


def outcomes(junit: Path) -> dict[str, str]:
    """test id -> passed / failed / error / skipped."""
    result: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcome = "failed" if "failure" in kinds else "error" if "error" in kinds else \
            "skipped" if "skipped" in kinds else "passed"
        result[test] = outcome
    return result


class Run(NamedTuple):
    wall_s: float
    cpu_s: float  # user + system time of pytest and its children
    outcomes: dict[str, str]
    stdout: str


def run_suite(python: Path, project: Path, label: str, *extra: str) -> Run:
    junit = project / f".conformance-{label}.xml"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "TELEMETRY_INJECT_")) and k != "PYTHONDONTWRITEBYTECODE"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = sh(str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *extra,
              cwd=project, env=env, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(elapsed, cpu, outcomes(junit) if junit.exists() else {}, done.stdout)


def instrumentation_problem(stdout: str) -> str | None:
    """Why an instrumented run did not instrument the project (None: it did)."""
    found = re.search(r"^(\d+) functions instrumented in (\d+) files", stdout, re.M)
    if found is None:
        return "no telemetry summary in the instrumented run's output: " + stdout[-300:]
    problems = [line for line in stdout.splitlines() if line.startswith("not instrumented: ")]
    if int(found.group(1)) == 0 or problems:
        return f"{found.group(0)}; {len(problems)} modules not instrumented: {'; '.join(problems[:3])}"
    return None


def llm_requests(runs: list[Run]) -> int | None:
    """The LLM requests the runs' telemetry summaries report, added up."""
    total = 0
    for run in runs:
        found = re.search(r"; LLM requests: (\d+)$", run.stdout, re.M)
        if found is None:
            return None
        total += int(found.group(1))
    return total


COVERAGE_KEYS = ("executed_lines", "missing_lines", "executed_branches", "missing_branches")


def coverage_of(python: Path, project: Path, label: str, *extra: str) -> dict:
    """Lines and branches covered and missed, per file under the project's folder (its tests
    included): pytest-cov's JSON report of one run (line and branch coverage)."""
    out = project / f".conformance-coverage-{label}.json"
    out.unlink(missing_ok=True)
    run_suite(python, project, f"coverage-{label}", "--cov=.", "--cov-branch", f"--cov-report=json:{out}", *extra)
    files = json.loads(out.read_text())["files"]
    return {name: {key: sorted(map(tuple, data[key])) if "branches" in key else sorted(data[key])
                   for key in COVERAGE_KEYS}
            for name, data in files.items() if not name.startswith(".telemetry_cache")}


def compare_coverage(plain: dict, instrumented: dict) -> dict:
    """Whether the instrumented run covered and missed the same lines and branches as the
    plain one in every file; what differs (the first few)."""
    differences = []
    for name in sorted(plain):
        if name not in instrumented:
            differences.append(f"{name}: not measured")
            continue
        for key in COVERAGE_KEYS:
            if plain[name][key] != instrumented[name][key]:
                moved = sorted(set(plain[name][key]) ^ set(instrumented[name][key]))
                differences.append(f"{name}: {key} {moved[:5]}")
    return {"same": not differences and bool(plain), "files": len(plain),
            "lines": sum(len(f["executed_lines"]) + len(f["missing_lines"]) for f in plain.values()),
            "branches": sum(len(f["executed_branches"]) + len(f["missing_branches"]) for f in plain.values()),
            "differences": differences[:10]}


def summarise(results: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for outcome in results.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def paired_ratio(warm_s: list[float], plain_s: list[float]) -> float:
    """The median over the interleaved pairs of the warm run's time over its plain run's
    (the runs of a pair follow each other, so a slow spell of the host that spans both moves
    both; the fastest-of ratio compares two runs that may be minutes apart)."""
    if len(warm_s) != len(plain_s) or not warm_s:
        raise ValueError(f"{len(warm_s)} warm runs against {len(plain_s)} plain ones: no pairs")
    return statistics.median(w / p for w, p in zip(warm_s, plain_s))


def conform(name: str, version: str, workdir: Path, python: Path, repeats: int = 3,
            budget_s: float = 40.0, most: int = 15, coverage: bool = False, style: str | None = None) -> dict:
    project = fetch(name, version, workdir)
    plugin = ("--inject-telemetry", *(("-o", f"telemetry_style={style}") if style else ()))
    sh(str(python), "-m", "pip", "install", "--quiet", "-e", str(project))
    shutil.rmtree(project / ".telemetry_cache", ignore_errors=True)
    first = run_suite(python, project, "plain")
    plain, plain_s = first.outcomes, first.wall_s
    report = project / ".conformance-telemetry.json"
    cold_run = run_suite(python, project, "cold", *plugin, f"--telemetry-report={report}")
    cold, cold_s = cold_run.outcomes, cold_run.wall_s
    problem = instrumentation_problem(cold_run.stdout)
    if problem:  # a run that instruments nothing proves nothing: stop before timing it
        return {"project": f"{name} {version}", "error": problem}
    # Warm and plain runs interleaved, the fastest of each compared: on a noisy machine the
    # minimum is the run least disturbed (timeit's advice). A short suite gets more pairs
    # (about budget_s seconds of plain runs, at most `most` pairs): one lucky or unlucky run
    # of a one-second suite moves its ratio by tenths. Only these pairs are timed against
    # each other: the first plain run (for the outcomes) ran before the cold run, apart from
    # them, and one more plain run than warm ones would give plain one more draw at the
    # fastest (a lucky first run once made a suite's ratio 1.42 where its pairs said 1.13).
    pairs = max(repeats, min(most, math.ceil(budget_s / max(plain_s, 0.01))))
    warms, plains = [], []
    same_plain = True
    for _ in range(pairs):
        warm_run = run_suite(python, project, "warm", *plugin)
        warms.append(warm_run)
        plain_run = run_suite(python, project, "plain2")
        plains.append(plain_run)
        same_plain = same_plain and plain == plain_run.outcomes
    warm, warm_line = warm_run.outcomes, warm_run.stdout
    base, warm_s = min(r.wall_s for r in plains), min(r.wall_s for r in warms)
    # The generated telemetry items are extra tests: compare the project's own tests only.
    own = {k: v for k, v in warm.items() if not k.endswith("::telemetry")}
    own_cold = {k: v for k, v in cold.items() if not k.endswith("::telemetry")}
    items = {k: v for k, v in warm.items() if k.endswith("::telemetry")}
    summary_line = next((line for line in warm_line.splitlines() if "functions instrumented" in line), "")
    extra = {}
    if coverage:  # after the timed runs: coverage slows a suite down
        plain_coverage = coverage_of(python, project, "plain")
        shutil.rmtree(project / ".telemetry_cache", ignore_errors=True)
        extra["coverage_cold"] = compare_coverage(plain_coverage, coverage_of(python, project, "cold", *plugin))
        extra["coverage"] = compare_coverage(plain_coverage, coverage_of(python, project, "warm", *plugin))
    return {**extra,
        "project": f"{name} {version}", "plain": summarise(plain), "instrumented": summarise(own),
        "identical": plain == own == own_cold and same_plain,
        "differences": sorted(k for k in set(plain) | set(own) if plain.get(k) != own.get(k))[:10],
        "telemetry_items": summarise(items), "ratio_warm": warm_s / base, "ratio_cold": cold_s / base,
        # Beside the verdict's estimator: medians of the same runs (one lucky plain run moves
        # the fastest-of ratio; it moves this one less).
        "ratio_warm_medians": statistics.median(r.wall_s for r in warms) / statistics.median(r.wall_s for r in plains),
        # CPU time (user + system), fastest of each: less moved by a busy host than wall time.
        "ratio_warm_cpu": min(r.cpu_s for r in warms) / min(r.cpu_s for r in plains),
        # Each warm run against the plain run right after it, the median of those ratios: a
        # slow spell of the host that spans a pair moves both of its runs.
        "ratio_warm_paired": paired_ratio([r.wall_s for r in warms], [r.wall_s for r in plains]),
        "plain_s": base, "warm_s": warm_s, "cold_s": cold_s, "summary": summary_line,
        "pairs": pairs, "first_plain_s": plain_s, "style": style or "(default)",
        "plain_runs_s": [r.wall_s for r in plains], "warm_runs_s": [r.wall_s for r in warms],
        "plain_runs_cpu_s": [r.cpu_s for r in plains], "warm_runs_cpu_s": [r.cpu_s for r in warms],
        # As the plugin's summary counts them, over the cold run and every warm run (None:
        # a summary without the count).
        "llm_calls": llm_requests([cold_run, *warms]),
        "report": str(report),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "telemetry-conformance")
    parser.add_argument("--only", nargs="*", help="project names to run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--repeats", type=int, default=3, help="warm and plain runs each, interleaved (at least)")
    parser.add_argument("--budget", type=float, default=40.0,
                        help="seconds of plain runs a short suite gets (more pairs, at most 15)")
    parser.add_argument("--coverage", action="store_true",
                        help="also compare line and branch coverage (pytest --cov --cov-branch), plain, cold and warm")
    parser.add_argument("--style", choices=("try", "with"),
                        help="the plugin's style in the instrumented runs (default: the plugin's default)")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    python = make_venv(args.workdir)
    rows = []
    for name, version in CORPUS:
        if args.only and name not in args.only:
            continue
        try:
            rows.append(conform(name, version, args.workdir, python, args.repeats, args.budget,
                                coverage=args.coverage, style=args.style))
        except subprocess.CalledProcessError as exc:
            rows.append({"project": f"{name} {version}", "error": (exc.stderr or exc.stdout or str(exc))[-500:]})
        print(json.dumps(rows[-1]), file=sys.stderr)
    header = (f"{'project':<24} {'plain':<32} {'instrumented':<32} {'same':<5} {'warm x':>7} {'cold x':>7} "
              f"{'medians x':>9} {'paired x':>8} {'cpu x':>6} {'pairs':>5} {'LLM':>4}  functions")
    print(header)
    for row in rows:
        if "error" in row:
            print(f"{row['project']:<24} error: {row['error']}")
            continue
        functions = row["summary"].split(" (")[0]
        print(f"{row['project']:<24} {row['plain']:<32} {row['instrumented']:<32} "
              f"{'yes' if row['identical'] else 'NO':<5} {row['ratio_warm']:>7.2f} {row['ratio_cold']:>7.2f} "
              f"{row['ratio_warm_medians']:>9.2f} {row['ratio_warm_paired']:>8.2f} {row['ratio_warm_cpu']:>6.2f} "
              f"{row['pairs']:>5} "
              f"{'?' if row['llm_calls'] is None else row['llm_calls']:>4}  {functions}")
        for key, run in (("coverage_cold", "cold"), ("coverage", "warm")):
            if key not in row:
                continue
            cov = row[key]
            print(f"{'':<24} coverage (lines and branches), {run}, the same: {'yes' if cov['same'] else 'NO'} "
                  f"({cov['files']} files, {cov['lines']} lines, {cov['branches']} branches)"
                  + "".join(f"\n{'':<26}{d}" for d in cov["differences"]))
    good = [r for r in rows if "error" not in r]
    if good:
        median = statistics.median(r["ratio_warm"] for r in good)
        medians = statistics.median(r["ratio_warm_medians"] for r in good)
        cpu = statistics.median(r["ratio_warm_cpu"] for r in good)
        paired = statistics.median(r["ratio_warm_paired"] for r in good)
        counts = [r["llm_calls"] for r in good]
        llm_total = "unknown" if None in counts else sum(counts)
        highest = max(good, key=lambda r: r["ratio_warm"])
        print(f"median warm ratio {median:.2f} (aim: <= 1.10, and every project <= 1.30: the highest "
              f"{highest['ratio_warm']:.2f}, {highest['project']}; of the medians-of-runs ratios: {medians:.2f}; "
              f"of the paired ratios: {paired:.2f} (the highest {max(r['ratio_warm_paired'] for r in good):.2f}); "
              f"of the CPU-time ratios: {cpu:.2f}); "
              "all identical: "
              f"{all(r['identical'] for r in good)}; LLM requests: {llm_total} "
              "(the plugin's count, cold and warm runs)")
        if any("coverage" in r for r in good):
            print(f"coverage the same in every project, cold and warm: "
                  f"{all(r[k]['same'] for r in good for k in ('coverage', 'coverage_cold') if k in r)}"
                  f" (style: {args.style or 'the plugin default'})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    same = all(r["identical"] and r.get("coverage", {"same": True})["same"]
               and r.get("coverage_cold", {"same": True})["same"] for r in good)
    return 0 if good and same and len(good) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
