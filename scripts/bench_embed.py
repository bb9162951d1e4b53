#!/usr/bin/env python3
"""Embedding speed, gemma-ref beside sentence-transformers, same texts, same machine, one run.

    python scripts/bench_embed.py [--model DIR] [--texts 64] [--repeat 3]

DIR defaults to google/embeddinggemma-300m in the Hugging Face cache (`gemma-ref fetch
embeddinggemma-300m`). The texts are sentences of 10 to ~120 tokens (seeded), embedded
with the "document" prompt; each engine runs once to warm up, then `--repeat` times;
the best time counts. sentence-transformers: float32, CPU, eager attention, batch 32,
torch's default threads. Prints texts/s, tokens/s and the worst cosine distance
between the two engines' embeddings.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

WORDS = ("the of a model vector search query document planet red numerical reference engine embedding "
         "attention window token layer mean pooling dense sentence retrieval Gemma NumPy transformer").split()


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 100)))) + "." for _ in range(n)]


def best(fn, repeat: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint directory (default: the HF cache's)")
    p.add_argument("--texts", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    model_dir = args.model
    if model_dir is None:
        from huggingface_hub import snapshot_download

        model_dir = snapshot_download("google/embeddinggemma-300m", local_files_only=True)
    batch = texts(args.texts)

    from gemma_ref import Model

    ours = Model.from_pretrained(model_dir)
    n_tokens = sum(len(ours.encode(ours.prompt("document") + t)) for t in batch)
    t_ours = best(lambda: ours.embed(batch, prompt_name="document"), args.repeat)
    e_ours = ours.embed(batch, prompt_name="document")

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model_dir, device="cpu", model_kwargs={"attn_implementation": "eager"})
    t_st = best(lambda: st.encode(batch, prompt_name="document", batch_size=32), args.repeat)
    e_st = st.encode(batch, prompt_name="document", batch_size=32)

    cos = 1 - (e_ours * e_st).sum(1) / np.linalg.norm(e_ours, axis=1) / np.linalg.norm(e_st, axis=1)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"{len(batch)} texts, {n_tokens} tokens (with the document prompt); CPU {cpu}, {os.cpu_count()} cores; "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), sentence-transformers "
          f"{sentence_transformers.__version__}, numpy {np.__version__}")
    for name, t in (("gemma-ref", t_ours), ("sentence-transformers", t_st)):
        print(f"{name:<22} {len(batch) / t:7.1f} texts/s  {n_tokens / t:8.0f} tokens/s  ({t:.2f} s)")
    print(f"worst cosine distance between the two: {cos.max():.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
