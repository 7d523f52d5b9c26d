"""Tests of ddrm_jax.solvers (DDNM/DDNM+, ΠGDM, DPS, DiffPIR) against float64 closed forms.

The laws use test_sampler's dense 4x4x1 SVD operator (every kind of singular value, a zero one
inside the rank, directions past it) and data x0 ~ N(0, I), whose MMSE network is known exactly
(x0hat = a_t x_t). Then DDNM, ΠGDM and DiffPIR are linear-Gaussian chains per spectral
coordinate: the float64 recursions below give the mean and variance of every x0 prediction and
of the output, checked with test_sampler.assert_follows_law.
"""

import inspect
import math
import os
import sys

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from ddrm_jax import operators
from ddrm_jax import solvers
from ddrm_jax.solvers import common
from ddrm_jax.solvers import ddnm
from ddrm_jax.solvers import diffpir
from ddrm_jax.solvers import dps
from ddrm_jax.solvers import pigdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_sampler as ts  # pylint: disable=g-import-not-at-top,wrong-import-position

EPS32 = float(np.finfo(np.float32).eps)
NUM = 20000  # Samples per law: 5 standard errors of a variance are 5 sqrt(2 / NUM) = 5%.
STEPS = 20


class DenseOp(ts.DenseOp):
  """test_sampler's dense SVD operator with the derived H of the operator contract (DPS)."""

  def H(self, x):
    return self.U(self.s * self.Vt(x))


def make_op(seed):
  op = ts.make_op(seed)
  return DenseOp(v_mat=op.v_mat, u_mat=op.u_mat, s=op.s)


def nonlinear_model(x, t):
  """A denoiser-like stand-in network, nonlinear in x: x0hat = a x - 0.1 b tanh(3 x) stays
  bounded at every level (so ΠGDM's and DPS's gradients through it do too)."""
  abar = ts.abar_table32()[t][:, None, None, None]
  return jnp.sqrt(1.0 - abar) * x + 0.1 * jnp.sqrt(abar) * jnp.tanh(3.0 * x)


def unit_gaussian_model(op):
  """The exact eps network of x0 ~ N(0, I)."""
  return ts.gaussian_mmse_model(op, np.zeros(ts.N_DIM), np.ones(ts.N_DIM))


def coeffs(t):
  a = ts.abar64(t)
  return math.sqrt(a), math.sqrt(1.0 - a)


def ddim_c(t, t_next, eta):
  ab, ab_n = ts.abar64(t), ts.abar64(t_next)
  return eta * math.sqrt((1 - ab_n) / (1 - ab) * (1 - ab / ab_n))


def chain_law(pairs, step):
  """Runs the per-coordinate recursion x' = A x + K + sqrt(Q) z from x_T ~ N(0, I); `step(t,
  t_next)` returns (A, K, Q) or None for a jump q(x_{t_next} | x_t). Returns the laws of the
  network's x0hat = a_t x_t at every network call and of the output."""
  m, v = np.zeros(ts.N_DIM), np.ones(ts.N_DIM)
  preds = []
  for t, t_next in pairs:
    if t_next > t:  # Time travel: forward diffusion.
      r = ts.abar64(t_next) / ts.abar64(t)
      m, v = math.sqrt(r) * m, r * v + (1 - r)
      continue
    a, _ = coeffs(t)
    preds.append((a * m, a**2 * v))
    big_a, k, q = step(t, t_next)
    m, v = big_a * m + k, big_a**2 * v + q
  return preds, (m, v)


def ddnm_law(s, ybar, sigma_y, eta, pairs):
  obs = s > 0

  def step(t, t_next):
    a, b = coeffs(t)
    a_n, b_n = coeffs(t_next)
    keep = np.sqrt(1 - eta**2)
    a_free, q_free = a_n * a + b_n * keep * b, (b_n * eta)**2  # x0hat = a x, eps = b x.
    if sigma_y == 0:
      big_a = np.where(obs, b_n * keep * b, a_free)
      return big_a, np.where(obs, a_n * ybar, 0.0), np.full(s.shape, q_free)
    nsig = np.where(obs, a_n * sigma_y / np.where(obs, s, 1), 0.0)
    full = obs & (b_n >= nsig)
    part = obs & ~full
    lam = s * b_n * keep / (a_n * sigma_y)
    big_a = np.select([full, part], [0.0, a_n * (1 - lam) * a], a_free)
    k = np.select([full, part], [a_n * ybar, a_n * lam * ybar], 0.0)
    q = np.select([full, part], [np.maximum(b_n**2 - nsig**2, 0), q_free], q_free)
    return big_a, k, q

  return chain_law(pairs, step)


