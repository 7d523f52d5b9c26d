"""The DDRM sampler (Section 3): Eq. 7 initialisation and Eq. 8 updates as one `lax.scan`.

The chain runs in the variance-exploding (VE) view of Appendix B: the state is
x_t(VE) = x_t(VP) / sqrt(alpha_bar_t), and the network sees x_t(VP) = x_t(VE) * sqrt(alpha_bar_t).
Per spectral index i (singular value s_i, next noise level sigma', ybar = Sigma^+ U^T y,
nsig_i = sigma_y / s_i), Eq. 8 has three cases, selected by masks (fixed shapes):

1. s_i = 0 (unobserved):     x0_i + sqrt(1 - eta^2) sigma' eps_i,        std eta sigma'.
2. s_i sigma' < sigma_y:      x0_i + sqrt(1 - eta^2) sigma' (ybar_i - x0_i) / nsig_i,
                              std eta sigma'.
3. s_i sigma' >= sigma_y:     eta_b ybar_i + (1 - eta_b) x0_i,
                              std sqrt(sigma'^2 - nsig_i^2 eta_b^2).

Ties s_i sigma' = sigma_y fall in case 3 (the paper's sigma_t >= sigma_y / s_i), so a noiseless
problem ends exactly on ybar (eta_b = 1) in its observed coordinates. In case 1 the paper's
(xbar_{t+1} - x0bar) / sigma_{t+1} equals the network's spectral eps exactly, since
x_t(VE) = x0 + sigma_t eps. Predictions are never clipped.

Randomness: image i uses k_i = fold_in(key, i) (or the i-th key of a (B,) batch of keys); the
initialisation draws from fold_in(k_i, 0) and the s-th executed transition (s = 1..steps) from
fold_in(k_i, s). An image's result therefore depends only on k_i, not on its batch.

Public pieces for variants (blind deblurring, the solvers): `make_settings` (the schedule's
tables), `schedule` (the transitions in execution order), `spectral` (s and ybar), `init`
(Eq. 7), `transition` (Eq. 8), `guided_eps` / `x0_from_eps` (the network's predictions),
`classifier_guidance`, `noise_tables` and `fold_keys`. `sample` is their composition.
"""

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ddrm_jax import diffusion

BATCH_AXIS = 'batch'


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """Validated static sampler settings (Python numbers and numpy tables): `make_settings`."""
  eta: float
  eta_b: float
  sigma_y: float
  timesteps: tuple  # Ascending ints in [0, num_timesteps).
  alpha_bars: np.ndarray = dataclasses.field(repr=False, compare=False)  # (T,) float32.

  @property
  def steps(self):
    return len(self.timesteps)


# -- validation --------------------------------------------------------------------------------


def _python_number(name, value):
  """A Python float from a number fixed at trace time; ValueError for tracers and junk."""
  if isinstance(value, jax.core.Tracer):
    raise ValueError(f'{name} must be a Python number fixed at trace time, got a traced '
                     f'value; pass it as a static argument')
  if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray, jax.Array)):
    raise ValueError(f'{name} must be a real number, got {value!r}')
  if np.ndim(value) != 0:
    raise ValueError(f'{name} must be a scalar, got shape {np.shape(value)}')
  value = float(value)
  if not math.isfinite(value):
    raise ValueError(f'{name} must be finite, got {value}')
  return value


