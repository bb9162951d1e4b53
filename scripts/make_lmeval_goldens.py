#!/usr/bin/env python3
"""Goldens for gemma-ref's lm-evaluation-harness adapter, from lm-eval's own `hf` model.

Runs lm_eval.simple_evaluate with model="hf" (transformers, float32, eager attention, CPU)
on tiny checkpoints of tests/data/tiny/ and the three local tasks of tests/data/lmeval/
(multiple choice -> loglikelihood, perplexity -> loglikelihood_rolling, generate_until),
and writes tests/data/lmeval/golden_hf.json: per checkpoint and task, lm-eval's metrics
and every example's responses (log-likelihood and is_greedy per choice, the rolling
log-likelihood, the generated text).

The tiny checkpoints carry only tokenizer.model (no tokenizer_config.json), for which
transformers' GemmaTokenizer does not add <bos>; add_bos_token=True is passed, as the
Hub's Gemma tokenizer_config.json sets it.

Requires: lm-eval, torch, transformers. Run from the repository root (the task YAMLs
name their data files relative to it):
    python scripts/make_lmeval_goldens.py
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["gemma_ref_tiny_mc", "gemma_ref_tiny_rolling", "gemma_ref_tiny_gen"]
CHECKPOINTS = ["gemma3-gqa", "gemma2-gqa"]
OUT = ROOT / "tests" / "data" / "lmeval" / "golden_hf.json"


def main() -> int:
    import os

    os.chdir(ROOT)
    import lm_eval
    import torch
    import transformers
    from lm_eval.tasks import TaskManager

    torch.manual_seed(0)
    torch.set_num_threads(1)
    manager = TaskManager(include_path=str(ROOT / "tests" / "data" / "lmeval"), include_defaults=False)
    out = {"provenance": {
        "script": "scripts/make_lmeval_goldens.py", "command": "python scripts/make_lmeval_goldens.py",
        "lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else _version("lm_eval"),
        "transformers": transformers.__version__, "torch": torch.__version__,
        "python": platform.python_version(),
        "model_args": "pretrained=<checkpoint>, dtype=float32, add_bos_token=True, "
                      "attn_implementation=eager, device=cpu, batch_size=1",
        "call": "lm_eval.simple_evaluate(model='hf', tasks=TASKS, log_samples=True, "
                "task_manager=TaskManager(include_path=tests/data/lmeval, include_defaults=False))",
    }, "checkpoints": {}}
    for name in CHECKPOINTS:
        ckpt = ROOT / "tests" / "data" / "tiny" / name
        r = lm_eval.simple_evaluate(
            model="hf", model_args=dict(pretrained=str(ckpt), dtype="float32", add_bos_token=True,
                                        attn_implementation="eager", device="cpu"),
            batch_size=1, tasks=TASKS, task_manager=manager, log_samples=True,
            random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
        entry = {}
        for task in TASKS:
            samples = sorted(r["samples"][task], key=lambda s: s["doc_id"])
            entry[task] = {
                "metrics": {k: v for k, v in r["results"][task].items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)},
                "samples": [{"doc_id": s["doc_id"], "resps": _plain(s["resps"]),
                             "filtered_resps": _plain(s["filtered_resps"])} for s in samples],
            }
        out["checkpoints"][name] = entry
        print(name, {t: entry[t]["metrics"] for t in TASKS})
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT}")
    return 0


def _plain(x):
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "item"):
        return x.item()
    return x


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg.replace("_", "-"))


if __name__ == "__main__":
    sys.exit(main())
