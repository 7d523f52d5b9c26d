"""Compressed sensing with a random subset of Walsh-Hadamard coefficients.

Per channel, the orthonormal Walsh-Hadamard transform (natural / Sylvester order, entry (i, j) =
(-1)^popcount(i & j) / sqrt(N), N = H*W) of the row-major flattened image; the coefficients at
positions perm[0], ..., perm[N/ratio - 1] are kept (the same for every channel). Measurement
layout: a coefficient array y of shape (N/ratio, C). The transform is orthogonal and symmetric,
so V^T = P W, U = I and the singular values are 1 for the N/ratio * C kept entries, 0 after.
The transform runs in O(n log n) by butterflies on a (2, ..., 2, C) reshape: no N x N matrix.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from ddrm_jax.operators import base


def fwht(x):
  """Orthonormal Walsh-Hadamard transform (natural order) along axis 0 of x (N, ...), N = 2^L."""
  size = x.shape[0]
  bits = size.bit_length() - 1
  if size != 1 << bits:
    raise ValueError(f'Walsh-Hadamard length must be a power of two, got {size}')
  rest = x.shape[1:]
  z = x.reshape((2,) * bits + (-1,))
  for axis in range(bits):
    a, b = jnp.take(z, 0, axis=axis), jnp.take(z, 1, axis=axis)
    z = jnp.stack([a + b, a - b], axis=axis) * (1.0 / math.sqrt(2.0))
  return z.reshape((size,) + rest)


class CompressedSensing(base.PrefixOperator):
  """y = (W x_c)[perm[:m]] for every channel c; y has shape (m, C)."""

  perm: jax.Array  # (N,) int32: coefficient index at spectral row p (kept rows first).
  inv_perm: jax.Array  # (N,) int32.

  def _Vt(self, x):
    h, w, c = self.x_shape
    return fwht(x.reshape(h * w, c))[self.perm].reshape(-1)

  def _V(self, v):
    h, w, c = self.x_shape
    return fwht(v.reshape(h * w, c)[self.inv_perm]).reshape(self.x_shape)

  singular_value = 1.0


def compressed_sensing(image_shape, ratio, perm=None, key=None):
  """Keeps H*W/ratio Walsh-Hadamard coefficients per channel: `perm` (a permutation of
  0..H*W-1, first H*W/ratio kept) or a random one from `key` (default seed 0).

  Traceable in `perm` (value checks run only on a concrete permutation).
  """
  shape = base.as_shape(image_shape)
  h, w, c = shape
  size = h * w
  if size & (size - 1):
    raise ValueError(f'compressed sensing needs H*W to be a power of two, got {h}*{w} = {size}')
  if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 1 or size % ratio:
    raise ValueError(f'compressed sensing ratio must be a positive int dividing H*W = {size}, '
                     f'got {ratio!r}')
  if perm is not None and key is not None:
    raise ValueError('give either perm= or key=, not both')
  if perm is None:
    perm = jax.random.permutation(base.as_key(key), size)
  perm = jnp.asarray(perm)
  if perm.shape != (size,) or not jnp.issubdtype(perm.dtype, jnp.integer):
    raise ValueError(f'perm must be an integer array of shape ({size},), got {perm.dtype} '
                     f'{perm.shape}')
  concrete = base.concrete_or_none(perm)
  if concrete is None:
    perm = perm.astype(jnp.int32)
    inv_perm = base.inverse_permutation(perm)
  else:  # Host path (no compilation).
    if not np.array_equal(np.sort(concrete), np.arange(size)):
      raise ValueError(f'perm must be a permutation of 0..{size - 1}')
    inv = np.empty(size, np.int32)
    inv[concrete] = np.arange(size, dtype=np.int32)
    perm, inv_perm = jnp.asarray(concrete, jnp.int32), jnp.asarray(inv)
  return CompressedSensing(x_shape=shape, y_shape=(size // ratio, c), perm=perm,
                           inv_perm=inv_perm)
