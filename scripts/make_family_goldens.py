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


def provenance_head(name: str, date: str) -> list[str]:
    """The first lines of a PROVENANCE.md's Provenance section: when, how, with what."""
    import numpy as np

    return ["## Provenance", "", f"- generated: {date}",
            f"- command: `python scripts/make_family_goldens.py {name}` (from the repository root)",
            f"- transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
            f"python {sys.version.split()[0]}",
            "- float32, attn_implementation=\"eager\", CPU, torch.set_num_threads(1)"]


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
        *provenance_head(s["name"], date),
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


# --------------------------------------------------------------------------- Gemma 4 12B Unified

GEMMA4_UNIFIED = dict(
    name="gemma4-unified",
    seed=23000,
    # Gemma 4 text without PLE or experts; the last layer shares the K/V of layer 1; images
    # see each other both ways on sliding layers (use_bidirectional_attention: "vision").
    text=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=2,
              num_key_value_heads=1, head_dim=16, global_head_dim=32, sliding_window=8,
              layer_types=[SLIDING, FULL, SLIDING, FULL], num_kv_shared_layers=1,
              final_logit_softcapping=30.0, use_bidirectional_attention="vision"),
    # 4 px patches merged 2 x 2 -> 8 px model patches of 192 raw values
    vision=dict(patch_size=4, pooling_kernel_size=2, mm_embed_dim=24, mm_posemb_size=16, output_proj_dims=24),
    audio=dict(audio_embed_dim=640),
    preprocessor=dict(patch_size=4, max_soft_tokens=70, pooling_kernel_size=2),
    init=dict(emb=0.1, proj=2.0, norm=0.3, norm_mean=1.0, final_norm_mean=2.0, scalar=0.3),
)
GEMMA4_UNIFIED_CASES = {
    "text": ("Once upon a time there was", []),
    "one": ("Describe <|image|> in one word.", ["rgb_wide"]),  # 60 tokens: longer than the window
    "two": ("<|image|> versus\n<|image|>: which is brighter?", ["l_tall", "rgba_square"]),
}


def unified_image_functions():
    """convert_image_to_patches and patches_merge of transformers' Gemma4UnifiedImageProcessor.

    Its module imports torchvision (for the resize), which cannot be installed here (no
    CPU build of it for torch 2.13.0 on PyPI): torchvision is stubbed for the import only;
    the functions used are pure torch. The resize itself is Gemma4ImageProcessorPil's
    (the same target size rule, PIL's bicubic instead of torchvision's).
    """
    import types

    if "torchvision" not in sys.modules:
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.v2",
                     "torchvision.transforms.v2.functional"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["torchvision.transforms.v2"].functional = sys.modules["torchvision.transforms.v2.functional"]
        sys.modules["torchvision.transforms.v2.functional"].InterpolationMode = None  # read by an annotation
    import importlib

    # the module itself, not the package's lazy attribute (a placeholder without torchvision)
    return importlib.import_module("transformers.models.gemma4_unified.image_processing_gemma4_unified")


