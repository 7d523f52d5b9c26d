"""Tests of ddrm_jax/tiling.py: the tile grid, the blend, and seams on a real restoration."""

import math

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

import ddrm_jax
from ddrm_jax import benchmarks
from ddrm_jax import bundled
from ddrm_jax import operators
from ddrm_jax import sampler
from ddrm_jax import tiling


def pointwise(x, t, *labels):
  """A tile-invariant stand-in network: each output pixel depends on its input pixel only."""
  scale = (t.astype(jnp.float32) + 1.0)[:, None, None, None]
  if labels:
    scale = scale * (labels[0].astype(jnp.float32) + 2.0)[:, None, None, None]
  return jnp.sin(x) * scale


def tile_mean(x, t):
  """A stand-in network that sees the whole tile: x minus its mean, plus a 2C learned sigma."""
  eps = x - x.mean(axis=(1, 2), keepdims=True) + 0.01 * t[:, None, None, None]
  return jnp.concatenate([eps, jnp.cos(x)], axis=-1)


def blend_reference(fn, x, t, tile, overlap):
  """The blend computed tile by tile in float64 numpy (the module's definition)."""
  b, h, w, _ = x.shape
  starts_h, starts_w = tile_starts_reference(h, tile, overlap), tile_starts_reference(w, tile,
                                                                                       overlap)
  win = window_reference(tile, overlap)
  acc, norm = None, np.zeros((h, w))
  for r in starts_h:
    for c in starts_w:
      out = np.asarray(fn(x[:, r:r + tile, c:c + tile], t), np.float64)
      if acc is None:
        acc = np.zeros((b, h, w, out.shape[-1]))
      acc[:, r:r + tile, c:c + tile] += out * win[None, :, :, None]
      norm[r:r + tile, c:c + tile] += win
  return acc / norm[None, :, :, None], len(starts_h) * len(starts_w)


def tile_starts_reference(size, tile, overlap):
  starts = list(range(0, size - tile + 1, tile - overlap))
  if starts[-1] != size - tile:
    starts.append(size - tile)
  return starts


def window_reference(tile, overlap):
  ramp = [math.sin(math.pi / 2 * (i + 1) / (overlap + 1))**2 for i in range(overlap)]
  w1 = np.array([min(ramp[i] if i < overlap else 1.0,
                     ramp[tile - 1 - i] if tile - 1 - i < overlap else 1.0) for i in range(tile)])
  return np.outer(w1, w1)


