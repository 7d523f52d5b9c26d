"""python -m weights_convert --src FILE --config NAME --out DIR [--overwrite]

Converts a PyTorch checkpoint of one of the paper's networks into this project's checkpoint
directory (float32 params via orbax-checkpoint + config.json). Errors: one line, exit status 1,
nothing written.
"""

import sys

from absl import app
from absl import flags
from absl import logging

_SRC = flags.DEFINE_string('src', None, 'PyTorch state dict: .ckpt, .pt, .pth or .safetensors.')
_CONFIG = flags.DEFINE_string(
    'config', None, 'Architecture name: celeba_hq, bedroom, cat, church, imagenet_256, '
    'imagenet_256_cc, imagenet_512_cc, classifier_256, classifier_512.')
_OUT = flags.DEFINE_string('out', None, 'Checkpoint directory to write.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing checkpoint directory.')


def main(argv):
  if len(argv) > 1:
    print(f'error: unexpected arguments: {" ".join(argv[1:])}', file=sys.stderr)
    return 2
  unset = [f'--{f.name}' for f in (_SRC, _CONFIG, _OUT) if not f.value]
  if unset:
    print(f'error: missing required flags: {", ".join(unset)}', file=sys.stderr)
    return 2
  if not flags.FLAGS['verbosity'].present:  # keep orbax/jax INFO chatter out of the output
    logging.set_verbosity(logging.WARNING)
  from weights_convert import convert  # pylint: disable=g-import-not-at-top
  try:
    out = convert.convert_file(_SRC.value, _CONFIG.value, _OUT.value,
                               overwrite=_OVERWRITE.value)
  except (ValueError, OSError) as e:  # ConversionError / CheckpointError are ValueErrors
    message = ' '.join(str(e).split()) or type(e).__name__
    print(f'error: {message}', file=sys.stderr)
    return 1
  print(f'wrote {out}')
  return 0


def run():
  app.run(main)


if __name__ == '__main__':
  run()
