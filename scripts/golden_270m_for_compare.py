#!/usr/bin/env python3
"""Rewrite the committed Gemma 3 270M goldens (made by transformers) into the file format
`gemma-ref compare` reads, so that one command checks an engine against them:

    gemma-ref compare tests/data/gemma3-270m/compare.npz --model 3-270m-gguf

Reads tests/data/gemma3-270m/golden.npz and golden.json (written by
scripts/make_gguf_goldens.py from transformers; see PROVENANCE.md there) and writes
compare.npz beside them. Only re-arranges transformers' numbers: no model runs here,
and gemma_ref is not imported. Per prompt, in golden.json's prompt_order:

    input_ids        transformers' token ids (<bos> first)
    text             the prompt
    positions        [T - 1]: the goldens hold the last position's logits only
    topk_ids/_logits [1, 64]: transformers' 64 largest last-position logits
    greedy_ids       [32]: transformers' greedy continuation (no eos stop)
    hidden_states    [19, T, 640]: output_hidden_states, for the prompt "plain" only

    python scripts/golden_270m_for_compare.py [--dir tests/data/gemma3-270m]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

FORMAT = "gemma-ref-golden/1"  # docs/REFERENCE.md


def convert(directory: Path) -> dict[str, np.ndarray]:
    meta = json.loads((directory / "golden.json").read_text())
    src = directory / "golden.npz"
    z = np.load(src)
    prompts = {p["name"]: p for p in meta["prompts"]}
    out = {}
    for i, name in enumerate(meta["prompt_order"]):
        ids = np.array(prompts[name]["ids"], np.int64)
        p = f"prompt_{i}/"
        out[p + "input_ids"] = ids
        out[p + "text"] = np.array(prompts[name]["text"])
        out[p + "positions"] = np.array([len(ids) - 1], np.int64)
        out[p + "topk_ids"] = z["top64_ids"][i][None].astype(np.int64)
        out[p + "topk_logits"] = z["top64_logits"][i][None]
        out[p + "greedy_ids"] = z["greedy_ids"][i].astype(np.int64)
        if name == "plain":
            assert z["hidden_states"].shape[1] == len(ids)
            out[p + "hidden_states"] = z["hidden_states"]
    v = meta["versions"]
    provenance = {
        "engine": "transformers", "engine_version": v["transformers"], "torch": v["torch"],
        "numpy": v["numpy"], "python": v["python"], "model": meta["gguf"]["file"],
        "model_type": "gemma3_text", "files": {meta["gguf"]["file"]: meta["gguf"]["sha256"]},
        "dtype": meta["settings"]["dtype"],
        "attn_implementation": meta["settings"]["attn_implementation"],
        "created": meta["date"], "package": f"{meta['gguf']['package']} {v[meta['gguf']['package']]}",
        "command": "python scripts/make_gguf_goldens.py (transformers' GGUF loader, float32, eager)",
        "converted_by": "python scripts/golden_270m_for_compare.py (re-arranged, no model run)",
        "converted_from": {"golden.npz": hashlib.sha256(src.read_bytes()).hexdigest(),
                           "golden.json": hashlib.sha256((directory / "golden.json").read_bytes()).hexdigest()},
    }
    out["format"] = np.array(FORMAT)
    out["num_prompts"] = np.array(len(meta["prompt_order"]), np.int64)
    out["provenance"] = np.array(json.dumps(provenance))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path(__file__).parent.parent / "tests/data/gemma3-270m")
    args = ap.parse_args()
    arrays = convert(args.dir)
    with open(args.dir / "compare.npz", "wb") as f:
        np.savez(f, **arrays)
    print(f"wrote {args.dir / 'compare.npz'}: {int(arrays['num_prompts'])} prompts")


if __name__ == "__main__":
    main()
