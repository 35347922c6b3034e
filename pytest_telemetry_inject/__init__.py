"""Deterministic, verified, cached function-level telemetry for Python (and JS, TS, Go).

Importing this package is cheap on purpose: it imports nothing heavy (never litellm, never
OpenTelemetry). The front doors are the pytest plugin (``pytest --inject-telemetry``), the
pre-commit hook and the ``telemetry-inject`` command.
"""

__version__ = "0.1.0"
