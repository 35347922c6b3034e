"""Someone who can write the cache, not read this machine's key, tries to make the tool write
or run their code, through every front door: the command line (``-o``, ``--in-place``), the
pytest plugin, the pre-commit framework's hook and the plain git hook. Each forged entry is
well formed (made by the cache's own writer, sealed with another machine's key); each test
asserts that the payload lands in no written file and never runs, that the result is what a
run without any cache gives, that the entry is counted, and that the next run is clean.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_telemetry_inject.engine.cache import IndexEntry, ScriptCache
from pytest_telemetry_inject.engine.pipeline import Engine
from pytest_telemetry_inject.languages import get_language
from pytest_telemetry_inject.settings import Settings
from pytest_telemetry_inject.testkit import import_path

forge = import_path(Path(__file__).with_name("forge.py"), "security_forge")
hooks = import_path(Path(__file__).resolve().parents[1] / "precommit" / "conftest.py", "security_precommit_helpers")


def instrument(project: Path, *args: object) -> dict:
    done = forge.run_cli("pkg", *args, "--json", "-q", cwd=project)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.py"))
            if ".telemetry_cache" not in p.parts}


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PAYLOAD-RAN"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return forge.make_project(tmp_path / "project")


@pytest.fixture
def reference(project: Path, tmp_path: Path) -> dict[str, bytes]:
    """What the command line writes without any cache."""
    instrument(project, "-o", tmp_path / "reference", "--no-cache")
    return read_tree(tmp_path / "reference")


# -- whole-file memos -------------------------------------------------------------------------


@pytest.mark.parametrize("front_door", ["output-folder", "in-place"])
def test_a_memo_with_one_extra_line_is_refused_by_the_command_line(project, reference, marker, tmp_path,
                                                                   front_door):
    instrument(project, "-o", tmp_path / "warm")
    cache = project / ".telemetry_cache"
    forged = forge.forge_memos(cache, forge.after_tracer(forge.payload(marker)), tmp_path)
    assert forged == 1  # pkg/mod.py (the package's __init__.py has no function)
    if front_door == "output-folder":
        summary = instrument(project, "-o", tmp_path / "out")
        written = read_tree(tmp_path / "out")
    else:
        summary = instrument(project, "--in-place")
        written = {name[len("pkg/"):]: data for name, data in read_tree(project).items() if name.startswith("pkg/")}
    assert written == reference
    assert not any(b"pathlib" in data for data in written.values())
    assert summary["cache"]["corrupt_entries"] == 1 and summary["cache"]["memo_misses"] == 1
    assert not marker.exists()
    if front_door == "output-folder":
        again = instrument(project, "-o", tmp_path / "again")
        assert again["cache"]["corrupt_entries"] == 0 and again["cache"]["memo_hits"] == summary["files"]["total"]
        assert read_tree(tmp_path / "again") == reference
    # Strip gives back the original, payload or not.
    stripped = instrument(project, "--strip", "--in-place")
    assert stripped["files"]["errors"] == []
    assert (project / "pkg" / "mod.py").read_text() == forge.MODULE


@pytest.mark.parametrize("change", [
    "a line re-indented into the loop above it",
    "a decorator before the docstring",
    "the header above the docstring",
    "a span named after another function",
    "a line dropped",
])
def test_memos_that_move_or_drop_lines_are_refused(project, reference, tmp_path, change):
    instrument(project, "-o", tmp_path / "warm")

    def edit(lines: list[str]) -> list[str]:
        text = "".join(lines)
        if change == "a line re-indented into the loop above it":
            text = text.replace("        return result\n", "            return result\n")
        elif change == "a decorator before the docstring":
            text = text.replace('    """Say hello."""\n', '    with _telemetry.span("greet"):\n    """Say hello."""\n', 1)
        elif change == "the header above the docstring":
            head = [line for line in lines if "_telemetry_runtime" in line]
            text = "".join(head) + text.replace("".join(head), "", 1)
        elif change == "a span named after another function":
            text = text.replace('span("greet")', 'span("outer")')
        else:
            text = text.replace("    return inner(1)\n", "")
        assert text != "".join(lines)
        return text.splitlines(keepends=True)

    forged = forge.forge_memos(project / ".telemetry_cache", edit, tmp_path)
    assert forged == 1
    summary = instrument(project, "-o", tmp_path / "out")
    assert read_tree(tmp_path / "out") == reference
    assert summary["cache"]["corrupt_entries"] == 1


def test_a_foreign_memo_that_is_right_is_used_and_sealed_here(project, reference, tmp_path):
    """A cache from another machine keeps its checked memos: they are used (no file is parsed
    again) and sealed with this machine's key, so the next run reads them as its own."""
    instrument(project, "-o", tmp_path / "warm")
    assert forge.forge_memos(project / ".telemetry_cache", lambda lines: lines, tmp_path) == 1
    summary = instrument(project, "-o", tmp_path / "out")
    assert read_tree(tmp_path / "out") == reference
    assert summary["cache"]["corrupt_entries"] == 0 and summary["cache"]["memo_misses"] == 0
    cache = ScriptCache(project / ".telemetry_cache")
    assert all(cache.read_memo(path.name)[0].sealed for path in forge.memos(project / ".telemetry_cache"))


