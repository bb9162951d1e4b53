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
