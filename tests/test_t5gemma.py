"""T5Gemma and T5Gemma 2 (gemma_ref/t5gemma.py): encoder-decoders.

Layer 1: the encoder's windows by hand. Layer 2: invariants (cached / chunked decoding ==
the full decoder forward; a right-padded batch == its rows alone). Layer 3: tiny random
checkpoints against transformers (scripts/make_t5gemma_goldens.py, PROVENANCE.md).
Layer 5: the CLI and bad input through main(argv).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA
from safetensors.numpy import load_file, save_file

import gemma_ref
from gemma_ref import GemmaRefError, Model
from gemma_ref.cli import main
from gemma_ref.kv_cache import new_cache
from gemma_ref.t5gemma import T5GemmaModel, decode, encoder_mask

CASES = ["t5gemma-tiny", "t5gemma2-tiny"]
TOL = 1e-4  # logits vs transformers; the measured worst is printed (pytest -s)


@pytest.fixture(scope="module", params=CASES)
def case(request):
    d = DATA / "encdec" / request.param
    return request.param, Model.from_pretrained(d), dict(np.load(d / "golden.npz"))


# --- layer 1: masks by hand ----------------------------------------------------------------


def test_encoder_windows_by_hand():
    """T5Gemma: |key - query| <= w. T5Gemma 2: -(w+1)//2 < key - query <= w//2. Padding keys never."""
    valid = np.array([[1, 1, 1, 1, 0]], bool)
    radius = encoder_mask(valid, 1, "radius")[0].astype(int)
    assert radius.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 0]]
    split = encoder_mask(valid, 4, "split")[0].astype(int)  # d in {-1, 0, 1, 2}
    assert split.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 0]]
    assert encoder_mask(valid, None, "split")[0].astype(int).tolist() == [[1, 1, 1, 1, 0]] * 5


# --- layer 3: transformers' goldens -----------------------------------------------------------


def test_logits_match_transformers(case):
    """Both rows: row 1's encoder input is right-padded, masked by attention_mask."""
    name, model, g = case
    logits = model.forward(g["input_ids"], g["decoder_input_ids"], attention_mask=g["attention_mask"])
    ref = g["logits"][..., :model.n_vocab]  # T5Gemma 2: image ids' rows past the tokenizer sliced off
    delta = np.abs(logits - ref).max()
    print(f"{name}: max |dlogit| = {delta:.2e} over {ref.size} logits")
    assert logits.shape == ref.shape and delta <= TOL


def test_both_stacks_match_transformers_layer_by_layer(case):
    """transformers' encoder_hidden_states / decoder_hidden_states: embeddings, each layer's
    output but the last, the final norm; ours are the trace under the checkpoint's names."""
    name, model, g = case
    t = {}
    model.forward(g["input_ids"][:1], g["decoder_input_ids"][:1], attention_mask=g["attention_mask"][:1], trace=t)
    for stack, golden in (("encoder", g["encoder_hidden_states"]), ("decoder", g["decoder_hidden_states"])):
        L = getattr(model.config, stack).num_hidden_layers
        names = ([f"model.{stack}.embed_tokens"] + [f"model.{stack}.layers.{i}" for i in range(L - 1)]
                 + [f"model.{stack}.norm"])
        for n, ref in zip(names, golden, strict=True):
            assert np.abs(t[n][0] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), f"{name}: {n} diverges"


def test_greedy_matches_transformers(case):
    """transformers' generate: encoder once, decoder cached, token for token."""
    name, model, g = case
    out = model.generate(g["prompt_ids"].tolist(), max_new_tokens=len(g["greedy_ids"]), stop=[])
    assert out == g["greedy_ids"].tolist()


def test_t5gemma2_image_matches_transformers():
    """One image through SigLIP into the encoder (its <end_of_image> a learned row)."""
    d = DATA / "encdec" / "t5gemma2-tiny"
    model, g = Model.from_pretrained(d), dict(np.load(d / "golden.npz"))
    logits = model.forward(g["image_input_ids"], g["decoder_input_ids"][0], images=g["pixel_values"])
    delta = np.abs(logits - g["image_logits"][:, :model.n_vocab]).max()
    print(f"t5gemma2-tiny with an image: max |dlogit| = {delta:.2e}")
    assert delta <= TOL
    out = model.generate(g["image_prompt_ids"].tolist(), images=g["pixel_values"], max_new_tokens=16, stop=[])
    assert out == g["image_greedy_ids"].tolist()
    assert model.generate(g["prompt_ids"].tolist(), max_new_tokens=16, stop=[]) != out  # the image matters


