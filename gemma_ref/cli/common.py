"""What every `gemma-ref` command shares: the model and sampling options, their checks,
model loading, and how an error is printed.

Command modules (generate.py, tools.py, ...) import from here and never from each
other; cli/__init__.py only assembles them into one parser.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..errors import GemmaRefError

PROG = "gemma-ref"


def error(message: str) -> None:
    """Print a user mistake the one way the CLI does: `gemma-ref: error: ...` on stderr."""
    print(f"{PROG}: error: {message}", file=sys.stderr)


def add_model(p):
    """--model, --dtype, --threads: how to pick and run a model."""
    p.add_argument("--model", "-m", default=None,
                   help="local directory, .gguf file, Hugging Face repo id, or alias (2b, 7b-it, "
                        "2-9b, 3-1b-it, 3-270m-gguf, ...). Default: Gemma 3 270M GGUF (demo extra)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="activation precision (float64: slow ground truth)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for the matrix products (default: the cores this process may use)")


def add_sampling(p):
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", "-n", type=int, default=128, help="default: 128")
    g.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p * p(top) (0 = off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 penalizes repeats")
    g.add_argument("--seed", type=int, default=0, help="random seed (same seed, same text)")
    g.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop when this text appears (repeatable); default: <eos> (and "
                        "<end_of_turn> for -it models and --chat)")


def sampling(args) -> dict:
    """The sampling keywords from the command line, checked (before the slow load)."""
    from ..sampling import SamplingParams

    SamplingParams(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty)
    if args.max_new_tokens < 0:
        raise GemmaRefError("--max-new-tokens must be >= 0")
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repetition_penalty, seed=args.seed)


def load(args):
    """The model named by --model (with --dtype, --threads), timed on stderr."""
    from ..api import Model
    from ..parallel import set_threads

    if args.threads is not None:
        if args.threads < 1:
            raise GemmaRefError(f"--threads must be >= 1, got {args.threads}")
        set_threads(args.threads)
    t0 = time.perf_counter()
    model = Model.from_pretrained(args.model, dtype=args.dtype)
    print(f"{PROG}: loaded {model.source} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return model


def read_text(name: str) -> str:
    """The UTF-8 text of a file, or of stdin for "-"."""
    if name == "-":
        return sys.stdin.read()
    try:
        text = Path(name).read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        raise GemmaRefError(f"{name}: no such file") from None
    except UnicodeDecodeError:
        raise GemmaRefError(f"{name}: not UTF-8 text") from None
    if not text:
        raise GemmaRefError(f"{name}: empty file")
    return text
