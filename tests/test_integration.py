"""The merged features together, as a new user meets them: chat templates and stop tokens per
generation, `info` on every kind of tiny checkpoint (tokenizer.json-only ones included)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gemma_ref import Model
from gemma_ref.cli import main

DATA = Path(__file__).parent / "data"
TOKENIZER_JSON = DATA / "tokenizer" / "tiny.tokenizer.json"


def gemma4_it_with_tokenizer_json(tmp_path, src=DATA / "tiny" / "gemma4-multimodal") -> Path:
    """A Gemma 4 -it checkpoint as the Hub ships it: tokenizer.json only, turns spelled
    <|turn> / <turn|> (ids 5, 6 of the tiny vocabulary)."""
    d = tmp_path / "gemma-4-tiny-it"
    shutil.copytree(src, d)
    (d / "tokenizer.model").unlink()
    data = json.loads(TOKENIZER_JSON.read_text())
    for t in data["added_tokens"]:
        t["content"] = {"<start_of_turn>": "<|turn>", "<end_of_turn>": "<turn|>"}.get(t["content"], t["content"])
    (d / "tokenizer.json").write_text(json.dumps(data))
    return d


def info(capsys, *argv) -> tuple[dict, str]:
    assert main(["info", *argv, "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert main(["info", *argv]) == 0
    return as_json, capsys.readouterr().out


def test_info_reads_a_tokenizer_json_checkpoint(tmp_path, capsys):
    d = gemma4_it_with_tokenizer_json(tmp_path)
    for argv in (["-m", str(d)], ["-m", str(d), "--load"]):
        j, text = info(capsys, *argv)
        assert j["tokenizer_vocab"] == 512 and "tokenizer   512 tokens" in text
        assert j["instruction_tuned"] and "gemma4-it.jinja" in j["chat_template"]
        assert "converted" not in text  # a directory is read as it is


@pytest.mark.parametrize("name, template", [
    ("tiny/gemma3-gqa", "gemma3-it.jinja"), ("tiny/gemma2-gqa", "gemma2-it.jinja"),
    ("tiny/gemma3n-2streams", "gemma3-it.jinja"), ("tiny/gemma3n-4streams", "gemma3-it.jinja"),
    ("tiny/gemma4-ple-shared", "gemma4-it.jinja"), ("tiny/gemma4-moe-kv", "gemma4-it.jinja"),
    ("tiny/gemma4-multimodal", "gemma4-it.jinja"), ("vision/gemma3-vision-mqa", "gemma3-it.jinja"),
    ("vision/gemma4-vision", "gemma4-it.jinja"),
])
def test_info_names_the_template_of_each_kind(name, template, capsys):
    j, text = info(capsys, "-m", str(DATA / name))
    assert j["chat_template"] == f"built-in {template} (the checkpoint has no chat template)"
    assert f"template    built-in {template}" in text
    assert Model.from_pretrained(DATA / name, progress=False).chat_template.source == j["chat_template"]


def test_info_prefers_the_checkpoints_template(tmp_path, capsys):
    d = tmp_path / "m"
    shutil.copytree(DATA / "tiny" / "gemma4-moe-kv", d)
    (d / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    j, _ = info(capsys, "-m", str(d))
    assert j["chat_template"] == str(d / "chat_template.jinja")


def test_gemma4_it_turns_and_stop_token(tmp_path):
    """-it Gemma 4: the template's <|turn> markers are single tokens, and the reply ends at <turn|>."""
    model = Model.from_pretrained(gemma4_it_with_tokenizer_json(tmp_path), progress=False)
    assert model.instruction_tuned
    tok = model.tokenizer
    assert (tok.start_of_turn_id, tok.end_of_turn_id) == (5, 6)
    prompt = model.chat_prompt([{"role": "user", "content": "Hi"}])
    assert prompt.startswith("<bos><|turn>user\nHi<turn|>\n<|turn>model\n")
    assert tok.encode(prompt)[:2] == [tok.bos_id, 5]
    assert 6 in model._default_stop and tok.eos_id in model._default_stop


