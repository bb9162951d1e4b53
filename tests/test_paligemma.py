"""PaliGemma 1 and 2 (paligemma.py): the processor's prompt and pixels, the tower, the
projector, the prefix-LM mask and generation, against goldens from transformers
(tests/data/paligemma, scripts/make_paligemma_goldens.py); then the invariants (cached,
chunked, batched == one full forward) and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gemma_ref import GemmaRefError, Model, hub, paligemma, vision
from gemma_ref.cli import main
from gemma_ref.loader import read_safetensors, write_safetensors
from gemma_ref.model import ImageTokens, forward

DATA = Path(__file__).parent / "data" / "paligemma"
IMAGES = Path(__file__).parent / "data" / "vision" / "images"
VARIANTS = ["paligemma1-mqa", "paligemma2-gqa"]
TOL = 1e-4

# The cases of scripts/make_paligemma_goldens.py: prompt, images, suffix.
CASES = {
    "one": ("Describe the image.", ["rgb_wide.png"], None),
    "two": ("<image><image>Which is brighter?", ["l_tall.png", "rgba_square.png"], None),
    "marker": ("<image>caption en", ["rgba.png"], None),
    "suffix": ("Caption:", ["rgb_wide.png"], "a cat on"),
}


def images_of(names):
    return [Image.open(IMAGES / n) for n in names]


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request):
    d = DATA / request.param
    return Model.from_pretrained(d, progress=False), np.load(d / "golden.npz")


# --- against transformers -----------------------------------------------------------


def test_processor_ids_types_and_pixels(variant):
    model, g = variant
    assert isinstance(model, paligemma.PaliGemma)
    for case, (prompt, names, suffix) in CASES.items():
        inputs = model.processor_inputs(prompt, images_of(names), suffix=suffix)
        assert inputs["input_ids"] == g[f"{case}.input_ids"].tolist(), case
        assert inputs["token_type_ids"] == g[f"{case}.token_type_ids"].tolist(), case
        pixels, _ = vision.preprocess(images_of(names), model.preprocessing)
        np.testing.assert_array_equal(pixels, g[f"{case}.pixel_values"])  # bit for bit


def test_tower_features_and_logits(variant):
    model, g = variant
    for case, (prompt, names, suffix) in CASES.items():
        trace = {}
        features = model.embed_images(images_of(names), trace=trace)
        np.testing.assert_allclose(trace["vision_tower.post_layernorm"], g[f"{case}.vision_tower"], atol=TOL, rtol=0)
        np.testing.assert_allclose(features, g[f"{case}.image_features"], atol=TOL, rtol=0)
        inputs = model.processor_inputs(prompt, images_of(names), suffix=suffix)
        logits = model.forward(inputs["input_ids"], images=images_of(names), token_type_ids=inputs["token_type_ids"])
        np.testing.assert_allclose(logits, g[f"{case}.logits"][:, :model.n_vocab], atol=TOL, rtol=0, err_msg=case)
        # The processor's pixel values in give the same
        pv = model.forward(inputs["input_ids"], images=g[f"{case}.pixel_values"],
                           token_type_ids=inputs["token_type_ids"])
        np.testing.assert_allclose(pv, logits, atol=1e-6, rtol=0)
        if suffix is None:  # no token types: all of it the prompt (prefix), as generate reads it
            np.testing.assert_array_equal(model.forward(inputs["input_ids"], images=images_of(names)), logits)


def test_greedy_from_ids_and_from_text(variant):
    model, g = variant
    for case, (prompt, names, suffix) in CASES.items():
        if f"{case}.greedy_ids" not in g:
            continue
        want = g[f"{case}.greedy_ids"].tolist()
        ids = g[f"{case}.input_ids"].tolist()
        assert model.generate(ids, images=images_of(names), max_new_tokens=len(want), stop=[]) == want, case
        text = model.generate(prompt, images=images_of(names), max_new_tokens=len(want), stop=[])
        assert text == model.tokenizer.decode(want), case


def test_golden_tells_the_mask_positions_and_scale_apart(variant):
    """A causal prefix, features scaled by sqrt(D), or (PaliGemma 2) a prefix cut by the
    sliding window as Gemma 3 cuts its images: each is far off. (Positions from 0 rather
    than 1 would not show: RoPE sees only differences of positions.)"""
    model, g = variant
    ids = g["two.input_ids"][None]
    types = g["two.token_type_ids"][None]
    golden = g["two.logits"][:, :model.n_vocab]
    rows = model.embed_pixels(g["two.pixel_values"]).reshape(-1, model.config.hidden_size)
    pos1 = np.arange(ids.shape[1])[None] + 1
    right = paligemma.image_tokens(ids, pos1, types, rows, model.paligemma)

    def logits(tokens, positions=pos1):
        return forward(model.weights, model.config, ids, positions, images=tokens, n_vocab=model.n_vocab)[0]

    assert np.abs(logits(right) - golden).max() < TOL
    causal = ImageTokens(right.at, right.embeds, pos1)
    scaled = ImageTokens(right.at, right.embeds * np.sqrt(model.config.hidden_size), right.reach)
    wrong = [logits(causal), logits(scaled)]
    if any(s.window for s in model.config.layers):  # PaliGemma 2
        windowed = ImageTokens(right.at, right.embeds, right.reach[..., 1])  # Gemma 3's rule: AND window
        assert ids.shape[1] > min(s.window for s in model.config.layers if s.window)
        wrong.append(logits(windowed))
    for w in wrong:
        assert np.abs(w - golden).max() > 0.05


def test_prefix_block_by_hand():
    pos = np.array([[-1, 1, 2, 3, 4, 5]])  # one padding token, a prefix of 3, a suffix of 2
    types = np.array([[0, 0, 0, 0, 1, 1]])
    assert paligemma.prefix_block(pos, types).tolist() == [[[0, -1], [1, 3], [1, 3], [1, 3], [5, 4], [6, 5]]]
    from gemma_ref.model import visible
    seen = visible(pos[:, 3:], pos, window=2, reach=paligemma.prefix_block(pos, types)[:, 3:])[0]
    # the last prefix token sees the whole prefix despite the window; the suffix is causal and windowed
    assert seen.astype(int).tolist() == [[0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1]]


def test_hub_key_layout(tmp_path):
    """Hub checkpoints name the tower vision_tower.vision_model.*: the same features."""
    src = DATA / "paligemma1-mqa"
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, tmp_path)
    tensors = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): t.read()
               for k, t in read_safetensors(src / "model.safetensors").items()}
    write_safetensors(tmp_path / "model.safetensors", tensors)
    g = np.load(src / "golden.npz")
    features = Model.from_pretrained(tmp_path, progress=False).embed_images(images_of(["rgb_wide.png"]))
    np.testing.assert_allclose(features, g["one.image_features"], atol=TOL, rtol=0)


def test_hub_config_takes_transformers_defaults(tmp_path):
    """A Hub config.json states little of text_config (PaliGemma 1 3B's): the rest is
    transformers' GemmaConfig defaults."""
    raw = {"model_type": "paligemma", "image_token_index": 257152, "projection_dim": 2048, "hidden_size": 2048,
           "text_config": {"hidden_size": 2048, "intermediate_size": 16384, "model_type": "gemma",
                           "num_attention_heads": 8, "num_hidden_layers": 18, "num_key_value_heads": 1,
                           "vocab_size": 257216},
           "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "model_type": "siglip_vision_model",
                             "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14,
                             "projection_dim": 2048}}
    c = paligemma.PaliGemmaConfig.from_dict(raw)
    assert (c.text.head_dim, c.text.max_position_embeddings, c.vision.image_size, c.tokens_per_image) == (
        256, 8192, 224, 256)
    assert round((c.text.num_parameters + sum(np.prod(s) for s in c.expected_shapes(2048).values())) / 1e9, 2) == 2.92
    # PaliGemma 2 3B: a Gemma 2 text_config without heads or layer types: transformers' defaults
    raw["text_config"] = {"hidden_size": 2304, "intermediate_size": 9216, "model_type": "gemma2",
                          "num_hidden_layers": 26, "num_key_value_heads": 4, "vocab_size": 257216}
    c = paligemma.PaliGemmaConfig.from_dict({**raw, "projection_dim": 2304})
    assert (c.text.num_attention_heads, c.text.final_logit_softcapping, c.text.layers[0].window,
            c.text.layers[1].window) == (8, 30.0, 4096, None)
    # No sub-configs at all: PaliGemmaConfig's own (PaliGemma 1 3B, 224 px)
    c = paligemma.PaliGemmaConfig.from_dict({"model_type": "paligemma"})
    assert (c.text.num_hidden_layers, c.vision.hidden_size, c.vision.intermediate_size, c.tokens_per_image) == (
        18, 1152, 4096, 256)


