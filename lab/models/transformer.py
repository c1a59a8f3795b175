"""Transformer family: the config, the shared blocks and GPT (decoder-only LM).

The encoder models (Encoder, MaskedLM, EncoderClassifier) live in `lab.models.encoder` and GPT's
sampling (`init_cache`, `generate`, `generate_long`, `generate_traced`) in `lab.models.decoding`;
both build on this module's `TransformerConfig` and blocks.

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
Start from `lab.models.decoding.init_cache(config, batch_size)` and pass `mutable=["cache"]`;
`lab.models.decoding.generate` does the prefill call and then samples under one jitted `lax.scan`.

Token ids. GPT needs no special token: on a vocabulary of N characters, ids are 0..N-1 and
`config.vocab_size = N`. The encoder models reserve two more (`lab.models.encoder.encoder_token_ids`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lab.models import bf16

Array = jax.Array

# FSDP placement of every Transformer (GPT, Encoder, MaskedLM, EncoderClassifier) parameter,
# declared where the parameter is defined, by logical axis names (`nn.with_logical_partitioning`;
# `lab.sharding.LOGICAL_AXIS_RULES` maps them to the mesh): each kernel and embedding is split
# along one width (D) dimension over the mesh's 'fsdp' axis, the one every config makes divisible
# (the vocabulary and max_len need not be): EMBED, the residual stream, or, for attention's output
# projection, HEADS, its input. Biases and LayerNorm vectors, D or 4D floats per layer, are
# declared whole (None). Optimizer moments follow their parameter (lab.parallel).
EMBED = "embed"  # D, the residual stream
HEADS = "heads"  # D as H x K: the attention heads' outputs, joined
QKV = "qkv"  # 3D: the fused q | k | v
MLP = "mlp"  # F, the MLP's hidden width
VOCAB = "vocab"  # V
LENGTH = "length"  # T = max_len positions
WHOLE = (None,)  # a vector never split


def declared(init, *names):
    """`init` with its parameter's logical axis names (one per dimension) attached."""
    return nn.with_logical_partitioning(init, names)


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
    # Encoder models only: each position attends to itself and the positions before it (GPT's
    # mask under the padding mask), so that the encoder pretrains by next-token prediction. GPT
    # is causal whatever this says.
    causal: bool = False
    # Activation rematerialisation: each Block under `nn.remat` keeps only its input for the
    # backward pass and recomputes its activations there (`Backbone`): one more forward pass of
    # the blocks per step for a smaller compiled train step (its temporary memory). The same
    # parameter tree, values and gradients as without: a checkpoint loads either way.
    remat: bool = False

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


# ------------------------------------------------------------------------------------------------
# Initialisers as in GPT-2 / nanoGPT: every Dense kernel and both embeddings ~ N(0, 0.02), biases
# zero, LayerNorm scale 1 and bias 0; the two projections that write into the residual stream
# (attention `out`, MLP `proj`) ~ N(0, 0.02 / sqrt(2 * num_layers)).

_INIT = nn.initializers.normal(stddev=0.02)


def _residual_init(config: TransformerConfig):
    return nn.initializers.normal(stddev=0.02 / math.sqrt(2 * config.num_layers))


def layer_norm(config: TransformerConfig, name: str | None = None) -> nn.LayerNorm:
    """A LayerNorm with the config's epsilon, bias and dtype (its vectors declared whole)."""
    return nn.LayerNorm(epsilon=config.layer_norm_epsilon, use_bias=config.use_bias, dtype=config.dtype,
                        scale_init=declared(nn.initializers.ones, *WHOLE),
                        bias_init=declared(nn.initializers.zeros, *WHOLE), name=name)


def dense(config: TransformerConfig, features: int, name: str, kernel_init=_INIT, use_bias=None,
          kernel_axes: tuple | None = None) -> nn.Dense:
    """A Dense layer computing in `config.dtype` (float32: flax's own; else `bf16.dense_dot_general`).

    kernel_axes: the kernel's logical axis names (in, out); None declares none (lab's size-based
    default places it). The bias is declared whole.
    """
    low_precision = jnp.dtype(config.dtype) != jnp.float32
    return nn.Dense(features, use_bias=config.use_bias if use_bias is None else use_bias, dtype=config.dtype,
                    kernel_init=kernel_init if kernel_axes is None else declared(kernel_init, *kernel_axes),
                    bias_init=declared(nn.initializers.zeros, *WHOLE), name=name,
                    dot_general=bf16.dense_dot_general if low_precision else None)


