"""Fault injection on the cache, through the real CLI in subprocesses and real files.

A killed writer, four concurrent writers, damaged index shards, damaged file memos, a
tampered insertion script and a cache that cannot be written: every run must still
write exactly what ``telemetry-inject TREE -o REF --no-cache --target runtime`` writes,
the damage must be detected (counted), and the cache must heal itself.

No mocks: the CLI runs as ``python -m pytest_telemetry_inject.cli`` and the damage is
done to the files on disk.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_telemetry_inject.engine.cache import ScriptCache

N_FILES = 30
TEMP_PREFIX = ".ti-"


# -- helpers ----------------------------------------------------------------------------------


def _source(i: int) -> str:
    """A module with a dozen functions of several kinds; the bodies depend on ``i`` so the
    scripts differ from file to file (``shared_helper`` is the same everywhere on purpose:
    one key, one script, reused)."""
    extra = ""
    if i % 4 == 0:
        extra += f'''

def guarded_{i}(path):
    try:
        handle = open(path)
    except OSError as exc:
        return str(exc)
    else:
        return handle.read({i})
    finally:
        print("done {i}")
'''
    if i % 6 == 1:
        extra += f'''

class Registry{i}:
    class Entry:
        def key(self):
            return "entry-{i}"

    def register(self, *args, flag=False, **kwargs):
        return (args, flag, kwargs, {i})
'''
    return f'''"""Module {i}."""
import asyncio
import functools

CONSTANT_{i} = {i}
square = lambda x: x * x


def shared_helper(x):
    return x * 2


def add_{i}(a, b={i}):
    """Add {i}."""
    total = a + b
    if total > {i * 3}:
        total -= {i}
    return total


def scale(values, factor={i + 1}):
    return [v * factor for v in values]


def noop_{i}():
    pass


@functools.lru_cache(maxsize={i + 8})
def cached_{i}(n):
    return n ** 2 + {i}


class Widget{i}:
    size = {i}

    def __init__(self, name):
        self.name = name
        self.items = list(range({i % 7}))

    def describe(self):
        def fmt(value):
            return f"{{self.name}}:{{value}}:{i}"
        return ", ".join(fmt(v) for v in self.items)

    @property
    def doubled(self):
        return self.size * 2 + {i}

    @staticmethod
    def helper_{i}(x):
        return x - {i}

    @classmethod
    def build(cls):
        return cls("w{i}")


def countdown_{i}(n):
    while n > {i % 4}:
        yield n
        n -= 1


async def fetch_{i}(delay=0):
    await asyncio.sleep(delay)
    return {{"id": {i}, "ok": True}}


def outer_{i}(x):
    def middle(y):
        def inner(z):
            return x + y + z + {i}
        return inner(y)
    return middle(x)
{extra}'''


def make_tree(root: Path, n: int = N_FILES) -> Path:
    for i in range(n):
        folder = root / f"pkg{i % 3}" / ("sub" if i % 5 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"mod_{i:02d}.py").write_text(_source(i), encoding="utf-8")
    return root


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_INJECT_")}


def _command(*args: object) -> list[str]:
    return [sys.executable, "-m", "pytest_telemetry_inject.cli", *map(str, args)]


def cli(*args: object, cwd: Path, preexec_fn=None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(_command(*args), cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=120, preexec_fn=preexec_fn)
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def instrument(tree: Path, out: Path, cache: Path, *extra: object, preexec_fn=None) -> dict:
    """One run with ``--json``; the summary."""
    proc = cli(tree, "-o", out, "--cache-dir", cache, "--target", "runtime", "--json", *extra,
               cwd=tree.parent, preexec_fn=preexec_fn)
    return json.loads(proc.stdout)


def stats(cache: Path) -> dict:
    """``telemetry-inject cache stats --json``."""
    return json.loads(cli("cache", "stats", "--cache-dir", cache, "--json", cwd=cache.parent).stdout)


def disk_stats(cache: Path) -> dict:
    """The same numbers, without starting a process (where the command is not the point)."""
    return ScriptCache(cache).stats()


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_output(out: Path, reference: dict[str, bytes]) -> None:
    got = read_tree(out)
    assert sorted(got) == sorted(reference)
    different = [name for name in reference if got[name] != reference[name]]
    assert not different, f"outputs differ from the reference: {different}"


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def real_files(folder: Path) -> list[Path]:
    return [p for p in files_under(folder) if not p.name.startswith(TEMP_PREFIX)]


def temp_files(folder: Path) -> list[Path]:
    return [p for p in files_under(folder) if p.name.startswith(TEMP_PREFIX)]


def memo_files(cache: Path) -> list[Path]:
    return real_files(cache / "metadata" / "files")


def script_files(cache: Path) -> list[Path]:
    return real_files(cache / "scripts")


def shards(cache: Path) -> list[Path]:
    return sorted((cache / "metadata" / "index").glob("*.jsonl"))


def delete_memos(cache: Path) -> None:
    for path in memo_files(cache):
        path.unlink()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in files_under(folder)}


# -- shared fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("faults") / "tree")


@pytest.fixture(scope="module")
def reference(tree: Path) -> dict[str, bytes]:
    ref = tree.parent / "ref"
    summary = json.loads(cli(tree, "-o", ref, "--no-cache", "--target", "runtime", "--json",
                             cwd=tree.parent).stdout)
    assert summary["files"]["instrumented"] == N_FILES
    assert summary["functions"].get("failed", 0) == 0
    return read_tree(ref)


@pytest.fixture(scope="module")
def cold(tree: Path, reference: dict[str, bytes]) -> dict:
    """A cache filled by one ordinary run; tests copy it. Returns the cold run's summary and
    the cache path."""
    cache = tree.parent / "warm-cache"
    summary = instrument(tree, tree.parent / "warm-out", cache, "--no-parallel")
    assert_same_output(tree.parent / "warm-out", reference)
    functions = summary["functions"]["instrumented"]
    scripts = summary["cache"]["script_misses"]
    # shared_helper is the same function in every file: one script, hits in 29 files.
    assert summary["cache"]["script_hits"] == N_FILES - 1
    assert functions == scripts + N_FILES - 1
    return {"cache": cache, "functions": functions, "scripts": scripts}


@pytest.fixture
def warm(cold: dict, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(cold["cache"], cache)
    return cache


# -- 1. kill -9 while writing -----------------------------------------------------------------


def _start(tree: Path, out: Path, cache: Path, parallel: bool) -> subprocess.Popen:
    args = [tree, "-o", out, "--cache-dir", cache, "--target", "runtime", "-q"]
    args += ["--max-parallel", "2"] if parallel else ["--no-parallel"]
    # A session of its own: killing the group kills the worker processes too.
    return subprocess.Popen(_command(*args), cwd=tree.parent, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill(proc: subprocess.Popen) -> int:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.wait(timeout=60)


def _count(folder: Path) -> int:
    return len(files_under(folder))


@pytest.mark.slow
def test_sigkill_at_many_moments_then_a_normal_run_is_exact(tree, reference, cold, tmp_path):
    cache = tmp_path / "cache"
    killed_with_work_left = 0
    rounds = 0
    # During start-up; then by the clock from the first write to the cache (the start-up
    # time differs from machine to machine); then by progress: as soon as it holds N scripts.
    moments = [("time", 0.05)] + [("after first write", d) for d in (0.0, 0.01, 0.03, 0.1)]
    moments += [("scripts", n) for n in (40, 90, 150, 220, 300)]
    for rounds, (kind, when) in enumerate(moments, 1):
        proc = _start(tree, tmp_path / f"out{rounds}", cache, parallel=rounds % 2 == 0)
        deadline = time.monotonic() + 30
        if kind == "time":
            time.sleep(when)
        elif kind == "after first write":
            seen = _count(cache / "scripts")
            while proc.poll() is None and time.monotonic() < deadline and _count(cache / "scripts") == seen:
                time.sleep(0.001)
            time.sleep(when)
        else:
            while proc.poll() is None and time.monotonic() < deadline and _count(cache / "scripts") < when:
                time.sleep(0.002)
        code = _kill(proc)
        if code == -signal.SIGKILL and script_files(cache) and len(memo_files(cache)) < N_FILES:
            killed_with_work_left += 1  # killed after it had begun writing, before it was done
    # The kills must really have landed in the middle of filling the cache.
    assert killed_with_work_left >= 3, f"only {killed_with_work_left} of {rounds} kills hit a run at work"

    leftovers = {p.name for p in temp_files(cache)}
    info = stats(cache)
    assert info["temp_files"] == len(temp_files(cache / "scripts") + temp_files(cache / "tests")
                                     + temp_files(cache / "metadata" / "files"))
    assert info["memos"] == len(memo_files(cache))
    assert info["scripts"] == len(script_files(cache))

    summary = instrument(tree, tmp_path / "final", cache)
    assert_same_output(tmp_path / "final", reference)
    assert summary["cache"]["write_errors"] == 0 and summary["cache"]["warning"] == ""

    info = stats(cache)
    assert info["memos"] == N_FILES
    assert info["tests"] == N_FILES
    assert info["scripts"] == cold["scripts"]
    assert info["index_entries"] == cold["scripts"]
    assert info["index_ok"] == cold["scripts"]
    # Temporary files are never counted as entries, and nothing new was left behind.
    assert {p.name for p in temp_files(cache)} <= leftovers
    for path in script_files(cache):  # a torn script was replaced by its whole text
        assert sha256_file(path) == path.stem, path

    again = instrument(tree, tmp_path / "again", cache, "--no-parallel")
    assert_same_output(tmp_path / "again", reference)
    assert again["cache"]["memo_hits"] == N_FILES
    assert again["cache"]["memo_misses"] == 0
    assert again["cache"]["script_misses"] == 0

    # Damaged index lines a kill may have left are dropped by prune.
    cli("cache", "prune", "--cache-dir", cache, "--json", cwd=tmp_path)
    assert disk_stats(cache)["index_corrupt_lines"] == 0


def test_leftover_temporary_files_are_not_entries_and_prune_removes_stale_ones(
        tree, reference, warm, tmp_path):
    planted = [
        warm / "metadata" / "files" / "ab" / ".ti-99999-0.tmp",
        warm / "scripts" / "python" / "ab" / ".ti-99999-1.tmp",
        warm / "tests" / "python" / ".ti-99999-2.tmp",
    ]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"TI-MEMO 3 00000000 - 2 -\n{}half a file")
    before = disk_stats(warm)
    assert before["temp_files"] == 3
    assert before["memos"] == N_FILES and before["tests"] == N_FILES

    summary = instrument(tree, tmp_path / "out", warm, "--no-parallel")
    assert_same_output(tmp_path / "out", reference)
    assert summary["cache"]["memo_hits"] == N_FILES
    assert summary["cache"]["corrupt_entries"] == 0

    # Young temporary files may belong to a writer at work: kept.
    young = json.loads(cli("cache", "prune", "--cache-dir", warm, "--json", cwd=tmp_path).stdout)
    assert young["temp_files_removed"] == 0
    assert all(p.exists() for p in planted)
    old = time.time() - 2 * 3600
    for path in planted:
        os.utime(path, (old, old))
    pruned = json.loads(cli("cache", "prune", "--cache-dir", warm, "--json", cwd=tmp_path).stdout)
    assert pruned["temp_files_removed"] == 3
    assert pruned["memos_removed"] == 0 and pruned["scripts_removed"] == 0 and pruned["tests_removed"] == 0
    assert not any(p.exists() for p in planted)
    assert disk_stats(warm)["temp_files"] == 0


def test_stale_temporary_files_in_root_and_index_folder_are_pruned(warm, tmp_path):
    planted = [warm / ".ti-99999-0.tmp", warm / "metadata" / "index" / ".ti-99999-1.tmp"]
    old = time.time() - 2 * 3600
    for path in planted:
        path.write_bytes(b"Signature: 8a47")
        os.utime(path, (old, old))
    pruned = json.loads(cli("cache", "prune", "--cache-dir", warm, "--json", cwd=tmp_path).stdout)
    assert [p for p in planted if p.exists()] == []
    assert pruned["temp_files_removed"] == 2


def test_gitignore_is_restored_after_a_kill_between_tag_and_gitignore(tree, reference, warm, tmp_path):
    (warm / ".gitignore").unlink()  # the state a kill right after CACHEDIR.TAG was written leaves
    delete_memos(warm)  # so that the run writes to the cache
    instrument(tree, tmp_path / "out", warm, "--no-parallel")
    assert_same_output(tmp_path / "out", reference)
    assert (warm / ".gitignore").is_file()
    assert (warm / ".gitignore").read_text().splitlines()[-1] == "*"


# -- 2. concurrent writers --------------------------------------------------------------------


@pytest.mark.slow
def test_four_processes_fill_one_cache_at_once(tree, reference, cold, tmp_path):
    cache = tmp_path / "cache"
    procs = []
    for n in range(4):
        args = [tree, "-o", tmp_path / f"out{n}", "--cache-dir", cache, "--target", "runtime", "--json"]
        args += ["--no-parallel"] if n % 2 else ["--max-parallel", "2"]
        procs.append(subprocess.Popen(_command(*args), cwd=tmp_path, env=_env(), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = [(p, *p.communicate(timeout=120)) for p in procs]
    for n, (proc, out, err) in enumerate(results):
        assert proc.returncode == 0, err
        summary = json.loads(out)
        assert summary["cache"]["write_errors"] == 0, err
        assert summary["files"]["instrumented"] == N_FILES
        assert_same_output(tmp_path / f"out{n}", reference)

    info = stats(cache)
    assert info["index_corrupt_lines"] == 0
    assert info["index_entries"] == info["index_ok"] == cold["scripts"]
    assert info["scripts"] == cold["scripts"]
    assert info["memos"] == N_FILES and info["tests"] == N_FILES
    assert info["temp_files"] == 0
    for path in script_files(cache):
        assert sha256_file(path) == path.stem, path

    fifth = instrument(tree, tmp_path / "out5", cache, "--no-parallel")
    assert_same_output(tmp_path / "out5", reference)
    assert fifth["cache"]["memo_hits"] == N_FILES
    assert fifth["cache"]["memo_misses"] == 0 and fifth["cache"]["script_misses"] == 0
    assert fifth["cache"]["corrupt_entries"] == 0

    # The shared index then holds every key at least once; prune drops the duplicates only.
    lines = sum(1 for path in shards(cache) for raw in path.read_bytes().split(b"\n") if raw.strip())
    pruned = json.loads(cli("cache", "prune", "--cache-dir", cache, "--json", cwd=tmp_path).stdout)
    assert pruned["index_lines_dropped"] == lines - cold["scripts"]
    assert pruned["scripts_removed"] == 0 and pruned["tests_removed"] == 0 and pruned["memos_removed"] == 0
    assert disk_stats(cache)["index_entries"] == cold["scripts"]


# -- 3. damaged index shards ------------------------------------------------------------------


def _lines(path: Path) -> list[bytes]:
    return [raw for raw in path.read_bytes().split(b"\n") if raw.strip()]


def test_truncated_and_corrupted_index_shards_are_detected_rebuilt_and_compacted(
        tree, reference, cold, warm, tmp_path):
    by_size = sorted(shards(warm), key=lambda p: (len(_lines(p)), p.name), reverse=True)
    cut, garbled = by_size[0], by_size[1]
    assert len(_lines(cut)) >= 2
    # Cut the shard in the middle of its second non-empty line (what follows is lost).
    data = cut.read_bytes()
    second = _lines(cut)[1]
    start = data.index(second)
    cut.write_bytes(data[:start + len(second) // 2])
    # Overwrite bytes in the middle of the other shard's first line (same size, no newline).
    data = garbled.read_bytes()
    first = _lines(garbled)[0]
    middle = data.index(first) + len(first) // 2
    junk = b"\x00#GARBAGE\xff\xfe#"
    garbled.write_bytes(data[:middle] + junk + data[middle + len(junk):])

    damaged = stats(warm)
    assert damaged["index_corrupt_lines"] == 2
    lost = cold["scripts"] - damaged["index_entries"]
    assert lost >= 2

    # A warm run never reads the index: all memo hits, nothing to notice.
    warm_run = instrument(tree, tmp_path / "out0", warm, "--no-parallel")
    assert_same_output(tmp_path / "out0", reference)
    assert warm_run["cache"]["memo_hits"] == N_FILES and warm_run["cache"]["corrupt_entries"] == 0

    # Without memos the index is read: the damage is counted and the lost entries rebuilt.
    delete_memos(warm)
    first_run = instrument(tree, tmp_path / "out1", warm, "--no-parallel")
    assert_same_output(tmp_path / "out1", reference)
    assert first_run["cache"]["corrupt_entries"] == 2
    assert first_run["cache"]["script_misses"] == lost
    assert first_run["cache"]["script_hits"] == cold["functions"] - lost
    assert first_run["cache"]["write_errors"] == 0

    # Rebuilt: the next run makes no new script. The damaged lines are still there (the
    # index is append-only) and still counted, until prune.
    delete_memos(warm)
    second_run = instrument(tree, tmp_path / "out2", warm, "--no-parallel")
    assert_same_output(tmp_path / "out2", reference)
    assert second_run["cache"]["script_misses"] == 0
    assert second_run["cache"]["script_hits"] == cold["functions"]
    assert second_run["cache"]["corrupt_entries"] == 2
    rebuilt = disk_stats(warm)
    assert rebuilt["index_entries"] == cold["scripts"]
    assert rebuilt["index_corrupt_lines"] == 2

    pruned = json.loads(cli("cache", "prune", "--cache-dir", warm, "--json", cwd=tmp_path).stdout)
    assert pruned["index_lines_dropped"] == 2
    assert pruned["scripts_removed"] == 0 and pruned["memos_removed"] == 0
    compacted = disk_stats(warm)
    assert compacted["index_corrupt_lines"] == 0
    assert compacted["index_entries"] == cold["scripts"]
    assert all(not raw.startswith(b"\n") and raw.endswith(b"\n") for raw in (p.read_bytes() for p in (cut, garbled)))

    delete_memos(warm)
    third_run = instrument(tree, tmp_path / "out3", warm, "--no-parallel")
    assert_same_output(tmp_path / "out3", reference)
    assert third_run["cache"]["corrupt_entries"] == 0
    assert third_run["cache"]["script_hits"] == cold["functions"]


# -- 4. damaged file memos --------------------------------------------------------------------


def _memo_parts(path: Path) -> tuple[list[bytes], bytes]:
    first, _, body = path.read_bytes().partition(b"\n")
    return first.split(b" "), body


def test_corrupted_and_truncated_memos_are_detected_and_rebuilt(tree, reference, cold, warm, tmp_path):
    flipped, truncated = memo_files(warm)[:2]
    cache = ScriptCache(warm)
    instrumented = 0
    for path in (flipped, truncated):
        memo, _damaged = cache.read_memo(path.name)
        instrumented += sum(1 for item in json.loads(memo.sections[0]) if item[2] == "instrumented")
    data = bytearray(flipped.read_bytes())
    data[-20] ^= 0x01  # a byte of the payload (the instrumented file, last in the memo)
    flipped.write_bytes(bytes(data))
    data = truncated.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    for path in (flipped, truncated):
        assert cache.read_memo(path.name) == (None, True)

    summary = instrument(tree, tmp_path / "out", warm, "--max-parallel", "2")
    assert_same_output(tmp_path / "out", reference)
    counters = summary["cache"]
    assert counters["memo_hits"] == N_FILES - 2
    assert counters["memo_misses"] == 2
    assert counters["corrupt_entries"] == 2
    assert counters["script_misses"] == 0  # rebuilt from the function index
    assert counters["script_hits"] == instrumented

    cache = ScriptCache(warm)
    for path in (flipped, truncated):
        memo, damaged = cache.read_memo(path.name)
        assert memo is not None and not damaged
    again = instrument(tree, tmp_path / "again", warm, "--no-parallel")
    assert_same_output(tmp_path / "again", reference)
    assert again["cache"]["memo_hits"] == N_FILES and again["cache"]["corrupt_entries"] == 0


def _shift_section_boundary(path: Path, first: int, second: int) -> None:
    """Change the section lengths in a memo's first line (the body is left alone)."""
    parts, body = _memo_parts(path)
    lengths = [int(n) for n in parts[5].split(b",")]
    lengths[0] += first
    lengths[1] += second
    parts[5] = ",".join(map(str, lengths)).encode()
    path.write_bytes(b" ".join(parts) + b"\n" + body)


