"""Images in: Gemma 3's vision tower, projector, preprocessing and image prompts,
against goldens from transformers (tests/data/vision, scripts/make_vision_goldens.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gemma_ref import GemmaRefError, Model, api, vision
from gemma_ref.cli import main
from gemma_ref.loader import read_safetensors, write_safetensors
from gemma_ref.model import ImageTokens, forward
from gemma_ref.tokenizer import chat_images, chat_prompt

DATA = Path(__file__).parent / "data" / "vision"
IMAGES = DATA / "images"
VARIANTS = ["gemma3-vision-mqa", "gemma3-vision-gqa"]
TOL = 1e-4

# The cases of scripts/make_vision_goldens.py: prompt, images, pan_and_scan asked by the caller.
CASES = {
    "text": ("Once upon a time there was", [], None),
    "one": ("Describe <start_of_image> in one word.", ["rgb_wide.png"], None),
    "two": ("<start_of_image> versus\n<start_of_image>: which is brighter?", ["l_tall.png", "rgba_square.png"], None),
    "file": ("What is in <start_of_image>?", ["path:rgba.png"], None),
    "pas": ("Read <start_of_image>", ["rgb_wide.png"], True),
}


def images_of(names):
    """PIL images opened from the files (as the goldens were made); `path:` passes the path."""
    return [str(IMAGES / n[5:]) if n.startswith("path:") else Image.open(IMAGES / n) for n in names]


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request):
    d = DATA / request.param
    return Model.from_pretrained(d, progress=False), np.load(d / "golden.npz")


def cases_of(golden):
    return [c for c in CASES if f"{c}.input_ids" in golden]


# --- against transformers -----------------------------------------------------------


def test_pixels_tower_and_features(variant):
    model, g = variant
    for case in cases_of(g):
        prompt, names, pas = CASES[case]
        if not names:
            continue
        pixels, _ = vision.preprocess(images_of(names), model.preprocessing, pas)
        np.testing.assert_array_equal(pixels, g[f"{case}.pixel_values"])  # bit for bit
        trace = {}
        features = model.embed_images(images_of(names), pan_and_scan=pas, trace=trace)
        np.testing.assert_allclose(trace["vision_tower.post_layernorm"], g[f"{case}.vision_tower"],
                                   atol=TOL, rtol=0)
        np.testing.assert_allclose(features, g[f"{case}.image_features"], atol=TOL, rtol=0)
        assert features.shape == (len(pixels), model.vision.mm_tokens_per_image, model.config.hidden_size)


def test_prompt_ids_logits_and_greedy(variant):
    model, g = variant
    for case in cases_of(g):
        prompt, names, pas = CASES[case]
        ids, _ = model.prompt_ids(prompt, images_of(names), pan_and_scan=pas)
        assert ids == g[f"{case}.input_ids"].tolist(), case
        logits = model.forward(np.array(ids), images=images_of(names), pan_and_scan=pas)
        V = logits.shape[-1]
        np.testing.assert_allclose(logits, g[f"{case}.logits"][:, :V], atol=TOL, rtol=0, err_msg=case)
        # Greedy with the KV cache, from ids and from the text prompt.
        n = len(g[f"{case}.greedy_ids"])
        out = model.generate(ids, images=images_of(names), pan_and_scan=pas, max_new_tokens=n, stop=[])
        assert out == g[f"{case}.greedy_ids"].tolist(), case
        text = model.generate(prompt, images=images_of(names), pan_and_scan=pas, max_new_tokens=n, stop=[])
        assert text == model.tokenizer.decode(g[f"{case}.greedy_ids"])


def test_golden_sees_the_mask_and_the_unscaled_features(variant):
    """The goldens tell the image rules apart: a causal mask over the image tokens,
    or features scaled by sqrt(D) like token embeddings, are far off."""
    model, g = variant
    ids = g["two.input_ids"][None]
    rows = model.embed_pixels(g["two.pixel_values"]).reshape(-1, model.config.hidden_size)
    right = vision.image_tokens(ids, np.arange(ids.shape[1])[None], rows, model.vision)
    golden = g["two.logits"][:, :model.n_vocab]
    for wrong in (ImageTokens(right.at, right.embeds, np.arange(ids.shape[1])[None]),
                  ImageTokens(right.at, right.embeds * np.sqrt(model.config.hidden_size), right.reach)):
        logits = forward(model.weights, model.config, ids, images=wrong, n_vocab=model.n_vocab)[0]
        assert np.abs(logits - golden).max() > 0.1
    logits = forward(model.weights, model.config, ids, images=right, n_vocab=model.n_vocab)[0]
    assert np.abs(logits - golden).max() < TOL


def test_hub_key_layout(tmp_path):
    """Hub checkpoints name the tower vision_tower.vision_model.*: same features."""
    src = DATA / "gemma3-vision-mqa"
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, tmp_path)
    tensors = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): t.read()
               for k, t in read_safetensors(src / "model.safetensors").items()}
    assert any(k.startswith("vision_tower.vision_model.") for k in tensors)
    write_safetensors(tmp_path / "model.safetensors", tensors)
    g = np.load(src / "golden.npz")
    features = Model.from_pretrained(tmp_path, progress=False).embed_images(images_of(["rgb_wide.png"]))
    np.testing.assert_allclose(features, g["one.image_features"], atol=TOL, rtol=0)


# --- invariants -----------------------------------------------------------------------


def test_chunked_prefill_keeps_images_whole(variant, monkeypatch):
    """Prefill in chunks of 5 tokens (images are longer): chunk ends move past images,
    and the continuation is the golden one; a no-cache forward agrees with it."""
    model, g = variant
    monkeypatch.setattr(api, "PREFILL_CHUNK", 5)
    prompt, names, pas = CASES["two"]
    ids, _ = model.prompt_ids(prompt, images_of(names), pan_and_scan=pas)
    chunks = api._prefill_chunks(np.array([ids]), model.vision, 5)
    soft = np.array(ids) == model.vision.image_token_index
    assert all(not (soft[e - 1] and soft[e]) for _, e in chunks[:-1])
    assert len(chunks) > 3
    n = len(g["two.greedy_ids"])
    out = model.generate(ids, images=images_of(names), max_new_tokens=n, stop=[])
    assert out == g["two.greedy_ids"].tolist()
    full = model.forward(np.array(ids + out), images=images_of(names))
    assert full[len(ids) - 1:-1].argmax(-1).tolist() == out


def test_pipelined_prefill_keeps_images_whole(variant, monkeypatch):
    """The same with the chunks pipelined on 2 threads (parallel.pipelined): an image's
    tokens, which see each other both ways, stay in one chunk; the golden continuation."""
    from gemma_ref import parallel

    model, g = variant
    monkeypatch.setattr(api, "PREFILL_CHUNK", 5)
    monkeypatch.setattr(parallel, "MIN_PIPELINED", 2)
    prompt, names, pas = CASES["two"]
    ids, _ = model.prompt_ids(prompt, images_of(names), pan_and_scan=pas)
    n = len(g["two.greedy_ids"])
    try:
        parallel.set_threads(2)
        assert parallel.prefill_chunk_size(len(ids), 5) <= 5
        out = model.generate(ids, images=images_of(names), max_new_tokens=n, stop=[])
    finally:
        parallel.set_threads(None)
    assert out == g["two.greedy_ids"].tolist()


def test_batch_with_and_without_images_equals_singles(variant):
    model, g = variant
    with_images, features = model.prompt_ids(CASES["one"][0], images_of(CASES["one"][1]))
    text = model.prompt_ids("A text prompt")[0]
    steps = list(model.generate_ids([text, with_images], max_new_tokens=6, stop_ids=[],
                                    image_features=[None, features]))
    batch = [[s[b] for s in steps] for b in range(2)]
    assert batch[0] == model.generate(text, max_new_tokens=6, stop=[])
    assert batch[1] == g["one.greedy_ids"][:6].tolist()


def test_image_reach():
    c = vision.VisionConfig(image_token_index=9)
    ids = np.array([[1, 9, 9, 9, 2, 9, 9, 3]])
    pos = np.arange(8)[None]
    assert vision.image_reach(ids, pos, c).tolist() == [[0, 3, 3, 3, 4, 6, 6, 7]]


def test_trace_names_follow_transformers(variant):
    model, g = variant
    trace = {}
    prompt, names, _ = CASES["one"]
    ids, _ = model.prompt_ids(prompt, images_of(names))
    model.forward(np.array(ids), images=images_of(names), trace=trace)
    for name in ["vision_tower.embeddings", "vision_tower.encoder.layers.0",
                 "vision_tower.post_layernorm", "multi_modal_projector", "model.layers.0", "lm_head"]:
        assert name in trace, name
    np.testing.assert_allclose(trace["multi_modal_projector"], g["one.image_features"], atol=TOL, rtol=0)


# --- preprocessing by hand -----------------------------------------------------------


def test_rgb_conversion():
    grey = Image.fromarray(np.array([[0, 100], [200, 255]], np.uint8), "L")
    assert vision.to_rgb(grey).tolist() == [[[v] * 3 for v in row] for row in [[0, 100], [200, 255]]]
    # RGBA onto white: transparent -> white, opaque -> itself, half -> halfway.
    rgba = np.array([[[0, 0, 0, 0], [10, 20, 30, 255], [0, 0, 0, 128]]], np.uint8)
    rgb = vision.to_rgb(Image.fromarray(rgba, "RGBA"))
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [10, 20, 30]
    assert all(abs(v - 127) <= 1 for v in rgb[0, 2])
    # Arrays are taken as PIL images of the same mode.
    assert np.array_equal(vision.to_rgb(vision.load_image(rgba)), rgb)


def test_pan_and_scan_crops():
    p = vision.Preprocessing(size=(8, 8), pan_and_scan_min_crop_size=10)
    wide = np.zeros((20, 50, 3), np.uint8)  # ratio 2.5: round(2.5) = 3 crops of 17 columns
    crops = vision.pan_and_scan(wide, p)
    assert [c.shape for c in crops] == [(20, 17, 3), (20, 17, 3), (20, 16, 3)]
    assert vision.pan_and_scan(np.zeros((20, 22, 3), np.uint8), p) == []  # ratio 1.1 < 1.2
    assert vision.pan_and_scan(np.zeros((20, 50, 3), np.uint8),
                               vision.Preprocessing(size=(8, 8))) == []  # crops < 256 px


def test_normalize_uses_the_config():
    p = vision.Preprocessing(size=(2, 2), image_mean=(0.0, 0.5, 1.0), image_std=(1.0, 0.5, 0.25))
    x = vision.normalize_pixels(np.full((2, 2, 3), 255, np.uint8), p)
    assert x.shape == (3, 2, 2) and x.dtype == np.float32
    assert x[:, 0, 0].tolist() == [1.0, 1.0, 0.0]


def test_preprocessor_config_nulls_take_defaults(tmp_path):
    f = tmp_path / "preprocessor_config.json"
    f.write_text(json.dumps({"size": {"height": 896, "width": 896}, "do_pan_and_scan": None,
                             "pan_and_scan_min_crop_size": None, "resample": 2,
                             "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    p = vision.Preprocessing.from_json(f)
    assert p.size == (896, 896) and not p.do_pan_and_scan and p.pan_and_scan_min_crop_size == 256


def test_chat_with_image_parts(variant):
    model, g = variant
    messages = [{"role": "user", "content": [{"type": "image", "image": IMAGES / "rgb_wide.png"},
                                             {"type": "text", "text": "  What is it? "}]}]
    assert chat_prompt(messages) == ("<bos><start_of_turn>user\n<start_of_image>What is it?<end_of_turn>\n"
                                     "<start_of_turn>model\n")
    assert chat_images(messages) == [IMAGES / "rgb_wide.png"]
    expected = model.generate(chat_prompt(messages), images=[IMAGES / "rgb_wide.png"], max_new_tokens=5,
                              stop=[])
    assert model.chat(messages, max_new_tokens=5, stop=[]) == expected


# --- bad input -------------------------------------------------------------------------


def test_bad_images(variant, tmp_path):
    model, _ = variant
    (tmp_path / "junk.png").write_text("not an image")
    bad = [
        (dict(images=[tmp_path / "missing.png"]), "no such image file"),
        (dict(images=[tmp_path / "junk.png"]), "cannot read the image"),
        (dict(images=[np.zeros((4, 4, 3), np.float32)]), "uint8 array"),
    ]
    for kw, message in bad:
        with pytest.raises(GemmaRefError, match=message):
            model.generate("Hi <start_of_image>", max_new_tokens=1, **kw)
    img = IMAGES / "l_tall.png"
    with pytest.raises(GemmaRefError, match="2 <start_of_image> marker.* for 1 image"):
        model.generate("<start_of_image> and <start_of_image>", images=[img], max_new_tokens=1)
    with pytest.raises(GemmaRefError, match="1 <start_of_image> marker.* for 2 image"):
        model.generate("<start_of_image> only", images=[img, img], max_new_tokens=1)
    with pytest.raises(GemmaRefError, match="1 <start_of_image> marker.* but no images"):
        model.generate("<start_of_image> where?", max_new_tokens=1)
    ids, _ = model.prompt_ids("<start_of_image>", [img])
    with pytest.raises(GemmaRefError, match="image soft tokens"):
        model.forward(np.array(ids), images=[img, img])


def test_text_only_model_refuses_images():
    model = Model.from_pretrained(Path(__file__).parent / "data" / "tiny" / "gemma3-gqa", progress=False)
    with pytest.raises(GemmaRefError, match="takes no images"):
        model.generate("Hi", images=[IMAGES / "l_tall.png"], max_new_tokens=1)


@pytest.mark.parametrize("argv, message", [
    (["--image", "missing.png", "x"], "missing.png: no such image file"),
    (["--image", "README.md", "x"], "cannot read the image"),
    (["--image", "IMG", "--image", "IMG", "<start_of_image>x"], "1 <start_of_image> marker(s) for 2"),
    (["--chat", "--image", "IMG", "<start_of_image><start_of_image>x"], "2 <start_of_image> marker(s) for 1"),
])
def test_cli_bad_images_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).parent.parent)
    argv = [str(IMAGES / "l_tall.png") if a == "IMG" else a for a in argv]
    rc = main(["generate", "-m", str(DATA / "gemma3-vision-mqa"), "-n", "2", *argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if not line.startswith("gemma-ref: loaded")]
    assert rc == 1 and out == "" and len(lines) == 1 and message in lines[0], err


def test_cli_text_only_model(capsys):
    rc = main(["generate", "-m", str(Path(__file__).parent / "data" / "tiny" / "gemma3-gqa"), "-n", "2",
               "--image", str(IMAGES / "l_tall.png"), "x"])
    err = capsys.readouterr().err
    assert rc == 1 and "takes no images" in err and "Traceback" not in err


def test_cli_generate_with_image(capsys):
    g = np.load(DATA / "gemma3-vision-mqa" / "golden.npz")
    rc = main(["generate", "-m", str(DATA / "gemma3-vision-mqa"), "-n", "12", "--stop", "never-seen",
               "--image", str(IMAGES / "rgba.png"), "What is in <start_of_image>?"])
    out = capsys.readouterr().out
    tok = Model.from_pretrained(DATA / "gemma3-vision-mqa", progress=False).tokenizer
    assert rc == 0
    assert out == "What is in <start_of_image>?" + tok.decode(g["file.greedy_ids"]) + "\n"


def test_dump_and_compare_on_the_image_path(tmp_path):
    """`dump` of a prompt with images keeps its pixel values and the tower's trace (HF module
    names); `compare` reruns the model on those pixels and lines the traces up per image."""
    from gemma_ref import reference

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Describe <start_of_image> in one word.",
                                   "images": [str(IMAGES / "rgb_wide.png")]}) + "\n\"Plain text\"\n")
    out = tmp_path / "dump.npz"
    model_dir = DATA / "gemma3-vision-mqa"
    assert main(["dump", "-m", str(model_dir), "--prompts", str(prompts), "--trace", "-n", "12",
                 "-o", str(out)]) == 0
    golden = reference.load(out)
    g = np.load(model_dir / "golden.npz")
    d = golden.prompts[0]
    assert d.input_ids.tolist() == g["one.input_ids"].tolist()
    np.testing.assert_array_equal(d.pixel_values, g["one.pixel_values"])
    np.testing.assert_allclose(d.trace["multi_modal_projector"], g["one.image_features"], atol=TOL, rtol=0)
    assert d.greedy_ids.tolist() == g["one.greedy_ids"].tolist()
    # hidden_states[0] is the input of layer 0, as transformers': the image features merged in
    soft = d.input_ids == 512
    np.testing.assert_allclose(d.hidden_states[0][soft], g["one.image_features"].reshape(soft.sum(), -1),
                               atol=TOL, rtol=0)
    model = Model.from_pretrained(model_dir, progress=False, dtype="float64")
    report = reference.compare(golden, reference.candidate_from_model(model, golden, trace=True))
    names = {t["name"] for t in report["prompts"][0]["trace"]}
    assert report["ok"] and {"vision_tower.encoder.layers.1", "multi_modal_projector"} <= names


# --- Gemma 4 ---------------------------------------------------------------------------

G4 = DATA / "gemma4-vision"
G4_CASES = {
    "text": ("Once upon a time there was", []),
    "one": ("Describe <|image|> in one word.", ["rgb_wide.png"]),
    "two": ("<|image|> versus\n<|image|>: which is brighter?", ["l_tall.png", "rgba_square.png"]),
    "file": ("What is in <|image|>?", ["path:rgba.png"]),
}


@pytest.fixture(scope="module")
def gemma4():
    return Model.from_pretrained(G4, progress=False), np.load(G4 / "golden.npz")


def test_gemma4_patches_and_features(gemma4):
    from gemma_ref import vision_gemma4

    model, g = gemma4
    for case, (_, names) in G4_CASES.items():
        if not names:
            continue
        features = model.embed_images(images_of(names))
        for k, image in enumerate(images_of(names)):
            patches, xy = vision_gemma4.preprocess_one(image, model.preprocessing)
            n = len(patches)  # the processor pads to max_soft_tokens * k^2 patches with (-1, -1)
            np.testing.assert_array_equal(patches, g[f"{case}.pixel_values"][k, :n])
            np.testing.assert_array_equal(xy, g[f"{case}.image_position_ids"][k, :n])
            assert (g[f"{case}.image_position_ids"][k, n:] == -1).all()
        assert [len(f) for f in features] == g[f"{case}.num_soft_tokens"].tolist()
        np.testing.assert_allclose(np.concatenate(features), g[f"{case}.image_features"], atol=TOL, rtol=0)


def test_gemma4_prompt_ids_logits_and_greedy(gemma4):
    model, g = gemma4
    for case, (prompt, names) in G4_CASES.items():
        ids, _ = model.prompt_ids(prompt, images_of(names))
        assert ids == g[f"{case}.input_ids"].tolist(), case
        logits = model.forward(np.array(ids), images=images_of(names))
        np.testing.assert_allclose(logits, g[f"{case}.logits"][:, :logits.shape[-1]], atol=TOL, rtol=0,
                                   err_msg=case)
        n = len(g[f"{case}.greedy_ids"])
        out = model.generate(ids, images=images_of(names), max_new_tokens=n, stop=[])
        assert out == g[f"{case}.greedy_ids"].tolist(), case


def test_gemma4_images_see_each_other_on_sliding_layers_only(gemma4):
    """The golden tells the layers apart: both ways on every layer, or on none, is far off."""
    import dataclasses

    model, g = gemma4
    ids = g["one.input_ids"][None]
    rows = np.concatenate(model.embed_images(images_of(["rgb_wide.png"])))
    right = vision.image_tokens(ids, np.arange(ids.shape[1])[None], rows, model.vision)
    assert right.layers == "sliding"
    golden = g["one.logits"][:, :model.n_vocab]
    for layers, far in (("sliding", False), ("all", True), ("none", True)):
        logits = forward(model.weights, model.config, ids, images=dataclasses.replace(right, layers=layers),
                         n_vocab=model.n_vocab)[0]
        assert (np.abs(logits - golden).max() > 0.1) == far, layers


def test_gemma4_markers_and_chunked_prefill(gemma4, monkeypatch):
    model, g = gemma4
    # <start_of_image> (what chat_prompt writes for image parts) is taken as Gemma 4's marker too.
    ids, _ = model.prompt_ids("Describe <start_of_image> in one word.", images_of(["rgb_wide.png"]))
    assert ids == g["one.input_ids"].tolist()
    with pytest.raises(GemmaRefError, match=re.escape("2 <|image|> marker(s) for 1 image")):
        model.prompt_ids("<|image|><|image|>", images_of(["rgb_wide.png"]))
    monkeypatch.setattr(api, "PREFILL_CHUNK", 7)
    prompt, names = G4_CASES["two"]
    n = len(g["two.greedy_ids"])
    assert model.generate(prompt, images=images_of(names), max_new_tokens=n, stop=[]) == \
        model.tokenizer.decode(g["two.greedy_ids"])


# --- chat with images, as transformers' processors (scripts/make_vision_chat_goldens.py) ----

CHAT_GOLDEN = json.loads((DATA / "chat_golden.json").read_text())


def _chat_messages(messages):
    """The golden's conversation with image paths made absolute."""
    return [{**m, "content": [{**p, "image": str(DATA / p["image"])} if p.get("type") == "image" else p
                              for p in m["content"]]} if isinstance(m["content"], list) else m
            for m in messages]


