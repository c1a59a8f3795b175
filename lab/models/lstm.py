"""LSTM family: LSTMLayer, LSTM (stacked, optionally bidirectional), LSTMRegressor, Seq2Seq.

Every model is a flax.linen module and a pure function of its parameters: call it only as
`model.apply({"params": params}, ...)`. There is no dropout and no other randomness, so no rngs.

The cell (`lstm_cell`), Keras `LSTM(activation=...)` semantics with a fused gate layout:
  z_t = x_t @ W_ih + b + h_{t-1} @ W_hh                  (B x 4H; columns [i | f | g | o])
  i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o)     (input, forget, output gates)
  g = activation(z_g)                                    (candidate)
  c_t = f * c_{t-1} + i * g,   h_t = o * activation(c_t)
with `activation` 'tanh' (the usual LSTM) or 'relu' (the forecaster of the article); the
recurrent activation is always sigmoid. The gate order [i | f | g | o] is PyTorch's and Keras's.
Speed: `LSTMLayer` computes x @ W_ih + b for ALL time steps as one (T*B x F) @ (F x 4H) matmul
before the scan; the scanned step does only h @ W_hh (one fused H x 4H matmul) and elementwise
math. The scan is one `lax.scan` over time (no Python loop over steps).

Initialisers (Keras's LSTM defaults): W_ih glorot_uniform over the fused F x 4H matrix, W_hh
orthogonal over the fused H x 4H matrix, b zero except the forget-gate slice b[H:2H] = 1
(Keras `unit_forget_bias`). Seq2Seq's embedding and Dense layers use flax's defaults.

Carries are `(c_BxH, h_BxH)` pairs (flax's LSTMCell order: cell state first).

Sequence lengths. `seq_lengths_B` (int, each in [0, T]; None = all T steps are real) marks
positions t >= seq_lengths[b] of row b as padding. Padding never matters: padded inputs are
zeroed before the projection (so any values, even NaN, are fine), the carry is frozen from a
row's real end on (so the returned carry is the one at that end; a length-0 row returns its
initial carry), and outputs at padded positions are exactly 0. `reverse=True` runs backwards
over the real part of each row only (from position seq_lengths[b] - 1 down to 0; its final
carry is the one after position 0), and its outputs are returned in input order.

Shape suffixes (as in nanodo): B batch, T time steps (decoder / target length), S source length,
F input features, E embedding width, H hidden width (per direction), A additive-attention
width, V vocab, N new tokens.

Seq2Seq token ids live in `Seq2SeqConfig` (pad_id, bos_id, eos_id); ids at padded source
positions never matter (they must still be valid ids in [0, vocab_size)).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lab.models import layers

Array = jax.Array
Carry = tuple[Array, Array]  # (c_BxH, h_BxH)

ACTIVATIONS = ("tanh", "relu")  # The `activation` names every module here accepts.
ATTENTIONS = ("none", "additive", "dot")  # Seq2SeqConfig.attention's names.
_ACTIVATION_FNS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def _check_activation(activation: str):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


# ------------------------------------------------------------------------------------------------
# The cell and one layer.


def _bias_init(features: int):
    """Zeros over the fused 4H bias, except 1 on the forget-gate slice [H:2H] (Keras)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.zeros(shape, dtype).at[features:2 * features].set(1.0)

    return init


def lstm_cell(carry: Carry, xw_Bx4H: Array, kernel_hh_Hx4H: Array, activation: str = "tanh"
              ) -> tuple[Carry, Array]:
    """One LSTM step on an already projected input: ((c, h), xw_Bx4H) -> ((c', h'), h'_BxH).

    xw_Bx4H = x_t @ W_ih + b (columns [i | f | g | o]); the step adds h @ kernel_hh_Hx4H (one
    fused matmul for the four gates) and applies the gate math of the module docstring.
    """
    c_BxH, h_BxH = carry
    act = _ACTIVATION_FNS[activation]
    z_Bx4H = xw_Bx4H + jnp.dot(h_BxH, kernel_hh_Hx4H)
    zi, zf, zg, zo = jnp.split(z_Bx4H, 4, axis=-1)
    c_BxH = jax.nn.sigmoid(zf) * c_BxH + jax.nn.sigmoid(zi) * act(zg)
    h_BxH = jax.nn.sigmoid(zo) * act(c_BxH)
    return (c_BxH, h_BxH), h_BxH


