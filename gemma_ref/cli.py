"""The `gemma-ref` command: a thin shell over the library.

A GemmaRefError (a user mistake) becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .errors import GemmaRefError

EXAMPLES = """\
examples:
  gemma-ref generate "The capital of France is"            # default model, offline
  gemma-ref generate --model 2b --max-new-tokens 50 "Once upon a time"
  echo "Write a haiku about NumPy" | gemma-ref generate --model 2b-it --chat -
  gemma-ref generate --temperature 0.8 --top-p 0.95 --seed 1 "Dear diary,"
  gemma-ref chat --model 3-1b-it
  gemma-ref info --model ./my-gemma-checkpoint
"""


def _add_model(p):
    p.add_argument("--model", "-m", default=None,
                   help="local directory, .gguf file, Hugging Face repo id, or alias (2b, 7b-it, "
                        "2-9b, 3-1b-it, 3-270m-gguf, ...). Default: Gemma 3 270M GGUF (demo extra)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="activation precision (float64: slow ground truth)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for the matrix products (default: the cores this process may use)")


def _add_sampling(p):
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


def _sampling(args) -> dict:
    """The sampling keywords from the command line, checked (before the slow load)."""
    from .sampling import SamplingParams

    SamplingParams(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty)
    if args.max_new_tokens < 0:
        raise GemmaRefError("--max-new-tokens must be >= 0")
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repetition_penalty, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="gemma-ref", description="gemma-ref: a pure-NumPy reference engine for Gemma models.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gemma-ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("generate", help="continue a prompt, streaming to stdout",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help='the prompt text, or "-" to read it from stdin')
    _add_model(p)
    _add_sampling(p)
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt in the chat template (for -it models)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat (Ctrl-D or /exit to quit)")
    _add_model(p)
    _add_sampling(p)
    p.add_argument("--system", default=None, help="system instructions (folded into the first turn)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("info", help="print the config, parameter count and file locations")
    _add_model(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    from . import cli_tools  # dump, compare, perplexity: the reference tooling

    cli_tools.add_commands(sub, _add_model)
    return parser


def _load(args):
    from .api import Model
    from .parallel import set_threads

    if args.threads is not None:
        if args.threads < 1:
            raise GemmaRefError(f"--threads must be >= 1, got {args.threads}")
        set_threads(args.threads)
    t0 = time.perf_counter()
    model = Model.from_pretrained(args.model, dtype=args.dtype)
    print(f"gemma-ref: loaded {model.source} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return model


def cmd_generate(args) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    sampling = _sampling(args)
    model = _load(args)
    if args.chat:
        pieces = model.stream_chat([{"role": "user", "content": prompt}], stop=args.stop, **sampling)
    else:
        sys.stdout.write(prompt)
        pieces = model.stream(prompt, stop=args.stop, **sampling)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_chat(args) -> int:
    sampling = _sampling(args)
    model = _load(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        if interactive:
            print("gemma> ", end="", flush=True)
        reply = ""
        for piece in model.stream_chat(messages, stop=args.stop, **sampling):
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": reply})


def cmd_info(args) -> int:
    model = _load(args)
    c = model.config
    info = {"source": model.source, "files": str(_where(model)), "parameters": c.num_parameters,
            "tokenizer_vocab": model.tokenizer.vocab_size if model.tokenizer else None,
            "instruction_tuned": model.instruction_tuned, "config": c.to_dict(), "special": c.summary()}
    if model.checkpoint is not None and str(model.checkpoint) != info["files"]:
        info["checkpoint"] = str(model.checkpoint)  # e.g. a GGUF's float32 conversion
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model       {model.source}")
    print(f"files       {info['files']}")
    if "checkpoint" in info:
        print(f"converted   {info['checkpoint']}")
    print(f"parameters  {c.num_parameters:,} ({c.num_parameters / 1e9:.2f} B)")
    print(f"tokenizer   {info['tokenizer_vocab'] or 'none'} tokens")
    for line in c.summary():  # what is special (Gemma 3n, 4: shared K/V, PLE, AltUp, experts, ...)
        print(line)
    for key, value in c.to_dict().items():
        print(f"  {key:<26}{value}")
    return 0


def _where(model):
    from . import hub
    from pathlib import Path

    try:
        return hub.resolve(model.source) if not Path(model.source).exists() else Path(model.source).resolve()
    except GemmaRefError:
        return model.source


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except GemmaRefError as e:
        print(f"gemma-ref: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
