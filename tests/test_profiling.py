"""Tests of the trace summary behind scripts/profile_network.py (no speed asserted)."""

import gzip
import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
import jax
import jax.numpy as jnp

from ddrm_jax import profiling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _meta(kind, pid, name, tid=None):
  e = {'ph': 'M', 'name': kind, 'pid': pid, 'args': {'name': name}}
  if tid is not None:
    e['tid'] = tid
  return e


def _event(pid, tid, name, dur):
  return {'ph': 'X', 'pid': pid, 'tid': tid, 'name': name, 'ts': 0, 'dur': dur}


class KernelTimesTest(absltest.TestCase):

  def _write(self, events):
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    path = os.path.join(tmp.name, 'perfetto_trace.json.gz')
    with gzip.open(path, 'wt') as f:
      json.dump({'traceEvents': events}, f)
    return path

  def test_gpu_streams_counted_once_host_and_op_lines_left_out(self):
    events = [
        _meta('process_name', 1, '/host:CPU'), _meta('process_name', 2, '/device:GPU:0'),
        _meta('thread_name', 2, 'Stream #13(Compute)', tid=13),
        _meta('thread_name', 2, 'XLA Ops', tid=99),
        _event(1, 5, 'PjitFunction', 1000.0),
        _event(2, 13, 'sm90_xmma_fprop_implicit_gemm_bf16', 40.0),
        _event(2, 13, 'sm90_xmma_fprop_implicit_gemm_bf16', 20.0),
        _event(2, 13, 'cudnn_generated_fort_native_sdpa_sm90_flash', 10.0),
        _event(2, 13, 'input_reduce_fusion_3', 5.0),
        _event(2, 99, 'fusion.12', 75.0),  # Spans the kernels above: not counted again.
    ]
    times = profiling.kernel_times(self._write(events))
    self.assertEqual(times, {'sm90_xmma_fprop_implicit_gemm_bf16': 60.0,
                             'cudnn_generated_fort_native_sdpa_sm90_flash': 10.0,
                             'input_reduce_fusion_3': 5.0})
    kinds, kernels = profiling.summary(times, top=2)
    self.assertEqual([(k['kind'], k['us']) for k in kinds],
                     [('convolution', 60.0), ('attention', 10.0), ('reduction', 5.0)])
    self.assertAlmostEqual(sum(k['pct'] for k in kinds), 100.0)
    self.assertLen(kernels, 2)
    self.assertEqual(profiling.kernel_times(self._write(events), '/host:'),
                     {'PjitFunction': 1000.0})

  def test_kinds(self):
    for name, kind in (('cutlass3x_sm90_tensorop_gemm', 'matmul'), ('loop_add_fusion', 'other '
                       'fusion'), ('copy_transpose_2', 'copy/transpose'), ('mystery', 'other')):
      self.assertEqual(profiling.kind_of(name), kind, name)

  def test_trace_of_a_real_call_on_this_machine(self):
    f = jax.jit(lambda x: jnp.tanh(x @ x).sum())
    x = jnp.ones((64, 64))
    with tempfile.TemporaryDirectory() as d:
      path = profiling.trace_calls(f, (x,), d, calls=2)
      self.assertTrue(path.endswith('perfetto_trace.json.gz'))
      self.assertNotEmpty(profiling.kernel_times(path, '/host:'))

  def test_script_on_the_tiny_network(self):
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, 'profile.json')
      proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'profile_network.py'),
                             '--network=tiny', '--batch=1', '--dtype=float32', '--host',
                             '--calls=1', f'--json={path}'], capture_output=True, text=True,
                            timeout=300, check=False)
      self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
      self.assertIn('| kind | us | pct |', proc.stdout)
      self.assertIn('ms per call', proc.stdout)
      with open(path) as f:
        saved = json.load(f)
      self.assertNotEmpty(saved['kinds'])
      self.assertEqual(os.listdir(d), ['profile.json'])  # No temporary file left.


if __name__ == '__main__':
  absltest.main()