def _reverse_within_lengths(x_BxTx: Array, lengths_B: Array | None) -> Array:
    """Reverses each row's first lengths[b] steps along axis 1; padding stays where it is.

    Its own inverse. lengths None: a plain reversal of the whole time axis.
    """
    if lengths_B is None:
        return jnp.flip(x_BxTx, axis=1)
    t_1xT = jnp.arange(x_BxTx.shape[1])[None, :]
    len_Bx1 = lengths_B[:, None]
    src_BxT = jnp.where(t_1xT < len_Bx1, len_Bx1 - 1 - t_1xT, t_1xT)
    src_BxT = src_BxT.reshape(src_BxT.shape + (1,) * (x_BxTx.ndim - 2))
    return jnp.take_along_axis(x_BxTx, src_BxT, axis=1)


class LSTMLayer(nn.Module):
    """One LSTM layer scanned over time (see the module docstring for the gate math).

    Attributes:
      features: H, the hidden width.
      activation: 'tanh' or 'relu' (candidate and cell-output activation; gates use sigmoid).
      reverse: run from each row's real end back to position 0 (outputs in input order).
      unroll: `lax.scan`'s unroll factor (steps per loop iteration; same results).

    Params: `ih` (Dense: `kernel` F x 4H, `bias` 4H with the forget slice at 1) and
    `kernel_hh` (H x 4H); gate columns [i | f | g | o].

    A plain `lax.scan` over parameters read beforehand, rather than `nn.RNN`: with seq_lengths
    the step freezes the carry itself (a `where`), so no per-step carry history is kept for a
    final gather, padded steps never grow the state (NaN-safe gradients), and a length-0 row
    keeps its initial carry. Direction and output order are nn.RNN's reverse + keep_order.
    """

    features: int
    activation: str = "tanh"
    reverse: bool = False
    unroll: int = 1

    def __post_init__(self):
        _check_activation(self.activation)
        if self.features < 1:
            raise ValueError(f"features must be >= 1, got {self.features}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x_BxTxF: Array, seq_lengths_B: Array | None = None,
                 initial_carry: Carry | None = None) -> tuple[Carry, Array]:
        """x_BxTxF -> (carry (c_BxH, h_BxH) at each row's real end, outputs_BxTxH).

        seq_lengths_B: int lengths (None: all T steps real); outputs are 0 at padded positions.
        initial_carry: (c_BxH, h_BxH); None = zeros.
        """
        b, t, f = x_BxTxF.shape
        hidden = self.features
        x_BxTxF = x_BxTxF.astype(jnp.float32)
        if seq_lengths_B is not None:
            seq_lengths_B = jnp.asarray(seq_lengths_B, jnp.int32)
            real_BxT = jnp.arange(t)[None, :] < seq_lengths_B[:, None]
            x_BxTxF = jnp.where(real_BxT[..., None], x_BxTxF, 0.0)
        if self.reverse:
            x_BxTxF = _reverse_within_lengths(x_BxTxF, seq_lengths_B)

        # The input projection of every step at once, time-major for the scan.
        ih = nn.Dense(4 * hidden, kernel_init=nn.initializers.glorot_uniform(),
                      bias_init=_bias_init(hidden), name="ih")
        x_TxBxF = jnp.swapaxes(x_BxTxF, 0, 1)
        xw_TxBx4H = ih(x_TxBxF.reshape(t * b, f)).reshape(t, b, 4 * hidden)
        kernel_hh_Hx4H = self.param("kernel_hh", nn.initializers.orthogonal(),
                                    (hidden, 4 * hidden), jnp.float32)

        if initial_carry is None:
            zeros_BxH = jnp.zeros((b, hidden), jnp.float32)
            initial_carry = (zeros_BxH, zeros_BxH)
        step = functools.partial(lstm_cell, kernel_hh_Hx4H=kernel_hh_Hx4H,
                                 activation=self.activation)
        if seq_lengths_B is None:
            carry, y_TxBxH = lax.scan(step, initial_carry, xw_TxBx4H, unroll=self.unroll)
        else:
            # After a row's real end the carry freezes and its outputs are 0. (Reversed rows have
            # their padding at the end too.)
            def masked_step(carry, inputs):
                xw_Bx4H, real_Bx1 = inputs
                new_carry, h_BxH = step(carry, xw_Bx4H)
                carry = jax.tree.map(lambda new, old: jnp.where(real_Bx1, new, old),
                                     new_carry, carry)
                return carry, jnp.where(real_Bx1, h_BxH, 0.0)

            real_TxBx1 = jnp.swapaxes(real_BxT, 0, 1)[..., None]
            carry, y_TxBxH = lax.scan(masked_step, initial_carry, (xw_TxBx4H, real_TxBx1),
                                      unroll=self.unroll)
        y_BxTxH = jnp.swapaxes(y_TxBxH, 0, 1)
        if self.reverse:
            y_BxTxH = _reverse_within_lengths(y_BxTxH, seq_lengths_B)
        return carry, y_BxTxH


