"""The paper's network configurations by name, and configs from their JSON dicts.

Every config is a frozen dataclass with a `family` tag ('ddpm', 'adm', 'adm_classifier'),
`to_dict()`, `from_dict(d)` and `module(dtype)`. The ADM family is imported only when asked for.
"""

import importlib
import math

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


SOURCE_KEY = 'source'  # a checkpoint's provenance beside its config fields (not architecture)


def config_from_dict(d):
  """Rebuild a config from `to_dict()` output, dispatching on `d['family']`.

  A `source` entry (where a checkpoint came from, written by the converter) is not part of the
  architecture and is skipped.
  """
  if not isinstance(d, dict) or 'family' not in d:
    raise ValueError("config dict has no 'family' field")
  d = {k: v for k, v in d.items() if k != SOURCE_KEY}
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


# ---------------------------------------------------------------------------------------------
# guided-diffusion's flags (`create_model` / `create_classifier` keys of its script_util.py), read
# with guided-diffusion's own meaning of each value.

REQUIRED = object()  # a key without a default (a positional argument of create_model)
DEFAULTS = ('create_model', 'script')

# key: (kind, default of create_model(...), default of the scripts' argparse flags, i.e.
# model_and_diffusion_defaults()). `in_channels`/`out_channels` are DDRM's YAML keys (3 in
# guided-diffusion, which does not expose them).
_MODEL_KEYS = {
    'image_size': ('int', REQUIRED, 64),
    'num_channels': ('int', REQUIRED, 128),
    'num_res_blocks': ('int', REQUIRED, 2),
    'channel_mult': ('mult', '', ''),
    'learn_sigma': ('bool', False, False),
    'class_cond': ('bool', False, False),
    'attention_resolutions': ('ints', '16', '16,8'),
    'num_heads': ('int', 1, 4),
    'num_head_channels': ('int', -1, -1),
    'num_heads_upsample': ('int', -1, -1),
    'use_scale_shift_norm': ('bool', False, True),
    'dropout': ('float', 0.0, 0.0),
    'resblock_updown': ('bool', False, False),
    'use_new_attention_order': ('bool', False, False),
    'in_channels': ('int', 3, 3),
    'out_channels': ('int', 3, 3),
}
# create_classifier has no defaults of its own: classifier_defaults() gives them (image_size is
# required where the flags come as keyword arguments, 64 for the scripts' flags).
_CLASSIFIER_KEYS = {
    'image_size': ('int', REQUIRED, 64),
    'classifier_width': ('int', 128, 128),
    'classifier_depth': ('int', 2, 2),
    'classifier_attention_resolutions': ('ints', '32,16,8', '32,16,8'),
    'classifier_use_scale_shift_norm': ('bool', True, True),
    'classifier_resblock_updown': ('bool', True, True),
    'classifier_pool': ('str', 'attention', 'attention'),
}
# Keys that do not change the network: noted and ignored (why, for the note).
_IGNORED = {
    'use_fp16': 'compute precision (ours: the dtype setting)',
    'classifier_use_fp16': 'compute precision (ours: the dtype setting)',
    'use_checkpoint': 'gradient checkpointing (training only)',
    'model_path': 'a file path',
    'classifier_path': 'a file path',
    'timestep_respacing': 'sampling steps (ours: the steps setting)',
    'use_kl': 'training loss',
    'rescale_learned_sigmas': 'training loss',
    'rescale_timesteps': 'identity with 1000 diffusion steps',
    'classifier_scale': 'guidance strength (ours: the classifier_scale setting)',
    'var_type': "DDRM's sampling variance",
    'resamp_with_conv': "DDRM's YAML key; guided-diffusion always resamples by convolution",
    'ema': "DDRM's training key",
    'ema_rate': "DDRM's training key",
}
_MODEL_ONLY_IGNORED = {'learn_sigma': 'a diffusion setting that does not change a classifier'}


def str2bool(value, name):
  """guided-diffusion's str2bool: yes/true/t/y/1 and no/false/f/n/0 (any case), or a bool."""
  if isinstance(value, bool):
    return value
  if isinstance(value, int) and value in (0, 1):
    return bool(value)
  if isinstance(value, str):
    v = value.strip().lower()
    if v in ('yes', 'true', 't', 'y', '1'):
      return True
    if v in ('no', 'false', 'f', 'n', '0'):
      return False
  raise ValueError(f'{name}={value!r}: expected a boolean (True/False, yes/no, 1/0)')


