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
from pathlib import Path

import ml_dtypes
import numpy as np

from .config import SLIDING, GemmaConfig
from .errors import GemmaRefError

# safetensors dtype tag -> NumPy dtype (bfloat16 comes from ml_dtypes).
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}

# Multimodal Gemma 3 checkpoints nest the text model. Hub files (older transformers)
# use the first spellings, transformers >= 5 the second. Text keys are renamed to
# the plain text-model keys; vision keys are skipped.
_PREFIXES = {
    "language_model.model.": "model.",
    "language_model.lm_head.": "lm_head.",
    "model.language_model.": "model.",
}
_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                    "model.multi_modal_projector.")


def expected_shapes(config: GemmaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the text model needs, with its shape ([out, in] for projections)."""
    D, F, H = config.hidden_size, config.intermediate_size, config.head_dim
    N, K = config.num_attention_heads, config.num_key_value_heads
    shapes = {"model.embed_tokens.weight": (config.vocab_size, D), "model.norm.weight": (D,)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (N * H, D),
            p + "self_attn.k_proj.weight": (K * H, D),
            p + "self_attn.v_proj.weight": (K * H, D),
            p + "self_attn.o_proj.weight": (D, N * H),
            p + "mlp.gate_proj.weight": (F, D),
            p + "mlp.up_proj.weight": (F, D),
            p + "mlp.down_proj.weight": (D, F),
            p + "input_layernorm.weight": (D,),
            p + "post_attention_layernorm.weight": (D,),
        })
        if config.sandwich_norms:
            shapes[p + "pre_feedforward_layernorm.weight"] = (D,)
            shapes[p + "post_feedforward_layernorm.weight"] = (D,)
        if config.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (H,)
            shapes[p + "self_attn.k_norm.weight"] = (H,)
    return shapes


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-map one .safetensors file: name -> read-only array (no copy).

    Format: 8-byte little-endian header length n, n bytes of JSON
    {name: {dtype, shape, data_offsets: [begin, end]}}, then the data.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise GemmaRefError(f"{path}: truncated or not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise GemmaRefError(f"{path}: not a safetensors file, or its header is corrupt")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise GemmaRefError(f"{path}: corrupt safetensors header (not JSON)") from None
    header.pop("__metadata__", None)
    data_start = 8 + n
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if data_start + end > size:
        raise GemmaRefError(
            f"{path}: truncated: the header describes {data_start + end} bytes, the file has "
            f"{size}; download it again")
    buf = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    arrays = {}
    for name, t in header.items():
        if t["dtype"] not in _DTYPES:
            raise GemmaRefError(f"{path}: tensor {name} has unsupported dtype {t['dtype']}")
        dtype = np.dtype(_DTYPES[t["dtype"]])
        b, e = t["data_offsets"]
        shape = tuple(t["shape"])
        if e - b != int(np.prod(shape)) * dtype.itemsize:
            raise GemmaRefError(f"{path}: tensor {name}: {e - b} bytes for shape {shape}, corrupt")
        arrays[name] = buf[data_start + b:data_start + e].view(dtype).reshape(shape)
    return arrays


def checkpoint_files(directory: Path) -> list[Path]:
    """The .safetensors files of a checkpoint directory (sharded via the index, or one)."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise GemmaRefError(f"{index}: corrupt index ({e})") from None
        files = [directory / f for f in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise GemmaRefError(f"{index} names shards that are missing: {', '.join(missing)}")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise GemmaRefError(f"{directory}: no *.safetensors weights found")
    return files


def load_safetensors_checkpoint(directory: Path, config: GemmaConfig,
                                max_memory: int | None = None, progress: bool = True):
    """Read and check a checkpoint directory: HF key -> array, in HF layout.

    Tensors already float32 stay memory-mapped. Narrower ones (bf16, f16) are
    widened to float32 while the total stays within `max_memory` bytes; the rest
    stay memory-mapped and are widened layer by layer as the forward pass uses
    them (see model.Weights), so a checkpoint larger than RAM in float32 still runs.
    """
    found: dict[str, tuple[np.ndarray, Path]] = {}
    skipped_vision = 0
    for path in checkpoint_files(directory):
        for name, array in read_safetensors(path).items():
            if name.startswith(_VISION_PREFIXES):
                skipped_vision += 1
                continue
            for old, new in _PREFIXES.items():
                if name.startswith(old):
                    name = new + name[len(old):]
                    break
            found[name] = (array, path)
    if skipped_vision:
        print(f"gemma-ref: text model only; ignoring {skipped_vision} vision-tower tensors",
              file=sys.stderr)
    # A stored output head is the embedding again (Gemma ties them); we use the embedding.
    found.pop("lm_head.weight", None)
    return check_and_widen(found, config, str(directory), max_memory, progress)


def check_and_widen(found: dict[str, tuple[np.ndarray, Path | str]], config: GemmaConfig,
                    source: str, max_memory: int | None, progress: bool) -> dict[str, np.ndarray]:
    """Strict check (missing / unexpected / mis-shaped), then widen within the budget."""
    expected = expected_shapes(config)
    missing = [n for n in expected if n not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise GemmaRefError(f"{source}: missing tensor {missing[0]}{more}")
    unexpected = [n for n in found if n not in expected]
    if unexpected:
        raise GemmaRefError(f"{source}: unexpected tensor {unexpected[0]} in {found[unexpected[0]][1]}")
    for name, shape in expected.items():
        array, path = found[name]
        if tuple(array.shape) != shape:
            raise GemmaRefError(
                f"{path}: tensor {name} has shape {tuple(array.shape)}, config.json implies {shape}")

    budget = default_max_memory() if max_memory is None else max_memory
    weights, used = {}, 0
    names = list(expected)
    bar = _progress(names, source, progress and any(found[n][0].dtype != np.float32 for n in names))
    for name in bar:
        array = found[name][0]
        need = array.size * 4
        if array.dtype != np.float32 and used + need <= budget:
            array = array.astype(np.float32)  # bf16/f16 -> f32 is exact
        used += need
        weights[name] = array
    return weights


def default_max_memory() -> int:
    """Bytes of float32 weights to hold in memory: 75% of what the machine has available."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return int(0.75 * info.get("MemAvailable", info["MemTotal"]))
    except (OSError, KeyError, ValueError):
        return 8 << 30


def _progress(items, source, enabled):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=f"loading {Path(source).name}", unit="tensor", file=sys.stderr,
                disable=os.environ.get("CI") == "true" or None, leave=False)


def cache_nbytes(config: GemmaConfig, max_len: int, batch: int = 1, dtype=np.float32) -> int:
    """Bytes a KV cache for `max_len` positions takes (keys, values and positions)."""
    per_slot = 2 * config.num_key_value_heads * config.head_dim * np.dtype(dtype).itemsize + 8
    slots = sum(min(config.sliding_window, max_len) if kind == SLIDING else max_len
                for kind in config.layer_types)
    return batch * slots * per_slot
