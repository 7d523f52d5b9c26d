"""Tests of the circular 2-D blur (ddrm_jax/operators/circular.py) against dense matrices built
from scipy.ndimage's wrap-around convolution and numpy float64 FFTs."""

import math
import os
import sys
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from ddrm_jax import bundled
from ddrm_jax import checkpoints
from ddrm_jax import io
from ddrm_jax import metrics
from ddrm_jax import operators
from ddrm_jax import sampler
from ddrm_jax.operators import circular
from ddrm_jax.operators import registry

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_sampler  # pylint: disable=g-import-not-at-top,wrong-import-position

ATOL = 1e-5


def _wrap_conv(x, k):
  """scipy.ndimage's wrap-around convolution of every channel (float64): (..., H, W, C)."""
  x = np.asarray(x, np.float64)
  k = np.asarray(k, np.float64)
  out = np.empty_like(x)
  for idx in np.ndindex(x.shape[:-3]):
    for c in range(x.shape[-1]):
      kc = k if k.ndim == 2 else k[..., c]
      out[idx + (slice(None), slice(None), c)] = ndimage.convolve(x[idx][..., c], kc,
                                                                 mode='wrap')
  return out


def _fft_truncated_matrix(k, shape, thr):
  """The dense truncated operator: K_f zeroed where |K_f| < thr, by numpy float64 FFTs of the
  wrap-convolved delta images. Returns (H matrix (n, n), |K| per (h, w, c) before truncation)."""
  h, w, c = shape
  n = math.prod(shape)
  delta = np.zeros((h, w, c))
  delta[0, 0, :] = 1.0
  kspec = np.fft.fft2(_wrap_conv(delta, k), axes=(0, 1))  # Transfer function per channel.
  kt = np.where(np.abs(kspec) < thr, 0.0, kspec)
  eye = np.eye(n).reshape((n,) + shape)
  out = np.real(np.fft.ifft2(kt * np.fft.fft2(eye, axes=(1, 2)), axes=(1, 2)))
  return out.reshape(n, n).T, np.abs(kspec)


def _basis(shape):
  n = math.prod(shape)
  return jnp.eye(n, dtype=jnp.float32).reshape((n,) + tuple(shape))


def _dense(op):
  """Dense matrices (out, in) of every map of `op`, by applying it to basis vectors."""
  bx, bs = _basis(op.x_shape), _basis((op.n,))
  mat = lambda f, b: jax.vmap(f)(b).reshape(b.shape[0], -1).T
  return dict(H=mat(op.H, bx), Vt=mat(op.Vt, bx), V=mat(op.V, bs), U=mat(op.U, bs),
              Ut=mat(op.Ut, bx), Ht=mat(op.Ht, bx), H_pinv=mat(op.H_pinv, bx))


_matrices = jax.jit(_dense)


def _orthonormality_error(vt):
  """max |A A^T - I| and max |A^T A - I| of a proposed real spectral map A (rows = coords)."""
  vt = np.asarray(vt, np.float64)
  if vt.shape[0] != vt.shape[1]:
    return np.inf
  eye = np.eye(vt.shape[0])
  return max(np.abs(vt @ vt.T - eye).max(), np.abs(vt.T @ vt - eye).max())


def _kernel(name, channels):
  rng = np.random.default_rng(sum(map(ord, name)) + channels)
  shapes = {'k3x3': (3, 3), 'k4x4': (4, 4), 'k2x5': (2, 5), 'k1x1': (1, 1), 'k5x3': (5, 3)}
  if name == 'motion5':
    return np.asarray(operators.motion_kernel(3, 5), np.float64)
  if name == 'disk':
    return np.asarray(operators.disk_kernel(1.6), np.float64)
  kh, kw = shapes[name[:-3] if name.endswith('_pc') else name]
  if name.endswith('_pc'):
    return rng.normal(size=(kh, kw, channels))
  return rng.normal(size=(kh, kw))


# (name, image shape, kernel name, zero_threshold): odd, even, non-square, C = 1..4, shared and
# per-channel ('_pc') kernels, kernels as large as the image, and truncated ones.
CASES = (
    ('odd_c1', (5, 7, 1), 'k3x3', 0.0),
    ('even_c3', (6, 8, 3), 'k4x4', 0.0),
    ('even_square_c2', (4, 4, 2), 'k4x4_pc', 0.0),
    ('nonsquare_c2_pc', (4, 7, 2), 'k2x5_pc', 0.0),
    ('odd_even_c4_pc', (5, 6, 4), 'k5x3_pc', 0.0),
    ('delta_c3', (3, 5, 3), 'k1x1', 0.0),
    ('motion_truncated_c3', (8, 6, 3), 'motion5', 0.08),
    ('disk_truncated_c1', (9, 10, 1), 'disk', 0.2),
    ('random_truncated_pc', (6, 5, 2), 'k3x3_pc', 0.5),
)


