"""Tests of lab.models.transformer, lab.models.encoder and lab.models.decoding: shapes, parameter
counts, purity and dropout, causality by gradients, padding invariance, KV-cache decoding against
full recomputation, sampling, masking."""

import dataclasses
import re
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lab.models import decoding as dec
from lab.models import encoder as enc
from lab.models import transformer as tfm

CFG = tfm.TransformerConfig.tiny(vocab_size=13)  # 2 layers, 2 heads, width 32, max_len 16
B, L = 3, 12
LABELS = {"play": 37, "genre": 3}

# Compilation dominates this file's run time, so every model is jitted once per (model, train,
# input shapes) and the parameter fixtures are shared: GPT and Encoder have the same tree.


def _init(model, *args, seed=0):
    """model.init(key, *args, train=False) under jit (one compile instead of op by op), unboxed
    (plain arrays, as the loop holds them: the models box their parameters with their placement)."""
    return jax.jit(lambda key, *a: nn.unbox(model.init(key, *a, train=False)))(jax.random.key(seed), *args)


@functools.lru_cache(maxsize=None)
def _jitted_apply(model, train):
    return jax.jit(lambda variables, rngs, *args: model.apply(variables, *args, train=train,
                                                               rngs=rngs))


def _apply(model, variables, *args, train=False, rngs=None):
    """model.apply(variables, *args, train=train, rngs=rngs), jitted once per model and train."""
    return _jitted_apply(model, train)(variables, rngs, *args)


def _tokens(seed, shape=(B, L), vocab=CFG.vocab_size):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


@pytest.fixture(scope="module")
def gpt_params():
    return _init(tfm.GPT(CFG), _tokens(0), seed=0)["params"]


@pytest.fixture(scope="module")
def encoder_params(gpt_params):
    """An Encoder's tree is exactly GPT's (checked in test_param_trees), so reuse the values."""
    return gpt_params


@pytest.fixture(scope="module")
def mlm_params():
    return _init(enc.MaskedLM(CFG), _tokens(0), jnp.ones((B, L)), seed=2)["params"]


@pytest.fixture(scope="module")
def clf_params():
    return _init(enc.EncoderClassifier(CFG, LABELS), _tokens(0), jnp.ones((B, L)),
                 seed=3)["params"]


def _count(params):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _tree_shapes(params):
    return jax.tree.map(lambda x: (x.shape, x.dtype), params)


# ------------------------------------------------------------------------------------------------
# Shapes, parameter counts, parameter trees.


def test_output_shapes(gpt_params, encoder_params, mlm_params, clf_params):
    tokens, mask = _tokens(1), jnp.ones((B, L), jnp.int32)
    logits = _apply(tfm.GPT(CFG), {"params": gpt_params}, tokens)
    assert logits.shape == (B, L, CFG.vocab_size) and logits.dtype == jnp.float32

    hidden, pooled = _apply(enc.Encoder(CFG), {"params": encoder_params}, tokens, mask)
    assert hidden.shape == (B, L, CFG.width) and pooled.shape == (B, CFG.width)
    assert pooled.dtype == jnp.float32

    mlm_logits = _apply(enc.MaskedLM(CFG), {"params": mlm_params}, tokens, mask)
    assert mlm_logits.shape == (B, L, CFG.vocab_size) and mlm_logits.dtype == jnp.float32

    out = _apply(enc.EncoderClassifier(CFG, LABELS), {"params": clf_params}, tokens, mask)
    assert set(out) == {"play", "genre"}
    assert out["play"].shape == (B, 37) and out["genre"].shape == (B, 3)


def test_gpt_param_count_matches_formula(gpt_params):
    v, t, d, n, f = CFG.vocab_size, CFG.max_len, CFG.width, CFG.num_layers, CFG.mlp_width
    embeddings = v * d + t * d  # token table (also the tied output head) + positions
    block = (2 * d  # ln_1
             + d * 3 * d + 3 * d  # qkv
             + d * d + d  # out
             + 2 * d  # ln_2
             + d * f + f  # fc
             + f * d + d)  # proj
    final_ln = 2 * d
    assert _count(gpt_params) == embeddings + n * block + final_ln
    assert 12 * d * d + 13 * d == block  # mlp_ratio 4: the form in GPT's docstring
    assert _count(gpt_params) == 26_400  # 928 + 2 * 12_704 + 64


