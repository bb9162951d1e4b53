"""T5Gemma and T5Gemma 2: Gemma as an encoder-decoder, in NumPy.

The encoder reads the input once, both ways; the decoder writes the output token by
token, causally, and attends to the encoder's states as well as to its own past.

    encoder:  x = E[ids] sqrt(D);  per layer  x += norm(attn(norm(x)))   (bidirectional)
                                              x += norm(mlp(norm(x)));    states = norm(x)
    decoder:  y = E[out] sqrt(D);  per layer  y += norm(self_attn(norm(y)))  (causal, cached)
                                              y += norm(cross_attn(norm(y), states))   T5Gemma
                                              y += norm(mlp(norm(y)));    logits = norm(y) E^T

T5Gemma is built from Gemma 2 (softcaps, local:global 1:1, RoPE 1e4) and may pair a
wide encoder with a narrow decoder (9B-2B): its cross-attention reads the encoder's
width. T5Gemma 2 is built from Gemma 3 (QK-norm, local:global 5:1), ties every
embedding, and *merges* the decoder's two attentions into one: a single softmax over
cat(self keys, encoder keys), where the encoder's keys and values come from the same
k_proj/v_proj (and k_norm, without RoPE) as the decoder's own. Its encoder takes
images through Gemma 3's SigLIP tower (vision.py).

Each stack's config is a GemmaConfig of its base generation (config.py: RoPE tables,
windows, query scale, norms); what the encoder-decoder adds is `T5GemmaConfig`, and
the two generations differ only by the rows of GENERATIONS. Primitives come from
model.py; the decoder's self-attention cache is kv_cache.py's. Axis legend as in
model.py, plus S = encoder length (the cross-attention's keys).

Follows transformers 5.25: models/t5gemma/modeling_t5gemma.py,
models/t5gemma2/modeling_t5gemma2.py and masking_utils.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from . import api, hub, vision
from . import chat_template as chat_templates
from .config import GemmaConfig
from .config_json import load_json
from .errors import GemmaRefError
from .families import Refusals
from .kv_cache import attended_kv, new_cache
from .loader import check_finite, checkpoint_files, read_safetensors
from .model import attention, geglu, qkv, record, rms_norm, rope_angles, softcap, visible
from .parallel import linear
from .sampling import SamplingParams, check_generate_args, decode_steps
from .tokenizer import Tokenizer
from .weights import Weights


class Generation(NamedTuple):
    """What transformers decides by model class, per generation."""

    base: str  # the decoder-only generation each stack is (config_json's model_type)
    merged_attention: bool  # decoder: one softmax over self + cross keys (T5Gemma 2)
    encoder_window: str  # "radius": |j - i| <= w;  "split": -(w+1)//2 < j - i <= w//2
    # forward without attention_mask: the encoder's self-attention skips <pad> ids (the
    # decoder's cross-attention still sees them: transformers hands it the mask given, None)
    pad_mask_default: bool
    tied_decoder_embedding: bool  # the decoder reads the encoder's embedding table


GENERATIONS = {
    # modeling_t5gemma.py: create_bidirectional_sliding_window_mask (|q - k| <= window),
    # make_default_2d_attention_mask (ids != pad)
    "t5gemma": Generation("gemma2", False, "radius", True, False),
    # modeling_t5gemma2.py: sliding_window_mask_function(is_causal=False), no default mask,
    # decoder.embed_tokens tied to encoder.embed_tokens
    "t5gemma2": Generation("gemma3_text", True, "split", False, True),
}
ENC, DEC = "model.encoder.", "model.decoder."
# Other spellings of the same tensors (transformers' in-memory names) -> the saved ones
KEY_SPELLINGS = {"model.encoder.text_model.": ENC,
                 "model.encoder.vision_tower.vision_model.": "model.encoder.vision_tower."}


@dataclass(frozen=True)
class T5GemmaConfig:
    """config.json of T5GemmaForConditionalGeneration / T5Gemma2ForConditionalGeneration."""

    model_type: str  # "t5gemma" or "t5gemma2"
    encoder: GemmaConfig  # `encoder` (T5Gemma 2: `encoder.text_config`), read as its base generation
    decoder: GemmaConfig  # `decoder`
    tie_word_embeddings: bool = True  # the output head is the decoder's embedding (no lm_head)
    decoder_start_token_id: int = 2  # the decoder's first input (generation_config, else bos)
    eoi_token_index: int | None = None  # T5Gemma 2: <end_of_image>, embedded as its own learned row
    vision: vision.VisionConfig | None = None  # T5Gemma 2: the encoder's SigLIP tower

    @property
    def generation(self) -> Generation:
        return GENERATIONS[self.model_type]

    @classmethod
    def from_dir(cls, path: Path) -> "T5GemmaConfig":
        source = str(path / "config.json")
        d = load_json(path / "config.json")
        model_type = d.get("model_type")
        if model_type not in GENERATIONS:
            raise GemmaRefError(f"{source}: model_type {model_type!r} is not T5Gemma ({', '.join(GENERATIONS)})")
        gen = GENERATIONS[model_type]
        enc, dec = d.get("encoder"), d.get("decoder")
        if not isinstance(enc, dict) or not isinstance(dec, dict):
            raise GemmaRefError(f"{source}: an encoder-decoder config needs 'encoder' and 'decoder' objects")
        text = enc.get("text_config", enc) if model_type == "t5gemma2" else enc
        if not isinstance(text, dict):
            raise GemmaRefError(f"{source}: encoder.text_config must be a JSON object")
        stack = lambda s, name: GemmaConfig.from_dict({**s, "model_type": gen.base}, f"{source} ({name})")
        vision_config = None
        if model_type == "t5gemma2" and enc.get("vision_config"):
            vision_config = vision.VisionConfig.from_dict({**enc, "model_type": "gemma3"}, source)
        start = _generation_config(path).get("decoder_start_token_id", d.get("decoder_start_token_id"))
        return cls(model_type=model_type, encoder=stack(text, "encoder"), decoder=stack(dec, "decoder"),
                   tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
                   decoder_start_token_id=int(start if isinstance(start, int) else dec.get("bos_token_id", 2)),
                   eoi_token_index=enc.get("eoi_token_index") if model_type == "t5gemma2" else None,
                   vision=vision_config)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the checkpoint, by its saved name, with its shape."""
        shapes = {}
        for pre, c in ((ENC, self.encoder), (DEC, self.decoder)):
            D, N, H = c.hidden_size, c.num_attention_heads, c.head_dim
            K, F = c.num_key_value_heads, c.intermediate_size
            norms = ["pre_self_attn_layernorm", "post_self_attn_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"]
            if pre == ENC or not self.generation.tied_decoder_embedding:
                shapes[pre + "embed_tokens.weight"] = (c.vocab_size, D)
            shapes[pre + "norm.weight"] = (D,)
            for i in range(c.num_hidden_layers):
                p = f"{pre}layers.{i}."
                attns = {"self_attn.": D}
                if pre == DEC and not self.generation.merged_attention:  # T5Gemma's cross-attention
                    attns["cross_attn."] = self.encoder.hidden_size  # its K/V read the encoder's width
                    norms_i = norms + ["pre_cross_attn_layernorm", "post_cross_attn_layernorm"]
                else:
                    norms_i = norms
                for a, kv_in in attns.items():
                    shapes.update({p + a + "q_proj.weight": (N * H, D), p + a + "k_proj.weight": (K * H, kv_in),
                                   p + a + "v_proj.weight": (K * H, kv_in), p + a + "o_proj.weight": (D, N * H)})
                if c.qk_norm:
                    shapes[p + "self_attn.q_norm.weight"] = shapes[p + "self_attn.k_norm.weight"] = (H,)
                shapes.update({p + n + ".weight": (D,) for n in norms_i})
                shapes.update({p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
                               p + "mlp.down_proj.weight": (D, F)})
        if self.eoi_token_index is not None:
            shapes[ENC + "embed_tokens.eoi_embedding"] = (self.encoder.hidden_size,)
        if not self.tie_word_embeddings:
            shapes["lm_head.out_proj.weight"] = (self.decoder.vocab_size, self.decoder.hidden_size)
        if self.vision is not None:
            shapes.update({ENC + n: s for n, s in self.vision.expected_shapes(self.encoder.hidden_size).items()})
        return shapes

    @property
    def num_parameters(self) -> int:
        return sum(int(np.prod(s)) for s in self.expected_shapes().values())

    def head_key(self) -> str:
        """The output head: the decoder's embedding, or (T5Gemma 2) the one shared table."""
        if not self.tie_word_embeddings:
            return "lm_head.out_proj.weight"
        return ENC + "embed_tokens.weight" if self.generation.tied_decoder_embedding else DEC + "embed_tokens.weight"