def make_settings(*, steps=20, eta=0.85, eta_b=1.0, sigma_y=0.0, timesteps=None, betas=None):
  """Checks the sampler's static arguments eagerly; returns `SamplerSettings`.

  `timesteps`, when given, replaces the default schedule t_i = floor(i * T / steps) and then
  defines the number of steps (`steps` is ignored).
  """
  eta = _python_number('eta', eta)
  eta_b = _python_number('eta_b', eta_b)
  sigma_y = _python_number('sigma_y', sigma_y)
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f'eta must be in [0, 1], got {eta}')
  if not 0.0 <= eta_b <= 2.0:
    raise ValueError(f'eta_b must be in [0, 2], got {eta_b}')
  if sigma_y < 0.0:
    raise ValueError(f'sigma_y must be >= 0 (noise std in [-1, 1] model units), got {sigma_y}')
  betas = diffusion.linear_betas() if betas is None else diffusion.check_betas(betas)
  num_timesteps = betas.shape[0]
  if timesteps is None:
    if isinstance(steps, bool) or not isinstance(steps, (numbers.Integral, np.integer)):
      raise ValueError(f'steps must be a Python int, got {steps!r}')
    if not 1 <= int(steps) <= num_timesteps:
      raise ValueError(f'steps must be in [1, {num_timesteps}], got {steps}')
    seq = diffusion.timestep_sequence(int(steps), num_timesteps)
  else:
    try:
      seq = np.asarray(timesteps)
    except Exception:
      raise ValueError('timesteps must be a concrete sequence of ints, not a traced '
                       'value') from None
    if seq.ndim != 1 or seq.shape[0] < 1 or not np.issubdtype(seq.dtype, np.integer):
      raise ValueError(f'timesteps must be a non-empty 1-D sequence of ints, got {timesteps!r}')
    if np.any(np.diff(seq) <= 0) or seq[0] < 0 or seq[-1] >= num_timesteps:
      raise ValueError(f'timesteps must be strictly increasing in [0, {num_timesteps}), '
                       f'got {seq.tolist()}')
  return SamplerSettings(eta=eta, eta_b=eta_b, sigma_y=sigma_y,
                  timesteps=tuple(int(t) for t in seq),
                  alpha_bars=diffusion.alpha_bars(betas))


def _check_operator(op):
  for attr in ('x_shape', 'y_shape', 'Vt', 'V', 'Ut', 'singulars'):
    if not hasattr(op, attr):
      raise ValueError(f'op must be a DDRM operator (missing {attr!r}), got {type(op).__name__}')
  return tuple(op.x_shape), tuple(op.y_shape)


def _check_one_operator(op, x_shape, dtype):
  """Raises a ValueError when `op` is not one image's operator (e.g. a stacked batch of them)."""
  n = math.prod(x_shape)
  try:
    shapes = (jax.eval_shape(op.singulars).shape,
              jax.eval_shape(op.Vt, jax.ShapeDtypeStruct(x_shape, dtype)).shape)
    ok = shapes == ((n,), (n,))
  except Exception:  # pylint: disable=broad-except  (shape errors of any kind inside op)
    ok = False
  if not ok:
    leading = sorted({np.shape(leaf)[0] for leaf in jax.tree_util.tree_leaves(op)
                      if np.ndim(leaf) >= 1})
    raise ValueError(f'op does not act on one {x_shape} image (a stacked batch of operators, '
                     f'leading sizes {leading}?): pass batched_op=True for one operator per '
                     'image')


def check_inputs(op, y, batched_op=False):
  """Checks y of shape (B, *op.y_shape) (and per-image operator leaves); returns B."""
  x_shape, y_shape = _check_operator(op)
  if not hasattr(y, 'shape') or not hasattr(y, 'dtype'):
    raise ValueError(f'y must be an array of shape (B, *op.y_shape) = (B, *{y_shape}), '
                     f'got {type(y).__name__}')
  if tuple(y.shape[1:]) != y_shape or len(y.shape) != len(y_shape) + 1:
    raise ValueError(f'y must have shape (B, *op.y_shape) = (B, *{y_shape}), got {y.shape}')
  if not jnp.issubdtype(y.dtype, jnp.floating):
    raise ValueError(f'y must be floating point, got dtype {y.dtype}')
  batch = y.shape[0]
  if batch < 1:
    raise ValueError('y must hold at least one measurement (B >= 1)')
  if len(x_shape) != 3:
    raise ValueError(f'op.x_shape must be (H, W, C), got {x_shape}')
  if not batched_op:
    _check_one_operator(op, x_shape, y.dtype)
  if batched_op:
    check_batched_leaves(op, batch, 'batched_op', 'operator')
  return batch


