"""Cost and memory of DDRM on images larger than the network (`--resize=tile`), batch 1.

Per image size and `--tiles_per_call`: seconds per DDRM step against the tiles' network calls
(one tile at a time, and all tiles in one call) and the program's temporary memory, with the
bundled 64x64 prior (or `--ckpt`). The issue's bound: a step costs at most 1.1x (tiles x one
tile's network call).

  python scripts/tile_benchmark.py --sizes=128x160,256x256 --tiles_per_call=0,5
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from ddrm_jax import benchmarks
from ddrm_jax import bundled
from ddrm_jax import checkpoints
from ddrm_jax import tiling

_CKPT = flags.DEFINE_string('ckpt', None, 'Checkpoint directory (default: the bundled prior).')
_SIZES = flags.DEFINE_list('sizes', ['128x160', '256x256'], 'Image sizes HxW.')
_PER_CALL = flags.DEFINE_list('tiles_per_call', ['0', '5'], 'Tiles per network call (0: all).')
_DEG = flags.DEFINE_string('deg', 'sr4', 'Degradation.')
_STEPS = flags.DEFINE_integer('steps', 3, 'DDRM steps per timed call.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls of each program.')
_STATISTIC = flags.DEFINE_enum('statistic', 'min', ['min', 'median'], 'Of the timed calls (min on '
                               'a shared machine).')


def main(argv):
  del argv
  net, params, config = checkpoints.load_model(_CKPT.value or bundled.PRIOR)
  sizes = [tuple(int(v) for v in s.lower().split('x')) for s in _SIZES.value]
  per_call = [int(v) or None for v in _PER_CALL.value]
  rows = benchmarks.tiling_rows(net, params, config.image_size, sizes, per_call, deg=_DEG.value,
                                steps=_STEPS.value, repeats=_REPEATS.value,
                                statistic=_STATISTIC.value)
  print(benchmarks.header(benchmarks.environment()))
  print(f'{_DEG.value}, {config.image_size}x{config.image_size} tiles, overlap '
        f'{tiling.default_overlap(config.image_size)}, {_STEPS.value} steps per timed call, {_STATISTIC.value} of '
        f'{_REPEATS.value} calls\n')
  print(benchmarks.markdown_table(rows))


if __name__ == '__main__':
  app.run(main)
