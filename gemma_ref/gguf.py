"""Read a llama.cpp GGUF file of a Gemma 1 / 2 / 3 / 3n / 4 (text) model.

`read_gguf(path)` gives back what a Hugging Face checkpoint directory would hold:

* `config`: the `config.json` keys transformers' Gemma / Gemma2 / Gemma3-text config has,
* `tensors`: every weight as a float32 NumPy array under its Hugging Face key and in its
  Hugging Face shape, with llama.cpp's own changes to the values undone,
* `tokenizer_model`: a serialized SentencePiece `ModelProto` rebuilt from the file's vocabulary,
* `metadata`: a few facts about where the weights came from.

Only NumPy, the `gguf` package (llama.cpp's own reader, which memory-maps the file) and
SentencePiece's protobuf module are used. Every problem with the input file raises
`GemmaRefError` naming the file and what is wrong with it.

Everything this module knows about how llama.cpp's `convert_hf_to_gguf.py` writes Gemma is
written down in the tables and named constants just below.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections import Counter
from statistics import NormalDist
from typing import Any, Callable

import gguf
import numpy as np
from sentencepiece import sentencepiece_model_pb2

from .errors import GemmaRefError

__all__ = ["GGUFCheckpoint", "read_gguf", "TENSOR_NAME_TABLE", "SUPPORTED_ARCHITECTURES"]

# --------------------------------------------------------------------------------------------
# The name table: llama.cpp tensor name -> Hugging Face checkpoint key.
#
# Each row is (GGUF name, architectures it applies to, HF key, value transformation).
# `{i}` is the layer index. The rows agree with the `gguf` package's own
# `gguf.get_tensor_name_map(MODEL_ARCH.GEMMA*, n)` (the tests check that), which is what
# llama.cpp's converter uses to name tensors.
#
# Layout: a GGUF tensor's `ne` lists its dimensions fastest-varying first, so the NumPy shape
# of the data is `reversed(ne)`. That reversed shape already IS the Hugging Face / PyTorch
# layout: token_embd ne=[hidden, vocab] -> (vocab, hidden) = HF `embed_tokens.weight`, and a
# linear layer ne=[in, out] -> (out, in) = HF `nn.Linear.weight`. So no tensor is transposed.
#
# Transformations of the values (the last column):
#   NONE    -- the dequantized values are the HF values (up to quantization error).
#   UNSHIFT -- RMSNorm weights of Gemma 1-3 (Gemma 4's converter stores them as they are:
#              `Gemma4Model.norm_shift` is 0, and its RMSNorm multiplies by w; see _SHIFTED).
#              Gemma's RMSNorm computes `x_normed * (1 + w)` and HF stores `w`
#              (centred on 0). llama.cpp's converter stores `w + 1` for every tensor whose HF
#              name ends in "norm.weight" (GemmaModel / Gemma2Model / Gemma3Model
#              .modify_tensors: `data_torch = data_torch + 1`, "ref code in Gemma3RMSNorm"),
#              because llama.cpp's RMSNorm multiplies by the stored weight directly. This
#              includes the Gemma 3 q_norm / k_norm. We subtract 1 back (in float32, exact for
#              these values) so the engine applies its own (1 + w). transformers' GGUF loader
#              does the same (`Gemma2TensorProcessor`: `weights - 1` for "norm.weight").
#
# What is NOT done, deliberately:
#   * No Q/K row permutation. llama.cpp permutes attn_q / attn_k rows for Llama-family models
#     (to turn HF's rotate-half RoPE into its interleaved one), but its Gemma converters do not
#     (Gemma uses llama.cpp's NEOX-style RoPE, which is HF's rotate-half). transformers' loader
#     does not un-permute Gemma either, and scripts/make_gguf_goldens.py checks empirically that
#     the un-permuted weights give a far lower loss than llama-style un-permuted ones.
#   * No embedding scaling: the sqrt(hidden_size) factor is applied by the model, not stored.
#   * `output.weight` (lm_head) exists only for untied models. Gemma ties lm_head to the
#     embedding, and llama.cpp's Gemma converters drop `lm_head.weight`, so normally there is no
#     `lm_head.weight` key and `config["tie_word_embeddings"]` is True.
# --------------------------------------------------------------------------------------------

NONE = "none"
UNSHIFT = "subtract 1 (llama.cpp stores RMSNorm weights as 1 + w)"
STACKED = "split: llama.cpp stacks the S - 1 AltUp matrices into one [S - 1, D, D] tensor"

_SHIFTED = ("gemma", "gemma2", "gemma3")  # the architectures whose norms are stored as 1 + w
_ALL = ("gemma", "gemma2", "gemma3", "gemma3n", "gemma4")
_G234 = ("gemma2", "gemma3", "gemma3n", "gemma4")
_G34 = ("gemma3", "gemma3n", "gemma4")
_PLE = ("gemma3n", "gemma4")  # per-layer embeddings
_G3N = ("gemma3n",)
_G4 = ("gemma4",)

TENSOR_NAME_TABLE: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    # GGUF name                       archs      HF key                                                  values
    ("token_embd.weight",              _ALL,      "model.embed_tokens.weight",                            NONE),
    ("output.weight",                  _ALL,      "lm_head.weight",                                       NONE),  # only when untied
    ("output_norm.weight",             _ALL,      "model.norm.weight",                                    UNSHIFT),
    ("blk.{i}.attn_norm.weight",       _ALL,      "model.layers.{i}.input_layernorm.weight",              UNSHIFT),
    ("blk.{i}.attn_q.weight",          _ALL,      "model.layers.{i}.self_attn.q_proj.weight",             NONE),  # not permuted
    ("blk.{i}.attn_k.weight",          _ALL,      "model.layers.{i}.self_attn.k_proj.weight",             NONE),  # not permuted
    ("blk.{i}.attn_v.weight",          _ALL,      "model.layers.{i}.self_attn.v_proj.weight",             NONE),
    ("blk.{i}.attn_output.weight",     _ALL,      "model.layers.{i}.self_attn.o_proj.weight",             NONE),
    ("blk.{i}.attn_q_norm.weight",     _G34,      "model.layers.{i}.self_attn.q_norm.weight",             UNSHIFT),
    ("blk.{i}.attn_k_norm.weight",     _G34,      "model.layers.{i}.self_attn.k_norm.weight",             UNSHIFT),
    # Gemma 1 has two norms per layer: HF's `post_attention_layernorm` is really the pre-MLP
    # norm, and llama.cpp calls it `ffn_norm`.
    ("blk.{i}.ffn_norm.weight",        ("gemma",), "model.layers.{i}.post_attention_layernorm.weight",    UNSHIFT),
    # Gemma 2/3 have four: `post_attention_layernorm` is a real post-attention norm
    # (llama.cpp `post_attention_norm`) and the pre-MLP norm is `pre_feedforward_layernorm`
    # (llama.cpp `ffn_norm`).
    ("blk.{i}.ffn_norm.weight",        _G234,     "model.layers.{i}.pre_feedforward_layernorm.weight",    UNSHIFT),
    ("blk.{i}.post_attention_norm.weight", _G234, "model.layers.{i}.post_attention_layernorm.weight",     UNSHIFT),
    ("blk.{i}.post_ffw_norm.weight",   _G234,     "model.layers.{i}.post_feedforward_layernorm.weight",   UNSHIFT),
    ("blk.{i}.ffn_gate.weight",        _ALL,      "model.layers.{i}.mlp.gate_proj.weight",                NONE),
    ("blk.{i}.ffn_up.weight",          _ALL,      "model.layers.{i}.mlp.up_proj.weight",                  NONE),
    ("blk.{i}.ffn_down.weight",        _ALL,      "model.layers.{i}.mlp.down_proj.weight",                NONE),
    # Gemma 4 (llama.cpp's conversion/gemma.py `Gemma4Model`, gguf-py MODEL_TENSORS[GEMMA4]):
    # per-layer embeddings, the layer scalar, and the mixture of experts. Experts are stored
    # as 3-D tensors, ne = [in, out, experts], i.e. HF's [E, out, in]. The router's `scale`
    # and `per_expert_scale` become `ffn_gate_inp.scale` and `ffn_down_exps.scale`.
    ("per_layer_token_embd.weight",    _PLE,      "model.embed_tokens_per_layer.weight",                  NONE),
    ("per_layer_model_proj.weight",    _PLE,      "model.per_layer_model_projection.weight",              NONE),
    ("per_layer_proj_norm.weight",     _PLE,      "model.per_layer_projection_norm.weight",               UNSHIFT),
    ("blk.{i}.inp_gate.weight",        _PLE,      "model.layers.{i}.per_layer_input_gate.weight",         NONE),
    ("blk.{i}.proj.weight",            _PLE,      "model.layers.{i}.per_layer_projection.weight",         NONE),
    ("blk.{i}.post_norm.weight",       _PLE,      "model.layers.{i}.post_per_layer_input_norm.weight",    UNSHIFT),
    ("blk.{i}.layer_output_scale.weight", _G4,    "model.layers.{i}.layer_scalar",                        NONE),
    ("blk.{i}.ffn_gate_inp.weight",    _G4,       "model.layers.{i}.router.proj.weight",                  NONE),
    ("blk.{i}.ffn_gate_inp.scale",     _G4,       "model.layers.{i}.router.scale",                        NONE),
    ("blk.{i}.ffn_down_exps.scale",    _G4,       "model.layers.{i}.router.per_expert_scale",             NONE),
    ("blk.{i}.ffn_gate_up_exps.weight", _G4,      "model.layers.{i}.experts.gate_up_proj",                NONE),
    ("blk.{i}.ffn_down_exps.weight",   _G4,       "model.layers.{i}.experts.down_proj",                   NONE),
    ("blk.{i}.pre_ffw_norm_2.weight",  _G4,       "model.layers.{i}.pre_feedforward_layernorm_2.weight",  UNSHIFT),
    ("blk.{i}.post_ffw_norm_1.weight", _G4,       "model.layers.{i}.post_feedforward_layernorm_1.weight", UNSHIFT),
    ("blk.{i}.post_ffw_norm_2.weight", _G4,       "model.layers.{i}.post_feedforward_layernorm_2.weight", UNSHIFT),
    # Gemma 3n (llama.cpp's `Gemma3NModel`, gguf-py MODEL_TENSORS[GEMMA3N]): per-layer
    # embeddings as Gemma 4 (above), AltUp and LAuReL. Norms as they are (norm_shift 0). The
    # converter stacks model.altup_projections.{0..S-2} (and the unembed ones) into one tensor,
    # and pads the per-layer table with zero rows up to vocab_size (see _unpad_rows).
    ("altup_proj.weight",              _G3N,      "model.altup_projections.{s}.weight",                   STACKED),
    ("altup_unembd_proj.weight",       _G3N,      "model.altup_unembed_projections.{s}.weight",           STACKED),
    ("blk.{i}.altup_correct_coef.weight", _G3N,   "model.layers.{i}.altup.correction_coefs.weight",       NONE),
    ("blk.{i}.altup_correct_scale.weight", _G3N,  "model.layers.{i}.altup.correct_output_scale",          NONE),
    ("blk.{i}.altup_predict_coef.weight", _G3N,   "model.layers.{i}.altup.prediction_coefs.weight",       NONE),
    ("blk.{i}.altup_router.weight",    _G3N,      "model.layers.{i}.altup.modality_router.weight",        NONE),
    ("blk.{i}.altup_router_norm.weight", _G3N,    "model.layers.{i}.altup.router_norm.weight",            UNSHIFT),
    ("blk.{i}.laurel_l.weight",        _G3N,      "model.layers.{i}.laurel.linear_left.weight",           NONE),
    ("blk.{i}.laurel_r.weight",        _G3N,      "model.layers.{i}.laurel.linear_right.weight",          NONE),
    ("blk.{i}.laurel_post_norm.weight", _G3N,     "model.layers.{i}.laurel.post_laurel_norm.weight",      UNSHIFT),
)
# Gemma 4's full-attention RoPE as llama.cpp encodes it: one factor per frequency pair of the
# full layers' heads, 1.0 for the pairs that rotate and 1e30 (frequency ~0) for the rest.
# Read into the config (partial_rotary_factor), not a weight.
ROPE_FREQS = "rope_freqs.weight"

# Tensors a file may lack; every other row of the table that applies to the file's
# architecture must be present.
_OPTIONAL_TENSORS = frozenset({"output.weight"})

SUPPORTED_ARCHITECTURES = _ALL

# `general.architecture` -> (HF model_type, HF architectures entry)
_MODEL_TYPES = {
    "gemma": ("gemma", "GemmaForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    # The GGUF holds the text model only (llama.cpp writes the vision tower to a separate
    # mmproj file), so this is transformers' text-only Gemma 3, as its GGUF loader also says.
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
    "gemma3n": ("gemma3n_text", "Gemma3nForCausalLM"),
    "gemma4": ("gemma4_text", "Gemma4ForCausalLM"),
}

# --------------------------------------------------------------------------------------------
# Hyperparameters the file does not state. Each is what llama.cpp's loader (llama-model.cpp)
# hard-codes for the architecture, which is also what transformers' config classes default to.
# --------------------------------------------------------------------------------------------

# Gemma 3: local (sliding-window) layers use RoPE base 10000; `rope.freq_base` in the file is the
# global layers' base (1e6). llama.cpp: `rope_freq_base_train_swa = 10000.0f`. A newer file may
# state it as `{arch}.rope.freq_base_swa`, which then wins.
GEMMA3_ROPE_LOCAL_BASE_FREQ = 10000.0
# Gemma 3: every 6th layer is global: layer i is full attention iff (i + 1) % 6 == 0.
# llama.cpp: `set_swa_pattern(6)`; transformers: `sliding_window_pattern = 6`.
GEMMA3_SLIDING_WINDOW_PATTERN = 6
# Gemma 2: layers alternate, starting with a sliding-window one: layer i is full iff
# (i + 1) % 2 == 0. llama.cpp: `set_swa_pattern(2)`.
GEMMA2_SLIDING_WINDOW_PATTERN = 2
# Gemma 2 window when the file does not state one (llama.cpp: `n_swa = 4096`).
GEMMA2_DEFAULT_SLIDING_WINDOW = 4096
# Gemma 2 soft-caps when the file does not state them (llama.cpp's hparams defaults, which are
# also Gemma2Config's defaults). Gemma 3 has no attention soft-cap and no final soft-cap unless
# the file says so; Gemma 1 has neither.
GEMMA2_DEFAULT_ATTN_LOGIT_SOFTCAPPING = 50.0
GEMMA2_DEFAULT_FINAL_LOGIT_SOFTCAPPING = 30.0
# RoPE base when a file states none (llama.cpp's default; Gemma 1 and 2 use 10000).
DEFAULT_ROPE_THETA = 10000.0
# query_pre_attn_scalar (queries are scaled by its -1/2 power). llama.cpp picks it by model
# size: `f_attention_scale = type == LLM_TYPE_27B ? 1/sqrt(n_embd / n_head) : 1/sqrt(head_dim)`,
# after gemma_pytorch's config. The 27B models are recognised by their layer count, as llama.cpp
# does: Gemma 2 27B has 46 layers (query_pre_attn_scalar = 4608 / 32 = 144), Gemma 3 27B has 62
# (5376 / 32 = 168). Every other size uses head_dim (Gemma 3 270M: 256). transformers' GGUF
# loader does not set it at all and so gets the config class default, 256, which agrees for
# every size but the 27Bs. Gemma 1 has no such setting; it scales by head_dim ** -0.5, which is
# what query_pre_attn_scalar = head_dim means.
_QUERY_SCALE_BY_HIDDEN_OVER_HEADS_LAYER_COUNTS = {"gemma2": 46, "gemma3": 62}
# Every Gemma uses the tanh approximation of GELU in its MLP.
HIDDEN_ACTIVATION = "gelu_pytorch_tanh"

# --------------------------------------------------------------------------------------------
# Tokenizer: llama.cpp token types (`tokenizer.ggml.token_type`, llama.cpp's
# `SentencePieceTokenTypes`) -> SentencePiece piece types.
# --------------------------------------------------------------------------------------------
_SP_TYPE = sentencepiece_model_pb2.ModelProto.SentencePiece.Type
_LLAMA_TOKEN_TYPE_TO_SP = {
    1: _SP_TYPE.NORMAL,
    2: _SP_TYPE.UNKNOWN,
    3: _SP_TYPE.CONTROL,  # but see _sp_piece_type: only bos/eos/pad stay CONTROL
    4: _SP_TYPE.USER_DEFINED,
    5: _SP_TYPE.UNUSED,
    6: _SP_TYPE.BYTE,
}
_LLAMA_CONTROL = 3
_SP_SPACE = "\u2581"  # "▁", SentencePiece's escaped space

_GGUF_MAGIC = b"GGUF"
# Dequantize tensors bigger than this many output elements in row chunks, to keep the
# temporary arrays of the block decoders small (the 270M's embedding is 168M elements).
_CHUNK_ELEMENTS = 1 << 24


@dataclasses.dataclass(frozen=True)
class GGUFCheckpoint:
    """A Gemma checkpoint read from a GGUF file, in Hugging Face terms."""

    config: dict[str, Any]
    tensors: dict[str, np.ndarray]
    tokenizer_model: bytes
    metadata: dict[str, Any]


def read_gguf(path: str | os.PathLike[str], on_valid_header: Callable[[], None] | None = None) -> GGUFCheckpoint:
    """Read a Gemma / 2 / 3 / 3n / 4 (text) GGUF file into HF-layout float32 tensors.

    Raises `GemmaRefError` for a missing, truncated or corrupt file, an architecture other than
    gemma / gemma2 / gemma3 / gemma3n / gemma4, a tensor type that cannot be dequantized, or a missing, unknown or
    mis-shaped tensor. `on_valid_header()` is called once the header has been parsed and every
    tensor found inside the file, before the slow part (vocabulary, dequantization).
    """
    path = os.fspath(path)
    reader = _open_reader(path)
    fields = reader.fields
    arch = _get(reader, path, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GemmaRefError(
            f"{path}: GGUF architecture {arch!r} is not supported; this reader handles "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} (text models only)"
        )
    _check_tensor_bounds(reader, path)
    if on_valid_header is not None:
        on_valid_header()

    vocab = _read_vocab(reader, path)
    tensor_names = [t.name for t in reader.tensors]
    config = _build_config(reader, path, arch, len(vocab[0]), tensor_names)
    tokenizer_model = _build_tokenizer(path, *vocab, config)
    del vocab
    # The reader keeps a NumPy view per vocabulary entry (~0.7 GB for Gemma 3's 262k tokens).
    # They are no longer needed; dropping them before dequantizing lowers the peak memory.
    for key in [k for k in reader.fields if k.startswith("tokenizer.ggml.") and k.endswith(("tokens", "scores", "token_type", "merges"))]:
        del reader.fields[key]
    tensors = _read_tensors(reader, path, arch, config)

    file_type = _get(reader, path, "general.file_type", None)
    try:
        file_type_name = gguf.LlamaFileType(file_type).name if file_type is not None else None
    except ValueError:
        file_type_name = f"unknown ({file_type})"
    metadata = {
        "path": path,
        "architecture": arch,
        "name": _get(reader, path, "general.name", None),
        "file_type": file_type_name,
        "file_type_id": file_type,
        "quant_types": dict(sorted(Counter(t.tensor_type.name for t in reader.tensors).items())),
        "tensor_count": len(reader.tensors),
        "gguf_version": int(fields["GGUF.version"].parts[0][0]),
    }
    return GGUFCheckpoint(config=config, tensors=tensors, tokenizer_model=tokenizer_model, metadata=metadata)


# --------------------------------------------------------------------------------------------
# File access
# --------------------------------------------------------------------------------------------

_REQUIRED = object()


class _TensorPastEnd(Exception):
    """Raised by _Reader when a tensor's data runs past the end of the file."""


