"""The baseline file: per test, per function, the calls, exceptions and timing of one run.

:class:`Baseline` owns the format (reading, validating, writing); nothing else reads or
writes these files. A baseline is untrusted input: it is parsed as JSON only (never
executed or unpickled), its size is bounded before and after decompression, and every field
is checked before anything uses it; a file that fails is refused with a one-line
:class:`BaselineError`.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

FORMAT = "telemetry-inject-baseline"
# The baseline's ``version``. Readers accept every version listed here; each line says what
# changed:
#
# 1: first version: meta, columns, functions, modules, instrumented, tests, fixtures, outside.
VERSION = 1

DEFAULT_NAME = "default"
FOLDER = Path(".telemetry") / "baselines"
SUFFIX = ".json.gz"
MAX_FILE_BYTES = 64 << 20
"""A baseline file larger than this (compressed or not) is refused."""
MAX_JSON_BYTES = 512 << 20
"""Its JSON text may not exceed this once decompressed (a gzip bomb stops here)."""

REQUIRED_COLUMNS = ("count", "errors", "total_ns", "min_ns", "max_ns")
OPTIONAL_COLUMNS = ("self_ns", "median_ns")
"""Stored when the runtime's rows carry them (``median_ns`` is read from a row's
``median_ns``, else its ``p50_ns``); absent otherwise."""
FIXTURE_PREFIX = "[fixture] "
"""The prefix of the pseudo-test a shared fixture's setup is attributed to (see plugin.py)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_INT_LIMIT = 1 << 63


class BaselineError(Exception):
    """A baseline cannot be found, read or trusted; the message is one line."""


@dataclass
class Stat:
    """One function's figures in one test (or fixture, or outside any test)."""

    count: int
    errors: int = 0
    total_ns: int = 0
    min_ns: int = 0
    max_ns: int = 0
    self_ns: int | None = None
    median_ns: int | None = None
    exceptions: dict[str, int] = field(default_factory=dict)

    @property
    def per_call_ns(self) -> float:
        return self.total_ns / self.count if self.count else 0.0


Calls = dict[tuple[str, str], Stat]
"""(module, qualname) -> its figures."""

TestOutcome = Literal["passed", "failed", "skipped", "error", "unknown"]
"""A test's outcome in a baseline (``unknown``: it ran, its report never came)."""


@dataclass
class TestRecord:
    outcome: TestOutcome
    """passed, failed, skipped or error (the worst of setup, call and teardown)."""
    fixtures: tuple[str, ...] = ()
    """The shared (not function-scoped) fixtures the test used: keys of ``Baseline.fixtures``."""
    calls: Calls = field(default_factory=dict)


@dataclass
class FixtureRecord:
    scope: str
    setups: int
    """How many times it was set up in the run (once per pytest-xdist worker that used it,
    or per module, class or parameter)."""
    calls: Calls = field(default_factory=dict)


