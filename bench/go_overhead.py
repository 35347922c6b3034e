"""What Go telemetry costs per call: instrumented, disabled and bare code side by side.

One Go module is built in a scratch folder with two copies of the same code, one left bare
and one instrumented by the engine (as ``telemetry-inject`` does it):

- ``hot``: two small functions (a xorshift loop, a binary search) called from benchmarks
  in one test binary, bare and instrumented one after the other;
- ``btree``: google/btree (Debian's golang-github-google-btree-dev, when installed), whose
  own ``BenchmarkInsert`` runs on both copies in one ``go test`` run.

Every figure is the best of ``--count`` runs (ns per operation); the instrumented copy runs
twice, with telemetry on and with ``TELEMETRY_INJECT_DISABLED=1``. The calls per operation
come from the instrumented run's own report, so the overhead per instrumented call is
(instrumented - bare) / calls. Targets: at most 300 ns per call on, 20 ns disabled.

    python bench/go_overhead.py [--count N] [--json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from pytest_telemetry_inject.engine.runner import RunOptions, run
from pytest_telemetry_inject.settings import Settings

TARGET_ON_NS = 300.0
TARGET_OFF_NS = 20.0
BTREE = Path("/usr/share/gocode/src/github.com/google/btree")

HOT = textwrap.dedent("""\
    package hot

    // Mix scrambles x n times (xorshift).
    func Mix(x uint64, n int) uint64 {
    	for i := 0; i < n; i++ {
    		x ^= x << 13
    		x ^= x >> 7
    		x ^= x << 17
    	}
    	return x
    }

    // Find is the position of x in the sorted xs.
    func Find(xs []int, x int) int {
    	lo, hi := 0, len(xs)
    	for lo < hi {
    		mid := int(uint(lo+hi) >> 1)
    		if xs[mid] < x {
    			lo = mid + 1
    		} else {
    			hi = mid
    		}
    	}
    	return lo
    }
""")

HOT_BENCH = textwrap.dedent("""\
    package bench

    import (
    	"testing"

    	bare "example.com/overhead/bare/hot"
    	inst "example.com/overhead/inst/hot"
    )

    var sink uint64

    var sorted = func() []int {
    	xs := make([]int, 64)
    	for i := range xs {
    		xs[i] = i * 3
    	}
    	return xs
    }()

    func BenchmarkMixBare(b *testing.B) {
    	var s uint64
    	for i := 0; i < b.N; i++ {
    		s += bare.Mix(uint64(i), 2)
    	}
    	sink = s
    }

    func BenchmarkMixInstrumented(b *testing.B) {
    	var s uint64
    	for i := 0; i < b.N; i++ {
    		s += inst.Mix(uint64(i), 2)
    	}
    	sink = s
    }

    func BenchmarkFindBare(b *testing.B) {
    	var s int
    	for i := 0; i < b.N; i++ {
    		s += bare.Find(sorted, i&127)
    	}
    	sink = uint64(s)
    }

    func BenchmarkFindInstrumented(b *testing.B) {
    	var s int
    	for i := 0; i < b.N; i++ {
    		s += inst.Find(sorted, i&127)
    	}
    	sink = uint64(s)
    }
