"""Transformer encoder models: Encoder, MaskedLM (BERT-style pretraining) and EncoderClassifier,
with `pool`, BERT's `mask_tokens` and the encoder token ids.

They are built of `lab.models.transformer`'s config and blocks (an Encoder's parameter tree is
exactly a GPT's) and called as every model there:
`model.apply({"params": params}, tokens_BxL, mask_BxL, train=..., rngs={"dropout": key})`.
Shape suffixes as in `lab.models.transformer`: B batch, L sequence length, D width, V vocab,
C classes.

Token ids. On a vocabulary of N characters the encoder models reserve two more ids than GPT,
see `encoder_token_ids(N)`: characters are ids 0..N-1, PAD = N,
MASK = N + 1, and `config.vocab_size = N + 2`. What makes the models ignore padding is
`mask_BxL` (1 = real token, 0 = pad), so the ids written at pad positions never matter; PAD is
only the conventional filler. `mask_tokens(..., mask_id=N + 1, vocab_size=N)` draws its random
replacement tokens from the N characters only, never PAD or MASK. A `MaskedLM`'s
`params["encoder"]` loads unchanged into an `EncoderClassifier` built on the same config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lab.models import transformer
from lab.models.transformer import TransformerConfig

Array = jax.Array


# ------------------------------------------------------------------------------------------------
# Token ids.


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


class Encoder(transformer.Backbone):
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
        transformer.check_length(self.config, tokens_BxL.shape[1])
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
        dense = transformer.dense(c, c.width, "head_dense", use_bias=True)
        h_BxLxD = transformer.layer_norm(c, "head_ln")(nn.gelu(dense(hidden_BxLxD), approximate=True))
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
        # The heads' biases are declared whole; their kernels take lab's size-based placement.
        whole = transformer.declared(nn.initializers.zeros, *transformer.WHOLE)
        h_BxF = nn.relu(nn.Dense(self.hidden, bias_init=whole, name="head_hidden")(pooled_BxD))
        h_BxF = nn.Dropout(self.head_dropout, deterministic=not train)(h_BxF)
        return {label: nn.Dense(n, bias_init=whole, name=f"head_{label}")(h_BxF).astype(jnp.float32)
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
