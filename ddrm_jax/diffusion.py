"""Diffusion schedule and the variance-preserving <-> variance-exploding views (Appendix B).

Timesteps t are integers in [0, T) (T = 1000 for the paper's networks); t = -1 denotes the clean
level, alpha_bar(-1) = 1, sigma(-1) = 0. Tables are computed in float64 numpy and stored as
float32, so they are static constants of any traced sampler.

- VP (DDPM/DDIM, Eq. 12/14): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.
- VE (the paper's Section 3, Eq. 11/13): x_t = x_0 + sigma_t eps,
  sigma_t = sqrt(1 - alpha_bar_t) / sqrt(alpha_bar_t), so x_VP = sqrt(alpha_bar_t) x_VE (Eq. 16).
"""

import jax.numpy as jnp
import numpy as np

NUM_TIMESTEPS = 1000


def linear_betas(num_timesteps=NUM_TIMESTEPS, beta_start=1e-4, beta_end=0.02):
  """The DDPM linear schedule: float64 linspace, returned as float32 (num_timesteps,)."""
  if int(num_timesteps) < 1:
    raise ValueError(f'num_timesteps must be >= 1, got {num_timesteps}')
  betas = np.linspace(beta_start, beta_end, int(num_timesteps), dtype=np.float64)
  return betas.astype(np.float32)


def check_betas(betas):
  """`betas` as a float32 numpy vector with entries in (0, 1); a clear ValueError otherwise."""
  try:
    arr = np.asarray(betas)
  except Exception:  # A tracer: the schedule must be static.
    raise ValueError('betas must be a concrete array (fixed at trace time), not a traced '
                     'value') from None
  if arr.ndim != 1 or arr.shape[0] < 1:
    raise ValueError(f'betas must be a non-empty 1-D array, got shape {arr.shape}')
  if not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(f'betas must be floating point, got dtype {arr.dtype}')
  if not np.all(np.isfinite(arr)) or np.any(arr <= 0) or np.any(arr >= 1):
    raise ValueError('betas must lie in the open interval (0, 1)')
  return arr.astype(np.float32)


def alpha_bars(betas):
  """alpha_bar_t = prod_{s <= t} (1 - beta_s), cumulated in float64, returned as float32."""
  b = check_betas(betas).astype(np.float64)
  return np.cumprod(1.0 - b).astype(np.float32)


def _with_clean_level(abar):
  """Prepends alpha_bar(-1) = 1 (float64): entry t + 1 holds alpha_bar_t."""
  return np.concatenate([[1.0], np.asarray(abar, np.float64)])


def ve_sigmas(abar):
  """sigma at levels -1, 0, ..., T-1 (entry t + 1 is sigma_t; sigma_{-1} = 0), float32."""
  a = _with_clean_level(abar)
  return (np.sqrt(1.0 - a) / np.sqrt(a)).astype(np.float32)


def sqrt_alpha_bars(abar):
  """sqrt(alpha_bar) at levels -1, ..., T-1 (entry t + 1), float32."""
  return np.sqrt(_with_clean_level(abar)).astype(np.float32)


def sqrt_one_minus_alpha_bars(abar):
  """sqrt(1 - alpha_bar) at levels -1, ..., T-1 (entry t + 1), float32."""
  return np.sqrt(1.0 - _with_clean_level(abar)).astype(np.float32)


def timestep_sequence(steps, num_timesteps=NUM_TIMESTEPS):
  """t_i = floor(i * num_timesteps / steps), i = 0..steps-1, as int32 (ascending).

  For divisors of `num_timesteps` this is the reference's `range(0, T, T // steps)` (0, 50, ...,
  950 for 20 steps); for other counts it still runs exactly `steps` steps (REFERENCE_NOTES 11).
  """
  steps, num_timesteps = int(steps), int(num_timesteps)
  if not 1 <= steps <= num_timesteps:
    raise ValueError(f'steps must be in [1, {num_timesteps}], got {steps}')
  i = np.arange(steps, dtype=np.int64)
  return (i * num_timesteps // steps).astype(np.int32)


def alpha_bar_at(abar, t):
  """alpha_bar_t for int t (array or scalar, may be traced), with alpha_bar(-1) = 1."""
  table = jnp.asarray(_with_clean_level(abar).astype(np.float32))
  return table[jnp.asarray(t) + 1]


def vp_to_ve(x_vp, abar_t):
  """x_VE = x_VP / sqrt(alpha_bar_t) (Appendix B, Eq. 16)."""
  return x_vp / jnp.sqrt(abar_t)


def ve_to_vp(x_ve, abar_t):
  """x_VP = x_VE * sqrt(alpha_bar_t) = x_VE / sqrt(1 + sigma_t^2) (Appendix B, Eq. 15-16)."""
  return x_ve * jnp.sqrt(abar_t)


def x0_from_eps(x_vp, eps, abar_t):
  """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) (Eq. 14 solved for x0)."""
  return (x_vp - jnp.sqrt(1.0 - abar_t) * eps) / jnp.sqrt(abar_t)


def eps_from_x0(x_vp, x0, abar_t):
  """eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t) (Eq. 14 solved for eps)."""
  return (x_vp - jnp.sqrt(abar_t) * x0) / jnp.sqrt(1.0 - abar_t)
