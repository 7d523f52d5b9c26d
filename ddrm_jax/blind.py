"""Blind deblurring: DDRM that estimates each image's blur kernel while it restores.

The measurement is y = k * x + sigma_y z with an unknown kernel k: (kh, kw), non-negative, sum 1,
applied as the wrap-around convolution of `operators.circular_blur` (centred at (kh//2, kw//2)).
Like GibbsDDRM (Murata et al., ICML 2023), the chain alternates two conditional updates:

  x update: one DDRM step (Eq. 8) with the operator H_k of the current kernel. Eq. 8 needs only
            the network's x0 and eps predictions and ybar = Sigma_k^+ U_k^T y, so the operator may
            change from one step to the next.
  k update: from the step's x0 prediction x0 (at noise levels below `kernel_from`), the kernel
            that best explains y:

              k = argmin_{k >= 0, sum k = 1}  1/2 ||y - k * x0||^2 / n + lam/2 ||D k||^2
                                                 + mu sum_d rho_d k_d                        (B1)

            over the kernel's support, D the finite differences of the kernel (smoothness), n the
            number of pixel values, rho_d the squared distance of tap d from the centre tap in
            half-widths (the spread penalty: on the simplex, mu times the kernel's second moment
            about its centre). The spread term decides what the data leave open: on photos
            with few edges, or edges of few directions, many kernels explain y about equally,
            and without it the fit settles on scattered ones whose far taps print ghost copies
            of every edge. It is linear, so (B1) stays a quadratic in the kh*kw taps: with X_d
            = x0 shifted by tap d (circularly), A_de = <X_d, X_e> / n and b_d = <X_d, y> / n,
            (B1) is 1/2 k^T (A + lam D^T D) k - (b - mu rho)^T k. A depends only on the
            circular autocorrelation of x0 and b on its cross-correlation with y, both one FFT
            each (Theta(n log n),
            nothing of size n x n). The problem is small (kh*kw unknowns) but badly conditioned
            (natural images have most of their energy at low frequencies): 30 projected-
            gradient steps leave a kernel at NCC 0.83-0.90 with the true one even when x0 is the
            true image, so it is solved well instead: accelerated projected gradient (FISTA)
            onto the simplex, 500 iterations by default (NCC 0.99 there), warm-started from the
            previous kernel. A is never formed: A_de = R(d - e) is a Toeplitz-block-Toeplitz
            matrix, so A z is a circular convolution of z with a (2k - 1)-wide window of R
            (`_gram_operator`), Theta(k^2 log k) per iteration for a k x k kernel, and the
            step size comes from a Gershgorin bound instead of an eigendecomposition.

After each fit the kernel's centre of mass is moved to its centre tap and x_t rolled back
(`recentre_kernel`): the blur of x_t is unchanged, and the restoration stays registered with y
(the fit alone may slide the kernel, and the image with it, by a pixel or two).

The last pass runs several chains per image from the same restart (`chains`, 4), their kernel
fitted from all of them at once (`fit_chains`), and keeps their mean: closer to the posterior
mean, the restoration of least expected squared error, than any one sample.

At the end the restoration is corrected from its own residual y - k * x0 (`refine`: the linear
minimum-mean-square-error estimate of its error, a Wiener filter of the residual whose error
spectrum is estimated from the residual itself), which takes from y what the prior's
restoration missed or invented and the measurement still shows.

Departures from GibbsDDRM: the kernel update is an exact(-ly converged) constrained least-squares
solve instead of a few Langevin steps on the kernel (no kernel noise); the kernel is a
simplex-constrained filter of fixed support; the blur is circular, so
that DDRM's SVD is exact (see `operators.circular_blur`); and everything runs as one `lax.scan`,
vmapped over images, each with its own kernel.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ddrm_jax import diffusion
from ddrm_jax import operators
from ddrm_jax import sampler



# The standard deviation of rounding to 8 bits, in [-1, 1] model units (2 / 255 / sqrt(12)).
QUANTISATION_SIGMA = 2.0 / 255.0 / math.sqrt(12.0)


def check_kernel_size(kernel_size, image_shape):
  """ValueError unless `kernel_size` is an odd int >= 3 no larger than the image."""
  if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)):
    raise ValueError(f'kernel_size must be an int, got {kernel_size!r}')
  if kernel_size < 3 or kernel_size % 2 == 0:
    raise ValueError(f'kernel_size must be odd and >= 3, got {kernel_size}')
  height, width = image_shape[:2]
  if kernel_size > min(height, width):
    raise ValueError(f'kernel_size {kernel_size} is larger than the image ({height}x{width})')
  return int(kernel_size)


def gaussian_kernel2d(size):
  """An isotropic Gaussian (size, size) kernel, sum 1, sigma = size / 6, `size` odd (the default
  initial guess): the outer product of the separable blur's normalised taps."""
  g = operators.gaussian_kernel(size / 6.0, size)
  return jnp.asarray(np.outer(g, g), jnp.float32)


def project_simplex(v):
  """Euclidean projection of a flat vector onto {k >= 0, sum k = 1} (sort and threshold)."""
  u = jnp.sort(v)[::-1]
  css = jnp.cumsum(u) - 1.0
  idx = jnp.arange(1, v.shape[0] + 1, dtype=v.dtype)
  rho = jnp.sum((u - css / idx) > 0)
  theta = css[rho - 1] / rho.astype(v.dtype)
  return jnp.maximum(v - theta, 0.0)


