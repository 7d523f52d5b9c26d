"""Tests of ddrm_jax.sampler against independent float64 numpy computations.

The test operator is an explicit dense SVD H = U diag(s) V^T on 4x4x1 images (n = 16, m = 12)
whose singular values make every case of Eq. 8 occur: large s (noisier than the diffusion until
the last levels), small s (case 2 for most levels), a zero singular value inside the rank (a
truncated direction that y still has a component along) and four directions past the rank.
"""

import functools
import math
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import chex
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from ddrm_jax import operators
from ddrm_jax import sampler

X_SHAPE = (4, 4, 1)
N_DIM = 16
M_DIM = 12
SING = np.array([2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0,
                 0.0, 0.0, 0.0, 0.0])
SIGMA_Y = 0.1  # Model units.


def _alpha_bar64():
  """The DDPM linear schedule, recomputed here in float64 (betas rounded to float32)."""
  betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64).astype(np.float32)
  return np.cumprod(1.0 - betas.astype(np.float64))


ABAR64 = _alpha_bar64()


def abar64(t):
  return 1.0 if t < 0 else ABAR64[t]


def sigma64(t):
  a = abar64(t)
  return math.sqrt(1.0 - a) / math.sqrt(a)


def levels(steps):
  """(t, t_next) pairs in execution order for the uniform skip t_i = floor(i * 1000 / steps)."""
  seq = [i * 1000 // steps for i in range(steps)][::-1]
  return list(zip(seq, seq[1:] + [-1]))


class DenseOp(struct.PyTreeNode):
  """A tiny operator with an explicit SVD, following the operator contract (one image)."""
  v_mat: jax.Array  # (n, n) orthogonal, columns = right singular vectors.
  u_mat: jax.Array  # (m, m) orthogonal.
  s: jax.Array  # (n,) descending, zeros past the rank.
  x_shape: tuple = struct.field(pytree_node=False, default=X_SHAPE)
  y_shape: tuple = struct.field(pytree_node=False, default=(M_DIM,))

  def Vt(self, x):
    return self.v_mat.T @ x.reshape(-1)

  def V(self, v):
    return (self.v_mat @ v).reshape(self.x_shape)

  def Ut(self, y):
    u = self.u_mat.T @ y
    return jnp.concatenate([u, jnp.zeros((self.s.shape[0] - u.shape[0],), u.dtype)])

  def U(self, u):
    return self.u_mat @ u[:self.y_shape[0]]

  def singulars(self):
    return self.s


def orthogonal(rng, k):
  q, r = np.linalg.qr(rng.normal(size=(k, k)))
  return q * np.sign(np.diag(r))


def make_op(seed=0, s=SING):
  rng = np.random.default_rng(seed)
  return DenseOp(v_mat=jnp.asarray(orthogonal(rng, N_DIM), jnp.float32),
                 u_mat=jnp.asarray(orthogonal(rng, M_DIM), jnp.float32),
                 s=jnp.asarray(s, jnp.float32))


def np_op(op):
  return (np.asarray(op.v_mat, np.float64), np.asarray(op.u_mat, np.float64),
          np.asarray(op.s, np.float64))


def measure(op, x0, sigma_y, rng):
  """y = H x0 + sigma_y z in float64 numpy, for x0 of shape (B, *X_SHAPE)."""
  v, u, s = np_op(op)
  xbar = x0.reshape(x0.shape[0], -1) @ v
  y = (s[:M_DIM] * xbar[:, :M_DIM]) @ u.T
  return (y + sigma_y * rng.normal(size=y.shape)).astype(np.float32)


def spectral(op, x):
  """V^T x per image in float64: (B, *X_SHAPE) -> (B, n)."""
  v = np.asarray(op.v_mat, np.float64)
  return np.asarray(x, np.float64).reshape(x.shape[0], -1) @ v


def ybar_of(op, y):
  _, u, s = np_op(op)
  uty = np.zeros((y.shape[0], N_DIM))
  uty[:, :M_DIM] = np.asarray(y, np.float64) @ u
  return np.where(s > 0, uty / np.where(s > 0, s, 1.0), 0.0)


UNIT_ROUNDOFF = np.finfo(np.float32).eps / 2  # u = 2^-24: |fl(a op b) - a op b| <= u |a op b|.


def gamma(k):
  """Higham's gamma_k = k u / (1 - k u): a float32 k-term dot product's error is at most
  gamma_k times the dot product of the absolute values, in any summation order, FMA or not."""
  return k * UNIT_ROUNDOFF / (1.0 - k * UNIT_ROUNDOFF)


def dense_rounding(op, y, eta_b=1.0, x0=None):
  """(B, n) bound on what float32 arithmetic may leave between a sampler output whose spectral
  coordinates are m = eta_b ybar + (1 - eta_b) V^T x0 in exact arithmetic (Eq. 8's case 3 at
  the last step, noiseless) and m itself, computed in float64 from the float32 data, per
  spectral coordinate of the dense test operator (x0: the last x0 predictions (B, *X_SHAPE),
  needed when eta_b < 1).

  fl(U^T y)_i is off by at most gamma_m (|U|^T |y|)_i, which ybar_i = (U^T y)_i / s_i divides
  by s_i (up to 1000x here: s reaches 0.001), plus the division's own rounding u |ybar_i|;
  fl(V^T x0) is off by at most gamma_n |V|^T |x0|, the mixing adds u |m| (twice), and the image
  V m by at most gamma_n |V| |m| per pixel. Read back through V^T in float64, the float32-stored
  V contributes (V^T V - I) m, and the errors of the coordinates pass through V^T V.
  """
  v, u, s = np_op(op)
  ybar = ybar_of(op, y)
  ut_err = np.zeros_like(ybar)
  ut_err[:, :M_DIM] = gamma(M_DIM) * (np.abs(np.asarray(y, np.float64)) @ np.abs(u))
  observed = s > 0
  d_ybar = np.where(observed, ut_err / np.where(observed, s, 1.0), 0.0)
  d_ybar += UNIT_ROUNDOFF * np.abs(ybar)
  mean, d_mean = eta_b * ybar, eta_b * d_ybar
  if eta_b != 1.0:
    x0 = np.asarray(x0, np.float64).reshape(x0.shape[0], -1)
    mean = mean + (1 - eta_b) * (x0 @ v)
    d_mean = d_mean + (1 - eta_b) * gamma(N_DIM) * (np.abs(x0) @ np.abs(v))
  d_mean += 2 * UNIT_ROUNDOFF * np.abs(mean)
  gram = v.T @ v
  d_image = gamma(N_DIM) * (np.abs(mean) + d_mean) @ np.abs(v).T
  return (d_mean @ np.abs(gram).T + np.abs(mean) @ np.abs(gram - np.eye(N_DIM)).T
          + d_image @ np.abs(v))


def junk_model(x, t):
  """A deterministic network stand-in, nonlinear in x and dependent on t."""
  return jnp.tanh(0.7 * x + 1e-3 * t[:, None, None, None].astype(jnp.float32))


def jit_sample(model_fn, **kwargs):
  """sample() jitted with the operator, measurements and key as arguments."""
  return jax.jit(lambda op, y, key: sampler.sample(model_fn, op, y, key, **kwargs))


def abar_table32():
  return jnp.asarray(ABAR64, jnp.float32)


def oracle_model(x0):
  """The eps consistent with the TRUE x0: the sampler's x0 prediction becomes x0 itself."""
  table = abar_table32()

  def model_fn(x_vp, t):
    a = table[t][:, None, None, None]
    return (x_vp - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)

  return model_fn


def gaussian_mmse_model(op, mu_bar, d):
  """E[eps | x_t] for x0 ~ N(V mu_bar, V diag(d) V^T): the exact MMSE network of this prior."""
  table = abar_table32()
  mu_bar = jnp.asarray(mu_bar, jnp.float32)
  d = jnp.asarray(d, jnp.float32)

  def model_fn(x_vp, t):
    a = table[t][:, None]
    xbar = x_vp.reshape(x_vp.shape[0], -1) @ op.v_mat
    gain = d * jnp.sqrt(a) / (a * d + 1.0 - a)
    x0bar = mu_bar + gain * (xbar - jnp.sqrt(a) * mu_bar)
    x0 = (x0bar @ op.v_mat.T).reshape(x_vp.shape)
    return (x_vp - jnp.sqrt(a)[..., None, None] * x0) / jnp.sqrt(1.0 - a)[..., None, None]

  return model_fn


def gaussian_ddrm_law(s, ybar, mu, d, sigma_y, eta, eta_b, steps):
  """Mean/variance per spectral coordinate of DDRM with the Gaussian MMSE network (float64).

  With x0 ~ N(mu, diag(d)) in the spectral basis, the network's prediction from the VE state x
  at level sigma is x0hat = g x + (1 - g) mu, g = d / (d + sigma^2); every update of Eq. 8 is
  then x_next = A x + K + sqrt(V) z. Returns [(mean, var) of x0hat per step], (mean, var) of
  the output.
  """
  pairs = levels(steps)
  observed = s > 0
  nsig = np.where(observed, sigma_y / np.where(observed, s, 1.0), 0.0)
  sig_t = sigma64(pairs[0][0])
  start = observed & (s * sig_t >= sigma_y)
  m = np.where(start, ybar, 0.0)
  v = np.where(start, sig_t**2 - nsig**2, sig_t**2)
  preds = []
  for t, t_next in pairs:
    sg, sn = sigma64(t), sigma64(t_next)
    g = d / (d + sg**2)
    preds.append((g * m + (1 - g) * mu, g**2 * v))
    c = math.sqrt(1 - eta**2) * sn
    # Case 1: x0hat + c (x - x0hat) / sigma.
    a1, k1, v1 = g + c * (1 - g) / sg, (1 - g) * mu * (1 - c / sg), (eta * sn)**2
    # Case 2: x0hat + c (ybar - x0hat) / nsig.
    r = np.where(nsig > 0, c / np.where(nsig > 0, nsig, 1.0), 0.0)
    a2, k2, v2 = g * (1 - r), (1 - g) * mu * (1 - r) + r * ybar, (eta * sn)**2
    # Case 3: eta_b ybar + (1 - eta_b) x0hat.
    a3 = (1 - eta_b) * g
    k3 = eta_b * ybar + (1 - eta_b) * (1 - g) * mu
    v3 = np.maximum(sn**2 - (nsig * eta_b)**2, 0.0)
    case3 = observed & (s * sn >= sigma_y)
    case2 = observed & ~case3
    a = np.select([case3, case2], [a3, a2], a1)
    k = np.select([case3, case2], [k3, k2], k1)
    var_add = np.select([case3, case2], [v3, v2], v1)
    m, v = a * m + k, a**2 * v + var_add
  return preds, (m, v)


class SamplerStatisticsTest(parameterized.TestCase):
  """The laws of the chain: Proposition 3.1 and a Gaussian prior with its exact denoiser."""

  @parameterized.product(sigma_y=(SIGMA_Y, 0.0), etas=((0.85, 1.0), (0.4, 0.6)))
  def test_proposition_3_1_marginals(self, sigma_y, etas):
    """With the true x0 as prediction and a fresh y per sample, xbar_t ~ N(x0bar, sigma_t^2)."""
    eta, eta_b = etas
    num = 20000
    op = make_op(1)
    rng = np.random.default_rng(2)
    x0_one = rng.normal(size=(1,) + X_SHAPE).astype(np.float32)
    x0 = np.repeat(x0_one, num, axis=0)
    y = jnp.asarray(measure(op, x0, sigma_y, rng))
    keys = jax.random.split(jax.random.key(3), num)
    model = oracle_model(jnp.asarray(x0))
    steps = 20
    pairs = levels(steps)
    step = jax.jit(functools.partial(sampler.ddrm_step, model, op, eta=eta, eta_b=eta_b,
                                     sigma_y=sigma_y))
    x = sampler.ddrm_init(op, y, keys, sigma_y=sigma_y, t_start=pairs[0][0])
    states = [(pairs[0][0], x)]
    for i, (t, t_next) in enumerate(pairs, start=1):
      x, _ = step(x, y, keys, i, t, t_next)
      states.append((t_next, x))
    x0bar = spectral(op, x0_one)[0]
    seen = {1: 0, 2: 0, 3: 0}
    s = SING
    for t, x in states:
      xbar = spectral(op, np.asarray(x))
      sg = sigma64(t)
      if t < 0:  # sigma = 0: the chain must end on x0 itself.
        np.testing.assert_allclose(xbar, np.broadcast_to(x0bar, xbar.shape), atol=2e-4)
        continue
      z = (xbar - x0bar) / sg
      mean, var = z.mean(0), z.var(0)
      # 5 standard errors: se(mean) = 1/sqrt(N), se(var) = sqrt(2/N).
      np.testing.assert_array_less(np.abs(mean), 5 / math.sqrt(num), err_msg=f't={t}')
      np.testing.assert_array_less(np.abs(var - 1), 5 * math.sqrt(2 / num), err_msg=f't={t}')
      seen[1] += np.sum(s == 0)
      seen[2] += np.sum((s > 0) & (s * sg < sigma_y))
      seen[3] += np.sum((s > 0) & (s * sg >= sigma_y))
    self.assertGreater(seen[1], 0)
    self.assertGreater(seen[3], 0)
    if sigma_y > 0:
      self.assertGreater(seen[2], 0)

  @parameterized.product(sigma_y=(SIGMA_Y, 0.0), etas=((0.85, 1.0), (0.4, 0.6)))
  def test_gaussian_prior_law(self, sigma_y, etas):
    """Sample mean/variance of every x0 prediction and of the output match the recursion.

    N = 20000 samples per coordinate: the variance's relative standard error is
    sqrt(2 / N) = 0.01, the tolerance 5 of them (0.05), so a variance 10% off misses it by
    five standard errors while a correct one passes by five.
    """
    eta, eta_b = etas
    num = 20000
    steps = 20
    op = make_op(4)
    rng = np.random.default_rng(5)
    mu_bar = rng.normal(scale=0.5, size=N_DIM)
    d = np.geomspace(4.0, 0.05, N_DIM)[rng.permutation(N_DIM)]
    x0 = ((mu_bar + np.sqrt(d) * rng.normal(size=N_DIM)) @ np.asarray(op.v_mat, np.float64).T)
    y_one = measure(op, x0.reshape((1,) + X_SHAPE), sigma_y, rng)
    y = jnp.asarray(np.repeat(y_one, num, axis=0))
    model = gaussian_mmse_model(op, mu_bar, d)
    run = jax.jit(lambda y, key: sampler.sample(model, op, y, key, steps=steps, eta=eta,
                                                eta_b=eta_b, sigma_y=sigma_y,
                                                return_x0_preds=True))
    out, preds = run(y, jax.random.key(6))
    ybar = ybar_of(op, y_one)[0]
    law_preds, law_out = gaussian_ddrm_law(SING, ybar, mu_bar, d, sigma_y, eta, eta_b, steps)
    checks = [(f'x0 pred step {i + 1}', preds[i], law) for i, law in enumerate(law_preds)]
    checks.append(('output', out, law_out))
    assert_follows_law(checks, lambda xs: spectral(op, np.asarray(xs)), num,
                       dense_rounding(op, y_one)[0])


def assert_follows_law(checks, to_spectral, num, rounding):
  """Each (name, samples, (mean, var)) of `checks`: the spectral coordinates (`to_spectral`,
  float64) of `num` samples have that mean and variance; deterministic coordinates exactly.

  `rounding` (n,) bounds what float32 arithmetic may leave between ybar and a coordinate that
  equals ybar in exact arithmetic (`dense_rounding`): deterministic coordinates (the
  noiseless output on ybar) must match to it, and a random coordinate's mean, which depends on
  ybar with a total weight of at most 1 (every Eq. 8 case mixes ybar with weight in [0, 1] into
  a contraction of the previous mean), may move by it. A further 1e-5 (1 + |mean|) covers the
  float32 rounding of the 20 steps' O(1) arithmetic that averaging over samples leaves.
  """
  rounding = np.broadcast_to(np.asarray(rounding, np.float64), checks[0][2][0].shape)
  for name, xs, (m_true, v_true) in checks:
    xbar = to_spectral(xs)
    m_hat, v_hat = xbar.mean(0), xbar.var(0)
    exact = v_true < 1e-12  # Deterministic coordinates (e.g. noiseless output on ybar).
    # Values within `rounding` of the mean have a variance below rounding^2.
    np.testing.assert_array_less(v_hat[exact], rounding[exact]**2 + 1e-300, err_msg=name)
    np.testing.assert_array_less(np.abs(m_hat[exact] - m_true[exact]), rounding[exact],
                                 err_msg=name)
    rand = ~exact
    np.testing.assert_array_less(np.abs(v_hat[rand] / v_true[rand] - 1),
                                 5 * math.sqrt(2 / num), err_msg=name)
    se = np.sqrt(v_true[rand] / num)
    np.testing.assert_array_less(np.abs(m_hat[rand] - m_true[rand]),
                                 5 * se + rounding[rand] + 1e-5 * (1 + np.abs(m_true[rand])),
                                 err_msg=name)


class SamplerSemanticsTest(parameterized.TestCase):
  """Deterministic properties of Eq. 7-8 and of the network interface."""

  def setUp(self):
    super().setUp()
    self.op = make_op(7)
    rng = np.random.default_rng(8)
    self.x0 = rng.normal(size=(3,) + X_SHAPE).astype(np.float32)
    self.y_noisy = jnp.asarray(measure(self.op, self.x0, SIGMA_Y, rng))
    self.y_clean = jnp.asarray(measure(self.op, self.x0, 0.0, rng))
    self.key = jax.random.key(9)

  def test_noiseless_ends_on_ybar(self):
    """Ties s sigma' = sigma_y = 0 at the last step are case 3 (not the reference's case 1)."""
    for eta_b in (1.0, 0.5):
      out, preds = jit_sample(junk_model, steps=10, eta_b=eta_b, return_x0_preds=True)(
          self.op, self.y_clean, self.key)
      xbar, pbar = spectral(self.op, out), spectral(self.op, preds[-1])
      ybar = ybar_of(self.op, self.y_clean)
      obs = SING > 0
      rounding = dense_rounding(self.op, self.y_clean, eta_b, preds[-1])
      np.testing.assert_array_less(
          np.abs(xbar - eta_b * ybar - (1 - eta_b) * pbar)[:, obs], rounding[:, obs])
      np.testing.assert_allclose(xbar[:, ~obs], pbar[:, ~obs], atol=1e-4)

  def test_noisy_ends_on_last_prediction(self):
    out, preds = jit_sample(junk_model, steps=10, sigma_y=SIGMA_Y, return_x0_preds=True)(
        self.op, self.y_noisy, self.key)
    np.testing.assert_allclose(out, preds[-1], atol=1e-4)

  def test_tie_goes_to_third_case(self):
    """A step with s_k sigma' == sigma_y exactly lands deterministically on ybar_k (eta_b=1)."""
    from ddrm_jax import diffusion  # pylint: disable=g-import-not-at-top
    t, t_next, k = 500, 450, 4
    sigma_next = np.float32(diffusion.ve_sigmas(diffusion.alpha_bars(
        diffusion.linear_betas()))[t_next + 1])
    sigma_y = float(np.float32(SING[k]) * sigma_next)  # The float32 product, as in the sampler.
    keys = jax.random.split(self.key, 3)
    x = sampler.ddrm_init(self.op, self.y_noisy, keys, sigma_y=sigma_y, t_start=t)
    x_next, _ = sampler.ddrm_step(junk_model, self.op, x, self.y_noisy, keys, 1, t, t_next,
                                  sigma_y=sigma_y)
    got = spectral(self.op, x_next)[:, k]
    want = ybar_of(self.op, self.y_noisy)[:, k]
    np.testing.assert_allclose(got, want, atol=2e-3 * float(sigma_next))

  def test_truncated_direction_ignores_measurement(self):
    """s_i = 0 inside the rank: y's component along u_i must not enter (defect 10)."""
    u = np.asarray(self.op.u_mat, np.float64)
    y2 = self.y_noisy + jnp.asarray(5.0 * u[:, 11], jnp.float32)[None]
    run = jit_sample(junk_model, steps=8, sigma_y=SIGMA_Y)
    a, b = run(self.op, self.y_noisy, self.key), run(self.op, y2, self.key)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

  def test_learned_sigma_uses_first_channels(self):
    def learned(x, t):
      if t.dtype != jnp.int32 or t.shape != (x.shape[0],):
        raise AssertionError(f'bad t {t.dtype} {t.shape}')
      return jnp.concatenate([junk_model(x, t), 100.0 + x], axis=-1)

    a = jit_sample(junk_model, steps=5, sigma_y=SIGMA_Y)(self.op, self.y_noisy, self.key)
    b = jit_sample(learned, steps=5, sigma_y=SIGMA_Y)(self.op, self.y_noisy, self.key)
    np.testing.assert_array_equal(a, b)

  def test_guidance_at_x_t(self):
    """eps - sqrt(1 - abar_t) * guidance(x_t, t), with abar from the float64 schedule."""
    guide = lambda x, t: 0.3 * jnp.sin(3.0 * x) + 1e-4 * t[:, None, None, None]
    table = abar_table32()

    def guided_by_hand(x, t):
      a = table[t][:, None, None, None]
      return junk_model(x, t) - jnp.sqrt(1.0 - a) * guide(x, t)

    kw = dict(steps=6, sigma_y=SIGMA_Y)
    args = (self.op, self.y_noisy, self.key)
    a = jit_sample(junk_model, guidance_fn=guide, **kw)(*args)
    b = jit_sample(guided_by_hand, **kw)(*args)
    c = jit_sample(junk_model, **kw)(*args)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    self.assertGreater(float(jnp.abs(a - c).max()), 1e-2)

  @parameterized.parameters(20, 30, 7, 1)
  def test_timesteps_seen_by_network(self, steps):
    """Network calls at floor(i * 1000 / steps), descending; x0 = (x - sqrt(1-a) eps)/sqrt(a)."""
    table = abar_table32()

    def model_predicting_t(x_vp, t):  # Its x0 prediction is the timestep itself.
      a = table[t][:, None, None, None]
      return (x_vp - jnp.sqrt(a) * t[:, None, None, None]) / jnp.sqrt(1.0 - a)

    _, preds = jit_sample(model_predicting_t, steps=steps, sigma_y=SIGMA_Y,
                          return_x0_preds=True)(self.op, self.y_noisy, self.key)
    self.assertEqual(preds.shape, (steps, 3) + X_SHAPE)
    want = np.array([t for t, _ in levels(steps)], np.float64)
    got = np.asarray(preds, np.float64).reshape(steps, -1)
    np.testing.assert_allclose(got, np.broadcast_to(want[:, None], got.shape), rtol=1e-3,
                               atol=0.05)

  def test_custom_timesteps_and_betas(self):
    betas = np.linspace(1e-4, 0.05, 200)
    a = jit_sample(junk_model, timesteps=[0, 60, 120, 199], betas=betas, sigma_y=SIGMA_Y,
                   return_x0_preds=True)(self.op, self.y_noisy, self.key)[1]
    self.assertEqual(a.shape[0], 4)
    self.assertTrue(np.all(np.isfinite(a)))

  def test_posterior_stats_matches_separate_samples(self):
    n = 3
    mean, std = jax.jit(lambda y, k: sampler.posterior_stats(
        junk_model, self.op, y, k, n, steps=5, sigma_y=SIGMA_Y))(self.y_noisy, self.key)
    image_keys = [jax.random.fold_in(self.key, i) for i in range(3)]
    run = jit_sample(junk_model, steps=5, sigma_y=SIGMA_Y)
    draws = []
    for j in range(n):
      keys = jnp.stack([jax.random.fold_in(k, j) for k in image_keys])
      draws.append(np.asarray(run(self.op, self.y_noisy, keys), np.float64))
    draws = np.stack(draws)
    np.testing.assert_allclose(mean, draws.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std, draws.std(0), rtol=1e-3, atol=1e-5)
    self.assertGreater(float(std.min()), 0.0)


class SamplerDeterminismTest(parameterized.TestCase):
  """Keys, jit, batching and tracing."""

  def setUp(self):
    super().setUp()
    chex.clear_trace_counter()
    self.op = make_op(10)
    rng = np.random.default_rng(11)
    self.y = jnp.asarray(measure(self.op, rng.normal(size=(4,) + X_SHAPE), SIGMA_Y, rng))
    self.key = jax.random.key(12)
    self.kw = dict(steps=6, sigma_y=SIGMA_Y)

  def test_same_key_same_result(self):
    run = jax.jit(lambda y, k: sampler.sample(junk_model, self.op, y, k, **self.kw))
    a, b = run(self.y, self.key), run(self.y, self.key)
    np.testing.assert_array_equal(a, b)
    c = run(self.y, jax.random.key(13))
    self.assertGreater(float(jnp.abs(a - c).max()), 1e-2)
    raw = run(self.y, jax.random.key_data(self.key))  # A raw uint32 key is the same key.
    np.testing.assert_array_equal(a, raw)

  def test_jit_equals_python_loop_over_step(self):
    out = jax.jit(lambda y, k: sampler.sample(junk_model, self.op, y, k, **self.kw))(
        self.y, self.key)
    keys = jnp.stack([jax.random.fold_in(self.key, i) for i in range(4)])
    x = sampler.ddrm_init(self.op, self.y, keys, sigma_y=SIGMA_Y, t_start=levels(6)[0][0])
    for i, (t, t_next) in enumerate(levels(6), start=1):
      x, _ = sampler.ddrm_step(junk_model, self.op, x, self.y, keys, i, t, t_next,
                               sigma_y=SIGMA_Y)
    np.testing.assert_allclose(out, x, rtol=1e-5, atol=1e-5)

  def test_batch_equals_one_by_one(self):
    run = jax.jit(lambda y, k: sampler.sample(junk_model, self.op, y, k, **self.kw))
    out = run(self.y, self.key)
    for i in range(4):
      one = run(self.y[i:i + 1], jax.random.fold_in(self.key, i)[None])
      np.testing.assert_allclose(out[i:i + 1], one, rtol=1e-5, atol=1e-5)

  def test_batched_operator_equals_one_by_one(self):
    ops = [make_op(20 + i) for i in range(4)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ops)
    keys = jax.random.split(self.key, 4)
    out = jit_sample(junk_model, batched_op=True, **self.kw)(stacked, self.y, keys)
    run = jit_sample(junk_model, **self.kw)
    for i in range(4):
      one = run(ops[i], self.y[i:i + 1], keys[i:i + 1])
      np.testing.assert_allclose(out[i:i + 1], one, rtol=1e-5, atol=1e-5)

  def test_step_traced_once(self):
    def one_step(x, y, keys, i, t, t_next):
      return sampler.ddrm_step(junk_model, self.op, x, y, keys, i, t, t_next, sigma_y=SIGMA_Y)

    step = jax.jit(chex.assert_max_traces(one_step, n=1))
    keys = jax.random.split(self.key, 4)
    x = jnp.zeros((4,) + X_SHAPE)
    for i, (t, t_next) in enumerate(levels(6), start=1):
      x, _ = step(x, self.y, keys, i, t, t_next)

  def test_scan_traces_step_once(self):
    traced = chex.assert_max_traces(sampler.transition, n=1)
    with mock.patch.object(sampler, 'transition', traced):
      jax.jit(lambda y, k: sampler.sample(junk_model, self.op, y, k, steps=20,
                                          sigma_y=SIGMA_Y))(self.y, self.key)


class ArgumentCheckTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.op = make_op(0)
    self.y = jnp.zeros((2, M_DIM))
    self.key = jax.random.key(0)

  @parameterized.named_parameters(
      ('eta_low', dict(eta=-0.1), 'eta'),
      ('eta_high', dict(eta=1.5), 'eta'),
      ('eta_b_high', dict(eta_b=2.5), 'eta_b'),
      ('eta_b_low', dict(eta_b=-0.5), 'eta_b'),
      ('sigma_y_negative', dict(sigma_y=-0.1), 'sigma_y'),
      ('sigma_y_nan', dict(sigma_y=float('nan')), 'sigma_y'),
      ('steps_zero', dict(steps=0), 'steps'),
      ('steps_too_many', dict(steps=1001), 'steps'),
      ('steps_float', dict(steps=2.5), 'steps'),
      ('timesteps_unsorted', dict(timesteps=[0, 50, 40]), 'timesteps'),
      ('timesteps_range', dict(timesteps=[0, 1000]), 'timesteps'),
      ('betas_range', dict(betas=[0.1, 1.2]), 'betas'),
  )
  def test_bad_settings(self, kwargs, name):
    with self.assertRaisesRegex(ValueError, name):
      sampler.sample(junk_model, self.op, self.y, self.key, **kwargs)

  def test_bad_y_shape(self):
    with self.assertRaisesRegex(ValueError, r'y must have shape'):
      sampler.sample(junk_model, self.op, jnp.zeros((2, M_DIM + 1)), self.key)
    with self.assertRaisesRegex(ValueError, r'y must have shape'):
      sampler.sample(junk_model, self.op, jnp.zeros((M_DIM,)), self.key)

  def test_bad_key(self):
    with self.assertRaisesRegex(ValueError, 'key'):
      sampler.sample(junk_model, self.op, self.y, jax.random.split(self.key, 3))
    with self.assertRaisesRegex(ValueError, 'key'):
      sampler.sample(junk_model, self.op, self.y, 0)

  def test_bad_batched_op(self):
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[self.op] * 3)
    with self.assertRaisesRegex(ValueError, 'batched_op'):
      sampler.sample(junk_model, stacked, self.y, self.key, batched_op=True)
    with self.assertRaisesRegex(ValueError, 'batched_op'):
      sampler.sample(junk_model, self.op, self.y, self.key, batched_op=True)

  def test_stacked_operators_without_batched_op(self):
    for op in (jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[self.op] * 3),
               jax.vmap(lambda m: operators.from_mask(m, 1))(jnp.ones((3, 4, 4)))):
      y = jnp.zeros((3,) + tuple(op.y_shape))
      with self.assertRaisesRegex(ValueError, r'stacked batch of operators, leading sizes '
                                  r'\[3\]\?\): pass batched_op=True'):
        sampler.sample(junk_model, op, y, self.key, steps=2)

  def test_traced_setting(self):
    with self.assertRaisesRegex(ValueError, 'sigma_y must be a Python number'):
      jax.jit(lambda s: sampler.sample(junk_model, self.op, self.y, self.key, sigma_y=s))(0.1)

  def test_bad_model_output(self):
    with self.assertRaisesRegex(ValueError, 'model_fn must return'):
      sampler.sample(lambda x, t: x[..., :1, :], self.op, self.y, self.key, steps=2)

  def test_bad_posterior_n(self):
    with self.assertRaisesRegex(ValueError, 'n must be'):
      sampler.posterior_stats(junk_model, self.op, self.y, self.key, 0)

  def test_not_an_operator(self):
    with self.assertRaisesRegex(ValueError, 'op must be'):
      sampler.sample(junk_model, object(), self.y, self.key)


