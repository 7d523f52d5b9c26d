"""The paper's network configurations by name, and configs from their JSON dicts.

Every config is a frozen dataclass with a `family` tag ('ddpm', 'adm', 'adm_classifier'),
`to_dict()`, `from_dict(d)` and `module(dtype)`. The ADM family is imported only when asked for.
"""

import importlib

import jax
import jax.numpy as jnp

from ddrm_jax.models import ddpm_unet

DDPM_NAMES = tuple(ddpm_unet.DDPM_CONFIGS)
ADM_NAMES = ('imagenet_256', 'imagenet_256_cc', 'imagenet_512_cc', 'classifier_256',
             'classifier_512')
NAMES = DDPM_NAMES + ADM_NAMES

# family -> (module, config class name)
_FAMILIES = {
    'ddpm': ('ddrm_jax.models.ddpm_unet', 'DDPMConfig'),
    'adm': ('ddrm_jax.models.adm_unet', 'ADMConfig'),
    'adm_classifier': ('ddrm_jax.models.adm_unet', 'ClassifierConfig'),
}
FAMILIES = tuple(_FAMILIES)


def get_config(name: str):
  """The paper's configuration `name` (one of `NAMES`)."""
  if name in ddpm_unet.DDPM_CONFIGS:
    return ddpm_unet.DDPM_CONFIGS[name]
  if name in ADM_NAMES:
    adm = importlib.import_module('ddrm_jax.models.adm_unet')
    return adm.ADM_CONFIGS[name]
  raise ValueError(f'unknown model config {name!r}; known: {", ".join(NAMES)}')


def config_from_dict(d):
  """Rebuild a config from `to_dict()` output, dispatching on `d['family']`."""
  if not isinstance(d, dict) or 'family' not in d:
    raise ValueError("config dict has no 'family' field")
  family = d['family']
  if family not in _FAMILIES:
    raise ValueError(f'unknown model family {family!r}; known: {", ".join(FAMILIES)}')
  module_name, cls_name = _FAMILIES[family]
  cls = getattr(importlib.import_module(module_name), cls_name)
  try:
    return cls.from_dict(dict(d))
  except TypeError as e:  # bad field types or missing required fields
    raise ValueError(f'invalid {family} config: {e}') from None


def is_class_conditional(config) -> bool:
  """Whether the network takes class labels (ADM with num_classes)."""
  return config.family == 'adm' and bool(getattr(config, 'num_classes', None))


def example_inputs(config, batch: int = 1):
  """Zero inputs `(x, t[, labels])` of the right shapes for `init` / `eval_shape`."""
  s = config.image_size
  x = jnp.zeros((batch, s, s, config.in_channels), jnp.float32)
  t = jnp.zeros((batch,), jnp.int32)
  return (x, t, jnp.zeros((batch,), jnp.int32)) if is_class_conditional(config) else (x, t)


def param_shapes(config):
  """`jax.eval_shape` of the params of `config`'s network (no compute, no memory)."""
  module = config.module(jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), *example_inputs(config))
  return variables['params']


def build_model(config, dtype=None):
  """The Linen module of `config`, computing in `dtype` (None: `config.dtype`); params f32."""
  return config.module(dtype)
