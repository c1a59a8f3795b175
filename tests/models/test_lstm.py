"""Tests of lab.models.lstm: shapes and parameter trees, the scanned layer against a step-by-step
numpy reference, sequence-length masking (both directions, stacks, Seq2Seq sources), attention
weights, decode_step against teacher forcing, generation (determinism, greedy, top-k, EOS), the
decoder-only baseline and config validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab.models import lstm

B, T, F, H = 3, 6, 4, 5
LENGTHS = np.array([T, 2, 0])  # full, partial, empty
V, S, TGT = 11, 5, 6
SRC_LEN = np.array([S, 3, 1])

# Compilation dominates this file's run time. So parameters are random values on the tree
# `jax.eval_shape(model.init, ...)` gives (no init compiles; only test_layer_init runs a real
# init), every model is jitted once per (model, method, kwargs), and inputs keep few shapes:
# every Seq2Seq call is on src B x S and tgt B x TGT (generation included: N = TGT).


@functools.lru_cache(maxsize=None)
def _jitted(model, method=None, **kwargs):
    fn = model.__call__ if method is None else getattr(type(model), method)
    return jax.jit(lambda params, *args: model.apply({"params": params}, *args, method=fn,
                                                     **kwargs))


def _apply(model, params, *args, method=None, **kwargs):
    """model.apply({"params": params}, *args, method=method, **kwargs), jitted once per model."""
    return _jitted(model, method, **kwargs)(params, *args)


def _normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _tokens(seed, shape, vocab=V):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def _random_params(model, *args, seed=0, scale=0.5):
    """N(0, scale^2) values on model's parameter tree (biases included, so they matter too)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
    leaves, treedef = jax.tree.flatten(shapes)
    return treedef.unflatten([_normal(seed + i, leaf.shape, scale)
                              for i, leaf in enumerate(leaves)])


def _pad_after(x, lengths, total, seed):
    """x (B x T x ...) with every position t >= lengths[b] (and new ones up to `total`) random."""
    x = np.asarray(x)
    rng = np.random.default_rng(seed)
    shape = (x.shape[0], total) + x.shape[2:]
    if np.issubdtype(x.dtype, np.integer):
        out = rng.integers(0, V, shape).astype(x.dtype)
    else:
        out = (10.0 * rng.normal(size=shape)).astype(x.dtype)
    for b, n in enumerate(lengths):
        out[b, :n] = x[b, :n]
    return jnp.asarray(out)


@pytest.fixture(scope="module")
def layer_params():
    """One LSTMLayer(H) tree serves every activation and direction (same shapes)."""
    return _random_params(lstm.LSTMLayer(H), _normal(0, (B, T, F)), seed=100)


@functools.lru_cache(maxsize=None)
def _seq2seq_params(config):
    src, tgt = _tokens(0, (B, S)), _tokens(1, (B, TGT))
    return _random_params(lstm.Seq2Seq(config), src, jnp.asarray(SRC_LEN), tgt, seed=200)


def _config(attention="none", **overrides):
    return lstm.Seq2SeqConfig.tiny(vocab_size=V, attention=attention, **overrides)


CONFIGS = {"none-2layers": _config("none", num_layers=2), "additive": _config("additive"),
           "dot": _config("dot"), "no-encoder": _config(use_encoder=False, num_layers=2)}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _reference_layer(params, x, lengths, activation, reverse, initial_carry=None):
    """Step-by-step float64 LSTM over each row's real steps: (c, h) finals, outputs (0 at pads)."""
    act = np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0.0))
    w_ih, b_ih = (np.asarray(params["ih"][k], np.float64) for k in ("kernel", "bias"))
    w_hh = np.asarray(params["kernel_hh"], np.float64)
    x = np.asarray(x, np.float64)
    hidden = w_hh.shape[0]
    outputs = np.zeros(x.shape[:2] + (hidden,))
    cs, hs = [], []
    for b, n in enumerate(lengths):
        if initial_carry is None:
            c, h = np.zeros(hidden), np.zeros(hidden)
        else:
            c, h = (np.asarray(a[b], np.float64) for a in initial_carry)
        for t in (reversed(range(n)) if reverse else range(n)):
            z = x[b, t] @ w_ih + b_ih + h @ w_hh
            i, f, g, o = (z[k * hidden:(k + 1) * hidden] for k in range(4))
            c = _sigmoid(f) * c + _sigmoid(i) * act(g)
            h = _sigmoid(o) * act(c)
            outputs[b, t] = h
        cs.append(c)
        hs.append(h)
    return (np.stack(cs), np.stack(hs)), outputs


