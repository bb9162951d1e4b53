#!/usr/bin/env python3
"""Tiny random checkpoints of the Gemma family members close to the generation models,
with goldens from Hugging Face transformers (float32, eager attention, CPU, one thread).

    vaultgemma-mqa        VaultGemmaForCausalLM                 -> tests/data/tiny/vaultgemma-mqa/
    shieldgemma2          ShieldGemma2ForImageClassification    -> tests/data/family/shieldgemma2/
    gemma4-unified        Gemma4UnifiedForConditionalGeneration -> tests/data/family/gemma4-unified/

The VaultGemma checkpoint is made exactly as scripts/make_tiny_goldens.py makes the
others in tests/data/tiny (its helpers are imported: same inputs, seeds rule, checks,
golden.npz layout), so tests/test_goldens_tiny.py reads it with the rest. The other two
have their own golden.npz, described in their PROVENANCE.md.

Usage (from the repository root):

    pip install torch==2.13.0 transformers sentencepiece safetensors numpy pillow
    python scripts/make_family_goldens.py [NAME ...]

Rerunning gives byte-identical files (dates from SOURCE_DATE_EPOCH when set).
"""

from __future__ import annotations

import sys
from pathlib import Path

import PIL.Image
import sentencepiece as spm
import torch
import transformers
from transformers import (AutoTokenizer, Gemma3TextConfig, ShieldGemma2Config,
                          ShieldGemma2ForImageClassification, SiglipVisionConfig, VaultGemmaConfig,
                          VaultGemmaForCausalLM)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_goldens as tiny  # noqa: E402  (the text goldens' helpers)
import make_vision_goldens as vis  # noqa: E402  (images, tokenizer with image tokens, seeds rule)

ROOT = Path(__file__).resolve().parent.parent
FAMILY = ROOT / "tests" / "data" / "family"
FULL, SLIDING = tiny.FULL, tiny.SLIDING

# VaultGemma: Gemma 2 without post-attention / post-feedforward norms; google/vaultgemma-1b
# states all-full layer_types (the model card: "full attention for all layers").
VAULTGEMMA = dict(
    name="vaultgemma-mqa",
    arch="vaultgemma",
    seed=21000,
    dtype="float32",
    config=dict(
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=24,
        sliding_window=8,
        layer_types=[FULL] * 4,
        attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0,
    ),
    init=dict(emb=0.1, proj=2.0, qk=2.5, norm=0.5, final_norm_mean=1.0),
    min_margin=0.015,  # as gemma2-gqa: the final softcap of 3 compresses the top logits
)


def vaultgemma_build_config(spec, vocab_size):
    if spec["arch"] != "vaultgemma":
        return _tiny_build_config(spec, vocab_size)
    cfg = dict(vocab_size=vocab_size, max_position_embeddings=512, rms_norm_eps=1e-6, pad_token_id=0,
               eos_token_id=1, bos_token_id=2, tie_word_embeddings=True, attention_bias=False,
               hidden_activation="gelu_pytorch_tanh", **spec["config"])
    return VaultGemmaConfig(**cfg)


_tiny_build_config = tiny.build_config


def make_vaultgemma(vocab_tok, tok_sp, date):
    """make_tiny_goldens.make_one, taught the VaultGemma class; then the PROVENANCE.md
    names this script and says what VaultGemma changes."""
    tiny.build_config = vaultgemma_build_config
    tiny.MODEL_CLASSES["vaultgemma"] = VaultGemmaForCausalLM
    info = tiny.make_one(VAULTGEMMA, vocab_tok, tok_sp, date)
    prov = tiny.OUT_ROOT / VAULTGEMMA["name"] / "PROVENANCE.md"
    text = prov.read_text().replace("`python scripts/make_tiny_goldens.py`",
                                    f"`python scripts/make_family_goldens.py {VAULTGEMMA['name']}`")
    text = text.replace("## Config notes\n\n", "## Config notes\n\n"
                        "- VaultGemma (transformers `vaultgemma/modular_vaultgemma.py`): Gemma 2's layer without "
                        "`post_attention_layernorm` and `post_feedforward_layernorm` (h = x + attn(input_layernorm(x)); "
                        "out = h + mlp(pre_feedforward_layernorm(h))); attn softcap 5.0 and final softcap 3.0 (both "
                        "bite); query_pre_attn_scalar 24 (scaling 24**-0.5, head_dim 16); every layer full attention, "
                        "as google/vaultgemma-1b's config.json states\n")
    prov.write_text(text)
    return info


