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

    before = parallel._threads
    try:
        code, out, _ = run(["generate", "--model", str(tiny_dirs["gemma1-mqa"]), "--threads", "1", "-n", "3", "Hi"], capsys)
        assert code == 0 and out.startswith("Hi") and parallel._threads == 1
    finally:
        parallel.set_threads(before)


def test_info_says_what_is_special_about_gemma4(capsys):
    from conftest import DATA

    assert main(["info", "--model", str(DATA / "tiny" / "gemma4-multimodal")]) == 0
    out = capsys.readouterr().out
    assert "shared K/V        layer 3 attend with the K/V of layer(s) 1" in out
    assert "per-layer embed.  520 x 4 x 8 = 16,640 values" in out
    assert "full: head_dim 32, 1 kv heads; sliding: head_dim 16" in out