def test_gpt_without_biases_has_only_kernels_embeddings_and_scales():
    cfg = dataclasses.replace(CFG, use_bias=False)
    params = nn.unbox(tfm.GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), train=False))["params"]
    paths = ["/".join(str(getattr(k, "key", k)) for k in path)
             for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert not [p for p in paths if p.endswith("bias")]
    v, t, d, n = CFG.vocab_size, CFG.max_len, CFG.width, CFG.num_layers
    assert _count(params) == v * d + t * d + n * (12 * d * d + 2 * d) + d  # nanoGPT's count


def test_param_trees(gpt_params, mlm_params, clf_params):
    tokens, mask = _tokens(0), jnp.ones((B, L))
    encoder_tree = jax.eval_shape(
        lambda: nn.unbox(enc.Encoder(CFG).init(jax.random.key(0), tokens, mask, train=False)))["params"]
    encoder_tree = jax.tree.map(lambda s: (s.shape, s.dtype), encoder_tree)
    assert _tree_shapes(gpt_params) == encoder_tree
    assert _tree_shapes(mlm_params["encoder"]) == encoder_tree
    assert _tree_shapes(clf_params["encoder"]) == encoder_tree
    assert set(mlm_params) == {"encoder", "head_dense", "head_ln", "output_bias"}
    assert set(clf_params) == {"encoder", "head_hidden", "head_play", "head_genre"}
    assert set(gpt_params) == {"embed", "block_0", "block_1", "ln_f"}


def test_models_declare_their_fsdp_placement_at_the_parameter():
    """Each kernel and embedding carries its logical axis names (split on one width D over 'fsdp':
    the input of qkv, out and fc, the output of proj and the embeddings); biases and LayerNorm
    vectors are declared whole; the MLM's and the classifier's head kernels, the output bias and
    the pooling query declare nothing (lab's size-based default places them). Unboxed, the same
    tree as the loop's."""
    from lab import sharding

    cfg = dataclasses.replace(CFG, num_layers=1)
    tokens, mask = _tokens(0), jnp.ones((B, L))
    models = {"gpt": (tfm.GPT(cfg), (tokens,)), "mlm": (enc.MaskedLM(cfg), (tokens, mask)),
              "clf": (enc.EncoderClassifier(cfg, LABELS, pooling="attention"), (tokens, mask))}
    want = {("attn", "qkv", "kernel"): P("fsdp", None), ("attn", "out", "kernel"): P("fsdp", None),
            ("mlp", "fc", "kernel"): P("fsdp", None), ("mlp", "proj", "kernel"): P(None, "fsdp"),
            ("token", "embedding"): P(None, "fsdp"), ("embed", "position"): P(None, "fsdp")}
    for name, (model, args) in models.items():
        boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, train=False))
        declared = sharding.declared_specs(boxed)
        leaves = jax.tree_util.tree_flatten_with_path(nn.unbox(boxed))[0]
        undeclared = []
        for path, leaf in leaves:
            names = tuple(k.key for k in path)
            if names not in declared:
                undeclared.append(names[1:])
                continue
            shape, spec = declared[names]
            assert shape == leaf.shape, names
            expected = next((v for k, v in want.items() if names[-len(k):] == k), P())
            assert spec == expected, (name, names, spec)
            if spec != P():
                assert names[-1] in ("kernel", "embedding", "position"), names
        assert undeclared == {"gpt": [], "mlm": [("head_dense", "kernel"), ("output_bias",)],
                              "clf": [("head_genre", "kernel"), ("head_hidden", "kernel"), ("head_play", "kernel"),
                                      ("head_pool_query",)]}[name], (name, undeclared)


