"""Audio goldens for the tiny Gemma 4 12B "Unified" checkpoint (tests/data/family/gemma4-unified/).

    python scripts/make_unified_audio_goldens.py

Loads the checkpoint scripts/make_family_goldens.py made (its model.safetensors, unchanged)
into transformers' Gemma4UnifiedForConditionalGeneration and writes audio_golden.npz and
AUDIO_PROVENANCE.md next to it: for prompts with one and two clips and with an image and a
clip, the processor's ids and audio features, the embedder's output (get_audio_features),
the logits with the masks generate() uses, and the greedy continuation. Does not import
gemma_ref.

The processor's audio steps are its own functions: Gemma4UnifiedAudioFeatureExtractor on the
clips (one call, padded to the longest) and Gemma4UnifiedProcessor.replace_audio_token for each
<|audio|> in order (the processor object itself cannot be built here: its image and video
processors need torchvision, which has no CPU build for torch 2.13 on PyPI). Clips are read as
the processor reads a path: transformers.audio_utils.load_audio(path, sampling_rate=16000)
(channels averaged, resampled with soxr), since the feature extractor takes 16 kHz mono
samples as they are (no resampling, and a [samples, channels] array is not framed correctly).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import torch
import transformers
from transformers import AutoTokenizer, Gemma4UnifiedForConditionalGeneration
from transformers.audio_utils import load_audio
from transformers.models.gemma4_unified.feature_extraction_gemma4_unified import Gemma4UnifiedAudioFeatureExtractor
from transformers.models.gemma4_unified.processing_gemma4_unified import Gemma4UnifiedProcessor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_family_goldens as fam  # noqa: E402
import make_tiny_goldens as tiny  # noqa: E402
import make_vision_goldens as vis  # noqa: E402

OUT = fam.FAMILY / fam.GEMMA4_UNIFIED["name"]
CLIPS = fam.ROOT / "tests" / "data" / "audio" / "clips"
AUDIO_SPECIAL = {"audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"}
CASES = {  # case -> (prompt, clips, images)
    "audio_one": ("Hear <|audio|> and say it.", ["short.wav"], []),  # 1700 samples: 3 frames, the last padded
    "audio_two": ("<|audio|> then\n<|audio|>: which is louder?", ["tone.wav", "stereo44k.wav"], []),
    "audio_image": ("Look at <|image|> and hear <|audio|>.", ["short.wav"], ["rgb_wide"]),
}


def tokenizer():
    d = tempfile.mkdtemp()
    shutil.copy(tiny.TOKENIZER_MODEL, Path(d) / "tokenizer.model")
    (Path(d) / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "extra_special_tokens": {**vis.GEMMA4_SPECIAL, **AUDIO_SPECIAL}}))
    return AutoTokenizer.from_pretrained(d)


@torch.no_grad()
def run_case(model, tok, prompt, clips, images):
    cfg = model.config
    waves = [load_audio(str(CLIPS / c), sampling_rate=16_000).astype(np.float32) for c in clips]
    fe = Gemma4UnifiedAudioFeatureExtractor()(waves, return_tensors="pt")
    proc = SimpleNamespace(boa_token=tok.boa_token, audio_token=tok.audio_token, eoa_token=tok.eoa_token)
    text = prompt
    for k in range(len(clips)):
        head, _, tail = text.partition(tok.audio_token)
        text = head + Gemma4UnifiedProcessor.replace_audio_token(proc, fe, k).replace(tok.audio_token, "\0") + tail
    text = text.replace("\0", tok.audio_token)
    res = {"samples": np.array([len(w) for w in waves], np.int64),
           "input_features": fe["input_features"].numpy(), "input_features_mask": fe["input_features_mask"].numpy()}
    extra = {"input_features": fe["input_features"], "input_features_mask": fe["input_features_mask"]}
    if images:
        pv, pos, counts = fam.unified_pixels(images, fam.GEMMA4_UNIFIED["preprocessor"])
        for n in counts:
            head, _, tail = text.partition(tok.image_token)
            text = head + (tok.boi_token + "\0" * n + tok.eoi_token) + tail
        text = text.replace("\0", tok.image_token)
        extra.update(pixel_values=pv, image_position_ids=pos)
        res["pixel_values"], res["image_position_ids"] = pv.numpy(), pos.numpy().astype(np.int64)
    out = model.model.get_audio_features(fe["input_features"], fe["input_features_mask"], return_dict=True)
    res["audio_features"] = out.pooler_output[fe["input_features_mask"]].numpy()  # real frames, clip after clip
    ids = torch.tensor([tok(text).input_ids])
    res["input_ids"] = ids[0].numpy().astype(np.int64)

    def masks(full_ids):  # generate()'s: audio tokens causal, an image's both ways on sliding layers
        T = full_ids.shape[1]
        return model.create_masks_for_generate(
            cfg, torch.zeros(1, T, cfg.text_config.hidden_size), None, None, torch.arange(T)[None],
            mm_token_type_ids=(full_ids == cfg.image_token_id).long())

    res["logits"] = model(input_ids=ids, attention_mask=masks(ids), use_cache=False, **extra).logits[0].numpy()
    if images:
        extra["mm_token_type_ids"] = (ids == cfg.image_token_id).long()

    def full_inputs(seq):
        full = torch.cat([ids[0], seq])[None]
        return {k: v for k, v in extra.items() if k != "mm_token_type_ids"} | {"attention_mask": masks(full)}

    problems = vis.greedy_checked(model, ids, extra, full_inputs, res)
    return res, problems


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    tok = tokenizer()
    assert (tok.audio_token_id, tok.boa_token_id, tok.eoa_token_id) == (515, 516, 517), "token ids"
    model = Gemma4UnifiedForConditionalGeneration.from_pretrained(
        str(OUT), dtype=torch.float32, attn_implementation="eager").eval()
    assert (model.config.audio_token_id, model.config.boa_token_id, model.config.eoa_token_index) == (515, 516, 517)
    images = {n: PIL.Image.open(vis.IMAGES / f"{n}.png") for n in ("rgb_wide",)}
    results = {}
    for case, (prompt, clips, names) in CASES.items():
        res, problems = run_case(model, tok, prompt, clips, [images[n] for n in names])
        print(f"  {case}: {len(res['input_ids'])} tokens, clips {res['samples'].tolist()} samples, "
              f"min margin {float(res['greedy_margins'].min()):.4f}, {'; '.join(problems) or 'OK'}", flush=True)
        if problems:
            raise RuntimeError(f"{case}: {problems}")
        results[case] = res
    arrays = {f"{case}.{k}": np.ascontiguousarray(v) for case, r in results.items()
              for k, v in r.items() if not k.startswith("_")}
    tiny.save_npz_deterministic(OUT / "audio_golden.npz", arrays)
    lines = [
        "# gemma4-unified: audio", "",
        "Audio goldens for the tiny Gemma 4 12B \"Unified\" checkpoint of this directory (its",
        "model.safetensors as scripts/make_family_goldens.py made it, see PROVENANCE.md), from Hugging Face",
        "transformers (independent of gemma-ref).", "",
        "## Provenance", "", f"- generated: {tiny.provenance_date()}",
        "- command: `python scripts/make_unified_audio_goldens.py` (from the repository root)",
        f"- transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"python {sys.version.split()[0]}",
        "- float32, attn_implementation=\"eager\", CPU, torch.set_num_threads(1); no random numbers drawn",
        "- clips: tests/data/audio/clips/*.wav (made by scripts/make_audio_goldens.py), read by "
        "transformers.audio_utils.load_audio(path, sampling_rate=16000) as the processor reads a path "
        "(stereo44k.wav: 44.1 kHz stereo, channels averaged, resampled by soxr to 8000 samples)",
        "- audio features: Gemma4UnifiedAudioFeatureExtractor()(clips) in one call: each clip right-padded "
        "with zeros to a multiple of 640 samples and cut into [N, 640] frames, the batch padded to the "
        "longest clip (input_features_mask False there)",
        "- input_ids: each `<|audio|>` becomes Gemma4UnifiedProcessor.replace_audio_token's "
        "boa + input_features_mask.sum() x audio token + eoa, in order; each `<|image|>` as PROVENANCE.md "
        "says; GemmaTokenizer from tiny.model + <|image|>=512, <|image>=513, <image|>=514, <|audio|>=515, "
        "<|audio>=516, <audio|>=517 (the processor object is not built: its image and video processors need "
        "torchvision)",
        "- `audio_features`: model.model.get_audio_features(input_features, input_features_mask).pooler_output "
        "at the mask's True frames (what the forward scatters into the audio tokens), clip after clip",
        "- `logits`: model(input_ids, input_features, input_features_mask[, pixel_values, image_position_ids], "
        "attention_mask = create_masks_for_generate with mm_token_type_ids marking image tokens) "
        "(audio tokens attend causally, as generate() does)",
        f"- greedy: model.generate(..., do_sample=False, max_new_tokens={vis.NEW_TOKENS}, "
        f"min_new_tokens={vis.NEW_TOKENS}, use_cache=True), each token the argmax of the raw logits; a "
        "no-cache forward over prompt + continuation agrees", "",
        "## Cases", "", "| case | prompt | clips (samples at 16 kHz) | images | tokens | min greedy margin |",
        "| --- | --- | --- | --- | --- | --- |"]
    for case, (prompt, clips, names) in CASES.items():
        r = results[case]
        lines.append(f"| `{case}` | `{prompt!r}` | {', '.join(f'{c} ({n})' for c, n in zip(clips, r['samples']))} | "
                     f"{', '.join(names) or '-'} | {len(r['input_ids'])} | {float(r['greedy_margins'].min()):.4f} |")
    lines += ["", "## audio_golden.npz", "", "| key | shape | dtype |", "| --- | --- | --- |"]
    lines += [f"| `{k}` | {list(v.shape)} | {v.dtype} |" for k, v in arrays.items()]
    (OUT / "AUDIO_PROVENANCE.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
