"""The vendored module is the core file; it needs only the standard library; while the
package runtime collects (the pytest plugin), vendored copies forward their spans to it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from pytest_telemetry_inject import runtime
from pytest_telemetry_inject.runtime import _core
from pytest_telemetry_inject.runtime.vendor import MARKER, is_vendored, vendored_source, write_vendored


def test_the_vendored_module_is_the_core_file_plus_the_marker(tmp_path: Path) -> None:
    core = Path(_core.__file__).read_text(encoding="utf-8")
    assert vendored_source() == MARKER + core
    target = tmp_path / "pkg" / "telemetry_utils.py"
    assert write_vendored(target) is True and write_vendored(target) is False
    assert is_vendored(target) and target.read_text(encoding="utf-8") == MARKER + core


def test_the_vendored_module_imports_with_the_standard_library_only(kit) -> None:
    write_vendored(kit.tmp_path / "telemetry_utils.py")
    (kit.tmp_path / "app.py").write_text(
        "import telemetry_utils as _telemetry_runtime\n_telemetry = _telemetry_runtime.tracer(__name__)\n\n"
        "def f(x):\n    with _telemetry.span('f'):\n        return x + 1\n\n"
        "@_telemetry.instrument('g')\ndef g():\n    yield 1\n")
    result = kit.run_python(f'''
        import json, sys
        sys.path.insert(0, {str(kit.tmp_path)!r})
        import app, telemetry_utils
        values = [app.f(i) for i in range(3)] + list(app.g())
        rows = {{r["name"]: r["count"] for r in telemetry_utils.snapshot()}}
        ours = {{"app", "telemetry_utils", "__main__"}}
        third_party = sorted(name for name in sys.modules if name.split(".")[0] not in sys.stdlib_module_names | ours)
        print(json.dumps({{"values": values, "rows": rows, "third_party": third_party}}))
    ''', isolated=True)
    assert kit.last_json(result) == {"values": [1, 2, 3, 1], "rows": {"f": 3, "g": 1}, "third_party": []}


def _load_copy(folder: Path, package: str) -> object:
    """A project package with a vendored copy and a module instrumented against it."""
    root = folder / package
    root.mkdir()
    (root / "__init__.py").write_text("")
    write_vendored(root / "telemetry_utils.py")
    (root / "core.py").write_text(
        f"from {package} import telemetry_utils as _telemetry_runtime\n"
        "_telemetry = _telemetry_runtime.tracer(__name__)\n\n"
        "def f():\n    with _telemetry.span('f'):\n        return 1\n\n"
        "@_telemetry.instrument('g')\ndef g():\n    return 2\n")
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(f"{package}.core")
    finally:
        sys.path.remove(str(folder))


@pytest.fixture
def cleanup_modules():  # type: ignore[no-untyped-def]
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _counts(module, name: str, *, per_test: bool = False) -> dict:  # type: ignore[no-untyped-def]
    return {(r.get("test"), r["name"]): r["count"] for r in module.snapshot(per_test=per_test)
            if r["module"] == name and r["count"]}


def test_vendored_copies_forward_to_the_collector(tmp_path: Path, cleanup_modules) -> None:
    early = _load_copy(tmp_path, "vend_early")
    early_copy = sys.modules["vend_early.telemetry_utils"]
    assert early_copy is not _core and early_copy._TELEMETRY_INJECT_CORE == _core._TELEMETRY_INJECT_CORE
    early.f()
    assert _counts(early_copy, "vend_early.core") == {(None, "f"): 1}, "no collector: the copy keeps its calls"
    assert _counts(_core, "vend_early.core") == {}

    runtime.set_current_test("tests/t.py::forwarded")  # the plugin starts: copies are adopted
    early.f()
    early.g()
    late = _load_copy(tmp_path, "vend_late")  # imported while collecting: forwards at once
    late.f()
    runtime.set_current_test(None)
    assert _counts(_core, "vend_early.core", per_test=True) == {
        ("tests/t.py::forwarded", "f"): 1, ("tests/t.py::forwarded", "g"): 1}
    assert _counts(_core, "vend_late.core", per_test=True) == {("tests/t.py::forwarded", "f"): 1}
    assert _counts(early_copy, "vend_early.core") == {(None, "f"): 1}, "forwarded calls are not counted twice"
    g_row = next(r for r in _core.snapshot() if r["module"] == "vend_early.core" and r["name"] == "g")
    assert g_row["file"] == early.__file__, "the decorated function's location travels with it"

    runtime.configure(keep_events=True)  # the collector changes mode: followers follow
    early.f()
    assert [e["name"] for e in runtime.events() if e["module"] == "vend_early.core"] == ["f"]

    runtime.configure(collector=False)  # the plugin is done: copies count for themselves again
    early.f()
    assert _counts(early_copy, "vend_early.core") == {(None, "f"): 2}
    assert _counts(_core, "vend_early.core")[(None, "f")] == 2


def test_forwarded_spans_reach_opentelemetry(tmp_path: Path, cleanup_modules) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runtime.configure(otel=True, otel_provider=provider, collector=True)
    module = _load_copy(tmp_path, "vend_otel")
    with provider.get_tracer("plugin").start_as_current_span("test") as test_span:
        module.f()
        module.g()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["f"].parent.span_id == test_span.get_span_context().span_id
    assert spans["g"].attributes["code.file.path"] == module.__file__


def test_an_incompatible_module_is_not_adopted(tmp_path: Path, cleanup_modules) -> None:
    fake = type(sys)("fake_future_copy")
    fake._TELEMETRY_INJECT_CORE = 99  # a future protocol: left alone

    def _adopt(main):  # type: ignore[no-untyped-def]
        raise AssertionError("adopted")

    fake._adopt = _adopt
    sys.modules["fake_future_copy"] = fake
    runtime.set_current_test("t::x")
    assert fake not in _core._copies
    assert json.dumps(runtime.snapshot(per_test=True))
