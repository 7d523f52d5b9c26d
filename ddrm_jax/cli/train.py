"""`ddrm-train`: train a DDPM prior on a folder of images (resumable), export its EMA params.

  ddrm-train --data=my_images/ --workdir=runs/prior --config=prior64 --steps=20000

Interrupt it at any time: running it again with the same flags resumes from the last saved
state. `--export` writes the EMA params in the checkpoint format of `ddrm_jax.load_model` /
`ddrm-restore --ckpt`.
"""

import fnmatch
import os
import sys
import time

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
  print(f'ddrm-train: error: {msg}', file=sys.stderr)
  sys.exit(1)


def _files(specs, exclude):
  from ddrm_jax import io as image_io
  files = []
  for spec in specs:
    files.extend(image_io.expand_inputs(spec))
  keep = [f for f in dict.fromkeys(files)
          if not any(fnmatch.fnmatch(f, p) or fnmatch.fnmatch(os.path.basename(f), p)
                     for p in exclude)]
  if not keep:
    raise ValueError('--exclude leaves no training image')
  return keep


def model_config_from_flags():
  from ddrm_jax import train
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


def write_samples(path, model_config, params, num, seed):
  """A grid of `num` unconditional samples (DDRM with nothing observed, 20 steps)."""
  import jax
  import numpy as np
  from ddrm_jax import io as image_io
  from ddrm_jax import train
  x = train.unconditional_samples(model_config, params, jax.random.PRNGKey(seed), num)
  x = np.asarray(x)
  cols = int(np.ceil(np.sqrt(num)))
  rows = [list(x[i:i + cols]) for i in range(0, num, cols)]
  image_io.write_image(path, image_io.make_grid(rows))


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS.data:
    fail('--data is required (a folder, files or globs of training images)')
  if not FLAGS.workdir:
    fail('--workdir is required (the run folder; the same one resumes the run)')
  for name in ('steps', 'save_every', 'keep'):
    if getattr(FLAGS, name) < 1:
      fail(f'--{name} must be >= 1, got {getattr(FLAGS, name)}')
  if FLAGS.num_grid_samples < 0:
    fail(f'--num_grid_samples must be >= 0, got {FLAGS.num_grid_samples}')

  import jax
  import jax.numpy as jnp
  import numpy as np
  from tqdm import tqdm
  from ddrm_jax import checkpoints
  from ddrm_jax import train

  try:
    model_config = model_config_from_flags()
    tc = train.TrainConfig(batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
                           warmup_steps=FLAGS.warmup_steps, grad_clip=FLAGS.grad_clip,
                           ema_decay=FLAGS.ema_decay, seed=FLAGS.seed)
    files = _files(FLAGS.data, FLAGS.exclude)
    data = train.ImageSet(files, model_config.image_size, FLAGS.channels, FLAGS.min_scale,
                          FLAGS.max_scale)
    if FLAGS.export and os.path.exists(FLAGS.export) and not FLAGS.overwrite:
      raise ValueError(f'--export {FLAGS.export} already exists; pass --overwrite to replace it')
    store = train.StateStore(FLAGS.workdir, model_config, tc, keep=FLAGS.keep)
  except ValueError as e:  # TrainError, ImageError, config errors
    fail(str(e))

  dtype = FLAGS.dtype
  if dtype == 'auto':
    dtype = 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
  step_fn, place_batch, place_state = train.data_parallel_step(
      model_config, tc, dtype=jnp.dtype(dtype))
  key = jax.random.PRNGKey(tc.seed)
  abstract = jax.eval_shape(lambda: train.init_state(model_config, tc, key))
  try:
    state = store.restore(abstract)
  except ValueError as e:
    fail(str(e))
  if state is None:
    state = train.init_state(model_config, tc, key)
    print(f'ddrm-train: new run in {store.workdir}: {len(files)} images, '
          f'{train.num_params(state.params):,} params, {jax.device_count()} device(s), {dtype}')
  else:
    print(f'ddrm-train: resuming {store.workdir} at step {int(state.step)}')
  state = place_state(state)

  start = int(state.step)
  deadline = time.time() + 60 * FLAGS.max_minutes if FLAGS.max_minutes > 0 else None
  bar = tqdm(total=FLAGS.steps, initial=start, desc='train', unit='step', dynamic_ncols=True)
  loss_avg = None
  try:
    for step in range(start, FLAGS.steps):
      x0 = place_batch(data.batch(train.batch_rng(tc.seed, step), tc.batch_size))
      state, loss = step_fn(state, x0, jax.random.fold_in(key, step))
      if (step + 1) % 10 == 0 or step + 1 == FLAGS.steps:
        loss = float(loss)
        if not np.isfinite(loss):
          raise FloatingPointError(f'loss became {loss} at step {step + 1}; the last saved state '
                                   'is kept: lower --learning_rate and resume')
        loss_avg = loss if loss_avg is None else 0.9 * loss_avg + 0.1 * loss
        bar.set_postfix(loss=f'{loss_avg:.4f}')
      bar.update(1)
      if (step + 1) % FLAGS.save_every == 0:
        store.save(state)
      if (FLAGS.sample_every and FLAGS.num_grid_samples
          and (step + 1) % FLAGS.sample_every == 0):
        write_samples(os.path.join(store.workdir, f'samples_{step + 1:07d}.png'), model_config,
                      state.ema_params, FLAGS.num_grid_samples, tc.seed)
      if deadline and time.time() > deadline:
        print(f'\nddrm-train: --max_minutes reached at step {step + 1}')
        break
  except KeyboardInterrupt:
    print('\nddrm-train: interrupted; saving the state')
  except FloatingPointError as e:
    bar.close()
    store.close()
    fail(str(e))
  finally:
    bar.close()
  if int(state.step) != store.latest_step():
    store.save(state, force=True)
  store.close()
  done = int(state.step)
  if FLAGS.num_grid_samples:
    write_samples(os.path.join(store.workdir, f'samples_{done:07d}.png'), model_config,
                  state.ema_params, FLAGS.num_grid_samples, tc.seed)
  print(f'ddrm-train: state saved at step {done} in {store.workdir}')
  if FLAGS.export:
    try:
      path = checkpoints.save_checkpoint(FLAGS.export, jax.device_get(state.ema_params),
                                         model_config, overwrite=FLAGS.overwrite)
    except ValueError as e:
      fail(str(e))
    print(f'ddrm-train: exported the EMA params to {path}')


def run():
  """Console entry point `ddrm-train`."""
  app.run(main)


if __name__ == '__main__':
  run()
