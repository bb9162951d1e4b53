"""EmbeddingGemma: Gemma 3 read as a bidirectional encoder, then sentence-transformers' modules.

    text -> "<bos>" + prompt + text + "<eos>"  ids [T]     tokenizer_config.json: add_eos_token
         -> forward(..., lm_head=False)        [T, D]      model.py; every token sees every other
                                                           (use_bidirectional_attention; on a sliding
                                                           layer only sliding_window // 2 either side)
         -> mean over the tokens               [D]         1_Pooling (mean, prompt included)
         -> Dense 768 -> 3072 -> Dense -> 768  [D']        2_Dense, 3_Dense (no bias, identity)
         -> v / ||v||                          [D']        4_Normalize
         -> v[:dim] / ||v[:dim]||              [dim]       Matryoshka truncation (embed's dim)

The checkpoint is a sentence-transformers repository: config.json and model.safetensors
of a `Gemma3TextModel` (keys without the `model.` prefix), and `modules.json` listing the
modules that follow, each in its folder with its config.json (and weights). The prompts
for each task ("query", "document", ...) are in config_sentence_transformers.json.
Registered in families.py: a gemma3_text config with use_bidirectional_attention, or any
checkpoint with a modules.json, is loaded by EmbeddingModel rather than api.Model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import files
from .config import GemmaConfig
from .errors import GemmaRefError
from .families import Refusals
from .loader import check_and_widen, checkpoint_files, read_safetensors
from .model import forward
from .parallel import dense
from .tokenizer import Tokenizer
from .weights import Weights

# sentence-transformers modules this engine runs, by class name (modules.json spells them
# sentence_transformers.models.Dense, or since version 6 sentence_transformers.base.modules.dense.Dense)
TRANSFORMER, POOLING, DENSE, NORMALIZE = "Transformer", "Pooling", "Dense", "Normalize"
# Dense activations: the name its config.json gives -> the function
ACTIVATIONS = {"torch.nn.modules.linear.Identity": lambda x: x, "torch.nn.modules.activation.Tanh": np.tanh}
TOKENS_PER_BATCH = 4096  # texts are embedded in batches of about this many tokens (padding included)


# --- the sentence-transformers modules ------------------------------------------------


@dataclass(frozen=True)
class DenseLayer:
    """y = activation(x @ weight.T + bias)   [n, in] -> [n, out]"""

    weight: np.ndarray  # [out, in]
    bias: np.ndarray | None  # [out]
    activation: str  # a key of ACTIVATIONS

    def __call__(self, x):
        y = dense(x, self.weight)  # [n, out]
        return ACTIVATIONS[self.activation](y if self.bias is None else y + self.bias)


@dataclass(frozen=True)
class SentenceHead:
    """What follows the encoder: mean pooling, dense layers, maybe a normalisation."""

    dense: tuple[DenseLayer, ...]
    normalize: bool  # a Normalize module ends the pipeline
    max_seq_length: int  # longer texts are cut to this many tokens (<bos> and <eos> kept)
    prompts: dict  # task name -> the text put before the input ("query": "task: search result | query: ")
    default_prompt_name: str | None  # used when embed is given neither prompt nor prompt_name

    @property
    def dim(self) -> int | None:
        """Width of the embeddings (None: that of the encoder, when there is no dense layer)."""
        return self.dense[-1].weight.shape[0] if self.dense else None

    def __call__(self, hidden, mask):
        """Sentence embeddings of a batch.          [B, T, D], [B, T] bool -> [B, D']"""
        counts = mask.sum(axis=1, keepdims=True).astype(hidden.dtype)  # [B, 1]
        x = np.where(mask[..., None], hidden, 0).sum(axis=1) / np.maximum(counts, 1e-9)  # [B, D]
        for layer in self.dense:
            x = layer(x)
        return normalized(x) if self.normalize else x

    @classmethod
    def from_checkpoint(cls, path: Path, hidden_size: int, max_positions: int, dtype) -> "SentenceHead":
        """Read modules.json and the modules' folders; anything this engine cannot run is
        a GemmaRefError naming the file."""
        modules_file = path / "modules.json"
        if not modules_file.exists():
            raise GemmaRefError(f"{path}: no modules.json: not a sentence-transformers checkpoint "
                                f"(an embedding model needs its pooling and dense modules)")
        modules = _json(modules_file)
        if not isinstance(modules, list) or not all(isinstance(m, dict) and isinstance(m.get("type"), str)
                                                    and isinstance(m.get("path"), str) for m in modules):
            raise GemmaRefError(f"{modules_file}: expected a list of {{\"type\": ..., \"path\": ...}} objects")
        kinds = [m["type"].rsplit(".", 1)[-1] if m["type"].startswith("sentence_transformers.") else m["type"]
                 for m in modules]
        if not kinds or kinds[0] != TRANSFORMER or kinds[1:2] != [POOLING]:
            raise GemmaRefError(f"{modules_file}: gemma-ref runs a Transformer then a Pooling module "
                                f"(then Dense and Normalize modules), got {kinds}")
        dense_layers, normalize, width = [], False, hidden_size
        _pooling(path / modules[1]["path"], hidden_size)
        for m, kind in zip(modules[2:], kinds[2:]):
            if normalize:
                raise GemmaRefError(f"{modules_file}: a module after Normalize is not supported")
            if kind == DENSE:
                layer = _dense(path / m["path"], width, dtype)
                dense_layers.append(layer)
                width = layer.weight.shape[0]
            elif kind == NORMALIZE:
                normalize = True
            else:
                raise GemmaRefError(f"{modules_file}: module {m['type']} is not supported "
                                    f"(gemma-ref runs Pooling, Dense and Normalize)")
        st = _object(path / "config_sentence_transformers.json", {})
        prompts = st.get("prompts", {}) or {}
        if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in prompts.items()):
            raise GemmaRefError(f"{path / 'config_sentence_transformers.json'}: prompts must map names to texts")
        default = st.get("default_prompt_name")
        if default is not None and default not in prompts:
            raise GemmaRefError(f"{path / 'config_sentence_transformers.json'}: default_prompt_name "
                                f"{default!r} is not one of the prompts")
        bert = _object(path / "sentence_bert_config.json", {})
        max_len = bert.get("max_seq_length") or max_positions
        if not isinstance(max_len, int) or max_len < 2:
            raise GemmaRefError(f"{path / 'sentence_bert_config.json'}: max_seq_length must be an integer >= 2")
        return cls(tuple(dense_layers), normalize, min(max_len, max_positions), prompts, default)


