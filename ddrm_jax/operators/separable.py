"""Separable (strided) convolutions: deblurring and bicubic SR (Appendix D.5, Eq. 26-27).

Per channel, Y = A_v X A_h^T with 1-D matrices A_v (m_h, H) and A_h (m_w, W), so
H = A_h (x) A_v. With the 1-D SVDs A = U_a diag(s_a) V_a^T (numpy float64 on the host, stored as
float32), the 2-D coefficients are Z = V_v^T X V_h with singular values s_v[i] * s_h[j] (zero for
i >= m_h or j >= m_w). They are sorted descending (Eq. 27's P_2), measurement directions before
null directions on ties, and the permutation and its inverse are stored: Theta(n) memory, never an
n x n matrix. 1-D singular values below `zero_threshold` are set to zero (the paper's truncation;
numerically zero ones always are); measurements y = H x use the truncated H.

Convolution convention (true convolution, any kernel length L, stride r):
  y[k] = sum_t kernel[t] * x[r*k + floor((r - L) / 2) + L - 1 - t],
i.e. output k is centred on input coordinate r*k + (r - 1)/2. For r = 1 this is
`jax.scipy.signal.convolve(x, kernel, mode='same')`. Out-of-range indices read zero
('zero' padding) or the mirrored pixel ('reflect': index -1 reads 0, index D reads D-1).
"""

import jax
import jax.numpy as jnp
import numpy as np

from ddrm_jax.operators import base

HIGHEST = base.HIGHEST
PADDINGS = ('zero', 'reflect')


def _as_kernel(kernel, what):
  base.not_a_path(kernel, what)
  try:
    k = np.asarray(kernel, np.float64)
  except (TypeError, ValueError):
    raise ValueError(f'{what} must be a 1-D array of real taps, got {type(kernel).__name__}'
                     ) from None
  if k.ndim != 1 or k.size == 0 or not np.all(np.isfinite(k)):
    raise ValueError(f'{what} must be a non-empty finite 1-D array, got shape {k.shape}')
  return k