class DenseMatrixTest(parameterized.TestCase):

  @parameterized.named_parameters(*CASES)
  def test_svd_matches_dense_reference(self, shape, kernel_name, thr):
    k = _kernel(kernel_name, shape[2])
    op = operators.circular_blur(k, shape, zero_threshold=thr, signed=True)
    n = op.n
    self.assertEqual((op.x_shape, op.y_shape), (shape, shape))
    mats = {name: np.asarray(a, np.float64) for name, a in _matrices(op).items()}
    h, v, vt, u, ut = mats['H'], mats['V'], mats['Vt'], mats['U'], mats['Ut']
    h_ref, mag = _fft_truncated_matrix(k, shape, thr)
    if thr == 0:  # Untruncated: exactly scipy's wrap convolution.
      eye = np.eye(n).reshape((n,) + shape)
      np.testing.assert_allclose(h_ref, _wrap_conv(eye, k).reshape(n, n).T, atol=1e-12)
    else:
      self.assertTrue(np.any((mag > 0) & (mag < thr)), 'the case must truncate something')
    np.testing.assert_allclose(h, h_ref, atol=ATOL)

    s = np.asarray(op.singulars(), np.float64)
    self.assertTrue(np.all(np.diff(s) <= 0), 'singular values not descending')
    want_s = np.sort(np.where(mag < thr, 0.0, mag).reshape(-1))[::-1]
    np.testing.assert_allclose(s, want_s, atol=ATOL)
    np.testing.assert_allclose(s, np.linalg.svd(h_ref, compute_uv=False), atol=ATOL)

    np.testing.assert_allclose(v.T @ v, np.eye(n), atol=ATOL)
    np.testing.assert_allclose(v @ v.T, np.eye(n), atol=ATOL)
    np.testing.assert_allclose(u.T @ u, np.eye(n), atol=ATOL)
    np.testing.assert_allclose(u @ u.T, np.eye(n), atol=ATOL)
    np.testing.assert_allclose(vt, v.T, atol=ATOL)
    np.testing.assert_allclose(ut, u.T, atol=ATOL)
    np.testing.assert_allclose(u @ np.diag(s) @ v.T, h_ref, atol=ATOL)
    np.testing.assert_allclose(mats['Ht'], h_ref.T, atol=ATOL)

    cond = s[0] / s[s > 0].min()
    if cond < 1e4:  # float32 pinv identities hold to about cond * eps.
      hp = mats['H_pinv']
      scale = np.abs(hp).max()
      np.testing.assert_allclose(h_ref @ hp @ h_ref, h_ref, atol=ATOL)
      np.testing.assert_allclose(hp, np.linalg.pinv(h_ref, rcond=1e-6), atol=ATOL * scale)

  @parameterized.parameters(((6, 8, 1),), ((5, 7, 2),), ((4, 5, 1),))
  def test_real_view_is_the_orthonormal_dft(self, shape):
    """V^T is the documented real view of the unitary DFT, coordinate by coordinate."""
    op = operators.circular_blur(np.ones((1, 1)), shape, zero_threshold=0.0)
    vt = np.asarray(_matrices(op)['Vt'], np.float64)
    self.assertLess(_orthonormality_error(vt), ATOL)
    h, w, c = shape
    n = h * w * c
    x = np.random.default_rng(0).normal(size=shape)
    big = np.fft.fft2(x, axes=(0, 1), norm='ortho')
    z = (vt @ x.reshape(-1))[np.asarray(op.inv_perm)].reshape(shape)
    for i in range(h):
      for j in range(w):
        pi, pj = (-i) % h, (-j) % w
        flat, partner = i * w + j, pi * w + pj
        if flat == partner:
          want = np.real(big[i, j])
        elif flat < partner:
          want = math.sqrt(2) * np.real(big[i, j])
        else:
          want = math.sqrt(2) * np.imag(big[pi, pj])
        np.testing.assert_allclose(z[i, j], want, atol=ATOL, err_msg=f'{(i, j)}')
    self.assertEqual(z.size, n)

  def test_wrong_real_views_fail_the_orthonormality_check(self):
    """The check must catch real views that duplicate or drop coordinates."""
    h, w = 6, 8
    eye = np.eye(h * w).reshape(h * w, h, w)
    full = np.fft.fft2(eye, norm='ortho').reshape(h * w, -1).T
    # Re and Im of every frequency: each pair's coordinates twice (2n rows, a tight frame).
    dup = np.concatenate([np.real(full), np.imag(full)])
    self.assertEqual(_orthonormality_error(dup), np.inf)
    self.assertGreater(_orthonormality_error(dup[:h * w]), 0.1)
    # Re and Im of rfft2 without the sqrt(2) weights, cut to n rows (drops coordinates).
    half = np.fft.rfft2(eye, norm='ortho').reshape(h * w, -1).T
    rview = np.concatenate([np.real(half), np.imag(half)])[:h * w]
    self.assertGreater(_orthonormality_error(rview), 0.1)
    # The layout with the Nyquist row/column wrongly treated as pairs (only DC self-conjugate).
    real_layout = circular._conjugate_layout  # pylint: disable=protected-access

    def dc_only(height, width):
      partner, rep, self_conj, _, _ = real_layout(height, width)
      nyq = self_conj.copy()
      nyq[0, 0] = False
      rep = rep | nyq
      self_conj = np.zeros_like(self_conj)
      self_conj[0, 0] = True
      c1 = np.where(self_conj, 1.0, np.where(rep, math.sqrt(2), 0.0))
      c2 = np.where(self_conj | rep, 0.0, -math.sqrt(2))
      return partner, rep, self_conj, c1[..., None], c2[..., None]

    with mock.patch.object(circular, '_conjugate_layout', dc_only):
      bad = operators.circular_blur(np.ones((1, 1)) * 1.0001, (h, w, 1), zero_threshold=0.0)
      self.assertGreater(_orthonormality_error(_dense(bad)['Vt']), 0.1)  # Traced afresh.


