"""Opening the files a user hands gemma-ref: every failure is one GemmaRefError naming the file.

A checkpoint's files (config.json, tokenizer.model, weights, index, preprocessor and
template files), images, GGUF and .npz files must be regular files. They are opened
without waiting (O_NONBLOCK: opening a FIFO otherwise waits for a writer, possibly
forever) and checked before anything reads them: a missing file, a directory, a FIFO or
a device where a file belongs, or a file the process may not read, is one line that says
which. Text streamed in (a prompt file, `--file <(command)`) may be a pipe (`pipes=True`);
a FIFO that no one writes to then reads as empty.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import GemmaRefError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def unreadable(path, e: OSError) -> GemmaRefError:
    """The one-line error for an OSError met reading `path` (permissions, I/O, ...)."""
    return GemmaRefError(f"{path}: cannot read it ({e.strerror or e})")


def _a(what: str) -> str:
    return ("an " if what[:1] in "aeiou" else "a ") + what


def open_file(path, what: str = "file", *, missing: str | None = None,
              pipes: bool = False) -> BinaryIO:
    """`path` opened for reading in binary, if it is a regular file (or, with pipes=True, a
    pipe or device too); else a GemmaRefError: "PATH: no such WHAT" (or "PATH: MISSING"),
    "PATH: a directory, not a WHAT", "PATH: cannot read it (Permission denied)"."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise GemmaRefError(f"{path}: {missing or 'no such ' + what}") from None
    except IsADirectoryError:  # where a directory cannot be opened read-only
        raise GemmaRefError(f"{path}: a directory, not {_a(what)}") from None
    except OSError as e:
        raise unreadable(path, e) from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or (pipes and not stat.S_ISDIR(mode))):
        os.close(fd)
        kind = next((k for test, k in _KINDS if test(mode)), "not a regular file")
        raise GemmaRefError(f"{path}: {kind}, not {_a(what)}")
    os.set_blocking(fd, True)  # a pipe's writer may be slower than us: wait for its data
    return open(fd, "rb")


def check_file(path, what: str = "file", *, missing: str | None = None) -> Path:
    """`path`, checked as open_file checks it, for a reader that opens it by name itself
    (PIL, np.load, the gguf package, np.memmap)."""
    open_file(path, what, missing=missing).close()
    return Path(path)


def read_bytes(path, what: str = "file", *, missing: str | None = None, pipes: bool = False) -> bytes:
    """The whole content of `path`, checked as open_file checks it."""
    with open_file(path, what, missing=missing, pipes=pipes) as f:
        try:
            return f.read()
        except OSError as e:
            raise unreadable(path, e) from None


def read_text(path, what: str = "file", *, missing: str | None = None) -> str:
    """The UTF-8 text of `path` with universal newlines, as Python's text files read it
    (UnicodeDecodeError is the caller's to word)."""
    with open_file(path, what, missing=missing) as f, io.TextIOWrapper(f, encoding="utf-8") as t:
        try:
            return t.read()
        except OSError as e:
            raise unreadable(path, e) from None
