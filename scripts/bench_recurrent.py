#!/usr/bin/env python3
"""Decode speed of a RecurrentGemma 2B-shaped random checkpoint: gemma-ref vs transformers,
after 512 and after 8192 tokens of context. A recurrent model's decode should not slow
down with the context: its state is fixed-size (the RG-LRU's h and the conv's last
inputs), and its attention layers read a ring of at most attention_window_size (2048) keys.

    python scripts/bench_recurrent.py --make DIR      # writes the checkpoint once (bf16, 5.4 GB)
    python scripts/bench_recurrent.py DIR            # one run: both engines, both contexts

The checkpoint: google/recurrentgemma-2b's config.json shape (gemma_ref.recurrent_gemma
PRESETS["2b"]: 26 layers, 2560 wide, 2.68B parameters), seeded random weights stored
in bfloat16 (init scales as transformers'). Each engine runs in its own subprocess, one
after the other (gemma-ref, then transformers), on 2 threads, greedy, the same prompt ids:
- gemma-ref: recurrent_gemma.forward, float32; loader defaults (weights widened to float32
  in RAM when they fit, else the bf16 matrices held as stored: the table says which).
- transformers: RecurrentGemmaForCausalLM, float32 (weights widened at load), eager
  attention; a plain loop (the prompt in one call, then one token a call through its
  DynamicCache and the blocks' conv/RG-LRU states, logits_to_keep=1), its fastest path.
Within each engine both contexts are prefilled first, then their decode steps alternate
(512, 8192, 512, ...), so a busy machine's load falls on both columns alike.

Context 8192 is an 8192-token prompt of which the last 2048 tokens (the attention window)
are prefilled, at positions 6144..8191: every decode step then does exactly the work it
would after a full 8192-token prefill (a full ring of 2048 keys, the same fixed-size state;
the 6144 tokens before would only change the state's values), and a prefill of 8192 tokens
of a 2.7B model on 2 cores (~15 min per engine) is avoided. Context 512: all 512 prefilled.
Decode tok/s: the NEW steps after the first of each context, timed one by one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTEXTS = (512, 8192)
WINDOW = 2048
NEW = 24
THREADS = 2
MARK = "@@BENCH@@"


def make_checkpoint(directory: Path) -> None:
    """google/recurrentgemma-2b's shapes, seeded random bf16 weights (no gemma_ref import
    for the values: the shapes come from its expected_shapes, the config from PRESETS)."""
    import ml_dtypes
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from gemma_ref.recurrent_gemma import PRESETS, expected_shapes

    cfg = PRESETS["2b"]
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(cfg.to_dict(), architectures=["RecurrentGemmaForCausalLM"], hidden_activation="gelu_pytorch_tanh",
                  rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta,
                                   "partial_rotary_factor": cfg.partial_rotary_factor}, tie_word_embeddings=True)
    for k in ("rope_theta", "partial_rotary_factor"):
        config.pop(k)
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    shapes = expected_shapes(cfg)
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(0)
    with open(directory / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in shapes.items():
            if name.endswith("norm.weight") or name.endswith("bias"):
                a = np.zeros(shape, np.float32)
            elif name.endswith("recurrent_param"):  # transformers' init: a in [0.9, 0.999]
                u = rng.uniform(0.9 ** 2, 0.999 ** 2, shape)
                a = np.log(np.exp(-0.5 * np.log(u)) - 1.0).astype(np.float32)
            else:
                fan_in = shape[-1] if len(shape) == 2 else shape[-2] if len(shape) == 3 and shape[1] > 1 else shape[-1]
                rows = max(1, (1 << 24) // max(1, math.prod(shape[1:])))
                for s in range(0, shape[0], rows):  # in blocks: never the whole table in float32
                    block = rng.standard_normal((min(rows, shape[0] - s), *shape[1:]), dtype=np.float32)
                    (block / math.sqrt(fan_in)).astype(ml_dtypes.bfloat16).tofile(f)
                continue
            a.astype(ml_dtypes.bfloat16).tofile(f)
    print(f"wrote {directory} ({offset / 1e9:.1f} GB, {cfg.num_parameters / 1e9:.2f}B parameters)")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def prompt_for(context: int):
    import numpy as np

    ids = np.random.default_rng(context).integers(3, 256_000, context)
    ids[0] = 2
    start = max(0, context - WINDOW) if context > WINDOW else 0  # see the module docstring
    return ids[start:], np.arange(start, context)


def measure(prefill, step) -> dict:
    """Prefill each context, then NEW greedy steps on each, the contexts alternating step by
    step (the machine's load falls on both alike). prefill(context) -> (logits, handle);
    step(handle, token, position) -> logits [1, 1, V]."""
    runs = {}
    for context in CONTEXTS:
        ids, pos = prompt_for(context)
        t0 = time.perf_counter()
        logits, handle = prefill(ids, pos)
        runs[context] = dict(prefill_s=time.perf_counter() - t0, prefilled=len(ids), steps=[], tokens=[],
                             logits=logits, handle=handle, p=context)
    for _ in range(NEW):
        for r in runs.values():
            tok = int(r["logits"][0, -1].argmax())
            r["tokens"].append(tok)
            t0 = time.perf_counter()
            r["logits"] = step(r["handle"], tok, r["p"])
            r["steps"].append(time.perf_counter() - t0)
            r["p"] += 1
    return runs


def run_gemma_ref(directory: str) -> dict:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from gemma_ref import Model
    from gemma_ref.recurrent_gemma import forward

    t0 = time.perf_counter()
    model = Model.from_pretrained(directory, progress=False)  # defaults: float32 in RAM if it fits
    out = {"load_s": time.perf_counter() - t0, "weights": "bf16 as stored" if model.weights.narrow else "float32"}

    def prefill(ids, pos):
        state = model.new_cache(1)
        return forward(model.weights, model.config, ids[None], pos[None], state, last_only=True), state

    def step(state, tok, p):
        return forward(model.weights, model.config, np.array([[tok]]), np.array([[p]]), state, last_only=True)

    for context, r in measure(prefill, step).items():
        state = r.pop("handle")
        out[context] = dict(r, logits=None, state_bytes=sum(c.nbytes for c in state))
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def run_transformers(directory: str) -> dict:
    import torch
    from transformers import DynamicCache, RecurrentGemmaForCausalLM

    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    model = RecurrentGemmaForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                                      attn_implementation="eager").eval()
    out = {"load_s": time.perf_counter() - t0, "weights": "float32"}
    # transformers keeps the conv and RG-LRU states on the modules, not in its cache object:
    # swapped in and out so that two contexts can alternate.
    blocks = [layer.temporal_block for layer in model.model.layers if hasattr(layer.temporal_block, "rg_lru")]

    def saved():
        return [(b.conv1d_state, b.rg_lru.recurrent_states) for b in blocks]

    def restore(states):
        for b, (conv, h) in zip(blocks, states):
            b.conv1d_state, b.rg_lru.recurrent_states = conv, h

    def prefill(ids, pos):
        model.model._setup_cache(model.config, 1, "cpu", torch.float32)  # fresh conv/RG-LRU states
        cache = DynamicCache(config=model.config)
        logits = model(input_ids=torch.tensor(ids[None]), position_ids=torch.tensor(pos[None]), cache=cache,
                       use_cache=True, logits_to_keep=1).logits
        return logits, [cache, saved()]

    def step(handle, tok, p):
        restore(handle[1])
        logits = model(input_ids=torch.tensor([[tok]]), position_ids=torch.tensor([[p]]), cache=handle[0],
                       use_cache=True, logits_to_keep=1).logits
        handle[1] = saved()
        return logits

    with torch.no_grad():
        for context, r in measure(prefill, step).items():
            r.pop("handle")
            out[context] = dict(r, logits=None)
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def child(engine: str, directory: str) -> None:
    result = (run_gemma_ref if engine == "gemma-ref" else run_transformers)(directory)
    print(MARK + json.dumps(result))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("--make", metavar="DIR", help="write the 2B-shaped random checkpoint into DIR")
    ap.add_argument("--child", nargs=2, metavar=("ENGINE", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        make_checkpoint(Path(args.make))
        return 0
    if args.child:
        child(*args.child)
        return 0
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), OPENBLAS_NUM_THREADS=str(THREADS),
               MKL_NUM_THREADS=str(THREADS), PYTHONPATH=str(ROOT))
    import numpy
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"CPU {cpu}, {os.cpu_count()} cores; python {platform.python_version()}, numpy {numpy.__version__}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}; {THREADS} threads; "
          f"gemma-ref @ {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()}")
    print("load average (1, 5, 15 min) at the start: %.1f %.1f %.1f" % os.getloadavg())
    results = {}
    for engine in ("gemma-ref", "transformers"):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--child", engine, args.checkpoint], env=env,
                           capture_output=True, text=True)
        line = next((l for l in p.stdout.splitlines() if l.startswith(MARK)), None)
        if line is None:
            print(p.stdout[-2000:], p.stderr[-4000:])
            raise SystemExit(f"{engine} failed")
        results[engine] = json.loads(line[len(MARK):])
        print(f"{engine}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    print("\n| engine | weights | context | prefilled tokens (s) | decode tok/s (overall) | median step (ms) | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for engine, r in results.items():
        for context in CONTEXTS:
            c = r[str(context)]
            steps = c["steps"][1:]  # after the first
            tps = len(steps) / sum(steps)
            med = sorted(steps)[len(steps) // 2] * 1e3
            print(f"| {engine} | {r['weights']} | {context} | {c['prefilled']} ({c['prefill_s']:.1f} s) | {tps:.2f} | {med:.0f} | "
                  f"{r['peak_rss_gb']:.1f} GB |")
    for context in CONTEXTS:
        a, b = (results[e][str(context)]["tokens"] for e in ("gemma-ref", "transformers"))
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
        print(f"context {context}: greedy ids equal for the first {same} of {len(a)} tokens")
    s = [results["gemma-ref"][str(c)]["state_bytes"] for c in CONTEXTS]
    print(f"gemma-ref state bytes after {CONTEXTS[0]} and {CONTEXTS[1]} tokens: {s[0]:,} and {s[1]:,}")
    print("load average (1, 5, 15 min) at the end: %.1f %.1f %.1f" % os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
