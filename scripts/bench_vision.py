#!/usr/bin/env python3
"""Time gemma-ref's image embedding with Gemma 3's real SigLIP shapes (random weights).

Gemma 3 4B/12B/27B: a 27-layer SigLIP tower of width 1152 (MLP 4304, 16 heads) on
896 x 896 images in 14 x 14 patches (4096 patches), pooled to 256 soft tokens and
projected to the text width (2560 for 4B). ~417M parameters, float32.

    PYTHONPATH=$PWD python scripts/bench_vision.py [--repeats 2] [--text-hidden 2560]

Prints the time of preprocess (PIL resize, rescale, normalize) and of the tower +
projector per image, and the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from gemma_ref import vision
from gemma_ref.weights import Weights

GEMMA3_SIGLIP = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                     num_attention_heads=16, image_size=896, patch_size=14, mm_tokens_per_image=256)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--text-hidden", type=int, default=2560, help="text width (4B: 2560)")
    args = ap.parse_args()

    c = vision.VisionConfig(**GEMMA3_SIGLIP)
    rng = np.random.default_rng(0)
    shapes = vision.expected_vision_shapes(c, args.text_hidden)
    weights = {}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        std = 1 / np.sqrt(fan_in) if len(shape) > 1 else 0.02
        weights[name] = (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)
    n_params = sum(w.size for w in weights.values())
    W = Weights(weights)
    p = vision.Preprocessing(size=(896, 896))
    image = rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    print(f"SigLIP tower + projector: {n_params / 1e6:.0f}M parameters (float32), image 1200x1600 -> 896x896")
    for r in range(args.repeats):
        t0 = time.perf_counter()
        pixels, _ = vision.preprocess([image], p)
        t1 = time.perf_counter()
        features = vision.image_features(pixels, W, c)
        t2 = time.perf_counter()
        print(f"run {r + 1}: preprocess {t1 - t0:.2f} s, tower + projector {t2 - t1:.2f} s "
              f"-> features {features.shape}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