# ------------------------------------------------------------------------------------------------
# Stacks and the forecaster.


class LSTM(nn.Module):
    """A stack of `num_layers` LSTMLayers; each layer's outputs are the next layer's inputs.

    Attributes:
      features: H per direction.
      num_layers: stacked layers.
      activation: 'tanh' or 'relu', for every layer.
      bidirectional: each layer is a forward and a reverse LSTMLayer over the same input, their
        outputs concatenated [forward | reverse] -> B x T x 2H.
      unroll: `lax.scan` unroll factor of every layer.

    Params: `layer_{i}` per layer; bidirectional: `layer_{i}_fwd` and `layer_{i}_bwd`.
    Carry layout (`carries` and `initial_carries`): a flat tuple of (c_BxH, h_BxH) pairs, one
    per layer, bottom first; bidirectional: two per layer, (l0 fwd, l0 bwd, l1 fwd, l1 bwd, ...),
    i.e. index 2 * layer + direction. A forward carry is the one at the row's real end; a
    reverse carry the one after it has run back to position 0.
    """

    features: int
    num_layers: int = 1
    activation: str = "tanh"
    bidirectional: bool = False
    unroll: int = 1

    def __post_init__(self):
        _check_activation(self.activation)
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        super().__post_init__()

    @property
    def num_carries(self) -> int:
        """Length of the carries tuple: num_layers, doubled when bidirectional."""
        return self.num_layers * (2 if self.bidirectional else 1)

    @nn.compact
    def __call__(self, x_BxTxF: Array, seq_lengths: Array | None = None,
                 initial_carries: tuple[Carry, ...] | None = None
                 ) -> tuple[tuple[Carry, ...], Array]:
        """x_BxTxF -> (carries, outputs_BxTxH), outputs B x T x 2H when bidirectional.

        seq_lengths: int B (None: all real); outputs at padded positions are 0.
        initial_carries: None (zeros) or a tuple in the carry layout of the class docstring.
        """
        if initial_carries is not None and len(initial_carries) != self.num_carries:
            raise ValueError(f"expected {self.num_carries} initial carries, "
                             f"got {len(initial_carries)}")
        directions = (("fwd", False), ("bwd", True)) if self.bidirectional else (("", False),)
        carries, h_BxTxD = [], x_BxTxF
        for layer in range(self.num_layers):
            outputs = []
            for d, (suffix, reverse) in enumerate(directions):
                name = f"layer_{layer}_{suffix}" if suffix else f"layer_{layer}"
                init = None if initial_carries is None else initial_carries[
                    layer * len(directions) + d]
                carry, y_BxTxH = LSTMLayer(self.features, self.activation, reverse=reverse,
                                           unroll=self.unroll, name=name)(
                                               h_BxTxD, seq_lengths, init)
                carries.append(carry)
                outputs.append(y_BxTxH)
            h_BxTxD = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)
        return tuple(carries), h_BxTxD


class LSTMRegressor(nn.Module):
    """The article's forecaster, Keras `LSTM(units=50, activation='relu')` then `Dense(1)`.

    x_BxTxF -> LSTM -> the last layer's final h (at each row's real end) -> Dense(1) -> (B,).
    Params: `lstm` (LSTM), `head` (Dense H -> 1).
    """

    features: int = 50
    num_layers: int = 1
    activation: str = "relu"
    unroll: int = 1

    @nn.compact
    def __call__(self, x_BxTxF: Array, seq_lengths_B: Array | None = None) -> Array:
        """float x_BxTxF (seq_lengths_B: int B or None) -> float32 predictions_B."""
        carries, _ = LSTM(self.features, self.num_layers, self.activation, unroll=self.unroll,
                          name="lstm")(x_BxTxF, seq_lengths_B)
        _, h_BxH = carries[-1]
        return nn.Dense(1, name="head")(h_BxH)[:, 0]


