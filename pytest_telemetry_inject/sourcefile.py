"""Reading and writing source files without losing a byte: BOM, coding cookie, line endings.

The engine works on ``str``; this module turns bytes into text and back so that
``encode(decode(data)) == data`` for every file it accepts.
"""

from __future__ import annotations

import codecs
import itertools
import os
import re
import stat
from typing import NamedTuple

from .errors import UnsupportedSource

BOM = codecs.BOM_UTF8
# PEP 263: the cookie must be on line 1 or 2, in a comment.
_COOKIE = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")
_BLANK_OR_COMMENT = re.compile(rb"^[ \t\f]*(?:[#\r\n]|$)")


class DecodedSource(NamedTuple):
    text: str
    encoding: str  # a Python codec name
    bom: bool

    def encode(self, text: str) -> bytes:
        data = text.encode(self.encoding)
        return BOM + data if self.bom else data


def detect_encoding(data: bytes) -> tuple[str, bool]:
    """The encoding Python would use for this source (PEP 263/3120) and whether a BOM leads."""
    bom = data.startswith(BOM)
    if bom:
        data = data[len(BOM):]
    lines = data.split(b"\n", 2)[:2]
    for index, line in enumerate(lines):
        match = _COOKIE.match(line)
        if match:
            name = match.group(1).decode("ascii", "replace")
            try:
                encoding = codecs.lookup(name).name
            except LookupError:
                raise UnsupportedSource(f"unknown source encoding {name!r} in its coding cookie") from None
            if bom and encoding != "utf-8":
                raise UnsupportedSource(f"a UTF-8 BOM and a coding cookie for {name!r} disagree")
            return encoding, bom
        if index == 0 and not _BLANK_OR_COMMENT.match(line):
            break  # the cookie may only be on line 2 when line 1 is blank or a comment
    return "utf-8", bom


def decode_source(data: bytes) -> DecodedSource:
    """Decode source bytes; refuse binary files and text with lone carriage returns."""
    if b"\0" in data:
        raise UnsupportedSource("binary file (it contains NUL bytes)")
    encoding, bom = detect_encoding(data)
    body = data[len(BOM):] if bom else data
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as exc:
        raise UnsupportedSource(
            f"cannot decode as {encoding} at byte {exc.start} (declare the encoding with a coding cookie)"
        ) from None
    if "\r" in text and text.count("\r") != text.count("\r\n"):
        raise UnsupportedSource("old Mac line endings (a CR without LF) are not supported")
    if encoding != "utf-8" and text.encode(encoding) != body:
        raise UnsupportedSource(f"{encoding} does not round-trip this file byte for byte")
    return DecodedSource(text, encoding, bom)


_counter = itertools.count()
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def read_bytes(path: str) -> bytes:
    """A whole file, with the fewest system calls (no buffering layer: open, fstat, read)."""
    fd = os.open(path, _READ_FLAGS)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size + 1)
        if len(data) <= size:  # a short read, or a file that grew: read to the end
            chunks = [data]
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
            data = b"".join(chunks)
        return data
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, *, like: str | None = None, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and
    ``os.replace``, so a reader or a crash never sees half a file. The mode of ``like``
    (or of the file being replaced) is kept; ``mode`` sets it outright. A file replaced
    keeps its group (and, for root, its owner) where the system allows it."""
    owner: tuple[int, int] | None = None
    if mode is None:
        for candidate in (path, like):
            if candidate:
                try:
                    info = os.stat(candidate)
                except OSError:
                    continue
                mode = stat.S_IMODE(info.st_mode)
                if candidate == path and hasattr(os, "chown"):
                    owner = (info.st_uid if os.geteuid() == 0 else -1, info.st_gid)
                break
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".ti-{os.getpid()}-{next(_counter)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        if owner is not None:
            try:
                os.chown(tmp, *owner)
            except OSError:
                pass  # not a member of that group: the file gets ours, as an editor's would
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
