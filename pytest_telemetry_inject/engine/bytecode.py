"""The try form's start time on the value stack instead of in a local (CPython 3.11+).

On the fly the try style is compiled from this tree (``compiler.py`` builds it)::

    _telemetry.start()                      # the start time: pushed, then popped (POP_TOP)
    try:
        ...body...
    finally:
        _telemetry.end("Q", MARKER)         # MARKER: a string constant unique to the function

and this module edits the function's code object so that the function keeps no local of its
own (``locals()``, ``dir()``, ``co_varnames`` and ``inspect.getgeneratorlocals()`` are the
original's) and leaves by an exception from the line that raised:

- the ``POP_TOP`` after ``start()`` becomes a ``NOP``: the start time stays at the bottom of
  the frame's value stack for the whole call (a ``with`` statement keeps its ``__exit__``
  there the same way), and every exception-table depth after it grows by one, so that no
  handler pops it;
- each ``LOAD_CONST MARKER`` becomes ``COPY n``: a copy of that bottom item, ``n`` being the
  stack depth there (the compiler's own stack-depth rules, read from ``dis.stack_effect``);
- the ``finally`` block's exception copy (the handler that starts with ``PUSH_EXC_INFO``)
  calls ``raised`` instead of ``end`` (the call raised: the runtime reads the exception from
  ``sys.exc_info()``); its entries get the ``lasti`` flag, as a ``with`` statement's handler
  has, and its closing ``RERAISE 0`` becomes ``RERAISE 2``, which restores the offset of the
  instruction that raised before the exception goes on: a tracer, a debugger and
  ``frame.f_lineno`` see the frame leave from the line that raised, as without the wrapper.

A function that is not a generator is compiled with an entry that may skip the call
(``compiler._skipping``: ``if SITE.skip: ... SITE.off else: SITE.start()``): both
branches' ``POP_TOP`` become ``NOP``, the exit's test of the state (``LOAD_CONST`` of the
marker's ``TEST_SUFFIX``) is a ``COPY`` like the marker, the exception path loads
``raises`` instead of ``ends``, and the body's first instructions without a location get the
entry's (the two branches join there, where the compiler gives them none).

On 3.11 the skipping exit's normal path then jumps over its call for an untimed call
(:func:`_jump_exits`) instead of picking the call from a dict, and an untimed call takes a
slot from the site's iterator of them instead of counting ``skip`` down (:func:`_tight_entry`).
A timed call's exit then counts the call in the function's own code, without calling the
runtime, where the site is timed on every call (:func:`_inline_exits`).

Every edit replaces code units in place (no offset, jump or line-table entry moves); the
inline exits are appended after the last instruction.
The result is checked by running the same stack analysis on the new code: every ``COPY``
must reach the bottom item, every handler must keep it, the ``RERAISE 2`` must find the
offset it restores. Anything unexpected (another interpreter's bytecode, a function with
more names than one byte indexes) raises :class:`Unsupported`, and the compiler falls back to
the ``with`` form for that function, which needs no edit.
"""

from __future__ import annotations

import dis
import sys
from collections.abc import Callable
from types import CodeType
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    # A code unit's (line, end line, column, end column), as ``co_positions()`` gives them.
    _Position = tuple[int | None, int | None, int | None, int | None]

# The form of the code ``compiler.compile_mapped`` produces; a cache of compiled code should be
# keyed by it. 3: a return per path that falls off the body, the try form's start time on the
# value stack, one-line bodies without the decorator's frame. 4: the try form's end() calls with
# a name and a constant of their own, which the import hook binds to the site (``bind_sites``).
# 5: the try form's entry leaves a sampled site's untimed calls out of the runtime
# (``compiler._skipping``). 6: on 3.11 its exit jumps over the call for them (``_jump_exits``)
# and its untimed branch is 8 instructions (``_tight_entry``). 7: (3.11) the entry's clock is
# the site's ``start`` (``_tight_entry``). 8: so it is as compiled (``SITE.start()``, which
# 3.12 specialises as it is). 9: (3.11) an untimed call takes a slot from the site's
# ``ticks`` (``_tight_entry``). 10: (3.11) a timed call's exit is written into the function
# (``_inline_exits``). Here, not in compiler.py: the
# import hook reads it on every load, and this module is the light one of the two.
CODE_FORM = 10

# The interpreters whose bytecode this was written and tested for (the exception table,
# COPY and RERAISE's lasti came with 3.11).
SUPPORTED = (3, 11) <= sys.version_info[:2] <= (3, 13)
# The line tables this module writes: 3.10's and the location table of 3.11 to 3.13.
LINES_EDITABLE = (3, 10) <= sys.version_info[:2] <= (3, 13)

_OP = dis.opmap
_EXTENDED_ARG = _OP["EXTENDED_ARG"]
_NO_FALLTHROUGH = {"RETURN_VALUE", "RETURN_CONST", "RAISE_VARARGS", "RERAISE", "JUMP_FORWARD", "JUMP_BACKWARD",
                   "JUMP_BACKWARD_NO_INTERRUPT", "JUMP", "JUMP_NO_INTERRUPT", "INTERPRETER_EXIT"}
_JUMPS = frozenset(getattr(dis, "hasjump", ())) | frozenset(dis.hasjrel) | frozenset(dis.hasjabs)
_ATTR_LOADS = ("LOAD_METHOD", "LOAD_ATTR")


class Unsupported(Exception):
    """The code is not in the shape this module edits; the caller uses the ``with`` form."""


class _Entry(NamedTuple):
    """One exception-table entry: [start, end) in bytes, the handler, the stack depth the
    handler unwinds to, and whether it pushes the offset of the raising instruction."""

    start: int
    end: int
    target: int
    depth: int
    lasti: bool


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    byte = data[pos]
    value = byte & 63
    while byte & 64:
        pos += 1
        byte = data[pos]
        value = (value << 6) | (byte & 63)
    return value, pos + 1


def read_table(code: CodeType) -> list[_Entry]:
    """The exception table (format: CPython's ``InternalDocs/exception_handling.md``)."""
    data, pos, entries = code.co_exceptiontable, 0, []  # type: ignore[attr-defined, unused-ignore]  # (3.11+)
    while pos < len(data):
        start, pos = _read_varint(data, pos)
        size, pos = _read_varint(data, pos)
        target, pos = _read_varint(data, pos)
        depth_lasti, pos = _read_varint(data, pos)
        entries.append(_Entry(start * 2, (start + size) * 2, target * 2, depth_lasti >> 1, bool(depth_lasti & 1)))
    return entries


