"""DDRM next to DDNM+, ΠGDM, DPS and DiffPIR on the bundled prior and held-out samples.

Each row runs `pipeline.Restorer` (the paper protocol of `ddrm-restore`: clean images degraded
with sigma_y noise, per-image keys) for one method, problem, sigma_y and step count, and records
the mean over the images of the posterior-mean PSNR/SSIM (`--num_samples` samples), one sample's
PSNR/SSIM, the baseline's (bicubic for SR, H^+ y otherwise) and seconds per image. Rows are added
to `--out` (JSON, written atomically after every row) so the table can be run in parts:

  python scripts/solver_comparison.py --steps=20                      # every method at 20 calls
  python scripts/solver_comparison.py --steps=paper --methods=ddnm,pigdm,diffpir
  python scripts/solver_comparison.py --table_only                    # the markdown table

`--steps` takes numbers and `paper` (the method's DEFAULT_STEPS; 20 for DDRM). Rows already in
`--out` are skipped unless `--rerun`. Seconds per image exclude compilation: the first image is
restored alone (compiling the step), the others are timed (with one image, compilation counts).
sigma_y 0 is skipped for deno (restoring the clean image itself is trivial).
"""

import json
import os
import sys
import time

from absl import app
from absl import flags

METHODS = ('ddrm', 'ddnm', 'pigdm', 'dps', 'diffpir')
PROBLEMS = ('sr4', 'deblur_gauss', 'inp', 'deno', 'color')
METRICS = ('psnr', 'ssim', 'sample_psnr', 'sample_ssim', 'baseline_psnr', 'baseline_ssim')

FLAGS = flags.FLAGS
flags.DEFINE_list('methods', list(METHODS), 'Methods to run.')
flags.DEFINE_list('problems', list(PROBLEMS), 'Problems (deg) to run.')
flags.DEFINE_list('sigma_ys', ['0', '0.05'], 'Measurement noise levels, [0, 1] image units.')
flags.DEFINE_list('steps', ['20', 'paper'], 'Step counts: numbers or "paper" (DEFAULT_STEPS).')
flags.DEFINE_integer('num_samples', 4, 'Posterior samples per image (the mean is restored).')
flags.DEFINE_integer('num_images', 6, 'How many of the bundled samples to restore.')
flags.DEFINE_integer('seed', 0, 'Seed: image i uses fold_in(key(seed), i).')
flags.DEFINE_string('ckpt', None, 'Checkpoint directory (default: the bundled prior).')
flags.DEFINE_string('out', 'ddrm_runs/solver_comparison.json', 'JSON file of the rows.')
flags.DEFINE_bool('rerun', False, 'Rerun rows already in --out.')
flags.DEFINE_bool('table_only', False, 'Only print the markdown table of --out.')


def row_key(method, deg, sigma_y, steps):
  return f'{method}/{deg}/{sigma_y:g}/{steps}'


def plan(methods, problems, sigma_ys, steps):
  """(method, deg, sigma_y, steps) of each row, in the order of `steps` first (all 20-call rows
  before the paper's counts), then problem, sigma_y and method; deno at sigma_y 0 is left out."""
  from ddrm_jax import run_config  # pylint: disable=g-import-not-at-top
  rows = []
  for s in steps:
    for deg in problems:
      for sigma_y in sigma_ys:
        if deg == 'deno' and sigma_y == 0:
          continue
        for m in methods:
          n = run_config.default_steps(m) if s == 'paper' else int(s)
          if (m, deg, sigma_y, n) not in rows:
            rows.append((m, deg, sigma_y, n))
  return rows