def test_t5gemma2_image_file_goes_through_gemma3s_processor():
    """An image file: preprocessor_config.json read as Gemma 3's (T5Gemma 2's image processor),
    the same pixels as transformers' Gemma3ImageProcessorPil, the same output as those pixels."""
    from gemma_ref import vision

    d = DATA / "encdec" / "t5gemma2-tiny"
    model, g = Model.from_pretrained(d), dict(np.load(d / "golden.npz"))
    image = DATA / "vision" / "images" / "rgb_wide.png"
    pixels, _ = vision.preprocess([str(image)], model._preprocessing())
    assert np.abs(pixels - g["file_pixel_values"]).max() <= 1e-6
    prompt = g["image_prompt_ids"].tolist()
    assert (model.generate(prompt, images=[str(image)], max_new_tokens=8, stop=[])
            == model.generate(prompt, images=g["file_pixel_values"], max_new_tokens=8, stop=[]))
    text = model.tokenizer.decode(g["prompt_ids"][1:].tolist())  # a marker-less prompt: the image first
    ids = model.encoder_ids(text, [str(image)])
    start = ids.index(513)  # "\n\n<start_of_image>" + 4 x <image> + "<end_of_image>\n\n", as Gemma3Processor
    assert ids[0] == 2 and ids[start:start + 6] == [513, 512, 512, 512, 512, 514] and ids.count(512) == 4


def test_compare_against_transformers_dump_with_both_stacks_traced():
    """hf_dump.npz (scripts/dump_transformers.py --trace): every hidden state of both stacks,
    the logits, greedy ids and every intermediate agree, under the same names."""
    from gemma_ref import reference

    for name in CASES:
        d = DATA / "encdec" / name
        golden = reference.load(d / "hf_dump.npz")
        ours = reference.candidate_from_model(Model.from_pretrained(d), golden, trace=True)
        report = reference.compare(golden, ours)
        p = report["prompts"][0]
        assert report["ok"], reference.format_report(report)
        names = [e["name"] for e in p["hidden_states"]]
        assert names[0] == "model.encoder.embed_tokens" and "model.decoder.embed_tokens" in names
        # all compared but T5Gemma 2's lm_head, whose 8 rows past the tokenizer's gemma-ref drops
        assert p["greedy"]["agree"] == 6 and len(p["trace"]) == len(golden.prompts[0].trace) - (name != CASES[0]) > 70
        assert set(golden.prompts[0].trace) == set(ours.prompts[0].trace)


# --- layer 2: invariants ----------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [[1] * 10, [4, 1, 3, 2]], ids=["step-by-step", "chunked"])
def test_cached_decoder_equals_full_forward(case, chunks):
    """Decoding with the self-attention cache, one token or a chunk at a time, gives the
    full (uncached) decoder's logits; 10 tokens run past the sliding window (3 / 4)."""
    name, model, g = case
    _, cross = model.encode(g["input_ids"], g["attention_mask"])
    dec = np.concatenate([g["decoder_input_ids"], g["decoder_input_ids"][:, 1:3]], axis=1)  # [2, 10]
    B, T = dec.shape
    positions = np.broadcast_to(np.arange(T), (B, T))
    full = decode(model.weights, model.config, dec, positions, None, cross)
    cache = new_cache(model.config.decoder, B, T)
    steps, start = [], 0
    for n in chunks:
        steps.append(decode(model.weights, model.config, dec[:, start:start + n], positions[:, start:start + n],
                            cache, cross))
        start += n
    assert np.abs(np.concatenate(steps, axis=1) - full).max() <= 1e-5


def test_batch_of_two_equals_two_singles(case):
    """Prompts of different lengths, right-padded for the encoder with the padding masked:
    each row as alone, in forward and in generation (greedy and sampled)."""
    name, model, g = case
    short, long_ = g["prompt_ids"][:4].tolist(), g["input_ids"][0].tolist()
    dec = g["decoder_input_ids"]
    ids = np.zeros((2, len(long_)), np.int64)
    ids[0, :4], ids[1] = short, long_
    mask = (np.arange(len(long_)) < np.array([[4], [len(long_)]])).astype(np.int64)
    batch = model.forward(ids, dec, attention_mask=mask)
    for b, p in enumerate((short, long_)):
        assert np.abs(batch[b] - model.forward(p, dec[b])).max() <= 1e-4  # summation order only
    for kw in ({}, {"temperature": 1.0, "top_k": 20}):  # a row's sampling draws from the shared rng: greedy
        together = model.generate([short, long_], max_new_tokens=12, stop=[], **kw)
        if not kw:
            assert together == [model.generate(p, max_new_tokens=12, stop=[]) for p in (short, long_)]
        else:
            assert together == model.generate([short, long_], max_new_tokens=12, stop=[], **kw)  # seeded