def conv_matrix(kernel, size, stride=1, padding='zero', what='kernel'):
  """(size // stride, size) float64 matrix of the 1-D strided convolution (module docstring)."""
  k = _as_kernel(kernel, what)
  if padding not in PADDINGS:
    raise ValueError(f'padding must be one of {PADDINGS}, got {padding!r}')
  if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
    raise ValueError(f'stride must be a positive int, got {stride!r}')
  if size % stride:
    raise ValueError(f'stride {stride} does not divide the image size {size}')
  length = k.size
  rows = np.arange(size // stride)[:, None]
  taps = np.arange(length)[None, :]
  j = stride * rows + (stride - length) // 2 + (length - 1 - taps)
  rows, taps = np.broadcast_arrays(rows, taps)
  if padding == 'zero':
    keep = (j >= 0) & (j < size)
    rows, taps, j = rows[keep], taps[keep], j[keep]
  else:
    j = np.where(j < 0, -j - 1, j)
    j = np.where(j >= size, 2 * size - 1 - j, j)
    if np.any((j < 0) | (j >= size)):
      raise ValueError(
          f'{what} of {length} taps at stride {stride} is too wide for an image size of {size}: '
          'mirrored padding would need more than one reflection')
  a = np.zeros((size // stride, size), np.float64)
  np.add.at(a, (rows.reshape(-1), j.reshape(-1)), k[taps.reshape(-1)])
  return a


def bicubic_kernel(factor, a=-0.5):
  """4*factor normalised taps of the bicubic kernel at offsets (i - 2*factor + 0.5) / factor."""
  x = np.abs((np.arange(4 * factor) - 2 * factor + 0.5) / factor)
  k = np.where(x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
               np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0))
  return k / k.sum()


def gaussian_kernel(sigma, taps):
  """`taps` normalised taps exp(-x^2 / (2 sigma^2)), x = -(taps//2) .. taps//2 (taps odd)."""
  x = np.arange(taps) - (taps - 1) / 2
  k = np.exp(-x**2 / (2.0 * sigma**2))
  return k / k.sum()


class Separable(base.Operator):
  """Y = A_v X A_h^T per channel, through the two 1-D SVDs."""

  uv: jax.Array  # (m_h, m_h) U of A_v.
  vv: jax.Array  # (H, H) V of A_v.
  uh: jax.Array  # (m_w, m_w) U of A_h.
  vh: jax.Array  # (W, W) V of A_h.
  perm: jax.Array  # (n,) int32: flat (i, j, c) index of spectral entry p.
  inv_perm: jax.Array  # (n,) int32.
  s: jax.Array  # (n,) float32 sorted 2-D singular values.

  def _Vt(self, x):
    z = jnp.einsum('hi,hwc->iwc', self.vv, x, precision=HIGHEST)
    z = jnp.einsum('iwc,wj->ijc', z, self.vh, precision=HIGHEST)
    return z.reshape(-1)[self.perm]

  def _V(self, v):
    z = v[self.inv_perm].reshape(self.x_shape)
    x = jnp.einsum('ih,hwc->iwc', self.vv, z, precision=HIGHEST)
    return jnp.einsum('iwc,jw->ijc', x, self.vh, precision=HIGHEST)

  def _Ut(self, y):
    w = jnp.einsum('hi,hwc->iwc', self.uv, y, precision=HIGHEST)
    w = jnp.einsum('iwc,wj->ijc', w, self.uh, precision=HIGHEST)
    mh, mw, _ = self.y_shape
    h, wd, _ = self.x_shape
    w = jnp.pad(w, ((0, h - mh), (0, wd - mw), (0, 0)))
    return w.reshape(-1)[self.perm]

  def _U(self, u):
    mh, mw, _ = self.y_shape
    z = u[self.inv_perm].reshape(self.x_shape)[:mh, :mw]
    y = jnp.einsum('ih,hwc->iwc', self.uv, z, precision=HIGHEST)
    return jnp.einsum('iwc,jw->ijc', y, self.uh, precision=HIGHEST)

  def singulars(self):
    return self.s


def from_matrices(a_v, a_h, channels=3, zero_threshold=0.0):
  """Operator Y = A_v X A_h^T (every channel) from 1-D matrices A_v (m_h, H), A_h (m_w, W)."""
  thr = base.check_threshold(zero_threshold)
  mats = []
  for name, a in (('A_v', a_v), ('A_h', a_h)):
    a = np.asarray(a, np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[0] > a.shape[1]:
      raise ValueError(f'{name} must be a 2-D matrix with 1 <= rows <= columns, got {a.shape}')
    if not np.all(np.isfinite(a)):
      raise ValueError(f'{name} must be finite')
    mats.append(a)
  (mh, h), (mw, w) = mats[0].shape, mats[1].shape
  shape = base.as_shape((h, w, channels))
  svds = []
  for a in mats:
    u, s, vt = np.linalg.svd(a, full_matrices=True)
    s = base.zero_small(s, a.shape, thr)
    svds.append((u, np.pad(s, (0, a.shape[1] - s.size)), vt.T))
  (uv, sv, vv), (uh, sh, vh) = svds
  s2 = np.broadcast_to((sv[:, None] * sh[None, :])[:, :, None], shape).reshape(-1)
  in_y = np.broadcast_to(((np.arange(h) < mh)[:, None] & (np.arange(w) < mw)[None, :])[:, :, None],
                         shape).reshape(-1)
  perm = np.lexsort((~in_y, -s2))  # Descending s; measurement directions first on ties.
  inv_perm = np.empty_like(perm)
  inv_perm[perm] = np.arange(perm.size)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return Separable(x_shape=shape, y_shape=(mh, mw, shape[2]), uv=f32(uv), vv=f32(vv),
                   uh=f32(uh), vh=f32(vh), perm=jnp.asarray(perm, jnp.int32),
                   inv_perm=jnp.asarray(inv_perm, jnp.int32), s=f32(s2[perm]))


def strided_separable_conv(kernel_v, kernel_h, image_shape, stride=1, padding='zero',
                           zero_threshold=base.DEFAULT_ZERO_THRESHOLD):
  """Separable strided convolution: `kernel_v` along H, `kernel_h` along W (module docstring)."""
  h, w, c = base.as_shape(image_shape)
  a_v = conv_matrix(kernel_v, h, stride, padding, what='vertical kernel')
  a_h = conv_matrix(kernel_h, w, stride, padding, what='horizontal kernel')
  return from_matrices(a_v, a_h, c, zero_threshold)


def separable_blur(kernel_v, kernel_h, image_shape, zero_threshold=base.DEFAULT_ZERO_THRESHOLD, *,
                   normalize=False, signed=False):
  """Zero-padded 'same'-size separable blur (true convolution with every tap).

  Each 1-D kernel follows `circular_blur`'s rules: non-negative taps summing to 1 (within
  `base.KERNEL_SUM_TOLERANCE`) used as given; `normalize=True` divides each by its positive
  sum; `signed=True` takes any real taps as given. ValueError naming the kernel otherwise.
  """
  kernels = []
  for what, k in (('kernel_v', kernel_v), ('kernel_h', kernel_h)):
    k = _as_kernel(k, what)
    base.check_kernel_values(k, bool(normalize), bool(signed), what)
    kernels.append(k / k.sum() if normalize else k)
  return strided_separable_conv(*kernels, image_shape, 1, 'zero', zero_threshold)


def bicubic_superres(image_shape, factor, zero_threshold=base.DEFAULT_ZERO_THRESHOLD):
  """Bicubic downsampling by an even `factor`: 4*factor taps (a = -0.5), mirrored padding."""
  if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2 or factor % 2:
    raise ValueError(f'bicubic factor must be an even int >= 2 (taps at half-pixel offsets), '
                     f'got {factor!r}')
  k = bicubic_kernel(factor)
  h, w, _ = base.as_shape(image_shape)
  for name, size in (('height', h), ('width', w)):
    if size % factor:
      raise ValueError(f'bicubic factor {factor} does not divide the image {name} {size}')
    if 2 * size < 3 * factor:
      raise ValueError(f'bicubic kernel of {4 * factor} taps is too wide for the image {name} '
                       f'{size}: mirrored padding needs {name} >= {3 * factor // 2}')
  return strided_separable_conv(k, k, image_shape, factor, 'reflect', zero_threshold)
