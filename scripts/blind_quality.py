"""Blind deblurring quality: kernel NCC and PSNR/SSIM against the non-blind floor and ceiling.

The held-out images (default: the bundled samples with the bundled prior), each blurred by its own
camera-shake kernel (`operators.motion_kernel`, key 100 + i) as a circular convolution, noise
sigma_y; restored by `blind.sample_blind` without the kernel, and by non-blind DDRM with the true
kernel (the ceiling) and with the blind sampler's initial guess (the floor). Prints a markdown
table per seed and their mean; `--figure` writes blurry | restored | true kernel | estimate.

  python scripts/blind_quality.py --seeds=0,1,2 --figure=docs/blind_grid.png
"""

import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from ddrm_jax import benchmarks
from ddrm_jax import blind
from ddrm_jax import bundled
from ddrm_jax import checkpoints
from ddrm_jax import io as image_io
from ddrm_jax import metrics
from ddrm_jax import operators
from ddrm_jax import restore
from ddrm_jax import sampler

_CKPT = flags.DEFINE_string('ckpt', None, 'Checkpoint (default: the bundled prior).')
_INPUT = flags.DEFINE_string('input', None, 'Clean held-out images (default: bundled samples).')
_KERNEL_SIZE = flags.DEFINE_integer('kernel_size', 7, 'Kernel size (odd).')
_SIGMA_Y = flags.DEFINE_float('sigma_y', 0.02, 'Noise std in [0, 1] image units.')
_STEPS = flags.DEFINE_integer('steps', 20, 'DDRM steps per chain.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Sampler seeds (the blur is fixed).')
_FIGURE = flags.DEFINE_string('figure', None, 'PNG: blurry | restored | true | estimated kernel.')


def _kernel_view(k, size):
  """A kernel as a gray image of `size` (nearest neighbour), its maximum white."""
  k = np.asarray(k, np.float32) / max(float(np.max(k)), 1e-12)
  h = size[0] // k.shape[0]
  big = np.kron(k, np.ones((h, h), np.float32))
  out = np.zeros(size + (1,), np.float32)
  top, left = (size[0] - big.shape[0]) // 2, (size[1] - big.shape[1]) // 2
  out[top:top + big.shape[0], left:left + big.shape[1], 0] = big
  return out * 2.0 - 1.0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  fn, params, config = checkpoints.load_model(_CKPT.value or bundled.PRIOR)
  _, images = image_io.read_images(_INPUT.value or bundled.SAMPLES, config.in_channels)
  x = jnp.asarray(images, jnp.float32)
  batch, size = x.shape[0], _KERNEL_SIZE.value
  shape = tuple(x.shape[1:])
  sigma_y = 2.0 * _SIGMA_Y.value  # Model units.
  truth = jnp.stack([operators.motion_kernel(jax.random.key(100 + i), size)
                     for i in range(batch)])
  exact = jax.vmap(lambda k: operators.circular_blur(k, shape, zero_threshold=0.0))(truth)
  y = jax.vmap(lambda o, xi: o.H(xi))(exact, x)
  y = y + sigma_y * jax.random.normal(jax.random.key(12345), y.shape)

  def non_blind(p, kernels, y, key):
    op = jax.vmap(lambda k: operators.circular_blur(k, shape))(kernels)
    return sampler.sample(lambda a, t: fn(p, a, t), op, y, key, steps=_STEPS.value,
                          sigma_y=sigma_y, batched_op=True)

  def blind_run(p, y, key):
    return blind.sample_blind(lambda a, t: fn(p, a, t), y, key, size, steps=_STEPS.value,
                              sigma_y=sigma_y)

  non_blind, blind_run = jax.jit(non_blind), jax.jit(blind_run)
  unit = restore.model_to_unit
  score = lambda a: (float(jnp.mean(metrics.psnr(unit(a), unit(x)))),
                     float(jnp.mean(metrics.ssim(unit(a), unit(x)))))
  floor_kernels = jnp.broadcast_to(blind.gaussian_kernel2d(size), truth.shape)
  rows = []
  for seed in [int(s) for s in _SEEDS.value]:
    key = jax.random.key(seed)
    ceiling = non_blind(params, truth, y, key)
    floor = non_blind(params, floor_kernels, y, key)
    restored, estimates = jax.block_until_ready(blind_run(params, y, key))
    times = benchmarks.time_interleaved({'blind': (blind_run, (params, y, key)),
                                         'non_blind': (non_blind, (params, truth, y, key))},
                                        repeats=3)
    t_blind, t_non_blind = min(times['blind']), min(times['non_blind'])
    ncc = [blind.kernel_ncc(estimates[i], truth[i]) for i in range(batch)]
    rows.append({'seed': seed, 'blurry': score(y), 'floor': score(floor),
                 'ceiling': score(ceiling), 'blind': score(restored),
                 'ncc': float(np.mean(ncc)), 'ncc_min': float(np.min(ncc)),
                 'time_ratio': t_blind / t_non_blind})
    print(f'seed {seed}: ' + ', '.join(
        f'{k} {v[0]:.2f} dB / {v[1]:.3f}' if isinstance(v, tuple) else f'{k} {v:.3f}'
        for k, v in rows[-1].items() if k != 'seed'), flush=True)
    if _FIGURE.value and seed == int(_SEEDS.value[0]):
      grid = image_io.make_grid([[y[i], restored[i], _kernel_view(truth[i], shape[:2]),
                                  _kernel_view(estimates[i], shape[:2])]
                                 for i in range(batch)])
      grid = np.kron(grid, np.ones((2, 2, 1), np.float32))  # 64-pixel cells shown at 128.
      image_io.write_image(_FIGURE.value, grid)
  ncc_gauss = np.mean([blind.kernel_ncc(floor_kernels[i], truth[i]) for i in range(batch)])
  print()
  print(f'{batch} images, {size}x{size} camera-shake kernels, sigma_y {_SIGMA_Y.value}, '
        f'{_STEPS.value} steps; PSNR dB / SSIM, means over {len(rows)} seeds; '
        f'the initial Gaussian scores NCC {ncc_gauss:.3f}')
  print()
  print('| blurry input | non-blind, initial kernel (floor) | blind | non-blind, true kernel '
        '(ceiling) | kernel NCC (min) | time vs non-blind |')
  print('| --- | --- | --- | --- | --- | --- |')
  mean = lambda k, j: np.mean([r[k][j] for r in rows])
  cell = lambda k: f'{mean(k, 0):.2f} / {mean(k, 1):.3f}'
  print(f"| {cell('blurry')} | {cell('floor')} | {cell('blind')} | {cell('ceiling')} | "
        f"{np.mean([r['ncc'] for r in rows]):.3f} ({min(r['ncc_min'] for r in rows):.2f}) | "
        f"{np.mean([r['time_ratio'] for r in rows]):.2f}x |")


if __name__ == '__main__':
  app.run(main)
