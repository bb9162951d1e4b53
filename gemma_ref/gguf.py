"""Read a llama.cpp GGUF file of a Gemma 1 / 2 / 3 / 3n / 4 (text) model.

`read_gguf(path)` gives back what a Hugging Face checkpoint directory would hold:

* `config`: the `config.json` keys transformers' Gemma / Gemma2 / Gemma3-text config has,
* `tensors`: every weight as a float32 NumPy array under its Hugging Face key and in its
  Hugging Face shape, with llama.cpp's own changes to the values undone (or, lazy=True,
  as a `GGUFTensor` that dequantizes a block of rows at a time when used),
* `tokenizer_model`: a serialized SentencePiece `ModelProto` rebuilt from the file's vocabulary,
* `metadata`: a few facts about where the weights came from.

Only NumPy, the `gguf` package (llama.cpp's own reader, which memory-maps the file) and
SentencePiece's protobuf module are used. Every problem with the input file raises
`GemmaRefError` naming the file and what is wrong with it.

Everything known about how llama.cpp's converter writes Gemma (tensor names, value changes,
metadata keys and defaults) is in gguf_layout.py; this module reads files with it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections import Counter
from typing import Any, Callable

import gguf
import numpy as np
from sentencepiece import sentencepiece_model_pb2

from .errors import GemmaRefError
from .files import open_file
from .gguf_layout import (NONE, OPTIONAL_TENSORS, PLE_ARCHITECTURES, REQUIRED, ROPE_FREQS, SHIFTED, STACKED,
                          SUPPORTED_ARCHITECTURES, TENSOR_NAME_TABLE, UNSHIFT, build_config, expected_shape,
                          expected_tensors, unpadded_rows)

__all__ = ["GGUFCheckpoint", "read_gguf", "TENSOR_NAME_TABLE", "SUPPORTED_ARCHITECTURES", "NONE", "UNSHIFT",
           "STACKED", "ROPE_FREQS"]

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
    tensors: dict[str, np.ndarray]  # (GGUFTensor with read_gguf(..., lazy=True))
    tokenizer_model: bytes
    metadata: dict[str, Any]


def read_gguf(path: str | os.PathLike[str], on_valid_header: Callable[[], None] | None = None,
              lazy: bool = False) -> GGUFCheckpoint:
    """Read a Gemma / 2 / 3 / 3n / 4 (text) GGUF file into HF-layout float32 tensors.

    Raises `GemmaRefError` for a missing, truncated or corrupt file, an architecture other than
    gemma / gemma2 / gemma3 / gemma3n / gemma4, a tensor type that cannot be dequantized, or a missing, unknown or
    mis-shaped tensor. `on_valid_header()` is called once the header has been parsed and every
    tensor found inside the file, before the slow part (vocabulary, dequantization).
    lazy: the tensors as GGUFTensor, dequantized block by block when used (the file stays
    open; NaN or Inf in the file is found then): converting a file this way holds one block
    of rows at a time, not the whole model in float32.
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
    config = build_config(lambda key, *default: _get(reader, path, key, *default), reader.tensors, path,
                          arch, len(vocab[0]))
    tokenizer_model = _build_tokenizer(path, *vocab, config)
    del vocab
    # The reader keeps a NumPy view per vocabulary entry (~0.7 GB for Gemma 3's 262k tokens).
    # They are no longer needed; dropping them before dequantizing lowers the peak memory.
    for key in [k for k in reader.fields if k.startswith("tokenizer.ggml.") and k.endswith(("tokens", "scores", "token_type", "merges"))]:
        del reader.fields[key]
    tensors = _read_tensors(reader, path, arch, config)
    if not lazy:
        tensors = {k: np.asarray(t) for k, t in tensors.items()}

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
    with open_file(path, ".gguf file", missing="no such file (expected a .gguf model file)") as fh:
        size = os.fstat(fh.fileno()).st_size
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


def _get(reader: gguf.GGUFReader, path: str, key: str, default: Any = REQUIRED) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is REQUIRED:
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
# Tensors
# --------------------------------------------------------------------------------------------


