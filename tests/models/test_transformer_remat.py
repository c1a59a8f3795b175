"""`TransformerConfig.remat` (config key `model.remat`): the same parameters, loss and gradients
as without it, and a smaller compiled train step."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lab.models import decoding as dec
from lab.models import encoder as enc
from lab.models import transformer as tfm
from lab.tasks import language_model

CFG = tfm.TransformerConfig.tiny(vocab_size=13, dropout_rate=0.1)  # 2 layers, width 32
REMAT = dataclasses.replace(CFG, remat=True)
B, L = 3, 12


def _tokens(seed, shape=(B, L), vocab=CFG.vocab_size):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def _mask():
    """Rows of 12, 7 and 3 real tokens."""
    return jnp.asarray(np.arange(L)[None, :] < np.array([[12], [7], [3]]), jnp.int32)


def _init(model, *args):
    return jax.jit(lambda key, *a: nn.unbox(model.init(key, *a, train=False)))(jax.random.key(0), *args)["params"]


def _loss_and_grads(model, params, *args):
    """The mean of the float32 outputs and its gradients, in train mode (dropout on), jitted."""
    def loss(p):
        out = model.apply({"params": p}, *args, train=True, rngs={"dropout": jax.random.key(7)})
        return sum(jnp.mean(o.astype(jnp.float32) ** 2) for o in jax.tree.leaves(out))
    return jax.jit(jax.value_and_grad(loss))(params)


def _assert_same(a, b):
    """Equal to 1e-6; on the CPU they come out bit-identical (the same ops, recomputed)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)


@pytest.mark.parametrize("make, args", [
    (lambda c: tfm.GPT(c), (_tokens(0),)),
    (lambda c: enc.MaskedLM(c), (_tokens(1), _mask())),
    (lambda c: enc.EncoderClassifier(dataclasses.replace(c, causal=True), {"play": 5, "genre": 3}, hidden=16,
                                     pooling="last"), (_tokens(2), _mask())),
], ids=["gpt", "mlm", "classifier"])
def test_remat_keeps_params_loss_and_gradients(make, args):
    params = _init(make(CFG), *args)
    remat_params = _init(make(REMAT), *args)
    # The same tree (names and shapes) and the same initial values: a checkpoint loads either way.
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(remat_params)[0]]
    assert paths == [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert any("['block_1']['attn']['qkv']['kernel']" in path for path in paths), paths
    _assert_same(params, remat_params)
    (loss, grads), (remat_loss, remat_grads) = (_loss_and_grads(make(CFG), params, *args),
                                                _loss_and_grads(make(REMAT), params, *args))
    assert float(loss) > 0
    _assert_same(loss, remat_loss)
    _assert_same(grads, remat_grads)
    # Evaluation (no gradient) gives the same outputs as well.
    out = jax.jit(lambda p: make(CFG).apply({"params": p}, *args, train=False))(params)
    remat_out = jax.jit(lambda p: make(REMAT).apply({"params": p}, *args, train=False))(params)
    _assert_same(out, remat_out)


def test_remat_gpt_decodes_as_without():
    """KV-cache decoding (the "cache" collection through the rematerialised blocks)."""
    cfg, remat = dataclasses.replace(CFG, dropout_rate=0.0), dataclasses.replace(REMAT, dropout_rate=0.0)
    params = _init(tfm.GPT(cfg), _tokens(0))
    prompt = _tokens(3, (2, 4))
    a = dec.generate(cfg, params, prompt, 6, jax.random.key(1), temperature=0.0)
    b = dec.generate(remat, params, prompt, 6, jax.random.key(1), temperature=0.0)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_remat_makes_the_compiled_train_step_smaller():
    """value_and_grad of a 4-layer GPT (width 128, block 128, batch 16): XLA's temporary memory
    with remat is under half of that without (each block keeps only its input)."""
    cfg = tfm.TransformerConfig(vocab_size=65, num_layers=4, num_heads=4, width=128, max_len=128)
    tokens = _tokens(4, (16, cfg.max_len + 1), vocab=cfg.vocab_size)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    params = jax.eval_shape(lambda: nn.unbox(tfm.GPT(cfg).init(jax.random.key(0), inputs, train=False))["params"])

    def temp_bytes(config):
        def loss(p):
            logits = tfm.GPT(config).apply({"params": p}, inputs, train=True)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))
        compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain, remat = temp_bytes(cfg), temp_bytes(dataclasses.replace(cfg, remat=True))
    print(f"\ncompiled value_and_grad temp memory on {jax.devices()[0].device_kind}: "
          f"{plain / 2**20:.1f} MiB without remat, {remat / 2**20:.1f} MiB with")
    assert remat < plain
    assert remat < 0.5 * plain, (plain, remat)


def test_model_remat_config_key_reaches_the_transformer_configs():
    block = ml_collections.ConfigDict(dict(num_layers=1, num_heads=2, width=32, block_size=16, max_len=16,
                                           dropout_rate=0.0))
    # A workdir from before `model.remat` existed: absent is False.
    assert not language_model.gpt_config(block, 13).remat
    assert not language_model.encoder_config(block, 13).remat
    block.remat = True
    assert language_model.gpt_config(block, 13).remat
    assert language_model.encoder_config(block, 13).remat
    from experiments.transformer_classifier.config import get_config as classifier_config
    from experiments.transformer_lm.config import get_config as lm_config
    from experiments.transformer_mlm.config import get_config as mlm_config
    for get_config in (lm_config, mlm_config, classifier_config):
        assert get_config().model.remat is False  # published numbers: off
