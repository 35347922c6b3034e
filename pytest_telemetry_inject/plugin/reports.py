"""What a plugin session reports: the terminal summary's lines, the JSON/HTML/trace files,
and the telemetry of pytest-xdist workers merged into one.

Everything here works on the plain JSON payloads a process builds (``local_payload``) and on
the facts the session hands over, so that a payload from a worker and the controller's own
are treated alike and nothing here reaches back into the session.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

Payload = dict[str, Any]
"""One process's telemetry, plain JSON (``TelemetrySession.local_payload``), or several merged."""

NAME_WIDTH = 60
SORT_KEYS: dict[str, Callable[[dict[str, Any]], float]] = {
    "calls": lambda r: r["count"],
    "total": lambda r: r["total_ns"],
    "self": lambda r: r.get("self_ns") or 0,
    "mean": lambda r: r["total_ns"] / r["count"],
    "errors": lambda r: r["errors"],
}


def summary_table(rows: list[dict[str, Any]], *, top: int, sort: str, with_self: bool = True) -> list[str]:
    """The terminal summary's table: the ``top`` functions by ``sort``, self time beside
    total time when it was sampled (a function's own cost, its instrumented callees' taken
    off), names longer than the column shortened from the left behind a visible ``…``."""
    if not rows or not top:
        return []
    key = SORT_KEYS[sort]
    ordered = sorted(rows, key=lambda r: (-key(r), r["module"], r["name"]))[:top]
    has_self = with_self and any("self_ns" in r for r in rows)
    head = f"{'function':<{NAME_WIDTH}} {'calls':>8} {'total ms':>10}" + (f" {'self ms':>10}" if has_self else "")
    lines = [head + f" {'mean us':>9} {'errors':>6}   (by {sort})"]
    for row in ordered:
        name = f"{row['module']}:{row['name']}"
        if len(name) > NAME_WIDTH:
            name = "…" + name[-(NAME_WIDTH - 1):]
        line = f"{name:<{NAME_WIDTH}} {row['count']:>8} {row['total_ns'] / 1e6:>10.3f}"
        if has_self:
            line += f" {(row.get('self_ns') or 0) / 1e6:>10.3f}"
        lines.append(line + f" {row['total_ns'] / row['count'] / 1e3:>9.2f} {row['errors']:>6}")
    if len(rows) > top:
        lines.append(f"(and {len(rows) - top} more functions: --telemetry-top N shows more)")
    return lines


# -- merging pytest-xdist workers' payloads ----------------------------------------------------

