"""Tests of `scripts/solver_comparison.py`: its main on one image, one problem, two methods."""

import importlib.util
import json
import os
import tempfile
from unittest import mock

from absl import flags
from absl.testing import absltest
from absl.testing import flagsaver
import numpy as np

from ddrm_jax import solvers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
  spec = importlib.util.spec_from_file_location(
      'solver_comparison', os.path.join(ROOT, 'scripts', 'solver_comparison.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


SCRIPT = _script()


class SolverComparisonTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    flags.FLAGS.mark_as_parsed()

  def test_plan(self):
    rows = SCRIPT.plan(('ddrm', 'dps'), ('deno', 'sr4'), (0.0, 0.05), ('20', 'paper'))
    self.assertNotIn(('ddrm', 'deno', 0.0, 20), rows)  # Trivial: restoring the clean image.
    self.assertIn(('ddrm', 'deno', 0.05, 20), rows)
    self.assertIn(('dps', 'sr4', 0.0, solvers.dps.DEFAULT_STEPS), rows)
    self.assertLen([r for r in rows if r[0] == 'ddrm'], 3)  # DDRM's paper count is 20.
    self.assertTrue(all(r[3] == 20 for r in rows[:6]))  # The 20-call rows come first.

  def test_main_one_image_two_methods(self):
    with tempfile.TemporaryDirectory() as tmp:
      out = os.path.join(tmp, 'rows.json')
      settings = dict(methods=['ddrm', 'diffpir'], problems=['sr4'], sigma_ys=['0.05'],
                      steps=['2'], num_samples=2, num_images=1, out=out)
      with flagsaver.flagsaver(**settings):
        self.assertEqual(SCRIPT.main(['x']), 0)
      with open(out) as f:
        rows = json.load(f)
      self.assertEqual(sorted(rows), ['ddrm/sr4/0.05/2', 'diffpir/sr4/0.05/2'])
      for r in rows.values():
        self.assertEqual((r['deg'], r['sigma_y'], r['steps'], r['num_images']),
                         ('sr4', 0.05, 2, 1))
        for k in SCRIPT.METRICS + ('seconds_per_image',):
          self.assertTrue(np.isfinite(r[k]), k)
        self.assertGreater(r['psnr'], 10.0)
      # Both methods restore the same measurement: the same baseline.
      self.assertEqual(rows['ddrm/sr4/0.05/2']['baseline_psnr'],
                       rows['diffpir/sr4/0.05/2']['baseline_psnr'])
      # Rows already in the file are not run again.
      with flagsaver.flagsaver(**settings), mock.patch.object(
          SCRIPT, 'run_row', side_effect=AssertionError('rerun')):
        self.assertEqual(SCRIPT.main(['x']), 0)
      self.assertIn('| sr4 | 0.05 | diffpir | 2 |', SCRIPT.table(list(rows.values())))


if __name__ == '__main__':
  absltest.main()
