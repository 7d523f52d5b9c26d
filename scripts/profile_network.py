"""Where the network's time goes on this device: a profiler trace of the bare network call,
summed by kind of kernel (convolution, matmul, fused attention, reductions, other fusions).

  python scripts/profile_network.py --network=imagenet_256 --batch=32 --dtype=bfloat16
  python scripts/profile_network.py --network=tiny --host      # a CPU: the host's XLA ops

Prints markdown tables; `--json` also writes them. Params are random (`benchmarks.random_params`).
"""

import os
import sys
import tempfile

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp

from ddrm_jax import benchmarks
from ddrm_jax import profiling
from ddrm_jax import runner
from ddrm_jax.models import layers

_NETWORK = flags.DEFINE_enum('network', 'imagenet_256', list(benchmarks.NETWORKS), 'Network.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Batch size.', lower_bound=1)
_DTYPE = flags.DEFINE_enum('dtype', 'bfloat16', list(benchmarks.DTYPES), 'Compute dtype.')
_PRECISION = flags.DEFINE_enum('precision', 'default', list(benchmarks.PRECISIONS),
                               'Matmul precision.')
_ATTENTION = flags.DEFINE_enum('attention', 'auto', list(layers.ATTENTION_IMPLEMENTATIONS),
                               'Self-attention implementation.')
_CALLS = flags.DEFINE_integer('calls', 3, 'Traced calls.', lower_bound=1)
_TOP = flags.DEFINE_integer('top', 25, 'Kernels listed.', lower_bound=1)
_HOST = flags.DEFINE_bool('host', False, "Sum the host's events (a CPU) instead of the "
                          "device's kernels.")
_JSON = flags.DEFINE_string('json', None, 'Also write the tables to this JSON file.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = benchmarks.network_config(_NETWORK.value)
  params = benchmarks.random_params(config)
  net = benchmarks.denoiser(config, _DTYPE.value)
  size, channels = config.image_size, config.in_channels
  x = jax.random.normal(jax.random.key(0), (_BATCH.value, size, size, channels), jnp.float32)
  t = jnp.full((_BATCH.value,), 500, jnp.int32)
  with jax.default_matmul_precision(_PRECISION.value), \
      layers.attention_implementation(_ATTENTION.value):
    fwd = jax.jit(net).lower(params, x, t).compile()
  seconds = benchmarks.time_call(fwd, params, x, t, repeats=3)
  with tempfile.TemporaryDirectory() as log_dir:
    path = profiling.trace_calls(fwd, (params, x, t), log_dir, calls=_CALLS.value)
    times = profiling.kernel_times(path, '/host:' if _HOST.value else '/device:')
  if not times:
    raise app.UsageError('the trace holds no events of that kind of process (try --host on a '
                         'CPU)')
  kinds, kernels = profiling.summary(times, top=_TOP.value)
  env = benchmarks.environment()
  flops = benchmarks.network_flops(net, params, x, t)
  print(f'# {_NETWORK.value} batch {_BATCH.value} {_DTYPE.value} {_PRECISION.value} attention '
        f'{_ATTENTION.value}: {1e3 * seconds:.1f} ms per call, {flops / seconds / 1e12:.1f} '
        f'TFLOP/s; {benchmarks.header(env)}')
  busy = sum(times.values()) / _CALLS.value / 1e3
  print(f'kernel time per call {busy:.1f} ms ({100 * busy / (1e3 * seconds):.0f}% of the call)')
  print()
  print(benchmarks.markdown_table(kinds))
  print()
  print(benchmarks.markdown_table(kernels))
  if _JSON.value:  # Atomically: a reader never sees half a file.
    runner.write_json(_JSON.value, {'environment': env, 'ms_per_call': 1e3 * seconds,
                                    'kinds': kinds, 'kernels': kernels})


if __name__ == '__main__':
  app.run(main)
