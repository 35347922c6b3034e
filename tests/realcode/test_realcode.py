"""Real code in JavaScript, TypeScript and Go: packages from npm and Debian's Go sources,
instrumented by the engine, then checked by their real toolchains (``node --check`` and a
usage script that must print the same, ``tsc --noEmit`` then a compiled run, ``go vet``,
``go build`` and ``go test``), warm-cache runs identical to cold ones, and strip exact.

The cases are those of ``bench/languages_realcode.py`` (which prints the table with the
speed figures); a case whose toolchain or package is missing is skipped with the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_telemetry_inject.testkit import import_path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "languages_realcode.py"


bench = import_path(BENCH, "telemetry_inject_languages_realcode")

# Each case is minutes of toolchain work at most; the slowest ones (all of date-fns, the
# Go packages with large test suites) are left to the benchmark.
CASES = ["semver", "commander", "yargs", "date-fns", "rxjs", "github.com/google/uuid", "github.com/pkg/errors"]


@pytest.mark.parametrize("case", CASES)
def test_real_package_instrumented_still_works(case: str, tmp_path: Path) -> None:
    rows = bench.run_cases(tmp_path, only=[case], quick=True)
    assert len(rows) == 1, rows
    row = rows[0]
    if "unavailable" in row:
        pytest.skip(row["unavailable"])
    table = bench.format_table(rows)
    print(table)
    assert row["ok"], table + "\n" + str(row.get("test_output", ""))
    assert row["instrumented"] > 0 and row["files"] > 0, table
    assert row["strip_exact"] and row["warm_same"], table
    assert row["memo_hits"] > 0, "the warm run reads the file memo"
