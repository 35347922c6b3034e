"""Seals: HMAC-SHA256 tags made with a secret that never leaves this machine.

The cache folder is meant to travel (a CI cache restored on another runner, a cache copied
with a project), so whoever can write it must not be able to make this tool run or write
anything it did not compute. What the cache holds falls in two kinds:

- **checkable** entries (file memos, index edits) are checked against the original source
  before use (``languages``' ``check_cached_output``, the pipeline's re-planning); a memo
  that passed that check, or that this machine computed itself, carries a seal, so a warm
  run on this machine checks the seal instead of the whole text;
- **executable** entries (compiled code objects, generated test modules, the records of
  test cases that passed) are used only with a valid seal; without one they are rebuilt.

The key is 32 random bytes in the user's cache folder (``pytest-telemetry-inject/cache.key``
under ``$XDG_CACHE_HOME`` or ``~/.cache``; ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%``
on Windows), created on first use with mode 0600. ``TELEMETRY_INJECT_KEY_FILE`` names
another file; ``TELEMETRY_INJECT_CACHE_KEY`` gives the secret itself (a CI secret shared by
the runners of one repository, so that their caches stay sealed across runners). A key file
that is a symbolic link, not a regular file, not the user's own, readable by others, or not
32 bytes long is not used: then nothing is sealed, every memo is checked on every use, and
compiled code and generated tests are rebuilt (``problem()`` says why, once).

A seal covers a kind, the name the entry is stored under and its bytes, so an entry cannot
be passed off as another kind or moved to another name.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import sys
import threading

KEY_BYTES = 32
SEAL_BYTES = 32
_lock = threading.Lock()
_state: dict[str, object] = {}


def user_folder() -> str:
    """This tool's folder in the user's cache folder (the key's, and the cache of files that
    belong to no project)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "pytest-telemetry-inject")


def key_path() -> str:
    """Where the key lives (it may not exist yet)."""
    return os.environ.get("TELEMETRY_INJECT_KEY_FILE") or os.path.join(user_folder(), "cache.key")


def _load() -> tuple[bytes | None, str]:
    secret = os.environ.get("TELEMETRY_INJECT_CACHE_KEY")
    if secret:
        if len(secret) < 16:
            return None, "TELEMETRY_INJECT_CACHE_KEY is shorter than 16 characters: it is not used"
        return hashlib.sha256(b"pytest-telemetry-inject key\0" + secret.encode("utf-8", "surrogatepass")).digest(), ""
    path = key_path()
    try:
        return _read_key(path), ""
    except FileNotFoundError:
        pass
    except _KeyRefused as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot read the cache key {path}: {exc.strerror or exc}"
    try:
        _create_key(path)
        return _read_key(path), ""
    except _KeyRefused as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot create the cache key {path}: {exc.strerror or exc}"


class _KeyRefused(Exception):
    pass


def _read_key(path: str) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if os.path.islink(path):
            raise _KeyRefused(f"the cache key {path} is a symbolic link: it is not used") from None
        raise exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _KeyRefused(f"the cache key {path} is not a regular file: it is not used")
        if hasattr(os, "getuid"):
            if info.st_uid != os.getuid():
                raise _KeyRefused(f"the cache key {path} belongs to another user: it is not used")
            if info.st_mode & 0o077:
                raise _KeyRefused(f"the cache key {path} can be read by others (mode "
                                  f"{stat.S_IMODE(info.st_mode):o}): it is not used; make it 0600")
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise _KeyRefused(f"the cache key {path} is not {KEY_BYTES} bytes long: it is not used")
    return data


def _create_key(path: str) -> None:
    """Write a new key so that no reader ever sees a partial one: a private temporary file,
    then a hard link to the final name (which fails if another process won the race)."""
    import secrets  # (only to make a key: a session that finds one does not import it)

    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    temporary = os.path.join(folder, f".key-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, secrets.token_bytes(KEY_BYTES))
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process made it first: use theirs
    except OSError:
        # No hard links on this file system: a rename (which would replace a key written in
        # the meantime, so only when there is none yet).
        if not os.path.exists(path):
            os.replace(temporary, path)
    finally:
        try:
            os.unlink(temporary)
        except OSError:
            pass


def key() -> bytes | None:
    """This machine's key, or None when there is none to be had (see ``problem``)."""
    with _lock:
        if "key" not in _state:
            _state["key"], _state["problem"] = _load()
        return _state["key"]  # type: ignore[return-value]


def problem() -> str:
    """Why there is no key ('' when there is one)."""
    key()
    return str(_state.get("problem") or "")


def forget() -> None:
    """Read the key again on next use (tests change the environment that names it)."""
    with _lock:
        _state.clear()


def seal(kind: bytes, name: str, *parts: bytes) -> bytes | None:
    """The seal of an entry of ``kind`` stored as ``name``: 32 bytes, or None without a key."""
    secret = key()
    if secret is None:
        return None
    mac = hmac.new(secret, kind + b"\0" + name.encode("utf-8", "surrogatepass") + b"\0", hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()


def verify(tag: bytes, kind: bytes, name: str, *parts: bytes) -> bool:
    """Whether ``tag`` is this machine's seal of the entry (False without a key)."""
    expected = seal(kind, name, *parts)
    return expected is not None and len(tag) == SEAL_BYTES and hmac.compare_digest(tag, expected)
