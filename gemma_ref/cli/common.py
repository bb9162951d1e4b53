"""What every `gemma-ref` command shares: the parser and its error format, the model and
sampling options and their checks, reading text (UTF-8, strictly), and model loading.

Command modules (generate.py, tools.py, manage.py) import from here and never from each
other; cli/__init__.py only assembles them into one parser.

Errors: a user mistake is one line, `gemma-ref: error: ...`. Mistakes argparse finds
(an unknown option, a word where a number goes) print the command's usage line above it
and exit 2; the others exit 1 (`compare`: 2, as diff(1) does for trouble).
"""

from __future__ import annotations

import argparse
import sys
import time

from .. import files
from ..errors import GemmaRefError
from ..tokenizer import check_text, decode_utf8 as decode

PROG = "gemma-ref"


def error(message: str) -> None:
    """Print a user mistake the one way the CLI does: `gemma-ref: error: ...` on stderr."""
    print(f"{PROG}: error: {message}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in the one error format (after the usage line)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        command = self.prog[len(PROG):].strip()
        error(f"{command}: {message}" if command else message)
        sys.exit(2)


def add_model(p):
    """--model, --dtype, --threads, --max-memory: how to pick and run a model."""
    p.add_argument("--model", "-m", default=None,
                   help="local directory, .gguf file, Hugging Face repo id, or alias (2b, 7b-it, "
                        "2-9b, 3-1b-it, 3-270m-gguf, ...; `gemma-ref models` lists them). "
                        "Default: Gemma 3 270M GGUF (demo extra)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="activation precision (float64: slow ground truth)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for the matrix products (default: the cores this process may "
                        "use, fewer while other processes keep them busy)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="RAM for the weights, e.g. 4G, 500M: float32 if they fit, else bf16/f16 "
                        "as stored, else the rest is read from disk as used (default: 85%% of "
                        "the available memory)")


def add_sampling(p):
    from ..api import MAX_NEW_TOKENS

    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", "-n", type=int, default=MAX_NEW_TOKENS,
                   help=f"default: {MAX_NEW_TOKENS}")
    g.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p * p(top) (0 = off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 penalizes repeats")
    g.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (same seed, same text)")
    g.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop when this text appears (repeatable); default: <eos> (and the "
                        "end of turn, <end_of_turn> or Gemma 4's <turn|>, for -it models and --chat)")


def sampling(args) -> dict:
    """The sampling keywords from the command line, checked (before the slow load)."""
    from ..sampling import SamplingParams, check_seed

    SamplingParams(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty)
    check_seed(args.seed)
    if args.max_new_tokens < 0:
        raise GemmaRefError("--max-new-tokens must be >= 0")
    for s in args.stop or []:
        check_text(s, "--stop")
        if not s:
            raise GemmaRefError("--stop '': an empty stop text would end generation before its "
                                "first token")
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repetition_penalty, seed=args.seed)


def check_model_args(args) -> None:
    """--threads and --max-memory, checked before anything slow."""
    if args.threads is not None and args.threads < 1:
        raise GemmaRefError(f"--threads must be >= 1, got {args.threads}")
    if isinstance(args.max_memory, str):
        args.max_memory = parse_size(args.max_memory, "--max-memory")


def human_bytes(n: float) -> str:
    """'512 B', '3.4 MB', '1.1 GB' (powers of 1000, as file sizes are shown)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def human_count(n: int) -> str:
    """'268 M', '4.6 B', '51 k': a parameter count, rounded for reading."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return str(n)


def parse_size(text: str, what: str) -> int:
    """Bytes from '4G', '500M', '1.5GB', '123456' (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        value = float(t[:len(t) - len(unit)])
    except ValueError:
        value = float("nan")
    if not (value >= 0 and value < float("inf")):
        raise GemmaRefError(f"{what}: expected a size like 4G, 500M or a number of bytes >= 0, "
                            f"got {text!r}")
    return int(value * units[unit])


def load(args, kind: str | None = None):
    """The model named by --model (with --dtype, --threads, --max-memory), timed on stderr.

    kind: "generation", "embedding" or "classifier", what the command needs; another kind (a
    model's `kind`: "embedding", "classifier", "drafter"; api.Model's: "generation") is an error,
    for an alias (hub.ALIAS_KINDS) before its download."""
    from ..api import Model
    from ..hub import ALIAS_KINDS, ALIASES
    from ..parallel import set_threads

    check_model_args(args)
    alias = str(args.model or "").lower()
    if kind is not None and alias in ALIASES:  # an alias of another kind: said before the download
        _check_kind(args.command, args.model, ALIAS_KINDS.get(alias, "generation"), kind)
    if args.threads is not None:
        set_threads(args.threads)
    t0 = time.perf_counter()
    model = Model.from_pretrained(args.model, dtype=args.dtype, max_memory=args.max_memory)
    print(f"{PROG}: loaded {model.source} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    why = getattr(model, "cannot", {}).get(getattr(args, "command", None))  # families.py: what it cannot do
    if why:
        raise GemmaRefError(f"{args.command}: {model.source}: {why}")
    if kind is not None:  # api.Model generates; families.py's classes say what they are
        _check_kind(args.command, model.source, getattr(model, "kind", "generation"), kind)
    return model


def _check_kind(command: str, source: str, has: str, kind: str) -> None:
    """A model of kind `has` for a command that needs `kind`: one sentence on what it is instead."""
    if has != kind:
        wanted = WANTED.get(kind, f"a {kind} model")
        what = KINDS.get(has) or f"is a {'text-generation' if has == 'generation' else has} model, not {wanted}"
        raise GemmaRefError(f"{command}: {source} {what}")


# What a model that is not a text generator is, and what to use instead (load's refusals)
KINDS = {
    "embedding": ("is an embedding model: it gives sentence vectors, not text (use `gemma-ref embed` "
                  "or `similarity`)"),
    "classifier": ("is an image safety classifier (ShieldGemma 2): it gives P(yes) per image and "
                   "policy, not text (use `gemma-ref classify --image FILE`)"),
    "drafter": ("is a drafter: a Gemma 4 assistant drafts for its target model, never alone (use "
                "`gemma-ref generate --model TARGET --assistant THIS`)"),
}
WANTED = {"embedding": "an embedding model (try --model embeddinggemma-300m)",
          "classifier": "an image classifier (ShieldGemma 2, e.g. --model shieldgemma-2-4b-it)"}


def read_stdin(where: str = "stdin") -> str:
    """All of stdin, decoded strictly as UTF-8 (whatever the locale)."""
    if hasattr(sys.stdin, "buffer"):
        return decode(sys.stdin.buffer.read(), where)
    return check_text(sys.stdin.read(), where)


def read_text(name: str, what: str = "file") -> str:
    """The UTF-8 text of a file, or of stdin for "-"; an empty one is an error."""
    if name == "-":
        text = read_stdin()
    else:
        text = decode(files.read_bytes(name, what, pipes=True), name)  # --file <(command) is a pipe
    if not text:
        raise GemmaRefError(f"{name if name != '-' else 'stdin'}: empty {what}")
    return text