class _Reader(gguf.GGUFReader):
    """`gguf.GGUFReader`, but a tensor whose data runs past the end of the file is named.

    GGUFReader builds a view of every tensor's data while it parses the header; for a truncated
    file that fails with a bare NumPy reshape/view error. This checks each tensor's extent first.
    If the tensor-info layout ever changes in the gguf package, the check steps aside and the
    reader's own error is reported instead.
    """

    def _build_tensors(self, start_offs, fields):  # noqa: ANN001 - gguf's signature
        size = len(self.data)
        for field in fields:
            try:
                _, name_data, _, dims, raw_dtype, offset = field.parts
                name = bytes(name_data).decode("utf-8", "replace")
                block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(raw_dtype[0]))]
                start = int(start_offs) + int(offset[0])
                end = start + int(np.prod(dims, dtype=np.uint64)) * type_size // block_size
            except Exception:  # unknown type id, or another layout: GGUFReader reports it
                continue
            if end > size:
                raise _TensorPastEnd(
                    f"tensor {name!r} data runs from byte {start} to {end}, past the end of the "
                    f"{size}-byte file: the file is truncated or corrupt"
                )
        super()._build_tensors(start_offs, fields)


def _open_reader(path: str) -> gguf.GGUFReader:
    if not os.path.isfile(path):
        raise GemmaRefError(f"{path}: no such file (expected a .gguf model file)")
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != _GGUF_MAGIC:
        raise GemmaRefError(
            f"{path}: not a GGUF file: it starts with {magic!r}, a GGUF file starts with {_GGUF_MAGIC!r}"
        )
    try:
        return _Reader(path)
    except _TensorPastEnd as e:
        raise GemmaRefError(f"{path}: {e}") from None
    except ValueError as e:
        match = re.search(r"(\d+)\)? is not a valid GGMLQuantizationType", str(e))
        if match:
            raise GemmaRefError(
                f"{path}: a tensor has ggml type id {match.group(1)}, which this gguf package "
                f"(version {_gguf_version()}) does not know: unsupported quant type"
            ) from e
        raise GemmaRefError(
            f"{path}: truncated or corrupt GGUF file ({size} bytes): its header (metadata and tensor "
            f"list) could not be parsed: {e}"
        ) from e
    except (IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError) as e:
        raise GemmaRefError(
            f"{path}: truncated or corrupt GGUF file ({size} bytes): its header (metadata and tensor "
            f"list) could not be parsed: {e!r}"
        ) from e


