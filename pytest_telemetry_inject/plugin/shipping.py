"""``--telemetry-output DIR``: the project's modules instrumented for shipping.

The session instruments on the fly for the ``runtime`` target; what is shipped must not
depend on this package, so the same files are instrumented again for the ``vendored``
target, written with the vendored runtime beside them and a manifest of what was done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..engine.cache import ScriptCache
from ..engine.pipeline import Engine
from ..settings import Settings


def write_output(folder: Path, files: Iterable[str], settings: Settings, cache: ScriptCache | None,
                 rootdir: Path) -> dict[str, Any]:
    """The ``files`` instrumented for shipping (target ``vendored``: no dependency on this
    package), the vendored runtime and ``telemetry-manifest.json``, under ``folder`` at their
    paths relative to ``rootdir``; the manifest."""
    from .. import __version__
    from ..runtime.vendor import write_vendored
    from ..sourcefile import write_atomic

    settings = dataclasses.replace(settings, target="vendored", origins={})
    engine = Engine(settings, cache)
    manifest: dict[str, Any] = {"format": 1, "tool": f"pytest-telemetry-inject {__version__}",
                                "settings": json.loads(settings.output_fingerprint()), "files": [], "vendored": []}
    vendored: set[Path] = set()
    for name in sorted(files):
        entry, location = _ship_file(Path(name), folder, rootdir, engine)
        manifest["files"].append(entry)
        if location is not None:
            vendored.add(location)
    for module in sorted(vendored):
        write_vendored(module)
        manifest["vendored"].append(module.relative_to(folder).as_posix())
    write_atomic(str(folder / "telemetry-manifest.json"), json.dumps(manifest, indent=2).encode())
    return manifest


def _ship_file(path: Path, folder: Path, rootdir: Path, engine: Engine) -> tuple[dict[str, Any], Path | None]:
    """Write one file instrumented (or as it is, when it cannot be) under ``folder``: its
    manifest entry, and where the vendored runtime it imports goes (None: it imports none)."""
    from ..engine.vendoring import vendored_import
    from ..scan import ScanItem
    from ..sourcefile import write_atomic

    try:
        relative = path.relative_to(rootdir)
    except ValueError:
        relative = Path(path.name)
    import_name, location = vendored_import(ScanItem(path, rootdir, relative, "python"), engine.settings)
    data = path.read_bytes()
    result = engine.instrument(data, str(relative), import_name=import_name)
    output = result.output if result.output is not None else data
    target = folder / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(str(target), output, like=str(path))
    counts = result.counts()[0]
    entry = {"path": relative.as_posix(), "status": result.status, "reason": result.reason,
             "source_sha256": hashlib.sha256(data).hexdigest(), "output_sha256": hashlib.sha256(output).hexdigest(),
             "functions_instrumented": counts.get("instrumented", 0),
             "functions_skipped": counts.get("skipped", 0) + counts.get("failed", 0)}
    shipped_with = folder / location if result.output is not None and location is not None else None
    return entry, shipped_with