def run_row(images, method, deg, sigma_y, steps, num_samples, seed, ckpt, networks=None):
  """One row: mean metrics over `images` ((N, H, W, 3) float in [0, 1]) and seconds per image.
  Returns (row dict, the networks, to reuse)."""
  from ddrm_jax import pipeline  # pylint: disable=g-import-not-at-top
  config = pipeline.RestoreConfig(method=method, deg=deg, sigma_y=sigma_y, steps=steps,
                                  num_samples=num_samples, seed=seed, ckpt=ckpt)
  restorer = pipeline.Restorer(config, networks=networks)
  t0 = time.perf_counter()
  first = restorer(images[:1])  # Compiles the one-image step.
  t1 = time.perf_counter()
  rest = restorer(images[1:], indices=range(1, len(images))) if len(images) > 1 else None
  t2 = time.perf_counter()
  per_image = (t2 - t1) / (len(images) - 1) if rest is not None else t1 - t0
  row = {'method': method, 'deg': deg, 'sigma_y': sigma_y, 'steps': steps,
         'num_samples': num_samples, 'num_images': len(images),
         'seconds_per_image': per_image, 'compile_included': rest is None}
  for k in METRICS:
    values = [float(v) for v in first[k]] + ([] if rest is None else [float(v) for v in rest[k]])
    row[k] = sum(values) / len(values)
  return row, restorer.networks


def table(rows):
  """Markdown table of the rows (dicts of `run_row`), by problem, sigma_y, steps, method."""
  order = {m: i for i, m in enumerate(METHODS)}
  probs = {p: i for i, p in enumerate(PROBLEMS)}
  rows = sorted(rows, key=lambda r: (probs.get(r['deg'], 99), r['deg'], r['sigma_y'],
                                     r['steps'] != 20, order.get(r['method'], 99), r['steps']))
  lines = ['| problem | sigma_y | method | calls | images | PSNR mean | SSIM mean | PSNR 1 sample | '
           'SSIM 1 sample | baseline PSNR | s / image |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['deg']} | {r['sigma_y']:g} | {r['method']} | {r['steps']} | "
                 f"{r['num_images']} | "
                 f"{r['psnr']:.2f} | {r['ssim']:.3f} | {r['sample_psnr']:.2f} | "
                 f"{r['sample_ssim']:.3f} | {r['baseline_psnr']:.2f} | "
                 f"{r['seconds_per_image']:.1f}{'*' if r['compile_included'] else ''} |")
  return '\n'.join(lines)


def load(path):
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def save(path, results):
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  io.atomic_write(path, lambda f: json.dump(results, f, indent=1, sort_keys=True), binary=False)


def main(argv):
  del argv
  results = load(FLAGS.out)
  if FLAGS.table_only:
    print(table(list(results.values())))
    return 0
  unknown = [m for m in FLAGS.methods if m not in METHODS]
  if unknown:
    print(f'solver_comparison: unknown methods {unknown}; known: {list(METHODS)}',
          file=sys.stderr)
    return 1
  bad = [s for s in FLAGS.steps if s != 'paper' and not s.isdigit()]
  if bad:
    print(f'solver_comparison: steps must be numbers or "paper", got {bad}', file=sys.stderr)
    return 1
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ddrm_jax import bundled  # pylint: disable=g-import-not-at-top
  from ddrm_jax import pipeline  # pylint: disable=g-import-not-at-top
  _, images = bundled.sample_images()
  images = np.clip((np.asarray(images[:FLAGS.num_images]) + 1.0) / 2.0, 0.0, 1.0)
  networks = None
  for method, deg, sigma_y, steps in plan(FLAGS.methods, FLAGS.problems,
                                          [float(s) for s in FLAGS.sigma_ys], FLAGS.steps):
    key = row_key(method, deg, sigma_y, steps)
    if key in results and not FLAGS.rerun:
      continue
    try:
      row, networks = run_row(images, method, deg, sigma_y, steps, FLAGS.num_samples,
                              FLAGS.seed, FLAGS.ckpt, networks)
    except pipeline.SettingError as e:
      print(f'solver_comparison: {key}: {e}', file=sys.stderr)
      return 1
    results[key] = row
    save(FLAGS.out, results)
    print(f"{key}: PSNR {row['psnr']:.2f} (baseline {row['baseline_psnr']:.2f}), "
          f"{row['seconds_per_image']:.1f} s/image", flush=True)
  print(table(list(results.values())))
  return 0


if __name__ == '__main__':
  app.run(main)
