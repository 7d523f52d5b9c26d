"""python -m weights_convert --src SRC --out DIR [--config C | --model_flags F |
                            --classifier_flags F] [--overwrite]

Converts a PyTorch network into this project's checkpoint directory (float32 params via
orbax-checkpoint + config.json with a `source` entry saying where it came from):
  --src FILE --config NAME          one of the paper's networks (celeba_hq, imagenet_256, ...)
  --src FILE --config CONFIG.json   our config dict, or a diffusers UNet2DModel config.json
  --src DIR                         a diffusers UNet2DModel folder (config.json + weights)
  --src FILE --model_flags F        a guided-diffusion UNet: F a MODEL_FLAGS string or a
                                    .yaml/.json of create_model keys (DPS's model_config.yaml)
  --src FILE --classifier_flags F   a guided-diffusion classifier, likewise
Errors: one line, exit status 1, nothing written. Notes (keys ignored, schedule checked) are
printed after a successful conversion.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

_SRC = flags.DEFINE_string(
    'src', None, 'PyTorch weights (.ckpt, .pt, .pth, .bin or .safetensors), or a diffusers '
    'UNet2DModel folder.')
_CONFIG = flags.DEFINE_string(
    'config', None, 'Architecture: a name (celeba_hq, bedroom, cat, church, imagenet_256, '
    'imagenet_256_cc, imagenet_512_cc, classifier_256, classifier_512), our config .json, or a '
    'diffusers config.json.')
_MODEL_FLAGS = flags.DEFINE_string(
    'model_flags', None, 'guided-diffusion model: its MODEL_FLAGS string ("--image_size 256 '
    '...") or a .yaml/.json file of create_model keys.')
_CLASSIFIER_FLAGS = flags.DEFINE_string(
    'classifier_flags', None, 'guided-diffusion classifier: its CLASSIFIER_FLAGS string or a '
    '.yaml/.json file of create_classifier keys.')
_OUT = flags.DEFINE_string('out', None, 'Checkpoint directory to write.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing checkpoint directory.')


def _usage_error(argv):
  """A usage message, or None."""
  if len(argv) > 1:
    return f'unexpected arguments: {" ".join(argv[1:])}'
  unset = [f'--{f.name}' for f in (_SRC, _OUT) if not f.value]
  if unset:
    return f'missing required flags: {", ".join(unset)}'
  given = [f'--{f.name}' for f in (_CONFIG, _MODEL_FLAGS, _CLASSIFIER_FLAGS)
           if f.value is not None]
  if len(given) > 1:
    return f'give one of {", ".join(given)}'
  if not given and not os.path.isdir(_SRC.value):
    return ('missing --config (a name, a config .json or a diffusers config.json), '
            '--model_flags or --classifier_flags (or give --src a diffusers model folder)')
  return None


def _convert():
  from weights_convert import convert  # pylint: disable=g-import-not-at-top
  from weights_convert import gd_flags  # pylint: disable=g-import-not-at-top
  overwrite = _OVERWRITE.value
  for flag, classifier in ((_MODEL_FLAGS, False), (_CLASSIFIER_FLAGS, True)):
    if flag.value is not None:
      try:
        values, defaults, origin = gd_flags.read_flags(flag.value)
      except ValueError as e:
        raise convert.ConversionError(f'--{flag.name}: {e}') from None
      return convert.convert_flags(_SRC.value, values, _OUT.value, classifier=classifier,
                                   defaults=defaults, overwrite=overwrite, origin=origin)
  if _CONFIG.value is None:
    return convert.convert_diffusers(_SRC.value, _OUT.value, overwrite=overwrite)
  return convert.convert_file(_SRC.value, _CONFIG.value, _OUT.value, overwrite=overwrite)


def main(argv):
  error = _usage_error(argv)
  if error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  if not flags.FLAGS['verbosity'].present:  # keep orbax/jax INFO chatter out of the output
    logging.set_verbosity(logging.WARNING)
  from ddrm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  try:
    out = _convert()
  except (ValueError, OSError) as e:  # ConversionError / CheckpointError are ValueErrors
    message = ' '.join(str(e).split()) or type(e).__name__
    print(f'error: {message}', file=sys.stderr)
    return 1
  for note in (checkpoints.load_source(out) or {}).get('notes', []):
    print(f'note: {note}')
  print(f'wrote {out}')
  return 0


def run():
  app.run(main)


if __name__ == '__main__':
  run()
