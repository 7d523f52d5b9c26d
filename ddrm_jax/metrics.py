"""PSNR / SSIM (dm-pix, images in [0, 1] image units) and the paper's baselines (Sec. 5).

The baselines are those the paper's tables report next to DDRM: bicubic upsampling of the
low-resolution measurement for super-resolution, the blurry measurement itself for deblurring, and
the pseudo-inverse H^+ y for every other problem.
"""

import functools

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from ddrm_jax import blind

MAD_TO_STD = 0.6745  # Median of |N(0, 1)|.
QUIET_FRACTION = 0.25
# noise_sigma holds from this side on. Measured on crops of the bundled held-out photos with
# noise 0.02 / 0.05, its 10-90% range: -7%..+27% / -5%..+18% at 32x32, -7%..+20% / -3%..+8% at
# 48x48, but -10%..+45% / -19%..+31% at 16x16 (and a clean 4x4 photo can read as 0.02).
NOISE_MIN_SIDE = 32


def psnr(a, b):
  """PSNR in dB of images in [0, 1]: -10 log10(mean((a - b)^2)); (H, W, C) or (B, H, W, C)."""
  return dm_pix.psnr(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))


def aligned_psnr(a, b, max_shift=1.0, step=0.1, fine=0.01):
  """(PSNR in dB, shift (row, col) in pixels) of `a` against `b` at the sub-pixel translation of
  `a` that fits `b` best: `blind.fourier_shift` on a grid of `step` over [-max_shift,
  max_shift]^2, then of `fine` over +-`step` about its best. A blind restoration is defined only
  up to a translation (a kernel and an image shifted oppositely explain the same blurry photo),
  so blind-deblurring evaluations score it at its best shift too; `psnr` scores it where it is.
  Images in [0, 1], (H, W, C) or (B, H, W, C) (then PSNR (B,) and shifts (B, 2)). The shift is
  found to within `fine` / 2 of the grid's best; images are taken as periodic (circular blur).
  """
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  if a.shape != b.shape or a.ndim not in (3, 4):
    raise ValueError(f'aligned_psnr needs two (H, W, C) or (B, H, W, C) images of one shape, '
                     f'got {a.shape} and {b.shape}')
  if not 0.0 < fine < step <= max_shift:
    raise ValueError(f'aligned_psnr needs 0 < fine < step <= max_shift, got fine {fine}, '
                     f'step {step}, max_shift {max_shift}')
  if a.ndim == 3:
    value, shift = _aligned_psnr(a[None], b[None], max_shift, step, fine)
    return value[0], shift[0]
  return _aligned_psnr(a, b, max_shift, step, fine)


def _shift_grid(half, step):
  """(n^2, 2) offsets of `step` covering [-half, half]^2, numpy (a static grid)."""
  offsets = np.arange(-round(half / step), round(half / step) + 1) * step
  return np.stack(np.meshgrid(offsets, offsets, indexing='ij'), -1).reshape(-1, 2)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _aligned_psnr(a, b, max_shift, step, fine):
  def one(x, ref):
    def best(centre, grid):
      shifts = centre + jnp.asarray(grid, jnp.float32)
      error = jax.lax.map(lambda d: jnp.mean((blind.fourier_shift(x, d) - ref) ** 2), shifts)
      return shifts[jnp.argmin(error)]
    shift = best(jnp.zeros(2, jnp.float32), _shift_grid(max_shift, step))
    shift = best(shift, _shift_grid(step, fine))
    return psnr(blind.fourier_shift(x, shift), ref), shift
  return jax.vmap(one)(a, b)


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


BASELINES = ("bicubic", "measurement", "pinv")  # `problems.Problem.baseline`.


def baseline(kind: str, op, y):
  """The paper's baseline restoration of one measurement y (op.y_shape), in [-1, 1] model units.

  kind 'bicubic' (super-resolution): bicubic (a = -0.5) upsampling of the low-resolution image y
  to op.x_shape. 'measurement' (deblurring): the blurry image y itself. 'pinv' (the others): the
  pseudo-inverse op.H_pinv(y). A problem's kind is `problems.get(deg).baseline`.
  """
  x_shape = tuple(op.x_shape)
  if kind == "bicubic":
    y_img = jnp.reshape(y, _low_res_shape(op))
    return bicubic_upsample(y_img, x_shape[:2])
  if kind == "measurement":
    return jnp.reshape(y, x_shape)
  if kind == "pinv":
    return op.H_pinv(y)
  raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(BASELINES)}")


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


def noise_sigma(x):
  """Estimated std of white Gaussian noise in one image (H, W, C), in the image's units.

  Donoho and Johnstone's estimate from the finest diagonal wavelet band: with the orthonormal 2-D
  Haar transform of 2x2 blocks (a b; c d), HH = (a - b - c + d) / 2 carries the noise with its
  std, and sigma = median(|HH|) / 0.6745. Image texture inflates |HH| too, so the median is taken
  over the quietest quarter of the block positions, ranked by the two other finest detail bands
  (|HL| + |LH| averaged over 3x3 blocks; for Gaussian noise they are independent of HH, so the
  selection does not bias the estimate). All channels are pooled.
  """
  x = np.asarray(x, np.float64)
  if x.ndim != 3 or x.shape[0] < 2 or x.shape[1] < 2:
    raise ValueError(f"noise_sigma needs an (H, W, C) image of at least 2x2, got {x.shape}")
  x = x[:x.shape[0] // 2 * 2, :x.shape[1] // 2 * 2]
  a, b, c, d = x[0::2, 0::2], x[0::2, 1::2], x[1::2, 0::2], x[1::2, 1::2]
  hl, lh, hh = (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2
  activity = ndimage.uniform_filter(np.abs(hl) + np.abs(lh), size=(3, 3, 1), mode="reflect")
  quiet = activity <= np.quantile(activity, QUIET_FRACTION)
  return float(np.median(np.abs(hh[quiet])) / MAD_TO_STD)
