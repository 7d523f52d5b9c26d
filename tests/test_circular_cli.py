"""`ddrm-restore` with the circular 2-D blurs: --deg blur2d --kernel (.npy or PNG), --deg
deblur_motion, real blurred photos (--measurement: padded, restored, cropped), --sigma_y auto."""

import json
import os
import sys

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_restore_cli as T  # pylint: disable=g-import-not-at-top,wrong-import-position

_run, _png = T._run, T._png


class CircularBlurCliTest(T.RunFolderCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir, cls.ckpt, cls.imgs = T.tiny_run_folder(seed=0)
    d = cls.dir
    rng = np.random.default_rng(0)
    cls.photo = os.path.join(cls.imgs, 'a.png')
    taps = np.array([[0, 40, 10], [20, 255, 30], [0, 60, 0]], np.uint8)
    Image.fromarray(taps).save(os.path.join(d, 'k.png'))
    np.save(os.path.join(d, 'k.npy'), taps / taps.sum())
    Image.fromarray(np.stack([taps, taps, taps], -1)).save(os.path.join(d, 'k_rgb.png'))
    Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).save(
        os.path.join(d, 'photo_as_kernel.png'))
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(os.path.join(d, 'k_black.png'))
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(os.path.join(d, 'k_big.png'))
    np.save(os.path.join(d, 'k_nan.npy'), np.array([[1.0, np.nan]]))
    np.save(os.path.join(d, 'k_1d.npy'), np.ones(3))

  def test_blur2d_png_kernel_is_normalised_and_baseline_is_the_blurry_image(self):
    common = ['--input', self.imgs, '--deg', 'blur2d', '--sigma_y', '0.05']
    self.run_ok(common + ['--kernel', self.p('k.png')], 'png')
    self.run_ok(common + ['--kernel', self.p('k.npy')], 'npy')
    for stem in ('a', 'b'):
      png = _png(self.p('png', 'degraded', f'{stem}.png'))
      npy = _png(self.p('npy', 'degraded', f'{stem}.png'))
      np.testing.assert_array_equal(png, npy)  # The PNG kernel, divided by its sum.
      base = _png(self.p('png', 'baseline', f'{stem}.png'))
      np.testing.assert_array_equal(base, png)
    with open(self.p('png', 'metrics.json')) as fh:
      mean = json.load(fh)['mean']
    self.assertIsNotNone(mean['baseline_psnr'])

  def test_deblur_motion_paper_protocol(self):
    self.run_ok(['--input', self.photo, '--deg', 'deblur_motion'], 'motion')
    np.testing.assert_array_equal(_png(self.p('motion', 'baseline', 'a.png')),
                                  _png(self.p('motion', 'degraded', 'a.png')))

  @parameterized.parameters('blur2d', 'deblur_motion')
  def test_measurement_pads_restores_and_crops(self, deg):
    kernel = ['--kernel', self.p('k.npy')] if deg == 'blur2d' else []
    _, err = self.run_ok(['--input', self.photo, '--deg', deg, '--measurement', '--sigma_y',
                          'auto', '--num_samples', '2'] + kernel, f'meas_{deg}')
    self.assertTrue(any('--sigma_y auto: estimated noise std' in line for line in err), err)
    out = self.p(f'meas_{deg}')
    for sub in ('restored', 'degraded', 'std'):
      self.assertEqual(_png(os.path.join(out, sub, 'a.png')).shape, (T.SIZE, T.SIZE, 3))
    # The degraded view is the photo itself (the padding is cropped away again).
    np.testing.assert_array_equal(_png(os.path.join(out, 'degraded', 'a.png')),
                                  _png(self.photo))
    with open(os.path.join(out, 'run.json')) as fh:
      info = json.load(fh)
    (top, bottom), (left, right) = info['border_padding']
    ksize = 3 if deg == 'blur2d' else 5
    self.assertGreaterEqual(min(top, bottom, left, right), ksize)
    self.assertEqual((T.SIZE + top + bottom) % 2, 0)  # The tiny network halves once.
    est = info['sigma_y_estimate']
    self.assertEqual(list(est['per_image']), [self.photo])
    self.assertGreater(est['sigma_y'], 0.0)
    self.assertEqual(info['flags']['sigma_y'], 'auto')

  @parameterized.named_parameters(
      ('png_colour', ['--kernel', '{dir}/photo_as_kernel.png'], r'a colour image, not a blur'),
      ('png_black', ['--kernel', '{dir}/k_black.png'], r'all black, not a blur kernel'),
      ('png_too_big', ['--kernel', '{dir}/k_big.png'],
       r'k_big.png for 16x16 images: blur kernel 20x20 is larger than the image 16x16'),
      ('png_unreadable', ['--kernel', '{dir}/k.npy.png'], r'no such file'),
      ('npy_nan', ['--kernel', '{dir}/k_nan.npy'], r'non-finite'),
      ('npy_1d', ['--kernel', '{dir}/k_1d.npy'], r'must be 2-D \(kh, kw\) or 3-D'),
      ('auto_needs_measurement', ['--sigma_y', 'auto'], r'--sigma_y auto .* needs --measurement'),
      ('sigma_not_number', ['--sigma_y', 'loud'], r'expected a number or auto'),
      ('kernel_wrong_deg', ['--deg', 'sr2', '--kernel', '{dir}/k.npy'],
       r'--kernel is for --deg blur, blur2d or blind_blur, not --deg sr2'),
  )
  def test_bad_input_one_line(self, extra, pattern):
    argv = ['--ckpt', self.ckpt, '--input', self.photo, '--deg', 'blur2d'] + T.FAST
    argv += [a.replace('{dir}', self.dir) for a in extra]
    status, _, err = _run(argv)
    self.assert_one_line_error(status, err, pattern)

  def test_rgb_png_kernel_with_equal_channels_is_accepted(self):
    for name in ('k_rgb.png', 'k.png'):
      self.run_ok(['--input', self.photo, '--deg', 'blur2d', '--kernel', self.p(name)], 'o' + name)
    np.testing.assert_array_equal(_png(self.p('ok_rgb.png', 'degraded', 'a.png')),
                                  _png(self.p('ok.png', 'degraded', 'a.png')))


if __name__ == '__main__':
  absltest.main()
