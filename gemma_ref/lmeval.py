"""gemma-ref as a model of EleutherAI's lm-evaluation-harness (the `eval` extra).

    import gemma_ref.lmeval                        # registers the model name "gemma-ref"
    lm_eval.simple_evaluate(model="gemma-ref", model_args="pretrained=3-270m-gguf", tasks=[...])
    lm_eval.simple_evaluate(model=GemmaRefLM(model=gemma_ref.Model.from_pretrained(...)), ...)

or `gemma-ref eval --model M --tasks T`. The three request types lm-eval sends:

* loglikelihood(context, continuation) -> (log p(continuation | context), is_greedy).
  Text is tokenized by lm-eval's own TemplateLM code, as its `hf` model does (trailing
  spaces of the context move to the continuation; the pair is encoded together and
  split where the context's encoding ends; an empty context becomes `<bos>`). Requests
  that share a context (the choices of one multiple-choice question) run the context
  once and all their continuations together, as one batch over a copy of its KV cache.
* loglikelihood_rolling(text) -> log p(text), over lm-eval's own rolling windows of
  max_length tokens (utils.get_rolling_token_windows, as `hf`).
* generate_until(context, {until, max_gen_toks, do_sample, temperature, ...}) -> text,
  cut at the first stop string; prompts of the same settings decode together in
  batches of batch_size (left-padded).

Context longer than max_length (default: the model's max_position_embeddings) is
left-truncated as `hf` does. Log-probabilities are gemma-ref's float64 log-softmax
of its float32 (or --dtype) logits (scoring.log_softmax_at).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict

import numpy as np

from .errors import GemmaRefError

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - the eval extra is missing
    raise GemmaRefError("lm-evaluation-harness is not installed: pip install 'gemma-ref[eval]' "
                        "(or: pip install lm-eval)") from e

from .scoring import log_softmax_at, token_logprobs

BATCH_TOKENS = 512  # continuation tokens per batched forward: bounds the [B, T, V] logits


@register_model("gemma-ref", "gemma_ref")
class GemmaRefLM(TemplateLM):
    """lm-eval's LM interface over a gemma_ref.Model."""

    def __init__(self, pretrained: str | None = None, model=None, dtype: str = "float32",
                 batch_size: int | str = 8, max_length: int | None = None,
                 max_gen_toks: int = 256, threads: int | None = None, seed: int = 0, **kwargs):
        super().__init__()
        from .api import Model

        if threads is not None:
            from .parallel import set_threads

            set_threads(int(threads))
        self.model = model if model is not None else Model.from_pretrained(pretrained, dtype=dtype)
        if self.model.tokenizer is None:
            raise GemmaRefError(f"{self.model.source}: lm-eval needs a tokenizer (tokenizer.model)")
        self.tok = self.model.tokenizer
        auto = batch_size is None or str(batch_size).startswith("auto")  # lm-eval's "auto": our default
        self._batch_size = 8 if auto else int(batch_size)
        self._max_length = int(max_length) if max_length else self.model.config.max_position_embeddings
        self._max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)

    # --- what TemplateLM needs ---------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id  # what an empty context becomes, as `hf` does for Gemma

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return self.model.source.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len=None,
                   **kwargs) -> list[int]:
        """<bos> first unless add_special_tokens is False (Gemma tokenizers add it; a text that
        already starts with "<bos>" keeps just that one)."""
        ids = self.tok.encode(string, add_bos=add_special_tokens is not False)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [ids] if isinstance(ids, (int, np.integer)) else list(ids)
        return hf_decode(self.tok, ids, skip_special_tokens)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The Jinja source of the model's chat template (lm-eval records it), or None if off."""
        if chat_template is False or chat_template is None:
            return None
        t = self.model.chat_template
        return t.templates.get(chat_template) if isinstance(chat_template, str) else t.pick()

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        """A few-shot prompt as a conversation (lm-eval's --apply_chat_template): the model's
        chat template, as for chat (the rendered text starts with <bos>; tok_encode keeps one)."""
        return self.model.chat_prompt(chat_history, add_generation_prompt=add_generation_prompt)

    # --- loglikelihood --------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """requests: ((context, continuation), context ids, continuation ids) -> (logprob, greedy)."""
        out: list = [None] * len(requests)
        groups = defaultdict(list)  # context ids -> [(request index, continuation ids)]
        for i, (_, ctx, cont) in enumerate(requests):
            if not cont:
                raise GemmaRefError("lm-eval: a continuation with no tokens")
            ids = (list(ctx) + list(cont))[-(self.max_length + 1):]  # as `hf` truncates
            ctx = ids[:len(ids) - len(cont)]
            if not ctx:
                raise GemmaRefError(f"lm-eval: a continuation of {len(cont)} tokens does not fit "
                                    f"max_length {self.max_length}")
            groups[tuple(ctx)].append((i, list(cont)))
        from tqdm import tqdm

        for ctx, items in tqdm(groups.items(), desc="gemma-ref loglikelihood", unit="context",
                               disable=disable_tqdm or len(groups) < 2):
            for (i, _), result in zip(items, self._score_shared_context(list(ctx), [c for _, c in items])):
                out[i] = result
            if self.cache_hook is not None:
                for i, _ in items:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], out[i])
        return out

    def _score_shared_context(self, ctx: list[int], conts: list[list[int]]) -> list[tuple[float, bool]]:
        """Log-likelihoods of several continuations of one context: the context runs once,
        then the continuations run together (right-padded) on copies of its KV cache."""
        m = self.model
        longest = max(len(c) for c in conts)
        if longest > BATCH_TOKENS:  # a long continuation (rolling windows): chunked alone
            return [self._score_alone(ctx, c) for c in conts]
        cache = m.new_cache(1, len(ctx) + longest)
        for s in range(0, len(ctx) - 1, BATCH_TOKENS):  # ctx[:-1]: no logits needed
            m._network(np.array([ctx[s:min(s + BATCH_TOKENS, len(ctx) - 1)]]), cache=cache, last_only=True)
        results = []
        per_batch = max(1, BATCH_TOKENS // longest)
        for b0 in range(0, len(conts), per_batch):
            batch = conts[b0:b0 + per_batch]
            B, T = len(batch), max(len(c) for c in batch)
            ids = np.full((B, T), m.config.pad_token_id, np.int64)
            pos = np.full((B, T), -1, np.int64)
            for b, c in enumerate(batch):  # row b: last context token, then c[:-1]
                row = [ctx[-1]] + c[:-1]
                ids[b, :len(row)] = row
                pos[b, :len(row)] = np.arange(len(ctx) - 1, len(ctx) - 1 + len(row))
            logits = m._network(ids, pos, _repeat_cache(cache, B))  # [B, T, V]
            for b, c in enumerate(batch):
                lp = log_softmax_at(logits[b, :len(c)], np.array(c))
                greedy = bool((logits[b, :len(c)].argmax(-1) == np.array(c)).all())
                results.append((float(lp.sum()), greedy))
        return results

    def _score_alone(self, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
        lp, top = token_logprobs(self.model, np.array(ctx + cont, np.int64), start=len(ctx))
        return float(lp.sum()), bool(top.all())

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(text) over lm-eval's rolling windows (max_length tokens, <bos> first)."""
        from lm_eval import utils

        out = []
        for (text,) in [r.args for r in requests]:
            windows = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            total = sum(self._loglikelihood_tokens([((None, None), ctx, cont)], disable_tqdm=True)[0][0]
                        for ctx, cont in windows)
            out.append(total)
            if self.cache_hook is not None:
                self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return out

    # --- generation ----------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from lm_eval.models.utils import (handle_stop_sequences, normalize_gen_kwargs,
                                          postprocess_generated_text)

        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        out: list = [None] * len(requests)
        groups = defaultdict(list)  # the same generation settings decode together
        for i, (context, gen_kwargs) in enumerate(r.args for r in requests):
            groups[repr(sorted(gen_kwargs.items()))].append((i, context, gen_kwargs))
        for items in groups.values():
            kwargs = normalize_gen_kwargs(copy.deepcopy(items[0][2]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen = int(kwargs.pop("max_gen_toks"))
            sampling = self._sampling(kwargs)
            max_ctx = self.max_length - max_gen
            if max_ctx <= 0:
                raise GemmaRefError(f"lm-eval: max_gen_toks {max_gen} leaves no room for a prompt "
                                    f"in max_length {self.max_length}")
            items = sorted(items, key=lambda x: -len(self.tok_encode(x[1])))  # similar lengths together
            for b0 in range(0, len(items), self.batch_size):
                batch = items[b0:b0 + self.batch_size]
                prompts = [self.tok_encode(context, left_truncate_len=max_ctx) for _, context, _ in batch]
                texts = self._generate(prompts, until, max_gen, sampling)
                for (i, context, gen_kwargs), text in zip(batch, texts):
                    out[i] = postprocess_generated_text(text, until, None)
                    if self.cache_hook is not None:
                        self.cache_hook.add_partial("generate_until", (context, gen_kwargs), out[i])
        return out

    def _sampling(self, kwargs: dict) -> dict:
        if not kwargs.pop("do_sample", False):
            return dict(temperature=0.0)
        return dict(temperature=float(kwargs.get("temperature", 1.0)), top_k=int(kwargs.get("top_k", 0) or 0),
                    top_p=float(kwargs.get("top_p", 1.0) or 1.0), seed=self.seed)

    def _generate(self, prompts: list[list[int]], until: list[str], max_gen: int, sampling: dict) -> list[str]:
        """Decode a batch; a row is done at a stop id or once its text holds a stop string."""
        new = [[] for _ in prompts]
        done = [False] * len(prompts)
        for step in self.model.generate_ids(prompts, max_new_tokens=max_gen, **sampling):
            for b, t in enumerate(step):
                if t is None or done[b]:
                    done[b] = True
                    continue
                new[b].append(t)
                if any(s and s in hf_decode(self.tok, new[b][-64:]) for s in until):
                    done[b] = True
            if all(done):
                break
        return [hf_decode(self.tok, ids) for ids in new]


def hf_decode(tok, ids, skip_special_tokens: bool = True) -> str:
    """Text of ids as transformers' Gemma tokenizer decodes it (what lm-eval's `hf` model
    returns): pieces with "▁" as a space; a run of byte pieces (<0xHH>) that is not valid
    UTF-8 gives one U+FFFD per byte (SentencePiece gives one per invalid sequence);
    control tokens (<bos>, <eos>, ...) are dropped, or written as their piece."""
    sp, out, run = tok.sp, [], bytearray()

    def flush():
        if run:
            try:
                out.append(run.decode("utf-8"))
            except UnicodeDecodeError:
                out.append("\ufffd" * len(run))
            run.clear()

    for i in (int(i) for i in ids):
        if sp.is_byte(i):
            run.append(int(sp.id_to_piece(i)[3:5], 16))
            continue
        flush()
        if sp.is_control(i) or sp.is_unknown(i):
            if not skip_special_tokens:
                out.append(sp.id_to_piece(i))
            continue
        out.append(sp.id_to_piece(i).replace("\u2581", " "))
    flush()
    return "".join(out)


def _repeat_cache(cache, B: int):
    """A copy of a batch-1 KV cache for B rows (each layer's arrays repeated along axis 0)."""
    copies = {}

    def repeat(layer):
        if layer is None or not dataclasses.is_dataclass(layer):  # e.g. a layer that owns no cache
            return layer
        if id(layer) not in copies:  # layers that share one cache object keep sharing it
            fields = {f.name: getattr(layer, f.name) for f in dataclasses.fields(layer)}
            copies[id(layer)] = type(layer)(**{k: np.repeat(v, B, axis=0) if isinstance(v, np.ndarray)
                                               else v for k, v in fields.items()})
        return copies[id(layer)]

    return [repeat(layer) for layer in cache]