def sum_counts(parts: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Counts of several processes (the OTLP export's, the self-time sampler's), added up;
    a text or a setting is the first process's that has one. None when no process has any."""
    found = [p for p in parts if p]
    if not found:
        return None
    out: dict[str, Any] = {}
    for part in found:
        for key, value in part.items():
            if isinstance(value, int) and not isinstance(value, bool) and key in out:
                out[key] += value
            elif not out.get(key):
                out[key] = value
    return out


def merge_faults(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The runtime's internal faults of every process: counts added, the first text kept."""
    merged: dict[str, Any] = {}
    for part in parts:
        for where, fault in part.items():
            entry = merged.setdefault(where, {"count": 0, "first": fault.get("first", "")})
            entry["count"] += int(fault.get("count", 0))
    return merged


def merge_payloads(local: Payload, workers: Sequence[Payload], *, full: bool = True) -> Payload:
    """The controller's payload and its workers', combined exactly: counts and totals add
    up, minimum of minimums, maximum of maximums (``full``: with the per-test rows). Without
    workers the local payload is the answer as it is."""
    from .. import runtime

    if not workers:
        return local
    parts = [local, *workers]
    problems: dict[str, str] = {}
    for part in parts:
        problems.update(part["problems"])
    return {"functions": runtime.merge_snapshots([p["functions"] for p in parts]),
            "tests": runtime.merge_snapshots([p["tests"] for p in parts]) if full else [],
            "events": [event for p in parts for event in p["events"]],
            "dropped": sum(p["dropped"] for p in parts), "problems": problems,
            "llm_requests": sum(p["llm_requests"] for p in parts),
            "corrupt_cache_entries": sum(p.get("corrupt_cache_entries", 0) for p in parts),
            "otlp": sum_counts([p.get("otlp") for p in parts]),
            "self_time": sum_counts([p.get("self_time") for p in parts]),
            "losses": {key: sum_counts([(p.get("losses") or {}).get(key) for p in parts])
                       for key in sorted({k for p in parts for k in p.get("losses") or {}})},
            "faults": merge_faults([p.get("faults") or {} for p in parts]),
            "otel_rows": runtime.merge_snapshots([p.get("otel_rows") or [] for p in parts]),
            "instrumented_modules": sorted({m for p in parts for m in p["instrumented_modules"]})}


# -- report files ------------------------------------------------------------------------------

def write_reports(paths: dict[str, str], data: Payload, instrumented: list[str]) -> list[str]:
    """Write the ``json``/``html``/``trace`` reports named in ``paths`` ('' for none) from a
    full payload; what was written, as the summary's ``wrote ...`` lines say it."""
    from .. import runtime
    from ..runtime import report

    written: list[str] = []
    built = report.build_report(data["functions"] or data.get("otel_rows") or [], tests=data["tests"],
                                events=data["events"], instrumented=instrumented,
                                events_dropped=data["dropped"], meta={"llm_requests": data["llm_requests"]},
                                self_time=data.get("self_time"))
    if paths["json"]:
        report.write_json(paths["json"], built)
        written.append(f"the JSON report to {paths['json']}")
    if paths["html"]:
        report.write_html(paths["html"], built)
        written.append(f"the HTML report to {paths['html']}")
    if paths["trace"]:
        with open(paths["trace"], "w", encoding="utf-8") as handle:
            json.dump(runtime.chrome_trace(data["events"], dropped=data["dropped"], functions=data["functions"],
                                           self_time=data.get("self_time")), handle)
        written.append(f"the Chrome trace to {paths['trace']}")
    return written


# -- the terminal summary ----------------------------------------------------------------------

class SummaryFacts(NamedTuple):
    """What the terminal summary says beside the payload's figures: the session's own facts,
    gathered by the session (the summary reads nothing else)."""

    files: int
    """Files instrumented."""
    functions: int
    """Functions instrumented."""
    prepare_seconds: float
    top: int
    sort: str
    self_time_ms: float
    keep_events: bool
    max_events: int
    written: Sequence[str] = ()
    unknown_prefixes: Sequence[str] = ()
    cache_state: str = ""
    workers_warning: str = ""
    llm_lines: Sequence[str] = ()
    otel_lines: Sequence[str] = ()
    early: Sequence[tuple[str, str]] = ()
    """Modules imported before the hook, each with who imported it and what to do."""


def summary_lines(data: Payload, facts: SummaryFacts) -> list[str]:
    """The lines of the terminal summary's ``telemetry`` section, from a payload without
    per-test rows (``full=False``)."""
    source = data["functions"] if any(r["count"] for r in data["functions"]) else data.get("otel_rows") or []
    rows = [r for r in source if r["count"]]
    lines = [f"{facts.functions} functions instrumented in {facts.files} files (prepared in "
             f"{facts.prepare_seconds:.2f} s); {len(rows)} called, {sum(r['count'] for r in rows)} calls; "
             f"LLM requests: {data['llm_requests']}"]
    sampled = data.get("self_time")
    lines += summary_table(rows, top=facts.top, sort=facts.sort, with_self=bool(sampled))
    if sampled and rows and facts.top:
        lines.append(f"self ms: the function's own time, its instrumented callees' taken off, sampled every "
                     f"{facts.self_time_ms:g} ms ({sampled['samples']} samples, an estimate: reliable from a few ms "
                     f"up); {sampled['tool_ns'] / 1e6:.1f} ms sampled in the telemetry runtime itself is charged to "
                     "no function")
    lines += [f"wrote {line}" for line in facts.written]
    return lines + _notes(data, facts)


def _notes(data: Payload, facts: SummaryFacts) -> list[str]:
    """The summary's lines after the table: what went wrong or was left out, and why."""
    lines = []
    if data["corrupt_cache_entries"]:
        lines.append(f"cache: {data['corrupt_cache_entries']} damaged or foreign cache entries were found and "
                     "rebuilt (nothing from them was used)")
    lines += [f"telemetry_modules: {prefix!r} names no module that could be found when the session started: "
              "nothing of it was instrumented" for prefix in facts.unknown_prefixes]
    if facts.cache_state:
        lines.append(f"cache: {facts.cache_state}")
    if facts.workers_warning:
        lines.append(f"workers: {facts.workers_warning}")
    lines += [*facts.llm_lines, *facts.otel_lines]
    if data.get("dropped") and facts.keep_events:
        lines.append(f"events: {data['dropped']} calls have no event in the HTML flame charts and the trace (the "
                     f"cap is {facts.max_events} events a process: --telemetry-max-events); the per-test and "
                     "per-function figures count every call")
    for key, loss in sorted((data.get("losses") or {}).items()):
        lines.append(f"events: {loss['lost']} could not be written to the {key} sink: {loss['error']}")
    for where, fault in sorted((data.get("faults") or {}).items()):
        lines.append(f"runtime: {fault['count']} internal fault(s) in {where}, swallowed (the tests went on; "
                     f"calls there may be missing from the figures): first {fault['first']}; please report it")
    lines += [f"not instrumented: {module}: {reason}" for module, reason in sorted(data["problems"].items())]
    lines += [f"imported before telemetry could be injected (it runs without it): {name}: {why}"
              for name, why in facts.early]
    return lines


# -- modules that went without telemetry -------------------------------------------------------

def early_why(name: str, *, by_prefix: bool, plugins_given: Sequence[str]) -> str:
    """Who imported a project module before the hook was in place, and what to do
    (``by_prefix``: the modules were named by ``--telemetry-modules``; ``plugins_given``:
    the ``-p`` arguments)."""
    from ..plugin_registry import LOADED_BEFORE

    if name in ("__main__", "__mp_main__"):  # (the second: multiprocessing's name for it)
        return ("the script that started this process and called pytest.main(): it runs as it is (move its "
                "functions into a module of the project to instrument them)")
    top = name.partition(".")[0]
    for entry in pytest_plugins():
        if entry.value.partition(".")[0].partition(":")[0] == top:
            dist = getattr(getattr(entry, "dist", None), "name", "") or "its distribution"
            return (f"pytest loaded it with the plugin {entry.name!r} (an entry point of {dist}) before this one; "
                    f"run with `-p no:{entry.name}` to instrument it, if the suite runs without that plugin")
    where = "--telemetry-modules" if by_prefix else "telemetry_exclude (ini) to leave it out"
    order = list(sys.modules)  # in the order they were imported
    if "_pytest" in order and name in order and order.index(name) < order.index("_pytest"):
        return ("imported at interpreter start-up, before pytest itself (a .pth file, sitecustomize, "
                f"PYTHONSTARTUP); make that import lazy, or use {where}")
    for given in plugins_given:
        if not given.startswith("no:") and given.partition(".")[0] == top:
            return (f"pytest imported it for `-p {given}` before this plugin was active (with -p, a plugin's "
                    "package runs without telemetry); load that plugin from conftest.py instead, or use " + where)
    if name in LOADED_BEFORE:
        return (f"imported by a plugin that pytest loaded before this one; make that import lazy, or use {where}")
    return ("imported while pytest read its configuration (a plugin given with -p, or one a plugin imports); "
            f"make that import lazy, or use {where}")


def pytest_plugins() -> list[Any]:
    """The installed ``pytest11`` entry points (none when a distribution's metadata is broken:
    no attribution then, the rest of the summary still says what it can)."""
    from importlib.metadata import entry_points

    try:
        return list(entry_points(group="pytest11"))
    except Exception:
        return []


def loaded_elsewhere(candidates: set[str], instrumented: dict[str, str], early: Sequence[str]) -> dict[str, str]:
    """Modules of the project's files (``candidates``) that were imported during the session,
    but not through the hook (a loader of someone else's, pytest's own path import): each
    with who loaded it, so that no module goes without telemetry silently. ``instrumented``:
    the hook's modules and files; ``early``: the modules imported before it."""
    from .importhook import TelemetryLoader

    found: dict[str, str] = {}
    names = {os.path.basename(c) for c in candidates}
    # An alias of a module that went through the hook (toolz's tlz package copies toolz's
    # modules under its own names: the functions are the instrumented ones, and a module
    # the hook left as it was, with nothing to instrument, has none) is not one. Told by
    # the file's identity, and only when some module needs it (most sessions have none).
    through_hook: list[tuple[set[str], set[tuple[int, int]]]] = []  # (made on first use)

    def went_through_hook(origin: str) -> bool:
        if not through_hook:
            paths = set(instrumented.values())
            for module in list(sys.modules.values()):
                if isinstance(getattr(getattr(module, "__spec__", None), "loader", None), TelemetryLoader):
                    paths.add(getattr(module, "__file__", None) or "")
            through_hook.append((paths, {found for found in map(_identity, paths) if found}))
        paths, files = through_hook[0]
        if origin in paths:
            return True
        found = _identity(origin)
        return found is not None and found in files

    # A module whose file is a candidate under another path (a link to it, a folder linked
    # somewhere): told by the file's identity, one stat each, not by resolving every folder
    # of its path (as many packages' ``__init__.py`` share a candidate's name, that took
    # milliseconds of each session's end).
    same_file: dict[str, set[tuple[int, int]]] = {}

    def is_candidate(origin: str) -> bool:
        if origin in candidates:
            return True
        base = os.path.basename(origin)
        if base not in same_file:
            same_file[base] = {i for i in map(_identity, (c for c in candidates if os.path.basename(c) == base)) if i}
        found = _identity(origin)
        return found is not None and found in same_file[base]

    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None) or ""
        if os.path.basename(origin) not in names or name in instrumented or name in early:
            continue
        if not is_candidate(origin):
            continue
        loader = getattr(getattr(module, "__spec__", None), "loader", None)
        if isinstance(loader, TelemetryLoader):
            continue  # through the hook, and left as it is for a reason it recorded
        if went_through_hook(origin):
            continue
        found[name] = (f"imported by {type(loader).__name__ if loader is not None else 'an unknown loader'} "
                       "without going through the telemetry import hook")
    return found


def _identity(path: str) -> tuple[int, int] | None:
    """The file's device and inode (links followed), or None when it cannot be read."""
    try:
        found = os.stat(path)
    except (OSError, ValueError):
        return None
    return found.st_dev, found.st_ino
