"""What every test shares: the cache key and user cache folder of this test session.

The tool seals what it writes into a cache with a key from the user's cache folder
(engine/seal.py). The tests use a key file of their own, so that a run never touches the
real user's key, and every subprocess they start (the command line, pytester's pytest, the
pre-commit hook) sees the same machine. A test that plays another machine points
``TELEMETRY_INJECT_KEY_FILE`` elsewhere for its own subprocess.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from pytest_telemetry_inject.engine import seal

# litellm imports the importlib_metadata backport, which on its import takes the standard
# library's finder of distributions off ``PathFinder`` and appends its own to
# ``sys.meta_path``. First imported inside a pytester test (a fake LLM server's), whose
# teardown restores ``sys.meta_path``, it left the worker with no finder of distributions at
# all: every later import of litellm failed ("No package metadata was found for httpx2") and
# the LLM tests after it were skipped. Imported here, before any test, its finder is part of
# what pytester restores.
with contextlib.suppress(ImportError):
    import importlib_metadata  # noqa: F401

if "TELEMETRY_INJECT_KEY_FILE" not in os.environ:
    _home = tempfile.mkdtemp(prefix="telemetry-inject-user-")
    os.environ["TELEMETRY_INJECT_KEY_FILE"] = os.path.join(_home, "cache.key")
    # The user's cache folder (of files outside any project) is this session's too.
    os.environ["XDG_CACHE_HOME"] = os.path.join(_home, "xdg-cache")
os.environ.pop("TELEMETRY_INJECT_CACHE_KEY", None)
# The tool's settings from the developer's shell (TELEMETRY_INJECT_RAISE_FAULTS, _STYLE,
# _DISABLED, ...) would change what the tests' subprocesses do: they are dropped. Kept: where
# the tests find their inputs and how long the stress tests run.
_HARNESS = {"KEY_FILE", "WHEELHOUSE", "NPM_DIR", "TYPESCRIPT", "STRESS_SECONDS", "STRESS_RUNS"}
for _name in [name for name in os.environ if name.startswith("TELEMETRY_INJECT_")]:
    if _name.removeprefix("TELEMETRY_INJECT_") not in _HARNESS:
        del os.environ[_name]
seal.forget()
