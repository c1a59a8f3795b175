"""Transformer family: GPT (decoder-only LM), Encoder, MaskedLM, EncoderClassifier.

Every model is a flax.linen module configured by one frozen `TransformerConfig` and is a pure
function of its parameters: call it only as
`model.apply({"params": params}, ..., train=..., rngs={"dropout": key})`. Dropout draws from the
"dropout" rng collection, and only when `train=True` (with train=False no rng is needed and any
given one is ignored).

Shared pieces (GPT-2 / nanoGPT):
  * pre-LayerNorm blocks: x + Dropout(Attn(LN(x))), then x + Dropout(MLP(LN(x)));
  * multi-head self-attention with ONE fused qkv Dense (width -> 3 * width) and an output Dense;
    scores by einsum, a boolean mask (causal and/or key padding) applied as
    `jnp.finfo(float32).min`, softmax in float32, no dropout on the attention probabilities;
  * GELU (tanh approximation, as GPT-2) MLP: width -> mlp_ratio * width -> width;
  * learned token and position embeddings; output logits tied to the token embedding.

Shape suffixes (as in nanodo): B batch, L sequence length, P prompt length, N new tokens,
T cache length (= config.max_len), D width, H heads, K head dim (D / H), F MLP width, V vocab,
C classes.

Incremental decoding (GPT): `GPT.__call__(..., decode=True)` reads and writes the flax "cache"
collection: `index` (int32 scalar: how many positions are already cached) at the top, and per
attention layer `key` / `value` buffers BxTxHxK. One such call takes any number L of new tokens
(the whole prompt at once for the prefill, then one token per step), writes their keys and values
at rows [index, index + L) and lets every new query attend to all cached positions up to its own.
Start from `init_cache(config, batch_size)` and pass `mutable=["cache"]`. `generate` does the
prefill call and then samples under one jitted `lax.scan`. There is no sliding window: `generate`
raises ValueError when prompt + new tokens would exceed config.max_len.

Token ids. GPT needs no special token: on a vocabulary of N characters, ids are 0..N-1 and
`config.vocab_size = N`. The encoder models (Encoder, MaskedLM, EncoderClassifier) reserve two
more, see `encoder_token_ids(N)`: characters are ids 0..N-1, PAD = N,
MASK = N + 1, and `config.vocab_size = N + 2`. What makes the models ignore padding is
`mask_BxL` (1 = real token, 0 = pad), so the ids written at pad positions never matter; PAD is
only the conventional filler. `mask_tokens(..., mask_id=N + 1, vocab_size=N)` draws its random
replacement tokens from the N characters only, never PAD or MASK. A `MaskedLM`'s
`params["encoder"]` loads unchanged into an `EncoderClassifier` built on the same config.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from lab.models import layers

Array = jax.Array

# FSDP placement of every Transformer (GPT, Encoder, MaskedLM, EncoderClassifier) parameter, for
# `lab.parallel.shardings_from_rules`: each kernel and embedding is split along its width (D)
# dimension over the mesh's 'fsdp' axis, the one dimension every config makes divisible (the
# vocabulary and max_len need not be); biases and LayerNorm vectors, D or 4D floats per layer,
# stay replicated. Optimizer moments follow their parameter (their paths end in its path).
PARTITION_RULES = (
    (r"\['(qkv|out|fc)'\]\['kernel'\]$", P("fsdp", None)),  # DxD', split on the input width D
    (r"\['proj'\]\['kernel'\]$", P(None, "fsdp")),  # FxD, split on the output width D
    (r"\['(embedding|position)'\]$", P(None, "fsdp")),  # VxD token and LxD position embeddings
    (r"\['(bias|scale)'\]$", P()),
)


# ------------------------------------------------------------------------------------------------
# Config and token ids.


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of every model here. Frozen and hashable (a valid jit static argument).

    Presets, each taking keyword overrides (e.g. `TransformerConfig.small(dropout_rate=0.1)`):
      tiny():  2 layers, 2 heads, width 32, max_len 16 (tests);
      small(): 4 layers, 4 heads, width 128, max_len 64;
      base():  nanoGPT's shakespeare_char: 6 layers, 6 heads, width 384, max_len 256,
               dropout 0.2.
    """

    vocab_size: int  # Token ids (embedding rows, logits). GPT: N; encoder models: N + 2.
    num_layers: int = 4  # Transformer blocks.
    num_heads: int = 4  # Attention heads; must divide width.
    width: int = 128  # d_model (D).
    mlp_ratio: int = 4  # MLP hidden width F = mlp_ratio * width.
    max_len: int = 64  # Block size: most positions in a sequence or in the KV cache.
    dropout_rate: float = 0.0  # On the embeddings and on both residual branches, when train.
    dtype: Any = jnp.float32  # Computation dtype; params stay float32, softmax/logits float32.
    layer_norm_epsilon: float = 1e-5  # As GPT-2.
    # Biases in the blocks' Dense layers and in every LayerNorm (GPT-2: True). nanoGPT's
    # shakespeare_char recipe trains without them (its `bias=False`); so does transformer_lm.
    use_bias: bool = True
    # Token lookup as one_hot(ids) @ table (a matmul, whose backward is a matmul too) instead of
    # a gather (whose backward is a scatter-add). Same values, and on a CPU no faster for a
    # character vocabulary; the gather costs O(B*L*D) rather than O(B*L*V*D), so it stays the default.
    one_hot_embed: bool = False
    # Encoder models only: each position attends to itself and the positions before it (GPT's
    # mask under the padding mask), so that the encoder pretrains by next-token prediction. GPT
    # is causal whatever this says.
    causal: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "num_layers", "num_heads", "width", "mlp_ratio", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} is not divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")

    @property
    def head_dim(self) -> int:
        """K = width // num_heads."""
        return self.width // self.num_heads

    @property
    def mlp_width(self) -> int:
        """F = mlp_ratio * width."""
        return self.mlp_ratio * self.width

    @classmethod
    def tiny(cls, vocab_size: int = 13, **overrides) -> TransformerConfig:
        """For tests: 2 layers, 2 heads, width 32, max_len 16."""
        defaults = dict(num_layers=2, num_heads=2, width=32, max_len=16)
        return cls(vocab_size=vocab_size, **{**defaults, **overrides})

    @classmethod
    def small(cls, vocab_size: int = 65, **overrides) -> TransformerConfig:
        """4 layers, 4 heads, width 128, max_len 64: a character LM that trains on a CPU."""
        defaults = dict(num_layers=4, num_heads=4, width=128, max_len=64)
        return cls(vocab_size=vocab_size, **{**defaults, **overrides})

    @classmethod
    def base(cls, vocab_size: int = 65, **overrides) -> TransformerConfig:
        """nanoGPT's shakespeare_char: 6 layers, 6 heads, width 384, max_len 256, dropout 0.2."""
        defaults = dict(num_layers=6, num_heads=6, width=384, max_len=256, dropout_rate=0.2)
        return cls(vocab_size=vocab_size, **{**defaults, **overrides})


