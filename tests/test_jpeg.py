"""Tests of the JPEG codec (ddrm_jax.operators.jpeg, ddrm_jax.jpeg_files) against Pillow's
libjpeg(-turbo), and of the DDRM-JPEG sampler (ddrm_jax.solvers.ddrm_jpeg).

The codec with dct='islow' does libjpeg's integer arithmetic step by step (fixed-point colour
conversion, edge expansion, biased box downsampling, ISLOW DCTs, round-half-away quantization,
integer fancy upsampling), so its decode of its own encode must equal Pillow's decode of the
file Pillow wrote exactly: the tolerance is zero levels. dct='float' (the exact orthonormal DCT)
is bounded by what ISLOW's approximation error allows (see the test).
"""

import io
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from ddrm_jax import bundled
from ddrm_jax import diffusion
from ddrm_jax import jpeg_files
from ddrm_jax.operators import jpeg
from ddrm_jax.solvers import ddrm_jpeg

SUBSAMPLINGS = ('4:4:4', '4:2:2', '4:2:0')
PIL_SUBSAMPLING = {'4:4:4': 0, '4:2:2': 1, '4:2:0': 2}
_, SAMPLES = bundled.sample_images()  # (6, 64, 64, 3) in [-1, 1], 8-bit values.


def to8(x):
  return np.round((np.asarray(x, np.float64) + 1.0) * 127.5).astype(np.int64)


def pillow_roundtrip(x, **save):
  """Pillow writes x as a JPEG and decodes the file: (int 0..255 image, the opened file)."""
  a = to8(x).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, 'JPEG', **save)
  buf.seek(0)
  im = Image.open(buf)
  return np.asarray(im).astype(np.int64).reshape(a.shape), im


def sample_crops():
  """Natural images of several sizes (odd, not multiples of 8 or 16) and one of pure noise."""
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, (18, 41, 3)) / 127.5 - 1.0
  return {'64x64': SAMPLES[0], '37x53': SAMPLES[1][:37, :53], '57x41': SAMPLES[5][3:60, 1:42],
          'noise18x41': noise.astype(np.float32)}


def tmp_path(name):
  return os.path.join(tempfile.mkdtemp(), name)


