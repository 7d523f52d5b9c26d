"""The project's one checkpoint format: a directory with float32 params and the architecture.

    DIR/config.json   the config dict (`config.to_dict()`, with its `family` tag), and for
                      converted networks a `source` entry saying where they came from
    DIR/params/       the float32 param tree, written by orbax-checkpoint

Converted (weights_convert) and trained networks use it alike. `load_model` needs no torch.
"""

import functools
import json
import os
import shutil
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from flax.core import unfreeze

from ddrm_jax.models import configs

CONFIG_FILE = 'config.json'
PARAMS_DIR = 'params'
_MAX_LISTED = 8


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be written or read; the message is one line."""


def error_summary(e):
  """`Type: first line of the message` of an exception."""
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return f'{type(e).__name__}: {lines[0] if lines else ""}'.rstrip(': ')


def listed(items):
  """Comma-separated items, at most a few, then `and N more`."""
  items = list(items)
  more = f' and {len(items) - _MAX_LISTED} more' if len(items) > _MAX_LISTED else ''
  return ', '.join(items[:_MAX_LISTED]) + more


def _path_name(path):
  return '/'.join(str(p) for p in path)


def tree_mismatch(shapes, expected):
  """A one-line description of how flat {path: shape} `shapes` differ from `expected`, or ''."""
  missing = sorted(set(expected) - set(shapes))
  extra = sorted(set(shapes) - set(expected))
  wrong = sorted(p for p in set(shapes) & set(expected)
                 if tuple(shapes[p]) != tuple(expected[p]))
  parts = []
  if missing:
    parts.append(f'missing {len(missing)} params: '
                 + listed(f'{_path_name(p)} {tuple(expected[p])}' for p in missing))
  if extra:
    parts.append(f'unexpected {len(extra)} params: '
                 + listed(f'{_path_name(p)} {tuple(shapes[p])}' for p in extra))
  if wrong:
    parts.append(f'{len(wrong)} params of the wrong shape: ' + listed(
        f'{_path_name(p)} {tuple(shapes[p])} (expected {tuple(expected[p])})' for p in wrong))
  return '; '.join(parts)


@functools.lru_cache(maxsize=16)
def _expected_shapes(config):
  flat = traverse_util.flatten_dict(unfreeze(configs.param_shapes(config)))
  return tuple((p, tuple(s.shape)) for p, s in flat.items())


def expected_shapes(config):
  """Flat {path: shape} of the params of `config`'s network (jax.eval_shape, no compute)."""
  return dict(_expected_shapes(config))


def _unwrap(params):
  params = unfreeze(params) if hasattr(params, 'unfreeze') else params
  if isinstance(params, dict) and set(params) == {'params'}:  # a `variables` dict
    params = params['params']
  if not isinstance(params, dict):
    raise CheckpointError(f'params must be a nested dict of arrays, got {type(params).__name__}')
  return params


def check_replaceable(directory, overwrite):
  """Raises CheckpointError unless `directory` may be written: absent, or (with `overwrite`)
  an empty directory or recognisably one of our checkpoints (a `config.json` holding a known
  `family` tag, a `params/` directory, and nothing else). Nothing is touched."""
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.lexists(directory):
    return
  if not overwrite:
    raise CheckpointError(f'{directory} already exists; pass overwrite=True (--overwrite) to '
                          'replace it')
  if os.path.islink(directory) or not os.path.isdir(directory):
    raise CheckpointError(f'{directory} exists and is not a directory; not replacing it')
  entries = sorted(os.listdir(directory))
  if not entries:
    return
  refuse = f'{directory} is not a ddrm-jax checkpoint; not replacing it'
  extra = [e for e in entries if e not in (CONFIG_FILE, PARAMS_DIR)]
  if extra:
    raise CheckpointError(f'{refuse} (it holds {listed(extra)})')
  config_path = os.path.join(directory, CONFIG_FILE)
  params_path = os.path.join(directory, PARAMS_DIR)
  if not os.path.isfile(config_path) or os.path.islink(config_path):
    raise CheckpointError(f'{refuse} ({CONFIG_FILE} is missing)')
  if not os.path.isdir(params_path) or os.path.islink(params_path):
    raise CheckpointError(f'{refuse} ({PARAMS_DIR}/ is missing)')
  try:
    with open(config_path) as f:
      family = json.load(f).get('family')
  except (OSError, UnicodeDecodeError, ValueError, AttributeError):
    family = None
  if family not in configs.FAMILIES:
    raise CheckpointError(f'{refuse} ({CONFIG_FILE} has no model family tag of ours)')


def _not_finite(flat):
  """The names of the arrays of flat {path: numpy array} holding NaN or inf, sorted."""
  return sorted(_path_name(p) for p, v in flat.items() if not np.isfinite(v).all())


