"""The baseline file: what is written is what is read, and a bad file is refused in one line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pytest_telemetry_inject.gate import baseline as bl
from pytest_telemetry_inject.gate.baseline import Baseline, BaselineError, resolve


def rows() -> list[dict]:
    return [
        {"module": "shop.cart", "name": "Cart.total", "test": "tests/test_cart.py::test_total", "count": 2,
         "total_ns": 4000, "min_ns": 1500, "max_ns": 2500, "errors": 1, "exceptions": {"OutOfStock": 1}},
        {"module": "shop.cart", "name": "Cart.add", "test": "tests/test_cart.py::test_total", "count": 3,
         "total_ns": 300, "min_ns": 90, "max_ns": 110, "errors": 0, "exceptions": {}},
        {"module": "shop.cart", "name": "Cart.add", "test": bl.FIXTURE_PREFIX + "session tests::catalog",
         "count": 5, "total_ns": 500, "min_ns": 90, "max_ns": 110, "errors": 0, "exceptions": {}},
        {"module": "shop.cart", "name": "Cart.add", "test": None, "count": 1, "total_ns": 100, "min_ns": 100,
         "max_ns": 100, "errors": 0, "exceptions": {}},
    ]


def make(**extra: object) -> Baseline:
    return Baseline.from_rows(rows(), outcomes={"tests/test_cart.py::test_total": "passed",
                                                 "tests/test_cart.py::test_empty": "passed"},
                              test_fixtures={"tests/test_cart.py::test_total": ["session tests::catalog"]},
                              fixture_setups={"session tests::catalog": ("session", 2)},
                              instrumented=["shop.cart:Cart.total", "shop.cart:Cart.add", "shop.cart:Cart.never"],
                              modules={"shop.cart": "shop/cart.py"}, meta={"commit": "abc", "processes": 2, **extra})


@pytest.mark.parametrize("name", ["b.json.gz", "b.json"])
def test_what_is_written_is_read(tmp_path: Path, name: str) -> None:
    original = make()
    size = original.write(tmp_path / name)
    assert size == (tmp_path / name).stat().st_size
    assert ((tmp_path / name).read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    again = Baseline.read(tmp_path / name)
    assert again == original
    test = again.tests["tests/test_cart.py::test_total"]
    assert test.calls[("shop.cart", "Cart.total")].exceptions == {"OutOfStock": 1}
    assert test.fixtures == ("session tests::catalog",)
    assert again.fixtures["session tests::catalog"].setups == 2
    assert again.fixtures["session tests::catalog"].calls[("shop.cart", "Cart.add")].count == 5
    assert again.outside[("shop.cart", "Cart.add")].count == 1
    assert ("shop.cart", "Cart.never") in again.instrumented
    assert again.tests["tests/test_cart.py::test_empty"].calls == {}
    assert again.columns == bl.REQUIRED_COLUMNS  # no self or median time from this runtime


def test_optional_columns_are_kept_when_the_rows_carry_them(tmp_path: Path) -> None:
    data = rows()
    data[0]["self_ns"] = 3000
    data[1]["p50_ns"] = 100  # a percentile row: read as the median
    built = Baseline.from_rows(data, outcomes={"tests/test_cart.py::test_total": "passed"}, test_fixtures={},
                               fixture_setups={}, instrumented=[], modules={}, meta={})
    assert built.columns == (*bl.REQUIRED_COLUMNS, "self_ns", "median_ns")
    built.write(tmp_path / "b.json")
    again = Baseline.read(tmp_path / "b.json")
    calls = again.tests["tests/test_cart.py::test_total"].calls
    assert calls[("shop.cart", "Cart.total")].self_ns == 3000
    assert calls[("shop.cart", "Cart.total")].median_ns is None
    assert calls[("shop.cart", "Cart.add")].median_ns == 100


def test_the_write_is_atomic_and_deterministic(tmp_path: Path) -> None:
    make().write(tmp_path / "a.json.gz")
    make().write(tmp_path / "b.json.gz")
    assert (tmp_path / "a.json.gz").read_bytes() == (tmp_path / "b.json.gz").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json.gz", "b.json.gz"]  # no temporary left


def document() -> dict:
    return make().to_json()


def corrupt(tmp_path: Path, change) -> str:  # type: ignore[no-untyped-def]
    data = document()
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError) as caught:
        Baseline.read(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_bad_document_is_refused_in_one_line(tmp_path: Path) -> None:
    assert "not a baseline" in corrupt(tmp_path, lambda d: d.update(format="telemetry-inject-report"))
    assert "newer than this tool reads" in corrupt(tmp_path, lambda d: d.update(version=bl.VERSION + 1))
    assert "version must be" in corrupt(tmp_path, lambda d: d.update(version="1"))
    assert "columns must be" in corrupt(tmp_path, lambda d: d.update(columns=["count", "total_ns"]))
    assert "columns must be" in corrupt(tmp_path, lambda d: d["columns"].append("evil"))
    first = "tests/test_cart.py::test_total"
    assert "not an index" in corrupt(tmp_path, lambda d: d["tests"][first]["calls"][0].__setitem__(0, 99))
    assert "whole number" in corrupt(tmp_path, lambda d: d["tests"][first]["calls"][0].__setitem__(1, -3))
    assert "whole number" in corrupt(tmp_path, lambda d: d["tests"][first]["calls"][0].__setitem__(3, 1.5))
    assert "whole number" in corrupt(tmp_path, lambda d: d["tests"][first]["calls"][0].__setitem__(2, True))
    assert "inconsistent" in corrupt(tmp_path, lambda d: d["tests"][first]["calls"][0].__setitem__(2, 50))
    assert "must hold" in corrupt(tmp_path, lambda d: d["tests"][first]["calls"][0].pop())
    assert "outcome" in corrupt(tmp_path, lambda d: d["tests"][first].update(outcome="maybe"))
    assert "JSON object" in corrupt(tmp_path, lambda d: d.update(tests=[]))
    assert "[module, qualname]" in corrupt(tmp_path, lambda d: d["functions"].append(["only"]))
    assert "twice" in corrupt(tmp_path, lambda d: d["tests"][first]["calls"].append(d["tests"][first]["calls"][0]))
    assert "function indexes" in corrupt(tmp_path, lambda d: d["tests"][first]["exceptions"].update(x={}))


@pytest.mark.parametrize("content, expected", [
    (b"", "not JSON"),
    (b"{\"format\": ", "not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"\x1f\x8bnot really gzip", "not a readable gzip file"),
    (b"\xff\xfe\x00", "not JSON"),
    (b'{"format": "telemetry-inject-baseline", "version": 1, "x": NaN}', "not JSON"),
    (b"[" * 100000 + b"]" * 100000, "not"),
])
def test_unreadable_files_are_refused(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "b.json.gz"
    path.write_bytes(content)
    with pytest.raises(BaselineError, match=expected):
        Baseline.read(path)


def test_size_limits_hold_before_and_after_decompression(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.json.gz"
    path.write_bytes(gzip.compress(b" " * (4 << 20)))  # 4 MiB of blanks, a few KiB compressed
    monkeypatch.setattr(bl, "MAX_JSON_BYTES", 1 << 20)
    with pytest.raises(BaselineError, match="once decompressed"):
        Baseline.read(path)
    monkeypatch.setattr(bl, "MAX_FILE_BYTES", 100)
    with pytest.raises(BaselineError, match="more than a baseline may have"):
        Baseline.read(path)


def test_missing_and_folder(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="no baseline at .*save one with --telemetry-save"):
        Baseline.read(tmp_path / "nothing.json.gz")
    with pytest.raises(BaselineError, match="is a folder"):
        Baseline.read(tmp_path)


def test_names_and_paths(tmp_path: Path) -> None:
    assert resolve("main", tmp_path, option="--x") == tmp_path / ".telemetry" / "baselines" / "main.json.gz"
    assert resolve("v1.2_rc-3", tmp_path, option="--x").name == "v1.2_rc-3.json.gz"
    assert resolve("other/b.json", tmp_path, option="--x") == (Path.cwd() / "other" / "b.json")
    assert resolve("b.json.gz", tmp_path, option="--x") == Path.cwd() / "b.json.gz"
    for bad in ("", "..", "a b", "-x", "é"):
        with pytest.raises(BaselineError, match="--x"):
            resolve(bad, tmp_path, option="--x")