# -- index entries ----------------------------------------------------------------------------


def _index_entries(project: Path) -> tuple[ScriptCache, list[IndexEntry]]:
    cache = ScriptCache(project / ".telemetry_cache")
    entries = []
    for shard in sorted((project / ".telemetry_cache" / "metadata" / "index").glob("*.jsonl")):
        entries.extend(cache._read_shard(shard).values())
    return cache, entries


@pytest.mark.parametrize("edits", [
    [["bogus", 1]],
    [["insert", 999, "x"]],
    [],
    [["insert", 2, "    __import__('os').system('true')"]],
    "the next function's edits",
])
def test_index_entries_whose_edits_are_not_the_templates_are_rebuilt(project, reference, tmp_path, edits):
    instrument(project, "-o", tmp_path / "warm")
    for memo in forge.memos(project / ".telemetry_cache"):
        memo.unlink()  # the index answers now
    cache, entries = _index_entries(project)
    assert len(entries) == 6
    with forge.attacker(tmp_path):
        forged = ScriptCache(project / ".telemetry_cache")
        for entry in entries:
            other = entries[(entries.index(entry) + 1) % len(entries)]
            entry.edits = other.edits if edits == "the next function's edits" else edits
        forged.store(entries)
    summary = instrument(project, "-o", tmp_path / "out")
    assert read_tree(tmp_path / "out") == reference
    assert summary["cache"]["corrupt_entries"] == 6
    assert summary["files"]["errors"] == []
    functions = summary["functions"]
    assert functions["instrumented"] == 6 and functions.get("failed", 0) == 0
    # The run wrote the right entries: the next one without memos finds only them.
    for memo in forge.memos(project / ".telemetry_cache"):
        memo.unlink()
    again = instrument(project, "-o", tmp_path / "again")
    assert again["cache"]["corrupt_entries"] == 0 and again["cache"]["script_hits"] == 6
    assert read_tree(tmp_path / "again") == reference


# -- the pytest plugin ----------------------------------------------------------------------------


def _plugin_project(pytester: pytest.Pytester) -> Path:
    forge.make_project(pytester.path / "p")
    for item in (pytester.path / "p").iterdir():
        shutil.move(str(item), pytester.path / item.name)
    (pytester.path / "p").rmdir()
    return pytester.path


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("--inject-telemetry", *args)


@pytest.mark.parametrize("entry", ["memo", "compiled code", "generated tests"])
def test_the_plugin_never_runs_a_forged_entry(pytester: pytest.Pytester, marker: Path, tmp_path: Path, entry):
    root = _plugin_project(pytester)
    first = _run(pytester)
    first.assert_outcomes(passed=5)  # four tests and the file's telemetry item
    cache = root / ".telemetry_cache"
    if entry == "memo":
        count = forge.forge_memos(cache, forge.after_tracer(forge.payload(marker)), tmp_path)
    elif entry == "compiled code":
        count = forge.forge_code(cache, tmp_path, marker)
    else:
        count = forge.forge_tests(cache, tmp_path, marker)
    assert count == 1
    result = _run(pytester)
    result.assert_outcomes(passed=5)
    assert not marker.exists()
    result.stdout.fnmatch_lines(["*1 damaged or foreign cache entries were found and rebuilt*"])
    result.stdout.fnmatch_lines(["*6 functions instrumented in 1 files*; 6 called*"])
    again = _run(pytester)
    again.assert_outcomes(passed=5)
    assert "cache entries were found" not in again.stdout.str()
    assert not marker.exists()


