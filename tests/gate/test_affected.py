"""Which tests a change can affect: real git repositories, the baseline's call map, every rule."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from pytest_telemetry_inject.gate.affected import AffectedError, Selection, select
from pytest_telemetry_inject.gate.baseline import Baseline

SOURCE = {
    "shop/__init__.py": '"""The shop."""\n',
    "shop/cart.py": '''
        """Carts."""
        RATE = 3


        def price(n):
            # the price of n items
            return n * RATE


        def helper(n):
            return n + 1


        def trivial():
            pass


        class Base:
            def describe(self):
                return "base"


        class Cart(Base):
            def total(self, items):
                return sum(price(i) for i in items)
        ''',
    "shop/other.py": '''
        from shop.cart import RATE


        def doubled():
            return RATE * 2


        def unrelated():
            return 0
        ''',
    "tests/test_cart.py": '''
        from shop import cart

        def test_price():
            assert cart.price(2) == 6

        def test_total():
            assert cart.Cart().total([1, 2]) == 9
        ''',
    "tests/test_other.py": '''
        from shop import other

        def test_doubled():
            assert other.doubled() == 6

        def test_unrelated():
            assert other.unrelated() == 0

        def test_nothing():
            assert True
        ''',
    "tests/conftest.py": "",
    "README.md": "# shop\n",
}

CALLS = {
    "tests/test_cart.py::test_price": [("shop.cart", "price")],
    "tests/test_cart.py::test_total": [("shop.cart", "Cart.total"), ("shop.cart", "price")],
    "tests/test_other.py::test_doubled": [("shop.other", "doubled")],
    "tests/test_other.py::test_unrelated": [("shop.other", "unrelated")],
    "tests/test_other.py::test_nothing": [],
}
INSTRUMENTED = ["shop.cart:price", "shop.cart:helper", "shop.cart:Base.describe", "shop.cart:Cart.total",
                "shop.other:doubled", "shop.other:unrelated"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "-c", "commit.gpgsign=false",
                           *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    for name, text in SOURCE.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def baseline(repo: Path, *, outside: list | None = None, fixtures: dict | None = None,
             outcomes: dict | None = None) -> Baseline:
    rows = [{"module": m, "name": n, "test": test, "count": 1, "total_ns": 10, "min_ns": 10, "max_ns": 10,
             "errors": 0, "exceptions": {}} for test, calls in CALLS.items() for m, n in calls]
    rows += [{"module": m, "name": n, "test": None, "count": 1, "total_ns": 1, "min_ns": 1, "max_ns": 1,
              "errors": 0, "exceptions": {}} for m, n in outside or ()]
    test_fixtures: dict[str, list[str]] = {}
    setups = {}
    for key, (users, calls) in (fixtures or {}).items():
        setups[key] = ("session", 1)
        for user in users:
            test_fixtures.setdefault(user, []).append(key)
        rows += [{"module": m, "name": n, "test": f"[fixture] {key}", "count": 1, "total_ns": 1, "min_ns": 1,
                  "max_ns": 1, "errors": 0, "exceptions": {}} for m, n in calls]
    return Baseline.from_rows(rows, outcomes={**{t: "passed" for t in CALLS}, **(outcomes or {})},
                              test_fixtures=test_fixtures, fixture_setups=setups, instrumented=INSTRUMENTED,
                              modules={"shop": "shop/__init__.py", "shop.cart": "shop/cart.py",
                                       "shop.other": "shop/other.py"},
                              meta={"commit": git(repo, "rev-parse", "HEAD")})


def run(repo: Path, base: Baseline | None = None, ref: str | None = "HEAD") -> tuple[Selection, dict[str, str | None]]:
    selection = select(base or baseline(repo), repo, ref, test_globs=["test_*.py", "*_test.py"])
    return selection, {t: selection.decide(t) for t in CALLS}


def edit(repo: Path, name: str, old: str, new: str) -> None:
    path = repo / name
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def chosen(decisions: dict[str, str | None]) -> set[str]:
    return {t.split("::")[1] for t, why in decisions.items() if why}


def test_nothing_changed_selects_nothing(repo: Path) -> None:
    selection, decisions = run(repo)
    assert chosen(decisions) == set() and selection.everything is None


def test_a_changed_body_selects_its_callers(repo: Path) -> None:
    edit(repo, "shop/cart.py", "return n * RATE", "return n * RATE + 0")
    selection, decisions = run(repo)
    assert chosen(decisions) == {"test_price", "test_total"}
    assert decisions["tests/test_cart.py::test_price"] == "called shop.cart:price (changed)"
    assert any("shop.cart:price changed: 2 tests" in c for c in selection.changes)


def test_comments_and_formatting_are_not_changes(repo: Path) -> None:
    edit(repo, "shop/cart.py", "    # the price of n items\n", "    # the price of n items, in cents\n\n")
    edit(repo, "shop/cart.py", "return n * RATE", "return (n *\n            RATE)")
    edit(repo, "shop/cart.py", '"""Carts."""', '"""Carts."""\n# a module comment')
    selection, decisions = run(repo)
    assert chosen(decisions) == set()
    assert any("comments or formatting only" in c for c in selection.changes)


def test_a_changed_module_level_name_selects_what_reads_it(repo: Path) -> None:
    edit(repo, "shop/cart.py", "RATE = 3", "RATE = 4")
    selection, decisions = run(repo)
    # price reads RATE; shop.other imports it and doubled reads it.
    assert chosen(decisions) == {"test_price", "test_total", "test_doubled"}
    assert selection.everything is None
    assert "RATE" in decisions["tests/test_other.py::test_doubled"]


def test_module_level_code_that_does_more_than_bind_runs_everything(repo: Path) -> None:
    edit(repo, "shop/cart.py", "RATE = 3", "RATE = 3\nprint('imported')")
    selection, decisions = run(repo)
    assert set(decisions.values()) == {selection.everything}
    assert selection.everything == ("module-level code of shop/cart.py changed (line 3): an expression statement "
                                    "(a call) runs at import, every test may see it")


def test_changed_decorators_and_class_bases_run_everything(repo: Path) -> None:
    edit(repo, "shop/cart.py", "def helper(n):", "@staticmethod\ndef helper(n):")
    selection, _ = run(repo)
    assert "decorators of shop/cart.py:helper changed" in (selection.everything or "")
    git(repo, "checkout", "-q", "--", ".")
    edit(repo, "shop/cart.py", "class Cart(Base):", "class Cart(Base, object):")
    selection, _ = run(repo)
    assert "bases or decorators of class shop/cart.py:Cart" in (selection.everything or "")


def test_new_tests_and_changed_test_files(repo: Path) -> None:
    edit(repo, "tests/test_other.py", "def test_nothing():", "def test_new():\n    assert 1\n\ndef test_nothing():")
    selection, decisions = run(repo)
    assert chosen(decisions) == set()  # only a new test: it runs as new
    assert selection.decide("tests/test_other.py::test_new") == "new test (not in the baseline)"
    assert selection.decide("tests/test_brand_new.py::test_x") == "new test (not in the baseline)"
    edit(repo, "tests/test_other.py", "    assert other.unrelated() == 0", "    assert other.unrelated() != 1  # sure")
    edit(repo, "tests/test_other.py", "    assert True", "    assert True  # a comment only")
    _, decisions = run(repo)
    assert chosen(decisions) == {"test_unrelated"}
    assert decisions["tests/test_other.py::test_unrelated"] == \
        "its test function changed (tests/test_other.py::test_unrelated)"
    edit(repo, "tests/test_other.py", "from shop import other", "from shop import other\nLIMIT = 2")
    _, decisions = run(repo)
    assert chosen(decisions) == {"test_doubled", "test_unrelated", "test_nothing", "test_new"} - {"test_new"}


def test_a_test_that_did_not_pass_in_the_baseline_runs(repo: Path) -> None:
    _, decisions = run(repo, baseline(repo, outcomes={"tests/test_other.py::test_nothing": "failed"}))
    assert decisions["tests/test_other.py::test_nothing"] == "failed in the baseline"


def test_conftest_and_test_data_select_their_folder(repo: Path) -> None:
    (repo / "tests" / "conftest.py").write_text("import pytest\n")
    selection, decisions = run(repo)
    assert chosen(decisions) == set(t.split("::")[1] for t in CALLS)
    assert selection.everything is None
    git(repo, "checkout", "-q", "--", ".")
    (repo / "tests" / "data").mkdir()
    (repo / "tests" / "data" / "input.json").write_text("{}")
    _, decisions = run(repo)
    assert "a file in the test folder tests" in (decisions["tests/test_cart.py::test_price"] or "")


def test_a_deleted_function_selects_its_callers(repo: Path) -> None:
    edit(repo, "shop/other.py", "def unrelated():\n    return 0\n", "")
    _, decisions = run(repo)
    assert chosen(decisions) == {"test_unrelated"}
    assert "deleted" in decisions["tests/test_other.py::test_unrelated"]


def test_a_new_method_that_may_override_selects_the_callers_of_that_name(repo: Path) -> None:
    edit(repo, "shop/cart.py", "class Cart(Base):\n", "class Cart(Base):\n    def total_items(self):\n"
                                                      "        return 0\n\n")
    selection, decisions = run(repo)
    assert chosen(decisions) == set()  # a new name nobody called
    git(repo, "checkout", "-q", "--", ".")
    edit(repo, "shop/other.py", "def unrelated():", "class Special:\n    def doubled(self):\n        return 1\n\n\n"
                                                   "def unrelated():")
    selection, decisions = run(repo)
    assert chosen(decisions) == {"test_doubled"}
    assert "may override or shadow" in decisions["tests/test_other.py::test_doubled"]


def test_new_special_methods_and_rebinding_names_run_everything(repo: Path) -> None:
    edit(repo, "shop/cart.py", "class Cart(Base):\n", "class Cart(Base):\n    def __eq__(self, other):\n"
                                                      "        return True\n\n")
    selection, _ = run(repo)
    assert "new special method" in (selection.everything or "")
    git(repo, "checkout", "-q", "--", ".")
    edit(repo, "shop/other.py", "def unrelated():", "def RATE():\n    return 1\n\n\ndef unrelated():")
    selection, _ = run(repo)
    assert "rebinds the module's name 'RATE'" in (selection.everything or "")


def test_a_function_the_baseline_did_not_instrument_runs_everything(repo: Path) -> None:
    edit(repo, "shop/cart.py", "def trivial():\n    pass", "def trivial():\n    return 1")
    selection, _ = run(repo)
    assert "shop.cart:trivial changed but was not instrumented" in (selection.everything or "")


def test_calls_at_import_and_in_shared_fixtures(repo: Path) -> None:
    edit(repo, "shop/other.py", "return 0", "return 1")
    selection, _ = run(repo, baseline(repo, outside=[("shop.other", "unrelated")]))
    assert "called outside any test" in (selection.everything or "")
    # A session fixture's setup called helper; both tests that used the fixture are affected,
    # not only the first one that set it up.
    git(repo, "checkout", "-q", "--", ".")
    edit(repo, "shop/cart.py", "return n + 1", "return n + 2")
    fixtures = {"session tests::db": (["tests/test_cart.py::test_price", "tests/test_other.py::test_nothing"],
                                      [("shop.cart", "helper")])}
    _, decisions = run(repo, baseline(repo, fixtures=fixtures))
    assert chosen(decisions) == {"test_price", "test_nothing"}


def test_other_files(repo: Path) -> None:
    edit(repo, "README.md", "# shop", "# the shop")
    (repo / "docs").mkdir()
    (repo / "docs" / "index.rst").write_text("docs\n")
    selection, decisions = run(repo)
    assert chosen(decisions) == set()
    (repo / "shop" / "prices.csv").write_text("a,1\n")
    selection, decisions = run(repo)
    assert selection.everything == "shop/prices.csv changed (added): what it does to tests is unknown"
    (repo / "shop" / "prices.csv").unlink()
    (repo / "pytest.ini").write_text("[pytest]\n")
    selection = select(baseline(repo), repo, "HEAD", test_globs=["test_*.py"], inifile=repo / "pytest.ini")
    assert "pytest reads its configuration from it" in (selection.everything or "")


def test_a_file_that_does_not_parse_runs_everything(repo: Path) -> None:
    edit(repo, "shop/cart.py", "return n + 1", "return n +")
    selection, _ = run(repo)
    assert "shop/cart.py does not parse" in (selection.everything or "")


def test_changes_since_the_baseline_commit_count_too(repo: Path) -> None:
    old = baseline(repo)  # saved at the first commit
    edit(repo, "shop/other.py", "return 0", "return 1")
    git(repo, "commit", "-qam", "second")
    selection, decisions = run(repo, old, ref="HEAD")  # the work tree equals HEAD, the baseline is older
    assert chosen(decisions) == {"test_unrelated"}
    assert len(selection.commits) == 2


def test_the_default_ref_is_the_merge_base_with_the_default_branch(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "feature")
    edit(repo, "shop/other.py", "return 0", "return 1")
    git(repo, "commit", "-qam", "on the branch")
    selection, decisions = run(repo, ref=None)
    assert selection.ref == "merge-base HEAD main"
    assert chosen(decisions) == {"test_unrelated"}


def test_bad_refs_and_no_git(repo: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AffectedError, match="'nope' names no commit"):
        run(repo, ref="nope")
    with pytest.raises(AffectedError, match="is a path, not a git ref"):
        run(repo, ref=str(repo / "tests"))
    elsewhere = tmp_path_factory.mktemp("nogit")
    with pytest.raises(AffectedError, match="not in a git work tree"):
        select(baseline(repo), elsewhere, "HEAD", test_globs=[])
    path = os.environ["PATH"]
    made = baseline(repo)
    monkeypatch.setenv("PATH", str(tmp_path_factory.mktemp("empty-path")))
    with pytest.raises(AffectedError, match="git is not installed"):
        select(made, repo, "HEAD", test_globs=[])
    monkeypatch.setenv("PATH", path)
    fresh = tmp_path_factory.mktemp("fresh")
    git(fresh, "init", "-q", "-b", "main")
    with pytest.raises(AffectedError, match="no commits yet"):
        select(baseline(repo), fresh, None, test_globs=[])


def test_the_selection_travels_as_json(repo: Path) -> None:
    import json

    edit(repo, "shop/cart.py", "return n * RATE", "return n * RATE + 0")
    selection, decisions = run(repo)
    again = Selection.from_json(json.loads(json.dumps(selection.to_json())))
    assert {t: again.decide(t) for t in CALLS} == decisions


def test_pytests_configuration_file_counts_only_for_its_pytest_part(repo: Path) -> None:
    (repo / "pyproject.toml").write_text('[project]\nname = "shop"\n\n[tool.pytest.ini_options]\naddopts = "-q"\n')
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "config")
    inifile = repo / "pyproject.toml"
    edit(repo, "pyproject.toml", 'name = "shop"', 'name = "shop"\nversion = "2"')
    selection = select(baseline(repo), repo, "HEAD", test_globs=["test_*.py"], inifile=inifile)
    assert selection.everything is None
    assert "pyproject.toml changed, not its pytest configuration" in selection.changes
    edit(repo, "pyproject.toml", 'addopts = "-q"', 'addopts = "-q -x"')
    selection = select(baseline(repo), repo, "HEAD", test_globs=["test_*.py"], inifile=inifile)
    assert selection.everything == "pyproject.toml changed: pytest reads its configuration from it"


def test_mixin_test_methods_and_inherited_tests(repo: Path) -> None:
    (repo / "tests" / "mixins.py").write_text("class Checks:\n    def test_shared(self):\n        assert 1\n\n"
                                              "    def helper(self):\n        return 1\n")
    (repo / "tests" / "test_classes.py").write_text(
        "from tests.mixins import Checks\n\n\nclass TestA(Checks):\n    def test_own(self):\n        assert 1\n\n\n"
        "class TestB(Checks):\n    pass\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "classes")
    extra = {"tests/test_classes.py::TestA::test_own": [], "tests/test_classes.py::TestA::test_shared": [],
             "tests/test_classes.py::TestB::test_shared": []}
    CALLS.update(extra)
    try:
        edit(repo, "tests/mixins.py", "    def test_shared(self):\n        assert 1", "    def test_shared(self):\n        assert 2")
        selection, decisions = run(repo)
        assert {t for t, why in decisions.items() if why} == {"tests/test_classes.py::TestA::test_shared",
                                                              "tests/test_classes.py::TestB::test_shared"}
        git(repo, "checkout", "-q", "--", ".")
        edit(repo, "tests/mixins.py", "        return 1", "        return 2")  # a helper: every test under tests
        _, decisions = run(repo)
        assert all(decisions.values())
        git(repo, "checkout", "-q", "--", ".")
        edit(repo, "tests/test_classes.py", "    def test_own(self):\n        assert 1", "    def test_own(self):\n        assert 3")
        _, decisions = run(repo)  # the inherited tests of the file did not change
        assert {t for t, why in decisions.items() if why} == {"tests/test_classes.py::TestA::test_own"}
    finally:
        for key in extra:
            CALLS.pop(key)


def test_skipped_tests_and_stubs(repo: Path) -> None:
    _, decisions = run(repo, baseline(repo, outcomes={"tests/test_other.py::test_nothing": "skipped"}))
    assert not any(decisions.values())
    (repo / "shop" / "cart.pyi").write_text("def price(n: int) -> int: ...\n")
    (repo / "shop" / "py.typed").write_text("")
    selection, decisions = run(repo)
    assert selection.everything is None and not any(decisions.values())
