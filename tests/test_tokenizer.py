"""The tokenizer against transformers' Gemma tokenizer (ids recorded by
scripts/make_tiny_tokenizer.py), the streaming detokenizer and the chat template."""

import json

import pytest

from conftest import DATA, TINY_TOKENIZER
from gemma_ref import GemmaRefError, Tokenizer, chat_prompt

GOLDEN = json.loads((DATA / "tokenizer" / "golden_ids.json").read_text())


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_file(TINY_TOKENIZER)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: repr(c["text"])[:30])
def test_ids_equal_transformers(tok, case):
    expected = case["ids"]
    if case["text"].startswith("<bos>"):
        # transformers prepends a second <bos> to text that starts with one; Gemma must
        # never see two, so we keep the one the text has (documented difference).
        assert expected[:2] == [tok.bos_id, tok.bos_id]
        expected = expected[1:]
    assert tok.encode(case["text"]) == expected


def test_bos_first_never_twice(tok):
    assert tok.encode("hi")[0] == tok.bos_id
    assert tok.encode("<bos>hi").count(tok.bos_id) == 1
    assert tok.encode("hi", add_bos=False)[0] != tok.bos_id


def test_special_strings_become_their_ids(tok):
    ids = tok.encode("<start_of_turn>user\nHi<end_of_turn>")
    assert ids[1] == tok.start_of_turn_id and ids[-1] == tok.end_of_turn_id
    assert tok.encode("a<eos>b")[2] == tok.eos_id


@pytest.mark.parametrize("text", ["héllo wörld", "emoji 😀👍 then text", "CJK 你好，世界", "tabs\tand\nlines",
                                  "  spaces   runs ", "12345"])
def test_stream_decoder_pieces_concatenate_to_decode(tok, text):
    ids = tok.encode(text, add_bos=False)
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == tok.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)  # never half a character


def test_emoji_is_byte_fallback_and_held_back(tok):
    ids = tok.encode("😀", add_bos=False)
    assert len(ids) == 4  # four UTF-8 bytes, four byte pieces
    dec = tok.stream_decoder()
    assert [dec.push(i) for i in ids] == ["", "", "", "😀"]


def test_chat_template():
    assert chat_prompt([{"role": "user", "content": "Hi"}]) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n")
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    assert chat_prompt(convo) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")


def test_chat_template_rejects_bad_roles():
    with pytest.raises(GemmaRefError, match="role"):
        chat_prompt([{"role": "tool", "content": "x"}])
    with pytest.raises(GemmaRefError, match="alternate"):
        chat_prompt([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_not_a_tokenizer_file(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(GemmaRefError, match="SentencePiece"):
        Tokenizer.from_file(bad)


# --- tokenizer.json (what a repo without tokenizer.model ships: Gemma 4) -------------

TOKENIZER_JSON = DATA / "tokenizer" / "tiny.tokenizer.json"


@pytest.fixture(scope="module")
def tok_json():
    return Tokenizer.from_tokenizer_json(TOKENIZER_JSON)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: repr(c["text"])[:30])
def test_tokenizer_json_gives_transformers_ids(tok, tok_json, case):
    assert tok_json.encode(case["text"]) == tok.encode(case["text"])
    assert tok_json.decode(tok_json.encode(case["text"], add_bos=False)) == tok.decode(tok.encode(case["text"], add_bos=False))


def test_tokenizer_json_equals_tokenizer_model_on_random_text(tok, tok_json):
    import numpy as np

    rng = np.random.default_rng(0)
    alphabet = list("the quick brown fox  \n\t0123456789éü你好😀.,;:'\"()<>") + ["<end_of_turn>", "<bos>"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet, size=rng.integers(1, 40)))
        assert tok_json.encode(text) == tok.encode(text), repr(text)
    assert (tok_json.vocab_size, tok_json.bos_id, tok_json.eos_id, tok_json.pad_id, tok_json.end_of_turn_id) == \
           (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.end_of_turn_id)


def test_gemma4_turn_markers(tmp_path):
    """Gemma 4 spells its turns <|turn> ... <turn|>; the tokenizer knows them as its
    start/end of turn, and matches them whole in text."""
    data = json.loads(TOKENIZER_JSON.read_text())
    for t in data["added_tokens"]:
        t["content"] = {"<start_of_turn>": "<|turn>", "<end_of_turn>": "<turn|>"}.get(t["content"], t["content"])
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    t4 = Tokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")
    assert (t4.start_of_turn_id, t4.end_of_turn_id) == (5, 6)
    ids = t4.encode("<|turn>user\nHi<turn|>")
    assert ids[:2] == [t4.bos_id, 5] and ids[-1] == 6


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(normalizer=None), "normalizer null is not"),
    (lambda d: d.update(pre_tokenizer={"type": "ByteLevel", "add_prefix_space": False}), "pre_tokenizer"),
    (lambda d: d["model"].update(type="Unigram"), "not a BPE with byte_fallback"),
    (lambda d: d["model"]["vocab"].pop("▁t"), "token ids are not 0..n-1, one piece each"),
])
def test_other_tokenizer_json_kinds_are_refused(tmp_path, change, message):
    data = json.loads(TOKENIZER_JSON.read_text())
    change(data)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(GemmaRefError, match=message):
        Tokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")


def test_checkpoint_with_only_tokenizer_json(tiny_dirs, tmp_path):
    import shutil

    from gemma_ref import Model

    d = tmp_path / "m"
    shutil.copytree(tiny_dirs["gemma3-mqa"], d)
    (d / "tokenizer.model").unlink()
    shutil.copy(TOKENIZER_JSON, d / "tokenizer.json")
    m = Model.from_pretrained(d)
    assert m.tokenizer is not None and m.tokenizer.source.endswith("tokenizer.json")
    assert m.generate("Hello", max_new_tokens=5, stop=[]) == Model.from_pretrained(tiny_dirs["gemma3-mqa"]).generate(
        "Hello", max_new_tokens=5, stop=[])
