"""Timing helpers behind scripts/benchmark.py (operators now; networks and sampler later).

Every timing is the median wall time of `repeats` calls of a jitted function, after one warm-up
call (compilation excluded), each ended by `jax.block_until_ready`.
"""

import statistics
import time

import jax
import jax.numpy as jnp

from ddrm_jax import operators


def environment():
  """Device and library versions, for the header of a results table."""
  dev = jax.devices()[0]
  return {'device': f'{dev.platform}: {dev.device_kind}', 'device_count': jax.device_count(),
          'jax': jax.__version__}


def time_call(fn, *args, repeats=10):
  """Median seconds of fn(*args) over `repeats` calls, after one warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _build_seconds(name, image_shape, repeats):
  """(first build, median of later builds) in seconds, arrays ready on the device."""
  times = []
  for _ in range(1 + repeats):
    start = time.perf_counter()
    op = jax.block_until_ready(operators.make(name, image_shape))
    times.append(time.perf_counter() - start)
  return op, times[0], statistics.median(times[1:])


@jax.jit
def _apply_h(op, x):
  return jax.vmap(op.H)(x)


@jax.jit
def _round_trip(op, x, y):
  """x -> V(Vt(x)) and y -> U(Ut(y)) on a batch (the four spectral maps)."""
  return jax.vmap(lambda a: op.V(op.Vt(a)))(x), jax.vmap(lambda b: op.U(op.Ut(b)))(y)


def operator_table(names=None, image_shape=(256, 256, 3), batch=1, repeats=10, build_repeats=3,
                   seed=0):
  """Times building each operator and applying it to a batch of images.

  Returns one dict per name: name, y_shape, build_first_ms (first build in this process, any
  one-off compilation included), build_ms (median of later builds), H_ms (jitted vmapped H),
  round_trip_ms (jitted V(Vt(x)) and U(Ut(y))). The operator is a jit argument, not a constant.
  """
  names = operators.NAMES if names is None else tuple(names)
  image_shape = tuple(image_shape)
  jax.block_until_ready(jnp.zeros(()))
  rows = []
  kx, ky = jax.random.split(jax.random.PRNGKey(seed))  # Also starts the backend before timing.
  x = jax.random.normal(kx, (batch,) + image_shape, jnp.float32)
  for name in names:
    op, first, build = _build_seconds(name, image_shape, build_repeats)
    y = jax.random.normal(ky, (batch,) + op.y_shape, jnp.float32)
    rows.append({
        'name': name,
        'y_shape': op.y_shape,
        'build_first_ms': 1e3 * first,
        'build_ms': 1e3 * build,
        'H_ms': 1e3 * time_call(_apply_h, op, x, repeats=repeats),
        'round_trip_ms': 1e3 * time_call(_round_trip, op, x, y, repeats=repeats),
    })
  return rows


def markdown_table(rows, columns=None):
  """Rows (dicts) as a Markdown table; floats with 2 decimals."""
  columns = list(rows[0]) if columns is None else list(columns)
  fmt = lambda v: f'{v:.2f}' if isinstance(v, float) else str(v)
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(fmt(r[c]) for c in columns) + ' |' for r in rows]
  return '\n'.join(lines)