@torch.no_grad()
def unified_pixels(images, pre):
    """Gemma4UnifiedImageProcessor._preprocess's steps 2-6 on images resized by
    Gemma4ImageProcessorPil: [I, max_soft_tokens, 3 (k p)^2], positions [I, max_soft_tokens, 2], counts."""
    import numpy as np
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    ipu = unified_image_functions()
    ip = Gemma4ImageProcessorPil(**pre)
    small = ip(images, return_tensors="pt")  # resized, rescaled, patchified at p, padded
    k = pre["pooling_kernel_size"]
    pixels, positions, counts = [], [], []
    for px, xy in zip(small["pixel_values"], small["image_position_ids"]):
        real = (xy != -1).all(-1)
        teacher, pos = px[real], xy[real]
        # the same patches as the unified processor's own patchify of the resized image
        w, h = int(pos[:, 0].max()) + 1, int(pos[:, 1].max()) + 1
        image = teacher.reshape(h, w, pre["patch_size"], pre["patch_size"], 3).permute(4, 0, 2, 1, 3).reshape(
            3, h * pre["patch_size"], w * pre["patch_size"])
        assert torch.equal(ipu.convert_image_to_patches(image, pre["patch_size"]), teacher)
        merged, merged_pos = ipu.patches_merge(teacher[None], pos[None], len(teacher) // (k * k))
        counts.append(merged.shape[1])
        merged, merged_pos = ipu.pad_along_first_dim(merged[0], merged_pos[0], pre["max_soft_tokens"])
        pixels.append(merged)
        positions.append(merged_pos)
    return torch.stack(pixels), torch.stack(positions), counts


def gemma4_unified_config(vocab_tok: int):
    from transformers import (Gemma4UnifiedAudioConfig, Gemma4UnifiedConfig, Gemma4UnifiedTextConfig,
                              Gemma4UnifiedVisionConfig)

    s = GEMMA4_UNIFIED
    text = Gemma4UnifiedTextConfig(vocab_size=vocab_tok + 8, max_position_embeddings=512, rms_norm_eps=1e-6,
                                   pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
                                   attention_bias=False, hidden_activation="gelu_pytorch_tanh", **s["text"])
    return Gemma4UnifiedConfig(text_config=text, vision_config=Gemma4UnifiedVisionConfig(**s["vision"]),
                               audio_config=Gemma4UnifiedAudioConfig(**s["audio"]),
                               image_token_id=vocab_tok, boi_token_id=vocab_tok + 1, eoi_token_id=vocab_tok + 2,
                               audio_token_id=vocab_tok + 3, boa_token_id=vocab_tok + 4,
                               eoa_token_index=vocab_tok + 5, video_token_id=vocab_tok + 6, tie_word_embeddings=True)


@torch.no_grad()
def gemma4_unified_case(model, tok, prompt, images):
    """input_ids as Gemma4UnifiedProcessor makes them (boi + n x image token + eoi per marker),
    the image features, and the logits with the masks generate() uses
    (create_masks_for_generate: an image's tokens see each other on sliding layers only);
    `logits_forward`: model(**inputs) with mm_token_type_ids, whose forward builds its masks
    otherwise (see PROVENANCE.md)."""
    import numpy as np

    res, extra, text = {}, {}, prompt
    if images:
        pv, pos, counts = unified_pixels(images, GEMMA4_UNIFIED["preprocessor"])
        for n in counts:
            head, _, tail = text.partition(tok.image_token)
            text = head + (tok.boi_token + "\0" * n + tok.eoi_token) + tail
        text = text.replace("\0", tok.image_token)
        extra = {"pixel_values": pv, "image_position_ids": pos}
        out = model.model.get_image_features(pv, pos, return_dict=True)
        res.update(pixel_values=pv.numpy(), image_position_ids=pos.numpy().astype(np.int64),
                   num_soft_tokens=np.array(counts, np.int64),
                   embedder_hidden=out.last_hidden_state.numpy(),
                   image_features=torch.cat(out.pooler_output).numpy())
    ids = torch.tensor([tok(text).input_ids])
    res["input_ids"] = ids[0].numpy().astype(np.int64)
    mm = (ids == model.config.image_token_id).long()

    def masks(full_ids):
        T = full_ids.shape[1]
        return model.create_masks_for_generate(
            model.config, torch.zeros(1, T, model.config.text_config.hidden_size), None, None,
            torch.arange(T)[None], mm_token_type_ids=(full_ids == model.config.image_token_id).long())

    res["logits"] = model(input_ids=ids, attention_mask=masks(ids), use_cache=False, **extra).logits[0].numpy()
    if images:
        res["logits_forward"] = model(input_ids=ids, use_cache=False, mm_token_type_ids=mm,
                                      **extra).logits[0].numpy()
        extra["mm_token_type_ids"] = mm

    def full_inputs(seq):
        full = torch.cat([ids[0], seq])[None]
        return {k: v for k, v in extra.items() if k != "mm_token_type_ids"} | {"attention_mask": masks(full)}

    return res, vis.greedy_checked(model, ids, extra, full_inputs, res)


@torch.no_grad()
def make_gemma4_unified(images, vocab_tok, date):
    import json
    import shutil
    import tempfile

    import numpy as np
    from transformers import Gemma4UnifiedForConditionalGeneration

    s = GEMMA4_UNIFIED
    out_dir = FAMILY / s["name"]
    tok_dir = tempfile.mkdtemp()
    shutil.copy(tiny.TOKENIZER_MODEL, Path(tok_dir) / "tokenizer.model")
    (Path(tok_dir) / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "extra_special_tokens": vis.GEMMA4_SPECIAL}))
    tok = AutoTokenizer.from_pretrained(tok_dir)

    def make_model(seed):
        model = Gemma4UnifiedForConditionalGeneration(gemma4_unified_config(vocab_tok))
        tiny.redraw_parameters(model, seed, s["init"])
        gen = torch.Generator().manual_seed(seed + 1)
        ev = model.model.embed_vision
        ev.pos_embedding.copy_(torch.randn(ev.pos_embedding.shape, generator=gen) * 0.5)  # re-drawn as a table
        return model

    runs = {case: (lambda m, p=prompt, n=names: gemma4_unified_case(m, tok, p, [images[x] for x in n]))
            for case, (prompt, names) in GEMMA4_UNIFIED_CASES.items()}
    seed, attempt, results = vis.first_good_seed(s["name"], s["seed"], make_model,
                                                 Gemma4UnifiedForConditionalGeneration, runs, out_dir)
    model = Gemma4UnifiedForConditionalGeneration.from_pretrained(
        str(out_dir), dtype=torch.float32, attn_implementation="eager").eval()
    # the audio embedder: 1.3 s of a seeded waveform (not a multiple of 640: the last frame is padded)
    rng = np.random.default_rng(seed)
    wave = (0.3 * np.sin(np.arange(20_800) * 2 * np.pi * 440 / 16_000) + 0.1 * rng.standard_normal(20_800)).astype(np.float32)
    from transformers.models.gemma4_unified.feature_extraction_gemma4_unified import Gemma4UnifiedAudioFeatureExtractor

    fe = Gemma4UnifiedAudioFeatureExtractor()(wave, return_tensors="pt")
    audio = model.model.get_audio_features(fe["input_features"], fe["input_features_mask"], return_dict=True)
    results["audio"] = {"waveform": wave, "input_features": fe["input_features"].numpy(),
                        "input_features_mask": fe["input_features_mask"].numpy(),
                        "features": audio.pooler_output.numpy()}
    shutil.copy(tiny.TOKENIZER_MODEL, out_dir / "tokenizer.model")
    pre = {"image_processor_type": "Gemma4UnifiedImageProcessor", "do_convert_rgb": True, "do_normalize": False,
           "do_rescale": True, "do_resize": True, "resample": 3, "rescale_factor": 1 / 255,
           "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0], **s["preprocessor"]}
    (out_dir / "preprocessor_config.json").write_text(json.dumps(dict(sorted(pre.items())), indent=2) + "\n")
    arrays = {f"{case}.{k}": np.ascontiguousarray(v) for case, r in results.items()
              for k, v in r.items() if not k.startswith("_")}
    tiny.save_npz_deterministic(out_dir / "golden.npz", arrays)
    forward_vs_generate = {c: float(np.abs(r["logits_forward"] - r["logits"]).max())
                           for c, r in results.items() if "logits_forward" in r}
    lines = [
        f"# {s['name']}", "",
        "Tiny random Gemma 4 12B \"Unified\" checkpoint (Gemma4UnifiedForConditionalGeneration: no vision or",
        "audio encoder) with goldens from Hugging Face transformers (independent of gemma-ref).", "",
        *provenance_head(s["name"], date),
        f"- seed {seed} (parameters re-drawn by make_tiny_goldens.redraw_parameters; the position table "
        f"~ N(0, 0.5) with seed {seed + 1}); {attempt} earlier seed(s) rejected",
        "- text config: " + json.dumps(s["text"]),
        "- vision config: " + json.dumps(s["vision"]) + "; audio config: " + json.dumps(s["audio"]),
        "- pixel values: Gemma4UnifiedImageProcessor's steps (convert_image_to_patches, patches_merge, "
        "pad_along_first_dim, imported from transformers) on images resized and rescaled by "
        "Gemma4ImageProcessorPil(" + json.dumps(s["preprocessor"]) + "): the same target-size rule; the "
        "unified processor itself resizes with torchvision (bicubic, antialias), which has no CPU build for "
        "torch 2.13 on PyPI, so an image that needs resizing may differ from it by a few levels",
        "- input_ids: each `<|image|>` marker becomes boi + n x image token + eoi "
        "(Gemma4UnifiedProcessor.replace_image_token); GemmaTokenizer from tiny.model + <|image|>=512, "
        "<|image>=513, <image|>=514",
        "- `logits`: the forward with the masks generate() builds "
        "(Gemma4UnifiedForConditionalGeneration.create_masks_for_generate with mm_token_type_ids: full layers "
        "causal, sliding layers AND(window, OR(causal, same image))), the masks the greedy path uses",
        "- `logits_forward`: `model(input_ids, pixel_values, image_position_ids, mm_token_type_ids)`: "
        "Gemma4UnifiedModel.forward builds its masks with the generic create_masks_for_generate and "
        "block_sequence_ids, which lets an image's tokens see each other on EVERY layer (and past the window); "
        f"it differs from `logits` by {json.dumps({k: round(v, 4) for k, v in forward_vs_generate.items()})} "
        "(max |diff|). gemma-ref follows generate()'s masks, as for Gemma 4",
        f"- greedy: model.generate(..., do_sample=False, max_new_tokens={vis.NEW_TOKENS}, "
        f"min_new_tokens={vis.NEW_TOKENS}, use_cache=True), each token the argmax of the raw logits; a no-cache "
        "forward over prompt + continuation (with generate()'s masks) agrees",
        "- audio: `get_audio_features(input_features, input_features_mask)` on a seeded 20800-sample "
        "waveform (a 440 Hz tone + noise) framed by Gemma4UnifiedAudioFeatureExtractor (right-padded to "
        "a multiple of 640, [N, 640])",
        "- audio prompts (1 and 2 clips, an image and a clip): audio_golden.npz and AUDIO_PROVENANCE.md, made "
        "from this checkpoint by `python scripts/make_unified_audio_goldens.py` (run it after this script)", "",
        "## Cases", "", "| case | prompt | images | tokens | min greedy margin | HF cached vs no-cache |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for case, (prompt, names) in GEMMA4_UNIFIED_CASES.items():
        r = results[case]
        lines.append(f"| `{case}` | `{prompt!r}` | {', '.join(names) or '-'} | {len(r['input_ids'])} | "
                     f"{float(r['greedy_margins'].min()):.4f} | {r['_cache_vs_full']:.2e} |")
    lines += ["", "## golden.npz", "", "| key | shape | dtype |", "| --- | --- | --- |"]
    lines += [f"| `{k}` | {list(v.shape)} | {v.dtype} |" for k, v in arrays.items()]
    lines += ["", "- `embedder_hidden`: Gemma4UnifiedVisionEmbedder's last_hidden_state (after pos_norm, "
              "before the multimodal embedder), padded rows included; `image_features`: pooler_output with "
              "the padding rows stripped, concatenated over images", ""]
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
    if not only or GEMMA4_UNIFIED["name"] in only:
        print(f"== {GEMMA4_UNIFIED['name']}", flush=True)
        images = {n: PIL.Image.open(vis.IMAGES / f"{n}.png") for n in ("rgb_wide", "l_tall", "rgba_square")}
        for case, r in make_gemma4_unified(images, vocab_tok, date).items():
            print(f"  {case}: {({k: tuple(getattr(v, 'shape', ())) for k, v in r.items() if not k.startswith('_')})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
