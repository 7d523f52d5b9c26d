"""Denoising (Appendix D.1): H = I, y has the image's shape."""

from ddrm_jax.operators import base


class Identity(base.PrefixOperator):
  """H = I: U, V are reshapes and every singular value is 1."""

  def _Vt(self, x):
    return x.reshape(-1)

  def _V(self, v):
    return v.reshape(self.x_shape)

  singular_value = 1.0


def denoising(image_shape):
  """The denoising operator H = I on images of `image_shape` (H, W, C)."""
  shape = base.as_shape(image_shape)
  return Identity(x_shape=shape, y_shape=shape)