@dataclass
class Baseline:
    """One run's per-test telemetry, stored as gzip-compressed JSON (``.json.gz``; a path
    ending in ``.json`` is written uncompressed). The file (version 1)::

        {"format": "telemetry-inject-baseline", "version": 1,
         "meta": {"created_unix": 1767225600.0, "tool": "pytest-telemetry-inject 0.1.0",
                  "commit": "3f2c...", "branch": "main", "dirty": false,
                  "python": {"implementation": "CPython", "version": "3.11.7", "hashseed": "0"},
                  "machine": {"platform": "Linux-6.1-x86_64", "machine": "x86_64", "cpus": 2,
                              "node": "ci-runner-7"},
                  "processes": 2, "rootdir": "shop", "tests": 12, "duration_s": 3.2},
         "columns": ["count", "errors", "total_ns", "min_ns", "max_ns"],
         "functions": [["shop.cart", "Cart.total"], ["shop.pricing", "with_tax"]],
         "modules": {"shop.cart": "shop/cart.py", "shop.pricing": "shop/pricing.py"},
         "instrumented": [0, 1],
         "tests": {"tests/test_cart.py::test_total": {
                       "outcome": "passed", "fixtures": ["session tests/conftest.py::catalog"],
                       "calls": [[0, 2, 0, 4196700, 2087041, 2109659], [1, 2, 0, 4161000, 2075600, 2085440]],
                       "exceptions": {}}},
         "fixtures": {"session tests/conftest.py::catalog": {
                       "scope": "session", "setups": 2, "calls": [[1, 2, 0, 9000, 4000, 5000]],
                       "exceptions": {}}},
         "outside": {"calls": [], "exceptions": {}}}

    - ``columns`` names the numbers after the function index in every ``calls`` row: always
      ``count`` (exact), ``errors`` (calls that raised, exact), ``total_ns``, ``min_ns``,
      ``max_ns`` (measured); then ``self_ns`` and ``median_ns`` when the runtime provided them
      (a row may hold ``null`` where one was missing).
    - ``functions`` is the table every index points into (``module``, ``qualname``);
      ``modules`` maps a module to its file relative to the rootdir; ``instrumented`` lists the
      functions the run instrumented (called or not).
    - ``exceptions`` maps a function index (as a string) to ``{exception class: count}``.
    - ``fixtures``: calls made while a fixture of a wider scope than a function was set up, keyed
      ``"<scope> <baseid>::<name>"``; the tests that used it list the key.
    - ``outside``: calls outside any test and fixture (imports, collection).
    """

    meta: dict[str, Any]
    columns: tuple[str, ...]
    tests: dict[str, TestRecord]
    fixtures: dict[str, FixtureRecord] = field(default_factory=dict)
    outside: Calls = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)
    instrumented: set[tuple[str, str]] = field(default_factory=set)

    # -- building from a run -----------------------------------------------------------------

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], *, outcomes: Mapping[str, TestOutcome],
                  test_fixtures: Mapping[str, Iterable[str]], fixture_setups: Mapping[str, tuple[str, int]],
                  instrumented: Iterable[str], modules: Mapping[str, str], meta: Mapping[str, Any]) -> Baseline:
        """A baseline from ``snapshot(per_test=True)`` rows (merged over pytest-xdist workers).

        ``outcomes``: nodeid -> outcome of every test that ran; ``test_fixtures``: nodeid -> the
        shared fixtures it used; ``fixture_setups``: fixture key -> (scope, setups);
        ``instrumented``: ``module:qualname`` of every instrumented function."""
        rows = list(rows)
        columns = list(REQUIRED_COLUMNS)
        for name in OPTIONAL_COLUMNS:
            if any(_optional(row, name) is not None for row in rows):
                columns.append(name)
        tests = {nodeid: TestRecord(outcome, tuple(sorted(set(test_fixtures.get(nodeid, ())))))
                 for nodeid, outcome in outcomes.items()}
        fixtures = {key: FixtureRecord(scope, setups) for key, (scope, setups) in fixture_setups.items()}
        outside: Calls = {}
        for row in rows:
            if not row.get("count"):
                continue
            stat = Stat(int(row["count"]), int(row.get("errors") or 0), int(row.get("total_ns") or 0),
                        int(row.get("min_ns") or 0), int(row.get("max_ns") or 0),
                        _optional(row, "self_ns"), _optional(row, "median_ns"),
                        {str(k): int(v) for k, v in (row.get("exceptions") or {}).items()})
            key = (str(row["module"]), str(row["name"]))
            test = row.get("test")
            if test is None:
                outside[key] = stat
            elif str(test).startswith(FIXTURE_PREFIX):
                fixture_key = str(test)[len(FIXTURE_PREFIX):]
                fixtures.setdefault(fixture_key, FixtureRecord(fixture_key.partition(" ")[0], 1)).calls[key] = stat
            else:
                # A test that ran but whose report never came (an interrupted worker): unknown.
                tests.setdefault(str(test), TestRecord("unknown", tuple(sorted(set(test_fixtures.get(str(test), ()))))))
                tests[str(test)].calls[key] = stat
        pairs = set()
        for name in instrumented:
            module, _, qualname = name.partition(":")
            if qualname:
                pairs.add((module, qualname))
        return cls(dict(meta), tuple(columns), tests, fixtures, outside, dict(modules), pairs)

    # -- the file --------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        index: dict[tuple[str, str], int] = {}

        def idx(key: tuple[str, str]) -> int:
            if key not in index:
                index[key] = len(index)
            return index[key]

        for key in sorted(self.instrumented):
            idx(key)

        def calls(stats: Calls) -> dict[str, Any]:
            out, exceptions = [], {}
            for key in sorted(stats):
                stat = stats[key]
                i = idx(key)
                out.append([i, *(getattr(stat, column) for column in self.columns)])
                if stat.exceptions:
                    exceptions[str(i)] = dict(sorted(stat.exceptions.items()))
            return {"calls": out, "exceptions": exceptions}

        tests = {}
        for nodeid in sorted(self.tests):
            record = self.tests[nodeid]
            tests[nodeid] = {"outcome": record.outcome, "fixtures": list(record.fixtures), **calls(record.calls)}
        fixtures = {key: {"scope": f.scope, "setups": f.setups, **calls(f.calls)}
                    for key, f in sorted(self.fixtures.items())}
        outside = calls(self.outside)
        return {"format": FORMAT, "version": VERSION, "meta": self.meta, "columns": list(self.columns),
                "functions": [list(key) for key in index], "modules": dict(sorted(self.modules.items())),
                "instrumented": sorted(index[key] for key in self.instrumented),
                "tests": tests, "fixtures": fixtures, "outside": outside}

    def write(self, path: str | os.PathLike[str]) -> int:
        """Write atomically (a temporary file beside it, then a rename: a reader never sees
        half a file, and a failed write leaves the old one). Gzip unless the name ends in
        ``.json``. The number of bytes written."""
        target = Path(path)
        text = json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        data = text if target.name.endswith(".json") else gzip.compress(text, compresslevel=9, mtime=0)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            temporary.write_bytes(data)
            os.replace(temporary, target)
        finally:
            if temporary.exists():
                temporary.unlink()
        return len(data)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Baseline:
        """Read and validate a baseline file; :class:`BaselineError` (one line) when it is
        missing, too large, not gzip or JSON, of another format or a newer version, or any
        field is not what the format says."""
        where = str(path)
        try:
            size = os.path.getsize(path)
            if size > MAX_FILE_BYTES:
                raise BaselineError(f"{where}: {size} bytes, more than a baseline may have ({MAX_FILE_BYTES})")
            with open(path, "rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise BaselineError(f"no baseline at {where} (save one with --telemetry-save)") from None
        except IsADirectoryError:
            raise BaselineError(f"{where} is a folder, not a baseline file") from None
        except OSError as exc:
            raise BaselineError(f"cannot read the baseline {where}: {exc.strerror or exc}") from None
        if raw[:2] == b"\x1f\x8b":
            try:
                with gzip.GzipFile(fileobj=io.BytesIO(raw)) as unzipped:
                    raw = unzipped.read(MAX_JSON_BYTES + 1)
            except (OSError, EOFError, ValueError) as exc:
                raise BaselineError(f"{where}: not a readable gzip file ({exc})") from None
            if len(raw) > MAX_JSON_BYTES:
                raise BaselineError(f"{where}: more than {MAX_JSON_BYTES} bytes once decompressed")
        try:
            document = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BaselineError(f"{where}: not a baseline (not JSON: {_one_line(str(exc))})") from None
        return cls.from_json(document, where)

    @classmethod
    def from_json(cls, document: Any, where: str = "baseline") -> Baseline:
        check = _Checker(where)
        check.kind(document, dict, "the document")
        if document.get("format") != FORMAT:
            raise BaselineError(f"{where}: not a baseline (format {document.get('format')!r}, "
                                f"expected {FORMAT!r})")
        version = document.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise BaselineError(f"{where}: version must be a whole number >= 1, not {version!r}")
        if version > VERSION:
            raise BaselineError(f"{where}: version {version} is newer than this tool reads ({VERSION}); "
                                "upgrade pytest-telemetry-inject or save the baseline again")
        meta = check.kind(document.get("meta"), dict, "meta")
        columns = check.kind(document.get("columns"), list, "columns")
        if columns[:len(REQUIRED_COLUMNS)] != list(REQUIRED_COLUMNS) or len(set(columns)) != len(columns) \
                or any(c not in OPTIONAL_COLUMNS for c in columns[len(REQUIRED_COLUMNS):]):
            raise BaselineError(f"{where}: columns must be {list(REQUIRED_COLUMNS)} then any of "
                                f"{list(OPTIONAL_COLUMNS)}, not {_short(columns)}")
        functions = []
        for i, entry in enumerate(check.kind(document.get("functions"), list, "functions")):
            if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) and x for x in entry)):
                raise BaselineError(f"{where}: functions[{i}] must be [module, qualname], not {_short(entry)}")
            functions.append((entry[0], entry[1]))
        modules = check.kind(document.get("modules"), dict, "modules")
        for name, file in modules.items():
            check.kind(file, str, f"modules[{name!r}]")
        instrumented = set()
        for i in check.kind(document.get("instrumented"), list, "instrumented"):
            instrumented.add(functions[check.index(i, len(functions), "instrumented")])

        def calls(entry: Any, what: str) -> Calls:
            check.kind(entry, dict, what)
            rows = check.kind(entry.get("calls"), list, f"{what}.calls")
            exceptions = check.kind(entry.get("exceptions", {}), dict, f"{what}.exceptions")
            out: Calls = {}
            for n, row in enumerate(rows):
                if not isinstance(row, list) or len(row) != 1 + len(columns):
                    raise BaselineError(f"{where}: {what}.calls[{n}] must hold {1 + len(columns)} numbers, "
                                        f"not {_short(row)}")
                key = functions[check.index(row[0], len(functions), f"{what}.calls[{n}]")]
                values = dict(zip(columns, row[1:]))
                for column, value in values.items():
                    if value is None and column in OPTIONAL_COLUMNS:
                        continue
                    check.count(value, f"{what}.calls[{n}].{column}")
                if values["count"] < 1 or values["errors"] > values["count"] or values["min_ns"] > values["max_ns"]:
                    raise BaselineError(f"{where}: {what}.calls[{n}] is inconsistent (count >= 1, errors <= count "
                                        f"and min <= max are required): {_short(row)}")
                if key in out:
                    raise BaselineError(f"{where}: {what}.calls lists {key[0]}:{key[1]} twice")
                out[key] = Stat(values["count"], values["errors"], values["total_ns"], values["min_ns"],
                                values["max_ns"], values.get("self_ns"), values.get("median_ns"))
            for name, kinds in exceptions.items():
                if not name.isdigit():
                    raise BaselineError(f"{where}: {what}.exceptions keys are function indexes, not {name!r}")
                key = functions[check.index(int(name), len(functions), f"{what}.exceptions")]
                check.kind(kinds, dict, f"{what}.exceptions[{name}]")
                if key not in out:
                    raise BaselineError(f"{where}: {what}.exceptions names a function with no calls ({name})")
                out[key].exceptions = {str(k): check.count(v, f"{what}.exceptions[{name}]") for k, v in kinds.items()}
            return out

        tests: dict[str, TestRecord] = {}
        for nodeid, entry in check.kind(document.get("tests"), dict, "tests").items():
            what = f"tests[{nodeid!r}]"
            check.kind(entry, dict, what)
            outcome = entry.get("outcome")
            if outcome not in ("passed", "failed", "skipped", "error", "unknown"):
                raise BaselineError(f"{where}: {what}.outcome must be passed, failed, skipped, error or unknown, "
                                    f"not {_short(outcome)}")
            fixtures = check.kind(entry.get("fixtures", []), list, f"{what}.fixtures")
            for name in fixtures:
                check.kind(name, str, f"{what}.fixtures")
            tests[nodeid] = TestRecord(outcome, tuple(fixtures), calls(entry, what))
        fixtures_out: dict[str, FixtureRecord] = {}
        for key, entry in check.kind(document.get("fixtures", {}), dict, "fixtures").items():
            what = f"fixtures[{key!r}]"
            check.kind(entry, dict, what)
            scope = check.kind(entry.get("scope"), str, f"{what}.scope")
            setups = check.count(entry.get("setups"), f"{what}.setups")
            fixtures_out[key] = FixtureRecord(scope, max(setups, 1), calls(entry, what))
        outside = calls(document.get("outside", {"calls": []}), "outside")
        return cls(meta, tuple(columns), tests, fixtures_out, outside, dict(modules), instrumented)

    # -- what it says -------------------------------------------------------------------------------

    def describe(self) -> str:
        """One line: where it came from."""
        meta = self.meta
        commit = str(meta.get("commit") or "no commit")[:12] + (" (dirty)" if meta.get("dirty") else "")
        python = meta.get("python") or {}
        machine = meta.get("machine") or {}
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(meta["created_unix"])) \
            if isinstance(meta.get("created_unix"), (int, float)) else "unknown time"
        return (f"{len(self.tests)} tests, commit {commit}, {python.get('implementation', '?')} "
                f"{python.get('version', '?')} on {machine.get('node') or machine.get('platform') or '?'}, {when} UTC")

    def functions_called(self) -> set[tuple[str, str]]:
        found = set(self.outside)
        for record in self.tests.values():
            found.update(record.calls)
        for fixture in self.fixtures.values():
            found.update(fixture.calls)
        return found


