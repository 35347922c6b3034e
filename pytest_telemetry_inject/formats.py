"""Every record this tool writes to disk, and its codec: one owner per format.

Each section below is one format: a record with named fields, the function or method that
writes it and the one that reads it back (checking its shape where the bytes come from a
cache nobody vouches for), and a docstring that shows the record as it is on disk. Nothing
else in the package spells out a field's position or a line's syntax; the cache
(``engine/cache.py``) adds seals and decides what a record is trusted for, and the cache's
paths are ``engine/layout.py``'s.

Format numbers:

``CACHE_FORMAT`` (3), the framing of the cache's files, part of every file key:
    1: first format.
    2: index lines are ``<crc32> <JSON array>``; a memo's crc32 also covers the lengths in
       its first line.
    3: a memo's first line carries its seal; scripts end in ``.script`` and generated
       tests in ``.cases`` (no ``.py`` in the cache); generated tests, records of passed
       tests and compiled code carry seals.

``ENGINE_FORMAT`` (1), what the engine derives from a function (its edits, its script),
part of every function key and file key:
    1: first format.

Only the standard library and the package's bottom modules (``scriptlib``, ``types``) are
imported here, so that every layer may read and write these records.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import zlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from . import __version__
from .record import Record

if TYPE_CHECKING:
    from .scriptlib import Edit
    from .types import EntryStatus, FunctionStatus

CACHE_FORMAT = 3
ENGINE_FORMAT = 1

_FUNCTION_STATUSES = ("instrumented", "skipped", "failed", "missing", "stripped")
_ORIGINS = ("template", "llm")
_SEAL_LENGTH = hashlib.sha256().digest_size
"""A seal is an HMAC-SHA256 (``engine/seal.py``): 32 bytes, 64 hex digits."""


def _compact_json(value: Any) -> bytes:
    """JSON as the cache writes it: no spaces, UTF-8 (not ASCII-escaped), lone surrogates
    of undecodable names kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


# --- keys ------------------------------------------------------------------------------


def function_key(*, language: str, template_id: str, template_version: int, qualname: str,
                 source_sha256: str) -> str:
    """The index key of one function under one template: sha256 of these parts joined with
    NUL bytes (never a path or an mtime, so a cache travels)::

        function NUL <package version> NUL <ENGINE_FORMAT> NUL python NUL python.with.vendored
            NUL 1 NUL Box.size NUL <sha256 of the function's source>
    """
    parts = ("function", __version__, str(ENGINE_FORMAT), language, template_id, str(template_version), qualname,
             source_sha256)
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()



def memo_key(*, language: str, fingerprint: str, validate: bool, import_name: str, selection: str,
             data: bytes) -> str:
    """The key of one file's memo: sha256 of these parts joined with NUL bytes, the last one
    the sha256 of the file's bytes::

        file NUL <package version> NUL <ENGINE_FORMAT> NUL <CACHE_FORMAT> NUL python
            NUL <settings fingerprint> NUL True NUL telemetry_utils NUL <selection> NUL <sha256>

    ``selection`` names the functions chosen (the pre-commit hook's changed ones), else "".
    """
    parts = ("file", __version__, str(ENGINE_FORMAT), str(CACHE_FORMAT), language, fingerprint, str(validate),
             import_name, selection, hashlib.sha256(data).hexdigest())
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()

# --- edits (ENGINE_FORMAT 1) --------------------------------------------------------------


def edits_to_json(edits: Sequence[Edit]) -> list[list[Any]]:
    """A function's edits as the index stores them, one JSON array per edit::

        ["indent",2,3,"    ","        ",[]]            first, last, unit, after, keep
        ["insert",2,"        with _telemetry.span(\\"f\\"):"]     before, text
        ["insert_after",5,"    # end",4]               line, text[, maps_to when not 0]
        ["insert_text",1,4,"/*t*/"]                     line, column, text
    """
    from .scriptlib import Indent, Insert, InsertAfter, InsertText  # (not for a memo: a warm session reads no edits)

    out: list[list[Any]] = []
    for edit in edits:
        if isinstance(edit, Indent):
            out.append(["indent", edit.first, edit.last, edit.unit, edit.after, list(edit.keep)])
        elif isinstance(edit, Insert):
            out.append(["insert", edit.before, edit.text])
        elif isinstance(edit, InsertAfter):
            out.append(["insert_after", edit.line, edit.text] + ([edit.maps_to] if edit.maps_to else []))
        elif isinstance(edit, InsertText):
            out.append(["insert_text", edit.line, edit.column, edit.text])
        else:
            raise TypeError(f"not an edit: {edit!r}")
    return out


