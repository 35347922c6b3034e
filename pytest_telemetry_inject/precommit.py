"""``telemetry-inject-hook``: the pre-commit hook. Instruments only what a commit changes.

Two ways in:

* the pre-commit framework (``.pre-commit-hooks.yaml``): pre-commit passes the staged files,
  after stashing unstaged edits, so each file on disk is what will be committed. The hook
  instruments the functions whose lines differ from ``HEAD`` and rewrites those files; by
  pre-commit's convention it stages nothing and exits 1 when it changed something.
* a plain git hook (``hooks/pre-commit``, ``--staged``): the hook reads the staged blobs
  themselves, instruments them, writes them back to the index and applies the same
  instrumentation to the working-tree files, so unstaged edits survive; the commit goes on
  with the instrumented content, or stops when something went wrong.

Exit codes: 0 nothing to do (or, ``--staged``, everything fixed and staged); 1 files were
changed (``--check``: would be), or the vendored module is not in the commit; 2 usage,
configuration or git error; 3 some file could not be processed (it was left unchanged).

The hook never imports anything heavy: a warm run (file memo hit) parses nothing.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CacheError, TelemetryInjectError, UnsupportedSource
from .gitdiff import FileChanges, GitError, Repository, line_changes, read_blobs, staged_files
from .settings import Settings, find_project_root
from .sourcefile import decode_source, read_bytes, write_atomic

if TYPE_CHECKING:
    from .engine.pipeline import Engine, FileResult
    from .languages.base import FunctionRecord

PROG = "telemetry-inject-hook"
HOOK_DEFAULTS = {"style": "decorator", "target": "vendored"}
"""The hook's own defaults (one added line per function, no new runtime dependency);
``[tool.telemetry-inject]``, ``.env`` and the environment still override them."""
EXIT_OK, EXIT_CHANGED, EXIT_USAGE, EXIT_ERRORS = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Instrument the functions a commit changes (a span per call), for pre-commit "
                    "or as a plain git pre-commit hook.",
        epilog="Exit codes: 0 nothing to do; 1 files changed (--check: would change) or the vendored "
               "module is not staged; 2 usage, configuration or git error; 3 a file could not be processed.")
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="files to process (pre-commit passes the staged ones); --staged: limits the staged files")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a changed function lacks telemetry")
    parser.add_argument("--all", action="store_true",
                        help="every function of the given files, not only the changed ones")
    parser.add_argument("--staged", action="store_true",
                        help="plain git hook: work on the staged blobs, write them back to the index and apply "
                             "the same change to the working tree")
    parser.add_argument("--base", metavar="REV",
                        help="compare with REV (default: HEAD; pre-commit's --from-ref/--to-ref: their merge base)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only changes and errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    hook = _Hook(args)
    try:
        return hook.run()
    except KeyboardInterrupt:
        hook.error("interrupted")
        return 130
    except (TelemetryInjectError, GitError) as exc:
        hook.error(str(exc))
        return EXIT_USAGE
    except OSError as exc:  # git is not installed, the folder vanished...
        hook.error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        return EXIT_USAGE


# -- one project (settings, cache, engine) per project root ---------------------------------------


@dataclass
class _Project:
    root: Path
    settings: Settings
    _engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from .engine.cache import ScriptCache
            from .engine.pipeline import Engine

            cache = ScriptCache(self.root / self.settings.cache_dir) if self.settings.use_cache else None
            self._engine = Engine(self.settings, cache)
        return self._engine

    def excluded(self, path: Path) -> bool:
        if not self.settings.exclude:
            return False
        try:
            relative = path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return False
        return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(relative, p.rstrip("/") + "/*")
                   for p in self.settings.exclude)

    def vendored(self, path: Path) -> tuple[str, dict[str, bytes | None]]:
        """(import name, {absolute path: content} of the vendored runtime) for a file of this
        project: the same files in the same places as the ``telemetry-inject`` command (one
        Python module, whose content is None here; for JavaScript, TypeScript and Go the
        language's runtime files)."""
        from .engine.tasks import RunOptions
        from .engine.vendoring import vendored_targets_of
        from .languages import language_for
        from .scan import ScanItem

        try:
            relative = path.resolve().relative_to(self.root)
        except ValueError:
            relative = Path(path.name)
        language = language_for(str(path))
        item = ScanItem(path.resolve(), self.root, relative, language.name if language else "python")
        name, targets = vendored_targets_of(item, self.settings, RunOptions(in_place=True), self.root)
        return name, {str(Path(where).resolve()): content for where, content in targets.items()}


# -- which functions: the changed ones -----------------------------------------------------------


class _ChangedFunctions:
    """``select`` for the engine: the functions whose lines the commit changed, and every
    function whose span name is stale (renamed or moved: its class may have been renamed
    without a line of it changing).

    The engine asks twice when a file has stale spans: first about the stale functions (to
    take their old spans off), then about the functions of the text without those spans,
    whose lines have moved up. Line numbers only mean something in the first text, so the
    second round is answered through the function's position in the file, which stripping
    does not change."""

    def __init__(self, changes: FileChanges, data: bytes, path: str, settings: Settings) -> None:
        self.changes = changes
        self.data, self.path, self.settings = data, path, settings
        self.stale_seen = False
        self._second: dict[int, bool] | None = None

    def touched(self, record: FunctionRecord) -> bool:
        return self.changes.touches(record.start_line, record.end_line, record.indent)

    def __call__(self, record: FunctionRecord) -> bool:
        if record.stale:
            self.stale_seen = True
            return True
        if not self.stale_seen:
            return self.touched(record)
        if self._second is None:
            self._second = self._map_second_round()
        return self._second.get(record.def_line, False)

    def _map_second_round(self) -> dict[int, bool]:
        from .languages import language_for

        language = language_for(self.path, self.data[:256])
        assert language is not None
        text = decode_source(self.data).text
        first = language.parse(text, self.path, self.settings)
        stale = {r.def_line for r in first.functions if r.stale}
        second = language.parse(language.strip(text, only=stale).text, self.path, self.settings)
        if [r.qualname for r in first.functions] == [r.qualname for r in second.functions]:
            return {after.def_line: self.touched(before) or before.stale
                    for before, after in zip(first.functions, second.functions, strict=True)}
        names = {r.qualname for r in first.functions if self.touched(r) or r.stale}
        return {r.def_line: r.qualname in names for r in second.functions}


# -- results ------------------------------------------------------------------------------------


@dataclass
class _Done:
    """What happened to one file."""

    display: str
    path: Path
    project: _Project
    changed: bool = False
    output: bytes | None = None
    count: int = 0
    instrumented: set[str] = field(default_factory=set)
    error: str = ""
    content: bytes = b""
    """The file's content after the hook (for the vendored-module check)."""


class _Hook:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.projects: dict[Path, _Project] = {}
        self._roots: dict[Path, Path] = {}
        self.status = EXIT_OK

    # -- messages ---------------------------------------------------------------------------

    def error(self, message: str) -> None:
        print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)

    def note(self, message: str) -> None:
        if not self.args.quiet:
            print(f"{PROG}: {_one_line(message)}", file=sys.stderr)

    def fail(self, code: int) -> None:
        self.status = max(self.status, code)

    # -- setup ------------------------------------------------------------------------------

    def project(self, path: Path) -> _Project:
        folder = path.resolve().parent
        root = self._roots.get(folder)
        if root is None:
            root = self._roots[folder] = find_project_root(folder).resolve()
        project = self.projects.get(root)
        if project is None:
            project = self.projects[root] = _Project(root, Settings.load(root, defaults=HOOK_DEFAULTS))
        return project

    def base(self, repo: Repository) -> str | None:
        """The commit to compare with: None when there is none yet (everything is new)."""
        if self.args.base:
            commit = repo.resolve(self.args.base)
            if commit is None:
                raise GitError(f"--base {self.args.base}: no such commit")
            return commit
        source, target = os.environ.get("PRE_COMMIT_FROM_REF"), os.environ.get("PRE_COMMIT_TO_REF")
        if source and target and not self.args.staged:
            # pre-commit run --from-ref A --to-ref B (CI, pre-push): the files changed in A...B.
            merge_base = repo.git("merge-base", source, target, check=False).decode().strip()
            if merge_base:
                return merge_base
        return repo.resolve("HEAD")

    def run(self) -> int:
        if self.args.staged:
            return self.run_staged()
        return self.run_worktree()

    # -- pre-commit framework: the files on disk --------------------------------------------

    def run_worktree(self) -> int:
        candidates: list[tuple[str, Path, bytes]] = []
        for name in self.args.files:
            path = Path(name)
            if path.is_symlink() or not path.is_file():
                continue  # pre-commit passes no links; writing through one would replace it
            try:
                data = read_bytes(name)
            except OSError as exc:
                self.error(f"{name}: cannot read: {exc.strerror or exc}")
                self.fail(EXIT_ERRORS)
                continue
            if self._wanted(name, path, data):
                candidates.append((name, path, data))
        if not candidates:
            return self.status
        changes: dict[str, FileChanges] = {}
        relative: dict[str, str] = {}
        repo, base = None, None
        if not self.args.all:
            repo = Repository.find(".")
            relative = {name: repo.relative(name) for name, _path, _data in candidates}
            base = self.base(repo)
            changes = repo.changes(list(relative.values()), base=base, cached=False)
        done: list[_Done] = []
        for name, path, data in candidates:
            file_changes = None
            if not self.args.all:
                assert repo is not None
                file_changes = self._beyond_telemetry(repo, base, relative[name], data,
                                                      changes.get(relative[name], FileChanges(whole=True)))
            result = self.process(name, path, data, file_changes)
            done.append(result)
            if result.error or not result.changed:
                continue
            if self.args.check:
                print(f"Would instrument {name}: {_functions(result.count)}")
                self.fail(EXIT_CHANGED)
                continue
            try:
                if read_bytes(name) != data:  # an editor saved it meanwhile: theirs wins
                    self.error(f"{name}: it changed while the hook ran; it is left as it is now")
                    self.fail(EXIT_ERRORS)
                    continue
                write_atomic(str(path), result.output or b"")
            except OSError as exc:
                self.error(f"{name}: cannot write: {exc.strerror or exc}; it is left unchanged")
                self.fail(EXIT_ERRORS)
                continue
            print(f"Instrumented {name}: {_functions(result.count)}")
            self.fail(EXIT_CHANGED)
        self.vendored_modules(done, stage=False)
        return self.status

    def _wanted(self, name: str, path: Path, data: bytes) -> bool:
        from .languages import language_for
        from .runtime.vendor import MARKER

        language = language_for(name, data[:256])
        if language is None:
            return False  # pre-commit's types_or already keeps to supported languages
        if data.startswith(getattr(language, "runtime_marker", MARKER).encode()):
            return False  # the vendored runtime itself
        return not self.project(path).excluded(path)

    @staticmethod
    def _beyond_telemetry(repo: Repository, base: str | None, name: str, data: bytes,
                          changes: FileChanges) -> FileChanges:
        """The changes, less those the telemetry made. Where the telemetry has lines of its
        own (Python) they touch no function; where it shares lines with the code (JavaScript,
        TypeScript, Go: the import sits on the first line, maybe a function's), the file and
        its base are compared with their telemetry taken out (which moves no line)."""
        from .languages import language_for

        language = language_for(name, data[:256])
        if changes.whole or changes.empty or base is None or language is None \
                or not language.telemetry_shares_lines:
            return changes
        try:
            text = decode_source(data).text
            stripped = language.strip(text).text
        except TelemetryInjectError:  # undecodable, or not parsable: the engine says so later
            return changes
        if stripped == text:
            return changes
        try:
            old = language.strip(decode_source(repo.git("show", f"{base}:{name}")).text).text
        except (GitError, TelemetryInjectError):
            return changes  # renamed, or unreadable: git's own view
        return line_changes(old, stripped)

    def process(self, display: str, path: Path, data: bytes, changes: FileChanges | None) -> _Done:
        """Run the engine on one file's bytes; report skips, failures and errors. ``changes``
        None: every function."""
        project = self.project(path)
        done = _Done(display, path, project, content=data)
        select: Callable[[FunctionRecord], bool] | None = None
        selection = ""
        if changes is not None:
            if changes.empty:
                return done  # nothing of it changed: not even parsed
            select = _ChangedFunctions(changes, data, display, project.settings)
            selection = "git-changes:" + changes.key()
        try:
            result = project.engine.instrument(data, display, import_name=project.vendored(path)[0],
                                               select=select, selection=selection)
        except CacheError as exc:  # a cache refused (a symbolic link in it): the reason, once per file
            result = None
            done.error = str(exc)
        except Exception as exc:  # an engine bug must not leave a half-done commit behind
            result = None
            done.error = f"internal error: {type(exc).__name__}: {exc}"
        if result is not None:
            done.error = self._problem(result, data, display)
            if result.counters.corrupt:
                self.note(f"{display}: {result.counters.corrupt} damaged or foreign cache entries were found and "
                          "rebuilt (nothing from them was used)")
        if done.error:
            self.error(f"{display}: {done.error}; it is left unchanged")
            self.fail(EXIT_ERRORS)
            return done
        assert result is not None
        if result.status == "skipped":
            self.note(f"skipped {display}: {result.reason}")
        for outcome in result.functions if result.counts()[0].get("failed") else ():
            if outcome.status == "failed":
                self.note(f"warning: {display}:{outcome.line}: {outcome.qualname} not instrumented: {outcome.reason}")
        done.instrumented = {f.qualname for f in result.functions if f.status == "instrumented"} \
            if result.changed else set()
        done.changed, done.output = result.changed, result.output
        done.count = result.counts()[0].get("instrumented", 0)
        if result.output is not None:
            done.content = result.output
        return done

    def _problem(self, result: FileResult, data: bytes, display: str) -> str:
        """Why a file cannot be processed ('' when it can): the engine's errors, and a file
        that does not parse or decode (the engine merely skips those; a commit must stop)."""
        if result.status == "error":
            return result.reason
        if result.status != "skipped":
            return ""
        from .languages import language_for

        try:
            text = decode_source(data).text
        except UnsupportedSource as exc:
            return str(exc)
        language = language_for(display, data[:256])
        # Python's own compiler decides: a file it accepts but tree-sitter does not (newer
        # syntax) is only skipped, with a note.
        problem = language.check_syntax(text, display) if language is not None else None
        return f"does not parse ({problem})" if problem else ""

    # -- the vendored module ----------------------------------------------------------------

    def vendored_modules(self, done: list[_Done], *, stage: bool, repo: Repository | None = None) -> None:
        """Write the vendored module that instrumented files import (once, whoever else runs
        at the same time), and make sure it goes into the commit: pre-commit users are told
        to ``git add`` it; ``--staged`` adds it."""
        needed: dict[str, list[str]] = {}
        contents: dict[str, bytes | None] = {}
        for item in done:
            if item.error or item.project.settings.target != "vendored":
                continue
            name, files = item.project.vendored(item.path)
            if files and _imports_vendored(item.content, name, item.path):
                for destination, content in files.items():
                    needed.setdefault(destination, []).append(item.display)
                    contents[destination] = content
        if not needed:
            return
        from .runtime.vendor import vendored_source

        python = vendored_source().encode("utf-8")
        for destination, users in sorted(needed.items()):
            shown = _shown(destination)
            try:
                state = _ensure_vendored(destination, contents[destination] or python, write=not self.args.check)
            except OSError as exc:
                self.error(f"cannot write the vendored module {shown}: {exc.strerror or exc}")
                self.fail(EXIT_ERRORS)
                continue
            if state in ("missing", "outdated"):
                print(f"The vendored telemetry module {shown} is {state} (imported by {users[0]})")
                self.fail(EXIT_CHANGED)
                continue
            if state:
                print(f"{'Wrote' if state == 'written' else 'Updated'} the vendored telemetry module {shown}")
            if repo is None:
                try:
                    repo = Repository.find(os.path.dirname(destination))
                except GitError:
                    continue
            unstaged = _not_staged(repo, destination)
            if unstaged is None:
                continue
            if stage and not self.args.check:
                repo.git("add", "--", unstaged)
                print(f"Staged the vendored telemetry module {shown}")
            else:
                print(f"The vendored telemetry module {shown} is not staged: git add {shown}")
                self.fail(EXIT_CHANGED)

    # -- plain git hook: the staged blobs ---------------------------------------------------

    def run_staged(self) -> int:
        from .languages import language_for

        repo = Repository.find(".")
        base = self.base(repo)
        entries = staged_files(repo, base)
        if self.args.files:
            wanted = {repo.relative(name) for name in self.args.files}
            entries = [e for e in entries if e[2] in wanted]
        # A file's language: by extension; without one, by the shebang of its staged blob.
        blobs = read_blobs(repo, [blob for _mode, blob, name in entries
                                  if language_for(name) is not None or not os.path.splitext(name)[1]])
        work: list[tuple[str, str, str, Path, bytes]] = []
        for mode, blob, name in entries:
            data = blobs.get(blob)
            path = Path(repo.top, name)
            if data is not None and self._wanted(name, path, data):
                work.append((mode, blob, name, path, data))
        if not work:
            return self.status
        changes = {} if self.args.all else repo.changes([w[2] for w in work], base=base, cached=True)
        unstaged = repo.unstaged([w[2] for w in work])
        plans: list[tuple[str, str, _Done, bytes | None]] = []
        for mode, _blob, name, path, data in work:
            file_changes = None
            if not self.args.all:
                file_changes = self._beyond_telemetry(repo, base, name, data, changes.get(name, FileChanges(whole=True)))
            result = self.process(name, path, data, file_changes)
            if result.error or not result.changed:
                continue
            new_worktree = self._same_in_worktree(name, path, data, result, partial=name in unstaged)
            if result.error:
                continue
            plans.append((mode, name, result, new_worktree))
        if self.status >= EXIT_ERRORS:
            self.error("nothing was changed; the commit is stopped")
            return self.status
        for mode, name, result, new_worktree in plans:
            if self.args.check:
                print(f"Would instrument {name}: {_functions(result.count)}")
                self.fail(EXIT_CHANGED)
                continue
            try:
                if new_worktree is not None:
                    write_atomic(str(result.path), new_worktree)
                if name in unstaged:
                    # Partly staged: the index gets the instrumented blob; `git add` would
                    # take the unstaged edits along.
                    blob = repo.git("hash-object", "-w", "--no-filters", "--stdin",
                                    input=result.output).decode().strip()
                    repo.git("update-index", "--cacheinfo", f"{mode},{blob},{name}")
                else:
                    repo.git("add", "--", name)
            except (OSError, GitError) as exc:
                self.error(f"{name}: cannot write: {getattr(exc, 'strerror', None) or exc}")
                self.fail(EXIT_ERRORS)
                continue
            print(f"Instrumented {name}: {_functions(result.count)}"
                  + (" (staged part; unstaged edits kept)" if name in unstaged else ""))
        if plans and not self.args.check and \
                os.path.basename(os.environ.get("GIT_INDEX_FILE", "")).startswith("next-index"):
            # `git commit <paths>`: git commits the temporary index the hook changed, but
            # keeps its own index from before the hook.
            self.note("note: with `git commit <paths>` git's index keeps the files as they were before "
                      "this hook; after the commit run: git add " + " ".join(p[1] for p in plans))
        done = [plan[2] for plan in plans]
        for _mode, _blob, name, path, data in work:
            if not any(d.display == name for d in done):
                done.append(_Done(name, path, self.project(path), content=data))
        self.vendored_modules(done, stage=True, repo=repo)
        if self.status >= EXIT_ERRORS:
            return self.status
        # Fixed and staged: the commit goes on (unless --check found something).
        return EXIT_CHANGED if self.args.check and self.status else EXIT_OK

    def _same_in_worktree(self, name: str, path: Path, blob: bytes, result: _Done,
                          partial: bool) -> bytes | None:
        """The new working-tree bytes of a staged file the hook instrumented (None: leave it):
        the same functions get the same telemetry there, so neither the commit nor the
        unstaged edits lose anything. Sets ``result.error`` when that cannot be done."""
        try:
            worktree = read_bytes(str(path))
        except FileNotFoundError:
            return None  # deleted in the work tree, unstaged: nothing to keep in step
        except OSError as exc:
            result.error = f"cannot read the working-tree copy: {exc.strerror or exc}"
            self.error(f"{name}: {result.error}")
            self.fail(EXIT_ERRORS)
            return None
        if worktree == blob:
            return result.output
        # Unstaged edits (or a filter such as core.autocrlf): select the same functions by name.
        names = sorted(result.instrumented)
        project = result.project
        try:
            again = project.engine.instrument(worktree, name, import_name=project.vendored(path)[0],
                                              select=lambda r: r.qualname in result.instrumented,
                                              selection="names:" + json.dumps(names))
        except Exception as exc:
            result.error = f"internal error on the working-tree copy: {type(exc).__name__}: {exc}"
        else:
            problem = self._problem(again, worktree, name)
            if not problem and again.status == "skipped":
                problem = again.reason
            failed = [f.qualname for f in again.functions if f.status == "failed" and f.qualname in result.instrumented]
            if not problem and failed:
                problem = f"{failed[0]} cannot be instrumented there"
            if problem:
                what = "unstaged edits" if partial else "working-tree copy"
                result.error = (f"the same telemetry cannot be added to its {what} ({problem}); "
                                f"stage or stash them and commit again")
        if result.error:
            self.error(f"{name}: {result.error}")
            self.fail(EXIT_ERRORS)
            return None
        return again.output


