"""Reference tooling: golden dumps and their layer-by-layer comparison.

A golden file is one .npz (format documented in docs/REFERENCE.md), written by
`gemma-ref dump` or by any other engine (scripts/dump_transformers.py writes it
from Hugging Face transformers). Per prompt i it holds the token ids, the logits
(full, or the top k), the hidden states in transformers' `output_hidden_states`
convention, a greedy continuation and, optionally, every traced intermediate.

`compare` lines two such dumps up, per layer and position, and finds the first
place where they part by more than the tolerance. Axis legend as in model.py:
T positions, D hidden, V vocab, L layers, k top-k width.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import sha256
from . import files
from .errors import GemmaRefError

FORMAT = "gemma-ref-golden/1"
# Default tolerance of `compare` (relative error, see row_errors). Gemma 3 270M, prompts up
# to 636 tokens: float32 gemma-ref and transformers stay below 1e-4 from float64, while
# each bug injected in docs/REFERENCE.md exceeds 1e-3 at its layer.
RTOL = 1e-3
# traced per image (Gemma 4's vision_tower and embed_vision: per soft token), not per position
VISION_TRACE = ("vision_tower", "multi_modal_projector", "embed_vision")
AUDIO_TRACE = ("audio_tower", "embed_audio")  # [clips, T', ...]


# --- one prompt's dump -----------------------------------------------------------


@dataclass
class PromptDump:
    """What one engine computed for one prompt (arrays without a batch axis)."""

    input_ids: np.ndarray  # [T] int64
    hidden_states: np.ndarray | None = None  # [L+1, T, D]; 0 = embeddings, L = after final norm
    logits: np.ndarray | None = None  # [T, V], or None when only the top k are kept
    topk_ids: np.ndarray | None = None  # [T, k] int64, most likely first
    topk_logits: np.ndarray | None = None  # [T, k]
    greedy_ids: np.ndarray | None = None  # [G] int64, the continuation only
    trace: dict[str, np.ndarray] = field(default_factory=dict)  # HF name -> [T, ...] (vision: [I, ...])
    text: str | None = None  # the prompt text, when it was given as text
    pixel_values: np.ndarray | None = None  # [I, 3, S, S] the prompt's preprocessed images (Gemma 4: [I, n, 3p^2])
    image_position_ids: np.ndarray | None = None  # Gemma 4: [I, n, 2] patch (x, y), -1 for padding
    positions: np.ndarray | None = None  # [P] the positions logits/topk rows hold; None: all T
    input_features: np.ndarray | None = None  # [I, F, M] the prompt's clips' log-mel features (Gemma 4 audio)
    input_features_mask: np.ndarray | None = None  # [I, F] bool, False for padded frames
    # Encoder-decoders (t5gemma.py): input_ids go to the encoder; logits, hidden_states and
    # the model.decoder.* / lm_head traces are per decoder position (U of them).
    decoder_input_ids: np.ndarray | None = None  # [U] int64, the decoder start token first
    encoder_hidden_states: np.ndarray | None = None  # [Le+1, T, De], as hidden_states

    @property
    def rows(self) -> int:
        """Positions of logits and hidden_states: T, or an encoder-decoder's U."""
        return len(self.input_ids if self.decoder_input_ids is None else self.decoder_input_ids)


@dataclass
class Golden:
    prompts: list[PromptDump]
    provenance: dict
    source: str = ""  # the file it was read from, or a description