class TraceTest(parameterized.TestCase):

  def test_gradient_wrt_kernel_matches_finite_differences(self):
    shape = (6, 7, 2)
    rng = np.random.default_rng(1)
    k = jnp.asarray(rng.normal(size=(3, 4, 2)), jnp.float32)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    wgt = jnp.asarray(rng.normal(size=shape), jnp.float32)
    blur = lambda kk: operators.circular_blur(kk, shape, 0.0, signed=True)
    loss = jax.jit(lambda kk: jnp.sum(wgt * blur(kk).H(x)))
    grad = np.asarray(jax.grad(loss)(k), np.float64)
    eps = 1e-2
    fd = np.zeros(k.shape)
    for idx in np.ndindex(k.shape):
      e = jnp.zeros_like(k).at[idx].set(eps)
      fd[idx] = (float(loss(k + e)) - float(loss(k - e))) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-3, atol=1e-3)
    # And the exact gradient: d/dk[j] sum_i w[i] x[i - j + c] (a correlation), float64.
    x64, w64 = np.asarray(x, np.float64), np.asarray(wgt, np.float64)
    exact = np.zeros(k.shape)
    for a, b, c in np.ndindex(k.shape):
      shifted = np.roll(x64[..., c], (a - 1, b - 2), axis=(0, 1))  # x[i - j + centre].
      exact[a, b, c] = np.sum(w64[..., c] * shifted)
    np.testing.assert_allclose(grad, exact, rtol=1e-4, atol=1e-4)

  def test_gradient_of_a_ddrm_step_wrt_kernel(self):
    """A whole DDRM step is differentiable in the kernel; a directional derivative agrees with
    central differences (noiseless step from a fixed state, so no case boundary is crossed)."""
    shape = (6, 6, 1)
    rng = np.random.default_rng(2)
    k0 = jnp.asarray(np.abs(rng.normal(size=(3, 3))) + 0.2, jnp.float32)
    direction = jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)
    x0 = jnp.asarray(rng.normal(size=(1,) + shape), jnp.float32)
    x_t = jnp.asarray(rng.normal(size=(1,) + shape), jnp.float32) * 3.0
    keys = jax.random.split(jax.random.key(0), 1)

    def f(k):
      op = operators.circular_blur(k, shape, zero_threshold=0.0)
      y = jax.vmap(op.H)(x0)
      x_next, _ = sampler.ddrm_step(test_sampler.junk_model, op, x_t, y, keys, 1, 500, 450,
                                    sigma_y=0.0)
      return jnp.sum(jnp.sin(x_next))

    f = jax.jit(f)
    g = jax.grad(f)(k0)
    self.assertTrue(np.all(np.isfinite(g)))
    eps = 1e-3
    fd = (float(f(k0 + eps * direction)) - float(f(k0 - eps * direction))) / (2 * eps)
    np.testing.assert_allclose(float(jnp.sum(g * direction)), fd, rtol=1e-2, atol=1e-2)

  def test_build_inside_jit_equals_eager(self):
    shape = (6, 5, 3)
    k = np.random.default_rng(3).normal(size=(3, 2, 3))
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    eager = operators.circular_blur(k, shape, signed=True)
    traced = jax.jit(lambda kk: operators.circular_blur(kk, shape, signed=True))(k)
    np.testing.assert_array_equal(traced.perm, eager.perm)
    np.testing.assert_allclose(traced.singulars(), eager.singulars(), atol=1e-6)
    np.testing.assert_allclose(traced.H(x), eager.H(x), atol=ATOL)

  def test_vmap_over_kernels_and_batched_sampler(self):
    shape = (6, 8, 3)
    kernels = jnp.stack([operators.motion_kernel(i, 5) for i in range(3)])
    ops = jax.jit(jax.vmap(lambda kk: operators.circular_blur(kk, shape)))(kernels)
    singles = [operators.circular_blur(kk, shape) for kk in kernels]
    xs = jax.random.uniform(jax.random.PRNGKey(1), (3,) + shape, minval=-1, maxval=1)
    ys = jax.jit(jax.vmap(lambda o, x: o.H(x)))(ops, xs)
    for i in range(3):
      np.testing.assert_allclose(ys[i], _wrap_conv_trunc(kernels[i], xs[i], 3e-2), atol=ATOL)
      np.testing.assert_array_equal(ops.perm[i], singles[i].perm)
    keys = jax.random.split(jax.random.key(2), 3)
    kw = dict(steps=4, sigma_y=0.05)
    run = test_sampler.jit_sample(test_sampler.junk_model, batched_op=True, **kw)
    out = run(ops, ys, keys)
    one = test_sampler.jit_sample(test_sampler.junk_model, **kw)
    for i in range(3):
      np.testing.assert_allclose(out[i:i + 1], one(singles[i], ys[i:i + 1], keys[i:i + 1]),
                                 rtol=1e-5, atol=1e-5)
    self.assertFalse(np.allclose(out[0], out[1]))


