"""ddrm-jax: Denoising Diffusion Restoration Models (Kawar et al., NeurIPS 2022) in JAX/Flax.

Public entry points (imported lazily so that `import ddrm_jax` stays cheap):

- `ddrm_jax.operators.make(deg, image_shape, **options)`: the SVD operators of Appendix D.
- `ddrm_jax.sample(model_fn, op, y, key, ...)`: the DDRM sampler (Eq. 7-8).
- `ddrm_jax.load_model(directory)`: a converted or trained network, as `(fn, params, config)`.
- `ddrm_jax.pipeline`: a whole run (`RestoreConfig`, `restore_files`, `Restorer`), the one entry
  point of `ddrm-restore`, the scripts and research code.
- `ddrm_jax.problems`: every degradation as one registered object.
- `ddrm_jax.restore`: one batch (degrade, sample, score), pure and jitted.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "operators": ("ddrm_jax.operators", None),
    "sample": ("ddrm_jax.sampler", "sample"),
    "posterior_stats": ("ddrm_jax.sampler", "posterior_stats"),
    "sample_sharded": ("ddrm_jax.sampler", "sample_sharded"),
    "restore": ("ddrm_jax.restore", None),
    "pipeline": ("ddrm_jax.pipeline", None),
    "problems": ("ddrm_jax.problems", None),
    "RestoreConfig": ("ddrm_jax.run_config", "RestoreConfig"),
    "restore_files": ("ddrm_jax.pipeline", "restore_files"),
    "Restorer": ("ddrm_jax.pipeline", "Restorer"),
    "load_model": ("ddrm_jax.checkpoints", "load_model"),
    "save_checkpoint": ("ddrm_jax.checkpoints", "save_checkpoint"),
}


def __getattr__(name):
  if name not in _LAZY:
    raise AttributeError(f"module 'ddrm_jax' has no attribute {name!r}")
  module_name, attr = _LAZY[name]
  module = importlib.import_module(module_name)
  return module if attr is None else getattr(module, attr)


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
