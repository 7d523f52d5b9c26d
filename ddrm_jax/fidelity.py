"""Restoration quality across compute dtypes: does bfloat16 restore as well as float32?

Each variant (compute dtype, matmul precision) restores the same images with the same per-image
keys, so the measurement noise and the sampler's noise are identical and only the network's
arithmetic differs. Every variant is compared with float32 at the highest matmul precision: the
change of the mean PSNR against the clean images (the bar for bfloat16 is 0.1 dB), and the PSNR of
each restoration against the float32 one (how far its chain drifted from float32's).

A DDRM chain is sensitive to small changes of the network's output in the coordinates that y does
not observe: rounding may steer it to another, equally likely restoration (most in colorization,
where two thirds of the coordinates are unobserved). So each degradation also gets a float32 row
with other keys (`keys='other'`): the change of the mean PSNR when the whole experiment is drawn
again, the scale below which a dtype's delta cannot be told from chance. More images or
`num_samples` (a posterior mean) shrink it.

The default network is the bundled prior (trained weights, so the check means something; random
weights would not) on the bundled held-out images; any checkpoint directory and images work.
"""

import jax
import numpy as np

from ddrm_jax import benchmarks
from ddrm_jax import checkpoints
from ddrm_jax import metrics
from ddrm_jax import operators
from ddrm_jax import restore
from ddrm_jax.models import configs

REFERENCE = ('float32', 'highest')
VARIANTS = (REFERENCE, ('float32', 'default'), ('bfloat16', 'default'))
DEGS = ('sr4', 'deblur_gauss', 'inp', 'deno', 'color')
MAX_DELTA_DB = 0.1  # The bar for bfloat16: mean PSNR within 0.1 dB of float32.
COLUMNS = ('deg', 'dtype', 'precision', 'keys', 'images', 'samples', 'psnr', 'delta_db',
           'psnr_vs_f32', 'baseline_psnr', 'within_bar')


def _check_images(images, config):
  images = np.asarray(images, np.float32)
  shape = (config.image_size, config.image_size, config.in_channels)
  if images.ndim != 4 or images.shape[1:] != shape or images.shape[0] < 1:
    raise ValueError(f'images must have shape (N, {", ".join(map(str, shape))}) for this '
                     f'checkpoint, got {images.shape}')
  if not np.all(np.isfinite(images)) or images.min() < -1.0 or images.max() > 1.0:
    raise ValueError('images must be finite and in [-1, 1] (model units)')
  return images


def _check_variants(variants):
  variants = tuple(tuple(v) for v in variants)
  if REFERENCE not in variants:
    raise ValueError(f'variants must include the reference {REFERENCE}, got {variants}')
  for dtype, precision in variants:
    if dtype not in benchmarks.DTYPES:
      raise ValueError(f'unknown compute dtype {dtype!r} ({", ".join(benchmarks.DTYPES)})')
    if precision not in benchmarks.PRECISIONS:
      raise ValueError(f'unknown matmul precision {precision!r} '
                       f'({", ".join(benchmarks.PRECISIONS)})')
  return (REFERENCE,) + tuple(v for v in variants if v != REFERENCE)


def _unit_psnr(a, b):
  """Per-image PSNR of model-unit images compared in [0, 1] (clamped, as saved)."""
  return np.asarray(metrics.psnr(restore.model_to_unit(a), restore.model_to_unit(b)), np.float64)


def _mean(values):
  """Mean of per-image PSNRs, or 'identical' when every restoration equals the reference's
  (images equal to theirs, of PSNR +inf, are left out of the mean of the others; NaN stays)."""
  rest = values[~np.isposinf(values)]
  return 'identical' if rest.size == 0 else float(np.mean(rest))


def check_arguments(config, images, degs, variants, *, steps=20, sigma_y=0.1, num_samples=1,
                    batch_size=None):
  """Validates `fidelity_rows`' arguments against a checkpoint's config before any work.

  Returns (images as float32, variants with the reference first, batch_size); raises ValueError
  with a one-line message naming the problem.
  """
  if config.family == 'adm_classifier':
    raise ValueError('the fidelity check needs an unconditional denoiser, not a classifier')
  if configs.is_class_conditional(config):
    raise ValueError('the fidelity check needs an unconditional denoiser, not a '
                     'class-conditional network')
  images = _check_images(images, config)
  variants = _check_variants(variants)
  unknown = [d for d in degs if d not in operators.NAMES]
  if unknown:
    raise ValueError(f'unknown degradations {unknown}; known: {", ".join(operators.NAMES)}')
  for deg in degs:  # steps, sigma_y and num_samples as ddrm-restore checks them.
    restore.BatchSettings(deg=deg, steps=steps, sigma_y=sigma_y, num_samples=num_samples)
  batch_size = images.shape[0] if batch_size is None else batch_size
  if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f'batch_size must be an int >= 1, got {batch_size!r}')
  return images, variants, int(batch_size)


