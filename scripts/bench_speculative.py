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
    return out, stats, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, type=Path, help="a Gemma 4 checkpoint (random)")
    ap.add_argument("--assistant", required=True, type=Path, help="an assistant dir (written if missing)")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--draft-tokens", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--max-memory", default="3G")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each configuration")
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
    greedy, _, _ = run(target, prompt, n)  # the reference tokens (and a warm-up)
    configs = [("plain greedy", {})]
    for k in args.draft_tokens:
        configs += [(f"assistant k={k}", dict(assistant=assistant, draft_tokens=k)),
                    (f"forced k={k}", dict(assistant=Forced(assistant, greedy, len(prompt)), draft_tokens=k))]
    # Interleaved repeats, medians: other processes' load on the machine drifts.
    rates, last = {label: [] for label, _ in configs}, {}
    for _ in range(args.repeats):
        for label, kw in configs:
            out, stats, _ = run(target, prompt, n, **kw)
            assert out == greedy, f"{label}: not the greedy tokens"
            rates[label].append((n - 1) / stats["generation_seconds"])
            last[label] = stats
    base = float(np.median(rates["plain greedy"]))
    for label, _ in configs:
        r, st = rates[label], last[label]
        line = (f"{label:<18} {np.median(r):6.3f} tok/s (runs {min(r):.3f}-{max(r):.3f})  x{np.median(r) / base:.2f}  "
                f"{st['decode_steps']:2d} target passes")
        if "drafted" in st:
            line += (f", accepted {st['accepted']}/{st['drafted']} ({st['accepted'] / max(st['drafted'], 1):.0%}), "
                     f"drafting {st['draft_seconds']:.1f} of {st['generation_seconds']:.1f} s")
        print(line + ", same tokens as plain: yes")
    # What one round costs: a target pass over 1 and over k + 1 tokens, one draft step (medians).
    from gemma_ref.kv_cache import forget_from
    from gemma_ref.model import forward

    cache = target.new_cache(1, len(prompt) + 16)
    _, hidden = forward(target.weights, target.config, np.array([prompt]), None, cache, last_only=True,
                        return_hidden=True)

    def seconds(f):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
            forget_from(cache, len(prompt))
        return float(np.median(times))

    def target_pass(T):  # over T tokens after the prompt, as a round's check does
        positions = np.arange(len(prompt), len(prompt) + T)[None]
        forward(target.weights, target.config, np.array([greedy[:T]]), positions, cache, last_only=T == 1,
                n_vocab=target.n_vocab)

    costs = [f"over {T} token(s) {seconds(lambda: target_pass(T)):.2f} s"
             for T in sorted({1, *(k + 1 for k in args.draft_tokens)})]
    step = seconds(lambda: assistant.drafts(target, cache, greedy[0], hidden[:, -1:], len(prompt), 1))
    print(f"costs (medians): a target pass {', '.join(costs)}; a draft step {step:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