def _flag_int(value, name):
  if isinstance(value, bool):
    raise ValueError(f'{name}={value!r}: expected an integer')
  if isinstance(value, int):
    return value
  if isinstance(value, float) and value.is_integer():
    return int(value)
  try:
    return int(str(value).strip())
  except ValueError:
    raise ValueError(f'{name}={value!r}: expected an integer') from None


def _flag_ints(value, name):
  """'32,16,8' (guided-diffusion's form), a YAML integer 16, or a list [32, 16, 8]."""
  if isinstance(value, (list, tuple)):
    items = list(value)
  elif isinstance(value, str):
    items = value.split(',')
  else:
    items = [value]
  try:
    out = tuple(_flag_int(v, name) for v in items)
  except ValueError:
    raise ValueError(f'{name}={value!r}: expected comma-separated integers') from None
  if not out or min(out) < 1:
    raise ValueError(f'{name}={value!r}: expected positive integers')
  return out


def _flag_value(kind, value, name):
  if kind == 'bool':
    return str2bool(value, name)
  if kind == 'int':
    return _flag_int(value, name)
  if kind == 'ints':
    return _flag_ints(value, name)
  if kind == 'float':
    try:
      v = float(value)
    except (TypeError, ValueError):
      raise ValueError(f'{name}={value!r}: expected a number') from None
    if isinstance(value, bool) or not math.isfinite(v):
      raise ValueError(f'{name}={value!r}: expected a number')
    return v
  if kind == 'mult':
    return value  # needs image_size: read in _channel_mult
  return str(value)


def _channel_mult(value, image_size, name):
  """'' -> guided-diffusion's multipliers for the size; '1,1,2' -> integers (as create_model)."""
  adm = importlib.import_module('ddrm_jax.models.adm_unet')
  if value is None or value == '':
    try:
      return adm.default_channel_mult(image_size)
    except ValueError:
      raise ValueError(f"{name}='' has no default for image_size={image_size} (guided-diffusion "
                       'knows 64, 128, 256, 512); give channel_mult') from None
  if isinstance(value, (list, tuple)):
    try:
      mult = tuple(float(m) for m in value)
    except (TypeError, ValueError):
      raise ValueError(f'{name}={value!r}: expected numbers') from None
    return tuple(int(m) if m.is_integer() else m for m in mult)
  return _flag_ints(value, name)


def _check_schedule(f, name):
  """The flags that fix the training noise schedule must give ours (linear, 1000 steps, eps);
  returns notes on those given."""
  given = sorted({'noise_schedule', 'diffusion_steps', 'predict_xstart'} & set(f))
  schedule = f.pop('noise_schedule', 'linear')
  if str(schedule) != 'linear':
    raise ValueError(f'{name} noise_schedule={schedule!r}: the sampler uses the linear beta '
                     'schedule (1e-4 to 0.02 over 1000 steps) this network was not trained with; '
                     'not converting it')
  steps = _flag_int(f.pop('diffusion_steps', 1000), f'{name} diffusion_steps')
  if steps != 1000:
    raise ValueError(f'{name} diffusion_steps={steps}: the sampler uses 1000 linear-schedule '
                     'steps (guided-diffusion rescales the betas for other counts)')
  if str2bool(f.pop('predict_xstart', False), f'{name} predict_xstart'):
    raise ValueError(f'{name} predict_xstart=True: the network predicts x_0, the sampler needs '
                     'eps')
  return {k: "checked: the sampler's schedule (linear, 1000 steps, eps)" for k in given}


