#!/usr/bin/env python3
"""Tiny random Gemma 4 assistants (MTP drafters) and their golden outputs, from transformers.

For each drafter below this writes ``tests/data/tiny/<name>/``:

  config.json, generation_config.json, model.safetensors   (Gemma4AssistantForCausalLM.save_pretrained)
  drafts.npz                                                (keys listed in PROVENANCE.md)
  PROVENANCE.md

Each drafter is made for one of the tiny Gemma 4 targets already in tests/data/tiny/
(made by scripts/make_tiny_goldens.py): same vocabulary, the target's head sizes and
K/V heads per layer type (the drafter attends with the target's keys and values).

The goldens are what transformers computes (float32, attn_implementation="eager",
CPU, one thread), exactly as its SinglePositionMultiTokenCandidateGenerator
(generation/candidate_generator.py) drafts after a prefill:

  target(prompt, output_hidden_states=True, return_shared_kv_states=True)
  t = argmax(last logits); h = hidden_states[-1][:, -1:]  (after the final norm)
  repeat DRAFT times: out = assistant(inputs_embeds=cat(target.embed(t), h), position_ids=[[len(prompt)]],
                                      shared_kv_states=...); t = argmax(out.logits); h = out.last_hidden_state

and the output of `target.generate(prompt, assistant_model=assistant)` (speculative, greedy),
checked here to equal plain greedy `target.generate(prompt)`.

Usage (from the repository root):  python scripts/make_assistant_goldens.py
Rerunning gives identical files (date from SOURCE_DATE_EPOCH when set).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import Gemma4AssistantConfig, Gemma4AssistantForCausalLM, Gemma4ForCausalLM, Gemma4TextConfig

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "data" / "tiny"
SLIDING, FULL = "sliding_attention", "full_attention"
DRAFT = 4  # tokens drafted per round (num_assistant_tokens)
NEW_TOKENS = 24  # greedy / assisted generate length
PROMPT_LENGTHS = (5, 13)  # 13 > the drafters' sliding window + 1: the window bites

SPECS = [
    # Target gemma4-ple-shared: sliding layers head 16 x 1 kv head, full layers head 32 x 1;
    # it shares K/V itself (layers 3, 4 reuse 2, 1), so the drafter reads layers 2 and 1.
    dict(name="gemma4-assistant", target="gemma4-ple-shared", seed=12000,
         text=dict(hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=16, global_head_dim=32,
                   layer_types=[SLIDING, SLIDING, FULL], sliding_window=6),
         assistant=dict(use_ordered_embeddings=False)),
    # Target gemma4-moe-kv: sliding layers 2 kv heads, full layers 1 kv head with K = V;
    # the drafter has the centroid-masked head (use_ordered_embeddings).
    dict(name="gemma4-assistant-centroids", target="gemma4-moe-kv", seed=13000,
         text=dict(hidden_size=24, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, global_head_dim=32, num_global_key_value_heads=1,
                   attention_k_eq_v=True, layer_types=[SLIDING, FULL], sliding_window=5),
         assistant=dict(use_ordered_embeddings=True, num_centroids=16, centroid_intermediate_top_k=3)),
]


@torch.no_grad()
def redraw(model, seed: int) -> None:
    """Every parameter re-drawn (HF inits norms to 0 / 1 and the token ordering to zeros)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            val = torch.randn(p.shape, generator=gen) * 0.3 + 1.0
        elif "embed_tokens" in name:
            val = torch.randn(p.shape, generator=gen) * 0.3
        else:  # Linear [out, in]
            val = torch.randn(p.shape, generator=gen) * (2.0 / math.sqrt(p.shape[1]))
        p.copy_(val)
    for name, b in model.named_buffers():
        if name.endswith("layer_scalar"):
            b.copy_(torch.randn(b.shape, generator=gen) * 0.3 + 1.0)
        elif name.endswith("token_ordering"):  # which vocabulary rows each centroid owns
            b.copy_(torch.randperm(b.numel(), generator=gen))


def make_assistant(spec: dict, target) -> Gemma4AssistantForCausalLM:
    tc = target.config
    text = Gemma4TextConfig(vocab_size=tc.vocab_size, hidden_size_per_layer_input=0, vocab_size_per_layer_input=0,
                            rms_norm_eps=tc.rms_norm_eps,
                            hidden_activation="gelu_pytorch_tanh", max_position_embeddings=tc.max_position_embeddings,
                            **spec["text"])
    config = Gemma4AssistantConfig(text_config=text, backbone_hidden_size=tc.hidden_size, **spec["assistant"])
    torch.manual_seed(spec["seed"])
    model = Gemma4AssistantForCausalLM(config)
    redraw(model, spec["seed"])
    model.generation_config.num_assistant_tokens = DRAFT
    model.generation_config.num_assistant_tokens_schedule = "constant"
    return model.eval()