# --- invariants -------------------------------------------------------------------------


def test_cached_and_chunked_equal_the_full_forward(variant):
    """The prefix in one call with the cache, then the suffix token by token and in chunks
    of 2: the logits of one full forward (prefix both ways, suffix causal)."""
    model, g = variant
    ids = g["suffix.input_ids"][None]
    types = g["suffix.token_type_ids"][None]
    rows = model.embed_pixels(g["suffix.pixel_values"]).reshape(-1, model.config.hidden_size)
    T, P = ids.shape[1], int((types == 0).sum())
    pos = np.arange(T)[None] + 1
    full = forward(model.weights, model.config, ids, pos,
                   images=paligemma.image_tokens(ids, pos, types, rows, model.paligemma), n_vocab=model.n_vocab)[0]
    for step in (1, 2, 3):
        cache = model.new_cache(1, T + 1)
        got = [forward(model.weights, model.config, ids[:, :P], pos[:, :P], cache, n_vocab=model.n_vocab,
                       images=paligemma.image_tokens(ids[:, :P], pos[:, :P], types[:, :P], rows, model.paligemma))[0]]
        for a in range(P, T, step):
            got.append(forward(model.weights, model.config, ids[:, a:a + step], pos[:, a:a + step], cache,
                               n_vocab=model.n_vocab)[0])
        np.testing.assert_allclose(np.concatenate(got), full, atol=2e-5, rtol=0, err_msg=f"step {step}")


