"""The CLI through main(argv), as a user runs it; every user mistake is one line + exit 1."""

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gemma_ref import Model
from gemma_ref.cli import main


def run(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--help"])
    assert e.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_generate_streams_the_continuation(tiny_dirs, capsys):
    d = str(tiny_dirs["gemma2-gqa"])
    code, out, err = run(["generate", "--model", d, "-n", "8", "Hello"], capsys)
    assert code == 0
    expected = Model.from_pretrained(d).generate("Hello", max_new_tokens=8)
    assert out == "Hello" + expected + "\n"


def test_generate_prompt_from_stdin_and_chat(tiny_dirs, capsys, monkeypatch):
    d = str(tiny_dirs["gemma2-gqa"])
    code, out, _ = run(["generate", "--model", d, "-n", "4", "--chat", "-"], capsys, "Hi there", monkeypatch)
    assert code == 0
    assert out == Model.from_pretrained(d).chat([{"role": "user", "content": "Hi there"}], max_new_tokens=4) + "\n"


def test_chat_loop_reads_turns(tiny_dirs, capsys, monkeypatch):
    code, out, _ = run(["chat", "--model", str(tiny_dirs["gemma1-mqa"]), "-n", "3"], capsys,
                       "Hi\nAgain\n/exit\n", monkeypatch)
    m = Model.from_pretrained(tiny_dirs["gemma1-mqa"])
    first = m.chat([{"role": "user", "content": "Hi"}], max_new_tokens=3)
    second = m.chat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": first},
                     {"role": "user", "content": "Again"}], max_new_tokens=3)
    assert code == 0 and out == first + "\n" + second + "\n"