def check_batched_leaves(tree, batch, setting, noun):
  """ValueError unless every leaf of `tree` (an operator or codec given per image, `setting` =
  True) has a leading batch axis of size `batch`."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if np.ndim(leaf) < 1 or np.shape(leaf)[0] != batch:
      raise ValueError(f'{setting}=True: every {noun} leaf needs a leading batch axis of size '
                       f'B = {batch}; leaf {jax.tree_util.keystr(path)} has shape '
                       f'{np.shape(leaf)}')


def image_keys(key, batch):
  """Per-image keys (B,): fold_in(key, i) for one key, or the given (B,) batch of keys."""
  if isinstance(key, (int, np.integer)):
    raise ValueError('key must be a JAX PRNG key (jax.random.key(seed)), not an int')
  key = jnp.asarray(key)
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    typed = key
  elif key.dtype == jnp.uint32 and key.ndim in (1, 2):
    typed = jax.random.wrap_key_data(key)
  else:
    raise ValueError(f'key must be a PRNG key or a (B,) batch of keys, got dtype {key.dtype} '
                     f'shape {key.shape}')
  if typed.ndim == 0:
    return jax.vmap(lambda i: jax.random.fold_in(typed, i))(jnp.arange(batch, dtype=jnp.uint32))
  if typed.shape != (batch,):
    raise ValueError(f'a batch of keys must have shape (B,) = ({batch},), got {typed.shape}')
  return typed


# -- the public pieces of a DDRM step (variants such as blind deblurring and the solvers use
# these; `sample` is their composition) --------------------------------------------------------


def spectral(op, y, batched_op=False):
  """(s, ybar) with ybar = Sigma^+ U^T y (B, n) for measurements y (B, *op.y_shape); s is the
  operator's singular values (n,), or (B, n) for batched operators. Computed once per chain."""
  if batched_op:
    s = jax.vmap(lambda o: o.singulars())(op)
    uty = jax.vmap(lambda o, yi: o.Ut(yi))(op, y)
  else:
    s = op.singulars()
    uty = jax.vmap(op.Ut)(y)
  observed = s > 0
  ybar = jnp.where(observed, uty / jnp.where(observed, s, 1.0), 0.0)
  return s, ybar


def _noise_std_of_ybar(s, sigma_y):
  """(sigma_y / s_i, s_i / sigma_y), safe where s_i = 0 or sigma_y = 0."""
  observed = s > 0
  nsig = jnp.where(observed, sigma_y / jnp.where(observed, s, 1.0), 0.0)
  # Case 2 never occurs when sigma_y = 0 (s_i sigma' >= 0 = sigma_y: a tie or case 3).
  inv_nsig = s / sigma_y if sigma_y > 0 else jnp.zeros_like(s)
  return nsig, inv_nsig


def _init_one(op, s, ybar, key, sigma_T, sigma_y):
  """Eq. 7 for one image, as the VE image x_T."""
  nsig, _ = _noise_std_of_ybar(s, sigma_y)
  start_on_y = (s > 0) & (s * sigma_T >= sigma_y)
  mean = jnp.where(start_on_y, ybar, 0.0)
  var = jnp.where(start_on_y, sigma_T**2 - nsig**2, sigma_T**2)
  z = jax.random.normal(key, ybar.shape, ybar.dtype)
  return op.V(mean + jnp.sqrt(jnp.maximum(var, 0.0)) * z)


def _update_one(op, s, ybar, x0, eps, key, sigma_next, settings):
  """Eq. 8 for one image: the VE image at the next level from the x0 and eps predictions."""
  eta, eta_b, sigma_y = settings.eta, settings.eta_b, settings.sigma_y
  nsig, inv_nsig = _noise_std_of_ybar(s, sigma_y)
  x0bar = op.Vt(x0)
  epsbar = op.Vt(eps)
  case3 = (s > 0) & (s * sigma_next >= sigma_y)
  case2 = (s > 0) & ~case3
  c = math.sqrt(1.0 - eta**2) * sigma_next
  mean1 = x0bar + c * epsbar
  mean2 = x0bar + c * (ybar - x0bar) * inv_nsig
  mean3 = eta_b * ybar + (1.0 - eta_b) * x0bar
  # eta_b > 1 may ask for a negative variance; it is clamped to zero.
  std3 = jnp.sqrt(jnp.maximum(sigma_next**2 - (nsig * eta_b)**2, 0.0))
  mean = jnp.where(case3, mean3, jnp.where(case2, mean2, mean1))
  std = jnp.where(case3, std3, eta * sigma_next)
  z = jax.random.normal(key, ybar.shape, x0bar.dtype)
  return op.V(mean + std * z)


