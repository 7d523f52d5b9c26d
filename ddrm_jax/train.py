"""Training a DDPM prior (the eps-prediction objective of Ho et al. 2020, the paper's Eq. 2).

`train(model_config, train_config, run, workdir)` is a whole (resumable) run, called by
`ddrm_jax.cli.train` (the `ddrm-train` command) and the tests; its pieces:

- `ImageSet`: a folder of images in memory; `batch(rng, n)` draws random crops of `size` from
  random down-scalings, with random horizontal flips (host side, numpy).
- `make_optimizer`: Adam with linear warmup and global-norm gradient clipping (optax).
- `TrainState`, `init_state`, `train_step`: one optimisation step plus the EMA update, a pure
  function of (state, batch, key) to be jitted with the state donated.
- `StateStore`: the resumable training state, checkpointed with orbax (the last k kept).

The exported network is the EMA params in the project's one checkpoint format
(`ddrm_jax.checkpoints.save_checkpoint`), so `load_model` and `ddrm-restore` use it unchanged.
"""

import dataclasses
import json
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from ddrm_jax import diffusion
from ddrm_jax.errors import SettingError
from ddrm_jax import io as image_io
from ddrm_jax import operators
from ddrm_jax import sampler
from ddrm_jax.models import configs
from ddrm_jax.models import ddpm_unet

RUN_FILE = 'run.json'


class TrainError(SettingError):
  """A training run that cannot start or resume; the message is one line."""


# ---------------------------------------------------------------------------------------------
# Architectures.

# Small DDPM UNets for training from scratch. `prior64` is the bundled prior's architecture.
PRESETS = {
    'prior64': ddpm_unet.DDPMConfig(image_size=64, ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1,
                                    attn_resolutions=(16,), num_groups=8),
    'tiny': ddpm_unet.DDPMConfig(image_size=16, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                                 attn_resolutions=(8,), num_groups=8),
}


def model_config(name, **overrides):
  """A DDPM config: a preset of `PRESETS` or a paper config name, with fields overridden."""
  if name in PRESETS:
    base = PRESETS[name]
  else:
    try:
      base = configs.get_config(name)
    except ValueError:
      raise TrainError(f'unknown §config {name!r}; presets: {", ".join(PRESETS)}, or a DDPM '
                       f'config of the paper: {", ".join(ddpm_unet.DDPM_CONFIGS)}') from None
    if base.family != 'ddpm':
      raise TrainError(f'§config {name!r} is a {base.family} network; training supports the '
                       'DDPM UNet only')
  return dataclasses.replace(base, **overrides)


def num_params(params):
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


def unconditional_samples(model_config_, params, key, num, steps=20, eta=0.85):
  """`num` samples of the prior: DDRM with nothing observed (every s_i = 0, Eq. 8 case 1)."""
  s = model_config_.image_size
  shape = (s, s, model_config_.in_channels)
  op = operators.from_mask(np.zeros(shape[:2], np.float32), shape[2])
  module = model_config_.module(jnp.float32)

  @jax.jit
  def run(params, key):
    return sampler.sample(lambda x, t: module.apply({'params': params}, x, t), op,
                          jnp.zeros((num,) + shape, jnp.float32), key, steps=steps, eta=eta)

  return run(params, key)


# ---------------------------------------------------------------------------------------------
# Data.


class ImageSet:
  """Images of a folder (or list of files) held in memory as float32 (H, W, C) in [-1, 1].

  Crops are drawn from copies of each image down-scaled by `num_scales` factors spaced
  geometrically from `max_scale` to `min_scale` (a copy is never smaller than the crop).
  """

  def __init__(self, files, size, channels=3, min_scale=1.0, max_scale=1.0, num_scales=4):
    if not files:
      raise TrainError('no training images')
    if not 0 < min_scale <= max_scale <= 1:
      raise TrainError(f'scales must satisfy 0 < min_scale <= max_scale <= 1, got '
                       f'{min_scale}, {max_scale}')
    self.size = int(size)
    self.files = list(files)
    self.images = []
    for f in self.files:
      x = image_io.read_image(f, channels)
      h, w = x.shape[:2]
      if min(h, w) < self.size:
        raise TrainError(f'{f}: {h}x{w} is smaller than the crop size {self.size}')
      scales = (np.geomspace(max_scale, min_scale, num_scales) if min_scale < max_scale
                else [max_scale])
      for s in scales:
        s = max(s, self.size / min(h, w))
        hs, ws = max(self.size, round(h * s)), max(self.size, round(w * s))
        self.images.append(x if (hs, ws) == (h, w) else image_io.resize(x, (hs, ws)))

  def batch(self, rng, n):
    """`n` random crops (n, size, size, C), each from a random image and scale, flipped at random."""
    out = np.empty((n, self.size, self.size, self.images[0].shape[-1]), np.float32)
    for k in range(n):
      im = self.images[rng.integers(len(self.images))]
      top = rng.integers(im.shape[0] - self.size + 1)
      left = rng.integers(im.shape[1] - self.size + 1)
      crop = im[top:top + self.size, left:left + self.size]
      out[k] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return out


