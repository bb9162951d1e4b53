#!/usr/bin/env python3
"""Train a tiny Gemma-style SentencePiece tokenizer and record golden ids.

Writes (relative to the repository root):

  tests/data/tokenizer/tiny.model        SentencePiece BPE model (~512 pieces)
  tests/data/tokenizer/golden_ids.json   ids/decodes from Hugging Face transformers
  tests/data/tokenizer/tiny.tokenizer.json  the same tokenizer as transformers saves it

The model mimics the settings of the real Gemma tokenizers: BPE, byte
fallback, split digits, no dummy prefix, no whitespace normalisation,
identity normaliser, pad=0 eos=1 bos=2 unk=3 and user-defined symbols
<mask>, <start_of_turn>, <end_of_turn> (ids 4, 5, 6 here; the real models
put <start_of_turn>/<end_of_turn> at 106/107).

The golden ids come from ``transformers.GemmaTokenizer.from_pretrained`` on a
directory holding this file as ``tokenizer.model`` (in transformers 5 the
only Gemma tokenizer class is the tokenizers-backed ``GemmaTokenizer``; it
converts the .model via ``SentencePieceExtractor``), with
``add_special_tokens=True``.  Raw SentencePiece ids are recorded alongside
and any disagreement is written into a ``note`` field.

Requires: sentencepiece, protobuf, transformers, tokenizers.
Deterministic: rerunning gives byte-identical output files.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tests" / "data" / "tokenizer"
VOCAB_SIZE = 512

USER_DEFINED_SYMBOLS = ["<mask>", "<start_of_turn>", "<end_of_turn>"]

# Fixed training text: English, French and code.  Each paragraph is one
# training "sentence" (newlines and tabs inside are kept as characters).
TRAINING_PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog. The dog was not amused, "
    "and the fox ran back into the forest before the farmer woke up.",
    "Once upon a time there was a small village by the sea. The people of the "
    "village were fishermen, and every morning they went out on their boats.",
    "In the evening, the children played on the beach while their parents "
    "repaired the nets and talked about the weather and the price of fish.",
    "Language models predict the next token given the previous tokens. A "
    "transformer uses attention to mix information between positions.",
    "The model reads a prompt, computes the logits for the next token, picks "
    "the most likely one, and repeats until it reaches the end of the text.",
    "This is a test. This is only a test. If this had been a real emergency, "
    "you would have been told where to go and what to do.",
    "She sells sea shells by the sea shore. The shells she sells are surely "
    "sea shells. So if she sells shells on the sea shore, I am sure she sells "
    "sea shore shells.",
    "Hello, world! How are you today? I am fine, thank you. What time is it? "
    "It is twelve o'clock. Let us have lunch together in the garden.",
    "There are 365 days in a year, 24 hours in a day, 60 minutes in an hour "
    "and 60 seconds in a minute. The year 2024 had 366 days.",
    "Call 555-0123 or write to 42 Main Street, Springfield, before 10:30 on "
    "March 3rd, 1999. The total was $1,234.56 including 20% tax.",
    "Le renard brun rapide saute par-dessus le chien paresseux. Le chien "
    "n'était pas content, et le renard est retourné dans la forêt.",
    "Il était une fois un petit village au bord de la mer. Les gens du village "
    "étaient des pêcheurs, et chaque matin ils partaient sur leurs bateaux.",
    "Le soir, les enfants jouaient sur la plage pendant que leurs parents "
    "réparaient les filets et parlaient du temps qu'il faisait.",
    "Où est la bibliothèque? Elle est à côté de l'école, près du café. "
    "Ça coûte trois euros. Je préfère le thé au café, mais ma sœur préfère "
    "le chocolat chaud. Noël approche, et l'hiver sera très froid.",
    "Bonjour, comment allez-vous? Très bien, merci. Et vous? "
    "Nous allons à la gare pour prendre le train de huit heures.",
    "def greet(name):\n    \"\"\"Return a greeting.\"\"\"\n    return f\"Hello, {name}!\"\n\n"
    "for i in range(10):\n    print(greet(str(i)))\n",
    "import numpy as np\n\n\ndef softmax(x, axis=-1):\n    x = x - x.max(axis=axis, "
    "keepdims=True)\n    e = np.exp(x)\n    return e / e.sum(axis=axis, keepdims=True)\n",
    "class Model:\n    def __init__(self, config):\n        self.config = config\n"
    "        self.layers = []\n\n    def forward(self, input_ids):\n"
    "        hidden = self.embed(input_ids)\n        for layer in self.layers:\n"
    "            hidden = layer(hidden)\n        return hidden\n",
    "int main(void) {\n\tint total = 0;\n\tfor (int i = 0; i < 100; i++) {\n"
    "\t\ttotal += i * i;\n\t}\n\tprintf(\"%d\\n\", total);\n\treturn 0;\n}\n",
    "if (x == 0 && y != 1) { return [a, b, c]; } else { return {\"key\": "
    "\"value\", \"list\": [1, 2, 3]}; }",
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
    "<start_of_turn>model\nThe capital of France is Paris.<end_of_turn>\n",
    "<start_of_turn>user\nÉcris un poème sur la mer.<end_of_turn>\n"
    "<start_of_turn>model\nLa mer est bleue, le ciel est clair.<end_of_turn>\n",
    "    indented line with four spaces\n        eight spaces\n\ttab\n\n\nthree newlines",
]

TRAINER_KWARGS = dict(
    model_type="bpe",
    vocab_size=VOCAB_SIZE,
    byte_fallback=True,
    split_digits=True,
    add_dummy_prefix=False,
    remove_extra_whitespaces=False,
    normalization_rule_name="identity",
    allow_whitespace_only_pieces=True,
    split_by_whitespace=True,
    character_coverage=1.0,
    pad_id=0,
    pad_piece="<pad>",
    eos_id=1,
    eos_piece="<eos>",
    bos_id=2,
    bos_piece="<bos>",
    unk_id=3,
    unk_piece="<unk>",
    user_defined_symbols=USER_DEFINED_SYMBOLS,
    input_sentence_size=0,
    shuffle_input_sentence=False,
    num_threads=1,
    max_sentence_length=8192,
    minloglevel=2,
)

TEST_STRINGS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "  two leading and trailing two  ",
    "runs   of    spaces     here",
    "tabs\tand\nnewlines\n\nand\r\nCRLF",
    "\n\n\n",
    "12345",
    "price: $1,234.56 on 2024-03-03",
    "emoji 😀👍 and symbols ∑ → ∞",
    "CJK: 你好，世界。日本語のテキスト。한국어",
    "Où est la bibliothèque? Ça coûte très cher, ma sœur.",
    "def f(x):\n    return x * 2  # comment\n",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "literal <mask> and <unk> and <eos> text",
    "",
]


def train_model() -> bytes:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING_PARAGRAPHS), model_writer=buf, **TRAINER_KWARGS
    )
    return buf.getvalue()


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    model_bytes = train_model()
    # Train a second time to check determinism of the trainer itself.
    if train_model() != model_bytes:
        print("ERROR: SentencePiece training is not deterministic", file=sys.stderr)
        return 1
    model_path = OUT_DIR / "tiny.model"
    model_path.write_bytes(model_bytes)

    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    vocab_size = sp.get_piece_size()
    assert sp.pad_id() == 0 and sp.eos_id() == 1 and sp.bos_id() == 2 and sp.unk_id() == 3

    import tokenizers
    import transformers
    from transformers import GemmaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(model_path, os.path.join(tmp, "tokenizer.model"))
        # NB: in transformers 5.23 a GemmaTokenizer built from a bare .model has
        # add_bos_token=False (TokenizersBackend default) despite the class
        # docstring; the Hub checkpoints set add_bos_token=True in
        # tokenizer_config.json, so pass it explicitly.
        tok = GemmaTokenizer.from_pretrained(tmp, add_bos_token=True)
        # The same tokenizer as transformers' tokenizer.json (what a repo without a
        # tokenizer.model, Gemma 4's, ships): gemma-ref must read it to the same ids.
        tok.save_pretrained(os.path.join(tmp, "saved"))
        shutil.copy(os.path.join(tmp, "saved", "tokenizer.json"), OUT_DIR / "tiny.tokenizer.json")
    if tok.add_bos_token is not True or tok("a")["input_ids"][0] != 2:
        print("ERROR: tokenizer does not prepend bos", file=sys.stderr)
        return 1

    if len(tok) != vocab_size:
        print(f"WARNING: HF tokenizer len {len(tok)} != spm vocab {vocab_size}")

    cases = []
    n_disagree = 0
    for text in TEST_STRINGS:
        ids = tok(text, add_special_tokens=True)["input_ids"]
        hf_tokens = tok.convert_ids_to_tokens(ids)
        spm_ids = [sp.bos_id()] + sp.encode(text, out_type=int)
        case = {
            "text": text,
            "ids": ids,
            "tokens": hf_tokens,
            "decode": tok.decode(ids, skip_special_tokens=False),
            "decode_skip_special": tok.decode(ids, skip_special_tokens=True),
            "spm_ids": spm_ids,
            "spm_decode": sp.decode(spm_ids),
        }
        notes = []
        if spm_ids != ids:
            n_disagree += 1
            notes.append(
                "transformers and raw SentencePiece disagree (spm_ids = [bos] + "
                "SentencePieceProcessor.encode(text))"
            )
            if "<bos>" in text:
                notes.append(
                    "transformers matches the literal text '<bos>' as the special token "
                    "(id 2), so the sequence starts with two bos ids; SentencePiece treats "
                    "control symbols in text as plain characters"
                )
            for special in ("<eos>", "<unk>", "<pad>"):
                if special in text:
                    notes.append(
                        f"transformers maps literal '{special}' text to its special id; "
                        "SentencePiece encodes it as plain characters"
                    )
        if case["decode_skip_special"] != case["spm_decode"]:
            notes.append(
                "decode_skip_special (transformers) differs from spm_decode (SentencePiece drops "
                "control pieces such as <bos>/<eos>/<pad> when decoding)"
            )
        if notes:
            case["note"] = "; ".join(notes)
        cases.append(case)

    out = {
        "provenance": {
            "script": "scripts/make_tiny_tokenizer.py",
            "command": "python scripts/make_tiny_tokenizer.py",
            "tokenizer_class": "transformers.GemmaTokenizer.from_pretrained(<dir with tiny.model "
            "copied to tokenizer.model>, add_bos_token=True)",
            "tokenizer_class_note": "transformers 5 has a single GemmaTokenizer class (tokenizers "
            "backend, BPE with byte_fallback, normalizer Replace(' ', '\u2581'), no pre-split); "
            "GemmaTokenizerFast is an alias. Built from a bare .model, add_bos_token defaults to "
            "False, so it is passed explicitly as the Hub tokenizer_config.json does.",
            "encode_call": "tok(text, add_special_tokens=True)['input_ids']",
            "decode_call": "tok.decode(ids, skip_special_tokens=False) / skip_special_tokens=True",
            "spm_call": "[bos_id] + SentencePieceProcessor(model).encode(text, out_type=int)",
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "sentencepiece": spm.__version__,
            "python": sys.version.split()[0],
            "trainer_kwargs": {k: v for k, v in TRAINER_KWARGS.items()},
        },
        "vocab_size": vocab_size,
        "special_ids": {
            "<pad>": 0,
            "<eos>": 1,
            "<bos>": 2,
            "<unk>": 3,
            **{s: sp.piece_to_id(s) for s in USER_DEFINED_SYMBOLS},
        },
        "cases": cases,
    }
    golden_path = OUT_DIR / "golden_ids.json"
    golden_path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    print(f"wrote {model_path} ({model_path.stat().st_size} bytes, vocab {vocab_size})")
    print(f"wrote {golden_path} ({len(cases)} cases, {n_disagree} hf/spm disagreements)")
    for c in cases:
        flag = "DIFF" if "note" in c else "ok  "
        print(f"{flag} {c['text']!r:70.70} {len(c['ids'])} ids")
        if "note" in c:
            print(f"     hf : {c['ids']}\n     spm: {c['spm_ids']}\n     {c['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
