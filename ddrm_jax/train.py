"""Training a DDPM prior (the eps-prediction objective of Ho et al. 2020, the paper's Eq. 2).

Pure pieces that `ddrm_jax.cli.train` (the `ddrm-train` command) strings together:

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
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from ddrm_jax import diffusion
from ddrm_jax import io as image_io
from ddrm_jax import operators
from ddrm_jax import sampler
from ddrm_jax.models import configs
from ddrm_jax.models import ddpm_unet

RUN_FILE = 'run.json'


class TrainError(ValueError):
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
      raise TrainError(f'unknown --config {name!r}; presets: {", ".join(PRESETS)}, or a DDPM '
                       f'config of the paper: {", ".join(ddpm_unet.DDPM_CONFIGS)}') from None
    if base.family != 'ddpm':
      raise TrainError(f'--config {name!r} is a {base.family} network; training supports the '
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
                         'use the same flags to resume, or another --workdir')
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