def _rows(layer, x_BxLxD: Array) -> Array:
    """Applies `layer` to x as one (B*L)xD matrix, then restores BxL.

    XLA:CPU runs a 2-D matmul (and its two backward matmuls) through its fast GEMM; the same
    Dense on a BxLxD input contracts the kernel gradient over two axes, a slower path.
    """
    y = layer(x_BxLxD.reshape(-1, x_BxLxD.shape[-1]))
    return y.reshape(x_BxLxD.shape[:-1] + y.shape[-1:])


def check_length(config: TransformerConfig, length: int):
    """Raises ValueError if a sequence of `length` tokens exceeds config.max_len."""
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
        self.token = nn.Embed(c.vocab_size, c.width, embedding_init=declared(_INIT, VOCAB, EMBED), dtype=c.dtype)
        self.position = self.param("position", declared(_INIT, LENGTH, EMBED), (c.max_len, c.width))

    def __call__(self, tokens_BxL: Array, offset: Array | None = None) -> Array:
        """int tokens_BxL -> x_BxLxD at positions offset + [0, L) (offset None: static 0)."""
        c = self.config
        length = tokens_BxL.shape[1]
        x_BxLxD = self.token(tokens_BxL)
        if offset is None:
            pos_LxD = self.position[:length]
        else:
            pos_LxD = lax.dynamic_slice_in_dim(self.position, offset, length, axis=0)
        return x_BxLxD + pos_LxD.astype(c.dtype)

    def attend(self, x_BxLxD: Array) -> Array:
        """Tied head: x_BxLxD -> float32 logits_BxLxV = x @ token_embedding.T."""
        dtype = self.config.dtype
        if jnp.dtype(dtype) == jnp.float32:
            return _rows(self.token.attend, x_BxLxD).astype(jnp.float32)
        x_NxD = x_BxLxD.reshape(-1, x_BxLxD.shape[-1]).astype(dtype)
        logits_NxV = bf16.logits(x_NxD, self.token.embedding.astype(dtype))
        return logits_NxV.reshape(x_BxLxD.shape[:-1] + logits_NxV.shape[-1:])


def _attend(q_BxLxHxK: Array, k_BxTxHxK: Array, v_BxTxHxK: Array, mask: Array) -> Array:
    """Softmax attention; `mask` (bool, True = may attend) broadcasts to BxHxLxT. -> BxLxHxK."""
    dtype = q_BxLxHxK.dtype
    q_BxLxHxK = q_BxLxHxK * jnp.asarray(1.0 / math.sqrt(q_BxLxHxK.shape[-1]), dtype)
    if dtype == jnp.float32:
        s_BxHxLxT = jnp.einsum("blhk,bthk->bhlt", q_BxLxHxK, k_BxTxHxK)
    else:
        s_BxHxLxT = bf16.attention_scores(q_BxLxHxK, k_BxTxHxK)
    s_BxHxLxT = jnp.where(mask, s_BxHxLxT, jnp.finfo(jnp.float32).min)
    p_BxHxLxT = jax.nn.softmax(s_BxHxLxT, axis=-1).astype(dtype)
    if dtype == jnp.float32:
        return jnp.einsum("bhlt,bthk->blhk", p_BxHxLxT, v_BxTxHxK)
    return bf16.attention_values(p_BxHxLxT, v_BxTxHxK).astype(dtype)


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
        qkv = dense(c, 3 * c.width, "qkv", kernel_axes=(EMBED, QKV))
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
        out = dense(c, c.width, "out", kernel_init=_residual_init(c), kernel_axes=(HEADS, EMBED))
        return _rows(out, y_BxLxHxK.reshape(b, length, c.width))