def batch_rng(seed, step):
  """The host RNG of the batch at `step`: a resumed run draws exactly the same batches."""
  return np.random.default_rng([int(seed), int(step)])


# ---------------------------------------------------------------------------------------------
# Optimisation.


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyperparameters of a run (stored in the run folder; a resume must use the same)."""
  batch_size: int = 16
  learning_rate: float = 2e-4
  warmup_steps: int = 500
  grad_clip: float = 1.0
  ema_decay: float = 0.999
  seed: int = 0

  def __post_init__(self):
    if self.batch_size < 1:
      raise TrainError(f'batch_size must be >= 1, got {self.batch_size}')
    if self.learning_rate <= 0:
      raise TrainError(f'learning_rate must be > 0, got {self.learning_rate}')
    if self.warmup_steps < 0:
      raise TrainError(f'warmup_steps must be >= 0, got {self.warmup_steps}')
    if self.grad_clip <= 0:
      raise TrainError(f'grad_clip must be > 0, got {self.grad_clip}')
    if not 0 <= self.ema_decay < 1:
      raise TrainError(f'ema_decay must be in [0, 1), got {self.ema_decay}')


def make_optimizer(tc: TrainConfig):
  """Global-norm clipping, then Adam with a linear warmup to `learning_rate`."""
  schedule = optax.linear_schedule(0.0, tc.learning_rate, max(tc.warmup_steps, 1))
  return optax.chain(optax.clip_by_global_norm(tc.grad_clip), optax.adam(schedule))


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


def init_state(model_config, tc: TrainConfig, key):
  """A fresh state: params from the module's init, EMA equal to them, zero optimiser moments."""
  module = model_config.module(jnp.float32)
  params = jax.jit(module.init)(key, *configs.example_inputs(model_config))['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree_util.tree_map(jnp.copy, params),
                    opt_state=make_optimizer(tc).init(params))


def diffusion_loss(apply_fn, params, x0, key, abar):
  """Eq. 2 with eps-prediction: E_t,eps || eps - eps_theta(sqrt(abar_t) x0 + sqrt(1-abar_t) eps, t) ||^2."""
  kt, ke = jax.random.split(key)
  t = jax.random.randint(kt, (x0.shape[0],), 0, abar.shape[0], dtype=jnp.int32)
  eps = jax.random.normal(ke, x0.shape, jnp.float32)
  a = abar[t][:, None, None, None]
  x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps  # Eq. 14
  pred = apply_fn({'params': params}, x_t, t)
  return jnp.mean(jnp.square(pred[..., :x0.shape[-1]] - eps))


def train_step(state, x0, key, *, module, tc: TrainConfig, abar):
  """One Adam step on a batch `x0` (B, H, W, C) in [-1, 1], then the EMA update.

  The EMA decay is warmed up as min(decay, (1 + step) / (10 + step)) so short runs still
  average. `key` is the step's key (fold_in(key(seed), step)); returns (state, loss).
  """
  loss, grads = jax.value_and_grad(
      lambda p: diffusion_loss(module.apply, p, x0, key, abar))(state.params)
  updates, opt_state = make_optimizer(tc).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step = state.step.astype(jnp.float32)
  decay = jnp.minimum(tc.ema_decay, (1.0 + step) / (10.0 + step))
  ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p,
                               state.ema_params, params)
  return TrainState(step=state.step + 1, params=params, ema_params=ema,
                    opt_state=opt_state), loss


