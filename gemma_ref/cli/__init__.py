"""The `gemma-ref` command: a thin shell over the library.

Each group of commands lives in its own module (generate.py: generate, chat, info;
tools.py: dump, compare, perplexity; manage.py: cache, models; classify.py: classify), with
what they share in common.py. A GemmaRefError (a user mistake) becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import GemmaRefError
from . import classify, embed, evaluate, generate, manage, tools
from .common import PROG, Parser, error

EXAMPLES = """\
examples:
  gemma-ref generate "The capital of France is"            # default model, offline
  gemma-ref generate --model 2b --max-new-tokens 50 "Once upon a time"
  echo "Write a haiku about NumPy" | gemma-ref generate --model 2b-it --chat -
  gemma-ref generate --temperature 0.8 --top-p 0.95 --seed 1 "Dear diary,"
  gemma-ref chat --model 3-1b-it
  gemma-ref generate --model 3-4b-it --chat --image photo.jpg "Describe this image."
  gemma-ref info --model ./my-gemma-checkpoint
  gemma-ref classify --model shieldgemma-2-4b-it --image photo.jpg --policy dangerous
  gemma-ref embed --model embeddinggemma-300m --prompt-name query "Which planet is red?"
"""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(
        prog=PROG, description="gemma-ref: a pure-NumPy reference engine for Gemma models.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gemma-ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    generate.add_commands(sub, EXAMPLES)
    tools.add_commands(sub)  # dump, compare, perplexity: the reference tooling
    manage.add_commands(sub)  # cache, models
    evaluate.add_commands(sub)  # eval: lm-evaluation-harness
    classify.add_commands(sub)  # classify: ShieldGemma 2
    embed.add_commands(sub)  # embed, similarity, fetch: embedding models (EmbeddingGemma)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # huggingface_hub logs each retry as a warning; the CLI reports a Hub failure itself,
    # in its one error line. (Read when huggingface_hub is first imported; the user's
    # own HF_HUB_VERBOSITY wins.)
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    try:
        return args.func(args)
    except GemmaRefError as e:
        error(str(e))
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