def posterior_mean_gain(s, uty, sigma_y, a, b):
  """E[x0 | x_t, y] = G x_t + K per spectral coordinate for x0 ~ N(0, 1), x_t = a x0 + b e,
  (U^T y)_i = s_i x0 + sigma_y n (the textbook Gaussian posterior; sigma_y = 0: on ybar)."""
  obs = s > 0
  if sigma_y == 0:
    ybar = np.where(obs, uty / np.where(obs, s, 1), 0.0)
    return np.where(obs, 0.0, a), np.where(obs, ybar, 0.0)
  precision = 1 + a**2 / b**2 + s**2 / sigma_y**2
  return a / b**2 / precision, s * uty / sigma_y**2 / precision


def pigdm_law(s, uty, sigma_y, eta, pairs):
  def step(t, t_next):
    a, b = coeffs(t)
    a_n, b_n = coeffs(t_next)
    gain, k = posterior_mean_gain(s, uty, sigma_y, a, b)
    gain, k = a + a**2 * (gain - a), a**2 * k  # x0hat + alpha_bar_t (E[x0 | x_t, y] - x0hat).
    c1 = ddim_c(t, t_next, eta)
    c2 = math.sqrt(max(b_n**2 - c1**2, 0.0))
    return a_n * gain + c2 * b, a_n * k, np.full(s.shape, c1**2)

  return chain_law(pairs, step)


def diffpir_law(s, uty, sigma_y, lam, zeta, pairs):
  sigma_n = max(sigma_y / 2, diffpir.SIGMA_N_FLOOR)

  def step(t, t_next):
    a, b = coeffs(t)
    a_n, b_n = coeffs(t_next)
    rho = lam * sigma_n**2 * a**2 / b**2
    gain, k = rho * a / (s**2 + rho), s * uty / (s**2 + rho)  # x0p = gain x + k.
    keep = b_n * math.sqrt(1 - zeta) / b  # eps_hat = (x - a x0p) / b.
    return a_n * gain + keep * (1 - a * gain), a_n * k - keep * a * k, np.full(s.shape,
                                                                             zeta * b_n**2)

  return chain_law(pairs, step)


def assert_law(checks, to_spectral, s, y_max):
  """test_sampler.assert_follows_law's check, its mean tolerances widened by the float32 error
  of ybar = U^T y / s (the law is float64; the chain's U^T y is float32): deterministic
  coordinates (e.g. a noiseless range part on ybar) within that error."""
  obs = s[s > 0]
  tol = ts.N_DIM * EPS32 * y_max / obs.min()  # The error of ybar_i = (U^T y)_i / s_i.
  for name, xs, (m, v) in checks:
    xbar = to_spectral(xs)
    exact = v < 1e-12
    np.testing.assert_allclose(xbar[:, exact].var(0), 0.0, atol=tol**2 + 1e-12, err_msg=name)
    np.testing.assert_allclose(xbar[:, exact].mean(0), m[exact], rtol=0, atol=tol, err_msg=name)
    rand = ~exact
    # The variance as test_sampler.assert_follows_law; the mean within 5 standard errors plus
    # the float32 error of ybar (which a mean near ybar / s_min inherits).
    np.testing.assert_array_less(np.abs(xbar[:, rand].var(0) / v[rand] - 1),
                                 5 * math.sqrt(2 / NUM), err_msg=name)
    np.testing.assert_array_less(np.abs(xbar[:, rand].mean(0) - m[rand]),
                                 5 * np.sqrt(v[rand] / NUM) + tol, err_msg=name)


