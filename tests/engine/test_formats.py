"""Each on-disk format against its codec (``formats``) and the cache's paths (``engine/layout``).

``formats_golden/`` holds files written by the code before the formats had one owner (version
0.1.0, the seal key ``GOLDEN_KEY``): they must still decode to the same records, and those
records must encode to the same bytes, so that a cache written before stays readable.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from pytest_telemetry_inject import formats
from pytest_telemetry_inject.engine import cache as cache_module
from pytest_telemetry_inject.engine import scripts as scripts_module
from pytest_telemetry_inject.engine import seal
from pytest_telemetry_inject.engine.layout import CacheLayout
from pytest_telemetry_inject.engine.scripts import render_script
from pytest_telemetry_inject.engine.testgen import parse_cases, render_test_module
from pytest_telemetry_inject.formats import (
    CHECKED,
    TEST_MODULE,
    CodeFile,
    FunctionRow,
    IndexEntry,
    MemoFile,
    ScriptHeader,
)
from pytest_telemetry_inject.scriptlib import Indent, Insert, InsertAfter, InsertText

GOLDEN = Path(__file__).parent / "formats_golden"
GOLDEN_VERSION = "0.1.0"
GOLDEN_KEY = "golden-sample-key-0123456789"
MEMO_KEY = "4135aa0af419b77bbbd4b7ed204244a12356323e1c96fbd464e86088836a3a31"
BOX_SIZE_SCRIPT = "ac85cda2fd236263ea1b3aacf252cbff83a49c15b1bcc88523ea9622d39646d3"


@pytest.fixture
def golden_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """Encode as version 0.1.0 did (the version is part of keys, memos and scripts)."""
    monkeypatch.setattr(formats, "__version__", GOLDEN_VERSION)
    monkeypatch.setattr(scripts_module, "__version__", GOLDEN_VERSION)
    monkeypatch.setattr(cache_module, "__version__", GOLDEN_VERSION)


@pytest.fixture
def golden_seal(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The machine that sealed the golden files."""
    monkeypatch.setenv("TELEMETRY_INJECT_CACHE_KEY", GOLDEN_KEY)
    seal.forget()
    yield
    monkeypatch.undo()
    seal.forget()


# -- golden files ----------------------------------------------------------------------------


def test_golden_index_lines_decode_and_encode_to_the_same_bytes(golden_version: None) -> None:
    lines = (GOLDEN / "index.jsonl").read_bytes().splitlines()
    entries = [IndexEntry.from_line(line) for line in lines]
    assert [entry.to_line() for entry in entries] == lines
    box = entries[1]
    assert (box.status, box.qualname, box.script, box.origin) == ("ok", "Box.size", BOX_SIZE_SCRIPT, "template")
    # The function key is the one the engine computed then.
    assert formats.function_key(language="python", template_id="python.with.vendored", template_version=1,
                                qualname="Box.size", source_sha256=_script_header().source_sha256) == box.key
    llm = entries[3]
    assert formats.edits_from_json(llm.edits or []) == [
        Indent(2, 5, "    ", "    ", (3, 4)), Insert(2, '    with s("é"):'), InsertAfter(5, "    # end", 4),
        InsertAfter(6, "x"), InsertText(1, 4, "/*t*/")]
    for entry in entries:
        assert formats.edits_to_json(formats.edits_from_json(entry.edits or [])) == (entry.edits or [])
    assert entries[4].status == "failed" and entries[4].edits is None and entries[4].reason.endswith("☃")


def test_golden_memo_decodes_to_its_records_and_encodes_to_the_same_bytes(golden_version: None,
                                                                         golden_seal: None) -> None:
    data = (GOLDEN / "memo").read_bytes()
    frame = MemoFile.decode(data)
    assert frame is not None
    assert frame.header == formats.memo_header(
        status="instrumented", reason="", language="python", changed=True, tests="sample_4135aa0af419b77b.cases",
        counts={"instrumented": 3}, reasons={}) | {"version": GOLDEN_VERSION}
    rows = formats.decode_function_list(frame.sections[0])
    assert rows == formats.read_function_list(frame.sections[0])
    assert [(row.qualname, row.line, row.status, row.cached) for row in rows] == [
        ("area", 4, "instrumented", False), ("Box.size", 10, "instrumented", False),
        ("Box.label", 14, "instrumented", False)]
    assert rows[1].script == BOX_SIZE_SCRIPT
    assert formats.function_list_scripts(frame.sections[0]) == {row.script for row in rows}
    assert formats.encode_function_list(rows) == frame.sections[0]
    segments = formats.decode_line_map(frame.sections[1])
    assert segments[0] == [1, 1, 4, 0] and formats.encode_line_map(segments) == frame.sections[1]
    header = {k: v for k, v in frame.header.items() if k != "version"}
    assert MemoFile.encode(MemoFile.cover(header, frame.sections, frame.payload), frame.mark) == data
    # The cache's own reader and writer: the seal is this machine's, the bytes the same.
    memo = cache_module._decode_memo(data, MEMO_KEY)
    assert memo is not None and memo.sealed
    assert cache_module.encode_memo(MEMO_KEY, header, frame.sections, frame.payload) == data


