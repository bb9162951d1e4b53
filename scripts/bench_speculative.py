"""Speculative decoding with a Gemma 4 assistant vs plain greedy, on random checkpoints.

    python scripts/make_random_checkpoint.py --preset 4-e2b --dtype bfloat16 --out /tmp/e2b-random
    python scripts/bench_speculative.py --target /tmp/e2b-random --assistant /tmp/e2b-assistant-random

The assistant directory is written first if it does not exist: random weights in the
shapes assumed for the E2B assistant (below). Prints, for plain greedy and for each
draft length k: decode tokens/s (the tokens after the first, which the prefill gives),
target passes, the acceptance rate, and whether the tokens equal plain greedy's.

Random weights make the drafter's guesses wrong (acceptance ~0), so speculative decoding
only costs there. The "forced" rows give an honest upper bound: the drafter runs in
full (its cost is paid) but its guesses are replaced by the target's own greedy tokens,
so every draft is accepted, as with a perfect drafter of the same size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gemma_ref import Model  # noqa: E402
from gemma_ref.assistant import Assistant, AssistantConfig  # noqa: E402

# The E2B assistant's shapes as assumed here (not read from the real config.json, which is
# not reachable offline): 4 layers (https://ai.google.dev/gemma/docs/mtp/mtp), D 256 (a
# 262144 x 256 embedding is most of the ~79M parameters the E4B assistant's GGUF card
# states), the target's head sizes and K/V heads, the centroid head with 2048 / 32.
E2B_ASSISTANT = {
    "model_type": "gemma4_assistant", "architectures": ["Gemma4AssistantForCausalLM"],
    "backbone_hidden_size": 1536, "use_ordered_embeddings": True, "num_centroids": 2048,
    "centroid_intermediate_top_k": 32, "tie_word_embeddings": True,
    "text_config": {
        "model_type": "gemma4_text", "vocab_size": 262144, "hidden_size": 256, "intermediate_size": 2048,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
        "global_head_dim": 512, "sliding_window": 512, "num_kv_shared_layers": 4,
        "layer_types": ["sliding_attention"] * 3 + ["full_attention"], "hidden_size_per_layer_input": 0,
        "vocab_size_per_layer_input": 0, "final_logit_softcapping": None, "max_position_embeddings": 131072,
        "rope_parameters": {"full_attention": {"rope_type": "proportional", "rope_theta": 1e6,
                                               "partial_rotary_factor": 0.25},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
    },
}


def write_random_assistant(out: Path, seed: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(E2B_ASSISTANT, indent=2))
    config = AssistantConfig.from_dir(out)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in config.expected_shapes().items():
        if name.endswith("token_ordering"):
            tensors[name] = rng.permutation(shape[0]).astype(np.int64)
        elif name.endswith(("norm.weight", "layer_scalar")):
            tensors[name] = (1 + 0.01 * rng.standard_normal(shape)).astype(np.float32)
        else:
            tensors[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    print(f"wrote a random assistant ({config.num_parameters / 1e6:.1f} M parameters) to {out}", file=sys.stderr)


class Forced(Assistant):
    """Runs the drafter in full, then drafts the target's greedy tokens instead of its own."""

    def __init__(self, base: Assistant, greedy: list[int], prompt_len: int):
        self.__dict__.update(base.__dict__)
        self.greedy, self.prompt_len = greedy, prompt_len

    def drafts(self, target, cache, token, h, P, n):
        _, logits = super().drafts(target, cache, token, h, P, n)  # the cost of drafting
        at = P + 1 - self.prompt_len
        ids = self.greedy[at:at + n]
        return ids + [0] * (n - len(ids)), logits


def run(target, prompt, n, **kw):
    stats = {}
    t0 = time.perf_counter()
    out = target.generate(prompt, max_new_tokens=n, stop=[], stats=stats, **kw)
    wall = time.perf_counter() - t0
    return out, stats, wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, type=Path, help="a Gemma 4 checkpoint (random)")
    ap.add_argument("--assistant", required=True, type=Path, help="an assistant dir (written if missing)")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--draft-tokens", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--max-memory", default="3G")
    args = ap.parse_args(argv)
    from gemma_ref.cli.common import parse_size

    if not (args.assistant / "config.json").exists():
        write_random_assistant(args.assistant)
    budget = parse_size(args.max_memory, "--max-memory")
    target = Model.from_pretrained(args.target, max_memory=budget, progress=False)
    assistant = Model.from_pretrained(args.assistant, progress=False)
    prompt = np.random.default_rng(0).integers(3, min(1000, target.n_vocab), args.prompt_tokens).tolist()
    n = args.new_tokens
    print(f"target {args.target} ({target.config.num_parameters / 1e9:.2f} B), assistant {args.assistant} "
          f"({assistant.config.num_parameters / 1e6:.1f} M); prompt {len(prompt)} tokens, {n} new")
    greedy, stats, wall = run(target, prompt, n)
    base = (n - 1) / stats["generation_seconds"]
    print(f"{'plain greedy':<22} {base:6.3f} tok/s  {stats['decode_steps']:3d} target passes  "
          f"(prefill {stats['prompt_seconds']:.1f} s, wall {wall:.1f} s)")
    for k in args.draft_tokens:
        for label, a in ((f"assistant k={k}", assistant), (f"forced k={k}", Forced(assistant, greedy, len(prompt)))):
            out, stats, wall = run(target, prompt, n, assistant=a, draft_tokens=k)
            rate = (n - 1) / stats["generation_seconds"]
            print(f"{label:<22} {rate:6.3f} tok/s  {stats['decode_steps']:3d} target passes  accepted "
                  f"{stats['accepted']}/{stats['drafted']} ({stats['accepted'] / max(stats['drafted'], 1):.0%})  "
                  f"x{rate / base:.2f}  same tokens: {out == greedy}  (drafting {stats['draft_seconds']:.1f} s "
                  f"of {stats['generation_seconds']:.1f} s)")
    # What one round costs: a target pass over 1 and over k + 1 tokens, one draft step.
    cache = target.new_cache(1, len(prompt) + 16)
    from gemma_ref.kv_cache import forget_from
    from gemma_ref.model import forward

    _, hidden = forward(target.weights, target.config, np.array([prompt]), None, cache, last_only=True,
                        return_hidden=True)
    costs = []
    for T in sorted({1, *(k + 1 for k in args.draft_tokens)}):
        t0 = time.perf_counter()
        forward(target.weights, target.config, np.array([greedy[:T]]), np.arange(len(prompt), len(prompt) + T)[None],
                cache, last_only=T == 1, n_vocab=target.n_vocab)
        costs.append(f"over {T} token(s) {time.perf_counter() - t0:.2f} s")
        forget_from(cache, len(prompt))
    t0 = time.perf_counter()
    assistant.drafts(target, cache, greedy[0], hidden[:, -1:], len(prompt), 1)
    print(f"costs: a target pass {', '.join(costs)}; a draft step {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