def fidelity_rows(ckpt, images, degs=DEGS, *, variants=VARIANTS, steps=20, sigma_y=0.1, seed=0,
                  num_samples=1, batch_size=None, on_failure=None):
  """One row per degradation and variant; see the module docstring.

  Args:
    ckpt: an unconditional denoiser's checkpoint directory (`ddrm_jax.save_checkpoint` format).
    images: clean images (N, H, W, C) in [-1, 1] at the checkpoint's size.
    degs: degradation names (`ddrm_jax.operators.NAMES`).
    variants: (compute dtype, matmul precision) pairs; must include ('float32', 'highest').
    steps, sigma_y, seed: DDRM steps, measurement noise in model units ([-1, 1]: twice the
      paper's [0, 1] figure), seed of the per-image keys (the 'other' row uses seed + 1).
    num_samples: the restoration is the posterior mean of this many samples.
    batch_size: images per call (None: all at once).
    on_failure: None (an error in a degradation's runs is raised), or `on_failure(deg, error)`,
      called instead so the other degradations still run (out of memory, say).

  Returns:
    dicts with COLUMNS; per degradation one per variant (keys 'same'), then float32 at the
    highest precision with other keys (keys 'other', within_bar None). psnr: mean over the
    images (dB); delta_db: psnr minus the reference's; psnr_vs_f32: mean PSNR of the
    restorations against the reference's (a float; the string 'identical' when they equal it
    bit for bit; None for the reference itself); baseline_psnr; within_bar: |delta_db| <=
    MAX_DELTA_DB.
  """
  config = checkpoints.load_config(ckpt)
  images, variants, batch_size = check_arguments(
      config, images, degs, variants, steps=steps, sigma_y=sigma_y, num_samples=num_samples,
      batch_size=batch_size)
  params = checkpoints.load_params(ckpt, config)
  n = images.shape[0]
  keys = {'same': restore.index_keys(seed, np.arange(n)),
          'other': restore.index_keys(seed + 1, np.arange(n))}
  runs = [(v, 'same') for v in variants] + [(REFERENCE, 'other')]
  rows = []
  for deg in degs:
    try:
      rows.extend(_deg_rows(config, params, images, keys, runs, deg, steps, sigma_y,
                            num_samples, batch_size))
    except Exception as e:  # pylint: disable=broad-except
      if on_failure is None:
        raise
      on_failure(deg, e)
  return rows


def _deg_rows(config, params, images, keys, runs, deg, steps, sigma_y, num_samples, batch_size):
  """The rows of one degradation (see `fidelity_rows`)."""
  n = images.shape[0]
  rows = []
  op = operators.make(deg, images.shape[1:])
  settings = restore.BatchSettings(deg=deg, steps=steps, sigma_y=sigma_y, num_samples=num_samples)
  outputs = {}
  for (dtype, precision), which in runs:
    step = restore.make_restore_step(benchmarks.denoiser(config, dtype), settings)
    parts = []
    with jax.default_matmul_precision(precision):
      for i in range(0, n, batch_size):
        out = step(params, None, op, images[i:i + batch_size],
                   keys[which][i:i + batch_size], None)
        parts.append({k: np.asarray(out[k]) for k in ('restored', 'psnr', 'baseline_psnr')})
    outputs[(dtype, precision), which] = {
        k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  ref = outputs[REFERENCE, 'same']
  for run in runs:
    out = outputs[run]
    psnr = float(np.mean(out['psnr']))
    delta = psnr - float(np.mean(ref['psnr']))
    rows.append({
        'deg': deg, 'dtype': run[0][0], 'precision': run[0][1], 'keys': run[1], 'images': n,
        'samples': num_samples, 'psnr': psnr, 'delta_db': delta,
        'psnr_vs_f32': None if run == (REFERENCE, 'same') else _mean(
            _unit_psnr(out['restored'], ref['restored'])),
        'baseline_psnr': float(np.mean(out['baseline_psnr'])),
        'within_bar': None if run[1] == 'other' else abs(delta) <= MAX_DELTA_DB,
    })
  return rows
