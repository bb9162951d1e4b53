"""CLI subcommands of the reference tooling: dump, compare, perplexity.

Exit status of `compare`, like diff(1): 0 within tolerance, 1 beyond it, 2 when
the comparison could not be made (a missing or malformed file, mismatched
prompts, bad arguments). The other commands: 0, or 1 for a GemmaRefError.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import GemmaRefError
from ..tokenizer import check_text
from .common import add_model, check_model_args, error, load, read_text

COMPARE_EXAMPLES = """\
exit status: 0 within tolerance, 1 beyond it, 2 could not compare (bad input)
examples:
  gemma-ref compare golden.npz --model ./ckpt            # gemma-ref vs a golden
  gemma-ref compare golden.npz --model 3-270m-gguf --dtype float64
  gemma-ref compare golden.npz other.npz --json          # two dumps, for CI
  gemma-ref compare golden.npz --model ./ckpt --html report.html   # a page to look at
"""


def add_commands(sub):
    """Register the tooling subcommands on the `gemma-ref` subparsers."""
    p = sub.add_parser("dump", help="write a golden .npz: ids, logits, hidden states, greedy ids",
                       description="Run the model on prompts and write a golden .npz "
                                   "(format: docs/REFERENCE.md).")
    add_model(p)
    p.add_argument("--prompt", "-p", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", metavar="FILE.jsonl",
                   help='prompts, one JSON per line: "text", {"prompt": ...} or {"input_ids": [...]}')
    p.add_argument("--out", "-o", required=True, help="the .npz to write")
    p.add_argument("--top-k", type=int, default=0,
                   help="keep only the k largest logits per position (default 0: all)")
    p.add_argument("--max-new-tokens", "-n", type=int, default=16,
                   help="length of the greedy continuation (default 16)")
    p.add_argument("--trace", action="store_true",
                   help="also store every traced intermediate (q/k/v, norms, mlp, ...)")
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("compare", help="compare a golden with another dump or a model, per layer",
                       epilog=COMPARE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("golden", help="the reference .npz")
    p.add_argument("other", nargs="?", help="a second .npz (or give --model)")
    add_model(p)
    p.add_argument("--rtol", type=float, default=1e-3,
                   help="a position fails if an element differs by more than "
                        "rtol * (|golden| + rms(golden row)) (default 1e-3)")
    p.add_argument("--top-k", type=int, default=10, help="k of the top-k overlap (default 10)")
    p.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    p.add_argument("--html", metavar="FILE", help="also write the report as one self-contained HTML "
                                                  "page (heatmaps of the error by layer and position)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("perplexity", help="perplexity of a text file, with strided windows")
    p.add_argument("file", help='a UTF-8 text file, or "-" for stdin')
    add_model(p)
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per window, <bos> included (default 1024, or the model's "
                        "context if shorter; never beyond it)")
    p.add_argument("--stride", type=int, default=None,
                   help="start of one window to the next (default max-length / 2); each token "
                        "is scored once")
    p.add_argument("--no-window-bos", action="store_true",
                   help="do not put <bos> before windows after the first (as HF's guide does)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_perplexity)


def cmd_dump(args) -> int:
    from .. import reference

    prompts = [check_text(p, "--prompt") for p in args.prompt]
    prompts += reference.read_prompts(args.prompts) if args.prompts else []
    if not prompts:
        raise GemmaRefError("dump: no prompts: give --prompt TEXT (repeatable) or --prompts FILE.jsonl")
    if args.top_k < 0 or args.max_new_tokens < 0:
        raise GemmaRefError("dump: --top-k and --max-new-tokens must be >= 0")
    check_model_args(args)
    model = load(args, "generation")
    golden = reference.dump(model, prompts, k=args.top_k, max_new_tokens=args.max_new_tokens,
                            trace=args.trace)
    reference.save(golden, args.out)
    n_tokens = sum(len(d.input_ids) for d in golden.prompts)
    print(f"gemma-ref: wrote {args.out}: {len(prompts)} prompts, {n_tokens} tokens, "
          f"{'top-%d' % args.top_k if args.top_k else 'full'} logits, dtype {model.dtype}",
          file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    """0 within tolerance, 1 beyond; 2 (not 1) for input errors, so CI can tell them apart."""
    try:
        report = _compare(args)
        if args.html:
            from ..report_html import write

            write(report, args.html)
    except GemmaRefError as e:
        error(str(e))
        return 2
    from ..reference import format_report

    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
    return 0 if report["ok"] else 1


def _compare(args) -> dict:
    from .. import reference

    if (args.other is None) == (args.model is None):
        raise GemmaRefError("compare: give either a second .npz or --model, not both or neither")
    reference.check_rtol(args.rtol)
    if args.top_k < 1:
        raise GemmaRefError(f"compare: --top-k must be >= 1, got {args.top_k}")
    check_model_args(args)
    golden = reference.load(args.golden)
    if args.other is not None:
        other = reference.load(args.other)
    else:
        other = reference.candidate_from_model(load(args, "generation"), golden, trace=True)
    return reference.compare(golden, other, args.rtol, args.top_k)


def cmd_perplexity(args) -> int:
    from ..scoring import MAX_LENGTH, check_window, perplexity

    length = MAX_LENGTH if args.max_length is None else args.max_length  # checked before the load
    check_window(length, length // 2 if args.stride is None else args.stride)
    check_model_args(args)
    text = read_text(args.file)
    model = load(args, "generation")
    if model.tokenizer is None:
        raise GemmaRefError(f"{model.source}: perplexity of a text needs a tokenizer.model")
    ids = model.tokenizer.encode(text)
    r = perplexity(model, ids, args.max_length, args.stride, bos=not args.no_window_bos,
                   n_bytes=len(text.encode("utf-8")))
    r = {"file": args.file, "model": model.source, "dtype": str(model.dtype), **r}
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"perplexity {r['perplexity']:.4f}  ({r['nll_per_token']:.4f} nats/token over "
          f"{r['tokens_scored']} tokens, {r['bits_per_byte']:.4f} bits/byte; {r['windows']} "
          f"windows of <= {r['max_length']} tokens, stride {r['stride']})")
    return 0
