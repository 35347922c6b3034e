"""min_duration, the sample rate, disabling, and the environment variables."""

from __future__ import annotations

import json

import pytest

from pytest_telemetry_inject import runtime

SOURCE = '''
    import time
    def fast(i):
        with _telemetry.span("fast"):
            return i
    def slow():
        with _telemetry.span("slow"):
            time.sleep(0.02)
'''


def test_min_duration_counts_short_calls_but_does_not_emit_them(kit) -> None:
    runtime.configure(keep_events=True, min_duration=0.01)
    m = kit.load(SOURCE)
    for i in range(300):
        m.fast(i)
    m.slow()
    m.slow()
    rows = kit.rows_of(m)
    assert rows["fast"]["count"] == 300 and rows["slow"]["count"] == 2
    names = [e["name"] for e in runtime.events() if e["module"] == m.__name__]
    assert names == ["slow", "slow"]


def test_sampling_thins_events_and_keeps_the_aggregate_exact(kit) -> None:
    m = kit.load(SOURCE)
    runtime.configure(keep_events=True, sample_rate=0.0)
    for i in range(2000):
        m.fast(i)
    assert runtime.events() == [] and kit.rows_of(m)["fast"]["count"] == 2000
    runtime.configure(sample_rate=0.5)
    for i in range(4000):
        m.fast(i)
    kept = len(runtime.events())
    assert 1500 < kept < 2500, kept  # binomial(4000, 0.5): 16 standard deviations of room
    assert kit.rows_of(m)["fast"]["count"] == 6000


def test_configure_validates_and_reports_settings() -> None:
    settings = runtime.configure(min_duration="0.25", sample_rate=2)
    assert settings["min_duration"] == 0.25 and settings["sample_rate"] == 2.0
    from pytest_telemetry_inject.runtime import _core

    assert _core._min_ns == 250_000_000 and _core._rate == 1.0, "the rate is clamped to 0..1"
    with pytest.raises(TypeError, match="unknown settings: colour"):
        runtime.configure(colour="red")


def test_environment_variables_are_read_at_import(kit) -> None:
    result = kit.run_python('''
        import json
        from pytest_telemetry_inject.runtime import _core
        print(json.dumps({"config": _core.configure(), "mode": _core._mode}))
    ''', env={"TELEMETRY_INJECT_MIN_DURATION": "0.5", "TELEMETRY_INJECT_SAMPLE_RATE": "0.25",
              "TELEMETRY_INJECT_JSONL": str(kit.tmp_path / "e.jsonl"), "TELEMETRY_INJECT_OTEL": "0",
              "TELEMETRY_INJECT_REPORT": "1"})
    out = kit.last_json(result)
    config = out["config"]
    assert config["min_duration"] == 0.5 and config["sample_rate"] == 0.25 and config["otel"] is False
    assert config["jsonl"].endswith("e.jsonl") and config["report"] == "1" and out["mode"] == "ev"
    bad = kit.run_python("from pytest_telemetry_inject.runtime import _core; print(_core._config.min_duration)",
                         env={"TELEMETRY_INJECT_MIN_DURATION": "soon"})
    assert bad.stdout.strip() == "0.0" and "ignoring TELEMETRY_INJECT_MIN_DURATION='soon'" in bad.stderr


def test_disabled_by_the_environment(kit) -> None:
    (kit.tmp_path / "offmod.py").write_text(kit.header + '''
def f(x):
    with _telemetry.span("f"):
        return x + 1
@_telemetry.instrument("g")
def g(x):
    return x * 2
''')
    result = kit.run_python(f'''
        import json, sys
        sys.path.insert(0, {str(kit.tmp_path)!r})
        import offmod
        from pytest_telemetry_inject.runtime import _core
        values = [offmod.f(1), offmod.g(2)]
        print(json.dumps({{"values": values, "rows": _core.snapshot(),
                           "noop": offmod._telemetry.span("f") is _core._OFF,
                           "unwrapped": not hasattr(offmod.g, "__wrapped__")}}))
    ''', env={"TELEMETRY_INJECT_DISABLED": "1", "TELEMETRY_INJECT_REPORT": "1"})
    out = kit.last_json(result)
    assert out == {"values": [2, 4], "rows": [], "noop": True, "unwrapped": True}
    assert "telemetry:" not in result.stderr


def test_report_at_exit_in_each_format(kit) -> None:
    (kit.tmp_path / "exitmod.py").write_text(kit.header + '''
def f(x):
    with _telemetry.span("f"):
        if x == 3:
            raise ValueError(x)
        return x
''')
    code = f'''
        import sys
        sys.path.insert(0, {str(kit.tmp_path)!r})
        import exitmod
        for i in range(5):
            try:
                exitmod.f(i)
            except ValueError:
                pass
    '''
    text = kit.run_python(code, env={"TELEMETRY_INJECT_REPORT": "1"})
    assert "telemetry:" in text.stderr and "exitmod:f" in text.stderr and "ValueError x1" in text.stderr
    json_path, html_path, txt_path = (kit.tmp_path / n for n in ("r.json", "r.html", "r.txt"))
    for path in (json_path, html_path, txt_path):
        kit.run_python(code, env={"TELEMETRY_INJECT_REPORT": str(path)})
    events, trace = kit.tmp_path / "e-{pid}.jsonl", kit.tmp_path / "t.json"
    kit.run_python(code, env={"TELEMETRY_INJECT_JSONL": str(events), "TELEMETRY_INJECT_TRACE": str(trace)})
    (written,) = kit.tmp_path.glob("e-*.jsonl")  # {pid} expanded
    assert written.name != "e-{pid}.jsonl" and len(written.read_text().splitlines()) == 5
    assert len([e for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"]) == 5
    report = json.loads(json_path.read_text())
    row = next(f for f in report["functions"] if f["name"] == "f")
    assert report["format"] == "telemetry-inject-report" and row["count"] == 5 and row["errors"] == 1
    assert "exitmod" in html_path.read_text() and html_path.read_text().startswith("<!DOCTYPE html>")
    assert "exitmod:f" in txt_path.read_text()


def test_kept_events_are_capped_and_can_be_taken_once(kit) -> None:
    runtime.configure(keep_events=True, max_events=100)
    m = kit.load(SOURCE)
    for i in range(250):
        m.fast(i)
    taken = runtime.events(clear=True)
    assert len(taken) == 100 and runtime.dropped_events() == 150
    assert runtime.events() == [] and kit.rows_of(m)["fast"]["count"] == 250
    m.fast(0)
    assert len(runtime.events()) == 1
