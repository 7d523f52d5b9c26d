"""Tests of ddrm_jax.metrics against float64 numpy computations and Pillow."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image

from ddrm_jax import metrics
from ddrm_jax import operators
from ddrm_jax import problems


def _keys(s, a=-0.5):
  """Keys' cubic convolution kernel (1981)."""
  s = abs(s)
  if s <= 1:
    return (a + 2) * s**3 - (a + 3) * s**2 + 1
  if s < 2:
    return a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
  return 0.0


def _bicubic_matrix(n_in, n_out):
  """(n_out, n_in) float64 interpolation matrix: half-pixel centres, border taps renormalised."""
  m = np.zeros((n_out, n_in))
  for k in range(n_out):
    c = (k + 0.5) * n_in / n_out - 0.5
    base = int(np.floor(c))
    for j in range(base - 1, base + 3):
      if 0 <= j < n_in:
        m[k, j] = _keys(c - j)
    m[k] /= m[k].sum()
  return m


def _ssim_numpy(a, b, size=11, sigma=1.5, k1=0.01, k2=0.03):
  """SSIM (Wang et al. 2004) in float64 with a separable Gaussian window, 'valid' borders."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  x = np.arange(size) - (size - 1) / 2
  g = np.exp(-x**2 / (2 * sigma**2))
  g /= g.sum()

  def filt(z):
    h = z.shape[0] - size + 1
    w = z.shape[1] - size + 1
    rows = sum(g[i] * z[i:i + h] for i in range(size))
    return sum(g[j] * rows[:, j:j + w] for j in range(size))

  mu_a, mu_b = filt(a), filt(b)
  var_a = filt(a * a) - mu_a**2
  var_b = filt(b * b) - mu_b**2
  cov = filt(a * b) - mu_a * mu_b
  c1, c2 = k1**2, k2**2
  m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
  return m.mean()


class MetricsTest(parameterized.TestCase):

  def test_psnr_matches_formula(self):
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (2, 16, 12, 3))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    got = np.asarray(metrics.psnr(a.astype(np.float32), b.astype(np.float32)))
    expected = [-10 * np.log10(np.mean((a[i] - b[i])**2)) for i in range(2)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics.psnr(a[0], b[0])), expected[0], rtol=1e-5)

  def test_aligned_psnr_finds_a_sub_pixel_shift(self):
    # A band-limited random image (nothing at the Nyquist frequencies, so a Fourier shift is
    # exactly invertible) translated by known sub-pixel amounts in float64 numpy: the best
    # shift undoes each to within the fine grid's half step, the PSNR there is that of the
    # image shifted back by it, and no translation scores it at least as well as none.
    rng = np.random.default_rng(2)
    size = 32
    f = np.fft.fftfreq(size)
    low = np.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2 * 0.12 ** 2))
    low[size // 2, :] = low[:, size // 2] = 0.0
    spectrum = np.fft.fft2(rng.normal(size=(size, size, 3)), axes=(0, 1)) * low[..., None]
    image = np.real(np.fft.ifft2(spectrum, axes=(0, 1)))
    image = 0.5 + 0.2 * image / image.std()

    def shifted(d):
      ramp = np.exp(-2j * np.pi * (f[:, None] * d[0] + f[None, :] * d[1]))
      return np.real(np.fft.ifft2(np.fft.fft2(image, axes=(0, 1)) * ramp[..., None],
                                  axes=(0, 1)))

    deltas = np.array([[0.373, -0.618], [0.0, 0.0], [-0.842, 0.127]])
    moved = np.stack([shifted(d) for d in deltas]).astype(np.float32)
    reference = np.broadcast_to(image, moved.shape).astype(np.float32)
    value, shift = metrics.aligned_psnr(moved, reference)
    np.testing.assert_array_less(np.abs(np.asarray(shift) + deltas), 0.005 + 1e-3)
    for i in (0, 2):
      # moved[i] at the shift found: the image off by the grid's residual (< 0.006 px, so
      # 60-80 dB; float32 rounding of the image, ~1e-7, would show only above 120 dB).
      back = shifted(np.asarray(shift[i], np.float64) + deltas[i])
      expected = -10 * np.log10(np.mean((back - image) ** 2))
      self.assertLess(expected, 100.0)
      self.assertAlmostEqual(float(value[i]), expected, delta=0.05)
    self.assertGreater(float(value[1]), 100.0)  # Unshifted: found at 0, rounding only.
    plain = np.asarray(metrics.psnr(moved, reference))
    self.assertTrue(np.all(np.asarray(value)[[0, 2]] > plain[[0, 2]] + 10.0))
    one_value, one_shift = metrics.aligned_psnr(moved[0], reference[0])
    self.assertAlmostEqual(float(one_value), float(value[0]), places=4)
    np.testing.assert_allclose(np.asarray(one_shift), np.asarray(shift[0]), atol=1e-6)

  def test_aligned_psnr_refuses_bad_input(self):
    a = np.zeros((8, 8, 3), np.float32)
    with self.assertRaisesRegex(ValueError, r'one shape, got \(8, 8, 3\) and \(8, 9, 3\)'):
      metrics.aligned_psnr(a, np.zeros((8, 9, 3), np.float32))
    with self.assertRaisesRegex(ValueError, '0 < fine < step <= max_shift'):
      metrics.aligned_psnr(a, a, step=0.01, fine=0.1)

  def test_ssim_matches_numpy(self):
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, (24, 20, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    np.testing.assert_allclose(float(metrics.ssim(a, b)), _ssim_numpy(a, b), rtol=1e-4)
    np.testing.assert_allclose(float(metrics.ssim(a, a)), 1.0, rtol=1e-6)

  @parameterized.parameters(((4, 5), (16, 20)), ((8, 8), (16, 16)), ((3, 7), (12, 14)))
  def test_bicubic_upsample_keys_a_half(self, small, big):
    rng = np.random.default_rng(2)
    y = rng.uniform(-1, 1, small + (3,))
    mh = _bicubic_matrix(small[0], big[0])
    mw = _bicubic_matrix(small[1], big[1])
    expected = np.einsum("ki,ijc,lj->klc", mh, y, mw)
    got = np.asarray(metrics.bicubic_upsample(y.astype(np.float32), big))
    np.testing.assert_allclose(got, expected, atol=2e-6)
    # Pillow's BICUBIC (a = -0.5) agrees when upsampling.
    for c in range(3):
      pil = np.asarray(Image.fromarray(y[..., c].astype(np.float32))
                       .resize(big[::-1], Image.Resampling.BICUBIC))
      np.testing.assert_allclose(got[..., c], pil, atol=2e-6)

  def test_keys_kernel_is_not_a_three_quarters(self):
    # The a = -0.75 kernel (PyTorch/OpenCV) gives visibly different values: the test above can fail.
    y = np.random.default_rng(3).uniform(-1, 1, (4, 4, 1))
    m75 = np.array([[_keys(((k + 0.5) / 4 - 0.5) - j, a=-0.75) for j in range(4)] for k in range(16)])
    m75 /= m75.sum(1, keepdims=True)
    other = np.einsum("ki,ijc,lj->klc", m75, y, m75)
    got = np.asarray(metrics.bicubic_upsample(y.astype(np.float32), (16, 16)))
    self.assertGreater(np.abs(got - other).max(), 1e-2)

  def test_baseline_super_resolution_is_bicubic_of_y(self):
    op = operators.make('sr2', (8, 12, 3))
    y = np.random.default_rng(4).uniform(-1, 1, (4, 6, 3))
    expected = np.einsum('ki,ijc,lj->klc', _bicubic_matrix(4, 8), y, _bicubic_matrix(6, 12))
    got = np.asarray(metrics.baseline(problems.get('sr2').baseline, op, y.astype(np.float32)))
    np.testing.assert_allclose(got, expected, atol=2e-6)

  def test_baseline_blur_is_the_blurry_image(self):
    op = operators.make('deblur_uni', (12, 12, 3))
    y = np.random.default_rng(5).uniform(-1, 1, (12, 12, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(metrics.baseline(problems.get('deblur_uni').baseline, op, y)), y)

  @parameterized.parameters('color', 'cs2', 'inp')
  def test_baseline_otherwise_is_the_pseudo_inverse(self, deg):
    shape = (4, 4, 3) if deg != 'cs2' else (4, 4, 1)
    op = operators.make(deg, shape)
    n = int(np.prod(shape))
    dense = np.stack([np.asarray(op.H(e.reshape(shape))).reshape(-1)
                      for e in np.eye(n, dtype=np.float32)], axis=1).astype(np.float64)
    y = np.asarray(op.H(np.random.default_rng(6).uniform(-1, 1, shape).astype(np.float32)))
    y = y + np.random.default_rng(7).normal(0, 0.1, y.shape).astype(np.float32) * (y != 0)
    expected = (np.linalg.pinv(dense) @ y.reshape(-1).astype(np.float64)).reshape(shape)
    got = np.asarray(metrics.baseline(problems.get(deg).baseline, op, y))
    np.testing.assert_allclose(got, expected, atol=1e-5)

  def test_kinds(self):
    kind = lambda deg: problems.get(deg).baseline
    self.assertEqual(kind("sr4"), "bicubic")
    self.assertEqual(kind("sr_bicubic8"), "bicubic")
    self.assertNotEqual(kind("deno"), "bicubic")
    self.assertEqual(kind("deblur_aniso"), "measurement")
    self.assertEqual(kind("blur"), "measurement")
    self.assertEqual(kind("blur2d"), "measurement")
    self.assertEqual(kind("blind_blur"), "measurement")
    self.assertEqual(kind("inp"), "pinv")

  def test_unknown_baseline(self):
    with self.assertRaisesRegex(ValueError, "unknown baseline 'x'"):
      metrics.baseline("x", operators.make("deno", (4, 4, 3)), np.zeros((4, 4, 3), np.float32))


if __name__ == "__main__":
  absltest.main()