class TokenIds(NamedTuple):
    """The encoder models' token ids for N characters (see the module docstring)."""

    vocab_size: int  # N + 2: TransformerConfig.vocab_size.
    pad_id: int  # N
    mask_id: int  # N + 1: mask_tokens(mask_id=...).
    num_chars: int  # N: mask_tokens(vocab_size=...).


def encoder_token_ids(num_chars: int) -> TokenIds:
    """Characters 0..N-1, PAD = N, MASK = N + 1, vocab_size = N + 2 (N = num_chars)."""
    return TokenIds(vocab_size=num_chars + 2, pad_id=num_chars, mask_id=num_chars + 1,
                    num_chars=num_chars)


# ------------------------------------------------------------------------------------------------
# Initialisers as in GPT-2 / nanoGPT: every Dense kernel and both embeddings ~ N(0, 0.02), biases
# zero, LayerNorm scale 1 and bias 0; the two projections that write into the residual stream
# (attention `out`, MLP `proj`) ~ N(0, 0.02 / sqrt(2 * num_layers)).

_INIT = nn.initializers.normal(stddev=0.02)


def _residual_init(config: TransformerConfig):
    return nn.initializers.normal(stddev=0.02 / math.sqrt(2 * config.num_layers))


def _layer_norm(config: TransformerConfig, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_epsilon, use_bias=config.use_bias,
                        dtype=config.dtype, name=name)


