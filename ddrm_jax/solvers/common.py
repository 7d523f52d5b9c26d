"""Pieces the solvers share, built on the public DDRM-step pieces of `ddrm_jax.sampler`.

Every solver runs its chain in the variance-preserving (VP) view: the state is
x_t = a_t x0 + b_t eps with a_t = sqrt(alpha_bar_t), b_t = sqrt(1 - alpha_bar_t) (Eq. 14 of the
DDRM paper), the network's own scaling. The VE noise level is sigma_t = b_t / a_t. Spectral
quantities follow the operator's SVD H = U diag(s) V^T: `uty` = U^T y, `ybar` = Sigma^+ U^T y
(zero where s_i = 0, so truncated directions of y never enter).

Randomness, as in `sampler.sample`: image i uses k_i = fold_in(key, i) (or the i-th key of a
(B,) batch); x_T ~ N(0, I) is drawn from fold_in(k_i, 0) and the s-th transition of the chain
(s = 1, 2, ...) from fold_in(k_i, s).
"""

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from ddrm_jax import sampler


@dataclasses.dataclass(frozen=True)
class Chain:
  """What every solver computes once per chain (`prepare`)."""
  settings: sampler.SamplerSettings
  batch: int
  keys: jax.Array  # (B,) per-image keys.
  y: jax.Array  # (B, *op.y_shape), floating.
  s: jax.Array  # (n,) or (B, n) with batched operators.
  ybar: jax.Array  # (B, n) Sigma^+ U^T y.
  batched_op: bool

  @property
  def uty(self):
    """U^T y restricted to the observed directions (s_i > 0), (B, n)."""
    return self.s * self.ybar


def prepare(op, y, key, *, steps, sigma_y, timesteps=None, betas=None, batched_op=False):
  """Checks the common arguments eagerly (ValueErrors name them) and computes (s, ybar) once."""
  settings = sampler.make_settings(steps=steps, sigma_y=sigma_y, timesteps=timesteps,
                                   betas=betas)
  batch = sampler.check_inputs(op, y, batched_op)
  keys = sampler.image_keys(key, batch)
  y = jnp.asarray(y, jnp.promote_types(jnp.asarray(y).dtype, jnp.float32))
  s, ybar = sampler.spectral(op, y, batched_op)
  return Chain(settings=settings, batch=batch, keys=keys, y=y, s=s, ybar=ybar,
               batched_op=batched_op)


def number(name, value, low=None, high=None, *, integer=False, low_open=False):
  """A hyperparameter as a Python float (or int), checked eagerly: a ValueError names it."""
  if isinstance(value, jax.core.Tracer):
    raise ValueError(f'{name} must be a Python number fixed at trace time, got a traced value')
  kinds = (numbers.Integral, np.integer) if integer else (numbers.Real, np.floating, np.integer)
  if isinstance(value, bool) or not isinstance(value, kinds):
    raise ValueError(f'{name} must be {"an int" if integer else "a real number"}, '
                     f'got {value!r}')
  value = int(value) if integer else float(value)
  if not math.isfinite(value):
    raise ValueError(f'{name} must be finite, got {value}')
  if low is not None and (value <= low if low_open else value < low):
    raise ValueError(f'{name} must be {">" if low_open else ">="} {low}, got {value}')
  if high is not None and value > high:
    raise ValueError(f'{name} must be <= {high}, got {value}')
  return value


def per_image(fn, chain, n_image_args):
  """vmap of fn(op, s, *image_args) over images; op and s shared or batched (batched_op)."""
  shared = 0 if chain.batched_op else None
  return jax.vmap(fn, in_axes=(shared, shared) + (0,) * n_image_args)


def to_spectral(op, chain, x):
  """V^T x per image: (B, H, W, C) -> (B, n)."""
  return per_image(lambda o, _, xi: o.Vt(xi), chain, 1)(op, chain.s, x)


def from_spectral(op, chain, v):
  """V v per image: (B, n) -> (B, H, W, C)."""
  return per_image(lambda o, _, vi: o.V(vi), chain, 1)(op, chain.s, v)


def coefficients(settings, t):
  """(a_t, b_t) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) at int t (may be traced; -1 is the
  clean level: (1, 0))."""
  sqrt_ab, sqrt_1m_ab, _ = sampler.noise_tables(settings)
  t = jnp.asarray(t, jnp.int32)
  return sqrt_ab[t + 1], sqrt_1m_ab[t + 1]


def network_x0(model_fn, x, t, settings, guidance_fn=None):
  """(x0, eps): the network's predictions at the VP state x (B, H, W, C), level t (int scalar),
  classifier guidance folded into eps (`sampler.guided_eps`)."""
  a, b = coefficients(settings, t)
  t_batch = jnp.full((x.shape[0],), t, jnp.int32)
  eps = sampler.guided_eps(model_fn, x, t_batch, b, guidance_fn)
  return sampler.x0_from_eps(x, eps, a, b), eps


def network_x0_vjp(model_fn, x, t, settings, guidance_fn=None):
  """(x0, eps, vjp): `network_x0` and the vector-Jacobian product v -> (d x0 / d x)^T v through
  the network. Classifier guidance shifts x0 by a term held constant in the product."""
  a, b = coefficients(settings, t)
  t_batch = jnp.full((x.shape[0],), t, jnp.int32)

  def x0_of(x_in):
    eps = sampler.guided_eps(model_fn, x_in, t_batch, b)
    return sampler.x0_from_eps(x_in, eps, a, b), eps

  x0, vjp, eps = jax.vjp(x0_of, x, has_aux=True)
  if guidance_fn is not None:
    eps = sampler.guided_eps(lambda *_: eps, x, t_batch, b, guidance_fn)
    x0 = sampler.x0_from_eps(x, eps, a, b)
  return x0, eps, lambda v: vjp(v)[0]


def ddim_sigma(settings, t, t_next, eta):
  """The DDIM noise std (Song et al. 2021, Eq. 16) from level t to t_next < t:
  eta sqrt((1 - ab_next) / (1 - ab_t) * (1 - ab_t / ab_next)); eta = 1 is the DDPM posterior."""
  a, b = coefficients(settings, t)
  a_n, b_n = coefficients(settings, t_next)
  return eta * b_n / b * jnp.sqrt(jnp.maximum(1.0 - (a / a_n)**2, 0.0))


def vp_step(x0, eps, z, a_next, b_next, c):
  """x_next = a' x0 + sqrt(b'^2 - c^2) eps + c z: the DDIM family of VP updates (c = noise std)."""
  return a_next * x0 + jnp.sqrt(jnp.maximum(b_next**2 - c**2, 0.0)) * eps + c * z


def normal(keys, step_id, shape, dtype):
  """N(0, I) of `shape` per image from fold_in(k_i, step_id): (B, *shape)."""
  step_keys = sampler.fold_keys(keys, jnp.asarray(step_id, jnp.uint32))
  return jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(step_keys)


def init(op, chain):
  """x_T ~ N(0, I) in the VP view, (B, *op.x_shape), drawn from fold_in(k_i, 0)."""
  return normal(chain.keys, 0, tuple(op.x_shape), chain.ybar.dtype)


def run(step, x, schedule, return_x0_preds):
  """One `lax.scan` of `step(x, step_id, t, t_next) -> (x_next, x0)` over `schedule` (the
  arrays of `sampler.schedule`); returns x, or (x, x0 of every step) with `return_x0_preds`."""
  def body(x, xs):
    x, x0 = step(x, *xs)
    return x, (x0 if return_x0_preds else None)

  x, preds = jax.lax.scan(body, x, schedule)
  return (x, preds) if return_x0_preds else x
