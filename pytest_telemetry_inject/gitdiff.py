"""What a commit changes, line by line: the pre-commit hook's view of ``git diff``.

For each file, the lines of its new version that differ from a base commit (``HEAD``), read
from ``git diff -U0``. A function is *touched* when one of its lines was added or changed,
or when lines inside it were deleted. A new file, a file git does not know, and every file
of a repository without commits count as wholly changed.

Deletions leave no line behind in the new version, so where one falls is judged from the
deleted text: inside a function's line span it touches that function; right after a
function's last line it does when the first deleted line is indented under the ``def`` (the
end of the body was cut); right before a function's first line it does when the last
deleted line is a decorator at the ``def``'s indentation. Deleting a whole function touches
neither of its neighbours.

Only plumbing-safe options are used (fixed prefixes, no colour, no external diff or
textconv, literal pathspecs), so a user's git configuration cannot change what is parsed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_HUNK = re.compile(rb"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@")
_WS = b" \t\x0c"
_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


class GitError(Exception):
    """A git command failed; the message is one line."""


@dataclass(frozen=True)
class Gap:
    """Lines deleted between new lines ``after`` and ``after + 1``."""

    after: int
    first_indent: str | None
    """Leading whitespace of the first non-blank deleted line (None: only blank lines)."""
    decorator_indent: str | None
    """Leading whitespace of the last non-blank deleted line when it is a decorator."""


@dataclass
class FileChanges:
    """The changed lines of one file's new version (1-based, inclusive ranges)."""

    whole: bool = False
    ranges: list[tuple[int, int]] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.whole and not self.ranges and not self.gaps

    def touches(self, start: int, end: int, indent: str) -> bool:
        """Whether a definition on lines ``start``..``end`` (decorators included), whose
        ``def`` line is indented by ``indent``, was changed."""
        if self.whole:
            return True
        for first, last in self.ranges:
            if first <= end and start <= last:
                return True
        for gap in self.gaps:
            c = gap.after
            if start <= c and c + 1 <= end:
                return True  # deleted inside the definition
            if c == end and gap.first_indent is not None and len(gap.first_indent) > len(indent) \
                    and gap.first_indent.startswith(indent):
                return True  # the end of its body was deleted
            if c + 1 == start and gap.decorator_indent == indent:
                return True  # its first decorator was deleted
        return False

    def key(self) -> str:
        """A string that names these changes uniquely (part of the engine's memo key)."""
        if self.whole:
            return "whole"
        return json.dumps([self.ranges, [[g.after, g.first_indent, g.decorator_indent] for g in self.gaps]],
                          separators=(",", ":"))


