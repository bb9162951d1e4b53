#!/usr/bin/env python3
"""Chat with images: transformers' processors' apply_chat_template on the tiny vision checkpoints.

Writes tests/data/vision/chat_golden.json: for tests/data/vision/gemma3-vision-mqa and
tests/data/vision/gemma4-vision (made by scripts/make_vision_goldens.py) and a few
conversations with image parts, the ids of

    processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)

(the chat template rendered, each image marker expanded into its image block, tokenized),
and the greedy continuation of model.generate on those inputs (raw argmax; eos not
suppressed: the first NEW_TOKENS steps are checked to be the argmax of the raw logits).

The template is gemma-ref's built-in one for the generation (gemma_ref/templates/,
Google's published text; the tiny checkpoints carry none, so gemma-ref uses it too).

- Gemma 3: Gemma3Processor(Gemma3ImageProcessorPil(preprocessor_config.json), GemmaTokenizer
  from tiny.model with <image_soft_token>=512, <start_of_image>=513, <end_of_image>=514).
- Gemma 4: Gemma4Processor(Gemma4ImageProcessorPil(preprocessor_config.json), GemmaTokenizer
  from tiny.model with <|image|>=512, <|image>=513, <image|>=514 (+ the audio token names,
  which validate_inputs requires, never in these prompts), Gemma4AudioFeatureExtractor()).
  Its video processor needs torchvision (not installed here), so the processor is built
  with video_processor=None past ProcessorMixin's argument type check; no video is used.

Requires: torch, transformers, pillow, sentencepiece. Deterministic (CPU, one thread).
    python scripts/make_vision_chat_goldens.py
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL
import torch
import transformers
import transformers.processing_utils as processing_utils
from transformers import (AutoTokenizer, Gemma3ForConditionalGeneration, Gemma3Processor,
                          Gemma4ForConditionalGeneration, Gemma4Processor)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
VISION = ROOT / "tests" / "data" / "vision"
TOKENIZER_MODEL = ROOT / "tests" / "data" / "tokenizer" / "tiny.model"
TEMPLATES = ROOT / "gemma_ref" / "templates"
NEW_TOKENS = 8


def image(name):  # a part as gemma-ref and transformers both read it (a file path)
    return {"type": "image", "image": f"images/{name}.png"}


def text(t):
    return {"type": "text", "text": t}


CONVERSATIONS = {
    "image_then_text": [{"role": "user", "content": [image("rgb_wide"), text("Describe this image.")]}],
    "system_two_images": [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": [text("Compare "), image("l_tall"), text(" with "),
                                     image("rgba_square"), text(".")]}],
    "multi_turn": [
        {"role": "user", "content": [image("rgba"), text("What is this?")]},
        {"role": "assistant", "content": "A picture."},
        {"role": "user", "content": "Which colour is it?"}],
}

VARIANTS = {
    "gemma3-vision-mqa": dict(template="gemma3-it.jinja", cls=Gemma3ForConditionalGeneration,
                              special={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                                       "eoi_token": "<end_of_image>"}),
    "gemma4-vision": dict(template="gemma4-it.jinja", cls=Gemma4ForConditionalGeneration,
                          special={"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
                                   "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"}),
}


def tokenizer(special):
    d = tempfile.mkdtemp()
    shutil.copy(TOKENIZER_MODEL, Path(d) / "tokenizer.model")
    (Path(d) / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "extra_special_tokens": special}))
    return AutoTokenizer.from_pretrained(d)


def processor(name, spec):
    pre = json.loads((VISION / name / "preprocessor_config.json").read_text())
    tok, template = tokenizer(spec["special"]), (TEMPLATES / spec["template"]).read_text()
    if name.startswith("gemma3"):
        kw = {k: v for k, v in pre.items() if v is not None and k not in (
            "image_processor_type", "processor_class", "image_seq_length")}
        return Gemma3Processor(image_processor=Gemma3ImageProcessorPil(**kw), tokenizer=tok,
                               image_seq_length=pre["image_seq_length"], chat_template=template)
    kw = {k: v for k, v in pre.items() if k != "image_processor_type"}
    check = processing_utils.ProcessorMixin.check_argument_for_proper_class

    def no_video_check(self, argument_name, argument):  # video_processor=None: see the docstring
        return None if argument_name == "video_processor" and argument is None else check(
            self, argument_name, argument)

    processing_utils.ProcessorMixin.check_argument_for_proper_class = no_video_check
    try:
        return Gemma4Processor(feature_extractor=Gemma4AudioFeatureExtractor(),
                               image_processor=Gemma4ImageProcessorPil(**kw), tokenizer=tok,
                               video_processor=None, chat_template=template)
    finally:
        processing_utils.ProcessorMixin.check_argument_for_proper_class = check


def with_paths(messages):
    """The messages with image paths made absolute (for transformers' load_image)."""
    return [{**m, "content": [{**p, "image": str(VISION / p["image"])} if p.get("type") == "image" else p
                              for p in m["content"]]} if isinstance(m["content"], list) else m
            for m in messages]


@torch.no_grad()
def run(name, spec):
    proc = processor(name, spec)
    model = spec["cls"].from_pretrained(VISION / name, dtype=torch.float32, attn_implementation="eager").eval()
    out = {}
    for case, messages in CONVERSATIONS.items():
        inputs = proc.apply_chat_template(with_paths(messages), add_generation_prompt=True, tokenize=True,
                                          return_dict=True, return_tensors="pt")
        ids = inputs["input_ids"]
        gen = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             return_dict_in_generate=True, output_logits=True, pad_token_id=0)
        seq = gen.sequences[0, ids.shape[1]:]
        raw = torch.stack([x[0] for x in gen.logits])  # [G, V] before any processor
        top2 = raw.topk(2, dim=-1).values
        assert torch.equal(raw.argmax(-1), seq), f"{name} {case}: a greedy token is not the raw argmax"
        out[case] = {"input_ids": ids[0].tolist(),
                     "text": proc.apply_chat_template(with_paths(messages), add_generation_prompt=True,
                                                      tokenize=False),
                     "greedy_ids": seq.tolist(),
                     "greedy_margins": [round(float(m), 6) for m in (top2[:, 0] - top2[:, 1])]}
        print(f"  {name} {case}: {ids.shape[1]} tokens, greedy {seq.tolist()}, "
              f"min margin {min(out[case]['greedy_margins']):.4f}", flush=True)
    return out


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    golden = {"provenance": {
        "script": "scripts/make_vision_chat_goldens.py", "command": "python scripts/make_vision_chat_goldens.py",
        "transformers": transformers.__version__, "torch": torch.__version__, "numpy": np.__version__,
        "pillow": PIL.__version__, "python": sys.version.split()[0],
        "call": "processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, "
                "return_dict=True); model.generate(**inputs, do_sample=False, max_new_tokens=8, "
                "min_new_tokens=8) (each token checked to be the raw argmax)",
        "images": "relative to tests/data/vision/"},
        "conversations": CONVERSATIONS,
        "variants": {name: {"template": spec["template"], "cases": run(name, spec)}
                     for name, spec in VARIANTS.items()}}
    (VISION / "chat_golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {VISION / 'chat_golden.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