def test_a_kept_memo_serves_one_more_read_and_only_the_memo_on_disk(warm):
    # keep_memos (a pytest session's dry run, then its import hook): a memo read and sealed
    # here serves the next read of its key from memory, once. Each memo file is deleted or
    # changed after the first read: what the second read gives proves where it came from.
    first, dropped, rewritten, unsealed, left = memo_files(warm)[:5]
    cache = ScriptCache(warm)
    for path in (first, dropped, rewritten, unsealed, left):  # sealed by this process' key
        memo, _ = cache.read_memo(path.name)
        cache.put_memo(path.name, memo.header, memo.sections, memo.payload)
    cache.keep_memos(True)
    memo, damaged = cache.read_memo(first.name)
    assert memo is not None and memo.sealed and not damaged
    first.unlink()
    assert cache.read_memo(first.name) == (memo, False)  # from memory
    assert cache.read_memo(first.name) == (None, False)  # once
    # Dropped, or written again under its key, meanwhile: not served from memory.
    assert cache.read_memo(dropped.name)[0] is not None
    cache.drop_memo(dropped.name)
    assert cache.read_memo(dropped.name) == (None, False)
    old, _ = cache.read_memo(rewritten.name)
    assert old is not None
    cache.put_memo(rewritten.name, old.header, old.sections, old.payload + b"# rewritten\n")
    assert cache.read_memo(rewritten.name)[0].payload == old.payload + b"# rewritten\n"
    # A memo this machine did not seal is checked at each read: never kept.
    parts, body = _memo_parts(unsealed)
    parts[3] = b"-"
    unsealed.write_bytes(b" ".join(parts) + b"\n" + body)
    memo, _ = cache.read_memo(unsealed.name)
    assert memo is not None and not memo.sealed
    unsealed.unlink()
    assert cache.read_memo(unsealed.name) == (None, False)
    # Turned off: what was kept is dropped.
    assert cache.read_memo(left.name)[0] is not None
    left.unlink()
    cache.keep_memos(False)
    assert cache.read_memo(left.name) == (None, False)


