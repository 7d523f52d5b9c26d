"""DDNM and DDNM+ (Wang, Yu, Zhang, "Zero-Shot Image Restoration Using Denoising Diffusion
Null-Space Model", ICLR 2023) on the exact SVD of the operator, as one `lax.scan`.

Each step takes the network's x0|t and replaces its range-space part (Eq. 13, noiseless):
  x0hat = x0|t - A^+ (A x0|t - y) = V [x0bar - (x0bar - ybar) on s_i > 0]   (x0bar = V^T x0|t),
then moves to the next level with the DDIM-type update of the reference code (DDRM's eta):
  x_{t'} = a' x0hat + b' (eta z + sqrt(1 - eta^2) eps).
DDNM+ (noisy y, Eq. 17-19) scales the correction per singular value, Sigma_t = V diag(lambda) V^T,
and the fresh noise Phi_t = V diag(d1^2) V^T, with nsig_i = a' sigma_y / s_i (the std the
correction a' lambda_i (ybar_i - x0bar_i) carries into x_{t'}):
  b' >= nsig_i:  lambda_i = 1,                                d1 = sqrt(b'^2 - nsig_i^2), no eps;
  b' <  nsig_i:  lambda_i = s_i b' sqrt(1 - eta^2) / (a' sigma_y),  d1 = eta b',        no eps;
  s_i = 0:       lambda_i = 0,  d1 = eta b', eps share sqrt(1 - eta^2) b' (as noiseless).
so every coordinate of x_{t'} has std b' (Eq. 19 with the reference code's eta). The last step
(b' = 0) thus returns ybar on the observed directions when sigma_y = 0 (H x0 = y) and the
network's x0|t when sigma_y > 0 (every lambda_i = 0 there).

Time travel (Section 3.4, `ddnm_travel_length` l > 0, `ddnm_travel_repeat` r > 1): on reaching
the schedule's index k (k = 0, l, 2l, ... below steps - l) the chain jumps back up l indices
with x_{t(k+l)} ~ q(x_{t(k+l)} | x_{t(k)}) = N(sqrt(ab'/ab) x, (1 - ab'/ab) I) and redoes those
l steps, r - 1 times in all per index (RePaint's jump schedule, as the reference's
`get_schedule_jump`). Network calls: steps + (r - 1) l per jump index. The reference code
re-noises the last x0|t instead of diffusing x_t forward.

Defaults (the reference's CelebA-HQ / ImageNet 256 runs, README and main.py): 100 steps,
eta = 0.85, travel length 1 and repeat 1 (no time travel).
"""

import jax
import jax.numpy as jnp
import numpy as np

from ddrm_jax.solvers import common

DEFAULT_STEPS = 100
HYPERPARAMETERS = (
    ('ddnm_eta', 0.85, 'DDNM/DDNM+ share of fresh noise in each step (the reference code\'s '
     'eta, DDRM convention): 0 deterministic, 1 all fresh noise'),
    ('ddnm_travel_length', 1, 'DDNM time-travel length l in steps'),
    ('ddnm_travel_repeat', 1, 'DDNM time-travel repeats r per jump (1: no time travel)'),
)


def travel_schedule(steps, travel_length, travel_repeat):
  """Indices of the chain with time travel: a list of (k, k_next) pairs into the ascending
  timestep sequence (-1: clean), k_next = k - 1 for a step and k + l for a jump back."""
  jumps = {k: travel_repeat - 1 for k in range(0, steps - travel_length, travel_length)}
  pairs, k = [], steps - 1
  while k >= 0:
    pairs.append((k, k - 1))
    k -= 1
    if k >= 0 and jumps.get(k, 0) > 0:
      jumps[k] -= 1
      pairs.append((k, k + travel_length))
      k += travel_length
  return pairs


def _schedule(settings, travel_length, travel_repeat):
  """(step_ids, t, t_next, travel) arrays for the scan and the mask of network steps."""
  seq = list(settings.timesteps)
  level = lambda k: -1 if k < 0 else seq[k]
  pairs = travel_schedule(settings.steps, travel_length, travel_repeat)
  t = np.array([level(k) for k, _ in pairs], np.int32)
  t_next = np.array([level(j) for _, j in pairs], np.int32)
  travel = np.array([j > k for k, j in pairs])
  step_ids = np.arange(1, len(pairs) + 1, dtype=np.uint32)
  return (step_ids, t, t_next, travel), ~travel