# -- where baselines live -------------------------------------------------------------------------


def resolve(value: str, rootdir: Path, *, option: str) -> Path:
    """The file a ``NAME`` (``.telemetry/baselines/NAME.json.gz`` under the rootdir) or a
    ``PATH`` (anything with a folder separator, or ending in ``.json`` / ``.json.gz``)
    names; :class:`BaselineError` for neither."""
    value = value.strip()
    if not value:
        raise BaselineError(f"{option}: empty baseline name")
    if "/" in value or os.sep in value or value.endswith((".json", ".json.gz", ".gz")):
        return Path(value).expanduser().absolute()
    if not _NAME.fullmatch(value) or value in (".", ".."):
        raise BaselineError(f"{option}: {value!r} is neither a baseline name (letters, digits, '.', '_', '-') "
                            "nor a path to a .json or .json.gz file")
    return rootdir / FOLDER / f"{value}{SUFFIX}"


def run_meta(rootdir: Path, *, processes: int, tests: int, duration_s: float) -> dict[str, Any]:
    """Where a run came from: the commit, the interpreter, the machine."""
    from .. import __version__

    commit = branch = None
    dirty = None
    try:
        done = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=rootdir, capture_output=True,
                              text=True, timeout=30)
        if done.returncode == 0:
            commit = done.stdout.strip() or None
            branch = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=rootdir, capture_output=True,
                                    text=True, timeout=30).stdout.strip() or None
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=rootdir,
                                    capture_output=True, text=True, timeout=60)
            dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"created_unix": round(time.time(), 3), "tool": f"pytest-telemetry-inject {__version__}",
            "commit": commit, "branch": branch, "dirty": dirty,
            "python": {"implementation": platform.python_implementation(), "version": platform.python_version(),
                       "hashseed": os.environ.get("PYTHONHASHSEED")},
            "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                        "node": platform.node()},
            "processes": processes, "rootdir": rootdir.name, "tests": tests, "duration_s": round(duration_s, 3),
            "argv": sys.argv[1:][:50]}


# -- helpers -----------------------------------------------------------------------------------------


def _optional(row: Mapping[str, Any], name: str) -> int | None:
    value = row.get(name)
    if value is None and name == "median_ns":
        value = row.get("p50_ns")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return int(round(value))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a baseline may hold")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Checker:
    def __init__(self, where: str) -> None:
        self.where = where

    def kind(self, value: Any, kind: type, what: str) -> Any:
        if not isinstance(value, kind):
            raise BaselineError(f"{self.where}: {what} must be a JSON {'object' if kind is dict else kind.__name__ if kind is not list else 'array'}, "
                                f"not {_short(value)}")
        return value

    def count(self, value: Any, what: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _INT_LIMIT:
            raise BaselineError(f"{self.where}: {what} must be a whole number >= 0, not {_short(value)}")
        return value

    def index(self, value: Any, size: int, what: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < size:
            raise BaselineError(f"{self.where}: {what}: {_short(value)} is not an index into functions "
                                f"(0 to {size - 1})")
        return value
