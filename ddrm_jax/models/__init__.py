"""Flax UNets of the paper's two model families and their configs.

- `ddrm_jax.models.ddpm_unet`: DDPM "simple" UNet (CelebA-HQ, LSUN bedroom/cat/church).
- `ddrm_jax.models.adm_unet`: guided-diffusion (ADM) UNet and its encoder classifier.
- `ddrm_jax.models.configs`: `get_config(name)`, `config_from_dict(d)`, `build_model(config)`.
- `ddrm_jax.models.layers`: shared layers (float32 GroupNorm, timestep embedding, conv helpers).

Submodules are imported on first use so that importing one family does not import the other.
"""

import importlib

_LAZY = {
    'get_config': ('ddrm_jax.models.configs', 'get_config'),
    'config_from_dict': ('ddrm_jax.models.configs', 'config_from_dict'),
    'build_model': ('ddrm_jax.models.configs', 'build_model'),
    'DDPMConfig': ('ddrm_jax.models.ddpm_unet', 'DDPMConfig'),
    'DDPMUNet': ('ddrm_jax.models.ddpm_unet', 'DDPMUNet'),
}


def __getattr__(name):
  if name not in _LAZY:
    raise AttributeError(f"module 'ddrm_jax.models' has no attribute {name!r}")
  module_name, attr = _LAZY[name]
  return getattr(importlib.import_module(module_name), attr)


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