def test_pretrained_mlm_encoder_loads_into_classifier(mlm_params, clf_params):
    tokens, mask = _tokens(2), jnp.ones((B, L), jnp.int32)
    clf = enc.EncoderClassifier(CFG, LABELS)
    loaded = {**clf_params, "encoder": mlm_params["encoder"]}
    out_loaded = _apply(clf, {"params": loaded}, tokens, mask)
    out_fresh = _apply(clf, {"params": clf_params}, tokens, mask)
    _, pooled = _apply(enc.Encoder(CFG), {"params": mlm_params["encoder"]}, tokens, mask)
    h = jax.nn.relu(pooled @ loaded["head_hidden"]["kernel"] + loaded["head_hidden"]["bias"])
    expected = h @ loaded["head_genre"]["kernel"] + loaded["head_genre"]["bias"]
    np.testing.assert_allclose(out_loaded["genre"], expected, atol=1e-5)
    assert not np.allclose(out_loaded["genre"], out_fresh["genre"])


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="divisible"):
        tfm.TransformerConfig(vocab_size=10, num_heads=3, width=32)
    with pytest.raises(ValueError, match="dropout_rate"):
        tfm.TransformerConfig(vocab_size=10, dropout_rate=1.0)
    small, base = tfm.TransformerConfig.small(), tfm.TransformerConfig.base()
    assert (small.num_layers, small.num_heads, small.width, small.max_len) == (4, 4, 128, 64)
    assert (base.num_layers, base.num_heads, base.width, base.max_len) == (6, 6, 384, 256)
    assert tfm.TransformerConfig.tiny(max_len=8).max_len == 8
    hash(CFG)  # usable as a jit static argument
    hash(enc.EncoderClassifier(CFG, LABELS))  # a dict of labels is stored as a tuple
    ids = enc.encoder_token_ids(65)
    assert (ids.vocab_size, ids.pad_id, ids.mask_id, ids.num_chars) == (67, 65, 66, 65)
    with pytest.raises(ValueError, match="max_len"):
        jax.eval_shape(lambda: tfm.GPT(CFG).init(jax.random.key(0),
                                                 _tokens(0, (1, CFG.max_len + 1)), train=False))


def test_bfloat16_compute_gives_float32_logits(gpt_params):
    cfg = tfm.TransformerConfig.tiny(vocab_size=13, dtype=jnp.bfloat16)
    logits = _apply(tfm.GPT(cfg), {"params": gpt_params}, _tokens(1))
    ref = _apply(tfm.GPT(CFG), {"params": gpt_params}, _tokens(1))
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, ref, atol=0.1)


@pytest.mark.parametrize("causal,shape", [(False, (B, L)), (True, (B, L)), (True, (1, 5))])
def test_bfloat16_gradients_match_float32_to_rounding(gpt_params, causal, shape):
    """The bf16 matmuls' hand-written backward passes (`lab.models.bf16`): every parameter's gradient within bf16 rounding of the float32 model's (a
    transposed or swapped operand would be off by far more), and float32 like the parameters.
    Causal and odd shapes too: XLA:CPU fails to run a bf16 matmul whose operands it laid out
    otherwise than its bf16 kernels take them, and which layout it picks varies with the graph."""
    tokens = _tokens(2, shape)

    def grads(dtype):
        model = tfm.GPT(dataclasses.replace(CFG, dtype=dtype, causal=causal))
        loss = lambda p: jnp.mean(model.apply({"params": p}, tokens, train=False) ** 2)
        return jax.jit(jax.grad(loss))(gpt_params)

    ref, bf16 = grads(jnp.float32), grads(jnp.bfloat16)
    for path, g in jax.tree_util.tree_leaves_with_path(bf16):
        r = ref
        for k in path:
            r = r[k.key]
        assert g.dtype == jnp.float32, path
        assert float(jnp.linalg.norm(g - r)) <= 0.03 * float(jnp.linalg.norm(r)) + 1e-6, path


def test_every_bfloat16_matmul_has_bfloat16_operands(gpt_params):
    """In the compiled bf16 train gradient, every dot (Dense forward, input and kernel gradients,
    attention's scores and values both ways, the tied head's three) takes bf16 operands and
    returns float32, the form XLA:CPU runs on its bf16 kernels."""
    model = tfm.GPT(dataclasses.replace(CFG, dtype=jnp.bfloat16, causal=True))
    loss = lambda p: jnp.mean(model.apply({"params": p}, _tokens(2), train=False) ** 2)
    hlo = jax.jit(jax.grad(loss)).lower(gpt_params).compile().as_text()
    dtypes = dict(re.findall(r"%(\S+) = (\w+)\[", hlo))
    dots = [(dtypes[a], dtypes[b], out) for out, a, b in re.findall(r"= (\w+)\[[\d,]*\]\S* dot\(%([^,]+), %([^)]+)\)", hlo)]
    assert len(dots) == CFG.num_layers * 18 + 3  # per block: 4 Dense x 3, scores x 3, values x 3
    assert set(dots) == {("bf16", "bf16", "f32")}