# ------------------------------------------------------------------------------------------------
# Initialisation, shapes and parameter trees.


def test_layer_init():
    params = jax.jit(lstm.LSTMLayer(H).init)(jax.random.key(0), _normal(0, (B, T, F)))["params"]
    assert params["ih"]["kernel"].shape == (F, 4 * H)
    assert params["kernel_hh"].shape == (H, 4 * H)
    # Gate columns [i | f | g | o]: the forget slice of the bias starts at 1, the rest at 0.
    np.testing.assert_array_equal(params["ih"]["bias"],
                                  np.repeat([0.0, 1.0, 0.0, 0.0], H).astype(np.float32))
    # W_hh is orthogonal over the fused H x 4H matrix (orthonormal rows), as Keras's.
    w_hh = np.asarray(params["kernel_hh"])
    np.testing.assert_allclose(w_hh @ w_hh.T, np.eye(H), atol=1e-5)


def test_layer_and_stack_shapes(layer_params):
    x, lengths = _normal(0, (B, T, F)), jnp.asarray(LENGTHS)
    (c, h), y = _apply(lstm.LSTMLayer(H), layer_params, x, lengths)
    assert c.shape == h.shape == (B, H) and y.shape == (B, T, H) and y.dtype == jnp.float32

    stack = lstm.LSTM(H, num_layers=2)
    carries, y = _apply(stack, _random_params(stack, x), x, lengths)
    assert len(carries) == 2 and y.shape == (B, T, H)
    assert all(c.shape == h.shape == (B, H) for c, h in carries)

    bi = lstm.LSTM(H, num_layers=2, bidirectional=True)
    bi_params = _random_params(bi, x)
    assert sorted(bi_params) == ["layer_0_bwd", "layer_0_fwd", "layer_1_bwd", "layer_1_fwd"]
    assert bi_params["layer_0_fwd"]["ih"]["kernel"].shape == (F, 4 * H)
    assert bi_params["layer_1_fwd"]["ih"]["kernel"].shape == (2 * H, 4 * H)
    carries, y = _apply(bi, bi_params, x, lengths)
    assert len(carries) == 4 and y.shape == (B, T, 2 * H)
    assert all(c.shape == h.shape == (B, H) for c, h in carries)

    reg = lstm.LSTMRegressor(features=H, num_layers=2)
    pred = _apply(reg, _random_params(reg, x), x, lengths)
    assert pred.shape == (B,) and pred.dtype == jnp.float32


@pytest.mark.parametrize("name", list(CONFIGS))
def test_seq2seq_shapes(name):
    config = CONFIGS[name]
    model, params = lstm.Seq2Seq(config), _seq2seq_params(config)
    assert params["embed"]["embedding"].shape == (V, config.embed_dim)
    assert ("encoder" in params) == config.use_encoder
    assert ("attn_out" in params) == (config.attention != "none")
    src, tgt = _tokens(3, (B, S)), _tokens(4, (B, TGT))
    logits, attn = _apply(model, params, src, SRC_LEN, tgt, return_attention=True)
    assert logits.shape == (B, TGT, V) and attn.shape == (B, TGT, S)
    assert logits.dtype == attn.dtype == jnp.float32
    memory, carries = _apply(model, params, src, SRC_LEN, method="encode")
    assert memory.shape == (B, S, config.hidden) and len(carries) == config.num_layers
    carries, step_logits, step_attn = _apply(model, params, carries, tgt[:, 0], memory, SRC_LEN,
                                             method="decode_step")
    assert len(carries) == config.num_layers and carries[0][0].shape == (B, config.hidden)
    assert step_logits.shape == (B, V) and step_attn.shape == (B, S)


