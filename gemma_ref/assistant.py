"""Gemma 4 assistants (multi-token-prediction drafters) and speculative decoding with them.

An assistant (config.json model_type `gemma4_assistant`; the 12B's `gemma4_unified_assistant`
is named, and refused: its target is not a model gemma-ref runs) is a few Gemma 4 text
layers that compute no keys or values of their own: every layer attends with the target
model's, those of the target's last layer of the same kind (full / sliding) that computes them. It drafts the tokens
after the target's newest one, all from that one position P (transformers'
`Gemma4AssistantForCausalLM` and `SinglePositionMultiTokenCandidateGenerator`):

    x = pre_projection(concat(target_embed(t) * sqrt(D_target), h))   [1, 1, 2 D_target] -> [1, 1, D]
    x = layers(x)   queries at position P; keys/values: the target's cache, positions < P
                    (sliding layers: the last window + 1 of them, transformers' inclusive
                    bidirectional window), attended both ways (nothing of them is "future")
    x = norm(x);  logits = x @ E.T (or the centroid head);  h' = post_projection(x)
    t' = argmax(logits)

t and h start as the target's newest token and its hidden state (after the final
norm) at position P - 1; then t', h' feed the next draft, P unchanged. The target
checks the drafts in one forward pass; greedy keeps the drafts up to the first that
differs from its own argmax and adds its own token there, so the output is the
target's greedy output (up to float32 ties between a chunked and a one-token pass).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .config import GemmaConfig, LayerSpec
from .config_json import SLIDING, config_fields, load_json
from .errors import GemmaRefError
from .families import Refusals
from .kv_cache import forget_from, new_cache
from .loader import check_and_widen, checkpoint_files, expected_shapes, read_safetensors
from .model import decoder_layer, forward, rms_norm, rope_angles
from .parallel import linear, threads_for
from .sampling import SamplingParams, check_seed
from .weights import Weights

DEFAULT_DRAFT_TOKENS = 20  # transformers' GenerationConfig.num_assistant_tokens default


@dataclass(frozen=True)
class DrafterText(GemmaConfig):
    """The assistant's Gemma 4 text layers (its config.json's text_config).

    Read as a Gemma 4 text model; then every layer takes its keys and values from the
    target by kind (kv_source = FULL or SLIDING, a key of the `shared` dict that
    model.attention_block reads) and masks none of them (window None: which of the
    target's keys it sees, the window included, is `drafter_kv`'s choice).
    """

    @cached_property
    def layers(self) -> tuple[LayerSpec, ...]:
        return tuple(dataclasses.replace(s, kv_source=s.kind, shares_kv=False, window=None)
                     for s in GemmaConfig.layers.func(self))


@dataclass(frozen=True)
class AssistantConfig:
    model_type: str  # "gemma4_assistant"
    text_config: DrafterText  # its layers
    backbone_hidden_size: int  # D of the target (its embeddings and hidden states come in)
    use_ordered_embeddings: bool = False  # the centroid-masked head (E2B, E4B assistants)
    num_centroids: int = 2048  # vocabulary clusters of that head
    centroid_intermediate_top_k: int = 32  # clusters whose tokens get logits
    num_assistant_tokens: int = DEFAULT_DRAFT_TOKENS  # drafts per round (generation_config.json)

    @classmethod
    def from_dir(cls, path: Path) -> "AssistantConfig":
        source = str(path / "config.json")
        d = load_json(path / "config.json")
        if d.get("model_type") != "gemma4_assistant":
            raise GemmaRefError(f"{source}: {d.get('model_type')} (Gemma 4 12B's drafter) is not supported: its "
                                f"target, Gemma 4 12B Unified, is not a model gemma-ref runs")
        text = d.get("text_config")
        if not isinstance(text, dict):
            raise GemmaRefError(f"{source}: an assistant's config needs a text_config object")
        L = text.get("num_hidden_layers")
        if text.get("num_kv_shared_layers") not in (None, 0, L):
            raise GemmaRefError(f"{source}: every layer of an assistant shares the target's keys and "
                                f"values (num_kv_shared_layers = {L}), not {text['num_kv_shared_layers']}")
        for key in ("hidden_size_per_layer_input", "vocab_size_per_layer_input"):
            if text.get(key):
                raise GemmaRefError(f"{source}: text_config.{key} must be 0 in an assistant")
        for key in ("enable_moe_block", "use_double_wide_mlp"):
            if text.get(key):
                raise GemmaRefError(f"{source}: text_config.{key} must be false in an assistant")
        fields = config_fields({**text, "model_type": "gemma4_text", "num_kv_shared_layers": 0},
                               source + " text_config")
        gen = path / "generation_config.json"
        drafts = load_json(gen).get("num_assistant_tokens") if gen.exists() else None
        if drafts is not None and not (isinstance(drafts, int) and not isinstance(drafts, bool) and drafts >= 1):
            raise GemmaRefError(f"{gen}: num_assistant_tokens must be an integer >= 1, not {drafts!r}")
        config = cls(model_type=d["model_type"], text_config=DrafterText(**fields),
                     backbone_hidden_size=_positive(d, "backbone_hidden_size", 1536, source),
                     use_ordered_embeddings=bool(d.get("use_ordered_embeddings", False)),
                     num_centroids=_positive(d, "num_centroids", 2048, source),
                     centroid_intermediate_top_k=_positive(d, "centroid_intermediate_top_k", 32, source),
                     num_assistant_tokens=int(drafts or DEFAULT_DRAFT_TOKENS))
        if config.use_ordered_embeddings and (config.text_config.vocab_size % config.num_centroids or
                                              config.centroid_intermediate_top_k > config.num_centroids):
            raise GemmaRefError(f"{source}: vocab_size {config.text_config.vocab_size} must be a multiple of "
                                f"num_centroids {config.num_centroids}, and centroid_intermediate_top_k "
                                f"at most num_centroids")
        return config

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor: the text layers' (no k/v weights) + the projections (+ centroid head)."""
        t = self.text_config
        D, Db, V = t.hidden_size, self.backbone_hidden_size, t.vocab_size
        shapes = {**expected_shapes(t), "pre_projection.weight": (D, 2 * Db),
                  "post_projection.weight": (Db, D)}
        if self.use_ordered_embeddings:
            shapes["masked_embedding.centroids.weight"] = (self.num_centroids, D)
            shapes["masked_embedding.token_ordering"] = (V,)
        return shapes

    @property
    def num_parameters(self) -> int:
        return sum(int(np.prod(s)) for n, s in self.expected_shapes().items() if not n.endswith("token_ordering"))

    def to_dict(self) -> dict:
        t = self.text_config
        return {"model_type": self.model_type, "backbone_hidden_size": self.backbone_hidden_size,
                "hidden_size": t.hidden_size, "num_hidden_layers": t.num_hidden_layers,
                "layer_types": list(t.layer_types), "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads, "head_dim": t.head_dim,
                "global_head_dim": t.global_head_dim, "intermediate_size": t.intermediate_size,
                "sliding_window": t.sliding_window, "vocab_size": t.vocab_size,
                "use_ordered_embeddings": self.use_ordered_embeddings, "num_centroids": self.num_centroids,
                "centroid_intermediate_top_k": self.centroid_intermediate_top_k,
                "num_assistant_tokens": self.num_assistant_tokens}

    def summary(self) -> list[str]:
        t = self.text_config
        head = (f"centroid-masked: {self.centroid_intermediate_top_k} of {self.num_centroids} clusters "
                f"({t.vocab_size // self.num_centroids} tokens each) get logits, the rest the lowest "
                f"value - 1" if self.use_ordered_embeddings else "tied embedding, no softcap")
        return [
            "assistant         a Gemma 4 MTP drafter: runs only with its target, as "
            "generate(..., assistant=...) / generate --assistant",
            f"input             pre_projection(concat(target embedding, target hidden)) "
            f"{2 * self.backbone_hidden_size} -> {t.hidden_size}; out: post_projection -> "
            f"{self.backbone_hidden_size}",
            f"shared K/V        all {t.num_hidden_layers} layers attend with the target's K/V "
            f"(its last full / sliding layer), queries at one position",
            f"head              {head}",
            f"drafts            {self.num_assistant_tokens} per round (generation_config.json "
            f"num_assistant_tokens; transformers' default {DEFAULT_DRAFT_TOKENS})",
        ]


