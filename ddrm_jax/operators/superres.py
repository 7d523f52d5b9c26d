"""Super resolution by block averaging (Appendix D.3, Eq. 24-25).

Each output entry is the mean of one patch of P input entries: k^T = (1/P) 1^T has the SVD
k^T = 1 * (1/sqrt(P)) * u^T with u = (1, ..., 1) / sqrt(P). V_k is the Householder reflection
mapping e_1 to u (symmetric, orthogonal, applied in O(P) per patch, never stored). The spectral
vector lists the first (u) coefficient of every patch, then the remaining ones: singular values
1/sqrt(P) for the first prod(y_shape) entries, 0 after. `colorization` reuses this with the
channels of a pixel as the patch.
"""

import math

import jax.numpy as jnp

from ddrm_jax.operators import base


def _householder(p):
  """Q p along axis 0, Q = I - 2 w w^T / (w^T w), w = e_1 - u, u = 1/sqrt(P); Q e_1 = u."""
  size = p.shape[0]
  if size == 1:
    return p
  u1 = 1.0 / math.sqrt(size)
  w = jnp.full((size,), -u1, p.dtype).at[0].add(1.0)
  scale = 1.0 / (1.0 - u1)  # 2 / (w^T w), w^T w = 2 (1 - u1).
  p2 = p.reshape(size, -1)
  wp = jnp.matmul(w, p2, precision=base.HIGHEST)  # A dot: much faster than a sum on CPU.
  return (p2 - (scale * w)[:, None] * wp[None, :]).reshape(p.shape)


class PatchAverage(base.PrefixOperator):
  """y[g] = mean of patch g; subclasses say how an image splits into patches ((P,) + y_shape)."""

  def _to_patches(self, x):
    raise NotImplementedError

  def _from_patches(self, p):
    raise NotImplementedError

  @property
  def patch_size(self):
    return self.n // math.prod(self.y_shape)

  def _Vt(self, x):
    return _householder(self._to_patches(x)).reshape(-1)  # Patch index major.

  def _V(self, v):
    return self._from_patches(_householder(v.reshape((self.patch_size,) + self.y_shape)))

  @property
  def singular_value(self):
    return 1.0 / math.sqrt(self.patch_size)


class BlockSuperRes(PatchAverage):
  """Averages factor x factor blocks: (H, W, C) -> (H/factor, W/factor, C)."""

  @property
  def factor(self):
    return self.x_shape[0] // self.y_shape[0]

  def _to_patches(self, x):
    h, w, c = self.y_shape
    r = self.factor
    p = x.reshape(h, r, w, r, c).transpose(1, 3, 0, 2, 4)
    return p.reshape(r * r, h, w, c)

  def _from_patches(self, p):
    h, w, c = self.y_shape
    r = self.factor
    x = p.reshape(r, r, h, w, c).transpose(2, 0, 3, 1, 4)
    return x.reshape(self.x_shape)


def block_superres(image_shape, factor):
  """Block-averaging downsampling by an integer `factor` dividing H and W."""
  shape = base.as_shape(image_shape)
  if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
    raise ValueError(f'super-resolution factor must be a positive int, got {factor!r}')
  h, w, c = shape
  for name, size in (('height', h), ('width', w)):
    if size % factor:
      raise ValueError(f'super-resolution factor {factor} does not divide the image {name} '
                       f'{size} (image_shape {shape})')
  return BlockSuperRes(x_shape=shape, y_shape=(h // factor, w // factor, c))
