"""The bundled prior: it loads, and `ddrm-restore` on its defaults restores a held-out image."""

import contextlib
import io
import json
import os
import tempfile
from unittest import mock

from absl.testing import absltest
import jax.numpy as jnp
import numpy as np

from ddrm_jax import checkpoints
from ddrm_jax import io as image_io
from ddrm_jax import bundled
from ddrm_jax.cli import restore as restore_cli
from ddrm_jax.pipeline import files as pipeline_files


class BundledPriorTest(absltest.TestCase):

  def test_loads_and_matches_the_samples(self):
    fn, params, config = checkpoints.load_model(bundled.PRIOR)
    self.assertEqual(config.family, 'ddpm')
    samples = image_io.expand_inputs(bundled.SAMPLES)
    self.assertGreaterEqual(len(samples), 6)
    for f in samples:  # Held-out images stored at the prior's size.
      self.assertEqual(image_io.read_image(f, 3).shape,
                       (config.image_size, config.image_size, config.in_channels))
    eps = fn(params, jnp.zeros((1, config.image_size, config.image_size, 3)),
             jnp.full((1,), 500, jnp.int32))
    self.assertEqual(eps.shape, (1, config.image_size, config.image_size, 3))
    self.assertTrue(np.all(np.isfinite(np.asarray(eps))))

  def test_denoises_a_held_out_image_better_than_the_noisy_input(self):
    # One held-out image, sigma_y = 0.1: the baseline is the noisy image itself (H^+ y = y).
    # A prior that learned nothing would not beat it; the bundled one does by several dB.
    out = os.path.join(tempfile.mkdtemp(), 'run')
    sample = os.path.join(bundled.SAMPLES, 'celeba_0.png')
    status = restore_cli.main(['ddrm-restore', '--deg=deno', '--sigma_y=0.1', f'--input={sample}',
                               f'--output={out}', '--batch_size=1', '--num_samples=1'])
    self.assertEqual(status, 0)
    with open(os.path.join(out, 'metrics.json')) as f:
      m = json.load(f)['images'][0]
    self.assertGreater(m['psnr'], m['baseline_psnr'] + 2.0)
    self.assertTrue(os.path.isfile(os.path.join(out, 'restored', 'celeba_0.png')))

  def test_first_run_shows_ddrm_winning(self):
    """`ddrm-restore` with no flags (issue 11): the posterior mean of 8 at sigma_y 0.05 beats
    bicubic upsampling in PSNR and SSIM (seed 0 here; seeds 0 to 4 were checked by hand)."""
    runs = tempfile.mkdtemp()
    out = io.StringIO()
    with mock.patch.object(pipeline_files, 'RUNS_DIR', runs), contextlib.redirect_stdout(out):
      status = restore_cli.main(['ddrm-restore'])
    self.assertEqual(status, 0)
    self.assertIn('with the bundled prior: sr4, sigma_y 0.05, 20 steps, the posterior mean of 8 '
                  'samples each', out.getvalue())
    run = os.path.join(runs, '001_sr4')
    with open(os.path.join(run, 'metrics.json')) as f:
      mean = json.load(f)['mean']
    self.assertGreater(mean['psnr'], mean['baseline_psnr'])
    self.assertGreater(mean['ssim'], mean['baseline_ssim'])
    self.assertLen(os.listdir(os.path.join(run, 'samples')), 6 * 8)
    # The grid shows the 64x64 images enlarged 4x (nearest neighbour): 6 rows, 3 columns.
    grid = image_io.read_image(os.path.join(run, 'grid.png'))
    self.assertEqual(grid.shape, (2 + 6 * 258, 2 + 3 * 258, 3))
    original = image_io.read_image(os.path.join(run, 'original', 'bedroom_0.png'))
    np.testing.assert_array_equal(grid[2:258, 2:258], original.repeat(4, 0).repeat(4, 1))

  def test_same_bytes_whatever_the_batch_size(self):
    """Same seed, same files: batch 1 and batch 4 write byte-identical PNGs (num_samples 2)."""
    root = tempfile.mkdtemp()
    trees = []
    for batch in (1, 4):
      out = os.path.join(root, f'b{batch}')
      status = restore_cli.main(['ddrm-restore', '--num_samples=2', f'--batch_size={batch}',
                                 f'--output={out}', '--seed=3'])
      self.assertEqual(status, 0)
      files = sorted(os.path.relpath(os.path.join(d, f), out)
                     for d, _, fs in os.walk(out) for f in fs if f.endswith('.png'))
      self.assertLen(files, 6 * 7 + 1)  # 4 images, std and 2 samples per input; the grid
      trees.append({f: open(os.path.join(out, f), 'rb').read() for f in files})
    self.assertEqual(trees[0].keys(), trees[1].keys())
    different = [f for f in trees[0] if trees[0][f] != trees[1][f]]
    self.assertEqual(different, [])


if __name__ == '__main__':
  absltest.main()
