"""Tests of the benchmark helpers and of `scripts/benchmark.py --quick` (no speed asserted)."""

import json
import math
import os
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from ddrm_jax import benchmarks
from ddrm_jax.models import configs
from ddrm_jax.models import layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class QuickModeTest(absltest.TestCase):
  """One run of the script in CI mode; every check reads its table and JSON output."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    path = os.path.join(cls.tmp.name, 'quick.json')
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'benchmark.py'),
                           '--quick', f'--json={path}'], cwd=cls.tmp.name, capture_output=True,
                          text=True, timeout=300, check=False)
    cls.proc = proc
    cls.result = None
    if proc.returncode == 0:
      with open(path) as f:
        cls.result = json.load(f)

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def setUp(self):
    super().setUp()
    self.assertEqual(self.proc.returncode, 0, self.proc.stderr[-3000:])

  def test_one_tiny_row_with_sane_values(self):
    rows = self.result['networks']
    self.assertLen(rows, 1)
    r = rows[0]
    self.assertEqual((r['network'], r['batch'], r['dtype'], r['precision'], r['steps']),
                     ('tiny', 1, 'float32', 'default', 20))
    self.assertEqual(r['steps_timed'], 20)  # The tiny network runs every step, even on a CPU.
    for k in ('lower_s', 'xla_compile_s', 'fwd_compile_s', 's_per_image', 'step_ms', 'fwd_ms',
              'overhead_ms', 'gflop_per_fwd', 'tflops', 'temp_mib', 'args_mib',
              'ref_conv_gflops'):
      self.assertGreater(r[k], 0.0, k)
      self.assertTrue(math.isfinite(r[k]), k)
    self.assertAlmostEqual(r['compile_s'], r['lower_s'] + r['xla_compile_s'], places=6)
    self.assertAlmostEqual(r['s_per_image'] * r['images_per_s'], 1.0, places=6)
    self.assertAlmostEqual(r['s_per_image'], r['step_ms'] * r['steps'] / 1e3, places=6)
    self.assertAlmostEqual(r['overhead_pct'], 100 * r['overhead_ms'] / r['step_ms'], places=6)
    self.assertAlmostEqual(r['step_minus_fwd_pct'],
                           100 * (r['step_ms'] - r['fwd_ms']) / r['step_ms'], places=6)
    self.assertAlmostEqual(r['tflops'],
                           r['gflop_per_fwd'] * r['steps'] / r['s_per_image'] / 1e3, places=6)
    self.assertAlmostEqual(r['fwd_pct_of_ref'], 100 * r['gflop_per_fwd'] / r['fwd_ms'] * 1e3
                           / r['ref_conv_gflops'], places=6)
    if self.result['environment']['platform'] == 'cpu':
      self.assertAlmostEqual(r['peak_pct'],
                             100 * r['tflops'] * 1e3 / benchmarks.CPU_PEAK_GFLOPS, places=6)

  def test_program_is_one_loop_without_host_transfers(self):
    r = self.result['networks'][0]
    self.assertTrue(r['scan_is_loop'])
    self.assertEqual(r['conv_copies'], 1.0)  # One copy of the network: the loop is not unrolled.
    self.assertEqual(r['host_transfers'], 0)

  def test_model_flops_bound_the_convolutions(self):
    # The tiny UNet's convolutions alone, counted from its params at 32x32 / 16x16, bound
    # XLA's count from below (it adds norms, activations, attention and the timestep MLP).
    r = self.result['networks'][0]
    shapes = configs.param_shapes(benchmarks.TINY)
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    conv_macs = 0
    for path, s in flat:
      names = [str(getattr(p, 'key', p)) for p in path]
      if names[-1] != 'kernel' or len(s.shape) != 4 or names[0] in ('temb_dense_0',):
        continue
      level = 1 if names[0].startswith(('down_1', 'up_1', 'mid')) else 0
      if names[0] in ('down_0_downsample', 'up_1_upsample'):
        level = 1 - level  # Output side: after the stride-2 conv; after the 2x upsampling.
      side = 32 // 2 ** level
      conv_macs += side * side * np.prod(s.shape)
    self.assertGreater(r['gflop_per_fwd'] * 1e9, 0.9 * 2 * conv_macs)
    self.assertLess(r['gflop_per_fwd'] * 1e9, 1.5 * 2 * conv_macs)

  def test_markdown_tables_in_stdout(self):
    out = self.proc.stdout
    env = self.result['environment']
    self.assertIn(f"jax {env['jax']}", out)
    self.assertIn(env['device'], out)
    self.assertIn('| ' + ' | '.join(benchmarks.NETWORK_COLUMNS) + ' |', out)
    self.assertIn('| ' + ' | '.join(benchmarks.PROGRAM_COLUMNS) + ' |', out)
    self.assertIn('| tiny | 1 | float32 | default | auto | 20 |', out)
    self.assertNotIn('Operators at', out)  # No operator table in quick mode.


class FailuresTest(absltest.TestCase):
  """A failing measurement (out of memory, say) is reported and the others still run and save."""

  def test_failed_row_is_recorded_and_the_rest_saved(self):
    script = os.path.join(ROOT, 'scripts', 'benchmark.py')
    planted = (
        'import runpy, sys\n'
        'from unittest import mock\n'
        'from ddrm_jax import benchmarks\n'
        'real = benchmarks.network_row\n'
        'def row(case, **kw):\n'
        '  if case.dtype == "bfloat16":\n'
        '    raise RuntimeError("RESOURCE_EXHAUSTED: planted\\nsecond line")\n'
        '  return real(case, **kw)\n'
        'with mock.patch.object(benchmarks, "network_row", row):\n'
        f'  sys.argv = [{script!r}] + sys.argv[1:]\n'
        f'  runpy.run_path({script!r}, run_name="__main__")\n')
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, 'out.json')
      proc = subprocess.run([sys.executable, '-c', planted, '--quick', '--steps=4',
                             '--dtype=bfloat16,float32', f'--json={path}'], cwd=tmp,
                            env={**os.environ, 'PYTHONPATH': ROOT}, capture_output=True,
                            text=True, timeout=300, check=False)
      self.assertEqual(proc.returncode, 1, proc.stderr[-2000:])
      with open(path) as f:
        result = json.load(f)
    self.assertEqual([(r['network'], r['dtype']) for r in result['networks']],
                     [('tiny', 'float32')])  # Measured after the failure, and saved.
    self.assertEqual(result['failed'], [{'case': 'tiny batch 1 bfloat16 default attention auto',
                                         'error': 'RuntimeError: RESOURCE_EXHAUSTED: planted'}])
    self.assertIn('FAILED tiny batch 1 bfloat16 default', proc.stdout)
    self.assertIn('| tiny | 1 | float32 |', proc.stdout)

  def test_unwritable_json_fails_before_any_work(self):
    with tempfile.TemporaryDirectory() as tmp:
      proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'benchmark.py'),
                             '--quick', f'--json={tmp}/no/such/dir/out.json'], cwd=tmp,
                            capture_output=True, text=True, timeout=120, check=False)
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn('cannot write', proc.stderr)
    self.assertNotIn('Traceback', proc.stderr)
    self.assertNotIn('measured', proc.stdout)


class HelpersTest(absltest.TestCase):

  def test_lowered_flops_of_a_convolution(self):
    # The pre-optimisation count, which GPUs' cuDNN custom calls cannot hide.
    x, w = jnp.ones((2, 10, 12, 8)), jnp.ones((3, 3, 8, 4))
    self.assertEqual(benchmarks.lowered_flops(jax.jit(_conv), x, w), 2 * 2 * 8 * 10 * 3 * 3 * 8 * 4)

  def test_network_flops_count_attention_as_xla_einsums(self):
    config = benchmarks.network_config('tiny')
    params = benchmarks.random_params(config)
    net = benchmarks.denoiser(config, 'float32')
    x = jnp.zeros((2, config.image_size, config.image_size, config.in_channels))
    t = jnp.zeros((2,), jnp.int32)
    with layers.attention_implementation('xla'):
      xla = benchmarks.lowered_flops(jax.jit(benchmarks.denoiser(config, 'float32')),
                                     params, x, t)
    # A trace of `net` itself without attention's arithmetic, which jit would reuse.
    with mock.patch.object(layers, 'attention', lambda q, k, v, scale: q):
      without = benchmarks.lowered_flops(jax.jit(net), params, x, t)
    self.assertLess(without, xla)
    self.assertEqual(benchmarks.network_flops(net, params, x, t), xla)
    # Under the cuDNN setting too (tracing cuDNN's attention fails on a CPU).
    with layers.attention_implementation('cudnn'):
      self.assertEqual(benchmarks.network_flops(net, params, x, t), xla)

  def test_loop_structure_tells_loops_unrolled_code_and_callbacks_apart(self):
    x, w = jnp.ones((1, 8, 8, 4)), jnp.full((3, 3, 4, 4), 0.01)
    same = lambda c, w: jnp.pad(jnp.tanh(_conv(c, w)), ((0, 0), (1, 1), (1, 1), (0, 0)))

    def scanned(w, x):
      return jax.lax.scan(lambda c, _: (same(c, w), None), x, None, length=5)[0]

    def unrolled(w, x):
      for _ in range(5):
        x = same(x, w)
      return x

    def with_callback(w, x):
      def body(c, _):
        c = jax.pure_callback(lambda a: np.asarray(a) * 2,
                              jax.ShapeDtypeStruct(c.shape, c.dtype), c)
        return same(c, w), None
      return jax.lax.scan(body, x, None, length=5)[0]

    s = benchmarks.loop_structure(jax.jit(scanned).lower(w, x).compile())
    self.assertIn(5, s['trip_counts'])
    self.assertEqual((s['convolutions'], s['host_transfers']), (1, 0))
    u = benchmarks.loop_structure(jax.jit(unrolled).lower(w, x).compile())
    self.assertNotIn(5, u['trip_counts'])
    self.assertEqual(u['convolutions'], 5)
    c = benchmarks.loop_structure(jax.jit(with_callback).lower(w, x).compile())
    self.assertGreater(c['host_transfers'], 0)

  def test_random_params_match_shapes_and_scale(self):
    params = benchmarks.random_params(benchmarks.TINY, seed=3)
    shapes = configs.param_shapes(benchmarks.TINY)
    self.assertEqual(jax.tree.structure(params), jax.tree.structure(shapes))
    for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(shapes)):
      self.assertEqual((p.shape, p.dtype), (s.shape, jnp.float32))
      self.assertTrue(np.all(np.isfinite(p)))
    np.testing.assert_array_equal(params['norm_out']['scale'], np.ones(32))
    np.testing.assert_array_equal(params['norm_out']['bias'], np.zeros(32))
    kernel = np.asarray(params['up_0_block_0']['conv1']['kernel'])  # (3, 3, 96, 32)
    self.assertEqual(kernel.shape, (3, 3, 96, 32))
    self.assertAlmostEqual(float(kernel.std()) * math.sqrt(3 * 3 * 96), 1.0, delta=0.05)
    again = benchmarks.random_params(benchmarks.TINY, seed=3)
    np.testing.assert_array_equal(kernel, again['up_0_block_0']['conv1']['kernel'])

  def test_peak_flops(self):
    h100 = 'NVIDIA H100 80GB HBM3'
    self.assertEqual(benchmarks.peak_flops(h100, 'gpu', 'bfloat16', 'default'), 989e12)
    self.assertEqual(benchmarks.peak_flops(h100, 'gpu', 'float32', 'highest'), 67e12)
    self.assertEqual(benchmarks.peak_flops(h100, 'gpu', 'float32', 'default'), 495e12)
    self.assertEqual(benchmarks.peak_flops('NVIDIA H100 PCIe', 'gpu', 'bfloat16', 'default'),
                     756e12)
    self.assertEqual(benchmarks.peak_flops('cpu', 'cpu', 'bfloat16', 'default', 100.0), 100e9)
    self.assertIsNone(benchmarks.peak_flops('Some GPU', 'gpu', 'float32', 'default'))

  def test_bad_cases_raise(self):
    good = dict(network='tiny', batch=1)
    benchmarks.check_case(benchmarks.Case(**good))
    for bad, message in [({'network': 'classifier_256'}, 'classifier'),
                         ({'network': 'nope'}, 'unknown network'),
                         ({'dtype': 'int8'}, 'dtype'),
                         ({'precision': 'fast'}, 'precision'),
                         ({'deg': 'sr3'}, 'unknown degradation'),
                         ({'batch': 0}, 'batch'),
                         ({'steps_timed': 21}, 'steps_timed'),
                         ({'statistic': 'mean'}, 'statistic')]:
      with self.assertRaisesRegex(ValueError, message):
        benchmarks.check_case(benchmarks.Case(**{**good, **bad}))

  def test_time_call_counts_calls(self):
    calls = []
    fn = lambda: calls.append(1) or jnp.zeros(())
    benchmarks.time_call(fn, repeats=3)
    self.assertLen(calls, 4)  # One warm-up call, then `repeats` timed calls.

  def test_markdown_table(self):
    rows = [{'a': 'x', 'b': 1.23456, 'c': 0.012345, 'd': None, 'e': float('nan'), 'f': 7}]
    self.assertEqual(benchmarks.markdown_table(rows).splitlines(),
                     ['| a | b | c | d | e | f |', '|---|---|---|---|---|---|',
                      '| x | 1.23 | 0.0123 | n/a | n/a | 7 |'])

  def test_operator_table(self):
    rows = benchmarks.operator_table(['sr2', 'color'], (4, 4, 3), repeats=1, build_repeats=1)
    self.assertEqual([r['name'] for r in rows], ['sr2', 'color'])
    self.assertEqual(rows[1]['y_shape'], (4, 4, 1))
    for r in rows:
      for k in ('build_first_ms', 'build_ms', 'H_ms', 'round_trip_ms'):
        self.assertGreater(r[k], 0.0)
    table = benchmarks.markdown_table(rows).splitlines()
    self.assertLen(table, 4)
    self.assertTrue(table[2].startswith('| sr2 | (2, 2, 3) |'))

  def test_solver_rows(self):
    rows = benchmarks.solver_rows(('ddnm', 'dps'), steps=2, repeats=1)
    self.assertEqual([r['method'] for r in rows], ['ddnm', 'dps'])
    for r in rows:
      self.assertEqual((r['network'], r['batch'], r['deg'], r['steps']), ('tiny', 1, 'sr4', 2))
      for k in ('step_ms', 'fwd_ms', 'step_vs_fwd', 'overhead_ms', 'overhead_pct_of_fwd'):
        self.assertGreater(r[k], 0.0, k)
        self.assertTrue(math.isfinite(r[k]), k)
      self.assertAlmostEqual(r['step_vs_fwd'], r['step_ms'] / r['fwd_ms'], places=6)
      self.assertAlmostEqual(r['overhead_pct_of_fwd'], 100 * r['overhead_ms'] / r['fwd_ms'],
                             places=6)
    table = benchmarks.markdown_table(rows, benchmarks.SOLVER_COLUMNS).splitlines()
    self.assertTrue(table[2].startswith('| ddnm | tiny | 1 | sr4 | 2 |'))
    with self.assertRaisesRegex(ValueError, 'unknown methods'):
      benchmarks.solver_rows(('ddpm',))

  def test_blind_row(self):
    row = benchmarks.blind_row(kernel_size=3, steps=2, repeats=1)
    self.assertEqual((row['network'], row['batch'], row['kernel_size'], row['steps'],
                      row['passes'], row['chains']), ('tiny', 1, 3, 2, 2, 4))
    for k in ('blind_ms', 'nonblind_ms', 'blind_vs_nonblind'):
      self.assertGreater(row[k], 0.0, k)
      self.assertTrue(math.isfinite(row[k]), k)
    self.assertAlmostEqual(row['blind_vs_nonblind'], row['blind_ms'] / row['nonblind_ms'],
                           places=6)
    self.assertAlmostEqual(row['blind_vs_nonblind_per_pass'], row['blind_vs_nonblind'] / 2,
                           places=6)
    table = benchmarks.markdown_table([row], benchmarks.BLIND_COLUMNS).splitlines()
    self.assertTrue(table[2].startswith('| tiny | 1 | 3 | 2 | 2 | 4 |'))
    with self.assertRaisesRegex(ValueError, 'kernel_size'):
      benchmarks.blind_row(kernel_size=4, steps=2)

  def test_overhead_table(self):
    rows = benchmarks.overhead_table(['sr2', 'deno'], (8, 8, 3), steps=3, repeats=1)
    self.assertLen(rows, 2)
    for r in rows:
      self.assertGreater(r['ddrm_overhead_ms'], 0.0)


if __name__ == '__main__':
  absltest.main()
