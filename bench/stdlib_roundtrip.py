"""The standard-library round trip: instrument a copy of the interpreter's standard library.

Checks (each printed, and the exit status is 1 if one fails):
  - every output file parses under this interpreter (unless its original did not);
  - `--strip` gives back every file byte for byte;
  - a second run over the output changes nothing;
  - at least 99% of eligible functions are instrumented, and every skip has a reason;
  - BOMs, line endings and coding cookies are preserved.
Speed, each beside a baseline measured in the same run (read every file and parse it with
tree-sitter, on one core and on all): cold (empty cache), warm (cache filled, fresh process:
into the same output folder, into a new one, and without writing), peak memory.

    python bench/stdlib_roundtrip.py [--workdir DIR] [--sample N] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pytest_telemetry_inject.errors import UnsupportedSource
from pytest_telemetry_inject.sourcefile import detect_encoding

SKIP = shutil.ignore_patterns("site-packages", "__pycache__", "*.pyc")


def copy_stdlib(destination: Path, sample: int = 0) -> Path:
    source = Path(sysconfig.get_paths()["stdlib"])
    if not sample:
        shutil.copytree(source, destination, ignore=SKIP, symlinks=True)
        return destination
    # A sample: every Nth file, plus the ones with odd encodings and line endings.
    files = sorted(p for p in source.rglob("*.py") if "site-packages" not in p.parts)
    odd = [p for p in files if _is_odd(p.read_bytes())]
    step = max(1, len(files) // sample)
    for path in sorted(set(files[::step] + odd)):
        target = destination / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return destination


def _is_odd(data: bytes) -> bool:
    head = data[:200]
    return data.startswith(b"\xef\xbb\xbf") or b"\r\n" in data or b"coding" in head and b"utf-8" not in head.lower()


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if ".telemetry_cache" not in p.parts)


def _parse_one(path: str) -> int:
    from pytest_telemetry_inject.languages.python import _ts

    data = Path(path).read_bytes()
    _ts().parser.parse(data)
    return len(data)


def baseline(files: list[Path], workers: int) -> float:
    """Seconds to read every file and parse it with tree-sitter."""
    started = time.perf_counter()
    if workers <= 1:
        for path in files:
            _parse_one(str(path))
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_parse_one, [str(p) for p in files], chunksize=16))
    return time.perf_counter() - started


def run_cli(*args: str, cwd: Path, key: Path | None = None) -> tuple[float, dict, subprocess.CompletedProcess]:
    """One run of the command line in its own process, timed as a whole. ``key``: the
    cache key file of the machine it plays (default: the workdir's own)."""
    env = dict(os.environ, TELEMETRY_INJECT_KEY_FILE=str(key or cwd / "keys" / "this-machine.key"))
    env.pop("TELEMETRY_INJECT_CACHE_KEY", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest_telemetry_inject.cli", *args, "--json", "-q"],
                          cwd=cwd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    try:
        summary = json.loads(done.stdout)
    except ValueError:
        raise SystemExit(f"telemetry-inject failed ({done.returncode}): {done.stderr[-2000:]}") from None
    return elapsed, summary, done


def compiles(path: Path) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
            return True
        except (SyntaxError, ValueError):
            return False


def same_trees(a: Path, b: Path) -> list[str]:
    """Relative paths that differ (content, or present on one side only)."""
    def listing(root: Path) -> dict[str, Path]:
        return {str(p.relative_to(root)): p for p in root.rglob("*")
                if p.is_file() and ".telemetry_cache" not in p.parts}
    left, right = listing(a), listing(b)
    differ = sorted(set(left) ^ set(right))
    differ += sorted(k for k in set(left) & set(right) if left[k].read_bytes() != right[k].read_bytes())
    return differ


def preserved(original: Path, output: Path) -> list[str]:
    """Files whose BOM, line endings or coding cookie did not survive instrumentation."""
    problems = []
    for path in python_files(original):
        data = path.read_bytes()
        if not _is_odd(data):
            continue
        out = (output / path.relative_to(original)).read_bytes()
        if data.startswith(b"\xef\xbb\xbf") != out.startswith(b"\xef\xbb\xbf"):
            problems.append(f"{path.relative_to(original)}: BOM")
        if (b"\r\n" in data) != (b"\r\n" in out) or (data.count(b"\r\n") == data.count(b"\n")) != \
                (out.count(b"\r\n") == out.count(b"\n")):
            problems.append(f"{path.relative_to(original)}: line endings")
        try:
            if detect_encoding(data) != detect_encoding(out):
                problems.append(f"{path.relative_to(original)}: source encoding")
        except UnsupportedSource:
            pass  # a file the tool left alone for its encoding
    return problems


def roundtrip(workdir: Path, *, sample: int = 0, target: str = "runtime", workers: int = 0) -> dict:
    """Run the whole round trip in ``workdir``; return the figures and the checks."""
    lib = copy_stdlib(workdir / "lib", sample)
    files = python_files(lib)
    lines = sum(p.read_bytes().count(b"\n") for p in files)
    workers = workers or os.cpu_count() or 1
    common = ["--target", target, "--cache-dir", str(workdir / "cache")]
    if workers:
        common += ["--max-parallel", str(workers)]
    figures: dict = {"files": len(files), "lines": lines, "workers": workers}

    figures["baseline_1core_s"] = baseline(files, 1)
    figures["baseline_parallel_s"] = baseline(files, workers)

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    cold_s, cold, done = run_cli("lib", "-o", "out", *common, cwd=workdir)
    figures["peak_rss_mb"] = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    functions = cold["functions"]
    eligible = functions.get("instrumented", 0) + functions.get("failed", 0)
    figures.update(functions_total=functions["total"], instrumented=functions.get("instrumented", 0),
                   failed=functions.get("failed", 0), skipped=functions.get("skipped", 0),
                   skipped_reasons=functions["skipped_reasons"], failed_reasons=functions["failed_reasons"],
                   skipped_files=cold["files"]["skipped_reasons"], cold_s=cold_s)
    per_function = 1000 / max(functions["total"], 1)
    figures["cold_ms_per_function"] = cold_s * per_function

    warm_same_s, warm, _ = run_cli("lib", "-o", "out", *common, cwd=workdir)
    warm_new_s, _, _ = run_cli("lib", "-o", "out-warm", *common, cwd=workdir)
    warm_dry_s, _, _ = run_cli("lib", "--dry-run", *common, cwd=workdir)
    figures.update(warm_same_folder_s=warm_same_s, warm_new_folder_s=warm_new_s, warm_dry_run_s=warm_dry_s,
                   warm_ms_per_function=warm_same_s * per_function,
                   warm_new_folder_ms_per_function=warm_new_s * per_function,
                   warm_dry_run_ms_per_function=warm_dry_s * per_function,
                   warm_memo_hits=warm["cache"]["memo_hits"], warm_memo_misses=warm["cache"]["memo_misses"])
    # The same cache on another machine (another key): no memo carries its seal, so each is
    # checked against its original before use (then sealed there); the next run is sealed.
    foreign_cache = workdir / "cache-elsewhere"
    shutil.copytree(workdir / "cache", foreign_cache)
    other = workdir / "keys" / "another-machine.key"
    foreign_args = ["--target", common[1], "--cache-dir", str(foreign_cache), *common[4:]]
    foreign_s, foreign, _ = run_cli("lib", "--dry-run", *foreign_args, cwd=workdir, key=other)
    resealed_s, resealed, _ = run_cli("lib", "--dry-run", *foreign_args, cwd=workdir, key=other)
    figures.update(foreign_dry_run_s=foreign_s, foreign_ms_per_function=foreign_s * per_function,
                   foreign_memo_hits=foreign["cache"]["memo_hits"], foreign_memo_misses=foreign["cache"]["memo_misses"],
                   foreign_corrupt=foreign["cache"]["corrupt_entries"],
                   resealed_dry_run_s=resealed_s, resealed_ms_per_function=resealed_s * per_function,
                   resealed_memo_hits=resealed["cache"]["memo_hits"])

    out = workdir / "out"
    broken = [str(p.relative_to(out)) for p in python_files(out)
              if not compiles(p) and compiles(lib / p.relative_to(out))]
    _, again, _ = run_cli("out", "-o", "again", *common, cwd=workdir)
    _, _, stripped = run_cli("out", "--strip", "-o", "stripped", *common, cwd=workdir)
    checks = {
        "every output parses": not broken,
        "strip gives back every file byte for byte": not same_trees(lib, workdir / "stripped"),
        "a second run changes nothing": not same_trees(out, workdir / "again"),
        ">= 99% of eligible functions instrumented": eligible and figures["instrumented"] / eligible >= 0.99,
        "every skip has a reason": all(s["reason"] for s in cold["skipped"]),
        "BOM, line endings and cookies preserved": not preserved(lib, out),
        "the warm run is all file-memo hits": warm["cache"]["memo_misses"] == 0,
        "another machine's cache is checked, not trusted, and none of it is corrupt":
            figures["foreign_corrupt"] == 0 and figures["foreign_memo_hits"] > 0,
        "the run after that one is all file-memo hits": figures["resealed_memo_hits"] == warm["cache"]["memo_hits"],
    }
    figures["instrumented_share"] = figures["instrumented"] / eligible if eligible else 0.0
    figures["newly_broken"] = broken[:10]
    figures["second_run_changes"] = again["files"].get("instrumented", 0)
    figures["strip_differs"] = same_trees(lib, workdir / "stripped")[:10]
    return {"figures": figures, "checks": checks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="where to copy the stdlib (default: a temporary folder)")
    parser.add_argument("--sample", type=int, default=0, help="only about N files (0: all)")
    parser.add_argument("--target", default="runtime")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (default: one per CPU)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="stdlib-roundtrip-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = roundtrip(workdir, sample=args.sample, target=args.target, workers=args.workers)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    f = result["figures"]
    print(f"standard library of Python {sys.version.split()[0]}: {f['files']} files, {f['lines']} lines, "
          f"{f['functions_total']} functions, {f['workers']} workers")
    rows = [
        ("baseline: read + tree-sitter parse, 1 core", f["baseline_1core_s"], None),
        (f"baseline: read + tree-sitter parse, {f['workers']} workers", f["baseline_parallel_s"], None),
        ("cold (empty cache)", f["cold_s"], f["cold_ms_per_function"]),
        ("warm, same output folder", f["warm_same_folder_s"], f["warm_ms_per_function"]),
        ("warm, new output folder", f["warm_new_folder_s"], f["warm_new_folder_ms_per_function"]),
        ("warm, --dry-run", f["warm_dry_run_s"], f["warm_dry_run_ms_per_function"]),
        ("warm, --dry-run, another machine's cache", f["foreign_dry_run_s"], f["foreign_ms_per_function"]),
        ("warm, --dry-run, that cache once checked", f["resealed_dry_run_s"], f["resealed_ms_per_function"]),
    ]
    print(f"{'':<46} {'seconds':>8} {'ms/function':>12} {'x baseline(par)':>16}")
    for label, seconds, per in rows:
        ratio = seconds / f["baseline_parallel_s"] if f["baseline_parallel_s"] else 0
        print(f"{label:<46} {seconds:>8.2f} {'' if per is None else f'{per:.4f}':>12} {ratio:>16.2f}")
    print(f"peak memory (largest process): {f['peak_rss_mb']:.0f} MB")
    print(f"another machine's cache: {f['foreign_memo_hits']} memos checked and used, {f['foreign_memo_misses']} "
          f"rebuilt (the text check could not settle them), {f['foreign_corrupt']} corrupt; the check costs "
          f"{(f['foreign_dry_run_s'] - f['resealed_dry_run_s']) * 1000 / max(f['foreign_memo_hits'], 1):.2f} ms "
          "per memo over a sealed hit")
    print(f"functions: {f['instrumented']} instrumented, {f['failed']} failed, {f['skipped']} skipped; "
          f"{f['instrumented_share']:.4%} of eligible instrumented")
    print(f"skip reasons: {json.dumps(f['skipped_reasons'])}")
    if f["failed_reasons"]:
        print(f"failure reasons: {json.dumps(f['failed_reasons'])[:2000]}")
    print(f"files left alone: {json.dumps(f['skipped_files'])}")
    ok = True
    for name, passed in result["checks"].items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
        ok = ok and bool(passed)
    if not ok:
        print(f"details: newly broken {f['newly_broken']}; strip differs {f['strip_differs']}; "
              f"second run changed {f['second_run_changes']} files")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
