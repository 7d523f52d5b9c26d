"""Restoring batches of images with DDRM: the pure, jittable functions behind `ddrm-restore`.

Randomness: image i of a run gets k_i = fold_in(key(seed), i); split(k_i) = (k_noise, k_sample).
The measurement noise of the paper protocol draws from k_noise, posterior sample j from
fold_in(k_sample, j) (the key layout of `ddrm_jax.sampler.posterior_stats`). An image's random
draws depend only on its index, never on the batch it runs in. Its result is the same bits in
every batch of the same shape; XLA compiles another batch shape into another program, which may
round differently (about 1e-6, so some 8-bit pixels move by one level): `ddrm-restore` therefore
restores every image with the same one-image program.

Units: images and y in [-1, 1] model units; `sigma_y` here is in model units too (the command
line doubles the paper's [0, 1] figure); metrics on [0, 1] images clamped as when saved.
"""

import dataclasses

import jax
import jax.numpy as jnp

from ddrm_jax import blind
from ddrm_jax import metrics
from ddrm_jax import problems
from ddrm_jax import sampler


@dataclasses.dataclass(frozen=True)
class BatchSettings:
  """Static settings of a restore step (hashable; part of the jit cache key)."""
  deg: str
  steps: int = 20
  eta: float = 0.85
  eta_b: float = 1.0
  sigma_y: float = 0.0  # Model units ([-1, 1]): twice the paper's figure.
  num_samples: int = 1
  classifier_scale: float = 1.0
  measurement: bool = False  # Inputs are measurements (or photos for op.H), not clean images.
  apply_h: bool = False  # Measurement mode: inputs are images of op.x_shape, y = op.H(input).
  blind_kernel_size: int = 0  # > 0: blind deblurring (`blind.sample_blind`); op only degrades.
  method: str = 'ddrm'  # Or a method of ddrm_jax.solvers, with its hyperparameters:
  method_params: tuple = ()  # ((name, value), ...).
  t_start: int = 300  # Codec problems (jpeg): DDRM-JPEG's initial timestep.

  def __post_init__(self):
    sampler.make_settings(steps=self.steps, eta=self.eta, eta_b=self.eta_b, sigma_y=self.sigma_y)
    if isinstance(self.num_samples, bool) or int(self.num_samples) != self.num_samples or (
        self.num_samples < 1):
      raise ValueError(f'num_samples must be an int >= 1, got {self.num_samples!r}')
    if self.apply_h and not self.measurement:
      raise ValueError('apply_h is for measurement mode only')


