"""bfloat16 matmuls that XLA:CPU runs on its bf16 kernels (AVX512_BF16, AMX), forward and backward.

XLA:CPU runs a bf16 matmul on those kernels only when it asks for a float32 result and its
operands are laid out [batch.., M, K] x [batch.., K, N] (the kernel may also be K-major); any
other bf16 matmul it upcasts to float32, and a bf16 x bf16 -> f32 dot whose operands it lays out
otherwise fails to run. flax's bf16 Dense, a bf16 einsum and JAX's transpose of a dot ask for
bf16 results, so these functions ask for float32 ones, write their backward passes out, and copy
each operand that needs another layout into it (`_laid_out`). The Transformer uses them when
its `dtype` is not float32 (`lab.models.transformer.dense`, `_attend`, the tied head); float32
models never do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


@jax.custom_vjp
def dot_accumulating_f32(x_NxD: Array, w_DxF: Array) -> Array:
    """x_NxD @ w_DxF for bf16 operands: products accumulated in float32, then rounded to bf16.

    Backward: dx = g @ w^T (the kernel read K-major), dw = x^T @ g with x^T laid out.
    """
    return lax.dot(x_NxD, w_DxF, preferred_element_type=jnp.float32).astype(x_NxD.dtype)


def _dot_accumulating_f32_fwd(x_NxD, w_DxF):
    return dot_accumulating_f32(x_NxD, w_DxF), (x_NxD, w_DxF)


def _dot_accumulating_f32_bwd(residuals, g_NxF):
    x_NxD, w_DxF = residuals
    dx_NxD = lax.dot_general(g_NxF, w_DxF, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    dw_DxF = lax.dot(_laid_out(x_NxD, (1, 0)), g_NxF, preferred_element_type=jnp.float32)
    return dx_NxD.astype(x_NxD.dtype), dw_DxF.astype(w_DxF.dtype)


dot_accumulating_f32.defvjp(_dot_accumulating_f32_fwd, _dot_accumulating_f32_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`nn.Dense(dot_general=...)` for a bf16 Dense: `dot_accumulating_f32` on lhs's rows
    (...xD) and the DxF kernel, the same math as `lax.dot_general`'s to rounding."""
    del precision, preferred_element_type  # Dense passes neither.
    (lhs_contract, rhs_contract), batch = dimension_numbers
    assert lhs_contract == (lhs.ndim - 1,) and rhs_contract == (0,) and batch == ((), ()), dimension_numbers
    y = dot_accumulating_f32(lhs.reshape(-1, lhs.shape[-1]), rhs)
    return y.reshape(lhs.shape[:-1] + y.shape[-1:])


def _laid_out(x: Array, perm: tuple[int, ...]) -> Array:
    """`x.transpose(perm)` as a new row-major array: flattened behind an optimisation barrier, so
    XLA can neither fold the transpose into its consumer's layout nor cancel the reshapes."""
    x = x.transpose(perm)
    return lax.optimization_barrier(x.reshape(-1)).reshape(x.shape)


def _bmm_f32(a_BxHxMxK: Array, b_BxHxKxN: Array) -> Array:
    """Batched a @ b over the two leading axes, products accumulated in float32: float32 BxHxMxN."""
    return lax.dot_general(a_BxHxMxK, b_BxHxKxN, (((3,), (2,)), ((0, 1), (0, 1))),
                           preferred_element_type=jnp.float32)


@jax.custom_vjp
def attention_scores(q_BxLxHxK: Array, k_BxTxHxK: Array) -> Array:
    """float32 scores_BxHxLxT = q . k over K, for bf16 q and k."""
    return _bmm_f32(_laid_out(q_BxLxHxK, (0, 2, 1, 3)), _laid_out(k_BxTxHxK, (0, 2, 3, 1)))


def _attention_scores_fwd(q_BxLxHxK, k_BxTxHxK):
    return attention_scores(q_BxLxHxK, k_BxTxHxK), (q_BxLxHxK, k_BxTxHxK)


def _attention_scores_bwd(residuals, g_BxHxLxT):
    q_BxLxHxK, k_BxTxHxK = residuals
    g_BxHxLxT = g_BxHxLxT.astype(q_BxLxHxK.dtype)
    dq_BxHxLxK = _bmm_f32(g_BxHxLxT, _laid_out(k_BxTxHxK, (0, 2, 1, 3)))
    dk_BxHxTxK = _bmm_f32(_laid_out(g_BxHxLxT, (0, 1, 3, 2)), _laid_out(q_BxLxHxK, (0, 2, 1, 3)))
    return (dq_BxHxLxK.transpose(0, 2, 1, 3).astype(q_BxLxHxK.dtype),
            dk_BxHxTxK.transpose(0, 2, 1, 3).astype(k_BxTxHxK.dtype))


attention_scores.defvjp(_attention_scores_fwd, _attention_scores_bwd)


@jax.custom_vjp
def attention_values(p_BxHxLxT: Array, v_BxTxHxK: Array) -> Array:
    """float32 out_BxLxHxK = p @ v over T, for bf16 p and v."""
    return _bmm_f32(p_BxHxLxT, _laid_out(v_BxTxHxK, (0, 2, 1, 3))).transpose(0, 2, 1, 3)


def _attention_values_fwd(p_BxHxLxT, v_BxTxHxK):
    return attention_values(p_BxHxLxT, v_BxTxHxK), (p_BxHxLxT, v_BxTxHxK)


def _attention_values_bwd(residuals, g_BxLxHxK):
    p_BxHxLxT, v_BxTxHxK = residuals
    g_BxHxLxK = _laid_out(g_BxLxHxK.astype(p_BxHxLxT.dtype), (0, 2, 1, 3))
    dp_BxHxLxT = _bmm_f32(g_BxHxLxK, _laid_out(v_BxTxHxK, (0, 2, 3, 1)))
    dv_BxHxTxK = _bmm_f32(_laid_out(p_BxHxLxT, (0, 1, 3, 2)), g_BxHxLxK)
    return dp_BxHxLxT.astype(p_BxHxLxT.dtype), dv_BxHxTxK.transpose(0, 2, 1, 3).astype(v_BxTxHxK.dtype)


attention_values.defvjp(_attention_values_fwd, _attention_values_bwd)


@jax.custom_vjp
def logits(x_NxD: Array, embedding_VxD: Array) -> Array:
    """float32 logits_NxV = x @ embedding^T for bf16 x and embedding (a tied output head)."""
    return lax.dot_general(x_NxD, embedding_VxD, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _logits_fwd(x_NxD, embedding_VxD):
    return logits(x_NxD, embedding_VxD), (x_NxD, embedding_VxD)


def _logits_bwd(residuals, g_NxV):
    x_NxD, embedding_VxD = residuals
    g_NxV = g_NxV.astype(x_NxD.dtype)
    dx_NxD = lax.dot(g_NxV, embedding_VxD, preferred_element_type=jnp.float32)
    de_VxD = lax.dot(_laid_out(g_NxV, (1, 0)), x_NxD, preferred_element_type=jnp.float32)
    return dx_NxD.astype(x_NxD.dtype), de_VxD.astype(embedding_VxD.dtype)


logits.defvjp(_logits_fwd, _logits_bwd)