class CodecAgainstPillowTest(parameterized.TestCase):

  @parameterized.parameters(*SUBSAMPLINGS)
  def test_tables_and_subsampling_read_from_pillow_files(self, subsampling):
    for quality in (1, 10, 50, 90, 100):
      path = jpeg_files.write_jpeg(tmp_path('a.jpg'), SAMPLES[2][:20, :30], quality, subsampling)
      info = jpeg_files.read_jpeg_tables(path)
      luma, chroma = jpeg.ijg_tables(quality)
      np.testing.assert_array_equal(info.tables, np.stack([luma, chroma, chroma]))
      self.assertEqual(info.subsampling, subsampling)
      self.assertEqual(info.image_shape, (20, 30, 3))

  def test_ijg_scaling_matches_libjpeg_at_every_quality(self):
    for quality in range(1, 101):
      _, im = pillow_roundtrip(SAMPLES[0][:8, :8], quality=quality)
      luma, chroma = jpeg.ijg_tables(quality)
      np.testing.assert_array_equal(np.reshape(im.quantization[0], (8, 8)), luma)
      np.testing.assert_array_equal(np.reshape(im.quantization[1], (8, 8)), chroma)

  def test_custom_tables_come_back_in_natural_order(self):
    # Random tables: a zigzag/natural mix-up could not go unnoticed.
    rng = np.random.default_rng(1)
    tables = rng.integers(1, 256, (2, 64))
    a = to8(SAMPLES[3][:24, :24]).astype(np.uint8)
    path = tmp_path('custom.jpg')
    Image.fromarray(a).save(path, 'JPEG', qtables=[list(t) for t in tables], subsampling=0)
    info = jpeg_files.read_jpeg_tables(path)
    np.testing.assert_array_equal(info.tables, tables[[0, 1, 1]].reshape(3, 8, 8))
    codec = jpeg.codec_from_file(path)
    np.testing.assert_array_equal(to8(codec.roundtrip(SAMPLES[3][:24, :24])),
                                  np.asarray(Image.open(path)).astype(np.int64))

  @parameterized.product(subsampling=SUBSAMPLINGS, quality=(10, 50, 95))
  def test_decode_of_encode_equals_pillow_bit_for_bit(self, subsampling, quality):
    for name, x in sample_crops().items():
      ref, _ = pillow_roundtrip(x, quality=quality, subsampling=PIL_SUBSAMPLING[subsampling])
      codec = jpeg.jpeg_codec(x.shape, quality=quality, subsampling=subsampling)
      out = to8(codec.roundtrip(x))
      self.assertEqual(np.abs(out - ref).max(), 0, f'{name}: max difference in 8-bit levels')

  @parameterized.parameters(10, 75)
  def test_grayscale_equals_pillow(self, quality):
    x = SAMPLES[4][:29, :45].mean(-1, keepdims=True)
    x = to8(x) / 127.5 - 1.0
    ref, im = pillow_roundtrip(x, quality=quality)
    self.assertEqual(im.mode, 'L')
    codec = jpeg.jpeg_codec(x.shape, quality=quality)
    self.assertLen(codec.encode(x), 1)
    np.testing.assert_array_equal(to8(codec.roundtrip(x)), ref)

  @parameterized.parameters('4:4:4', '4:2:0')
  def test_float_dct_is_one_step_from_libjpeg_at_most(self, subsampling):
    # libjpeg's ISLOW FDCT errs by a few units of its 8x-scaled output, far less than one
    # quantization step (8 q >= 8 units): the exact DCT can only land in a neighbouring bin, and
    # rarely (measured: 0.01% of coefficients at q 10, 0.5% at q 90). Decoding the same
    # coefficients, ISLOW's IDCT is within 1 level per plane sample of the exact one (IEEE 1180
    # accuracy), which the colour conversion (|dR| <= |dY| + 1.402 |dCr|, rounded) carries to at
    # most 3 levels (measured: 2).
    x = SAMPLES[1][:37, :53]
    for quality in (10, 50, 90):
      exact = jpeg.jpeg_codec(x.shape, quality=quality, subsampling=subsampling)
      flt = jpeg.jpeg_codec(x.shape, quality=quality, subsampling=subsampling, dct='float')
      k_exact, k_float = exact.encode(x), flt.encode(x)
      diffs = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel()
                              for a, b in zip(k_exact, k_float)])
      self.assertLessEqual(diffs.max(), 1)
      self.assertLess(np.mean(diffs > 0), 0.01)
      self.assertLessEqual(np.abs(to8(exact.decode(k_exact)) - to8(flt.decode(k_exact))).max(),
                           3)

  def test_coefficients_are_the_files_blocks(self):
    # 37x53 at 4:2:0: luma 5x7 blocks, chroma 19x27 samples in 3x4 blocks.
    codec = jpeg.jpeg_codec((37, 53, 3), quality=50)
    self.assertEqual(codec.coefficient_shapes(), ((5, 7, 8, 8), (3, 4, 8, 8), (3, 4, 8, 8)))
    k = codec.encode(SAMPLES[1][:37, :53])
    self.assertEqual(tuple(a.shape for a in k), codec.coefficient_shapes())
    self.assertTrue(all(a.dtype == jnp.int32 for a in k))

  def test_batch_of_codecs_with_their_own_tables(self):
    x = jnp.asarray(SAMPLES[:2, :8, :16])
    codecs = [jpeg.jpeg_codec((8, 16, 3), quality=q) for q in (10, 60)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *codecs)
    out = jax.vmap(lambda c, xi: c.roundtrip(xi))(stacked, x)
    for i, c in enumerate(codecs):
      np.testing.assert_array_equal(out[i], c.roundtrip(x[i]))

  def test_read_jpeg_gives_the_codec_and_the_files_pixels(self):
    x = SAMPLES[5][:30, :50]
    path = jpeg_files.write_jpeg(tmp_path('b.jpg'), x, 20, '4:2:2')
    codec, y = jpeg.read_jpeg(path)
    self.assertEqual((codec.image_shape, codec.subsampling), ((30, 50, 3), '4:2:2'))
    np.testing.assert_array_equal(y, codec.roundtrip(x))