class PackageOperatorSmokeTest(absltest.TestCase):
  """sample() on the package's operators; noiseless runs must reproduce y (H x0 = y)."""

  def test_inpainting_with_per_image_masks(self):
    from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
    shape = (8, 8, 3)
    ops = [operators.make('inp', shape, key=jax.random.key(i)) for i in range(3)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ops)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(3,) + shape), jnp.float32)
    y = jax.vmap(lambda o, xi: o.H(xi))(stacked, x)
    out = jit_sample(junk_model, steps=4, batched_op=True)(stacked, y, jax.random.key(1))
    self.assertEqual(out.shape, (3,) + shape)
    for i, op in enumerate(ops):
      np.testing.assert_allclose(op.H(out[i]), y[i], atol=1e-4)
      self.assertFalse(np.allclose(out[i], out[(i + 1) % 3]))

  def test_block_superres(self):
    from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
    op = operators.make('sr2', (8, 8, 3))
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, size=(2, 8, 8, 3)), jnp.float32)
    y = jax.vmap(op.H)(x)
    out = jit_sample(junk_model, steps=4)(op, y, jax.random.key(2))
    np.testing.assert_allclose(jax.vmap(op.H)(out), y, atol=1e-4)
    noisy = jit_sample(junk_model, steps=4, sigma_y=0.2)(op, y, jax.random.key(2))
    self.assertEqual(noisy.shape, (2, 8, 8, 3))
    self.assertTrue(np.all(np.isfinite(noisy)))


if __name__ == '__main__':
  absltest.main()