# ------------------------------------------------------------------------------------------------
# Sequence to sequence.


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig:
    """Hyperparameters of `Seq2Seq`. Frozen and hashable (a valid jit static argument).

    `tiny(vocab_size)` gives a test-sized config (embed 8, hidden 16, 1 layer).
    """

    vocab_size: int  # V: token ids (embedding rows, logits), the special ids included.
    embed_dim: int  # E: the token embedding shared by encoder and decoder.
    hidden: int  # H: LSTM width of encoder and decoder (they must match: carries are handed on).
    num_layers: int = 1  # Layers of the encoder and of the decoder (unidirectional both).
    activation: str = "tanh"  # 'tanh' or 'relu', in every LSTM layer.
    attention: str = "none"  # 'none', 'additive' (Bahdanau score) or 'dot' (Luong 'general').
    attention_dim: int = 64  # A: width of the additive score's tanh layer (unused otherwise).
    use_encoder: bool = True  # False: a decoder-only LSTM LM that never sees the source.
    pad_id: int = 0  # Filler after a sequence's end (generate writes it after EOS).
    bos_id: int = 1  # The decoder's first input.
    eos_id: int = 2  # Ends a generated sequence.

    def __post_init__(self):
        for name in ("vocab_size", "embed_dim", "hidden", "num_layers", "attention_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        _check_activation(self.activation)
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if not self.use_encoder and self.attention != "none":
            raise ValueError(f"use_encoder=False has no source to attend to: set "
                             f"attention='none' (got {self.attention!r})")
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name}={getattr(self, name)} is not a token id in "
                                 f"[0, vocab_size={self.vocab_size})")
        if self.eos_id in (self.pad_id, self.bos_id):
            raise ValueError(f"eos_id={self.eos_id} must differ from pad_id={self.pad_id} and "
                             f"bos_id={self.bos_id}")

    @classmethod
    def tiny(cls, vocab_size: int = 11, **overrides) -> Seq2SeqConfig:
        """For tests: embed_dim 8, hidden 16, 1 layer, attention_dim 8."""
        defaults = dict(embed_dim=8, hidden=16, num_layers=1, attention_dim=8)
        return cls(vocab_size=vocab_size, **{**defaults, **overrides})


