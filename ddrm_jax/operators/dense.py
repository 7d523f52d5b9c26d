"""A general H given as a matrix (m, n), through its explicit SVD (small problems only).

Measurement layout: a vector of shape (m,). Memory is Theta(n^2): use the structured operators
for images.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from ddrm_jax.operators import base

HIGHEST = base.HIGHEST


class Dense(base.Operator):
  """y = M x with M = U diag(s) V^T stored explicitly."""

  u: jax.Array  # (m, n): left singular vectors, zero columns past min(m, n).
  v: jax.Array  # (n, n): right singular vectors.
  s: jax.Array  # (n,) descending.

  def _Vt(self, x):
    return jnp.matmul(self.v.T, x.reshape(-1), precision=HIGHEST)

  def _V(self, v):
    return jnp.matmul(self.v, v, precision=HIGHEST).reshape(self.x_shape)

  def _Ut(self, y):
    return jnp.matmul(self.u.T, y, precision=HIGHEST)

  def _U(self, u):
    return jnp.matmul(self.u, u, precision=HIGHEST)

  def singulars(self):
    return self.s


def from_matrix(matrix, x_shape, zero_threshold=0.0):
  """Operator y = matrix @ x.reshape(-1) for x of `x_shape`; singular values below
  `zero_threshold`, or numerically zero, are set to zero."""
  m_ = np.asarray(matrix, np.float64)
  shape = base.as_shape(x_shape, 'x_shape', ndim=None)
  n = math.prod(shape)
  if m_.ndim != 2 or m_.shape[1] != n or m_.shape[0] < 1:
    raise ValueError(f'matrix must have shape (m, {n}) for x_shape {shape}, got {m_.shape}')
  if not np.all(np.isfinite(m_)):
    raise ValueError('matrix must be finite')
  thr = base.check_threshold(zero_threshold)
  u, s, vt = np.linalg.svd(m_, full_matrices=True)
  rows = m_.shape[0]
  r = min(rows, n)
  u_pad = np.zeros((rows, n))
  u_pad[:, :r] = u[:, :r]
  s_pad = np.zeros(n)
  s_pad[:r] = base.zero_small(s, m_.shape, thr)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return Dense(x_shape=shape, y_shape=(rows,), u=f32(u_pad), v=f32(vt.T), s=f32(s_pad))
