"""The dtype fidelity check (`ddrm_jax.fidelity`) and its flags in `scripts/benchmark.py`."""

import os
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from ddrm_jax import bundled
from ddrm_jax import checkpoints
from ddrm_jax import fidelity
from ddrm_jax import restore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FidelityRowsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    _, images = bundled.sample_images()
    cls.images = images[:2]
    cls.rows = fidelity.fidelity_rows(bundled.PRIOR, cls.images, ('deno',), steps=4,
                                      sigma_y=0.2, seed=3)

  def test_one_row_per_variant_reference_first_then_other_keys(self):
    self.assertEqual([(r['dtype'], r['precision'], r['keys']) for r in self.rows],
                     [v + ('same',) for v in fidelity.VARIANTS] + [('float32', 'highest', 'other')])
    for r in self.rows:
      self.assertEqual((r['deg'], r['images'], r['samples']), ('deno', 2, 1))
      self.assertEqual(set(r), set(fidelity.COLUMNS))

  def test_other_keys_draw_another_experiment(self):
    other = self.rows[-1]
    self.assertIsNone(other['within_bar'])
    self.assertNotEqual(other['baseline_psnr'], self.rows[0]['baseline_psnr'])  # New noise in y.
    self.assertLess(other['psnr_vs_f32'], self.rows[2]['psnr_vs_f32'])  # Farther than bf16.

  def test_reference_row_is_the_plain_restoration(self):
    # The reference row's PSNR is that of restore_batch run directly in float32.
    ref = self.rows[0]
    self.assertEqual((ref['delta_db'], ref['psnr_vs_f32'], ref['within_bar']), (0.0, None, True))
    fn, params, _ = checkpoints.load_model(bundled.PRIOR, dtype='float32')
    settings = restore.BatchSettings(deg='deno', steps=4, sigma_y=0.2)
    step = restore.make_restore_step(fn, settings)
    from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
    op = operators.make('deno', self.images.shape[1:])
    with jax.default_matmul_precision('highest'):
      out = step(params, None, op, self.images, restore.index_keys(3, np.arange(2)), None)
    self.assertAlmostEqual(ref['psnr'], float(np.mean(out['psnr'])), places=4)
    self.assertAlmostEqual(ref['baseline_psnr'], float(np.mean(out['baseline_psnr'])), places=4)

  def test_bfloat16_differs_from_float32_but_only_slightly(self):
    bf16 = self.rows[2]
    self.assertEqual(bf16['dtype'], 'bfloat16')
    # Not 'identical': the network really ran in bfloat16; and close: its chain stayed near
    # float32's (a float32-accumulated bf16 network drifts by far less than 1/100 of the range).
    self.assertIsInstance(bf16['psnr_vs_f32'], float)
    self.assertGreater(bf16['psnr_vs_f32'], 40.0)
    self.assertTrue(bf16['within_bar'], bf16)  # The bar: within 0.1 dB of float32.
    self.assertLess(abs(bf16['delta_db']), fidelity.MAX_DELTA_DB)


class HelpersTest(absltest.TestCase):

  def test_mean_of_psnrs(self):
    # pylint: disable=protected-access
    self.assertEqual(fidelity._mean(np.array([np.inf, np.inf])), 'identical')
    self.assertEqual(fidelity._mean(np.array([np.inf, 30.0, 40.0])), 35.0)
    self.assertTrue(np.isnan(fidelity._mean(np.array([np.nan, np.nan]))))  # Overflow shows.
    a = np.zeros((2, 8, 8, 3), np.float32)
    b = a.copy()
    b[1] += 0.2  # 0.1 in [0, 1] units: PSNR 20 dB.
    np.testing.assert_allclose(fidelity._unit_psnr(b, a), [np.inf, 20.0], rtol=1e-5)


class FidelityErrorsTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.images = bundled.sample_images()[1][:1]

  @parameterized.named_parameters(
      ('shape', dict(images=np.zeros((1, 32, 32, 3))), r'shape \(N, 64, 64, 3\)'),
      ('range', dict(images=np.full((1, 64, 64, 3), 2.0)), r'in \[-1, 1\]'),
      ('deg', dict(degs=('sr5x',)), 'unknown degradations'),
      ('no_reference', dict(variants=(('bfloat16', 'default'),)), 'must include the reference'),
      ('dtype', dict(variants=(fidelity.REFERENCE, ('int8', 'default'))), 'compute dtype'),
      ('batch', dict(batch_size=0), 'batch_size'),
      ('steps', dict(steps=0), 'steps'),
      ('samples', dict(num_samples=0), 'num_samples'),
  )
  def test_bad_arguments(self, kwargs, message):
    kwargs = dict(dict(images=self.images, degs=('deno',)), **kwargs)
    with self.assertRaisesRegex(ValueError, message):
      fidelity.fidelity_rows(bundled.PRIOR, **kwargs)

  def test_a_failing_degradation_is_reported_and_the_others_run(self):
    real = fidelity.operators.make

    def make(deg, shape, **kw):
      if deg == 'sr4':
        raise RuntimeError('RESOURCE_EXHAUSTED: planted')
      return real(deg, shape, **kw)

    failures = []
    with mock.patch.object(fidelity.operators, 'make', make):
      rows = fidelity.fidelity_rows(bundled.PRIOR, self.images, ('sr4', 'deno'), steps=2,
                                    on_failure=lambda deg, e: failures.append((deg, str(e))))
      with self.assertRaisesRegex(RuntimeError, 'planted'):  # No on_failure: raised.
        fidelity.fidelity_rows(bundled.PRIOR, self.images, ('sr4',), steps=2)
    self.assertEqual(failures, [('sr4', 'RESOURCE_EXHAUSTED: planted')])
    self.assertEqual({r['deg'] for r in rows}, {'deno'})
    self.assertLen(rows, len(fidelity.VARIANTS) + 1)

  @parameterized.named_parameters(('classifier', 'classifier'), ('class_conditional', 'cond'))
  def test_conditional_networks_are_refused(self, kind):
    from ddrm_jax import benchmarks  # pylint: disable=g-import-not-at-top
    from ddrm_jax.models import adm_unet  # pylint: disable=g-import-not-at-top
    base = dict(image_size=16, model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
                attention_resolutions=(8,), num_head_channels=16)
    if kind == 'classifier':
      config = adm_unet.ClassifierConfig(**base, out_channels=10)
    else:
      config = adm_unet.ADMConfig(**base, num_classes=10)
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    path = os.path.join(tmp.name, 'ckpt')
    checkpoints.save_checkpoint(path, benchmarks.random_params(config), config)
    with self.assertRaisesRegex(ValueError, 'needs an unconditional denoiser'):
      fidelity.fidelity_rows(path, np.zeros((1, 16, 16, 3)), ('deno',))


class BenchmarkFlagsTest(parameterized.TestCase):
  """Bad fidelity flags end the script with a one-line message before anything is compiled."""

  @parameterized.named_parameters(
      ('deg', ['--fidelity_degs=sr5x'], 'unknown degradations'),
      ('ckpt', ['--fidelity_ckpt=/nonexistent/ckpt', '--fidelity_input=x.png'],
       '--fidelity_ckpt'),
      ('ckpt_without_input', [f'--fidelity_ckpt={bundled.PRIOR}'], 'needs --fidelity_input'),
      ('input', ['--fidelity_input=/nonexistent/images'], '--fidelity_input'),
      ('sigma', ['--fidelity_sigma_y=-1'], 'fidelity_sigma_y'),
      ('samples', ['--fidelity_samples=0'], 'fidelity_samples'),
      ('steps', ['--networks=', '--steps=0'], '--steps must be >= 1'),
      ('dtype', ['--networks=', '--dtype=fp16'], "--dtype: unknown ['fp16']"),
      ('precision', ['--networks=', '--precision=foo'], "--precision: unknown ['foo']"),
      ('batch', ['--fidelity_batch=0'], 'batch_size must be an int >= 1'),
  )
  def test_bad_flags(self, flags, message):
    with tempfile.TemporaryDirectory() as tmp:
      proc = subprocess.run(
          [sys.executable, os.path.join(ROOT, 'scripts', 'benchmark.py'), '--quick',
           '--fidelity'] + flags, cwd=tmp, capture_output=True, text=True, timeout=120,
          check=False)
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn(message, proc.stderr)
    self.assertNotIn('Traceback', proc.stderr)
    self.assertNotIn('measured', proc.stdout)  # Nothing ran.

  def test_images_of_another_size(self):
    with tempfile.TemporaryDirectory() as tmp:
      from ddrm_jax import io as image_io  # pylint: disable=g-import-not-at-top
      image_io.write_image(os.path.join(tmp, 'a.png'), np.zeros((32, 32, 3), np.float32))
      proc = subprocess.run(
          [sys.executable, os.path.join(ROOT, 'scripts', 'benchmark.py'), '--quick',
           '--fidelity', f'--fidelity_input={tmp}'], cwd=tmp, capture_output=True, text=True,
          timeout=120, check=False)
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn('images are 32x32, the checkpoint is for 64x64', proc.stderr)
    self.assertNotIn('Traceback', proc.stderr)


if __name__ == '__main__':
  absltest.main()