class RefusalTest(parameterized.TestCase):

  def _jpeg_bytes(self, **save):
    buf = io.BytesIO()
    Image.fromarray(to8(SAMPLES[0][:16, :16]).astype(np.uint8)).save(buf, 'JPEG', **save)
    return buf.getvalue()

  def _write(self, data, name='x.jpg'):
    path = tmp_path(name)
    with open(path, 'wb') as fh:
      fh.write(data)
    return path

  def _assert_refused(self, path, reason):
    with self.assertRaisesRegex(ValueError, reason) as ctx:
      jpeg_files.read_jpeg_tables(path)
    message = str(ctx.exception)
    self.assertIn(path, message)
    self.assertNotIn('\n', message)
    with self.assertRaisesRegex(ValueError, reason):
      jpeg.codec_from_file(path)

  def test_progressive(self):
    self._assert_refused(self._write(self._jpeg_bytes(progressive=True)), 'progressive JPEG')

  def test_arithmetic_coded(self):
    data = bytearray(self._jpeg_bytes())
    sof = data.index(b'\xff\xc0')
    data[sof + 1] = 0xC9  # SOF9: extended sequential DCT, arithmetic coding.
    self._assert_refused(self._write(bytes(data)), 'arithmetic-coded JPEG')

  def test_cmyk(self):
    path = tmp_path('cmyk.jpg')
    Image.new('CMYK', (16, 16), (10, 20, 30, 40)).save(path, 'JPEG')
    self._assert_refused(path, 'CMYK')

  def test_rgb_coded(self):
    self._assert_refused(self._write(self._jpeg_bytes(keep_rgb=True)), 'RGB-coded')

  def test_png(self):
    path = tmp_path('a.png')
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    self._assert_refused(path, 'not a JPEG file')

  def test_no_tables(self):
    data = self._jpeg_bytes()
    while b'\xff\xdb' in data:  # Cut every DQT segment out.
      i = data.index(b'\xff\xdb')
      data = data[:i] + data[i + 2 + int.from_bytes(data[i + 2:i + 4], 'big'):]
    self._assert_refused(self._write(data), 'no quantization tables|cannot read')

  def test_missing_file(self):
    self._assert_refused(os.path.join(tempfile.mkdtemp(), 'none.jpg'), 'no such file')


class CodecArgumentsTest(parameterized.TestCase):

  @parameterized.parameters(
      (dict(quality=0), 'quality'), (dict(quality=101), 'quality'),
      (dict(quality=True), 'quality'), (dict(), 'exactly one'),
      (dict(quality=50, tables=np.ones((8, 8))), 'exactly one'),
      (dict(tables=np.zeros((8, 8))), 'tables'), (dict(tables=np.ones((4, 8, 8))), 'tables'),
      (dict(quality=50, subsampling='4:1:1'), 'subsampling'),
      (dict(quality=50, upsampling='bilinear'), 'upsampling'),
      (dict(quality=50, dct='fast'), 'dct'))
  def test_bad_settings(self, kwargs, name):
    with self.assertRaisesRegex(ValueError, name):
      jpeg.jpeg_codec((16, 16, 3), **kwargs)

  def test_bad_shapes(self):
    with self.assertRaisesRegex(ValueError, 'channels'):
      jpeg.jpeg_codec((16, 16, 2), quality=50)
    codec = jpeg.jpeg_codec((16, 16, 3), quality=50)
    with self.assertRaisesRegex(ValueError, 'encode'):
      codec.encode(jnp.zeros((16, 17, 3)))
    with self.assertRaisesRegex(ValueError, 'decode'):
      codec.decode(codec.encode(jnp.zeros((16, 16, 3)))[:2])
    with self.assertRaisesRegex(ValueError, 'quality'):
      jpeg_files.write_jpeg(tmp_path('c.jpg'), np.zeros((8, 8, 3)), 0)