def test_compiled_code_is_fixed_to_the_file_it_is_loaded_for(pytester: pytest.Pytester) -> None:
    """Two identical modules share their compiled code (it is keyed by content): each gets
    its own file name in tracebacks and coverage, and so does a project moved with its cache."""
    root = _plugin_project(pytester)
    shutil.copy(root / "pkg" / "mod.py", root / "pkg" / "twin.py")
    (root / "tests" / "test_twin.py").write_text(textwrap.dedent("""\
        import pkg.mod, pkg.twin


        def test_each_has_its_own_file():
            assert pkg.mod.greet.__code__.co_filename == pkg.mod.__file__
            assert pkg.twin.greet.__code__.co_filename == pkg.twin.__file__
        """))
    _run(pytester).assert_outcomes(passed=7)
    _run(pytester).assert_outcomes(passed=7)  # from the cache this time
    moved = pytester.path.parent / (pytester.path.name + "-moved")
    shutil.copytree(root, moved)
    done = subprocess.run([sys.executable, "-m", "pytest", "--inject-telemetry", "-q"], cwd=moved,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_prune_and_stats_know_the_compiled_code(pytester: pytest.Pytester) -> None:
    root = _plugin_project(pytester)
    _run(pytester).assert_outcomes(passed=5)
    cache = root / ".telemetry_cache"
    stats = json.loads(forge.run_cli("cache", "stats", "--json", cwd=root).stdout)
    assert stats["code"] == 1
    pruned = json.loads(forge.run_cli("cache", "prune", "--max-age-days", "0", "--json", cwd=root).stdout)
    assert pruned["code_removed"] == 1
    assert not [p for p in (cache / "metadata" / "code").rglob("*") if p.is_file()]


def test_a_plain_pytest_run_collects_nothing_from_the_cache(pytester: pytest.Pytester, marker: Path,
                                                            tmp_path: Path) -> None:
    """Nothing the tool writes changes what a plain pytest run collects, even one that walks
    into dot-folders and imports every module for doctests."""
    root = _plugin_project(pytester)
    (root / "pyproject.toml").write_text(textwrap.dedent("""\
        [tool.pytest.ini_options]
        addopts = "-p no:cacheprovider"
        norecursedirs = ["build"]
        """))
    _run(pytester).assert_outcomes(passed=5)
    forge.forge_tests(root / ".telemetry_cache", tmp_path, marker)
    plain = pytester.runpytest_subprocess("--doctest-modules", "-p", "no:telemetry_inject")
    plain.assert_outcomes(passed=4)
    assert not marker.exists()


# -- the pre-commit hooks --------------------------------------------------------------------------


def _hook_env(home: Path) -> dict[str, str]:
    (home / ".gitconfig").parent.mkdir(parents=True, exist_ok=True)
    (home / ".gitconfig").write_text("[user]\n\tname = T\n\temail = t@example.invalid\n"
                                     "[init]\n\tdefaultBranch = main\n[commit]\n\tgpgsign = false\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GIT_", "TELEMETRY_INJECT_", "PRE_COMMIT", "PYTHONPATH"))}
    env.update(HOME=str(home), GIT_CONFIG_GLOBAL=str(home / ".gitconfig"), GIT_CONFIG_NOSYSTEM="1",
               PRE_COMMIT_HOME=str(home / "pre-commit-home"), PRE_COMMIT_COLOR="never",
               PATH=str(forge.BIN) + os.pathsep + env.get("PATH", ""))
    return env


