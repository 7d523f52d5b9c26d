"""Inpainting (Appendix D.2, Eq. 23): H = I Sigma P keeps the observed pixels.

Measurement layout: y has the image's shape, the observed pixels with zeros at missing ones;
`Ut` reads only the observed pixels. V^T = P sorts the kept entries first (by a stable argsort of
the mask, so shapes stay static and a batch of operators with different masks can be vmapped);
the singular values are 1 for the kept entries and 0 after them.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ddrm_jax.operators import base


class Inpainting(base.Operator):
  """Keeps the entries where `mask` is 1 (all channels of a pixel share its mask value)."""

  mask: jax.Array  # (H, W, C) float32 in {0, 1}.
  perm: jax.Array  # (n,) int32: flat index of spectral entry i (kept entries first).
  inv_perm: jax.Array  # (n,) int32: inverse of perm.
  s: jax.Array  # (n,) float32: mask values in spectral order (ones, then zeros).

  def _Vt(self, x):
    return x.reshape(-1)[self.perm]

  def _V(self, v):
    return v[self.inv_perm].reshape(self.x_shape)

  def _Ut(self, y):
    return y.reshape(-1)[self.perm] * self.s

  def _U(self, u):
    return u[self.inv_perm].reshape(self.y_shape) * self.mask

  def singulars(self):
    return self.s


def from_mask(mask, channels=3):
  """Inpainting from an (H, W) mask (1 = kept, 0 = missing) for images (H, W, channels).

  Traceable in `mask` (e.g. `jax.vmap(lambda m: from_mask(m, 3))(masks)`); the check that the
  mask is binary runs only on concrete masks.
  """
  mask = jnp.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f'inpainting mask must be 2-D (H, W), got shape {mask.shape}')
  shape = base.as_shape(mask.shape + (channels,))
  concrete = base.concrete_or_none(mask)
  if concrete is not None and not np.all((concrete == 0) | (concrete == 1)):
    raise ValueError('inpainting mask must contain only 0 (missing) and 1 (kept)')
  if concrete is not None:  # Host path (no compilation); same result as the traced path.
    flat = np.broadcast_to(concrete.astype(np.float32)[..., None], shape).reshape(-1)
    perm = np.argsort(1.0 - flat, kind='stable')  # Kept first, then missing.
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(perm.size)
    perm, inv_perm = jnp.asarray(perm, jnp.int32), jnp.asarray(inv_perm, jnp.int32)
  else:
    flat = jnp.broadcast_to(mask.astype(jnp.float32)[..., None], shape).reshape(-1)
    perm = jnp.argsort(1.0 - flat).astype(jnp.int32)  # Stable: kept first, then missing.
    inv_perm = base.inverse_permutation(perm)
  flat = jnp.asarray(flat)
  return Inpainting(x_shape=shape, y_shape=shape, mask=flat.reshape(shape), perm=perm,
                    inv_perm=inv_perm, s=flat[perm])


def random_mask(height, width, key=None):
  """An (H, W) float32 mask with exactly floor(H*W/2) random pixel positions missing."""
  return _random_mask(int(height), int(width), base.as_key(key))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _random_mask(height, width, key):
  hw = height * width
  missing = jax.random.permutation(key, hw)[:hw // 2]
  return jnp.ones((hw,), jnp.float32).at[missing].set(0.0).reshape(height, width)
