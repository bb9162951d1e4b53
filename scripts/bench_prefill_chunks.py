"""Prefill speed of the generation path: chunks pipelined on the threads vs in order.

    python scripts/bench_prefill_chunks.py                    # 512 768 1024 2048 4096 tokens
    python scripts/bench_prefill_chunks.py --tokens 8192 --repeats 2

One process, the default model (or --model), 2 threads; for each prompt length, alternating
`--repeats` times: `Model.generate_ids(prompt, max_new_tokens=1)` with the prompt's chunks
pipelined (parallel.pipelined, the default) and as before pipelining: chunks of 512 tokens in
order, each product split between the threads. Prints tok/s of each run. A measuring tool,
not a test.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the default model")
    ap.add_argument("--tokens", type=int, nargs="+", default=[512, 768, 1024, 2048, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from gemma_ref import Model, api, default_model, parallel

    parallel.set_threads(args.threads)
    model = Model.from_pretrained(args.model or default_model.path(progress=False), progress=False)
    rng = np.random.default_rng(0)
    in_order = lambda fn, chunks, layers: [fn(*c) for c in chunks]  # noqa: E731
    min_pipelined = parallel.MIN_PIPELINED

    def tok_per_s(n: int, pipelined: bool) -> float:
        api.pipelined = parallel.pipelined if pipelined else in_order
        parallel.MIN_PIPELINED = min_pipelined if pipelined else 1 << 62  # else: 512-token chunks
        prompt = [2] + rng.integers(10, 32000, n - 1).tolist()
        t0 = time.perf_counter()
        next(model.generate_ids([prompt], max_new_tokens=1, temperature=0.0, stop_ids=[]))
        return n / (time.perf_counter() - t0)

    tok_per_s(512, True)  # warm-up
    for n in args.tokens:
        runs = {"pipelined": [], "in order": []}
        for _ in range(args.repeats):
            for how in runs:
                runs[how].append(tok_per_s(n, how == "pipelined"))
        print(f"{n} tokens: " + "; ".join(f"{how} {np.median(v):.0f} tok/s (runs: "
                                          f"{', '.join(f'{x:.0f}' for x in v)})" for how, v in runs.items()))


if __name__ == "__main__":
    main()