# --------------------------------------------------------------------------- ShieldGemma 2

# A Gemma 3 image-text model (the tiny gemma3-vision-mqa's shapes) whose output is
# softmax(logits[:, -1, [yes, no]]) of one prompt per (image, policy).
SHIELDGEMMA2 = dict(
    name="shieldgemma2",
    seed=22000,
    text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=20, sliding_window=8,
              layer_types=[SLIDING, SLIDING, FULL]),
    vision=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                image_size=28, patch_size=14),  # 2 x 2 patches pooled 1 x 1 -> 4 tokens
    mm_tokens_per_image=4,
    init=dict(emb=0.1, proj=2.0, norm=0.5, post_norm_mean=1.0, final_norm_mean=2.0),
)
# The checkpoint's chat template: the prompt of the ShieldGemma 2 model card, one user turn
# per content item (the Hub template's structure: the image, then the policy). Written for
# these tests; the Hub file's own template is read the same way (chat_template.jinja).
SHIELDGEMMA2_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% for item in message['content'] %}"
    "<start_of_turn>user\n"
    "{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}"
    "You are a policy expert trying to help determine whether a generated or real image is in violation "
    "of the safety policy below. Your decision must very clearly follow the specific language used in "
    "the safety policy and should not include any interpretation outside of the safety policy.\n\n"
    "<BEGIN_SAFETY_POLICY>\n{{ item['text'] }}\n</END_SAFETY_POLICY>\n\n"
    "Does the image violate the above policy? Your Answer must start with 'Yes' or 'No'.<end_of_turn>\n"
    "{% endif %}"
    "{% endfor %}"
    "<start_of_turn>model\n"
    "{% endfor %}"
)
SHIELDGEMMA2_CASES = {
    # case -> (images by name, processor kwargs)
    "defaults": (["rgb_wide", "l_tall"], {}),  # every default policy, for each image
    "custom": (["rgba_square"], {"policies": ["violence", "cats"],
                                 "custom_policies": {"cats": "No Cats: The image shall not show a cat."}}),
}


def shieldgemma2_config(vocab_tok: int, yes: int, no: int):
    s = SHIELDGEMMA2
    text = Gemma3TextConfig(vocab_size=vocab_tok + 8, max_position_embeddings=512, rms_norm_eps=1e-6,
                            pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
                            attention_bias=False, hidden_activation="gelu_pytorch_tanh",
                            rope_parameters=dict(tiny.GEMMA3_ROPE), **s["text"])
    return ShieldGemma2Config(text_config=text, vision_config=SiglipVisionConfig(vision_use_head=False, **s["vision"]),
                              mm_tokens_per_image=s["mm_tokens_per_image"], image_token_index=vocab_tok,
                              boi_token_index=vocab_tok + 1, eoi_token_index=vocab_tok + 2,
                              yes_token_index=yes, no_token_index=no)


def hub_layout(state: dict) -> dict:
    """transformers 5.25's saved keys -> the Hub file's (google/shieldgemma-2-4b-it, written by
    transformers' convert_shieldgemma2_weights_orbax_to_hf.py): model.language_model.model.*,
    model.vision_tower.vision_model.*, model.multi_modal_projector.*, and the tied head stored."""
    out = {}
    for k, v in state.items():
        for old, new in (("model.model.language_model.model.", "model.language_model.model."),
                         ("model.model.vision_tower.", "model.vision_tower.vision_model."),
                         ("model.model.multi_modal_projector.", "model.multi_modal_projector.")):
            if k.startswith(old):
                out[new + k[len(old):]] = v
                break
        else:
            raise RuntimeError(f"unexpected key {k}")
    out["model.language_model.lm_head.weight"] = out["model.language_model.model.embed_tokens.weight"].clone()
    return out