def hidden_states(trace: dict, num_layers: int, prefix: str = "model.") -> np.ndarray:
    """transformers' `output_hidden_states`, from a gemma-ref trace.   -> [L+1, B, T, D]

    Entry 0 is the scaled embedding (the input of layer 0), entry j the output of
    layer j-1, and entry L is *not* the raw output of the last layer but the final
    RMSNorm's output: transformers replaces its last captured state by
    `last_hidden_state` (utils/output_capturing.py, `tie_last_hidden_states`).

    Gemma 3n (AltUp): transformers records each layer's output, all S streams, and does
    not replace the last one. Entry 0 is then the streams made from the embedding, entry
    j the streams after layer j-1 (L included), the S streams side by side: [..., S*D].
    prefix: an encoder-decoder's stack, "model.encoder." or "model.decoder.".
    """
    if "model.altup_projections" in trace:
        names = ["model.altup_projections"] + [f"model.layers.{i}" for i in range(num_layers)]
        return np.stack([np.concatenate(list(trace[n]), axis=-1) for n in names])  # [L+1, B, T, S*D]
    first = prefix + ("inputs_embeds" if prefix + "inputs_embeds" in trace else "embed_tokens")  # images merged
    last = prefix + ("final_norm" if prefix + "final_norm" in trace else "norm")  # RecurrentGemma's name
    names = [first] + [f"{prefix}layers.{i}" for i in range(num_layers - 1)] + [last]
    return np.stack([trace[n] for n in names])


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest logits per position, largest first.   [T, V] -> [T, k] ids, [T, k] values"""
    ids = np.argsort(-logits, axis=-1, kind="stable")[:, :k]  # ties: lowest id first
    return ids.astype(np.int64), np.take_along_axis(logits, ids, axis=-1)


def dump_prompt(model, ids, *, k: int = 0, max_new_tokens: int = 16, trace: bool = False,
                text: str | None = None, pixel_values=None, image_position_ids=None,
                decoder_input_ids=None, input_features=None, input_features_mask=None) -> PromptDump:
    """Run `model` on one prompt and keep what a golden file holds. k = 0: full logits.
    pixel_values [I, 3, S, S]: the images of the prompt's image blocks; Gemma 4:
    [I, n, 3p^2] with image_position_ids [I, n, 2] (transformers' processor layout).
    input_features [I, F, M] and input_features_mask [I, F]: the clips of its audio blocks
    (the processor's layout). A family that dumps itself (an encoder-decoder: its
    decoder_input_ids) does so."""
    if hasattr(model, "dump_prompt"):
        return model.dump_prompt(ids, k=k, max_new_tokens=max_new_tokens, trace=trace, text=text,
                                 pixel_values=pixel_values, decoder_input_ids=decoder_input_ids)
    ids = np.asarray(ids, np.int64)
    t: dict = {}
    images = pixel_values if image_position_ids is None else {
        "pixel_values": pixel_values, "image_position_ids": image_position_ids}
    # audio only when the prompt has clips (a model without an audio path takes no such argument)
    sound = {} if input_features is None else {"audio": {"input_features": input_features,
                                                         "input_features_mask": input_features_mask}}
    logits = model.forward(ids, images=images, trace=t, **sound)  # [T, V]
    d = PromptDump(input_ids=ids, hidden_states=hidden_states(t, model.config.num_hidden_layers)[:, 0],
                   text=text, pixel_values=pixel_values, image_position_ids=image_position_ids,
                   input_features=input_features, input_features_mask=input_features_mask)
    if k:
        d.topk_ids, d.topk_logits = top_k(logits, k)
    else:
        d.logits = logits
    if max_new_tokens:
        d.greedy_ids = np.array(model.generate(ids.tolist(), images=images, max_new_tokens=max_new_tokens,
                                               stop=[], **sound), np.int64)
    if trace:
        streams = model.config.altup_num_inputs and _streams_names(model.config.num_hidden_layers)

        def unbatched(name, value):
            if name.startswith(VISION_TRACE + AUDIO_TRACE):  # a tower's first axis is the image / clip
                return value
            if streams and (name in streams or name.endswith((".altup.predict", ".altup.correct"))):
                return value[:, 0].swapaxes(0, 1)  # AltUp streams [S, 1, T, D] -> [T, S, D]
            if name.endswith(FLAT_TRACES):  # the MoE path's tokens, flat: [1*T, D] is already [T, D]
                return value
            return value[0]  # [1, T, ...] -> [T, ...]

        d.trace = {name: unbatched(name, value) for name, value in t.items()}
    return d


# Trace entries recorded over the batch's tokens flattened, [B*T, D] (model.moe_block)
FLAT_TRACES = (".pre_feedforward_layernorm_2", ".experts")


def _streams_names(num_layers: int) -> set[str]:
    """Trace entries of an AltUp model that hold all the streams [S, B, T, D]."""
    return {"model.altup_projections"} | {f"model.layers.{i}" for i in range(num_layers)}


def dump(model, prompts: list, *, k: int = 0, max_new_tokens: int = 16,
         trace: bool = False) -> Golden:
    """A golden for a list of prompts (strings, lists of token ids, or
    {"prompt": text, "images": [files], "audio": [files]} for image-text and audio-text models)."""
    if not prompts:
        raise GemmaRefError("dump: no prompts (give --prompt TEXT or --prompts FILE.jsonl)")
    if k < 0 or max_new_tokens < 0:
        raise GemmaRefError("dump: --top-k and --max-new-tokens must be >= 0")
    out = []
    for p in prompts:
        pixels = positions = features = masks = None
        if isinstance(p, dict):  # a prompt with images and/or audio
            pixels, positions = _pixels(model, p.get("images", []))
            features, masks = _features(model, p.get("audio", []))
            ids = model.prompt_inputs(p["prompt"], p.get("images", []), p.get("audio", []))[0]
            p = p["prompt"]
        else:
            ids = model._prompt_ids(p)
        out.append(dump_prompt(model, ids, k=k, max_new_tokens=max_new_tokens, trace=trace,
                               text=p if isinstance(p, str) else None, pixel_values=pixels,
                               image_position_ids=positions, input_features=features,
                               input_features_mask=masks))
    return Golden(out, provenance(model), source=model.source)


def _pixels(model, images):
    """The images preprocessed as transformers' processor outputs them: Gemma 3 pixel_values
    [I, 3, S, S] (and None); Gemma 4 pixel_values [I, n, 3p^2] and image_position_ids [I, n, 2]."""
    from . import vision, vision_gemma4

    if not images:
        return None, None
    model._check_images(images)
    p = model._preprocessing()
    if isinstance(p, vision_gemma4.Gemma4Preprocessing):
        # the model's own cut (12B Unified: its k x k merged model patches), as embed_images makes
        patches = [model.vision.preprocess(image, p, f"image {k + 1}") for k, image in enumerate(images)]
        return vision_gemma4.pad_patches(patches, max(vision_gemma4.max_patches(p), *(len(x) for x, _ in patches)))
    return vision.preprocess(images, p)[0], None


def _features(model, clips):
    """The clips' features as transformers' processor outputs them: input_features [I, F, M]
    padded with zeros to the longest, and input_features_mask [I, F]; (None, None) without."""
    if not clips:
        return None, None
    seam = model._audio()
    pairs = seam.batch_features(clips)
    F, M = max(len(f) for f, _ in pairs), seam.features.feature_size
    features, masks = np.zeros((len(pairs), F, M), np.float32), np.zeros((len(pairs), F), bool)
    for k, (f, m) in enumerate(pairs):
        features[k, :len(f)], masks[k, :len(m)] = f, m
    return features, masks


def read_prompts(path: str | Path) -> list:
    """Prompts from a .jsonl file: one per line, a string, {"prompt": text} or {"input_ids": [...]};
    {"prompt": text, "images": [files]} for image-text models (relative to the file)."""
    from .tokenizer import decode_utf8

    path = Path(path)
    lines = decode_utf8(files.read_bytes(path, "prompts file", pipes=True), str(path)).splitlines()
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise GemmaRefError(f"{path}:{n}: not a JSON line") from None
        if isinstance(item, dict) and (item.get("images") or item.get("audio")) and isinstance(item.get("prompt"), str):
            prompts.append({"prompt": item["prompt"],
                            "images": [str(path.parent / f) for f in item.get("images") or []],
                            "audio": [str(path.parent / f) for f in item.get("audio") or []]})
            continue
        if isinstance(item, dict):
            item = item.get("prompt", item.get("text", item.get("input_ids")))
        if not (isinstance(item, str) or (isinstance(item, list) and all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in item))):
            raise GemmaRefError(f'{path}:{n}: expected a string, {{"prompt": "..."}} or '
                                f'{{"input_ids": [non-negative integers]}}')
        if isinstance(item, list) and not item:
            raise GemmaRefError(f'{path}:{n}: empty input_ids (a prompt needs at least <bos>)')
        prompts.append(item)
    if not prompts:
        raise GemmaRefError(f"{path}: empty prompts file (no prompt in it)")
    return prompts


# --- provenance ---------------------------------------------------------------------


def provenance(model) -> dict:
    """Who computed a dump, from what: versions, model source, file hashes, dtype."""
    from . import __version__

    return {
        "engine": "gemma-ref", "engine_version": __version__, "numpy": np.__version__,
        "python": platform.python_version(), "model": model.source,
        "model_type": model.config.model_type, "files": file_hashes(model.source),
        "dtype": str(model.dtype),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def file_hashes(source: str) -> dict[str, str]:
    """sha256 of the files a checkpoint is read from (a .gguf, or a directory's files)."""
    path = Path(source)
    if not path.exists():
        from . import hub

        try:
            path = hub.resolve(source)
        except GemmaRefError:
            return {}
    paths = [path] if path.is_file() else sorted(
        f for pattern in ("*.json", "*.safetensors", "tokenizer.model") for f in path.glob(pattern))
    return {f.name: sha256(f) for f in paths}


# --- the file ------------------------------------------------------------------------


def save(golden: Golden, path: str | Path):
    """Write a golden .npz (uncompressed: float logits hardly compress)."""
    arrays = {"format": np.array(FORMAT), "provenance": np.array(json.dumps(golden.provenance)),
              "num_prompts": np.array(len(golden.prompts), np.int64)}
    for i, d in enumerate(golden.prompts):
        p = f"prompt_{i}/"
        arrays[p + "input_ids"] = np.asarray(d.input_ids, np.int64)
        if d.text is not None:
            arrays[p + "text"] = np.array(d.text)
        for name in ("hidden_states", "logits", "topk_ids", "topk_logits", "greedy_ids",
                     "pixel_values", "image_position_ids", "positions", "decoder_input_ids",
                     "encoder_hidden_states", "input_features", "input_features_mask"):
            if getattr(d, name) is not None:
                arrays[p + name] = getattr(d, name)
        for name, value in d.trace.items():
            arrays[p + "trace/" + name] = value
    try:
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    except OSError as e:
        raise GemmaRefError(f"{path}: cannot write ({e.strerror})") from None


def load(path: str | Path) -> Golden:
    """Read a golden .npz, checking it has the keys, types and shapes docs/REFERENCE.md states.

    Untrusted input: arrays of Python objects are refused without unpickling, and any
    member that is not a plain .npy array is an error that names it.
    """
    path = files.check_file(path, ".npz file", missing="no such file")
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise GemmaRefError(f"{path}: not a .npz file") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise GemmaRefError(f"{path}: a single .npy array, not a .npz golden file")
    with z:
        keys = set(z.files)
        if "prompt_0/input_ids" not in keys:
            raise GemmaRefError(f"{path}: not a golden file: it has no 'prompt_0/input_ids' "
                                f"(keys: {', '.join(sorted(keys)[:6])}...; see docs/REFERENCE.md)")
        if "num_prompts" in keys:
            n = _member(z, "num_prompts", path)
            if n.ndim != 0 or n.dtype.kind not in "iu" or n < 1:
                raise GemmaRefError(f"{path}: num_prompts must be one integer >= 1, got "
                                    f"{n.dtype} {n.tolist()!r:.40}")
            n = int(n)
        else:
            n = len({k.split("/")[0] for k in keys if k.startswith("prompt_")})
        prompts = [_read_prompt(z, keys, i, path) for i in range(n)]
        prov = {}
        if "provenance" in keys:
            raw = _member(z, "provenance", path)
            try:
                prov = json.loads(str(raw)) if raw.ndim == 0 and raw.dtype.kind == "U" else None
            except json.JSONDecodeError:
                prov = None
            if not isinstance(prov, dict):
                raise GemmaRefError(f"{path}: provenance must be a JSON object (as a string)")
    return Golden(prompts, prov, source=str(path))


# member name suffix -> (dtype kinds allowed, what it is); trace/* entries are floats too.
_KINDS = {"input_ids": ("iu", "integers"), "greedy_ids": ("iu", "integers"), "positions": ("iu", "integers"),
          "image_position_ids": ("iu", "integers"), "pixel_values": ("f", "floats"),
          "topk_ids": ("iu", "integers"), "hidden_states": ("f", "floats"),
          "logits": ("f", "floats"), "topk_logits": ("f", "floats"), "text": ("U", "a string"),
          "decoder_input_ids": ("iu", "integers"), "encoder_hidden_states": ("f", "floats"),
          "input_features": ("f", "floats"), "input_features_mask": ("b", "booleans")}


def _member(z, key: str, path) -> np.ndarray:
    """One member of the .npz as an array, or an error naming it (never unpickled)."""
    try:
        a = z[key]
    except Exception as e:  # the zip member is parsed here: any failure means a damaged file
        reason = ("it holds Python objects, which are not loaded (that would run pickled code)"
                  if "allow_pickle" in str(e) else f"{type(e).__name__}")
        raise GemmaRefError(f"{path}: member {key!r} is not a readable .npy array ({reason})") from None
    if not isinstance(a, np.ndarray):
        raise GemmaRefError(f"{path}: member {key!r} is not a .npy array")
    kinds, what = ("f", "floats") if "/trace/" in key else _KINDS.get(key.rsplit("/", 1)[-1], (None, ""))
    if kinds is not None and a.dtype.kind not in kinds:  # None: checked by the caller
        raise GemmaRefError(f"{path}: {key} must hold {what}, not {a.dtype}")
    return a


def _read_prompt(z, keys: set, i: int, path) -> PromptDump:
    p = f"prompt_{i}/"
    if p + "input_ids" not in keys:
        raise GemmaRefError(f"{path}: missing key '{p}input_ids'")

    def get(name):
        return _member(z, p + name, path) if p + name in keys else None

    d = PromptDump(input_ids=get("input_ids").astype(np.int64), hidden_states=get("hidden_states"),
                   logits=get("logits"), topk_ids=get("topk_ids"), topk_logits=get("topk_logits"),
                   greedy_ids=get("greedy_ids"), text=str(get("text")) if p + "text" in keys else None,
                   pixel_values=get("pixel_values"), image_position_ids=get("image_position_ids"),
                   positions=get("positions"), decoder_input_ids=get("decoder_input_ids"),
                   encoder_hidden_states=get("encoder_hidden_states"), input_features=get("input_features"),
                   input_features_mask=get("input_features_mask"))
    d.trace = {k[len(p) + 6:]: _member(z, k, path) for k in z.files if k.startswith(p + "trace/")}
    T = len(d.input_ids) if d.input_ids.ndim == 1 else -1
    dec, enc_hs = d.decoder_input_ids, d.encoder_hidden_states
    U = T if dec is None else len(dec) if dec.ndim == 1 else -1  # decoder positions
    pos = d.positions
    R = U if pos is None else len(pos) if pos.ndim == 1 else -1  # rows of logits / topk
    per_decoder = lambda n: dec is not None and n.startswith(("model.decoder.", "lm_head"))  # noqa: E731
    checks = [
        (d.input_ids.ndim == 1 and T > 0, "input_ids must be [T], T >= 1"),
        (dec is None or (dec.ndim == 1 and U > 0), "decoder_input_ids must be [U], U >= 1"),
        (enc_hs is None or (enc_hs.ndim == 3 and enc_hs.shape[1] == T),
         "encoder_hidden_states must be [Le+1, T, D]"),
        (pos is None or (pos.ndim == 1 and pos.size > 0 and 0 <= pos.min() and pos.max() < U
                         and bool(np.all(np.diff(pos) > 0))),
         "positions must be increasing positions in [0, T)"),
        (d.hidden_states is None or (d.hidden_states.ndim == 3 and d.hidden_states.shape[1] == U),
         "hidden_states must be [L+1, T, D] (an encoder-decoder's: [Ld+1, U, D])"),
        (d.logits is None or (d.logits.ndim == 2 and d.logits.shape[0] == R),
         "logits must be [T, V] (or [P, V] with positions [P])"),
        ((d.topk_ids is None) == (d.topk_logits is None), "topk_ids and topk_logits come together"),
        (d.topk_ids is None or (d.topk_ids.ndim == 2 and d.topk_ids.shape[0] == R
                                and d.topk_ids.shape == d.topk_logits.shape),
         "topk_ids and topk_logits must both be [T, k] (or [P, k] with positions [P])"),
        (d.greedy_ids is None or d.greedy_ids.ndim == 1, "greedy_ids must be [G]"),
        (d.image_position_ids is None or (d.pixel_values is not None and d.image_position_ids.shape
                                          == d.pixel_values.shape[:2] + (2,)),
         "image_position_ids must be [I, n, 2], beside pixel_values [I, n, 3p^2]"),
        ((d.input_features is None) == (d.input_features_mask is None) and (
            d.input_features is None or (d.input_features.ndim == 3
                                         and d.input_features_mask.shape == d.input_features.shape[:2])),
         "input_features [I, F, M] and input_features_mask [I, F] come together"),
        (all(t.ndim >= 1 and t.shape[0] == (U if per_decoder(n) else T) for n, t in d.trace.items()
             if not n.startswith(VISION_TRACE + AUDIO_TRACE)),
         "trace entries must be [T, ...] (vision and audio ones [I, ...]; an encoder-decoder's decoder ones [U, ...])"),
    ]
    for ok, message in checks:
        if not ok:
            raise GemmaRefError(f"{path}: prompt {i}: {message}")
    return d


# --- comparison ----------------------------------------------------------------------


def row_errors(golden: np.ndarray, other: np.ndarray, lead: int = 1, present=None):
    """Per row (the axes after the first `lead`): max |a - b| and the max relative error.

    hidden_states [L+1, T, D] (lead 2), logits [T, V], a trace entry [T, ...] -> 2 x [L+1, T] or [T].
    An element's relative error is |a - b| / (|golden| + rms(golden row)): relative to
    itself where it is large, to its row where it is near zero. Not relative to the
    row's max: Gemma's residual stream has a few huge dimensions (1e5 in Gemma 3 270M)
    that would hide an error in all the others. `present` (same shape, bool) marks the
    elements both sides hold (a top-k file lacks the others); the rest are skipped.
    NaN or Inf on one side only is an infinite error: a broken engine never passes.
    Computed in float64.
    """
    g = golden.reshape(*golden.shape[:lead], -1).astype(np.float64)
    o = other.reshape(g.shape).astype(np.float64)
    present = np.ones(g.shape, bool) if present is None else present.reshape(g.shape)
    known = present & np.isfinite(g)
    gk = np.where(known, g, 0.0)
    rms = np.sqrt((gk * gk).sum(axis=-1, keepdims=True) / np.maximum(known.sum(-1, keepdims=True), 1))
    with np.errstate(invalid="ignore"):
        diff = np.abs(g - o)  # [.., X]; NaN where either is NaN or both are the same infinity
    same = (g == o) | (np.isnan(g) & np.isnan(o))
    diff = np.where(same | ~present, 0.0, np.where(np.isnan(diff), np.inf, diff))
    rel = np.where(np.isfinite(diff), diff / np.maximum(np.abs(gk) + rms, 1e-30), np.inf)
    return diff.max(axis=-1, initial=0.0), rel.max(axis=-1, initial=0.0)


def _entry(name, err, rel, rtol: float, layer=None, positions=None) -> dict:
    """Summary of one compared tensor, from its per-row errors: err, rel [R] -> dict.

    Rows are positions 0..R-1, or the given `positions` [R]; "abs" and "rel" list the
    errors of every position (None where not compared)."""
    bad = np.nonzero(rel > rtol)[0]
    at = np.arange(len(rel)) if positions is None else np.asarray(positions)
    per_position = lambda v: v.tolist() if positions is None else _spread(v, at)  # noqa: E731
    return {"name": name, "layer": layer, "max_abs": float(err.max(initial=0.0)),
            "max_rel": float(rel.max(initial=0.0)),
            "worst_position": int(at[np.argmax(rel)]) if rel.size else 0,
            "first_bad_position": int(at[bad[0]]) if bad.size else None, "ok": not bad.size,
            "abs": per_position(err), "rel": per_position(rel)}


def _spread(values: np.ndarray, positions: np.ndarray) -> list:
    """values [R] at positions [R] -> a list indexed by position, None elsewhere."""
    out = [None] * (int(positions.max()) + 1)
    for p, v in zip(positions.tolist(), values.tolist()):
        out[p] = v
    return out


def shared_positions(g: PromptDump, o: PromptDump):
    """Both dumps' logits / top-k rows restricted to the positions both hold.
    -> g, o (new dumps), positions [R]"""
    T = g.rows
    gp = np.arange(T) if g.positions is None else g.positions
    op = np.arange(T) if o.positions is None else o.positions
    positions = np.intersect1d(gp, op)

    def rows(d, have):
        if d.positions is None and len(positions) == T:
            return d
        keep = np.searchsorted(have, positions)
        pick = lambda a: None if a is None else a[keep]  # noqa: E731
        return dataclasses.replace(d, logits=pick(d.logits), topk_ids=pick(d.topk_ids),
                                   topk_logits=pick(d.topk_logits), positions=positions)

    return rows(g, gp), rows(o, op), positions


def hidden_state_names(num_layers: int, streams: bool = False,
                       prefix: str = "model.") -> list[tuple[str, int | None]]:
    """(name, layer) of each hidden_states entry; the last includes the final norm.

    streams (Gemma 3n): entry 0 is the AltUp streams made from the embedding, the last
    entry the raw output of the last layer (see hidden_states). prefix: an
    encoder-decoder's stack ("model.encoder.", "model.decoder.").
    """
    if streams:
        return [("model.altup_projections", None)] + [(f"model.layers.{i}", i) for i in range(num_layers)]
    p = prefix
    return ([(f"{p}embed_tokens", None)]
            + [(f"{p}layers.{i}", i) for i in range(num_layers - 1)]
            + [(f"{p}norm({p}layers.{num_layers - 1})", num_layers - 1)])


def aligned_logits(g: PromptDump, o: PromptDump):
    """The two engines' logits at the same (position, token) pairs.   -> 2 x [T, X], present

    Full vs full: every token (of the vocabulary both cover). Top-k on either side:
    the tokens that side kept; `present` ([T, X] bool, or None for all) marks those
    the other side has (two top-k files may keep different tokens).
    """
    if g.logits is not None and o.logits is not None:
        V = min(g.logits.shape[1], o.logits.shape[1])  # HF heads may carry padding rows
        return g.logits[:, :V], o.logits[:, :V], None
    if g.logits is None and g.topk_ids is None or o.logits is None and o.topk_ids is None:
        return None, None, None
    if o.logits is not None:
        return g.topk_logits, _take(o.logits, g.topk_ids, "golden"), None
    if g.logits is not None:
        return _take(g.logits, o.topk_ids, "other"), o.topk_logits, None
    match = g.topk_ids[:, :, None] == o.topk_ids[:, None, :]  # [T, k_g, k_o]
    at_g = (np.where(match, o.topk_logits[:, None, :], 0)).sum(-1)  # [T, k_g]
    return g.topk_logits, at_g, match.any(-1)


def _take(logits: np.ndarray, ids: np.ndarray, side: str) -> np.ndarray:
    """logits [T, V] at ids [T, k], which must be token ids below V."""
    if ids.size and not (0 <= ids.min() and ids.max() < logits.shape[1]):
        raise GemmaRefError(f"the {side} dump's topk_ids go beyond the other's vocabulary of "
                            f"{logits.shape[1]} (a different model?)")
    return np.take_along_axis(logits, ids, axis=-1)


def _top_ids(d: PromptDump, k: int, V: int | None = None) -> np.ndarray | None:
    if d.logits is not None:
        return top_k(d.logits[:, :V], k)[0]
    return None if d.topk_ids is None else d.topk_ids[:, :k]


def agreement(g: PromptDump, o: PromptDump, k: int) -> dict:
    """Top-k overlap and argmax agreement per position; greedy continuation agreement."""
    out = {}
    # Full logits of different widths: over the vocabulary both cover (padding rows of a
    # multimodal head are not the tokenizer's), as aligned_logits compares them.
    V = min(g.logits.shape[1], o.logits.shape[1]) if g.logits is not None and o.logits is not None else None
    g_top, o_top = _top_ids(g, k, V), _top_ids(o, k, V)
    if g_top is not None and o_top is not None:
        k = min(g_top.shape[1], o_top.shape[1])
        g_top, o_top = g_top[:, :k], o_top[:, :k]
        overlap = np.array([len(set(a) & set(b)) / k for a, b in zip(g_top.tolist(), o_top.tolist())])
        same = g_top[:, 0] == o_top[:, 0]
        out["topk_overlap"] = {"k": k, "mean": float(overlap.mean()), "min": float(overlap.min())}
        out["argmax"] = {"agree": int(same.sum()), "total": len(same),
                         "first_disagreement": _first_false(same)}
    if g.greedy_ids is not None and o.greedy_ids is not None:
        n = min(len(g.greedy_ids), len(o.greedy_ids))
        same = g.greedy_ids[:n] == o.greedy_ids[:n]
        first = _first_false(same)
        out["greedy"] = {"agree": n if first is None else first, "total": n, "first_mismatch": first}
    return out


def _first_false(a) -> int | None:
    bad = np.nonzero(~a)[0]
    return int(bad[0]) if bad.size else None


def compare_prompt(i: int, g: PromptDump, o: PromptDump, rtol: float, k: int = 10,
                   streams: bool = False) -> dict:
    """Everything `gemma-ref compare` says about one prompt."""
    if g.input_ids.shape != o.input_ids.shape or not np.array_equal(g.input_ids, o.input_ids):
        raise GemmaRefError(
            f"prompt {i}: the two dumps have different input_ids ({len(g.input_ids)} vs "
            f"{len(o.input_ids)} tokens): made from different prompts or tokenizers?")
    encdec = g.decoder_input_ids is not None or o.decoder_input_ids is not None
    if encdec and (g.decoder_input_ids is None or o.decoder_input_ids is None
                   or not np.array_equal(g.decoder_input_ids, o.decoder_input_ids)):
        raise GemmaRefError(f"prompt {i}: the two dumps have different decoder_input_ids")
    entries = []
    stacks = [("encoder_hidden_states", "model.encoder."), ("hidden_states", "model.decoder.")] if encdec else \
        [("hidden_states", "model.")]
    for field_name, prefix in stacks:
        gh, oh = getattr(g, field_name), getattr(o, field_name)
        if gh is None or oh is None:
            continue
        if gh.shape != oh.shape:
            raise GemmaRefError(f"prompt {i}: {field_name} shapes differ: {gh.shape} "
                                f"vs {oh.shape} (a different model?)")
        names = hidden_state_names(gh.shape[0] - 1, streams, prefix)
        err, rel = row_errors(gh, oh, lead=2)  # [L+1, T] each
        entries += [_entry(n, e, r, rtol, layer) for (n, layer), e, r in zip(names, err, rel)]
    g, o, positions = shared_positions(g, o)
    gl, ol, present = aligned_logits(g, o)
    if gl is not None and len(positions):
        kind = "full" if g.logits is not None and o.logits is not None else "top-k"
        entries.append(_entry(f"logits ({kind})", *row_errors(gl, ol, present=present), rtol,
                              positions=positions))
    traced = [_entry(n, *row_errors(g.trace[n], o.trace[n]), rtol)
              for n in g.trace if n in o.trace and g.trace[n].size == o.trace[n].size]
    first = next((e for e in entries if not e["ok"]), None)
    first_trace = next((e for e in traced if not e["ok"]), None)
    agree = agreement(g, o, k)
    if "argmax" in agree and agree["argmax"]["first_disagreement"] is not None:  # row -> position
        agree["argmax"]["first_disagreement"] = int(positions[agree["argmax"]["first_disagreement"]])
    return {
        "prompt": i, "tokens": len(g.input_ids), "text": g.text, "ok": first is None and first_trace is None,
        "hidden_states": entries, "trace": traced,
        "first_divergence": None if first is None else _where(first),
        "first_trace_divergence": None if first_trace is None else _where(first_trace),
        **agree,
    }


def _where(e: dict) -> dict:
    p = e["first_bad_position"]
    return {"name": e["name"], "layer": e["layer"], "position": p, "abs": e["abs"][p], "rel": e["rel"][p]}


def check_rtol(rtol) -> None:
    """A tolerance is a finite number > 0 (NaN would pass everything, 0 nothing)."""
    if not (isinstance(rtol, (int, float, np.floating)) and not isinstance(rtol, bool)
            and np.isfinite(rtol) and rtol > 0):
        raise GemmaRefError(f"the tolerance (--rtol) must be a finite number > 0, not {rtol!r}")


def compare(golden: Golden, other: Golden, rtol: float = RTOL, k: int = 10) -> dict:
    """Compare two dumps prompt by prompt. The result is JSON-ready; result["ok"] is the verdict.

    A position fails when one of its elements differs by more than
    rtol * (|golden element| + rms(golden row)) (see row_errors).
    """
    check_rtol(rtol)
    if len(golden.prompts) != len(other.prompts):
        raise GemmaRefError(f"the dumps hold different numbers of prompts: {len(golden.prompts)} "
                            f"({golden.source}) vs {len(other.prompts)} ({other.source})")
    # Gemma 3n dumps hold AltUp streams (named from either side's provenance)
    streams = any("gemma3n" in str(p.get("model_type", "")) or "Gemma3n" in str(p.get("model_class", ""))
                  for p in (golden.provenance, other.provenance))
    prompts = [compare_prompt(i, g, o, rtol, k, streams) for i, (g, o) in
               enumerate(zip(golden.prompts, other.prompts))]
    compared = sum(len(p["hidden_states"]) + len(p["trace"]) for p in prompts)
    if not compared:
        raise GemmaRefError("nothing to compare: the dumps share no hidden_states, logits or trace")
    return {"ok": all(p["ok"] for p in prompts), "rtol": rtol,
            "golden": {"source": golden.source, "provenance": golden.provenance},
            "other": {"source": other.source, "provenance": other.provenance}, "prompts": prompts}


def candidate_from_model(model, golden: Golden, trace: bool = False) -> Golden:
    """Run `model` on the golden's token ids, keeping what the golden keeps (full logits)."""
    out = []
    for d in golden.prompts:
        n_greedy = 0 if d.greedy_ids is None else len(d.greedy_ids)
        out.append(dump_prompt(model, d.input_ids, max_new_tokens=n_greedy,
                               trace=trace and bool(d.trace), text=d.text, pixel_values=d.pixel_values,
                               image_position_ids=d.image_position_ids, decoder_input_ids=d.decoder_input_ids,
                               input_features=d.input_features, input_features_mask=d.input_features_mask))
    return Golden(out, provenance(model), source=f"{model.source} ({model.dtype})")


# --- the readable report ----------------------------------------------------------------


def format_report(r: dict, *, all_rows: bool = True) -> str:
    """The comparison as a table per prompt, then the verdict."""
    lines = [f"golden: {_describe(r['golden'])}", f"other:  {_describe(r['other'])}",
             f"rel = |a - b| / (|golden| + rms(golden row)), max over a hidden vector or logits "
             f"row; a position fails when rel > {r['rtol']:g}", ""]
    for p in r["prompts"]:
        text = f": {p['text'][:50]!r}" if p.get("text") else ""
        lines.append(f"prompt {p['prompt']} ({p['tokens']} tokens){text}")
        lines.append(f"  {'':<34}{'max abs':>10}{'max rel':>10}{'worst pos':>11}  status")
        for e in p["hidden_states"]:
            status = "ok" if e["ok"] else f"FAIL from position {e['first_bad_position']}"
            lines.append(f"  {e['name']:<34}{e['max_abs']:>10.2e}{e['max_rel']:>10.2e}"
                         f"{e['worst_position']:>11}  {status}")
        lines += ["  " + s for s in _agreement_lines(p)]
        f = p["first_divergence"]
        if f:
            lines.append(f"  first divergence: {f['name']} at position {f['position']} "
                         f"(abs {f['abs']:.2e}, rel {f['rel']:.2e})")
        if p["trace"]:
            t = p["first_trace_divergence"]
            lines.append(f"  trace: {len(p['trace'])} intermediates compared; " + (
                "all within tolerance" if t is None else
                f"first beyond tolerance: {t['name']} at position {t['position']} "
                f"(abs {t['abs']:.2e}, rel {t['rel']:.2e})"))
        lines.append("")
    bad = [p for p in r["prompts"] if not p["ok"]]
    n = len(r["prompts"])
    lines.append(f"PASS: {n} prompt{'s' * (n > 1)} within tolerance" if not bad else
                 f"FAIL: {len(bad)} of {n} prompt{'s' * (n > 1)} beyond tolerance")
    return "\n".join(lines)


def _agreement_lines(p: dict) -> list[str]:
    out = []
    if "topk_overlap" in p:
        t, a = p["topk_overlap"], p["argmax"]
        first = "" if a["first_disagreement"] is None else f", first differs at {a['first_disagreement']}"
        out.append(f"top-{t['k']} overlap: mean {t['mean']:.3f}, min {t['min']:.3f}; "
                   f"argmax agrees at {a['agree']}/{a['total']} positions{first}")
    if "greedy" in p:
        g = p["greedy"]
        out.append(f"greedy continuation: {g['agree']}/{g['total']} tokens agree" +
                   ("" if g["first_mismatch"] is None else f" (first mismatch at step {g['first_mismatch']})"))
    return out


def _describe(side: dict) -> str:
    pv = side["provenance"]
    if not pv:
        return side["source"]
    engine = f"{pv.get('engine', '?')} {pv.get('engine_version', '')}".strip()
    return f"{side['source']} [{engine}, {pv.get('dtype', '?')}, model {pv.get('model', '?')}]"
