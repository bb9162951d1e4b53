#!/usr/bin/env python3
"""Where gemma-ref's speculative drafts differ from transformers', and why (docs/SPECULATIVE.md).

After a round with a rejected draft, transformers hands its Gemma 4 assistant the target's
K/V from the verification pass cut to the new length by index, which keeps the K/V of the
first rejected draft at the drafter's own position P. gemma-ref's drafter sees the accepted
tokens only (positions < P). This script runs transformers' assisted generate on the tiny
pair (tests/data/tiny/gemma4-ple-shared + gemma4-assistant, sliding windows widened to 64 so
that transformers' sliding K/V lists start at position 0), records its drafts per round, and
compares them with gemma-ref's drafts, as they are and with the drafter also shown the
verification pass's K/V at position P (an emulation of transformers' cut).

    python scripts/check_assistant_rounds.py

Needs torch and transformers; prints, per prompt, how many rounds' drafts agree.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import Gemma4AssistantForCausalLM, Gemma4ForCausalLM
from transformers.generation import candidate_generator as cg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import gemma_ref.assistant as am  # noqa: E402
from gemma_ref import Model  # noqa: E402

TINY = ROOT / "tests" / "data" / "tiny"
DRAFT, NEW = 3, 20


def widened_copies(tmp: Path) -> tuple[Path, Path]:
    target, assistant = tmp / "target", tmp / "assistant"
    shutil.copytree(TINY / "gemma4-ple-shared", target)
    shutil.copytree(TINY / "gemma4-assistant", assistant)
    c = json.loads((target / "config.json").read_text())
    c["sliding_window"] = 64
    (target / "config.json").write_text(json.dumps(c))
    c = json.loads((assistant / "config.json").read_text())
    c["text_config"]["sliding_window"] = 64
    (assistant / "config.json").write_text(json.dumps(c))
    return target, assistant


def transformers_rounds(target_dir, assistant_dir, prompt):
    rounds, original = [], cg.SinglePositionMultiTokenCandidateGenerator.get_candidates

    def recording(self, input_ids, **kw):
        ids, logits = original(self, input_ids, **kw)
        if logits is not None:
            rounds.append(ids[0, input_ids.shape[1]:].tolist())
        return ids, logits

    target = Gemma4ForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32, attn_implementation="eager")
    assistant = Gemma4AssistantForCausalLM.from_pretrained(str(assistant_dir), dtype=torch.float32,
                                                           attn_implementation="eager")
    assistant.generation_config.num_assistant_tokens = DRAFT
    assistant.generation_config.num_assistant_tokens_schedule = "constant"
    cg.SinglePositionMultiTokenCandidateGenerator.get_candidates = recording
    try:
        ids = torch.tensor([prompt])
        out = target.eval().generate(ids, attention_mask=torch.ones_like(ids), assistant_model=assistant.eval(),
                                     do_sample=False, max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=0)
    finally:
        cg.SinglePositionMultiTokenCandidateGenerator.get_candidates = original
    return out[0, len(prompt):].tolist(), rounds


def gemma_ref_rounds(target, assistant, prompt, emulate: bool):
    rounds, before = [], {}
    forget, kv, drafts = am.forget_from, am.drafter_kv, am.Assistant.drafts

    def keeping_forget(cache, end):  # the verification pass's K/V, before the rejected are forgotten
        before["cache"] = copy.deepcopy(cache)
        forget(cache, end)

    def cut_kv(cache, source, P, window):  # + the K/V the verification pass left at position P
        return kv(before["cache"], source, P + 1, window) if "cache" in before else kv(cache, source, P, window)

    def recording(self, *args):
        ids, logits = drafts(self, *args)
        rounds.append(ids)
        return ids, logits

    am.Assistant.drafts = recording
    if emulate:
        am.forget_from, am.drafter_kv = keeping_forget, cut_kv
    try:
        out = target.generate(prompt, assistant=assistant, draft_tokens=DRAFT, max_new_tokens=NEW, stop=[])
    finally:
        am.forget_from, am.drafter_kv, am.Assistant.drafts = forget, kv, drafts
    return out, rounds


def main() -> int:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        target_dir, assistant_dir = widened_copies(Path(tmp))
        target, assistant = Model.from_pretrained(target_dir, progress=False), Model.from_pretrained(assistant_dir)
        rng = np.random.default_rng(1)
        for n in (5, 9, 13):
            prompt = rng.integers(3, 512, n).tolist()
            hf_out, hf = transformers_rounds(target_dir, assistant_dir, prompt)
            out, ours = gemma_ref_rounds(target, assistant, prompt, emulate=False)
            out_e, emulated = gemma_ref_rounds(target, assistant, prompt, emulate=True)
            same = lambda a, b: f"{sum(x == y for x, y in zip(a, b))}/{max(len(a), len(b))}"  # noqa: E731
            print(f"prompt of {n}: same tokens {hf_out == out == out_e}; rounds whose drafts equal "
                  f"transformers': gemma-ref {same(hf, ours)}, with the rejected draft's K/V {same(hf, emulated)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