def _wrap_conv_trunc(k, x, thr):
  shape = x.shape
  h_ref, _ = _fft_truncated_matrix(np.asarray(k, np.float64), shape, thr)
  return (h_ref @ np.asarray(x, np.float64).reshape(-1)).reshape(shape)


def fft_ybar_rounding(shape, s, ybar, y):
  """(n,) bound on what float32 arithmetic may leave between ybar and the spectral coordinates
  (read back by the float32 Vt) of an output that is V ybar in exact arithmetic, for a circular
  blur of `shape`. Each map (Ut, V, Vt) is one 2-D FFT plus a phase product and the real view:
  within e = (10 stages + 5) u of its input's 2-norm, stages = ceil(log2 H) + ceil(log2 W)
  (Higham, Thm 24.2: log2(n) eta for an FFT, eta ~ 6.7 u with twiddles to u; 10 u per stage
  leaves room for mixed radices). ybar_i = (U^T y)_i / s_i divides Ut's error by s_i; V and Vt
  add 2 e ||ybar||."""
  u = np.finfo(np.float32).eps / 2
  stages = math.ceil(math.log2(shape[0])) + math.ceil(math.log2(shape[1]))
  e = (10 * stages + 5) * u
  observed = s > 0
  d_ybar = np.where(observed, e * np.linalg.norm(y) / np.where(observed, s, 1.0), 0.0)
  d_ybar += u * np.abs(ybar)
  return d_ybar + 2 * e * (np.linalg.norm(ybar) + np.linalg.norm(d_ybar))


