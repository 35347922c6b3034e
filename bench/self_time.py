"""Self time, sampled: what the sampler costs a call-heavy program and how close its
estimate comes.

    python bench/self_time.py [--rounds N] [--interval MS]

Two workloads, instrumented by the engine (the try style, target ``runtime``) and imported
from real files:

- cost: ``work(n)`` calls ``step(i)`` n times (tiny functions: the runtime's per-call cost
  dominates); timed with the sampler off and on, in alternating rounds in one process, and
  the ratio of the medians printed;
- accuracy: ``outer()`` spins 2 ms itself and calls ``inner()`` (6 ms) twice; the sampled
  self times are printed beside the true ones (outer's total less inner's; inner's total)
  with their error. The spins are not instrumented (code of a library, say).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SOURCE = '''
import time


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def step(i):
    return i + 1


def work(n):
    total = 0
    for i in range(n):
        total += step(i)
    return total


def inner():
    spin(0.006)


def outer():
    spin(0.002)
    inner()
    inner()
'''


def load(folder: Path):  # type: ignore[no-untyped-def]
    from pytest_telemetry_inject.engine.pipeline import Engine
    from pytest_telemetry_inject.settings import Settings

    result = Engine(Settings(style="try", target="runtime"), cache=None).instrument(SOURCE.encode(), "work.py")
    assert result.output is not None, result.reason
    text = result.output.decode()
    # spin() stands for code that is not instrumented (a library, the standard library).
    text = text.replace('_telemetry.end("spin", _telemetry_t)', "pass").replace(
        "def spin(seconds):\n    _telemetry_t = _telemetry.start()", "def spin(seconds):\n    _telemetry_t = None")
    path = folder / "ti_self_time_bench.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("ti_self_time_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--interval", type=float, default=1.0, help="milliseconds between samples (default 1)")
    args = parser.parse_args()
    from pytest_telemetry_inject.runtime import _core

    with tempfile.TemporaryDirectory() as folder:
        m = load(Path(folder))
        times: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for state in ("off", "on"):
                _core.configure(self_time=args.interval / 1000 if state == "on" else 0)
                started = time.perf_counter()
                m.work(300_000)
                times[state].append(time.perf_counter() - started)
        _core.configure(self_time=0)
        off, on = statistics.median(times["off"]), statistics.median(times["on"])
        print(f"Python {sys.version.split()[0]}; sampling every {args.interval:g} ms; {args.rounds} rounds each")
        print(f"cost: 300,000 calls in {off * 1e3:.1f} ms without the sampler, {on * 1e3:.1f} ms with it: "
              f"{on / off:.3f} x (medians; per call {(on - off) / 300_000 * 1e9:+.1f} ns)")

        _core.reset()
        _core.configure(self_time=args.interval / 1000)
        for _ in range(60):
            m.outer()
        _core.configure(self_time=0)
        rows = {r["name"]: r for r in _core.snapshot() if r["module"] == m.__name__}
        info = _core.self_time()
        print(f"accuracy: {info['samples']} samples ({info['charged']} charged to a function, "
              f"{info['tool_samples']} in the runtime)")
        # inner() calls nothing instrumented: its self time is its total; outer() calls only
        # inner(): its self time is its total less inner()'s.
        truth = {"outer": rows["outer"]["total_ns"] - rows["inner"]["total_ns"], "inner": rows["inner"]["total_ns"]}
        for name, true in truth.items():
            row = rows[name]
            error = (row["self_ns"] - true) / true * 100 if true else 0.0
            print(f"  {name:<6} total {row['total_ns'] / 1e6:8.1f} ms  self sampled {row['self_ns'] / 1e6:8.1f} ms  "
                  f"true {true / 1e6:8.1f} ms  error {error:+.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