def _unquote(name: bytes) -> bytes:
    """A path as git prints it: C-quoted when it holds unusual characters."""
    if not name.startswith(b'"'):
        return name
    text = name[1:-1].decode("latin-1")
    out = bytearray()
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            nxt = text[index + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                index += 2
                continue
            if nxt.isdigit():
                out.append(int(text[index + 1:index + 4], 8))
                index += 4
                continue
        out.append(ord(char))
        index += 1
    return bytes(out)


def _header_paths(line: bytes) -> tuple[bytes, bytes] | None:
    """(old, new) of a ``diff --git a/OLD b/NEW`` line, prefixes removed."""
    rest = line[len(b"diff --git "):]
    if rest.endswith(b'"') and not rest.startswith(b'"'):  # only the new name is quoted
        cut = rest.rfind(b' "b/')
        old, new = rest[:cut], rest[cut + 1:]
    elif rest.startswith(b'"'):
        end = 1
        while end < len(rest) and rest[end:end + 1] != b'"':
            end += 2 if rest[end:end + 1] == b"\\" else 1
        old, new = rest[:end + 1], rest[end + 2:]
    else:
        # Without quotes, the two names are equal unless the file was renamed (then the
        # ``rename to`` line names it): split where the halves agree.
        n = (len(rest) - 5) // 2
        if len(rest) == 2 * n + 5 and rest[2 + n:5 + n] == b" b/" and rest[2:2 + n] == rest[5 + n:]:
            old, new = rest[:2 + n], rest[3 + n:]
        else:
            old, _, new = rest.partition(b" b/")
            new = b"b/" + new
    old, new = _unquote(old), _unquote(new)
    return old[2:], new[2:]


def parse_diff(output: bytes) -> dict[str, FileChanges]:
    """The changes of every file in ``git diff -U0`` output (new-side paths, relative to
    the repository's top). Deleted files are left out."""
    found: dict[str, FileChanges] = {}
    current: FileChanges | None = None
    path: bytes | None = None
    new_line = 0
    deleted: list[bytes] = []
    added_after_delete = False

    def close_deletion() -> None:
        nonlocal deleted
        if current is not None and deleted and not added_after_delete:
            nonblank = [d for d in deleted if d.strip(_WS + b"\r\n")]
            first = last_decorator = None
            if nonblank:
                head, tail = nonblank[0], nonblank[-1]
                first = head[:len(head) - len(head.lstrip(_WS))].decode("utf-8", "replace")
                body = tail.lstrip(_WS)
                if body.startswith(b"@"):
                    last_decorator = tail[:len(tail) - len(body)].decode("utf-8", "replace")
            current.gaps.append(Gap(new_line - 1, first, last_decorator))
        deleted = []

    def store() -> None:
        if current is not None and path is not None:
            found[os.fsdecode(path)] = current

    in_hunk = False
    # Split on LF only: a CR inside a line (CRLF files) is part of the line.
    for line in output.split(b"\n"):
        if line.startswith(b"diff --git "):
            close_deletion()
            store()
            paths = _header_paths(line)
            path = paths[1] if paths else None
            current, in_hunk = FileChanges(), False
            continue
        if current is None:
            continue
        if not in_hunk:
            if line.startswith(b"new file mode"):
                current.whole = True
            elif line.startswith(b"deleted file mode"):
                path = None
            elif line.startswith(b"rename to "):
                path = _unquote(line[len(b"rename to "):])
            elif line.startswith(b"+++ "):
                # git ends the name with a tab when it holds a space
                name = line[4:].removesuffix(b"\t")
                if name != b"/dev/null":
                    path = _unquote(name)[2:]
        match = _HUNK.match(line) if line.startswith(b"@@") else None
        if match:
            close_deletion()
            in_hunk = True
            new_line = int(match.group(1))
            if match.group(2) == b"0":
                new_line += 1  # "+c,0" names the line before a deletion (c = 0: the top)
            added_after_delete = False
            continue
        if not in_hunk:
            continue
        kind = line[:1]
        if kind == b"+":
            if deleted:
                added_after_delete = True
            if current.ranges and current.ranges[-1][1] == new_line - 1:
                current.ranges[-1] = (current.ranges[-1][0], new_line)
            else:
                current.ranges.append((new_line, new_line))
            new_line += 1
        elif kind == b"-":
            if added_after_delete:  # a new deletion block after a replacement
                deleted, added_after_delete = [], False
            deleted.append(line[1:])
        elif kind == b" ":  # context (diff.interHunkContext may merge hunks)
            close_deletion()
            added_after_delete = False
            new_line += 1
        elif kind == b"\\":  # "\ No newline at end of file"
            continue
    close_deletion()
    store()
    return found


def line_changes(old: str, new: str) -> FileChanges:
    """The changes from ``old`` to ``new`` as ``parse_diff`` would read them from git (for
    texts that are in no blob: a file with its telemetry taken out)."""
    import difflib

    def indent(line: str) -> str:
        return line[:len(line) - len(line.lstrip(" \t\x0c"))]

    changes = FileChanges()
    before, after = old.splitlines(), new.splitlines()
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "insert"):
            changes.ranges.append((j1 + 1, j2))
        elif tag == "delete":
            nonblank = [line for line in before[i1:i2] if line.strip()]
            first = indent(nonblank[0]) if nonblank else None
            decorator = indent(nonblank[-1]) if nonblank and nonblank[-1].lstrip().startswith("@") else None
            changes.gaps.append(Gap(j1, first, decorator))
    return changes


