"""`gemma-ref generate`, `chat` and `info`: running a model, and describing one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..errors import GemmaRefError
from ..tokenizer import check_text
from .common import (add_model, add_sampling, check_model_args, human_bytes, human_count, load, read_stdin,
                     read_text, sampling)


def add_commands(sub, examples: str):
    p = sub.add_parser("generate", help="continue a prompt, streaming to stdout",
                       epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="?", default=None,
                   help='the prompt text, or "-" to read it from stdin (or give --file)')
    p.add_argument("--file", "-f", metavar="FILE", help="read the prompt from a UTF-8 file")
    add_model(p)
    add_sampling(p)
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt in the chat template (for -it models)")
    p.add_argument("--system", default=None,
                   help="with --chat: system instructions (placed as the chat template says: "
                        "Gemma 3 folds them into the first turn, Gemma 1/2 templates refuse one)")
    _add_template_kwargs(p)
    _add_images(p)
    p.add_argument("--assistant", default=None, metavar="DIR_OR_ALIAS",
                   help="a Gemma 4 assistant (MTP drafter, e.g. 4-e2b-it-assistant) for the Gemma 4 "
                        "--model: speculative decoding, the same greedy text in fewer target passes")
    p.add_argument("--draft-tokens", type=int, default=None, metavar="K",
                   help="with --assistant: tokens drafted per round (default: the assistant's "
                        "num_assistant_tokens)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat (Ctrl-D or /exit to quit)")
    add_model(p)
    add_sampling(p)
    p.add_argument("--system", default=None, help="system instructions (placed as the chat "
                                                   "template says; Gemma 1/2 templates refuse one)")
    p.add_argument("--verbose", "-v", action="store_true", help="speed after each reply, on stderr")
    _add_template_kwargs(p)
    _add_images(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("info", help="print the config, parameter count and files (no weights read)",
                       description="Print a model's config, parameter count and files. Reads "
                                   "config.json and the file list only (a Hub model's weights are "
                                   "not downloaded), unless --load.")
    add_model(p)
    p.add_argument("--load", action="store_true",
                   help="also load (download) and check every weight")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)


def _add_template_kwargs(p):
    p.add_argument("--chat-template-kwargs", default=None, metavar="JSON",
                   help='more variables for the chat template, a JSON object, e.g. '
                        '\'{"enable_thinking": true}\' (Gemma 4)')


def _template_kwargs(args) -> dict | None:
    """--chat-template-kwargs, checked before the load."""
    if args.chat_template_kwargs is None:
        return None
    try:
        kw = json.loads(args.chat_template_kwargs)
    except json.JSONDecodeError as e:
        raise GemmaRefError(f"--chat-template-kwargs: not JSON ({e})") from None
    if not isinstance(kw, dict):
        raise GemmaRefError("--chat-template-kwargs: expected a JSON object, e.g. '{\"enable_thinking\": true}'")
    return kw


def _add_images(p):
    p.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="an image for the prompt (repeatable; image-text models such as 3-4b-it). "
                        "Each <start_of_image> (or Gemma 4's <|image|>) in the prompt takes the "
                        "next image; with no marker, the images go before the text")


def _images(args) -> list[str]:
    """The --image files, checked before the (slow) load."""
    for f in args.image:
        if not Path(f).exists():
            raise GemmaRefError(f"{f}: no such image file")
        if not Path(f).is_file():
            raise GemmaRefError(f"{f}: not a file")
    return list(args.image)


def _with_images(text: str, images: list[str]):
    """A user message's content: the text alone, or parts with the images where the text
    has image markers (<start_of_image>, or Gemma 4's <|image|>; in order), else before
    the text."""
    import re

    from ..vision import IMAGE_MARKER
    from ..vision_gemma4 import IMAGE_MARKER as GEMMA4_MARKER

    if not images:
        return text
    pieces = re.split(f"{re.escape(IMAGE_MARKER)}|{re.escape(GEMMA4_MARKER)}", text)
    if len(pieces) == 1:
        return [{"type": "image", "image": f} for f in images] + [{"type": "text", "text": text}]
    if len(pieces) - 1 != len(images):
        marker = IMAGE_MARKER if IMAGE_MARKER in text else GEMMA4_MARKER
        raise GemmaRefError(f"the prompt has {len(pieces) - 1} {marker} marker(s) for "
                            f"{len(images)} image(s); give one image per marker")
    parts = [{"type": "text", "text": pieces[0]}]
    for image, piece in zip(images, pieces[1:]):
        parts += [{"type": "image", "image": image}, {"type": "text", "text": piece}]
    return [p for p in parts if p.get("text") != ""]  # no empty text parts


def cmd_generate(args) -> int:
    if (args.prompt is None) == (args.file is None):
        raise GemmaRefError("generate: give the prompt as an argument, \"-\" for stdin, or "
                            "--file FILE (one of them)")
    if args.system is not None and not args.chat:
        raise GemmaRefError("generate: --system goes with --chat")
    if args.chat_template_kwargs is not None and not args.chat:
        raise GemmaRefError("generate: --chat-template-kwargs goes with --chat")
    template_kwargs = _template_kwargs(args)
    kw = sampling(args)
    check_model_args(args)
    if args.file is not None:
        prompt = read_text(args.file, "prompt file")
    elif args.prompt == "-":
        prompt = read_stdin()
    else:
        prompt = check_text(args.prompt, "the prompt")
    if args.system is not None:
        check_text(args.system, "--system")
    images = _images(args)
    if args.draft_tokens is not None and (args.assistant is None or args.draft_tokens < 1):
        raise GemmaRefError("generate: --draft-tokens goes with --assistant and must be >= 1")
    model = load(args)
    if args.assistant is not None:  # speculative decoding (assistant.py)
        from ..api import Model

        kw.update(assistant=Model.from_pretrained(args.assistant, dtype=args.dtype, max_memory=args.max_memory),
                  draft_tokens=args.draft_tokens)
    stats = {}
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        content = _with_images(prompt, images)
        pieces = model.stream_chat(messages + [{"role": "user", "content": content}],
                                   chat_template_kwargs=template_kwargs, stop=args.stop, stats=stats, **kw)
    else:  # stream() reads the images now: a bad one is an error before any output
        pieces = model.stream(prompt, images=images, stop=args.stop, stats=stats, **kw)
        sys.stdout.write(prompt)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print(speed(stats), file=sys.stderr)
    return 0


def speed(stats: dict) -> str:
    """One line: prompt and generation speed, as llama.cpp and mlx-lm print them."""
    p, ps = stats.get("prompt_tokens", 0), stats.get("prompt_seconds", 0.0)
    n, steps, gs = stats.get("new_tokens", 0), stats.get("decode_steps", 0), stats.get("generation_seconds", 0.0)
    gen = f"{steps / gs:.1f} tok/s" if steps and gs else "n/a"
    drafts = (f"; drafts accepted {stats['accepted']}/{stats['drafted']}, {n / max(steps + 1, 1):.2f} "
              f"tokens per target pass" if "drafted" in stats else "")  # speculative decoding
    return (f"gemma-ref: prompt {p} tokens, {p / ps if ps else 0:.1f} tok/s; generation {n} "
            f"tokens, {gen} ({ps + gs:.2f} s){drafts}")


def cmd_chat(args) -> int:
    kw = sampling(args)
    if args.system is not None:
        check_text(args.system, "--system")
    template_kwargs = _template_kwargs(args)
    images = _images(args)  # they go with the first message
    model = load(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    stdin = getattr(sys.stdin, "buffer", None)
    n = 0
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        raw = stdin.readline() if stdin is not None else sys.stdin.readline()
        n += 1
        line = (raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw)
        check_text(line, f"stdin line {n}")
        if not line or line.strip() in ("/exit", "/quit"):
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": _with_images(line.rstrip("\n"), images)})
        images = []
        if interactive:
            print("gemma> ", end="", flush=True)
        reply, stats = "", {}
        for piece in model.stream_chat(messages, chat_template_kwargs=template_kwargs, stop=args.stop,
                                       stats=stats, **kw):
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if args.verbose:
            print(speed(stats), file=sys.stderr)
        messages.append({"role": "assistant", "content": reply})


def cmd_info(args) -> int:
    check_model_args(args)
    info = _info_loaded(args) if args.load else _info(args)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    n = info["parameters"]
    print(f"model       {info['source']}")
    print(f"files       {info['files']}")
    if "checkpoint" in info:
        print(f"converted   {info['checkpoint']}")
    for name, size in info["file_sizes"].items():
        print(f"  {human_bytes(size):>9}  {name}")
    print(f"parameters  {n:,} ({human_count(n)})")
    print(f"tokenizer   {info['tokenizer_vocab'] or 'none'} tokens")
    print(f"chat        {'yes (instruction-tuned)' if info['instruction_tuned'] else 'no: a base model'}")
    print(f"template    {info['chat_template']}")
    for line in info["special"]:  # what is special (Gemma 3n, 4: shared K/V, PLE, AltUp, experts, ...)
        print(line)
    width = max(map(len, info["config"])) + 2
    for key, value in info["config"].items():
        print(f"  {key:<{width}}{value}")
    return 0


def _read_json(path) -> dict:
    """A JSON object from a file, {} if it cannot be read (the config's own reader says why)."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _info(args) -> dict:
    """What info prints, from config.json and the file list only."""
    from .. import default_model, families, hub
    from ..config import GemmaConfig
    from ..loader import gguf_as_checkpoint
    from ..tokenizer import Tokenizer

    source = args.model or default_model.ALIAS
    if hub.is_remote(source):
        config_file, sizes = hub.describe(hub.repo_id(source))
        where, checkpoint = f"huggingface.co/{hub.repo_id(source)}", None
        sizes = dict(sizes)
    else:
        path = (default_model.path() if source == default_model.ALIAS
                else hub.resolve(source)).resolve()
        where, checkpoint = str(path), path
        if path.is_file() and path.suffix == ".gguf":
            checkpoint = gguf_as_checkpoint(path)
            sizes = {path.name: path.stat().st_size}
        elif path.is_dir():
            sizes = {f.name: f.stat().st_size for f in sorted(path.iterdir()) if f.is_file()}
        else:
            raise GemmaRefError(f"{path}: expected a checkpoint directory or a .gguf file")
        config_file = checkpoint / "config.json"
    tok = None if checkpoint is None else Tokenizer.from_checkpoint(config_file.parent)  # .model or .json
    info = {"source": source, "files": where, "tokenizer_vocab": tok.vocab_size if tok else None,
            "instruction_tuned": hub.is_instruction_tuned(source), "file_sizes": sizes, "loaded": False}
    family = families.family_of(_read_json(config_file), checkpoint)
    if family is not None:  # another architecture (families.py) describes itself
        info.update(families.load_class(family).describe(config_file))
    else:
        config = GemmaConfig.from_json(config_file)
        info.update(parameters=config.num_parameters, config=config.to_dict(),
                    chat_template=_template_source(checkpoint, config, where),
                    special=config.summary() + _images_summary(config_file, config))
    if checkpoint is not None and str(checkpoint) != where:
        info["checkpoint"] = str(checkpoint)  # e.g. a GGUF's float32 conversion
    return info


def _images_summary(config_file: Path, config) -> list[str]:
    """One line on an image-text checkpoint's vision encoder (its parameters are not in the
    language model's count); none for a text-only one."""
    from ..vision import VisionConfig
    from ..vision_gemma4 import Gemma4VisionConfig

    raw = json.loads(Path(config_file).read_text())
    v = VisionConfig.from_dict(raw, str(config_file)) or Gemma4VisionConfig.from_dict(raw, str(config_file))
    if v is None:
        return []
    n = sum(int(np.prod(shape)) for shape in v.expected_shapes(config.hidden_size).values())
    if isinstance(v, VisionConfig):
        what = (f"Gemma 3 SigLIP, {v.image_size} px, patch {v.patch_size}, {v.mm_tokens_per_image} "
                f"tokens per image")
    else:
        both_ways = {"sliding": "sliding layers", "none": "no layer (causal)"}[v.bidirectional_layers]
        what = (f"Gemma 4 encoder, patch {v.patch_size}, {v.pooling_kernel_size}x{v.pooling_kernel_size} "
                f"pooling, an image's tokens see each other on {both_ways}")
    return [f"images            {what}; {v.num_hidden_layers} layer(s), {n:,} parameters (not counted above)"]


def _template_source(checkpoint, config, where) -> str:
    """Where the chat template comes from (chat_template.load's order), without the weights."""
    from .. import chat_template

    if checkpoint is None:  # a Hub model not downloaded: its files are not here to read
        return "the repository's (read when the model is loaded)"
    gguf = Path(where) if str(where).endswith(".gguf") else None
    return chat_template.load(Path(checkpoint), None, config.model_type, gguf).source


def _info_loaded(args) -> dict:
    model = load(args)
    where = str(model.checkpoint)
    if model.source and Path(model.source).exists():
        where = str(Path(model.source).resolve())
    info = {"source": model.source, "files": where, "parameters": model.config.num_parameters,
            "tokenizer_vocab": model.tokenizer.vocab_size if model.tokenizer else None,
            "instruction_tuned": model.instruction_tuned, "config": model.config.to_dict(),
            "chat_template": model.chat_template.source if model.chat_template else "none",
            "special": model.config.summary() + _images_summary(Path(model.checkpoint) / "config.json",
                                                                 model.config),
            "file_sizes": {f.name: f.stat().st_size for f in sorted(Path(where).iterdir())
                           if f.is_file()} if Path(where).is_dir() else
                          {Path(where).name: Path(where).stat().st_size},
            "loaded": True}
    if str(Path(model.checkpoint).resolve()) != where:  # e.g. a GGUF's float32 conversion
        info["checkpoint"] = str(model.checkpoint)
    return info