class LawTest(parameterized.TestCase):
  """Sample laws of the chains with x0 ~ N(0, I) and its exact network."""

  def run_law(self, module, law, sigma_y, **kwargs):
    op = make_op(3)
    rng = np.random.default_rng(4)
    y_one = ts.measure(op, rng.normal(size=(1,) + ts.X_SHAPE), sigma_y, rng)
    y = jnp.asarray(np.repeat(y_one, NUM, axis=0))
    model = unit_gaussian_model(op)
    run = jax.jit(lambda y, k: module.sample(model, op, y, k, steps=STEPS, sigma_y=sigma_y,
                                             return_x0_preds=True, **kwargs))
    out, preds = run(y, jax.random.key(5))
    ybar = ts.ybar_of(op, y_one)[0]
    law_preds, law_out = law(ts.SING, ybar)
    self.assertEqual(preds.shape[0], len(law_preds))
    checks = [(f'x0 pred {i + 1}', preds[i], p) for i, p in enumerate(law_preds)]
    checks.append(('output', out, law_out))
    assert_law(checks, lambda xs: ts.spectral(op, np.asarray(xs)), ts.SING, np.abs(y_one).max())
    return law_out

  @parameterized.product(sigma_y=(0.0, ts.SIGMA_Y), eta=(0.85, 0.4))
  def test_ddnm(self, sigma_y, eta):
    pairs = ts.levels(STEPS)
    law_out = self.run_law(ddnm, lambda s, ybar: ddnm_law(s, ybar, sigma_y, eta, pairs),
                           sigma_y, ddnm_eta=eta)
    if sigma_y == 0:  # The exact posterior's range part: A^+ y, deterministic.
      obs = ts.SING > 0
      np.testing.assert_array_equal(law_out[1][obs], 0.0)

  def test_ddnm_time_travel(self):
    seq = [i * 1000 // STEPS for i in range(STEPS)]
    level = lambda k: -1 if k < 0 else seq[k]
    pairs = [(level(k), level(j)) for k, j in ddnm.travel_schedule(STEPS, 3, 2)]
    self.run_law(ddnm, lambda s, ybar: ddnm_law(s, ybar, ts.SIGMA_Y, 0.85, pairs), ts.SIGMA_Y,
                 ddnm_travel_length=3, ddnm_travel_repeat=2)

  @parameterized.product(sigma_y=(0.0, ts.SIGMA_Y), eta=(1.0, 0.5))
  def test_pigdm(self, sigma_y, eta):
    pairs = ts.levels(STEPS)
    self.run_law(pigdm, lambda s, ybar: pigdm_law(s, s * ybar, sigma_y, eta, pairs), sigma_y,
                 pigdm_eta=eta)

  @parameterized.product(sigma_y=(0.0, ts.SIGMA_Y), hyper=((1.0, 0.1), (7.0, 0.6)))
  def test_diffpir(self, sigma_y, hyper):
    lam, zeta = hyper
    pairs = ts.levels(STEPS)
    self.run_law(diffpir, lambda s, ybar: diffpir_law(s, s * ybar, sigma_y, lam, zeta, pairs),
                 sigma_y, diffpir_lambda=lam, diffpir_zeta=zeta)


class ClosedFormTest(parameterized.TestCase):
  """Deterministic identities of single steps."""

  def setUp(self):
    super().setUp()
    self.op = make_op(6)
    self.rng = np.random.default_rng(7)
    self.x0 = self.rng.normal(size=(3,) + ts.X_SHAPE)
    self.key = jax.random.key(8)

  @parameterized.parameters(0.0, ts.SIGMA_Y)
  def test_pigdm_guided_x0_moves_toward_the_exact_posterior_mean(self, sigma_y):
    """For N(0, I) data ΠG's Gaussian approximation is exact and x0hat = a_t x_t, so the
    r_t^2-weighted step is x0hat_y = x0hat + alpha_bar_t (E[x0 | x_t, y] - x0hat)."""
    y = jnp.asarray(ts.measure(self.op, self.x0, sigma_y, self.rng))
    chain = common.prepare(self.op, y, self.key, steps=10, sigma_y=sigma_y)
    model = unit_gaussian_model(self.op)
    for t in (900, 500, 100, 0):
      x = jnp.asarray(self.rng.normal(size=(3,) + ts.X_SHAPE), jnp.float32)
      got, _, _ = pigdm.guided_x0(model, self.op, chain, x, t)
      a, b = coeffs(t)
      uty = ts.ybar_of(self.op, y) * ts.SING
      gain, k = posterior_mean_gain(ts.SING, uty, sigma_y, a, b)
      xbar = ts.spectral(self.op, x)
      want = a * xbar + a**2 * (gain * xbar + k - a * xbar)  # ΠG's score weighted by r_t^2.
      # x0 = (x_t - b eps) / a cancels all but alpha_bar_t of x_t (float32 eps / alpha_bar_t);
      # four chained dense maps of n terms (V^T, V, the vjp, V) on values up to |ybar|.
      scale = np.abs(want).max() + 1.0
      np.testing.assert_allclose(ts.spectral(self.op, got), want,
                                 atol=4 * ts.N_DIM * EPS32 * scale / ts.abar64(t),
                                 err_msg=f"t={t}")

  def test_noiseless_ddnm_ends_on_the_measurement(self):
    """H x0 = y: |H x - y| within float32 eps times the conditioning s_max / s_min."""
    y = jnp.asarray(ts.measure(self.op, self.x0, 0.0, self.rng))
    for kwargs in ({}, dict(ddnm_travel_length=2, ddnm_travel_repeat=2)):
      out = jax.jit(lambda y, k: ddnm.sample(ts.junk_model, self.op, y, k, steps=10, **kwargs))(
          y, self.key)
      hx = jax.vmap(lambda x: self.op.U(self.op.s * self.op.Vt(x)))(out)
      obs = ts.SING[ts.SING > 0]
      tol = ts.N_DIM * EPS32 * (obs.max() / obs.min()) * float(jnp.abs(y).max())
      np.testing.assert_allclose(hx, y, rtol=0, atol=tol)
      self.assertLess(tol, 1e-2)

  def test_dps_step_is_ddpm_minus_zeta_grad_norm(self):
    """One step from t to the clean level: x = x0hat - zeta grad ||y - H x0hat(x_t)||, with the
    exact network x0hat = a x_t, so grad = -a H^T r / ||r||, r = y - a H x_t."""
    y = jnp.asarray(ts.measure(self.op, self.x0, ts.SIGMA_Y, self.rng))
    t, zeta = 300, 0.7
    out = dps.sample(unit_gaussian_model(self.op), self.op, y, self.key, timesteps=[t],
                     sigma_y=ts.SIGMA_Y, dps_zeta=zeta)
    keys = [jax.random.fold_in(jax.random.fold_in(self.key, i), 0) for i in range(3)]
    x_t = np.stack([np.asarray(jax.random.normal(k, ts.X_SHAPE), np.float64) for k in keys])
    v, u, s = ts.np_op(self.op)
    a, _ = coeffs(t)
    xbar = x_t.reshape(3, -1) @ v
    r = np.asarray(y, np.float64) - (s[:ts.M_DIM] * a * xbar[:, :ts.M_DIM]) @ u.T
    grad_bar = np.zeros_like(xbar)
    grad_bar[:, :ts.M_DIM] = -a * s[:ts.M_DIM] * (r @ u) / np.linalg.norm(r, axis=1)[:, None]
    want = a * xbar - zeta * grad_bar
    np.testing.assert_allclose(ts.spectral(self.op, out), want, atol=1e-4)

  @parameterized.parameters(('sr2', 0.05), ('deblur_gauss', 0.3), ('inp', 0.01), ('color', 1.0))
  def test_diffpir_proximal_is_the_dense_least_squares_solution(self, deg, rho):
    """V proximal(s, U^T y, V^T x0, rho) = argmin ||y - H z||^2 + rho ||z - x0||^2, solved
    densely in float64 from H applied to the identity."""
    op = operators.make(deg, (8, 8, 3))
    n = 8 * 8 * 3
    eye = jnp.eye(n, dtype=jnp.float32).reshape((n, 8, 8, 3))
    h = np.asarray(jax.vmap(op.H)(eye), np.float64).reshape(n, -1).T  # (m, n)
    x0 = self.rng.normal(size=(n,))
    y = h @ self.rng.normal(size=(n,)) + 0.1 * self.rng.normal(size=(h.shape[0],))
    stacked = np.concatenate([h, math.sqrt(rho) * np.eye(n)])
    want = np.linalg.lstsq(stacked, np.concatenate([y, math.sqrt(rho) * x0]), rcond=None)[0]
    s = op.singulars()
    uty = s * jnp.where(s > 0, op.Ut(jnp.asarray(y.reshape(op.y_shape), jnp.float32))
                        / jnp.where(s > 0, s, 1.0), 0.0)
    got = op.V(diffpir.proximal(s, uty, op.Vt(jnp.asarray(x0.reshape(8, 8, 3), jnp.float32)),
                                rho))
    # Conditioning of H^T H + rho I with the operator's zeroed singular values: (s_max^2+rho)/rho.
    cond = (float(s.max())**2 + rho) / rho
    scale = np.abs(want).max()
    np.testing.assert_allclose(np.asarray(got, np.float64).reshape(-1), want,
                               atol=16 * EPS32 * cond * scale)

  @parameterized.parameters('dps', 'diffpir')
  def test_data_residual_decreases(self, name):
    """With data guidance the restoration fits y far better than a prior sample, and the
    network's predictions fit it better at the end of the chain than at the start."""
    op = operators.make('sr2', (8, 8, 1))
    rng = np.random.default_rng(9)
    x_true = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
    y = jax.vmap(op.H)(jnp.asarray(x_true))
    model = lambda x, t: x * jnp.sqrt(1.0 - ts.abar_table32()[t])[:, None, None, None]
    on, off = dict(dps=({'dps_zeta': 1.0}, {'dps_zeta': 0.0}),
                   diffpir=({}, {'diffpir_lambda': 1e12}))[name]
    module = solvers.get(name)
    run = lambda **kw: module.sample(model, op, y, self.key, steps=50, return_x0_preds=True,
                                     **kw)
    residual = lambda x: np.linalg.norm(np.asarray(y - jax.vmap(op.H)(x)).reshape(4, -1),
                                        axis=1)
    out, preds = run(**on)  # DPS: zeta = 1 at 50 steps (its paper's 0.3 is for 1000 steps).
    prior_out, _ = run(**off)
    np.testing.assert_array_less(residual(out), 0.2 * residual(prior_out))
    np.testing.assert_array_less(residual(preds[-1]), residual(preds[0]))


ALL = tuple(solvers.METHODS)


class InterfaceTest(parameterized.TestCase):
  """Keys, jit, batching and the registry, for every method."""

  def setUp(self):
    super().setUp()
    chex.clear_trace_counter()
    self.op = make_op(10)
    rng = np.random.default_rng(11)
    self.y = jnp.asarray(ts.measure(self.op, rng.normal(size=(3,) + ts.X_SHAPE), ts.SIGMA_Y,
                                    rng))
    self.key = jax.random.key(12)
    self.kw = dict(steps=5, sigma_y=ts.SIGMA_Y)

  def jitted(self, name, model=nonlinear_model, **kw):
    module = solvers.get(name)
    return jax.jit(lambda op, y, k: module.sample(model, op, y, k, **self.kw, **kw))

  @parameterized.parameters(*ALL)
  def test_jit_traces_once_per_shape_and_the_loop_once(self, name):
    calls = []

    def counting_model(x, t):
      calls.append(1)
      return nonlinear_model(x, t)

    module = solvers.get(name)
    fn = chex.assert_max_traces(
        lambda op, y, k: module.sample(counting_model, op, y, k, steps=20, sigma_y=ts.SIGMA_Y),
        n=1)
    run = jax.jit(fn)
    run(self.op, self.y, self.key)
    run(self.op, self.y + 0.1, jax.random.key(1))
    run(make_op(13), self.y, self.key)  # Another operator of the same shapes.
    self.assertLen(calls, 1)  # One trace of the network: the 20 steps are one loop body.

  @parameterized.parameters(*ALL)
  def test_batch_equals_one_by_one_with_ddrm_keys(self, name):
    run = self.jitted(name)
    out = run(self.op, self.y, self.key)
    self.assertTrue(np.all(np.isfinite(out)))
    for i in range(3):
      key_i = jax.random.fold_in(self.key, i)
      one = run(self.op, self.y[i:i + 1], key_i[None])
      np.testing.assert_allclose(out[i:i + 1], one, rtol=1e-5, atol=1e-5)
    raw = run(self.op, self.y, jax.random.key_data(self.key))
    np.testing.assert_array_equal(out, raw)
    other = run(self.op, self.y, jax.random.key(13))
    self.assertGreater(float(jnp.abs(out - other).max()), 1e-3)

  @parameterized.parameters(*ALL)
  def test_batched_operator_equals_one_by_one(self, name):
    ops = [make_op(20 + i) for i in range(3)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ops)
    keys = jax.random.split(self.key, 3)
    out = self.jitted(name, batched_op=True)(stacked, self.y, keys)
    run = self.jitted(name)
    for i in range(3):
      np.testing.assert_allclose(out[i:i + 1], run(ops[i], self.y[i:i + 1], keys[i:i + 1]),
                                 rtol=1e-5, atol=1e-5)

  @parameterized.parameters(*ALL)
  def test_classifier_guidance_changes_the_chain(self, name):
    guide = lambda x, t: 0.3 * jnp.sin(3.0 * x)
    a = self.jitted(name, guidance_fn=guide)(self.op, self.y, self.key)
    b = self.jitted(name)(self.op, self.y, self.key)
    self.assertTrue(np.all(np.isfinite(a)))
    self.assertGreater(float(jnp.abs(a - b).max()), 1e-3)

  @parameterized.parameters('ddnm', 'diffpir')
  def test_guidance_is_eps_minus_sqrt_one_minus_abar_grad(self, name):
    guide = lambda x, t: 0.3 * jnp.sin(3.0 * x)
    table = ts.abar_table32()
    by_hand = lambda x, t: nonlinear_model(x, t) - jnp.sqrt(1.0 - table[t])[:, None, None,
                                                                          None] * guide(x, t)
    a = self.jitted(name, guidance_fn=guide)(self.op, self.y, self.key)
    b = self.jitted(name, model=by_hand)(self.op, self.y, self.key)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

  def test_registry_and_hyperparameters(self):
    self.assertEqual(set(solvers.METHODS), {'ddnm', 'pigdm', 'dps', 'diffpir'})
    with self.assertRaisesRegex(ValueError, "unknown method 'ddrmx'.*ddnm"):
      solvers.get('ddrmx')
    names = [h[0] for m in solvers.METHODS.values() for h in m.HYPERPARAMETERS]
    self.assertLen(set(names), len(names))
    for name, module in solvers.METHODS.items():
      params = inspect.signature(module.sample).parameters
      self.assertEqual(params['steps'].default, module.DEFAULT_STEPS, name)
      self.assertEqual(params['sigma_y'].default, 0.0)
      for hyper, default, help_text in module.HYPERPARAMETERS:
        self.assertTrue(hyper.startswith(name + '_'), hyper)
        self.assertEqual(params[hyper].default, default, hyper)
        self.assertIsInstance(help_text, str)

  @parameterized.named_parameters(
      ('ddnm_eta', 'ddnm', dict(ddnm_eta=1.5), 'ddnm_eta'),
      ('ddnm_length', 'ddnm', dict(ddnm_travel_length=0), 'ddnm_travel_length'),
      ('ddnm_length_long', 'ddnm', dict(ddnm_travel_length=5, ddnm_travel_repeat=2),
       'ddnm_travel_length'),
      ('ddnm_repeat', 'ddnm', dict(ddnm_travel_repeat=1.5), 'ddnm_travel_repeat'),
      ('pigdm_eta', 'pigdm', dict(pigdm_eta=-0.1), 'pigdm_eta'),
      ('dps_zeta', 'dps', dict(dps_zeta=float('nan')), 'dps_zeta'),
      ('diffpir_lambda', 'diffpir', dict(diffpir_lambda=0.0), 'diffpir_lambda'),
      ('diffpir_zeta', 'diffpir', dict(diffpir_zeta=2.0), 'diffpir_zeta'),
      ('sigma_y', 'dps', dict(sigma_y=-1.0), 'sigma_y'),
      ('steps', 'pigdm', dict(steps=0), 'steps'),
  )
  def test_bad_arguments(self, name, kwargs, message):
    kw = {**self.kw, **kwargs}
    with self.assertRaisesRegex(ValueError, message):
      solvers.get(name).sample(ts.junk_model, self.op, self.y, self.key, **kw)

  @parameterized.parameters(*ALL)
  def test_bad_measurement_shape(self, name):
    with self.assertRaisesRegex(ValueError, 'y must have shape'):
      solvers.get(name).sample(ts.junk_model, self.op, jnp.zeros((2, ts.M_DIM + 1)), self.key)


if __name__ == '__main__':
  absltest.main()