def data_parallel_step(model_config, tc: TrainConfig, *, dtype=None, devices=None):
  """`train_step` jitted for data parallelism over `devices` (default: all local devices).

  The batch is split over a 1-D mesh axis 'batch'; the state is replicated and donated. Returns
  `(step_fn, place_batch)`: `step_fn(state, x0, key)` and `place_batch(np_batch)` which puts a
  host batch on the devices with the batch sharding.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  if tc.batch_size % len(devices):
    raise TrainError(f'batch_size {tc.batch_size} is not divisible by the {len(devices)} devices')
  mesh = jax.sharding.Mesh(np.asarray(devices), ('batch',))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batched = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('batch'))
  module = model_config.module(dtype)
  abar = jnp.asarray(diffusion.alpha_bars(diffusion.linear_betas()))

  def step(state, x0, key):
    return train_step(state, x0, key, module=module, tc=tc, abar=abar)

  step_fn = jax.jit(step, in_shardings=(replicated, batched, replicated),
                    out_shardings=(replicated, replicated), donate_argnums=(0,))
  place_batch = lambda x: jax.device_put(x, batched)
  place_state = lambda s: jax.device_put(s, replicated)
  return step_fn, place_batch, place_state


# ---------------------------------------------------------------------------------------------
# The run folder: run.json (model config + hyperparameters) and the resumable state.


class StateStore:
  """`workdir/run.json` and `workdir/state/<step>` (orbax, the last `keep` steps kept)."""

  def __init__(self, workdir, model_config, tc: TrainConfig, keep=3):
    self.workdir = os.path.abspath(workdir)
    self.model_config, self.tc = model_config, tc
    run = {'model': model_config.to_dict(), 'train': dataclasses.asdict(tc)}
    path = os.path.join(self.workdir, RUN_FILE)
    if os.path.exists(path):
      try:
        with open(path) as f:
          old = json.load(f)
      except (OSError, ValueError) as e:
        raise TrainError(f'corrupt {path}: {e}') from None
      if old != run:
        diff = sorted(f'{part}.{k}' for part in ('model', 'train')
                      for k in set(old.get(part, {})) | set(run[part])
                      if old.get(part, {}).get(k) != run[part].get(k))
        raise TrainError(f'{self.workdir} holds a run with other settings ({", ".join(diff)}); '
                         'use the same flags to resume, or another §workdir')
    else:
      os.makedirs(self.workdir, exist_ok=True)
      with open(path, 'w') as f:
        json.dump(run, f, indent=1, sort_keys=True)
    self.manager = ocp.CheckpointManager(
        os.path.join(self.workdir, 'state'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self):
    return self.manager.latest_step()

  def restore(self, abstract_state):
    """The latest saved state shaped like `abstract_state`, or None when there is none."""
    step = self.manager.latest_step()
    if step is None:
      return None
    try:
      return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # orbax raises many types for damaged files
      msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise TrainError(f'cannot resume from {self.workdir}/state/{step}: {msg}') from None

  def save(self, state, *, force=False):
    self.manager.save(int(state.step), args=ocp.args.StandardSave(state), force=force)

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


# ---------------------------------------------------------------------------------------------
# The whole run: `train`, called by `ddrm-train` and the tests.


@dataclasses.dataclass(frozen=True)
class TrainRun:
  """The loop's settings of a training run (the `ddrm-train` flags of the same names)."""
  data: tuple  # Training image files, folders or globs.
  exclude: tuple = ()  # Glob patterns of files to leave out, matched on path and file name.
  channels: int = 3
  steps: int = 10000  # Train until this many optimisation steps in total.
  min_scale: float = 1.0
  max_scale: float = 1.0
  save_every: int = 500
  keep: int = 3
  sample_every: int = 0
  num_grid_samples: int = 8
  max_minutes: float = 0.0
  export: str = None
  overwrite: bool = False
  dtype: str = 'auto'  # auto: bfloat16 on GPU/TPU, float32 on CPU.

  def check(self):
    if not self.data:
      raise TrainError('§data is required (a folder, files or globs of training images)')
    for name in ('steps', 'save_every', 'keep'):
      if getattr(self, name) < 1:
        raise TrainError(f'§{name} must be >= 1, got {getattr(self, name)}')
    if self.num_grid_samples < 0:
      raise TrainError(f'§num_grid_samples must be >= 0, got {self.num_grid_samples}')


def training_files(specs, exclude):
  """The files of `specs` (files, folders, globs) less those matching an `exclude` pattern."""
  import fnmatch  # pylint: disable=g-import-not-at-top
  files = []
  for spec in specs:
    files.extend(image_io.expand_inputs(spec))
  keep = [f for f in dict.fromkeys(files)
          if not any(fnmatch.fnmatch(f, p) or fnmatch.fnmatch(os.path.basename(f), p)
                     for p in exclude)]
  if not keep:
    raise TrainError('§exclude leaves no training image')
  return keep