class GaussianPriorLawTest(parameterized.TestCase):
  """test_sampler's exact law of DDRM under a Gaussian prior, with a circular-blur operator."""

  @parameterized.product(sigma_y=(test_sampler.SIGMA_Y, 0.0), etas=((0.85, 1.0), (0.4, 0.6)))
  def test_gaussian_prior_law(self, sigma_y, etas):
    eta, eta_b = etas
    num, steps = 20000, 20
    shape = (4, 6, 1)
    kernel = np.array([[0.1, 0.3, 0.05], [0.2, 0.6, 0.1]])
    op = operators.circular_blur(kernel, shape, zero_threshold=0.3, signed=True)  # Sum 1.35.
    s = np.asarray(op.singulars(), np.float64)
    n = s.size
    self.assertTrue(np.any(s == 0) and np.any(s > 1))
    rng = np.random.default_rng(5)
    mu_bar = rng.normal(scale=0.5, size=n)
    d = np.geomspace(4.0, 0.05, n)[rng.permutation(n)]
    x0 = op.V(jnp.asarray(mu_bar + np.sqrt(d) * rng.normal(size=n), jnp.float32))
    y_one = np.asarray(op.H(x0), np.float64) + sigma_y * rng.normal(size=shape)
    y = jnp.asarray(np.repeat(y_one[None], num, axis=0), jnp.float32)
    table = test_sampler.abar_table32()
    mu32, d32 = jnp.asarray(mu_bar, jnp.float32), jnp.asarray(d, jnp.float32)

    def model(x_vp, t):  # E[eps | x_t] under x0 ~ N(V mu, V diag(d) V^T).
      a = table[t][:, None]
      xbar = jax.vmap(op.Vt)(x_vp)
      x0bar = mu32 + d32 * jnp.sqrt(a) / (a * d32 + 1.0 - a) * (xbar - jnp.sqrt(a) * mu32)
      x0 = jax.vmap(op.V)(x0bar)
      a4 = a[..., None, None]
      return (x_vp - jnp.sqrt(a4) * x0) / jnp.sqrt(1.0 - a4)

    run = jax.jit(lambda y, key: sampler.sample(model, op, y, key, steps=steps, eta=eta,
                                                eta_b=eta_b, sigma_y=sigma_y,
                                                return_x0_preds=True))
    out, preds = run(y, jax.random.key(6))
    uty = np.asarray(op.Ut(jnp.asarray(y_one, jnp.float32)), np.float64)
    ybar = np.where(s > 0, uty / np.where(s > 0, s, 1.0), 0.0)
    law_preds, law_out = test_sampler.gaussian_ddrm_law(s, ybar, mu_bar, d, sigma_y, eta, eta_b,
                                                        steps)
    checks = [(f'x0 pred step {i + 1}', preds[i], law) for i, law in enumerate(law_preds)]
    checks.append(('output', out, law_out))
    spectral = jax.jit(jax.vmap(op.Vt))
    test_sampler.assert_follows_law(checks, lambda xs: np.asarray(spectral(xs), np.float64), num,
                                    fft_ybar_rounding(shape, s, ybar, y_one))


