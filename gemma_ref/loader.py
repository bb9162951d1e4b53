"""Checkpoint loading: Hugging Face safetensors, memory-mapped and checked strictly.

Parameter names are the Hugging Face checkpoint keys of the text model
(`model.layers.0.self_attn.q_proj.weight`). The only renames are the key
prefixes of multimodal Gemma 3 checkpoints, listed in `_PREFIXES`.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from .config import GemmaConfig
from .errors import GemmaRefError
from .files import check_file, open_file, read_bytes
from .weights import ROW_TABLES

# safetensors dtype tag -> NumPy dtype (bfloat16 comes from ml_dtypes).
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
           "I64": np.int64}  # I64: an index buffer (a Gemma 4 assistant's token_ordering)

# Multimodal Gemma 3 and 4 checkpoints nest the text model. Hub files (older
# transformers) use the first spellings, transformers >= 5 the second. Text keys are
# renamed to the plain text-model keys; Gemma 3's vision keys as
# vision.VISION_KEY_PREFIXES says (kept when the caller loads the vision tower);
# other vision and audio keys are skipped.
_PREFIXES = {
    "language_model.model.": "model.",
    "language_model.lm_head.": "lm_head.",
    "model.language_model.": "model.",
}
_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                    "model.multi_modal_projector.", "model.embed_vision.", "model.audio_tower.",
                    "model.embed_audio.")
# weights.ROW_TABLES, read a few rows at a time (the rows of the tokens in a step), never
# whole, stay memory-mapped in their stored dtype, outside the float32 budget.


def expected_shapes(config: GemmaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the text model needs, with its shape ([out, in] for projections)."""
    D, N, L = config.hidden_size, config.num_attention_heads, config.num_hidden_layers
    P = config.hidden_size_per_layer_input  # 0: no per-layer embeddings
    shapes = {"model.embed_tokens.weight": (config.vocab_size, D), "model.norm.weight": (D,)}
    if P:  # Gemma 4 per-layer embeddings
        shapes["model.embed_tokens_per_layer.weight"] = (config.vocab_size_per_layer_input, L * P)
        shapes["model.per_layer_model_projection.weight"] = (L * P, D)
        shapes["model.per_layer_projection_norm.weight"] = (P,)
    for i, s in enumerate(config.layers):
        p = f"model.layers.{i}."
        H, K, F = s.head_dim, s.num_key_value_heads, s.intermediate_size
        shapes.update({
            p + "self_attn.q_proj.weight": (N * H, D),
            p + "self_attn.o_proj.weight": (D, N * H),
            p + "mlp.gate_proj.weight": (F, D),
            p + "mlp.up_proj.weight": (F, D),
            p + "mlp.down_proj.weight": (D, F),
            p + "input_layernorm.weight": (D,),
        })
        # post_attention_layernorm: after attention (Gemma 2+), or before the MLP (Gemma 1)
        if config.sandwich_norms or config.mlp_input_norm == "post_attention_layernorm":
            shapes[p + "post_attention_layernorm.weight"] = (D,)
        if s.kv_source == i:  # a layer sharing another's keys and values has no k/v weights
            shapes[p + "self_attn.k_proj.weight"] = (K * H, D)
            if s.v_proj:
                shapes[p + "self_attn.v_proj.weight"] = (K * H, D)
        if config.mlp_input_norm == "pre_feedforward_layernorm":  # Gemma 2+, VaultGemma
            shapes[p + "pre_feedforward_layernorm.weight"] = (D,)
        if config.sandwich_norms:  # the norm on the MLP's output
            shapes[p + "post_feedforward_layernorm.weight"] = (D,)
        if config.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (H,)
            if s.kv_source == i:
                shapes[p + "self_attn.k_norm.weight"] = (H,)
        if config.layer_scalar:
            shapes[p + "layer_scalar"] = (1,)
        if P:
            shapes[p + "per_layer_input_gate.weight"] = (P, D)
            shapes[p + "per_layer_projection.weight"] = (D, P)
            shapes[p + "post_per_layer_input_norm.weight"] = (D,)
        if config.altup_num_inputs:  # Gemma 3n
            S = config.altup_num_inputs
            shapes.update({
                p + "altup.correct_output_scale": (D,),
                p + "altup.correction_coefs.weight": (S, S),
                p + "altup.prediction_coefs.weight": (S * S, S),
                p + "altup.modality_router.weight": (S, D),
                p + "altup.router_norm.weight": (D,),
            })
        if config.laurel_rank:  # Gemma 3n
            shapes.update({
                p + "laurel.linear_left.weight": (config.laurel_rank, D),
                p + "laurel.linear_right.weight": (D, config.laurel_rank),
                p + "laurel.post_laurel_norm.weight": (D,),
            })
        if config.enable_moe_block:
            E, Fm = config.num_experts, config.moe_intermediate_size
            shapes.update({
                p + "router.proj.weight": (E, D),
                p + "router.scale": (D,),
                p + "router.per_expert_scale": (E,),
                p + "experts.gate_up_proj": (E, 2 * Fm, D),  # gate and up, fused
                p + "experts.down_proj": (E, D, Fm),
                p + "pre_feedforward_layernorm_2.weight": (D,),
                p + "post_feedforward_layernorm_1.weight": (D,),
                p + "post_feedforward_layernorm_2.weight": (D,),
            })
    for j in range(1, config.altup_num_inputs):  # Gemma 3n: the AltUp streams in and out
        shapes[f"model.altup_projections.{j - 1}.weight"] = (D, D)
        shapes[f"model.altup_unembed_projections.{j - 1}.weight"] = (D, D)
    return shapes