@pytest.mark.parametrize("name", sorted(CHAT_GOLDEN["variants"]))
def test_chat_with_images_as_the_processor(name):
    """Model.chat renders the (built-in) template, whose image marker (Gemma 3 <start_of_image>,
    Gemma 4 <|image|>) prompt_ids expands: the ids and the greedy reply of transformers'
    processor.apply_chat_template + model.generate."""
    model = Model.from_pretrained(DATA / name, progress=False)
    assert model.chat_template.builtin and CHAT_GOLDEN["variants"][name]["template"] in model.chat_template.source
    for case, want in CHAT_GOLDEN["variants"][name]["cases"].items():
        messages = _chat_messages(CHAT_GOLDEN["conversations"][case])
        prompt = model.chat_prompt(messages)
        assert prompt == want["text"], case
        ids, _ = model.prompt_ids(prompt, chat_images(messages))
        assert ids == want["input_ids"], case
        n = len(want["greedy_ids"])
        assert model.generate(ids, images=chat_images(messages), max_new_tokens=n, stop=[]) == \
            want["greedy_ids"], case
        assert model.chat(messages, max_new_tokens=n, stop=[]) == model.tokenizer.decode(want["greedy_ids"]), case


def test_cli_chat_with_an_image_marker_of_either_generation(capsys):
    """generate --chat --image: the prompt may place the image with <start_of_image> or, for
    Gemma 4, with its own <|image|>; both give the template's image part there."""
    want = CHAT_GOLDEN["variants"]["gemma4-vision"]["cases"]["image_then_text"]
    tok = Model.from_pretrained(G4, progress=False).tokenizer
    for prompt in ("Describe this image.", "<|image|>Describe this image.", "<start_of_image>Describe this image."):
        rc = main(["generate", "-m", str(G4), "--chat", "-n", "8", "--stop", "never-seen",
                   "--image", str(IMAGES / "rgb_wide.png"), prompt])
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert out == tok.decode(want["greedy_ids"]) + "\n", prompt