def _check_tensor_bounds(reader: gguf.GGUFReader, path: str) -> None:
    """Every tensor's data must lie inside the file (GGUFReader itself fails on most such
    files; this names the tensor for the rest)."""
    size = len(reader.data)
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if int(t.data_offset) < reader.data_offset or end > size or t.data.nbytes != int(t.n_bytes):
            raise GemmaRefError(
                f"{path}: tensor {t.name!r} data runs from byte {int(t.data_offset)} to {end}, "
                f"past the end of the {size}-byte file: the file is truncated or corrupt"
            )


def _get(reader: gguf.GGUFReader, path: str, key: str, default: Any = _REQUIRED) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is _REQUIRED:
            raise GemmaRefError(f"{path}: GGUF metadata key {key!r} is missing")
        return default
    try:
        return field.contents()
    except (UnicodeDecodeError, IndexError, ValueError) as e:
        raise GemmaRefError(f"{path}: GGUF metadata key {key!r} is unreadable: {e!r}") from e


def _gguf_version() -> str:
    try:
        from importlib.metadata import version

        return version("gguf")
    except Exception:  # pragma: no cover - only for the message
        return "unknown"


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def _build_config(
    reader: gguf.GGUFReader, path: str, arch: str, vocab_size: int, tensor_names: list[str]
) -> dict[str, Any]:
    def key(name: str, default: Any = _REQUIRED) -> Any:
        return _get(reader, path, f"{arch}.{name}", default)

    def positive_int(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise GemmaRefError(f"{path}: GGUF metadata {arch}.{name} = {value!r} is not a positive integer")
        return value

    if arch == "gemma4":
        return _gemma4_config(reader, path, vocab_size, tensor_names, key, positive_int)
    if arch == "gemma3n":
        return _gemma3n_config(reader, path, vocab_size, tensor_names, key, positive_int)
    hidden = positive_int("embedding_length", key("embedding_length"))
    layers = positive_int("block_count", key("block_count"))
    heads = positive_int("attention.head_count", key("attention.head_count"))
    kv_heads = positive_int("attention.head_count_kv", key("attention.head_count_kv", heads))
    ffn = positive_int("feed_forward_length", key("feed_forward_length"))
    head_dim = positive_int("attention.key_length", key("attention.key_length", hidden // heads))
    value_dim = positive_int("attention.value_length", key("attention.value_length", head_dim))
    if value_dim != head_dim:
        raise GemmaRefError(
            f"{path}: key_length {head_dim} != value_length {value_dim}; Gemma has one head_dim"
        )
    if heads % kv_heads:
        raise GemmaRefError(f"{path}: head_count {heads} is not a multiple of head_count_kv {kv_heads}")
    context = positive_int("context_length", key("context_length"))
    rms_eps = float(key("attention.layer_norm_rms_epsilon"))
    rope_theta = float(key("rope.freq_base", DEFAULT_ROPE_THETA))

    rope_scaling = None
    scaling_type = key("rope.scaling.type", None)
    if scaling_type not in (None, "none"):
        rope_scaling = {"rope_type": scaling_type, "factor": float(key("rope.scaling.factor", 1.0))}

    if arch == "gemma":
        sliding_window = None
        layer_types = ["full_attention"] * layers
        rope_local = rope_theta  # one RoPE base for every layer
        attn_softcap = final_softcap = None
    elif arch == "gemma2":
        sliding_window = key("attention.sliding_window", GEMMA2_DEFAULT_SLIDING_WINDOW)
        layer_types = _pattern_layer_types(layers, GEMMA2_SLIDING_WINDOW_PATTERN)
        rope_local = rope_theta  # Gemma 2 uses one RoPE base for every layer
        attn_softcap = float(key("attn_logit_softcapping", GEMMA2_DEFAULT_ATTN_LOGIT_SOFTCAPPING))
        final_softcap = float(key("final_logit_softcapping", GEMMA2_DEFAULT_FINAL_LOGIT_SOFTCAPPING))
    else:  # gemma3
        sliding_window = key("attention.sliding_window", None) or None
        pattern = key("attention.sliding_window_pattern", GEMMA3_SLIDING_WINDOW_PATTERN)
        if sliding_window is None:
            # Newer llama.cpp: no window stated -> every layer is global.
            layer_types = ["full_attention"] * layers
        elif isinstance(pattern, list):  # per-layer flags, True = sliding
            if len(pattern) != layers:
                raise GemmaRefError(
                    f"{path}: {arch}.attention.sliding_window_pattern has {len(pattern)} entries for {layers} layers"
                )
            layer_types = ["sliding_attention" if p else "full_attention" for p in pattern]
        else:
            layer_types = _pattern_layer_types(layers, positive_int("attention.sliding_window_pattern", pattern))
        rope_local = float(key("rope.freq_base_swa", GEMMA3_ROPE_LOCAL_BASE_FREQ))
        attn_softcap = key("attn_logit_softcapping", None)
        final_softcap = key("final_logit_softcapping", None)
        attn_softcap = float(attn_softcap) if attn_softcap else None
        final_softcap = float(final_softcap) if final_softcap else None

    if layers == _QUERY_SCALE_BY_HIDDEN_OVER_HEADS_LAYER_COUNTS.get(arch):
        query_pre_attn_scalar = hidden // heads
    else:
        query_pre_attn_scalar = head_dim

    model_type, architecture = _MODEL_TYPES[arch]
    config: dict[str, Any] = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": context,
        "rms_norm_eps": rms_eps,
        "rope_theta": rope_theta,
        "rope_local_base_freq": rope_local,
        "rope_scaling": rope_scaling,
        "sliding_window": sliding_window,
        "layer_types": layer_types,
        "query_pre_attn_scalar": query_pre_attn_scalar,
        "attn_logit_softcapping": attn_softcap,
        "final_logit_softcapping": final_softcap,
        "hidden_activation": HIDDEN_ACTIVATION,
        "hidden_act": HIDDEN_ACTIVATION,
        "attention_bias": False,
        **_token_fields(reader, path, vocab_size, tensor_names),
    }
    if arch == "gemma3" and sliding_window is not None and isinstance(pattern, int):
        config["_sliding_window_pattern"] = pattern  # as transformers' Gemma3TextConfig has it
    return config


def _gemma4_config(reader, path, vocab_size, tensor_names, key, positive_int) -> dict[str, Any]:
    """config.json (Hub spelling) of a Gemma 4 GGUF, from what llama.cpp's Gemma4Model writes.

    Per-layer facts are arrays in the file: head_count_kv (sliding vs full layers),
    feed_forward_length (2x on the KV-sharing layers with use_double_wide_mlp) and
    attention.sliding_window_pattern (True = sliding). key_length is the full layers'
    head_dim, key_length_swa the sliding layers'. attention_k_eq_v shows as full layers
    without attn_v; partial_rotary_factor as the 1.0 entries of rope_freqs.
    """
    def per_layer(name: str, layers: int) -> list[int]:
        value = key(name)
        values = value if isinstance(value, list) else [value] * layers
        if len(values) != layers:
            raise GemmaRefError(f"{path}: gemma4.{name} has {len(values)} entries for {layers} layers")
        return [positive_int(name, v) for v in values]

    layers = positive_int("block_count", key("block_count"))
    pattern = key("attention.sliding_window_pattern")
    if not isinstance(pattern, list) or len(pattern) != layers:
        raise GemmaRefError(f"{path}: gemma4.attention.sliding_window_pattern is not one flag per layer")
    sliding = [bool(p) for p in pattern]
    kv = per_layer("attention.head_count_kv", layers)
    ffn = per_layer("feed_forward_length", layers)
    shared = key("attention.shared_kv_layers", 0)
    head_dim = positive_int("attention.key_length_swa", key("attention.key_length_swa"))
    global_head_dim = positive_int("attention.key_length", key("attention.key_length"))
    full = [i for i in range(layers) if not sliding[i]]
    kv_full = {kv[i] for i in full} or {kv[0]}
    kv_sliding = {kv[i] for i in range(layers) if sliding[i]} or kv_full
    if len(kv_full) > 1 or len(kv_sliding) > 1:
        raise GemmaRefError(f"{path}: gemma4.attention.head_count_kv differs within one kind of layer")
    k_eq_v = bool(full) and all(f"blk.{i}.attn_v.weight" not in tensor_names for i in full)
    partial = 1.0
    rope_freqs = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
    if rope_freqs is not None:
        factors = np.asarray(rope_freqs.data, dtype=np.float32).reshape(-1)
        if factors.size != global_head_dim // 2:
            raise GemmaRefError(f"{path}: {ROPE_FREQS} has {factors.size} entries, not key_length / 2")
        partial = 2 * int((factors == 1.0).sum()) / global_head_dim
    per_layer_input = key("embedding_length_per_layer_input", 0) or 0
    ple_rows = next((int(t.shape[-1]) for t in reader.tensors if t.name == "per_layer_token_embd.weight"), 0)
    experts = key("expert_count", 0) or 0
    softcap = key("final_logit_softcapping", None)

    return {
        "architectures": ["Gemma4ForCausalLM"],
        "model_type": "gemma4_text",
        "vocab_size": vocab_size,
        "hidden_size": positive_int("embedding_length", key("embedding_length")),
        "intermediate_size": min(ffn),
        "num_hidden_layers": layers,
        "num_attention_heads": positive_int("attention.head_count", key("attention.head_count")),
        "num_key_value_heads": kv_sliding.pop(),
        "num_global_key_value_heads": kv_full.pop() if k_eq_v else None,
        "head_dim": head_dim,
        "global_head_dim": global_head_dim,
        "max_position_embeddings": positive_int("context_length", key("context_length")),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
        "rope_parameters": {
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": partial,
                               "rope_theta": float(key("rope.freq_base", 1_000_000.0))},
            "sliding_attention": {"rope_type": "default",
                                  "rope_theta": float(key("rope.freq_base_swa", GEMMA3_ROPE_LOCAL_BASE_FREQ))},
        },
        "sliding_window": key("attention.sliding_window", None),
        "layer_types": ["sliding_attention" if f else "full_attention" for f in sliding],
        "final_logit_softcapping": float(softcap) if softcap else None,
        "attention_k_eq_v": k_eq_v,
        "num_kv_shared_layers": shared,
        "use_double_wide_mlp": max(ffn) == 2 * min(ffn) and shared > 0,
        "hidden_size_per_layer_input": per_layer_input,
        "vocab_size_per_layer_input": ple_rows or vocab_size,
        "enable_moe_block": experts > 0,
        "num_experts": experts or None,
        "top_k_experts": key("expert_used_count", None) if experts else None,
        "moe_intermediate_size": key("expert_feed_forward_length", None) if experts else None,
        "hidden_activation": HIDDEN_ACTIVATION,
        "attention_bias": False,
        **_token_fields(reader, path, vocab_size, tensor_names),
    }


def _gemma3n_config(reader, path, vocab_size, tensor_names, key, positive_int) -> dict[str, Any]:
    """config.json of a Gemma 3n GGUF, from what llama.cpp's Gemma3NModel writes.

    feed_forward_length is per layer; activation_sparsity_scale holds, per layer, the
    standard normal quantile of the target sparsity (-inf for a dense layer), which is
    turned back into the sparsity. The file has no altup_correct_scale flag: llama.cpp
    always scales (the real models set it), so it is True here. laurel_rank and the
    per-layer table's rows come from the tensors' shapes.
    """
    layers = positive_int("block_count", key("block_count"))
    ffn = key("feed_forward_length")
    ffn = ffn if isinstance(ffn, list) else [ffn] * layers
    pattern = key("attention.sliding_window_pattern")
    if not isinstance(pattern, list) or len(pattern) != layers or len(ffn) != layers:
        raise GemmaRefError(f"{path}: gemma3n.feed_forward_length and attention.sliding_window_pattern "
                            f"must have one entry per layer ({layers})")
    scales = key("activation_sparsity_scale", [float("-inf")] * layers)
    scales = scales if isinstance(scales, list) else [scales] * layers
    if len(scales) != layers:
        raise GemmaRefError(f"{path}: gemma3n.activation_sparsity_scale has {len(scales)} entries for {layers} layers")
    shapes = {t.name: [int(n) for n in reversed(t.shape.tolist())] for t in reader.tensors}
    laurel = shapes.get("blk.0.laurel_l.weight", [0])[0]
    heads = positive_int("attention.head_count", key("attention.head_count"))
    head_dim = positive_int("attention.key_length", key("attention.key_length"))
    softcap = key("final_logit_softcapping", None)
    return {
        "architectures": ["Gemma3nForCausalLM"],
        "model_type": "gemma3n_text",
        "vocab_size": vocab_size,
        "hidden_size": positive_int("embedding_length", key("embedding_length")),
        "intermediate_size": [positive_int("feed_forward_length", f) for f in ffn],
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": positive_int("attention.head_count_kv", key("attention.head_count_kv")),
        "head_dim": head_dim,
        "max_position_embeddings": positive_int("context_length", key("context_length")),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(key("rope.freq_base", 1_000_000.0)),
        "rope_local_base_freq": float(key("rope.freq_base_swa", GEMMA3_ROPE_LOCAL_BASE_FREQ)),
        "sliding_window": key("attention.sliding_window", None),
        "layer_types": ["sliding_attention" if p else "full_attention" for p in pattern],
        "final_logit_softcapping": float(softcap) if softcap else None,
        "num_kv_shared_layers": key("attention.shared_kv_layers", 0),
        "hidden_size_per_layer_input": positive_int("embedding_length_per_layer_input",
                                                    key("embedding_length_per_layer_input")),
        "vocab_size_per_layer_input": shapes.get("per_layer_token_embd.weight", [vocab_size])[0],
        "altup_num_inputs": positive_int("altup.num_inputs", key("altup.num_inputs")),
        "altup_active_idx": key("altup.active_idx"),
        "altup_correct_scale": True,
        "laurel_rank": laurel,
        # cdf(the float32 quantile) is the sparsity to ~1e-8; sparsities are short decimals.
        "activation_sparsity_pattern": [0.0 if math.isinf(z) else round(NormalDist().cdf(z), 6) for z in scales],
        "hidden_activation": HIDDEN_ACTIVATION,
        "attention_bias": False,
        **_token_fields(reader, path, vocab_size, tensor_names),
    }


def _token_fields(reader, path: str, vocab_size: int, tensor_names: list[str]) -> dict[str, Any]:
    """The special token ids (each checked to lie in the vocabulary) and whether the head is tied."""
    def token_id(name: str) -> int | None:
        value = _get(reader, path, f"tokenizer.ggml.{name}", None)
        if value is not None and not 0 <= value < vocab_size:
            raise GemmaRefError(f"{path}: tokenizer.ggml.{name} = {value} is outside the {vocab_size}-token vocabulary")
        return value

    return {
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": token_id("bos_token_id"),
        "eos_token_id": token_id("eos_token_id"),
        "pad_token_id": token_id("padding_token_id"),
        "unk_token_id": token_id("unknown_token_id"),
    }


def _pattern_layer_types(layers: int, pattern: int) -> list[str]:
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)]


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------


