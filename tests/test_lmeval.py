"""The lm-evaluation-harness adapter against lm-eval's own `hf` model (transformers) on tiny
checkpoints and local tasks (goldens: scripts/make_lmeval_goldens.py), and `gemma-ref eval`."""

import json
import math
import sys
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")  # the eval extra (also in the test extra)
from lm_eval.tasks import TaskManager  # noqa: E402

from gemma_ref import Model  # noqa: E402
from gemma_ref.cli import main  # noqa: E402
from gemma_ref.lmeval import GemmaRefLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TASK_DIR = ROOT / "tests" / "data" / "lmeval"
GOLDEN = json.loads((TASK_DIR / "golden_hf.json").read_text())
TASKS = ["gemma_ref_tiny_mc", "gemma_ref_tiny_rolling", "gemma_ref_tiny_gen"]
TOL = 1e-3


@pytest.fixture(autouse=True)
def as_in_ci(monkeypatch):
    monkeypatch.chdir(ROOT)  # the task YAMLs name their data files from there
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # lm-eval imports torch (seeding, environment info) and transformers (its version) when they
    # are installed; CI has neither, so neither may be here
    for module in [m for name, m in list(sys.modules.items()) if name.startswith("lm_eval")]:
        for check in ("is_torch_available", "is_transformers_available"):
            if hasattr(module, check):
                monkeypatch.setattr(module, check, lambda: False)


@pytest.fixture(scope="module")
def manager():
    return TaskManager(include_path=str(TASK_DIR), include_defaults=False)


@pytest.mark.parametrize("name", sorted(GOLDEN["checkpoints"]))
def test_equal_to_lm_evals_hf_model(name, manager, monkeypatch):
    monkeypatch.chdir(ROOT)
    lm = GemmaRefLM(model=Model.from_pretrained(ROOT / "tests" / "data" / "tiny" / name), batch_size=3)
    r = lm_eval.simple_evaluate(model=lm, tasks=TASKS, task_manager=manager, log_samples=True,
                                random_seed=0, numpy_random_seed=0, fewshot_random_seed=0)
    golden = GOLDEN["checkpoints"][name]
    for task in TASKS:
        want = golden[task]
        for key, value in want["metrics"].items():
            got = r["results"][task][key]
            assert math.isclose(got, value, rel_tol=TOL, abs_tol=TOL), (task, key, got, value)
        samples = sorted(r["samples"][task], key=lambda s: s["doc_id"])
        assert [s["doc_id"] for s in samples] == [s["doc_id"] for s in want["samples"]]
        for s, w in zip(samples, want["samples"]):
            if task == "gemma_ref_tiny_gen":  # greedy text, cut at the stop strings
                assert s["filtered_resps"] == w["filtered_resps"]
            elif task == "gemma_ref_tiny_mc":  # per choice: (log-likelihood, is_greedy)
                got = [resp[0] for resp in s["resps"]]
                assert len(got) == len(w["resps"])
                for (lp, greedy), (lp_w, greedy_w) in zip(got, [r[0] for r in w["resps"]]):
                    assert abs(lp - lp_w) <= TOL and greedy == greedy_w
            else:  # the document's rolling log-likelihood
                assert abs(s["resps"][0][0] - w["resps"][0][0]) <= TOL


def test_shared_context_batch_equals_one_at_a_time():
    m = Model.from_pretrained(ROOT / "tests" / "data" / "tiny" / "gemma3-gqa")
    lm = GemmaRefLM(model=m)
    ctx = m.tokenizer.encode("The quick brown fox jumps over the lazy dog. Once upon")  # > window 8
    conts = [m.tokenizer.encode(t, add_bos=False) for t in (" a time", " the sea and far away", " x")]
    together = lm._score_shared_context(ctx, conts)
    alone = [lm._score_alone(ctx, c) for c in conts]
    for (a, ga), (b, gb) in zip(together, alone):
        assert abs(a - b) < 1e-5 and ga == gb


