"""PyTorch state dict (.ckpt/.pt/.pth/.safetensors) -> checked Flax params -> checkpoint dir.

Nothing is dropped silently: every Flax param must come from a torch key of the right shape and
every torch key must be used, else one `ConversionError` names the offending keys and nothing is
written. Torch files are read with `weights_only=True` (no arbitrary pickle code runs).
"""

import hashlib
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


LAYOUTS = ('pytorch', 'diffusers')  # the paper's PyTorch code (ddpm_map/adm_map), diffusers


def name_map(config, layout='pytorch'):
  """{flax path: (torch key, transform)}: the family's (weights_convert/<family>_map.py), or
  diffusers' UNet2DModel names for a DDPM UNet (`layout='diffusers'`, diffusers_map.py)."""
  if layout not in LAYOUTS:
    raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
  family = config.family.split('_')[0]
  if layout == 'diffusers':
    if family != 'ddpm':
      raise ConversionError(f'diffusers UNet2DModel weights convert to a ddpm config, not '
                            f'{config.family}')
    family = 'diffusers'
  return importlib.import_module(f'weights_convert.{family}_map').name_map(config)


def check_shapes(shapes, config, layout='pytorch'):
  """Raise one ConversionError naming every missing, unused or wrong-shaped torch key.

  `shapes` is {torch key: shape} (a state dict's or a manifest's); returns the name map.
  """
  expected = checkpoints.expected_shapes(config)
  nmap = name_map(config, layout)
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


def convert_state_dict(state_dict, config, layout='pytorch'):
  """Flax params (nested dict of float32 numpy arrays) of `config` from a torch state dict
  (`layout`: 'pytorch' for the paper's code, 'diffusers' for a UNet2DModel's)."""
  if layout == 'diffusers':
    state_dict = _diffusers_keys(state_dict)
  nmap = check_shapes({k: tuple(v.shape) for k, v in state_dict.items()}, config, layout)
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


def _diffusers_keys(state_dict):
  from weights_convert import diffusers_map  # pylint: disable=g-import-not-at-top
  try:
    return diffusers_map.normalise_keys(state_dict)
  except ValueError as e:
    raise ConversionError(str(e)) from None


def _read_json(path, what):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ConversionError(f'cannot read {what} {path}: {error_summary(e)}') from None


def _is_ours(d):
  return isinstance(d, dict) and 'family' in d


def resolve_config(config):
  """A config from a config object, a name of `configs.NAMES`, or a path to a .json config dict
  (ours: a `config.to_dict()`, e.g. another checkpoint's config.json)."""
  if not isinstance(config, (str, os.PathLike)):
    return config
  config = os.fspath(config)
  if not config.endswith('.json'):
    return configs.get_config(config)
  d = _read_json(config, 'config')
  if not _is_ours(d) and isinstance(d, dict) and ('_class_name' in d or 'block_out_channels' in d):
    raise ConversionError(f'{config} is a diffusers config: convert with '
                          'convert_diffusers(src, out, config=...)')
  try:
    return configs.config_from_dict(d)
  except ValueError as e:
    raise ConversionError(f'bad config {config}: {e}') from None


def _sha256(path):
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      h.update(block)
  return h.hexdigest()


def _source(kind, src, **extra):
  src = os.path.abspath(os.fspath(src))
  return dict(format=kind, file=src, sha256=_sha256(src), **extra)


def _check_out(out, overwrite):
  out = os.path.abspath(os.fspath(out))
  try:  # fail before reading a large file, touching nothing
    checkpoints.check_replaceable(out, overwrite)
  except checkpoints.CheckpointError as e:
    raise ConversionError(str(e).replace('overwrite=True (--overwrite)', '--overwrite')) from None
  return out


def convert_file(src, config, out, *, overwrite=False, layout='pytorch', source=None):
  """Convert `src` for `config` (see `resolve_config`) into checkpoint directory `out`.

  A `config` path to a diffusers `config.json` converts by `convert_diffusers`. The checkpoint's
  config.json records the file (path, sha256) and its config under `source` (or `source`).
  """
  if isinstance(config, (str, os.PathLike)) and os.fspath(config).endswith('.json'):
    d = _read_json(os.fspath(config), 'config')
    if not _is_ours(d):
      return convert_diffusers(src, out, config=config, overwrite=overwrite)
  name = config if isinstance(config, (str, os.PathLike)) else None
  config = resolve_config(config)
  out = _check_out(out, overwrite)
  params = convert_state_dict(read_state_dict(src), config, layout)
  if source is None:
    source = _source('pytorch state dict', src, notes=[],
                     **({'config': os.fspath(name)} if name is not None else {}))
  return checkpoints.save_checkpoint(out, params, config, overwrite=overwrite, source=source)


WEIGHTS_FILES = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.bin')
SCHEDULER_FILE = 'scheduler_config.json'