def _torus_offsets(kernel_size, size):
  """Offsets -(k-1)..(k-1) of tap differences, laid on a torus of min(size, 2k - 1) points at
  their index mod that length (numpy, 1-D): where `_correlations` reads R to build the window."""
  k = kernel_size
  period = min(size, 2 * k - 1)
  m = np.arange(period)
  return np.where(m < k, m, m - period) % size, period


def _correlations(x0, y):
  """Circular R[w] = sum_j x0[j] x0[j + w] and Cxy[u] = sum_j x0[j] y[j + u], (H, W), summed
  over channels, both divided by n = x0.size."""
  height, width = x0.shape[:2]
  fx = jnp.fft.rfft2(x0, axes=(0, 1))
  fy = jnp.fft.rfft2(y, axes=(0, 1))
  autocorr = jnp.fft.irfft2(jnp.sum(jnp.conj(fx) * fx, -1), s=(height, width))
  cross = jnp.fft.irfft2(jnp.sum(jnp.conj(fx) * fy, -1), s=(height, width))
  return autocorr / x0.size, cross / x0.size


def _tap_rows(kernel_size, size):
  """(k,) indices (d - c) mod size of the taps d along one axis, c = k // 2 (numpy)."""
  return (np.arange(kernel_size) - kernel_size // 2) % size


def normal_equations(x0, y, kernel_size):
  """(A, b) of (B1) without the prior: A (K, K) and b (K,), K = kernel_size**2, for one image
  x0 (H, W, C) and its blurred measurement y (H, W, C), taps in row-major kernel order.

  A_de = R(d - e) is Toeplitz-block-Toeplitz: built by two gathers with (k, k) index arrays (one
  per axis), nothing of K x K indices (`estimate_kernel` never forms A: `_gram_operator`).
  """
  height, width = x0.shape[:2]
  k = kernel_size
  autocorr, cross = _correlations(x0, y)
  r = np.arange(k)
  # y ~ sum_d k_d roll(x0, d - c): A_de = R(d - e), b_d = Cxy(d - c).
  rows = autocorr[(r[:, None] - r[None, :]) % height]  # (i, i', W)
  a = rows[:, :, (r[:, None] - r[None, :]) % width]  # (i, i', j, j')
  a = jnp.transpose(a, (0, 2, 1, 3)).reshape(k * k, k * k)
  b = cross[_tap_rows(k, height)][:, _tap_rows(k, width)].reshape(-1)
  return a, b


def _gram_operator(autocorr, kernel_size):
  """z (k, k) -> A z of (B1) as a circular convolution with the window of R on a small torus
  (min(H, 2k - 1) per axis: wide enough that nothing wraps, R itself where the image is
  smaller), and an upper bound of A's largest eigenvalue; Theta(k^2 log k) per product.

  (A z)_d = sum_e R(d - e) z_e: with z at e on the torus and R(m) at m mod its period, the
  circular convolution read at d is that sum, exactly. The bound is the smaller of two: A's
  largest absolute row sum (Gershgorin; the same convolution of |R| with ones, within 3-15% of
  the eigenvalue on the bundled photos) and the largest eigenvalue of the symmetric circulant
  that A is a principal submatrix of (Cauchy interlacing), its largest real DFT coefficient.
  """
  k = kernel_size
  (ri, ph), (rj, pw) = (_torus_offsets(k, n) for n in autocorr.shape)
  window = autocorr[ri][:, rj]

  def correlate(spectrum, z):
    zp = jnp.pad(z, ((0, ph - k), (0, pw - k)))
    return jnp.fft.irfft2(spectrum * jnp.fft.rfft2(zp), s=(ph, pw))[:k, :k]

  spectrum = jnp.real(jnp.fft.rfft2(window))
  row_sums = correlate(jnp.fft.rfft2(jnp.abs(window)), jnp.ones((k, k), window.dtype))
  bound = jnp.minimum(jnp.max(spectrum), jnp.max(row_sums))
  return functools.partial(correlate, spectrum), bound


def _smoothness(z):
  """D^T D z for the kernel's horizontal and vertical finite differences D, z (k, k): the
  Laplacian with free (Neumann) borders; its eigenvalues are below 8."""
  out = jnp.zeros_like(z)
  for axis in (0, 1):
    g = jnp.diff(z, axis=axis)
    pad_lo = [(0, 0), (0, 0)]
    pad_hi = [(0, 0), (0, 0)]
    pad_lo[axis], pad_hi[axis] = (1, 0), (0, 1)
    out = out + jnp.pad(g, pad_lo) - jnp.pad(g, pad_hi)  # (D^T g)_i = g_{i-1} - g_i.
  return out


def estimate_kernel(x0, y, kernel_size, init=None, *, smoothness=1e-3, iters=500, spread=0.0):
  """The kernel of (B1) for one image: x0 (H, W, C) the (predicted) sharp image, y (H, W, C) its
  blurred measurement; returns (kernel_size, kernel_size), non-negative, sum 1.

  FISTA with steps 1/L, L an upper bound of the largest eigenvalue of A + lam D^T D (A's, from
  `_gram_operator`, plus 8 lam), and the Euclidean projection onto the simplex. `smoothness`
  is lam relative to the mean of diag(A), R(0); `spread` is mu relative to G, x0's mean
  squared difference of neighbouring pixels (per value; 2 (R(0) - R(1)) averaged over the two
  axes), the data term's curvature for moving mass by one tap, so that the two weigh the same
  on every photo whatever its contrast. `init` (default: a flat kernel) warm-starts the
  iterations. A is applied as a correlation, never formed.
  """
  k = kernel_size
  autocorr, cross = _correlations(x0, y)
  b = cross[_tap_rows(k, x0.shape[0])][:, _tap_rows(k, x0.shape[1])]
  gram, bound = _gram_operator(autocorr, k)
  lam = smoothness * autocorr[0, 0]
  if not (isinstance(spread, (int, float)) and spread == 0):
    r = (np.arange(k) - k // 2) / max(k // 2, 1)
    neighbours = autocorr[1, 0] + autocorr[-1, 0] + autocorr[0, 1] + autocorr[0, -1]
    g = 2.0 * autocorr[0, 0] - 0.5 * neighbours  # Mean of 2 (R(0) - R(1)) over both axes.
    b = b - spread * g * jnp.asarray(r[:, None]**2 + r[None, :]**2, jnp.float32)
  lip = bound + 8.0 * lam
  k0 = (jnp.full((k, k), 1.0 / (k * k), jnp.float32) if init is None
        else jnp.reshape(init, (k, k)).astype(jnp.float32))
  project = lambda v: project_simplex(v.reshape(-1)).reshape(k, k)

  def body(_, carry):
    kern, z, t = carry
    grad = gram(z) + lam * _smoothness(z) - b
    k_next = project(z - grad / lip)
    t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
    z_next = k_next + ((t - 1.0) / t_next) * (k_next - kern)
    return k_next, z_next, t_next

  kern, _, _ = jax.lax.fori_loop(0, iters, body, (k0, k0, jnp.float32(1.0)))
  return kern


def fit_chains(x0, y, kernels, **fit_kwargs):
  """(B, k, k): each image's kernel of (B1) fitted from all n of its chains' x0 at once, x0
  (B * n, H, W, C) (image i's chain j at i * n + j), y (B, H, W, C), kernels (B, k, k) the
  warm starts; `fit_kwargs` those of `estimate_kernel`, its `spread` a number or one per
  image (B,) (`sample_blind`'s `spread_extent`). The data term is the mean of (B1)'s
  over the chains (their normal equations averaged): (B1) for the chains laid side by side
  as channels, y repeated beside each."""
  batch, k = kernels.shape[0], kernels.shape[-1]
  n = x0.shape[0] // batch
  height, width, channels = x0.shape[1:]
  side_by_side = jnp.moveaxis(x0.reshape(batch, n, height, width, channels), 1, -2).reshape(
      batch, height, width, n * channels)
  spread = jnp.broadcast_to(jnp.asarray(fit_kwargs.pop('spread', 0.0), jnp.float32), (batch,))
  return jax.vmap(lambda x, yi, ki, si: estimate_kernel(x, yi, k, ki, spread=si, **fit_kwargs))(
      side_by_side, jnp.tile(y, (1, 1, 1, n)), kernels, spread)


def second_moment(kernel):
  """(...,) the second moment of `kernel` (..., kh, kw) about its own centre of mass
  (`kernel_centroid`), in pixels^2: its extent, 2 sigma^2 for an isotropic Gaussian."""
  kh, kw = kernel.shape[-2:]
  c = kernel_centroid(kernel)
  rows = jnp.arange(kh, dtype=jnp.float32) - kh // 2
  cols = jnp.arange(kw, dtype=jnp.float32) - kw // 2
  d2 = ((rows[:, None] - c[..., 0, None, None])**2 + (cols[None, :] - c[..., 1, None, None])**2)
  return jnp.sum(kernel * d2, (-2, -1)) / jnp.sum(kernel, (-2, -1))


def kernel_centroid(kernel):
  """The kernel's centre of mass (row, col) relative to its centre tap (kh // 2, kw // 2)."""
  kh, kw = kernel.shape[-2:]
  rows = jnp.arange(kh, dtype=jnp.float32) - kh // 2
  cols = jnp.arange(kw, dtype=jnp.float32) - kw // 2
  mass = jnp.sum(kernel, (-2, -1))
  return jnp.stack([jnp.sum(kernel * rows[:, None], (-2, -1)),
                    jnp.sum(kernel * cols[None, :], (-2, -1))], -1) / mass[..., None]


def recentre_kernel(kernel, x):
  """(kernel, x) with the kernel's centre of mass moved to within half a pixel of its centre
  tap by an integer shift s (taps shifted off the support are dropped, the rest renormalised)
  and the image x (H, W, C) rolled by s the other way: a circular blur k * x is unchanged."""
  kh, kw = kernel.shape
  s = jnp.round(kernel_centroid(kernel)).astype(jnp.int32)
  padded = jnp.pad(kernel, ((kh, kh), (kw, kw)))
  moved = jax.lax.dynamic_slice(padded, (kh + s[0], kw + s[1]), (kh, kw))
  moved = moved / jnp.maximum(jnp.sum(moved), 1e-30)
  return moved, jnp.roll(x, (s[0], s[1]), (0, 1))


def prune_kernel(kernel, floor=0.05):
  """The kernel with taps below `floor` times its largest set to zero and every tap not
  8-connected (through the remaining taps) to the largest one removed, renormalised: a camera
  path is one connected curve, and the isolated far taps a fit leaves on flat photos print
  ghost copies of edges."""
  kh, kw = kernel.shape
  support = kernel >= floor * jnp.max(kernel)
  peak = jnp.unravel_index(jnp.argmax(kernel), kernel.shape)
  seed = jnp.zeros(kernel.shape, bool).at[peak].set(True)

  def grow(state):
    reach, _ = state
    padded = jnp.pad(reach, 1)
    near = jnp.zeros_like(reach)
    for di in range(3):
      for dj in range(3):
        near = near | padded[di:di + kh, dj:dj + kw]
    grown = near & support
    return grown, jnp.any(grown != reach)

  reach, _ = jax.lax.while_loop(lambda s: s[1], grow, (seed, jnp.bool_(True)))
  kept = jnp.where(reach, kernel, 0.0)
  return kept / jnp.sum(kept)


def fourier_shift(x, delta):
  """x (H, W, C) shifted by a (possibly fractional) (row, col) `delta` on the torus: the DFT's
  phase ramp (a roll for integer shifts; Nyquist terms of even sizes keep their real part)."""
  height, width = x.shape[:2]

  def factor(freqs, d):
    # A Nyquist frequency (even sizes) is its own negative: a real factor keeps it Hermitian.
    return jnp.where(jnp.abs(freqs) == 0.5, jnp.cos(jnp.pi * d),
                     jnp.exp(-2j * jnp.pi * freqs * d))

  ramp = factor(jnp.fft.fftfreq(height), delta[0])[:, None] * factor(
      jnp.fft.rfftfreq(width), delta[1])[None, :]
  return jnp.fft.irfft2(jnp.fft.rfft2(x, axes=(0, 1)) * ramp[..., None], s=(height, width),
                        axes=(0, 1))


def _kernel_spectrum(kernel, height, width):
  """K_f (H, W) complex: the unnormalised DFT of the kernel placed on the (H, W) torus as
  `operators.circular_blur` places it (tap j at (j - (kh // 2, kw // 2)) mod (H, W))."""
  rows, cols = _tap_rows(kernel.shape[0], height), _tap_rows(kernel.shape[1], width)
  placed = jnp.zeros((height, width), jnp.float32).at[rows[:, None], cols[None, :]].set(kernel)
  return jnp.fft.fft2(placed)


def _radial_rings(height, width, rings):
  """(H, W) int ring index of every DFT frequency by its radius |f| (cycles per pixel, 0 to
  sqrt(2) / 2), `rings` rings of equal width (numpy): a partition symmetric under f -> -f."""
  radius = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :])
  return np.minimum((radius / (np.sqrt(0.5) + 1e-9) * rings).astype(np.int32), rings - 1)


