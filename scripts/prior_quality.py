"""Quality of a prior under DDRM: posterior-mean PSNR against the paper's baselines.

Runs `pipeline.restore_files` (the paper protocol of `ddrm-restore`) for each problem of the bundled prior's quality bar on the
held-out sample images and prints a markdown table from the runs' `metrics.json`:

  python scripts/prior_quality.py                      # the bundled prior and samples
  python scripts/prior_quality.py --ckpt DIR --input FOLDER --out runs/quality

A problem passes when the posterior mean of `--num_samples` DDRM samples beats the baseline PSNR
(bicubic upsampling for SR, the pseudo-inverse otherwise). `color` is reported, not required.
"""

import os
import sys

from absl import app
from absl import flags

# (name, --deg, sigma_y in [0, 1] image units, part of the bar)
PROBLEMS = (
    ('sr2', 'sr2', 0.05, True),
    ('sr4', 'sr4', 0.05, True),
    ('deno', 'deno', 0.1, True),
    ('inp', 'inp', 0.05, True),
    ('color', 'color', 0.05, False),
    ('deblur_motion', 'deblur_motion', 0.02, True),  # Circular 5x5 camera shake at 64x64.
    ('blur2d', 'blur2d', 0.02, True),  # Its default kernel: a 7x7 camera shake.
)

FLAGS = flags.FLAGS
flags.DEFINE_string('ckpt', None, 'Checkpoint directory (default: the bundled prior).')
flags.DEFINE_string('input', None, 'Held-out images (default: the bundled samples).')
flags.DEFINE_string('out', 'ddrm_runs/prior_quality', 'Folder of the runs and of quality.json.')
flags.DEFINE_integer('num_samples', 8, 'Posterior samples per image.')
flags.DEFINE_integer('seed', 0, 'Seed of the runs.')
flags.DEFINE_list('problems', [p[0] for p in PROBLEMS], 'Problems to run.')


def main(argv):
  del argv
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  from ddrm_jax import pipeline
  known = {p[0]: p for p in PROBLEMS}
  unknown = [p for p in FLAGS.problems if p not in known]
  if unknown:
    print(f'prior_quality: unknown problems {unknown}; known: {list(known)}', file=sys.stderr)
    return 1
  rows, failed = [], False
  for name in FLAGS.problems:
    _, deg, sigma_y, required = known[name]
    out = os.path.join(FLAGS.out, name)
    config = pipeline.RestoreConfig(deg=deg, sigma_y=sigma_y, num_samples=FLAGS.num_samples,
                                    seed=FLAGS.seed, overwrite=True, ckpt=FLAGS.ckpt)
    try:
      result = pipeline.restore_files(config, FLAGS.input, out)
    except pipeline.SettingError as e:
      print(f'prior_quality: {name}: {e}', file=sys.stderr)
      return 1
    if result.failed:
      print(f'prior_quality: {name}: {len(result.failed)} images failed', file=sys.stderr)
      return 1
    mean = result.mean
    beats = mean['psnr'] > mean['baseline_psnr']
    failed |= required and not beats
    rows.append((name, sigma_y, mean, beats, required))

  lines = ['| problem | sigma_y | PSNR, mean of %d | PSNR, one sample | baseline PSNR | '
           'SSIM, mean | baseline SSIM | beats baseline |' % FLAGS.num_samples,
           '| --- | --- | --- | --- | --- | --- | --- | --- |']
  for name, sigma_y, m, beats, required in rows:
    verdict = ('yes' if beats else 'NO') + ('' if required else ' (reported only)')
    lines.append(f'| {name} | {sigma_y} | {m["psnr"]:.2f} | {m.get("sample_psnr", m["psnr"]):.2f}'
                 f' | {m["baseline_psnr"]:.2f} | {m["ssim"]:.3f} | {m["baseline_ssim"]:.3f} | '
                 f'{verdict} |')
  table = '\n'.join(lines)
  print(table)
  io.atomic_write(os.path.join(FLAGS.out, 'quality.md'), lambda f: f.write(table + '\n'),
                  binary=False)
  return 1 if failed else 0


if __name__ == '__main__':
  app.run(main)
