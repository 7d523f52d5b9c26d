"""DDRM-JPEG (Kawar, Song, Ermon, Elad 2022, "JPEG Artifact Correction using Denoising Diffusion
Restoration Models"): DDRM for a non-linear degradation given by an encoder E and decoder D.

DDRM's pseudo-inverse H^+ y is replaced by the decoder: with f = D(E(.)), an x0 prediction is
moved onto the set of images with the measurement's coefficients by

  x0_hat = x0 - f(x0) + f(y)                                   (the paper's Sec. 3)

(here f(y) is y itself by default: y is a decoded file, D(k); `reencode_y=True` re-encodes it)

and the next state (VP view, alpha' = alpha_bar at the next level) is

  x_t' = sqrt(alpha') (eta_b x0_hat + (1 - eta_b) x0) + sqrt(1 - alpha') (eta z + (1 - eta) eps)

with z ~ N(0, I) and eps the network's prediction, as bahjat-kawar/ddrm-jpeg's
functions/denoising.py (jpeg_steps) computes it. At the default eta = 1 the noise term is pure
z (the code's linear mix eta z + (1 - eta) eps and DDIM's sqrt(1 - eta^2) eps + eta z coincide
at eta = 0 and 1). The chain starts from y noised to the initial level,
x_T = sqrt(alpha_bar_T) y + sqrt(1 - alpha_bar_T) z (SDEdit-like), and the last step (to the
clean level, alpha' = 1) returns eta_b x0_hat + (1 - eta_b) x0. D(E(.)) is piecewise constant
(zero gradient almost everywhere): nothing here differentiates through it.

Defaults (the ddrm-jpeg README and main.py): 20 steps, eta = 1, eta_b = 0.4, initial timestep
300; the timesteps are floor(i * t_start / steps), i = 0..steps-1, which is the code's
range(0, t_start, t_start // steps) (0, 15, ..., 285: the chain starts at 285, not 300) when
steps divides t_start. The paper averages 8 samples; averaging is the caller's (every sample is
a draw of this function with another key).

`codec` is anything with `image_shape` and `roundtrip(x) = D(E(x))` on one image: a
`ddrm_jax.operators.jpeg.JPEGCodec` (JPEG artifact correction) or `PixelQuantization` (the
paper's dequantization problem). Randomness: image i uses k_i = fold_in(key, i); the
initialisation draws from fold_in(k_i, 0) and step s (1..steps) from fold_in(k_i, s).
"""

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from ddrm_jax import diffusion
from ddrm_jax import sampler

PAPER_DEFAULTS = {'steps': 20, 'eta': 1.0, 'eta_b': 0.4, 't_start': 300}


def _int(name, value, lo, hi):
  if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
    raise ValueError(f'{name} must be a Python int, got {value!r}')
  if not lo <= int(value) <= hi:
    raise ValueError(f'{name} must be in [{lo}, {hi}], got {value}')
  return int(value)


def make_settings(*, steps=20, eta=1.0, eta_b=0.4, t_start=300, betas=None):
  """Checks the static settings; returns `sampler.SamplerSettings` (sigma_y = 0) whose
  timesteps are floor(i * t_start / steps), i = 0..steps-1."""
  num_timesteps = (diffusion.linear_betas() if betas is None
                   else diffusion.check_betas(betas)).shape[0]
  t_start = _int('t_start', t_start, 1, num_timesteps)
  steps = _int('steps', steps, 1, t_start)
  return sampler.make_settings(eta=eta, eta_b=eta_b, betas=betas,
                               timesteps=diffusion.timestep_sequence(steps, t_start))


def _check_codec(codec, y, batched_codec):
  for attr in ('image_shape', 'roundtrip'):
    if not hasattr(codec, attr):
      raise ValueError(f'codec must be a JPEGCodec or PixelQuantization (an object with '
                       f'image_shape and roundtrip), missing {attr!r}: got {type(codec).__name__}')
  shape = tuple(codec.image_shape)
  if not hasattr(y, 'shape') or not hasattr(y, 'dtype'):
    raise ValueError(f'y must be an array (B, *codec.image_shape) = (B, *{shape}), got '
                     f'{type(y).__name__}')
  if tuple(y.shape[1:]) != shape or len(y.shape) != len(shape) + 1 or y.shape[0] < 1:
    raise ValueError(f'y must have shape (B, *codec.image_shape) = (B, *{shape}), got {y.shape}')
  if not jnp.issubdtype(y.dtype, jnp.floating):
    raise ValueError(f'y must be floating point (decoded images in [-1, 1]), got {y.dtype}')
  batch = y.shape[0]
  if batched_codec:
    sampler.check_batched_leaves(codec, batch, 'batched_codec', 'codec')
  return batch


def projector(codec, batched_codec=False):
  """x (B, H, W, C) -> D(E(x)) per image (the codec shared, or one per image)."""
  return jax.vmap(lambda c, x: c.roundtrip(x), in_axes=(0 if batched_codec else None, 0))


def _normal(keys, like):
  return jax.vmap(lambda k: jax.random.normal(k, like.shape[1:], like.dtype))(keys)


