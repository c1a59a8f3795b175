"""GPT sampling with a KV cache: `init_cache`, `generate`, `generate_long`, and `generate_traced`
(the function `lab.export` lowers).

`init_cache(config, batch_size)` is the empty "cache" collection that
`GPT.__call__(..., decode=True)` reads and writes (`lab.models.transformer`'s docstring has the
protocol). `generate` does the prefill call and then samples under one jitted `lax.scan`. There is
no sliding window: `generate` raises ValueError when prompt + new tokens would exceed
config.max_len; `generate_long` slides one in chunks.

Shape suffixes as in `lab.models.transformer`: B batch, L sequence length, P prompt length,
N new tokens, T cache length (= config.max_len), H heads, K head dim (D / H), V vocab.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from lab.models import layers
from lab.models.transformer import GPT, TransformerConfig

Array = jax.Array


def init_cache(config: TransformerConfig, batch_size: int) -> dict:
    """An empty KV cache (the "cache" collection) for `GPT(config)` decoding batch_size rows.

    {"index": int32 0, "block_i": {"attn": {"key", "value"}}} with zero BxTxHxK buffers.
    """
    tokens_Bx1 = jnp.zeros((batch_size, 1), jnp.int32)
    init = functools.partial(GPT(config).init, train=False, decode=True)
    shapes = jax.eval_shape(init, jax.random.key(0), tokens_Bx1)["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _generate(config: TransformerConfig, params, prompt_BxP: Array, max_new_tokens: int,
              rng: Array, temperature: Array, top_k: Array, prompt_len: Array | None = None) -> Array:
    model = GPT(config)
    keys = jax.random.split(rng, max_new_tokens)

    def logits_and_cache(cache, tokens_BxL):
        logits_BxLxV, variables = model.apply(
            {"params": params, "cache": cache}, tokens_BxL, train=False, decode=True,
            mutable=["cache"])
        return logits_BxLxV, variables["cache"]

    # Prefill: the whole prompt in one call, which also gives the first new token.
    logits_BxPxV, cache = logits_and_cache(init_cache(config, prompt_BxP.shape[0]), prompt_BxP)
    if prompt_len is None:
        logits_BxV = logits_BxPxV[:, -1]
    else:
        # A padded prompt: its tokens are [0, prompt_len). The pads' cache rows stay hidden (a
        # query sees the rows up to its own position) and each is overwritten before its
        # position's query, since decoding resumes at row prompt_len.
        logits_BxV = lax.dynamic_index_in_dim(logits_BxPxV, prompt_len - 1, axis=1, keepdims=False)
        cache = {**cache, "index": jnp.asarray(prompt_len, jnp.int32)}
    first_B = layers.sample_logits(logits_BxV, keys[0], temperature, top_k)

    def step(carry, key):
        cache, token_B = carry
        logits_Bx1xV, cache = logits_and_cache(cache, token_B[:, None])
        token_B = layers.sample_logits(logits_Bx1xV[:, -1], key, temperature, top_k)
        return (cache, token_B), token_B

    _, rest_NxB = lax.scan(step, (cache, first_B), keys[1:])
    new_BxN = jnp.concatenate([first_B[:, None], rest_NxB.T], axis=1)
    if prompt_len is None:
        return jnp.concatenate([prompt_BxP, new_BxN], axis=1)
    tokens_BxPN = jnp.concatenate([prompt_BxP, jnp.zeros_like(new_BxN)], axis=1)  # PN: P + N
    return lax.dynamic_update_slice(tokens_BxPN, new_BxN, (0, prompt_len))


def generate_traced(config: TransformerConfig, params, prompt_BxP: Array, max_new_tokens: int,
                    rng: Array, temperature: Array, top_k: Array, prompt_len: Array | None = None) -> Array:
    """`generate` with temperature (float32 scalar) and top_k (int32 scalar in [1, V]) as arrays
    and without its Python checks: the function `lab.export` lowers, the prompt length symbolic.

    prompt_len (int32 scalar, optional): the prompt is padded and its tokens are the first
    prompt_len of each row (1 <= prompt_len <= P); the new tokens then follow them, at
    [prompt_len, prompt_len + N), so the first prompt_len + N tokens of a row are what `generate`
    gives for the unpadded prompt (a server pads prompts to a few lengths, each compiled once).
    The caller keeps prompt_len + max_new_tokens <= config.max_len and P <= config.max_len (the
    export states it as a constraint). Returns int32 tokens_Bx(P+N)."""
    return _generate(config, params, prompt_BxP, max_new_tokens, rng, temperature, top_k, prompt_len)


def generate(config: TransformerConfig, params, prompt_BxP: Array, max_new_tokens: int,
             rng: Array, *, temperature: float = 1.0, top_k: int | None = None) -> Array:
    """Extend int32 prompt_BxP by max_new_tokens sampled tokens -> int32 tokens_Bx(P+N).

    One prefill call writes the prompt into the KV cache; one jitted `lax.scan` then samples
    the tokens one by one (new token i uses `jax.random.split(rng, N)[i]`, so a given rng always
    gives the same tokens). temperature == 0: greedy argmax; top_k: sample among the k largest
    logits only (None: all). No sliding window: raises ValueError if
    P + max_new_tokens > config.max_len. Compiles once per (config, B, P, N); temperature and
    top_k are traced, so changing them does not recompile.
    """
    prompt_BxP = jnp.asarray(prompt_BxP, jnp.int32)
    if prompt_BxP.ndim != 2 or prompt_BxP.shape[1] < 1:
        raise ValueError(f"prompt must be int BxP with P >= 1, got shape {prompt_BxP.shape}")
    total = prompt_BxP.shape[1] + max_new_tokens
    if total > config.max_len:
        raise ValueError(
            f"prompt length {prompt_BxP.shape[1]} + max_new_tokens {max_new_tokens} = {total} "
            f"exceeds config.max_len={config.max_len} (no sliding window: shorten the prompt)")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be None or >= 1, got {top_k}")
    if max_new_tokens == 0:
        return prompt_BxP
    k = config.vocab_size if top_k is None else min(int(top_k), config.vocab_size)
    return _generate(config, params, prompt_BxP, int(max_new_tokens), rng,
                     jnp.float32(temperature), jnp.int32(k))


def generate_long(config: TransformerConfig, params, prompt_BxP: Array, max_new_tokens: int,
                  rng: Array, *, temperature: float = 1.0, top_k: int | None = None) -> Array:
    """`generate` for any length: a sliding window in chunks, as nanoGPT crops its context.

    Positions are learned and absolute, so the cache cannot slide token by token: once the
    sequence would pass `config.max_len`, the last `max_len // 2` tokens become a new prompt and
    `generate` fills the rest of the window; repeat. Each chunk is one jitted prefill + scan
    (the same shapes from the second chunk on: one compile). -> int32 tokens_Bx(P+max_new_tokens).
    """
    tokens = jnp.asarray(prompt_BxP, jnp.int32)
    keep = max(1, config.max_len // 2)
    context = tokens if tokens.shape[1] <= config.max_len else tokens[:, -keep:]
    remaining, chunk = max_new_tokens, 0
    while remaining > 0:
        n = min(remaining, config.max_len - context.shape[1])
        out = generate(config, params, context, n, jax.random.fold_in(rng, chunk),
                       temperature=temperature, top_k=top_k)
        tokens = jnp.concatenate([tokens, out[:, context.shape[1]:]], axis=1)
        context = tokens[:, -keep:]
        remaining -= n
        chunk += 1
    return tokens
