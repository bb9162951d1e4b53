#!/usr/bin/env python3
"""Generation time on a busy machine: default threads vs --threads 1, batch 1 and 2.

Starts a busy loop (`while True: pass`) pinned to one core (--busy-core, or none with
--no-busy), loads the model once, then alternates, --repeats times, between the
configurations: default threads / one thread, x batch 1 / batch 2, each a greedy
generation of --new-tokens tokens that never stops early. Prints, per configuration,
the median, min and max seconds. Run it against another checkout with PYTHONPATH to
compare versions (the default thread count of older versions is fixed, not adaptive):

    PYTHONPATH=/work/main python scripts/bench_busy.py --repeats 5
    PYTHONPATH=$PWD python scripts/bench_busy.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--busy-core", type=int, default=0)
    ap.add_argument("--no-busy", action="store_true")
    args = ap.parse_args()

    import gemma_ref
    from gemma_ref import Model, parallel

    busy = None
    if not args.no_busy:
        busy = subprocess.Popen(["taskset", "-c", str(args.busy_core), sys.executable, "-c",
                                 "while True: pass"])
    try:
        model = Model.from_pretrained(args.model, progress=False)
        prompts = ["The capital of France is", "Once upon a time, in a small village,"]
        cores = len(os.sched_getaffinity(0))

        def use(threads):
            if threads == "default":
                try:
                    parallel.set_threads(None)  # adaptive (this version)
                except (TypeError, ValueError):
                    parallel.set_threads(cores)  # older versions: all cores, always
            else:
                parallel.set_threads(threads)

        used = {}  # threads -> forward passes, for the default configuration (if adaptive)
        if hasattr(parallel, "_back_off"):
            back_off = parallel._back_off

            def counting():
                back_off()
                if parallel._adaptive:
                    used[parallel._threads] = used.get(parallel._threads, 0) + 1

            parallel._back_off = counting
        configs = [(t, b) for t in ("default", 1) for b in (1, 2)]
        times = {c: [] for c in configs}
        model.generate(prompts[0], max_new_tokens=2, stop=[])  # warm up
        for _ in range(args.repeats):
            for threads, batch in configs:
                use(threads)
                p = prompts[0] if batch == 1 else prompts
                t = time.perf_counter()
                model.generate(p, max_new_tokens=args.new_tokens, stop=[])
                times[(threads, batch)].append(time.perf_counter() - t)
    finally:
        if busy:
            busy.kill()
    print(f"gemma_ref from {os.path.dirname(gemma_ref.__file__)}; busy loop: "
          f"{'none' if args.no_busy else f'core {args.busy_core}'}; load average {os.getloadavg()}")
    print(f"{'threads':>8} {'batch':>5}  median s   min s   max s  ({args.repeats} runs, "
          f"{args.new_tokens} new tokens)")
    for (threads, batch), ts in times.items():
        print(f"{threads!s:>8} {batch:>5}  {statistics.median(ts):8.2f} {min(ts):7.2f} {max(ts):7.2f}")
    if used:
        print("default threads, forward passes at each count:", dict(sorted(used.items())))
    print(json.dumps({f"{t}/{b}": ts for (t, b), ts in times.items()}))


if __name__ == "__main__":
    main()
