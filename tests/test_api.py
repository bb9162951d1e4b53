"""The public Model API: forward, generate, stream, chat, stop conditions."""

import numpy as np
import pytest

from gemma_ref import GemmaRefError, Model


@pytest.fixture(scope="module")
def m(tiny_dirs):
    return Model.from_pretrained(tiny_dirs["gemma3-mqa"])


def test_forward_shapes_and_statelessness(m):
    one = m.forward([2, 10, 11])
    assert one.shape == (3, m.n_vocab) and one.dtype == np.float32
    assert m.forward(np.array([[2, 10, 11]])).shape == (1, 3, m.n_vocab)
    np.testing.assert_array_equal(m.forward([2, 10, 11]), one)  # nothing left behind


def test_forward_rejects_bad_ids(m):
    with pytest.raises(GemmaRefError, match="integer"):
        m.forward(np.array([1.5, 2.0]))
    with pytest.raises(GemmaRefError, match="out of range"):
        m.forward([2, 10**6])


def test_generate_text_equals_stream_and_id_generation(m):
    text = m.generate("Hello", max_new_tokens=12, stop=[])
    assert text == "".join(m.stream("Hello", max_new_tokens=12, stop=[]))
    ids = m.generate(m.tokenizer.encode("Hello"), max_new_tokens=12, stop=[])
    assert len(ids) == 12 and m.tokenizer.decode(ids) == text


def test_greedy_is_first_argmax(m):
    ids = m.tokenizer.encode("Hello")
    first = m.generate(ids, max_new_tokens=1, stop=[])[0]
    assert first == int(np.argmax(m.forward(ids)[-1]))


def test_seeded_sampling_reproducible(m):
    a = m.generate("Hi", max_new_tokens=10, temperature=100.0, seed=3, stop=[])
    assert a == m.generate("Hi", max_new_tokens=10, temperature=100.0, seed=3, stop=[])
    assert a != m.generate("Hi", max_new_tokens=10, temperature=100.0, seed=4, stop=[])


def test_stops_at_stop_token_and_string(m):
    ids = m.tokenizer.encode("Hello")
    full = m.generate(ids, max_new_tokens=12, stop=[])
    assert m.generate(ids, max_new_tokens=12, stop=[full[3]]) == full[:full.index(full[3])]
    text = m.tokenizer.decode(full)
    needle = text[len(text) // 2:len(text) // 2 + 2]
    if needle:
        assert m.generate("Hello", max_new_tokens=12, stop=[needle]) == text[:text.find(needle)]


def test_default_stop_at_eos(tiny_dirs):
    """A model whose every logit favours <eos> stops at once (eos is in the default stops)."""
    m = Model.from_pretrained(tiny_dirs["gemma1-mqa"])
    m.weights.arrays["model.embed_tokens.weight"] = w = m.weights.arrays["model.embed_tokens.weight"].copy()
    w[m.tokenizer.eos_id] = 100.0  # its logit h . w dominates: sum(h) is large and positive
    assert m.generate("Hello", max_new_tokens=5) == ""


def test_chat_returns_text(m):
    reply = m.chat([{"role": "user", "content": "Hi"}], max_new_tokens=5)
    assert isinstance(reply, str)


def test_prompt_longer_than_context(m):
    with pytest.raises(GemmaRefError, match="exceeds the model's context of 256"):
        m.generate(list(range(4, 250)), max_new_tokens=20)


def test_bad_sampling_argument(m):
    with pytest.raises(GemmaRefError, match="top_p"):
        m.generate("Hi", top_p=0.0)


def test_ids_without_tokenizer(tiny_dirs, tmp_path):
    import shutil

    d = tmp_path / "notok"
    shutil.copytree(tiny_dirs["gemma1-mqa"], d)
    (d / "tokenizer.model").unlink()
    m = Model.from_pretrained(d)
    assert len(m.generate([2, 7, 8], max_new_tokens=3, stop=[])) == 3
    with pytest.raises(GemmaRefError, match="no tokenizer"):
        m.generate("text")