def _vmap_images(fn, batched_op, n_image_args):
  """vmap over images; the operator and s are shared or carry a leading batch axis."""
  shared = 0 if batched_op else None
  return jax.vmap(fn, in_axes=(shared, shared) + (0,) * n_image_args)


def fold_keys(keys, data):
  """fold_in(k_i, data) for every key of a (B,) batch (the per-step keys of a chain)."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)


def noise_tables(settings):
  """(sqrt(alpha_bar), sqrt(1 - alpha_bar), sigma_VE) as (T + 1,) arrays indexed by t + 1
  (index 0 is t = -1, the clean image: 1, 0, 0)."""
  ab = settings.alpha_bars
  return (jnp.asarray(diffusion.sqrt_alpha_bars(ab)),
          jnp.asarray(diffusion.sqrt_one_minus_alpha_bars(ab)),
          jnp.asarray(diffusion.ve_sigmas(ab)))


def schedule(settings):
  """The chain's transitions in execution order: (step_ids, t, t_next), each (steps,) numpy.

  t runs from the largest timestep down; t_next is the next one, -1 (clean) for the last;
  step_ids are 1..steps (transition s draws its noise from fold_in(k_i, s)).
  """
  seq = np.asarray(settings.timesteps, np.int32)[::-1]
  seq_next = np.concatenate([seq[1:], [-1]]).astype(np.int32)
  return np.arange(1, settings.steps + 1, dtype=np.uint32), seq, seq_next


def classifier_guidance(classifier_fn, labels, scale):
  """`guidance_fn(x_t, t) = scale * grad_x log p(labels | x_t, t)` for `sample` (and any
  sampler that takes a guidance_fn); `classifier_fn(x_t, t) -> logits` (B, K) at the VP x_t."""
  def guidance_fn(x_t, t):
    def log_p(x):
      logp = jax.nn.log_softmax(classifier_fn(x, t).astype(jnp.float32), axis=-1)
      return jnp.take_along_axis(logp, labels[:, None], axis=-1).sum()
    return scale * jax.grad(log_p)(x_t)
  return guidance_fn


def guided_eps(model_fn, x_vp, t_batch, sqrt_one_minus_alpha_bar, guidance_fn=None):
  """The network's eps at the VP state x_vp (B, H, W, C) and int (B,) t_batch, classifier
  guidance folded in as eps - sqrt(1 - alpha_bar_t) * guidance_fn(x_t, t) (evaluated at x_t,
  REFERENCE_NOTES defect 3). Learned-sigma networks: their first C channels."""
  eps = _model_eps(model_fn, x_vp, t_batch).astype(x_vp.dtype)
  if guidance_fn is None:
    return eps
  grad = jnp.asarray(guidance_fn(x_vp, t_batch))
  if grad.shape != x_vp.shape:
    raise ValueError(f'guidance_fn must return the shape of x_t {x_vp.shape}, got {grad.shape}')
  return guide(eps, grad.astype(x_vp.dtype), sqrt_one_minus_alpha_bar)


def guide(eps, grad, sqrt_one_minus_alpha_bar):
  """Classifier guidance on eps (Dhariwal & Nichol, Alg. 2): eps - sqrt(1 - alpha_bar_t) grad,
  grad = scale * grad_x log p(c | x_t) (`classifier_guidance`)."""
  return eps - sqrt_one_minus_alpha_bar * grad


def x0_from_eps(x_vp, eps, sqrt_alpha_bar, sqrt_one_minus_alpha_bar):
  """Eq. 14 solved for x0: (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t); no clipping."""
  return (x_vp - sqrt_one_minus_alpha_bar * eps) / sqrt_alpha_bar


def ddrm_init(op, y, keys, *, sigma_y=0.0, t_start=950, betas=None, batched_op=False):
  """x_T of Eq. 7 in the VE view, shape (B, *op.x_shape), for per-image keys (B,).

  Coordinates with s_i > 0 and s_i sigma_T >= sigma_y start at ybar_i with variance
  sigma_T^2 - (sigma_y / s_i)^2, the others at N(0, sigma_T^2). Draws from fold_in(k_i, 0).
  """
  settings = make_settings(sigma_y=sigma_y, timesteps=(t_start,), betas=betas)
  batch = check_inputs(op, y, batched_op)
  keys = image_keys(keys, batch)
  s, ybar = spectral(op, jnp.asarray(y, _dtype(y)), batched_op)
  return init(op, s, ybar, keys, settings, batched_op)


def init(op, s, ybar, keys, settings, batched_op=False):
  """Eq. 7 for a batch at the schedule's largest timestep, given (s, ybar) of `spectral`:
  the VE state x_T (B, *op.x_shape), drawn from fold_in(k_i, 0)."""
  sigma_T = jnp.asarray(diffusion.ve_sigmas(settings.alpha_bars))[settings.timesteps[-1] + 1]
  one = _vmap_images(lambda o, si, yi, k: _init_one(o, si, yi, k, sigma_T, settings.sigma_y),
                     batched_op, 2)
  return one(op, s, ybar, fold_keys(keys, 0))


def _dtype(y):
  return jnp.promote_types(jnp.asarray(y).dtype, jnp.float32)


def ddrm_step(model_fn, op, x, y, keys, step, t, t_next, *, eta=0.85, eta_b=1.0, sigma_y=0.0,
              guidance_fn=None, batched_op=False, betas=None):
  """One DDRM transition (Eq. 8) of a batch from level t to t_next < t (-1: clean).

  Args: x (B, H, W, C) the VE state x_t; y (B, *op.y_shape); keys (B,) per-image keys; step
  the transition's index s (its noise is drawn from fold_in(k_i, s)); t, t_next int scalars
  (may be traced). Returns (x_{t_next} in the VE view, the x0 prediction), both (B, H, W, C).
  """
  settings = make_settings(eta=eta, eta_b=eta_b, sigma_y=sigma_y, betas=betas)
  batch = check_inputs(op, y, batched_op)
  keys = image_keys(keys, batch)
  s, ybar = spectral(op, jnp.asarray(y, _dtype(y)), batched_op)
  x = jnp.asarray(x, ybar.dtype)
  if x.shape != (batch,) + tuple(op.x_shape):
    raise ValueError(f'x must have shape (B, *op.x_shape) = {(batch,) + tuple(op.x_shape)}, '
                     f'got {x.shape}')
  return transition(model_fn, op, x, s, ybar, keys, step, t, t_next, settings, guidance_fn,
                    batched_op)


def transition(model_fn, op, x, s, ybar, keys, step_id, t, t_next, settings, guidance_fn=None,
               batched_op=False):
  """Eq. 8 for a batch, given (s, ybar) of `spectral`: the VE state x (B, H, W, C) at level t
  to level t_next (-1: clean); noise from fold_in(k_i, step_id). Returns (x_next, x0)."""
  sqrt_ab, sqrt_1m_ab, sigmas = noise_tables(settings)
  t = jnp.asarray(t, jnp.int32)
  t_next = jnp.asarray(t_next, jnp.int32)
  a_t, b_t = sqrt_ab[t + 1], sqrt_1m_ab[t + 1]
  x_vp = x * a_t  # Appendix B: x_t(VP) = x_t(VE) sqrt(alpha_bar_t) (Eq. 16).
  t_batch = jnp.full((x.shape[0],), t, jnp.int32)
  eps = guided_eps(model_fn, x_vp, t_batch, b_t, guidance_fn)
  x0 = x0_from_eps(x_vp, eps, a_t, b_t)
  sigma_next = sigmas[t_next + 1]
  update = _vmap_images(
      lambda o, si, yi, x0i, ei, k: _update_one(o, si, yi, x0i, ei, k, sigma_next, settings),
      batched_op, 4)
  x_next = update(op, s, ybar, x0, eps, fold_keys(keys, jnp.asarray(step_id, jnp.uint32)))
  return x_next, x0


def _model_eps(model_fn, x_vp, t_batch):
  out = model_fn(x_vp, t_batch)
  c = x_vp.shape[-1]
  shape = getattr(out, 'shape', None)
  if shape is None or len(shape) != 4 or tuple(shape[:3]) != x_vp.shape[:3] or shape[3] not in (
      c, 2 * c):
    raise ValueError(f'model_fn must return eps of shape {x_vp.shape} or, for learned sigma, '
                     f'{x_vp.shape[:3] + (2 * c,)}; got {shape}')
  return out[..., :c]  # Learned-sigma models: the first C channels are eps.


def sample(model_fn, op, y, key, *, steps=20, eta=0.85, eta_b=1.0, sigma_y=0.0,
           guidance_fn=None, batched_op=False, timesteps=None, betas=None,
           return_x0_preds=False):
  """Restores a batch with DDRM (Eq. 7-8); pure and traceable inside the caller's `jit`.

  Args:
    model_fn: `model_fn(x_t, t) -> eps`, x_t (B, H, W, C) in the VP scaling, t int32 (B,);
      eps (B, H, W, C) or (B, H, W, 2C) (learned sigma: the first C channels are used).
    op: an operator (one image; see ddrm_jax.operators), or with `batched_op=True` a pytree of
      operators whose leaves carry a leading batch axis (one operator per image).
    y: (B, *op.y_shape) measurements in [-1, 1] model units.
    key: one PRNG key (image i uses fold_in(key, i)) or a (B,) batch of per-image keys.
    steps: number of network calls, t_i = floor(i * 1000 / steps); ignored if `timesteps`.
    eta, eta_b: Eq. 8 hyper-parameters, eta in [0, 1], eta_b in [0, 2].
    sigma_y: measurement noise std in model units (twice the paper's [0, 1] figure).
    guidance_fn: optional `guidance_fn(x_t, t) -> scale * grad log p(c | x_t)`; the sampler
      uses eps - sqrt(1 - alpha_bar_t) * guidance at x_t (`classifier_guidance` makes one).
    timesteps: optional ascending int sequence in [0, len(betas)) replacing the default.
    betas: optional beta schedule (default linear 1e-4..0.02 over 1000 steps).
    return_x0_preds: also return the x0 prediction of every step, (steps, B, H, W, C), in
      execution order (largest t first).

  Returns:
    x0 of shape (B, H, W, C), or (x0, x0_preds) when `return_x0_preds`.
  """
  settings = make_settings(steps=steps, eta=eta, eta_b=eta_b, sigma_y=sigma_y,
                           timesteps=timesteps, betas=betas)
  batch = check_inputs(op, y, batched_op)
  keys = image_keys(key, batch)
  y = jnp.asarray(y, _dtype(y))
  s, ybar = spectral(op, y, batched_op)  # Once per chain, outside the loop.
  x = init(op, s, ybar, keys, settings, batched_op)

  def body(x, xs):
    step_id, t, t_next = xs
    x, x0 = transition(model_fn, op, x, s, ybar, keys, step_id, t, t_next, settings,
                       guidance_fn, batched_op)
    return x, (x0 if return_x0_preds else None)

  x, x0_preds = jax.lax.scan(body, x, schedule(settings))
  # At t = -1 (alpha_bar = 1, sigma = 0) the VE and VP views coincide: x is the restored x0.
  return (x, x0_preds) if return_x0_preds else x


# -- posterior statistics ----------------------------------------------------------------------


def posterior_stats(model_fn, op, y, key, n, **kwargs):
  """Mean and standard deviation images over `n` DDRM samples per measurement (paper Fig. 9).

  Sample j of image i is `sample(..., keys=fold_in(k_i, j))` with k_i the image's key; the
  samples run one batch at a time in a `fori_loop` with running (Welford) sums, so memory stays
  that of one `sample` call. The std is the population one (divides by n). Other keyword
  arguments go to `sample`. Returns (mean, std), each (B, H, W, C).
  """
  if isinstance(n, bool) or not isinstance(n, (numbers.Integral, np.integer)) or n < 1:
    raise ValueError(f'n must be a Python int >= 1, got {n!r}')
  if kwargs.get('return_x0_preds'):
    raise ValueError('posterior_stats does not return x0 predictions')
  make_settings(**{k: v for k, v in kwargs.items()
                   if k in ('steps', 'eta', 'eta_b', 'sigma_y', 'timesteps', 'betas')})
  batch = check_inputs(op, y, kwargs.get('batched_op', False))
  keys = image_keys(key, batch)
  shape = (batch,) + tuple(op.x_shape)
  dtype = _dtype(y)

  def body(j, carry):
    mean, m2 = carry
    x = sample(model_fn, op, y, fold_keys(keys, j.astype(jnp.uint32)), **kwargs)
    delta = x - mean
    mean = mean + delta / (j + 1).astype(dtype)
    return mean, m2 + delta * (x - mean)

  zeros = jnp.zeros(shape, dtype)
  mean, m2 = jax.lax.fori_loop(0, int(n), body, (zeros, zeros))
  return mean, jnp.sqrt(m2 / n)


# -- several devices ---------------------------------------------------------------------------


def batch_mesh(devices=None):
  """A 1-D `Mesh` over `devices` (default: all of `jax.devices()`) with axis 'batch'."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (BATCH_AXIS,))


def shard_batch(tree, mesh):
  """Places every leaf's leading (batch) axis across the mesh's 'batch' axis.

  Works on concrete arrays (device_put; in multi-process runs every process passes the same
  full arrays) and inside `jit` (a sharding constraint). Leading sizes must divide evenly.
  """
  return _place(tree, NamedSharding(mesh, PartitionSpec(BATCH_AXIS)))


def _place(tree, sharding):
  """Every leaf of `tree` with `sharding`: device_put (the same full arrays on every process of
  a multi-process mesh), or a sharding constraint inside `jit`."""
  def place(leaf):
    if isinstance(leaf, jax.core.Tracer):
      return jax.lax.with_sharding_constraint(leaf, sharding)
    if sharding.mesh.is_multi_process:
      data = np.asarray(leaf)
      return jax.make_array_from_process_local_data(sharding, data, data.shape)
    return jax.device_put(leaf, sharding)

  return jax.tree_util.tree_map(place, tree)


def replicate(tree, mesh):
  """Places every leaf of `tree` (e.g. network params) whole on every device of `mesh`.

  Params from `ddrm_jax.load_model` are uncommitted and need no placing; params committed to one
  device (`jax.device_put(params, device)`, an orbax restore) must be replicated before a
  model_fn closing over them is used by `sample_sharded`.
  """
  return _place(tree, NamedSharding(mesh, PartitionSpec()))


def sample_sharded(model_fn, op, y, key, *, mesh=None, **kwargs):
  """`sample` with the batch split over the devices of `mesh` (default: all devices).

  Same keys, same images as `sample` on one device: per-image keys are derived first, the
  batch is padded (by repeating its last image) to a multiple of the device count and the
  padding dropped from the result. Callable eagerly or inside `jit`. Arrays that `model_fn`
  closes over (params) must be uncommitted (as `ddrm_jax.load_model` returns them) or replicated
  over the mesh (`replicate`); otherwise a ValueError says so. For several hosts, call
  `jax.distributed.initialize()` first and make the same call with the same inputs on every
  process; the result is then a global array (gather with
  `jax.experimental.multihost_utils.process_allgather`).
  """
  mesh = batch_mesh() if mesh is None else mesh
  batched_op = kwargs.get('batched_op', False)
  batch = check_inputs(op, y, batched_op)
  keys = jax.random.key_data(image_keys(key, batch))
  pad = (-batch) % mesh.size

  def padded(a):
    if not pad:
      return a
    a = jnp.asarray(a)
    return jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], axis=0)

  y, keys = shard_batch((padded(y), padded(keys)), mesh)
  if batched_op:
    op = shard_batch(jax.tree_util.tree_map(padded, op), mesh)
  try:
    out = sample(model_fn, op, y, keys, **kwargs)
  except ValueError as e:
    if 'incompatible devices' not in str(e):
      raise
    raise ValueError('sample_sharded: model_fn uses arrays committed to other devices than the '
                     "mesh's (e.g. params put on one device); place them with "
                     'sampler.replicate(params, mesh) first') from None
  if not pad:
    return out
  return jax.tree_util.tree_map(lambda a: a[..., :batch, :, :, :], out)
