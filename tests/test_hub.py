"""Hub resolution, offline, against a Hugging Face cache layout built by the test."""

import shutil

import numpy as np
import pytest
from huggingface_hub import constants, errors

from gemma_ref import GemmaRefError, Model, hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_cache(root, repo_id, checkpoint_dir):
    """models--owner--name/{refs/main, snapshots/<commit>/...} as huggingface_hub writes it."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for f in checkpoint_dir.iterdir():
        shutil.copy(f, snap / f.name)
    return snap


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_alias_resolves_from_cache_offline(tmp_path, tiny_dirs, offline):
    snap = fake_cache(tmp_path, "google/gemma-2b", tiny_dirs["gemma1-mqa"])
    assert hub.resolve("2b", cache_dir=tmp_path) == snap
    m = Model.from_pretrained("2b", cache_dir=tmp_path)
    ref = Model.from_pretrained(tiny_dirs["gemma1-mqa"])
    np.testing.assert_array_equal(m.forward(np.arange(2, 9)), ref.forward(np.arange(2, 9)))
    assert m.source == "2b" and not m.instruction_tuned


def test_repo_id_resolves_and_it_models_stop_at_end_of_turn(tmp_path, tiny_dirs, offline):
    fake_cache(tmp_path, "google/gemma-2b-it", tiny_dirs["gemma1-mqa"])
    m = Model.from_pretrained("google/gemma-2b-it", cache_dir=tmp_path)
    assert m.instruction_tuned and m.tokenizer.end_of_turn_id in m._default_stop


def test_offline_without_cache(tmp_path, offline):
    with pytest.raises(GemmaRefError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE"):
        hub.resolve("7b", cache_dir=tmp_path)


def test_gated_repo_without_token(tmp_path, monkeypatch):
    class FakeResponse:
        status_code, headers, url, request = 401, {}, "https://huggingface.co", None

    def gated(*a, **k):
        raise errors.GatedRepoError("gated", response=FakeResponse())

    monkeypatch.setattr("huggingface_hub.snapshot_download", gated)
    with pytest.raises(GemmaRefError, match="gated.*HF_TOKEN"):
        hub.resolve("7b-it", cache_dir=tmp_path)


def test_unknown_alias_and_missing_path():
    with pytest.raises(GemmaRefError, match="unknown model 'gemma-9000'.*aliases"):
        hub.resolve("gemma-9000")
    with pytest.raises(GemmaRefError, match="no such file or directory"):
        hub.resolve("./does/not/exist")
    with pytest.raises(GemmaRefError, match="no such file or directory"):
        hub.resolve("missing.gguf")


def test_every_alias_names_a_google_repo():
    for alias, repo in hub.ALIASES.items():
        assert repo.startswith("google/"), alias
    for size in ["2-2b", "2-9b", "2-27b", "3-270m", "3-1b", "3-4b", "3-12b", "3-27b"]:
        assert size in hub.ALIASES and size + "-it" in hub.ALIASES


def test_gemma4_alias_with_only_tokenizer_json(tmp_path, offline):
    """Gemma 4 repos ship tokenizer.json and no tokenizer.model: the alias resolves and the
    model gets its tokenizer (and stops at <turn|>-style end of turn when -it)."""
    from conftest import DATA

    src = tmp_path / "src"
    shutil.copytree(DATA / "tiny" / "gemma4-multimodal", src)
    (src / "tokenizer.model").unlink()
    shutil.copy(DATA / "tokenizer" / "tiny.tokenizer.json", src / "tokenizer.json")
    fake_cache(tmp_path / "hf", "google/gemma-4-E2B-it", src)
    m = Model.from_pretrained("4-e2b-it", cache_dir=tmp_path / "hf")
    assert m.instruction_tuned and m.tokenizer.source.endswith("tokenizer.json")
    assert m.tokenizer.end_of_turn_id in m._default_stop


@pytest.mark.parametrize("source, model_type, expected", [
    ("2-9b", "gemma2", "2-9b-it"), ("google/gemma-2-9b", "gemma2", "2-9b-it"),
    ("3-1b", "gemma3_text", "3-1b-it"), ("google/gemma-3-4b-pt", "gemma3_text", "3-4b-it"),
    ("google/gemma-4-E2B", "gemma4_text", "4-e2b-it"), ("codegemma-7b", "gemma", "codegemma-7b-it"),
    ("/data/my-gemma", "gemma", "2b-it or 7b-it"), ("3-270m-gguf", "gemma3_text", "3-1b-it or 3-270m-it"),
    (None, "gemma3n_text", "3n-e2b-it or 3n-e4b-it"), ("/x", "gemma4_text", "4-e2b-it or 4-e4b-it"),
])
def test_chat_suggestion_names_the_it_sibling_or_the_same_generation(source, model_type, expected):
    assert hub.chat_suggestion(source, model_type) == expected