def test_default_masks_are_transformers(case):
    """A right-padded row without attention_mask gives transformers' logits: T5Gemma's
    encoder self-attention skips <pad> ids (make_default_2d_attention_mask) while its decoder
    still sees them (the mask handed on is None); T5Gemma 2 masks nothing."""
    name, model, g = case
    default = model.forward(g["input_ids"][1], g["decoder_input_ids"][1])
    assert np.abs(default - g["logits_no_mask"][:, :model.n_vocab]).max() <= TOL
    assert np.abs(default - g["logits"][1, :, :model.n_vocab]).max() > 1e-2  # the padding matters


def test_sampling_is_seeded(case):
    name, model, g = case
    p = g["prompt_ids"].tolist()
    a = model.generate(p, max_new_tokens=8, temperature=1.0, seed=3, stop=[])
    assert a == model.generate(p, max_new_tokens=8, temperature=1.0, seed=3, stop=[])
    assert a != model.generate(p, max_new_tokens=8, stop=[])


def test_text_streams_and_stops():
    model = Model.from_pretrained(DATA / "encdec" / "t5gemma-tiny")
    g = dict(np.load(DATA / "encdec" / "t5gemma-tiny" / "golden.npz"))
    prompt = model.tokenizer.decode(g["prompt_ids"].tolist())  # the golden prompt, as text
    assert model.tokenizer.encode(prompt) == g["prompt_ids"].tolist()
    text = model.generate(prompt, max_new_tokens=16, stop=[])
    assert text == model.tokenizer.decode(g["greedy_ids"].tolist())
    ids = model.generate(g["prompt_ids"].tolist(), max_new_tokens=16, stop=[int(g["greedy_ids"][3])])
    assert ids == g["greedy_ids"][:3].tolist()


# --- layer 5: the CLI and bad input --------------------------------------------------------------


def test_cli_generate_prints_the_output_alone(capsys):
    d = DATA / "encdec" / "t5gemma-tiny"
    g = dict(np.load(d / "golden.npz"))
    tok = Model.from_pretrained(d).tokenizer
    prompt = tok.decode(g["prompt_ids"].tolist())
    assert main(["generate", "--model", str(d), prompt, "--max-new-tokens", "16"]) == 0
    assert capsys.readouterr().out == tok.decode(g["greedy_ids"].tolist()) + "\n"  # not the prompt first


def test_chat_renders_the_checkpoints_template_for_the_encoder(tmp_path, capsys):
    """A T5Gemma -it checkpoint carries a chat template: the rendered conversation is the
    encoder's input, and the reply stops at <end_of_turn>."""
    d = tmp_path / "t5gemma-tiny-it"
    shutil.copytree(DATA / "encdec" / "t5gemma-tiny", d)
    shutil.copy(Path(gemma_ref.__file__).parent / "templates" / "gemma2-it.jinja", d / "chat_template.jinja")
    model = Model.from_pretrained(d)
    messages = [{"role": "user", "content": "the cat"}]
    prompt = model.chat_prompt(messages)
    assert prompt == "<bos><start_of_turn>user\nthe cat<end_of_turn>\n<start_of_turn>model\n"
    reply = model.chat(messages, max_new_tokens=8)
    stop = [model.tokenizer.eos_id, model.tokenizer.piece_id("<end_of_turn>")]
    assert reply == model.generate(prompt, max_new_tokens=8, stop=stop)
    assert main(["info", "--model", str(d)]) == 0
    assert "chat_template.jinja" in capsys.readouterr().out