""")

_LINE = re.compile(r"^(Benchmark\w+?)(?:-\d+)?\s+(\d+)\s+([\d.]+) ns/op")


def go_binary() -> str | None:
    return shutil.which("go")


def go_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_INJECT_")}
    env.update(GO111MODULE="on", GOFLAGS="-mod=mod", GOPROXY="off", GOSUMDB="off", GOTOOLCHAIN="local",
               CGO_ENABLED="0")
    env.update(extra)
    return env


def build(work: Path) -> list[Path]:
    """The scratch module; returns the folders to instrument."""
    (work / "go.mod").write_text("module example.com/overhead\n\ngo 1.18\n")
    for copy in ("bare", "inst"):
        (work / copy / "hot").mkdir(parents=True)
        (work / copy / "hot" / "hot.go").write_text(HOT)
    (work / "bench").mkdir()
    (work / "bench" / "bench_test.go").write_text(HOT_BENCH)
    targets = [work / "inst"]
    if (BTREE / "btree.go").is_file():
        for copy in ("btree_bare", "btree_inst"):
            (work / copy).mkdir()
            for name in ("btree.go", "btree_test.go"):
                shutil.copy(BTREE / name, work / copy / name)
                os.chmod(work / copy / name, 0o644)
        targets.append(work / "btree_inst")
    return targets


def instrument(targets: list[Path], work: Path) -> dict[str, int]:
    settings = Settings.load(None, env={}, overrides={"parallel": False, "use_cache": False})
    counts: dict[str, int] = {}
    for folder in targets:
        summary = run([str(folder)], settings, RunOptions(in_place=True), project_root=work)
        bad = [f"{r.path}: {r.reason}" for r in summary.files if r.status == "error"]
        if bad:
            raise SystemExit("instrumentation failed: " + "; ".join(bad))
        counts[folder.name] = summary.function_counts().get("instrumented", 0)
    return counts


def bench(work: Path, packages: list[str], pattern: str, count: int, benchtime: str, **env: str) -> dict[str, float]:
    """Best ns/op of each benchmark over ``count`` runs."""
    done = subprocess.run([go_binary(), "test", "-run", "^$", "-bench", pattern, "-benchtime", benchtime,
                           "-count", str(count), "-p", "1", *packages], cwd=work, env=go_env(**env),
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"go test failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    best: dict[str, float] = {}
    package = ""
    for line in done.stdout.splitlines():
        if line.startswith("pkg: "):
            package = line[5:].strip().rsplit("/", 1)[-1]
        match = _LINE.match(line.strip())
        if match:
            key = f"{package}:{match.group(1)}"
            best[key] = min(best.get(key, float("inf")), float(match.group(3)))
    return best


def calls_per_op(work: Path, package: str, pattern: str, iterations: int, skip: str) -> float:
    """Instrumented calls per benchmark operation, from the report of a fixed-size run."""
    report = work / f"report-{package}.json"
    subprocess.run([go_binary(), "test", "-run", "^$", "-bench", pattern, "-benchtime", f"{iterations}x",
                    "-count", "1", f"./{package}"], cwd=work, capture_output=True, text=True, timeout=1800,
                   env=go_env(TELEMETRY_INJECT_REPORT=str(report)))
    rows = json.loads(report.read_text())["functions"]
    calls = sum(r["count"] for r in rows if not re.search(skip, r["name"]))
    return calls / iterations


def measure(work: Path, count: int) -> list[dict[str, Any]]:
    rows = []
    on = bench(work, ["./bench"], ".", count, "2000000x")
    off = bench(work, ["./bench"], "Instrumented", count, "2000000x", TELEMETRY_INJECT_DISABLED="1")
    for name in ("Mix", "Find"):
        rows.append({"case": f"hot.{name} (1 call per op)", "calls_per_op": 1.0,
                     "bare_ns": on[f"bench:Benchmark{name}Bare"], "on_ns": on[f"bench:Benchmark{name}Instrumented"],
                     "off_ns": off[f"bench:Benchmark{name}Instrumented"]})
    if (work / "btree_inst").is_dir():
        pattern = "^BenchmarkInsert$"
        both = bench(work, ["./btree_bare", "./btree_inst"], pattern, count, "300000x")
        off = bench(work, ["./btree_inst"], pattern, count, "300000x", TELEMETRY_INJECT_DISABLED="1")
        calls = calls_per_op(work, "btree_inst", pattern, 300000, r"\.(Benchmark|Test)\w*$|\.perm$")
        rows.append({"case": "google/btree BenchmarkInsert", "calls_per_op": calls,
                     "bare_ns": both["btree_bare:BenchmarkInsert"], "on_ns": both["btree_inst:BenchmarkInsert"],
                     "off_ns": off["btree_inst:BenchmarkInsert"]})
    for row in rows:
        row["on_per_call_ns"] = (row["on_ns"] - row["bare_ns"]) / max(row["calls_per_op"], 1e-9)
        row["off_per_call_ns"] = (row["off_ns"] - row["bare_ns"]) / max(row["calls_per_op"], 1e-9)
        row["ok"] = row["on_per_call_ns"] <= TARGET_ON_NS and row["off_per_call_ns"] <= TARGET_OFF_NS
    return rows


def go_version() -> str:
    done = subprocess.run([go_binary(), "version"], capture_output=True, text=True)
    return done.stdout.strip()


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'case':<32} {'calls/op':>8} {'bare ns/op':>10} {'on ns/op':>10} {'off ns/op':>10} "
            f"{'on +ns/call':>11} {'off +ns/call':>12}  target (<= {TARGET_ON_NS:.0f} on, <= {TARGET_OFF_NS:.0f} off)")
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(f"{row['case']:<32} {row['calls_per_op']:>8.2f} {row['bare_ns']:>10.1f} {row['on_ns']:>10.1f} "
                     f"{row['off_ns']:>10.1f} {row['on_per_call_ns']:>11.1f} {row['off_per_call_ns']:>12.1f}  "
                     f"{'met' if row['ok'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5, help="runs of each benchmark (the best counts)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it")
    args = parser.parse_args(argv)
    if go_binary() is None:
        print("go is not installed (apt-get install golang-go): nothing measured", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="ti-go-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        counts = instrument(build(work), work)
        rows = measure(work, args.count)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"go": go_version(), "instrumented_functions": counts, "rows": rows}, indent=2))
    else:
        print(f"{go_version()}, {os.cpu_count()} CPUs; instrumented functions: {counts}")
        print(format_table(rows))
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