def edits_from_json(data: Sequence[Sequence[Any]]) -> list[Edit]:
    """The edits of ``edits_to_json``; ValueError, TypeError or IndexError for an array of
    the wrong shape (the engine then treats the entry as damaged)."""
    from .scriptlib import Indent, Insert, InsertAfter, InsertText

    edits: list[Edit] = []
    for item in data:
        kind = item[0]
        if kind == "indent":
            edits.append(Indent(int(item[1]), int(item[2]), str(item[3]), str(item[4]),
                                tuple(int(k) for k in item[5])))
        elif kind == "insert":
            edits.append(Insert(int(item[1]), str(item[2])))
        elif kind == "insert_after":
            edits.append(InsertAfter(int(item[1]), str(item[2]), int(item[3]) if len(item) > 3 else 0))
        elif kind == "insert_text":
            edits.append(InsertText(int(item[1]), int(item[2]), str(item[3])))
        else:
            raise ValueError(f"unknown edit {kind!r}")
    return edits


# --- the index line (CACHE_FORMAT 3) -------------------------------------------------------


class IndexEntry(Record):
    """What the index knows of one function key: one line of ``metadata/index/<xx>.jsonl``,
    the crc32 of the JSON array, a space, the array (compact, UTF-8)::

        f8de2aae ["6e4e06c6…","ok","python.with.vendored/1","ac85cda2…","python","Box.size",
        "template",[["indent",2,3,"    ","        ",[]],["insert",2,"        with …"]],"","0.1.0"]

    The fields in that order: key, status, template, script, language, qualname, origin,
    edits, reason, version.
    """

    __slots__ = ("key", "status", "template", "script", "language", "qualname", "origin", "edits", "reason",
                 "version")
    key: str
    status: EntryStatus
    """``ok`` (a validated script) or ``failed`` (no template works; ``reason`` says why)."""
    template: str
    script: str
    language: str
    qualname: str
    origin: str
    edits: list[Any] | None
    reason: str
    version: str

    def __init__(self, key: str, status: EntryStatus, template: str = "", script: str = "", language: str = "",
                 qualname: str = "", origin: str = "template", edits: list[Any] | None = None, reason: str = "",
                 version: str = __version__) -> None:
        self.key, self.status, self.template, self.script, self.language = key, status, template, script, language
        self.qualname, self.origin, self.edits, self.reason, self.version = qualname, origin, edits, reason, version

    def to_line(self) -> bytes:
        """One index line: the crc32 of the JSON record, a space, the record."""
        record = _compact_json([self.key, self.status, self.template, self.script, self.language, self.qualname,
                                self.origin, self.edits, self.reason, self.version])
        return b"%08x %s" % (zlib.crc32(record), record)

    @classmethod
    def from_line(cls, line: bytes) -> IndexEntry:
        """The entry of an index line; ValueError for a damaged or truncated one."""
        if line[8:9] != b" " or int(line[:8], 16) != zlib.crc32(line[9:]):
            raise ValueError("damaged index line")
        key, status, template, script, language, qualname, origin, edits, reason, version = json.loads(line[9:])
        if not all(isinstance(v, str) for v in (key, status, template, script, language, qualname, origin,
                                                 reason, version)) or not (edits is None or isinstance(edits, list)):
            raise ValueError("an index line of the wrong shape")
        return cls(key, status, template, script, language, qualname, origin, edits, reason, version)


# --- the file memo (CACHE_FORMAT 3) ---------------------------------------------------------

MEMO_MAGIC = b"TI-MEMO"