def unused_shapes(config: GemmaConfig) -> set[str]:
    """Tensors a checkpoint may hold that the model does not use, skipped at load.

    Gemma 3n and 4 Hub checkpoints keep k/v weights for the layers that share another
    layer's keys and values (transformers ignores them too).
    """
    return {f"model.layers.{i}.self_attn.{name}.weight"
            for i, s in enumerate(config.layers) if s.kv_source != i
            for name in ("k_proj", "v_proj", "k_norm", "v_norm")}


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor lies in a .safetensors file."""

    path: Path
    offset: int  # byte offset of its data in the file
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def read(self) -> np.ndarray:
        """A private float32 copy in RAM (plain reads: no mapping, so RSS holds it once)."""
        a = np.fromfile(self.path, dtype=self.dtype, count=self.size, offset=self.offset)
        return a.reshape(self.shape).astype(np.float32, copy=False)  # bf16/f16 -> f32 is exact

    def read_stored(self) -> np.ndarray:
        """A private copy in RAM in the stored dtype (bf16 stays bf16: half of float32)."""
        return np.fromfile(self.path, dtype=self.dtype, count=self.size, offset=self.offset).reshape(self.shape)

    def memmap(self) -> np.ndarray:
        """The tensor as a read-only memory map, in its stored dtype (nothing read yet)."""
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)

    def __getitem__(self, index) -> np.ndarray:
        """Some rows (t[ids], t[expert]), read through a memory map, in the stored dtype."""
        return self.memmap()[index]

    def __array__(self, dtype=None, copy=None):
        """np.asarray(t) reads it: a tensor left on disk is read (from the page cache,
        which is not this process's memory) each time the forward pass uses it."""
        a = self.read()
        return a if dtype is None else a.astype(dtype, copy=False)


def read_safetensors(path: Path) -> dict[str, StoredTensor]:
    """The tensors of one .safetensors file, its header checked against the format and the file.

    Format: 8-byte little-endian header length n, n bytes of JSON
    {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the
    data. Every entry must have a known dtype, a shape of non-negative integers and
    offsets inside the data that fit the shape and overlap no other tensor's.
    """
    with open_file(path, ".safetensors file", missing="no such file") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise GemmaRefError(f"{path}: truncated or not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise GemmaRefError(f"{path}: not a safetensors file, or its header is corrupt")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GemmaRefError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise GemmaRefError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, "
                            f"not an object)")
    if not isinstance(header.pop("__metadata__", {}), dict):
        raise GemmaRefError(f"{path}: corrupt safetensors header (__metadata__ is not an object)")
    data_start, data_size = 8 + n, size - 8 - n
    tensors, spans = {}, []
    for name, t in header.items():
        dtype, shape, (b, e) = _header_entry(path, name, t)
        if e > data_size:
            raise GemmaRefError(
                f"{path}: truncated: tensor {name} ends at byte {data_start + e}, the file has "
                f"{size}; download it again")
        if e - b != int(np.prod(shape)) * dtype.itemsize:
            raise GemmaRefError(f"{path}: tensor {name}: {e - b} bytes for shape {shape}, corrupt")
        tensors[name] = StoredTensor(path, data_start + b, dtype, shape)
        spans.append((b, e, name))
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise GemmaRefError(f"{path}: corrupt safetensors header: tensors {first} and {second} "
                                f"overlap")
    return tensors


def _header_entry(path: Path, name: str, t) -> tuple[np.dtype, tuple[int, ...], tuple[int, int]]:
    """(dtype, shape, (begin, end)) of one header entry, each checked for its type."""
    def bad(what):
        return GemmaRefError(f"{path}: corrupt safetensors header: tensor {name}: {what}")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(t, dict):
        raise bad("its entry is not an object")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in t:
            raise bad(f"no '{key}'")
    if not isinstance(t["dtype"], str) or t["dtype"] not in _DTYPES:
        raise GemmaRefError(f"{path}: tensor {name} has unsupported dtype {t['dtype']!r} "
                            f"(supported: {', '.join(_DTYPES)})")
    shape, offsets = t["shape"], t["data_offsets"]
    if not isinstance(shape, list) or not all(is_int(d) for d in shape):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise bad(f"data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end")
    return np.dtype(_DTYPES[t["dtype"]]), tuple(shape), (offsets[0], offsets[1])


def write_safetensors(path: Path, tensors: dict) -> None:
    """Write float32 tensors as .safetensors, one tensor at a time (no second full copy);
    a tensor with `write_to(file)` (gguf.GGUFTensor) writes itself, a block at a time."""
    header, offset = {}, 0
    for name, a in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.size * 4]}
        offset += a.size * 4
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)  # data 8-byte aligned, as the format recommends
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for a in tensors.values():
            if hasattr(a, "write_to"):
                a.write_to(f)
            else:
                np.ascontiguousarray(a, dtype=np.float32).tofile(f)
    os.replace(tmp, path)