# -- helpers --------------------------------------------------------------------------------------


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _functions(count: int) -> str:
    return f"{count} function" + ("" if count == 1 else "s")


def _shown(path: str) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


def _imports_vendored(content: bytes, import_name: str, path: Path) -> bool:
    """Whether the text imports the vendored runtime under this tool's name (Python's
    header: ``from pkg import telemetry_utils as _telemetry_runtime``; other languages name
    the runtime's specifier or package path in their import)."""
    from .languages import language_for

    language = language_for(str(path))
    if language is not None and language.name != "python":
        return import_name.rpartition(":")[2].encode() in content
    package, _, module = import_name.rpartition(".")
    line = (f"from {package} import {module}" if package else f"import {module}") + " as _telemetry_runtime"
    return line.encode() in content


def _ensure_vendored(destination: str, text: bytes, *, write: bool) -> str:
    """'' when the module is there and current; else 'written' / 'updated' (``write``) or
    'missing' / 'outdated'. Parallel hook processes may race here: the module is created
    with a hard link, which only one of them can make, so exactly one reports it."""
    try:
        current: bytes | None = read_bytes(destination)
    except FileNotFoundError:
        current = None
    if current == text:
        return ""
    if not write:
        return "missing" if current is None else "outdated"
    if current is None:
        folder = os.path.dirname(destination)
        os.makedirs(folder, exist_ok=True)
        temporary = os.path.join(folder, f".ti-vendored-{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            try:
                os.write(fd, text)
            finally:
                os.close(fd)
            try:
                os.link(temporary, destination)
                return "written"
            except FileExistsError:
                if read_bytes(destination) == text:
                    return ""  # another process wrote it first
            except OSError:
                pass  # no hard links here: replace below
        finally:
            os.unlink(temporary)
    write_atomic(destination, text)
    return "written" if current is None else "updated"


def _not_staged(repo: Repository, path: str) -> str | None:
    """``path`` relative to the repository's top when its current content is not staged
    (untracked, or changed since it was added); None when it is, when git ignores it (the
    project chose to keep it out of git), or when it lies outside the repository."""
    try:
        relative = os.path.relpath(os.path.realpath(path), os.path.realpath(repo.top))
    except ValueError:
        return None
    if relative.startswith(".."):
        return None
    relative = relative.replace(os.sep, "/")
    out = repo.git("status", "--porcelain=v1", "-z", "--ignored=matching", "--untracked-files=all", "--", relative)
    for entry in out.split(b"\0"):
        if entry[3:] and os.fsdecode(entry[3:]) == relative:
            code = entry[:2]
            if code == b"!!":
                return None
            if code == b"??" or code[1:2] not in (b" ", b""):
                return relative
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