def test_gemma3n_it_stops_at_end_of_turn(tmp_path):
    d = tmp_path / "gemma-3n-tiny-it"
    shutil.copytree(DATA / "tiny" / "gemma3n-2streams", d)
    model = Model.from_pretrained(d, progress=False)
    tok = model.tokenizer
    assert tok.piece_id("<end_of_turn>") == tok.end_of_turn_id and tok.end_of_turn_id in model._default_stop
    assert model.chat_prompt([{"role": "user", "content": "Hi"}]) == \
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_dump_trace_of_a_moe_model_reads_back(tmp_path, capsys):
    """The MoE path traces its tokens flat ([B*T, D]); a dump keeps them [T, D] (it kept only
    the first token's row, and the file could not be read back)."""
    from gemma_ref import reference

    out = tmp_path / "moe.npz"
    d = DATA / "tiny" / "gemma4-moe-kv"
    assert main(["dump", "-m", str(d), "-p", "Hello there", "--trace", "-n", "2", "-o", str(out)]) == 0
    dump = reference.load(out).prompts[0]
    T = len(dump.input_ids)
    assert dump.trace["model.layers.0.experts"].shape == (T, 48)
    assert dump.trace["model.layers.0.pre_feedforward_layernorm_2"].shape == (T, 48)
    assert main(["compare", str(out), "-m", str(d)]) == 0
    assert "PASS" in capsys.readouterr().out


@pytest.mark.parametrize("name, line", [
    ("vision/gemma4-vision", "images            Gemma 4 encoder, patch 4, 2x2 pooling, an image's tokens see each "
                             "other on sliding layers; 2 layer(s), 22,400 parameters (not counted above)"),
    ("vision/gemma3-vision-gqa", "images            Gemma 3 SigLIP, 48 px, patch 8, 9 tokens per image; "
                                 "2 layer(s), 45,152 parameters (not counted above)"),
])
def test_info_describes_the_vision_encoder(name, line, capsys):
    """(45,152 and 22,400: the vision_tower.* / multi_modal_projector.* / embed_vision.* values of
    the checkpoints' model.safetensors.)"""
    for argv in (["-m", str(DATA / name)], ["-m", str(DATA / name), "--load"]):
        j, text = info(capsys, *argv)
        assert line in text.splitlines() and line in j["special"]
    j, text = info(capsys, "-m", str(DATA / "tiny" / "gemma4-ple-shared"))
    assert not any(s.startswith("images") for s in j["special"])


def test_gemma4_stops_at_its_own_end_of_turn_when_the_vocabulary_has_both(tmp_path):
    """A vocabulary with <end_of_turn> and <turn|>: Gemma 4's template ends turns with <turn|>,
    so that is its stop token (and Gemma 3's stays <end_of_turn>)."""
    d = gemma4_it_with_tokenizer_json(tmp_path)
    data = json.loads((d / "tokenizer.json").read_text())
    for t in data["added_tokens"]:  # <mask> (id 4) becomes <turn|>; <end_of_turn> is id 6 again
        t["content"] = {"<mask>": "<turn|>", "<turn|>": "<end_of_turn>"}.get(t["content"], t["content"])
    (d / "tokenizer.json").write_text(json.dumps(data))
    model = Model.from_pretrained(d, progress=False)
    assert model.tokenizer.piece_id("<end_of_turn>") == 6 and model.end_of_turn_id == 4
    assert 4 in model._default_stop and 6 not in model._default_stop
    g3 = tmp_path / "gemma-3-it"
    shutil.copytree(DATA / "tiny" / "gemma3-gqa", g3)
    (g3 / "tokenizer.model").unlink()
    shutil.copy(d / "tokenizer.json", g3 / "tokenizer.json")
    assert Model.from_pretrained(g3, progress=False).end_of_turn_id == 6