def init(y, keys, settings):
  """x_T = sqrt(alpha_bar_T) y + sqrt(1 - alpha_bar_T) z (VP view), z from fold_in(k_i, 0)."""
  sqrt_ab, sqrt_1m_ab, _ = sampler.noise_tables(settings)
  t = settings.timesteps[-1]
  return sqrt_ab[t + 1] * y + sqrt_1m_ab[t + 1] * _normal(sampler.fold_keys(keys, 0), y)


def transition(model_fn, project, x, dey, keys, step_id, t, t_next, settings, guidance_fn=None):
  """One DDRM-JPEG step of a batch from level t to t_next (-1: clean) in the VP view, given
  `project` (x -> D(E(x)) per image) and dey = D(E(y)). Returns (x_next, x0)."""
  sqrt_ab, sqrt_1m_ab, _ = sampler.noise_tables(settings)
  t = jnp.asarray(t, jnp.int32)
  t_next = jnp.asarray(t_next, jnp.int32)
  a_t, b_t = sqrt_ab[t + 1], sqrt_1m_ab[t + 1]
  a_n, b_n = sqrt_ab[t_next + 1], sqrt_1m_ab[t_next + 1]
  eps = sampler.guided_eps(model_fn, x, jnp.full((x.shape[0],), t, jnp.int32), b_t, guidance_fn)
  x0 = sampler.x0_from_eps(x, eps, a_t, b_t)
  x0_hat = x0 - project(x0) + dey  # The generalised pseudo-inverse step.
  eta, eta_b = settings.eta, settings.eta_b
  z = _normal(sampler.fold_keys(keys, jnp.asarray(step_id, jnp.uint32)), x)
  x_next = (a_n * (eta_b * x0_hat + (1.0 - eta_b) * x0)
            + b_n * (eta * z + (1.0 - eta) * eps))
  return x_next, x0


def sample(model_fn, codec, y, key, *, steps=20, eta=1.0, eta_b=0.4, t_start=300,
           guidance_fn=None, batched_codec=False, betas=None, return_x0_preds=False,
           reencode_y=False):
  """Restores a batch of decoded JPEG (or quantized) images with DDRM-JPEG; pure and
  traceable inside the caller's `jit` (params, codec, y and key may all be arguments).

  Args:
    model_fn: `model_fn(x_t, t) -> eps`, x_t (B, H, W, C) in the VP scaling, t int32 (B,);
      learned-sigma outputs (2C channels) use the first C.
    codec: a `JPEGCodec` / `PixelQuantization` for one image (or, with `batched_codec=True`,
      a pytree of them with a leading batch axis on every leaf: one per image).
    y: (B, *codec.image_shape) the measurements as decoded images in [-1, 1] (the file as a
      decoder shows it, e.g. `operators.jpeg.read_jpeg`); only D(E(y)) and the start use it.
    key: one PRNG key (image i uses fold_in(key, i)) or a (B,) batch of per-image keys.
    steps: network calls; timesteps floor(i * t_start / steps).
    eta, eta_b: the paper's hyper-parameters (eta in [0, 1], eta_b in [0, 2]).
    t_start: the initial timestep (the chain starts at the largest timestep below it).
    guidance_fn: optional `guidance_fn(x_t, t) -> scale * grad log p(c | x_t)`
      (`sampler.classifier_guidance`), folded into eps as `sampler.sample` does.
    betas: optional beta schedule (default linear 1e-4..0.02 over 1000 steps).
    return_x0_preds: also return every step's x0 prediction (steps, B, H, W, C).
    reencode_y: use D(E(y)) as the target of x0_hat (the paper's formula, for a y that is not
      a decode, e.g. a clean image). Default: y itself, which is D(k) for the file's
      coefficients k. The two agree when the codec is idempotent on y (4:4:4, 'nearest'
      upsampling); with libjpeg's fancy chroma upsampling E(D(k)) can differ from k in a few
      chroma coefficients, and then only y keeps the restoration on the file.

  Returns:
    The restoration (B, H, W, C) (not clipped), or (x, x0_preds).
  """
  settings = make_settings(steps=steps, eta=eta, eta_b=eta_b, t_start=t_start, betas=betas)
  batch = _check_codec(codec, y, batched_codec)
  keys = sampler.image_keys(key, batch)
  y = jnp.asarray(y, jnp.promote_types(y.dtype, jnp.float32))
  project = projector(codec, batched_codec)
  project_codec = lambda x: project(codec, x)
  dey = project_codec(y) if reencode_y else y  # The decoded measurement D(k).
  x = init(y, keys, settings)

  def body(x, xs):
    step_id, t, t_next = xs
    x, x0 = transition(model_fn, project_codec, x, dey, keys, step_id, t, t_next, settings,
                       guidance_fn)
    return x, (x0 if return_x0_preds else None)

  x, x0_preds = jax.lax.scan(body, x, sampler.schedule(settings))
  # At t = -1 (alpha_bar = 1) the state is the restored image.
  return (x, x0_preds) if return_x0_preds else x
