"""The CI gate: baselines of per-test telemetry, comparisons, and test selection by calls.

``pytest --telemetry-save[=NAME]`` stores a :class:`~.baseline.Baseline` (per test, per
function: calls, exceptions, timing), ``--telemetry-compare[=NAME|PATH]`` compares a run with
one (:mod:`.compare`: exact call counts, timing judged against the noise) and
``--telemetry-fail-on`` turns findings into a failing exit; ``--telemetry-affected[=REF]``
runs only the tests that called a function changed since REF (:mod:`.affected`). The
results are printed in the terminal and written as Markdown and HTML (:mod:`.render`).
The pytest side is :mod:`.plugin`. See docs/ci-gate.md.

Standard library and pytest only; imported only when one of these options is given.
"""