class Seq2Seq(nn.Module):
    """LSTM encoder-decoder with optional Luong-style attention on top of the decoder LSTM.

    src_BxS -> embed -> encoder LSTM -> memory_BxSxH (0 at padded positions) and carries at
    each source's real end. tgt_in_BxT (bos then the target shifted right) -> the same embedding
    -> decoder LSTM started from the encoder's carries -> h_BxTxH. Then per decoder position t:
      attention 'none':     logits_t = head(h_t);
      'additive':           score_ts = v . tanh(W_q h_t + W_k s_s + b);
      'dot' (Luong general): score_ts = h_t . (W s_s);
      with attention: a_t = softmax over real source positions (float32; exactly 0 on padded
      ones), ctx_t = sum_s a_ts s_s, o_t = tanh(W_c [h_t; ctx_t]), logits_t = head(o_t).
    The decoder's recurrence does not see the attention output (no input feeding), so teacher
    forcing is one scan plus parallel math. use_encoder=False: no encoder, zero initial carries,
    no attention; the source arguments are read for their shape only.

    Params: `embed` (V x E), `encoder` (LSTM; only with use_encoder), `decoder` (LSTM), `head`
    (Dense -> V); 'additive': `attn_query` (H -> A, no bias), `attn_key` (H -> A),
    `attn_score` (A -> 1, no bias), `attn_out` (2H -> H, no bias); 'dot': `attn_key` (H -> H,
    no bias), `attn_out`. Attention outputs are all zeros when config.attention == 'none'.
    """

    config: Seq2SeqConfig

    def setup(self):
        c = self.config
        self.embed = nn.Embed(c.vocab_size, c.embed_dim)
        if c.use_encoder:
            self.encoder = LSTM(c.hidden, c.num_layers, c.activation)
        self.decoder = LSTM(c.hidden, c.num_layers, c.activation)
        if c.attention == "additive":
            self.attn_query = nn.Dense(c.attention_dim, use_bias=False)
            self.attn_key = nn.Dense(c.attention_dim)
            self.attn_score = nn.Dense(1, use_bias=False)
        elif c.attention == "dot":
            self.attn_key = nn.Dense(c.hidden, use_bias=False)
        if c.attention != "none":
            self.attn_out = nn.Dense(c.hidden, use_bias=False)
        self.head = nn.Dense(c.vocab_size)

    def _zero_carries(self, batch: int) -> tuple[Carry, ...]:
        zeros_BxH = jnp.zeros((batch, self.config.hidden), jnp.float32)
        return tuple((zeros_BxH, zeros_BxH) for _ in range(self.config.num_layers))

    def encode(self, src_BxS: Array, src_len_B: Array) -> tuple[Array, tuple[Carry, ...]]:
        """int src_BxS, int src_len_B -> (memory_BxSxH, carries: one (c_BxH, h_BxH) per layer).

        Carries are at each source's real end; memory is 0 at padded positions. With
        use_encoder=False: zero memory and zero carries.
        """
        c = self.config
        b, s = src_BxS.shape
        if not c.use_encoder:
            return jnp.zeros((b, s, c.hidden), jnp.float32), self._zero_carries(b)
        carries, memory_BxSxH = self.encoder(self.embed(src_BxS), src_len_B)
        return memory_BxSxH, carries

    def _readout(self, h_BxTxH: Array, memory_BxSxH: Array, src_len_B: Array
                 ) -> tuple[Array, Array]:
        """Decoder states -> (float32 logits_BxTxV, float32 attention_BxTxS)."""
        c = self.config
        b, t, _ = h_BxTxH.shape
        s = memory_BxSxH.shape[1]
        if c.attention == "none":
            return self.head(h_BxTxH), jnp.zeros((b, t, s), jnp.float32)
        if c.attention == "additive":
            q_BxTx1xA = self.attn_query(h_BxTxH)[:, :, None, :]
            k_Bx1xSxA = self.attn_key(memory_BxSxH)[:, None, :, :]
            scores_BxTxS = self.attn_score(jnp.tanh(q_BxTx1xA + k_Bx1xSxA))[..., 0]
        else:
            scores_BxTxS = jnp.einsum("bth,bsh->bts", h_BxTxH, self.attn_key(memory_BxSxH))
        real_Bx1xS = (jnp.arange(s)[None, :] < jnp.asarray(src_len_B)[:, None])[:, None, :]
        scores_BxTxS = jnp.where(real_Bx1xS, scores_BxTxS.astype(jnp.float32),
                                 jnp.finfo(jnp.float32).min)
        attn_BxTxS = jnp.where(real_Bx1xS, jax.nn.softmax(scores_BxTxS, axis=-1), 0.0)
        ctx_BxTxH = jnp.einsum("bts,bsh->bth", attn_BxTxS, memory_BxSxH)
        o_BxTxH = jnp.tanh(self.attn_out(jnp.concatenate([h_BxTxH, ctx_BxTxH], axis=-1)))
        return self.head(o_BxTxH), attn_BxTxS

    def __call__(self, src_BxS: Array, src_len_B: Array, tgt_in_BxT: Array, *,
                 return_attention: bool = False) -> Array | tuple[Array, Array]:
        """Teacher forcing: (src_BxS, src_len_B, tgt_in_BxT) -> float32 logits_BxTxV.

        logits[:, t] predicts the token after tgt_in[:, :t + 1]. return_attention=True:
        (logits_BxTxV, attention_BxTxS). The decoder needs no target lengths: position t never
        depends on later ones, so logits at padded target positions are simply to be ignored.
        """
        memory_BxSxH, carries = self.encode(src_BxS, src_len_B)
        _, h_BxTxH = self.decoder(self.embed(tgt_in_BxT), initial_carries=carries)
        logits_BxTxV, attn_BxTxS = self._readout(h_BxTxH, memory_BxSxH, src_len_B)
        return (logits_BxTxV, attn_BxTxS) if return_attention else logits_BxTxV

    def decode_step(self, carries: tuple[Carry, ...], token_B: Array, memory_BxSxH: Array,
                    src_len_B: Array) -> tuple[tuple[Carry, ...], Array, Array]:
        """One decoder step -> (carries, float32 logits_BxV, float32 attention_BxS).

        carries: the decoder's, one (c_BxH, h_BxH) per layer (from `encode` at the start);
        token_B: the current input token; memory_BxSxH and src_len_B: from `encode`. The same
        computation as one position of `__call__`.
        """
        x_Bx1xE = self.embed(jnp.asarray(token_B)[:, None])
        carries, h_Bx1xH = self.decoder(x_Bx1xE, initial_carries=carries)
        logits_Bx1xV, attn_Bx1xS = self._readout(h_Bx1xH, memory_BxSxH, src_len_B)
        return carries, logits_Bx1xV[:, 0], attn_Bx1xS[:, 0]