def test_gemma4_dump_and_compare_on_the_image_path(tmp_path, capsys):
    """`dump` of a Gemma 4 image prompt keeps transformers' processor outputs (pixel_values
    [I, n, 3p^2] padded with zeros, image_position_ids [I, n, 2] padded with -1) and the
    tower's trace (patch entries [I, n, Dv], padding rows zero; vision_tower / embed_vision
    per soft token, as transformers' outputs); `compare --model` reruns it from those."""
    from gemma_ref import reference

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": G4_CASES["one"][0], "images": [str(IMAGES / "rgb_wide.png")]})
                       + "\n\"Plain text\"\n")
    out = tmp_path / "dump.npz"
    assert main(["dump", "-m", str(G4), "--prompts", str(prompts), "--trace", "-n", "12", "-o", str(out)]) == 0
    g = np.load(G4 / "golden.npz")
    d = reference.load(out).prompts[0]
    assert d.input_ids.tolist() == g["one.input_ids"].tolist()
    np.testing.assert_array_equal(d.pixel_values, g["one.pixel_values"])
    np.testing.assert_array_equal(d.image_position_ids, g["one.image_position_ids"])
    np.testing.assert_allclose(d.trace["vision_tower"], g["one.vision_tower"], atol=TOL, rtol=0)
    np.testing.assert_allclose(d.trace["embed_vision"], g["one.image_features"], atol=TOL, rtol=0)
    n = len(vision_gemma4_patches(g, "one"))
    layer = d.trace["vision_tower.encoder.layers.1"]
    assert layer.shape == (1, 280, 32) and (layer[0, n:] == 0).all() and (layer[0, :n] != 0).any()
    np.testing.assert_allclose(d.logits, g["one.logits"][:, :d.logits.shape[1]], atol=TOL, rtol=0)
    assert d.greedy_ids.tolist() == g["one.greedy_ids"].tolist()
    # transformers embeds Gemma 4's soft tokens as <pad> before they are replaced: so does the trace
    model = Model.from_pretrained(G4, progress=False)
    pad = model.weights["model.embed_tokens.weight"][0] * np.float32(np.sqrt(32))
    np.testing.assert_array_equal(d.trace["model.embed_tokens"][d.input_ids == 512], np.broadcast_to(pad, (60, 32)))
    rc = main(["compare", str(out), "-m", str(G4), "--dtype", "float64", "--json"])
    report = json.loads(capsys.readouterr().out)
    names = {t["name"] for t in report["prompts"][0]["trace"]}
    assert rc == 0 and report["ok"]
    assert {"vision_tower.patch_embedder", "vision_tower.encoder.layers.1", "vision_tower", "embed_vision"} <= names