def write_samples(path, model_config_, params, num, seed):
  """A grid of `num` unconditional samples (DDRM with nothing observed, 20 steps)."""
  x = np.asarray(unconditional_samples(model_config_, params, jax.random.PRNGKey(seed), num))
  cols = int(np.ceil(np.sqrt(num)))
  rows = [list(x[i:i + cols]) for i in range(0, num, cols)]
  image_io.write_image(path, image_io.make_grid(rows))


def _loop(state, step_fn, place_batch, data, tc, run, store, model_config_, log):
  """Optimisation steps from state.step to run.steps (saves, grids, deadline); the last state."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  key = jax.random.PRNGKey(tc.seed)
  deadline = time.time() + 60 * run.max_minutes if run.max_minutes > 0 else None
  bar = tqdm(total=run.steps, initial=int(state.step), desc='train', unit='step',
             dynamic_ncols=True)
  loss_avg = None
  try:
    for step in range(int(state.step), run.steps):
      x0 = place_batch(data.batch(batch_rng(tc.seed, step), tc.batch_size))
      state, loss = step_fn(state, x0, jax.random.fold_in(key, step))
      if (step + 1) % 10 == 0 or step + 1 == run.steps:
        loss = float(loss)
        if not np.isfinite(loss):
          raise TrainError(f'loss became {loss} at step {step + 1}; the last saved state is '
                           'kept: lower §learning_rate and resume')
        loss_avg = loss if loss_avg is None else 0.9 * loss_avg + 0.1 * loss
        bar.set_postfix(loss=f'{loss_avg:.4f}')
      bar.update(1)
      if (step + 1) % run.save_every == 0:
        store.save(state)
      if run.sample_every and run.num_grid_samples and (step + 1) % run.sample_every == 0:
        write_samples(os.path.join(store.workdir, f'samples_{step + 1:07d}.png'), model_config_,
                      state.ema_params, run.num_grid_samples, tc.seed)
      if deadline and time.time() > deadline:
        log(f'\nddrm-train: §max_minutes reached at step {step + 1}')
        break
  except KeyboardInterrupt:
    log('\nddrm-train: interrupted; saving the state')
  finally:
    bar.close()
  return state


def train(model_config_, tc: TrainConfig, run: TrainRun, workdir, *, log=print):
  """Trains (or resumes) the run in `workdir` to `run.steps`; saves the state, writes a grid of
  samples and exports the EMA params to `run.export`. Returns the last step. Bad settings or
  files: TrainError / ValueError with one line."""
  from ddrm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  run.check()
  files = training_files(run.data, run.exclude)
  data = ImageSet(files, model_config_.image_size, run.channels, run.min_scale, run.max_scale)
  if run.export and os.path.exists(run.export) and not run.overwrite:
    raise TrainError(f'§export {run.export} already exists; pass §overwrite to replace it')
  store = StateStore(workdir, model_config_, tc, keep=run.keep)
  dtype = run.dtype if run.dtype != 'auto' else (
      'float32' if jax.default_backend() == 'cpu' else 'bfloat16')
  step_fn, place_batch, place_state = data_parallel_step(model_config_, tc,
                                                         dtype=jnp.dtype(dtype))
  key = jax.random.PRNGKey(tc.seed)
  state = store.restore(jax.eval_shape(lambda: init_state(model_config_, tc, key)))
  if state is None:
    state = init_state(model_config_, tc, key)
    log(f'ddrm-train: new run in {store.workdir}: {len(files)} images, '
        f'{num_params(state.params):,} params, {jax.device_count()} device(s), {dtype}')
  else:
    log(f'ddrm-train: resuming {store.workdir} at step {int(state.step)}')
  try:
    state = _loop(place_state(state), step_fn, place_batch, data, tc, run, store, model_config_,
                  log)
  except TrainError:
    store.close()
    raise
  if int(state.step) != store.latest_step():
    store.save(state, force=True)
  store.close()
  done = int(state.step)
  if run.num_grid_samples:
    write_samples(os.path.join(store.workdir, f'samples_{done:07d}.png'), model_config_,
                  state.ema_params, run.num_grid_samples, tc.seed)
  log(f'ddrm-train: state saved at step {done} in {store.workdir}')
  if run.export:
    path = checkpoints.save_checkpoint(run.export, jax.device_get(state.ema_params),
                                       model_config_, overwrite=run.overwrite)
    log(f'ddrm-train: exported the EMA params to {path}')
  return done