def _diffusers_folder(src):
  """(config.json, weights file, scheduler_config.json or None) of a diffusers model folder
  (a UNet2DModel folder, or a pipeline folder with the model under unet/)."""
  model_dir = src
  if not os.path.isfile(os.path.join(src, 'config.json')) and os.path.isfile(
      os.path.join(src, 'unet', 'config.json')):
    model_dir = os.path.join(src, 'unet')
  config = os.path.join(model_dir, 'config.json')
  if not os.path.isfile(config):
    raise ConversionError(f'--src {src} is a folder without config.json; a diffusers model '
                          f'folder holds config.json and {" or ".join(WEIGHTS_FILES)}')
  weights = [os.path.join(model_dir, w) for w in WEIGHTS_FILES
             if os.path.isfile(os.path.join(model_dir, w))]
  return config, (weights[0] if weights else None), _scheduler_beside(model_dir, src)


def _no_weights(config):
  model_dir = os.path.dirname(config)
  return ConversionError(f'{model_dir} holds no {" or ".join(WEIGHTS_FILES)} (it holds '
                         f'{listed(sorted(os.listdir(model_dir)))})')


def _scheduler_beside(model_dir, root):
  for d in (model_dir, os.path.join(root, 'scheduler'),
            os.path.join(os.path.dirname(os.path.abspath(model_dir)), 'scheduler')):
    path = os.path.join(d, SCHEDULER_FILE)
    if os.path.isfile(path):
      return path
  return None


def convert_diffusers(src, out, *, config=None, overwrite=False):
  """Convert a diffusers `UNet2DModel` into checkpoint directory `out` (a DDPM UNet).

  `src`: a diffusers model folder (config.json beside diffusion_pytorch_model.safetensors or
  .bin; a pipeline folder with unet/ and scheduler/ works too), or a weights file with `config`
  its diffusers config.json. Both attention spellings (to_q/... and the old query/...) are read.
  A `scheduler_config.json` beside the model must give the linear schedule the sampler uses.
  The architecture, every refusal and the notes come from `diffusers_map`; the diffusers config
  and the notes are recorded under `source` in the checkpoint's config.json.
  """
  from weights_convert import diffusers_map  # pylint: disable=g-import-not-at-top
  src = os.fspath(src)
  if os.path.isdir(src):
    if config is not None:
      raise ConversionError(f'--src {src} is a folder; give the checkpoint file in it, or no '
                            'config (the folder has its own config.json)')
    config, weights, scheduler = _diffusers_folder(src)
  else:
    if config is None:
      raise ConversionError(f'--src {src} is a file: give its diffusers config.json as config')
    config, weights = os.fspath(config), src
    scheduler = _scheduler_beside(os.path.dirname(os.path.abspath(config)),
                                  os.path.dirname(os.path.abspath(config)))
  d = _read_json(config, 'diffusers config')
  try:
    ddpm = diffusers_map.ddpm_config(d)
  except ValueError as e:
    raise ConversionError(f'{config}: {e}') from None
  if scheduler is None:
    notes = [f'no {SCHEDULER_FILE} beside the model: its training schedule is assumed to be '
             "the sampler's (linear betas 1e-4..0.02 over 1000 steps)"]
  else:
    try:
      notes = [f'{scheduler}: ' + diffusers_map.check_scheduler(
          _read_json(scheduler, 'scheduler config'))]
    except ConversionError:
      raise
    except ValueError as e:
      raise ConversionError(f'{scheduler}: {e}') from None
  if weights is None:
    raise _no_weights(config)
  out = _check_out(out, overwrite)
  source = _source('diffusers UNet2DModel', weights, config_file=os.path.abspath(config),
                   diffusers_config=d, notes=notes)
  return convert_file(weights, ddpm, out, overwrite=overwrite, layout='diffusers', source=source)


def convert_flags(src, flags, out, *, classifier=False, defaults='create_model',
                  overwrite=False, origin=None):
  """Convert guided-diffusion checkpoint `src` whose network `flags` describe (a {key: value}
  of `create_model` / `create_classifier`, read by `configs.guided_diffusion_kwargs` with
  `defaults`) into `out`; the flags and the ignored keys are recorded under `source`."""
  try:
    config, ignored = configs.from_guided_diffusion_flags(flags, classifier=classifier,
                                                          defaults=defaults)
  except ValueError as e:
    raise ConversionError(str(e)) from None
  out = _check_out(out, overwrite)
  notes = [f'{"" if why.startswith("checked") else "ignored "}{k}={flags[k]!r}: {why}'
           for k, why in sorted(ignored.items())]
  source = _source('guided-diffusion ' + ('classifier' if classifier else 'model'), src,
                   flags=dict(flags), flags_from=origin, defaults=defaults, notes=notes)
  return convert_file(src, config, out, overwrite=overwrite, source=source)