def _expected_tensors(arch: str, layers: int) -> dict[str, tuple[str, str]]:
    """GGUF name -> (HF key, transformation) for every tensor this architecture may have."""
    table: dict[str, tuple[str, str]] = {}
    for gguf_name, archs, hf_key, transform in TENSOR_NAME_TABLE:
        if arch not in archs:
            continue
        if "{i}" in gguf_name:
            for i in range(layers):
                table[gguf_name.format(i=i)] = (hf_key.format(i=i), transform)
        else:
            table[gguf_name] = (hf_key, transform)
    return table


def _expected_shape(hf_key: str, config: dict[str, Any]) -> tuple[int, ...]:
    d, f = config["hidden_size"], config["intermediate_size"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    leaf = hf_key.split(".")[-2]
    return {
        "embed_tokens": (config["vocab_size"], d),
        "lm_head": (config["vocab_size"], d),
        "q_proj": (q, d),
        "k_proj": (kv, d),
        "v_proj": (kv, d),
        "o_proj": (d, q),
        "gate_proj": (f, d),
        "up_proj": (f, d),
        "down_proj": (d, f),
        "q_norm": (config["head_dim"],),
        "k_norm": (config["head_dim"],),
    }.get(leaf, (d,))  # every other tensor is a hidden-size RMSNorm weight


def _read_tensors(reader: gguf.GGUFReader, path: str, arch: str, config: dict[str, Any]) -> dict[str, np.ndarray]:
    expected = _expected_tensors(arch, config["num_hidden_layers"])
    by_name = {t.name: t for t in reader.tensors if t.name != ROPE_FREQS}
    shapes = optional = None
    if arch in _PLE:  # which of the table's tensors this file needs: from the config's layers
        from .config import GemmaConfig
        from .loader import expected_shapes, unused_shapes

        gemma_config = GemmaConfig.from_dict(config, source=path)
        shapes = expected_shapes(gemma_config)
        for g, (h, t) in expected.items():  # [S - 1, D, D], of S - 1 matrices [D, D]
            if t == STACKED and h.format(s=0) in shapes:
                shapes[h] = (config["altup_num_inputs"] - 1, *shapes[h.format(s=0)])
        optional = unused_shapes(gemma_config)  # k/v of the KV-sharing layers, if written
        expected = {g: (h, t) for g, (h, t) in expected.items() if h in shapes or h in optional}
        by_name = {n: t for n, t in by_name.items() if expected.get(n, ("",))[0] not in optional}

    unknown = sorted(set(by_name) - set(expected))
    if unknown:
        raise GemmaRefError(
            f"{path}: unexpected tensor(s) for a {arch} model: {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''} (a different model type, or a multimodal file?)"
        )
    missing = [name for name in expected if name not in by_name and name not in _OPTIONAL_TENSORS
               and not (optional and expected[name][0] in optional)]
    if missing:
        raise GemmaRefError(
            f"{path}: missing tensor(s): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )

    # Find an unsupported tensor type before spending seconds on the others.
    wanted = [t for t in reader.tensors if t.name in by_name]
    for t in wanted:
        _check_dequantizable(t, path)

    tensors: dict[str, np.ndarray] = {}
    for t in wanted:
        hf_key, transform = expected[t.name]
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        want = shapes[hf_key] if shapes is not None else _expected_shape(hf_key, config)
        if shape != want:
            raise GemmaRefError(
                f"{path}: tensor {t.name!r} has shape {shape}, expected {want} for {hf_key} from the config"
            )
        array = _dequantize(t, path, shape)
        if transform == UNSHIFT and arch in _SHIFTED:
            array -= np.float32(1.0)
        if transform == STACKED:
            tensors.update({hf_key.format(s=s): array[s] for s in range(len(array))})
        elif arch == "gemma3n" and hf_key == "model.embed_tokens_per_layer.weight":
            array = tensors[hf_key] = _unpad_rows(array)
            config["vocab_size_per_layer_input"] = len(array)
        else:
            tensors[hf_key] = array
    return tensors


def _unpad_rows(table: np.ndarray) -> np.ndarray:
    """Gemma 3n's per-layer table without the all-zero rows llama.cpp's converter appends.

    The Hub table has 262144 rows and the vocabulary 262400 (image and audio tokens); the
    converter pads the table to the vocabulary with zeros. transformers gives ids past the
    table row 0, not a zero row, so the padding comes off (a trained row is never all zero).
    """
    n = len(table)
    while n > 1 and not table[n - 1].any():
        n -= 1
    return table[:n]


def _check_dequantizable(t: Any, path: str) -> None:
    try:
        block_size, type_size = gguf.GGML_QUANT_SIZES[t.tensor_type]
        first_block = np.ascontiguousarray(t.data.reshape(-1).view(np.uint8)[:type_size])
        out = gguf.quants.dequantize(first_block, t.tensor_type)
    except (NotImplementedError, KeyError) as e:
        raise GemmaRefError(
            f"{path}: tensor {t.name!r} has ggml type {t.tensor_type.name}, which cannot be "
            f"dequantized to float32 (unsupported quant type)"
        ) from e
    if out.dtype != np.float32 or out.size != block_size:
        raise GemmaRefError(
            f"{path}: tensor {t.name!r} has ggml type {t.tensor_type.name}, which does not "
            f"dequantize to float32 weights (unsupported quant type)"
        )


def _dequantize(t: Any, path: str, shape: tuple[int, ...]) -> np.ndarray:
    """Dequantize one tensor to a fresh, writable, C-contiguous float32 array of `shape`."""
    data = t.data  # rows of raw blocks (or of values, for F32/F16), NumPy shape = reversed(ne)
    out = np.empty(shape, dtype=np.float32)
    rows = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)
    flat_out = out.reshape(rows.shape[0], -1)
    step = max(1, _CHUNK_ELEMENTS // max(1, flat_out.shape[1]))
    for start in range(0, rows.shape[0], step):
        chunk = gguf.quants.dequantize(np.ascontiguousarray(rows[start : start + step]), t.tensor_type)
        flat_out[start : start + step] = chunk.reshape(-1, flat_out.shape[1])
    if not np.isfinite(out).all():
        raise GemmaRefError(f"{path}: tensor {t.name!r} contains NaN or infinite values: the file is corrupt")
    return out


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def _read_vocab(reader: gguf.GGUFReader, path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    model = _get(reader, path, "tokenizer.ggml.model")
    if model not in ("llama", "gemma4"):
        raise GemmaRefError(
            f"{path}: tokenizer.ggml.model is {model!r}; Gemma's tokenizer is SentencePiece ('llama', "
            f"or Gemma 4's 'gemma4': SentencePiece-style BPE with merges)"
        )
    field = reader.fields.get("tokenizer.ggml.tokens")
    if field is None:
        raise GemmaRefError(f"{path}: GGUF metadata key 'tokenizer.ggml.tokens' is missing")
    try:
        tokens = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    except UnicodeDecodeError as e:
        raise GemmaRefError(f"{path}: tokenizer.ggml.tokens holds a token that is not UTF-8: {e}") from e
    types = np.asarray(_get(reader, path, "tokenizer.ggml.token_type"), dtype=np.int64)
    if model == "gemma4":  # merges decide the BPE; SentencePiece wants them as scores
        scores = _scores_from_merges(tokens, types, _get(reader, path, "tokenizer.ggml.merges"))
    else:
        scores = np.asarray(_get(reader, path, "tokenizer.ggml.scores"), dtype=np.float32)
    if not tokens or len(scores) != len(tokens) or len(types) != len(tokens):
        raise GemmaRefError(
            f"{path}: tokenizer arrays disagree: {len(tokens)} tokens, {len(scores)} scores, {len(types)} token types"
        )
    return tokens, scores, types


def _scores_from_merges(tokens: list[str], types: np.ndarray, merges: list[str]) -> np.ndarray:
    """SentencePiece scores equivalent to a BPE merge list: -(rank of the merge making a piece).

    SentencePiece's BPE joins the adjacent pair whose joined piece scores highest; BPE joins
    the pair of lowest rank (the same rule as tokenizer.sentencepiece_from_tokenizer_json).
    Single characters are never made by a merge; other pieces no merge makes come last.
    """
    rank: dict[str, int] = {}
    for r, merge in enumerate(merges):
        a, _, b = merge.partition(" ")
        rank.setdefault(a + b, r)
    return np.array([-float(rank[t]) if t in rank else (0.0 if len(t) == 1 or ty != 1 else -1e9)
                     for t, ty in zip(tokens, types.tolist())], dtype=np.float32)


def _sp_piece_type(token_id: int, llama_type: int, special_ids: set[int]) -> int:
    """SentencePiece type of a token, from llama.cpp's type.

    llama.cpp's converter marks as CONTROL every token that tokenizer_config.json lists as
    special or that "looks special" (`<...>`), including `<unk>`, `<mask>`, `<start_of_turn>`,
    `<end_of_turn>` and the `<unusedN>` tokens. In SentencePiece only the bos/eos/pad pieces
    are CONTROL (never produced from text), `<unk>` is UNKNOWN, and the others are
    USER_DEFINED: matched whole wherever they appear in the text, which is also how llama.cpp
    and transformers treat them (so chat markup tokenizes to single ids).
    """
    if llama_type == _LLAMA_CONTROL and token_id not in special_ids:
        return _SP_TYPE.USER_DEFINED
    return _LLAMA_TOKEN_TYPE_TO_SP[llama_type]


def _build_tokenizer(
    path: str, tokens: list[str], scores: np.ndarray, types: np.ndarray, config: dict[str, Any]
) -> bytes:
    unk = config["unk_token_id"]
    ids = {"bos_id": config["bos_token_id"], "eos_id": config["eos_token_id"], "pad_id": config["pad_token_id"]}
    if unk is None:
        unk = next((i for i, t in enumerate(tokens) if t == "<unk>"), None)
        if unk is None:
            raise GemmaRefError(f"{path}: the vocabulary has no unknown token (tokenizer.ggml.unknown_token_id)")
    bad = sorted(set(types.tolist()) - set(_LLAMA_TOKEN_TYPE_TO_SP))
    if bad:
        raise GemmaRefError(f"{path}: tokenizer.ggml.token_type holds unknown token type(s) {bad}")

    proto = sentencepiece_model_pb2.ModelProto()
    trainer = proto.trainer_spec
    # What Gemma's own tokenizer.model says: a byte-fallback BPE model, digits split, pieces of
    # whitespace allowed.
    trainer.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = True
    trainer.split_digits = True
    trainer.allow_whitespace_only_pieces = True
    trainer.unk_id = unk
    trainer.unk_piece = tokens[unk]
    for name, token_id in ids.items():
        setattr(trainer, name, -1 if token_id is None else token_id)
        if token_id is not None:
            setattr(trainer, name.replace("_id", "_piece"), tokens[token_id])
    normalizer = proto.normalizer_spec
    # No NFKC or other rewriting, no dummy "▁" prefix (llama.cpp: add_space_prefix False), spaces
    # kept as they are, and escaped to "▁".
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = False
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True

    special_ids = {i for i in ids.values() if i is not None}
    seen: dict[str, int] = {}
    for i, (text, score, llama_type) in enumerate(zip(tokens, scores.tolist(), types.tolist())):
        # llama.cpp's converter "pre-normalizes" user-defined pieces by turning "▁" back into a
        # space (e.g. Gemma's whitespace-run tokens 138..167 are stored as "  ", "   ", ...).
        # SentencePiece never holds a raw space in a piece, so spell every space as "▁" again.
        piece = text.replace(" ", _SP_SPACE)
        if i == unk:
            piece_type = _SP_TYPE.UNKNOWN  # llama.cpp marks <unk> CONTROL; SentencePiece needs UNKNOWN
        elif llama_type == 2:
            raise GemmaRefError(f"{path}: token {i} {text!r} is typed unknown but unknown_token_id is {unk}")
        else:
            piece_type = _sp_piece_type(i, llama_type, special_ids)
        if not piece:
            raise GemmaRefError(f"{path}: token {i} is empty")
        if piece in seen:
            raise GemmaRefError(f"{path}: tokens {seen[piece]} and {i} are both {piece!r}")
        seen[piece] = i
        proto.pieces.add(piece=piece, score=score, type=piece_type)
    return proto.SerializeToString()
