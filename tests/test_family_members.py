"""Family members close to the generation models: VaultGemma, ShieldGemma 2, Gemma 4 12B Unified.

Their goldens were made by scripts/make_family_goldens.py with transformers 5.25
(float32, eager attention): VaultGemma's in tests/data/tiny/vaultgemma-mqa (also read by
test_goldens_tiny.py and, as a seeded variant, by test_invariants.py), the others in
tests/data/family/*/ (see their PROVENANCE.md).
"""

import json
import shutil

import numpy as np
import pytest

from conftest import DATA
from gemma_ref import Model
from gemma_ref.cli import main
from gemma_ref.config import GemmaConfig
from gemma_ref.errors import GemmaRefError

VAULT = DATA / "tiny" / "vaultgemma-mqa"


# --- VaultGemma ------------------------------------------------------------------------


def test_vaultgemma_is_gemma2_without_output_norms():
    raw = json.loads((VAULT / "config.json").read_text())
    vault = GemmaConfig.from_dict(raw)
    gemma2 = GemmaConfig.from_dict({**raw, "model_type": "gemma2"})
    assert (vault.sandwich_norms, gemma2.sandwich_norms) == (False, True)
    assert vault.mlp_input_norm == gemma2.mlp_input_norm == "pre_feedforward_layernorm"
    assert vault.attn_logit_softcapping == 5.0 and vault.final_logit_softcapping == 3.0
    # no layer_types: Gemma 2's alternation, as VaultGemmaConfig's default
    del raw["layer_types"]
    assert GemmaConfig.from_dict(raw).layer_types == ("sliding_attention", "full_attention") * 2


def test_vaultgemma_parameters_are_the_files():
    from safetensors.numpy import load_file

    model = Model.from_pretrained(VAULT)
    tensors = load_file(str(VAULT / "model.safetensors"))
    assert model.config.num_parameters == sum(t.size for t in tensors.values())
    assert not any("post_attention_layernorm" in k or "post_feedforward" in k for k in tensors)