@functools.partial(jax.jit, static_argnums=(0, 4))
def _generate(config: Seq2SeqConfig, params, src_BxS: Array, src_len_B: Array,
              max_new_tokens: int, rng: Array, temperature: Array, top_k: Array
              ) -> tuple[Array, Array, Array]:
    model = Seq2Seq(config)
    variables = {"params": params}
    memory_BxSxH, carries = model.apply(variables, src_BxS, src_len_B, method=Seq2Seq.encode)
    b = src_BxS.shape[0]

    def step(state, key):
        carries, token_B, done_B, length_B = state
        carries, logits_BxV, attn_BxS = model.apply(
            variables, carries, token_B, memory_BxSxH, src_len_B, method=Seq2Seq.decode_step)
        sampled_B = layers.sample_logits(logits_BxV, key, temperature, top_k)
        token_B = jnp.where(done_B, jnp.int32(config.pad_id), sampled_B)
        attn_BxS = jnp.where(done_B[:, None], 0.0, attn_BxS)
        is_eos_B = ~done_B & (sampled_B == config.eos_id)
        length_B = length_B + (~done_B & ~is_eos_B).astype(jnp.int32)
        return (carries, token_B, done_B | is_eos_B, length_B), (token_B, attn_BxS)

    state = (carries, jnp.full((b,), config.bos_id, jnp.int32), jnp.zeros((b,), jnp.bool_),
             jnp.zeros((b,), jnp.int32))
    (_, _, _, lengths_B), (tokens_NxB, attn_NxBxS) = lax.scan(
        step, state, jax.random.split(rng, max_new_tokens))
    return tokens_NxB.T, lengths_B, jnp.swapaxes(attn_NxBxS, 0, 1)


def generate_traced(config: Seq2SeqConfig, params, src_BxS: Array, src_len_B: Array, max_new_tokens: int,
                    rng: Array, temperature: Array, top_k: Array) -> tuple[Array, Array, Array]:
    """`generate` with temperature (float32 scalar) and top_k (int32 scalar in [1, V]) as arrays
    and without its Python checks: the function `lab.export` lowers (batch symbolic). Returns what
    `generate` returns for the same arguments."""
    return _generate(config, params, src_BxS, src_len_B, max_new_tokens, rng, temperature, top_k)


def generate(model_or_config: Seq2Seq | Seq2SeqConfig, params, src_BxS: Array,
             src_len_B: Array, max_new_tokens: int, rng: Array, temperature: float = 1.0,
             top_k: int | None = None) -> tuple[Array, Array, Array]:
    """Decode max_new_tokens tokens per source -> (tokens_BxN int32, lengths_B int32,
    attention_BxNxS float32).

    Encodes once, then one jitted `lax.scan` of `Seq2Seq.decode_step` from bos_id; step i uses
    `jax.random.split(rng, N)[i]`, so a given rng always gives the same tokens.
    temperature == 0: greedy argmax; else sample softmax(logits / temperature), among the top_k
    largest logits only when top_k is given (ties at the k-th are kept). After a row emits
    eos_id (kept in tokens), its later tokens are pad_id and their attention rows 0; lengths
    counts the tokens before the EOS (N when there is none). Compiles once per
    (config, B, S, N); temperature and top_k are traced, so changing them does not recompile.
    """
    config = model_or_config.config if isinstance(model_or_config, Seq2Seq) else model_or_config
    src_BxS = jnp.asarray(src_BxS, jnp.int32)
    if src_BxS.ndim != 2:
        raise ValueError(f"src must be int BxS, got shape {src_BxS.shape}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be None or >= 1, got {top_k}")
    k = config.vocab_size if top_k is None else min(int(top_k), config.vocab_size)
    return _generate(config, params, src_BxS, jnp.asarray(src_len_B, jnp.int32),
                     int(max_new_tokens), rng, jnp.float32(temperature), jnp.int32(k))