class GridTest(parameterized.TestCase):

  @parameterized.parameters((64, 64, 16), (65, 64, 16), (97, 64, 16), (130, 64, 0),
                            (131, 64, 63), (200, 33, 7), (5, 1, 0), (9, 4, 3))
  def test_starts_cover_the_axis_with_the_overlap(self, size, tile, overlap):
    starts = tiling.tile_starts(size, tile, overlap)
    self.assertEqual(list(starts), tile_starts_reference(size, tile, overlap))
    self.assertEqual(starts[0], 0)
    self.assertEqual(starts[-1], size - tile)  # The last tile is flush with the border.
    steps = np.diff(starts)
    self.assertTrue(np.all(steps >= 1))
    self.assertTrue(np.all(steps <= tile - overlap))  # Neighbours share >= overlap pixels.
    covered = np.zeros(size, int)
    for s in starts:
      covered[s:s + tile] += 1
    self.assertTrue(np.all(covered >= 1))
    self.assertLen(starts, 1 + math.ceil((size - tile) / (tile - overlap)))

  @parameterized.parameters((64, 0), (64, 16), (33, 7), (8, 7), (5, 4), (1, 0), (10, 6))
  def test_window_is_smooth_positive_and_a_partition_of_unity(self, tile, overlap):
    w = tiling.window(tile, overlap)
    self.assertEqual(w.shape, (tile,))
    self.assertTrue(np.all(w > 0))
    self.assertTrue(np.all(w <= 1))
    np.testing.assert_allclose(w, w[::-1], atol=1e-15)
    np.testing.assert_allclose(np.outer(w, w), window_reference(tile, overlap), atol=1e-15)
    if 2 * overlap <= tile:
      # Two ramps overlapping by exactly `overlap` pixels add up to 1.
      np.testing.assert_allclose(w[:overlap] + w[tile - overlap:], 1.0, atol=1e-12)
      self.assertTrue(np.all(w[overlap:tile - overlap] == 1.0))

  @parameterized.parameters(((97, 130), 64, 16), ((64, 65), 64, 0), ((71, 200), 33, 32),
                            ((64, 64), 64, 16))
  def test_weights_are_the_summed_windows(self, shape, tile, overlap):
    sh, sw = tiling.tile_grid(shape, tile, overlap)
    total = np.zeros(shape)
    win = window_reference(tile, overlap)
    for r in sh:
      for c in sw:
        total[r:r + tile, c:c + tile] += win
    np.testing.assert_allclose(tiling.weights(shape, tile, overlap), total, rtol=1e-13)
    self.assertTrue(np.all(total > 0))
    self.assertEqual(tiling.num_tiles(shape, tile, overlap), len(sh) * len(sw))

  @parameterized.named_parameters(
      ('negative', 64, -1, r'tile overlap must be in \[0, 64\) pixels for 64x64 tiles, got -1'),
      ('equal', 64, 64, r'tile overlap must be in \[0, 64\) pixels for 64x64 tiles, got 64'),
      ('larger', 16, 40, r'in \[0, 16\) pixels .* got 40'),
      ('float', 64, 1.5, r'tile overlap must be an int number of pixels, got 1.5'),
      ('tile', 0, 0, r'tile must be an int >= 1 \(the square tile\'s side\), got 0'),
  )
  def test_bad_overlap_is_one_line(self, tile, overlap, pattern):
    for call in (lambda: tiling.tiled(pointwise, tile, overlap=overlap),
                 lambda: tiling.tile_starts(100, tile, overlap)):
      with self.assertRaisesRegex(ValueError, pattern) as cm:
        call()
      self.assertNotIn('\n', str(cm.exception))

  def test_too_small_image_says_use_resize(self):
    whole = tiling.tiled(pointwise, 64)
    for shape in ((1, 63, 100, 3), (1, 100, 40, 3)):
      with self.assertRaisesRegex(ValueError, r'smaller than the network\'s 64x64 tiles; '
                                  r"resize it \(the resize setting: 'resize' or "
                                  r"'center_crop'\)") as cm:
        jax.jit(whole)(jnp.zeros(shape), jnp.zeros(1, jnp.int32))
      self.assertNotIn('\n', str(cm.exception))
      self.assertNotIn('--', str(cm.exception))  # Library messages name settings, not flags.
    with self.assertRaisesRegex(ValueError, 'tiles_per_call must be an int >= 1, got 0'):
      tiling.tiled(pointwise, 64, tiles_per_call=0)