class MemoFile(NamedTuple):
    """A file memo, ``metadata/files/<xx>/<key>``: a first line, then the header JSON, the
    sections and the payload back to back::

        TI-MEMO 3 a5092579 a11ab0b0…(64 hex, or -) 171 393,88
        {"status":"instrumented","reason":"","language":"python","changed":true,
         "tests":"sample_4135aa0af419b77b.cases","counts":{"instrumented":3},"reasons":{},
         "version":"0.1.0"}[["area",4,"instrumented",…]][[1,1,4,0],…]<the instrumented file>

    The first line is the magic, ``CACHE_FORMAT``, the crc32 of ``covered`` (the lengths, a
    newline and everything after the first line), the seal mark, the header's byte length
    and the sections' byte lengths (``-`` when none). Section 1 is the function list
    (``FunctionRow``), section 2 the line map (``encode_line_map``).
    """

    header: dict[str, Any]
    sections: list[bytes]
    payload: bytes
    mark: bytes
    """The seal in hex as written, or ``-`` (the cache checks it against ``covered``)."""
    covered: bytes
    """What the crc32 and the seal cover."""

    @staticmethod
    def cover(header: dict[str, Any], sections: Sequence[bytes], payload: bytes) -> bytes:
        """The bytes a new memo's crc32 and seal cover (the header gets this version)."""
        head = _compact_json(dict(header, version=__version__))
        lengths = (",".join(str(len(part)) for part in sections) or "-").encode()
        return b"%d %s\n" % (len(head), lengths) + b"".join([head, *sections, payload])

    @staticmethod
    def encode(covered: bytes, mark: bytes) -> bytes:
        """The memo's bytes, from ``cover``'s and the seal mark (hex, or ``-``)."""
        shape, _, body = covered.partition(b"\n")
        return b"%s %d %08x %s %s\n" % (MEMO_MAGIC, CACHE_FORMAT, zlib.crc32(covered), mark, shape) + body

    @classmethod
    def decode(cls, data: bytes) -> MemoFile | None:
        """The memo in ``data``; None when it is torn or damaged (magic, format, crc32, the
        lengths, a header that is no JSON object, not two sections)."""
        first, sep, body = data.partition(b"\n")
        try:
            magic, fmt, crc, mark, head_length, lengths = first.split(b" ")
            covered = head_length + b" " + lengths + b"\n" + body
            if not sep or magic != MEMO_MAGIC or int(fmt) != CACHE_FORMAT or int(crc, 16) != zlib.crc32(covered):
                return None
            offset = int(head_length)
            header = json.loads(body[:offset])
            sections = []
            for length in ([] if lengths == b"-" else [int(n) for n in lengths.split(b",")]):
                if length < 0 or offset + length > len(body):
                    return None
                sections.append(body[offset:offset + length])
                offset += length
        except (ValueError, TypeError):
            return None
        if not isinstance(header, dict) or len(sections) != 2:
            return None
        return cls(header, sections, body[offset:], mark, covered)


def memo_header(*, status: str, reason: str, language: str, changed: bool, tests: str,
                counts: dict[str, int], reasons: dict[str, dict[str, int]]) -> dict[str, Any]:
    """A memo's header, its keys in the order they are written (``version`` is added by
    ``MemoFile.cover``): ``counts`` and ``reasons`` let a warm run print its summary without
    decoding the function list; ``tests`` names the file's generated test module."""
    return {"status": status, "reason": reason, "language": language, "changed": changed, "tests": tests,
            "counts": counts, "reasons": reasons}


class FunctionRow(NamedTuple):
    """One function of a memo's function list (section 1, a JSON array of these)::

        ["Box.size",10,"instrumented","","python.with.vendored/1","ac85cda2…",false]
    """

    qualname: str
    line: int
    status: FunctionStatus
    reason: str = ""
    template: str = ""
    script: str = ""
    cached: bool = False

    @classmethod
    def read(cls, item: Any) -> FunctionRow:
        """A row of a memo this machine sealed: taken by position, unchecked (a warm run
        decodes thousands)."""
        return cls(*item[:7])

    @classmethod
    def decode(cls, item: Any) -> FunctionRow:
        """A row from a memo nobody vouches for, its shape checked: ValueError (or
        TypeError) with the reason when it is wrong."""
        qualname, line, status, reason, template, script, cached = item
        if not (isinstance(qualname, str) and isinstance(line, int) and not isinstance(line, bool) and line > 0
                and status in _FUNCTION_STATUSES
                and all(isinstance(v, str) for v in (reason, template, script)) and isinstance(cached, bool)):
            raise ValueError("a function row of the wrong shape")
        return cls(qualname, line, status, reason, template, script, cached)


