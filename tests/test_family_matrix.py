"""Every command and every Model method on every kind of model, as a new user meets them.

A table per door (the CLI's main(argv), the Python API): each (command or method, model
kind) cell either works, checked against the library itself (the CLI prints what the API
computes; logprobs are forward's log-softmax; ...), or is refused the one way: exactly one
`gemma-ref: error: ...` line naming what this model is / what to use, exit 1 (a
GemmaRefError from the API), never a traceback. The checkpoints are the tiny ones committed
under tests/data.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from gemma_ref import Model
from gemma_ref.cli import main
from gemma_ref.errors import GemmaRefError

DATA = Path(__file__).parent / "data"
KINDS = {  # model kind -> a tiny checkpoint of it
    "text": "tiny/gemma3-gqa",  # Gemma 3 text-only
    "image3": "vision/gemma3-vision-mqa",  # Gemma 3 with SigLIP
    "image4": "vision/gemma4-vision",  # Gemma 4 with its vision encoder
    "unified": "family/gemma4-unified",  # Gemma 4 12B Unified (embedder, no encoder)
    "audio4": "audio/gemma4-audio",  # Gemma 4 with its audio tower
    "audio3n": "audio/gemma3n-audio",  # Gemma 3n with its audio tower (its vision tower not run)
    "vaultgemma": "tiny/vaultgemma-mqa",  # VaultGemma (a Gemma 2-like config)
    "recurrent": "tiny/recurrentgemma-mqa",  # RecurrentGemma (Griffin)
    "paligemma": "paligemma/paligemma1-mqa",  # PaliGemma 1 (prefix-LM, images required)
    "t5gemma": "encdec/t5gemma-tiny",  # encoder-decoder, text only
    "t5gemma2": "encdec/t5gemma2-tiny",  # encoder-decoder with images in the encoder
    "shieldgemma2": "family/shieldgemma2",  # image safety classifier
    "assistant": "tiny/gemma4-assistant",  # Gemma 4 MTP drafter
    "embedding": "embedding/tiny-mqa-w6",  # EmbeddingGemma (sentence-transformers)
}
IMAGE = str(DATA / "vision" / "images" / "rgb_wide.png")
CLIP = str(DATA / "audio" / "clips" / "short.wav")
N = 3  # new tokens

GENERATORS = {"text", "image3", "image4", "unified", "audio4", "audio3n", "vaultgemma", "recurrent", "paligemma",
              "t5gemma", "t5gemma2"}
DECODERS = GENERATORS - {"t5gemma", "t5gemma2"}  # one forward over a text: logprobs, score, perplexity
WITH_IMAGES = {"image3", "image4", "unified", "paligemma", "t5gemma2"}
AUDIO = {"audio4", "audio3n", "unified"}  # the kinds that take audio (12B Unified: raw frames, no tower)

# What a refusal must say, by the model's kind (the commands that the kind cannot serve at all)
NOT_A_GENERATOR = {"embedding": "is an embedding model", "shieldgemma2": "image safety classifier",
                   "assistant": "a Gemma 4 assistant drafts for its target model"}


@pytest.fixture(scope="module")
def models():
    loaded = {}

    def get(kind):
        if kind not in loaded:
            loaded[kind] = Model.from_pretrained(DATA / KINDS[kind], progress=False)
        return loaded[kind]
    return get


def path(kind) -> str:
    return str(DATA / KINDS[kind])


def run(argv, capsys, monkeypatch, stdin="Hi\n"):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def refused(code, err, words):
    """Exactly one error line, the last, holding `words`; exit 1."""
    errors = [line for line in err.splitlines() if line.startswith("gemma-ref: error:")]
    assert code == 1 and len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert words in errors[0], errors[0]


# --- the CLI ------------------------------------------------------------------------------

def _continuation(model, prompt, **kw):
    out = model.generate(prompt, max_new_tokens=N, **kw)
    return (prompt if getattr(model, "continues_prompt", True) else "") + out + "\n"


def _check_generate(model, out, tmp_path):
    assert out == _continuation(model, "Hello world")


def _check_generate_image(model, out, tmp_path):
    assert out == _continuation(model, "Describe", images=[IMAGE])


def _check_generate_audio(model, out, tmp_path):
    assert out == _continuation(model, "Transcribe", audio=[CLIP])


def _check_chat(model, out, tmp_path):
    assert out == model.chat([{"role": "user", "content": "Hi"}], max_new_tokens=N) + "\n"


def _check_dump_compare(model, out, tmp_path):
    golden = tmp_path / "d.npz"
    with np.load(golden) as z:  # the dump holds the forward pass's logits
        ids, logits = z["prompt_0/input_ids"], z["prompt_0/logits"]
    if not getattr(model, "continues_prompt", True):  # an encoder-decoder dumps its decoder's logits
        assert logits.shape[-1] == model.tokenizer.vocab_size and np.isfinite(logits).all()
    else:
        np.testing.assert_allclose(logits, model.forward(ids), rtol=1e-5, atol=1e-5)
    assert main(["compare", "-m", model.source, str(golden)]) == 0  # the model agrees with its dump


def _check_dump_media(key):
    def check(model, out, tmp_path):
        golden = tmp_path / "d.npz"
        with np.load(golden) as z:  # the prompt's images / clips, as transformers' processor gives them
            assert np.isfinite(z[f"prompt_0/{key}"]).all() and np.isfinite(z["prompt_0/logits"]).all()
        assert main(["compare", "-m", model.source, str(golden)]) == 0  # the model agrees with its dump
    return check


def _check_perplexity(model, out, tmp_path):
    from gemma_ref.scoring import perplexity

    text = (tmp_path / "t.txt").read_text()
    want = perplexity(model, model.tokenizer.encode(text), 16, None, n_bytes=len(text.encode()))
    assert out.startswith(f"perplexity {want['perplexity']:.4f} ")


def _check_embed(model, out, tmp_path):
    got = json.loads(out.splitlines()[0])["embedding"]
    np.testing.assert_allclose(got, model.embed(["hello"])[0], rtol=1e-5, atol=1e-6)


def _check_similarity(model, out, tmp_path):
    (q,), (a, b) = model.embed(["q"], prompt_name="query"), model.embed(["a", "b"], prompt_name="document")
    got = {line.split()[1]: float(line.split()[0]) for line in out.splitlines()}
    assert got == pytest.approx({"a": float(q @ a), "b": float(q @ b)}, abs=1e-4)


def _check_classify(model, out, tmp_path):
    p = model.classify_image([IMAGE], policies=["dangerous"])
    assert out.splitlines()[1].split()[:2] == [f"{p[0, 0]:.4f}", "dangerous"]


# command -> (argv after the model, the kinds it works on, check, {kind: refusal words})
CLI = {
    "generate": (["generate", "-n", str(N), "Hello world"], GENERATORS - {"paligemma"}, _check_generate,
                 {"paligemma": "PaliGemma needs an image"}),
    "generate --image": (["generate", "-n", str(N), "--image", IMAGE, "Describe"], WITH_IMAGES,
                         _check_generate_image,
                         {k: "takes no images" for k in ("text", "audio4", "audio3n", "vaultgemma", "recurrent",
                                                         "t5gemma")}),
    "generate --audio": (["generate", "-n", str(N), "--audio", CLIP, "Transcribe"], AUDIO,
                         _check_generate_audio, {k: "takes no audio" for k in GENERATORS - AUDIO}),
    "chat": (["chat", "-n", str(N)], GENERATORS - {"paligemma", "t5gemma", "t5gemma2"}, _check_chat,
             {"paligemma": "PaliGemma has no chat format", "t5gemma": "no chat template",
              "t5gemma2": "no chat template"}),
    "dump+compare": (["dump", "--prompt", "Hello world", "--max-new-tokens", "2", "--out", "{tmp}/d.npz"],
                     GENERATORS,
                     _check_dump_compare, {}),
    "dump+compare, images": (["dump", "--prompts", "{tmp}/images.jsonl", "--max-new-tokens", "2", "--out",
                               "{tmp}/d.npz"], WITH_IMAGES, _check_dump_media("pixel_values"),
                              {k: "takes no images" for k in GENERATORS - WITH_IMAGES}),
    "dump+compare, audio": (["dump", "--prompts", "{tmp}/audio.jsonl", "--max-new-tokens", "2", "--out",
                              "{tmp}/d.npz"], AUDIO, _check_dump_media("input_features"),
                             {k: "takes no audio" for k in GENERATORS - AUDIO}),
    "perplexity": (["perplexity", "--max-length", "16", "{tmp}/t.txt"], DECODERS, _check_perplexity,
                   {"t5gemma": "decoder-only", "t5gemma2": "decoder-only"}),
    "embed": (["embed", "hello"], {"embedding"}, _check_embed,
              {k: "is a text-generation model, not an embedding model" for k in GENERATORS}),
    "similarity": (["similarity", "q", "a", "b"], {"embedding"}, _check_similarity,
                   {k: "not an embedding model" for k in GENERATORS}),
    "classify": (["classify", "--image", IMAGE, "--policy", "dangerous"], {"shieldgemma2"}, _check_classify,
                 {k: "not an image classifier" for k in GENERATORS}),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", CLI)
def test_cli(command, kind, models, capsys, monkeypatch, tmp_path):
    argv, works, check, refusals = CLI[command]
    (tmp_path / "t.txt").write_text("The quick brown fox jumps over the lazy dog. " * 4)
    (tmp_path / "images.jsonl").write_text(json.dumps({"prompt": "Describe", "images": [IMAGE]}) + "\n")
    (tmp_path / "audio.jsonl").write_text(json.dumps({"prompt": "Say", "audio": [CLIP]}) + "\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, out, err = run(argv[:1] + ["--model", path(kind)] + argv[1:], capsys, monkeypatch)
    if kind in works:
        assert code == 0 and "error" not in err, err
        check(models(kind), out, tmp_path)
    else:
        refused(code, err, refusals.get(kind) or NOT_A_GENERATOR[kind])


@pytest.mark.parametrize("target, assistant, words", [
    ("text", "assistant", "the target must be a Gemma 4 model, not gemma3_text"),
    ("recurrent", "assistant", "the target must be a Gemma 4 model, not recurrent_gemma"),
    ("t5gemma", "assistant", "not an encoder-decoder"),
    ("image4", "text", "assistant must be a Gemma 4 assistant"),
    ("image4", "embedding", "assistant must be a Gemma 4 assistant"),
])
def test_cli_generate_with_an_assistant_of_the_wrong_kind(target, assistant, words, capsys, monkeypatch):
    code, _, err = run(["generate", "-m", path(target), "--assistant", path(assistant), "-n", "2", "Hi"],
                       capsys, monkeypatch)
    refused(code, err, words)


# --- info and models ------------------------------------------------------------------------

# kind -> what `info` must say on its kind/chat line, and its tokenizer line
INFO = {k: ("chat        no: a base model", "tokenizer   512 tokens") for k in GENERATORS}
INFO.update(embedding=("kind        an embedding model", "tokenizer   512 tokens"),
            shieldgemma2=("kind        an image safety classifier", "tokenizer   512 tokens"),
            assistant=("kind        a drafter", "tokenizer   none\n"))


@pytest.mark.parametrize("load", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_info_tells_the_truth(kind, load, capsys, monkeypatch):
    flags = ["--load"] if load else []
    code, out, err = run(["info", "-m", path(kind)] + flags, capsys, monkeypatch)
    assert not (kind in WITH_IMAGES and re.search(r"\btext( model)? only;", err)), err  # it runs images
    what, tokenizer = INFO[kind]
    assert code == 0 and what in out and tokenizer in out, out
    assert not re.search(r"\b0 layer\(s\)|none tokens|\b0 parameters", out)
    assert ("chat        " in out) == (kind in GENERATORS)  # a classifier or a drafter has no chat claim
    code, out, _ = run(["info", "-m", path(kind), "--json"] + flags, capsys, monkeypatch)
    info = json.loads(out)
    assert info["kind"] == {"embedding": "embedding", "shieldgemma2": "classifier",
                            "assistant": "drafter"}.get(kind, "generation")
    assert info["parameters"] > 0 and info["loaded"] == load


def test_models_labels_each_alias_by_kind(capsys, monkeypatch):
    code, out, _ = run(["models"], capsys, monkeypatch)
    label = dict(re.findall(r"^  (\S+) +(\S+) +\S", out, re.M))
    assert code == 0 and label["shieldgemma-2-4b-it"] == "classify" and label["embeddinggemma-300m"] == "embed"
    assert label["4-e2b-it-assistant"] == "draft" and label["3-1b-it"] == "chat" and label["2b"] == "base"
    assert {a for a, k in label.items() if k == "draft"} == {a for a in label if a.endswith("-assistant")}
    code, out, _ = run(["models", "--json"], capsys, monkeypatch)
    kinds = {r["alias"]: r["kind"] for r in json.loads(out)}
    assert kinds["shieldgemma-2-4b-it"] == "classifier" and kinds["4-31b-it-assistant"] == "drafter"


# --- the Python API -------------------------------------------------------------------------

IDS = [2, 5, 6, 7, 8]


def _api_generate(m):
    text = m.generate("Hello", max_new_tokens=N)
    ids = m.generate(m.tokenizer.encode("Hello"), max_new_tokens=N)  # ids in, ids out
    assert text == m.tokenizer.decode(ids)


def _api_chat(m):
    messages = [{"role": "user", "content": "Hi"}]
    assert m.chat(messages, max_new_tokens=N) == m.generate(m.chat_prompt(messages), max_new_tokens=N)


def _api_chat_prompt(m):
    text = m.chat_prompt([{"role": "user", "content": "Hi there"}])
    assert text.startswith("<bos>") and re.search(r"Hi there.*model\n", text, re.S)  # then the model's turn


def _api_forward(m):
    logits = m.forward(np.array(IDS))
    assert logits.shape == (len(IDS), m.n_vocab)
    assert m.generate(IDS, max_new_tokens=1) == [int(logits[-1].argmax())]  # greedy = the argmax


def _api_logprobs(m):
    # PaliGemma: a text scored is its causal suffix (forward's default is all prefix, both ways)
    suffix = {"token_type_ids": np.ones(len(IDS), int)} if hasattr(m, "paligemma") else {}
    logits = m.forward(np.array(IDS), **suffix).astype(np.float64)
    want = (logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - logits.max(-1, keepdims=True))[np.arange(len(IDS) - 1), IDS[1:]]
    np.testing.assert_allclose(m.logprobs(IDS), want, atol=1e-4)


def _api_score(m):
    (r,) = m.score(IDS[:3], [IDS[3:]])
    assert r["logprob"] == pytest.approx(m.logprobs(IDS)[2:].sum(), abs=1e-6) and r["n_tokens"] == 2


def _api_embed(m):
    v = m.embed(["hello", "world"])
    assert v.shape == (2, m.dim) and np.allclose(np.linalg.norm(v, axis=-1), 1, atol=1e-5)


def _api_classify_image(m):
    p = m.classify_image([IMAGE], policies=["dangerous", "violence"])
    assert p.shape == (2, 2) and np.allclose(p.sum(-1), 1, atol=1e-5) and (p > 0).all()


def _rows(x):
    return np.concatenate(list(x)) if isinstance(x, list) else x.reshape(-1, x.shape[-1])


def _api_embed_images(m):
    rows = _rows(m.embed_images([IMAGE]))
    assert rows.shape[-1] == m.config.hidden_size and len(rows) > 0 and np.isfinite(rows).all()


def _api_embed_audio(m):
    rows = _rows(m.embed_audio([CLIP]))
    assert rows.shape[-1] == m.config.hidden_size and len(rows) > 0 and np.isfinite(rows).all()


def _call(method):
    args = {"generate": ("Hello",), "chat": ([{"role": "user", "content": "Hi"}],), "forward": (np.array(IDS),),
            "chat_prompt": ([{"role": "user", "content": "Hi"}],),
            "logprobs": (IDS,), "score": (IDS[:3], [IDS[3:]]), "embed": (["hello"],),
            "classify_image": ([IMAGE],), "embed_images": ([IMAGE],), "embed_audio": ([CLIP],)}[method]
    return lambda m: getattr(m, method)(*args)


# method -> (kinds it works on, check, {kind: refusal words}); other kinds refuse by kind
API = {
    "generate": (GENERATORS - {"paligemma"}, _api_generate, {"paligemma": "PaliGemma needs an image"}),
    "chat": (GENERATORS - {"paligemma", "t5gemma", "t5gemma2"}, _api_chat,
             {"paligemma": "no chat format", "t5gemma": "no chat template", "t5gemma2": "no chat template"}),
    "chat_prompt": (GENERATORS - {"paligemma", "t5gemma", "t5gemma2"}, _api_chat_prompt,
                    {"paligemma": "no chat format", "t5gemma": "no chat template",
                     "t5gemma2": "no chat template"}),
    "forward": (DECODERS, _api_forward, {"t5gemma": "decoder_input_ids", "t5gemma2": "decoder_input_ids"}),
    "logprobs": (DECODERS, _api_logprobs, {"t5gemma": "decoder-only", "t5gemma2": "decoder-only"}),
    "score": (DECODERS, _api_score, {"t5gemma": "decoder-only", "t5gemma2": "decoder-only"}),
    "embed": ({"embedding"}, _api_embed, {k: "not an embedding model" for k in DECODERS}
              | {"t5gemma": "embed is for embedding models", "t5gemma2": "embed is for embedding models",
                 "shieldgemma2": "embed is for embedding models", "assistant": "embed is for embedding models"}),
    "classify_image": ({"shieldgemma2"}, _api_classify_image,
                       {k: "classify_image is for ShieldGemma 2" for k in KINDS}),
    "embed_images": (WITH_IMAGES - {"t5gemma2"}, _api_embed_images,
                     {"text": "takes no images", "audio4": "takes no images", "recurrent": "takes no images",
                      "audio3n": "its vision tower is not implemented", "vaultgemma": "takes no images",
                      "t5gemma": "no vision_config", "t5gemma2": "embeds its images inside the encoder",
                      "embedding": "embed_images is for image-text models",
                      "assistant": "embed_images is for image-text models"}),
    "embed_audio": (AUDIO, _api_embed_audio,
                    {k: "takes no audio" for k in DECODERS - AUDIO}
                    | {k: "embed_audio is for models with an audio tower"
                       for k in ("t5gemma", "t5gemma2", "shieldgemma2", "embedding", "assistant")}),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", API)
def test_api(method, kind, models):
    works, check, refusals = API[method]
    m = models(kind)
    if kind in works:
        check(m)
        return
    with pytest.raises(GemmaRefError) as e:
        _call(method)(m)
    words = refusals.get(kind) or NOT_A_GENERATOR[kind]
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("argv, words", [
    (["generate", "-m", "embeddinggemma-300m", "hi"], "generate: embeddinggemma-300m is an embedding model"),
    (["chat", "-m", "shieldgemma-2-4b-it"], "chat: shieldgemma-2-4b-it is an image safety classifier"),
    (["perplexity", "-m", "4-e2b-it-assistant", "t.txt"], "perplexity: 4-e2b-it-assistant is a drafter"),
    (["embed", "-m", "3-1b-it", "hi"], "embed: 3-1b-it is a text-generation model, not an embedding model"),
    (["classify", "-m", "2b", "--image", IMAGE],
     "classify: 2b is a text-generation model, not an image classifier"),
])
def test_cli_refuses_an_alias_of_another_kind_before_downloading_it(argv, words, capsys, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # a download would be another error
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("some text")
    code, _, err = run(argv, capsys, monkeypatch)
    refused(code, err, words)