class ArgumentTest(parameterized.TestCase):
  """Bad arguments of `tiled`, the function it returns and `seam_ratio`: one-line ValueErrors
  naming the argument, raised before anything reaches jax."""

  def _raises(self, pattern, call):
    with self.assertRaisesRegex(ValueError, pattern) as cm:
      call()
    self.assertNotIn('\n', str(cm.exception))
    self.assertNotIn('--', str(cm.exception))

  @parameterized.parameters(((16, 16),), ([16],), (16.0,), ('16',), (None,))
  def test_a_tile_that_is_not_an_int(self, tile):
    self._raises(r'tile must be an int >= 1 \(the square tile\'s side\), got ',
                 lambda: tiling.tiled(pointwise, tile))

  @parameterized.parameters(((2, 16, 16, 3),), ((2, 40, 33, 3),))  # One tile, and 3 x 3 tiles.
  def test_per_image_arguments_must_have_the_batch_size(self, shape):
    whole = tiling.tiled(pointwise, 16)
    x, t = jnp.zeros(shape), jnp.zeros(2, jnp.int32)
    for labels in (jnp.zeros(3, jnp.int32), jnp.zeros(1, jnp.int32), jnp.int32(0)):
      self._raises(r'per-image argument 1 \(after x and t\) must have x\'s batch size 2 as its '
                   r'leading axis, got shape', lambda: whole(x, t, labels))
      self._raises(r'per-image argument 1', lambda: jax.jit(whole)(x, t, labels))

  @parameterized.parameters(((2, 16, 16, 3),), ((2, 40, 33, 3),))
  def test_t_must_be_a_scalar_or_one_per_image(self, shape):
    whole = tiling.tiled(pointwise, 16)
    x = jnp.zeros(shape)
    for t in (jnp.zeros(3, jnp.int32), jnp.zeros((2, 1), jnp.int32), jnp.zeros(1, jnp.int32)):
      self._raises(r't must be a scalar or have shape \(2,\) \(one per image of x\), got shape',
                   lambda: whole(x, t))
    whole(x, jnp.zeros(2, jnp.int32))  # One per image,
    whole(x, 5)  # or one for all.

  def test_x_must_be_a_batch(self):
    self._raises(r'x must be a batch of images \(B, H, W, C\), got shape \(16, 16, 3\)',
                 lambda: tiling.tiled(pointwise, 16)(jnp.zeros((16, 16, 3)), 0))

  def test_seam_ratio_takes_one_image(self):
    batch = np.zeros((4, 96, 80, 3))
    self._raises(r'x must be one image \(H, W, C\), got shape \(4, 96, 80, 3\); score each '
                 r'image of a batch on its own', lambda: tiling.seam_ratio(batch, 64))
    self._raises(r'x must be one image', lambda: tiling.seam_ratio(np.zeros((96, 80)), 64))
    self._raises(r'tile must be an int', lambda: tiling.seam_ratio(np.zeros((96, 80, 3)), (64, 64)))


class BlendTest(parameterized.TestCase):

  def test_one_tile_is_the_network_exactly(self):
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 2))
    t = jnp.array([5, 900, 0], jnp.int32)
    whole = jax.jit(tiling.tiled(tile_mean, 16, overlap=4, tiles_per_call=1))
    np.testing.assert_array_equal(whole(x, t), jax.jit(tile_mean)(x, t))

  @parameterized.parameters(((2, 16, 16), 4, None), ((2, 17, 30), 4, None), ((1, 40, 23), 0, 3),
                            ((3, 31, 16), 15, 4), ((2, 50, 50), 7, 1), ((1, 16, 100), 8, 100))
  def test_a_pointwise_network_is_reproduced_at_any_size(self, shape, overlap, per_call):
    x = jax.random.normal(jax.random.key(1), shape + (3,))
    t = jnp.arange(shape[0], dtype=jnp.int32) * 7
    labels = jnp.arange(shape[0], dtype=jnp.int32)[::-1]
    whole = jax.jit(tiling.tiled(pointwise, 16, overlap=overlap, tiles_per_call=per_call))
    # Each image's time step and label go with each of its tiles.
    np.testing.assert_allclose(whole(x, t, labels), pointwise(x, t, labels), rtol=1e-6,
                               atol=1e-6)

  @parameterized.parameters((None,), (1,), (4,), (5,), (1000,))
  def test_blend_matches_the_tile_by_tile_reference(self, per_call):
    x = np.asarray(jax.random.normal(jax.random.key(2), (2, 37, 29, 3)))
    t = jnp.array([3, 700], jnp.int32)
    whole = jax.jit(tiling.tiled(tile_mean, 16, overlap=5, tiles_per_call=per_call))
    got = np.asarray(whole(jnp.asarray(x), t))
    want, n = blend_reference(tile_mean, x, t, 16, 5)
    self.assertEqual(n, 9)  # Rows start at 0, 11, 21, columns at 0, 11, 13.
    self.assertEqual(got.shape, (2, 37, 29, 6))  # Learned-sigma outputs: 2C channels.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  def test_calls_hold_at_most_tiles_per_call_tiles(self):
    sizes = []

    def net(x, t):
      sizes.append(x.shape[0])
      return x

    x = jnp.zeros((2, 40, 40, 1))
    jax.jit(tiling.tiled(net, 16, overlap=4, tiles_per_call=5))(x, jnp.zeros(2, jnp.int32))
    # 3 x 3 tiles per image, 18 in all: 4 calls of 5 (two of them padding), never more than 5.
    self.assertEqual(set(sizes), {5})

  def test_traced_once_per_shape(self):
    traces = []
    whole = tiling.tiled(pointwise, 16, overlap=4)

    @jax.jit
    def f(x, t):
      traces.append(x.shape)
      return whole(x, t)

    t = jnp.zeros(1, jnp.int32)
    for shape in ((1, 40, 33, 3), (1, 40, 33, 3), (1, 33, 40, 3), (1, 40, 33, 3)):
      f(jnp.ones(shape), t)
    self.assertEqual(traces, [(1, 40, 33, 3), (1, 33, 40, 3)])

  def test_in_the_sampler_one_tile_is_plain_ddrm(self):
    op = operators.make('sr2', (16, 16, 3))
    y = jax.random.uniform(jax.random.key(3), (2,) + tuple(op.y_shape), minval=-1, maxval=1)
    net = lambda x, t: 0.5 * tile_mean(x, t)
    run = lambda m: jax.jit(lambda y: sampler.sample(m, op, y, jax.random.key(4), steps=3))(y)
    np.testing.assert_array_equal(run(tiling.tiled(net, 16)), run(net))