def test_golden_function_rows_with_reasons_and_cached_flags() -> None:
    functions, line_map = (GOLDEN / "sections").read_bytes().splitlines()
    rows = formats.decode_function_list(functions)
    assert rows[0] == FunctionRow("a", 1, "skipped", "trivial: é")
    assert rows[2].cached is True and rows[2].template == "python.with.runtime/1"
    assert formats.encode_function_list(rows) == functions
    assert line_map == formats.NO_LINE_MAP == formats.encode_line_map(None)


def test_golden_test_module_decodes_to_named_cases_and_renders_the_same(golden_seal: None) -> None:
    data = (GOLDEN / "sample_4135aa0af419b77b.cases").read_bytes()
    framed = TEST_MODULE.decode(data)
    assert framed is not None
    tag, body = framed
    assert seal.verify(bytes.fromhex(tag.decode()), b"tests", "python/sample_4135aa0af419b77b.cases", body)
    assert TEST_MODULE.encode(bytes.fromhex(tag.decode()), body) == data
    text = body.decode()
    cases = formats.read_cases(text)
    assert cases is not None and [case.name for case in cases] == ["area", "Box.size", "Box.label"]
    assert cases[0].original.startswith("def area(w, h):") and cases[0].origin == "template"
    assert cases[1].sha == BOX_SIZE_SCRIPT
    # On disk the row order is (sha, name, origin, original): the old readers' tuples.
    assert parse_cases(text) == [case.on_disk() for case in cases]
    assert render_test_module(path="sample.py", language="python", cases=cases) == text
    assert CacheLayout.tests_name("sample.py", MEMO_KEY) == "sample_4135aa0af419b77b.cases"


def _script_header() -> ScriptHeader:
    header = ScriptHeader.parse((GOLDEN / f"{BOX_SIZE_SCRIPT}.script").read_text())
    assert header is not None
    return header


def test_golden_script_header_parses_and_the_script_renders_the_same(golden_version: None) -> None:
    text = (GOLDEN / f"{BOX_SIZE_SCRIPT}.script").read_text()
    header = _script_header()
    assert header == ScriptHeader("python", "Box.size", "python.with.vendored/1",
                                  "53ffce6e6d6ac03dadb273e60771ff262ff88163a214679da00f27a8c02586ad",
                                  "827c72a82b9267dc04e99adeb1dcddca7d774428ab2625c37154b95b97445169")
    assert header.render() in text
    assert ScriptHeader.template_of(text) == ("python.with.vendored", 1)
    box = IndexEntry.from_line((GOLDEN / "index.jsonl").read_bytes().splitlines()[1])
    rendered = render_script(language=header.language, span_name=header.span_name, template=header.template,
                             source_sha256=header.source_sha256, output_sha256=header.output_sha256,
                             edits=formats.edits_from_json(box.edits or []))
    assert rendered == text and scripts_module.sha256_text(rendered) == BOX_SIZE_SCRIPT


def test_golden_record_of_passed_tests(golden_seal: None) -> None:
    data = (GOLDEN / "checked.keys").read_bytes()
    framed = CHECKED.decode(data)
    assert framed is not None
    keys = formats.decode_checked_keys(framed[1])
    assert keys == {"0a" * 32, "0b" * 32}
    assert CHECKED.encode(bytes.fromhex(framed[0].decode()), formats.encode_checked_keys(keys)) == data
    assert seal.verify(bytes.fromhex(framed[0].decode()), b"checked", "sample_4135aa0af419b77b.cases", framed[1])


# -- round trips and refusals ------------------------------------------------------------------


