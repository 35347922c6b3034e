"""The standard-library round trip (bench/stdlib_roundtrip.py) on a sample of files.

The sample always holds every file with a BOM, CRLF line endings or a coding cookie.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "stdlib_roundtrip.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("stdlib_roundtrip", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["stdlib_roundtrip"] = module  # its worker function is pickled by module name
    spec.loader.exec_module(module)
    return module


def test_stdlib_sample_round_trip(tmp_path: Path) -> None:
    bench = load_bench()
    result = bench.roundtrip(tmp_path, sample=60, workers=2)
    figures = result["figures"]
    assert figures["files"] >= 60 and figures["functions_total"] > 1000
    failed = [name for name, passed in result["checks"].items() if not passed]
    assert not failed, (failed, figures["newly_broken"], figures["strip_differs"])
    assert figures["warm_memo_hits"] > 0