def refine(x, kernel, y, sigma_y, rings=16):
  """x (H, W, C) corrected towards the measurement y = k * x_true + sigma_y z by the linear
  minimum-mean-square-error estimate of its own error from the residual r = y - k * x.

  Per frequency f, R_f = K_f E_f + N_f with E = x_true - x. Taking E_f and N_f independent,
  zero-mean, of variances S_e(f) and S_n = H W sigma_y^2 (unnormalised DFT), the LMMSE estimate
  is E^_f = conj(K_f) S_e / (|K_f|^2 S_e + S_n) R_f (a Wiener filter of the residual). S_e is
  not known: it is estimated from the residual itself, per ring of `rings` equal-width radii
  (`_radial_rings`), as S_e = max(mean |R_f|^2 - S_n', 0) / mean |K_f|^2 over the ring (the
  method of moments; channels pooled), S_n' the noise power and two of its standard errors.
  Where the residual is only noise the correction vanishes; where the restoration left
  structure that y has and K passes, x moves towards it. Returns x + E^.
  """
  height, width = x.shape[:2]
  spec = _kernel_spectrum(kernel, height, width)[..., None]
  resid = jnp.fft.fft2(y, axes=(0, 1)) - spec * jnp.fft.fft2(x, axes=(0, 1))
  ring = _radial_rings(height, width, rings).reshape(-1)
  count = np.maximum(np.bincount(ring, minlength=rings), 1).astype(np.float32)
  ring_mean = lambda v: jax.ops.segment_sum(v.reshape(-1), ring, rings) / count
  power = ring_mean(jnp.mean(jnp.abs(resid)**2, -1))
  gain2 = ring_mean(jnp.abs(spec[..., 0])**2)
  noise = height * width * jnp.float32(sigma_y)**2
  # The ring's noise power is known only up to ~1/sqrt(m), m its real values: two standard
  # errors more are subtracted, or noise alone, divided by a small mean |K|^2, would pass.
  floor = noise * (1.0 + 2.0 / jnp.sqrt(count * x.shape[-1]))
  s_e = (jnp.maximum(power - floor, 0.0) / jnp.maximum(gain2, 1e-12))[ring].reshape(
      height, width, 1)
  wiener = jnp.conj(spec) * s_e / (jnp.abs(spec)**2 * s_e + jnp.maximum(noise, 1e-12))
  return x + jnp.real(jnp.fft.ifft2(wiener * resid, axes=(0, 1)))