class KernelsAndRegistryTest(parameterized.TestCase):

  def test_motion_kernel(self):
    a = np.asarray(operators.motion_kernel(0, 9))
    self.assertEqual(a.shape, (9, 9))
    self.assertTrue(np.all(a >= 0))
    self.assertAlmostEqual(float(a.sum()), 1.0, places=5)
    np.testing.assert_array_equal(a, operators.motion_kernel(jax.random.PRNGKey(0), 9))
    b = np.asarray(operators.motion_kernel(1, 9))
    self.assertFalse(np.allclose(a, b))
    # A trajectory, not a blob: it spans the kernel along its longer side but covers little.
    rows, cols = np.nonzero(a > 1e-3)
    self.assertGreaterEqual(max(np.ptp(rows), np.ptp(cols)), 7)
    self.assertLess(np.mean(a > 1e-3), 0.6)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    batch = jax.vmap(lambda kk: operators.motion_kernel(kk, 9))(keys)
    np.testing.assert_allclose(batch[1], operators.motion_kernel(keys[1], 9), atol=1e-7)

  def test_disk_kernel(self):
    k = operators.disk_kernel(2.5)
    self.assertEqual(k.shape, (5, 5))
    self.assertAlmostEqual(float(k.sum()), 1.0, places=6)
    np.testing.assert_allclose(k, k.T, atol=1e-7)
    np.testing.assert_allclose(k, k[::-1], atol=1e-7)
    self.assertGreater(k[2, 2], k[0, 0])
    self.assertEqual(operators.disk_kernel(0.4).shape, (1, 1))

  @parameterized.parameters(((64, 64, 3), 5), ((256, 256, 3), 17), ((128, 200, 1), 9),
                            ((40, 30, 1), 5))
  def test_deblur_motion_kernel_size(self, shape, size):
    from ddrm_jax.operators import registry  # pylint: disable=g-import-not-at-top
    self.assertEqual(registry.motion_kernel_size(shape), size)
    op = operators.make('deblur_motion', shape)
    x = np.random.default_rng(0).normal(size=shape)
    k = np.asarray(operators.motion_kernel(registry.MOTION_SEED, size), np.float64)
    if shape[0] * shape[1] <= 4096:
      np.testing.assert_allclose(op.H(x), _wrap_conv_trunc(k, x, 3e-2), atol=1e-4)

  def test_make_blur2d(self):
    shape = (8, 9, 2)
    k = np.random.default_rng(4).uniform(size=(3, 4))
    x = np.random.default_rng(5).normal(size=shape)
    op = operators.make('blur2d', shape, kernel=k, zero_threshold=0.0)
    np.testing.assert_allclose(op.H(x), _wrap_conv(x, k / k.sum()), atol=ATOL)  # Normalised.
    default = operators.make('blur2d', shape)  # A seeded 7x7 camera-shake kernel.
    k7 = np.asarray(operators.motion_kernel(0, 7), np.float64)
    np.testing.assert_allclose(default.H(x), _wrap_conv_trunc(k7, x, 3e-2), atol=ATOL)
    for leaf in jax.tree_util.tree_leaves(operators.make('blur2d', (64, 64, 3))):
      self.assertLessEqual(leaf.size, 64 * 64 * 3)  # Theta(n) memory.

  @parameterized.named_parameters(
      ('ndim1', np.ones(3), 'must be 2-D'),
      ('ndim4', np.ones((2, 2, 1, 1)), 'must be 2-D'),
      ('too_tall', np.ones((9, 3)), r'9x3 is larger than the image 8x8'),
      ('too_wide', np.ones((3, 9)), 'larger than the image'),
      ('nan', np.array([[1.0, np.nan]]), 'non-finite'),
      ('inf', np.array([[1.0, np.inf]]), 'non-finite'),
      ('all_zero', np.zeros((3, 3)), 'all zero'),
      ('empty', np.zeros((0, 3)), 'empty'),
      ('channels', np.ones((3, 3, 2)), 'per-channel blur kernel has 2 channels, the image 3'),
      ('complex', np.ones((2, 2)) * 1j, 'real numbers'),
  )
  def test_bad_kernels(self, kernel, message):
    with self.assertRaisesRegex(ValueError, message) as cm:
      operators.circular_blur(kernel, (8, 8, 3))
    self.assertNotIn('\n', str(cm.exception))
    with self.assertRaisesRegex(ValueError, message):
      operators.make('blur2d', (8, 8, 3), kernel=kernel)

  @parameterized.named_parameters(
      ('scaled_down', 1e-30, r'kernel sums to 1e-30, not 1 \(within 0.001\); normalize=True'),
      ('scaled_up', 1e30, r'kernel sums to 1e\+30, not 1'),
      ('box', 49.0, r'kernel sums to 49, not 1'),
  )
  def test_a_kernel_as_given_must_sum_to_one(self, scale, message):
    """Kept as given, a kernel's scale would decide which |K_f| clear zero_threshold (at 1e-30
    none: an unconditional sample); it is refused, and normalize=True divides it out."""
    k = np.asarray(operators.motion_kernel(0, 7), np.float64)
    with self.assertRaisesRegex(ValueError, message) as cm:
      operators.circular_blur(k * scale, (16, 16, 3))
    self.assertNotIn('\n', str(cm.exception))
    with self.assertRaisesRegex(ValueError, message):
      operators.make('blur2d', (16, 16, 3), kernel=k * scale, kernel_normalize=False)
    want = operators.circular_blur(k, (16, 16, 3)).singulars()
    for op in (operators.circular_blur(k * scale, (16, 16, 3), normalize=True),
               operators.make('blur2d', (16, 16, 3), kernel=k * scale)):  # Normalised: default.
      np.testing.assert_allclose(op.singulars(), want, rtol=0, atol=8 * 2**-24)
    k_pc = np.stack([k, 2 * k, 3 * k], -1)  # Per channel: each channel by its own sum.
    np.testing.assert_allclose(operators.circular_blur(k_pc, (16, 16, 3), normalize=True).s,
                               operators.circular_blur(k, (16, 16, 3)).s, atol=8 * 2**-24)
    operators.circular_blur(k * (1 + 5e-4), (16, 16, 3))  # Within the tolerance: as given.

  @parameterized.named_parameters(
      ('negative_tap', np.array([[0.5, 0.7, -0.2]]), r'kernel has negative taps \(min -0.2\); a '
       r'blur kernel is non-negative \(signed=True takes any real filter as given\)'),
      ('zero_sum', np.array([[1.0, -1.0]]), 'negative taps'),
  )
  def test_negative_taps_only_when_signed(self, kernel, message):
    for normalize in (False, True):
      with self.assertRaisesRegex(ValueError, message):
        operators.circular_blur(kernel, (8, 8, 1), normalize=normalize)
      with self.assertRaisesRegex(ValueError, message):
        operators.make('blur2d', (8, 8, 1), kernel=kernel, kernel_normalize=normalize)
    x = np.random.default_rng(0).normal(size=(8, 8, 1))
    op = operators.circular_blur(kernel, (8, 8, 1), zero_threshold=0.0, signed=True)
    np.testing.assert_allclose(op.H(x), _wrap_conv(x, kernel), atol=ATOL)  # As given.
    if kernel.sum() == 0:
      with self.assertRaisesRegex(ValueError, r'kernel sums to 0: it cannot be normalised'):
        operators.circular_blur(kernel, (8, 8, 1), signed=True, normalize=True)

  def test_a_path_where_the_kernel_belongs(self):
    for path in ('k.npy', os.path.join('a', 'k.npy')):
      with self.assertRaisesRegex(ValueError, r"kernel must be an array of taps, got the path "
                                  r"'.*k\.npy'; load the file first") as cm:
        operators.make('blur2d', (8, 8, 3), kernel=path)
      self.assertNotIn('\n', str(cm.exception))
    with self.assertRaisesRegex(ValueError, 'kernel_normalize must be True or False'):
      operators.make('blur2d', (8, 8, 3), kernel=np.ones((3, 3)), kernel_normalize='yes')

  def test_normalize_is_traceable(self):
    """normalize=True divides a traced kernel by its traced sum: jit, vmap and grad see the
    operator of k / sum(k) (its gradient is orthogonal to k: scaling k changes nothing)."""
    shape = (6, 7, 2)
    rng = np.random.default_rng(7)
    kernels = jnp.asarray(rng.uniform(0.1, 1.0, size=(3, 3, 4)), jnp.float32)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    blur = lambda k: operators.circular_blur(k, shape, 0.0, normalize=True)
    ys = jax.jit(jax.vmap(lambda k: blur(k).H(x)))(kernels)
    for k, y in zip(kernels, ys):
      np.testing.assert_allclose(y, _wrap_conv(x, k / k.sum()), atol=ATOL)
    loss = lambda k: jnp.sum(jnp.sin(blur(k).H(x)))
    g = jax.jit(jax.grad(loss))(kernels[0])
    self.assertLess(abs(float(jnp.sum(g * kernels[0]))), 1e-4 * float(jnp.abs(g).sum()))

  def test_bad_options(self):
    with self.assertRaisesRegex(ValueError, 'zero_threshold'):
      operators.circular_blur(np.ones((2, 2)), (8, 8, 1), zero_threshold=-1.0)
    with self.assertRaisesRegex(ValueError, 'kernel_size must be a positive int'):
      operators.make('deblur_motion', (8, 8, 1), kernel_size=0)
    with self.assertRaisesRegex(ValueError, 'larger than the image'):
      operators.make('deblur_motion', (8, 8, 1), kernel_size=9)
    with self.assertRaisesRegex(ValueError, 'size must be a positive int'):
      operators.motion_kernel(0, 0)
    with self.assertRaisesRegex(ValueError, 'radius'):
      operators.disk_kernel(-1.0)