# ------------------------------------------------------------------------------------------------
# Purity and dropout.


def test_pure_function_and_dropout_rngs(gpt_params, clf_params):
    # Dropout rates are not parameters: the fixtures' params serve the dropout variants too.
    cfg = tfm.TransformerConfig.tiny(vocab_size=13, dropout_rate=0.3)
    model, tokens, mask = tfm.GPT(cfg), _tokens(1), jnp.ones((B, L), jnp.int32)
    variables = {"params": gpt_params}
    k1, k2 = jax.random.key(10), jax.random.key(11)

    # Same params and input -> the same output, twice.
    eval_a = _apply(model, variables, tokens)
    np.testing.assert_array_equal(eval_a, _apply(model, variables, tokens))
    # train=False ignores the dropout rng (and equals the dropout-free model).
    np.testing.assert_array_equal(eval_a, _apply(model, variables, tokens, rngs={"dropout": k1}))
    np.testing.assert_array_equal(eval_a, _apply(model, variables, tokens, rngs={"dropout": k2}))
    np.testing.assert_array_equal(eval_a, _apply(tfm.GPT(CFG), variables, tokens))
    # train=True uses it: the same rng reproduces, another rng differs, both differ from eval.
    train_k1 = _apply(model, variables, tokens, train=True, rngs={"dropout": k1})
    np.testing.assert_array_equal(
        train_k1, _apply(model, variables, tokens, train=True, rngs={"dropout": k1}))
    train_k2 = _apply(model, variables, tokens, train=True, rngs={"dropout": k2})
    assert not np.allclose(train_k1, train_k2)
    assert not np.allclose(train_k1, eval_a)
    # With dropout_rate 0, train=True needs no rng and changes nothing.
    np.testing.assert_allclose(_apply(tfm.GPT(CFG), variables, tokens, train=True), eval_a,
                               atol=1e-6)

    # The classifier (encoder dropout + head dropout) obeys the same rules.
    clf = enc.EncoderClassifier(cfg, LABELS, head_dropout=0.5)
    variables = {"params": clf_params}
    e1 = _apply(clf, variables, tokens, mask, rngs={"dropout": k1})["genre"]
    np.testing.assert_array_equal(e1, _apply(clf, variables, tokens, mask,
                                             rngs={"dropout": k2})["genre"])
    t1 = _apply(clf, variables, tokens, mask, train=True, rngs={"dropout": k1})["genre"]
    t2 = _apply(clf, variables, tokens, mask, train=True, rngs={"dropout": k2})["genre"]
    assert not np.allclose(t1, t2)


# ------------------------------------------------------------------------------------------------
# Causality.


def test_gpt_is_causal_by_gradients(gpt_params):
    """d logits[t] / d input_embedding[s] is exactly 0 for s > t and nonzero for s <= t, all t.

    The learned position embedding is added to the token embedding before the first block, so
    its row s is a continuous input at position s: the gradient w.r.t. row s IS the gradient
    w.r.t. the input embedding at position s (summed over the batch).
    """
    tokens = _tokens(5, (2, CFG.max_len))
    probe_V = jax.random.normal(jax.random.key(7), (CFG.vocab_size,))
    model = tfm.GPT(CFG)

    def per_position_outputs(position_TxD):
        embed = {**gpt_params["embed"], "position": position_TxD}
        logits_BxLxV = model.apply({"params": {**gpt_params, "embed": embed}}, tokens,
                                   train=False)
        return (logits_BxLxV @ probe_V).sum(axis=0)  # L

    jac_LxTxD = jax.jit(jax.jacrev(per_position_outputs))(gpt_params["embed"]["position"])
    norms_LxT = np.asarray(jnp.abs(jac_LxTxD).sum(axis=-1))
    for t in range(CFG.max_len):
        assert np.all(norms_LxT[t, t + 1:] == 0.0), f"position {t} sees the future"
        assert np.all(norms_LxT[t, :t + 1] > 0.0), f"position {t} misses part of its past"