def _varint(value: int, first: bool) -> bytes:
    chunks = [value & 63]
    value >>= 6
    while value:
        chunks.append(value & 63)
        value >>= 6
    chunks.reverse()
    out = [chunk | 64 for chunk in chunks[:-1]] + [chunks[-1]]
    if first:
        out[0] |= 128  # marks the start of an entry
    return bytes(out)


def write_table(entries: list[_Entry]) -> bytes:
    out = bytearray()
    for entry in entries:
        out += _varint(entry.start // 2, True)
        out += _varint((entry.end - entry.start) // 2, False)
        out += _varint(entry.target // 2, False)
        out += _varint(entry.depth << 1 | entry.lasti, False)
    return bytes(out)


def _handler_at(entries: list[_Entry], offset: int) -> _Entry | None:
    for entry in entries:
        if entry.start <= offset < entry.end:
            return entry
    return None


def stack_depths(code: CodeType, instructions: list[dis.Instruction], entries: list[_Entry]) -> dict[int, int]:
    """The value stack's depth before each reachable instruction, by the compiler's rules:
    from the entry with an empty stack, along jumps and fall-throughs by
    ``dis.stack_effect``, and into each handler (reached from an instruction its entry
    covers) at the entry's depth plus the pushed offset and exception."""
    after = {ins.offset: nxt.offset for ins, nxt in zip(instructions, instructions[1:])}
    by_offset = {ins.offset: ins for ins in instructions}
    depths: dict[int, int] = {}
    work = [(instructions[0].offset, 0)]
    while work:
        offset, depth = work.pop()
        known = depths.get(offset)
        if known is not None:
            if known != depth:
                raise Unsupported(f"two stack depths at offset {offset}")
            continue
        if depth < 0 or depth > code.co_stacksize + 2:
            raise Unsupported(f"stack depth {depth} at offset {offset}")
        depths[offset] = depth
        ins = by_offset.get(offset)
        if ins is None:
            raise Unsupported(f"no instruction at offset {offset}")
        handler = _handler_at(entries, offset)
        if handler is not None:
            work.append((handler.target, handler.depth + handler.lasti + 1))
        name = ins.opname
        arg = ins.arg if ins.opcode >= dis.HAVE_ARGUMENT or ins.arg is not None else None
        if name == "RETURN_GENERATOR":
            # Resumed, the frame receives the sent value (which the POP_TOP after it drops);
            # 3.11 and 3.12 count the prefix before the stack analysis, 3.13 as +1.
            effect = 1
        else:
            effect = dis.stack_effect(ins.opcode, arg, jump=False) if ins.opcode != _EXTENDED_ARG else 0
        if ins.opcode in _JUMPS:
            target = ins.argval
            if not isinstance(target, int):
                raise Unsupported(f"{name} at offset {offset}: no target")
            work.append((target, depth + dis.stack_effect(ins.opcode, arg, jump=True)))
        if name not in _NO_FALLTHROUGH:
            following = after.get(offset)
            if following is None:
                raise Unsupported(f"{name} falls off the end of the code")
            work.append((following, depth + effect))
    return depths


def instructions_of(code: CodeType) -> list[dis.Instruction]:
    """The code's instructions, without the inline cache entries (3.11+)."""
    return [ins for ins in dis.get_instructions(code) if ins.opname != "CACHE"]


def depths_of(code: CodeType) -> dict[int, int]:
    """:func:`stack_depths` of the whole code object, by its own exception table."""
    return stack_depths(code, instructions_of(code), read_table(code))


class _Code:
    """A code object's bytes, editable one code unit at a time."""

    def __init__(self, code: CodeType) -> None:
        self.raw = bytearray(code.co_code)

    def has_prefix(self, offset: int) -> bool:
        return offset >= 2 and self.raw[offset - 2] == _EXTENDED_ARG

    def set(self, offset: int, opname: str, arg: int = 0) -> None:
        if not 0 <= arg <= 255 or self.has_prefix(offset):
            raise Unsupported(f"{opname} {arg} does not fit the code unit at offset {offset}")
        self.raw[offset] = _OP[opname]
        self.raw[offset + 1] = arg


# -- the location table ---------------------------------------------------------------------


def _location_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 64:
        out.append(64 | (value & 63))
        value >>= 6
    out.append(value)
    return bytes(out)


def _location_svarint(value: int) -> bytes:
    return _location_varint((-value << 1) | 1 if value < 0 else value << 1)


def write_locations(code: CodeType, positions: list[_Position]) -> bytes:
    """A location table (CPython's ``InternalDocs/code_objects.md``, the 3.11 format) giving
    each code unit its (line, end line, column, end column): runs of up to 8 units, each in
    the long form (14), without columns (13) or without a location (15)."""
    out = bytearray()
    previous = code.co_firstlineno
    index = 0
    while index < len(positions):
        position = positions[index]
        length = 1
        while length < 8 and index + length < len(positions) and positions[index + length] == position:
            length += 1
        line, end_line, col, end_col = position
        if line is None:
            out.append(0x80 | 15 << 3 | (length - 1))
        elif col is None or end_col is None or end_line is None:
            out.append(0x80 | 13 << 3 | (length - 1))
            out += _location_svarint(line - previous)
            previous = line
        else:
            out.append(0x80 | 14 << 3 | (length - 1))
            out += _location_svarint(line - previous)
            out += _location_varint(end_line - line)
            out += _location_varint(col + 1)
            out += _location_varint(end_col + 1)
            previous = line
        index += length
    return bytes(out)


def _write_lines_310(code: CodeType, lines: list[int | None]) -> bytes:
    """A Python 3.10 line table (``co_linetable``: pairs of a bytecode delta and a signed
    line delta, -128 for no line; CPython 3.10's ``assemble_line_range``) giving each code
    unit its line."""
    out = bytearray()
    previous = code.co_firstlineno
    index = 0
    while index < len(lines):
        line = lines[index]
        end = index
        while end < len(lines) and lines[end] == line:
            end += 1
        size = (end - index) * 2
        if line is None:
            delta = -128
        else:
            delta = line - previous
            previous = line
            while delta > 127:
                out += bytes((0, 127))
                delta -= 127
            while delta < -127:
                out += bytes((0, 256 - 127))
                delta += 127
        while size > 254:
            out += bytes((254, delta & 0xFF))
            delta = -128 if line is None else 0
            size -= 254
        out += bytes((size, delta & 0xFF))
        index = end
    return bytes(out)


def positions(code: CodeType) -> list[_Position]:
    """(line, end line, column, end column) of each code unit (3.10: the line only)."""
    if sys.version_info >= (3, 11):
        return list(code.co_positions())
    lines: list[int | None] = [None] * (len(code.co_code) // 2)
    for start, end, line in code.co_lines():
        for unit in range(start // 2, end // 2):
            lines[unit] = line
    return [(line, None, None, None) for line in lines]


def with_positions(code: CodeType, new: list[_Position]) -> CodeType:
    """``code`` with each code unit at the given position (3.10: its line)."""
    if not LINES_EDITABLE:
        raise Unsupported(f"no line table editing on Python {sys.version_info[0]}.{sys.version_info[1]}")
    if sys.version_info >= (3, 11):
        result = code.replace(co_linetable=write_locations(code, new))
    else:
        result = code.replace(co_linetable=_write_lines_310(code, [p[0] for p in new]))
    if positions(result) != new:
        raise Unsupported("the location table did not encode back")
    return result


def unline(code: CodeType, start: int, end: int) -> CodeType:
    """``code`` with the instructions at offsets [start, end) without a location."""
    return relocate(code, start, end, (None, None, None, None))


def relocate(code: CodeType, start: int, end: int, where: _Position) -> CodeType:
    """``code`` with the instructions at offsets [start, end) at ``where``."""
    new = positions(code)
    for unit in range(start // 2, end // 2):
        new[unit] = where
    return with_positions(code, new)


def relabel(code: CodeType, lines: dict[int, int]) -> CodeType:
    """``code`` with the lines that are keys of ``lines`` replaced by their values (where
    the compiler was given a stand-in line to keep an instruction of its own)."""
    old = positions(code)
    new = [(lines.get(p[0], p[0]), lines.get(p[1], p[1]), p[2], p[3])  # type: ignore[arg-type]  # (None: not a key)
           if p[0] in lines else p for p in old]
    return code if new == old else with_positions(code, new)


def _first_traceable(instructions: list[dis.Instruction]) -> int:
    """Index of the first instruction after RESUME (3.11+) or GEN_START (3.10's generators
    and coroutines): the generator prefix and cell set-up come before it."""
    for i, ins in enumerate(instructions):
        if ins.opname in ("RESUME", "GEN_START"):
            return i + 1
    if sys.version_info >= (3, 11):
        raise Unsupported("no RESUME")
    return 0


def unline_with_entry(code: CodeType) -> CodeType:
    """The with form's code entering its ``with`` statement (``_telemetry.span(...)`` up to
    the ``POP_TOP`` of the ``__enter__`` result) without a location; ``code`` unchanged
    when it does not start that way.

    Given any line, that code emits a line event of its own before the body's first
    instruction runs: the body's first statement does not always start on its first line
    (a ``nonlocal``, a decorated ``def``, ``x = (\n f())``, whose first instruction is on
    the next line); given none, the interpreter gives it the ``def`` line of the RESUME before
    it. In a table without a location there, the first line event is the body's own."""
    if not LINES_EDITABLE:
        return code
    instructions = instructions_of(code)
    first = _first_traceable(instructions)
    head = instructions[first:first + 8]
    if (len(head) < 2 or head[0].opname != "LOAD_GLOBAL" or head[0].argval != "_telemetry"
            or head[1].opname not in _ATTR_LOADS):
        return code
    for i, ins in enumerate(head):
        if ins.opname in ("BEFORE_WITH", "SETUP_WITH") and i + 1 < len(head) and head[i + 1].opname == "POP_TOP":
            end = instructions[first + i + 2].offset
            return unline(code, head[0].offset, end)
        if ins.opcode in _JUMPS or ins.opname in _NO_FALLTHROUGH:
            break
    return code


def hide_slot(code: CodeType, marker: str) -> CodeType:
    """The function's code with the start time kept on the value stack (see the module's
    docstring). ``code`` must contain ``marker`` among its constants."""
    if not SUPPORTED:
        raise Unsupported(f"Python {sys.version_info[0]}.{sys.version_info[1]}")
    instructions = instructions_of(code)
    entries = read_table(code)
    depths = stack_depths(code, instructions, entries)
    index = {ins.offset: i for i, ins in enumerate(instructions)}

    # The push: the first POP_TOP after the call of start() (or start_generator()), reached
    # in a straight line from the function's entry; or, where the entry can skip the call
    # (the site's constant, ``compiler._skipping``), that one and the POP_TOP of the skipping
    # branch's ``SITE.off``, both before the try block.
    site_mark, test_mark = marker + SITE_SUFFIX, marker + TEST_SUFFIX
    skipping = site_mark in code.co_consts
    pushes = []
    for i, ins in enumerate(instructions):
        if not skipping and (ins.opcode in _JUMPS or ins.opname in _NO_FALLTHROUGH):
            break
        if ins.opname in _ATTR_LOADS and ins.argval in ("start", "start_generator") and i + 1 < len(instructions):
            for later in instructions[i + 1:i + 4]:
                if later.opname == "POP_TOP":
                    pushes.append(later)
                    break
            break
        if (skipping and ins.opname in _ATTR_LOADS and ins.argval == "off" and instructions[i - 1].argval == site_mark
                and instructions[i + 1].opname == "POP_TOP"):
            pushes.append(instructions[i + 1])
    if len(pushes) != 1 + skipping or any(depths.get(push.offset) != 1 for push in pushes):
        raise Unsupported("no start() call at the top of the function")
    push = max(pushes, key=lambda ins: ins.offset)
    after_push = instructions[index[push.offset] + 1].offset
    if entries and min(entry.start for entry in entries) < after_push:
        raise Unsupported("the entry is not before the try block")

    markers = [ins for ins in instructions if ins.opname == "LOAD_CONST" and ins.argval == marker
               and isinstance(ins.argval, str)]
    if not markers:
        raise Unsupported("no end() call")
    tests = [ins for ins in instructions if ins.opname == "LOAD_CONST" and ins.argval == test_mark]
    if skipping != bool(tests):
        raise Unsupported("the end() calls are not guarded")
    # The names the exit calls end() by, on the normal and the exception path: a skipping
    # function's exit picks it from a pair (compiler._skipping).
    end_name, raised_name = (SKIPPING_END, SKIPPING_RAISED) if skipping else ("end", "raised")

    # The finally block's exception copy: a handler target that starts PUSH_EXC_INFO, then
    # the end() call and RERAISE 0, in a straight line.
    handlers = []
    for target in sorted({entry.target for entry in entries}):
        first = index.get(target)
        if first is None or instructions[first].opname != "PUSH_EXC_INFO":
            continue
        block = []
        for ins in instructions[first + 1:]:
            block.append(ins)
            if ins.opcode in _JUMPS or ins.opname in _NO_FALLTHROUGH:
                break
        names = [ins for ins in block if ins.opname in _ATTR_LOADS and ins.argval == end_name]
        if (block and block[-1].opname == "RERAISE" and block[-1].arg == 0 and len(names) == 1
                and any(ins in markers for ins in block)):
            handlers.append((target, block, names[0]))
    if len(handlers) != 1:
        raise Unsupported(f"{len(handlers)} handlers of the wrapper's finally block")
    handler, block, end_load = handlers[0]
    reraise = block[-1]
    into_handler = [entry for entry in entries if entry.target == handler]
    if any(entry.lasti for entry in into_handler) or len({entry.depth for entry in into_handler}) != 1:
        raise Unsupported("the finally block's handler is entered at several depths")
    if depths.get(reraise.offset) != into_handler[0].depth + 2:
        raise Unsupported("the handler's stack is not the finally block's")
    in_handler = range(handler, reraise.offset + 2)

    edited = _Code(code)
    for each in pushes:
        edited.set(each.offset, "NOP")
    for ins in [*markers, *tests]:
        depth = depths.get(ins.offset)
        if depth is None:
            continue  # unreachable (the compiler left it)
        # The bottom item is below everything counted here, and below the handler's
        # pushed offset when inside the handler.
        edited.set(ins.offset, "COPY", depth + 1 + (ins.offset in in_handler))
    co_names = code.co_names
    if raised_name not in co_names:
        co_names = co_names + (raised_name,)
    position = co_names.index(raised_name)
    if end_load.opname == "LOAD_ATTR" and sys.version_info >= (3, 12):
        edited.set(end_load.offset, "LOAD_ATTR", position << 1 | (end_load.arg & 1))
    else:
        edited.set(end_load.offset, end_load.opname, position)
    edited.set(reraise.offset, "RERAISE", 2)

    # The table: split entries at the push and around the handler, then deepen.
    cuts = sorted({after_push, handler, reraise.offset + 2})
    new_entries = []
    for entry in entries:
        pieces = [entry.start] + [cut for cut in cuts if entry.start < cut < entry.end] + [entry.end]
        for start, end in zip(pieces, pieces[1:]):
            piece = entry._replace(start=start, end=end)
            if start >= after_push:
                piece = piece._replace(depth=piece.depth + 1)
                if start in in_handler:
                    piece = piece._replace(depth=piece.depth + 1)
                if entry.target == handler:
                    piece = piece._replace(lasti=True)
            new_entries.append(piece)
    constants = tuple(None if isinstance(value, str) and value in (marker, test_mark) else value
                      for value in code.co_consts)
    owned = _own_slots(edited, instructions, index, markers, end_load, co_names, constants,
                       site_mark if skipping else None)
    if owned is not None:
        co_names, constants = owned
    elif skipping:  # (its entry would read the skip of a string)
        raise Unsupported("the end() calls cannot be bound")
    result = code.replace(co_code=bytes(edited.raw),  # type: ignore[call-arg, unused-ignore]  # (3.11+)
                          co_exceptiontable=write_table(new_entries),
                          co_stacksize=code.co_stacksize + 2, co_names=co_names, co_consts=constants)
    _check(result, [*markers, *tests], depths, push, handler, reraise)
    # The entry code without a location (see unline_with_entry): the first line event is
    # the body's own.
    if skipping:
        result = _lead_in(result, instructions, index[after_push], positions(code)[push.offset // 2])
    result = unline(result, instructions[_first_traceable(instructions)].offset, after_push)
    return _inline_exits(_jump_exits(_tight_entry(result))) if skipping else result


def _unit(opname: str, arg: int = 0) -> bytes:
    """One instruction with its (zeroed) inline caches (3.11's table: a list by opcode)."""
    if not 0 <= arg <= 255:
        raise Unsupported(f"{opname} {arg} does not fit one code unit")
    caches: Any = getattr(dis, "_inline_cache_entries", None)
    return bytes((_OP[opname], arg)) + b"\0\0" * (caches[_OP[opname]] if caches is not None else 0)


# Where the skipping exit jumps over its call for an untimed call (:func:`_jump_exits`): 3.11,
# whose tracers see lines only. From 3.12, ``sys.monitoring`` reports every conditional jump
# that has a line as a BRANCH event, and a jump without one (or to an instruction without
# one) makes the ``return`` after it a line event of its own: the exit keeps picking its call.
JUMPING = sys.version_info[:2] == (3, 11)
# The skipping exit as compiled (``compiler._skipping``), once hide_slot has made its marker
# loads copies: ``_telemetry.ends[STATE is None](NAME, STATE)``.
_PICKING_EXIT = ("LOAD_GLOBAL", "LOAD_ATTR", "COPY", "LOAD_CONST", "IS_OP", "BINARY_SUBSCR", "LOAD_CONST", "COPY",
                 "PRECALL", "CALL", "POP_TOP")


# The skipping entry as compiled (``compiler._skipping``), once hide_slot has made its
# pushes NOPs: the test, the untimed branch (``SITE.skip -= 1``, ``SITE.off``) and
# ``SITE.start()`` (3.11's ``LOAD_METHOD`` of a slot does not specialise: ``_tight_entry``).
_SKIPPING_ENTRY = ("LOAD_CONST", "LOAD_ATTR", "POP_JUMP_FORWARD_IF_FALSE",
                   "LOAD_CONST", "COPY", "LOAD_ATTR", "LOAD_CONST", "BINARY_OP", "SWAP", "STORE_ATTR", "LOAD_CONST",
                   "LOAD_ATTR", "NOP", "JUMP_FORWARD",
                   "LOAD_CONST", "LOAD_METHOD", "PRECALL", "CALL", "NOP")


def _tight_entry(code: CodeType) -> CodeType:
    """(3.11) The skipping entry in 7 instructions for an untimed call instead of 14, and 8
    for a timed one. An untimed call takes one of the slots that the site's last timed call
    granted, from an iterator (``SITE.ticks``, a range's: ``FOR_ITER`` calls its C ``next``,
    which makes no Python call and no object), where the compiled entry reads ``skip``,
    subtracts one and stores it back (read once, as this function wrote it before: 286
    machine instructions above a bare call under callgrind, against 201). The runtime counts
    the untimed calls as the slots granted less those left (``_core._take``). The clock is the site's
    own (``SITE.start``, its tracer's ``start`` kept in a slot by the runtime: that load
    specialises, ``LOAD_METHOD`` of ``_telemetry.start``, a C function in the tracer's class,
    does not)::

        LOAD_CONST SITE; LOAD_ATTR ticks; FOR_ITER timed   # a slot: pushed on the iterator
        POP_TOP; POP_TOP; LOAD_CONST None                  # untimed: None is the state
        JUMP_FORWARD body
        (NOPs, never run)
    timed:                                                 # none left: FOR_ITER popped the iterator
        PUSH_NULL; LOAD_CONST SITE; LOAD_ATTR start; PRECALL 0; CALL 0  # falls into the body

    in the entry's own code units, which have no location: no offset, handler or location
    moves. ``ticks`` is added to the names if the code has none. ``code`` unchanged where the
    entry is not in the compiled shape (or has no None among its constants), or the result
    fails the stack analysis; its ``skip`` then counts its untimed calls, which the runtime
    on 3.11 never grants: every call of such a function is timed."""
    if not JUMPING:
        return code
    try:
        instructions = instructions_of(code)
        first = _first_traceable(instructions)
        block = instructions[first:first + len(_SKIPPING_ENTRY)]
        names = tuple(ins.opname for ins in block)
        if names != _SKIPPING_ENTRY or len(instructions) <= first + len(block):
            return code
        site, skip, test, _, _, skip_again, one, minus, _, store, site_again, off, _, jump, load, start = block[:16]
        body = instructions[first + len(block)].offset
        if (site.arg != site_again.arg or site.arg != block[3].arg or site.arg != load.arg
                or {skip.arg, skip_again.arg} != {store.arg}
                or skip.argval != "skip" or off.argval != "off" or start.argval != "start" or one.argval != 1
                or test.argval != load.offset or jump.argval != body or minus.arg is None
                or block[4].arg != 1 or block[8].arg != 2 or block[17].arg != 0):
            return code
        none = next((at for at, value in enumerate(code.co_consts) if value is None), None)
        where = positions(code)
        start_at = site.offset
        if none is None or any(position[0] is not None for position in where[start_at // 2:body // 2]):
            return code
        co_names = code.co_names
        ticks = co_names.index(TICKS) if TICKS in co_names else len(co_names)
        head = _unit("LOAD_CONST", site.arg or 0) + _unit("LOAD_ATTR", ticks)
        untimed = _unit("POP_TOP") + _unit("POP_TOP") + _unit("LOAD_CONST", none)
        timed = (_unit("PUSH_NULL") + _unit("LOAD_CONST", site.arg or 0) + _unit("LOAD_ATTR", start.arg or 0)
                 + _unit("PRECALL", 0) + _unit("CALL", 0))
        timed_at = body - len(timed)
        jump_at = start_at + len(head) + 2 + len(untimed)  # (FOR_ITER: one code unit)
        filler = (timed_at - jump_at - 2) // 2
        if filler < 0:
            return code
        raw = bytearray(code.co_code)
        raw[start_at:body] = (head + _unit("FOR_ITER", (timed_at - start_at - len(head) - 2) // 2)
                              + untimed + _unit("JUMP_FORWARD", (body - jump_at - 2) // 2)
                              + _unit("NOP") * filler + timed)
        result = code.replace(co_code=bytes(raw),
                              co_names=co_names if ticks < len(co_names) else (*co_names, TICKS))
        depths = depths_of(result)
        if depths.get(body) != 1 or depths.get(timed_at) != 0 or depths.get(jump_at) != 1:
            return code
        return result
    except (Unsupported, IndexError, KeyError, ValueError):
        return code


def _sites_tag(code: CodeType) -> tuple[str, int, int, int] | None:
    """The tag :func:`_own_slots` put last among the constants (see ``SITES_TAG``), or None."""
    tag = code.co_consts[-1] if code.co_consts else None
    return tag if type(tag) is tuple and len(tag) == 4 and tag[0] == SITES_TAG else None


def _analysis(code: CodeType) -> tuple[list[dis.Instruction], list[_Entry], dict[int, int], list[_Position]]:
    """The code's instructions, exception table, stack depths and positions."""
    instructions = instructions_of(code)
    entries = read_table(code)
    return instructions, entries, stack_depths(code, instructions, entries), positions(code)


def _jump_exits(code: CodeType) -> CodeType:
    """(3.11) The skipping function's exit on the normal path, ``ends[STATE is None](NAME,
    STATE)`` (a dict lookup and a call for every call, the untimed ones included), as a jump
    over the call for an untimed call::

        COPY state; POP_JUMP_FORWARD_IF_NONE past; _telemetry.end(NAME, state); past:

    in the code units of the exit it replaces (what is left over: ``NOP``, on the timed
    path), so that no offset, jump target, handler or location moves. Every instruction of
    the exit has the one location the compiler gave it (the line of the ``return`` it runs
    for), and a forward jump within a line is no line event. The function's own name slot
    (:func:`_own_slots`) becomes ``end`` instead of ``ends``; bound, :data:`BOUND_END`. All
    exits or none: ``code`` unchanged where one is not in that shape or the result fails the
    stack analysis (every ``COPY`` reaching the state)."""
    tag = _sites_tag(code)
    if not JUMPING or tag is None:
        return code
    _, slot, own, _ = tag
    try:
        instructions, entries, depths, where = _analysis(code)
        edited = _Code(code)
        copies = []
        for i, ins in enumerate(instructions):
            if not (ins.opname == "LOAD_ATTR" and ins.argval == SKIPPING_END and ins.arg == own):
                continue
            block = instructions[i - 1:i - 1 + len(_PICKING_EXIT)]
            if (tuple(each.opname for each in block) != _PICKING_EXIT or block[0].argval != "_telemetry"
                    or block[3].argval is not None or block[4].arg != 0 or block[6].arg != slot
                    or block[9].arg != 2 or block[2].arg != depths.get(block[2].offset)
                    or block[7].arg != depths.get(block[7].offset)):
                raise Unsupported(f"the exit at offset {ins.offset} is not in the picking shape")
            start, end = block[0].offset, block[-1].offset + 2
            if len(set(where[start // 2:end // 2])) != 1 or edited.has_prefix(start) or any(
                    _handler_at(entries, at) != _handler_at(entries, start) for at in range(start, end, 2)):
                raise Unsupported(f"the exit at offset {ins.offset} spans two locations or handlers")
            state = depths[start]  # (the state is the bottom item: COPY by the depth)
            load = (_unit("LOAD_GLOBAL", (block[0].arg or 0) >> 1 << 1)  # (no NULL: a method call)
                    + _unit("LOAD_METHOD", own) + _unit("LOAD_CONST", slot))
            call = _unit("COPY", state + 3) + _unit("PRECALL", 2) + _unit("CALL", 2) + _unit("POP_TOP")
            padding = (end - start - 4 - len(load) - len(call)) // 2
            if padding < 0:
                raise Unsupported(f"the exit at offset {ins.offset} is too short for the jump")
            past = (end - start - 4) // 2  # (from the unit after the jump)
            edited.raw[start:end] = (_unit("COPY", state) + _unit("POP_JUMP_FORWARD_IF_NONE", past)
                                     + _unit("NOP") * padding + load + call)
            copies += [start, end - len(call)]
        if not copies:
            return code
        names = (*code.co_names[:own], "end", *code.co_names[own + 1:])
        result = code.replace(co_code=bytes(edited.raw), co_names=names)
        after = depths_of(result)
        if any(result.co_code[at] != _OP["COPY"] or after.get(at) != _arg(result, at) for at in copies):
            raise Unsupported("a copy misses the state")
        return result
    except (Unsupported, IndexError, KeyError, ValueError):
        return code


def _units(opname: str, arg: int = 0) -> bytes:
    """:func:`_unit` with ``EXTENDED_ARG`` prefixes for an argument above 255."""
    prefix = b""
    high = arg >> 8
    while high:
        prefix = bytes((_EXTENDED_ARG, high & 255)) + prefix
        high >>= 8
    return prefix + _unit(opname, arg & 255)


# The exit that :func:`_jump_exits` writes, from its jump on: ``COPY state;
# POP_JUMP_FORWARD_IF_NONE past; NOP...; LOAD_GLOBAL _telemetry; LOAD_METHOD end;
# LOAD_CONST NAME; COPY; PRECALL 2; CALL 2; POP_TOP; past:`` and the return it runs for:
# ``RETURN_VALUE``, or ``LOAD_CONST; RETURN_VALUE`` (a constant is loaded after the ``finally``).
_JUMPING_CALL = ("LOAD_GLOBAL", "LOAD_METHOD", "LOAD_CONST", "COPY", "PRECALL", "CALL", "POP_TOP")
# The site's slots that the inline exit reads and writes (``runtime._core._Site``).
INLINE_NAMES = ("left", "limit", "start", "low", "high", "n", "total")
_LT, _GT = dis.cmp_op.index("<"), dis.cmp_op.index(">")
_ADD, _SUBTRACT = (next(at for at, (name, _) in enumerate(getattr(dis, "_nb_ops", ())) if name == op)
                   if JUMPING else 0 for op in ("NB_ADD", "NB_SUBTRACT"))


def _inline_block(site: int, names: dict[str, int], one: int, depth: int, call: bytes, returns: bytes,
                  at: int) -> tuple[bytes, _Entry]:
    """The exit of a timed call written into the function (:func:`_inline_exits`), to be
    placed at offset ``at``, entered with the state at the bottom of the stack, ``depth``
    deep, and ending in the return it came from (``returns``). What
    ``_core.Tracer._end_site_agg`` does for a site timed on every call, with the site
    constant ``site``; anything else, its ``call`` as the exit had it. With the
    exception-table entry that sends an error of the counting (the site's slots corrupted:
    the runtime's own ``end_site`` catches those) to that call, not to the user's code."""
    def attr(name: str) -> bytes:
        return _unit("LOAD_CONST", site) + _unit("LOAD_ATTR", names[name])

    def store(name: str) -> bytes:
        return _unit("LOAD_CONST", site) + _unit("STORE_ATTR", names[name])

    # Built in pieces; each forward jump is patched once its target's offset is known.
    pieces: list[Any] = [
        attr("left"), ("POP_JUMP_FORWARD_IF_TRUE", "general"),  # sampled, undecided, or not a site
        _unit("COPY", depth) + attr("limit") + _unit("COMPARE_OP", _LT),
        ("POP_JUMP_FORWARD_IF_FALSE", "general"),  # not the aggregate mode's state (see _Site.limit)
        _unit("PUSH_NULL") + attr("start") + _unit("PRECALL", 0) + _unit("CALL", 0)
        + _unit("COPY", depth + 1) + _unit("BINARY_OP", _SUBTRACT),  # seconds = clock() - state
        _unit("COPY", 1) + attr("low") + _unit("COMPARE_OP", _LT), ("POP_JUMP_FORWARD_IF_FALSE", "longer"),
        attr("n"), ("POP_JUMP_FORWARD_IF_FALSE", "popped"),  # the first call since the last fold: _recent
        _unit("COPY", 1) + store("low"),
        "longer",
        _unit("COPY", 1) + attr("high") + _unit("COMPARE_OP", _GT), ("POP_JUMP_FORWARD_IF_FALSE", "counted"),
        _unit("COPY", 1) + store("high"),
        "counted",
        attr("total") + _unit("BINARY_OP", _ADD) + store("total"),  # (seconds + total: the same float)
        attr("n") + _unit("LOAD_CONST", one) + _unit("BINARY_OP", _ADD) + store("n"),
        "done",
        returns,
        "popped", _unit("POP_TOP"),  # (the seconds; or, from the handler, the error)
        "general", call + returns,
    ]
    offsets: dict[str, int] = {}
    offset = at
    for piece in pieces:
        if isinstance(piece, str):
            offsets[piece] = offset
        else:
            offset += 2 if isinstance(piece, tuple) else len(piece)  # (a jump: one code unit)
    out = bytearray()
    for piece in pieces:
        if isinstance(piece, tuple):
            opname, target = piece
            out += _unit(opname, (offsets[target] - (at + len(out) + 2)) // 2)
        elif isinstance(piece, bytes):
            out += piece
    return bytes(out), _Entry(at, offsets["done"], offsets["popped"], depth, False)


def _inline_exits(code: CodeType) -> CodeType:
    """(3.11) The skipping function's exit for a timed call in the function's own code,
    without the call of ``end_site`` and its frame: where :func:`_jump_exits` left
    ``COPY state; POP_JUMP_FORWARD_IF_NONE past; ...the call...; past: return`` (the return:
    ``RETURN_VALUE``, or ``LOAD_CONST; RETURN_VALUE``), the exit becomes ``COPY state;
    POP_JUMP_FORWARD_IF_NOT_NONE block; return`` (an untimed call returns there) and each
    exit's block, ending in a copy of its return, is appended to the code::

        if SITE.left or not state < SITE.limit: the call as it was; return
        seconds = SITE.start() - state
        if seconds < SITE.low:
            if not SITE.n: the call as it was; return      # the first call since a fold
            SITE.low = seconds
        if seconds > SITE.high: SITE.high = seconds
        SITE.total += seconds; SITE.n += 1
        return

    ``left`` is 0 for a site decided to time every call, ``limit`` infinite in the
    aggregate mode and minus infinity in the others (``_core._Site``), so that a state of
    another mode (a span, where a ``<`` is False: ``_core._AggSpan``) or a call begun in
    the aggregate mode and ending in another goes to the mode's ``end_site`` as before,
    and the unbound site (:class:`Unbound`, ``left`` 1) to ``end``. An error in the block
    (a slot of the site corrupted) goes to that call too, whose ``end_site`` counts it as
    the runtime's fault: the user's code never sees it. As the call: no
    instruction between the clock's call and the stores calls anything, so no other thread
    runs in between (a fold, a change of mode). Every unit of a block has the location of the
    exit it came from, which its return shares: the jump into the block is forward and
    within the line, no line event. Nothing moves: the blocks come after the last
    instruction, where none of the function's handlers reaches (each block's own entry,
    appended to the table, covers its counting only). A jump too long for one code unit
    takes an ``EXTENDED_ARG`` from the exit's units. ``code`` unchanged where an exit is not
    in that shape (each exit on its own), or the result fails the stack analysis."""
    tag = _sites_tag(code)
    if not JUMPING or tag is None or tag[3] < 0:
        return code
    _, slot, own, site = tag
    try:
        instructions, entries, depths, where = _analysis(code)
        if any(ins.opname == "LOAD_CONST" and ins.arg == len(code.co_consts) - 1 for ins in instructions):
            return code
        co_names = list(code.co_names)
        names = {}
        for name in INLINE_NAMES:
            if name not in co_names:
                co_names.append(name)
            names[name] = co_names.index(name)
        consts = list(code.co_consts[:-1])
        one = next((at for at, value in enumerate(consts) if type(value) is int and value == 1), None)
        if one is None:
            one = len(consts)
            consts.append(1)
        if max(names.values()) > 255 or one > 255 or site > 255:
            return code
        by_offset = {ins.offset: i for i, ins in enumerate(instructions)}
        edited = _Code(code)
        blocks = bytearray()
        block_positions: list[Any] = []
        states = []
        guards: list[_Entry] = []
        end_of_code = len(code.co_code)
        for i, ins in enumerate(instructions):
            if ins.opname != "POP_JUMP_FORWARD_IF_NONE" or i == 0 or instructions[i - 1].opname != "COPY":
                continue
            copy = instructions[i - 1]
            past = by_offset.get(ins.argval)
            if past is None or past < len(_JUMPING_CALL) or past + 1 >= len(instructions):
                continue
            call = instructions[past - len(_JUMPING_CALL):past]
            tail = instructions[past:past + 1] if instructions[past].opname == "RETURN_VALUE" else (
                instructions[past:past + 2])
            if (tuple(each.opname for each in call) != _JUMPING_CALL or call[1].arg != own
                    or call[2].arg != slot or call[0].argval != "_telemetry" or tail[-1].opname != "RETURN_VALUE"
                    or tail[0].opname not in ("RETURN_VALUE", "LOAD_CONST")):
                continue
            start, end, after_tail = copy.offset, tail[0].offset, tail[-1].offset + 2
            state = depths.get(start)
            if (state is None or copy.arg != state or call[3].arg != state + 3 or edited.has_prefix(start)
                    or len(set(where[start // 2:after_tail // 2])) != 1
                    or any(_handler_at(entries, at) is not None for at in range(start, after_tail, 2))):
                continue
            at = end_of_code + len(blocks)
            returns = code.co_code[end:after_tail]
            block, guard = _inline_block(site, names, one, state, code.co_code[call[0].offset:end], returns, at)
            jump = _units("POP_JUMP_FORWARD_IF_NOT_NONE", (at - start - 4) // 2)
            if len(jump) > 2:  # (the prefix moves the jump one unit on: the distance is one less)
                jump = _units("POP_JUMP_FORWARD_IF_NOT_NONE", (at - start - 4 - len(jump) + 2) // 2)
            head = _unit("COPY", state) + jump + returns
            if len(head) > after_tail - start:
                continue
            edited.raw[start:after_tail] = head + _unit("NOP") * ((after_tail - start - len(head)) // 2)
            blocks += block
            block_positions += [where[start // 2]] * (len(block) // 2)
            states.append((at, state))
            guards.append(guard)
        if not states:
            return code
        result = code.replace(co_code=bytes(edited.raw + blocks),  # type: ignore[call-arg, unused-ignore]  # (3.11+)
                              co_names=tuple(co_names), co_consts=(*consts, tag),
                              co_exceptiontable=write_table([*entries, *guards]))
        result = with_positions(result, where + block_positions)
        after = depths_of(result)
        if any(after.get(at) != state for at, state in states) or any(
                depth > result.co_stacksize for offset, depth in after.items() if offset >= end_of_code):
            raise Unsupported("an inline exit misses the state")
        for ins in instructions_of(result):  # every COPY deeper than the block's own reaches the state
            if ins.offset >= end_of_code and ins.opname == "COPY" and (ins.arg or 0) > 2 and after.get(
                    ins.offset) != ins.arg:
                raise Unsupported(f"the copy at offset {ins.offset} misses the state")
        return result
    except (Unsupported, IndexError, KeyError, ValueError, StopIteration):
        return code


def _lead_in(code: CodeType, instructions: list[dis.Instruction], first: int, entry: _Position) -> CodeType:
    """``code`` with the body's leading instructions that have no location of their own
    given the entry's (``entry``), from ``instructions[first]`` to the first that has one.
    Straight after a one-line entry the compiler gives them the entry's line, as the body's
    first statement usually has it (see ``compiler._entry_line``); after the skipping entry
    (``compiler._skipping``) two branches join there, and the compiler gives them none."""
    lines = positions(code)
    last = first
    while last < len(instructions) and lines[instructions[last].offset // 2][0] is None:
        ins = instructions[last]
        last += 1
        if ins.opcode in _JUMPS or ins.opname in _NO_FALLTHROUGH:
            break
    if last == first:
        return code
    end = instructions[last].offset if last < len(instructions) else len(code.co_code)
    return relocate(code, instructions[first].offset, end, entry)


# The last constant of a function whose end() calls :func:`bind_sites` can bind: (SITES_TAG,
# the index of the constant holding its span name, the index of the name ``end`` its calls use,
# the index of the constant its entry reads the site's ``skip`` from, or -1).
SITES_TAG = "\x00telemetry site"
# The marker's suffixes of the entry's site constant and of the exit's test (``compiler._skipping``).
SITE_SUFFIX = " site"
TEST_SUFFIX = " test"
# The tracer's pairs that a skipping function's exit picks its end() from (``compiler._skipping``),
# on the normal and the exception path; bound, the first becomes SKIPPING_END + "_site".
SKIPPING_END = "ends"
SKIPPING_RAISED = "raises"


class Unbound:
    """The site constant of a function whose site the runtime could not give (``bind_sites``):
    nothing to skip, so every call goes through ``start()`` and ``end()`` by name."""

    __slots__ = ()
    skip = 0
    left = 1  # (3.11, ``_inline_exits``: not a site timed on every call, so the exit calls ``end``)
    ticks = iter(range(0))  # (3.11, ``_tight_entry``: no slot, ever)

    @property
    def start(self) -> Callable[[], object]:
        """What the skipping entry calls for the start time (``SITE.start()``,
        ``compiler._skipping``): the ``start`` of the calling module's ``_telemetry``, looked
        up on each call (frames: this, the function); a clock that reads nothing if there is
        none (the call is then left untimed, as a disabled one)."""
        try:
            return sys._getframe(1).f_globals["_telemetry"].start  # type: ignore[no-any-return]
        except Exception:
            return _untimed


def _untimed() -> None:
    return None


UNBOUND = Unbound()
BOUND_END = "end_site"  # the tracer's method a bound function's end() calls: given the site itself
SKIPPING_BOUND_END = "ends_site"  # and the pair a bound skipping function's exit picks it from
TICKS = "ticks"  # (3.11) the site's slots for untimed calls, which the tight entry takes (``_tight_entry``)


def _own_slots(edited: _Code, instructions: list[dis.Instruction], index: dict[int, int],
               markers: list[dis.Instruction], end_load: dis.Instruction, names: tuple[str, ...],
               constants: tuple[Any, ...], site_mark: str | None) -> tuple[tuple[str, ...], tuple[Any, ...]] | None:
    """The names and constants of the code, with the end() calls given a constant and a name
    of their own (each shared with nothing else in the function), for :func:`bind_sites`;
    None when the calls are not in the expected shape (nothing edited: the function stays
    unbound).

    The span name moves into the marker's constant slot (the marker is gone, every marker load
    is a ``COPY`` now) and every call's name load points there; the normal path's
    ``LOAD_ATTR end`` (not ``end_load``, the exception path's, which loads ``raised`` now)
    points to a new ``end`` entry of ``co_names``; a tag at the end of the constants says
    where both are, and where the entry's site constant is (``site_mark``'s). Unbound, the
    code calls ``end("Q", t)`` as before."""
    slot = markers[0].arg
    if slot is None:
        return None
    own = len(names)
    units: list[tuple[int, str, int]] = []
    name = None
    for ins in markers:
        at = index[ins.offset]
        load, attr = instructions[at - 1], instructions[at - 2]
        if load.opname != "LOAD_CONST" or not isinstance(load.argval, str) or name not in (None, load.argval):
            return None
        name = load.argval
        units.append((load.offset, "LOAD_CONST", slot))
        if site_mark is not None:  # ends[TEST is None]: the attribute before the subscript
            attr = next((ins for ins in reversed(instructions[max(0, at - 8):at])
                         if ins.opname in _ATTR_LOADS and ins.argval == end_load.argval), attr)
        if attr.opname in _ATTR_LOADS and attr.argval == end_load.argval and attr.offset != end_load.offset:
            low = (attr.arg or 0) & 1 if attr.opname == "LOAD_ATTR" and sys.version_info >= (3, 12) else None
            units.append((attr.offset, attr.opname, own if low is None else own << 1 | low))
    if name is None or any(arg > 255 or edited.has_prefix(at) for at, _, arg in units):
        return None
    for at, opname, arg in units:
        edited.set(at, opname, arg)
    site = constants.index(site_mark) if site_mark is not None else -1
    constants = (*constants[:slot], name, *constants[slot + 1:], (SITES_TAG, slot, own, site))
    return (*names, end_load.argval), constants


def bind_sites(code: CodeType, site_of: Callable[[str, CodeType], object]) -> CodeType:
    """``code`` and its nested code objects with each bindable function's end() calls given
    its site (``site_of(span name, the function's code)``, None: left unbound) and calling
    :data:`BOUND_END`: the runtime then finds the site without a lookup by name. Runs on each
    load (a site cannot be marshalled into the cache of compiled code)."""
    consts = list(code.co_consts)
    changed = False
    for at, const in enumerate(consts):
        if isinstance(const, CodeType):
            new = bind_sites(const, site_of)
            if new is not const:
                consts[at], changed = new, True
    names = code.co_names
    tag = consts[-1] if consts else None
    if type(tag) is tuple and len(tag) == 4 and tag[0] == SITES_TAG:
        _, slot, own, entry = tag
        site = site_of(consts[slot], code)
        if site is not None:
            consts[slot], consts[-1], changed = site, None, True
            names = (*names[:own], BOUND_END if names[own] == "end" else SKIPPING_BOUND_END, *names[own + 1:])
        if entry >= 0:  # the entry's site constant: never left a string
            consts[entry], changed = site if site is not None else UNBOUND, True
    return code.replace(co_consts=tuple(consts), co_names=names) if changed else code


def _check(code: CodeType, markers: list[dis.Instruction], before: dict[int, int], push: dis.Instruction,
           handler: int, reraise: dis.Instruction) -> None:
    """The edited code by the same analysis: every COPY reaches the bottom item, no handler
    unwinds below it, the RERAISE finds the offset it restores."""
    instructions = instructions_of(code)
    entries = read_table(code)
    depths = stack_depths(code, instructions, entries)
    for ins in markers:
        if ins.offset in before and depths.get(ins.offset) != _arg(code, ins.offset):
            raise Unsupported(f"the copy at offset {ins.offset} misses the start time")
    for entry in entries:
        if entry.start > push.offset and entry.depth < 1:
            raise Unsupported("a handler unwinds past the start time")
    into = [entry for entry in entries if entry.target == handler]
    if not into or depths.get(reraise.offset) != into[0].depth + 3:
        raise Unsupported("the handler's RERAISE does not find the raising offset")


def _arg(code: CodeType, offset: int) -> int:
    return code.co_code[offset + 1]