def test_cli_eval_prints_lm_evals_table_and_writes_its_json(tmp_path, capsys):
    out = tmp_path / "results.json"
    ckpt = str(ROOT / "tests" / "data" / "tiny" / "gemma3-gqa")
    code = main(["eval", "--model", ckpt, "--tasks", "gemma_ref_tiny_mc", "--include-path",
                 str(TASK_DIR), "--output-path", str(out), "--limit", "6"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "|gemma_ref_tiny_mc|" in printed.replace(" ", "") and "acc_norm" in printed
    results = json.loads(out.read_text())
    acc = results["results"]["gemma_ref_tiny_mc"]["acc,none"]
    assert f"{acc:.4f}" in printed and results["config"]["limit"] == 6
    assert "gemma-ref" in results["config"]["model"]


@pytest.mark.parametrize("argv,message", [
    (["--tasks", "no_such_task_xyz"], "eval: unknown task(s): no_such_task_xyz"),
    (["--tasks", "gemma_ref_tiny_mc", "--include-path", "/no/such/dir"], "not a directory"),
    (["--tasks", "gemma_ref_tiny_mc", "--limit", "0"], "--limit must be > 0"),
    (["--tasks", "gemma_ref_tiny_mc", "--log-samples"], "--log-samples needs --output-path"),
    (["--tasks", "gemma_ref_tiny_mc", "--max-length", "1"], "--max-length must be >= 2"),
    (["--tasks", "gemma_ref_tiny_mc", "--threads", "0"], "--threads must be >= 1"),
    (["--tasks", "gemma_ref_tiny_mc", "--fewshot-as-multiturn"], "needs --apply-chat-template"),
    (["--tasks", " , "], "--tasks is empty"),
])
def test_cli_eval_mistakes_are_one_line(argv, message, capsys):
    code = main(["eval", "--model", str(ROOT / "tests" / "data" / "tiny" / "gemma3-gqa"),
                 "--include-path", str(TASK_DIR)] + argv if "--include-path" not in argv else
                ["eval", "--model", str(ROOT / "tests" / "data" / "tiny" / "gemma3-gqa")] + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("gemma-ref: error: ") and message in err[-1]


def test_registered_by_name_for_lm_evals_own_api(manager):
    r = lm_eval.simple_evaluate(
        model="gemma-ref", model_args=f"pretrained={ROOT / 'tests' / 'data' / 'tiny' / 'gemma3-gqa'}",
        tasks=["gemma_ref_tiny_mc"], task_manager=manager, limit=3, batch_size="auto")
    golden = GOLDEN["checkpoints"]["gemma3-gqa"]["gemma_ref_tiny_mc"]["samples"][:3]
    assert r["results"]["gemma_ref_tiny_mc"]["acc,none"] == pytest.approx(
        sum(max(range(4), key=lambda k: s["resps"][k][0][0]) == 0 for s in golden) / 3)


def test_apply_chat_template_puts_each_prompt_in_the_models_template(manager):
    m = Model.from_pretrained(ROOT / "tests" / "data" / "tiny" / "gemma3-gqa")
    lm = GemmaRefLM(model=m)
    r = lm_eval.simple_evaluate(model=lm, tasks=["gemma_ref_tiny_mc"], task_manager=manager,
                                limit=2, log_samples=True, apply_chat_template=True)
    question = json.loads((TASK_DIR / "tiny_mc.jsonl").read_text().splitlines()[0])["question"]
    context, continuation = r["samples"]["gemma_ref_tiny_mc"][0]["arguments"][0]
    assert context == m.chat_prompt([{"role": "user", "content": question}])
    assert context.startswith("<bos><start_of_turn>user\n") and lm.tok_encode(context).count(m.tokenizer.bos_id) == 1
    assert lm.chat_template(True) == m.chat_template.pick() and lm.chat_template(False) is None