def _project(s, ybar, x0bar, epsbar, z, a_next, b_next, sigma_y, eta):
  """Eq. 17-19 for one image in the spectral basis: the spectral VP state at the next level."""
  observed = s > 0
  if sigma_y == 0.0:  # DDNM (Eq. 13): exact range-space replacement.
    x0hat = jnp.where(observed, ybar, x0bar)
    return a_next * x0hat + b_next * (eta * z + np.sqrt(1.0 - eta**2) * epsbar)
  nsig = jnp.where(observed, a_next * sigma_y / jnp.where(observed, s, 1.0), 0.0)
  full = observed & (b_next >= nsig)
  part = observed & ~full
  lam = jnp.where(full, 1.0, jnp.where(part, s * b_next * np.sqrt(1.0 - eta**2)
                                       / (a_next * sigma_y), 0.0))
  d1 = jnp.where(full, jnp.sqrt(jnp.maximum(b_next**2 - nsig**2, 0.0)), eta * b_next)
  d2 = jnp.where(observed, 0.0, np.sqrt(1.0 - eta**2) * b_next)
  x0hat = x0bar - lam * (x0bar - ybar)
  return a_next * x0hat + d1 * z + d2 * epsbar


def sample(model_fn, op, y, key, *, steps=DEFAULT_STEPS, sigma_y=0.0, guidance_fn=None,
           return_x0_preds=False, ddnm_eta=0.85, ddnm_travel_length=1, ddnm_travel_repeat=1,
           batched_op=False, timesteps=None, betas=None):
  """Restores a batch with DDNM (sigma_y = 0) or DDNM+ (sigma_y > 0); arguments, units, keys
  and returns as `ddrm_jax.sampler.sample` (x0_preds: the network's x0|t of every network call,
  in execution order). Pure and traceable inside the caller's `jit`."""
  eta = common.number('ddnm_eta', ddnm_eta, 0.0, 1.0)
  length = common.number('ddnm_travel_length', ddnm_travel_length, 1, integer=True)
  repeat = common.number('ddnm_travel_repeat', ddnm_travel_repeat, 1, integer=True)
  chain = common.prepare(op, y, key, steps=steps, sigma_y=sigma_y, timesteps=timesteps,
                         betas=betas, batched_op=batched_op)
  settings = chain.settings
  if repeat > 1 and length >= settings.steps:
    raise ValueError(f'ddnm_travel_length must be < steps ({settings.steps}) for time travel, '
                     f'got {length}')
  schedule, network_steps = _schedule(settings, length, repeat)
  n = chain.ybar.shape[-1]

  def denoise(x, step_id, t, t_next):
    x0, eps = common.network_x0(model_fn, x, t, settings, guidance_fn)
    a_n, b_n = common.coefficients(settings, t_next)
    z = common.normal(chain.keys, step_id, (n,), x.dtype)
    update = common.per_image(lambda o, si, yb, x0i, ei, zi: o.V(_project(
        si, yb, o.Vt(x0i), o.Vt(ei), zi, a_n, b_n, settings.sigma_y, eta)), chain, 4)
    return update(op, chain.s, chain.ybar, x0, eps, z), x0

  def travel(x, step_id, t, t_next):  # q(x_{t_next} | x_t) with t_next > t.
    a, _ = common.coefficients(settings, t)
    a_n, _ = common.coefficients(settings, t_next)
    ratio = (a_n / a)**2
    z = common.normal(chain.keys, step_id, tuple(op.x_shape), x.dtype)
    return jnp.sqrt(ratio) * x + jnp.sqrt(1.0 - ratio) * z, jnp.zeros_like(x)

  def step(x, step_id, t, t_next, is_travel):
    if network_steps.all():  # No time travel: no branch in the program.
      return denoise(x, step_id, t, t_next)
    return jax.lax.cond(is_travel, travel, denoise, x, step_id, t, t_next)

  out = common.run(step, common.init(op, chain), schedule, return_x0_preds)
  if not return_x0_preds:
    return out
  x, preds = out
  return x, preds[np.flatnonzero(network_steps)]
