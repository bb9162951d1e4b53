"""`gemma-ref generate`, `chat` and `info`: running a model."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import GemmaRefError
from .common import add_model, add_sampling, load, sampling


def add_commands(sub, examples: str):
    p = sub.add_parser("generate", help="continue a prompt, streaming to stdout",
                       epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help='the prompt text, or "-" to read it from stdin')
    add_model(p)
    add_sampling(p)
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt in the chat template (for -it models)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat (Ctrl-D or /exit to quit)")
    add_model(p)
    add_sampling(p)
    p.add_argument("--system", default=None, help="system instructions (placed as the chat template says; Gemma 1/2 templates refuse one)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("info", help="print the config, parameter count and file locations")
    add_model(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)


def cmd_generate(args) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    kw = sampling(args)
    model = load(args)
    if args.chat:
        pieces = model.stream_chat([{"role": "user", "content": prompt}], stop=args.stop, **kw)
    else:
        sys.stdout.write(prompt)
        pieces = model.stream(prompt, stop=args.stop, **kw)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_chat(args) -> int:
    kw = sampling(args)
    model = load(args)
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
        for piece in model.stream_chat(messages, stop=args.stop, **kw):
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": reply})


def cmd_info(args) -> int:
    model = load(args)
    c = model.config
    info = {"source": model.source, "files": str(_where(model)), "parameters": c.num_parameters,
            "tokenizer_vocab": model.tokenizer.vocab_size if model.tokenizer else None,
            "chat_template": model.chat_template.source,
            "instruction_tuned": model.instruction_tuned, "config": c.to_dict()}
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
    print(f"chat        {info['chat_template']}")
    for key, value in c.to_dict().items():
        print(f"  {key:<26}{value}")
    return 0


def _where(model):
    from .. import hub
    from pathlib import Path

    try:
        return hub.resolve(model.source) if not Path(model.source).exists() else Path(model.source).resolve()
    except GemmaRefError:
        return model.source