class Repository:
    """A git work tree, asked through subprocesses (paths relative to its top)."""

    def __init__(self, top: str) -> None:
        self.top = top
        self._env = {**os.environ, "GIT_LITERAL_PATHSPECS": "1"}

    @classmethod
    def find(cls, start: str = ".") -> Repository:
        done = subprocess.run(["git", "-C", start, "rev-parse", "--show-toplevel"], capture_output=True)
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise GitError(f"not in a git work tree ({message[-1] if message else 'git rev-parse failed'})")
        return cls(os.fsdecode(done.stdout.rstrip(b"\n")))

    def git(self, *args: str, input: bytes | None = None, check: bool = True) -> bytes:
        done = subprocess.run(["git", *args], cwd=self.top, input=input, capture_output=True, env=self._env)
        if check and done.returncode != 0:
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise GitError(f"git {args[0]} failed: {lines[-1] if lines else f'exit {done.returncode}'}")
        return done.stdout

    def resolve(self, rev: str) -> str | None:
        """The commit ``rev`` names, or None (no commits yet, or no such revision)."""
        out = self.git("rev-parse", "-q", "--verify", f"{rev}^{{commit}}", check=False)
        return out.decode().strip() or None

    def relative(self, path: str) -> str:
        """``path`` (relative to the current folder, or absolute) relative to the top."""
        absolute = os.path.realpath(path)
        return os.path.relpath(absolute, os.path.realpath(self.top)).replace(os.sep, "/")

    def changes(self, paths: Sequence[str] | None, *, base: str | None, cached: bool) -> dict[str, FileChanges]:
        """The changes of ``paths`` (relative to the top; None: every changed file) between
        ``base`` and the work tree (``cached``: the index). No base: everything is new."""
        if base is None:
            return {p: FileChanges(whole=True) for p in paths or ()}
        common = ["-c", "core.quotePath=false", "diff", "-U0", "-a", "--no-color", "--no-ext-diff",
                  "--no-textconv", "--no-relative", "--src-prefix=a/", "--dst-prefix=b/", "--ignore-submodules"]
        if cached:
            common.append("--cached")
        found: dict[str, FileChanges] = {}
        for chunk in _chunks(paths):
            spec = ["--", *chunk] if chunk is not None else []
            found.update(parse_diff(self.git(*common, "--no-renames", base, *spec)))
        # A file that looks new may be a renamed one (git mv): diff it against its old self.
        new = [p for p, c in found.items() if c.whole]
        if new:
            renames = self._renames(base, set(new), cached)
            if renames:
                pairs = [name for new_name, old in renames.items() for name in (old, new_name)]
                for chunk in _chunks(pairs, pairs=True):
                    found.update({p: c for p, c in parse_diff(self.git(*common, "-M", base, "--", *(chunk or ())))
                                  .items() if p in renames})
        if paths is not None:
            missing = [p for p in paths if p not in found]
            if missing:
                # Unchanged since base, or unknown to it (untracked): the latter are new.
                in_base: set[str] = set()
                for chunk in _chunks(missing):
                    known = self.git("ls-tree", "-r", "-z", "--name-only", "--full-tree", base, "--", *(chunk or ()))
                    in_base.update(os.fsdecode(n) for n in known.split(b"\0") if n)
                for p in missing:
                    found[p] = FileChanges() if p in in_base else FileChanges(whole=True)
        return found

    def unstaged(self, paths: Sequence[str]) -> set[str]:
        """Those of ``paths`` whose work-tree copy differs from the index (through git's
        filters: a CRLF checkout of an LF blob does not differ)."""
        found: set[str] = set()
        for chunk in _chunks(paths):
            out = self.git("diff", "--name-only", "-z", "--no-relative", "--no-ext-diff", "--", *(chunk or ()))
            found.update(os.fsdecode(n) for n in out.split(b"\0") if n)
        return found

    def _renames(self, base: str, new: set[str], cached: bool) -> dict[str, str]:
        """{new path: old path} for the files of ``new`` that git sees as renamed."""
        args = ["diff", "--name-status", "-z", "-M", "--diff-filter=R", "--no-relative", "--no-ext-diff"]
        if cached:
            args.append("--cached")
        fields = self.git(*args, base).split(b"\0")
        renames: dict[str, str] = {}
        index = 0
        while index + 2 < len(fields):
            status, old, new_name = fields[index:index + 3]
            index += 3
            if status.startswith(b"R") and os.fsdecode(new_name) in new:
                renames[os.fsdecode(new_name)] = os.fsdecode(old)
        return renames


def _chunks(paths: Sequence[str] | None, limit: int = 65536, pairs: bool = False) -> list[Sequence[str] | None]:
    """``paths`` in slices short enough for one command line (pre-commit fills its batches
    up to the system's limit; the git commands here add their own arguments). ``pairs``:
    never split an (old, new) pair."""
    if paths is None:
        return [None]
    chunks: list[Sequence[str] | None] = []
    current: list[str] = []
    size = 0
    step = 2 if pairs else 1
    for index in range(0, len(paths), step):
        group = paths[index:index + step]
        length = sum(len(os.fsencode(p)) + 1 for p in group)
        if current and size + length > limit:
            chunks.append(current)
            current, size = [], 0
        current.extend(group)
        size += length
    if current:
        chunks.append(current)
    return chunks  # none for no paths: an empty pathspec would mean every file


def staged_files(repo: Repository, base: str | None) -> list[tuple[str, str, str]]:
    """(mode, blob id, path) of every file added, copied, modified or renamed in the index
    against ``base`` (the empty tree when there is none); symbolic links and submodules left out."""
    against = base or repo.git("hash-object", "-t", "tree", "--stdin", input=b"").decode().strip()
    fields = repo.git("diff-index", "--cached", "-z", "--no-renames", "--diff-filter=ACMT", against).split(b"\0")
    found: list[tuple[str, str, str]] = []
    for index in range(0, len(fields) - 1, 2):
        meta, name = fields[index], fields[index + 1]
        parts = meta.decode().lstrip(":").split()
        if len(parts) >= 4 and parts[1] in ("100644", "100755"):
            found.append((parts[1], parts[3], os.fsdecode(name)))
    return found


def read_blobs(repo: Repository, ids: Iterable[str]) -> dict[str, bytes]:
    """The contents of blobs, in one ``git cat-file --batch``."""
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return {}
    out = repo.git("cat-file", "--batch", input="".join(f"{i}\n" for i in wanted).encode())
    blobs: dict[str, bytes] = {}
    position = 0
    for blob_id in wanted:
        newline = out.index(b"\n", position)
        header = out[position:newline].split()
        if len(header) != 3 or header[1] != b"blob":
            raise GitError(f"git cat-file: cannot read blob {blob_id}")
        size = int(header[2])
        blobs[blob_id] = out[newline + 1:newline + 1 + size]
        position = newline + 1 + size + 1
    return blobs