def vision_gemma4_patches(g, case):
    return [xy for xy in g[f"{case}.image_position_ids"][0] if (xy != -1).all()]


def test_gemma4_pixel_values_in(gemma4):
    """The processor's outputs as images= (a dict), as transformers takes them; bad ones: one error."""
    model, g = gemma4
    inputs = {"pixel_values": g["two.pixel_values"], "image_position_ids": g["two.image_position_ids"]}
    features = model.embed_images(inputs)
    assert [len(f) for f in features] == g["two.num_soft_tokens"].tolist()
    np.testing.assert_allclose(np.concatenate(features), g["two.image_features"], atol=TOL, rtol=0)
    logits = model.forward(g["two.input_ids"], images=inputs)
    np.testing.assert_allclose(logits, g["two.logits"][:, :logits.shape[-1]], atol=TOL, rtol=0)
    for bad, message in [(g["two.pixel_values"], "need their image_position_ids"),
                         ({"pixel_values": g["two.pixel_values"]}, "need their image_position_ids"),
                         ({**inputs, "image_position_ids": inputs["image_position_ids"][:, :10]}, r"\[I, n, 2\]"),
                         ({**inputs, "extra": 1}, "the processor's 'pixel_values'")]:
        with pytest.raises(GemmaRefError, match=message):
            model.embed_images(bad)