@torch.no_grad()
def drafts_after_prefill(target, assistant, prompt: torch.Tensor):
    """What SinglePositionMultiTokenCandidateGenerator.get_candidates does in its first round."""
    out = target(input_ids=prompt, output_hidden_states=True, return_shared_kv_states=True, use_cache=True)
    t = out.logits[:, -1:].argmax(-1)  # the target's first new token
    h = out.hidden_states[-1][:, -1:]  # after the final norm
    kv = {k: (v[0], v[1]) for k, v in out.shared_kv_states.items()}
    position = torch.tensor([[prompt.shape[1]]])
    logits, states, tokens = [], [], []
    for _ in range(DRAFT):
        embeds = torch.cat([target.get_input_embeddings()(t), h], dim=-1)
        step = assistant(inputs_embeds=embeds, position_ids=position, shared_kv_states=kv, use_cache=False)
        t, h = step.logits.argmax(-1), step.last_hidden_state
        logits.append(step.logits[0, 0])
        states.append(h[0, 0])
        tokens.append(int(t))
    return int(out.logits[0, -1].argmax()), torch.stack(logits), torch.stack(states), tokens


@torch.no_grad()
def generate(target, prompt, assistant=None):
    kw = dict(assistant_model=assistant) if assistant is not None else {}
    out = target.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                          max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0, **kw)
    return out[0, prompt.shape[1]:].tolist()


def main() -> int:
    torch.set_num_threads(1)
    date = (_dt.datetime.fromtimestamp(int(os.environ["SOURCE_DATE_EPOCH"]), _dt.timezone.utc)
            if "SOURCE_DATE_EPOCH" in os.environ else _dt.datetime.now(_dt.timezone.utc)).date()
    for spec in SPECS:
        out_dir = TINY / spec["name"]
        out_dir.mkdir(parents=True, exist_ok=True)
        target = Gemma4ForCausalLM.from_pretrained(str(TINY / spec["target"]), dtype=torch.float32,
                                                   attn_implementation="eager").eval()
        assistant = make_assistant(spec, target)
        assistant.save_pretrained(str(out_dir), safe_serialization=True)
        assistant = Gemma4AssistantForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32,
                                                               attn_implementation="eager").eval()
        rng = np.random.default_rng(spec["seed"])
        golden, agree = {}, []
        for j, n in enumerate(PROMPT_LENGTHS):
            prompt = torch.tensor(rng.integers(3, target.config.vocab_size, size=(1, n)))
            first, logits, states, tokens = drafts_after_prefill(target, assistant, prompt)
            plain, assisted = generate(target, prompt), generate(target, prompt, assistant)
            if plain != assisted:
                raise SystemExit(f"{spec['name']}: assisted generate differs from greedy")
            agree.append(len(plain))
            golden.update({f"prompt_{j}": prompt[0].numpy(), f"first_{j}": np.array(first),
                           f"draft_logits_{j}": logits.numpy(), f"draft_states_{j}": states.numpy(),
                           f"draft_tokens_{j}": np.array(tokens), f"greedy_{j}": np.array(plain)})
        np.savez(out_dir / "drafts.npz", **golden)
        rows = "\n".join(f"| `{k}` | {list(v.shape)} | {v.dtype} |" for k, v in golden.items())
        (out_dir / "PROVENANCE.md").write_text(f"""# {spec['name']}

Tiny random Gemma 4 assistant (MTP drafter, `Gemma4AssistantForCausalLM`) for the tiny target
`tests/data/tiny/{spec['target']}`, with golden outputs from Hugging Face transformers.

- generated: {date}
- command: `python scripts/make_assistant_goldens.py` (from the repository root)
- transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}, python {platform.python_version()}
- float32, attn_implementation="eager", CPU, torch.set_num_threads(1)
- seed {spec['seed']}: `torch.manual_seed` before construction, parameters re-drawn with
  `torch.Generator().manual_seed({spec['seed']})` (norms 1 + 0.3 N, embedding 0.3 N, Linear 2/sqrt(fan_in) N,
  layer_scalar 1 + 0.3 N, token_ordering a random permutation); prompts from `numpy.random.default_rng({spec['seed']})`
- text_config: `{json.dumps(spec['text'])}`; assistant: `{json.dumps(spec['assistant'])}`
- generation_config: num_assistant_tokens={DRAFT}, schedule "constant"

## Golden contents (drafts.npz), per prompt j (lengths {list(PROMPT_LENGTHS)})

| key | shape | dtype |
| --- | --- | --- |
{rows}

- `first_j`: the target's greedy token after prompt j; `draft_*_j`: the {DRAFT} drafting steps
  transformers' SinglePositionMultiTokenCandidateGenerator makes right after the prefill (logits,
  `last_hidden_state` = post_projection output, argmax tokens).
- `greedy_j`: `target.generate(prompt, do_sample=False, max_new_tokens={NEW_TOKENS}, min_new_tokens={NEW_TOKENS})`;
  `target.generate(..., assistant_model=assistant)` gave the same {agree} tokens (checked by the script).
""")
        print(f"{spec['name']}: wrote {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