# --- the math -----------------------------------------------------------------------


def embed(W, table, ids, D, dtype, eoi=None, eoi_row=None):
    """Token embeddings scaled by sqrt(D), the scale rounded to the activation dtype first.

    ids [B, T] -> [B, T, D]. T5Gemma 2: <end_of_image> (id eoi) is its own learned row,
    eoi_row [D], unscaled (T5Gemma2TextScaledWordEmbedding).
    """
    x = W.rows(table, ids) * np.asarray(np.sqrt(D), dtype)  # [B, T, D]
    if eoi is not None:
        x[ids == eoi] = eoi_row
    return x


def encoder_mask(valid, window, rule):
    """Which keys each encoder token sees: all real tokens, both ways.   [B, S] -> [B, S, S] bool

    A sliding layer (window w) limits the distance d = key - query (indices):
    T5Gemma |d| <= w ("radius"); T5Gemma 2 -(w+1)//2 < d <= w//2 ("split").
    """
    S = valid.shape[1]
    seen = np.broadcast_to(valid[:, None, :], (valid.shape[0], S, S))  # [B, S, S]
    if window is None:
        return seen
    d = np.arange(S)[None, :] - np.arange(S)[:, None]  # [S, S] key index - query index
    near = np.abs(d) <= window if rule == "radius" else (-((window + 1) // 2) < d) & (d <= window // 2)
    return seen & near


def mlp_block(x, W, p, c, trace):
    """x + post_ff_norm(geglu(pre_ff_norm(x))).             [B, T, D] -> [B, T, D]"""
    h = norm(x, W, p + "pre_feedforward_layernorm", c, trace)
    m = geglu(h, W[p + "mlp.gate_proj.weight"], W[p + "mlp.up_proj.weight"], W[p + "mlp.down_proj.weight"])
    record(trace, p + "mlp", m)
    return x + norm(m, W, p + "post_feedforward_layernorm", c, trace)


def norm(x, W, name, c, trace):
    """RMSNorm with the weight `name`, traced under that name."""
    x = rms_norm(x, W[name + ".weight"], c.rms_norm_eps, c.norm_offset)
    record(trace, name, x)
    return x


def encoder_layer(x, W, i, c: GemmaConfig, cos_sin, mask, trace):
    """One encoder block (bidirectional self-attention, then the MLP).   [B, S, D] -> [B, S, D]"""
    p, spec = f"{ENC}layers.{i}.", c.layers[i]
    h = norm(x, W, p + "pre_self_attn_layernorm", c, trace)
    q, k, v = qkv(h, *cos_sin, W, p + "self_attn.", c, spec, trace=trace)  # [B, S, N|K, H]
    a = attention(q, k, v, None, None, c.query_scale, cap=c.attn_logit_softcapping, mask=mask)  # [B, S, N*H]
    record(trace, p + "self_attn.attn", a)
    a = linear(a, W[p + "self_attn.o_proj.weight"])  # [B, S, D]
    record(trace, p + "self_attn.o_proj", a)
    x = x + norm(a, W, p + "post_self_attn_layernorm", c, trace)
    x = mlp_block(x, W, p, c, trace)
    record(trace, f"{ENC}layers.{i}", x)
    return x


def encode(W, cfg: T5GemmaConfig, ids, valid, image_embeds=None, trace=None):
    """The encoder's states.             ids [B, S], valid [B, S] bool -> [B, S, D_enc]

    Positions are 0..S-1 (as transformers', whatever the padding); `valid` marks the
    keys every token sees. image_embeds [n, D]: the rows of the image soft tokens.
    """
    c, dtype = cfg.encoder, W.dtype
    eoi = None if cfg.eoi_token_index is None else (cfg.eoi_token_index, W[ENC + "embed_tokens.eoi_embedding"])
    x = embed(W, ENC + "embed_tokens.weight", ids, c.hidden_size, dtype, *(eoi or ()))  # [B, S, D]
    record(trace, ENC + "embed_tokens", x)
    if image_embeds is not None:  # image soft tokens: the image features, unscaled
        x[ids == cfg.vision.image_token_index] = image_embeds
        record(trace, ENC + "inputs_embeds", x)  # the input of layer 0 (transformers' argument name)
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)  # [B, S]
    ropes = {r: rope_angles(positions, r.head_dim, r.theta, r.factor, dtype, r.rotated) for r in c.ropes}
    rule = cfg.generation.encoder_window
    masks = {w: encoder_mask(valid, w, rule) for w in {s.window for s in c.layers}}
    for i, spec in enumerate(c.layers):
        x = encoder_layer(x, W, i, c, ropes[spec.rope], masks[spec.window], trace)
    x = norm(x, W, ENC + "norm", c, trace)  # [B, S, D]
    return x


class CrossKV(NamedTuple):
    """What every decoding step attends to in the encoder's output, computed once."""

    k: list  # per decoder layer [B, S, K, H]
    v: list  # per decoder layer [B, S, K, H]
    valid: np.ndarray  # [B, S] bool: the real (not padding) encoder tokens


def cross_kv(W, cfg: T5GemmaConfig, states, valid) -> CrossKV:
    """Each decoder layer's keys and values of the encoder states.   [B, S, D_enc] -> CrossKV

    T5Gemma: cross_attn.k_proj / v_proj (from the encoder's width). T5Gemma 2: the layer's
    own self_attn.k_proj / v_proj, k normed by k_norm, no RoPE (T5Gemma2MergedAttention).
    """
    c = cfg.decoder
    B, S, _ = states.shape
    K, H = c.num_key_value_heads, c.head_dim
    a = "self_attn." if cfg.generation.merged_attention else "cross_attn."
    ks, vs = [], []
    for i in range(c.num_hidden_layers):
        p = f"{DEC}layers.{i}.{a}"
        k = linear(states, W[p + "k_proj.weight"]).reshape(B, S, K, H)
        if c.qk_norm:
            k = rms_norm(k, W[p + "k_norm.weight"], c.rms_norm_eps, c.norm_offset)
        ks.append(k)
        vs.append(linear(states, W[p + "v_proj.weight"]).reshape(B, S, K, H))
    return CrossKV(ks, vs, valid)


def decoder_attention(h, W, i, cfg: T5GemmaConfig, cos_sin, positions, layer_cache, cross: CrossKV, trace):
    """The decoder's self-attention (causal, cached); T5Gemma 2 merges the cross-attention in.

    h [B, T, D] -> [B, T, D]. Merged: one softmax over cat(own keys, encoder keys), the
    own ones causal (and windowed on sliding layers), the encoder's all real tokens.
    """
    c, spec, p = cfg.decoder, cfg.decoder.layers[i], f"{DEC}layers.{i}.self_attn."
    q, k, v = qkv(h, *cos_sin, W, p, c, spec, trace=trace)  # [B, T, N|K, H]
    k_all, v_all, k_pos = attended_kv(layer_cache, k, v, positions, spec.window is not None)  # [B, S', K, H]
    mask = visible(positions, k_pos, spec.window)  # [B, T, S']
    if cfg.generation.merged_attention:
        B, T = positions.shape
        k_all = np.concatenate([k_all, cross.k[i]], axis=1)  # [B, S' + S, K, H]
        v_all = np.concatenate([v_all, cross.v[i]], axis=1)
        mask = np.concatenate([mask, np.broadcast_to(cross.valid[:, None, :], (B, T, cross.valid.shape[1]))], -1)
    a = attention(q, k_all, v_all, None, None, c.query_scale, cap=c.attn_logit_softcapping, mask=mask)
    record(trace, p + "attn", a)
    out = linear(a, W[p + "o_proj.weight"])  # [B, T, D]
    record(trace, p + "o_proj", out)
    return out


def cross_attention(h, W, i, cfg: T5GemmaConfig, cross: CrossKV, trace):
    """T5Gemma's cross-attention: queries from the decoder, keys/values from the encoder.

    h [B, T, D] -> [B, T, D]; no RoPE; every real encoder token is seen; softcapped.
    """
    c, p = cfg.decoder, f"{DEC}layers.{i}.cross_attn."
    B, T, _ = h.shape
    q = linear(h, W[p + "q_proj.weight"]).reshape(B, T, c.num_attention_heads, c.head_dim)
    record(trace, p + "q_proj", q)
    mask = np.broadcast_to(cross.valid[:, None, :], (B, T, cross.valid.shape[1]))  # [B, T, S]
    a = attention(q, cross.k[i], cross.v[i], None, None, c.query_scale, cap=c.attn_logit_softcapping, mask=mask)
    record(trace, p + "attn", a)
    out = linear(a, W[p + "o_proj.weight"])  # [B, T, D]
    record(trace, p + "o_proj", out)
    return out


def decoder_layer(y, W, i, cfg: T5GemmaConfig, cos_sin, positions, layer_cache, cross, trace):
    """One decoder block.                                   [B, T, D] -> [B, T, D]

    T5Gemma:   y += norm(self_attn(norm(y)));  y += norm(cross_attn(norm(y)));  y += norm(mlp(norm(y)))
    T5Gemma 2: y += norm(merged_attn(norm(y)));  y += norm(mlp(norm(y)))
    """
    c, p = cfg.decoder, f"{DEC}layers.{i}."
    h = norm(y, W, p + "pre_self_attn_layernorm", c, trace)
    a = decoder_attention(h, W, i, cfg, cos_sin, positions, layer_cache, cross, trace)
    y = y + norm(a, W, p + "post_self_attn_layernorm", c, trace)
    if not cfg.generation.merged_attention:
        h = norm(y, W, p + "pre_cross_attn_layernorm", c, trace)
        y = y + norm(cross_attention(h, W, i, cfg, cross, trace), W, p + "post_cross_attn_layernorm", c, trace)
    y = mlp_block(y, W, p, c, trace)
    record(trace, f"{DEC}layers.{i}", y)
    return y


def decode(W, cfg: T5GemmaConfig, ids, positions, cache, cross: CrossKV, *, last_only=False, n_vocab=None,
           trace=None):
    """Logits of the decoder's tokens.        ids [B, T], positions [B, T] (-1: none) -> [B, T, V]

    cache: kv_cache.new_cache(cfg.decoder, ...) for the self-attention, updated in place
    (None: attend within `ids`). cross: the encoder's keys and values (cross_kv).
    """
    c, dtype = cfg.decoder, W.dtype
    table = ENC + "embed_tokens.weight" if cfg.generation.tied_decoder_embedding else DEC + "embed_tokens.weight"
    eoi = None if cfg.eoi_token_index is None else (cfg.eoi_token_index, W[ENC + "embed_tokens.eoi_embedding"])
    y = embed(W, table, ids, c.hidden_size, dtype, *(eoi or ()))  # [B, T, D]
    record(trace, DEC + "embed_tokens", y)
    ropes = {r: rope_angles(positions, r.head_dim, r.theta, r.factor, dtype, r.rotated) for r in c.ropes}
    for i, spec in enumerate(c.layers):
        y = decoder_layer(y, W, i, cfg, ropes[spec.rope], positions, None if cache is None else cache[i], cross,
                          trace)
    if last_only:
        y = y[:, -1:]
    y = norm(y, W, DEC + "norm", c, trace)
    head = W[cfg.head_key()]
    logits = linear(y, head if n_vocab is None else head[:n_vocab])  # [B, T, V]
    record(trace, "lm_head", logits)  # before the softcap, as transformers' lm_head hook
    if c.final_logit_softcapping is not None:
        logits = softcap(logits, c.final_logit_softcapping)
    return logits


# --- the model ----------------------------------------------------------------------------


class T5GemmaModel(Refusals):
    """A T5Gemma or T5Gemma 2 checkpoint: forward, generate, stream (families.py loads it).

    Prompts and stop arguments are read as api.Model reads them (the methods below are
    its own); generation encodes the prompt once and decodes with a cached self-attention.
    """

    # the same prompt, stop, streaming and chat rules as the decoder-only models
    audio = None  # no audio tower (api.Model's methods below ask)
    _prompt_ids = api.Model._prompt_ids
    _stop = api.Model._stop
    _text_pieces = api.Model._text_pieces
    _image_marker = api.Model._image_marker
    _audio = api.Model._audio  # says there is no audio tower
    chat = api.Model.chat
    stream_chat = api.Model.stream_chat  # the rendered conversation is the encoder's input
    continues_prompt = False  # the CLI prints the output alone, not after the prompt
    # CLI commands this model cannot serve, and why (cli.common.load says so)
    cannot = {"perplexity": "perplexity of a text is a decoder-only model's measure; an encoder-decoder "
                            "scores an output given an input",
              "eval": "lm-evaluation-harness runs decoder-only models in gemma-ref"}

    def __init__(self, config: T5GemmaConfig, weights: dict, tokenizer: Tokenizer | None = None, *,
                 source: str = "", dtype="float32", stop_ids: Sequence[int] = (), chat_template=None):
        self.config, self.tokenizer, self.source = config, tokenizer, source
        # The checkpoint's chat template (T5Gemma -it); none is built in for encoder-decoders
        self.chat_template = chat_template
        self.instruction_tuned = hub.is_instruction_tuned(source)
        self._warned_base_chat = False
        self.vision = config.vision
        self.dtype = api.check_dtype(dtype)
        self.weights = Weights(weights, self.dtype)
        self.vision_weights = None
        if config.vision is not None:  # vision.py's keys: vision_tower.*, multi_modal_projector.*
            self.vision_weights = Weights({n[len(ENC):]: a for n, a in weights.items()
                                           if n.startswith((ENC + "vision_tower.", ENC + "multi_modal_projector."))},
                                          self.dtype)
        self.checkpoint = None
        self.n_vocab = tokenizer.vocab_size if tokenizer else config.decoder.vocab_size
        if self.n_vocab > config.decoder.vocab_size:
            raise GemmaRefError(f"{source}: tokenizer has {self.n_vocab} tokens, the embedding table only "
                                f"{config.decoder.vocab_size}")
        eos = config.decoder.eos_token_id
        self._default_stop = set((eos,) if isinstance(eos, int) else eos) | set(stop_ids)
        self.end_of_turn_id = tokenizer.piece_id("<end_of_turn>") if tokenizer else None
        if tokenizer:
            self._default_stop.add(tokenizer.eos_id)

    @classmethod
    def from_checkpoint(cls, path: Path, *, source: str = "", dtype="float32", max_memory=None, progress=True):
        """Load a checkpoint directory strictly (every tensor named, shaped, finite).

        The weights are read into RAM whole (bf16/f16 matrices as stored); max_memory and
        progress are accepted for api.Model's signature.
        """
        config = T5GemmaConfig.from_dir(path)
        expected = config.expected_shapes()
        found = {}
        for f in checkpoint_files(path):
            for name, t in read_safetensors(f).items():
                for old, new in KEY_SPELLINGS.items():
                    if name.startswith(old):
                        name = new + name[len(old):]
                if name in found:
                    raise GemmaRefError(f"{path}: tensor {name} is stored twice ({found[name].path.name} and {f.name})")
                found[name] = t
        # Tied copies, if a file stores them, are the encoder's tables again: not read
        if config.tie_word_embeddings:
            found.pop("lm_head.out_proj.weight", None)
        if config.generation.tied_decoder_embedding:
            found.pop(DEC + "embed_tokens.weight", None)
            found.pop(DEC + "embed_tokens.eoi_embedding", None)
        missing = [n for n in expected if n not in found]
        if missing:
            raise GemmaRefError(f"{path}: missing tensor {missing[0]}"
                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        unexpected = [n for n in found if n not in expected]
        if unexpected:
            raise GemmaRefError(f"{found[unexpected[0]].path}: unexpected tensor {unexpected[0]}")
        weights = {}
        for name, shape in expected.items():
            t = found[name]
            if tuple(t.shape) != shape:
                raise GemmaRefError(f"{t.path}: tensor {name} has shape {tuple(t.shape)}, config.json implies {shape}")
            # matrices stored in 16 bits stay so (the products widen them block by block,
            # weights.Weights); the rest is read as float32 (bf16/f16 widen exactly)
            weights[name] = t.read_stored() if len(shape) == 2 and t.dtype.itemsize == 2 else t.read()
            check_finite(name, weights[name], str(t.path))
        tokenizer = Tokenizer.from_checkpoint(path)
        template = chat_templates.load(path, tokenizer, config.generation.base)
        model = cls(config, weights, tokenizer, source=source, dtype=dtype, stop_ids=api._generation_config_eos(path),
                    chat_template=None if template.builtin else template)
        model.checkpoint = path
        return model

    @staticmethod
    def describe(config_file) -> dict:
        """What `gemma-ref info` prints, from config.json alone."""
        cfg = T5GemmaConfig.from_dir(Path(config_file).parent)
        e, d = cfg.encoder, cfg.decoder
        name = {"t5gemma": "T5Gemma (from Gemma 2)", "t5gemma2": "T5Gemma 2 (from Gemma 3)"}[cfg.model_type]
        special = [f"encoder-decoder   {name}: a bidirectional encoder of {e.num_hidden_layers} layers "
                   f"(D {e.hidden_size}), a causal decoder of {d.num_hidden_layers} layers (D {d.hidden_size})",
                   "decoder attention " + ("self and cross merged: one softmax over cat(own keys, encoder keys)"
                                           if cfg.generation.merged_attention else
                                           "self-attention, then cross-attention to the encoder's states"),
                   f"decoder start     token {cfg.decoder_start_token_id}; the prompt goes to the encoder"]
        if cfg.vision is not None:
            v = cfg.vision
            special.append(f"images            SigLIP in the encoder, {v.image_size} px, patch {v.patch_size}, "
                           f"{v.mm_tokens_per_image} tokens per image (counted above)")
        keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "head_dim", "sliding_window", "layer_types", "vocab_size")
        config = {f"{s}.{k}": (list(v) if isinstance(v, tuple) else v)
                  for s, c in (("encoder", e), ("decoder", d)) for k in keys for v in [getattr(c, k)]}
        template = chat_templates.load(Path(config_file).parent, None, cfg.generation.base)
        return {"parameters": cfg.num_parameters, "config": {"model_type": cfg.model_type, **config},
                "chat_template": "none beside config.json (T5Gemma's -it repos carry one)" if template.builtin
                else template.source, "special": special}

    # --- the network ------------------------------------------------------------------------

    def encode(self, input_ids, attention_mask=None, *, images=None, trace: dict | None = None):
        """The encoder's states and the decoder's view of them (CrossKV), for ids [B, S].

        attention_mask [B, S] (1 = token, 0 = padding): the keys every token, and the decoder,
        sees. Default, as transformers: every token, except that T5Gemma's encoder
        self-attention skips <pad> ids (make_default_2d_attention_mask) while its decoder
        still attends to them.
        images: T5Gemma 2, preprocessed pixels [I, 3, S, S] (or paths / PIL images), one
        per image block of input_ids, in order.
        """
        ids = _ids(input_ids, "input_ids", self.config.encoder.vocab_size)
        if attention_mask is None:
            valid = cross_valid = np.ones(ids.shape, bool)
            if self.config.generation.pad_mask_default:
                valid = ids != self.config.encoder.pad_token_id
        else:
            valid = np.asarray(attention_mask)
            if valid.shape != ids.shape or not np.isin(valid, (0, 1)).all():
                raise GemmaRefError(f"attention_mask must be 0/1 of the ids' shape {ids.shape}, got {valid.shape}")
            valid = cross_valid = valid.astype(bool)
        embeds = self.image_embeds(ids, images, trace) if _given(images) else None
        states = encode(self.weights, self.config, ids, valid, embeds, trace)
        return states, cross_kv(self.weights, self.config, states, cross_valid)

    def image_embeds(self, ids, images, trace=None) -> np.ndarray:
        """The image soft tokens' embeddings [n, D] for the image blocks of ids [B, S]."""
        v = self.vision
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype.kind == "f":
            self._check_images([])
            pixels = images
        else:
            # no pan-and-scan crops: Gemma3Processor passes its own default (off) over the config's
            pixels, _ = vision.preprocess(self._check_images(images), self._preprocessing(), pan_and_scan_crops=False)
        S = v.image_size
        if np.shape(pixels)[1:] != (v.num_channels, S, S):
            raise GemmaRefError(f"pixel values must be [I, {v.num_channels}, {S}, {S}], got {np.shape(pixels)}")
        n = int((ids == v.image_token_index).sum())
        if n != len(pixels) * v.mm_tokens_per_image:
            raise GemmaRefError(f"the ids hold {n} image tokens; {len(pixels)} image(s) need "
                                f"{len(pixels) * v.mm_tokens_per_image}")
        feats = vision.image_features(pixels, self.vision_weights, v, trace)  # [I, M, D]
        return feats.reshape(-1, feats.shape[-1])

    def _check_images(self, images) -> list:
        if self.vision is None:
            raise GemmaRefError(f"{self.source}: this model takes no images (no vision_config: T5Gemma 2 "
                                "checkpoints with a SigLIP tower do)")
        return [images] if isinstance(images, (str, Path)) else list(images)

    def prompt_ids(self, prompt, images=()):
        """(encoder ids, None), as api.Model.prompt_ids: the images are embedded as the encoder runs."""
        return self.encoder_ids(prompt, images), None

    def prompt_inputs(self, prompt, images=(), audio=()):
        """(encoder ids, None, None), as api.Model.prompt_inputs (reference.dump's prompts with images)."""
        if _given(audio):
            self._audio()  # says this model takes no audio
        return self.encoder_ids(prompt, images), None, None

    def dump_prompt(self, ids, *, k=0, max_new_tokens=16, trace=False, text=None, pixel_values=None,
                    decoder_input_ids=None):
        """reference.dump_prompt for an encoder-decoder: the encoder reads `ids`; the decoder's
        inputs are decoder_input_ids, by default the start token and the greedy output but its
        last token (so logits[j] is what chose greedy_ids[j]). Traces of both stacks."""
        from . import reference

        ids = np.asarray(ids, np.int64)
        greedy = None
        if max_new_tokens:
            greedy = np.array(self.generate(ids.tolist(), images=pixel_values, max_new_tokens=max_new_tokens,
                                            stop=[]), np.int64)
        if decoder_input_ids is None:
            decoder_input_ids = [self.config.decoder_start_token_id] + ([] if greedy is None else greedy[:-1].tolist())
        dec = np.asarray(decoder_input_ids, np.int64)
        t: dict = {}
        logits = self.forward(ids, dec, images=pixel_values, trace=t)  # [U, V]
        d = reference.PromptDump(
            input_ids=ids, decoder_input_ids=dec, text=text, pixel_values=pixel_values, greedy_ids=greedy,
            hidden_states=reference.hidden_states(t, self.config.decoder.num_hidden_layers, DEC)[:, 0],
            encoder_hidden_states=reference.hidden_states(t, self.config.encoder.num_hidden_layers, ENC)[:, 0])
        if k:
            d.topk_ids, d.topk_logits = reference.top_k(logits, k)
        else:
            d.logits = logits
        if trace:
            d.trace = {name: value if name.startswith(reference.VISION_TRACE) else value[0]
                       for name, value in t.items()}
        return d

    def _preprocessing(self):
        f = None if self.checkpoint is None else Path(self.checkpoint) / "preprocessor_config.json"
        if f is None or not f.exists():
            raise GemmaRefError(f"{self.source}: images need the checkpoint's preprocessor_config.json "
                                "(or pass pixel values [I, 3, S, S])")
        return vision.Preprocessing.from_json(f)

    def forward(self, input_ids, decoder_input_ids=None, *, attention_mask=None, images=None,
                trace: dict | None = None) -> np.ndarray:
        """Logits of every decoder position, as transformers' model(input_ids, attention_mask,
        decoder_input_ids).logits: [T] -> [T, V] or [B, T] -> [B, T, V]. Stateless.

        input_ids [S] or [B, S] go to the encoder; decoder_input_ids (starting with the
        decoder start token) to the decoder, at positions 0..T-1.
        """
        if decoder_input_ids is None:
            raise GemmaRefError(f"forward: {self.source} is an encoder-decoder: give the decoder's ids too, "
                                f"forward(input_ids, decoder_input_ids) (they start with token "
                                f"{self.config.decoder_start_token_id})")
        one = np.ndim(input_ids) == 1
        ids = np.atleast_2d(np.asarray(input_ids))
        dec = _ids(np.atleast_2d(np.asarray(decoder_input_ids)), "decoder_input_ids", self.config.decoder.vocab_size)
        if dec.shape[0] != ids.shape[0] or np.ndim(decoder_input_ids) != np.ndim(input_ids):
            raise GemmaRefError(f"forward: input_ids {np.shape(input_ids)} and decoder_input_ids "
                                f"{np.shape(decoder_input_ids)} must have the same batch")
        mask = None if attention_mask is None else np.atleast_2d(np.asarray(attention_mask))
        _, cross = self.encode(ids, mask, images=images, trace=trace)
        positions = np.broadcast_to(np.arange(dec.shape[1]), dec.shape)
        logits = decode(self.weights, self.config, dec, positions, None, cross, n_vocab=self.n_vocab, trace=trace)
        return logits[0] if one else logits

    # --- generation --------------------------------------------------------------------------

    def generate_ids(self, prompts: list[list[int]], *, max_new_tokens: int = api.MAX_NEW_TOKENS,
                     temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                     repetition_penalty: float = 1.0, seed: int | None = 0, stop_ids=None, images=None,
                     stats: dict | None = None) -> Iterator[list[int | None]]:
        """Encode each prompt once, then decode all rows together; yield one new id per row
        per step (None once that row has stopped).

        The prompts are right-padded for the encoder (padding masked: each row sees only its
        own tokens, at positions 0..n-1, as alone); the decoder starts from the start token
        at position 0 and caches its self-attention (the encoder's keys are computed once).
        images: T5Gemma 2, the images of the (single) prompt's image blocks.
        """
        params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
        check_generate_args(prompts, max_new_tokens, seed)
        enc, dec = self.config.encoder, self.config.decoder
        B, S = len(prompts), max(len(p) for p in prompts)
        if S > enc.max_position_embeddings:
            raise GemmaRefError(f"prompt ({S} tokens) exceeds the encoder's context of "
                                f"{enc.max_position_embeddings} tokens")
        if max_new_tokens + 1 > dec.max_position_embeddings:
            raise GemmaRefError(f"max_new_tokens ({max_new_tokens}) exceeds the decoder's context of "
                                f"{dec.max_position_embeddings} tokens")
        stop = self._default_stop if stop_ids is None else set(stop_ids)
        rng = np.random.default_rng(seed)
        ids = np.full((B, S), enc.pad_token_id, np.int64)
        valid = np.zeros((B, S), bool)
        for b, p in enumerate(prompts):
            ids[b, :len(p)], valid[b, :len(p)] = p, True
        stats = {} if stats is None else stats
        stats.update(prompt_tokens=sum(map(len, prompts)), new_tokens=0, decode_steps=0, prompt_seconds=0.0,
                     generation_seconds=0.0)
        t0 = time.perf_counter()
        _, cross = self.encode(ids, valid.astype(np.int64), images=images)
        cache = new_cache(dec, B, max_new_tokens + 1, self.dtype)
        start = self.config.decoder_start_token_id
        positions = np.zeros(B, np.int64)  # of the decoder's next token

        def next_logits(step, done):  # each row's last token at its position (-1: stopped)
            tokens = np.array([[t if t is not None else dec.pad_token_id] for t in step])  # [B, 1]
            pos = np.where(done, -1, positions)[:, None]
            positions[:] += 1
            return decode(self.weights, self.config, tokens, pos, cache, cross, last_only=True, n_vocab=self.n_vocab)

        first = next_logits([start] * B, np.zeros(B, bool))  # the start token at position 0
        # repetition_penalty sees the decoder's ids, the start token included (as transformers')
        yield from decode_steps(first, next_logits, max_new_tokens, rng, params, [[start] for _ in prompts],
                                stop, stats, t0)

    def encoder_ids(self, prompt, images=()) -> list[int]:
        """The encoder's ids for a prompt: text (tokenized with <bos>) or ids; with images
        (T5Gemma 2), each <start_of_image> (or the text's start) becomes an image block as
        Gemma 3's processor expands it."""
        if not _given(images):
            return self._prompt_ids(prompt)
        self._check_images(images)
        if not isinstance(prompt, str):
            return self._prompt_ids(prompt)
        if self.tokenizer is None:
            raise GemmaRefError(f"{self.source}: no tokenizer.model; pass token ids instead")
        if vision.IMAGE_MARKER not in prompt:
            prompt = vision.IMAGE_MARKER * len(images) + prompt
        return vision.expand_prompt(prompt, [0] * len(images), self.vision, self.tokenizer.encode)

    def stream(self, prompt, *, images: Sequence = (), audio: Sequence = (), stop=None, **sampling) -> Iterator:
        """Yield the output as it is decoded: text pieces for a text prompt, ids for ids.

        The prompt is the encoder's input; the output starts afresh (not a continuation).
        stop: None (eos), or token ids and/or strings. stats={} collects timings.
        audio: none (T5Gemma has no audio tower: clips are an error that says so).
        """
        if _given(audio):
            self._audio()  # says this model takes no audio
        if sampling.get("assistant") is not None or sampling.get("draft_tokens") is not None:
            raise GemmaRefError(f"{self.source}: speculative decoding (assistant=...) drafts for a Gemma 4 "
                                f"decoder-only target, not an encoder-decoder")
        stop_ids, stop_strings = self._stop(stop)
        ids = self.encoder_ids(prompt, images)
        steps = self.generate_ids([ids], stop_ids=stop_ids, images=images if _given(images) else None, **sampling)
        if not isinstance(prompt, str):
            return (t for (t,) in steps)
        return self._text_pieces(steps, stop_strings)

    def generate(self, prompt, **kwargs):
        """The output for `prompt` (a string -> text, ids -> ids; a list of either -> a list).
        Keywords: max_new_tokens, temperature (0 = greedy), top_k, top_p, min_p,
        repetition_penalty, seed, stop; images (T5Gemma 2, one prompt)."""
        if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], (str, list, tuple, np.ndarray)):
            if _given(kwargs.get("images")):
                raise GemmaRefError("generate: images go with one prompt at a time, not a batch")
            kwargs.pop("images", None)
            stop_ids, stop_strings = self._stop(kwargs.pop("stop", None))
            if stop_strings:
                return [self.generate(p, stop=stop_ids | set(stop_strings), **kwargs) for p in prompt]
            out = [[] for _ in prompt]
            for step in self.generate_ids([self._prompt_ids(p) for p in prompt], stop_ids=stop_ids, **kwargs):
                for b, t in enumerate(step):
                    if t is not None:
                        out[b].append(t)
            return [self.tokenizer.decode(o) if isinstance(p, str) else o for p, o in zip(prompt, out)]
        pieces = list(self.stream(prompt, **kwargs))
        return "".join(pieces) if isinstance(prompt, str) else pieces

    def logprobs(self, *args, **kwargs):
        raise GemmaRefError(f"{self.source}: logprobs and score of a text are a decoder-only model's; an "
                            "encoder-decoder gives the logits of an output given an input: "
                            "forward(input_ids, decoder_input_ids)")

    score = logprobs

    def embed_images(self, *args, **kwargs):
        raise GemmaRefError(f"{self.source}: an encoder-decoder embeds its images inside the encoder"
                            + (": pass images=[...] to generate, forward or encode" if self.vision else
                               " and this one has no vision_config (T5Gemma 2 checkpoints with a SigLIP "
                               "tower take images)"))

    def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True, tools=None, **kw) -> str:
        """The conversation rendered by the checkpoint's chat template (T5Gemma -it checkpoints
        carry one), as api.Model.chat_prompt; the encoder reads it."""
        if self.chat_template is None:
            raise GemmaRefError(f"{self.source}: this encoder-decoder has no chat template (T5Gemma's -it "
                                "checkpoints carry one); use generate with the input text")
        return api.Model.chat_prompt(self, messages, add_generation_prompt, tools, **kw)

    def __repr__(self):
        return (f"T5GemmaModel({self.config.model_type}, encoder {self.config.encoder.num_hidden_layers} x "
                f"{self.config.encoder.hidden_size}, decoder {self.config.decoder.num_hidden_layers} x "
                f"{self.config.decoder.hidden_size}, source={self.source!r})")


def _given(images) -> bool:
    """Whether there are images (a list of files or images, or an array of pixel values)."""
    return images is not None and len(images) > 0


def _ids(ids, what: str, vocab: int) -> np.ndarray:
    """An integer array [B, T] of ids in [0, vocab), or one clear error."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise GemmaRefError(f"{what} must be a non-empty integer array [T] or [B, T], got {ids.dtype} {ids.shape}")
    if ids.min() < 0 or ids.max() >= vocab:
        raise GemmaRefError(f"{what}: token id out of range: ids must be in [0, {vocab})")
    return ids


def _generation_config(path: Path) -> dict:
    f = path / "generation_config.json"
    return load_json(f) if f.exists() else {}