# ------------------------------------------------------------------------------------------------
# The scanned layer against a Python loop over time.


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True])
def test_layer_matches_stepwise_reference(layer_params, activation, reverse):
    layer = lstm.LSTMLayer(H, activation=activation, reverse=reverse)
    x = _normal(5, (B, T, F))
    initial = (_normal(6, (B, H)), _normal(7, (B, H)))
    for lengths, carry in [(None, None), (LENGTHS, initial)]:
        got_carry, got_y = _apply(layer, layer_params, x,
                                  None if lengths is None else jnp.asarray(lengths), carry)
        want_carry, want_y = _reference_layer(layer_params, x, [T] * B if lengths is None
                                              else lengths, activation, reverse, carry)
        np.testing.assert_allclose(got_y, want_y, atol=2e-5, err_msg=f"lengths={lengths}")
        for got, want in zip(got_carry, want_carry):
            np.testing.assert_allclose(got, want, atol=2e-5, err_msg=f"lengths={lengths}")
    # The empty row kept its initial carry.
    np.testing.assert_array_equal(got_carry[0][2], initial[0][2])


# ------------------------------------------------------------------------------------------------
# Masking.


@pytest.mark.parametrize("reverse", [False, True])
def test_padding_changes_nothing_in_a_layer(layer_params, reverse):
    layer, lengths = lstm.LSTMLayer(H, reverse=reverse), jnp.asarray(LENGTHS)
    x = _normal(8, (B, T, F))
    x_padded = _pad_after(x, LENGTHS, T + 3, seed=9)  # other values, and more of them
    x_padded = x_padded.at[1, -1].set(jnp.nan)  # even NaN padding is ignored
    carry_a, y_a = _apply(layer, layer_params, x, lengths)
    carry_b, y_b = _apply(layer, layer_params, x_padded, lengths)
    for a, b in zip(carry_a, carry_b):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(y_a, y_b[:, :T], atol=1e-6)
    real = np.arange(T + 3)[None, :] < LENGTHS[:, None]
    assert np.all(np.asarray(y_b)[~real] == 0.0) and np.all(np.asarray(y_b)[real] != 0.0)
    # It is seq_lengths that does it: without them the padding reaches the results.
    carry_c, _ = _apply(layer, layer_params, _pad_after(x, LENGTHS, T, seed=9), None, None)
    assert not np.allclose(carry_c[1][1], carry_a[1][1], atol=1e-3)


def test_padding_changes_nothing_in_a_bidirectional_stack():
    model, lengths = lstm.LSTM(H, num_layers=2, bidirectional=True), jnp.asarray(LENGTHS)
    x = _normal(10, (B, T, F))
    params = _random_params(model, x)
    carries_a, y_a = _apply(model, params, x, lengths)
    carries_b, y_b = _apply(model, params, _pad_after(x, LENGTHS, T + 3, seed=12), lengths)
    for a, b in zip(jax.tree.leaves(carries_a), jax.tree.leaves(carries_b)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(y_a, y_b[:, :T], atol=1e-6)
    assert np.all(np.asarray(y_b)[:, T:] == 0.0)


def test_regressor_reads_the_final_h_at_the_real_end():
    model, lengths = lstm.LSTMRegressor(features=H, num_layers=2), jnp.asarray(LENGTHS)
    x = _normal(13, (B, T, F))
    params = _random_params(model, x)
    pred = _apply(model, params, x, lengths)
    np.testing.assert_allclose(
        pred, _apply(model, params, _pad_after(x, LENGTHS, T, seed=15), lengths), atol=1e-6)
    carries, _ = _apply(lstm.LSTM(H, num_layers=2, activation="relu"), params["lstm"], x,
                        lengths)
    want = carries[-1][1] @ params["head"]["kernel"][:, 0] + params["head"]["bias"][0]
    np.testing.assert_allclose(pred, want, atol=1e-5)
    assert pred[2] == params["head"]["bias"][0]  # the empty row: h = 0


@pytest.mark.parametrize("name", ["none-2layers", "additive", "dot"])
def test_source_padding_changes_no_logit_and_attention_is_masked(name):
    config = CONFIGS[name]
    model, params = lstm.Seq2Seq(config), _seq2seq_params(config)
    src, tgt, src_len = _tokens(16, (B, S)), _tokens(17, (B, TGT)), jnp.asarray(SRC_LEN)
    logits_a, attn_a = _apply(model, params, src, src_len, tgt, return_attention=True)
    src_b = _pad_after(src, SRC_LEN, S, seed=18)  # other ids at the padded positions
    assert not np.array_equal(src_b, src)
    logits_b, attn_b = _apply(model, params, src_b, src_len, tgt, return_attention=True)
    np.testing.assert_allclose(logits_a, logits_b, atol=1e-5)
    np.testing.assert_allclose(attn_a, attn_b, atol=1e-6)
    # The source matters: changing a real source token, or the lengths, changes the logits.
    src_c = src.at[1, 0].set((src[1, 0] + 1) % V)
    logits_c, _ = _apply(model, params, src_c, src_len, tgt, return_attention=True)
    assert not np.allclose(logits_c[1], logits_a[1], atol=1e-4)
    logits_d, _ = _apply(model, params, src, jnp.asarray([S, S, S]), tgt, return_attention=True)
    assert not np.allclose(logits_d[1], logits_a[1], atol=1e-4)

    attn = np.asarray(attn_a)
    if config.attention == "none":
        assert np.all(attn == 0.0)
        return
    real = np.arange(S)[None, :] < SRC_LEN[:, None]  # B x S
    np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)
    assert np.all(attn.transpose(1, 0, 2)[:, ~real] == 0.0), "weight on a padded position"
    assert np.all(attn.transpose(1, 0, 2)[:, real] > 0.0)


