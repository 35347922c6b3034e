"""The otel target's spans carry the semantic conventions' code attributes
(``code.function.name``: module and qualname, ``code.file.path``), as the runtime's own
OpenTelemetry spans do; strip and the output check know the form with them and without."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.languages.python import PythonLanguage
from pytest_telemetry_inject.languages.python_check import check_output
from pytest_telemetry_inject.settings import Settings

pytest.importorskip("opentelemetry.sdk")

SOURCE = '''\
def area(w, h):
    """The area."""
    product = w * h
    return product


class Shape:
    def corners(self):
        yield 1
        yield 2


def short(x): return x + 1
'''

RUN = '''\
import importlib.util, json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
spec = importlib.util.spec_from_file_location("shapes", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert module.area(2, 3) == 6 and list(module.Shape().corners()) == [1, 2] and module.short(1) == 2
print(json.dumps({s.name: dict(s.attributes) for s in exporter.get_finished_spans()}))
'''


@pytest.mark.parametrize("style", ["with", "decorator"])
def test_otel_spans_carry_the_code_attributes(tmp_path: Path, style: str) -> None:
    result = Engine(Settings(style=style, target="otel", use_cache=False)).instrument(SOURCE.encode(), "shapes.py")
    assert result.output is not None, result.reason
    path = tmp_path / "shapes.py"
    path.write_bytes(result.output)
    (tmp_path / "run.py").write_text(RUN)
    done = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    spans = json.loads(done.stdout)
    assert set(spans) == {"area", "Shape.corners", "short"}
    for name, attributes in spans.items():
        assert attributes == {"code.function.name": f"shapes.{name}", "code.file.path": str(path)}, name
    # strip gives the original back, and the output check reads the form as this target's
    assert PythonLanguage().strip(result.output.decode()).text == SOURCE
    functions = [(f.qualname, f.line) for f in result.functions if f.status == "instrumented"]
    assert check_output(SOURCE, result.output.decode(), target="otel", import_name="",
                        functions=functions).status == "ok"


def test_the_form_without_attributes_still_strips_and_checks() -> None:
    """Code instrumented before the attributes (committed, or cached) is still this tool's."""
    output = Engine(Settings(style="with", target="otel", use_cache=False)).instrument(SOURCE.encode(), "m.py").output
    text = output.decode()
    old = text.replace(', attributes={"code.function.name": __name__ + ".area", "code.file.path": __file__}', "")
    assert old != text
    assert PythonLanguage().strip(old).text == SOURCE


def test_attributes_naming_another_function_are_not_this_tools() -> None:
    result = Engine(Settings(style="with", target="otel", use_cache=False)).instrument(SOURCE.encode(), "m.py")
    functions = [(f.qualname, f.line) for f in result.functions if f.status == "instrumented"]
    forged = result.output.decode().replace('__name__ + ".area"', '__name__ + ".Shape.corners"', 1)
    verdict = check_output(SOURCE, forged, target="otel", import_name="", functions=functions)
    assert verdict.status == "corrupt"
    assert "_telemetry" in PythonLanguage().strip(forged).text  # not stripped as if it were ours
