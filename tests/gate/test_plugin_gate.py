"""The three options end to end: real pytest runs (subprocesses), real git, real pytest-xdist."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SOURCE = {
    "algo/__init__.py": "",
    "algo/search.py": '''
        """Searching."""


        def key(x):
            return x * 2


        def find(items, target):
            for i, item in enumerate(items):
                if key(item) == key(target):
                    return i
            return -1


        def other(x):
            return x + 1
        ''',
    "tests/conftest.py": '''
        import pytest
        from algo import search


        @pytest.fixture(scope="session")
        def data():
            return [search.other(i) for i in range(20)]
        ''',
    "tests/test_search.py": '''
        from algo import search


        def test_find(data):
            assert search.find(data, 5) == 4


        def test_other(data):
            assert search.other(1) == 2 and len(data) == 20


        def test_plain():
            assert 1 + 1 == 2
        ''' + "".join(f'''

        def test_many_{n}(data):
            assert search.find(data, {n}) == {n - 1}
        ''' for n in range(1, 9)),
}
BASE = ("-p", "no:cacheprovider", "-p", "no:randomly")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "-c", "commit.gpgsign=false",
                           *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    for name, text in SOURCE.items():
        path = pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    pytester.makeini("[pytest]\ntestpaths = tests\n")
    # (runpytest_subprocess writes its stdout, stderr and a folder into the project)
    (pytester.path / ".gitignore").write_text(".telemetry/\n.telemetry_cache/\n__pycache__/\nout/\nstdout\nstderr\nrunpytest-*\n")
    git(pytester.path, "init", "-q", "-b", "main")
    git(pytester.path, "add", "-A")
    git(pytester.path, "commit", "-q", "-m", "first")
    return pytester


def edit(project: pytest.Pytester, old: str, new: str) -> None:
    path = project.path / "algo" / "search.py"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def section(result: pytest.RunResult) -> str:
    text = result.stdout.str()
    return text[text.find("telemetry gate"):]


MORE_WORK = ("            return i\n", "            pass\n    for i, item in enumerate(items):\n"
                                     "        if key(item) == key(target):\n            return i\n")


def test_save_compare_and_fail_on(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = project.runpytest_subprocess(*BASE, "--telemetry-save")
    assert saved.ret == 0, saved.stdout.str()
    path = project.path / ".telemetry" / "baselines" / "default.json.gz"
    document = json.loads(gzip.decompress(path.read_bytes()))
    assert document["format"] == "telemetry-inject-baseline" and document["meta"]["commit"] == git(project.path, "rev-parse", "HEAD")
    find = document["functions"].index(["algo.search", "find"])
    rows = document["tests"]["tests/test_search.py::test_find"]["calls"]
    assert [r[:2] for r in rows if r[0] == find] == [[find, 1]]
    # The session fixture's calls are its own, not the first test's.
    fixture = document["fixtures"]["session tests::data"]
    assert fixture["setups"] == 1 and fixture["calls"][0][1] == 20
    assert document["tests"]["tests/test_search.py::test_find"]["fixtures"] == ["session tests::data"]
    assert re.search(r"saved the baseline \.telemetry/baselines/default\.json\.gz: 1[23] tests", saved.stdout.str())

    same = project.runpytest_subprocess(*BASE, "--telemetry-compare", "--telemetry-fail-on=calls:+10%")
    assert same.ret == 0
    assert "no finding: call counts, exceptions and functions are as in the baseline" in section(same)
    assert "telemetry gate passed (calls:+10%)" in section(same)

    edit(project, '"""Searching."""', '"""Searching."""\n# a comment only')
    edit(project, "def key(x):\n", "def key(x):\n    # twice x\n")
    comment = project.runpytest_subprocess(*BASE, "--telemetry-compare", "--telemetry-fail-on=calls:+0,new,vanished")
    assert comment.ret == 0 and "no finding" in section(comment)

    edit(project, *MORE_WORK)
    summary = project.path / "out" / "summary.md"
    summary.parent.mkdir()
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    worse = project.runpytest_subprocess(*BASE, "--telemetry-compare", "--telemetry-fail-on=calls:+10%",
                                         "--telemetry-compare-md=out/c.md", "--telemetry-compare-html=out/c.html")
    assert worse.ret == 1  # every test passed: the gate failed the run
    text = section(worse)
    assert "FAILED telemetry gate (calls:+10%)" in text
    assert "calls:+10%: algo.search:key in tests/test_search.py::test_find: calls 10 -> 50 (+400.0%)" in text
    markdown = (project.path / "out" / "c.md").read_text()
    assert "## Telemetry gate: ❌ failed" in markdown
    assert "| ❌ | calls | `algo.search:key` | tests/test_search.py::test_find | +400.0% | 10 | 50 |" in markdown
    assert summary.read_text().startswith("earlier step\n## Telemetry gate: ❌ failed")  # appended
    page = (project.path / "out" / "c.html").read_text()
    island = re.search(r'<script type="application/json" id="gate-data">(.*?)</script>', page, re.S).group(1)
    data = json.loads(island)
    assert data["failed"] and {f["function"] for f in data["findings"] if f["rules"]} == {"algo.search:key"}
    assert "http" not in page.replace("http-equiv", "")  # self-contained


def test_xdist_save_and_compare(project: pytest.Pytester) -> None:
    saved = project.runpytest_subprocess(*BASE, "-n", "2", "--telemetry-save=xd")
    assert saved.ret == 0, saved.stdout.str()
    document = json.loads(gzip.decompress((project.path / ".telemetry/baselines/xd.json.gz").read_bytes()))
    assert document["meta"]["processes"] == 2
    # Each worker set the session fixture up once: 20 calls per setup, wherever it ran.
    fixture = document["fixtures"]["session tests::data"]
    assert fixture["calls"][0][1] == 20 * fixture["setups"]
    for _ in range(3):  # distributed differently each time: still no finding
        again = project.runpytest_subprocess(*BASE, "-n", "2", "--telemetry-compare=xd", "--telemetry-fail-on=calls:+0")
        assert again.ret == 0 and "no finding" in section(again), section(again)
    one = project.runpytest_subprocess(*BASE, "--telemetry-compare=xd", "--telemetry-fail-on=calls:+0")
    assert one.ret == 0 and "no finding" in section(one), section(one)
    edit(project, *MORE_WORK)
    worse = project.runpytest_subprocess(*BASE, "-n", "2", "--telemetry-compare=xd", "--telemetry-fail-on=calls:+10%")
    assert worse.ret == 1 and "FAILED telemetry gate" in section(worse)


def test_affected_runs_the_callers_and_misses_no_failure(project: pytest.Pytester) -> None:
    assert project.runpytest_subprocess(*BASE, "--telemetry-save").ret == 0
    edit(project, "    return x + 1\n", "    return x + 2\n")  # other(): breaks test_other and the fixture's data
    full = project.runpytest_subprocess(*BASE)
    affected = project.runpytest_subprocess(*BASE, "--telemetry-affected=HEAD", "-v")
    failed = lambda result: set(re.findall(r"^FAILED (\S+)", result.stdout.str(), re.M))  # noqa: E731
    assert failed(full) and failed(full) <= failed(affected)
    out = affected.stdout.str()
    assert "algo.search:other changed: 10 tests called it" in out  # through the session fixture
    assert "1 deselected" in out, out[:3000]  # test_plain called nothing that changed
    assert "selected tests/test_search.py::test_find: called algo.search:other (changed)" in out
    xdist = project.runpytest_subprocess(*BASE, "-n", "2", "--telemetry-affected=HEAD")
    assert failed(full) <= failed(xdist)
    assert "10 of 11 tests selected, 1 deselected" in xdist.stdout.str()


def test_affected_with_nothing_to_run_succeeds_and_save_keeps_the_rest(project: pytest.Pytester) -> None:
    assert project.runpytest_subprocess(*BASE, "--telemetry-save").ret == 0
    before = json.loads(gzip.decompress((project.path / ".telemetry/baselines/default.json.gz").read_bytes()))
    result = project.runpytest_subprocess(*BASE, "--telemetry-affected=HEAD")
    assert result.ret == 0 and "no test can be affected by the changes: none ran" in result.stdout.str()
    edit(project, "def key(x):\n    return x * 2", "def key(x):\n    return x * 2 + 0")
    result = project.runpytest_subprocess(*BASE, "--telemetry-affected=HEAD", "--telemetry-save")
    assert result.ret == 0
    assert re.search(r"saved the baseline .*: 1[23] tests \(\d+ carried over from the previous baseline\)",
                     result.stdout.str()), result.stdout.str()
    after = json.loads(gzip.decompress((project.path / ".telemetry/baselines/default.json.gz").read_bytes()))
    assert set(after["tests"]) == set(before["tests"])


@pytest.mark.parametrize("args, message", [
    (["--telemetry-compare=none"], "ERROR: telemetry baseline: no baseline at "),
    (["--telemetry-compare=.telemetry/baselines/bad.json.gz"], "not a readable gzip file"),
    (["--telemetry-compare", "--telemetry-fail-on=calls:lots"], "ERROR: --telemetry-fail-on: 'calls:lots' is not a rule"),
    (["--telemetry-fail-on=calls:+1%"], "ERROR: --telemetry-fail-on needs --telemetry-compare"),
    (["--telemetry-compare-html=x.html", "--telemetry-save"], "--telemetry-compare-html needs --telemetry-compare"),
    (["--telemetry-affected=no-such-ref"], "ERROR: --telemetry-affected: 'no-such-ref' names no commit"),
    (["--telemetry-affected", "tests"], "is a path, not a git ref"),
    (["--telemetry-save=x y"], "neither a baseline name"),
    (["-o", "telemetry_fail_on=time:-5%", "--telemetry-compare"], "ERROR: telemetry_fail_on (ini): 'time:-5%'"),
])
def test_bad_input_is_one_line_and_exit_4(project: pytest.Pytester, args: list[str], message: str) -> None:
    assert project.runpytest_subprocess(*BASE, "--telemetry-save").ret == 0
    (project.path / ".telemetry" / "baselines" / "bad.json.gz").write_bytes(b"\x1f\x8b garbage")
    baseline = (project.path / ".telemetry" / "baselines" / "default.json.gz").read_bytes()
    result = project.runpytest_subprocess(*BASE, *args)
    assert result.ret == 4
    errors = [line for line in result.stderr.lines if line.startswith("ERROR")]
    assert len(errors) == 1 and message in errors[0], result.stderr.str()
    assert "passed" not in result.stdout.str()  # before any test ran
    assert (project.path / ".telemetry" / "baselines" / "default.json.gz").read_bytes() == baseline  # nothing lost


def test_affected_without_git(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert project.runpytest_subprocess(*BASE, "--telemetry-save").ret == 0
    import shutil
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    assert shutil.which("git", path=str(bin_dir)) is None
    monkeypatch.setenv("PATH", str(bin_dir))
    result = project.runpytest_subprocess(*BASE, "--telemetry-affected")
    assert result.ret == 4
    assert "ERROR: --telemetry-affected: git is not installed (or not on PATH)" in result.stderr.str()
