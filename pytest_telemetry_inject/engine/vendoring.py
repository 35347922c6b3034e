"""Where the vendored runtime of an instrumented file goes, and the name the file imports it
by. The ``telemetry-inject`` command, the pre-commit hook and the pytest plugin ask the same
functions, so they put the same files in the same places.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..languages import get_language
from ..runtime.vendor import DEFAULT_MODULE
from ..scan import ScanItem
from ..settings import Settings

if TYPE_CHECKING:
    from .tasks import RunOptions

VendoredFiles = list[tuple[Path | None, bytes | None]]
"""[(file relative to the item's root, its content)]; see ``vendored_runtime``."""


def vendored_import(item: ScanItem, settings: Settings) -> tuple[str, Path | None]:
    """(import name, file the vendored module goes to, relative to the item's root) for a
    file under ``item.root``. Explicit ``vendored_module`` settings win."""
    if settings.vendored_module:
        return settings.vendored_module, None
    folder = item.path.parent
    top: Path | None = None
    while (folder / "__init__.py").is_file():
        top = folder
        if folder.resolve() == item.root.resolve() or folder.parent == folder:
            break
        folder = folder.parent
    if top is None:
        location = item.relative.parent / f"{DEFAULT_MODULE}.py"
        return DEFAULT_MODULE, location
    # The dotted name reaches above the item's root when the root is inside a package.
    names: list[str] = []
    above = top
    while (above / "__init__.py").is_file():
        names.append(above.name)
        if above.parent == above:
            break
        above = above.parent
    names.reverse()
    location = top.relative_to(item.root) / f"{DEFAULT_MODULE}.py" if top != item.root else Path(f"{DEFAULT_MODULE}.py")
    return ".".join(names + [DEFAULT_MODULE]), location


def vendored_runtime(item: ScanItem, settings: Settings) -> tuple[str, VendoredFiles]:
    """(import name, [(file relative to the item's root, its content)]) of the vendored
    runtime a file needs. A language with a ``vendored_runtime(path, root, settings)``
    method decides (JavaScript, TypeScript, Go: which files, where, and the name the file
    imports them by); for Python it is ``vendored_import``'s one module, whose content
    (None here) ``write_vendored`` writes, and whose location is None for an explicit
    ``vendored_module``."""
    language = get_language(item.language) if item.language else None
    hook = getattr(language, "vendored_runtime", None)
    if hook is None:
        import_name, location = vendored_import(item, settings)
        return import_name, [(location, None)]
    plan = hook(item.path, item.root, settings)
    return plan.import_name, [(relative, content) for relative, content in plan.files]


def vendored_targets_of(item: ScanItem, settings: Settings, options: RunOptions,
                        project_root: Path) -> tuple[str, dict[str, bytes | None]]:
    """(import name, {destination: content or None for Python's module}) for one file."""
    import_name, files = vendored_runtime(item, settings)
    targets: dict[str, bytes | None] = {}
    for location, content in files:
        if content is None:
            where = _vendored_destination(item, location, options, settings, project_root)
        else:
            assert location is not None  # a language's runtime file always has its place
            where = str((options.output_dir or item.root) / location)
        if where:
            targets[where] = content
    return import_name, targets


def _vendored_destination(item: ScanItem, location: Path | None, options: RunOptions,
                          settings: Settings, project_root: Path) -> str | None:
    if location is None:  # an explicit module: its path is set, or derived from its name
        relative = settings.vendored_path or settings.vendored_module.replace(".", "/") + ".py"
        absolute = (project_root / relative).resolve()
        if options.output_dir is None:
            return str(absolute)
        try:
            return str(options.output_dir / absolute.relative_to(item.root.resolve()))
        except ValueError:
            return str(options.output_dir / Path(relative).name)
    if options.output_dir is not None:
        return str(options.output_dir / location)
    return str(item.root / location)
