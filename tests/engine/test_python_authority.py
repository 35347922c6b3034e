"""Python is the authority on what is Python: where tree-sitter's grammar reports an error in a
file this interpreter compiles, the function records come from Python's own parser, and the
file is instrumented like any other."""

from __future__ import annotations

import dataclasses
import sys
import sysconfig
import warnings
from pathlib import Path

import pytest

from pytest_telemetry_inject.engine.compiler import compile_mapped
from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.errors import SourceSyntaxError
from pytest_telemetry_inject.languages.python import PythonLanguage, _ts
from pytest_telemetry_inject.settings import Settings
from pytest_telemetry_inject.sourcefile import decode_source

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CONTINUATION = "def f(x):\n    return (x +\n1)\n"


def test_tree_sitter_refuses_what_python_compiles() -> None:
    """(The control: if tree-sitter ever accepts these, the tests below test nothing new.)"""
    assert _ts().parser.parse(CONTINUATION.encode()).root_node.has_error
    compile(CONTINUATION, "m.py", "exec")


@pytest.mark.parametrize("style", ["try", "with"])
def test_a_file_tree_sitter_refuses_is_instrumented(style: str) -> None:
    source = "import os\n\n\nclass K:\n    @staticmethod\n    def m(a):\n        '''Doc.'''\n" \
             "        return [a,\n1]\n\n\n" + CONTINUATION + "\n\ndef g():\n    yield (1 +\n2)\n"
    parsed = PythonLanguage().parse(source, "m.py", Settings())
    assert parsed.extra["parser"] == "ast"
    records = {r.qualname: r for r in parsed.functions}
    assert set(records) == {"K.m", "f", "g"}
    method = records["K.m"]
    assert (method.start_line, method.def_line, method.anchor_line, method.body_end_line, method.end_line) == (5, 6, 8, 9, 9)
    assert method.decorators == ("staticmethod",) and method.is_method and method.body_indent == "        "
    assert records["g"].is_generator and not records["f"].is_generator
    assert parsed.header_line == 1

    result = Engine(Settings(style=style, target="runtime"), cache=None).instrument(source.encode(), "m.py",
                                                                                      import_name="")
    assert result.status == "instrumented", result.reason
    assert {f.qualname: f.status for f in result.functions} == {"K.m": "instrumented", "f": "instrumented",
                                                                  "g": "instrumented"}
    # Stripping gives the original back (the engine checked it); on the fly it runs.
    assert PythonLanguage().strip(result.output.decode()).text == source
    namespace: dict = {"__name__": "m"}
    exec(compile_mapped(result.output.decode(), result.get_line_map(), "m.py"), namespace)
    assert namespace["f"](1) == 2 and namespace["K"].m(0) == [0, 1] and list(namespace["g"]()) == [3]


def test_a_file_python_refuses_is_still_refused_with_tree_sitters_message() -> None:
    with pytest.raises(SourceSyntaxError, match="line 2"):
        PythonLanguage().parse("def f(x):\n    return (x +\n", "m.py", Settings())
    # compile() is the judge, not just the parser: this one parses but does not compile.
    with pytest.raises(SourceSyntaxError):
        PythonLanguage().parse("def f():\n    nonlocal y\n    return (1 +\n1)\n", "m.py", Settings())


IGNORED = {"decorators"}  # tree-sitter keeps a comment after a decorator in its text


def _records(parsed) -> dict:  # type: ignore[no-untyped-def]
    return {(r.def_line, r.qualname): dataclasses.asdict(r) for r in parsed.functions if r.name != "<lambda>"}


@pytest.mark.parametrize("relative", ["_pydecimal.py", "argparse.py", "inspect.py", "email/_header_value_parser.py",
                                      "test/test_inspect/inspect_fodder.py", "dataclasses.py", "typing.py"])
def test_pythons_records_are_tree_sitters(relative: str) -> None:
    """Read by Python's parser, a file gives the records tree-sitter gives (the lambdas aside:
    Python evaluates a default's lambda in the enclosing scope, tree-sitter names it after the
    def): the same lines, anchors, indentation, strings, keys."""
    path = STDLIB / relative
    if not path.exists():
        pytest.skip(f"no {relative} in this Python")
    text = decode_source(path.read_bytes()).text
    language, settings = PythonLanguage(), Settings()
    by_tree_sitter = language.parse(text, relative, settings)
    by_python = language._parse_with_ast(text, relative, settings, "(forced)")
    assert (by_python.header_line, by_python.header_present) == (by_tree_sitter.header_line,
                                                                    by_tree_sitter.header_present)
    assert by_python.extra["string_rows"] == by_tree_sitter.extra["string_rows"]
    expected, found = _records(by_tree_sitter), _records(by_python)
    assert found.keys() == expected.keys()
    different = {key: {name: (expected[key][name], value) for name, value in record.items()
                       if value != expected[key][name] and name not in IGNORED}
                 for key, record in found.items()}
    assert {key: d for key, d in different.items() if d} == {}
    assert len(found) > 10


@pytest.mark.slow
def test_no_standard_library_file_that_compiles_is_refused(capsys: pytest.CaptureFixture) -> None:
    """Every file of this interpreter's standard library (site-packages aside) that
    ``compile()`` accepts parses, the files tree-sitter refuses by Python's parser; those are
    instrumented by the engine."""
    language, settings = PythonLanguage(), Settings()
    files, refused, by_python = 0, [], []
    for path in sorted(STDLIB.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            text = decode_source(path.read_bytes()).text
        except Exception:  # noqa: BLE001 - binary or undecodable: the tool refuses those for that
            continue
        files += 1
        try:
            parsed = language.parse(text, str(path), settings)
        except SourceSyntaxError as exc:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    compile(text, str(path), "exec", dont_inherit=True)
                except (SyntaxError, ValueError):
                    continue  # not Python to this interpreter either
            refused.append(f"{path.relative_to(STDLIB)}: {exc}")
            continue
        if parsed.extra.get("parser") == "ast":
            by_python.append(path)
    with capsys.disabled():
        print(f"\n{files} standard-library files (Python {sys.version_info[0]}.{sys.version_info[1]}): "
              f"{len(refused)} that compile() accepts refused as syntax errors, {len(by_python)} read by "
              f"Python's parser where tree-sitter reports an error ({', '.join(p.name for p in by_python)})")
    assert refused == []
    assert files > 1000
    for path in by_python:
        result = Engine(Settings(style="try", target="runtime"), cache=None).instrument(path.read_bytes(), str(path),
                                                                                          import_name="")
        assert result.status in ("instrumented", "unchanged"), (path, result.status, result.reason)
        if result.output is not None:
            compile_mapped(result.output.decode(decode_source(result.output).encoding), result.get_line_map(),
                           str(path))
