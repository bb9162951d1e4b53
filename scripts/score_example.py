"""Multiple-choice scoring as in the Gemma benchmark table (HellaSwag, PIQA, ARC).

    python scripts/score_example.py [--model M]

Each item is a context and candidate continuations; the model's answer is the
continuation with the highest log-likelihood (lm-evaluation-harness's `acc`), or
the highest log-likelihood per character (`acc_norm`, which does not favour short
answers). The items below are written in the style of each benchmark.
"""

from __future__ import annotations

import argparse

from gemma_ref import Model

ITEMS = [
    {   # HellaSwag: pick the most plausible ending of an everyday scene.
        "task": "hellaswag",
        "context": "A man is standing on a ladder next to a house, holding a paint roller. He",
        "choices": [" dips the roller in the tray and paints the wall with long, even strokes.",
                    " swims across the pool to the diving board.",
                    " opens the oven and takes out a tray of cookies.",
                    " plays the violin while riding a horse through the desert."],
        "answer": 0,
    },
    {   # PIQA: physical commonsense, the goal then two solutions.
        "task": "piqa",
        "context": "Question: How do I keep ice cream from getting freezer burn?\nAnswer:",
        "choices": [" Press plastic wrap onto the surface of the ice cream before closing the lid.",
                    " Leave the lid off so the ice cream can breathe in the freezer."],
        "answer": 0,
    },
    {   # ARC (Challenge/Easy): grade-school science, question then answer options.
        "task": "arc",
        "context": "Question: Which of these is the main source of energy for Earth's water cycle?\nAnswer:",
        "choices": [" the Sun", " the Moon", " wind", " volcanoes"],
        "answer": 0,
    },
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="default: Gemma 3 270M GGUF (demo extra)")
    args = ap.parse_args(argv)
    model = Model.from_pretrained(args.model)
    acc = acc_norm = 0
    for item in ITEMS:
        scores = model.score(item["context"], item["choices"])
        best = max(range(len(scores)), key=lambda i: scores[i]["logprob"])
        best_norm = max(range(len(scores)), key=lambda i: scores[i]["logprob_per_char"])
        acc += best == item["answer"]
        acc_norm += best_norm == item["answer"]
        print(f"[{item['task']}] {item['context']!r}")
        print(f"  {'logprob':>9} {'tokens':>6} {'per token':>9} {'per char':>9}  continuation")
        for i, s in enumerate(scores):
            mark = ("*" if i == item["answer"] else " ") + ("a" if i == best else " ") + \
                   ("n" if i == best_norm else " ")
            print(f"  {s['logprob']:>9.3f} {s['n_tokens']:>6} {s['logprob_per_token']:>9.3f} "
                  f"{s['logprob_per_char']:>9.4f} {mark} {s['continuation']!r}")
    n = len(ITEMS)
    print(f"\n* = correct, a = chosen by acc (sum), n = chosen by acc_norm (per char)")
    print(f"acc {acc}/{n}, acc_norm {acc_norm}/{n}")


if __name__ == "__main__":
    main()