@torch.no_grad()
def make_shieldgemma2(images, vocab_tok, date):
    import json
    import shutil
    import tempfile

    import numpy as np
    from safetensors.torch import load_file, save_file
    from transformers import ShieldGemma2Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    s = SHIELDGEMMA2
    out_dir = FAMILY / s["name"]
    tok = AutoTokenizer.from_pretrained(vis.tokenizer_dir())
    # as transformers' conversion script picks them: the first token after bos of "Yes", "No"
    yes, no = (int(tok(w).input_ids[1]) for w in ("Yes", "No"))
    pre = {"do_convert_rgb": None, "do_normalize": True, "do_pan_and_scan": None, "do_rescale": True,
           "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
           "image_processor_type": "Gemma3ImageProcessor", "image_seq_length": s["mm_tokens_per_image"],
           "processor_class": "ShieldGemma2Processor", "resample": 2, "rescale_factor": 1 / 255,
           "size": {"height": s["vision"]["image_size"], "width": s["vision"]["image_size"]}}
    ip = Gemma3ImageProcessorPil(**{k: v for k, v in pre.items() if v is not None and k not in (
        "image_processor_type", "processor_class", "image_seq_length")})
    processor = ShieldGemma2Processor(image_processor=ip, tokenizer=tok, chat_template=SHIELDGEMMA2_TEMPLATE,
                                      image_seq_length=s["mm_tokens_per_image"])

    def run(model):
        results, problems = {}, []
        for case, (names, kw) in SHIELDGEMMA2_CASES.items():
            inputs = processor(images=[images[n] for n in names], return_tensors="pt", **kw)
            out = model(**inputs)
            prompts = processor.apply_chat_template(
                [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}]
                 for p in [{**processor.policy_definitions, **kw.get("custom_policies", {})}[q]
                           for q in kw.get("policies", processor.policy_definitions)]], tokenize=False)
            results[case] = {
                "input_ids": inputs["input_ids"].numpy().astype(np.int64),
                "attention_mask": inputs["attention_mask"].numpy().astype(np.int64),
                "pixel_values": inputs["pixel_values"].numpy(),
                "logits": out.logits.numpy(), "probabilities": out.probabilities.numpy(),
                "_prompts": prompts}
            p = out.probabilities[:, 0]
            if float((p - 0.5).abs().min()) < 0.02 or float(p.max() - p.min()) < 0.05:
                problems.append(f"{case}: yes probabilities {p.tolist()} too flat")
        return results, problems

    for attempt in range(vis.MAX_ATTEMPTS):
        seed = s["seed"] + attempt
        torch.manual_seed(seed)
        model = ShieldGemma2ForImageClassification(shieldgemma2_config(vocab_tok, yes, no))
        tiny.redraw_parameters(model, seed, s["init"])
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            loaded = ShieldGemma2ForImageClassification.from_pretrained(
                tmp, dtype=torch.float32, attn_implementation="eager").eval()
            results, problems = run(loaded)
            print(f"  {s['name']} seed {seed}: {'OK' if not problems else '; '.join(problems)}", flush=True)
            if problems:
                continue
            if out_dir.exists():
                shutil.rmtree(out_dir)
            shutil.copytree(tmp, out_dir)
        break
    else:
        raise RuntimeError("shieldgemma2: no acceptable seed")
    # The Hub's key layout, checked to load in transformers to the same outputs
    saved = load_file(str(out_dir / "model.safetensors"))
    save_file(hub_layout(saved), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    reloaded, info = ShieldGemma2ForImageClassification.from_pretrained(
        str(out_dir), dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    hub_results, _ = run(reloaded.eval())
    hub_diff = max(float(np.abs(hub_results[c]["probabilities"] - results[c]["probabilities"]).max())
                   for c in results)
    missing = sorted(info.get("missing_keys", []))
    if hub_diff != 0.0 or missing:
        raise RuntimeError(f"Hub layout not equivalent: diff {hub_diff}, missing {missing}")
    shutil.copy(tiny.TOKENIZER_MODEL, out_dir / "tokenizer.model")
    (out_dir / "chat_template.jinja").write_text(SHIELDGEMMA2_TEMPLATE)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(pre, indent=2, sort_keys=True) + "\n")
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "extra_special_tokens": vis.SPECIAL}, indent=2) + "\n")
    arrays = {f"{case}.{k}": np.ascontiguousarray(v) for case, r in results.items()
              for k, v in r.items() if not k.startswith("_")}
    tiny.save_npz_deterministic(out_dir / "golden.npz", arrays)
    lines = [
        f"# {s['name']}", "",
        "Tiny random ShieldGemma 2 checkpoint (ShieldGemma2ForImageClassification: a Gemma 3 image-text",
        "model whose output is the softmax over the Yes and No logits of the last position), with goldens",
        "from Hugging Face transformers (independent of gemma-ref).", "",
        "## Provenance", "",
        f"- generated: {date}",
        f"- command: `python scripts/make_family_goldens.py {s['name']}` (from the repository root)",
        f"- transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"python {sys.version.split()[0]}",
        "- float32, attn_implementation=\"eager\", CPU, torch.set_num_threads(1)",
        f"- seed {seed} (torch.manual_seed before construction; parameters re-drawn by "
        f"make_tiny_goldens.redraw_parameters with the same seed); {attempt} earlier seed(s) rejected "
        "(a seed is rejected when a case's Yes probabilities lie within 0.02 of 0.5 or span less than 0.05)",
        "- text config: " + json.dumps(s["text"]),
        "- vision config: " + json.dumps(s["vision"]) + f", mm_tokens_per_image {s['mm_tokens_per_image']}",
        f"- yes_token_index {yes}, no_token_index {no}: as transformers' conversion script picks them, "
        "the token after bos of tokenizer(\"Yes\") and tokenizer(\"No\")",
        "- inputs: ShieldGemma2Processor(Gemma3ImageProcessorPil(preprocessor_config.json without nulls), "
        "GemmaTokenizer from tiny.model + <image_soft_token>=512, <start_of_image>=513, <end_of_image>=514, "
        "chat_template = chat_template.jinja, its default policy definitions); "
        "`model(**processor(images=..., return_tensors=\"pt\", **kwargs))`",
        "- images: tests/data/vision/images/*.png (made by scripts/make_vision_goldens.py)",
        "- key layout: saved by transformers 5.25 as `model.model.language_model.model.*`, "
        "`model.model.vision_tower.*`, `model.model.multi_modal_projector.*`, then rewritten to the Hub "
        "file's layout (`model.language_model.model.*`, `model.vision_tower.vision_model.*`, "
        "`model.multi_modal_projector.*`, plus the tied `model.language_model.lm_head.weight`); "
        f"transformers loads that layout with no missing keys to identical probabilities (max diff {hub_diff})",
        "", "## Cases", "", "| case | images | processor kwargs | rows | P(yes) |", "| --- | --- | --- | --- | --- |",
    ]
    for case, (names, kw) in SHIELDGEMMA2_CASES.items():
        r = results[case]
        lines.append(f"| `{case}` | {', '.join(names)} | `{json.dumps(kw)}` | {len(r['input_ids'])} | "
                     f"{', '.join(f'{x:.4f}' for x in r['probabilities'][:, 0])} |")
    lines += ["", "Rows are image-major: image 1 with each policy, then image 2, ... (the processor's order).",
              "", "First prompt of `defaults` as the processor's chat template renders it:", "", "```",
              results["defaults"]["_prompts"][0], "```",
              "", "## golden.npz", "", "| key | shape | dtype |", "| --- | --- | --- |"]
    lines += [f"| `{k}` | {list(v.shape)} | {v.dtype} |" for k, v in arrays.items()]
    lines += ["", "- `input_ids`, `attention_mask`: the processor's batch, left-padded with 0",
              "- `logits`: [rows, 2], the Yes and No logits of the last position; `probabilities`: their softmax", ""]
    (out_dir / "PROVENANCE.md").write_text("\n".join(lines))
    return results


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    tok_sp = spm.SentencePieceProcessor(model_file=str(tiny.TOKENIZER_MODEL))
    vocab_tok = tok_sp.get_piece_size()
    date = tiny.provenance_date()
    only = set(sys.argv[1:])
    if not only or VAULTGEMMA["name"] in only:
        print(f"== {VAULTGEMMA['name']}", flush=True)
        info = make_vaultgemma(vocab_tok, tok_sp, date)
        for k, v in info["checks"].items():
            print(f"    {k}: {v}")
    if not only or SHIELDGEMMA2["name"] in only:
        print(f"== {SHIELDGEMMA2['name']}", flush=True)
        images = {n: PIL.Image.open(vis.IMAGES / f"{n}.png") for n in ("rgb_wide", "l_tall", "rgba_square")}
        for case, r in make_shieldgemma2(images, vocab_tok, date).items():
            print(f"  {case}: probabilities {r['probabilities'].tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
