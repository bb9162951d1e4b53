"""`gemma-ref eval`: lm-evaluation-harness's own evaluator, with gemma-ref as the model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import GemmaRefError
from .common import add_model, check_model_args, load

EXAMPLES = """\
examples (the tasks' datasets come from the Hugging Face Hub unless a task is local):
  gemma-ref eval --model 3-270m-gguf --tasks hellaswag,arc_easy,piqa --limit 200
  gemma-ref eval --model 2b --tasks arc_easy --num-fewshot 5 --output-path arc.json
  gemma-ref eval --tasks my_task --include-path ./my_tasks      # your own YAML tasks
"""


def add_commands(sub):
    p = sub.add_parser("eval", help="run lm-evaluation-harness tasks (needs the eval extra)",
                       description="Evaluate with EleutherAI's lm-evaluation-harness: its tasks, "
                                   "prompts and metrics, gemma-ref's model. Prints lm-eval's table.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model(p)
    p.add_argument("--tasks", "-t", required=True, help="comma-separated lm-eval task or group names")
    p.add_argument("--limit", type=float, default=None, metavar="N",
                   help="at most N examples per task (a fraction if < 1), as lm-eval's --limit")
    p.add_argument("--num-fewshot", "-f", type=int, default=None, metavar="K",
                   help="examples in the prompt (default: each task's own)")
    p.add_argument("--include-path", metavar="DIR", help="a directory of your own task YAML files")
    p.add_argument("--output-path", "-o", metavar="FILE", help="write lm-eval's results JSON here")
    p.add_argument("--batch-size", "-b", type=int, default=8,
                   help="prompts decoded together by generate_until tasks (default 8)")
    p.add_argument("--max-length", type=int, default=None,
                   help="context tokens (default: the model's max_position_embeddings)")
    p.add_argument("--log-samples", action="store_true",
                   help="with --output-path: also store every example's requests and responses")
    p.add_argument("--apply-chat-template", action="store_true",
                   help="put each prompt in the model's chat template (for -it models)")
    p.add_argument("--fewshot-as-multiturn", action="store_true",
                   help="with --apply-chat-template: few-shot examples as earlier turns")
    p.add_argument("--seed", type=int, default=0, help="lm-eval's random seeds (default 0)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import handle_non_serializable, make_table
    except ImportError:
        raise GemmaRefError("eval needs lm-evaluation-harness: pip install 'gemma-ref[eval]' "
                            "(or: pip install lm-eval)") from None
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise GemmaRefError("eval: --tasks is empty")
    if args.limit is not None and args.limit <= 0:
        raise GemmaRefError("eval: --limit must be > 0")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise GemmaRefError("eval: --num-fewshot must be >= 0")
    if args.batch_size < 1:
        raise GemmaRefError("eval: --batch-size must be >= 1")
    if args.max_length is not None and args.max_length < 2:
        raise GemmaRefError("eval: --max-length must be >= 2")
    check_model_args(args)
    if args.include_path and not Path(args.include_path).is_dir():
        raise GemmaRefError(f"eval: --include-path {args.include_path}: not a directory")
    if args.fewshot_as_multiturn and not args.apply_chat_template:
        raise GemmaRefError("eval: --fewshot-as-multiturn needs --apply-chat-template")
    if args.log_samples and not args.output_path:
        raise GemmaRefError("eval: --log-samples needs --output-path")
    # Only your own tasks: skip indexing lm-eval's ~15k task files (tens of seconds).
    manager = TaskManager(include_path=args.include_path, include_defaults=False) if args.include_path else None
    if manager is None or any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=args.include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:  # before the slow load
        raise GemmaRefError(f"eval: unknown task(s): {', '.join(unknown)} (lm-eval's names, e.g. "
                            f"hellaswag, arc_easy, piqa; your own YAML tasks need --include-path)")

    from ..lmeval import GemmaRefLM

    lm = GemmaRefLM(model=load(args, "generation"), batch_size=args.batch_size, max_length=args.max_length,
                    seed=args.seed)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    try:
        results = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, num_fewshot=args.num_fewshot, limit=limit, task_manager=manager,
            log_samples=args.log_samples, apply_chat_template=args.apply_chat_template,
            fewshot_as_multiturn=args.fewshot_as_multiturn, random_seed=args.seed, numpy_random_seed=args.seed,
            torch_random_seed=None, fewshot_random_seed=args.seed)  # None: lm-eval leaves torch alone
    except GemmaRefError:
        raise
    except Exception as e:  # noqa: BLE001 - lm-eval's errors (a dataset it cannot fetch, ...)
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise GemmaRefError(f"eval: lm-eval failed: {type(e).__name__}: {message}") from None
    if results is None:
        raise GemmaRefError("eval: lm-eval returned no results")
    results["config"]["model"] = f"gemma-ref ({lm.model.source}, {lm.model.dtype})"
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    if args.output_path:
        try:
            Path(args.output_path).write_text(json.dumps(
                results, indent=2, default=handle_non_serializable, ensure_ascii=False))
        except OSError as e:
            raise GemmaRefError(f"{args.output_path}: cannot write ({e.strerror})") from None
        print(f"gemma-ref: wrote {args.output_path}", file=sys.stderr)
    return 0
