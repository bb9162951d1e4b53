"""`gemma-ref classify`: ShieldGemma 2's P(yes), P(no) per (image, policy)."""

from __future__ import annotations

import json

from ..errors import GemmaRefError
from .common import add_model, load


def add_commands(sub):
    p = sub.add_parser("classify", help="image safety classification (ShieldGemma 2)",
                       description="P(yes) (the image violates the policy) and P(no) for each image "
                                   "and policy, as transformers' ShieldGemma2ForImageClassification.")
    add_model(p)
    p.add_argument("--image", action="append", required=True, metavar="PATH",
                   help="an image to classify (repeat for several)")
    p.add_argument("--policy", action="append", default=None, metavar="NAME",
                   help="a policy name (repeat; default: every policy of the checkpoint)")
    p.add_argument("--custom-policy", action="append", default=[], metavar="NAME=DEFINITION",
                   help="add or replace a policy definition (repeat)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_classify)


def cmd_classify(args) -> int:
    custom = {}
    for item in args.custom_policy:
        name, sep, definition = item.partition("=")
        if not sep or not name or not definition:
            raise GemmaRefError(f"--custom-policy {item!r}: expected NAME=DEFINITION")
        custom[name] = definition
    model = load(args, "classifier")
    probs = model.classify_image(args.image, policies=args.policy, custom_policies=custom or None)
    policies = args.policy or list({**model.policy_definitions, **custom})
    rows = [{"image": image, "policy": policy, "yes": float(p[0]), "no": float(p[1])}
            for (image, policy), p in zip(((i, q) for i in args.image for q in policies), probs)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("P(yes)  policy       image")
    for r in rows:
        print(f"{r['yes']:.4f}  {r['policy']:<12} {r['image']}")
    return 0