def encode_function_list(rows: Iterable[FunctionRow]) -> bytes:
    """Section 1 of a memo."""
    return _compact_json([list(row) for row in rows])


def read_function_list(raw: bytes) -> list[FunctionRow]:
    """Section 1 of a sealed memo (see ``FunctionRow.read``)."""
    return [FunctionRow.read(item) for item in json.loads(raw)]


def decode_function_list(raw: bytes) -> list[FunctionRow]:
    """Section 1 of a memo nobody vouches for (see ``FunctionRow.decode``)."""
    return [FunctionRow.decode(item) for item in json.loads(raw)]


_SCRIPT = FunctionRow._fields.index("script")


def function_list_scripts(raw: bytes) -> set[str]:
    """The scripts a function list names (``prune`` keeps them); ValueError, TypeError,
    IndexError or KeyError when it does not decode."""
    return {item[_SCRIPT] for item in json.loads(raw) if item[_SCRIPT]}


NO_LINE_MAP = b"null"
"""Section 2 of a memo whose file is unchanged."""


def encode_line_map(segments: Any) -> bytes:
    """Section 2 of a memo: the line map's segments as JSON, or ``null`` for none::

        [[1,1,4,0],[5,4,1,0],[6,4,3,0]]
    """
    return json.dumps(segments, separators=(",", ":")).encode()


def decode_line_map(raw: bytes) -> Any:
    """The segments of section 2 (None for ``null``); ValueError when it is no JSON."""
    return json.loads(raw)


# --- generated test modules (CACHE_FORMAT 3) --------------------------------------------------


class TestCase(NamedTuple):
    """One case of a generated test module: a script, the span it must name, the function
    source it was made for and who made it. In the module's ``SCRIPTS`` list the row is in
    another order, ``(sha, name, origin, original)``, on two lines::

        ('77fdb890…', 'area', 'template',
         'def area(w, h):\\n    \"\"\"Area.\"\"\"\\n    return w * h\\n'),
    """

    sha: str
    name: str
    original: str
    origin: str
    """``template`` or ``llm`` (a model's fix: run in the sandbox)."""

    def to_row(self) -> str:
        """The case's row of ``SCRIPTS``, as the module's text holds it."""
        return f"    ({self.sha!r}, {self.name!r}, {self.origin!r},\n     {self.original!r}),"

    def on_disk(self) -> tuple[str, str, str, str]:
        """The values in the order of ``SCRIPTS``: (sha, name, origin, original)."""
        return self.sha, self.name, self.origin, self.original

    @classmethod
    def decode(cls, row: Any) -> TestCase:
        """A ``SCRIPTS`` row, its shape checked: ValueError with the reason when it is wrong."""
        if not (isinstance(row, tuple) and len(row) == 4 and all(isinstance(v, str) for v in row)
                and row[2] in _ORIGINS):
            raise ValueError("a test case of the wrong shape")
        sha, name, origin, original = row
        return cls(sha, name, original, origin)


def read_cases(text: str) -> list[TestCase] | None:
    """The cases of a generated test module, read from its ``SCRIPTS`` literal (the module
    is data, never imported); None when the text holds no such list of the right shape."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["SCRIPTS"]:
            try:
                rows = ast.literal_eval(node.value)
                return [TestCase.decode(row) for row in rows] if isinstance(rows, list) else None
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return None
    return None


# --- sealed files: test modules, records of passed tests, compiled code (CACHE_FORMAT 3) -----


class SealedText(NamedTuple):
    """A file whose first line is a prefix and a seal in hex, then its body.

    A generated test module, ``tests/<language>/<stem>_<key16>.cases``::

        # seal 1a6fc641…(64 hex)
        \"\"\"Generated tests of the insertion scripts of sample.py (python). …

    A record of passed tests, ``metadata/checked/<test module>.keys`` (``checked_keys``)::

        seal 12f5a2ba…(64 hex)
        0a0a0a0a…(one 64-hex ScriptCheck.key per line)
    """

    prefix: bytes

    def encode(self, tag: bytes, body: bytes) -> bytes:
        return self.prefix + tag.hex().encode() + b"\n" + body

    def decode(self, data: bytes) -> tuple[bytes, bytes] | None:
        """(the seal as written, in hex; the body), or None without the prefix."""
        first, _, body = data.partition(b"\n")
        if not first.startswith(self.prefix):
            return None
        return first[len(self.prefix):], body


TEST_MODULE = SealedText(b"# seal ")
CHECKED = SealedText(b"seal ")


def encode_checked_keys(keys: Iterable[str]) -> bytes:
    """The body of a record of passed tests: the keys sorted, one a line."""
    return "\n".join(sorted(keys)).encode("ascii") + b"\n"


def decode_checked_keys(body: bytes) -> set[str]:
    """The keys of a record's body (lines that are no key are left out)."""
    return {line for line in body.decode("ascii", "replace").split("\n") if len(line) == 64}


