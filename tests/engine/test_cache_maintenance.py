"""``telemetry-inject cache stats|clear|prune`` against what is really on disk.

The cache is filled by the real CLI in a subprocess; the checks read the files themselves
(the memo and index formats are decoded here independently of the package's reader).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest

from pytest_telemetry_inject import __version__
from pytest_telemetry_inject.engine.cache import IndexEntry, ScriptCache

N_FILES = 12
DAY = 86400.0


# -- helpers ----------------------------------------------------------------------------------


def _source(i: int) -> str:
    return f'''"""Module {i}."""
import asyncio


def shared_helper(x):
    return x * 2


def compute_{i}(a, b={i}):
    total = a + b
    if total > {i * 2}:
        total -= {i}
    return total


class Thing{i}:
    def __init__(self, n):
        self.n = n + {i}

    def walk(self):
        def step(k):
            return k * {i + 1}
        return [step(k) for k in range(self.n)]


def numbers_{i}(limit):
    for n in range(limit):
        yield n + {i}


async def load_{i}():
    await asyncio.sleep(0)
    return {i}
'''


def make_tree(root: Path, n: int = N_FILES) -> Path:
    for i in range(n):
        folder = root / ("lib" if i % 2 else "app")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"m{i:02d}.py").write_text(_source(i), encoding="utf-8")
    return root


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_INJECT_")}


def cli(*args: object, cwd: Path, preexec_fn=None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pytest_telemetry_inject.cli", *map(str, args)], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=120, preexec_fn=preexec_fn)
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def instrument(tree: Path, out: Path, cache: Path) -> dict:
    return json.loads(cli(tree, "-o", out, "--cache-dir", cache, "--target", "runtime", "--json",
                          "--no-parallel", cwd=tree.parent).stdout)


def cache_command(action: str, cache: Path, *extra: object) -> dict:
    return json.loads(cli("cache", action, "--cache-dir", cache, "--json", *extra, cwd=cache.parent).stdout)


def disk_stats(cache: Path) -> dict:
    """What ``cache stats`` reports, without starting a process (where the command is not the point)."""
    return ScriptCache(cache).stats()


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def memo_files(cache: Path) -> list[Path]:
    return files_under(cache / "metadata" / "files")


def decode_memo(data: bytes) -> tuple[dict, list[bytes], bytes]:
    """The memo format, read here without the package: ``TI-MEMO <format> <crc32, 8 hex
    digits> <seal: 64 hex digits, or -> <header length> <section lengths, comma-separated, or
    ->``, a newline, then the header JSON, the sections and the payload; the crc32 covers the
    two lengths fields, a newline and everything after the first line."""
    first, _, body = data.partition(b"\n")
    magic, fmt, crc, mark, head_length, lengths = first.split(b" ")
    assert magic == b"TI-MEMO" and fmt == b"3" and (mark == b"-" or len(mark) == 64)
    assert len(crc) == 8 and int(crc, 16) == zlib.crc32(head_length + b" " + lengths + b"\n" + body)
    offset = int(head_length)
    header = json.loads(body[:offset])
    sections = []
    for length in [int(n) for n in lengths.split(b",")] if lengths != b"-" else []:
        sections.append(body[offset:offset + length])
        offset += length
    return header, sections, body[offset:]


def encode_memo(header: dict, sections: list[bytes], payload: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    body = head + b"".join(sections) + payload
    shape = b"%d %s" % (len(head), (",".join(str(len(s)) for s in sections) or "-").encode())
    return b"TI-MEMO 3 %08x - %s\n" % (zlib.crc32(shape + b"\n" + body), shape) + body


INDEX_FIELDS = ("key", "status", "template", "script", "language", "qualname", "origin", "edits", "reason",
                "version")


def index_records(cache: Path) -> list[dict]:
    """Every index line, read here without the package: ``<crc32 of the JSON, 8 hex digits>
    <JSON array of the fields>``; each must be intact and in the shard of its key."""
    records = []
    for shard in sorted((cache / "metadata" / "index").glob("*.jsonl")):
        for raw in shard.read_bytes().split(b"\n"):
            if not raw.strip():
                continue
            crc, space, text = raw[:8], raw[8:9], raw[9:]
            assert space == b" " and int(crc, 16) == zlib.crc32(text)
            record = dict(zip(INDEX_FIELDS, json.loads(text), strict=True))
            assert shard.name == record["key"][:2] + ".jsonl"
            records.append(record)
    return records


def write_script(cache: Path, text: str) -> Path:
    sha = hashlib.sha256(text.encode()).hexdigest()
    path = cache / "scripts" / "python" / sha[:2] / f"{sha}.script"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _reads_refresh_atime() -> bool:
    """Whether reading a file with an old access time updates it here (relatime, the Linux
    default, or strictatime), as it does where pytest keeps its temporary folders."""
    with tempfile.NamedTemporaryFile(delete=False) as handle:
        handle.write(b"x")
    try:
        old = time.time() - 40 * DAY
        os.utime(handle.name, (old, old))
        with open(handle.name, "rb") as again:
            again.read()
        return os.stat(handle.name).st_atime > old + DAY
    finally:
        os.unlink(handle.name)


READS_REFRESH_ATIME = _reads_refresh_atime()


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("maintenance") / "tree")


@pytest.fixture(scope="module")
def reference(tree: Path) -> dict[str, bytes]:
    ref = tree.parent / "ref"
    cli(tree, "-o", ref, "--no-cache", "--target", "runtime", "-q", cwd=tree.parent)
    return read_tree(ref)


@pytest.fixture(scope="module")
def cold(tree: Path, reference: dict[str, bytes]) -> dict:
    cache = tree.parent / "cold-cache"
    summary = instrument(tree, tree.parent / "cold-out", cache)
    assert read_tree(tree.parent / "cold-out") == reference
    return {"cache": cache, "functions": summary["functions"]["instrumented"],
            "scripts": summary["cache"]["script_misses"]}


@pytest.fixture
def warm(cold: dict, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(cold["cache"], cache)
    return cache


# -- stats ------------------------------------------------------------------------------------


def test_stats_match_what_is_on_disk(warm, cold):
    info = cache_command("stats", warm)
    scripts = files_under(warm / "scripts")
    tests = files_under(warm / "tests")
    memos = memo_files(warm)
    shards = sorted((warm / "metadata" / "index").glob("*.jsonl"))
    records = index_records(warm)
    assert info["path"] == str(warm) and info["exists"] is True and info["format"] == 3
    assert info["scripts"] == len(scripts) == cold["scripts"]
    assert info["tests"] == len(tests) == N_FILES
    assert info["memos"] == len(memos) == N_FILES
    assert info["temp_files"] == 0
    assert info["index_entries"] == len({r["key"] for r in records}) == cold["scripts"]
    assert info["index_ok"] == sum(1 for r in records if r["status"] == "ok")
    assert info["index_failed"] == 0 and info["index_corrupt_lines"] == 0
    assert info["bytes"] == sum(p.stat().st_size for p in [*scripts, *tests, *memos, *shards])

    # What the files hold agrees with their names and with each other.
    for path in scripts:
        assert path.parent.name == path.stem[:2]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem
    for record in records:
        assert record["version"] == __version__ and record["language"] == "python"
        assert record["origin"] == "template" and record["edits"]
        assert (warm / "scripts" / "python" / record["script"][:2] / f"{record['script']}.script").is_file()
    for path in memos:
        assert path.parent.name == path.name[:2] and len(path.name) == 64
        header, sections, payload = decode_memo(path.read_bytes())
        assert header["version"] == __version__ and header["status"] == "instrumented"
        test_module = warm / "tests" / "python" / header["tests"]
        assert test_module.is_file() and header["tests"].endswith(f"_{path.name[:16]}.cases")
        shas = [item[5] for item in json.loads(sections[0]) if item[2] == "instrumented"]
        assert shas and all(sha in test_module.read_text() for sha in shas)
        assert payload.startswith(b'"""Module ')

    text = cli("cache", "stats", "--cache-dir", warm, cwd=warm.parent).stdout
    assert f"scripts: {cold['scripts']}" in text and f"memos: {N_FILES}" in text


