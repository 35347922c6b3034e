"""How large a baseline is on a suite of ~5,000 tests (docs/ci-gate.md).

Generates a project: a package of ``--modules`` modules of 12 functions each (calls between
them, a loop, a function that raises and is caught), and ``--tests`` tests spread over test
files, each calling 3 to 12 of those functions with its own arguments (so each test touches
about 10 to 40 (test, function) rows); a session fixture and a module fixture call some too.
Runs ``pytest --telemetry-save -n 2`` on it, and prints the file's size compressed and not,
the rows it holds, and the time to read it back and to compare a second run with it.

    python bench/gate_baseline_size.py [--workdir DIR] [--tests 5000] [--modules 40]
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def generate(folder: Path, tests: int, modules: int) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    package = folder / "genpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""Generated."""\n')
    for m in range(modules):
        lines = [f'"""Module {m}."""\n']
        for f in range(12):
            if f == 0:
                lines.append(f"def f{f}(x):\n    total = 0\n    for i in range(x % 7 + 1):\n        total += i * x\n"
                             f"    return total\n")
            elif f == 1:
                lines.append(f"def f{f}(x):\n    if x % 5 == 0:\n        raise ValueError(x)\n    return f0(x) + 1\n")
            elif f == 2:
                lines.append(f"def f{f}(x):\n    try:\n        return f1(x)\n    except ValueError:\n        return -1\n")
            else:
                lines.append(f"def f{f}(x):\n    return f{f - 1}(x + 1) if x % 3 else f{max(f - 2, 2)}(x) + {f}\n")
        lines.append("class Thing:\n    def __init__(self, n):\n        self.n = n\n\n"
                     "    def value(self):\n        return f2(self.n) + f5(self.n)\n")
        (package / f"mod{m}.py").write_text("\n\n".join(lines))
    tests_dir = folder / "tests"
    tests_dir.mkdir()
    (tests_dir / "conftest.py").write_text(
        "import pytest\nfrom genpkg import mod0\n\n@pytest.fixture(scope='session')\ndef shared():\n"
        "    return [mod0.f4(i) for i in range(20)]\n")
    rng = random.Random(7)
    per_file = 100
    for file_index in range((tests + per_file - 1) // per_file):
        body = ["import pytest", "from genpkg import " + ", ".join(f"mod{m}" for m in range(modules)), "",
                "@pytest.fixture(scope='module')", "def prepared():", f"    return mod{file_index % modules}.Thing(3).value()", ""]
        for t in range(min(per_file, tests - file_index * per_file)):
            calls = [f"mod{rng.randrange(modules)}.f{rng.choice([0, *range(2, 12)])}({rng.randrange(1, 60)})"
                     for _ in range(rng.randrange(3, 13))]
            fixture = "shared, prepared" if t % 10 == 0 else ""
            body.append(f"def test_{t}({fixture}):\n    values = [{', '.join(calls)}]\n    assert len(values) == {len(calls)}\n")
        (tests_dir / f"test_gen{file_index:03d}.py").write_text("\n".join(body))
    (folder / "pytest.ini").write_text("[pytest]\ntestpaths = tests\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["-c", "user.name=b", "-c", "user.email=b@x.invalid",
                                                                "commit", "-q", "-m", "generated"]):
        subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/telemetry-gate-size"))
    parser.add_argument("--tests", type=int, default=5000)
    parser.add_argument("--modules", type=int, default=40)
    args = parser.parse_args()
    folder = args.workdir.resolve() / "project"
    generate(folder, args.tests, args.modules)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "GITHUB_"))}
    env["PYTHONPATH"] = str(folder)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-n", "2",
                           "--telemetry-save"], cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    tail = "\n".join(done.stdout.splitlines()[-3:])
    saved = re.search(r"saved the baseline .*", done.stdout)
    print(f"pytest -n 2 --telemetry-save: exit {done.returncode} in {seconds:.1f} s; {saved.group(0) if saved else tail}")
    path = folder / ".telemetry" / "baselines" / "default.json.gz"
    raw = gzip.decompress(path.read_bytes())
    sys.path.insert(0, str(ROOT))
    from pytest_telemetry_inject.gate.baseline import Baseline
    from pytest_telemetry_inject.gate.compare import compare

    started = time.perf_counter()
    baseline = Baseline.read(path)
    read_s = time.perf_counter() - started
    rows = sum(len(r.calls) for r in baseline.tests.values())
    print(f"{len(baseline.tests)} tests, {rows} (test, function) rows, {len(baseline.functions_called())} functions: "
          f"{path.stat().st_size:,} bytes gzip ({path.stat().st_size / len(baseline.tests):.0f} bytes a test), "
          f"{len(raw):,} bytes of JSON; read and checked in {read_s:.2f} s")
    started = time.perf_counter()
    result = compare(baseline, baseline)
    print(f"compared with itself in {time.perf_counter() - started:.2f} s: {len(result.real_findings)} findings")
    return 0 if done.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
