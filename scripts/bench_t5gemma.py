#!/usr/bin/env python3
"""T5Gemma 2 at the real 270M-270M shape (random weights): gemma-ref beside transformers.

The checkpoint is made by transformers (T5Gemma2ForConditionalGeneration with each stack
shaped as Gemma 3 270M: 18 layers, D 640, 4 heads, 1 KV head of 256, FFN 2048, window
512, vocabulary 262144, and a SigLIP tower of SiglipVisionConfig's defaults but patch 14
and no head), saved once to DIR in bfloat16 (gemma-ref holds its matrices so;
transformers widens them). Then, on one prompt, both engines in float32 (transformers
eager): the largest logit difference of a forward pass, the greedy tokens of generate,
and the time of each (encoder once, decoder cached).

    python scripts/bench_t5gemma.py --dir /tmp/t5g2-270m --prompt-tokens 256 --new-tokens 32
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (SiglipVisionConfig, T5Gemma2Config, T5Gemma2DecoderConfig, T5Gemma2EncoderConfig,
                          T5Gemma2ForConditionalGeneration, T5Gemma2TextConfig)

GEMMA3_270M = dict(vocab_size=262_144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
                   sliding_window=512, max_position_embeddings=32_768, hidden_activation="gelu_pytorch_tanh")


def make(path: Path):
    if (path / "model.safetensors").exists():
        return
    torch.manual_seed(0)
    enc = T5Gemma2EncoderConfig(text_config=T5Gemma2TextConfig(**GEMMA3_270M), vision_config=SiglipVisionConfig(patch_size=14, vision_use_head=False),
                                boi_token_index=255_999, eoi_token_index=256_000, image_token_index=262_144)
    cfg = T5Gemma2Config(encoder=enc, decoder=T5Gemma2DecoderConfig(**GEMMA3_270M), image_token_index=262_144)
    model = T5Gemma2ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # transformers starts norms at 0 and projections tiny: give them a spread
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.normal_(0.0, 0.3)
            elif p.ndim == 2:
                p.normal_(0.0, 1.0 / p.shape[1] ** 0.5 if "embed" not in name else 0.03)
    model.to(torch.bfloat16).save_pretrained(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/tmp/t5g2-270m")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    path = Path(args.dir)
    make(path)
    ids = np.random.default_rng(0).integers(10, 250_000, size=args.prompt_tokens).tolist()
    ids[0] = 2

    from gemma_ref import Model

    ours = Model.from_pretrained(path)
    hf = T5Gemma2ForConditionalGeneration.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    dec = [2] + ids[1:9]
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor([ids]), decoder_input_ids=torch.tensor([dec])).logits[0].numpy()
    delta = np.abs(ours.forward(ids, dec) - ref).max()
    print(f"forward: max |dlogit| = {delta:.2e} (logits up to {np.abs(ref).max():.1f})")

    t0 = time.perf_counter()
    a = ours.generate(ids, max_new_tokens=args.new_tokens, stop=[])
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=args.new_tokens,
                          min_new_tokens=args.new_tokens)
    t_hf = time.perf_counter() - t0
    b = out[0, 1:].tolist()
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    print(f"greedy: {'identical' if same is None else f'first difference at token {same}'} ({len(a)} tokens)")
    print(f"gemma-ref {t_ours:.2f} s, transformers {t_hf:.2f} s for {args.prompt_tokens} prompt tokens "
          f"+ {args.new_tokens} new (torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
