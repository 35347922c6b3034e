"""What the pytest plugin's parts share without importing one another: the name the
telemetry session is registered under in pytest's plugin manager (``active_session`` finds
it, for the gate's plugin and any other), and the modules imported before the plugin
loaded. ``plugin`` imports this before anything else of the package, so ``LOADED_BEFORE``
is taken when pytest loads the plugin. Standard library and pytest only, like ``plugin``."""

from __future__ import annotations

import gc
import sys
from typing import TYPE_CHECKING, Any

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


class gc_paused:  # noqa: N801 (used as a function: ``with gc_paused():``)
    """The cyclic garbage collector held off while the plugin does its own bulk work (its
    imports and the session's start, an instrumented module's code, the reports), and set
    back as it was after.

    The collector runs when the objects allocated since its last run pass a threshold (700),
    and every eleventh of those runs looks at older objects too; each eleventh of *those* is
    a full collection. The plugin's own work allocates thousands of objects that stay alive (its
    modules' functions and classes, the cache's records): left on, the collector would run
    over them several times for nothing, and those runs count towards the thresholds of the
    project's own collections, so a full collection can fall inside a suite that has none
    without the plugin (toolz's: ~15 ms). Held off, the same allocations make one young
    collection where they made several. Nothing is frozen or hidden (``gc.get_objects()``
    sees everything), no project code runs inside, and a collector the process had turned
    off stays off."""

    __slots__ = ("enabled",)

    def __enter__(self) -> None:
        self.enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            gc.enable()
