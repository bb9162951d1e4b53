"""config.json is checked when read: a wrong type or range names the key; Gemma 4's
per-layer records (config.layers) are resolved from it once."""

import json

import pytest

from conftest import VARIANTS
from gemma_ref import GemmaRefError, Model
from gemma_ref.config import FULL, SLIDING, GemmaConfig

G3 = VARIANTS["gemma3-mqa"]
G4 = VARIANTS["gemma4-ple-shared"]


@pytest.mark.parametrize("change, message", [
    (dict(rms_norm_eps=-1e-6), "rms_norm_eps must be a positive number, got -1e-06"),
    (dict(rms_norm_eps="1e-6"), "rms_norm_eps must be a positive number"),
    (dict(hidden_size=64.5), "hidden_size must be a positive integer, got 64.5"),
    (dict(hidden_size="64"), "hidden_size must be a positive integer, got '64'"),
    (dict(hidden_size=True), "hidden_size must be a positive integer"),
    (dict(num_hidden_layers=-6), "num_hidden_layers must be a positive integer, got -6"),
    (dict(num_key_value_heads=0), "num_key_value_heads must be a positive integer, got 0"),
    (dict(head_dim=None), "head_dim must be a positive integer, got None"),
    (dict(sliding_window=-8), "sliding_window must be a positive integer"),
    (dict(max_position_embeddings=[256]), "max_position_embeddings must be a positive integer"),
    (dict(layer_types=["sliding_attention"] * 5 + ["chunked_attention"]),
     r"layer_types\[5\] is 'chunked_attention'; gemma-ref knows full_attention and sliding_attention"),
    (dict(layer_types="sliding_attention"), "layer_types must be a list of layer types"),
    (dict(layer_types=["full_attention"] * 5), "layer_types has 5 entries for 6 layers"),
    (dict(rope_scaling=[8.0]), "rope_scaling must be a JSON object"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 0}), "factor must be a positive number"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "RoPE type 'yarn' is not supported"),
    (dict(rope_theta=-1.0), "rope_theta must be a positive number"),
    (dict(eos_token_id="</s>"), "eos_token_id must be an integer >= 0"),
    (dict(eos_token_id=[1, "x"]), "eos_token_id must be an integer or a list of integers"),
    (dict(query_pre_attn_scalar=0), "query_pre_attn_scalar must be a positive number"),
    (dict(final_logit_softcapping=-30.0), "final_logit_softcapping must be a positive number"),
])
def test_bad_values_name_their_key(change, message):
    with pytest.raises(GemmaRefError, match=message):
        GemmaConfig.from_dict({**G3, **change})


@pytest.mark.parametrize("change, message", [
    (dict(attention_k_eq_v="yes"), "attention_k_eq_v must be true or false"),
    (dict(num_kv_shared_layers=-1), "num_kv_shared_layers must be an integer >= 0"),
    (dict(num_kv_shared_layers=5), r"num_kv_shared_layers \(5\) must be in \[0, num_hidden_layers = 5\)"),
    (dict(hidden_size_per_layer_input=2.5), "hidden_size_per_layer_input must be an integer >= 0"),
    (dict(global_head_dim=0), "global_head_dim must be a positive integer"),
    (dict(enable_moe_block=True, num_experts=4), "missing required key 'top_k_experts'"),
    (dict(enable_moe_block=True, num_experts=4, top_k_experts=5, moe_intermediate_size=8),
     r"top_k_experts \(5\) must be in \[1, num_experts = 4\]"),
    (dict(rope_parameters={"full_attention": {"rope_type": "proportional", "partial_rotary_factor": 2}}),
     "rope_parameters.full_attention.partial_rotary_factor must be a number in"),
    (dict(rope_parameters={"full_attention": "proportional"}), "rope_parameters.full_attention must be a JSON"),
    (dict(per_layer_config={"1": {"intermediate_size": 128}}), "only head_dim and num_key_value_heads"),
    (dict(per_layer_config={"1": {"head_dim": 32}, "4": {"head_dim": 64}}), "must have one shape"),
    (dict(per_layer_config={"x": {"head_dim": 32}}), "keyed by a layer index"),
    (dict(use_bidirectional_attention="all"), "use_bidirectional_attention 'all' is not supported"),
    # the last layer shares K/V but only sliding layers compute them before it
    (dict(layer_types=[SLIDING, SLIDING, SLIDING, SLIDING, FULL], num_kv_shared_layers=1),
     r"layer 4 \(full_attention\) shares keys/values, but no earlier layer of that type"),
])
def test_bad_gemma4_values_name_their_key(change, message):
    with pytest.raises(GemmaRefError, match=message):
        GemmaConfig.from_dict({**G4, **change})


def test_not_an_object_is_one_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps([G3]))
    with pytest.raises(GemmaRefError, match="expected a JSON object .* got a list"):
        GemmaConfig.from_json(tmp_path / "config.json")
    with pytest.raises(GemmaRefError, match="text_config must be a JSON object, got a string"):
        GemmaConfig.from_dict({"model_type": "gemma4", "text_config": "gemma4_text"})


def test_a_bad_config_fails_at_load_not_at_the_first_forward(tiny_dirs, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_dirs["gemma3-mqa"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["layer_types"][2] = "local_attention"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GemmaRefError, match=r"layer_types\[2\] is 'local_attention'"):
        Model.from_pretrained(d)


def test_gemma4_layers_are_resolved_once():
    """E2B's layout: 35 layers, (4 sliding, 1 full) x 7; the last 20 reuse the K/V of
    layers 13 (sliding) and 14 (full) and have a 2x wide MLP; full layers: head 512 and
    proportional RoPE rotating 64 of 256 pairs."""
    from gemma_ref import PRESETS

    c = PRESETS["4-e2b"]
    assert [s.kv_source for s in c.layers[13:17]] == [13, 14, 13, 13]
    assert [s.shares_kv for s in c.layers].count(True) == 2
    assert {s.intermediate_size for s in c.layers[:15]} == {6144}
    assert {s.intermediate_size for s in c.layers[15:]} == {12288}
    full = c.layers[4]
    assert (full.kind, full.head_dim, full.window, full.rope.rotated, full.rope.theta) == (FULL, 512, None, 64, 1e6)
    sliding = c.layers[0]
    assert (sliding.head_dim, sliding.window, sliding.rope.rotated, sliding.rope.theta) == (256, 512, 128, 1e4)
    moe = PRESETS["4-26b-a4b"]
    assert [(s.num_key_value_heads, s.v_proj) for s in moe.layers[4:6]] == [(8, True), (2, False)]


def test_gemma4_follows_transformers_defaults():
    """No rope_parameters: transformers' Gemma 4 defaults; no global_head_dim: 512; the last
    layer is made full attention, as Gemma4TextConfig does."""
    d = {k: v for k, v in G4.items() if k not in ("global_head_dim",)}
    d["layer_types"] = [SLIDING] * 5
    d["num_kv_shared_layers"] = 0
    c = GemmaConfig.from_dict(d)
    assert c.layer_types[-1] == FULL and c.layers[-1].head_dim == 512
    assert (c.rope_theta, c.rope_local_base_freq, c.partial_rotary_factor) == (1e6, 1e4, 0.25)
    assert c.query_scale == 1.0


def test_both_spellings_of_per_layer_shapes_agree():
    hub = GemmaConfig.from_dict({**G4, "global_head_dim": 32})
    saved = GemmaConfig.from_dict({**{k: v for k, v in G4.items() if k != "global_head_dim"},
                                   "per_layer_config": {"1": {"head_dim": 32}, "4": {"head_dim": 32}}})
    assert hub.layers == saved.layers
