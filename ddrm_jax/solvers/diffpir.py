"""DiffPIR (Zhu, Zhang, Liang, Cao, Wen, Timofte, Van Gool, "Denoising Diffusion Models for
Plug-and-Play Image Restoration", CVPR 2023 workshops, Algorithm 1) as one `lax.scan`, with its
data step in closed form on the exact SVD of the operator.

Each step: the network's x0hat at x_t; the data (proximal) step
  x0p = argmin_z ||y - H z||^2 + rho_t ||z - x0hat||^2,   rho_t = lambda sigma_n^2 / sigma_t^2
(sigma_t = sqrt(1 - alpha_bar_t) / sqrt(alpha_bar_t), the VE noise level), whose solution
(H^T H + rho_t I)^{-1} (H^T y + rho_t x0hat) is, in the spectral basis of every operator,
  x0p = V [(s_i (U^T y)_i + rho_t x0bar_i) / (s_i^2 + rho_t)]      (x0bar = V^T x0hat);
then x_{t'} = a' x0p + b' (sqrt(1 - zeta) epshat + sqrt(zeta) z), epshat = (x_t - a_t x0p) / b_t.
The last step returns x0p. sigma_n is the measurement noise in [0, 1] image units, as in the
reference code: sigma_n = max(sigma_y / 2, 0.001) (sigma_y in model units), so a noiseless
problem keeps a tiny rho_t.

Defaults: 100 steps (the paper's NFE = 100, Section 5), lambda = 7 and zeta = 0.3: the values
the reference's noisy Gaussian deblurring run uses (main_ddpir_deblur.py multiplies its
configured lambda = 1 and zeta = 0.1 by 7 and 3 in its experiment loop; configs/deblur.yaml and
sisr.yaml hold the unscaled 1 and 0.1; its inpainting run uses zeta = 1 and 20 steps). Measured
with the bundled prior at sigma_y 0.05 (docs/solvers.md), lambda = 1 lets the data step pass
noise amplified by 1 / s_i into every step of deblurring (10.6 dB against 22.9 at 20 steps).
The reference spaces its timesteps quadratically; here they are uniform unless `timesteps` is
given.
"""

import jax.numpy as jnp

from ddrm_jax import sampler
from ddrm_jax.solvers import common

DEFAULT_STEPS = 100
SIGMA_N_FLOOR = 1e-3  # [0, 1] image units, the reference code's max(0.001, noise level).
HYPERPARAMETERS = (
    ('diffpir_lambda', 7.0, 'DiffPIR data-step weight lambda: rho_t = lambda sigma_n^2 / '
     'sigma_t^2'),
    ('diffpir_zeta', 0.3, 'DiffPIR share zeta of fresh noise in each step (0: DDIM, 1: all '
     'fresh)'),
)


def proximal(s, uty, x0bar, rho):
  """Spectral argmin_z ||y - H z||^2 + rho ||z - x0||^2 for one image (n,), given s, U^T y
  (observed directions) and x0bar = V^T x0; rho >= 0 (rho = 0: range part from y)."""
  observed = s > 0
  return jnp.where(observed, (s * uty + rho * x0bar) / jnp.where(observed, s**2 + rho, 1.0),
                   x0bar)


def rho(settings, t, diffpir_lambda):
  """rho_t = lambda sigma_n^2 / sigma_t^2 at level t >= 0."""
  a, b = common.coefficients(settings, t)
  sigma_n = max(settings.sigma_y / 2.0, SIGMA_N_FLOOR)
  return diffpir_lambda * sigma_n**2 * (a / b)**2


def sample(model_fn, op, y, key, *, steps=DEFAULT_STEPS, sigma_y=0.0, guidance_fn=None,
           return_x0_preds=False, diffpir_lambda=7.0, diffpir_zeta=0.3, batched_op=False,
           timesteps=None, betas=None):
  """Restores a batch with DiffPIR; arguments, units, keys and returns as
  `ddrm_jax.sampler.sample` (x0_preds: the network's x0hat of every step, before the data
  step). Pure and traceable inside the caller's `jit`."""
  lam = common.number('diffpir_lambda', diffpir_lambda, 0.0, low_open=True)
  zeta = common.number('diffpir_zeta', diffpir_zeta, 0.0, 1.0)
  chain = common.prepare(op, y, key, steps=steps, sigma_y=sigma_y, timesteps=timesteps,
                         betas=betas, batched_op=batched_op)
  settings = chain.settings

  def step(x, step_id, t, t_next):
    x0, _ = common.network_x0(model_fn, x, t, settings, guidance_fn)
    rho_t = rho(settings, t, lam)
    data_step = common.per_image(
        lambda o, si, ui, x0i: o.V(proximal(si, ui, o.Vt(x0i), rho_t)), chain, 2)
    x0p = data_step(op, chain.s, chain.uty, x0)
    a, b = common.coefficients(settings, t)
    a_n, b_n = common.coefficients(settings, t_next)
    eps_hat = (x - a * x0p) / b
    z = common.normal(chain.keys, step_id, tuple(op.x_shape), x.dtype)
    return common.vp_step(x0p, eps_hat, z, a_n, b_n, jnp.sqrt(zeta) * b_n), x0

  return common.run(step, common.init(op, chain), sampler.schedule(settings), return_x0_preds)