def normalized(x):
    """x / ||x|| per row (sentence-transformers' Normalize: F.normalize, eps 1e-12). [n, d] -> [n, d]"""
    return x / np.maximum(np.sqrt((x * x).sum(axis=-1, keepdims=True)), 1e-12)


_REQUIRED = object()


def _json(path: Path, default=_REQUIRED):
    """A JSON file's value; `default` if the file is missing (else that is an error)."""
    if not path.exists():
        if default is _REQUIRED:
            raise GemmaRefError(f"{path}: not found (a sentence-transformers module file)")
        return default
    try:
        return json.loads(files.read_text(path, "JSON file"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GemmaRefError(f"{path}: not valid JSON ({e})") from None


def _object(path: Path, default=_REQUIRED) -> dict:
    """A JSON file that must hold an object {key: value} (see _json for `default`)."""
    c = _json(path, default)
    if not isinstance(c, dict):
        raise GemmaRefError(f"{path}: expected a JSON object {{key: value}}")
    return c


def _config(folder: Path) -> dict:
    """A module's config.json."""
    return _object(folder / "config.json")


def _pooling(folder: Path, hidden_size: int) -> None:
    """Check 1_Pooling/config.json: mean pooling over every token (the prompt's too)."""
    c = _config(folder)
    source = folder / "config.json"
    modes = c.get("pooling_mode")  # sentence-transformers >= 5 spelling
    if modes is None:
        modes = [k for k, v in c.items() if k.startswith("pooling_mode_") and v is True]
        modes = ["mean" if m == "pooling_mode_mean_tokens" else m for m in modes]
    modes = [modes] if isinstance(modes, str) else list(modes)
    if modes != ["mean"]:
        raise GemmaRefError(f"{source}: pooling {modes} is not supported (gemma-ref pools by the mean)")
    if c.get("include_prompt", True) is not True:
        raise GemmaRefError(f"{source}: include_prompt false is not supported (the prompt's tokens "
                            f"are pooled too)")
    width = c.get("word_embedding_dimension", c.get("embedding_dimension", hidden_size))
    if width != hidden_size:
        raise GemmaRefError(f"{source}: word_embedding_dimension {width} is not the model's "
                            f"hidden_size {hidden_size}")


def _dense(folder: Path, width: int, dtype) -> DenseLayer:
    """One Dense module: config.json (in/out features, bias, activation) and model.safetensors."""
    source = folder / "config.json"
    c = _config(folder)
    n_in, n_out, bias = c.get("in_features"), c.get("out_features"), c.get("bias", True)
    activation = c.get("activation_function", "torch.nn.modules.activation.Tanh")
    if n_in != width or not isinstance(n_out, int) or n_out < 1:
        raise GemmaRefError(f"{source}: in_features {n_in} must be the width before it ({width}) and "
                            f"out_features a positive integer, got {n_out!r}")
    if activation not in ACTIVATIONS:
        raise GemmaRefError(f"{source}: activation {activation} is not supported "
                            f"({', '.join(ACTIVATIONS)})")
    weights_file = folder / "model.safetensors"
    if not weights_file.exists():
        raise GemmaRefError(f"{weights_file}: not found (the Dense module's weights; gemma-ref reads "
                            f"safetensors, not pytorch_model.bin)")
    found = {n: t.read().astype(dtype) for n, t in read_safetensors(weights_file).items()}
    expected = {"linear.weight": (n_out, n_in), **({"linear.bias": (n_out,)} if bias else {})}
    for name, shape in expected.items():
        if name not in found:
            raise GemmaRefError(f"{weights_file}: missing tensor {name}")
        if found[name].shape != shape:
            raise GemmaRefError(f"{weights_file}: {name} has shape {found[name].shape}, expected {shape}")
    if set(found) - set(expected):
        raise GemmaRefError(f"{weights_file}: unexpected tensor {sorted(set(found) - set(expected))[0]}")
    return DenseLayer(found["linear.weight"], found.get("linear.bias"), activation)


# --- the model ---------------------------------------------------------------------------


class EmbeddingModel(Refusals):
    """EmbeddingGemma: text -> a unit vector (see the module docstring). `embed` is its use."""

    kind = "embedding"

    def __init__(self, config: GemmaConfig, weights: dict, tokenizer: Tokenizer, head: SentenceHead, *,
                 add_bos: bool = True, add_eos: bool = True, source: str = "", dtype="float32"):
        if not config.use_bidirectional_attention:
            raise GemmaRefError(f"{source}: an embedding model's config.json must set "
                                f"use_bidirectional_attention (EmbeddingGemma does)")
        self.config, self.tokenizer, self.head, self.source = config, tokenizer, head, source
        self.add_bos, self.add_eos = add_bos, add_eos
        self.dtype = np.dtype(dtype)
        self.weights = Weights(weights, self.dtype)
        self.checkpoint = None  # the directory from_checkpoint read
        self.dim = head.dim or config.hidden_size

    @classmethod
    def from_checkpoint(cls, path: Path, *, source: str, dtype="float32", max_memory=None,
                        progress: bool = True) -> "EmbeddingModel":
        config = GemmaConfig.from_json(path / "config.json")
        head = SentenceHead.from_checkpoint(path, config.hidden_size, config.max_position_embeddings, dtype)
        tokenizer = Tokenizer.from_checkpoint(path)
        if tokenizer is None:
            raise GemmaRefError(f"{path}: no tokenizer.model or tokenizer.json")
        found = {}
        for file in checkpoint_files(path):
            for name, tensor in read_safetensors(file).items():
                # Gemma3TextModel's keys have no "model." prefix (there is no LM head around it)
                found[name if name.startswith("model.") else "model." + name] = tensor
        weights = check_and_widen(found, config, str(path), max_memory, progress)
        tok_config = _object(path / "tokenizer_config.json", {})
        model = cls(config, weights, tokenizer, head, add_bos=tok_config.get("add_bos_token", True) is not False,
                    add_eos=tok_config.get("add_eos_token", False) is True, source=source, dtype=dtype)
        model.checkpoint = path
        return model

    @staticmethod
    def describe(config_file) -> dict:
        """What `gemma-ref info` prints, from the checkpoint's small files (no weights)."""
        config_file = Path(config_file)
        config = GemmaConfig.from_json(config_file)
        folder = config_file.parent
        dense_params, layers = 0, []
        special = []
        if (folder / "modules.json").exists():
            try:  # a light read for the listing; loading checks every file and says what is wrong
                for m in _json(folder / "modules.json")[2:]:
                    if m["type"].endswith("Dense"):
                        c = _config(folder / m["path"])
                        dense_params += c["in_features"] * c["out_features"] + (c["out_features"] if c.get("bias") else 0)
                        layers.append(f"Dense {c['in_features']}->{c['out_features']}")
                    elif m["type"].endswith("Normalize"):
                        layers.append("L2 normalise")
            except (GemmaRefError, KeyError, TypeError, AttributeError):
                layers.append("(modules.json unreadable: loading says why)")
            special.append("embedding model    sentence embeddings (`gemma-ref embed`): "
                           + " -> ".join(["mean pooling"] + layers))
            try:
                prompts = dict(_object(folder / "config_sentence_transformers.json", {}).get("prompts") or {})
            except (GemmaRefError, TypeError, ValueError):
                prompts = {}
            if prompts:
                shown = ", ".join(f"{k}: {v!r}" for k, v in list(prompts.items())[:2])
                more = f" (+{len(prompts) - 2} more)" if len(prompts) > 2 else ""
                special.append(f"prompts            {shown}{more}")
        else:
            special.append("embedding model    sentence embeddings (`gemma-ref embed`); its sentence-"
                           "transformers modules are read when it is loaded")
        W = config.sliding_window
        special.append(f"attention          bidirectional: full layers see every token, sliding layers "
                       f"the {W // 2} on either side (sliding_window {W})")
        special.append("generation         none: no language-model head (generate and chat refuse it)")
        keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "intermediate_size", "sliding_window", "max_position_embeddings", "vocab_size",
                "use_bidirectional_attention")
        return {"parameters": config.num_parameters + dense_params,
                "config": {k: getattr(config, k) for k in keys},
                "chat_template": "none (an embedding model)", "special": special, "kind": "embedding"}

    # --- embeddings ---------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids as sentence-transformers makes them: <bos> text <eos>, cut to max_seq_length."""
        ids = self.tokenizer.encode(text, add_bos=self.add_bos)
        tail = [self.tokenizer.eos_id] if self.add_eos else []
        return ids[:self.head.max_seq_length - len(tail)] + tail

    def hidden_states(self, ids, *, trace: dict | None = None) -> np.ndarray:
        """The encoder's output after its final norm: ids [T] -> [T, D], or [B, T] -> [B, T, D]
        (no padding: see embed for texts of different lengths)."""
        ids = np.asarray(ids)
        if ids.ndim not in (1, 2) or not np.issubdtype(ids.dtype, np.integer):
            raise GemmaRefError(f"hidden_states: ids must be an integer array [T] or [B, T], got "
                                f"{ids.dtype} {ids.shape}")
        out = forward(self.weights, self.config, np.atleast_2d(ids), trace=trace, lm_head=False)
        return out[0] if ids.ndim == 1 else out

    def embed(self, texts, prompt_name: str | None = None, prompt: str | None = None,
              dim: int | None = None, normalize: bool = True) -> np.ndarray:
        """Sentence embeddings: texts (a str or a list of n) -> [n, d] float32.

        prompt_name: a task of the checkpoint's prompts ("query", "document", ...; see
        `prompts`), or prompt: the text to put before each input (not both). Neither:
        the checkpoint's default prompt, if it names one (EmbeddingGemma: none).
        dim: keep the first dim values (Matryoshka: EmbeddingGemma is trained for 768, 512,
        256, 128). normalize: scale each vector to length 1 after the cut (as
        sentence-transformers' normalize_embeddings=True); False returns the modules' output
        cut to dim (as sentence-transformers' default).
        """
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise GemmaRefError("embed: texts must be a string or a list of strings")
        prefix = self.prompt(prompt_name, prompt)
        dim = self._check_dim(dim)
        return self.embed_ids([self.encode(prefix + t) for t in texts], dim=dim, normalize=normalize)

    def embed_ids(self, ids, dim: int | None = None, normalize: bool = True) -> np.ndarray:
        """Sentence embeddings of token-id sequences (each as encode makes them) -> [n, d] float32.

        Texts of similar length are embedded together, padded: padding is seen by no
        token and left out of the mean.
        """
        dim = self._check_dim(dim)
        if not isinstance(ids, (list, tuple)) or not all(
                len(i) and all(isinstance(t, (int, np.integer)) and 0 <= t < self.config.vocab_size for t in i)
                for i in ids):
            raise GemmaRefError(f"embed_ids: expected a list of non-empty token-id lists in "
                                f"[0, {self.config.vocab_size})")
        out = np.empty((len(ids), self.dim), self.dtype)
        for batch in _batches([len(i) for i in ids], TOKENS_PER_BATCH):
            T = max(len(ids[b]) for b in batch)
            tokens = np.full((len(batch), T), self.config.pad_token_id, np.int64)  # [B, T]
            positions = np.full((len(batch), T), -1, np.int64)  # -1: padding, seen by no one
            for row, b in enumerate(batch):
                tokens[row, :len(ids[b])], positions[row, :len(ids[b])] = ids[b], np.arange(len(ids[b]))
            hidden = forward(self.weights, self.config, tokens, positions, lm_head=False)  # [B, T, D]
            out[batch] = self.head(hidden, positions >= 0)
        out = out[:, :dim]
        return (normalized(out) if normalize else out).astype(np.float32)

    def prompt(self, prompt_name: str | None = None, prompt: str | None = None) -> str:
        """The text put before each input, as sentence-transformers resolves it."""
        if prompt is not None and prompt_name is not None:
            raise GemmaRefError("embed: give a prompt or a prompt_name, not both")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise GemmaRefError(f"embed: prompt must be a string, not {type(prompt).__name__}")
            return prompt
        name = prompt_name if prompt_name is not None else self.head.default_prompt_name
        if name is None:
            return ""
        if name not in self.head.prompts:
            known = ", ".join(self.head.prompts) or "none"
            raise GemmaRefError(f"embed: no prompt named {name!r} (this model's: {known})")
        return self.head.prompts[name]

    def _check_dim(self, dim) -> int:
        if dim is None:
            return self.dim
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or not 1 <= dim <= self.dim:
            raise GemmaRefError(f"embed: dim must be an integer in [1, {self.dim}] (Matryoshka: "
                                f"e.g. 768, 512, 256, 128), got {dim!r}")
        return int(dim)

    # --- what an embedding model cannot do -------------------------------------------------

    def _not_generative(self, *args, **kwargs):
        raise GemmaRefError(f"{self.source or 'this model'} is an embedding model (EmbeddingGemma): it has "
                            f"no language-model head and cannot generate text; use embed() or "
                            f"`gemma-ref embed`")

    generate = stream = chat = stream_chat = chat_prompt = _not_generative
    forward = logprobs = score = generate_ids = _not_generative

    def __repr__(self):
        c = self.config
        return (f"EmbeddingModel({self.source!r}, {c.model_type}, {c.num_parameters / 1e6:.0f}M params, "
                f"{c.num_hidden_layers} layers, {self.dim}-d embeddings, dtype={self.dtype})")


def _batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices of the texts in batches of similar length (within 2x + 16 tokens), about `budget`
    tokens each, padding included."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current = [], []
    for i in order:  # the longest so far is i
        if current and (lengths[i] * (len(current) + 1) > budget or lengths[i] > 2 * lengths[current[0]] + 16):
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])