class PixelQuantizationTest(parameterized.TestCase):

  def test_edge_level_counts(self):
    x = SAMPLES[0]  # 8-bit values.
    # 256 levels: the identity on 8-bit images, up to float32 rounding of the unit conversion.
    np.testing.assert_allclose(jpeg.pixel_quantization(x.shape, 256).roundtrip(x), x, atol=2e-7)
    np.testing.assert_array_equal(jpeg.pixel_quantization(x.shape, 1).roundtrip(x), 0.0)

  def test_bins_and_centres(self):
    q = jpeg.pixel_quantization((1, 256, 1), 8)
    s = np.arange(256)
    k = np.asarray(q.encode((s / 127.5 - 1.0).reshape(1, 256, 1))).ravel()
    np.testing.assert_array_equal(k, s // 32)
    centre = (np.asarray(q.roundtrip((s / 127.5 - 1.0).reshape(1, 256, 1))).ravel() + 1) * 127.5
    np.testing.assert_allclose(centre, 32 * (s // 32) + 15.5, atol=1e-4)

  @parameterized.parameters(0, 257, 2.5)
  def test_bad_levels(self, levels):
    with self.assertRaisesRegex(ValueError, 'levels'):
      jpeg.pixel_quantization((8, 8, 3), levels)


# -- the sampler --------------------------------------------------------------------------------

ABAR = jnp.asarray(diffusion.alpha_bars(diffusion.linear_betas()))


def oracle_model(x0):
  """The true eps of the known images x0: every x0 prediction of the chain is x0 itself."""
  def model_fn(x_t, t):
    a = ABAR[t][:, None, None, None]
    return (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)
  return model_fn


def junk_model(x, t):
  """A deterministic stand-in for a network, nonlinear in x and dependent on t."""
  return jnp.tanh(0.7 * x + 1e-3 * t[:, None, None, None].astype(jnp.float32))


def encode_all(codec, x):
  return [np.asarray(a) for a in jax.vmap(codec.encode)(x)]


class SamplerTest(parameterized.TestCase):

  @parameterized.parameters(('4:4:4', 20), ('4:2:2', 10), ('4:2:0', 10), ('4:2:0', 20))
  def test_perfect_prior_restores_an_image_consistent_with_the_file(self, subsampling, quality):
    x = jnp.asarray(SAMPLES[:2, 5:29, 3:43])  # 24x40: partial MCUs at 4:2:0.
    codec = jpeg.jpeg_codec(x.shape[1:], quality=quality, subsampling=subsampling)
    y = jax.vmap(codec.roundtrip)(x)  # What the file shows: y = D(k_file).
    k_file = encode_all(codec, x)
    out = ddrm_jpeg.sample(oracle_model(x), codec, y, jax.random.key(0))
    for a, b in zip(encode_all(codec, out), k_file):  # The file's coefficients, every one.
      np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(jax.vmap(codec.roundtrip)(out), y)
    # x0_hat = x0 - D(E(x0)) + y = x exactly here, so the chain ends on x (float32 rounding of
    # the VP arithmetic only: ~1e-6).
    np.testing.assert_allclose(out, x, atol=1e-5)

  def test_last_step_is_the_projection_of_the_priors_image(self):
    # A prior that knows another image x': every x0 prediction is x', and the last step (to
    # the clean level, no noise) returns eta_b (x' - D(E(x')) + y) + (1 - eta_b) x'.
    x = jnp.asarray(SAMPLES[:2, :16, :16])
    other = jnp.asarray(SAMPLES[2:4, :16, :16])
    codec = jpeg.jpeg_codec(x.shape[1:], quality=10)
    y = jax.vmap(codec.roundtrip)(x)
    out = ddrm_jpeg.sample(oracle_model(other), codec, y, jax.random.key(0), steps=3)
    x0_hat = other - jax.vmap(codec.roundtrip)(other) + y
    np.testing.assert_allclose(out, 0.4 * x0_hat + 0.6 * other, atol=1e-5)

  def test_reencoding_y_is_the_papers_formula(self):
    # With fancy 4:2:2 upsampling, E(D(k)) != k in a few chroma coefficients of these crops:
    # D(E(y)) moves off the file, y does not.
    x = jnp.asarray(SAMPLES[:2, 5:29, 3:43])
    codec = jpeg.jpeg_codec(x.shape[1:], quality=10, subsampling='4:2:2')
    y = jax.vmap(codec.roundtrip)(x)
    self.assertFalse(all(np.array_equal(a, b) for a, b in
                         zip(encode_all(codec, y), encode_all(codec, x))))
    out = ddrm_jpeg.sample(oracle_model(x), codec, y, jax.random.key(0), reencode_y=True)
    np.testing.assert_allclose(
        out, 0.4 * (x - y + jax.vmap(codec.roundtrip)(y)) + 0.6 * x, atol=1e-5)

  def test_perfect_prior_dequantization(self):
    x = jnp.asarray(SAMPLES[:2, :16, :16])
    codec = jpeg.pixel_quantization(x.shape[1:], 8)
    y = jax.vmap(codec.roundtrip)(x)
    out = ddrm_jpeg.sample(oracle_model(x), codec, y, jax.random.key(1))
    np.testing.assert_array_equal(jax.vmap(codec.encode)(out), jax.vmap(codec.encode)(y))

  def test_paper_schedule(self):
    s = ddrm_jpeg.make_settings()
    self.assertEqual(s.timesteps, tuple(range(0, 300, 15)))  # ddrm-jpeg: range(0, 300, 15).
    self.assertEqual((s.eta, s.eta_b, s.steps), (1.0, 0.4, 20))
    x = jnp.asarray(SAMPLES[:1, :8, :8])
    codec = jpeg.jpeg_codec((8, 8, 3), quality=10)
    _, preds = ddrm_jpeg.sample(junk_model, codec, x, jax.random.key(0), steps=5, t_start=100,
                                return_x0_preds=True)
    self.assertEqual(preds.shape, (5, 1, 8, 8, 3))

  def test_vmap_equals_one_by_one_and_keys_are_per_image(self):
    x = jnp.asarray(SAMPLES[:3, :8, :16])
    codec = jpeg.jpeg_codec(x.shape[1:], quality=10)
    y = jax.vmap(codec.roundtrip)(x)
    key = jax.random.key(3)
    run = jax.jit(lambda c, y, k: ddrm_jpeg.sample(junk_model, c, y, k, steps=2))
    batch = run(codec, y, key)
    for i in range(3):
      one = run(codec, y[i:i + 1], jax.random.fold_in(key, i)[None])
      np.testing.assert_allclose(one[0], batch[i], atol=1e-6)
    self.assertGreater(float(jnp.abs(batch[0] - batch[1]).max()), 0.01)

  def test_one_trace_with_params_and_codec_as_arguments(self):
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(scale, codec, y, key):
      model_fn = lambda x, t: scale * junk_model(x, t)
      return ddrm_jpeg.sample(model_fn, codec, y, key, steps=3)

    y = jnp.asarray(SAMPLES[:2, :8, :16])
    for quality, seed in ((10, 0), (40, 1)):
      codec = jpeg.jpeg_codec((8, 16, 3), quality=quality)
      run(jnp.float32(0.5 + seed), codec, y + 0.01 * seed, jax.random.key(seed))

  def test_batched_codecs(self):
    x = jnp.asarray(SAMPLES[:2, :8, :8])
    codecs = [jpeg.jpeg_codec((8, 8, 3), quality=q) for q in (10, 30)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *codecs)
    y = jnp.stack([c.roundtrip(xi) for c, xi in zip(codecs, x)])
    key = jax.random.key(0)
    both = ddrm_jpeg.sample(junk_model, stacked, y, key, steps=2, batched_codec=True)
    for i, c in enumerate(codecs):
      one = ddrm_jpeg.sample(junk_model, c, y[i:i + 1], jax.random.fold_in(key, i)[None],
                             steps=2)
      np.testing.assert_allclose(one[0], both[i], atol=1e-6)

  @parameterized.parameters(
      (dict(steps=21, t_start=20), 'steps'), (dict(t_start=0), 't_start'),
      (dict(t_start=1001), 't_start'), (dict(eta=1.5), 'eta'), (dict(steps=2.0), 'steps'))
  def test_bad_settings(self, kwargs, name):
    codec = jpeg.jpeg_codec((8, 8, 3), quality=10)
    with self.assertRaisesRegex(ValueError, name):
      ddrm_jpeg.sample(junk_model, codec, jnp.zeros((1, 8, 8, 3)), jax.random.key(0), **kwargs)

  def test_bad_inputs(self):
    codec = jpeg.jpeg_codec((8, 8, 3), quality=10)
    key = jax.random.key(0)
    with self.assertRaisesRegex(ValueError, 'y must have shape'):
      ddrm_jpeg.sample(junk_model, codec, jnp.zeros((8, 8, 3)), key)
    with self.assertRaisesRegex(ValueError, 'floating'):
      ddrm_jpeg.sample(junk_model, codec, jnp.zeros((1, 8, 8, 3), jnp.int32), key)
    with self.assertRaisesRegex(ValueError, 'codec'):
      ddrm_jpeg.sample(junk_model, object(), jnp.zeros((1, 8, 8, 3)), key)
    with self.assertRaisesRegex(ValueError, 'batched_codec'):
      ddrm_jpeg.sample(junk_model, codec, jnp.zeros((2, 8, 8, 3)), key, batched_codec=True)


if __name__ == '__main__':
  absltest.main()
