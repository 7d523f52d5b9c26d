"""Colorization (Appendix D.4): y = mean over channels, an (H, W, 1) gray image.

The SVD is the block-averaging one of `superres` with the channels of a pixel as the patch:
one singular value 1/sqrt(C) per pixel.
"""

import jax.numpy as jnp

from ddrm_jax.operators import base
from ddrm_jax.operators import superres


class Colorization(superres.PatchAverage):
  """(H, W, C) -> (H, W, 1) channel mean."""

  def _to_patches(self, x):
    return jnp.moveaxis(x, -1, 0)[..., None]

  def _from_patches(self, p):
    return jnp.moveaxis(p[..., 0], 0, -1)


def grayscale(image_shape):
  """Grayscale (channel mean) operator on images of `image_shape` (H, W, C)."""
  shape = base.as_shape(image_shape)
  return Colorization(x_shape=shape, y_shape=shape[:2] + (1,))