def test_a_damaged_section_length_in_a_memo_header_is_detected(tree, reference, warm, tmp_path):
    for path in memo_files(warm):
        _shift_section_boundary(path, 0, +1)
    summary = instrument(tree, tmp_path / "out", warm, "--no-parallel")
    assert_same_output(tmp_path / "out", reference)
    assert summary["cache"]["corrupt_entries"] == N_FILES


def test_a_damaged_function_list_length_does_not_crash_a_json_run(tree, reference, warm, tmp_path):
    path = memo_files(warm)[0]
    _shift_section_boundary(path, +1, -1)
    proc = cli(tree, "-o", tmp_path / "out", "--cache-dir", warm, "--target", "runtime", "--json",
               "--no-parallel", cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert_same_output(tmp_path / "out", reference)
    assert json.loads(proc.stdout)["cache"]["corrupt_entries"] == 1


def test_prune_removes_a_memo_with_a_damaged_function_list_length(warm, tmp_path):
    path = memo_files(warm)[0]
    _shift_section_boundary(path, +1, -1)
    proc = cli("cache", "prune", "--cache-dir", warm, "--json", cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["memos_removed"] == 1
    assert not path.exists()


# -- 5. a tampered or missing insertion script ------------------------------------------------


def test_tampered_and_missing_scripts_are_detected_and_rewritten(tree, reference, cold, warm, tmp_path):
    scripts = script_files(warm)
    tampered, missing = scripts[len(scripts) // 3], scripts[2 * len(scripts) // 3]
    original = tampered.read_bytes()
    tampered.write_bytes(original.replace(b"span", b"spam", 1) + b"# edited\n")
    assert sha256_file(tampered) != tampered.stem
    missing.unlink()

    # With the memos there, the scripts are not even read: the output comes from the memos.
    hits = instrument(tree, tmp_path / "out0", warm, "--no-parallel")
    assert_same_output(tmp_path / "out0", reference)
    assert hits["cache"]["memo_hits"] == N_FILES and hits["cache"]["corrupt_entries"] == 0

    delete_memos(warm)  # so that the function index is consulted
    summary = instrument(tree, tmp_path / "out", warm, "--no-parallel")
    assert_same_output(tmp_path / "out", reference)
    assert summary["cache"]["corrupt_entries"] == 2
    assert summary["cache"]["script_misses"] == 2
    assert summary["cache"]["script_hits"] == cold["functions"] - 2
    assert tampered.read_bytes() == original and sha256_file(tampered) == tampered.stem
    assert missing.is_file() and sha256_file(missing) == missing.stem

    delete_memos(warm)
    again = instrument(tree, tmp_path / "again", warm, "--no-parallel")
    assert again["cache"]["corrupt_entries"] == 0 and again["cache"]["script_misses"] == 0


# -- 6. a cache that cannot be written --------------------------------------------------------

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _drop_root_overrides() -> None:
    """In the child, before exec: drop the capabilities that let root write where the mode
    bits say no (a root's process gets its bounding set on exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _set_writable(folder: Path, writable: bool) -> None:
    for path in [*files_under(folder), *(p for p in folder.rglob("*") if p.is_dir()), folder]:
        if path.is_dir():
            path.chmod(0o755 if writable else 0o555)
        else:
            path.chmod(0o644 if writable else 0o444)


@pytest.fixture
def read_only(tmp_path: Path):
    """(make(folder), preexec_fn): ``make`` turns a folder read-only for the CLI subprocesses
    started with ``preexec_fn``. As root, mode bits stop nothing, so the subprocess runs
    without CAP_DAC_OVERRIDE; skipped where neither works."""
    preexec = _drop_root_overrides if os.geteuid() == 0 else None
    made: list[Path] = []
    probe = tmp_path / "probe"
    probe.mkdir()
    _set_writable(probe, False)
    made.append(probe)
    try:
        check = subprocess.run([sys.executable, "-c", f"open({str(probe / 'x')!r}, 'w')"],
                               preexec_fn=preexec, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot start a process without write permission overrides: {exc}")
    if check.returncode == 0 or "PermissionError" not in check.stderr:
        _set_writable(probe, True)
        pytest.skip("cannot make a folder read-only for a subprocess here")

    def make(folder: Path) -> None:
        _set_writable(folder, False)
        made.append(folder)

    yield make, preexec
    for folder in made:
        _set_writable(folder, True)


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line]


def test_read_only_warm_cache_is_still_read_and_a_miss_only_warns(tree, reference, warm, tmp_path, read_only):
    make, preexec = read_only
    tree2 = tmp_path / "tree2"
    shutil.copytree(tree, tree2)
    (tree2 / "extra.py").write_text(_source(99), encoding="utf-8")
    ref2 = tmp_path / "ref2"
    cli(tree2, "-o", ref2, "--no-cache", "--target", "runtime", "-q", cwd=tmp_path)
    expected = read_tree(ref2)
    assert expected == dict(reference, **{"extra.py": expected["extra.py"]})

    make(warm)
    before = snapshot(warm)
    proc = cli(tree2, "-o", tmp_path / "out", "--cache-dir", warm, "--target", "runtime", "--json",
               cwd=tmp_path, preexec_fn=preexec)
    assert proc.returncode == 0
    assert_same_output(tmp_path / "out", expected)
    summary = json.loads(proc.stdout)
    assert summary["cache"]["memo_hits"] == N_FILES
    assert summary["cache"]["write_errors"] >= 1
    assert summary["cache"]["warning"]
    lines = _warnings(proc.stderr)
    assert len(lines) == 1 and "cache" in lines[0] and str(warm) in lines[0], proc.stderr
    assert snapshot(warm) == before


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_read_only_empty_cache_warns_once_and_exits_0(tree, reference, tmp_path, read_only, parallel):
    make, preexec = read_only
    cache = tmp_path / "cache"
    cache.mkdir()
    make(cache)
    proc = cli(tree, "-o", tmp_path / "out", "--cache-dir", cache, "--target", "runtime", "--json",
               *(["--max-parallel", "2"] if parallel else ["--no-parallel"]), cwd=tmp_path, preexec_fn=preexec)
    assert proc.returncode == 0
    assert_same_output(tmp_path / "out", reference)
    summary = json.loads(proc.stdout)
    assert summary["cache"]["memo_misses"] == N_FILES
    assert summary["cache"]["write_errors"] >= 1
    lines = _warnings(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("telemetry-inject: warning:") and str(cache) in lines[0]
    assert list(cache.iterdir()) == []


def test_cache_below_a_regular_file_warns_once_and_exits_0(tree, reference, tmp_path):
    """Works as root too: creating a folder below a regular file fails (ENOTDIR)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder\n")
    cache = blocker / "cache"
    proc = cli(tree, "-o", tmp_path / "out", "--cache-dir", cache, "--target", "runtime", "--json",
               "--no-parallel", cwd=tmp_path)
    assert proc.returncode == 0
    assert_same_output(tmp_path / "out", reference)
    summary = json.loads(proc.stdout)
    assert summary["cache"]["write_errors"] >= 1
    assert summary["cache"]["memo_misses"] == N_FILES
    lines = _warnings(proc.stderr)
    assert len(lines) == 1 and "cannot write the cache" in lines[0], proc.stderr
    assert blocker.read_text() == "not a folder\n"


def test_script_cache_below_a_regular_file_counts_failed_writes(tmp_path):
    from pytest_telemetry_inject.engine.cache import IndexEntry

    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    cache = ScriptCache(blocker / "cache")
    cache.put_memo("ab" * 32, {"status": "unchanged"}, [b"[]", b"null"], b"")
    cache.store([IndexEntry("cd" * 32, "ok", script="ef" * 32, language="python")], {"ef" * 32: "text"},
                ("python", "test_x_0.py", "text"))
    # ENOTDIR will not go away: after the first failure the cache stops trying to write.
    assert cache.counters.write_errors == 1 and cache.writable is False
    assert "cannot write the cache at" in cache.write_error and str(blocker) in cache.write_error
    assert cache.read_memo("ab" * 32) == (None, False)
    assert cache.lookup("cd" * 32) is None  # nothing was stored
    assert ScriptCache(blocker / "cache").stats()["exists"] is False


def test_cache_path_that_is_a_file_is_a_usage_error(tree, tmp_path):
    cache = tmp_path / "cache-file"
    cache.write_text("x")
    proc = cli(tree, "-o", tmp_path / "out", "--cache-dir", cache, "--target", "runtime", "--no-parallel",
               cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "is not a folder" in proc.stderr
    assert not (tmp_path / "out").exists()