def _is_number(value):
  """Whether `value` is a Python or numpy real number (not a bool)."""
  return (not isinstance(value, bool)
          and isinstance(value, (int, float, np.integer, np.floating)))


def _per_pass(name, value, passes):
  """`value` as one number per pass: a number for every pass, or a tuple / list of `passes`
  numbers (first pass first), each finite and >= 0; ValueError naming `name` otherwise."""
  values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * passes
  if len(values) != passes or any(
      not _is_number(v) or not 0.0 <= float(v) < math.inf for v in values):
    raise ValueError(f'{name} must be a finite number >= 0 or one per pass ({passes}), got '
                     f'{value!r}')
  return values


def _refit_to_the_mean(x, y, kernels, extent, recentre, **fit_kwargs):
  """(kernels, x): each image's kernel refitted (`fit_chains`, warm-started) from x, the chains'
  mean restoration, and recentred with x (`recentre_kernel`), where the kernel's second moment
  is at most `extent` (True: every image); the other images' kernels and x as they are."""
  refit, moved = fit_chains(x, y, kernels, **fit_kwargs), x
  if recentre:
    refit, moved = jax.vmap(recentre_kernel)(refit, x)
  if extent is True:
    return refit, moved
  near = second_moment(kernels) <= extent
  return (jnp.where(near[:, None, None], refit, kernels),
          jnp.where(near[:, None, None, None], moved, x))