def _positive(d: dict, key: str, default: int, source: str) -> int:
    v = d.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise GemmaRefError(f"{source}: {key} must be an integer > 0, not {v!r}")
    return v


# --- the drafter's network ------------------------------------------------------


def centroid_logits(x, E, centroids, ordering, top_k):
    """The centroid-masked head (use_ordered_embeddings).     [B, T, D] -> [B, T, V]

    The vocabulary is split into C clusters of V/C tokens (ordering: cluster c owns
    ordering[c*V/C : (c+1)*V/C]); only the top_k clusters by x @ centroids.T get true
    logits x @ E[token]; every other token gets (the smallest of those, over the call) - 1.
    """
    B, T, _ = x.shape
    V, C = E.shape[0], centroids.shape[0]
    scores = linear(x, centroids)  # [B, T, C]
    top = np.argsort(-scores, axis=-1, kind="stable")[..., :top_k]  # [B, T, k]
    rows = ordering.reshape(C, V // C)[top].reshape(B, T, -1)  # [B, T, k*V/C] token ids
    picked = np.einsum("btd,btjd->btj", x, E[rows])  # [B, T, k*V/C]
    out = np.full((B, T, V), picked.min() - 1.0, x.dtype)
    np.put_along_axis(out, rows, picked, axis=-1)
    return out


def drafter_kv(cache, source: int, P: int, window: int | None):
    """The target's keys and values the drafter attends over (transformers' shared_kv_states).

    cache[source] [B, C, K, H]: the target's layer `source` -> k, v, and their positions
    [B, C] with -1 for the slots the drafter does not see: positions >= P (not the
    target's yet), and on a sliding layer those before P - 1 - window.
    """
    c = cache[source]
    seen = (c.pos >= 0) & (c.pos < P)
    if window is not None:
        seen &= c.pos >= P - 1 - window
    return c.k, c.v, np.where(seen, c.pos, -1)


class Assistant(Refusals):
    """A loaded Gemma 4 assistant: drafts for its target, never generates alone."""

    kind = "drafter"  # not a model alone (cli.common.load says what to use instead)

    def __init__(self, config: AssistantConfig, weights: dict, *, source: str = "", dtype="float32"):
        self.config, self.source, self.dtype = config, source, np.dtype(dtype)
        self.tokenizer, self.chat_template, self.instruction_tuned, self.checkpoint = None, None, False, None
        ordering = weights.pop("masked_embedding.token_ordering", None)
        self.ordering = None if ordering is None else np.asarray(ordering).astype(np.int64)
        self.weights = Weights(weights, self.dtype)
        self.weights.fuse(config.text_config)

    @classmethod
    def from_checkpoint(cls, path: Path, *, source: str, dtype="float32", max_memory=None,
                        progress=True) -> "Assistant":
        config = AssistantConfig.from_dir(path)
        found = {}
        for f in checkpoint_files(path):
            found.update(read_safetensors(f))
        found.pop("lm_head.weight", None)  # tied: the embedding again
        ordering = found.pop("masked_embedding.token_ordering", None)
        V = config.text_config.vocab_size
        if config.use_ordered_embeddings:  # an index table: read as stored (int64), checked
            order = None if ordering is None else np.asarray(ordering.read_stored()).astype(np.int64)
            if order is None or order.shape != (V,) or not np.array_equal(np.sort(order), np.arange(V)):
                raise GemmaRefError(f"{path}: masked_embedding.token_ordering must be a permutation of the "
                                    f"{V} token ids")
        elif ordering is not None:
            raise GemmaRefError(f"{path}: unexpected tensor masked_embedding.token_ordering "
                                f"(use_ordered_embeddings is false)")
        extra = {n: s for n, s in config.expected_shapes().items()
                 if not n.startswith("model.") and not n.endswith("token_ordering")}
        weights = check_and_widen(found, config.text_config, str(path), max_memory, progress, extra)
        if config.use_ordered_embeddings:
            weights["masked_embedding.token_ordering"] = order
        model = cls(config, weights, source=source, dtype=dtype)
        model.checkpoint = path
        return model

    @staticmethod
    def describe(config_file) -> dict:
        config = AssistantConfig.from_dir(Path(config_file).parent)
        return {"parameters": config.num_parameters, "config": config.to_dict(),
                "chat_template": "none (a drafter: it continues its target's prompts)",
                "special": config.summary()}

    def __repr__(self):
        t = self.config.text_config
        return (f"Assistant({self.source!r}, {t.num_hidden_layers} layers, D {t.hidden_size}, "
                f"for a target of D {self.config.backbone_hidden_size})")

    def _not_alone(self, *args, **kwargs):
        raise GemmaRefError(f"{self.source}: a Gemma 4 assistant drafts for its target model; load the "
                            f"target and pass this as generate(..., assistant=...) (CLI: --assistant)")

    generate = stream = chat = stream_chat = chat_prompt = forward = score = logprobs = _not_alone

    # --- drafting ---

    def sources(self, target_config: GemmaConfig) -> dict[str, int]:
        """Per kind of layer, the target layer whose keys and values the drafter reads: the
        last of that kind that computes its own (transformers' kv_sharing_modes "store")."""
        return {kind: max(i for i, s in enumerate(target_config.layers)
                          if s.kind == kind and s.kv_source == i)
                for kind in set(self.config.text_config.layer_types)}

    def check_target(self, target) -> None:
        """A GemmaRefError unless `target` is a Gemma 4 model this assistant fits."""
        t, a = target.config, self.config.text_config
        if not isinstance(t, GemmaConfig) or t.model_type != "gemma4_text":
            raise GemmaRefError(f"assistant {self.source}: the target must be a Gemma 4 model, not "
                                f"{getattr(t, 'model_type', type(target).__name__)}")
        problems = []
        if t.hidden_size != self.config.backbone_hidden_size:
            problems.append(f"hidden_size {t.hidden_size} (the assistant expects "
                            f"{self.config.backbone_hidden_size})")
        if t.vocab_size != a.vocab_size:
            problems.append(f"vocab_size {t.vocab_size} (the assistant has {a.vocab_size})")
        kinds = {s.kind for s in t.layers}
        for kind in set(a.layer_types):
            if kind not in kinds:
                problems.append(f"no {kind} layer")
                continue
            ts = t.layers[max(i for i, s in enumerate(t.layers) if s.kind == kind)]
            ds = next(s for s in a.layers if s.kind == kind)
            if (ts.head_dim, ts.num_key_value_heads) != (ds.head_dim, ds.num_key_value_heads):
                problems.append(f"{kind} layers with head_dim {ts.head_dim} x {ts.num_key_value_heads} kv "
                                f"heads (the assistant: {ds.head_dim} x {ds.num_key_value_heads})")
        if problems:
            raise GemmaRefError(f"assistant {self.source} does not fit the target {target.source}: "
                                f"the target has {'; '.join(problems)}")

    def draft_step(self, embed, h, P: int, kv: dict):
        """One draft from position P.   embed, h [B, 1, D_target] -> logits [B, 1, V], h' [B, 1, D_target]

        embed: the target's scaled embedding of the newest token; h: the target's hidden
        state before it (or the previous draft's h'); kv: kind -> drafter_kv(...).
        """
        W, cfg = self.weights, self.config.text_config
        positions = np.full((embed.shape[0], 1), P, np.int64)
        ropes = {r: rope_angles(positions, r.head_dim, r.theta, r.factor, W.dtype, r.rotated) for r in cfg.ropes}
        with threads_for(embed.shape[0], W.narrow):  # the cores shared out as for decoding (parallel.py)
            x = linear(np.concatenate([embed, h], axis=-1), W["pre_projection.weight"])  # [B, 1, D]
            for i, spec in enumerate(cfg.layers):
                x = decoder_layer(x, W, i, cfg, ropes[spec.rope], positions, None, kv, None)
            x = rms_norm(x, W["model.norm.weight"], cfg.rms_norm_eps, cfg.norm_offset)  # [B, 1, D]
            E = W["model.embed_tokens.weight"]  # the tied head
            if self.config.use_ordered_embeddings:
                logits = centroid_logits(x, E, W["masked_embedding.centroids.weight"], self.ordering,
                                         self.config.centroid_intermediate_top_k)
            else:
                logits = linear(x, E)  # [B, 1, V] (no softcap: transformers applies none here)
            return logits, linear(x, W["post_projection.weight"])  # [B, 1, D_target]

    def drafts(self, target, cache, token: int, h, P: int, n: int) -> tuple[list[int], list]:
        """n greedy drafts after `token` (at position P), from the target's cache and its
        hidden state h [1, 1, D_target] at P - 1. -> ids, logits [V] of each."""
        window = self.config.text_config.sliding_window
        kv = {kind: drafter_kv(cache, i, P, window if kind == SLIDING else None)
              for kind, i in self.sources(target.config).items()}
        scale = np.asarray(np.sqrt(target.config.hidden_size), target.weights.dtype)
        ids, all_logits = [], []
        for _ in range(n):
            embed = target.weights.rows("model.embed_tokens.weight", np.array([[token]])) * scale
            logits, h = self.draft_step(embed, h, P, kv)
            token = int(np.argmax(logits[0, -1]))
            ids.append(token)
            all_logits.append(logits[0, -1])
        return ids, all_logits

    # --- speculative decoding ---

    def generate_ids(self, target, prompt: list[int], *, max_new_tokens: int = 128, stop_ids=None,
                     draft_tokens: int | None = None, stats: dict | None = None, temperature: float = 0.0,
                     top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                     seed: int | None = 0):
        """target.generate_ids for one prompt, speculatively: yields [id] per new token.

        Each round the assistant drafts k tokens, the target runs once over the newest
        token and the k drafts, and greedy keeps the drafts it agrees with plus its own
        next token. stats: as Model.generate_ids, + drafted, accepted and draft_seconds
        (decode_steps counts the target's passes after the prompt's).
        """
        self.check_target(target)
        params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)  # checked
        check_seed(seed)
        if params.temperature != 0 or params.repetition_penalty != 1:
            raise GemmaRefError("speculative decoding (assistant=...) is greedy only: temperature 0 and "
                                "no repetition_penalty")
        if not (isinstance(max_new_tokens, (int, np.integer)) and not isinstance(max_new_tokens, bool)
                and max_new_tokens >= 0):
            raise GemmaRefError(f"max_new_tokens must be an integer >= 0, not {max_new_tokens!r}")
        if not prompt:
            raise GemmaRefError("generate: empty prompt")
        k = self.config.num_assistant_tokens if draft_tokens is None else draft_tokens
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise GemmaRefError(f"draft_tokens must be an integer >= 1, not {k!r}")
        if len(prompt) + max_new_tokens > target.config.max_position_embeddings:
            raise GemmaRefError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                                f"model's context of {target.config.max_position_embeddings} tokens")
        stop = target._default_stop if stop_ids is None else set(stop_ids)
        return self._speculate(target, prompt, max_new_tokens, stop, k, {} if stats is None else stats)

    def _speculate(self, target, prompt, max_new_tokens, stop, k, stats):
        """generate_ids' loop, its arguments checked."""
        t_cfg, window = target.config, self.config.text_config.sliding_window or 0
        max_len = len(prompt) + max_new_tokens + k + 1
        # Sliding rings keep what the drafter reads (window + 1 back) after k drafts are taken back.
        spare = max(0, window + 1 - (t_cfg.sliding_window or 0)) + k + 1
        cache = new_cache(t_cfg, 1, max_len, target.dtype, spare=spare)
        stats.update(prompt_tokens=len(prompt), new_tokens=0, decode_steps=0, prompt_seconds=0.0,
                     generation_seconds=0.0, drafted=0, accepted=0, draft_seconds=0.0)
        t0 = time.perf_counter()

        def run(ids, start, last_only):  # the target over ids at start.. -> logits, hidden
            return forward(target.weights, t_cfg, np.array([ids]), np.arange(start, start + len(ids))[None],
                           cache, last_only=last_only, n_vocab=target.n_vocab, return_hidden=True)

        from .api import PREFILL_CHUNK
        for start in range(0, len(prompt), PREFILL_CHUNK):
            logits, hidden = run(prompt[start:start + PREFILL_CHUNK], start, True)
        token, h, P = int(np.argmax(logits[0, -1])), hidden[:, -1:], len(prompt)
        decided, emitted = [token], 0  # decided: the target's tokens not yet emitted; token is the last
        while True:
            for t in decided:
                stats["prompt_seconds" if emitted == 0 else "generation_seconds"] += time.perf_counter() - t0
                if t in stop or emitted == max_new_tokens:
                    return
                emitted += 1
                stats["new_tokens"] += 1
                yield [t]
                t0 = time.perf_counter()
            if emitted == max_new_tokens:
                return
            # A round: drafts after `token` (at P), never past max_new_tokens; one target pass checks them.
            n = min(k, max_new_tokens - emitted - 1)
            t_draft = time.perf_counter()
            drafts = self.drafts(target, cache, token, h, P, n)[0] if n > 0 else []
            stats["draft_seconds"] += time.perf_counter() - t_draft
            logits, hidden = run([token] + drafts, P, False)  # [1, n+1, V]
            choice = np.argmax(logits[0], axis=-1)  # the target's greedy token after each position
            m = next((j for j, d in enumerate(drafts) if d != choice[j]), len(drafts))  # drafts kept
            stats["decode_steps"] += 1
            stats["drafted"] += len(drafts)
            stats["accepted"] += m
            forget_from(cache, P + m + 1)  # the rejected drafts' keys and values
            decided = drafts[:m] + [int(choice[m])]
            token, h, P = decided[-1], hidden[:, m:m + 1], P + m + 1