def _read_tensors(reader: gguf.GGUFReader, path: str, arch: str, config: dict[str, Any]) -> dict[str, np.ndarray]:
    expected = expected_tensors(arch, config["num_hidden_layers"])
    by_name = {t.name: t for t in reader.tensors if t.name != ROPE_FREQS}
    shapes = optional = None
    if arch in PLE_ARCHITECTURES:  # which of the table's tensors this file needs: from the config's layers
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
    missing = [name for name in expected if name not in by_name and name not in OPTIONAL_TENSORS
               and not (optional and expected[name][0] in optional)]
    if missing:
        raise GemmaRefError(
            f"{path}: missing tensor(s): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )

    # Find an unsupported tensor type before spending seconds on the others.
    wanted = [t for t in reader.tensors if t.name in by_name]
    for t in wanted:
        _check_dequantizable(t, path)

    tensors: dict[str, GGUFTensor] = {}
    for t in wanted:
        hf_key, transform = expected[t.name]
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        want = shapes[hf_key] if shapes is not None else expected_shape(hf_key, config)
        if shape != want:
            raise GemmaRefError(
                f"{path}: tensor {t.name!r} has shape {shape}, expected {want} for {hf_key} from the config"
            )
        tensor = GGUFTensor(t, path, shape, shift=transform == UNSHIFT and arch in SHIFTED)
        if transform == STACKED:  # [S - 1, D, D]: one tensor per matrix, each a range of rows
            tensors.update({hf_key.format(s=s): tensor.part(s) for s in range(shape[0])})
        elif arch == "gemma3n" and hf_key == "model.embed_tokens_per_layer.weight":
            tensors[hf_key] = tensor.first_rows(unpadded_rows(tensor.row_blocks(reverse=True)))
            config["vocab_size_per_layer_input"] = tensors[hf_key].shape[0]
        else:
            tensors[hf_key] = tensor
    return tensors


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
    """One weight of the file as float32, in its Hugging Face shape, with llama.cpp's changes
    undone: dequantized when it is used, a block of rows at a time.

    `write_to(f)` streams it into an open file (the conversion to safetensors, so that
    converting a big GGUF never holds more than one block in memory); NumPy sees it as the
    array (`np.asarray(t)`). rows [start, stop) of the file's tensor, taken as rows of
    `row_size` values: a stacked tensor's part, or a table without its padding.
    """

    t: Any  # gguf's ReaderTensor
    path: str
    shape: tuple[int, ...]
    shift: bool = False  # subtract 1: a norm that llama.cpp stores as 1 + w
    start: int = 0
    stop: int | None = None

    dtype = np.dtype(np.float32)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def _rows(self) -> np.ndarray:
        """The file's tensor as rows of raw blocks (or of values, for F32/F16)."""
        data = self.t.data  # NumPy shape = reversed(ne)
        return data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)

    def part(self, s: int) -> "GGUFTensor":
        """Matrix s of a stacked [S, r, c] tensor, as its own [r, c] tensor."""
        per = self.shape[1]
        return dataclasses.replace(self, shape=self.shape[1:], start=s * per, stop=(s + 1) * per)

    def first_rows(self, n: int) -> "GGUFTensor":
        return dataclasses.replace(self, shape=(n, *self.shape[1:]), stop=self.start + n)

    def row_blocks(self, reverse: bool = False):
        """(first row, float32 values [rows, row size]) of consecutive blocks of rows."""
        rows = self._rows()
        start, stop = self.start, len(rows) if self.stop is None else self.stop
        row_size = math.prod(int(n) for n in self.t.shape) // len(rows)  # values per row
        step = max(1, _CHUNK_ELEMENTS // max(1, row_size))
        starts = range(start, stop, step)
        for a in (reversed(starts) if reverse else starts):
            block = gguf.quants.dequantize(np.ascontiguousarray(rows[a:min(a + step, stop)]), self.t.tensor_type)
            block = block.reshape(min(a + step, stop) - a, -1)
            if self.shift:
                block = block - np.float32(1.0)  # (an F32 block is a view of the read-only file)
            if not np.isfinite(block).all():
                raise GemmaRefError(f"{self.path}: tensor {self.t.name!r} contains NaN or infinite values: "
                                    f"the file is corrupt")
            yield a, block

    def write_to(self, f) -> None:
        for _, block in self.row_blocks():
            block.tofile(f)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, np.float32)
        flat, done = out.reshape(-1), 0
        for _, block in self.row_blocks():
            flat[done:done + block.size] = block.reshape(-1)
            done += block.size
        return out if dtype is None else out.astype(dtype)


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
