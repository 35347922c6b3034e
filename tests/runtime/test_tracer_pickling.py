"""A tracer pickles, copies and deep-copies as a reference to its module's tracer (there is
one per module name): cloudpickle pickles a nested function by value with the globals it
uses, the module's ``_telemetry`` among them."""

from __future__ import annotations

import copy
import importlib
import pickle
import sys
from pathlib import Path

import pytest

from pytest_telemetry_inject import runtime
from pytest_telemetry_inject.runtime.vendor import write_vendored

MODES = {"aggregate": {}, "events": {"keep_events": True}, "disabled": {"disabled": True}}


@pytest.mark.parametrize("mode", list(MODES))
def test_a_tracer_pickles_and_copies_as_its_modules(mode: str) -> None:
    runtime.configure(**MODES[mode])
    tracer = runtime.tracer("ti_pickled_module")
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(tracer, protocol)) is tracer
    assert copy.copy(tracer) is tracer
    assert copy.deepcopy(tracer) is tracer
    assert copy.deepcopy({"t": [tracer]})["t"][0] is tracer
    # Unpickled where the module's tracer does not exist yet (another process): made there.
    data = pickle.dumps(runtime.tracer("ti_pickled_elsewhere"))
    assert b"ti_pickled_elsewhere" in data and b"_core" in data and b"tracer" in data


def test_a_pickled_tracer_still_counts(kit) -> None:  # type: ignore[no-untyped-def]
    module = kit.load('''
        def f(x):
            _telemetry_t = _telemetry.start()
            try:
                return x + 1
            except BaseException:
                _telemetry_t = _telemetry.fail("f", _telemetry_t)
                raise
            finally:
                _telemetry.end("f", _telemetry_t)
    ''')
    module._telemetry = pickle.loads(pickle.dumps(module._telemetry))
    assert module.f(1) == 2
    assert kit.rows_of(module)["f"]["count"] == 1


def test_cloudpickle_pickles_an_instrumented_closure(kit) -> None:  # type: ignore[no-untyped-def]
    cloudpickle = pytest.importorskip("cloudpickle")
    module = kit.load('''
        def make_adder(n):
            with _telemetry.span("make_adder"):
                def add(x):
                    with _telemetry.span("make_adder.<locals>.add"):
                        return x + n
                return add
    ''')
    copied = cloudpickle.loads(cloudpickle.dumps(module.make_adder(2)))
    assert copied(1) == 3
    assert copied.__globals__["_telemetry"] is module._telemetry
    assert kit.rows_of(module)["make_adder.<locals>.add"]["count"] == 1


def test_a_vendored_copys_tracer_pickles_as_a_reference_to_that_copy(tmp_path: Path) -> None:
    package = "ti_pickle_vendored"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    write_vendored(tmp_path / package / "telemetry_utils.py")
    sys.path.insert(0, str(tmp_path))
    try:
        copy_module = importlib.import_module(f"{package}.telemetry_utils")
        tracer = copy_module.tracer("ti_some_module")
        data = pickle.dumps(tracer)
        assert f"{package}.telemetry_utils".encode() in data
        assert pickle.loads(data) is tracer
        assert copy.deepcopy(tracer) is tracer
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name.startswith(package)]:
            del sys.modules[name]