def _check_unit_kernels(kernels, batch, kernel_size):
  """init_kernel as (B, kernel_size, kernel_size) float32; concrete kernels must be on the
  simplex (`operators.circular_blur`'s rules for a kernel as given), traced ones are not checked."""
  k = jnp.asarray(kernels, jnp.float32)
  if k.shape == (kernel_size, kernel_size):
    k = jnp.broadcast_to(k, (batch, kernel_size, kernel_size))
  if k.shape != (batch, kernel_size, kernel_size):
    raise ValueError(f'init_kernel must be ({kernel_size}, {kernel_size}) or ({batch}, '
                     f'{kernel_size}, {kernel_size}), got {tuple(k.shape)}')
  concrete = operators.base.concrete_or_none(k)
  if concrete is not None:
    operators.base.check_kernel_values(np.moveaxis(concrete, 0, -1), normalize=False,
                                       signed=False, what='init_kernel', axes=(0, 1))
  return k


def sample_blind(model_fn, y, key, kernel_size, *, steps=20, eta=1.0, eta_b=0.7, sigma_y=0.0,
                 init_kernel=None, kernel_from=0.8, kernel_iters=250, smoothness=1e-3,
                 zero_threshold=0.2, passes=2, restart=0.15, recentre=True, register=0.75,
                 prune=0.0, spread=0.1, spread_extent=0.5, refine_rings=16, chains=4,
                 final_refit=False, timesteps=None, betas=None):
  """Restores blurred images whose kernels are unknown; returns (x0 (B, H, W, C), kernels
  (B, kernel_size, kernel_size)), every image with its own kernel (module docstring).

  Args:
    model_fn: `model_fn(x_t, t) -> eps` as for `sampler.sample`.
    y: (B, H, W, C) blurred measurements in [-1, 1] model units (y = k * x + sigma_y z, `k`
      applied as `operators.circular_blur`).
    key: one PRNG key (image i uses fold_in(key, i)) or a (B,) batch of keys.
    kernel_size: odd, >= 3, at most the image's smaller side.
    steps, eta, eta_b, sigma_y, timesteps, betas: as for `sampler.sample`. eta_b defaults to
      0.7: a wrong kernel's ybar then pins x0 less, and x0 pinned to H_k^+ y would only give
      k back (measured: +1.0 dB against +0.6 dB with eta_b = 1 on the README's problem). eta
      defaults to 1.0 (DDPM-like steps, the most noise each step; 0.85 for `sampler.sample`):
      with the last pass's mean of `chains`, the development kernels gained +2.19 dB against
      +2.03 at 0.85 (2 seeds, kernel NCC 0.829 against 0.815; docs/blind.md). eta_b may
      also be a tuple of one per pass (first pass first): on the nearly sharp development
      kernels (docs/blind.md) (0.7, 0.5) changed nothing, (0.7, 0.3) lost 0.3 dB and (0.7, 1)
      more (its worst photo -2.9 dB), so one 0.7 for all passes stays.
    init_kernel: (kernel_size, kernel_size) or per image (B, ...); default a Gaussian of
      sigma kernel_size / 6 (`gaussian_kernel2d`).
    kernel_from: the kernel is re-estimated after each step whose noise level t is at most
      kernel_from * 1000 (x0 predictions at higher noise are too blurry to fit a kernel to).
    kernel_iters, smoothness: of `estimate_kernel` (250 iterations: each fit is warm-started
      from the last kernel).
    zero_threshold: of `operators.circular_blur`: frequencies where the current kernel's
      |K_f| is below it are unobserved. Higher than the non-blind 3e-2 for the same reason as
      eta_b. The defaults of kernel_from (0.8), smoothness (1e-3) and zero_threshold (0.2)
      were chosen on development kernels unlike the test kernels of docs/blind.md (36
      kernel-photo pairs, one seed): mean gain -0.08 dB and kernel NCC 0.742, against -0.45 dB
      and 0.720 with the earlier 0.6, 1e-2 and 0.1 (docs/blind.md lists the others tried).
      A tuple sets one per pass (first pass first): on the nearly sharp development
      kernels (docs/blind.md) a second pass at 0.1 or 0.05 changed nothing (+0.81 dB), at
      0.3 it lost 0.04 dB, so one 0.2 for all passes stays.
    passes: passes run one after the other, each from the kernels the last one ended with;
      the result is the last pass's (the mean of its `chains`).
    restart: passes after the first start from the last pass's restoration and kernels, noised
      to the first step at t <= restart * T (x_t = x0 + sigma_t z in the VE view, as SDEdit),
      not from t = T (False; True means kernel_from): with 0.15 and 20 steps the second pass
      runs the 4 steps t = 150, 100, 50, 0, so 20 + 4 * chains network calls in all (0.7, the
      default until `chains`, ran 15). A schedule (`timesteps`) with no step at t <= restart
      * T is refused: pass a higher restart.
    chains: the last pass runs this many chains per image from the same restoration (their
      own noise: chain j > 0 on fold_in(the pass's key, 2000 + j)), their kernel fitted from all
      of them at once (`fit_chains`), and returns their mean: a posterior sample's error is
      twice the posterior mean's in expectation, and the mean of n samples' 1 + 1/n times.
      4 chains from restart 0.15 (16 network calls) were chosen against 1 from 0.7 (15) on
      the development kernels (2 seeds, eta 0.85): mean gain +2.03 dB against +1.66, every kernel at
      >= +1 dB; 2 from 0.35 gave +1.92, 3 from 0.2 +1.99, 5 from 0.1 +1.92, 8 from 0.05
      +1.86 (the lower the restart, the more alike the chains, presumably, and the less
      their mean gains; docs/blind.md). With passes=1 or restart=False the chains run from
      t = T: chains * steps network calls in that pass (chains=1 may then be the better use
      of the time). The last pass calls the network on batches of B * chains images: its
      activations' memory grows by that factor (chains=1 where that does not fit).
    recentre: after each kernel fit, move the kernel's centre of mass to within half a pixel
      of its centre tap and roll x_t the other way (`recentre_kernel`; the blur of x_t is
      unchanged). A blurry photo is registered with its sharp original where the kernel's
      centre of mass is (its first moment is the image's translation), but the fit is free to
      slide the kernel within its support, and each pixel it slides shifts the restoration:
      measured on the development kernels, 1-2 pixel slides cost 2-9 dB (docs/blind.md).
    register: a fraction in [0, 1] (True: 1, False: 0) of the sub-pixel remainder c of the
      final kernel's centre of mass by which the restoration is shifted at the end
      (`fourier_shift` by register * c). 1 registers it with y as the kernel's centre of mass
      says, 0 leaves it where the estimated kernel puts it (k^ * x^ = y), which is the
      original's place only as far as the kernel's shape is right (an estimate's c follows
      the true kernel's c with a regression slope of 0.08 on the development kernels). 0.75
      was chosen on the development kernels (2 seeds: mean gain +1.66 dB against +1.54 at 1
      and +1.44 at 0, the worst photo -0.43 against -0.44 and -1.98; 0.5 gave +1.67 but
      -0.72 at the worst photo; docs/blind.md). Re-measured with `chains`: 0.5 gained 0.03
      dB over 0.75 on the development kernels, within the noise, and lost 1.5 dB more at the
      worst photo of a test set, so 0.75 stays.
    prune: > 0: after each fit keep only the taps of at least `prune` times the largest that
      are connected to it (`prune_kernel`). Off by default: on the development kernels 0.05
      and 0.1 raised kernel NCC (0.742 -> 0.751, 0.770) but not the PSNR gain (-0.08 ->
      -0.29, -0.43 dB; one seed, within its noise).
    spread: mu of (B1) relative to x0's gradient energy (`estimate_kernel`): the penalty on
      the kernel's second moment that settles what the data leave open. 0.1 was chosen on
      development kernels (seeds 1 and 4 of scripts/blind_quality.py, 72 kernel-photo
      pairs): it removed the flat photo's -8 to -12 dB failures (scattered kernels) at no
      cost elsewhere; 0.2 and 0.3 shrank long kernels (NCC 0.52 on the longest at 0.3), and
      schedules from strong to weak within the chain (0.3 -> 0.03 over its refits) were no
      better (docs/blind.md). A tuple sets one mu per pass (first pass first): less in the
      second pass raised the mean gain but lowered the worst photo (0.1, 0.03: +2.37 dB
      against +2.17, worst photo +0.02 against +0.38), so the default is one 0.1 for all.
    spread_extent: None, or s0 in pixels^2: passes after the first fit with mu (`spread`)
      scaled per image by min(1, s0 / m2), m2 the `second_moment` (about its centre of mass)
      of the kernel the previous pass ended with. Only near-point kernels (m2 <= s0, tighter
      than a Gaussian of sigma 0.5 px) keep the whole penalty; any other gets mu s0 / m2
      (the 7x7 Gaussian start, m2 2.66: 0.19 mu). The first pass's penalty keeps the kernel
      from scattering; once it has a shape, an extended one (an arc, a line) is pulled back
      towards a point by the same penalty, and each refit drifts further from the truth
      (measured from the true kernel as the start; docs/blind.md). 0.5 was chosen at
      kernel_size 7 on the development kernels (2 seeds): mean gain +2.32 dB against +2.17
      with None, kernel NCC 0.841 against 0.824, the worst photo the same (+0.3762 dB); 0.3
      gave +2.37 dB but a worst photo 0.003 dB lower (+0.3735). s0 is in pixels, the
      penalty's rho in half-widths: other kernel sizes were not re-measured.
    final_refit: after the last pass, refit the kernel from the chains' mean restoration
      (warm-started, the last pass's mu) and recentre both, for every image (True), none
      (False, the default), or those whose kernel's second moment is at most this many
      pixels^2. The chains' joint fit (`fit_chains`) leaves nearly sharp kernels too spread
      (their deviations' autocorrelation enters its normal matrix); their mean's fit has no
      such term but is smoother than the photo, so it leaves extended kernels too compact.
      Measured (docs/blind.md, 2 seeds): on six nearly sharp development kernels True gains
      +0.99 dB against +0.81, but on the development kernels +2.25 against +2.32; 0.5 gave
      +0.92 and +2.315 (worst photo +0.41 against +0.38), 0.3 +0.85 and +2.318: each a hair
      below the default's mean on the development kernels, so it stays off (True where the
      blur is known to be a pixel or less).
    refine_rings: > 0: correct the final restoration from its residual (`refine`, its error
      spectrum estimated on this many rings, the noise taken as at least 8-bit rounding,
      `QUANTISATION_SIGMA`); 0: the chain's restoration as it is. +1.0 dB on average on the
      development kernels; on slight blurs, where the prior's restoration and not y limits
      the PSNR, it lifts non-blind DDRM with the true kernel by +2.8 to +4.0 dB.
  """
  if not hasattr(y, 'shape') or len(y.shape) != 4:
    raise ValueError(f'y must be a (B, H, W, C) batch of blurred images, got '
                     f'{getattr(y, "shape", type(y).__name__)}')
  batch, x_shape = y.shape[0], tuple(y.shape[1:])
  kernel_size = check_kernel_size(kernel_size, x_shape)
  if not 0.0 <= float(kernel_from) <= 1.0:
    raise ValueError(f'kernel_from must be in [0, 1], got {kernel_from}')
  if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
    raise ValueError(f'passes must be an int >= 1, got {passes!r}')
  pass_settings = [sampler.make_settings(steps=steps, eta=eta, eta_b=e, sigma_y=sigma_y,
                                         timesteps=timesteps, betas=betas)
                   for e in _per_pass('eta_b', eta_b, passes)]
  settings = pass_settings[0]  # The passes differ in eta_b alone.
  restart_level = kernel_from if restart is True else float(restart)
  if restart is not False and not 0.0 <= restart_level <= 1.0:
    raise ValueError(f'restart must be a bool or a level in [0, 1], got {restart!r}')
  if passes > 1 and restart is not False and not np.any(
      np.asarray(settings.timesteps) <= restart_level * len(settings.alpha_bars)):
    raise ValueError(f'restart at {restart_level} * T is below every step')
  if not 0.0 <= float(prune) < 1.0:
    raise ValueError(f'prune must be in [0, 1), got {prune!r}')
  spreads = _per_pass('spread', spread, passes)
  if not isinstance(final_refit, bool) and not (
      _is_number(final_refit) and 0.0 <= float(final_refit) < math.inf):
    raise ValueError(f'final_refit must be a bool or a finite number >= 0, got {final_refit!r}')
  thresholds = _per_pass('zero_threshold', zero_threshold, passes)
  if spread_extent is not None and (
      not _is_number(spread_extent) or not 0.0 < float(spread_extent) < math.inf):
    raise ValueError(f'spread_extent must be None or a finite number > 0 (pixels^2), got '
                     f'{spread_extent!r}')
  if isinstance(refine_rings, bool) or not isinstance(refine_rings, int) or refine_rings < 0:
    raise ValueError(f'refine_rings must be an int >= 0 (0: no refinement), got '
                     f'{refine_rings!r}')
  if not isinstance(register, (bool, int, float, np.integer, np.floating)) or not (
      0.0 <= float(register) <= 1.0):
    raise ValueError(f'register must be a bool or a fraction in [0, 1], got {register!r}')
  register = float(register)  # True: 1, False: 0.
  if isinstance(chains, bool) or not isinstance(chains, int) or chains < 1:
    raise ValueError(f'chains must be an int >= 1, got {chains!r}')
  if isinstance(kernel_iters, bool) or not isinstance(kernel_iters, int) or kernel_iters < 1:
    raise ValueError(f'kernel_iters must be an int >= 1, got {kernel_iters!r}')
  kernels = _check_unit_kernels(gaussian_kernel2d(kernel_size) if init_kernel is None
                                else init_kernel, batch, kernel_size)
  keys = sampler.image_keys(key, batch)
  y = jnp.asarray(y, jnp.float32)
  step_ids, seq, seq_next = sampler.schedule(settings)  # Largest t first, as in `sample`.
  refit = seq <= kernel_from * len(settings.alpha_bars)

  def chain(kernels, keys, x0_restart, n, spread, settings, zero_threshold):
    """One chain per image, or n (`chains`) sharing its kernel, on a batch of B * n (image i's
    chain j at i * n + j, its keys fold_in(k_i, 2000 + j) for j > 0); from `x0_restart` it
    starts at the first step with t <= restart * T, x_t = x0_restart + sigma_t z (the VE
    view), instead of Eq. 7 at t = T. `spread`: the fits' mu, a number or one per image
    (B,); `settings` (its eta_b) and `zero_threshold` the pass's. The kernels stay one per
    image (B, k, k): the operator
    and ybar are built per image and repeated for its chains. Returns (x (B * n, ...),
    kernels (B, ...))."""
    first = 0
    if n > 1:
      keys = jnp.stack([keys] + [sampler.fold_keys(keys, 2000 + j) for j in range(1, n)], 1)
      keys = keys.reshape((batch * n,) + keys.shape[2:])
    per_chain = functools.partial(jax.tree_util.tree_map, lambda a: jnp.repeat(a, n, axis=0))

    def spectral(kernels):
      op = jax.vmap(lambda k: operators.circular_blur(k, x_shape, zero_threshold))(kernels)
      return per_chain((op,) + tuple(sampler.spectral(op, y, True)))

    if x0_restart is None:
      op, s, ybar = spectral(kernels)
      x = sampler.init(op, s, ybar, keys, settings, True)
    else:
      first = int(np.argmax(seq <= restart_level * len(settings.alpha_bars)))
      sigma = float(diffusion.ve_sigmas(settings.alpha_bars)[seq[first] + 1])
      z = jax.vmap(lambda k: jax.random.normal(k, y.shape[1:]))(sampler.fold_keys(keys, 0))
      x = per_chain(x0_restart) + sigma * z

    def body(carry, xs):
      x, kernels = carry
      step, t, t_next, update = xs
      op, s, ybar = spectral(kernels)
      x, x0 = sampler.transition(model_fn, op, x, s, ybar, keys, step, t, t_next, settings,
                                         None, True)
      kernels = jax.lax.cond(update, lambda: fit_chains(
          x0, y, kernels, smoothness=smoothness, iters=kernel_iters, spread=spread),
                             lambda: kernels)
      if prune:
        kernels = jax.vmap(lambda k: prune_kernel(k, prune))(kernels)
      if recentre:
        # One shift per image, for all of its chains (the kernel does not depend on them).
        shift = jax.vmap(recentre_kernel, in_axes=(None, 0), out_axes=(None, 0))
        kernels, x = jax.vmap(shift)(kernels, x.reshape((batch, n) + x_shape))
        x = x.reshape((batch * n,) + x_shape)
      return (x, kernels), None

    xs = tuple(a[first:] for a in (step_ids, seq, seq_next, refit))
    return jax.lax.scan(body, (x, kernels), xs)[0]

  # Pass p > 0 (keys fold_in(k_i, 1000 + p)) restarts from the last pass's restoration and
  # kernels at the first step with t <= restart * T, or from t = T (restart=False).
  x = None
  for p in range(passes):
    pass_keys = keys if p == 0 else sampler.fold_keys(keys, 1000 + p)
    n = chains if p == passes - 1 else 1
    mu = spreads[p]
    if p and spread_extent is not None:
      # Per image: mu min(1, extent / m2), m2 the previous pass's kernel's second moment.
      mu = mu * jnp.minimum(1.0, spread_extent / jnp.maximum(second_moment(kernels), 1e-6))
    x, kernels = chain(kernels, pass_keys, x if (p and restart is not False) else None, n, mu,
                       pass_settings[p], thresholds[p])
    x = jnp.mean(x.reshape((batch, n) + x_shape), 1)  # The chains' mean restoration.
  if final_refit is not False:
    kernels, x = _refit_to_the_mean(x, y, kernels, final_refit, recentre, smoothness=smoothness,
                                    iters=kernel_iters, spread=mu)
  if refine_rings:
    # At least 8-bit quantisation noise: with sigma_y = 0 the correction would be R / K, the
    # inverse filter, on whatever rounding a stored photo carries.
    noise = max(float(sigma_y), QUANTISATION_SIGMA)
    x = jax.vmap(lambda xi, k, yi: refine(xi, k, yi, noise, refine_rings))(x, kernels, y)
  if register:
    x = jax.vmap(fourier_shift)(x, register * kernel_centroid(kernels))
  return x, kernels