def test_batch_of_two_equals_two_singles(variant):
    model, g = variant
    one, f1 = model.prompt_ids(CASES["one"][0], images_of(CASES["one"][1]))
    two, f2 = model.prompt_ids(CASES["two"][0], images_of(CASES["two"][1]))
    assert len(one) != len(two)  # left padding in the batch
    steps = list(model.generate_ids([one, two], max_new_tokens=8, stop_ids=[], image_features=[f1, f2]))
    batch = [[s[b] for s in steps] for b in range(2)]
    assert batch == [g["one.greedy_ids"][:8].tolist(), g["two.greedy_ids"][:8].tolist()]
    assert batch[0] == model.generate(one, images=images_of(CASES["one"][1]), max_new_tokens=8, stop=[])


def test_trace_names(variant):
    model, g = variant
    trace = {}
    model.forward(g["one.input_ids"], images=images_of(["rgb_wide.png"]), token_type_ids=g["one.token_type_ids"],
                  trace=trace)
    for name in ["vision_tower.embeddings", "vision_tower.encoder.layers.0", "vision_tower.post_layernorm",
                 "multi_modal_projector", "model.inputs_embeds", "model.layers.0", "lm_head"]:
        assert name in trace, name
    np.testing.assert_allclose(trace["multi_modal_projector"], g["one.image_features"], atol=TOL, rtol=0)


# --- names, info, bad input ---------------------------------------------------------------


def test_aliases_and_info(capsys):
    for alias in ("paligemma-3b-pt-224", "paligemma-3b-mix-224", "paligemma2-3b-pt-224", "paligemma2-3b-mix-448"):
        assert hub.ALIASES[alias] == f"google/{alias}"
    assert main(["models"]) == 0
    assert "google/paligemma2-3b-pt-224" in capsys.readouterr().out
    assert main(["info", "-m", str(DATA / "paligemma2-gqa")]) == 0
    out = capsys.readouterr().out
    assert "PaliGemma 2 (Gemma 2 decoder)" in out and "16 tokens per image" in out and "prefix-LM" in out