# ------------------------------------------------------------------------------------------------
# Incremental decoding, the decoder-only baseline and generation.


@pytest.mark.parametrize("name", list(CONFIGS))
def test_decode_step_matches_teacher_forcing(name):
    config = CONFIGS[name]
    model, params = lstm.Seq2Seq(config), _seq2seq_params(config)
    src, tgt, src_len = _tokens(19, (B, S)), _tokens(20, (B, TGT)), jnp.asarray(SRC_LEN)
    logits, attn = _apply(model, params, src, src_len, tgt, return_attention=True)
    memory, carries = _apply(model, params, src, src_len, method="encode")
    for t in range(TGT):
        carries, step_logits, step_attn = _apply(model, params, carries, tgt[:, t], memory,
                                                 src_len, method="decode_step")
        np.testing.assert_allclose(step_logits, logits[:, t], atol=1e-5, err_msg=f"step {t}")
        np.testing.assert_allclose(step_attn, attn[:, t], atol=1e-6, err_msg=f"step {t}")


def test_decoder_only_baseline_ignores_the_source():
    config = CONFIGS["no-encoder"]
    model, params = lstm.Seq2Seq(config), _seq2seq_params(config)
    tgt = _tokens(21, (B, TGT))
    logits_a, attn = _apply(model, params, _tokens(22, (B, S)), jnp.asarray(SRC_LEN), tgt,
                            return_attention=True)
    logits_b, _ = _apply(model, params, _tokens(23, (B, S)), jnp.asarray([1, 1, 2]), tgt,
                         return_attention=True)
    np.testing.assert_array_equal(logits_a, logits_b)
    assert np.all(np.asarray(attn) == 0.0)
    # The same decoder started from an encoder's carries does see the source.
    with_encoder = CONFIGS["none-2layers"]
    params = {**_seq2seq_params(with_encoder), **params}
    logits_c, _ = _apply(lstm.Seq2Seq(with_encoder), params, _tokens(22, (B, S)),
                         jnp.asarray(SRC_LEN), tgt, return_attention=True)
    assert not np.allclose(logits_c, logits_a, atol=1e-4)


GEN = CONFIGS["additive"]
EOS_BOOST = 2.0  # added to the EOS logit's bias, so that sampled rows do end within TGT steps


@pytest.fixture(scope="module")
def gen_params():
    params = _seq2seq_params(GEN)
    head = dict(params["head"], bias=params["head"]["bias"].at[GEN.eos_id].add(EOS_BOOST))
    return {**params, "head": head}


def _generate(params, seed, **kwargs):
    """generate on the fixed source batch: N = TGT new tokens (one compile for every test)."""
    return lstm.generate(GEN, params, _tokens(24, (B, S)), SRC_LEN, TGT, jax.random.key(seed),
                         **kwargs)


def _teacher_forced(params, tokens):
    """Logits and attention of the teacher-forced model on bos + tokens[:, :-1]."""
    tgt_in = jnp.concatenate([jnp.full((B, 1), GEN.bos_id, jnp.int32), tokens[:, :-1]], axis=1)
    return _apply(lstm.Seq2Seq(GEN), params, _tokens(24, (B, S)), jnp.asarray(SRC_LEN), tgt_in,
                  return_attention=True)


