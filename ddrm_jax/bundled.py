"""What ships inside the package: the bundled 64x64 prior and its held-out sample images.

The prior (`ddrm-train --config=prior64`, see docs/models.md) is the default of `ddrm-restore` and of
the benchmark's fidelity check; the samples are the paper's demo images at 64x64 (MIT, NOTICE.md).
"""

import os

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'assets')
PRIOR = os.path.join(ASSETS, 'prior')
SAMPLES = os.path.join(ASSETS, 'samples')
SAMPLES_256 = os.path.join(ASSETS, 'samples_256')  # The same six at their 256x256 (tiling).


def sample_images(channels=3):
  """(names, images): the bundled samples as float32 (N, 64, 64, channels) in [-1, 1]."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top  (Pillow only when needed)
  return io.read_images(SAMPLES, channels)
