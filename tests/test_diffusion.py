"""Tests of ddrm_jax.diffusion: the schedule and the VP <-> VE views of Appendix B."""

from absl.testing import absltest
from absl.testing import parameterized
import jax.numpy as jnp
import numpy as np

from ddrm_jax import diffusion


class ScheduleTest(parameterized.TestCase):

  def test_linear_betas(self):
    betas = diffusion.linear_betas()
    self.assertEqual(betas.dtype, np.float32)
    self.assertEqual(betas.shape, (1000,))
    step = (0.02 - 1e-4) / 999  # Built in float64 by hand, then rounded once to float32.
    want = np.array([1e-4 + i * step for i in range(1000)], np.float64).astype(np.float32)
    np.testing.assert_array_equal(betas, want)

  def test_alpha_bars_against_log_sum(self):
    betas = diffusion.linear_betas()
    abar = diffusion.alpha_bars(betas)
    self.assertEqual(abar.dtype, np.float32)
    want = np.exp(np.cumsum(np.log1p(-betas.astype(np.float64))))
    np.testing.assert_allclose(abar, want, rtol=1e-6)
    self.assertTrue(np.all(np.diff(abar) < 0))

  def test_sigma_tables(self):
    abar = diffusion.alpha_bars(diffusion.linear_betas())
    a = np.concatenate([[1.0], abar.astype(np.float64)])
    sigma = diffusion.ve_sigmas(abar)
    self.assertEqual(sigma[0], 0.0)  # sigma(-1) = 0: the clean level.
    # Eq. 15-16: alpha_bar = 1 / (1 + sigma^2).
    np.testing.assert_allclose(1.0 / (1.0 + sigma.astype(np.float64)**2), a, rtol=1e-6)
    np.testing.assert_allclose(diffusion.sqrt_alpha_bars(abar)**2, a, rtol=1e-6)
    np.testing.assert_allclose(diffusion.sqrt_one_minus_alpha_bars(abar)**2, 1 - a, rtol=1e-5,
                               atol=1e-9)

  def test_alpha_bar_at(self):
    abar = diffusion.alpha_bars(diffusion.linear_betas())
    got = diffusion.alpha_bar_at(abar, jnp.array([-1, 0, 999]))
    np.testing.assert_allclose(got, [1.0, abar[0], abar[999]], rtol=1e-7)

  @parameterized.parameters(1, 2, 4, 5, 8, 10, 20, 25, 40, 50, 100, 125, 200, 250, 500, 1000)
  def test_timesteps_match_uniform_skip_for_divisors(self, steps):
    np.testing.assert_array_equal(diffusion.timestep_sequence(steps),
                                  list(range(0, 1000, 1000 // steps)))

  @parameterized.parameters(3, 7, 30, 600, 999)
  def test_timesteps_other_counts(self, steps):
    seq = diffusion.timestep_sequence(steps)
    self.assertLen(seq, steps)  # Exactly `steps` network calls (REFERENCE_NOTES defect 11).
    self.assertEqual(seq[0], 0)
    self.assertTrue(np.all(np.diff(seq) > 0))
    self.assertLess(seq[-1], 1000)
    np.testing.assert_array_equal(seq, [(i * 1000) // steps for i in range(steps)])

  @parameterized.parameters(0, -3, 1001)
  def test_bad_steps(self, steps):
    with self.assertRaisesRegex(ValueError, 'steps'):
      diffusion.timestep_sequence(steps)

  @parameterized.parameters([[0.1, 1.0]], [[0.0, 0.1]], [[[0.1]]], [[]])
  def test_bad_betas(self, betas):
    with self.assertRaisesRegex(ValueError, 'betas'):
      diffusion.alpha_bars(np.asarray(betas, np.float64))


class ConversionTest(absltest.TestCase):

  def test_vp_ve_views_of_one_draw(self):
    """x_VP = sqrt(a) x0 + sqrt(1-a) eps and x_VE = x0 + sigma eps are one point (App. B)."""
    rng = np.random.default_rng(0)
    x0, eps = rng.normal(size=(2, 5, 4, 4, 3))
    abar = diffusion.alpha_bars(diffusion.linear_betas())
    for t in (0, 1, 400, 999):
      a = float(abar[t])
      sigma = np.sqrt(1 - a) / np.sqrt(a)
      x_vp = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
      x_ve = x0 + sigma * eps
      np.testing.assert_allclose(diffusion.ve_to_vp(x_ve, a), x_vp, rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(diffusion.vp_to_ve(x_vp, a), x_ve, rtol=1e-5, atol=1e-4)
      np.testing.assert_allclose(diffusion.x0_from_eps(x_vp, eps, a), x0, rtol=1e-4,
                                 atol=1e-4)
      np.testing.assert_allclose(diffusion.eps_from_x0(x_vp, x0, a), eps, rtol=1e-4, atol=1e-4)


if __name__ == '__main__':
  absltest.main()
