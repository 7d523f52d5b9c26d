"""`ddrm-train`: train a DDPM prior on a folder of images (resumable), export its EMA params.

  ddrm-train --data=my_images/ --workdir=runs/prior --config=prior64 --steps=20000

Interrupt it at any time: running it again with the same flags resumes from the last saved
state. `--export` writes the EMA params in the checkpoint format of `ddrm_jax.load_model` /
`ddrm-restore --ckpt`.
"""

import sys

from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS

flags.DEFINE_list('data', None, 'Training images: files, folders or globs (comma-separated).')
flags.DEFINE_list('exclude', [], 'Glob patterns of files to leave out (held-out images), matched '
                  'against the path and the file name.')
flags.DEFINE_string('workdir', None, 'Run folder: run.json, resumable state, sample grids.')
flags.DEFINE_string('config', 'prior64', 'Architecture: a preset (prior64, tiny) or a DDPM config '
                    'name of the paper (celeba_hq, ...).')
flags.DEFINE_integer('image_size', None, 'Override the preset: training crop size.')
flags.DEFINE_integer('ch', None, 'Override the preset: base width.')
flags.DEFINE_list('ch_mult', None, 'Override the preset: width multipliers per level.')
flags.DEFINE_integer('num_res_blocks', None, 'Override the preset: residual blocks per level.')
flags.DEFINE_list('attn_resolutions', None, 'Override the preset: resolutions with attention.')
flags.DEFINE_integer('channels', 3, 'Image channels (1 = grayscale, 3 = RGB).')
flags.DEFINE_integer('steps', 10000, 'Train until this many optimisation steps in total.')
flags.DEFINE_integer('batch_size', 16, 'Global batch size (split over local devices).')
flags.DEFINE_float('learning_rate', 2e-4, 'Peak Adam learning rate.')
flags.DEFINE_integer('warmup_steps', 500, 'Linear learning-rate warmup steps.')
flags.DEFINE_float('grad_clip', 1.0, 'Global-norm gradient clipping.')
flags.DEFINE_float('ema_decay', 0.999, 'EMA decay of the exported params.')
flags.DEFINE_float('min_scale', 1.0, 'Down-scaling before cropping: smallest scale.')
flags.DEFINE_float('max_scale', 1.0, 'Down-scaling before cropping: largest scale.')
flags.DEFINE_integer('seed', 0, 'Seed of init, batches and noise.')
flags.DEFINE_integer('save_every', 500, 'Save the training state every this many steps.')
flags.DEFINE_integer('keep', 3, 'Training states to keep.')
flags.DEFINE_integer('sample_every', 0, 'Write a grid of unconditional samples every this many '
                     'steps (0: only at the end).')
flags.DEFINE_integer('num_grid_samples', 8, 'Samples in each grid (0: no grids).')
flags.DEFINE_float('max_minutes', 0.0, 'Stop (saving the state) after this many minutes; 0: no '
                   'limit.')
flags.DEFINE_string('export', None, 'Write the EMA params as a checkpoint directory here at the '
                    'end.')
flags.DEFINE_bool('overwrite', False, 'Allow --export to replace an existing checkpoint.')
flags.DEFINE_enum('dtype', 'auto', ['auto', 'float32', 'bfloat16'],
                  'Compute dtype (auto: bfloat16 on GPU/TPU, float32 on CPU). Params stay float32.')


def fail(msg):
  from ddrm_jax import errors  # pylint: disable=g-import-not-at-top
  print(f'ddrm-train: error: {errors.flagged(msg)}', file=sys.stderr)
  sys.exit(1)


def model_config_from_flags():
  from ddrm_jax import train  # pylint: disable=g-import-not-at-top
  overrides = {}
  for name in ('image_size', 'ch', 'num_res_blocks'):
    if getattr(FLAGS, name) is not None:
      overrides[name] = getattr(FLAGS, name)
  for name in ('ch_mult', 'attn_resolutions'):
    if getattr(FLAGS, name) is not None:
      try:
        overrides[name] = tuple(int(v) for v in getattr(FLAGS, name))
      except ValueError:
        raise ValueError(f'--{name} must be comma-separated integers') from None
  overrides['in_channels'] = overrides['out_ch'] = FLAGS.channels
  return train.model_config(FLAGS.config, **overrides)


def main(argv):
  from ddrm_jax import errors  # pylint: disable=g-import-not-at-top
  from ddrm_jax import train  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS.workdir:
    fail('--workdir is required (the run folder; the same one resumes the run)')
  try:
    model_config = model_config_from_flags()
    tc = train.TrainConfig(batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
                           warmup_steps=FLAGS.warmup_steps, grad_clip=FLAGS.grad_clip,
                           ema_decay=FLAGS.ema_decay, seed=FLAGS.seed)
    run = train.TrainRun(
        data=tuple(FLAGS.data or ()), exclude=tuple(FLAGS.exclude), channels=FLAGS.channels,
        steps=FLAGS.steps, min_scale=FLAGS.min_scale, max_scale=FLAGS.max_scale,
        save_every=FLAGS.save_every, keep=FLAGS.keep, sample_every=FLAGS.sample_every,
        num_grid_samples=FLAGS.num_grid_samples, max_minutes=FLAGS.max_minutes,
        export=FLAGS.export, overwrite=FLAGS.overwrite, dtype=FLAGS.dtype)
    train.train(model_config, tc, run, FLAGS.workdir, log=lambda m: print(errors.flagged(m)))
  except ValueError as e:  # TrainError, ImageError, config and checkpoint errors
    fail(errors.marked(e))


def run():
  """Console entry point `ddrm-train`."""
  app.run(main)


if __name__ == '__main__':
  run()
