"""Blind deblurring quality on camera-shake kernels the method was not tuned on.

Kernels come from a generator of this script's own, unlike `operators.motion_kernel`: a shaking
camera (a damped random walk of the velocity with rare jerks), long thin straight lines and
circular arcs, each traversed at a randomly varying speed (the exposure dwells where the camera
slows), rendered by sub-pixel splatting on an 8x supersampled grid and centred by their centre of
mass (the convention that registers a blurry photo with its sharp original). `--kernel_seeds`
draws a set (the test tables in docs/blind.md are seeds 2 and 3; the defaults were chosen on
seeds 1 and 4, with `--options` passing variants of `sample_blind`'s settings).

Every kernel blurs every held-out photo (default: the 6 bundled samples with the bundled prior)
circularly, noise sigma_y; `blind.sample_blind` restores each without its kernel, and non-blind
DDRM with the true kernel (as it is, and refined by `blind.refine`) gives the ceiling. Prints a
markdown table: per kernel, the kernel NCC at the best integer shift (mean over photos and
seeds, and the worst photo) and the PSNR gain over the blurry input (mean, and the worst
photo), and that gain with the restoration and the blurry input each at its best sub-pixel
shift (`metrics.aligned_psnr`: a blind estimate is defined up to a translation); then the time
of blind against non-blind DDRM at the same steps. `--figure` writes
blurry | restored | original | true kernel | estimate; `--json` the rows, per photo too.

  python scripts/blind_quality.py --kernel_seeds=2,3 --seeds=0,1 --figure=docs/blind_grid.png
  python scripts/blind_quality.py --kernel_seeds=1,4 --seeds=0 --options=spread=0.2 --ceiling=false
  python scripts/blind_quality.py --kernel_seeds=1,4 --seeds=0 --only=1.2,4.5 --timing=false
"""

import ast
import inspect
import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageDraw

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
_KERNEL_SIZE = flags.DEFINE_integer('kernel_size', 7, 'Kernel size (odd), true and estimated.')
_KERNELS = flags.DEFINE_integer('kernels', 6, 'Kernels per set.')
_KERNEL_SEEDS = flags.DEFINE_list('kernel_seeds', ['2', '3'], 'Kernel sets (1: development).')
_SIGMA_Y = flags.DEFINE_float('sigma_y', 0.02, 'Noise std in [0, 1] image units.')
_STEPS = flags.DEFINE_integer('steps', 20, 'DDRM steps per chain.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1'], 'Sampler seeds.')
_FIGURE = flags.DEFINE_string('figure', None, 'PNG: blurry | restored | original | kernels.')
_OPTIONS = flags.DEFINE_list('options', [], 'sample_blind settings as name=value (Python '
                             'literals), e.g. passes=3,prune=0.05: variants on a development set.')
_CEILING = flags.DEFINE_bool('ceiling', True, 'Also run non-blind DDRM with the true kernel.')
_TIMING = flags.DEFINE_bool('timing', True, 'Time blind against non-blind DDRM at the end.')
_JSON = flags.DEFINE_string('json', None, 'Also write the per-kernel rows (and per photo) here.')
_ONLY = flags.DEFINE_list('only', [], 'Run only these kernels of the sets, named set.index '
                          '(e.g. 1.2,4.5): a variant tried on the hard cases first.')

KINDS = ('shake', 'line', 'arc', 'shake', 'shake', 'arc', 'line', 'shake')


def _render(points, weights, size, supersample=8):
  """Trajectory points (N, 2) in pixels (centre tap at (size - 1) / 2) splatted bilinearly on a
  supersampled grid with their exposure weights, then summed into pixels; sum 1."""
  fine = np.zeros((size * supersample, size * supersample))
  p = (points + 0.5) * supersample - 0.5
  base = np.floor(p).astype(int)
  frac = p - base
  for di in (0, 1):
    for dj in (0, 1):
      w = (frac[:, 0] if di else 1 - frac[:, 0]) * (frac[:, 1] if dj else 1 - frac[:, 1])
      i, j = base[:, 0] + di, base[:, 1] + dj
      ok = (i >= 0) & (i < fine.shape[0]) & (j >= 0) & (j < fine.shape[1])
      np.add.at(fine, (i[ok], j[ok]), (w * weights)[ok])
  k = fine.reshape(size, supersample, size, supersample).sum((1, 3))
  return (k / k.sum()).astype(np.float32)


