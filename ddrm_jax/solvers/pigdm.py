"""Noisy ΠGDM (Song, Vahdat, Mardani, Kautz, "Pseudoinverse-Guided Diffusion Models for Inverse
Problems", ICLR 2023) on the exact SVD of the operator, as one `lax.scan`.

ΠG approximates p(x0 | x_t) by N(x0hat, r_t^2 I), x0hat the network's prediction, so that
p(y | x_t) ~ N(H x0hat, r_t^2 H H^T + sigma_y^2 I) and (the paper's noisy guidance)
  grad_{x_t} log p(y | x_t)
    ~ (d x0hat / d x_t)^T H^T (r_t^2 H H^T + sigma_y^2 I)^{-1} (y - H x0hat),
a vector-Jacobian product through the network (`jax.vjp`). With the SVD,
  H^T (r_t^2 H H^T + sigma_y^2 I)^{-1} (y - H x0hat)
    = V diag(s_i / (r_t^2 s_i^2 + sigma_y^2)) (U^T y - diag(s) V^T x0hat):
no dense H H^T. For VP models the paper's r_t^2 = sigma_t^2 / (1 + sigma_t^2) = 1 - alpha_bar_t
(the posterior variance of x0 given x_t when the data have unit variance).

The guided prediction adds the likelihood score with the weight r_t^2 in the VE view
x_t = x0 + sigma_t eps, as the authors' group's implementation (NVIDIA RED-diff, algos/pgdm.py:
x_s = DDIM + sqrt(alpha_bar_s) sqrt(alpha_bar_t) g in the VP view):
  x0hat_y = x0hat + r_t^2 grad_{x_VE} log p(y | x_t) = x0hat + b_t^2 a_t g,
g the product above taken with respect to the VP x_t. Tweedie's formula for p(x0 | x_t, y) would
weight it by sigma_t^2 = r_t^2 / alpha_bar_t; with the bundled prior that diverges at 10 steps
(x0hat's Jacobian at high noise is far from a_t I), while r_t^2 is stable. For data N(0, I) the
Gaussian approximation and x0hat = a_t x_t are exact, so x0hat_y = x0hat + alpha_bar_t
(E[x0 | x_t, y] - x0hat) exactly (tests/test_solvers.py). The chain is DDIM (Song et al. 2021)
from x0hat_y and the network's eps:
  x_{t'} = a' x0hat_y + sqrt(b'^2 - c^2) eps + c z,
  c = eta sqrt((1 - alpha_bar') / (1 - alpha_bar_t) (1 - alpha_bar_t / alpha_bar')).

Defaults: 100 steps (the paper's ImageNet experiments, Section 4) and eta = 1.0 (a setting:
RED-diff's config uses 0.0). Cost per step: one network call and one vector-Jacobian product.
"""

import jax.numpy as jnp

from ddrm_jax import sampler
from ddrm_jax.solvers import common

DEFAULT_STEPS = 100
HYPERPARAMETERS = (
    ('pigdm_eta', 1.0, 'ΠGDM DDIM eta (Song et al. 2021): 0 deterministic, 1 the DDPM posterior '
     'noise'),
)


def likelihood_direction(s, uty, x0bar, r2, sigma_y):
  """Spectral H^T (r^2 H H^T + sigma_y^2 I)^{-1} (y - H x0hat) for one image (n,): the
  cotangent of ΠG's vector-Jacobian product."""
  observed = s > 0
  gain = s / jnp.where(observed, r2 * s**2 + sigma_y**2, 1.0)
  return jnp.where(observed, gain * (uty - s * x0bar), 0.0)


def guided_x0(model_fn, op, chain, x, t, guidance_fn=None):
  """(x0hat_y, x0hat, eps) at the VP state x (B, H, W, C) and level t: the ΠG-guided x0
  prediction, the network's and its eps (classifier guidance folded in)."""
  settings = chain.settings
  x0, eps, vjp = common.network_x0_vjp(model_fn, x, t, settings, guidance_fn)
  a, b = common.coefficients(settings, t)
  r2 = b**2  # r_t^2 = sigma_t^2 / (1 + sigma_t^2) = 1 - alpha_bar_t.
  direction = common.per_image(
      lambda o, si, ui, x0i: o.V(likelihood_direction(si, ui, o.Vt(x0i), r2,
                                                      settings.sigma_y)), chain, 2)
  g = vjp(direction(op, chain.s, chain.uty, x0))  # grad_{x_VP} log p(y | x_t).
  return x0 + (b**2 * a) * g, x0, eps  # r_t^2 grad_{x_VE} = b^2 a grad_{x_VP}.


def sample(model_fn, op, y, key, *, steps=DEFAULT_STEPS, sigma_y=0.0, guidance_fn=None,
           return_x0_preds=False, pigdm_eta=1.0, batched_op=False, timesteps=None, betas=None):
  """Restores a batch with noisy ΠGDM; arguments, units, keys and returns as
  `ddrm_jax.sampler.sample` (x0_preds: the network's x0hat of every step). `model_fn` must be
  differentiable (jax.vjp). Pure and traceable inside the caller's `jit`."""
  eta = common.number('pigdm_eta', pigdm_eta, 0.0, 1.0)
  chain = common.prepare(op, y, key, steps=steps, sigma_y=sigma_y, timesteps=timesteps,
                         betas=betas, batched_op=batched_op)
  settings = chain.settings

  def step(x, step_id, t, t_next):
    x0_y, x0, eps = guided_x0(model_fn, op, chain, x, t, guidance_fn)
    a_n, b_n = common.coefficients(settings, t_next)
    c = common.ddim_sigma(settings, t, t_next, eta)
    z = common.normal(chain.keys, step_id, tuple(op.x_shape), x.dtype)
    return common.vp_step(x0_y, eps, z, a_n, b_n, c), x0

  return common.run(step, common.init(op, chain), sampler.schedule(settings),
                    return_x0_preds)