# ------------------------------------------------------------------------------------------------
# Padding.


def _padded_batch(lengths, total_len, pad_seed):
    """Same real tokens per row (seed 8); pads are random ids from pad_seed."""
    real = np.asarray(_tokens(8, (len(lengths), max(lengths))))
    rng = np.random.default_rng(pad_seed)
    tokens = rng.integers(0, CFG.vocab_size, (len(lengths), total_len))
    mask = np.zeros((len(lengths), total_len), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = real[i, :n]
        mask[i, :n] = 1
    return jnp.asarray(tokens, jnp.int32), jnp.asarray(mask)


def test_encoder_and_mlm_ignore_padding(encoder_params, mlm_params):
    lengths = [5, 9, 12]
    tokens_a, mask_a = _padded_batch(lengths, 12, pad_seed=0)
    tokens_b, mask_b = _padded_batch(lengths, 16, pad_seed=1)  # other pad ids, more pads
    encoder, variables = enc.Encoder(CFG), {"params": encoder_params}
    hidden_a, pooled_a = _apply(encoder, variables, tokens_a, mask_a)
    hidden_b, pooled_b = _apply(encoder, variables, tokens_b, mask_b)
    np.testing.assert_allclose(pooled_a, pooled_b, atol=1e-6)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(hidden_a[i, :n], hidden_b[i, :n], atol=1e-6)
        np.testing.assert_allclose(pooled_a[i], hidden_a[i, :n].mean(axis=0), atol=1e-5)
    # The mask is what does it: treating the pads as real tokens changes the result.
    _, pooled_all = _apply(encoder, variables, tokens_a, jnp.ones_like(mask_a))
    assert not np.allclose(pooled_all[0], pooled_a[0], atol=1e-3)

    mlm, variables = enc.MaskedLM(CFG), {"params": mlm_params}
    logits_a = _apply(mlm, variables, tokens_a, mask_a)
    logits_b = _apply(mlm, variables, tokens_b, mask_b)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(logits_a[i, :n], logits_b[i, :n], atol=1e-5)


# ------------------------------------------------------------------------------------------------
# KV cache and generation.

PROMPT, NEW = 4, 8  # one compile of generate serves every generation test


def _full_logits(params, tokens):
    return _apply(tfm.GPT(CFG), {"params": params}, tokens)


def test_cached_logits_match_full_forward(gpt_params):
    model, tokens = tfm.GPT(CFG), _tokens(10, (2, CFG.max_len))
    full = _full_logits(gpt_params, tokens)
    step = jax.jit(lambda cache, toks: model.apply(
        {"params": gpt_params, "cache": cache}, toks, train=False, decode=True,
        mutable=["cache"]))
    prompt = 4
    logits, variables = step(dec.init_cache(CFG, 2), tokens[:, :prompt])  # prefill
    np.testing.assert_allclose(logits, full[:, :prompt], atol=1e-5)
    cache = variables["cache"]
    for t in range(prompt, CFG.max_len):  # then one token per call
        logits, variables = step(cache, tokens[:, t:t + 1])
        cache = variables["cache"]
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5, err_msg=f"step {t}")
    assert int(cache["index"]) == CFG.max_len
    # Any chunk size goes through the same path.
    cache = dec.init_cache(CFG, 2)
    for start in range(0, CFG.max_len, 4):
        logits, variables = step(cache, tokens[:, start:start + 4])
        cache = variables["cache"]
        np.testing.assert_allclose(logits, full[:, start:start + 4], atol=1e-5)


def test_greedy_generate_equals_naive_full_recomputation(gpt_params):
    prompt = _tokens(11, (2, PROMPT))
    out = dec.generate(CFG, gpt_params, prompt, NEW, jax.random.key(0), temperature=0.0)
    assert out.shape == (2, PROMPT + NEW) and out.dtype == jnp.int32
    np.testing.assert_array_equal(out[:, :PROMPT], prompt)
    seq = prompt
    for _ in range(NEW):  # re-run the whole model on the growing sequence
        next_tok = jnp.argmax(_full_logits(gpt_params, seq)[:, -1], axis=-1).astype(jnp.int32)
        seq = jnp.concatenate([seq, next_tok[:, None]], axis=1)
    np.testing.assert_array_equal(out, seq)


