"""What the pytest plugin's parts share without importing one another: the name the
telemetry session is registered under in pytest's plugin manager (``active_session`` finds
it, for the gate's plugin and any other), and the modules imported before the plugin
loaded. ``plugin`` imports this before anything else of the package, so ``LOADED_BEFORE``
is taken when pytest loads the plugin. Standard library and pytest only, like ``plugin``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .plugin.session import TelemetrySession

SESSION_NAME = "telemetry-inject-session"
LOADED_BEFORE = frozenset(sys.modules)
"""The modules imported before pytest loaded this plugin: at interpreter start-up (a
``.pth`` file, ``sitecustomize``) or by a plugin loaded earlier (the session's summary
says which, for the project's modules among them)."""


def active_session(config: pytest.Config) -> TelemetrySession | None:
    return config.pluginmanager.get_plugin(SESSION_NAME)
