"""Layer 2: invariants on tiny seeded checkpoints, for every architecture variant.

cached decode == full forward; chunked prefill == one-shot; last_only prefill ==
the last position of a full forward (and caches every token); batch of two == two
singles; bf16 file == its float32 widening; bounded sliding-window cache.
"""

import numpy as np
import pytest

from conftest import VARIANTS
from gemma_ref import Model, forward, new_cache
from gemma_ref.config import SLIDING

NAMES = list(VARIANTS) + ["gemma1-gqa-bf16"]
T = 30  # longer than the sliding windows (8)


def ids_for(model, seed=0, B=2, T=T):
    return np.random.default_rng(seed).integers(0, model.n_vocab, (B, T))


def through_cache(m, ids, cache, chunk, **kw):
    """forward() over ids in chunks of `chunk` tokens through `cache`: each call's logits."""
    return [forward(m.weights, m.config, ids[:, s:s + chunk], cache=cache, n_vocab=m.n_vocab, **kw)
            for s in range(0, ids.shape[1], chunk)]


@pytest.mark.parametrize("name", NAMES)
def test_cached_decode_equals_full_forward(tiny_models, name):
    m = tiny_models[name]
    ids = ids_for(m)
    full = m.forward(ids)
    cache = m.new_cache(2, T)
    steps = through_cache(m, ids, cache, 1)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk", [3, 7, 16])
def test_chunked_prefill_equals_one_shot(tiny_models, name, chunk):
    m = tiny_models[name]
    ids = ids_for(m, seed=1)
    full = m.forward(ids)
    cache = m.new_cache(2, T)
    parts = through_cache(m, ids, cache, chunk)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk", [1, 7, 20])
