#!/usr/bin/env python3
"""30 s of audio through an E2B-shaped random audio tower: gemma-ref vs transformers.

    python scripts/bench_audio.py [--rounds 2] [--dir /tmp/gemma4-e2b-audio]
    python scripts/bench_audio.py --gemma3n --dir /tmp/gemma3n-e2b-audio    # Gemma 3n's tower

Writes (once) a random checkpoint of the Gemma 4 E2B/E4B audio tower (Gemma4AudioConfig's
defaults: 12 Conformer layers, 1024 wide, output 1536; ~305M parameters, float32) with its
embedder to --dir, then times, alternating, in a fresh process each (so that peak RSS is
that run's): gemma-ref's audio.clip_embeddings and transformers' Gemma4AudioModel +
Gemma4MultimodalEmbedder (float32, eager) on the same weights and the same 30 s
features (the processor's, from a synthetic clip). Prints one line per run and a
summary; the max |difference| of the two outputs is checked too. --gemma3n: Gemma 3n's
tower instead (Gemma3nAudioConfig defaults: 12 layers, 1536 wide, 188 tokens a clip).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TEXT_HIDDEN = 1536  # Gemma 4 E2B's hidden size (embed_audio's output)
TEXT_HIDDEN_3N = 2048  # Gemma 3n E2B's


def clip() -> np.ndarray:
    """30 s at 16 kHz: a gliding tone with a tremolo and a little noise."""
    t = np.arange(30 * 16000) / 16000.0
    rng = np.random.default_rng(0)
    x = 0.25 * np.sin(2 * np.pi * (220 + 40 * t) * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    return (x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def write_checkpoint(out: Path, gemma3n: bool) -> None:
    """Random weights in transformers' names (the tower + embed_audio), features, config."""
    import torch
    from safetensors.torch import save_file
    from transformers import Gemma3nAudioConfig, Gemma3nTextConfig, Gemma4AudioConfig
    from transformers.models.gemma3n.feature_extraction_gemma3n import Gemma3nAudioFeatureExtractor
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder, Gemma3nMultimodalEmbedder
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
    from transformers.models.gemma4.modeling_gemma4 import Gemma4AudioModel

    torch.manual_seed(0)
    cfg = Gemma3nAudioConfig() if gemma3n else Gemma4AudioConfig()
    tower = Gemma3nAudioEncoder(cfg) if gemma3n else Gemma4AudioModel(cfg)
    modules = {"model.audio_tower.": tower}
    if gemma3n:
        modules["model.embed_audio."] = Gemma3nMultimodalEmbedder(cfg, Gemma3nTextConfig(hidden_size=TEXT_HIDDEN_3N))
    state = {}
    with torch.no_grad():
        for prefix, name, p in [(k, n, p) for k, m in modules.items() for n, p in m.state_dict().items()]:
            if name.endswith(("input_min", "output_min")):
                p = torch.tensor(-8.0)
            elif name.endswith(("input_max", "output_max")):
                p = torch.tensor(8.0)
            elif p.ndim >= 2:
                p = torch.randn(p.shape) / float(np.prod(p.shape[1:])) ** 0.5
            elif "norm" in name:
                p = 1.0 + 0.1 * torch.randn(p.shape)
            else:
                p = 0.05 * torch.randn(p.shape)
            state[prefix + name] = p.contiguous()
    if not gemma3n:
        state["model.embed_audio.embedding_projection.weight"] = torch.randn(TEXT_HIDDEN, cfg.output_proj_dims) * 0.03
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    fe = (Gemma3nAudioFeatureExtractor() if gemma3n else Gemma4AudioFeatureExtractor())([clip()], return_tensors="np")
    np.savez(out / "features.npz", features=fe["input_features"][0], mask=fe["input_features_mask"][0])
    (out / "config.json").write_text(json.dumps({
        "model_type": "gemma3n" if gemma3n else "gemma4", "audio_config": cfg.to_dict(),
        "text_config": {"hidden_size": TEXT_HIDDEN_3N if gemma3n else TEXT_HIDDEN, "vocab_size": 262_400}}, indent=1))
    print(f"wrote {out}: {sum(v.numel() for v in state.values()) / 1e6:.0f}M parameters", flush=True)