class Mlp(nn.Module):
    """GELU MLP: `fc` Dense (D -> F), GELU, `proj` Dense (F -> D, residual-scaled init)."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x_BxLxD: Array) -> Array:
        """x_BxLxD -> y_BxLxD."""
        c = self.config
        h_BxLxF = _rows(dense(c, c.mlp_width, "fc", kernel_axes=(EMBED, MLP)), x_BxLxD)
        h_BxLxF = nn.gelu(h_BxLxF, approximate=True)
        proj = dense(c, c.width, "proj", kernel_init=_residual_init(c), kernel_axes=(MLP, EMBED))
        return _rows(proj, h_BxLxF)


class Block(nn.Module):
    """Pre-LN block: x + Dropout(Attn(LN(x))), then x + Dropout(MLP(LN(x))).

    Params: `ln_1`, `attn` (Attention), `ln_2`, `mlp` (Mlp).
    """

    config: TransformerConfig

    @nn.compact
    def __call__(self, x_BxLxD: Array, mask: Array, train: bool,
                 decode_index: Array | None = None) -> Array:
        """x_BxLxD -> x_BxLxD; `mask` and `decode_index` as in `Attention`. `train` may be
        positional: `nn.remat` (config.remat) takes it as a static argument, by position."""
        c = self.config
        drop = nn.Dropout(c.dropout_rate, deterministic=not train)
        h_BxLxD = Attention(c, name="attn")(layer_norm(c, "ln_1")(x_BxLxD), mask, decode_index)
        x_BxLxD = x_BxLxD + drop(h_BxLxD)
        h_BxLxD = Mlp(c, name="mlp")(layer_norm(c, "ln_2")(x_BxLxD))
        return x_BxLxD + drop(h_BxLxD)


def _after(x: Array, g: Array) -> Array:
    """x, bit for bit, but computed after g (x and g of one shape): a data dependence that XLA
    keeps, since it does not know that no number is both NaN and finite."""
    return jnp.where(jnp.isnan(g) & jnp.isfinite(g), jnp.zeros_like(x), x)


def _remat_call(block, x_BxLxD, mask, train):
    return block(x_BxLxD, mask, train)


def _remat_fwd(block, x_BxLxD, mask, train):
    # Under nn.remat the vjp keeps only the block's inputs (params, x, mask, rng keys).
    return nn.vjp(lambda b, x: b(x, mask, train), block, x_BxLxD)


def _remat_bwd(train, vjp_fn, g_BxLxD):
    # The recomputation waits for this block's output gradient. Without that, XLA:CPU (which
    # drops jax.checkpoint's optimization barriers before it schedules) runs every block's
    # recomputation early, with the forward pass, and keeps all activations live: no saving.
    vjp_fn = jax.tree.map(lambda a: _after(a, g_BxLxD) if getattr(a, "shape", None) == g_BxLxD.shape else a, vjp_fn)
    params_t, x_t = vjp_fn(g_BxLxD)
    return params_t, x_t, None  # no gradient for the boolean mask


# A rematerialised block's call: `nn.remat`'s recomputation, started only in the backward pass.
_remat_block = nn.custom_vjp(_remat_call, forward_fn=_remat_fwd, backward_fn=_remat_bwd,
                             nondiff_argnums=(3,))


class Backbone(nn.Module):
    """Embeddings, dropout, the blocks and the final LayerNorm: the trunk of GPT and Encoder.

    Params: `embed` (Embedder), `block_0` ... `block_{N-1}` (Block), `ln_f`. The submodules live
    in `setup` so that a parent can call both the model and its tied head `attend`.

    `config.remat`: every block is `nn.remat(Block)` under the same explicit name (the same
    tree), called through `_remat_block` when differentiated: the backward pass recomputes each
    block's activations from its input, in the same order of operations (the same numbers).
    """

    config: TransformerConfig

    def setup(self):
        c = self.config
        self.embed = Embedder(c)
        self.drop = nn.Dropout(c.dropout_rate)
        # static_argnums counts `self`: 3 is `train` (a Python bool: dropout on or off).
        block = nn.remat(Block, static_argnums=(3,)) if c.remat else Block
        self.blocks = [block(c, name=f"block_{i}") for i in range(c.num_layers)]
        self.ln_f = layer_norm(c)

    def _hidden(self, tokens_BxL: Array, mask: Array, *, train: bool,
                offset: Array | None = None) -> Array:
        """tokens_BxL -> hidden_BxLxD after the final LayerNorm (offset: decode position)."""
        x_BxLxD = self.drop(self.embed(tokens_BxL, offset), deterministic=not train)
        for block in self.blocks:
            if self.config.remat and offset is None:
                x_BxLxD = _remat_block(block, x_BxLxD, mask, train)
            else:  # positional: nn.remat's static_argnums
                x_BxLxD = block(x_BxLxD, mask, train, offset)
        return self.ln_f(x_BxLxD)

    def attend(self, x_BxLxD: Array) -> Array:
        """Tied head over the token embedding: x_BxLxD -> float32 logits_BxLxV."""
        return self.embed.attend(x_BxLxD)

# ------------------------------------------------------------------------------------------------
# GPT.


class GPT(Backbone):
    """Decoder-only causal language model with output logits tied to the token embedding.

    Params: `embed`, `block_0` ... `block_{N-1}`, `ln_f`; with mlp_ratio 4 that is
    V*D + T*D + N * (12 D^2 + 13 D) + 2 D parameters.
    """

    @nn.compact
    def __call__(self, tokens_BxL: Array, *, train: bool, decode: bool = False) -> Array:
        """int32 tokens_BxL -> float32 logits_BxLxV (next-token logits at every position).

        decode=True: incremental decoding through the "cache" collection (module docstring):
        needs `mutable=["cache"]` and a cache from `lab.models.decoding.init_cache`. The L tokens
        are placed at positions [index, index + L); overrunning config.max_len is not checked here
        (it is in `lab.models.decoding.generate`).
        """
        c = self.config
        length = tokens_BxL.shape[1]
        check_length(c, length)
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
