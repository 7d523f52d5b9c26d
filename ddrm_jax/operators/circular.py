"""Any 2-D blur kernel as circular convolution: an exact SVD through the 2-D DFT.

H x is, per channel, the wrap-around convolution with a (kh, kw) kernel centred at
(kh // 2, kw // 2): y[i] = sum_j k[j] x[(i - j + c) mod (H, W)], c = (kh // 2, kw // 2), what
`scipy.ndimage.convolve(x[..., c], k, mode='wrap')` computes. The unitary DFT F (`norm='ortho'`)
diagonalises it: F H x = K (.) F x with K = fft2 of the kernel placed at offsets j - c mod (H, W).

Real basis. The coefficients of a real image satisfy X_{-f} = conj(X_f). Every frequency f with
-f != f has a partner -f (indices mod (H, W)); of each pair the one with the smaller flat index is
the representative r, the other the companion g = -r. V^T x holds, per channel,
  at r: sqrt(2) Re X_r,   at g: sqrt(2) Im X_r = -sqrt(2) Im X_g,   at self-conjugate f: Re X_f
(f = -f: DC and, for even sizes, the Nyquist row and column). These are the coefficients of x in
the orthonormal cosine/sine basis of the DFT, so V is an orthogonal matrix:
  V^T x = c1 (.) Re(F x) + c2 (.) Im(F x),   V z = Re(F ((c1 - i c2) (.) z)),
with c1 = sqrt(2) at r, 1 at f = -f, 0 at g and c2 = -sqrt(2) at g, 0 elsewhere (F^T = F).
U^T is the same after removing each frequency's kernel phase: U^T y = V^T-map of e^{-i phi} (.) F y
with K = |K| e^{i phi}, so U^T H x = |K| (.) V^T x, and the singular values are |K_f|, equal for
both coordinates of a pair (Eq. 24-27's role: H = U Sigma V^T with permuted spectral order).
One permutation sorts them descending, as in the separable case (Eq. 27's P). Memory is Theta(n):
phases, sorted singular values and the permutation; never an n x n matrix.

K is symmetrised (K_g := conj K_r, K_f := Re K_f at f = -f) so the pairs share their singular value
and U is exactly orthogonal in float32 arithmetic. Singular values below `zero_threshold` (the
paper's truncation) or numerically zero (<= max(H, W) * eps32 * max|K|) are set to zero; H is
then the truncated operator, and with `zero_threshold=0` it is the convolution itself.

Everything is traceable in the kernel: building inside `jit`, gradients of H x (or of a DDRM step)
with respect to the kernel, and `vmap` over a batch of kernels (`batched_op=True` in the sampler).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ddrm_jax.operators import base

SQRT2 = math.sqrt(2.0)


def _conjugate_layout(height, width):
  """(partner flat index, c1, c2) of an (H, W) frequency grid (module docstring), numpy."""
  h = np.arange(height)[:, None]
  w = np.arange(width)[None, :]
  idx = h * width + w
  partner = ((-h) % height) * width + (-w) % width
  self_conj = idx == partner
  rep = idx < partner
  c1 = np.where(self_conj, 1.0, np.where(rep, SQRT2, 0.0))
  c2 = np.where(self_conj | rep, 0.0, -SQRT2)
  return partner, rep, self_conj, c1[..., None].astype(np.float32), c2[
      ..., None].astype(np.float32)


class CircularBlur(base.Operator):
  """Wrap-around 2-D convolution, per channel, with its DFT SVD (module docstring)."""

  cos_phi: jax.Array  # (H, W, Ck) cos of the kernel phase, Ck = 1 (shared) or C.
  sin_phi: jax.Array  # (H, W, Ck) sin of the kernel phase.
  perm: jax.Array  # (n,) int32: flat (h, w, c) index of spectral entry p.
  inv_perm: jax.Array  # (n,) int32.
  s: jax.Array  # (n,) float32 sorted singular values |K_f|.

  def _layout(self):
    _, _, _, c1, c2 = _conjugate_layout(self.x_shape[0], self.x_shape[1])
    return jnp.asarray(c1), jnp.asarray(c2)

  def _to_real(self, spec):
    c1, c2 = self._layout()
    z = c1 * jnp.real(spec) + c2 * jnp.imag(spec)
    return z.reshape(-1)[self.perm]

  def _from_real(self, v):
    c1, c2 = self._layout()
    z = v[self.inv_perm].reshape(self.x_shape)
    return jax.lax.complex(c1 * z, -c2 * z)  # (c1 - i c2) z.

  def _phase(self):
    return jax.lax.complex(self.cos_phi, self.sin_phi)

  def _Vt(self, x):
    return self._to_real(jnp.fft.fft2(x, axes=(0, 1), norm='ortho'))

  def _V(self, v):
    return jnp.real(jnp.fft.fft2(self._from_real(v), axes=(0, 1), norm='ortho'))

  def _Ut(self, y):
    spec = jnp.conj(self._phase()) * jnp.fft.fft2(y, axes=(0, 1), norm='ortho')
    return self._to_real(spec)

  def _U(self, u):
    # U = (U^T)^T = Re(F^T diag(e^{-i phi}) (c1 - i c2) .), F^T = F.
    spec = jnp.conj(self._phase()) * self._from_real(u)
    return jnp.real(jnp.fft.fft2(spec, axes=(0, 1), norm='ortho'))

  def singulars(self):
    return self.s


def _check_kernel(kernel, image_shape, normalize, signed):
  """Shape checks (always) and value checks (concrete kernels, `base.check_kernel_values`);
  returns the float32 kernel, divided by its (per-channel) sum when `normalize`."""
  base.not_a_path(kernel)
  try:
    k = jnp.asarray(kernel)
  except TypeError:
    raise ValueError(f'kernel must be an array of real taps, got {type(kernel).__name__}') from None
  h, w, c = image_shape
  if k.ndim not in (2, 3):
    raise ValueError(f'blur kernel must be 2-D (kh, kw) or 3-D (kh, kw, C), got shape {k.shape}')
  if k.size == 0:
    raise ValueError(f'blur kernel is empty (shape {k.shape})')
  if k.shape[0] > h or k.shape[1] > w:
    raise ValueError(f'blur kernel {k.shape[0]}x{k.shape[1]} is larger than the image {h}x{w}')
  if k.ndim == 3 and k.shape[2] != c:
    raise ValueError(f'per-channel blur kernel has {k.shape[2]} channels, the image {c}')
  if not (jnp.issubdtype(k.dtype, jnp.floating) or jnp.issubdtype(k.dtype, jnp.integer)
          or k.dtype == jnp.bool_):
    raise ValueError(f'blur kernel must be real numbers, got dtype {k.dtype}')
  k = k.astype(jnp.float32)
  concrete = base.concrete_or_none(k)
  if concrete is not None:
    base.check_kernel_values(concrete, normalize, signed, axes=(0, 1))
  if normalize:
    k = k / jnp.sum(k, axis=(0, 1), keepdims=True)
  return k


def circular_blur(kernel, image_shape, zero_threshold=base.DEFAULT_ZERO_THRESHOLD, *,
                  normalize=False, signed=False):
  """Circular convolution of every channel with `kernel` (kh, kw) or per channel (kh, kw, C).

  See the module docstring; `kernel` may be traced (jit, grad, vmap over kernels). What a
  kernel may be (checked when it is concrete; a traced one is used as the rules say, unchecked):
  finite, not all zero, and a blur: taps >= 0 and summing to 1 (per channel, within
  `base.KERNEL_SUM_TOLERANCE`), used exactly as given. `normalize=True` takes any non-negative
  kernel with a positive sum and divides it by its sum (float32), so its scale cannot decide
  which frequencies clear `zero_threshold`. `signed=True` takes any real filter (negative taps,
  any sum) as given: the convolution as plain linear algebra. ValueError naming `kernel`
  otherwise.
  """
  shape = base.as_shape(image_shape)
  thr = base.check_threshold(zero_threshold)
  k = _check_kernel(kernel, shape, bool(normalize), bool(signed))
  if k.ndim == 2:
    k = k[..., None]
  return _build(k, shape, thr)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _build(k, shape, thr):
  h, w, c = shape
  kh, kw, ck = k.shape
  partner, rep, self_conj, _, _ = _conjugate_layout(h, w)
  # The kernel on the (H, W) torus: tap j at (j - centre) mod (H, W).
  rows = (np.arange(kh) - kh // 2) % h
  cols = (np.arange(kw) - kw // 2) % w
  kpad = jnp.zeros((h, w, ck), jnp.float32).at[rows[:, None], cols[None, :]].set(k)
  spec = jnp.fft.fft2(kpad, axes=(0, 1))  # K_f, unnormalised (convolution theorem).
  pr, pc = np.unravel_index(partner, (h, w))
  companion = ~(rep | self_conj)
  spec = jnp.where(companion[..., None], jnp.conj(spec[pr, pc]), spec)
  spec = jnp.where(self_conj[..., None], jnp.real(spec).astype(spec.dtype), spec)
  re, im = jnp.real(spec), jnp.imag(spec)
  mag2 = re**2 + im**2
  nonzero = mag2 > 0
  mag = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, mag2, 1.0)), 0.0)
  safe = jnp.where(nonzero, mag, 1.0)
  cos_phi = jnp.where(nonzero, re / safe, 1.0)
  sin_phi = jnp.where(nonzero, im / safe, 0.0)
  tol = max(h, w) * np.finfo(np.float32).eps * jax.lax.stop_gradient(mag.max())
  s = jnp.where((mag < thr) | (mag <= tol), 0.0, mag)
  s = jnp.broadcast_to(s, (h, w, c)).reshape(-1)
  perm = jnp.argsort(-jax.lax.stop_gradient(s), stable=True).astype(jnp.int32)
  return CircularBlur(x_shape=shape, y_shape=shape, cos_phi=cos_phi, sin_phi=sin_phi,
                      perm=perm, inv_perm=base.inverse_permutation(perm), s=s[perm])


# -- kernels -------------------------------------------------------------------------------------


def motion_kernel(key, size, points=64, inertia=0.8, extent=1.0):
  """A random camera-shake kernel (size, size): non-negative, sums to 1, deterministic in `key`.

  A smooth random trajectory (a random walk of the velocity with `inertia` in [0, 1): each step
  keeps that fraction of the velocity and adds a Gaussian kick) of `points` positions is centred,
  scaled so its longer side spans `extent` * (size - 1) pixels and rasterised by bilinear
  splatting with equal time per point (the exposure). Traceable in `key` (vmap over keys).
  """
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
    raise ValueError(f'motion kernel size must be a positive int, got {size!r}')
  if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 2:
    raise ValueError(f'motion kernel points must be an int >= 2, got {points!r}')
  if not 0.0 <= float(inertia) < 1.0:
    raise ValueError(f'motion kernel inertia must be in [0, 1), got {inertia!r}')
  if not 0.0 < float(extent) <= 1.0:
    raise ValueError(f'motion kernel extent must be in (0, 1], got {extent!r}')
  return _motion_kernel(base.as_key(key), int(size), int(points), float(inertia), float(extent))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _motion_kernel(key, size, points, inertia, extent):
  k_dir, k_kick = jax.random.split(key)
  angle = jax.random.uniform(k_dir, (), minval=0.0, maxval=2 * math.pi)
  v0 = jnp.stack([jnp.cos(angle), jnp.sin(angle)])
  kicks = jax.random.normal(k_kick, (points - 1, 2)) * math.sqrt(1.0 - inertia**2)

  def walk(v, kick):
    v = inertia * v + kick
    return v, v

  _, vs = jax.lax.scan(walk, v0, kicks)
  pos = jnp.concatenate([jnp.zeros((1, 2)), jnp.cumsum(vs, axis=0)])
  lo, hi = pos.min(axis=0), pos.max(axis=0)
  span = jnp.maximum((hi - lo).max(), 1e-6)
  centre = (size - 1) / 2.0
  pos = (pos - (lo + hi) / 2.0) * (extent * (size - 1) / span) + centre
  pos = jnp.clip(pos, 0.0, size - 1.0)
  base_ij = jnp.clip(jnp.floor(pos), 0, max(size - 2, 0)).astype(jnp.int32)
  frac = pos - base_ij
  out = jnp.zeros((size + 1, size + 1), jnp.float32)
  for di in (0, 1):
    for dj in (0, 1):
      wgt = (frac[:, 0] if di else 1 - frac[:, 0]) * (frac[:, 1] if dj else 1 - frac[:, 1])
      out = out.at[base_ij[:, 0] + di, base_ij[:, 1] + dj].add(wgt)
  out = out[:size, :size]
  return out / out.sum()


def disk_kernel(radius, supersample=8):
  """A defocus (pillbox) kernel of radius `radius` pixels: (2 ceil(r - 1/2) + 1)^2 taps (the
  pixels the disc reaches) weighted by the disc's area in each pixel (`supersample`^2 points per
  pixel), summing to 1."""
  r = float(radius)
  if not math.isfinite(r) or r <= 0:
    raise ValueError(f'disk radius must be a finite number > 0, got {radius!r}')
  half = max(0, math.ceil(r - 0.5))
  sub = (np.arange(supersample) + 0.5) / supersample - 0.5
  grid = np.arange(-half, half + 1)
  x = (grid[:, None] + sub[None, :]).reshape(-1)
  inside = (x[:, None]**2 + x[None, :]**2) <= r * r
  size = 2 * half + 1
  k = inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
  return (k / k.sum()).astype(np.float32)


# -- real photos: borders that are not circular ---------------------------------------------------


def border_padding(height, width, kernel_shape, multiple=1):
  """((top, bottom), (left, right)) padding of a photo for `reflect_extension`: at least the
  kernel's size on every side, and padded sizes that are multiples of `multiple` (e.g. what a
  network's down-sampling needs), the extra split evenly."""
  kh, kw = int(kernel_shape[0]), int(kernel_shape[1])
  if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
    raise ValueError(f'multiple must be a positive int, got {multiple!r}')
  pads = []
  for size, k in ((height, kh), (width, kw)):
    total = size + 2 * k
    extra = (-total) % multiple
    pads.append((k + extra // 2, k + extra - extra // 2))
  return tuple(pads)


def reflect_extension(y, kernel, padding, lam=1e-3, iters=100):
  """A blurred photo y (H, W, C) extended to a circularly blurred image on the padded torus.

  A real photo's blur did not wrap around: near its borders it saw the scene beyond them. Here
  the scene is modelled by mirroring (scipy's mode='reflect'): y = A x, A x = crop(k (*) pad(x))
  with pad the symmetric padding by `padding` (at least the kernel's size) and (*) the circular
  convolution on the padded torus. A Tikhonov estimate x_hat = argmin |A x - y|^2 + lam |x|^2
  (conjugate gradients on the normal equations, `iters` steps, started at y) fills the border:
  the result is k (*) pad(x_hat) with y itself inside. Restoring it with the circular operator of
  the padded shape and cropping (`crop_padding`) leaves no wrap-around ringing at the photo's edges.
  Pure and jittable; y in any units (the map is linear).
  """
  y = jnp.asarray(y, jnp.float32)
  (top, bottom), (left, right) = padding
  h, w, c = y.shape
  k = jnp.asarray(kernel, jnp.float32)
  if min(top, bottom) < k.shape[0] or min(left, right) < k.shape[1]:
    raise ValueError(f'padding {padding} is narrower than the {k.shape[0]}x{k.shape[1]} kernel')
  op = circular_blur(k, (h + top + bottom, w + left + right, c), zero_threshold=0.0,
                     signed=True)  # The linear map of `kernel` as given (any real filter).
  pad = lambda x: jnp.pad(x, ((top, bottom), (left, right), (0, 0)), mode='symmetric')
  blur_all = lambda x: op.H(pad(x))
  forward = lambda x: blur_all(x)[top:top + h, left:left + w]
  adjoint = jax.linear_transpose(forward, y)
  normal = lambda x: adjoint(forward(x))[0] + lam * x
  x_hat, _ = jax.scipy.sparse.linalg.cg(normal, adjoint(y)[0], x0=y, maxiter=iters)
  return blur_all(x_hat).at[top:top + h, left:left + w].set(y)


def crop_padding(x, padding):
  """Undoes the padding of `border_padding` on (..., H, W, C) arrays."""
  (top, bottom), (left, right) = padding
  h, w = x.shape[-3], x.shape[-2]
  return x[..., top:h - bottom, left:w - right, :]