def test_codecs_round_trip() -> None:
    entry = IndexEntry("ab" * 32, "ok", template="t/1", script="cd" * 32, language="go", qualname="(*T).M",
                       origin="llm", edits=[["insert", 1, "x"]], reason="", version="9")
    assert IndexEntry.from_line(entry.to_line()) == entry
    row = FunctionRow("f", 3, "failed", "why", "", "", True)
    assert FunctionRow.decode(json.loads(formats.encode_function_list([row]))[0]) == row
    case = formats.TestCase("ef" * 32, "C.m", "def m(self):\n    pass\n", "llm")
    assert formats.read_cases(f"SCRIPTS = [\n{case.to_row()}\n]\n") == [case]
    assert CodeFile.decode(CodeFile.encode(b"s" * 32, b"rest")) == (b"s" * 32, b"rest")
    covered = MemoFile.cover({"status": "unchanged"}, [b"[]", b"null"], b"")
    frame = MemoFile.decode(MemoFile.encode(covered, b"-"))
    assert frame is not None and (frame.sections, frame.payload, frame.mark) == ([b"[]", b"null"], b"", b"-")
    header = ScriptHeader("python", "f", "llm/1", "1" * 64, "2" * 64)
    assert ScriptHeader.parse(header.render()) == header


@pytest.mark.parametrize("item", [
    ["f", 0, "instrumented", "", "", "", False],          # no line 0
    ["f", True, "instrumented", "", "", "", False],       # a bool is no line
    ["f", 1, "done", "", "", "", False],                  # an unknown status
    ["f", 1, "failed", None, "", "", False],              # a reason that is no string
    ["f", 1, "failed", "", "", "", "no"],                 # cached is a bool
])
def test_a_function_row_of_the_wrong_shape_is_refused_with_a_reason(item: list[object]) -> None:
    with pytest.raises(ValueError, match="a function row of the wrong shape"):
        FunctionRow.decode(item)


def test_rows_and_lines_of_the_wrong_length_or_damaged_are_refused() -> None:
    with pytest.raises(ValueError):
        FunctionRow.decode(["f", 1, "failed", "", "", ""])  # six fields
    line = IndexEntry("ab" * 32, "ok").to_line()
    with pytest.raises(ValueError, match="damaged index line"):
        IndexEntry.from_line(line[:-1] + b"x")
    record = json.dumps(["k", "ok", "", "", "", "", "template", "not a list", "", "v"]).encode()
    with pytest.raises(ValueError, match="an index line of the wrong shape"):
        IndexEntry.from_line(b"%08x %s" % (zlib.crc32(record), record))
    with pytest.raises(ValueError, match="a test case of the wrong shape"):
        formats.TestCase.decode(("s", "n", "someone", "src"))
    assert formats.read_cases("SCRIPTS = [('s', 'n', 'someone', 'src')]\n") is None
    data = MemoFile.encode(MemoFile.cover({}, [b"[]", b"null"], b"payload"), b"-")
    assert MemoFile.decode(data[:-1] + b"P") is None  # the crc32 covers the payload
    assert CodeFile.decode(b"TI-CODE2" + b"x" * 40) is None
    assert ScriptHeader.parse("LANGUAGE = 'python'\n") is None
    assert ScriptHeader.template_of("TEMPLATE = 'no version'\n") is None


def test_the_layout_names_every_path(tmp_path: Path) -> None:
    layout = CacheLayout(tmp_path)
    sha = BOX_SIZE_SCRIPT
    assert Path(layout.script("python", sha)) == tmp_path / "scripts" / "python" / "ac" / f"{sha}.script"
    assert Path(layout.memo(MEMO_KEY)) == tmp_path / "metadata" / "files" / "41" / MEMO_KEY
    assert Path(layout.code(MEMO_KEY)) == tmp_path / "metadata" / "code" / "41" / MEMO_KEY
    assert Path(layout.shard(MEMO_KEY)) == tmp_path / "metadata" / "index" / "41.jsonl"
    assert Path(layout.checked("m.cases")) == tmp_path / "metadata" / "checked" / "m.cases.keys"
    tests = layout.tests("python", "m_0123456789abcdef.cases")
    assert CacheLayout.of_test_module(tests)[1] == "python"
    assert CacheLayout.of_test_module(tests)[0].root == tmp_path.resolve()
    assert layout.script_sha(Path(layout.script("python", sha))) == sha
    assert layout.checked_tests_name(Path(layout.checked("m.cases"))) == "m.cases"
    assert CacheLayout.tests_name("src/Weird-Name.v2.py", "f" * 64) == "Weird_Name_v2_ffffffffffffffff.cases"


def test_the_engine_and_the_refactorer_compute_function_keys_alike() -> None:
    from pytest_telemetry_inject.engine.pipeline import Engine
    from pytest_telemetry_inject.languages import get_language
    from pytest_telemetry_inject.settings import Settings

    settings = Settings()
    python = get_language("python")
    parsed = python.parse("def area(w, h):\n    return w * h\n", "area.py", settings)
    record = parsed.functions[0]
    template = python.templates(record, settings)[0]
    assert Engine(settings, None).function_key(record, template) == formats.function_key(
        language=record.language, template_id=template.id, template_version=template.version,
        qualname=record.qualname, source_sha256=record.sha256)
