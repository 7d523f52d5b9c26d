"""Restoration methods DDRM is compared with, on the same SVD operators and networks.

Each module has `sample(model_fn, op, y, key, *, steps=DEFAULT_STEPS, sigma_y=0.0,
guidance_fn=None, return_x0_preds=False, <HYPERPARAMETERS>, batched_op=False, timesteps=None,
betas=None)` shaped like `ddrm_jax.sampler.sample` (units [-1, 1], sigma_y in model units, image
i drawing from fold_in(key, i), one `lax.scan`), `DEFAULT_STEPS` (its paper's step count) and
`HYPERPARAMETERS`, a tuple of (name, default, help) whose names are unique across methods and
are `sample`'s keyword arguments.

- `ddnm`: DDNM / DDNM+ (Wang et al., ICLR 2023), range/null-space projection, time travel.
- `pigdm`: noisy ΠGDM (Song et al., ICLR 2023), vector-Jacobian product through the network.
- `dps`: DPS (Chung et al., ICLR 2023), gradient of ||y - H x0hat|| through the network.
- `diffpir`: DiffPIR (Zhu et al., CVPR-W 2023), closed-form proximal data step.

`ddrm_jpeg` (DDRM-JPEG, Kawar et al. 2022) is DDRM for a JPEG codec rather than an SVD operator:
it restores `--deg jpeg` (`problems/jpeg.py`) and is not one of `METHODS`.

`get(name)` returns the module; `METHODS` maps names to modules.
"""

from ddrm_jax.solvers import ddnm
from ddrm_jax.solvers import diffpir
from ddrm_jax.solvers import dps
from ddrm_jax.solvers import pigdm

METHODS = {'ddnm': ddnm, 'pigdm': pigdm, 'dps': dps, 'diffpir': diffpir}


def get(name):
  """The solver module called `name` (one of `METHODS`); a ValueError for other names."""
  if not isinstance(name, str) or name not in METHODS:
    raise ValueError(f'unknown method {name!r}; known: {", ".join(METHODS)}')
  return METHODS[name]
