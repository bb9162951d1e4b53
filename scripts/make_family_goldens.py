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

import sentencepiece as spm
import torch
import transformers
from transformers import VaultGemmaConfig, VaultGemmaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_goldens as tiny  # noqa: E402  (the text goldens' helpers)

ROOT = Path(__file__).resolve().parent.parent
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