def test_vaultgemma_checkpoint_with_gemma2_norms_is_refused(tmp_path, capsys):
    """A stray post-attention norm is a strict-loading error naming the tensor."""
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "vault"
    shutil.copytree(VAULT, d)
    tensors = load_file(str(VAULT / "model.safetensors"))
    tensors["model.layers.0.post_attention_layernorm.weight"] = np.zeros(48, np.float32)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(GemmaRefError, match="post_attention_layernorm"):
        Model.from_pretrained(d)
    assert main(["generate", "--model", str(d), "hello"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gemma-ref: error:") and "post_attention_layernorm" in err[0]


def test_vaultgemma_listed_and_described(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:1] == ["vaultgemma-1b"] and line.endswith("google/vaultgemma-1b")
               for line in out.splitlines())
    assert main(["info", "--model", str(VAULT)]) == 0
    out = capsys.readouterr().out
    assert "vaultgemma" in out and "none on their outputs" in out


# --- ShieldGemma 2 ---------------------------------------------------------------------

SHIELD = DATA / "family" / "shieldgemma2"
IMAGES = DATA / "vision" / "images"
CASES = {  # as scripts/make_family_goldens.py's SHIELDGEMMA2_CASES
    "defaults": (["rgb_wide", "l_tall"], {}),
    "custom": (["rgba_square"], {"policies": ["violence", "cats"],
                                 "custom_policies": {"cats": "No Cats: The image shall not show a cat."}}),
}


@pytest.fixture(scope="module")
def shield():
    return Model.from_pretrained(SHIELD), dict(np.load(SHIELD / "golden.npz"))


def _pil(names):
    from PIL import Image

    return [Image.open(IMAGES / f"{n}.png") for n in names]  # as the golden script passed them


@pytest.mark.parametrize("case", CASES)
def test_shieldgemma2_prompts_are_the_processors(shield, case):
    model, g = shield
    names, kw = CASES[case]
    definitions = {**model.policy_definitions, **kw.get("custom_policies", {})}
    texts = [definitions[p] for p in kw.get("policies", definitions)]
    rows = g[f"{case}.input_ids"]
    assert len(rows) == len(names) * len(texts)
    for r, (ids, mask) in enumerate(zip(rows, g[f"{case}.attention_mask"])):
        assert model.policy_prompt_ids(texts[r % len(texts)]) == ids[mask == 1].tolist()


@pytest.mark.parametrize("case", CASES)
def test_shieldgemma2_probabilities_match_transformers(shield, case):
    model, g = shield
    names, kw = CASES[case]
    logits = model.policy_logits(_pil(names), **kw)
    probs = model.classify_image(_pil(names), **kw)
    print(f"shieldgemma2 {case}: max |dlogit| {np.abs(logits - g[f'{case}.logits']).max():.2e}, "
          f"max |dprob| {np.abs(probs - g[f'{case}.probabilities']).max():.2e}")
    assert np.abs(logits - g[f"{case}.logits"]).max() <= 1e-4
    assert np.abs(probs - g[f"{case}.probabilities"]).max() <= 1e-5
    assert probs.shape == (len(names) * len(kw.get("policies", model.policy_definitions)), 2)


def test_shieldgemma2_transformers5_key_layout(shield, tmp_path):
    """transformers 5.25 saves model.model.language_model.model.*, model.model.vision_tower.*:
    the same weights, the same answer."""
    from safetensors.numpy import load_file, save_file

    model, g = shield
    d = tmp_path / "tf5"
    shutil.copytree(SHIELD, d)
    renamed = {}
    for k, v in load_file(str(SHIELD / "model.safetensors")).items():
        if k == "model.language_model.lm_head.weight":
            continue
        k = k.replace("model.vision_tower.vision_model.", "model.vision_tower.")
        renamed["model." + k] = v
    save_file(renamed, str(d / "model.safetensors"))
    images = _pil(CASES["defaults"][0])
    np.testing.assert_array_equal(Model.from_pretrained(d).classify_image(images), model.classify_image(images))


def test_shieldgemma2_bad_inputs(shield, capsys):
    model, _ = shield
    image = _pil(["rgb_wide"])
    with pytest.raises(GemmaRefError, match="unknown.*'weapons'.*custom_policies"):
        model.classify_image(image, policies=["weapons"])
    with pytest.raises(GemmaRefError, match="custom_policies must be a dict"):
        model.classify_image(image, custom_policies=["x"])
    with pytest.raises(GemmaRefError, match="no images"):
        model.classify_image([])
    with pytest.raises(GemmaRefError, match="image safety classifier"):
        model.generate("hello")
    for argv in (["generate", "--model", str(SHIELD), "hello"], ["generate", "--model", str(SHIELD), "--chat", "hi"],
                 ["dump", "--model", str(SHIELD), "--prompt", "hi", "-o", "/nonexistent/x.npz"],
                 ["perplexity", "--model", str(SHIELD), str(IMAGES.parent / "README.md")]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("gemma-ref: error:") and "image safety classifier" in err[-1]
        assert not any("Traceback" in line for line in err)


def test_shieldgemma2_described(capsys):
    assert main(["info", "--model", str(SHIELD)]) == 0
    out = capsys.readouterr().out
    assert "ShieldGemma 2" in out and "dangerous, sexual, violence" in out
    from safetensors.numpy import load_file

    n = sum(t.size for k, t in load_file(str(SHIELD / "model.safetensors")).items() if "lm_head" not in k)
    assert f"parameters  {n:,}" in out


# --- Gemma 4 12B Unified -----------------------------------------------------------------

UNIFIED = DATA / "family" / "gemma4-unified"
UNIFIED_CASES = {"text": [], "one": ["rgb_wide"], "two": ["l_tall", "rgba_square"]}


@pytest.fixture(scope="module")
def unified():
    return Model.from_pretrained(UNIFIED), dict(np.load(UNIFIED / "golden.npz"))


def test_unified_config_is_gemma4_text_without_ple_or_experts(unified):
    model, _ = unified
    c = model.config
    assert c.model_type == "gemma4_unified_text" and c.norm_offset == 0 and c.layer_scalar
    assert c.hidden_size_per_layer_input == 0 and not c.enable_moe_block
    assert c.layers[-1].kv_source == 1 and c.layers[1].head_dim == 32
    assert model.vision.num_hidden_layers == 0 and model.vision.patch_size == 8


@pytest.mark.parametrize("case", ["one", "two"])
def test_unified_image_embedder_matches_transformers(unified, case):
    model, g = unified
    feats = model.embed_images(_pil(UNIFIED_CASES[case]))
    assert [len(f) for f in feats] == g[f"{case}.num_soft_tokens"].tolist()
    delta = np.abs(np.concatenate(feats) - g[f"{case}.image_features"]).max()
    from_pixels = model.embed_images({"pixel_values": g[f"{case}.pixel_values"],
                                      "image_position_ids": g[f"{case}.image_position_ids"]})
    print(f"gemma4-unified {case}: image features max |d| {delta:.2e}")
    assert delta <= 1e-4
    np.testing.assert_allclose(np.concatenate(from_pixels), g[f"{case}.image_features"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", UNIFIED_CASES)
def test_unified_logits_and_greedy_match_transformers(unified, case):
    model, g = unified
    images = _pil(UNIFIED_CASES[case])
    ids = g[f"{case}.input_ids"]
    logits = model.forward(ids, images=images or None)
    delta = np.abs(logits - g[f"{case}.logits"][:, :model.n_vocab]).max()
    print(f"gemma4-unified {case}: max |dlogit| {delta:.2e}")
    assert delta <= 1e-4
    out = model.generate(ids.tolist(), images=images, max_new_tokens=len(g[f"{case}.greedy_ids"]), stop=[])
    assert out == g[f"{case}.greedy_ids"].tolist()
    if images:  # the prompt's markers expand as the processor's
        prompt = {"one": "Describe <|image|> in one word.",
                  "two": "<|image|> versus\n<|image|>: which is brighter?"}[case]
        assert model.prompt_ids(prompt, images)[0] == ids.tolist()


def test_unified_images_see_each_other_on_sliding_layers_only(unified):
    """transformers' generate() masks (the goldens' `logits`), not its plain forward's, which
    lets an image's tokens see each other on every layer (`logits_forward`: far off)."""
    model, g = unified
    assert np.abs(g["one.logits_forward"] - g["one.logits"]).max() > 0.1
    logits = model.forward(g["one.input_ids"], images=_pil(["rgb_wide"]))
    assert np.abs(logits - g["one.logits"][:, :model.n_vocab]).max() <= 1e-4


def test_unified_audio_embedder_matches_transformers(unified):
    """Raw 640-sample frames -> weightless RMSNorm -> Linear, as get_audio_features (the
    prompts: tests/test_unified_audio.py)."""
    from gemma_ref.audio_features import raw_frames

    model, g = unified
    frames, mask = raw_frames(g["audio.waveform"], 640)
    np.testing.assert_array_equal(frames, g["audio.input_features"][0])
    assert mask.all() and g["audio.input_features_mask"].all()
    (feats,) = model.embed_audio((g["audio.waveform"], 16_000))
    delta = np.abs(feats - g["audio.features"][0]).max()
    print(f"gemma4-unified audio: max |d| {delta:.2e}")
    assert delta <= 1e-4
    with pytest.raises(GemmaRefError, match="mono"):
        raw_frames(np.zeros((2, 640)), 640)


def test_unified_bad_inputs_and_info(unified, capsys):
    model, g = unified
    with pytest.raises(GemmaRefError, match="marker"):
        model.prompt_ids("two <|image|> <|image|>", _pil(["rgb_wide"]))
    with pytest.raises(GemmaRefError, match="pan_and_scan"):
        model.embed_images(_pil(["rgb_wide"]), pan_and_scan=True)
    with pytest.raises(GemmaRefError, match=r"\[I, n, 192\]"):
        model.embed_images({"pixel_values": np.zeros((1, 4, 48), np.float32),
                            "image_position_ids": np.zeros((1, 4, 2), np.int64)})
    assert main(["generate", "--model", str(UNIFIED), "--image", "/no/such.png", "hi"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("gemma-ref: error:")
    assert main(["info", "--model", str(UNIFIED)]) == 0
    assert "gemma4_unified_text" in capsys.readouterr().out
    assert main(["models"]) == 0
    assert "google/gemma-4-12B-it" in capsys.readouterr().out


def test_unified_chunked_prefill_keeps_images_whole(unified, monkeypatch):
    """A prompt prefilled in chunks of 7 tokens (an image's 60 tokens stay in one chunk)
    decodes the golden continuation, as the one-shot prefill does."""
    from gemma_ref import api

    model, g = unified
    monkeypatch.setattr(api, "PREFILL_CHUNK", 7)
    out = model.generate(g["two.input_ids"].tolist(), images=_pil(UNIFIED_CASES["two"]),
                         max_new_tokens=len(g["two.greedy_ids"]), stop=[])
    assert out == g["two.greedy_ids"].tolist()


def test_cli_classify(shield, capsys):
    _, g = shield
    images = [str(IMAGES / f"{n}.png") for n in ("rgb_wide", "l_tall")]  # no alpha: path == PIL image
    argv = ["classify", "--model", str(SHIELD), "--json"] + [a for i in images for a in ("--image", i)]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["image"], r["policy"]) for r in rows] == [(i, p) for i in images
                                                         for p in ("dangerous", "sexual", "violence")]
    np.testing.assert_allclose([[r["yes"], r["no"]] for r in rows], g["defaults.probabilities"], atol=1e-5)
    assert main(["classify", "--model", str(SHIELD), "--image", images[0], "--policy", "cats",
                 "--custom-policy", "cats=No Cats: The image shall not show a cat."]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("P(yes)") and len(out) == 2 and " cats " in out[1]


@pytest.mark.parametrize("argv, message", [
    (["--model", str(DATA / "tiny" / "gemma2-gqa")], "not an image classifier"),
    (["--model", str(SHIELD), "--policy", "weapons"], "unknown ['weapons']"),
    (["--model", str(SHIELD), "--custom-policy", "cats"], "expected NAME=DEFINITION"),
])
def test_cli_classify_bad_inputs(argv, message, capsys):
    assert main(["classify", "--image", str(IMAGES / "rgb_wide.png")] + argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gemma-ref: error:") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_shieldgemma2_info_loaded_says_the_same(capsys):
    assert main(["info", "--model", str(SHIELD), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["info", "--load", "--model", str(SHIELD), "--json"]) == 0
    loaded = json.loads(capsys.readouterr().out)
    assert loaded["parameters"] == plain["parameters"] and loaded["special"] == plain["special"]
