"""Where a network's time goes: a `jax.profiler` trace summed by kernel and by kind of kernel.

`trace_calls(fn, args, log_dir)` records a few calls of a compiled function with
`jax.profiler.trace(..., create_perfetto_trace=True)`; `kernel_times(path)` reads the Perfetto
JSON it writes and sums the durations of the device's events by name; `summary(times)` groups
them into kinds (convolution, matmul, fused attention, reductions such as GroupNorm's
statistics, other fusions) by their names. Used by `scripts/profile_network.py`.
"""

import collections
import glob
import gzip
import json
import os
import re

import jax

# Kinds of kernel by name, first match wins (cuDNN, cuBLAS/CUTLASS and XLA's own kernel names).
KINDS = (
    ('attention', re.compile(r'sdpa|flash|fmha|attn|attention', re.I)),
    ('convolution', re.compile(r'fprop|dgrad|wgrad|conv|implicit_?gemm|winograd|fft', re.I)),
    ('matmul', re.compile(r'gemm|cublas|cutlass|xmma|matmul|dot|wgmma', re.I)),
    ('reduction', re.compile(r'reduce|reduction', re.I)),
    ('copy/transpose', re.compile(r'copy|transpose|memcpy|memset', re.I)),
    ('other fusion', re.compile(r'fusion|loop|triton', re.I)),
)


def kind_of(name):
  """The kind of a kernel named `name` ('other' if no pattern matches)."""
  for kind, pattern in KINDS:
    if pattern.search(name):
      return kind
  return 'other'


def trace_calls(fn, args, log_dir, calls=3):
  """Runs `fn(*args)` once untraced, then `calls` times under the profiler; returns the path of
  the Perfetto trace (`.json.gz`) written under `log_dir`."""
  jax.block_until_ready(fn(*args))
  with jax.profiler.trace(log_dir, create_perfetto_trace=True):
    for _ in range(calls):
      jax.block_until_ready(fn(*args))
  found = sorted(glob.glob(os.path.join(log_dir, '**', 'perfetto_trace.json.gz'),
                           recursive=True), key=os.path.getmtime)
  if not found:
    raise RuntimeError(f'the profiler wrote no perfetto_trace.json.gz under {log_dir}')
  return found[-1]


def kernel_times(path, process_prefix='/device:'):
  """{event name: total microseconds} of the complete events ('X') of the processes whose name
  starts with `process_prefix` ('/device:' for GPU/TPU kernels, '/host:' for a CPU's)."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rt') as f:
    data = json.load(f)
  events = data['traceEvents'] if isinstance(data, dict) else data
  pids = {e['pid'] for e in events
          if e.get('ph') == 'M' and e.get('name') == 'process_name'
          and str(e.get('args', {}).get('name', '')).startswith(process_prefix)}
  # A GPU's process also has 'XLA Modules' / 'XLA Ops' lines that span the kernels of its
  # 'Stream #...' lines: count only the streams where there are any.
  streams = {(e['pid'], e['tid']) for e in events
             if e.get('ph') == 'M' and e.get('name') == 'thread_name' and e.get('pid') in pids
             and str(e.get('args', {}).get('name', '')).startswith('Stream')}
  totals = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and e.get('pid') in pids and (
        not streams or (e['pid'], e.get('tid')) in streams):
      totals[e['name']] += float(e.get('dur', 0.0))
  return dict(totals)


def summary(times, top=25):
  """(rows by kind, rows of the `top` kernels): dicts with the microseconds and the % of the
  total, largest first."""
  total = sum(times.values()) or 1.0
  by_kind = collections.Counter()
  for name, us in times.items():
    by_kind[kind_of(name)] += us
  kinds = [{'kind': k, 'us': us, 'pct': 100.0 * us / total} for k, us in by_kind.most_common()]
  kernels = [{'kernel': name[:90], 'kind': kind_of(name), 'us': us, 'pct': 100.0 * us / total}
             for name, us in collections.Counter(times).most_common(top)]
  return kinds, kernels
