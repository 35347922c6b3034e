"""One exception hierarchy; every message is one line that says what to do."""

from __future__ import annotations


class TelemetryInjectError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(TelemetryInjectError):
    """A setting has a value that cannot be used."""


class SourceError(TelemetryInjectError):
    """A source file cannot be read, decoded or parsed; it is left untouched."""


class UnsupportedSource(SourceError):
    """The file is not in a language or form this tool handles (binary, unknown encoding)."""


class SourceSyntaxError(SourceError):
    """The file does not parse."""


class TemplateNotApplicable(TelemetryInjectError):
    """A template cannot instrument this function; the reason says why."""


class FormNotAvailable(TemplateNotApplicable):
    """The template's style has no form for its target at all (the otel target has no try
    form): nothing about the function, so not worth a note when another style fits."""


class ValidationError(TelemetryInjectError):
    """An insertion script failed a check (syntax, security, equivalence, its test)."""


class SecurityViolation(ValidationError):
    """An insertion script uses something outside the allowlist."""


class SandboxError(TelemetryInjectError):
    """The sandbox could not run a script, or the script broke one of its limits."""


class CacheError(TelemetryInjectError):
    """The cache folder cannot be used (not a cache, unreadable)."""