def checkpoint_files(directory: Path) -> list[Path]:
    """The .safetensors files of a checkpoint directory (sharded via the index, or one)."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(read_bytes(index).decode("utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise GemmaRefError(f"{index}: corrupt index (no JSON object with a 'weight_map': "
                                f"{type(e).__name__})") from None
        if not isinstance(weight_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in weight_map.items()):
            raise GemmaRefError(f"{index}: corrupt index: 'weight_map' must be an object "
                                f"{{tensor name: file name}}")
        files = [directory / f for f in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise GemmaRefError(f"{index} names shards that are missing: {', '.join(missing)}")
    else:
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise GemmaRefError(f"{directory}: no *.safetensors weights found")
    return [check_file(f, ".safetensors file") for f in files]


def load_safetensors_checkpoint(directory: Path, config: GemmaConfig,
                                max_memory: int | None = None, progress: bool = True,
                                vision=None, outer_prefixes: dict[str, str] | None = None, audio=None):
    """Read and check a checkpoint directory: HF key -> array, in HF layout.

    Tensors are held float32 in RAM, in their stored dtype in RAM, or memory-mapped,
    within `max_memory` bytes (plan_tiers says which), so a checkpoint larger than RAM
    as float32, or at all, still runs (see weights.Weights and parallel.widen_into).
    vision: a vision.VisionConfig to load (and check) the vision tower and projector too.
    outer_prefixes: a family's wrapper prefixes, old -> new, the first match replaced before
    anything else (ShieldGemma 2 nests a whole Gemma 3 checkpoint under "model.").
    audio: an audio.AudioConfig to load (and check) the audio tower and its embedder too,
    as `audio_tower.*` and `embed_audio.*`.
    """
    found: dict[str, StoredTensor] = {}
    skipped_vision = 0
    for path in checkpoint_files(directory):
        for name, tensor in read_safetensors(path).items():
            for old, new in (outer_prefixes or {}).items():
                if name.startswith(old):
                    name = new + name[len(old):]
                    break
            if audio is not None and name.startswith(("model.audio_tower.", "model.embed_audio.")):
                found[name[len("model."):]] = tensor
                continue
            if name.startswith(_VISION_PREFIXES):
                if vision is None:
                    skipped_vision += 1
                    continue
                from .vision import VISION_KEY_PREFIXES

                old = next((p for p in VISION_KEY_PREFIXES if name.startswith(p)), None)
                if old is None:  # not Gemma 3's tower (e.g. an audio tower)
                    skipped_vision += 1
                    continue
                found[VISION_KEY_PREFIXES[old] + name[len(old):]] = tensor
                continue
            for old, new in _PREFIXES.items():
                if name.startswith(old):
                    name = new + name[len(old):]
                    break
            if name in found:
                raise GemmaRefError(f"{directory}: tensor {name} is stored twice ({found[name].path.name} "
                                    f"and {path.name})")
            found[name] = tensor
    if skipped_vision:
        runs = " and ".join(["text"] + ["images"] * (vision is not None) + ["audio"] * (audio is not None))
        print(f"gemma-ref: {runs} only; ignoring {skipped_vision} vision/audio tensors (of towers not run)",
              file=sys.stderr)
    # A stored output head is the embedding again (Gemma ties them); we use the embedding.
    found.pop("lm_head.weight", None)
    extra = {}
    if vision is not None:
        extra = vision.expected_shapes(config.hidden_size)
    if audio is not None:
        extra = {**extra, **audio.expected_shapes()}
    return check_and_widen(found, config, str(directory), max_memory, progress, extra)


def check_and_widen(found: dict[str, StoredTensor | np.ndarray], config: GemmaConfig,
                    source: str, max_memory: int | None, progress: bool,
                    extra_shapes: dict | None = None) -> dict[str, np.ndarray]:
    """Strict check (missing / unexpected / mis-shaped), then load within the budget.

    Each tensor is then held as plan_tiers says: float32 in RAM, in its stored dtype
    in RAM, or memory-mapped (a StoredTensor record, mapped as used).
    """
    expected = {**expected_shapes(config), **(extra_shapes or {})}  # + the vision tower's
    found = {n: t for n, t in found.items() if n not in unused_shapes(config)}
    return hold_checked(found, expected, source, max_memory, progress)


def hold_checked(found: dict[str, StoredTensor | np.ndarray], expected: dict[str, tuple[int, ...]],
                 source: str, max_memory: int | None, progress: bool) -> dict[str, np.ndarray]:
    """check_and_widen for any architecture: `found` must hold exactly the tensors of
    `expected` (name -> shape), each then held in its tier (plan_tiers)."""
    missing = [n for n in expected if n not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise GemmaRefError(f"{source}: missing tensor {missing[0]}{more}")
    unexpected = [n for n in found if n not in expected]
    if unexpected:
        raise GemmaRefError(f"{source}: unexpected tensor {unexpected[0]} in {_where(found[unexpected[0]], source)}")
    for name, shape in expected.items():
        if tuple(found[name].shape) != shape:
            raise GemmaRefError(f"{_where(found[name], source)}: tensor {name} has shape "
                                f"{tuple(found[name].shape)}, config.json implies {shape}")

    weights = {}
    for name, t, how in _progress(plan_tiers(found, expected, max_memory), source, progress):
        if how == FLOAT32:
            weights[name] = t if isinstance(t, np.ndarray) else t.read()
        elif how == STORED:
            weights[name] = t if isinstance(t, np.ndarray) else t.read_stored()
        else:  # MAPPED (and the row tables)
            weights[name] = t.memmap() if name in ROW_TABLES and isinstance(t, StoredTensor) else t
        if name not in ROW_TABLES:
            check_finite(name, weights[name], _where(t, source))
    return weights


# Where each tensor lives (the tiers), best first:
FLOAT32 = "float32 in RAM"  # widened once at load; products read 4 bytes a value
STORED = "stored dtype in RAM"  # bf16/f16 read as they are, widened block by block as used
MAPPED = "memory-mapped"  # left in the file (page cache), widened block by block as used


def plan_tiers(found: dict, expected: dict, max_memory: int | None) -> list:
    """[(name, tensor, tier)] for the tensors of `expected`, in that order.

    The budget is `max_memory` bytes of RAM for weights (default: 85% of the available
    memory, default_max_memory). Chosen for the whole checkpoint:
    1. FLOAT32 for everything, when all of it fits as float32 (Gemma 3 270M to 4B on a
       24 GB machine; every float32 checkpoint that fits).
    2. Else STORED: the narrow (bf16, f16) matrices held in RAM as stored, the rest
       (float32 tensors, and vectors: norms, scalars) as float32, while that fits: Gemma 7B in bf16
       (17 GB, 34 GB as float32) on a 24 GB machine. Each weight then crosses main
       memory once per token at 2 bytes; nothing is re-read from disk.
    3. What does not fit even so stays MAPPED, read through the page cache as used
       (Gemma 3 27B in bf16, 54 GB): as fast as the disk, once the cache is full.
    Row tables (ROW_TABLES) are always mapped, outside the budget.
    """
    budget = default_max_memory() if max_memory is None else max_memory
    names = [n for n in expected if n not in ROW_TABLES]
    sizes = {n: int(np.prod(found[n].shape)) for n in names}

    def narrow(n):
        return np.dtype(found[n].dtype).itemsize < 4 and len(found[n].shape) >= 2

    def stored_bytes(n):
        return sizes[n] * (np.dtype(found[n].dtype).itemsize if narrow(n) else 4)

    if sum(4 * sizes[n] for n in names) <= budget:
        tiers = {n: FLOAT32 for n in names}
    else:
        tiers, used = {}, 0
        for n in names:
            used += stored_bytes(n)
            tiers[n] = MAPPED if used > budget else STORED if narrow(n) else FLOAT32
    return [(n, found[n], tiers.get(n, MAPPED)) for n in expected]


# Scalars that clamp a projection's input and output: a model never given bounds stores +-Inf.
CLAMP_BOUNDS = (".input_min", ".input_max", ".output_min", ".output_max")


def check_finite(name: str, t: np.ndarray | StoredTensor, where: str) -> None:
    """Refuse a tensor holding NaN or Inf (it would make every logit NaN), naming it.

    One float32 sum per tensor, at load: a sum is finite exactly when every element is
    (NaN propagates, Inf stays Inf or becomes NaN), unless finite values overflow, which
    the exact test below then rules out. ~0.1 s for Gemma 3 270M's 1.1 GB. A tensor left
    on disk is summed in blocks, once, so RAM holds one block at a time.
    """
    if t.size == 0:
        return
    if name.endswith(CLAMP_BOUNDS):  # +-Inf is "no bound" (Gemma 4's clippable linears); NaN is not
        if np.isnan(np.asarray(t.memmap() if isinstance(t, StoredTensor) else t, np.float32)).any():
            raise GemmaRefError(f"{where}: tensor {name} holds NaN; the file is corrupt")
        return
    if isinstance(t, StoredTensor) or t.dtype != np.float32:  # in blocks, widened (bits exact)
        from .parallel import widen_into

        flat = (t.memmap() if isinstance(t, StoredTensor) else t).reshape(-1)
        step = 1 << 22
        buf = np.empty(min(step, t.size), np.float32)
        blocks = ((i, widen_into(flat[i:i + step], buf[:flat[i:i + step].size])
                   if flat.dtype.itemsize == 2 else flat[i:i + step].astype(np.float32))
                  for i in range(0, t.size, step))
    else:
        blocks = ((0, t.reshape(-1)),)
    for start, block in blocks:
        if not np.isfinite(np.add.reduce(block)) and not np.isfinite(block).all():
            i = int(np.flatnonzero(~np.isfinite(block))[0])
            raise GemmaRefError(f"{where}: tensor {name} holds NaN or Inf values (element "
                                f"{start + i} is {block[i]}); the file is corrupt")


def _where(t, source: str) -> str:
    return str(t.path) if isinstance(t, StoredTensor) else source


def gguf_as_checkpoint(path: Path, progress: bool = True) -> Path:
    """A Hugging Face-layout float32 checkpoint directory made from a GGUF file, once.

    Reading a GGUF (the `gguf` package parses its 262k-token vocabulary into Python
    objects, then dequantizes every block) takes tens of seconds; the result is
    written to gemma-ref's cache ($XDG_CACHE_HOME/gemma_ref/gguf/<sha256[:16]>/), keyed
    by the file's content, so later loads take well under a second. Safe with many
    processes at once (one converts, the others wait for it) and when interrupted
    (see cache.py).
    """
    from . import __version__, cache
    from .gguf import read_gguf

    directory = cache.cache_dir() / "gguf" / cache.content_hash(path)[:16]
    if (directory / "source.json").exists():  # converted before (the cache may be read-only now)
        return directory
    root = cache.writable("gguf")  # before the slow read: a cache we cannot fill is an error now
    with cache.locked(root):
        if (directory / "source.json").exists():  # another process converted it meanwhile
            return directory
        cache.remove_stale(root)
        def announce():
            if progress:
                print(f"gemma-ref: converting {path.name} to float32 (once, into {directory})",
                      file=sys.stderr)

        tmp = cache.temporary(directory)
        try:
            # A broken file: only the error is printed. lazy: each tensor is dequantized
            # as it is written, a block of rows at a time (a big GGUF never in RAM as float32).
            ckpt = read_gguf(path, on_valid_header=announce, lazy=True)
            tmp.mkdir()
            (tmp / "config.json").write_text(json.dumps(ckpt.config, indent=1))
            (tmp / "tokenizer.model").write_bytes(ckpt.tokenizer_model)
            write_safetensors(tmp / "model.safetensors", ckpt.tensors)
            st = path.stat()
            (tmp / "source.json").write_text(json.dumps(
                {"gguf": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                 "gemma_ref": __version__, "metadata": ckpt.metadata}, indent=1, default=str))
            if directory.exists():  # half-written by an older gemma-ref that had no lock
                cache.remove(directory)
            os.replace(tmp, directory)
        except OSError as e:
            raise GemmaRefError(f"cannot write the conversion of {path.name} into {root} "
                                f"({e.strerror or e}); free space, or set XDG_CACHE_HOME") from None
        finally:  # also on Ctrl-C: leave nothing half-written behind
            if tmp.exists():
                cache.remove(tmp)
    return directory


def default_max_memory() -> int:
    """Bytes of RAM to hold weights in by default: 85% of the available memory."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return int(0.85 * info.get("MemAvailable", info["MemTotal"]))
    except (OSError, KeyError, ValueError):
        return 8 << 30


def _progress(items, source, enabled):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=f"loading {Path(source).name}", unit="tensor", file=sys.stderr,
                disable=None, leave=False)  # None: shown only on a terminal
