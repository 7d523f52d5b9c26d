"""DPS (Chung, Kim, Mccann, Klasky, Ye, "Diffusion Posterior Sampling for General Noisy Inverse
Problems", ICLR 2023, Algorithm 1) as one `lax.scan`.

Each step is the DDPM ancestral step from the network's x0hat(x_t) (the posterior
q(x_{t'} | x_t, x0hat), DDIM with eta = 1 when steps are skipped), followed by a gradient step
on the data residual through the network:
  x_{t'} = x'_{t'} - zeta grad_{x_t} ||y - H x0hat(x_t)||,
which is the paper's zeta_i grad ||y - H x0hat||^2 with zeta_i = zeta / (2 ||y - H x0hat||), the
convention of the reference code (`torch.linalg.norm` of the residual; here per image). It uses
only `op.H`, differentiated by JAX: any differentiable `H` with a `y_shape` works (no SVD is
needed by the method; `op` must still pass the solvers' operator checks). sigma_y does not enter
the update (the step size absorbs it); it is validated like the other methods'.

Defaults: 1000 steps (the paper's DDPM sampling, Section 4) and zeta = 0.3 (the reference's
configs for 4x super-resolution and Gaussian deblurring, configs/*_config.yaml; 0.5 for
inpainting). Cost per step: one network call and one backward pass through it.
"""

import jax
import jax.numpy as jnp

from ddrm_jax import sampler
from ddrm_jax.solvers import common

DEFAULT_STEPS = 1000
HYPERPARAMETERS = (
    ('dps_zeta', 0.3, 'DPS step size zeta on grad ||y - H x0hat|| (reference-code convention; '
     'the paper\'s zeta\' on the squared norm is zeta / 2)'),
)


def residual_norms(op, chain, x0):
  """||y_i - H x0_i|| per image, (B,), with a gradient that is finite at zero."""
  hx = common.per_image(lambda o, _, xi: o.H(xi), chain, 1)(op, chain.s, x0)
  r = (chain.y - hx).reshape(chain.batch, -1)
  return jnp.sqrt(jnp.maximum(jnp.sum(r * r, axis=1), jnp.finfo(r.dtype).tiny))


def sample(model_fn, op, y, key, *, steps=DEFAULT_STEPS, sigma_y=0.0, guidance_fn=None,
           return_x0_preds=False, dps_zeta=0.3, batched_op=False, timesteps=None, betas=None):
  """Restores a batch with DPS; arguments, units, keys and returns as `ddrm_jax.sampler.sample`
  (x0_preds: the network's x0hat of every step). `model_fn` and `op.H` must be differentiable.
  Classifier guidance shifts the DDPM step's prediction; the data gradient goes through the
  network alone. Pure and traceable inside the caller's `jit`."""
  zeta = common.number('dps_zeta', dps_zeta, 0.0)
  if not callable(getattr(op, 'H', None)):
    raise ValueError(f'op must have a differentiable H(x) for DPS, got {type(op).__name__}')
  chain = common.prepare(op, y, key, steps=steps, sigma_y=sigma_y, timesteps=timesteps,
                         betas=betas, batched_op=batched_op)
  settings = chain.settings

  def step(x, step_id, t, t_next):
    a, b = common.coefficients(settings, t)
    t_batch = jnp.full((x.shape[0],), t, jnp.int32)

    def total_norm(x_in):
      eps = sampler.guided_eps(model_fn, x_in, t_batch, b)
      x0 = sampler.x0_from_eps(x_in, eps, a, b)
      return jnp.sum(residual_norms(op, chain, x0)), (x0, eps)

    grad, (x0, eps) = jax.grad(total_norm, has_aux=True)(x)
    if guidance_fn is not None:
      eps = sampler.guided_eps(lambda *_: eps, x, t_batch, b, guidance_fn)
      x0 = sampler.x0_from_eps(x, eps, a, b)
    a_n, b_n = common.coefficients(settings, t_next)
    c = common.ddim_sigma(settings, t, t_next, 1.0)  # DDPM ancestral step.
    z = common.normal(chain.keys, step_id, tuple(op.x_shape), x.dtype)
    return common.vp_step(x0, eps, z, a_n, b_n, c) - zeta * grad, x0

  return common.run(step, common.init(op, chain), sampler.schedule(settings), return_x0_preds)