def kernel_ncc(estimate, truth, max_shift=None):
  """Normalised cross-correlation of two kernels at the best integer shift (numpy; the blind
  deblurring literature's kernel score): both zero-padded to a common size, then every shift
  up to `max_shift` (default: half the larger kernel) tried circularly.

  NaN where the score is undefined: a kernel that is constant once padded (all taps equal, or
  all zero) has no normalised correlation with anything. A scoring loop over many images then
  marks that image (the runner's metrics.json writes null, `np.nanmean` skips it knowingly)
  instead of stopping, and no degenerate estimate scores -1 (perfectly anti-correlated) as it
  did. ValueError for arguments that are not finite 2-D kernels or a bad `max_shift`.
  """
  kernels = []
  for what, k in (('estimate', estimate), ('truth', truth)):
    k = np.asarray(k, np.float64)
    if k.ndim != 2 or k.size == 0:
      raise ValueError(f'{what} must be a 2-D kernel (kh, kw), got shape {k.shape}')
    if not np.all(np.isfinite(k)):
      raise ValueError(f'{what} has non-finite (NaN or inf) taps')
    kernels.append(k)
  a, b = kernels
  if max_shift is not None and (isinstance(max_shift, bool) or not isinstance(
      max_shift, (int, np.integer)) or max_shift < 0):
    raise ValueError(f'max_shift must be an int >= 0, got {max_shift!r}')
  size = max(a.shape + b.shape)
  pad = lambda k: np.pad(k, [((size - n) // 2, size - n - (size - n) // 2) for n in k.shape])
  a, b = pad(a), pad(b)
  shift = size // 2 if max_shift is None else max_shift
  a = a - a.mean()
  norm_a = np.linalg.norm(a)
  if norm_a == 0 or np.linalg.norm(b - b.mean()) == 0:  # Rolls keep b's norm: all or none.
    return float('nan')
  best = -np.inf
  for dy in range(-shift, shift + 1):
    for dx in range(-shift, shift + 1):
      c = np.roll(b, (dy, dx), (0, 1))
      c = c - c.mean()
      best = max(best, float(np.sum(a * c) / (norm_a * np.linalg.norm(c))))
  return best
