"""PyTorch state dict (.ckpt/.pt/.pth/.safetensors) -> checked Flax params -> checkpoint dir.

Nothing is dropped silently: every Flax param must come from a torch key of the right shape and
every torch key must be used, else one `ConversionError` names the offending keys and nothing is
written. Torch files are read with `weights_only=True` (no arbitrary pickle code runs).
"""

import importlib
import json
import os
import re
import warnings

import ml_dtypes  # pylint: disable=unused-import  (numpy learns bfloat16: .safetensors)
import numpy as np
from flax import traverse_util

from ddrm_jax import checkpoints
from ddrm_jax.checkpoints import error_summary, listed
from ddrm_jax.models import configs
from weights_convert import transforms

TORCH_EXTS = ('.ckpt', '.pt', '.pth', '.bin')
SAFETENSORS_EXTS = ('.safetensors',)
# Keys under which training scripts commonly nest the state dict.
NESTED_KEYS = ('state_dict', 'model', 'model_state_dict', 'ema', 'ema_model', 'model_ema',
               'params', 'net', 'module')


class ConversionError(ValueError):
  """A source file that does not convert to the requested architecture (one-line message)."""


def _is_tensor_dict(obj):
  return isinstance(obj, dict) and bool(obj) and all(hasattr(v, 'shape') for v in obj.values())


def _find_state_dict(obj, src):
  if _is_tensor_dict(obj):
    return obj
  if not isinstance(obj, dict):
    raise ConversionError(f'{src} holds a {type(obj).__name__}, not a state dict')
  found = [k for k in NESTED_KEYS if _is_tensor_dict(obj.get(k))]
  if len(found) == 1:
    return obj[found[0]]
  if found:
    raise ConversionError(f'{src} holds several state dicts (under {", ".join(found)}); '
                          'save the one to convert on its own')
  raise ConversionError(f'{src} holds no state dict (top-level keys: '
                        f'{listed(sorted(map(str, obj)))})')


def _to_numpy(v):
  if hasattr(v, 'detach'):  # torch tensor
    v = v.detach().cpu()
    if v.is_floating_point():
      v = v.float()
    return v.numpy()
  return np.asarray(v)


def strip_module_prefix(state_dict):
  """Drop the `module.` prefixes of (Distributed)DataParallel from every key."""
  out = {}
  for k, v in state_dict.items():
    name = k
    while name.startswith('module.'):
      name = name[len('module.'):]
    if name in out:
      raise ConversionError(f'key {k!r} collides with {name!r} once "module." is stripped')
    out[name] = v
  return out


def _torch_load(src):
  """torch.load(src, weights_only=True) with one-line errors that never advise unsafe loading."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConversionError(f'reading {src} needs PyTorch: pip install torch (or the convert '
                          'extra: pip install -e ".[convert]")') from None
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      return torch.load(src, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  (pickle / zip / torch errors)
    found = re.search(r'Unsupported global: GLOBAL ([\w.]+)', str(e))
    if found:  # a pickled object other than tensors: refused, never run
      raise ConversionError(f'cannot read {src} (weights only): it holds a Python object '
                            f'({found.group(1)}), not only tensors; save the state dict on its '
                            'own') from None
    raise ConversionError(f'cannot read {src} (weights only): not a PyTorch checkpoint, or a '
                          'corrupt or truncated one') from None


def _safetensors_load(src):
  try:
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConversionError(f'reading {src} needs the safetensors package: pip install '
                          'safetensors (or the convert extra: pip install -e ".[convert]")'
                          ) from None
  try:
    return load_file(src)
  except Exception as e:  # pylint: disable=broad-except  (safetensors raises its own types)
    raise ConversionError(f'cannot read {src}: not a safetensors file, or a corrupt or '
                          f'truncated one ({error_summary(e)})') from None


def read_state_dict(src):
  """{torch key: numpy array} from a .ckpt/.pt/.pth/.bin or .safetensors file."""
  src = os.fspath(src)
  if os.path.isdir(src):
    raise ConversionError(f'--src {src} is a folder; give the checkpoint file in it')
  if not os.path.isfile(src):
    raise ConversionError(f'no such file: {src}')
  ext = os.path.splitext(src)[1].lower()
  if ext in SAFETENSORS_EXTS:
    obj = _safetensors_load(src)
  elif ext in TORCH_EXTS:
    obj = _torch_load(src)
  else:
    raise ConversionError(f'unknown file type {ext!r} of {src}; expected one of '
                          f'{", ".join(TORCH_EXTS + SAFETENSORS_EXTS)}')
  state_dict = _find_state_dict(obj, src)
  return strip_module_prefix({str(k): _to_numpy(v) for k, v in state_dict.items()})


def name_map(config):
  """The family's {flax path: (torch key, transform)} (weights_convert/<family>_map.py)."""
  family = config.family.split('_')[0]
  return importlib.import_module(f'weights_convert.{family}_map').name_map(config)