def test_chat_template_kwargs_reach_the_template(tmp_path, capsys, monkeypatch):
    """Gemma 4's thinking switch: Model.chat(chat_template_kwargs=...) and --chat-template-kwargs."""
    model = Model.from_pretrained(DATA / "tiny" / "gemma4-ple-shared", progress=False)
    messages = [{"role": "user", "content": "Hi"}]
    thinking = model.chat_prompt(messages, enable_thinking=True)
    assert "<|think|>" in thinking and "<|think|>" not in model.chat_prompt(messages)
    want = model.generate(thinking, max_new_tokens=4, stop=[])
    assert model.chat(messages, chat_template_kwargs={"enable_thinking": True}, max_new_tokens=4, stop=[]) == want
    from gemma_ref import GemmaRefError
    for bad in ([1], {"tools": []}):
        with pytest.raises(GemmaRefError, match="chat_template_kwargs"):
            model.chat(messages, chat_template_kwargs=bad)
    d = str(DATA / "tiny" / "gemma4-ple-shared")
    assert main(["generate", "-m", d, "--chat", "-n", "4", "--stop", "never-seen", "--chat-template-kwargs",
                 '{"enable_thinking": true}', "Hi"]) == 0
    assert capsys.readouterr().out == want + "\n"
    for argv, message in [(["--chat", "--chat-template-kwargs", "{nope"], "not JSON"),
                          (["--chat", "--chat-template-kwargs", "[1]"], "expected a JSON object"),
                          (["--chat-template-kwargs", "{}"], "goes with --chat")]:
        assert main(["generate", "-m", d, *argv, "Hi"]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_gemma3n_says_why_it_takes_no_images():
    from gemma_ref import GemmaRefError

    model = Model.from_pretrained(DATA / "tiny" / "gemma3n-2streams", progress=False)
    with pytest.raises(GemmaRefError, match=r"takes no images \(gemma-ref runs the language model of Gemma 3n"):
        model.generate("Hi", images=[DATA / "vision" / "images" / "rgba.png"], max_new_tokens=1)


def test_image_parts_as_transformers_names_them():
    from gemma_ref import GemmaRefError
    from gemma_ref.tokenizer import chat_images

    f = str(DATA / "vision" / "images" / "rgba.png")
    parts = [{"type": "image", "image": f}, {"type": "image", "path": f}, {"type": "image", "url": f}]
    assert chat_images([{"role": "user", "content": parts}]) == [f, f, f]
    with pytest.raises(GemmaRefError, match="downloads none"):
        chat_images([{"role": "user", "content": [{"type": "image", "url": "https://example.com/a.png"}]}])
    with pytest.raises(GemmaRefError, match='needs "image"'):
        chat_images([{"role": "user", "content": [{"type": "image"}]}])


def test_gemma4_refuses_pan_and_scan():
    from gemma_ref import GemmaRefError

    model = Model.from_pretrained(DATA / "vision" / "gemma4-vision", progress=False)
    image = DATA / "vision" / "images" / "rgb_wide.png"
    for call in (lambda: model.generate("Hi", images=[image], pan_and_scan=True, max_new_tokens=1),
                 lambda: model.embed_images([image], pan_and_scan=True)):
        with pytest.raises(GemmaRefError, match="pan_and_scan: Gemma 3 only"):
            call()
    assert model.generate("Hi", images=[image], pan_and_scan=False, max_new_tokens=1, stop=[])


def test_a_template_that_drops_image_parts_is_an_error(tmp_path):
    """Images the template does not place would otherwise be put before its <bos>."""
    from gemma_ref import GemmaRefError

    d = tmp_path / "m"
    shutil.copytree(DATA / "vision" / "gemma3-vision-mqa", d)
    (d / "chat_template.jinja").write_text(
        "{{ bos_token }}{% for m in messages %}{% for p in m['content'] %}{% if p['type'] == 'text' %}"
        "{{ p['text'] }}{% endif %}{% endfor %}{% endfor %}")
    model = Model.from_pretrained(d, progress=False)
    messages = [{"role": "user", "content": [{"type": "image", "image": str(DATA / "vision" / "images" / "rgba.png")},
                                             {"type": "text", "text": "Hi"}]}]
    with pytest.raises(GemmaRefError, match=r"wrote no image marker for the conversation's 1 image part"):
        model.chat(messages, max_new_tokens=1)