def test_last_only_prefill_gives_last_logits_and_a_full_cache(tiny_models, name, chunk):
    """last_only: the last position's logits, and every prefilled token cached for decoding."""
    m = tiny_models[name]
    ids = ids_for(m, seed=4)
    full = m.forward(ids)
    cache = m.new_cache(2, T)
    lasts = through_cache(m, ids[:, :20], cache, chunk, last_only=True)
    ends = [min(s + chunk, 20) for s in range(0, 20, chunk)]
    np.testing.assert_allclose(np.concatenate(lasts, axis=1), full[:, [e - 1 for e in ends]],
                               atol=1e-4, rtol=0)
    steps = through_cache(m, ids[:, 20:], cache, 1)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full[:, 20:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_two_equals_two_singles(tiny_models, name):
    m = tiny_models[name]
    ids = ids_for(m, seed=2)
    both = m.forward(ids)
    for b in range(2):
        np.testing.assert_allclose(both[b], m.forward(ids[b]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["gemma1-gqa", "gemma2-gqa", "gemma3-mqa"])
def test_ragged_batch_generation_equals_singles(tiny_models, name):
    """Left-padded batch generation gives each row exactly its single-prompt result."""
    m = tiny_models[name]
    rng = np.random.default_rng(3)
    prompts = [rng.integers(4, m.n_vocab, n).tolist() for n in (5, 12, 9)]
    batch = m.generate(prompts, max_new_tokens=20, stop=[])
    for p, out in zip(prompts, batch):
        assert out == m.generate(p, max_new_tokens=20, stop=[])


def test_bf16_file_equals_its_float32_widening(tiny_dirs, tmp_path):
    import ml_dtypes
    from safetensors.numpy import load_file, save_file

    d = tiny_dirs["gemma1-gqa-bf16"]
    widened = {k: v.astype(np.float32) for k, v in load_file(str(d / "model.safetensors")).items()}
    assert next(iter(load_file(str(d / "model.safetensors")).values())).dtype == ml_dtypes.bfloat16
    f32 = tmp_path / "f32"
    f32.mkdir()
    save_file(widened, str(f32 / "model.safetensors"))
    (f32 / "config.json").write_text((d / "config.json").read_text())
    ids = np.arange(4, 20)
    np.testing.assert_array_equal(Model.from_pretrained(d).forward(ids),
                                  Model.from_pretrained(f32).forward(ids))


def test_weights_over_budget_stay_mapped_and_give_same_logits(tiny_dirs):
    d = tiny_dirs["gemma1-gqa-bf16"]
    held = Model.from_pretrained(d)
    mapped = Model.from_pretrained(d, max_memory=0)  # nothing widened up front
    assert all(a.dtype == np.float32 for a in held.weights.arrays.values())
    assert all(a.dtype != np.float32 for a in mapped.weights.arrays.values())
    ids = np.arange(4, 20)
    # held stacks q/k/v and gate/up for few rows (Weights.fuse), mapped widens block by
    # block: the same products, summed in another order
    np.testing.assert_allclose(held.forward(ids), mapped.forward(ids), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("block", [1 << 18, 40])  # one block per matrix; many, ragged
def test_bf16_held_as_stored_under_a_small_budget_gives_the_float32_logits(tiny_dirs, monkeypatch,
                                                                            block):
    from gemma_ref import parallel
    from gemma_ref.loader import StoredTensor

    monkeypatch.setattr(parallel, "WIDEN_BLOCK", block)
    d = tiny_dirs["gemma1-gqa-bf16"]
    held = Model.from_pretrained(d)  # all of it fits as float32
    as_f32 = sum(a.nbytes for a in held.weights.arrays.values())
    stored = Model.from_pretrained(d, max_memory=as_f32 - 1)  # fits as bf16 only
    kinds = {(a.dtype.name, type(a)) for a in stored.weights.arrays.values()}
    assert kinds == {("bfloat16", np.ndarray), ("float32", np.ndarray)}  # nothing mapped
    for name, a in stored.weights.arrays.items():  # matrices as stored, vectors widened
        assert a.dtype.name == ("bfloat16" if a.ndim == 2 else "float32"), name
        assert not isinstance(a, (np.memmap, StoredTensor))
    ids = np.arange(4, 20)
    np.testing.assert_allclose(stored.forward(ids), held.forward(ids), rtol=1e-6, atol=1e-5)
    # decoding (one column per product) and a batch of 3 through the cache, as generate does
    for B in (1, 3):
        ids = np.arange(4, 4 + 10 * B).reshape(B, 10)
        outs = []
        for m in (held, stored):
            cache = m.new_cache(B, 16)
            outs.append([forward(m.weights, m.config, ids[:, :6], cache=cache)] +
                        [forward(m.weights, m.config, ids[:, t:t + 1], cache=cache)
                         for t in range(6, 10)])
        for a, b in zip(*outs):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-5)  # only the sums' order differs


@pytest.mark.parametrize("name", ["gemma2-gqa", "gemma3-mqa", "gemma4-ple-shared", "gemma4-moe-kv"])
def test_sliding_cache_is_bounded_and_exact_past_the_window(tiny_models, name):
    m = tiny_models[name]
    W = m.config.sliding_window
    cache = m.new_cache(1, 64)
    for c, kind in zip(cache, m.config.layer_types):
        assert c is None or c.k.shape[1] == (W if kind == SLIDING else 64)
    ids = ids_for(m, seed=4, B=1, T=40)
    full = m.forward(ids)
    logits = through_cache(m, ids, cache, 1)
    np.testing.assert_allclose(np.concatenate(logits, 1), full, atol=1e-4, rtol=0)
    for c, kind in zip(cache, m.config.layer_types):
        if c is not None and kind == SLIDING:  # the ring holds exactly the last W positions
            assert sorted(c.pos[0].tolist()) == list(range(40 - W, 40))


def test_shared_layers_own_no_cache_and_per_layer_shapes(tiny_models):
    """Gemma 4: KV-sharing layers get no cache; full layers' caches have their own H and K."""
    m = tiny_models["gemma4-ple-shared"]
    cache = m.new_cache(1, 16)
    assert [c is None for c in cache] == [False, False, False, True, True]
    assert [c.k.shape[2:] for c in cache[:3]] == [(1, 16), (1, 32), (1, 16)]  # [K, H]
    assert [s.kv_source for s in m.config.layers] == [0, 1, 2, 2, 1]
    moe = tiny_models["gemma4-moe-kv"]
    assert [c.k.shape[2:] for c in moe.new_cache(1, 16)] == [(2, 16), (1, 32), (2, 16), (1, 32)]


def test_window_matters(tiny_models):
    """The sliding window changes the logits beyond it (the test above has teeth)."""
    import dataclasses

    m = tiny_models["gemma3-mqa"]
    ids = ids_for(m, seed=5, B=1, T=20)
    wide = dataclasses.replace(m.config, sliding_window=9)
    a = m.forward(ids)
    b = forward(m.weights, wide, ids, n_vocab=m.n_vocab)
    assert np.abs(a[0, :8] - b[0, :8]).max() < 1e-6  # inside both windows: identical
    assert np.abs(a[0, 8:] - b[0, 8:]).max() > 1e-3  # beyond: different


def test_float64_close_to_float32(tiny_dirs):
    m32 = Model.from_pretrained(tiny_dirs["gemma3-mqa"])
    m64 = Model.from_pretrained(tiny_dirs["gemma3-mqa"], dtype="float64")
    ids = np.arange(4, 24)
    out64 = m64.forward(ids)
    assert out64.dtype == np.float64
    assert np.abs(m32.forward(ids) - out64).max() < 1e-4


@pytest.mark.parametrize("preset", ["2b", "2-2b", "3-270m", "3-1b", "3-27b", "4-e2b", "4-26b-a4b"])
def test_cache_nbytes_matches_allocation(preset):
    from gemma_ref import PRESETS
    from gemma_ref.kv_cache import cache_nbytes, new_cache

    config = PRESETS[preset]
    cache = new_cache(config, 1, 2048)  # np.zeros: allocated lazily, cheap
    assert cache_nbytes(config, 2048) == sum(c.nbytes for c in cache if c is not None)


def test_gemma4_e2b_cache_by_hand():
    """E2B at 4096 positions: 15 layers own a cache (20 share); full layers H 512, sliding
    256, one kv head; 12 sliding rings of 512 slots, 3 full caches of 4096."""
    from gemma_ref import PRESETS
    from gemma_ref.kv_cache import cache_nbytes

    c = PRESETS["4-e2b"]
    per_slot = lambda H: 2 * 1 * H * 4 + 8  # k and v in float32, plus the position
    assert cache_nbytes(c, 4096) == 12 * 512 * per_slot(256) + 3 * 4096 * per_slot(512)


@pytest.mark.parametrize("preset", ["2b", "2-27b", "3-270m", "3-27b", "4-e2b", "4-e4b", "4-26b-a4b", "4-31b"])
def test_num_parameters_counts_every_tensor(preset):
    from gemma_ref import PRESETS
    from gemma_ref.loader import expected_shapes

    config = PRESETS[preset]
    assert config.num_parameters == sum(int(np.prod(s)) for s in expected_shapes(config).values())


def test_sliding_layers_do_not_grow_with_context():
    from gemma_ref import PRESETS
    from gemma_ref.kv_cache import cache_nbytes

    c = PRESETS["3-270m"]  # 15 sliding layers (window 512), 3 global
    grow = cache_nbytes(c, 65536) - cache_nbytes(c, 32768)
    per_position = 2 * c.num_key_value_heads * c.head_dim * 4 + 8
    assert grow == 3 * 32768 * per_position  # only the 3 global layers grew


@pytest.mark.parametrize("name", list(VARIANTS))
def test_stacked_products_give_the_logits_of_separate_ones(tiny_models, name):
    """Weights.fuse: q/k/v and gate/up in one product each while decoding (every
    generation: K=V layers, KV sharing, MoE, AltUp), the same logits as unstacked."""
    from gemma_ref.weights import Weights

    m = tiny_models[name]
    assert m.weights.fused  # a float32 model in RAM has stacked matrices
    plain = Weights({k: np.array(v) for k, v in m.weights.arrays.items()})  # nothing stacked
    exact = Weights({k: np.array(v, np.float64) for k, v in m.weights.arrays.items()}, np.float64)
    assert not plain.fused and not exact.fused
    ids = ids_for(m, seed=5, B=3, T=12)
    runs = []
    for W in (m.weights, plain, exact):
        cache = new_cache(m.config, 3, 16, W.dtype)
        out = [forward(W, m.config, ids[:, :8], cache=cache)]
        out += [forward(W, m.config, ids[:, t:t + 1], cache=cache) for t in range(8, 12)]
        runs.append(out)
    for stacked, separate, float64 in zip(*runs):
        # The sums' order differs, so the two agree to float32's rounding as this model
        # amplifies it: a tiny random model can, at some token (Gemma 3n here: the separate
        # products 4e-5 from float64, the stacked 2.9e-4, on an AMD EPYC). A wrong stacking
        # would be off by O(1).
        rounding = np.abs(separate - float64).max()
        np.testing.assert_allclose(stacked, separate, rtol=1e-5, atol=max(1e-4, 10 * rounding))


def test_a_budget_between_tiers_holds_some_as_stored_and_maps_the_rest(tiny_dirs):
    from gemma_ref.loader import StoredTensor

    d = tiny_dirs["gemma1-gqa-bf16"]
    held = Model.from_pretrained(d)
    stored_bytes = sum(a.size * (2 if a.ndim == 2 else 4) for a in held.weights.arrays.values())
    mixed = Model.from_pretrained(d, max_memory=stored_bytes // 2)
    kinds = {type(a) for a in mixed.weights.arrays.values()}
    assert kinds == {np.ndarray, StoredTensor}  # the first half held, the rest on disk
    assert mixed.weights.narrow
    ids = np.arange(4, 20)
    np.testing.assert_allclose(mixed.forward(ids), held.forward(ids), rtol=1e-6, atol=1e-5)


def test_a_narrow_row_table_leaves_decoding_on_blas_threads(tiny_models):
    """Gemma 3n/4's per-layer embeddings held as stored (bfloat16) are read by rows only:
    they do not make the products narrow (parallel.threads_for), a narrow matrix does."""
    import ml_dtypes

    from gemma_ref.weights import ROW_TABLES, Weights

    m = tiny_models["gemma4-ple-shared"]
    [table] = ROW_TABLES
    arrays = dict(m.weights.arrays)
    arrays[table] = arrays[table].astype(ml_dtypes.bfloat16)
    W = Weights(arrays)
    assert table in W.narrow_names and not W.narrow
    ids = ids_for(m, seed=6, B=1, T=6)
    split = Weights(arrays)
    split.narrow = True  # as before: our threads split every product
    np.testing.assert_allclose(forward(W, m.config, ids), forward(split, m.config, ids), rtol=1e-5, atol=1e-5)
    down = "model.layers.0.mlp.down_proj.weight"
    arrays[down] = arrays[down].astype(ml_dtypes.bfloat16)
    assert Weights(arrays).narrow


# --- pipelined prefill (parallel.pipelined) ------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk", [5, 8])
def test_pipelined_prefill_equals_one_shot(tiny_models, name, chunk):
    """The chunks of a prompt side by side on 2 threads, each waiting per layer for the one
    before it (layer_turn): the last logits of a full forward, and the same cache as the
    chunks one after another. Rows of a batch, ring caches (window 8 < 30) and shared K/V."""
    from gemma_ref import parallel

    m = tiny_models[name]
    ids = ids_for(m, seed=7)
    full = m.forward(ids)
    caches = {}
    parallel.set_threads(2)
    try:
        for how in ("pipelined", "in order"):
            cache = caches[how] = m.new_cache(2, T)
            chunks = [(ids[:, s:s + chunk], np.broadcast_to(np.arange(s, min(s + chunk, T)), (2, len(range(s, min(s + chunk, T)))))) for s in range(0, T, chunk)]

            def run(part, positions):
                return forward(m.weights, m.config, part, positions, cache, last_only=True, n_vocab=m.n_vocab)

            last = (parallel.pipelined(run, chunks, m.config.num_hidden_layers) if how == "pipelined"
                    else [run(*c) for c in chunks])[-1]
            np.testing.assert_allclose(last[:, -1], full[:, -1], atol=1e-4, rtol=0)
    finally:
        parallel.set_threads(None)
    for a, b in zip(caches["pipelined"], caches["in order"]):
        if a is not None:
            np.testing.assert_allclose(a.k, b.k, atol=1e-5, rtol=0)
            np.testing.assert_array_equal(a.pos, b.pos)
            assert a.end == b.end


def test_generation_prefills_long_prompts_pipelined(tiny_models, monkeypatch):
    """Model.generate cuts a long prompt into an even number of chunks per thread and runs them
    pipelined: the same tokens as with one thread (chunks in order)."""
    from gemma_ref import api, parallel

    m = tiny_models["gemma3-mqa"]
    prompt = ids_for(m, seed=8, B=1)[0].tolist()
    monkeypatch.setattr(parallel, "MIN_PIPELINED", 4)
    monkeypatch.setattr(api, "PREFILL_CHUNK", 12)
    calls = []
    real = parallel.pipelined
    monkeypatch.setattr(api, "pipelined", lambda fn, chunks, layers: calls.append(len(chunks)) or real(fn, chunks, layers))
    try:
        parallel.set_threads(2)
        two = m.generate(prompt, max_new_tokens=10, stop=[])
        parallel.set_threads(1)
        one = m.generate(prompt, max_new_tokens=10, stop=[])
    finally:
        parallel.set_threads(None)
    assert calls == [4, 3]  # 30 tokens: 2 threads x 2 chunks of <= 12 (8 each); 1 thread: 12, 12, 6
    assert two == one


def test_a_failing_chunk_stops_the_pipeline_with_its_own_error():
    """The first failure is raised, whichever thread ran it, and no chunk waits forever."""
    import threading

    from gemma_ref import parallel

    def run(j):
        with parallel.layer_turn(0):
            if j == 1:
                raise ValueError("chunk 1 failed")
        with parallel.layer_turn(1):
            pass
        return j

    parallel.set_threads(2)
    try:
        done = []
        t = threading.Thread(target=lambda: done.append(pytest.raises(ValueError, parallel.pipelined, run,
                                                                    [(j,) for j in range(6)], 2)))
        t.start()
        t.join(timeout=20)
        assert not t.is_alive() and "chunk 1 failed" in str(done[0].value)
        assert parallel.pipelined(run, [(0,), (2,), (3,)], 2) == [0, 2, 3]  # and it works again
    finally:
        parallel.set_threads(None)


def test_a_pipelined_chunk_without_its_positions_is_refused(tiny_models):
    """The cache's end is not the chunk's start while earlier chunks run: forward says so
    instead of guessing positions."""
    from gemma_ref import parallel

    m = tiny_models["gemma3-mqa"]
    ids = ids_for(m, seed=9, B=1)
    cache = m.new_cache(1, T)
    parallel.set_threads(2)
    try:
        with pytest.raises(RuntimeError, match="must be given its positions"):
            parallel.pipelined(lambda part: forward(m.weights, m.config, part, cache=cache, last_only=True),
                               [(ids[:, :15],), (ids[:, 15:],)], m.config.num_hidden_layers)
    finally:
        parallel.set_threads(None)


@pytest.mark.parametrize("name", ["gemma3-mqa", "gemma4-ple-shared", "gemma3n-altup"])
def test_ragged_batch_generation_equals_singles_when_pipelined(tiny_models, name, monkeypatch):
    """Left padding (positions -1) in pipelined chunks: each row still gets its single result."""
    from gemma_ref import api, parallel

    m = tiny_models[name]
    monkeypatch.setattr(parallel, "MIN_PIPELINED", 2)
    monkeypatch.setattr(api, "PREFILL_CHUNK", 6)
    rng = np.random.default_rng(11)
    prompts = [rng.integers(4, m.n_vocab, n).tolist() for n in (9, 26, 17)]
    parallel.set_threads(2)
    try:
        batch = m.generate(prompts, max_new_tokens=12, stop=[])
    finally:
        parallel.set_threads(1)
    try:
        singles = [m.generate(p, max_new_tokens=12, stop=[]) for p in prompts]
    finally:
        parallel.set_threads(None)
    assert batch == singles