def test_info(tiny_dirs, capsys):
    code, out, _ = run(["info", "--model", str(tiny_dirs["gemma3-mqa"]), "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["config"]["model_type"] == "gemma3_text"
    assert info["parameters"] == Model.from_pretrained(tiny_dirs["gemma3-mqa"]).config.num_parameters


def test_python_dash_m_works(tiny_dirs):
    r = subprocess.run([sys.executable, "-m", "gemma_ref", "generate", "--model",
                        str(tiny_dirs["gemma1-mqa"]), "-n", "2", "Hi"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("Hi")


# --- user mistakes: one clear line, exit 1, no traceback ---------------------------


def copy(tiny_dirs, tmp_path, name="gemma1-mqa"):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_dirs[name], d)
    return d


def rewrite_tensors(d, edit):
    tensors = dict(load_file(str(d / "model.safetensors")))
    edit(tensors)
    save_file(tensors, str(d / "model.safetensors"))


def truncate(d):
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])


def corrupt_header(d):
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[10:20] = b"\x00garbage\xff\xfe\x00"
    f.write_bytes(bytes(data))


def set_config(d, **kw):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(kw)
    (d / "config.json").write_text(json.dumps(cfg))


CASES = {
    "missing tensor": (lambda d: rewrite_tensors(d, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
                       "missing tensor model.layers.1.mlp.up_proj.weight"),
    "unexpected tensor": (lambda d: rewrite_tensors(d, lambda t: t.update(extra=np.zeros(3, np.float32))),
                          "unexpected tensor extra"),
    "mis-shaped tensor": (lambda d: rewrite_tensors(
        d, lambda t: t.update({"model.norm.weight": np.zeros(65, np.float32)})),
        r"model.norm.weight has shape \(65,\), config.json implies \(64,\)"),
    "truncated file": (truncate, "truncated"),
    "corrupt header": (corrupt_header, "safetensors"),
    "unsupported model_type": (lambda d: set_config(d, model_type="llama"), "model_type 'llama' is not supported"),
    "broken config": (lambda d: (d / "config.json").write_text("{oops"), "not valid JSON"),
    "no config": (lambda d: (d / "config.json").unlink(), "config.json"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "no \\*.safetensors"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_checkpoint(tiny_dirs, tmp_path, capsys, case):
    damage, message = CASES[case]
    d = copy(tiny_dirs, tmp_path)
    damage(d)
    code, out, err = run(["generate", "--model", str(d), "Hi"], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("gemma-ref: error: ")
    import re

    assert re.search(message, err), err


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "/no/such/dir", "Hi"], "no such file or directory"),
    (["generate", "--model", "gemma-9000", "Hi"], "unknown model 'gemma-9000'"),
    (["generate", "--model", "{tiny}", "--top-p", "0", "Hi"], "bad sampling argument: top_p"),
    (["generate", "--model", "{tiny}", "--temperature", "-1", "Hi"], "bad sampling argument: temperature"),
    (["generate", "--model", "{tiny}", "-n", "300", "Hi"], "exceeds the model's context of 256"),
    (["generate", "--model", "{tiny}", "--threads", "0", "Hi"], "--threads must be >= 1"),
])
def test_bad_arguments(tiny_dirs, capsys, argv, message):
    argv = [a.replace("{tiny}", str(tiny_dirs["gemma1-mqa"])) for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 1 and message in err
    assert err.count("gemma-ref: error:") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["generate", "--model", "{tiny}", "-n", "-3", "Hi"], "--max-new-tokens must be >= 0"),
    (["chat", "--model", "{tiny}", "--top-k", "-1"], "bad sampling argument: top_k must be an integer >= 0"),
])
def test_bad_generation_arguments_fail_before_loading(tiny_dirs, capsys, argv, message):
    argv = [a.replace("{tiny}", str(tiny_dirs["gemma1-mqa"])) for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 1 and out == "" and err == f"gemma-ref: error: {message}\n"


def test_offline_without_cache_through_cli(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "gemma_ref", "generate", "--model", "7b", "Hi"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "not in the local Hugging Face cache" in r.stderr


def test_threads_option_sets_the_thread_count(tiny_dirs, capsys):
    from gemma_ref import parallel

    try:
        code, out, _ = run(["generate", "--model", str(tiny_dirs["gemma1-mqa"]), "--threads", "1", "-n", "3", "Hi"], capsys)
        assert code == 0 and out.startswith("Hi") and parallel._threads == 1
    finally:
        parallel.set_threads(None)  # the default again


# --- a first run as a new user (issue 15) ----------------------------------------------


def test_chat_on_a_base_model_warns_once_and_names_an_it_model(tiny_dirs, tmp_path, capsys, monkeypatch):
    code, out, err = run(["chat", "--model", str(tiny_dirs["gemma1-mqa"]), "-n", "2"], capsys,
                         "Hi\nAgain\n", monkeypatch)
    assert code == 0 and err.count("gemma-ref: warning:") == 1
    assert "is a base model" in err and "instruction-tuned (-it) model, e.g. 2b-it or 7b-it" in err  # Gemma 1
    it = shutil.copytree(tiny_dirs["gemma1-mqa"], tmp_path / "tiny-it")
    code, out, err = run(["generate", "--chat", "--model", str(it), "-n", "2", "Hi"], capsys)
    assert code == 0 and "warning" not in err


def test_generate_prints_its_speed_on_stderr(tiny_dirs, capsys):
    code, out, err = run(["generate", "--model", str(tiny_dirs["gemma1-mqa"]), "-n", "5", "--stop", "\x00",
                          "Hello"], capsys)
    import re

    m = re.search(r"gemma-ref: prompt (\d+) tokens, [\d.]+ tok/s; generation (\d+) tokens, [\d.]+ tok/s", err)
    n_prompt = len(Model.from_pretrained(tiny_dirs["gemma1-mqa"]).tokenizer.encode("Hello"))
    assert code == 0 and m and int(m.group(1)) == n_prompt and int(m.group(2)) == 5, err


def test_generate_prompt_from_a_file_with_a_system_prompt(tiny_dirs, tmp_path, capsys):
    d = str(tiny_dirs["gemma3-mqa"])  # Gemma 3's template takes a system message (Gemma 1's refuses)
    (tmp_path / "p.txt").write_text("Tell me about NumPy")
    code, out, _ = run(["generate", "--model", d, "-n", "4", "--chat", "--system", "Be brief.",
                        "--file", str(tmp_path / "p.txt")], capsys)
    expected = Model.from_pretrained(d).chat([{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Tell me about NumPy"}],
                                             max_new_tokens=4)
    assert code == 0 and out == expected + "\n"


def test_max_memory_keeps_weights_on_disk_with_the_same_output(tiny_dirs, capsys):
    d = str(tiny_dirs["gemma1-mqa"])
    assert run(["generate", "--model", d, "-n", "6", "Hello"], capsys)[:2] == \
        run(["generate", "--model", d, "-n", "6", "--max-memory", "10K", "Hello"], capsys)[:2]


def test_same_default_max_new_tokens_in_api_and_cli():
    import inspect

    from gemma_ref.api import MAX_NEW_TOKENS
    from gemma_ref.cli import build_parser

    args = build_parser().parse_args(["generate", "x"])
    assert args.max_new_tokens == MAX_NEW_TOKENS == inspect.signature(
        Model.generate_ids).parameters["max_new_tokens"].default


def test_models_lists_the_aliases(capsys):
    from gemma_ref.hub import ALIASES

    code, out, _ = run(["models", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and {r["alias"] for r in rows} == set(ALIASES) | {"3-270m-gguf"}
    assert {r["alias"] for r in rows if r["instruction_tuned"]} == {a for a in ALIASES if a.endswith("-it")}


def test_info_of_a_hub_model_reads_config_only(tiny_dirs, tmp_path, capsys, monkeypatch):
    """Offline, with only config.json in the Hugging Face cache: info works, and says the
    weights are not there; --load (which needs them) fails with one line."""
    from huggingface_hub import constants
    from test_hub import fake_cache

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    shutil.copy(tiny_dirs["gemma1-mqa"] / "config.json", only_config)
    fake_cache(tmp_path, "google/gemma-2-9b", only_config)
    code, out, err = run(["info", "--model", "2-9b", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["files"] == "huggingface.co/google/gemma-2-9b" and not info["loaded"]
    assert info["file_sizes"] == {"config.json": (only_config / "config.json").stat().st_size}
    assert info["parameters"] == Model.from_pretrained(tiny_dirs["gemma1-mqa"]).config.num_parameters
    code, out, err = run(["info", "--model", "2-9b", "--load"], capsys)
    assert code == 1 and err.count("gemma-ref: error:") == 1 and "no *.safetensors" in err


def test_info_does_not_read_weights(tiny_dirs, capsys, monkeypatch):
    from gemma_ref import api

    monkeypatch.setattr(api, "load_safetensors_checkpoint", lambda *a, **k: pytest.fail("weights read"))
    code, out, _ = run(["info", "--model", str(tiny_dirs["gemma3-mqa"])], capsys)
    assert code == 0 and "model.safetensors" in out and "chat        no: a base model" in out


def test_info_of_a_hub_model_online_lists_sizes_and_downloads_no_weight(tiny_dirs, tmp_path, capsys, monkeypatch):
    """Online (faked): config.json is fetched alone, the sizes come from the Hub's file list."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    fetched = []

    def hf_hub_download(repo_id, filename, **kw):
        fetched.append(filename)
        return str(tiny_dirs["gemma1-mqa"] / filename)

    class Sibling:
        def __init__(self, name, size):
            self.rfilename, self.size = name, size

    class Info:
        siblings = [Sibling("config.json", 700), Sibling("model-00001-of-00004.safetensors", 4_900_000_000),
                    Sibling("model-00002-of-00004.safetensors", 4_950_000_000), Sibling("model.gguf", 1),
                    Sibling("model.safetensors.index.json", 40_000), Sibling("tokenizer.model", 4_241_003)]

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo_id, **kw: Info())
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("downloads all"))
    code, out, err = run(["info", "--model", "2-9b", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and fetched == ["config.json"]
    assert info["file_sizes"]["model-00002-of-00004.safetensors"] == 4_950_000_000
    assert "model.gguf" not in info["file_sizes"]  # not a file the engine reads


def test_info_says_what_is_special_about_gemma4(capsys):
    from conftest import DATA

    assert main(["info", "--model", str(DATA / "tiny" / "gemma4-multimodal")]) == 0
    out = capsys.readouterr().out
    assert "shared K/V        layer 3 attend with the K/V of layer(s) 1" in out
    assert "per-layer embed.  520 x 4 x 8 = 16,640 values" in out
    assert "full: head_dim 32, 1 kv heads; sliding: head_dim 16" in out