def _trajectory(rng, kind, n=400):
  """(points (n, 2), exposure weights (n,)) of one camera path of unit extent."""
  t = np.linspace(0.0, 1.0, n)
  if kind == 'line':
    a = rng.uniform(0, np.pi)
    points = np.stack([t * np.cos(a), t * np.sin(a)], 1)
  elif kind == 'arc':
    theta = rng.uniform(0, 2 * np.pi) + rng.uniform(0.5, 1.5) * np.pi * t
    points = np.stack([np.cos(theta), np.sin(theta)], 1)
  else:  # A shaking hand: damped velocity, small accelerations, a rare jerk.
    v, x, points = rng.standard_normal(2), np.zeros(2), []
    for _ in range(n):
      acc = 0.3 * rng.standard_normal(2) + (rng.uniform() < 0.01) * 3 * rng.standard_normal(2)
      v = 0.98 * v + 0.1 * acc
      x = x + 0.01 * v
      points.append(x)
    points = np.array(points)
  weights = np.exp(2.1 * np.cumsum(rng.standard_normal(n)) / np.sqrt(n))
  return points, weights


def shake_kernels(seed, size, count=6):
  """(kernels (count, size, size), kinds): a kernel set (module docstring), numpy."""
  rng = np.random.default_rng(seed)
  kernels, kinds = [], [KINDS[i % len(KINDS)] for i in range(count)]
  for kind in kinds:
    extent = rng.uniform(*((0.6, 0.85) if kind == 'line' else (0.45, 0.8))) * (size - 1)
    points, weights = _trajectory(rng, kind)
    lo, hi = points.min(0), points.max(0)
    points = (points - lo) / max((hi - lo).max(), 1e-9) * extent
    centroid = (weights[:, None] * points).sum(0) / weights.sum()
    points = np.clip(points - centroid + (size - 1) / 2, 0, size - 1)
    kernels.append(_render(points, weights, size))
  return np.stack(kernels), kinds


def _kernel_view(k, size):
  """A kernel as a gray image of `size` (nearest neighbour), its maximum white."""
  k = np.asarray(k, np.float32) / max(float(np.max(k)), 1e-12)
  h = size[0] // k.shape[0]
  big = np.kron(k, np.ones((h, h), np.float32))
  out = np.zeros(size + (1,), np.float32)
  top, left = (size[0] - big.shape[0]) // 2, (size[1] - big.shape[1]) // 2
  out[top:top + big.shape[0], left:left + big.shape[1], 0] = big
  return out * 2.0 - 1.0


def _labelled(grid, names, cell, pad=2, band=14):
  """The grid as a PIL image with a white band on top naming its columns (default font)."""
  image = Image.fromarray(np.asarray(np.round(np.asarray(restore.model_to_unit(grid)) * 255),
                                     np.uint8))
  out = Image.new('RGB', (image.width, image.height + band), 'white')
  out.paste(image, (0, band))
  draw = ImageDraw.Draw(out)
  for j, name in enumerate(names):
    draw.text((pad + j * (cell + pad) + 2, 2), name, fill='black')
  return out