def run_gemma_ref(d: Path) -> np.ndarray:
    sys.path.insert(0, str(ROOT))
    from gemma_ref import audio
    from gemma_ref.loader import read_safetensors
    from gemma_ref.weights import Weights

    c = audio.AudioConfig.from_dict(json.loads((d / "config.json").read_text()))
    f = np.load(d / "features.npz")
    t0 = time.perf_counter()
    W = Weights({k[len("model."):]: np.asarray(v, np.float32) for k, v in read_safetensors(d / "model.safetensors").items()},
                np.float32)
    t1 = time.perf_counter()
    out = audio.clip_embeddings(f["features"], f["mask"], W, c)
    return out, t1 - t0, time.perf_counter() - t1


def run_transformers(d: Path) -> np.ndarray:
    import torch
    from safetensors.torch import load_file
    from transformers import Gemma3nAudioConfig, Gemma3nTextConfig, Gemma4AudioConfig, Gemma4TextConfig
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder, Gemma3nMultimodalEmbedder
    from transformers.models.gemma4.modeling_gemma4 import Gemma4AudioModel, Gemma4MultimodalEmbedder

    torch.set_num_threads(2)
    cfg = json.loads((d / "config.json").read_text())
    gemma3n = cfg["model_type"] == "gemma3n"
    f = np.load(d / "features.npz")
    t0 = time.perf_counter()
    kw = {k: v for k, v in cfg["audio_config"].items() if k != "model_type"}
    acfg = Gemma3nAudioConfig(**kw) if gemma3n else Gemma4AudioConfig(**kw)
    acfg._attn_implementation = "eager"
    tower = (Gemma3nAudioEncoder if gemma3n else Gemma4AudioModel)(acfg).eval()
    embed = (Gemma3nMultimodalEmbedder(acfg, Gemma3nTextConfig(hidden_size=TEXT_HIDDEN_3N)) if gemma3n else
             Gemma4MultimodalEmbedder(acfg, Gemma4TextConfig(hidden_size=TEXT_HIDDEN))).eval()
    state = load_file(str(d / "model.safetensors"))
    tower.load_state_dict({k[len("model.audio_tower."):]: v for k, v in state.items() if "audio_tower" in k},
                          strict=True)
    embed.load_state_dict({k[len("model.embed_audio."):]: v for k, v in state.items() if "embed_audio" in k},
                          strict=gemma3n)
    t1 = time.perf_counter()
    with torch.no_grad():
        feats, mask = torch.from_numpy(f["features"])[None], torch.from_numpy(f["mask"])[None]
        if gemma3n:  # its tower takes the padding mask; the clip: 188 soft tokens, padding ones and the rest the pad token's
            o = tower(feats, ~mask, return_dict=True)
            soft, pad = embed(inputs_embeds=o.last_hidden_state)[0], embed(input_ids=torch.tensor([[262_399]]))[0]
            soft = torch.where(o.audio_mel_mask[0][:, None], pad, soft)
            out = torch.cat([soft, pad.expand(188 - len(soft), -1)]).numpy()
        else:
            o = tower(feats, mask, return_dict=True)
            out = embed(o.last_hidden_state)[0][o.attention_mask[0]].numpy()
    return out, t1 - t0, time.perf_counter() - t1


def child(which: str, d: Path) -> None:
    out, load_s, run_s = (run_gemma_ref if which == "gemma-ref" else run_transformers)(d)
    np.save(d / f"out-{which}.npy", out)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB -> GiB
    print(json.dumps({"impl": which, "load_s": round(load_s, 2), "seconds": round(run_s, 2),
                      "peak_rss_gb": round(rss, 2), "tokens": int(len(out))}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/gemma4-e2b-audio"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gemma3n", action="store_true", help="Gemma 3n's tower (a --dir of its own)")
    ap.add_argument("--child", choices=["gemma-ref", "transformers"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.dir)
        return 0
    if not (args.dir / "config.json").exists():
        write_checkpoint(args.dir, args.gemma3n)
    results = []
    for r in range(args.rounds):
        for which in ("gemma-ref", "transformers"):
            line = subprocess.run([sys.executable, __file__, "--dir", str(args.dir), "--child", which],
                                  check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            print(f"round {r + 1}: {line}", flush=True)
            results.append(json.loads(line))
    a, b = np.load(args.dir / "out-gemma-ref.npy"), np.load(args.dir / "out-transformers.npy")
    print(f"soft tokens {a.shape}; max |gemma-ref - transformers| = {np.abs(a - b).max():.3g} "
          f"(max |value| {np.abs(b).max():.3g})")
    for which in ("gemma-ref", "transformers"):
        rs = [x for x in results if x["impl"] == which]
        print(f"{which}: best {min(x['seconds'] for x in rs):.2f} s, peak RSS {max(x['peak_rss_gb'] for x in rs):.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