def guided_diffusion_kwargs(flags, *, classifier=False, defaults='create_model'):
  """(config kwargs, notes) from guided-diffusion's flags, read as guided-diffusion reads them.

  `flags`: {key: value} with values as strings (command-line flags), YAML/JSON scalars or lists.
  Booleans are read by guided-diffusion's str2bool ('False' is False); `attention_resolutions` are
  feature-map sizes (guided-diffusion's downsample rate is image_size // res); `channel_mult` ''
  takes guided-diffusion's multipliers for the image size. `defaults` says which defaults fill
  missing keys: 'create_model' (keyword arguments of create_model, as DPS's model_config.yaml and
  DDRM's YAML are used) or 'script' (the argparse defaults of guided-diffusion's scripts, for a
  MODEL_FLAGS string). Keys that do not change the network (use_fp16, model_path, ...) are
  returned in `notes` ({key: why it is ignored}), with the schedule keys given (checked); a
  noise_schedule other than linear, other
  diffusion_steps than 1000, predict_xstart, or any unknown key raise a ValueError naming it.
  """
  if defaults not in DEFAULTS:
    raise ValueError(f'defaults must be one of {DEFAULTS}, got {defaults!r}')
  if not isinstance(flags, dict) and not hasattr(flags, 'items'):
    raise ValueError('flags must be a mapping of guided-diffusion keys, got '
                     f'{type(flags).__name__}')
  name = 'classifier flag' if classifier else 'model flag'
  table = _CLASSIFIER_KEYS if classifier else _MODEL_KEYS
  f = {str(k): v for k, v in dict(flags).items()}
  if 'type' in f and f['type'] != 'openai':
    raise ValueError(f"{name} type={f['type']!r}: only DDRM's 'openai' (guided-diffusion) "
                     'models are read from flags')
  notes = _check_schedule(f, name)
  if 'type' in f:
    notes['type'] = "DDRM's model type ('openai': guided-diffusion)"
    del f['type']
  ignored = dict(_IGNORED, **(_MODEL_ONLY_IGNORED if classifier else {}))
  for key in sorted(set(f) & set(ignored)):
    notes[key] = ignored[key]
    del f[key]
  unknown = sorted(set(f) - set(table))
  if unknown:
    raise ValueError(f'unknown {name}s {unknown}: not keys of guided-diffusion\'s '
                     f'{"create_classifier" if classifier else "create_model"} (known: '
                     f'{", ".join(sorted(set(table) | set(ignored)))})')
  column = 1 if defaults == 'create_model' else 2
  v = {}
  for key, spec in table.items():
    if key in f:
      v[key] = _flag_value(spec[0], f[key], f'{name} {key}')
    elif spec[column] is REQUIRED:
      raise ValueError(f'{name} {key} is missing (create_model has no default for it)')
    else:
      v[key] = _flag_value(spec[0], spec[column], f'{name} {key}')
  size = v['image_size']
  if classifier:
    kw = dict(image_size=size, model_channels=v['classifier_width'],
              num_res_blocks=v['classifier_depth'],
              attention_resolutions=v['classifier_attention_resolutions'],
              channel_mult=_channel_mult('', size, f'{name} image_size'), num_head_channels=64,
              use_scale_shift_norm=v['classifier_use_scale_shift_norm'],
              resblock_updown=v['classifier_resblock_updown'], pool=v['classifier_pool'])
  else:
    kw = dict(
        image_size=size, in_channels=v['in_channels'], model_channels=v['num_channels'],
        out_channels=v['out_channels'], num_res_blocks=v['num_res_blocks'],
        attention_resolutions=v['attention_resolutions'],
        channel_mult=_channel_mult(v['channel_mult'], size, f'{name} channel_mult'),
        num_heads=v['num_heads'], num_head_channels=v['num_head_channels'],
        num_heads_upsample=v['num_heads_upsample'],
        use_scale_shift_norm=v['use_scale_shift_norm'], resblock_updown=v['resblock_updown'],
        learn_sigma=v['learn_sigma'], num_classes=1000 if v['class_cond'] else None,
        use_new_attention_order=v['use_new_attention_order'], dropout=v['dropout'])
  return kw, notes


def from_guided_diffusion_flags(flags, *, classifier=False, defaults='create_model'):
  """(ADMConfig or ClassifierConfig, notes) of guided-diffusion flags (see
  `guided_diffusion_kwargs`)."""
  kw, notes = guided_diffusion_kwargs(flags, classifier=classifier, defaults=defaults)
  adm = importlib.import_module('ddrm_jax.models.adm_unet')
  cls = adm.ClassifierConfig if classifier else adm.ADMConfig
  return cls(**kw), notes