@pytest.mark.parametrize("kind", ["pre-commit framework", "plain git hook"])
def test_a_forged_memo_never_reaches_a_commit(tmp_path: Path, marker: Path, kind: str) -> None:
    env = _hook_env(tmp_path / "home")
    victim = hooks.Repo(tmp_path / "victim", env)
    victim.root.mkdir()
    victim.git("init", "-q")
    if kind == "pre-commit framework":
        victim.write(".pre-commit-config.yaml", hooks.local_config())
        victim.git("add", ".pre-commit-config.yaml")
        assert victim.pre_commit("install").returncode == 0
    else:
        target = victim.root / ".git" / "hooks" / "pre-commit"
        target.write_bytes((forge.PROJECT / "hooks" / "pre-commit").read_bytes())
        target.chmod(0o755)
    victim.write("pyproject.toml", "")
    victim.write("pkg/__init__.py", "")
    victim.write("pkg/mod.py", forge.MODULE)
    victim.git("add", "-A")
    # The same commit elsewhere fills a cache, which the attacker poisons and the victim restores.
    elsewhere = hooks.Repo(forge.copy_tree(victim.root, tmp_path / "elsewhere"), env)
    if kind == "pre-commit framework":
        elsewhere.commit("first")  # the framework's hook stops the commit once, having fixed the files
        elsewhere.git("add", "-A")
    assert elsewhere.commit("first").returncode == 0, elsewhere.text(elsewhere.run("git", "status"))
    honest = elsewhere.head("pkg/mod.py")
    assert b'span("Counter.bump")' in honest or b'instrument("Counter.bump")' in honest
    assert forge.forge_memos(elsewhere.root / ".telemetry_cache", forge.after_tracer(forge.payload(marker)),
                             tmp_path) == 1
    shutil.copytree(elsewhere.root / ".telemetry_cache", victim.root / ".telemetry_cache")

    done = victim.commit("first")
    if kind == "pre-commit framework":
        assert "damaged or foreign cache entries were found and rebuilt" in victim.text(done)
        victim.git("add", "-A")
        done = victim.commit("first")
    assert done.returncode == 0, victim.text(done)
    assert victim.head("pkg/mod.py") == honest
    assert b"pathlib" not in victim.read("pkg/mod.py")
    assert not marker.exists()


# -- symbolic links ----------------------------------------------------------------------------------


@pytest.mark.parametrize("link", ["metadata/index", "metadata", "scripts/python", "metadata/index.lock", "."])
def test_a_cache_with_a_symbolic_link_is_refused_in_one_line(project, tmp_path, link):
    instrument(project, "-o", tmp_path / "warm")
    cache = project / ".telemetry_cache"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me\n")
    place = cache / link if link != "." else cache
    target = outside if link != "metadata/index.lock" else outside / "precious.txt"
    if place.is_dir():
        shutil.rmtree(place)
    else:
        place.unlink()
    place.symlink_to(target)
    for args in (["pkg", "-o", tmp_path / "out"], ["cache", "prune", "--max-age-days", "0"], ["cache", "clear"]):
        done = forge.run_cli(*args, cwd=project)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and "symbolic link" in done.stderr
    assert (outside / "precious.txt").read_text() == "keep me\n"
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]


