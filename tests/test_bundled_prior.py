"""The bundled prior: it loads, and `ddrm-restore` on its defaults restores a held-out image."""

import json
import os
import tempfile

from absl.testing import absltest
import jax.numpy as jnp
import numpy as np

from ddrm_jax import checkpoints
from ddrm_jax import io as image_io
from ddrm_jax.cli import restore as restore_cli


class BundledPriorTest(absltest.TestCase):

  def test_loads_and_matches_the_samples(self):
    fn, params, config = checkpoints.load_model(restore_cli.BUNDLED_PRIOR)
    self.assertEqual(config.family, 'ddpm')
    samples = image_io.expand_inputs(restore_cli.BUNDLED_SAMPLES)
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
    sample = os.path.join(restore_cli.BUNDLED_SAMPLES, 'celeba_0.png')
    status = restore_cli.main(['ddrm-restore', '--deg=deno', '--sigma_y=0.1', f'--input={sample}',
                               f'--output={out}', '--batch_size=1'])
    self.assertEqual(status, 0)
    with open(os.path.join(out, 'metrics.json')) as f:
      m = json.load(f)['images'][0]
    self.assertGreater(m['psnr'], m['baseline_psnr'] + 2.0)
    self.assertTrue(os.path.isfile(os.path.join(out, 'restored', 'celeba_0.png')))


if __name__ == '__main__':
  absltest.main()