@pytest.mark.parametrize("argv, message", [
    (["--image", "IMG", "--image", "IMG", "<image>x"], "1 <image> marker(s) for 2 image(s)"),
    (["--image", "missing.png", "x"], "missing.png: no such image file"),
    (["--chat", "--image", "IMG", "x"], "PaliGemma has no chat format"),
    (["caption en"], "PaliGemma needs an image"),
])
def test_cli_bad_input_one_line(argv, message, capsys):
    argv = [str(IMAGES / "l_tall.png") if a == "IMG" else a for a in argv]
    rc = main(["generate", "-m", str(DATA / "paligemma1-mqa"), "-n", "2", *argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if not line.startswith("gemma-ref: loaded")]
    assert rc == 1 and out == "" and len(lines) == 1 and message in lines[0], err


def test_cli_generate_with_an_image(capsys):
    g = np.load(DATA / "paligemma2-gqa" / "golden.npz")
    rc = main(["generate", "-m", str(DATA / "paligemma2-gqa"), "-n", "12", "--stop", "never-seen",
               "--image", str(IMAGES / "rgb_wide.png"), "Describe the image."])
    model = Model.from_pretrained(DATA / "paligemma2-gqa", progress=False)
    out = capsys.readouterr().out.rstrip("\n")
    assert rc == 0 and out == "Describe the image." + model.tokenizer.decode(g["one.greedy_ids"])


def test_api_bad_input(variant):
    model, g = variant
    with pytest.raises(GemmaRefError, match="token_type_ids must be 0s and 1s"):
        model.forward(g["one.input_ids"], images=images_of(["rgb_wide.png"]), token_type_ids=[0, 1])
    with pytest.raises(GemmaRefError, match="image soft tokens, the images give 0"):
        model.forward(g["one.input_ids"], token_type_ids=g["one.token_type_ids"])
    with pytest.raises(GemmaRefError, match="pan_and_scan"):
        model.generate("x", images=images_of(["rgb_wide.png"]), pan_and_scan=True)
    with pytest.raises(GemmaRefError, match="PaliGemma needs an image"):
        model.generate("caption en", max_new_tokens=1)
    with pytest.raises(GemmaRefError, match="generate takes one prompt"):
        model.generate(["caption en", "caption fr"], max_new_tokens=1)
    with pytest.raises(GemmaRefError, match="pixel values must be"):
        model.embed_pixels(np.zeros((1, 3, 8, 8), np.float32))


def test_bad_config(tmp_path):
    src = DATA / "paligemma1-mqa"
    raw = json.loads((src / "config.json").read_text())
    for change, message in [({"projection_dim": 7}, "projection_dim 7 is not"),
                            ({"text_config": {**raw["text_config"], "model_type": "gemma3_text"}}, "Gemma 1 or 2"),
                            ({"vision_config": {**raw["vision_config"], "vision_use_head": True}}, "vision_use_head")]:
        with pytest.raises(GemmaRefError, match=message):
            paligemma.PaliGemmaConfig.from_dict({**raw, **change})


def test_dump_and_compare(tmp_path):
    """`gemma-ref dump` of a prompt with an image: the processor's ids and pixels, the
    projector's trace and the greedy continuation of the golden; `compare` against a
    float64 run of the same dump lines the traces up (HF module names, tower included)."""
    from gemma_ref import reference

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": CASES["one"][0], "images": [str(IMAGES / "rgb_wide.png")]}) + "\n")
    out, model_dir = tmp_path / "dump.npz", DATA / "paligemma1-mqa"
    assert main(["dump", "-m", str(model_dir), "--prompts", str(prompts), "--trace", "-n", "12", "-o", str(out)]) == 0
    golden, g = reference.load(out), np.load(model_dir / "golden.npz")
    d = golden.prompts[0]
    assert d.input_ids.tolist() == g["one.input_ids"].tolist()
    np.testing.assert_array_equal(d.pixel_values, g["one.pixel_values"])
    np.testing.assert_allclose(d.trace["multi_modal_projector"], g["one.image_features"], atol=TOL, rtol=0)
    np.testing.assert_allclose(d.logits, g["one.logits"][:, :d.logits.shape[-1]], atol=TOL, rtol=0)
    assert d.greedy_ids.tolist() == g["one.greedy_ids"].tolist()
    model = Model.from_pretrained(model_dir, progress=False, dtype="float64")
    report = reference.compare(golden, reference.candidate_from_model(model, golden, trace=True))
    names = {t["name"] for t in report["prompts"][0]["trace"]}
    assert report["ok"] and {"vision_tower.encoder.layers.1", "multi_modal_projector", "model.layers.1"} <= names


@pytest.mark.parametrize("command", ["info", "generate"])
def test_cli_bad_checkpoint_one_line(command, tmp_path, capsys):
    src = DATA / "paligemma1-mqa"
    for f in src.iterdir():
        shutil.copy(f, tmp_path)
    raw = json.loads((src / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "projection_dim": 7}))
    extra = ["--image", str(IMAGES / "l_tall.png"), "x"] if command == "generate" else []
    rc = main([command, "-m", str(tmp_path), *extra])
    out, err = capsys.readouterr()
    assert rc == 1 and err.count("\n") == 1 and "projection_dim 7 is not the text model's hidden_size 32" in err
