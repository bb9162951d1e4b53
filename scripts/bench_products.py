"""How fast can batched decoding be? The matrix products of one decoding step, alone.

    python scripts/bench_products.py                  # Gemma 3 270M shapes, NumPy and (if installed) torch
    python scripts/bench_products.py --repeats 15 --batch 8 --threads 2
    python scripts/bench_products.py --prefill 512 --json /tmp/ceiling.json   # + a prefill's products

A decoding step of B sequences multiplies every weight matrix by B columns. This
times exactly those products (random float32 weights of the model's shapes, nothing
else of the model) at batch 1 and batch B, with NumPy's BLAS as gemma-ref calls it
(`gemma_ref.parallel.dense`, on BLAS's own threads, as in decoding) and, as a peer,
PyTorch's `torch.nn.functional.linear`. Whatever else a step does (norms, attention,
sampling) only adds time, so B / (products at batch B) bounds the batch-B decode
throughput of any engine built on that library's products, and 1 / (products at
batch 1) the batch-1 throughput. It also prints what a target "batch B at R times a
batch 1 of S tok/s" (--ratio, --batch1-tps; the performance issue asks for 5x and
>= 16 tok/s) needs of a batch-B step. Never a test; it prints numbers.

--prefill N also times the products of a prefill of N tokens on the generation path
(every layer's products with N rows, the output head with the last row only), torch's
with its own threads and NumPy's both ways it can run them: as gemma-ref does
(`gemma_ref.parallel.linear`, its threads splitting the rows of each weight,
single-threaded BLAS in each) and on OpenBLAS's own threads (`dense`, one call per
product). NumPy's ceiling is the faster of the two.
--json writes {engine: {batch1_ms, batchB_ms, prefill_ms}} (scripts/bench.py reads it
for its "ceiling" rows); for NumPy also prefill_split_ms and prefill_blas_threads_ms.

With --threads 1 the same products on one core: how fast each library's GEMM is per
core, apart from how it shares the work between cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# (name, rows, columns, how many per step) of Gemma 3 270M's weight matrices.
GEMMA3_270M = [("q_proj", 1024, 640, 18), ("k_proj", 256, 640, 18), ("v_proj", 256, 640, 18),
               ("o_proj", 640, 1024, 18), ("gate_proj", 2048, 640, 18), ("up_proj", 2048, 640, 18),
               ("down_proj", 640, 2048, 18), ("lm_head (tied)", 262144, 640, 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9, help="timed passes over all products (median)")
    ap.add_argument("--ratio", type=float, default=5.0, help="target batch-B / batch-1 throughput")
    ap.add_argument("--batch1-tps", type=float, default=16.0, help="target batch-1 tok/s")
    ap.add_argument("--prefill", type=int, default=0, help="also a prefill of this many tokens")
    ap.add_argument("--json", default=None, help="write the per-step totals here")
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    from threadpoolctl import threadpool_limits

    from gemma_ref import parallel
    from gemma_ref.parallel import dense, linear, threads_for

    rng = np.random.default_rng(0)
    # One copy of each distinct matrix per use, so a step streams them from memory as
    # a real one does (18 layers of 2048 x 640 are 94 MB, more than any cache here).
    weights = {name: [rng.standard_normal((r, c), dtype=np.float32) for _ in range(n)]
               for name, r, c, n in GEMMA3_270M}
    engines = {"numpy (gemma-ref's dense)": lambda x, w: dense(x, w)}
    try:
        import torch

        torch.set_num_threads(args.threads)
        tw = {name: [torch.from_numpy(w) for w in ws] for name, ws in weights.items()}
        engines["torch (F.linear)"] = lambda x, w: torch.nn.functional.linear(x, w)
    except ImportError:
        torch = tw = None
        print("(torch not installed: NumPy only; `pip install \".[dev]\"` adds the peer)")

    parallel.set_threads(args.threads)

    def step_times(engine, batch, tokens=1, split=True):
        """Median seconds per product kind, over --repeats passes of a whole step.

        tokens > 1: a prefill of that many tokens (the head with the last one only);
        NumPy's split between our threads (split, as in gemma-ref's prefill) or not."""
        use_torch = engine.startswith("torch")
        ws = tw if use_torch else weights
        fn = engines[engine]
        split = split and tokens > 1 and not use_torch
        if split:
            fn = linear  # split between our threads, as in gemma-ref's prefill
        x = rng.standard_normal((batch, tokens, 2048), dtype=np.float32)
        times = {name: [] for name in ws}
        limits = threads_for(batch * tokens) if split else threadpool_limits(args.threads, user_api="blas")
        with limits:
            for rep in range(args.repeats + 1):  # the first pass warms up
                for name, mats in ws.items():
                    cols = mats[0].shape[1]
                    xn = x[..., -1:, :cols] if name.startswith("lm_head") else x[..., :cols]
                    xi = torch.from_numpy(xn.copy()) if use_torch else xn.copy()
                    t0 = time.perf_counter()
                    for w in mats:
                        fn(xi, w)
                    if rep:
                        times[name].append(time.perf_counter() - t0)
        return {name: statistics.median(t) for name, t in times.items()}

    B = args.batch
    print(f"Products of one decoding step, Gemma 3 270M shapes, float32, {args.threads} threads, "
          f"medians of {args.repeats}; ms per step (all layers)\n")
    summary = []
    for engine in engines:
        t1, tb = step_times(engine, 1), step_times(engine, B)
        print(f"{engine}")
        print(f"| product | batch 1 (ms) | batch {B} (ms) | batch {B} / batch 1 time |")
        print("|---|---|---|---|")
        for name in t1:
            print(f"| {name} | {t1[name] * 1e3:.2f} | {tb[name] * 1e3:.2f} | {tb[name] / t1[name]:.2f} |")
        s1, sb = sum(t1.values()), sum(tb.values())
        print(f"| all | {s1 * 1e3:.2f} | {sb * 1e3:.2f} | {sb / s1:.2f} |\n")
        summary.append((engine, s1, sb))
    totals = {engine: {"batch1_ms": s1 * 1e3, "batchB_ms": sb * 1e3, "batch": B}
              for engine, s1, sb in summary}
    if args.prefill:
        for engine in engines:
            ways = [("", step_times(engine, 1, args.prefill))]
            if not engine.startswith("torch"):
                ways = [(" split by gemma-ref's threads", ways[0][1]),
                        (" on OpenBLAS's threads", step_times(engine, 1, args.prefill, split=False))]
                totals[engine]["prefill_split_ms"] = sum(ways[0][1].values()) * 1e3
                totals[engine]["prefill_blas_threads_ms"] = sum(ways[1][1].values()) * 1e3
            for how, tp in ways:
                print(f"{engine}{how}: products of a {args.prefill}-token prefill "
                      f"{sum(tp.values()) * 1e3:.1f} ms (at most {args.prefill / sum(tp.values()):.0f} "
                      f"tok/s): " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in tp.items()))
            totals[engine]["prefill_ms"] = min(sum(tp.values()) for _, tp in ways) * 1e3
            totals[engine]["prefill_tokens"] = args.prefill
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(totals, f, indent=1)
    need = args.ratio * args.batch1_tps  # batch-B tok/s
    for engine, s1, sb in summary:
        print(f"{engine}: products alone allow at most {1 / s1:.1f} tok/s at batch 1 and "
              f"{B / sb:.1f} at batch {B} ({B * s1 / sb:.2f}x, if nothing else took time)")
    print(f"batch {B} at {args.ratio:g}x a batch 1 of {args.batch1_tps:g} tok/s is {need:g} tok/s: "
          f"a batch-{B} step of at most {B / need * 1e3:.1f} ms, products, norms, attention and "
          f"sampling together")


if __name__ == "__main__":
    main()