class BenchmarkRowsTest(absltest.TestCase):

  def test_rows_and_the_memory_bound(self):
    w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 256)), jnp.float32)
    net = lambda p, x, t: jnp.tanh(x @ w) @ w.T * p  # A wide hidden layer: memory per tile.
    rows = benchmarks.tiling_rows(net, jnp.float32(0.1), 16, [(40, 33)], (None, 2), deg='deno',
                                  steps=1, repeats=1)
    self.assertEqual([(r['image'], r['tiles'], r['tiles_per_call']) for r in rows],
                     [('40x33', 9, 9), ('40x33', 9, 2)])
    for r in rows:
      for k in ('step_ms', 'tile_call_ms', 'all_tiles_call_ms', 'step_vs_tiles',
                'step_vs_batched'):
        self.assertGreater(r[k], 0, k)
    self.assertLess(rows[1]['temp_mib'], rows[0]['temp_mib'])


class SeamTest(absltest.TestCase):

  def test_statistic_is_one_without_seams_and_large_with_them(self):
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(96, 80, 3))
    self.assertAlmostEqual(tiling.seam_ratio(noise, 64, 16), 1.0, delta=0.1)
    steps = noise.copy()
    steps[:, 16:] += 10.0  # A jump where the second column of tiles starts.
    self.assertGreater(tiling.seam_ratio(steps, 64, 16), 2.0)
    self.assertTrue(math.isnan(tiling.seam_ratio(noise[:64, :64], 64, 16)))

  def test_no_seams_in_a_restoration_with_the_bundled_prior(self):
    # The hardest case: nothing observed (inpainting with an empty mask), so only the network
    # ties the tiles together. Four 96x80 images (2 x 2 tiles of 64), 4 steps.
    fn, params, config = ddrm_jax.load_model(bundled.PRIOR)
    tile = config.image_size
    shape = (96, 80, 3)
    op = operators.make('inp', shape, mask=np.zeros(shape[:2], np.float32))
    y = jnp.zeros((4,) + tuple(op.y_shape))

    def ratio(overlap):
      restore = jax.jit(lambda params, y: ddrm_jax.sample(
          tiling.tiled(lambda x, t: fn(params, x, t), tile, overlap=overlap), op, y,
          jax.random.key(0), steps=4))
      x = np.asarray(restore(params, y))
      self.assertTrue(np.all(np.isfinite(x)))
      return np.mean([tiling.seam_ratio(xi, tile, overlap) for xi in x])

    self.assertLessEqual(ratio(16), 1.1)
    self.assertGreater(ratio(0), 1.3)  # Butted tiles: the statistic sees the seams.


if __name__ == '__main__':
  absltest.main()