def test_cli_info_and_models(capsys):
    assert main(["info", "--model", str(DATA / "encdec" / "t5gemma2-tiny")]) == 0
    out = capsys.readouterr().out
    assert "T5Gemma 2 (from Gemma 3)" in out and "merged" in out and "107,616" in out  # PROVENANCE's count
    assert "SigLIP in the encoder" in out
    assert main(["info", "--model", str(DATA / "encdec" / "t5gemma-tiny"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["encoder.hidden_size"] == 48 and info["config"]["decoder.hidden_size"] == 32
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "huggingface.co/google/t5gemma-2b-2b-prefixlm-it" in out and "google/t5gemma-2-270m-270m" in out


@pytest.mark.parametrize("argv, message", [
    (["--chat"], "no chat template"),
    (["--image", __file__], "takes no images"),
], ids=["chat", "image"])
def test_cli_refuses_what_an_encoder_decoder_cannot_do(capsys, argv, message):
    assert main(["generate", "--model", str(DATA / "encdec" / "t5gemma-tiny"), "hello", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gemma-ref: error:") and message in err[-1] and "Traceback" not in "".join(err)


def test_cli_perplexity_is_refused_and_info_load_describes(capsys, tmp_path):
    d = str(DATA / "encdec" / "t5gemma-tiny")
    text = tmp_path / "t.txt"
    text.write_text("some text to score")
    assert main(["perplexity", "--model", d, str(text)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gemma-ref: error: perplexity:") and "encoder-decoder" in err[-1]
    assert main(["info", "--model", d, "--load", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["loaded"] and info["parameters"] == 146_640 and info["config"]["model_type"] == "t5gemma"


def test_cli_bad_config_and_missing_processor_are_one_line(tmp_path, capsys):
    d = tmp_path / "t5"
    shutil.copytree(DATA / "encdec" / "t5gemma2-tiny", d)
    (d / "preprocessor_config.json").unlink()
    image = str(DATA / "vision" / "images" / "rgba.png")
    assert main(["generate", "--model", str(d), "hi", "--image", image]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("need the checkpoint's preprocessor_config.json "
                                                                      "(or pass pixel values [I, 3, S, S])")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["encoder"]["text_config"]["hidden_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    for argv in (["generate", "--model", str(d), "hi"], ["info", "--model", str(d)]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f"gemma-ref: error: {d / 'config.json'} (encoder): missing required key 'hidden_size'"


def test_api_bad_input_is_one_error():
    model = Model.from_pretrained(DATA / "encdec" / "t5gemma2-tiny")
    bad = [
        (lambda: model.forward([[2, 5]], [2, 5]), "same batch"),
        (lambda: model.forward([2, 5], [2, 9999]), "out of range"),
        (lambda: model.forward([2, 5], [[2.0]]), "integer array"),
        (lambda: model.forward([2, 5], [2], attention_mask=[1]), "attention_mask"),
        (lambda: model.forward([2, 512, 5], [2], images=np.zeros((1, 3, 28, 28), np.float32)), "image tokens"),
        (lambda: model.forward([2, 5], [2], images=np.zeros((1, 3, 8, 8), np.float32)), "pixel values"),
        (lambda: model.generate([2, 5], max_new_tokens=-1), "max_new_tokens"),
        (lambda: model.generate([]), "empty prompt"),
        (lambda: model.generate([2, 5], max_new_tokens=600), "decoder's context"),
        (lambda: model.generate(["a", "b"], images=np.zeros((1, 3, 28, 28), np.float32)), "one prompt"),
        (lambda: model.logprobs([2, 5, 6]), "decoder-only"),
        (lambda: model.chat([{"role": "user", "content": "hi"}]), "no chat template"),
    ]
    for call, message in bad:
        with pytest.raises(GemmaRefError, match=message):
            call()


def test_bf16_checkpoint_held_as_stored(tmp_path):
    """bfloat16 matrices stay 16-bit in RAM and are widened as used: the logits of the same
    weights widened to float32 at load."""
    import ml_dtypes

    src = DATA / "encdec" / "t5gemma2-tiny"
    g = dict(np.load(src / "golden.npz"))
    narrow = {k: v.astype(ml_dtypes.bfloat16) for k, v in load_file(str(src / "model.safetensors")).items()}
    for name, tensors in (("bf16", narrow), ("f32", {k: v.astype(np.float32) for k, v in narrow.items()})):
        shutil.copytree(src, tmp_path / name)
        save_file(tensors, str(tmp_path / name / "model.safetensors"))
    bf16, f32 = Model.from_pretrained(tmp_path / "bf16"), Model.from_pretrained(tmp_path / "f32")
    assert bf16.weights.arrays["model.decoder.layers.0.self_attn.q_proj.weight"].dtype == ml_dtypes.bfloat16
    a, b = (m.forward(g["input_ids"], g["decoder_input_ids"], images=None) for m in (bf16, f32))
    assert np.abs(a - b).max() <= 1e-5


def test_loading_is_strict(tmp_path):
    src = DATA / "encdec" / "t5gemma-tiny"
    tensors = load_file(str(src / "model.safetensors"))

    def variant(edit):
        d = tmp_path / f"v{len(list(tmp_path.iterdir()))}"
        shutil.copytree(src, d)
        t = dict(tensors)
        edit(t)
        save_file(t, str(d / "model.safetensors"))
        return d

    k = "model.decoder.layers.1.cross_attn.k_proj.weight"
    cases = [
        (lambda t: t.pop(k), f"missing tensor {k}"),
        (lambda t: t.update({"model.decoder.layers.9.mlp.up_proj.weight": t[k]}), "unexpected tensor"),
        (lambda t: t.update({k: t[k][:, :32]}), "shape"),  # as if read from the decoder's width
        (lambda t: t.update({k: np.full_like(t[k], np.nan)}), "NaN"),
    ]
    for edit, message in cases:
        with pytest.raises(GemmaRefError, match=message):
            T5GemmaModel.from_checkpoint(variant(edit))
    d = variant(lambda t: None)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["decoder"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GemmaRefError, match="'encoder' and 'decoder'"):
        Model.from_pretrained(d)