def test_sampling_is_reproducible_and_top_k(gpt_params):
    prompt = _tokens(11, (2, PROMPT))
    key = jax.random.key(3)
    a = dec.generate(CFG, gpt_params, prompt, NEW, key, temperature=1.0)
    np.testing.assert_array_equal(a, dec.generate(CFG, gpt_params, prompt, NEW, key))
    b = dec.generate(CFG, gpt_params, prompt, NEW, jax.random.key(4), temperature=1.0)
    assert not np.array_equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) < CFG.vocab_size

    greedy = dec.generate(CFG, gpt_params, prompt, NEW, key, temperature=0.0)
    top1 = dec.generate(CFG, gpt_params, prompt, NEW, key, temperature=1.0, top_k=1)
    np.testing.assert_array_equal(top1, greedy)
    assert not np.array_equal(a, greedy)

    # Every top-k sample is among the k most likely tokens under the full-forward logits.
    k = 3
    hot = dec.generate(CFG, gpt_params, prompt, NEW, key, temperature=5.0, top_k=k)
    logits = np.asarray(_full_logits(gpt_params, hot))
    for t in range(PROMPT, PROMPT + NEW):
        allowed = np.argsort(logits[:, t - 1], axis=-1)[:, -k:]
        assert all(int(hot[i, t]) in allowed[i] for i in range(2)), f"step {t}"

    assert dec.generate(CFG, gpt_params, prompt, 0, key).shape == prompt.shape


def test_generate_long_slides_a_window_past_max_len(gpt_params):
    prompt, key = _tokens(11, (2, PROMPT)), jax.random.key(5)
    greedy = dict(temperature=0.0)
    # Within max_len it is plain generate.
    np.testing.assert_array_equal(dec.generate_long(CFG, gpt_params, prompt, NEW, key, **greedy),
                                  dec.generate(CFG, gpt_params, prompt, NEW, key, **greedy))
    # Past max_len: fill the window, then continue from the last max_len // 2 tokens.
    total = 2 * CFG.max_len
    out = dec.generate_long(CFG, gpt_params, prompt, total - PROMPT, key, **greedy)
    assert out.shape == (2, total) and out.dtype == jnp.int32
    first = CFG.max_len
    np.testing.assert_array_equal(
        out[:, :first], dec.generate(CFG, gpt_params, prompt, first - PROMPT, key, **greedy))
    keep = CFG.max_len // 2
    np.testing.assert_array_equal(
        out[:, first:first + keep],
        dec.generate(CFG, gpt_params, out[:, first - keep:first], keep, key, **greedy)[:, keep:])
    # A prompt longer than max_len is cropped to its last max_len // 2 tokens.
    long_prompt = _tokens(12, (2, CFG.max_len + 4))
    out = dec.generate_long(CFG, gpt_params, long_prompt, keep, key, **greedy)
    np.testing.assert_array_equal(out[:, :CFG.max_len + 4], long_prompt)
    np.testing.assert_array_equal(
        out[:, CFG.max_len + 4:],
        dec.generate(CFG, gpt_params, long_prompt[:, -keep:], keep, key, **greedy)[:, keep:])


def test_generate_rejects_overlong_requests(gpt_params):
    prompt = _tokens(12, (1, 10))
    with pytest.raises(ValueError, match="max_len"):
        dec.generate(CFG, gpt_params, prompt, CFG.max_len - 10 + 1, jax.random.key(0))
    with pytest.raises(ValueError, match="top_k"):
        dec.generate(CFG, gpt_params, prompt, 2, jax.random.key(0), top_k=0)


# ------------------------------------------------------------------------------------------------
# BERT masking.