def save_checkpoint(directory, params, config, *, overwrite=False, source=None):
  """Write `params` (cast to float32) and `config` (or its dict) to `directory`, atomically.

  `source` (a JSON-serialisable dict, e.g. the converted file and its original config) is stored
  as the `source` entry of config.json (`load_source`); it is not part of the architecture.

  The params must match `config`'s network exactly (names and shapes) and be finite. An existing
  `directory` is replaced only with `overwrite=True`, and only if it is empty or recognisably a
  checkpoint (`check_replaceable`). On failure nothing is left behind.
  """
  if isinstance(config, dict):
    config = configs.config_from_dict(config)
  directory = os.path.abspath(os.fspath(directory))
  check_replaceable(directory, overwrite)
  flat = traverse_util.flatten_dict(_unwrap(params))
  try:
    flat = {p: np.asarray(v, dtype=np.float32) for p, v in flat.items()}
  except (TypeError, ValueError) as e:
    raise CheckpointError(f'params are not all numeric arrays: {error_summary(e)}') from None
  mismatch = tree_mismatch({p: v.shape for p, v in flat.items()}, expected_shapes(config))
  if mismatch:
    raise CheckpointError(f'params do not match the {config.family} config: {mismatch}')
  bad = _not_finite(flat)
  if bad:
    raise CheckpointError(f'params are not finite (NaN or inf): {listed(bad)}; not writing them')
  record = config.to_dict()
  if source is not None:
    if not isinstance(source, dict):
      raise CheckpointError(f'source must be a dict, got {type(source).__name__}')
    record[configs.SOURCE_KEY] = source
  try:
    config_json = json.dumps(record, indent=1, sort_keys=True, allow_nan=False)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f'source is not JSON-serialisable: {error_summary(e)}') from None

  parent = os.path.dirname(directory)
  created, p = None, parent  # the topmost missing ancestor, removed again on failure
  while not os.path.exists(p):
    created, p = p, os.path.dirname(p)
  tmp = os.path.join(parent, f'.{os.path.basename(directory)}.tmp-{uuid.uuid4().hex[:8]}')
  old = tmp + '.old'
  try:
    os.makedirs(tmp)
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, PARAMS_DIR), traverse_util.unflatten_dict(flat))
      ckptr.wait_until_finished()
    with open(os.path.join(tmp, CONFIG_FILE), 'w') as f:
      f.write(config_json + '\n')
    if os.path.lexists(directory):  # overwrite: swap in the new one, then delete the old one
      os.rename(directory, old)
    os.rename(tmp, directory)
  except BaseException:
    if os.path.lexists(old) and not os.path.lexists(directory):
      os.rename(old, directory)
    shutil.rmtree(tmp, ignore_errors=True)
    if created:
      shutil.rmtree(created, ignore_errors=True)
    raise
  shutil.rmtree(old, ignore_errors=True)
  return directory


def _read_config_json(directory):
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise CheckpointError(f'no checkpoint directory at {directory}')
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(f'{directory} is not a checkpoint: {CONFIG_FILE} is missing')
  try:
    with open(path) as f:
      return json.load(f), path
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f'corrupt {path}: {error_summary(e)}') from None


def load_source(directory):
  """The `source` entry of checkpoint `directory` (where it was converted from), or None."""
  d, _ = _read_config_json(directory)
  return d.get(configs.SOURCE_KEY) if isinstance(d, dict) else None


def load_config(directory):
  """The config stored in checkpoint `directory` (its `source` entry is not part of it)."""
  d, path = _read_config_json(directory)
  try:
    return configs.config_from_dict(d)
  except (ValueError, TypeError, ImportError) as e:
    raise CheckpointError(f'bad config in {path}: {e}') from None


def load_params(directory, config):
  """The float32 params in checkpoint `directory`, checked against `config`'s network and for
  NaN/inf; uncommitted arrays on the default device (usable on any device or mesh)."""
  path = os.path.abspath(os.path.join(os.fspath(directory), PARAMS_DIR))
  if not os.path.isdir(path):
    raise CheckpointError(f'{directory} is not a checkpoint: {PARAMS_DIR}/ is missing')
  expected = expected_shapes(config)
  with ocp.StandardCheckpointer() as ckptr:
    return _restore(ckptr, path, directory, config, expected)


def _restore(ckptr, path, directory, config, expected):
  try:
    meta = ckptr.metadata(path)
    meta = getattr(meta, 'item_metadata', meta)  # orbax >= 0.11 wraps the tree
    meta = getattr(meta, 'tree', meta)
    found = traverse_util.flatten_dict(dict(meta))
    found = {p: (tuple(m.shape), np.dtype(m.dtype)) for p, m in found.items()}
  except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
    raise CheckpointError(f'cannot read params in {path}: {error_summary(e)}') from None
  mismatch = tree_mismatch({p: s for p, (s, _) in found.items()}, expected)
  if mismatch:
    raise CheckpointError(
        f'params in {directory} do not match its {config.family} config: {mismatch}')
  bad_dtype = sorted(_path_name(p) for p, (_, d) in found.items() if d != np.float32)
  if bad_dtype:
    raise CheckpointError(f'params in {directory} are not float32: {listed(bad_dtype)}')
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = traverse_util.unflatten_dict(
      {p: jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding) for p, s in expected.items()})
  try:
    params = ckptr.restore(path, target)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'corrupt or truncated params in {path}: {error_summary(e)}') from None
  flat = {p: np.asarray(v) for p, v in traverse_util.flatten_dict(params).items()}
  bad = _not_finite(flat)
  if bad:
    raise CheckpointError(f'params in {directory} are not finite (NaN or inf): {listed(bad)}')
  # Uncommitted arrays (not pinned to device 0): they follow the computation, e.g. replicated
  # over the devices of `sampler.sample_sharded`'s mesh.
  return traverse_util.unflatten_dict({p: jnp.asarray(v) for p, v in flat.items()})


def load_model(directory, *, dtype=None):
  """Load a checkpoint directory as `(fn, params, config)`.

  `fn(params, x, t)` -> eps for unconditional networks, `fn(params, x, t, labels)` for
  class-conditional ones, `fn(params, x, t)` -> logits for classifiers; x (B, H, W, C) in
  [-1, 1], t int (B,), labels int (B,). `fn` is pure (jit it, or call it inside a jit);
  `dtype` is its compute dtype (None: the config's `dtype`); params are float32.
  """
  config = load_config(directory)
  params = load_params(directory, config)
  module = config.module(dtype)
  if configs.is_class_conditional(config):
    def fn(params, x, t, labels):
      return module.apply({'params': params}, x, t, labels)
  else:
    def fn(params, x, t):
      return module.apply({'params': params}, x, t)
  return fn, params, config