def test_links_deeper_in_the_cache_are_never_followed(project, tmp_path):
    """A shard folder or a memo that is a link: not read, not written through, not deleted
    through by prune or clear, and the run's output is still right."""
    reference_dir = tmp_path / "warm"
    instrument(project, "-o", reference_dir)
    cache = project / ".telemetry_cache"
    outside = tmp_path / "outside"
    outside.mkdir()
    victim_file = outside / "victim"
    victim_file.write_text("keep me\n")
    memo = forge.memos(cache)[0]
    memo.unlink()
    memo.symlink_to(victim_file)  # a memo that is a link: never read, never deleted through
    summary = instrument(project, "-o", tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(reference_dir)
    assert victim_file.read_text() == "keep me\n"
    shard = next((cache / "scripts" / "python").iterdir())
    shutil.rmtree(shard)
    shard.symlink_to(outside, target_is_directory=True)
    for memo in forge.memos(cache):
        memo.unlink()  # the scripts are looked at on a miss
    summary = instrument(project, "-o", tmp_path / "out2")
    assert read_tree(tmp_path / "out2") == read_tree(reference_dir)
    assert "symbolic link" in summary["cache"]["warning"]
    for action in (["prune", "--max-age-days", "0"], ["clear"]):
        forge.run_cli("cache", *action, cwd=project)
        assert victim_file.read_text() == "keep me\n"
        assert sorted(p.name for p in outside.iterdir()) == ["victim"]


def test_the_key_file_must_be_the_users_own_and_private(project, tmp_path):
    key = tmp_path / "keys" / "cache.key"
    env = {"TELEMETRY_INJECT_KEY_FILE": str(key)}
    assert forge.run_cli("pkg", "-o", tmp_path / "out", cwd=project, env=env).returncode == 0
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_size == 32
    key.chmod(0o644)
    done = forge.run_cli("pkg", "-o", tmp_path / "out2", "--json", cwd=project, env=env)
    assert done.returncode == 0
    # Without a usable key nothing is sealed: memos are checked on every use, and say so.
    assert "can be read by others" in json.loads(done.stdout)["cache"]["warning"]


def test_engine_refuses_index_edits_of_another_function_in_process(tmp_path):
    """The same check in one process, without a command line: an entry planned for another
    function under this function's key is not used."""
    settings = Settings(target="runtime")
    cache = ScriptCache(tmp_path / "cache")
    engine = Engine(settings, cache)
    source = forge.MODULE.encode()
    first = engine.instrument(source, "mod.py", import_name="")
    assert first.status == "instrumented"
    python = get_language("python")
    parsed = python.parse(forge.MODULE, "mod.py", settings)
    greet, bump = (next(r for r in parsed.functions if r.qualname == name) for name in ("greet", "Counter.bump"))
    template = python.templates(greet, settings)[0]
    good = cache.lookup(engine.function_key(bump, template))
    assert good is not None
    with forge.attacker(tmp_path):
        ScriptCache(tmp_path / "cache").store([IndexEntry(engine.function_key(greet, template), "ok",
                                                          template=good.template, script=good.script,
                                                          language="python", qualname="greet", edits=good.edits)])
    for memo in forge.memos(tmp_path / "cache"):
        memo.unlink()
    again = Engine(settings, ScriptCache(tmp_path / "cache")).instrument(source, "mod.py", import_name="")
    assert again.output == first.output and again.counters.corrupt == 1


def test_every_rejected_cache_file_is_traced_with_its_reason(tmp_path):
    """As pytest traces each cached pyc it rejects: a damaged memo, a damaged index line, an
    entry whose script was tampered with and compiled code sealed elsewhere are each refused,
    counted as corrupt and written to the trace with what was wrong."""
    from pytest_telemetry_inject.trace import TRACE

    settings = Settings(target="runtime")
    source = forge.MODULE.encode()
    cache_dir = tmp_path / "cache"
    first = Engine(settings, ScriptCache(cache_dir)).instrument(source, "mod.py", import_name="")
    assert first.status == "instrumented"
    for memo in forge.memos(cache_dir):
        memo.write_bytes(memo.read_bytes()[:-3])
    index = next(path for path in cache_dir.rglob("*") if path.is_file() and path.parent.name == "index")
    index.write_bytes(index.read_bytes() + b"{not json\n")
    script = next(cache_dir.rglob("*.script"))
    script.write_text(script.read_text() + "# changed\n")
    code_cache = ScriptCache(cache_dir)
    code_cache.write_code("k" * 64, b"\x00marshalled")
    code = Path(code_cache.layout.code("k" * 64))
    code.write_bytes(code.read_bytes().replace(b"\x00marshalled", b"\x00marshallex"))

    trace = tmp_path / "trace.jsonl"
    TRACE.configure(enabled=True, level="DEBUG", console=False, path=str(trace))
    try:
        cache = ScriptCache(cache_dir)
        again = Engine(settings, cache).instrument(source, "mod.py", import_name="")
        assert cache.read_code("k" * 64) is None
    finally:
        TRACE.configure(enabled=False)
    assert again.output == first.output
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    rejected = {event["msg"]: event for event in events if event["msg"].startswith("rejected ")}
    assert set(rejected) >= {"rejected memo", "rejected index line", "rejected index entry", "rejected compiled code"}
    assert all(event["reason"] and event["where"] for event in rejected.values())
    assert rejected["rejected index line"]["reason"] == "damaged index line"
    assert again.counters.corrupt + cache.counters.corrupt >= len(rejected)