CODE_MAGIC = b"TI-CODE3"


class CodeFile:
    """Compiled code, ``metadata/code/<xx>/<key>``: the magic, the 32-byte seal (raw), then
    the import hook's bytes (its own magic ``TI-CODE2`` with the bytecode magic number, and
    the marshalled code object)::

        TI-CODE3<32 bytes of seal>TI-CODE2<bytecode magic><marshalled code>
    """

    @staticmethod
    def encode(tag: bytes, rest: bytes) -> bytes:
        return CODE_MAGIC + tag + rest

    @staticmethod
    def decode(data: bytes) -> tuple[bytes, bytes] | None:
        """(the seal, the rest), or None without the magic."""
        if not data.startswith(CODE_MAGIC):
            return None
        start = len(CODE_MAGIC) + _SEAL_LENGTH
        return data[len(CODE_MAGIC):start], data[start:]


# --- the cache folder's own marks ---------------------------------------------------------------

CACHEDIR_TAG = (b"Signature: 8a477f597d28d172789f06886806bc55\n"
                b"# This file is a cache directory tag created by pytest-telemetry-inject.\n"
                b"# For information about cache directory tags, see https://bford.info/cachedir/\n")
"""``CACHEDIR.TAG`` (https://bford.info/cachedir/): backup tools skip the folder."""
GITIGNORE = b"# Created by pytest-telemetry-inject.\n*\n"
"""``.gitignore``: git ignores the whole folder."""


# --- the script header (ENGINE_FORMAT 1) ------------------------------------------------------

_HEADER_NAMES = ("LANGUAGE", "SPAN_NAME", "TEMPLATE", "SOURCE_SHA256", "OUTPUT_SHA256")
_HEADER_LINE = re.compile(r"^(LANGUAGE|SPAN_NAME|TEMPLATE|SOURCE_SHA256|OUTPUT_SHA256) = (.*)$", re.M)
_TEMPLATE_LINE = re.compile(r"^TEMPLATE = '([^'/]+)/(\d+)'$", re.M)


class ScriptHeader(NamedTuple):
    """The names an insertion script defines after its docstring and import, one a line::

        LANGUAGE = 'python'
        SPAN_NAME = 'Box.size'
        TEMPLATE = 'python.with.vendored/1'
        SOURCE_SHA256 = '53ffce6e…'
        OUTPUT_SHA256 = '827c72a8…'

    ``TEMPLATE`` is ``<template id>/<template version>`` (``llm/1`` for a model's fix).
    """

    language: str
    span_name: str
    template: str
    source_sha256: str
    output_sha256: str

    def render(self) -> str:
        """The header's lines, each ending with a newline."""
        return "".join(f"{name} = {value!r}\n" for name, value in zip(_HEADER_NAMES, self))

    @classmethod
    def parse(cls, text: str) -> ScriptHeader | None:
        """The header of a script's text; None when a name is missing or not a string."""
        found: dict[str, str] = {}
        for match in _HEADER_LINE.finditer(text):
            try:
                value = ast.literal_eval(match.group(2))
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return None
            if not isinstance(value, str):
                return None
            found.setdefault(match.group(1), value)
        if set(found) != set(_HEADER_NAMES):
            return None
        return cls(*(found[name] for name in _HEADER_NAMES))

    @staticmethod
    def template_of(text: str) -> tuple[str, int] | None:
        """(template id, version) named by a script's ``TEMPLATE`` line, or None."""
        match = _TEMPLATE_LINE.search(text)
        return (match.group(1), int(match.group(2))) if match else None