def test_mask_tokens_statistics():
    ids = enc.encoder_token_ids(20)
    shape = (256, 128)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, ids.num_chars, shape)
    lengths = rng.integers(32, 129, shape[0])
    mask = (np.arange(shape[1])[None, :] < lengths[:, None]).astype(np.int32)
    tokens = jnp.asarray(np.where(mask, tokens, ids.pad_id), jnp.int32)
    key = jax.random.key(0)

    mask_tokens = jax.jit(functools.partial(enc.mask_tokens, mask_id=ids.mask_id,
                                            vocab_size=ids.num_chars))
    inputs, targets, weights = mask_tokens(key, tokens, mask)
    inputs, targets, weights = map(np.asarray, (inputs, targets, weights))
    np.testing.assert_array_equal(targets, tokens)
    chosen = weights > 0
    assert set(np.unique(weights)) <= {0.0, 1.0}
    assert not np.any(chosen & (mask == 0)), "a pad was selected"
    np.testing.assert_array_equal(inputs[~chosen], np.asarray(tokens)[~chosen])

    assert abs(chosen.sum() / mask.sum() - 0.15) < 0.01
    picked_in, picked_tok = inputs[chosen], np.asarray(tokens)[chosen]
    masked = picked_in == ids.mask_id
    kept = picked_in == picked_tok
    random_other = ~masked & ~kept
    n = chosen.sum()
    assert abs(masked.mean() - 0.8) < 0.02
    # A random replacement equals the original token with probability 1 / N.
    assert abs(kept.mean() - (0.1 + 0.1 / ids.num_chars)) < 0.015
    assert abs(random_other.mean() - 0.1 * (1 - 1 / ids.num_chars)) < 0.015
    assert picked_in[random_other].max() < ids.num_chars, "drew a special token"
    assert n > 1000

    again = mask_tokens(key, tokens, mask)
    np.testing.assert_array_equal(again[0], inputs)
    other = mask_tokens(jax.random.key(1), tokens, mask)
    assert not np.array_equal(other[2], weights)


def test_pooling_reads_real_positions_only():
    """mean is the Encoder's own pooling; attention with a zero query is the mean; max ignores pads;
    a row with no real token pools to 0."""
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
    mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    mean = enc.pool(hidden, mask, "mean")
    np.testing.assert_allclose(mean[0], hidden[0, :3].mean(0), rtol=1e-6)
    np.testing.assert_allclose(enc.pool(hidden, mask, "attention", jnp.zeros(4)), mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(enc.pool(hidden, mask, "max")[0], hidden[0, :3].max(0))
    padded = hidden.at[0, 3:].set(100.0)  # what sits at pad positions never counts
    for kind, query in (("mean", None), ("max", None), ("attention", jnp.ones(4))):
        np.testing.assert_allclose(enc.pool(padded, mask, kind, query)[0], enc.pool(hidden, mask, kind, query)[0],
                                   rtol=1e-6)
        assert np.all(np.asarray(enc.pool(hidden, mask, kind, query)[2]) == 0)
    np.testing.assert_allclose(enc.pool(hidden, mask, "last")[:2], np.stack([hidden[0, 2], hidden[1, 4]]))
    np.testing.assert_allclose(enc.pool(padded, mask, "last")[0], hidden[0, 2])
    assert np.all(np.asarray(enc.pool(hidden, mask, "last")[2]) == 0)
    # A learned query weights the positions it matches more.
    query = 10 * hidden[1, 2]
    weights = jax.nn.softmax(hidden[1] @ query / 2.0)
    np.testing.assert_allclose(enc.pool(hidden, mask, "attention", query)[1], weights @ hidden[1], rtol=1e-5)


def test_a_causal_encoder_reads_no_later_token():
    """config.causal: the hidden state at position i is the same whatever follows i (and pads
    still count for nothing); the bidirectional encoder's changes."""
    results = {}
    for causal in (False, True):
        cfg = tfm.TransformerConfig.tiny(vocab_size=15, causal=causal)
        model = enc.Encoder(cfg)
        tokens = jnp.asarray([[1, 2, 3, 4, 5, 6, 0, 0]])
        mask = jnp.asarray([[1, 1, 1, 1, 1, 1, 0, 0]])
        params = model.init(jax.random.key(0), tokens, mask, train=False)
        changed = tokens.at[0, 4].set(9)  # a later token
        hidden, _ = model.apply(params, tokens, mask, train=False)
        hidden_changed, _ = model.apply(params, changed, mask, train=False)
        results[causal] = float(jnp.abs(hidden[0, :4] - hidden_changed[0, :4]).max())
        repadded = tokens.at[0, 6:].set(7)
        np.testing.assert_allclose(model.apply(params, repadded, mask, train=False)[0][0, :6], hidden[0, :6],
                                   rtol=1e-6, atol=1e-6)
    assert results[True] == 0.0 and results[False] > 1e-4