def _check_eos(tokens, lengths):
    """lengths = tokens before the first EOS (N without one); all later tokens are pad."""
    for row, n in zip(np.asarray(tokens), np.asarray(lengths)):
        eos = np.flatnonzero(row == GEN.eos_id)
        if eos.size:
            assert n == eos[0], (row, n)
            assert np.all(row[n + 1:] == GEN.pad_id), row
        else:
            assert n == len(row), (row, n)


def test_sampling_is_reproducible_and_stops_at_eos(gen_params):
    tokens, lengths, attn = _generate(gen_params, 3)
    assert tokens.shape == (B, TGT) and tokens.dtype == jnp.int32
    assert lengths.shape == (B,) and lengths.dtype == jnp.int32 and attn.shape == (B, TGT, S)
    again = lstm.generate(lstm.Seq2Seq(GEN), gen_params, _tokens(24, (B, S)), SRC_LEN, TGT,
                          jax.random.key(3))  # a model instead of its config: the same
    for a, b in zip((tokens, lengths, attn), again):
        np.testing.assert_array_equal(a, b)
    others = [_generate(gen_params, seed) for seed in (4, 5)]
    assert not any(np.array_equal(tokens, o_tokens) for o_tokens, _, _ in others)

    ended = 0
    for t, n, a in [(tokens, lengths, attn)] + others:
        _check_eos(t, n)
        for b in range(B):  # attention rows after the EOS are 0, those before a distribution
            np.testing.assert_allclose(np.asarray(a)[b, :n[b] + 1].sum(-1), 1.0, atol=1e-5)
            assert np.all(np.asarray(a)[b, n[b] + 1:] == 0.0)
        ended += int(np.sum(np.asarray(n) < TGT - 1))
    assert ended > 0, "no row ended before the last step: the EOS checks are vacuous"


def test_greedy_and_top1_equal_teacher_forced_argmax(gen_params):
    tokens, lengths, attn = _generate(gen_params, 6, temperature=0.0)
    _check_eos(tokens, lengths)
    logits, tf_attn = _teacher_forced(gen_params, tokens)
    argmax = np.asarray(jnp.argmax(logits, axis=-1))
    for b in range(B):
        n = min(int(lengths[b]) + 1, TGT)  # the tokens and the EOS
        np.testing.assert_array_equal(tokens[b, :n], argmax[b, :n], err_msg=f"row {b}")
        np.testing.assert_allclose(attn[b, :n], tf_attn[b, :n], atol=1e-5)

    top1 = _generate(gen_params, 6, temperature=1.0, top_k=1)
    np.testing.assert_array_equal(top1[0], tokens)
    np.testing.assert_array_equal(top1[1], lengths)
    assert not np.array_equal(_generate(gen_params, 6, temperature=1.0)[0], tokens)


def test_top_k_samples_among_the_k_most_likely(gen_params):
    k = 3
    tokens, lengths, _ = _generate(gen_params, 7, temperature=5.0, top_k=k)
    _check_eos(tokens, lengths)
    logits, _ = _teacher_forced(gen_params, tokens)
    allowed = np.argsort(np.asarray(logits), axis=-1)[..., -k:]
    for b in range(B):
        for t in range(min(int(lengths[b]) + 1, TGT)):
            assert int(tokens[b, t]) in allowed[b, t], f"row {b} step {t}"
    with pytest.raises(ValueError, match="top_k"):
        _generate(gen_params, 7, top_k=0)


# ------------------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize("overrides, match", [
    (dict(hidden=0), "hidden"),
    (dict(activation="sigmoid"), "activation"),
    (dict(attention="multihead"), "attention"),
    (dict(attention="dot", use_encoder=False), "use_encoder"),
    (dict(eos_id=V), "eos_id"),
    (dict(pad_id=2, eos_id=2), "eos_id"),
])
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        lstm.Seq2SeqConfig.tiny(vocab_size=V, **overrides)


def test_layer_validation():
    assert lstm.ACTIVATIONS == ("tanh", "relu")
    with pytest.raises(ValueError, match="activation"):
        lstm.LSTMLayer(H, activation="gelu")
    with pytest.raises(ValueError, match="initial carries"):
        x = _normal(0, (B, T, F))
        model = lstm.LSTM(H, num_layers=2)
        model.apply({"params": _random_params(model, x)}, x, None, ((x[:, 0, :H], x[:, 0, :H]),))
