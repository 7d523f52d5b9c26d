"""Times building and applying every degradation operator; prints a Markdown table.

  python scripts/benchmark.py --image_size=256 --channels=3 --batch=1
"""

from absl import app
from absl import flags

from ddrm_jax import benchmarks
from ddrm_jax import operators

_DEGS = flags.DEFINE_list('degs', list(operators.NAMES), 'Degradation names to time.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 256, 'Image height and width.')
_CHANNELS = flags.DEFINE_integer('channels', 3, 'Image channels.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Images per call (vmapped).')
_REPEATS = flags.DEFINE_integer('repeats', 20, 'Timed calls per measurement (median).')


def main(argv):
  del argv
  shape = (_IMAGE_SIZE.value, _IMAGE_SIZE.value, _CHANNELS.value)
  env = benchmarks.environment()
  rows = benchmarks.operator_table(_DEGS.value, shape, batch=_BATCH.value,
                                   repeats=_REPEATS.value)
  print(f"Operators at {shape}, batch {_BATCH.value}; device {env['device']} "
        f"(x{env['device_count']}), jax {env['jax']}; times in ms (median of {_REPEATS.value}).")
  print()
  print(benchmarks.markdown_table(rows))


if __name__ == '__main__':
  app.run(main)
