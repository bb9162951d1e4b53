"""Where a model comes from: a local path, a Hugging Face repo id, or an alias.

Repo ids and aliases resolve through `huggingface_hub` (its cache, `HF_TOKEN`,
`HF_HUB_OFFLINE`), downloading only the files the engine reads.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import GemmaRefError

# alias -> Hugging Face repo id. "-it": instruction-tuned (chat) weights.
ALIASES = {
    # Gemma 1
    "2b": "google/gemma-2b", "2b-it": "google/gemma-2b-it",
    "7b": "google/gemma-7b", "7b-it": "google/gemma-7b-it",
    "1.1-2b-it": "google/gemma-1.1-2b-it", "1.1-7b-it": "google/gemma-1.1-7b-it",
    "codegemma-2b": "google/codegemma-2b", "codegemma-7b": "google/codegemma-7b",
    "codegemma-7b-it": "google/codegemma-7b-it",
    # Gemma 2
    "2-2b": "google/gemma-2-2b", "2-2b-it": "google/gemma-2-2b-it",
    "2-9b": "google/gemma-2-9b", "2-9b-it": "google/gemma-2-9b-it",
    "2-27b": "google/gemma-2-27b", "2-27b-it": "google/gemma-2-27b-it",
    # VaultGemma (Gemma 2 without output norms, trained with differential privacy; base only)
    "vaultgemma-1b": "google/vaultgemma-1b",
    # Gemma 3 (text; 4B and up are multimodal checkpoints, of which we run the text part)
    "3-270m": "google/gemma-3-270m", "3-270m-it": "google/gemma-3-270m-it",
    "3-1b": "google/gemma-3-1b-pt", "3-1b-it": "google/gemma-3-1b-it",
    "3-4b": "google/gemma-3-4b-pt", "3-4b-it": "google/gemma-3-4b-it",
    "3-12b": "google/gemma-3-12b-pt", "3-12b-it": "google/gemma-3-12b-it",
    "3-27b": "google/gemma-3-27b-pt", "3-27b-it": "google/gemma-3-27b-it",
    # ShieldGemma 2 (a Gemma 3 4B image-text model read as an image safety classifier)
    "shieldgemma-2-4b-it": "google/shieldgemma-2-4b-it",
    # Gemma 3n (text; multimodal checkpoints, of which we run the text part)
    "3n-e2b": "google/gemma-3n-E2B", "3n-e2b-it": "google/gemma-3n-E2B-it",
    "3n-e4b": "google/gemma-3n-E4B", "3n-e4b-it": "google/gemma-3n-E4B-it",
    # Gemma 4 (text; all are multimodal checkpoints, of which we run the text part)
    "4-e2b": "google/gemma-4-E2B", "4-e2b-it": "google/gemma-4-E2B-it",
    "4-e4b": "google/gemma-4-E4B", "4-e4b-it": "google/gemma-4-E4B-it",
    "4-26b-a4b": "google/gemma-4-26B-A4B", "4-26b-a4b-it": "google/gemma-4-26B-A4B-it",
    "4-31b": "google/gemma-4-31B", "4-31b-it": "google/gemma-4-31B-it",
    # PaliGemma 1 and 2 (paligemma.py): image + task prompt in, text out; the alias is the repo's
    # name ("pt": pretrained, "mix": fine-tuned on a task mixture; 224/448/896: image size)
    **{name: f"google/{name}" for name in (
        "paligemma-3b-pt-224", "paligemma-3b-pt-448", "paligemma-3b-pt-896",
        "paligemma-3b-mix-224", "paligemma-3b-mix-448",
        "paligemma2-3b-pt-224", "paligemma2-3b-pt-448", "paligemma2-3b-pt-896",
        "paligemma2-10b-pt-224", "paligemma2-28b-pt-896",
        "paligemma2-3b-mix-224", "paligemma2-3b-mix-448", "paligemma2-28b-mix-448")},
    # Gemma 4 12B "Unified" (no vision or audio encoder: images through a small embedder;
    # transformers' docs name google/gemma-4-12B-it)
    "4-12b-unified": "google/gemma-4-12B", "4-12b-unified-it": "google/gemma-4-12B-it",
    # T5Gemma (encoder-decoder from Gemma 2; t5gemma.py): encoder-decoder sizes x pretraining
    # objective (PrefixLM, UL2), base and -it; the alias is the repo's name
    **{f"t5gemma-{size}-{objective}{it}": f"google/t5gemma-{size}-{objective}{it}"
       for size in ("2b-2b", "9b-2b", "9b-9b", "s-s", "b-b", "l-l", "ml-ml", "xl-xl")
       for objective in ("prefixlm", "ul2") for it in ("", "-it")},
    # T5Gemma 2 (encoder-decoder from Gemma 3, images in the encoder; pretrained only)
    "t5gemma-2-270m-270m": "google/t5gemma-2-270m-270m", "t5gemma-2-1b-1b": "google/t5gemma-2-1b-1b",
    "t5gemma-2-4b-4b": "google/t5gemma-2-4b-4b",
    # EmbeddingGemma (sentence embeddings: `gemma-ref embed`; offline: `gemma-ref fetch`)
    "embeddinggemma-300m": "google/embeddinggemma-300m",
    # Gemma 4 assistants: MTP drafters for the -it models (generate --assistant; not models alone)
    "4-e2b-it-assistant": "google/gemma-4-E2B-it-assistant",
    "4-e4b-it-assistant": "google/gemma-4-E4B-it-assistant",
    "4-26b-a4b-it-assistant": "google/gemma-4-26B-A4B-it-assistant",
    "4-31b-it-assistant": "google/gemma-4-31B-it-assistant",
    # RecurrentGemma (Griffin: recurrent blocks + local attention; recurrent_gemma.py)
    "recurrentgemma-2b": "google/recurrentgemma-2b", "recurrentgemma-2b-it": "google/recurrentgemma-2b-it",
    "recurrentgemma-9b": "google/recurrentgemma-9b", "recurrentgemma-9b-it": "google/recurrentgemma-9b-it",
}

# What the aliases that do not generate text alone are (the model classes' `kind`); the
# others are "generation". `gemma-ref models` shows it.
ALIAS_KINDS = {"embeddinggemma-300m": "embedding",  # `gemma-ref embed`
               "shieldgemma-2-4b-it": "classifier",  # `gemma-ref classify`
               **{a: "drafter" for a in ALIASES if a.endswith("-assistant")}}  # generate --assistant

# Aliases of embedding models (`gemma-ref embed`; generate refuses them)
EMBEDDING_ALIASES = {a for a, kind in ALIAS_KINDS.items() if kind == "embedding"}

# The files the engine reads from a Hub repo (never the .gguf or PyTorch copies).
FILES = ["config.json", "generation_config.json", "tokenizer.model", "*.safetensors",
         "model.safetensors.index.json", "preprocessor_config.json", "processor_config.json",
         "tokenizer_config.json", "chat_template.jinja", "chat_template.json", "additional_chat_templates/*.jinja",
         # sentence-transformers checkpoints (EmbeddingGemma): the modules after the encoder
         "modules.json", "config_sentence_transformers.json", "sentence_bert_config.json",
         "*_Pooling/config.json", "*_Dense/config.json"]

_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def is_instruction_tuned(source: str | None) -> bool:
    """Whether a model name/path names instruction-tuned weights ("-it")."""
    return bool(source) and bool(re.search(r"-it\b", str(source)))


# Instruction-tuned models to suggest for chat, by generation (config model_type).
_CHAT_SUGGESTIONS = {"gemma": "2b-it or 7b-it", "gemma2": "2-2b-it or 2-9b-it",
                     "gemma3_text": "3-1b-it or 3-270m-it", "gemma3n_text": "3n-e2b-it or 3n-e4b-it",
                     "gemma4_text": "4-e2b-it or 4-e4b-it", "vaultgemma": "2-2b-it or 2-9b-it",
                     "gemma4_unified_text": "4-12b-unified-it",
                     "recurrent_gemma": "recurrentgemma-2b-it or recurrentgemma-9b-it"}


def chat_suggestion(source: str | None, model_type: str) -> str:
    """An instruction-tuned model to name to someone chatting with the base model `source`:
    its own -it sibling when `source` is an alias or repo id that has one, else -it models
    of the same generation."""
    name = str(source or "").lower()
    if name in ALIASES and f"{name}-it" in ALIASES:
        return f"{name}-it"
    repo = ALIASES.get(name, str(source or ""))
    for alias, it_repo in ALIASES.items():
        base = re.sub(r"-it$", "", it_repo)  # google/gemma-2-9b(-it), google/gemma-3-1b(-pt)
        if alias.endswith("-it") and repo in (base, base + "-pt"):
            return alias
    return _CHAT_SUGGESTIONS.get(model_type, _CHAT_SUGGESTIONS["gemma3_text"])


def resolve(source: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local directory or file for `source` (path, repo id or alias)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    name = str(source)
    if name.lower() in ALIASES:
        return download(ALIASES[name.lower()], cache_dir)
    if _REPO_ID.match(name) and not name.endswith(".gguf") and not name.startswith((".", "~")):
        return download(name, cache_dir)
    if "/" in name or "\\" in name or name.endswith((".gguf", ".safetensors")):
        raise GemmaRefError(f"{name}: no such file or directory")
    raise GemmaRefError(
        f"unknown model {name!r}: give a local directory, a .gguf file, a Hugging Face "
        f"repo id (owner/name), or one of the aliases: {', '.join(ALIASES)}, 3-270m-gguf")


def is_remote(source) -> bool:
    """Whether `source` names a Hub repo (an alias or owner/name) rather than a local path."""
    name = str(source)
    return not Path(name).expanduser().exists() and (
        name.lower() in ALIASES or (bool(_REPO_ID.match(name)) and not name.endswith(".gguf")
                                    and not name.startswith((".", "~"))))


def repo_id(source) -> str:
    name = str(source)
    return ALIASES.get(name.lower(), name)


def download(repo_id: str, cache_dir: str | Path | None = None) -> Path:
    """Fetch (or find in the cache) the files the engine needs from a Hub repo."""
    import huggingface_hub
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE
    with _hub_errors(repo_id):
        path = Path(huggingface_hub.snapshot_download(
            repo_id, allow_patterns=FILES, cache_dir=cache_dir, local_files_only=offline))
        if not (path / "tokenizer.model").exists():  # Gemma 4 repos ship only tokenizer.json
            path = Path(huggingface_hub.snapshot_download(
                repo_id, allow_patterns=FILES + ["tokenizer.json"], cache_dir=cache_dir,
                local_files_only=offline))
        return path


def describe(repo_id: str, cache_dir: str | Path | None = None) -> tuple[Path, list[tuple[str, int]]]:
    """config.json of a Hub repo, and the files the engine would read with their sizes,
    fetching nothing else: online from the Hub's file list, offline from the local cache
    (then only the files already there)."""
    import fnmatch

    import huggingface_hub
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE
    with _hub_errors(repo_id):
        config = Path(huggingface_hub.hf_hub_download(repo_id, "config.json", cache_dir=cache_dir,
                                                      local_files_only=offline))
    files = None
    if not offline:
        try:
            info = huggingface_hub.HfApi().model_info(repo_id, files_metadata=True)
            files = [(f.rfilename, f.size or 0) for f in info.siblings]
        except Exception:  # noqa: BLE001 - a best-effort listing: fall back to the cache's
            files = None
    if files is None:  # offline, or the Hub unreachable after all: what the cache holds
        files = [(f.name, f.stat().st_size) for f in sorted(config.parent.iterdir())]
    wanted = [(n, b) for n, b in files if any(fnmatch.fnmatch(n, p) for p in FILES)]
    return config, wanted


class _hub_errors:
    """Hugging Face Hub failures as one-line GemmaRefErrors that say what to do."""

    def __init__(self, repo_id: str):
        self.repo_id = repo_id

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        from huggingface_hub import constants, errors

        repo_id = self.repo_id
        if e is None or not isinstance(e, Exception):
            return False
        if isinstance(e, errors.GatedRepoError):
            raise GemmaRefError(
                f"{repo_id} is gated: accept its license on huggingface.co, then set HF_TOKEN "
                f"(or run `hf auth login`)") from None
        if isinstance(e, errors.RepositoryNotFoundError):
            raise GemmaRefError(f"{repo_id}: no such repository on the Hugging Face Hub "
                                f"(or it is private: set HF_TOKEN)") from None
        if isinstance(e, errors.LocalEntryNotFoundError):
            if constants.HF_HUB_OFFLINE:
                raise GemmaRefError(
                    f"{repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                    f"download it once online, or pass a local directory") from None
            raise GemmaRefError(
                f"{repo_id}: could not reach the Hugging Face Hub and it is not cached: check the "
                f"network, or pass a local directory") from None
        if isinstance(e, (errors.HfHubHTTPError, OSError)):  # network down, disk full, permissions
            raise GemmaRefError(f"{repo_id}: download failed ({e})") from None
        return False