def _samples():
  """The bundled sample photos, (N, 64, 64, 3) float64 in [0, 1]."""
  files = io.expand_inputs(bundled.SAMPLES)
  return np.stack([io.to_unit(io.read_image(f, 3)) for f in files]).astype(np.float64)


def _reflect_blur(x, k):
  return np.stack([ndimage.convolve(x[..., c], k, mode='reflect') for c in range(x.shape[-1])],
                  axis=-1)


class RealPhotoTest(parameterized.TestCase):

  def test_border_padding(self):
    self.assertEqual(operators.border_padding(64, 64, (5, 5), 8), ((8, 8), (8, 8)))
    self.assertEqual(operators.border_padding(64, 60, (7, 3), 8), ((8, 8), (6, 6)))
    self.assertEqual(operators.border_padding(10, 11, (2, 3), 1), ((2, 2), (3, 3)))
    (t, b), (l, r) = operators.border_padding(37, 50, (9, 9), 16)
    self.assertEqual(((37 + t + b) % 16, (50 + l + r) % 16), (0, 0))
    self.assertTrue(min(t, b, l, r) >= 9)
    x = np.arange(2 * 37 * 50 * 3).reshape(2, 37, 50, 3)
    padded = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    np.testing.assert_array_equal(operators.crop_padding(padded, ((t, b), (l, r))), x)

  def test_reflect_extension_is_a_circular_blur(self):
    """Inside: the photo. Everywhere: the circular blur of the mirrored scene, up to the
    Tikhonov estimate's error (small for a well-conditioned kernel)."""
    rng = np.random.default_rng(0)
    x = ndimage.uniform_filter(rng.uniform(size=(20, 24, 2)), (3, 3, 1))
    k = np.array([[0.05, 0.1, 0.0], [0.1, 0.5, 0.05], [0.0, 0.1, 0.1]])
    y = _reflect_blur(x, k)
    padding = operators.border_padding(20, 24, k.shape, 4)
    ext = np.asarray(jax.jit(lambda a: operators.reflect_extension(a, k, padding, lam=1e-6,
                                                                   iters=200))(y))
    np.testing.assert_array_equal(operators.crop_padding(ext, padding), y.astype(np.float32))
    (t, b), (l, r) = padding
    scene = np.pad(x, ((t, b), (l, r), (0, 0)), mode='symmetric')
    np.testing.assert_allclose(ext, _wrap_conv(scene, k), atol=1e-3)
    with self.assertRaisesRegex(ValueError, 'narrower than the 3x3 kernel'):
      operators.reflect_extension(y, k, ((2, 3), (3, 3)))

  def test_reflect_blurred_photos_restore_as_well_at_the_borders(self):
    """The bundled photos blurred with mode='reflect' (deblur_motion's kernel, noise 0.01) and
    restored by DDRM with the bundled prior: with reflect_extension, the PSNR gain over the blurry
    photo in the border band of the kernel's width is at most 1 dB below the interior's (mean
    over the photos). Without it (the circular operator on the photo itself), wrap-around ringing
    makes the border gain several dB worse."""
    x = _samples()
    n, h, w, c = x.shape
    k = np.asarray(operators.motion_kernel(registry.MOTION_SEED,
                                           registry.motion_kernel_size((h, w))), np.float64)
    sigma = 0.01
    rng = np.random.default_rng(1)
    y = np.stack([_reflect_blur(xi, k) for xi in x]) + sigma * rng.normal(size=x.shape)
    net_fn, params, config = checkpoints.load_model(bundled.PRIOR)
    model = lambda x_t, t: net_fn(params, x_t, t)
    band = np.ones((h, w, c), bool)
    band[k.shape[0]:h - k.shape[0], k.shape[1]:w - k.shape[1]] = False

    def restore(op, y_model):
      run = jax.jit(lambda yy: sampler.sample(model, op, yy, jax.random.key(0), steps=20,
                                              sigma_y=2 * sigma))
      return (np.asarray(run(jnp.asarray(y_model, jnp.float32)), np.float64) + 1) / 2

    def gaps(restored):
      out = []
      for xi, yi, ri in zip(x, y, restored):
        gain = lambda m, yi=yi, ri=ri, xi=xi: (
            10 * np.log10(np.mean((np.clip(yi, 0, 1) - xi)[m]**2)
                          / np.mean((np.clip(ri, 0, 1) - xi)[m]**2)))
        out.append(gain(band) - gain(~band))
      return np.array(out)

    padding = operators.border_padding(h, w, k.shape, 2**(len(config.ch_mult) - 1))
    extend = jax.jit(jax.vmap(lambda yi: operators.reflect_extension(yi, k, padding)))
    y_ext = np.asarray(extend(jnp.asarray(2 * y - 1, jnp.float32)))
    op_padded = operators.circular_blur(k, y_ext.shape[1:])
    padded = operators.crop_padding(restore(op_padded, y_ext), padding)
    naive = restore(operators.circular_blur(k, (h, w, c)), 2 * y - 1)
    gap_padded, gap_naive = gaps(padded), gaps(naive)
    self.assertGreaterEqual(gap_padded.mean(), -1.0, gap_padded)
    self.assertLess(gap_naive.mean(), -3.0, gap_naive)

  @parameterized.parameters(0.01, 0.03, 0.1)
  def test_noise_sigma_within_25_percent(self, sigma):
    x = _samples()
    k = np.asarray(operators.motion_kernel(registry.MOTION_SEED, 5), np.float64)
    rng = np.random.default_rng(int(sigma * 1000))
    for i, xi in enumerate(x):
      for name, clean in (('sharp', xi), ('blurred', _reflect_blur(xi, k))):
        est = metrics.noise_sigma(clean + sigma * rng.normal(size=xi.shape))
        self.assertLess(abs(est / sigma - 1), 0.25, f'photo {i} {name}: {est} vs {sigma}')

  def test_noise_sigma_plain_mad_would_fail(self):
    """The plain Haar HH MAD counts the sharp photos' texture as noise (the reason for the
    quiet-quarter selection); on pure noise both agree."""
    x = _samples()
    rng = np.random.default_rng(3)
    ratios = []
    for xi in x:
      yi = xi + 0.01 * rng.normal(size=xi.shape)
      hh = (yi[0::2, 0::2] - yi[0::2, 1::2] - yi[1::2, 0::2] + yi[1::2, 1::2]) / 2
      ratios.append(np.median(np.abs(hh)) / 0.6745 / 0.01)
    self.assertGreater(max(ratios), 1.25)
    noise = 0.05 * rng.normal(size=(128, 128, 3))
    self.assertAlmostEqual(metrics.noise_sigma(noise) / 0.05, 1.0, delta=0.1)
    with self.assertRaisesRegex(ValueError, 'noise_sigma needs'):
      metrics.noise_sigma(np.zeros((1, 5, 3)))


if __name__ == '__main__':
  absltest.main()
