"""`gemma-ref generate`, `chat` and `info`: running a model, and describing one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .. import files
from ..errors import GemmaRefError
from ..tokenizer import check_text
from .common import (KINDS, add_model, add_sampling, check_model_args, human_bytes, human_count, load,
                     read_stdin, read_text, sampling)


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
    p.add_argument("--audio", action="append", default=[], metavar="FILE",
                   help="an audio clip for the prompt (repeatable; Gemma 4 E2B/E4B/12B Unified, 3n): a WAV, or with "
                        "the audio extra FLAC/MP3/OGG at any rate. Each <|audio|> in the prompt "
                        "takes the next clip; with no marker, the clips go before the text")


def _images(args) -> list[str]:
    """The --image files, checked before the (slow) load."""
    for f in args.image:
        files.check_file(f, "image file")  # missing, a directory, a FIFO, unreadable
    return list(args.image)


def _clips(args) -> list[str]:
    """The --audio files, checked before the (slow) load."""
    for f in args.audio:
        if not Path(f).is_file():
            raise GemmaRefError(f"{f}: no such audio file" if not Path(f).exists() else f"{f}: not a file")
    return list(args.audio)


def _with_images(text: str, images: list[str], clips: list[str] = ()):
    """A user message's content: the text alone, or parts with the images and clips where
    the text has their markers (<start_of_image> or Gemma 4's <|image|>; <|audio|>; in
    order), else before the text (images, then clips)."""
    import re

    from ..audio import AUDIO_MARKER
    from ..vision import IMAGE_MARKER
    from ..vision_gemma4 import IMAGE_MARKER as GEMMA4_MARKER

    if not images and not clips:
        return text
    media = {"image": (list(images), (IMAGE_MARKER, GEMMA4_MARKER)), "audio": (list(clips), (AUDIO_MARKER,))}
    parts, pieces = [], re.split(f"({re.escape(IMAGE_MARKER)}|{re.escape(GEMMA4_MARKER)}|"
                                 f"{re.escape(AUDIO_MARKER)})", text)
    for kind, (given, markers) in media.items():
        n = sum(p in markers for p in pieces[1::2])
        if n == 0:  # no marker of this kind: its parts go first
            parts += [{"type": kind, kind: f} for f in given]
        elif n != len(given):
            marker = next(m for m in markers if m in text)
            raise GemmaRefError(f"the prompt has {n} {marker} marker(s) for {len(given)} "
                                f"{'image(s)' if kind == 'image' else 'audio clip(s)'}; give one "
                                f"{'image' if kind == 'image' else 'clip'} per marker")
    parts.append({"type": "text", "text": pieces[0]})
    left = {kind: iter(given) for kind, (given, _) in media.items()}
    for marker, piece in zip(pieces[1::2], pieces[2::2]):
        kind = "audio" if marker == AUDIO_MARKER else "image"
        f = next(left[kind], None)
        parts += ([{"type": kind, kind: f}] if f is not None else [{"type": "text", "text": marker}])
        parts.append({"type": "text", "text": piece})
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
    images, clips = _images(args), _clips(args)
    if args.draft_tokens is not None and (args.assistant is None or args.draft_tokens < 1):
        raise GemmaRefError("generate: --draft-tokens goes with --assistant and must be >= 1")
    model = load(args, "generation")
    if args.assistant is not None:  # speculative decoding (assistant.py)
        from ..api import Model

        kw.update(assistant=Model.from_pretrained(args.assistant, dtype=args.dtype, max_memory=args.max_memory),
                  draft_tokens=args.draft_tokens)
    stats = {}
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        content = _with_images(prompt, images, clips)
        pieces = model.stream_chat(messages + [{"role": "user", "content": content}],
                                   chat_template_kwargs=template_kwargs, stop=args.stop, stats=stats, **kw)
    else:  # stream() reads the images now: a bad one is an error before any output
        if clips:  # only models with an audio path take the argument
            kw["audio"] = clips
        pieces = model.stream(prompt, images=images, stop=args.stop, stats=stats, **kw)
        if getattr(model, "continues_prompt", True):  # an encoder-decoder's output stands alone
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
    images, clips = _images(args), _clips(args)  # they go with the first message
    model = load(args, "generation")
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
        messages.append({"role": "user", "content": _with_images(line.rstrip("\n"), images, clips)})
        images = clips = []
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
    print(f"tokenizer   {info['tokenizer_vocab']} tokens" if info["tokenizer_vocab"] else "tokenizer   none")
    if info["kind"] != "generation":  # an embedding model, a classifier, a drafter (families.py)
        print(f"kind        {KINDS[info['kind']].removeprefix('is ')}")
    else:
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
        raw = json.loads(files.read_bytes(path))
    except (GemmaRefError, ValueError):
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
            "instruction_tuned": hub.is_instruction_tuned(source), "file_sizes": sizes, "loaded": False,
            "kind": "generation"}
    family = families.family_of(_read_json(config_file), checkpoint)
    if family is not None:  # another architecture (families.py) describes itself
        cls = families.load_class(family)
        info.update(cls.describe(config_file), kind=getattr(cls, "kind", "generation"))
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

    from ..audio import AudioConfig

    raw = json.loads(Path(config_file).read_text())
    a = AudioConfig.from_dict(raw, str(config_file))
    sound = [] if a is None or a.samples_per_token else [
        f"audio             {'Gemma 4' if a.model_type == 'gemma4_audio' else 'Gemma 3n'} Conformer, "
        f"{a.num_hidden_layers} layer(s) x {a.hidden_size} wide, chunks of {a.attention_chunk_size}, a token sees "
        f"itself and {a.attention_context_left - (1 if a.context_inclusive else 2)} before, one per "
        f"{40 * a.reduction_factor} ms{f', {a.soft_tokens} per clip' if a.soft_tokens else ''}; "
        f"{sum(int(np.prod(s)) for s in a.expected_shapes().values()):,} parameters (not counted above)"]
    if a is not None and a.samples_per_token:  # Gemma 4 12B Unified: the embedder alone
        sound = [f"audio             Gemma 4 Unified embedder (no encoder), a token per {a.samples_per_token} "
                 f"samples (40 ms at 16 kHz), no cap; "
                 f"{sum(int(np.prod(s)) for s in a.expected_shapes().values()):,} parameters (not counted above)"]
    v = VisionConfig.from_dict(raw, str(config_file)) or Gemma4VisionConfig.from_dict(raw, str(config_file))
    if v is None:
        return sound
    n = sum(int(np.prod(shape)) for shape in v.expected_shapes(config.hidden_size).values())
    if isinstance(v, VisionConfig):
        what = (f"Gemma 3 SigLIP, {v.image_size} px, patch {v.patch_size}, {v.mm_tokens_per_image} "
                f"tokens per image")
    else:
        both_ways = {"sliding": "sliding layers", "none": "no layer (causal)"}[v.bidirectional_layers]
        what = (f"Gemma 4 encoder, patch {v.patch_size}, {v.pooling_kernel_size}x{v.pooling_kernel_size} "
                f"pooling, an image's tokens see each other on {both_ways}")
        if not v.num_hidden_layers:  # Gemma 4 12B Unified (vision_gemma4_unified.py)
            what = (f"Gemma 4 Unified embedder (no encoder), model patch {v.patch_size} px, "
                    f"an image's tokens see each other on {both_ways}")
    layers = f"{v.num_hidden_layers} layer(s), " if v.num_hidden_layers else ""  # 12B Unified: an embedder only
    return [f"images            {what}; {layers}{n:,} parameters (not counted above)"] + sound


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
    config_file = Path(model.checkpoint) / "config.json"
    described = (model.describe(config_file) if hasattr(model, "describe") else  # a family (families.py)
                 {"parameters": model.config.num_parameters, "config": model.config.to_dict(),
                  "chat_template": model.chat_template.source,
                  "special": model.config.summary() + _images_summary(config_file, model.config)})
    info = {"source": model.source, "files": where, **described,
            "tokenizer_vocab": model.tokenizer.vocab_size if model.tokenizer else None,
            "instruction_tuned": getattr(model, "instruction_tuned", False),
            "kind": getattr(model, "kind", "generation"),
            "file_sizes": {f.name: f.stat().st_size for f in sorted(Path(where).iterdir())
                           if f.is_file()} if Path(where).is_dir() else
                          {Path(where).name: Path(where).stat().st_size},
            "loaded": True}
    if str(Path(model.checkpoint).resolve()) != where:  # e.g. a GGUF's float32 conversion
        info["checkpoint"] = str(model.checkpoint)
    return info
