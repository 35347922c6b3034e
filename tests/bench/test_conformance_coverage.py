"""The conformance bench's coverage comparison (bench/conformance.py --coverage), on a small
local project instead of the downloaded corpus: real pytest-cov runs, plain and instrumented;
and its paired ratio."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "conformance.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("conformance_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_coverage_is_compared_file_by_file(tmp_path: Path) -> None:
    bench = load_bench()
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "__init__.py").write_text("")
    (tmp_path / "lib" / "shapes.py").write_text(textwrap.dedent('''
        def last(x):
            if x:
                return 1


        def loop(xs):
            for x in xs:
                if x:
                    break
    ''').lstrip())
    (tmp_path / "test_lib.py").write_text("from lib import shapes\n\n\ndef test_it():\n"
                                          "    shapes.last(0)\n    shapes.loop([1])\n")
    python = Path(sys.executable)
    plain = bench.coverage_of(python, tmp_path, "plain")
    instrumented = bench.coverage_of(python, tmp_path, "warm", "--inject-telemetry")
    assert (tmp_path / ".telemetry_cache").is_dir()  # the instrumented run did instrument
    assert set(plain) == {"lib/__init__.py", "lib/shapes.py", "test_lib.py"}
    result = bench.compare_coverage(plain, instrumented)
    assert result["same"], result["differences"]
    assert result["files"] == 3 and result["branches"] == 6
    # What a difference looks like: a branch seen taken in one run only, a file not measured.
    moved = {name: dict(data) for name, data in instrumented.items()}
    moved["lib/shapes.py"]["executed_branches"] = moved["lib/shapes.py"]["executed_branches"][1:]
    del moved["test_lib.py"]
    result = bench.compare_coverage(plain, moved)
    assert not result["same"]
    assert result["differences"][0].startswith("lib/shapes.py: executed_branches [")
    assert result["differences"][1] == "test_lib.py: not measured"


def test_the_paired_ratio_takes_each_warm_run_against_its_own_plain_run() -> None:
    bench = load_bench()
    # A slow spell over the second pair, a lucky plain run in the third: the fastest-of
    # ratio says 1.22, two of the three pairs 1.1 (the third 1.67).
    warm, plain = [1.1, 2.2, 1.5], [1.0, 2.0, 0.9]
    assert min(warm) / min(plain) > 1.2
    assert bench.paired_ratio(warm, plain) == pytest.approx(1.1)
    assert bench.paired_ratio([1.0], [2.0]) == 0.5
    with pytest.raises(ValueError, match="no pairs"):
        bench.paired_ratio([1.0, 1.0], [1.0])