def check_shapes(shapes, config):
  """Raise one ConversionError naming every missing, unused or wrong-shaped torch key.

  `shapes` is {torch key: shape} (a state dict's or a manifest's); returns the name map.
  """
  expected = checkpoints.expected_shapes(config)
  nmap = name_map(config)
  unmapped = sorted('/'.join(p) for p in set(expected) - set(nmap))
  unknown = sorted('/'.join(p) for p in set(nmap) - set(expected))
  if unmapped or unknown:  # a bug in the name map, not in the file
    raise ConversionError(f'{config.family} name map out of sync with the model: unmapped '
                          f'{listed(unmapped)}; not in model {listed(unknown)}')
  missing, wrong = [], []
  for path, (key, transform) in sorted(nmap.items()):
    want = transforms.torch_shape(transform, expected[path])
    if key not in shapes:
      missing.append(f'{key} {want}')
    elif tuple(shapes[key]) != want:
      wrong.append(f'{key} {tuple(shapes[key])} (expected {want})')
  leftover = sorted(set(shapes) - {key for key, _ in nmap.values()})
  parts = []
  if missing:
    parts.append(f'missing {len(missing)} keys: {listed(missing)}')
  if leftover:
    parts.append(f'{len(leftover)} unused keys: '
                 + listed(f'{k} {tuple(shapes[k])}' for k in leftover))
  if wrong:
    parts.append(f'{len(wrong)} keys of the wrong shape: {listed(wrong)}')
  if parts:
    raise ConversionError(f'state dict does not match config {config.family} '
                          f'{_describe(config)}: ' + '; '.join(parts))
  return nmap


def _describe(config):
  d = config.to_dict()
  keys = [k for k in ('image_size', 'ch', 'model_channels', 'num_classes') if d.get(k)]
  return '(' + ', '.join(f'{k}={d[k]}' for k in keys) + ')'


def convert_state_dict(state_dict, config):
  """Flax params (nested dict of float32 numpy arrays) of `config` from a torch state dict."""
  nmap = check_shapes({k: tuple(v.shape) for k, v in state_dict.items()}, config)
  flat, not_finite = {}, []
  for path, (key, transform) in nmap.items():
    value = as_float32(key, state_dict[key])
    if not np.isfinite(value).all():
      not_finite.append(key)
    flat[path] = transforms.apply(transform, value)
  if not_finite:
    raise ConversionError(f'{len(not_finite)} tensors hold NaN or inf values: '
                          f'{listed(sorted(not_finite))}; not converting them')
  return traverse_util.unflatten_dict(flat)


def as_float32(key, value):
  """A floating-point tensor (float16/32/64, bfloat16) as float32; anything else is refused."""
  dtype = np.dtype(value.dtype)
  if not (np.issubdtype(dtype, np.floating) or dtype.name == 'bfloat16'):
    raise ConversionError(f'{key} has dtype {dtype}, expected floating point')
  return np.asarray(value).astype(np.float32)


def resolve_config(config):
  """A config from a config object, a name of `configs.NAMES`, or a path to a .json config dict."""
  if not isinstance(config, (str, os.PathLike)):
    return config
  config = os.fspath(config)
  if not config.endswith('.json'):
    return configs.get_config(config)
  try:
    with open(config) as f:
      d = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ConversionError(f'cannot read config {config}: {error_summary(e)}') from None
  return configs.config_from_dict(d)


def convert_file(src, config, out, *, overwrite=False):
  """Convert `src` for `config` (see `resolve_config`) into checkpoint directory `out`."""
  config = resolve_config(config)
  out = os.path.abspath(os.fspath(out))
  try:  # fail before reading a large file, touching nothing
    checkpoints.check_replaceable(out, overwrite)
  except checkpoints.CheckpointError as e:
    raise ConversionError(str(e).replace('overwrite=True (--overwrite)', '--overwrite')) from None
  params = convert_state_dict(read_state_dict(src), config)
  return checkpoints.save_checkpoint(out, params, config, overwrite=overwrite)