def test_stats_clear_and_prune_of_a_missing_cache_create_nothing(tmp_path):
    cache = tmp_path / "nothing-here"
    info = cache_command("stats", cache)
    assert info["exists"] is False
    assert [info[k] for k in ("scripts", "tests", "memos", "temp_files", "index_entries", "bytes")] == [0] * 6
    assert cache_command("clear", cache)["files_removed"] == 0
    assert set(cache_command("prune", cache).values()) == {str(cache), 0}
    assert not cache.exists()


def test_cache_commands_find_the_cache_from_the_project_settings(tree, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(tree, project / "src")
    (project / "pyproject.toml").write_text('[tool.telemetry-inject]\ncache-dir = "build/ti-cache"\n')
    cache = project / "build" / "ti-cache"
    instrument(project / "src", tmp_path / "out", cache)
    info = json.loads(cli("cache", "stats", "--root", project, "--json", cwd=tmp_path).stdout)
    assert info["path"] == str(cache)
    assert info["memos"] == N_FILES


# -- clear ------------------------------------------------------------------------------------


def test_clear_removes_everything_and_the_next_run_rebuilds(tree, reference, cold, warm, tmp_path):
    before = cache_command("stats", warm)
    cleared = cache_command("clear", warm)
    assert cleared["path"] == str(warm) and cleared["files_removed"] >= before["scripts"] + 2 * N_FILES
    left = [str(p.relative_to(warm)) for p in files_under(warm)]
    assert left in ([], ["metadata/index.lock"])  # the lock it held is all that may remain
    after = cache_command("stats", warm)
    assert [after[k] for k in ("scripts", "tests", "memos", "index_entries", "bytes")] == [0] * 5

    summary = instrument(tree, tmp_path / "out", warm)
    assert read_tree(tmp_path / "out") == reference
    assert summary["cache"]["memo_misses"] == N_FILES and summary["cache"]["memo_hits"] == 0
    assert summary["cache"]["script_misses"] == cold["scripts"]
    assert (warm / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert (warm / ".gitignore").is_file()
    rebuilt = cache_command("stats", warm)
    assert {k: rebuilt[k] for k in before if k != "bytes"} == {k: before[k] for k in before if k != "bytes"}


def test_clear_reports_the_number_of_files_it_removed(warm):
    before = len(files_under(warm))
    cleared = cache_command("clear", warm)
    assert cleared["files_removed"] == before - len(files_under(warm))


def test_the_same_cache_object_can_be_written_after_clear(tmp_path):
    cache = ScriptCache(tmp_path / "cache")
    key = "ab" * 32
    cache.put_memo(key, {"status": "unchanged"}, [b"[]", b"null"], b"payload")
    assert cache.read_memo(key)[0] is not None
    assert cache.clear() >= 1
    assert cache.read_memo(key) == (None, False)
    cache.put_memo(key, {"status": "unchanged"}, [b"[]", b"null"], b"payload")
    assert cache.counters.write_errors == 0, cache.write_error
    memo, damaged = cache.read_memo(key)
    assert memo is not None and memo.payload == b"payload" and not damaged
    assert (tmp_path / "cache" / "CACHEDIR.TAG").is_file()


# -- prune ------------------------------------------------------------------------------------


def test_prune_removes_what_nothing_references_and_keeps_what_is_used(tree, reference, cold, warm, tmp_path):
    before = disk_stats(warm)
    # An orphan script and an orphan generated test module.
    orphan_script = write_script(warm, "# an insertion script nothing refers to\n")
    orphan_test = warm / "tests" / "python" / "gone_0123456789abcdef.cases"
    orphan_test.write_text("def test_nothing():\n    pass\n")
    # An index entry of another version (its script is used by nothing else), and a duplicate line.
    old_script = write_script(warm, "# the script of an older version\n")
    old = IndexEntry("ee" * 32, "ok", template="with/1", script=old_script.stem, language="python",
                     qualname="f", edits=[], version="0.0.0-old")
    shard = warm / "metadata" / "index" / "ee.jsonl"
    with open(shard, "ab") as handle:
        handle.write(b"\n" + old.to_line() + b"\n")
    some_shard = sorted((warm / "metadata" / "index").glob("*.jsonl"))[0]
    line = [raw for raw in some_shard.read_bytes().split(b"\n") if raw.strip()][0]
    with open(some_shard, "ab") as handle:
        handle.write(b"\n" + line + b"\n")
    # A memo of another version, and the test module only it refers to.
    old_memo = warm / "metadata" / "files" / "dd" / ("dd" * 32)
    old_memo.parent.mkdir(parents=True, exist_ok=True)
    old_memo.write_bytes(encode_memo({"status": "unchanged", "version": "0.0.0-old", "tests": "old_0.cases"},
                                     [b"[]", b"null"], b""))
    old_test = warm / "tests" / "python" / "old_0.cases"
    old_test.write_text("def test_old():\n    pass\n")
    assert disk_stats(warm)["index_entries"] == before["index_entries"] + 1

    pruned = cache_command("prune", warm)
    assert pruned == {"path": str(warm), "memos_removed": 1, "index_lines_dropped": 2, "scripts_removed": 2,
                      "tests_removed": 2, "code_removed": 0, "temp_files_removed": 0}
    for path in (orphan_script, orphan_test, old_script, old_memo, old_test):
        assert not path.exists(), path
    after = disk_stats(warm)
    assert {k: after[k] for k in before if k != "bytes"} == {k: before[k] for k in before if k != "bytes"}

    # What was kept is all that is needed: all memo hits, and without memos all script hits.
    summary = instrument(tree, tmp_path / "out", warm)
    assert read_tree(tmp_path / "out") == reference
    assert summary["cache"]["memo_hits"] == N_FILES
    for path in memo_files(warm):
        path.unlink()
    summary = instrument(tree, tmp_path / "out2", warm)
    assert read_tree(tmp_path / "out2") == reference
    assert summary["cache"]["script_misses"] == 0 and summary["cache"]["script_hits"] == cold["functions"]
    assert summary["cache"]["corrupt_entries"] == 0
    # A second prune has nothing left to do.
    assert set(cache_command("prune", warm).values()) == {str(warm), 0}


def _age(paths: list[Path], accessed_days: float, modified_days: float) -> None:
    now = time.time()
    for path in paths:
        os.utime(path, (now - accessed_days * DAY, now - modified_days * DAY))


def test_prune_removes_memos_unused_for_max_age_days(tree, reference, warm, tmp_path):
    memos = memo_files(warm)
    old = memos[:3]
    headers = [ScriptCache(warm).read_memo(p.name)[0].header for p in old]
    functions = sum(h["counts"]["instrumented"] for h in headers)
    _age(old, 40, 40)
    _age(memos[3:], 1, 40)  # written long ago but read yesterday: in use

    pruned = cache_command("prune", warm, "--max-age-days", 30)
    assert pruned["memos_removed"] == 3
    assert pruned["tests_removed"] == 3  # their generated test modules: only memos refer to those
    assert pruned["scripts_removed"] == 0  # the function index still refers to every script
    assert [p for p in old if p.exists()] == []
    assert all(p.exists() for p in memos[3:])
    assert not any((warm / "tests" / "python" / h["tests"]).exists() for h in headers)

    summary = instrument(tree, tmp_path / "out", warm)
    assert read_tree(tmp_path / "out") == reference
    assert summary["cache"]["memo_misses"] == 3
    assert summary["cache"]["script_hits"] == functions and summary["cache"]["script_misses"] == 0
    assert all(p.exists() for p in old)
    assert disk_stats(warm)["tests"] == N_FILES


def test_prune_keeps_memos_used_recently_or_younger_than_max_age(warm):
    memos = memo_files(warm)
    before = disk_stats(warm)
    _age(memos[:4], 0, 45)  # written 45 days ago, read today
    _age(memos[4:], 40, 40)  # 40 days: younger than --max-age-days 60
    pruned = cache_command("prune", warm, "--max-age-days", 60)
    assert set(pruned.values()) == {str(warm), 0}
    assert all(p.exists() for p in memos)
    after = disk_stats(warm)
    assert {k: after[k] for k in before if k != "bytes"} == {k: before[k] for k in before if k != "bytes"}


# -- a read-only cache ------------------------------------------------------------------------


def _drop_root_overrides() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
    bounding set (prctl PR_CAPBSET_DROP), so that mode bits stop a root's process too."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _set_writable(folder: Path, writable: bool) -> None:
    for path in [*folder.rglob("*"), folder]:
        if path.is_dir():
            path.chmod(0o755 if writable else 0o555)
        elif path.is_file():
            path.chmod(0o644 if writable else 0o444)


@pytest.fixture
def read_only_warm(warm: Path, tmp_path: Path):
    """The warm cache, read-only for CLI subprocesses started with the preexec_fn given."""
    preexec = _drop_root_overrides if os.geteuid() == 0 else None
    _set_writable(warm, False)
    try:
        try:
            probe = subprocess.run([sys.executable, "-c", f"open({str(warm / 'x')!r}, 'w')"],
                                   preexec_fn=preexec, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"cannot start a process without write permission overrides: {exc}")
        if probe.returncode == 0 or "PermissionError" not in probe.stderr:
            pytest.skip("cannot make a folder read-only for a subprocess here")
        yield warm, preexec
    finally:
        _set_writable(warm, True)


def test_stats_of_a_read_only_cache(read_only_warm, cold):
    cache, preexec = read_only_warm
    proc = cli("cache", "stats", "--cache-dir", cache, "--json", cwd=cache.parent, preexec_fn=preexec)
    info = json.loads(proc.stdout)
    assert info["memos"] == N_FILES and info["scripts"] == cold["scripts"]
    assert info["index_entries"] == cold["scripts"] and info["index_corrupt_lines"] == 0


@pytest.mark.parametrize("action", ["prune", "clear"])
def test_prune_and_clear_of_a_read_only_cache_fail_with_one_error_line(read_only_warm, action):
    cache, preexec = read_only_warm
    before = {str(p): p.read_bytes() for p in files_under(cache)}
    proc = cli("cache", action, "--cache-dir", cache, cwd=cache.parent, preexec_fn=preexec, check=False)
    assert {str(p): p.read_bytes() for p in files_under(cache)} == before  # nothing was lost
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("telemetry-inject: error:") and len(proc.stderr.splitlines()) == 1