def parse_options(items):
  """{'name': value} from 'name=value' strings (values Python literals), for `sample_blind`;
  UsageError naming a malformed item or a name `sample_blind` does not take."""
  known = set(inspect.signature(blind.sample_blind).parameters) - {
      'model_fn', 'y', 'key', 'kernel_size', 'steps', 'sigma_y'}
  options = {}
  for item in items:
    name, sep, value = item.partition('=')
    if not sep or name not in known:
      raise app.UsageError(f'--options item {item!r} is not name=value with a name of '
                           f'sample_blind ({", ".join(sorted(known))})')
    try:
      options[name] = ast.literal_eval(value)
    except (ValueError, SyntaxError) as e:
      raise app.UsageError(f'--options {name}: {value!r} is not a Python literal') from e
  return options


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  options = parse_options(_OPTIONS.value)
  kernel_seeds = [int(s) for s in _KERNEL_SEEDS.value]
  names = {f'{s}.{i}' for s in kernel_seeds for i in range(_KERNELS.value)}
  unknown = sorted(set(_ONLY.value) - names)
  if unknown:
    raise app.UsageError(f'--only {",".join(unknown)}: not a kernel of --kernel_seeds '
                         f'{",".join(map(str, kernel_seeds))} x --kernels {_KERNELS.value} '
                         '(names are set.index, e.g. 2.0)')
  fn, params, config = checkpoints.load_model(_CKPT.value or bundled.PRIOR)
  _, images = image_io.read_images(_INPUT.value or bundled.SAMPLES, config.in_channels)
  photos = jnp.asarray(images, jnp.float32)
  size, shape = _KERNEL_SIZE.value, tuple(photos.shape[1:])
  sigma_y = 2.0 * _SIGMA_Y.value  # Model units.
  unit = restore.model_to_unit

  def non_blind(p, kernels, y, key):
    op = jax.vmap(lambda k: operators.circular_blur(k, shape))(kernels)
    return sampler.sample(lambda a, t: fn(p, a, t), op, y, key, steps=_STEPS.value,
                          sigma_y=sigma_y, batched_op=True)

  def blind_run(p, y, key):
    return blind.sample_blind(lambda a, t: fn(p, a, t), y, key, size, steps=_STEPS.value,
                              sigma_y=sigma_y, **options)

  non_blind, blind_run = jax.jit(non_blind), jax.jit(blind_run)
  blur = jax.vmap(lambda k, x: operators.circular_blur(k, shape, zero_threshold=0.0).H(x))
  rows, figure_rows = [], []
  for kernel_seed in kernel_seeds:
    kernels, kinds = shake_kernels(kernel_seed, size, _KERNELS.value)
    for i, kind in enumerate(kinds):
      if _ONLY.value and f'{kernel_seed}.{i}' not in _ONLY.value:
        continue
      truth = jnp.broadcast_to(jnp.asarray(kernels[i]), (photos.shape[0], size, size))
      y = blur(truth, photos)
      y = y + sigma_y * jax.random.normal(jax.random.key(10000 * kernel_seed + i), y.shape)
      blurry = np.asarray(metrics.psnr(unit(y), unit(photos)))
      blurry_aligned = np.asarray(metrics.aligned_psnr(unit(y), unit(photos))[0])
      ncc, gain, aligned, ceiling, refined = [], [], [], [], []
      for seed in [int(s) for s in _SEEDS.value]:
        key = jax.random.key(seed)
        restored, estimates = jax.block_until_ready(blind_run(params, y, key))
        gain.append(np.asarray(metrics.psnr(unit(restored), unit(photos))) - blurry)
        aligned.append(np.asarray(metrics.aligned_psnr(unit(restored), unit(photos))[0])
                       - blurry_aligned)
        ncc.append([blind.kernel_ncc(e, kernels[i]) for e in np.asarray(estimates)])
        if _CEILING.value:
          x = non_blind(params, truth, y, key)
          ceiling.append(np.asarray(metrics.psnr(unit(x), unit(photos))) - blurry)
          x = jax.vmap(lambda a, k, b: blind.refine(a, k, b, sigma_y))(x, truth, y)
          refined.append(np.asarray(metrics.psnr(unit(x), unit(photos))) - blurry)
        if seed == int(_SEEDS.value[0]) and kernel_seed == kernel_seeds[0]:
          j = i % photos.shape[0]
          figure_rows.append([y[j], restored[j], photos[j], _kernel_view(kernels[i], shape[:2]),
                              _kernel_view(estimates[j], shape[:2])])
      # Per photo, mean over seeds.
      ncc, gain, aligned = np.mean(ncc, 0), np.mean(gain, 0), np.mean(aligned, 0)
      rows.append(dict(name=f'{kernel_seed}.{i} {kind}', ncc=ncc.mean(), ncc_min=ncc.min(),
                       photo_ncc=ncc.tolist(), photo_gain=gain.tolist(),
                       gain=gain.mean(), gain_min=gain.min(), blurry=blurry.mean(),
                       aligned=aligned.mean(), aligned_min=aligned.min(),
                       photo_aligned=aligned.tolist(),
                       ceiling=np.mean(ceiling) if ceiling else np.nan,
                       refined=np.mean(refined) if refined else np.nan))
      print(' '.join(f'{k} {v:.3f}' if not isinstance(v, str) else v
                     for k, v in rows[-1].items() if not k.startswith('photo_')),
            'per photo: gain', np.round(gain, 2).tolist(), 'ncc', np.round(ncc, 2).tolist(),
            flush=True)
  times = None
  if _TIMING.value:
    y = blur(jnp.broadcast_to(jnp.asarray(kernels[0]), (photos.shape[0], size, size)), photos)
    key = jax.random.key(0)
    times = benchmarks.time_interleaved({'blind': (blind_run, (params, y, key)),
                                         'non_blind': (non_blind, (params, truth, y, key))},
                                        repeats=3)
  print()
  print(f'{photos.shape[0]} photos per kernel, {size}x{size} kernels, sigma_y {_SIGMA_Y.value}, '
        f'{_STEPS.value} steps, seeds {",".join(_SEEDS.value)}; NCC at the best integer shift, '
        'PSNR gain over the blurry input (dB); mean over photos and seeds, and the worst photo '
        '(its mean over seeds); aligned: the restoration and the blurry input each at its best '
        'sub-pixel shift (`metrics.aligned_psnr`)')
  print()
  print('| kernel | blurry PSNR | kernel NCC | worst photo NCC | PSNR gain | worst photo gain | '
        'gain, aligned | worst photo, aligned | gain with the true kernel | the same, refined |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for r in rows:
    print(f"| {r['name']} | {r['blurry']:.2f} | {r['ncc']:.3f} | {r['ncc_min']:.2f} | "
          f"{r['gain']:+.2f} | {r['gain_min']:+.2f} | {r['aligned']:+.2f} | "
          f"{r['aligned_min']:+.2f} | {r['ceiling']:+.2f} | {r['refined']:+.2f} |")
  mean = lambda k: np.mean([r[k] for r in rows])
  print(f"| all ({len(rows)}) | {mean('blurry'):.2f} | {mean('ncc'):.4f} | "
        f"{min(r['ncc_min'] for r in rows):.2f} | {mean('gain'):+.2f} | "
        f"{min(r['gain_min'] for r in rows):+.2f} | {mean('aligned'):+.2f} | "
        f"{min(r['aligned_min'] for r in rows):+.2f} | {mean('ceiling'):+.2f} | "
        f"{mean('refined'):+.2f} |")
  gaining = sum(r['gain'] >= 1.0 for r in rows)
  print()
  print(f'kernels with a mean gain of at least +1 dB: {gaining} of {len(rows)} (aligned: '
        f'{sum(r["aligned"] >= 1.0 for r in rows)})')
  print()
  if times:
    ratio = min(times['blind']) / min(times['non_blind'])
    print(f'time: blind {min(times["blind"]):.2f} s, non-blind {min(times["non_blind"]):.2f} s '
          f'({ratio:.2f}x, {photos.shape[0]} images, min of 3 interleaved calls)')
  if _JSON.value:
    summary = {'options': {k: repr(v) for k, v in options.items()}, 'rows': [
        {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in r.items()}
        for r in rows], 'mean_ncc': float(mean('ncc')), 'mean_gain': float(mean('gain')),
        'mean_aligned_gain': float(mean('aligned')),
        'kernels_gaining_1db': int(gaining)}
    image_io.atomic_write(_JSON.value, lambda f: json.dump(summary, f, indent=1), binary=False)
  if _FIGURE.value:
    grid = image_io.make_grid(figure_rows, min_cell=128)
    names = ('blurry', 'restored', 'original', 'true kernel', 'estimate')
    figure = _labelled(grid, names, grid.shape[1] // len(names) - 2)
    image_io.atomic_write(_FIGURE.value, lambda f: figure.save(f, format='PNG'))


if __name__ == '__main__':
  app.run(main)
