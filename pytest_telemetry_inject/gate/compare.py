"""A run against a baseline: what changed, per test and per function, and what fails the gate.

Call counts are compared exactly. Timing is compared only where the change stands out of the
noise, judged by this rule (:class:`TimingModel`):

1. Every (test, function) pair timed in both runs gives ``x = ln(after / before)`` of the
   per-call time: the median per call when both runs' rows carry ``median_ns``, else the mean
   (total / count, measured on every call). The self time (``self_ns``) is kept in baselines
   but not judged: the runtime estimates it by sampling (every 1 ms), which says nothing of
   functions that take microseconds.
2. The pairs are put in bins by the baseline's time in the pair (about 50 pairs a bin, at most
   12 bins: short calls are noisier than long ones). Each bin's median ``x`` is the drift of
   the run against the baseline at that size (a slower or faster machine), and 1.4826 times
   its median absolute deviation is the noise ``sigma`` of one pair at that size.
3. A function's residual is ``m = median(x - drift)`` over its ``n`` pairs, its ratio
   ``exp(m)``. Its noise has two parts: the pairs' own, ``1.2533 sigma / sqrt(n)`` (the standard
   error of a median of ``n``), and the whole function's, ``tau``: all of a function's pairs
   move together from run to run (where its code landed, the branch predictor, the collector),
   which no number of pairs averages away. ``tau`` is 1.4826 times the median absolute
   deviation of the judged functions' residuals (most functions did not change; at least 10%;
   20% when fewer than 10 functions are judged). The score is
   ``m / sqrt(tau^2 + (1.2533 sigma / sqrt(n))^2)``.
4. It is a finding when the score is beyond ``Z = 5`` (more than five standard deviations), the
   ratio beyond ``MIN_RATIO`` (1.25) or its inverse, and the time it adds or saves over the run
   at least ``MIN_DELTA_NS`` (1 ms). With fewer than ``MIN_PAIRS`` (20) timed pairs there is no
   noise estimate, and timing is not judged (the summary says so).
5. A function is judged only with at least ``2 P + 1`` timed pairs, ``P`` the larger number of
   processes of the two runs (3 without pytest-xdist): each process's first call of a function
   may carry a one-off cost (an import, a cache filled) that lands in whichever test called it
   first there; with more than ``2 P`` pairs such pairs are fewer than half, and the median
   does not move with them.

So a fixed percentage never decides alone: a ratio counts only when it is also far outside
the spread the comparison itself measured.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

from .baseline import Baseline, Calls, Stat

Z = 5.0
MIN_RATIO = 1.25
MIN_DELTA_NS = 1_000_000
MIN_PAIRS = 20
BIN_PAIRS = 50
MAX_BINS = 12
MIN_FUNCTIONS = 10
TAU_FLOOR = 0.10
TAU_DEFAULT = 0.2
"""tau when fewer than MIN_FUNCTIONS functions are judged (no estimate): 20%."""
SIGMA_FLOOR = 0.01
"""Below this spread (1%) a bin's sigma is taken as 1%: a bin of identical timings (a clock's
resolution) must not make every difference infinitely significant."""
OUTSIDE = "(outside tests)"


@dataclass
class Finding:
    kind: str
    """calls, exceptions, time, new-function, vanished-function."""
    function: str
    """module:qualname"""
    test: str | None
    """The test (nodeid), ``[fixture] KEY``, ``(outside tests)``, or None for the whole run."""
    before: float
    after: float
    note: str = ""
    moved: bool = False
    """A call-count change whose function's total over the run did not change: the calls
    moved between tests (a cache, a shared fixture, the order tests ran in)."""
    score: float | None = None

    @property
    def change(self) -> float:
        """after / before - 1 (inf when before is 0)."""
        if self.before == 0:
            return math.inf if self.after else 0.0
        return self.after / self.before - 1.0

    def describe(self) -> str:
        where = f" in {self.test}" if self.test else ""
        if self.kind == "calls":
            return (f"{self.function}{where}: calls {_num(self.before)} -> {_num(self.after)} ({_pct(self.change)})"
                    + (f"; {self.note}" if self.note else "") + ("; moved between tests" if self.moved else ""))
        if self.kind == "exceptions":
            return f"{self.function}{where}: calls that raised {_num(self.before)} -> {_num(self.after)}" \
                + (f" ({self.note})" if self.note else "")
        if self.kind == "time":
            return f"{self.function}: time per call x{self.after / self.before:.2f} ({self.note})"
        if self.kind == "new-function":
            return f"{self.function}: new, {_num(self.after)} calls" + (f" ({self.note})" if self.note else "")
        return f"{self.function}: vanished, {_num(self.before)} calls in the baseline" \
            + (f" ({self.note})" if self.note else "")


@dataclass
class Rule:
    """One ``--telemetry-fail-on`` term."""

    text: str
    kind: str
    sign: str = "+"
    """+ (increases), - (decreases) or '' (either)."""
    amount: float = 0.0
    percent: bool = False

    def matches(self, finding: Finding) -> bool:
        if finding.moved:
            return False
        if self.kind in ("new", "vanished"):
            return finding.kind == f"{self.kind}-function"
        if finding.kind != {"calls": "calls", "time": "time", "exceptions": "exceptions"}[self.kind]:
            return False
        if self.kind == "time":
            return finding.after > finding.before and finding.after / finding.before > 1 + self.amount / 100
        delta = finding.after - finding.before
        if self.sign == "+" and delta <= 0 or self.sign == "-" and delta >= 0:
            return False
        if self.percent:
            if finding.before == 0:
                return True
            return abs(delta) / finding.before > self.amount / 100
        return abs(delta) > self.amount


_RULE = re.compile(r"(calls|time|exceptions)(?::([+-]?)(\d+(?:\.\d+)?)(%?))?|(new|vanished)")
RULE_SYNTAX = ("calls:[+|-]N[%], time:+N%, exceptions[:+N], new, vanished (comma-separated), "
               "e.g. calls:+10%,time:+50%")


class RuleError(ValueError):
    """A bad --telemetry-fail-on expression; the message is one line."""


def parse_rules(text: str | Iterable[str]) -> list[Rule]:
    terms = [t for part in ([text] if isinstance(text, str) else list(text)) for t in re.split(r"[,\s]+", part) if t]
    rules = []
    for term in terms:
        match = _RULE.fullmatch(term.strip().lower())
        if match is None:
            raise RuleError(f"{term!r} is not a rule; write {RULE_SYNTAX}")
        if match.group(5):
            rules.append(Rule(term, match.group(5)))
            continue
        kind, sign, amount, percent = match.group(1), match.group(2), match.group(3), match.group(4)
        if amount is None:
            if kind != "exceptions":
                raise RuleError(f"{term!r}: {kind} needs an amount, e.g. {kind}:+10%")
            rules.append(Rule(term, kind, "+", 0.0, False))
            continue
        if kind == "time" and (sign == "-" or not percent):
            raise RuleError(f"{term!r}: time rules are slowdowns in percent, e.g. time:+50%")
        if kind == "time" and float(amount) <= 0:
            raise RuleError(f"{term!r}: a time rule needs a slowdown above 0%")
        rules.append(Rule(term, kind, sign if sign or kind == "calls" else "+", float(amount), bool(percent)))
    return rules


@dataclass
class TimingModel:
    metric: str
    pairs: int = 0
    bins: list[tuple[float, float, float]] = field(default_factory=list)
    """(upper bound of the baseline's pair time in ns, drift, sigma) per bin."""
    judged: bool = False
    min_function_pairs: int = 3
    tau: float = 0.0

    def describe(self) -> str:
        if not self.judged:
            return (f"timing not judged: {self.pairs} (test, function) pairs timed in both runs, "
                    f"{MIN_PAIRS} needed to estimate the noise")
        drifts = [b[1] for b in self.bins]
        sigmas = [b[2] for b in self.bins]
        return (f"timing ({self.metric} per call) judged on {self.pairs} pairs in {len(self.bins)} bins: this run "
                f"x{math.exp(statistics.median(drifts)):.2f} the baseline overall (drift {_range(drifts, True)}), "
                f"noise of one pair sigma {_range(sigmas, False)}, of one function tau {self.tau * 100:.0f}%; "
                f"a finding needs > {Z:g} standard deviations, "
                f"a ratio beyond {MIN_RATIO:g}, {MIN_DELTA_NS / 1e6:g} ms over the run and {self.min_function_pairs} pairs")


@dataclass
class Comparison:
    baseline: Baseline
    current: Baseline
    findings: list[Finding]
    timing: TimingModel
    compared_tests: list[str]
    new_tests: list[str]
    not_run: list[str]
    not_compared: list[str]
    """Tests in both runs that did not pass in both (their calls are not compared)."""
    faster: list[Finding] = field(default_factory=list)
    """Timing improvements beyond the noise (never a failure)."""
    violations: list[tuple[Rule, Finding]] = field(default_factory=list)

    def gate(self, rules: list[Rule]) -> list[tuple[Rule, Finding]]:
        self.violations = [(rule, f) for f in self.findings for rule in rules if rule.matches(f)]
        return self.violations

    @property
    def real_findings(self) -> list[Finding]:
        return [f for f in self.findings if not f.moved]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for finding in self.real_findings:
            out[finding.kind] = out.get(finding.kind, 0) + 1
        moved = sum(1 for f in self.findings if f.moved)
        if moved:
            out["moved"] = moved
        return out


def _key(module_name: tuple[str, str]) -> str:
    return f"{module_name[0]}:{module_name[1]}"


def compare(baseline: Baseline, current: Baseline) -> Comparison:
    """Compare ``current`` (this run, built as a baseline is) with ``baseline``."""
    common = sorted(set(baseline.tests) & set(current.tests))
    compared = [t for t in common if baseline.tests[t].outcome == "passed" and current.tests[t].outcome == "passed"]
    not_compared = [t for t in common if t not in set(compared)]
    new_tests = sorted(set(current.tests) - set(baseline.tests))
    not_run = sorted(set(baseline.tests) - set(current.tests))
    called_before = baseline.functions_called()
    findings: list[Finding] = []

    # What to compare: (label, before calls, after calls, before scale, after scale). Fixtures
    # are compared per setup, calls outside tests per process: both depend on how many
    # pytest-xdist workers ran, not on the code.
    groups: list[tuple[str, Calls, Calls, float, float]] = []
    for test in compared:
        groups.append((test, baseline.tests[test].calls, current.tests[test].calls, 1.0, 1.0))
    for key in sorted(set(baseline.fixtures) & set(current.fixtures)):
        fb, fa = baseline.fixtures[key], current.fixtures[key]
        groups.append((f"[fixture] {key}", fb.calls, fa.calls, float(fb.setups), float(fa.setups)))
    groups.append((OUTSIDE, baseline.outside, current.outside, float(baseline.meta.get("processes") or 1),
                   float(current.meta.get("processes") or 1)))

    totals_before: dict[tuple[str, str], float] = {}
    totals_after: dict[tuple[str, str], float] = {}
    tests_after: dict[tuple[str, str], set[str]] = {}
    pair_findings: list[tuple[tuple[str, str], Finding]] = []
    for label, before, after, scale_b, scale_a in groups:
        for fn in sorted(set(before) | set(after)):
            b, a = before.get(fn), after.get(fn)
            nb = (b.count / scale_b) if b else 0.0
            na = (a.count / scale_a) if a else 0.0
            totals_before[fn] = totals_before.get(fn, 0.0) + (b.count if b else 0)
            totals_after[fn] = totals_after.get(fn, 0.0) + (a.count if a else 0)
            if a:
                tests_after.setdefault(fn, set()).add(label)
            if b is None and fn not in called_before:
                continue  # a new function: one finding for the whole run, below
            if not math.isclose(nb, na, rel_tol=1e-9, abs_tol=1e-9):
                note = "no longer called here" if not na else "newly called here" if not nb else ""
                if scale_b != 1.0 or scale_a != 1.0:
                    note = ("per setup" if label.startswith("[fixture]") else "per process") + (f"; {note}" if note else "")
                pair_findings.append((fn, Finding("calls", _key(fn), label, _round(nb), _round(na), note)))
            eb, ea = (b.errors if b else 0) / scale_b, (a.errors if a else 0) / scale_a
            if not math.isclose(eb, ea, rel_tol=1e-9, abs_tol=1e-9):
                kinds = _exception_change(b, a)
                findings.append(Finding("exceptions", _key(fn), label, _round(eb), _round(ea), kinds))
    same_processes = (baseline.meta.get("processes") or 1) == (current.meta.get("processes") or 1)
    for fn, finding in pair_findings:
        if same_processes and totals_before.get(fn, 0) == totals_after.get(fn, 0):
            finding.moved = True
        findings.append(finding)

    for fn in sorted(set(totals_after) - called_before):
        if totals_after[fn]:
            where = sorted(tests_after.get(fn, ()))
            findings.append(Finding("new-function", _key(fn), None, 0, totals_after[fn],
                                    f"called in {len(where)} test{'s' if len(where) != 1 else ''}"
                                    + (f", e.g. {where[0]}" if where else "")))
    called_now = current.functions_called()
    vanished = set()
    for fn in sorted(totals_before):
        if totals_before[fn] and not totals_after.get(fn) and fn not in called_now:
            vanished.add(_key(fn))
            findings.append(Finding("vanished-function", _key(fn), None, totals_before[fn], 0,
                                    "no test compared called it"))
    # A vanished function is one finding, not one per test that called it.
    findings = [f for f in findings if not (f.kind == "calls" and f.function in vanished)]

    timing, slower, faster = judge_timing(baseline, current, groups)
    findings.extend(slower)
    order = {"calls": 0, "exceptions": 1, "new-function": 2, "vanished-function": 3, "time": 4}
    findings.sort(key=lambda f: (f.moved, order[f.kind], f.function, f.test or ""))
    return Comparison(baseline, current, findings, timing, compared, new_tests, not_run, not_compared, faster)


def judge_timing(baseline: Baseline, current: Baseline,
                 groups: list[tuple[str, Calls, Calls, float, float]]) -> tuple[TimingModel, list[Finding], list[Finding]]:
    """The timing rule of this module's docstring: (model, slower findings, faster ones)."""
    metric = "median" if "median_ns" in baseline.columns and "median_ns" in current.columns else "mean"

    def per_call(stat: Stat) -> float | None:
        if metric == "median":
            return float(stat.median_ns) if stat.median_ns else None
        return stat.total_ns / stat.count if stat.total_ns else None

    pairs: list[tuple[tuple[str, str], float, float, Stat, Stat]] = []  # fn, x, baseline pair ns, b, a
    for _label, before, after, _sb, _sa in groups:
        for fn in set(before) & set(after):
            b, a = before[fn], after[fn]
            ub, ua = per_call(b), per_call(a)
            if ub and ua and ub > 0 and ua > 0:
                pairs.append((fn, math.log(ua / ub), float(b.total_ns), b, a))
    model = TimingModel(metric, len(pairs))
    if len(pairs) < MIN_PAIRS:
        return model, [], []
    model.judged = True
    ordered = sorted(pairs, key=lambda p: p[2])
    nbins = max(1, min(MAX_BINS, len(ordered) // BIN_PAIRS))
    size = len(ordered) / nbins
    bin_of: list[tuple[float, float]] = []
    for i in range(nbins):
        chunk = ordered[round(i * size):round((i + 1) * size)]
        xs = [p[1] for p in chunk]
        drift = statistics.median(xs)
        sigma = max(1.4826 * statistics.median(abs(x - drift) for x in xs), SIGMA_FLOOR)
        model.bins.append((chunk[-1][2], drift, sigma))
        bin_of.extend([(drift, sigma)] * len(chunk))
    by_function: dict[tuple[str, str], list[tuple[float, float, Stat, Stat]]] = {}
    for (fn, x, _ns, b, a), (drift, sigma) in zip(ordered, bin_of):
        by_function.setdefault(fn, []).append((sigma, x - drift, b, a))
    slower, faster = [], []
    processes = max(int(baseline.meta.get("processes") or 1), int(current.meta.get("processes") or 1), 1)
    model.min_function_pairs = 2 * processes + 1
    judged = {fn: items for fn, items in by_function.items() if len(items) >= model.min_function_pairs}
    # The noise of a whole function: all its pairs move together from run to run (where its code
    # landed in memory, the branch predictor, the collector), which no number of pairs averages
    # away. Its spread, tau, is that of the functions' median residuals (most did not change).
    medians = [statistics.median(r for _s, r, _b, _a in items) for items in judged.values()]
    if len(medians) >= MIN_FUNCTIONS:
        center = statistics.median(medians)
        model.tau = max(1.4826 * statistics.median(abs(m - center) for m in medians), TAU_FLOOR)
    else:
        model.tau = TAU_DEFAULT
    for fn, items in sorted(judged.items()):
        n = len(items)
        residual = statistics.median(r for _s, r, _b, _a in items)
        error = 1.2533 * statistics.median(s for s, _r, _b, _a in items) / math.sqrt(n)
        score = residual / math.sqrt(model.tau ** 2 + error ** 2)
        ratio = math.exp(residual)
        # The time this change adds (or saves) over the run, at this run's call counts.
        delta = sum(a.total_ns - a.total_ns / math.exp(r) for _z, r, _b, a in items)
        if abs(score) <= Z or abs(delta) < MIN_DELTA_NS:
            continue
        note = (f"{score:+.1f} standard deviations over {n} pair{'s' if n != 1 else ''}, "
                f"{delta / 1e6:+.1f} ms over the run, drift removed")
        if score > Z and ratio >= MIN_RATIO:
            slower.append(Finding("time", _key(fn), None, 1.0, ratio, note, score=score))
        elif score < -Z and ratio <= 1 / MIN_RATIO:
            faster.append(Finding("time", _key(fn), None, 1.0, ratio, note, score=score))
    return model, slower, faster


def _exception_change(b: Stat | None, a: Stat | None) -> str:
    before = b.exceptions if b else {}
    after = a.exceptions if a else {}
    parts = []
    for name in sorted(set(before) | set(after)):
        if before.get(name, 0) != after.get(name, 0):
            parts.append(f"{name} {before.get(name, 0)} -> {after.get(name, 0)}")
    return ", ".join(parts)


def _round(value: float) -> float:
    return int(value) if float(value).is_integer() else round(value, 3)


def _num(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.3f}"


def _pct(change: float) -> str:
    if math.isinf(change):
        return "new here"
    return f"{change * 100:+.1f}%"


def _range(values: list[float], ratio: bool) -> str:
    lo, hi = min(values), max(values)
    if ratio:
        return f"x{math.exp(lo):.2f}..x{math.exp(hi):.2f}"
    return f"{lo * 100:.0f}%..{hi * 100:.0f}%"
