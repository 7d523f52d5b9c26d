"""`ddrm-restore --deg blind_blur`: the paper protocol (kernel_ncc, kernels/), measurement mode
(--sigma_y auto, padded photos), and its one-line errors."""

import json
import os
import sys

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from ddrm_jax import blind

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_restore_cli as T  # pylint: disable=g-import-not-at-top,wrong-import-position

_run, _png = T._run, T._png


class BlindCliTest(T.RunFolderCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir, cls.ckpt, cls.imgs = T.tiny_run_folder(seed=1)
    d = cls.dir
    taps = np.array([[0, 40, 10], [20, 255, 30], [0, 60, 0]], np.float64)
    np.save(os.path.join(d, 'k.npy'), taps / taps.sum())

  def run_ok(self, argv, out):
    return super().run_ok(['--deg', 'blind_blur'] + argv, out)[0]

  def test_paper_protocol_writes_kernels_and_their_ncc(self):
    self.run_ok(['--input', self.imgs, '--kernel', self.p('k.npy'), '--kernel_size', '5',
                 '--sigma_y', '0.02'], 'paper')
    with open(self.p('paper', 'metrics.json')) as fh:
      metrics = json.load(fh)
    truth = np.load(self.p('k.npy'))
    for rec in metrics['images']:
      kernel = np.load(self.p('paper', rec['outputs']['kernel']))
      self.assertEqual(kernel.shape, (5, 5))
      self.assertGreaterEqual(kernel.min(), 0.0)
      self.assertAlmostEqual(float(kernel.sum()), 1.0, places=5)
      self.assertAlmostEqual(rec['kernel_ncc'], blind.kernel_ncc(kernel, truth), places=6)
      self.assertEqual(_png(self.p('paper', rec['outputs']['kernel_png'])).shape[:2], (60, 60))
      # The baseline is the blurry image, blurred with the true kernel.
      np.testing.assert_array_equal(_png(self.p('paper', 'baseline', rec['name'] + '.png')),
                                    _png(self.p('paper', 'degraded', rec['name'] + '.png')))
    self.assertIn('kernel_ncc', metrics['mean'])
    with open(self.p('paper', 'run.json')) as fh:
      flags = json.load(fh)['flags']
    self.assertEqual((flags['eta'], flags['eta_b']), (1.0, 0.7))  # The blind defaults.

  def test_measurement_mode_with_estimated_noise(self):
    self.run_ok(['--input', self.p('imgs', 'a.png'), '--measurement', '--kernel_size', '3',
                 '--sigma_y', 'auto'], 'photo')
    restored = _png(self.p('photo', 'restored', 'a.png'))
    self.assertEqual(restored.shape[:2], (T.SIZE, T.SIZE))  # Padded, restored, cropped back.
    kernel = np.load(self.p('photo', 'kernels', 'a.npy'))
    self.assertEqual(kernel.shape, (3, 3))
    self.assertAlmostEqual(float(kernel.sum()), 1.0, places=5)
    with open(self.p('photo', 'run.json')) as fh:
      info = json.load(fh)
    self.assertGreater(info['sigma_y_estimate']['sigma_y'], 0.0)
    self.assertIsNotNone(info['border_padding'])

  @parameterized.named_parameters(
      ('even', ['--kernel_size', '4'], r'--kernel_size: kernel_size must be odd and >= 3, got 4'),
      ('small', ['--kernel_size', '1'], r'--kernel_size: kernel_size must be odd and >= 3'),
      ('too_big', ['--kernel_size', '17'], r'--kernel_size: kernel_size 17 is larger than the '
       r'image \(16x16\)'),
      ('other_deg', ['--deg', 'sr2', '--kernel_size', '5'],
       r'--kernel_size is for --deg blind_blur, not --deg sr2'),
      ('kernel_in_measurement', ['--measurement', '--kernel', '{dir}/k.npy'],
       r'estimates the kernel: leave --kernel out'),
  )
  def test_bad_input_one_line(self, extra, pattern):
    argv = ['--ckpt', self.ckpt, '--input', self.p('imgs', 'a.png'), '--deg', 'blind_blur']
    argv += T.FAST + [a.replace('{dir}', self.dir) for a in extra]
    status, _, err = _run(argv)
    self.assert_one_line_error(status, err, pattern)


if __name__ == '__main__':
  absltest.main()
