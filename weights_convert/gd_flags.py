"""guided-diffusion flags as users hold them: a MODEL_FLAGS string or a YAML/JSON file.

`read_flags(value)` -> (flags dict, defaults, origin): a `.yaml`/`.yml`/`.json` file holds
`create_model` keyword arguments (as DPS's model_config.yaml: missing keys take create_model's
defaults); anything else is a command-line string as in guided-diffusion's README,
`--attention_resolutions 32,16,8 --class_cond False ...` (optionally `MODEL_FLAGS="..."`), whose
missing keys take the defaults of guided-diffusion's scripts. The values' meaning is
`ddrm_jax.models.configs.guided_diffusion_kwargs`'.
"""

import json
import os
import re
import shlex

FILE_EXTS = ('.yaml', '.yml', '.json')


def _load_file(path):
  if not os.path.isfile(path):
    raise ValueError(f'no such flags file: {path}')
  try:
    with open(path) as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f'cannot read flags file {path}: {type(e).__name__}') from None
  if path.lower().endswith('.json'):
    try:
      d = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f'cannot read flags file {path}: {e}') from None
  else:
    try:
      import yaml  # pylint: disable=g-import-not-at-top  (PyYAML: a dependency of flax)
    except ImportError:
      raise ValueError(f'reading {path} needs PyYAML: pip install pyyaml') from None
    try:
      d = yaml.safe_load(text)
    except yaml.YAMLError as e:
      first = ' '.join(str(e).split())
      raise ValueError(f'cannot read flags file {path}: {first}') from None
  if not isinstance(d, dict):
    raise ValueError(f'flags file {path} must hold a mapping of guided-diffusion keys, got '
                     f'{type(d).__name__}')
  return {str(k): v for k, v in d.items()}


def parse_flag_string(text):
  """{key: value string} of `--key value` / `--key=value` pairs (each flag takes one value, as
  guided-diffusion's argparse flags; a repeated flag keeps its last value, as argparse)."""
  try:
    tokens = shlex.split(text)
  except ValueError as e:
    raise ValueError(f'cannot parse flags {text!r}: {e}') from None
  if len(tokens) == 1 and re.match(r'^[A-Za-z_]\w*=\s*--', tokens[0]):  # MODEL_FLAGS="..."
    tokens = shlex.split(tokens[0].split('=', 1)[1])
  if not tokens:
    raise ValueError('flags are empty')
  out, i = {}, 0
  while i < len(tokens):
    token = tokens[i]
    if not token.startswith('--') or len(token) == 2:
      raise ValueError(f'flags: expected --key value, got {token!r}')
    key, eq, value = token[2:].partition('=')
    if not eq:
      if i + 1 >= len(tokens) or tokens[i + 1].startswith('--'):
        raise ValueError(f'flags: --{key} has no value (guided-diffusion flags take one, e.g. '
                         f'--{key} True)')
      value = tokens[i + 1]
      i += 1
    out[key] = value
    i += 1
  return out


def read_flags(value):
  """(flags dict, defaults for `guided_diffusion_kwargs`, origin) of a file or a flags string."""
  value = os.fspath(value)
  if value.strip().lower().endswith(FILE_EXTS) and not value.lstrip().startswith('-'):
    path = os.path.expanduser(value.strip())
    return _load_file(path), 'create_model', os.path.abspath(path)
  return parse_flag_string(value), 'script', 'flags string'