@jax.custom_vjp
def _dot_accumulating_f32(x_NxD: Array, w_DxF: Array) -> Array:
    """x_NxD @ w_DxF for a low-precision dtype: products accumulated in float32, then rounded.

    XLA:CPU runs a bfloat16 matmul on the bf16 instructions (AVX512_BF16, AMX) only when it
    asks for a float32 result and contracts x's last axis; a bf16-result matmul is upcast to a
    float32 one (slower than the bf16 instructions where they exist; BUILD_NOTES.md has the timings).
    The backward pass is written out for the same reason: JAX's own transpose of this dot asks
    for bf16 results. The kernel gradient contracts over the rows of both operands, which
    XLA:CPU upcasts whatever it is asked.
    """
    return lax.dot(x_NxD, w_DxF, preferred_element_type=jnp.float32).astype(x_NxD.dtype)


def _dot_accumulating_f32_fwd(x_NxD, w_DxF):
    return _dot_accumulating_f32(x_NxD, w_DxF), (x_NxD, w_DxF)


def _dot_accumulating_f32_bwd(residuals, g_NxF):
    x_NxD, w_DxF = residuals
    dx_NxD = lax.dot_general(g_NxF, w_DxF, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    dw_DxF = lax.dot_general(x_NxD, g_NxF, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return dx_NxD.astype(x_NxD.dtype), dw_DxF.astype(w_DxF.dtype)


_dot_accumulating_f32.defvjp(_dot_accumulating_f32_fwd, _dot_accumulating_f32_bwd)


def _low_precision_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`nn.Dense`'s `dot_general` under a bf16 `config.dtype`: `_dot_accumulating_f32` on
    lhs's rows (...xD) and the DxF kernel, the same math as `lax.dot_general`'s to rounding."""
    del precision, preferred_element_type  # Dense passes neither.
    (lhs_contract, rhs_contract), batch = dimension_numbers
    assert lhs_contract == (lhs.ndim - 1,) and rhs_contract == (0,) and batch == ((), ()), dimension_numbers
    y = _dot_accumulating_f32(lhs.reshape(-1, lhs.shape[-1]), rhs)
    return y.reshape(lhs.shape[:-1] + y.shape[-1:])


def _dense(config: TransformerConfig, features: int, name: str, kernel_init=_INIT, use_bias=None) -> nn.Dense:
    """A Dense layer computing in `config.dtype` (float32: flax's own; else `_low_precision_dot_general`)."""
    low_precision = jnp.dtype(config.dtype) != jnp.float32
    return nn.Dense(features, use_bias=config.use_bias if use_bias is None else use_bias, dtype=config.dtype,
                    kernel_init=kernel_init, name=name,
                    dot_general=_low_precision_dot_general if low_precision else None)


def _rows(layer, x_BxLxD: Array) -> Array:
    """Applies `layer` to x as one (B*L)xD matrix, then restores BxL.

    XLA:CPU runs a 2-D matmul (and its two backward matmuls) through its fast GEMM; the same
    Dense on a BxLxD input contracts the kernel gradient over two axes, a slower path.
    """
    y = layer(x_BxLxD.reshape(-1, x_BxLxD.shape[-1]))
    return y.reshape(x_BxLxD.shape[:-1] + y.shape[-1:])


def _check_length(config: TransformerConfig, length: int):
    if length > config.max_len:
        raise ValueError(f"sequence length {length} exceeds config.max_len={config.max_len}")


# ------------------------------------------------------------------------------------------------
# Shared blocks.


class Embedder(nn.Module):
    """Token + learned position embeddings, and the tied output head `attend`.

    Params: `token/embedding` VxD, `position` TxD (T = config.max_len).
    """

    config: TransformerConfig

    def setup(self):
        c = self.config
        self.token = nn.Embed(c.vocab_size, c.width, embedding_init=_INIT, dtype=c.dtype)
        self.position = self.param("position", _INIT, (c.max_len, c.width))

    def __call__(self, tokens_BxL: Array, offset: Array | None = None) -> Array:
        """int tokens_BxL -> x_BxLxD at positions offset + [0, L) (offset None: static 0)."""
        c = self.config
        length = tokens_BxL.shape[1]
        if c.one_hot_embed:
            onehot_BxLxV = jax.nn.one_hot(tokens_BxL, c.vocab_size, dtype=c.dtype)
            x_BxLxD = jnp.dot(onehot_BxLxV, self.token.embedding.astype(c.dtype))
        else:
            x_BxLxD = self.token(tokens_BxL)
        if offset is None:
            pos_LxD = self.position[:length]
        else:
            pos_LxD = lax.dynamic_slice_in_dim(self.position, offset, length, axis=0)
        return x_BxLxD + pos_LxD.astype(c.dtype)

    def attend(self, x_BxLxD: Array) -> Array:
        """Tied head: x_BxLxD -> float32 logits_BxLxV = x @ token_embedding.T."""
        return _rows(self.token.attend, x_BxLxD).astype(jnp.float32)


def _attend(q_BxLxHxK: Array, k_BxTxHxK: Array, v_BxTxHxK: Array, mask: Array) -> Array:
    """Softmax attention; `mask` (bool, True = may attend) broadcasts to BxHxLxT. -> BxLxHxK."""
    dtype = q_BxLxHxK.dtype
    q_BxLxHxK = q_BxLxHxK * jnp.asarray(1.0 / math.sqrt(q_BxLxHxK.shape[-1]), dtype)
    s_BxHxLxT = jnp.einsum("blhk,bthk->bhlt", q_BxLxHxK, k_BxTxHxK).astype(jnp.float32)
    s_BxHxLxT = jnp.where(mask, s_BxHxLxT, jnp.finfo(jnp.float32).min)
    p_BxHxLxT = jax.nn.softmax(s_BxHxLxT, axis=-1).astype(dtype)
    return jnp.einsum("bhlt,bthk->blhk", p_BxHxLxT, v_BxTxHxK)


class Attention(nn.Module):
    """Multi-head self-attention: fused `qkv` Dense (D -> 3D), einsum scores, `out` Dense (D -> D).

    In decode mode (`decode_index` given) it keeps "cache" variables `key` and `value`
    (BxTxHxK each, T = config.max_len).
    """

    config: TransformerConfig

    @nn.compact
    def __call__(self, x_BxLxD: Array, mask: Array, decode_index: Array | None = None) -> Array:
        """x_BxLxD -> y_BxLxD.

        mask: bool, broadcastable to BxHxLxL (BxHxLxT in decode mode); True = may attend.
        decode_index: None for a plain forward pass; in decode mode the int32 cache row of x's
          first position: the new keys/values go to rows [index, index + L) and the queries
          attend over all T rows (the mask hides those not yet written).
        """
        c = self.config
        b, length, _ = x_BxLxD.shape
        qkv = _dense(c, 3 * c.width, "qkv")
        qkv_BxLx3D = _rows(qkv, x_BxLxD)
        # Columns are [q | k | v], each ordered (head, head_dim): a split (whose gradient is a
        # concatenation) and free reshapes, no transpose.
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (
            a_BxLxD.reshape(b, length, c.num_heads, c.head_dim)
            for a_BxLxD in jnp.split(qkv_BxLx3D, 3, axis=-1))
        if decode_index is None:
            k_BxTxHxK, v_BxTxHxK = k_BxLxHxK, v_BxLxHxK  # T = L
        else:
            shape = (b, c.max_len, c.num_heads, c.head_dim)
            key = self.variable("cache", "key", jnp.zeros, shape, c.dtype)
            value = self.variable("cache", "value", jnp.zeros, shape, c.dtype)
            start = (0, decode_index, 0, 0)
            k_BxTxHxK = lax.dynamic_update_slice(key.value, k_BxLxHxK.astype(c.dtype), start)
            v_BxTxHxK = lax.dynamic_update_slice(value.value, v_BxLxHxK.astype(c.dtype), start)
            if not self.is_initializing():
                key.value, value.value = k_BxTxHxK, v_BxTxHxK
        y_BxLxHxK = _attend(q_BxLxHxK, k_BxTxHxK, v_BxTxHxK, mask)
        out = _dense(c, c.width, "out", kernel_init=_residual_init(c))
        return _rows(out, y_BxLxHxK.reshape(b, length, c.width))


class Mlp(nn.Module):
    """GELU MLP: `fc` Dense (D -> F), GELU, `proj` Dense (F -> D, residual-scaled init)."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x_BxLxD: Array) -> Array:
        """x_BxLxD -> y_BxLxD."""
        c = self.config
        h_BxLxF = _rows(_dense(c, c.mlp_width, "fc"), x_BxLxD)
        h_BxLxF = nn.gelu(h_BxLxF, approximate=True)
        proj = _dense(c, c.width, "proj", kernel_init=_residual_init(c))
        return _rows(proj, h_BxLxF)


class Block(nn.Module):
    """Pre-LN block: x + Dropout(Attn(LN(x))), then x + Dropout(MLP(LN(x))).

    Params: `ln_1`, `attn` (Attention), `ln_2`, `mlp` (Mlp).
    """

    config: TransformerConfig

    @nn.compact
    def __call__(self, x_BxLxD: Array, mask: Array, *, train: bool,
                 decode_index: Array | None = None) -> Array:
        """x_BxLxD -> x_BxLxD; `mask` and `decode_index` as in `Attention`."""
        c = self.config
        drop = nn.Dropout(c.dropout_rate, deterministic=not train)
        h_BxLxD = Attention(c, name="attn")(_layer_norm(c, "ln_1")(x_BxLxD), mask, decode_index)
        x_BxLxD = x_BxLxD + drop(h_BxLxD)
        h_BxLxD = Mlp(c, name="mlp")(_layer_norm(c, "ln_2")(x_BxLxD))
        return x_BxLxD + drop(h_BxLxD)


class _Backbone(nn.Module):
    """Embeddings, dropout, the blocks and the final LayerNorm: the trunk of GPT and Encoder.

    Params: `embed` (Embedder), `block_0` ... `block_{N-1}` (Block), `ln_f`. The submodules live
    in `setup` so that a parent can call both the model and its tied head `attend`.
    """

    config: TransformerConfig

    def setup(self):
        c = self.config
        self.embed = Embedder(c)
        self.drop = nn.Dropout(c.dropout_rate)
        self.blocks = [Block(c, name=f"block_{i}") for i in range(c.num_layers)]
        self.ln_f = _layer_norm(c)

    def _hidden(self, tokens_BxL: Array, mask: Array, *, train: bool,
                offset: Array | None = None) -> Array:
        """tokens_BxL -> hidden_BxLxD after the final LayerNorm (offset: decode position)."""
        x_BxLxD = self.drop(self.embed(tokens_BxL, offset), deterministic=not train)
        for block in self.blocks:
            x_BxLxD = block(x_BxLxD, mask, train=train, decode_index=offset)
        return self.ln_f(x_BxLxD)

    def attend(self, x_BxLxD: Array) -> Array:
        """Tied head over the token embedding: x_BxLxD -> float32 logits_BxLxV."""
        return self.embed.attend(x_BxLxD)


# ------------------------------------------------------------------------------------------------
# GPT and sampling.


class GPT(_Backbone):
    """Decoder-only causal language model with output logits tied to the token embedding.

    Params: `embed`, `block_0` ... `block_{N-1}`, `ln_f`; with mlp_ratio 4 that is
    V*D + T*D + N * (12 D^2 + 13 D) + 2 D parameters.
    """

    @nn.compact
    def __call__(self, tokens_BxL: Array, *, train: bool, decode: bool = False) -> Array:
        """int32 tokens_BxL -> float32 logits_BxLxV (next-token logits at every position).

        decode=True: incremental decoding through the "cache" collection (module docstring):
        needs `mutable=["cache"]` and a cache from `init_cache`. The L tokens are placed at
        positions [index, index + L); overrunning config.max_len is not checked here (it is in
        `generate`).
        """
        c = self.config
        length = tokens_BxL.shape[1]
        _check_length(c, length)
        if not decode:
            causal_1x1xLxL = jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]
            return self.attend(self._hidden(tokens_BxL, causal_1x1xLxL, train=train))
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        offset = index.value
        if not self.is_initializing():
            index.value = offset + length
        # New query i sits at position offset + i and sees every cache row up to its own.
        query_pos_L = offset + jnp.arange(length)
        mask_1x1xLxT = (jnp.arange(c.max_len)[None, :] <= query_pos_L[:, None])[None, None]
        return self.attend(self._hidden(tokens_BxL, mask_1x1xLxT, train=train, offset=offset))


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
              rng: Array, temperature: Array, top_k: Array) -> Array:
    model = GPT(config)
    keys = jax.random.split(rng, max_new_tokens)

    def last_logits(cache, tokens_BxL):
        logits_BxLxV, variables = model.apply(
            {"params": params, "cache": cache}, tokens_BxL, train=False, decode=True,
            mutable=["cache"])
        return logits_BxLxV[:, -1], variables["cache"]

    # Prefill: the whole prompt in one call, which also gives the first new token.
    logits_BxV, cache = last_logits(init_cache(config, prompt_BxP.shape[0]), prompt_BxP)
    first_B = layers.sample_logits(logits_BxV, keys[0], temperature, top_k)

    def step(carry, key):
        cache, token_B = carry
        logits_BxV, cache = last_logits(cache, token_B[:, None])
        token_B = layers.sample_logits(logits_BxV, key, temperature, top_k)
        return (cache, token_B), token_B

    _, rest_NxB = lax.scan(step, (cache, first_B), keys[1:])
    return jnp.concatenate([prompt_BxP, first_B[:, None], rest_NxB.T], axis=1)


def generate_traced(config: TransformerConfig, params, prompt_BxP: Array, max_new_tokens: int,
                    rng: Array, temperature: Array, top_k: Array) -> Array:
    """`generate` with temperature (float32 scalar) and top_k (int32 scalar in [1, V]) as arrays
    and without its Python checks: the function `lab.export` lowers, the prompt length symbolic.
    The caller keeps P + max_new_tokens <= config.max_len (the export states it as a constraint).
    Returns int32 tokens_Bx(P+N), the same tokens `generate` gives for the same arguments."""
    return _generate(config, params, prompt_BxP, max_new_tokens, rng, temperature, top_k)


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


# ------------------------------------------------------------------------------------------------
# Encoder models.


POOLINGS = ("mean", "max", "attention", "last")


def pool(hidden_BxLxD: Array, mask_BxL: Array, kind: str, query_D: Array | None = None) -> Array:
    """float32 pooled_BxD of the hidden states over real positions (mask 1; a row with none: 0).

    kind: 'mean'; 'max' (per feature); 'attention' (weights softmax(hidden . query_D / sqrt(D))
    over the real positions); 'last' (the last real position, the only one that a causal encoder
    lets read the whole input; real positions must come first, pads after them).
    """
    h_BxLxD = hidden_BxLxD.astype(jnp.float32)
    real_BxL = jnp.asarray(mask_BxL) > 0
    any_B1 = real_BxL.any(axis=1, keepdims=True)
    if kind == "max":
        pooled = jnp.where(real_BxL[..., None], h_BxLxD, -jnp.inf).max(axis=1)
        return jnp.where(any_B1, pooled, 0.0)
    if kind == "attention":
        scores_BxL = h_BxLxD @ query_D.astype(jnp.float32) / jnp.sqrt(h_BxLxD.shape[-1])
        weights_BxL = jax.nn.softmax(jnp.where(real_BxL, scores_BxL, -jnp.inf), axis=1)
        return jnp.where(any_B1, jnp.einsum("bl,bld->bd", jnp.where(real_BxL, weights_BxL, 0.0), h_BxLxD), 0.0)
    if kind == "last":
        last_B = jnp.maximum(real_BxL.sum(axis=1) - 1, 0)
        pooled = jnp.take_along_axis(h_BxLxD, last_B[:, None, None], axis=1)[:, 0]
        return jnp.where(any_B1, pooled, 0.0)
    if kind == "mean":
        w_BxLx1 = real_BxL[..., None].astype(jnp.float32)
        return (h_BxLxD * w_BxLx1).sum(axis=1) / jnp.maximum(w_BxLx1.sum(axis=1), 1.0)
    raise ValueError(f"pooling {kind!r}: use one of {', '.join(POOLINGS)}")


class Encoder(_Backbone):
    """Bidirectional encoder: embeddings, N blocks under a key padding mask, final LayerNorm.
    With `config.causal` every query sees only itself and earlier real positions.

    Params: `embed`, `block_0` ... `block_{N-1}`, `ln_f` (the same tree as GPT's). `attend` is
    the tied head over the token embedding (used by MaskedLM).
    """

    def __call__(self, tokens_BxL: Array, mask_BxL: Array, *, train: bool
                 ) -> tuple[Array, Array]:
        """(int tokens_BxL, mask_BxL: 1 real, 0 pad) -> (hidden_BxLxD, float32 pooled_BxD).

        No query attends to a pad position, so neither the hidden states at real positions nor
        pooled (the mean of hidden over real positions; zeros for a row with none) depend on
        pads. Hidden states at pad positions are meaningless.
        """
        _check_length(self.config, tokens_BxL.shape[1])
        real_BxL = mask_BxL > 0
        attend_Bx1xLxL = real_BxL[:, None, None, :]
        if self.config.causal:
            length = tokens_BxL.shape[1]
            attend_Bx1xLxL = attend_Bx1xLxL & jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]
        hidden_BxLxD = self._hidden(tokens_BxL, attend_Bx1xLxL, train=train)
        return hidden_BxLxD, pool(hidden_BxLxD, mask_BxL, "mean")


class MaskedLM(nn.Module):
    """BERT-style masked LM: `encoder`, Dense(D) -> GELU -> LayerNorm, tied logits + bias.
    On a causal encoder (`config.causal`) the logits at position i are read as position i + 1's.

    Params: `encoder` (exactly an Encoder's tree), `head_dense`, `head_ln`, `output_bias` (V).
    """

    config: TransformerConfig

    @nn.compact
    def __call__(self, tokens_BxL: Array, mask_BxL: Array, *, train: bool) -> Array:
        """(int tokens_BxL, mask_BxL) -> float32 logits_BxLxV (meaningless at pad positions)."""
        c = self.config
        encoder = Encoder(c, name="encoder")
        hidden_BxLxD, _ = encoder(tokens_BxL, mask_BxL, train=train)
        dense = _dense(c, c.width, "head_dense", use_bias=True)
        h_BxLxD = _layer_norm(c, "head_ln")(nn.gelu(dense(hidden_BxLxD), approximate=True))
        bias_V = self.param("output_bias", nn.initializers.zeros, (c.vocab_size,))
        return encoder.attend(h_BxLxD) + bias_V


class EncoderClassifier(nn.Module):
    """`encoder` -> pooled -> Dense(hidden) -> ReLU -> Dropout -> one logits Dense per label.

    pooling: 'mean' (the Encoder's own), 'max', 'attention' (softmax over real positions of
    hidden . q / sqrt(D), q a learned `head_pool_query`, zero at init: the mean at the start), or
    'last' (the last real position); see `pool`.

    num_classes: {label: number of classes}, e.g. {"play": 37, "genre": 3}, or a sequence of
    (label, n) pairs. Params: `encoder` (exactly an Encoder's tree, so a MaskedLM's
    `params["encoder"]` loads straight in), `head_hidden`, `head_<label>` per label.
    """

    config: TransformerConfig
    num_classes: Mapping[str, int] | Sequence[tuple[str, int]]
    hidden: int = 512
    head_dropout: float = 0.1
    pooling: str = "mean"  # of the hidden states over real tokens: one of POOLINGS

    def __post_init__(self):
        # Stored as a tuple of (label, n) pairs, so that the module stays hashable.
        if isinstance(self.num_classes, Mapping):
            object.__setattr__(self, "num_classes", tuple(self.num_classes.items()))
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens_BxL: Array, mask_BxL: Array, *, train: bool) -> dict[str, Array]:
        """(int tokens_BxL, mask_BxL) -> {label: float32 logits_BxC}."""
        hidden_BxLxD, pooled_BxD = Encoder(self.config, name="encoder")(tokens_BxL, mask_BxL, train=train)
        if self.pooling != "mean":
            pooled_BxD = pool(hidden_BxLxD, mask_BxL, self.pooling,
                              self.param("head_pool_query", nn.initializers.zeros, (hidden_BxLxD.shape[-1],))
                              if self.pooling == "attention" else None)
        h_BxF = nn.relu(nn.Dense(self.hidden, name="head_hidden")(pooled_BxD))
        h_BxF = nn.Dropout(self.head_dropout, deterministic=not train)(h_BxF)
        return {label: nn.Dense(n, name=f"head_{label}")(h_BxF).astype(jnp.float32)
                for label, n in self.num_classes}


def mask_tokens(rng: Array, tokens_BxL: Array, mask_BxL: Array, *, mask_id: int,
                vocab_size: int, rate: float = 0.15) -> tuple[Array, Array, Array]:
    """BERT's 80/10/10 masking -> (int32 inputs_BxL, int32 targets_BxL, float32 weights_BxL).

    Each real position (mask_BxL == 1; never a pad) is chosen independently with probability
    `rate`. A chosen input becomes `mask_id` with probability 0.8, a uniform random token from
    [0, vocab_size) with probability 0.1, and stays unchanged otherwise. targets = the original
    tokens; weights = 1 at chosen positions, else 0. Deterministic given rng.
    `mask_id` must be an id the vocabulary reserves for masking and `vocab_size` the number of
    ordinary tokens: with the module's convention mask_id = N + 1 and vocab_size = N (the
    characters), see `encoder_token_ids`.
    """
    k_choose, k_kind, k_random = jax.random.split(rng, 3)
    tokens_BxL = jnp.asarray(tokens_BxL, jnp.int32)
    shape = tokens_BxL.shape
    chosen_BxL = (jax.random.uniform(k_choose, shape) < rate) & (jnp.asarray(mask_BxL) > 0)
    u_BxL = jax.random.uniform(k_kind, shape)
    random_BxL = jax.random.randint(k_random, shape, 0, vocab_size, jnp.int32)
    replaced_BxL = jnp.where(u_BxL < 0.8, jnp.int32(mask_id),
                             jnp.where(u_BxL < 0.9, random_BxL, tokens_BxL))
    inputs_BxL = jnp.where(chosen_BxL, replaced_BxL, tokens_BxL)
    return inputs_BxL, tokens_BxL, chosen_BxL.astype(jnp.float32)
