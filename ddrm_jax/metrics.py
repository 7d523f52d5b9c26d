"""PSNR / SSIM (dm-pix, images in [0, 1] image units) and the paper's baselines (Sec. 5).

The baselines are those the paper's tables report next to DDRM: bicubic upsampling of the
low-resolution measurement for super-resolution, the blurry measurement itself for deblurring, and
the pseudo-inverse H^+ y for every other problem.
"""

import dm_pix
import jax
import jax.numpy as jnp


def psnr(a, b):
  """PSNR in dB of images in [0, 1]: -10 log10(mean((a - b)^2)); (H, W, C) or (B, H, W, C)."""
  return dm_pix.psnr(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))


def ssim(a, b):
  """SSIM of images in [0, 1] (Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03, channel mean)."""
  return dm_pix.ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), max_val=1.0)


def bicubic_upsample(y, size):
  """Bicubic upsampling of (h, w, C) to (H, W, C) with the Keys kernel, a = -0.5.

  `jax.image.resize(method='bicubic')` is Keys' cubic convolution with a = -0.5 (see
  jax._src.image.scale._fill_keys_cubic_kernel), half-pixel centres (output pixel k samples input
  coordinate (k + 0.5) * h / H - 0.5), and at the borders the taps falling outside the image are
  dropped and the remaining weights renormalised to sum 1 (as Pillow's BICUBIC does when
  upsampling). The antialias flag only matters when downsampling. tests/test_metrics.py checks all
  of this against a float64 numpy implementation and against Pillow.
  """
  y = jnp.asarray(y, jnp.float32)
  H, W = size
  return jax.image.resize(y, (H, W, y.shape[-1]), method="bicubic")


def is_super_resolution(deg: str) -> bool:
  """srN (block averaging) and sr_bicubicN."""
  return deg.startswith("sr")


def is_blur(deg: str) -> bool:
  """deblur_uni / deblur_gauss / deblur_aniso and the user-kernel 'blur'."""
  return deg.startswith("deblur") or deg == "blur"


def baseline(deg: str, op, y):
  """The paper's baseline restoration of one measurement y (op.y_shape), in [-1, 1] model units.

  Super-resolution: bicubic (a = -0.5) upsampling of the low-resolution image y to op.x_shape.
  Deblurring: the blurry image y itself. Otherwise: the pseudo-inverse op.H_pinv(y).
  """
  x_shape = tuple(op.x_shape)
  if is_super_resolution(deg):
    y_img = jnp.reshape(y, _low_res_shape(op))
    return bicubic_upsample(y_img, x_shape[:2])
  if is_blur(deg):
    return jnp.reshape(y, x_shape)
  return op.H_pinv(y)


def _low_res_shape(op):
  """The (h, w, C) image shape of a super-resolution measurement."""
  H, W, C = op.x_shape
  y_shape = tuple(op.y_shape)
  if len(y_shape) == 3:
    return y_shape
  n = 1
  for d in y_shape:
    n *= d
  f = int(round((H * W * C / n) ** 0.5))
  if f * f * n != H * W * C or H % f or W % f:
    raise ValueError(f"cannot read a super-resolution measurement of shape {y_shape} as an image")
  return (H // f, W // f, C)
