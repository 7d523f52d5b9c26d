"""Tests of `scripts/blind_quality.py`: its kernel generator and its `--options` flag.

Run in subprocesses: the script defines absl flags (`--steps`, `--ckpt`, ...) that other
scripts loaded by the suite define too.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from absl.testing import absltest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'scripts', 'blind_quality.py')


def _run(args, code=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  cmd = [sys.executable, '-c', code] if code else [sys.executable, SCRIPT] + args
  return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


class BlindQualityTest(absltest.TestCase):

  def test_kernels_are_centred_blurs(self):
    # Every kernel is on the simplex, centred by its centre of mass (within the rounding of
    # the clip at the support's edge: half a pixel), of each kind, and the sets differ by seed.
    code = textwrap.dedent(f"""
        import importlib.util
        import numpy as np
        spec = importlib.util.spec_from_file_location('bq', {SCRIPT!r})
        bq = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bq)
        for size in (7, 11):
          kernels, kinds = bq.shake_kernels(2, size)
          assert kernels.shape == (6, size, size), kernels.shape
          assert set(kinds) == {{'shake', 'line', 'arc'}}, kinds
          assert kernels.min() >= 0 and np.allclose(kernels.sum((1, 2)), 1, atol=1e-5)
          grid = np.arange(size) - size // 2
          for k in kernels:
            centroid = [np.sum(k.sum(1) * grid), np.sum(k.sum(0) * grid)]
            assert np.abs(centroid).max() <= 0.5, centroid
            assert (k > 0.01).sum() >= 3, 'not a point'
        assert not np.allclose(bq.shake_kernels(2, 7)[0], bq.shake_kernels(3, 7)[0])
        print('ok')
        """)
    result = _run(None, code)
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertIn('ok', result.stdout)

  def test_a_short_run_writes_its_json_and_figure_whole(self):
    # One kernel (the second of two, by --only), one seed, 2 steps, one pass: the JSON holds
    # the options given and the row's per-photo values (its mean NCC their mean), the figure
    # is one labelled row of 5 cells, and no temporary file is left beside them (both
    # written by io.atomic_write).
    out = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, out)
    result = _run(['--kernels=2', '--only=2.1', '--kernel_seeds=2', '--seeds=0', '--steps=2',
                   '--timing=false', '--options=passes=1', f'--json={out}/r.json',
                   f'--figure={out}/f.png'])
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    self.assertCountEqual(os.listdir(out), ['r.json', 'f.png'])
    with open(os.path.join(out, 'r.json')) as f:
      summary = json.load(f)
    self.assertEqual(summary['options'], {'passes': '1'})
    (row,) = summary['rows']
    self.assertEqual(row['name'], '2.1 line')
    self.assertLen(row['photo_ncc'], 6)
    self.assertAlmostEqual(summary['mean_ncc'], sum(row['photo_ncc']) / 6, places=6)
    self.assertAlmostEqual(row['gain_min'], min(row['photo_gain']), places=6)
    self.assertLen(row['photo_aligned'], 6)
    self.assertAlmostEqual(row['aligned_min'], min(row['photo_aligned']), places=6)
    self.assertAlmostEqual(summary['mean_aligned_gain'], sum(row['photo_aligned']) / 6,
                           places=5)
    self.assertEqual(summary['kernels_gaining_1db'], int(row['gain'] >= 1.0))
    self.assertIn(f"at least +1 dB: {int(row['gain'] >= 1.0)} of 1", result.stdout)
    with Image.open(os.path.join(out, 'f.png')) as im:
      self.assertEqual(im.format, 'PNG')
      self.assertGreater(im.width, 4 * im.height)  # 5 cells side by side, one row.

  def test_bad_options_are_one_usage_line(self):
    result = _run(['--kernels=2', '--only=2.1,3.2,2.5'])
    self.assertNotEqual(result.returncode, 0)
    self.assertIn('--only 2.5,3.2: not a kernel of --kernel_seeds 2,3 x --kernels 2',
                  result.stderr)
    self.assertNotIn('Traceback', result.stderr)
    # Kernels are named by the seed's value, as their rows are: 02 draws set 2, kernels 2.i.
    result = _run(['--kernel_seeds=02', '--kernels=2', '--only=02.0'])
    self.assertNotEqual(result.returncode, 0)
    self.assertIn('--only 02.0: not a kernel of --kernel_seeds 2 x --kernels 2', result.stderr)
    for options, message in (('spred=0.1', "'spred=0.1' is not name=value with a name of "
                              'sample_blind'),
                             ('spread', "'spread' is not name=value"),
                             ('spread=fast', "--options spread: 'fast' is not a Python literal")):
      result = _run([f'--options={options}'])
      self.assertNotEqual(result.returncode, 0)
      self.assertIn(message, result.stderr)
      self.assertNotIn('Traceback', result.stderr)


if __name__ == '__main__':
  absltest.main()