def index_keys(seed, indices):
  """(B,) keys fold_in(key(seed), i) for the images' indices i in the whole run."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32))


def degrade(op, x, key, sigma_y):
  """y = H x + sigma_y z for one image x (model units), z ~ N(0, I) of op.y_shape."""
  y = op.H(x)
  return y + sigma_y * jax.random.normal(key, y.shape, y.dtype)


def degraded_view(op, y):
  """One measurement shown as an image of op.x_shape: low-resolution images by pixel blocks,
  grayscale repeated over the channels, other measurements through H^+ (zeros where unseen)."""
  x_shape, y_shape = tuple(op.x_shape), tuple(op.y_shape)
  if y_shape == x_shape:
    return y
  if len(y_shape) == 3 and x_shape[0] % y_shape[0] == 0 and x_shape[1] % y_shape[1] == 0:
    fh, fw = x_shape[0] // y_shape[0], x_shape[1] // y_shape[1]
    up = jnp.repeat(jnp.repeat(y, fh, axis=0), fw, axis=1)
    if y_shape[2] == x_shape[2]:
      return up
    if y_shape[2] == 1:
      return jnp.broadcast_to(up, x_shape)
  return op.H_pinv(y)


def _chains(y, sample_keys, labels, s):
  """The B*S chains of S samples per measurement, image-major: (ys, keys, labels), the key of
  sample j of image i fold_in(sample_keys[i], j)."""
  ys = jnp.repeat(y, s, axis=0)
  keys = jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(
      jnp.arange(s, dtype=jnp.uint32)))(sample_keys).reshape(-1)
  return ys, keys, None if labels is None else jnp.repeat(labels, s, axis=0)


def posterior_samples(model_fn, op, y, sample_keys, settings, labels=None, classifier_fn=None):
  """num_samples samples per measurement of DDRM (or of `settings.method`): (B, S, H, W, C).

  `model_fn(x_t, t, labels)` (labels None for unconditional networks); sample j of image i uses
  fold_in(sample_keys[i], j). The B*S chains run as one batch.
  """
  b, s = y.shape[0], settings.num_samples
  ys, keys, flat_labels = _chains(y, sample_keys, labels, s)
  guidance_fn = None
  if classifier_fn is not None:
    guidance_fn = sampler.classifier_guidance(classifier_fn, flat_labels, settings.classifier_scale)
  fn = lambda x_t, t: model_fn(x_t, t, flat_labels)
  if problems.get(settings.deg).codec:  # y = D(E(x)): DDRM-JPEG.
    from ddrm_jax.solvers import ddrm_jpeg  # pylint: disable=g-import-not-at-top
    x = ddrm_jpeg.sample(fn, op, ys, keys, steps=settings.steps, eta=settings.eta,
                         eta_b=settings.eta_b, t_start=settings.t_start, guidance_fn=guidance_fn)
  elif settings.method == 'ddrm':
    x = sampler.sample(fn, op, ys, keys, steps=settings.steps, eta=settings.eta,
                       eta_b=settings.eta_b, sigma_y=settings.sigma_y, guidance_fn=guidance_fn)
  else:
    from ddrm_jax import solvers  # pylint: disable=g-import-not-at-top
    x = solvers.get(settings.method).sample(fn, op, ys, keys, steps=settings.steps,
                                            sigma_y=settings.sigma_y, guidance_fn=guidance_fn,
                                            **dict(settings.method_params))
  return x.reshape((b, s) + x.shape[1:])


def posterior_samples_blind(model_fn, y, sample_keys, settings, labels=None):
  """num_samples blind-deblurring chains per measurement (`blind.sample_blind`, each with its
  own kernel estimate): samples (B, S, H, W, C) and kernels (B, S, k, k); keys as in
  `posterior_samples`."""
  b, s = y.shape[0], settings.num_samples
  ys, keys, flat_labels = _chains(y, sample_keys, labels, s)
  x, kernels = blind.sample_blind(lambda x_t, t: model_fn(x_t, t, flat_labels), ys, keys,
                                  settings.blind_kernel_size, steps=settings.steps,
                                  eta=settings.eta, eta_b=settings.eta_b,
                                  sigma_y=settings.sigma_y)
  return x.reshape((b, s) + x.shape[1:]), kernels.reshape((b, s) + kernels.shape[1:])


def model_to_unit(x):
  """Model units [-1, 1] -> [0, 1] image units, clamped as when saved (traceable)."""
  return jnp.clip((jnp.asarray(x) + 1.0) / 2.0, 0.0, 1.0)


def _quality(a, b):
  """(psnr, ssim) of model-unit images compared in [0, 1] image units (clamped as when saved)."""
  ua, ub = model_to_unit(a), model_to_unit(b)
  return metrics.psnr(ua, ub), metrics.ssim(ua, ub)


def restore_batch(model_fn, op, inputs, keys, settings, labels=None, classifier_fn=None):
  """Restores a batch; pure and jittable. Returns a dict of arrays with a leading batch axis.

  Args:
    model_fn: `model_fn(x_t, t, labels) -> eps` on (N, H, W, C); labels is None or int (N,).
    op: the operator (shared by the batch).
    inputs: clean images (B, *op.x_shape) in the paper protocol; in measurement mode
      measurements (B, *op.y_shape), or images (B, *op.x_shape) with `settings.apply_h`.
    keys: (B,) per-image keys (`index_keys`).
    settings: `BatchSettings`.
    labels: optional int (B,) class labels.
    classifier_fn: optional `classifier_fn(x_t, t) -> logits` for classifier guidance.

  Returns:
    'y' measurements, 'degraded' (y shown at the image size), 'samples' (B, S, H, W, C),
    'restored' (the posterior mean when S > 1), 'std' (population std over the S samples);
    in the paper protocol also 'baseline' and per-image 'psnr', 'ssim', 'baseline_psnr',
    'baseline_ssim', 'sample_psnr', 'sample_ssim' (means over single samples).
  """
  k_noise, k_sample = jax.vmap(jax.random.split, out_axes=1)(keys)
  problem = problems.get(settings.deg)
  if not settings.measurement and problem.codec:
    y = jax.vmap(op.roundtrip)(inputs)  # The decoded JPEG of the clean image.
  elif not settings.measurement:
    y = jax.vmap(lambda x, k: degrade(op, x, k, settings.sigma_y))(inputs, k_noise)
  elif settings.apply_h:
    y = jax.vmap(op.H)(inputs)
  else:
    y = inputs
  kernels = None
  if settings.blind_kernel_size:
    if classifier_fn is not None:
      raise ValueError('blind deblurring does not take classifier guidance')
    samples, kernels = posterior_samples_blind(model_fn, y, k_sample, settings, labels)
  else:
    samples = posterior_samples(model_fn, op, y, k_sample, settings, labels, classifier_fn)
  restored = samples.mean(axis=1)
  out = {
      'y': y,
      'degraded': y if problem.codec else jax.vmap(lambda yi: degraded_view(op, yi))(y),
      'samples': samples,
      'restored': restored,
      'std': samples.std(axis=1),
  }
  if kernels is not None:
    out['kernel'] = kernels.mean(axis=1)  # Each sample's chain estimates its own; their mean.
  if not settings.measurement:
    base = y if problem.codec else jax.vmap(
        lambda yi: metrics.baseline(problem.baseline, op, yi))(y)
    out['baseline'] = base
    out['psnr'], out['ssim'] = _quality(restored, inputs)
    out['baseline_psnr'], out['baseline_ssim'] = _quality(base, inputs)
    s = settings.num_samples
    flat = samples.reshape((-1,) + samples.shape[2:])
    sp, ss = _quality(flat, jnp.repeat(inputs, s, axis=0))
    out['sample_psnr'] = sp.reshape(-1, s).mean(axis=1)
    out['sample_ssim'] = ss.reshape(-1, s).mean(axis=1)
  return out


def tiled_network(net_fn, tile, *, overlap, tiles_per_call, class_conditional=False,
                  classifier_net_fn=None, classifier_scale=1.0):
  """`fn((params, classifier_params), x, t, labels) -> eps` of whole images from tiles of the
  network's size (`tiling.tiled`), for `make_restore_step(fn, ..., class_conditional=True)`.

  Each tile's eps has classifier guidance folded in as the sampler does (`sampler.guide`, with
  the sampler's own alpha_bar table); labels go with each tile.
  """
  from ddrm_jax import tiling  # pylint: disable=g-import-not-at-top
  sqrt_1m_ab = sampler.noise_tables(sampler.make_settings())[1]

  def eps_of_tiles(both, x, t, *labels):
    params, cls_params = both
    eps = net_fn(params, x, t, *labels) if class_conditional else net_fn(params, x, t)
    if classifier_net_fn is None:
      return eps
    grad = sampler.classifier_guidance(lambda x_t, t_: classifier_net_fn(cls_params, x_t, t_),
                                       labels[0], classifier_scale)(x, t)
    c = x.shape[-1]
    guided = sampler.guide(eps[..., :c], grad, sqrt_1m_ab[t + 1][:, None, None, None])
    return jnp.concatenate([guided.astype(eps.dtype), eps[..., c:]], axis=-1)

  def fn(both, x, t, labels):
    whole = tiling.tiled(lambda x_, t_, *lab: eps_of_tiles(both, x_, t_, *lab), tile,
                         overlap=overlap, tiles_per_call=tiles_per_call)
    return whole(x, t) if labels is None else whole(x, t, labels)
  return fn


def make_restore_step(net_fn, settings, *, class_conditional=False, classifier_net_fn=None):
  """A jitted `step(params, classifier_params, op, inputs, keys, labels) -> restore_batch(...)`.

  `net_fn(params, x, t[, labels])` is a network from `ddrm_jax.load_model` (labels passed when
  `class_conditional`); `classifier_net_fn(params, x, t) -> logits`. Params and the operator are
  arguments, so one compilation serves every batch of the same shape.
  """
  def step(params, classifier_params, op, inputs, keys, labels):
    def model_fn(x_t, t, lab):
      return net_fn(params, x_t, t, lab) if class_conditional else net_fn(params, x_t, t)
    classifier_fn = None
    if classifier_net_fn is not None:
      classifier_fn = lambda x_t, t: classifier_net_fn(classifier_params, x_t, t)
    return restore_batch(model_fn, op, inputs, keys, settings, labels, classifier_fn)
  return jax.jit(step)
