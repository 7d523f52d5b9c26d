"""Every degradation of a run as one registered object (`Problem`, in `base.py`).

A problem knows the settings it uses (side files `kernel`, `mask`, `perm`; `kernel_size`), how
its operator is built for an image shape, its baseline (what the paper's tables compare with),
whether it runs in measurement mode and by tiles, and what it adds to a run's outputs (blind
deblurring's kernels, the crop of a circular blur's border padding in measurement mode).
Nothing else branches on a degradation's name: adding a problem is one `register(...)` here
plus its operator.

  from ddrm_jax import problems
  op = problems.get('sr4').operator(config, {}, (256, 256, 3))
"""

import dataclasses

from ddrm_jax.errors import SettingError
from ddrm_jax.problems.base import BICUBIC
from ddrm_jax.problems.base import MEASUREMENT
from ddrm_jax.problems.base import PINV
from ddrm_jax.problems.base import Problem
from ddrm_jax.problems.base import ProblemOutputs
from ddrm_jax.problems.base import Setup
from ddrm_jax.problems.base import get
from ddrm_jax.problems.base import names
from ddrm_jax.problems.base import register
from ddrm_jax.problems.circular import BlindBlur
from ddrm_jax.problems.circular import CircularBlur
from ddrm_jax.problems.jpeg import JPEG
from ddrm_jax.problems.standard import CompressedSensing
from ddrm_jax.problems.standard import Inpainting
from ddrm_jax.problems.standard import SeparableBlur


@dataclasses.dataclass(frozen=True)
class Denoising(Problem):
  """deno: H = I."""

  def _check(self, c):
    if c.measurement and c.sigma_y == 0:
      raise SettingError(f"§measurement §deg {self.name} needs the photo's noise level §sigma_y "
                         '> 0 (with 0 the input is returned unchanged)')


_NOT_IMAGES = 'its measurements are not images'

# In the order of `operators.NAMES`, then the problems beyond the reference's names.
register(Denoising('deno'))
register(Inpainting('inp', settings=('mask',), apply_h_in_measurement=True))
for _name in ('inp_lolcat', 'inp_lorem'):
  register(Problem(_name, apply_h_in_measurement=True))
for _r in (2, 4, 8, 16):
  register(Problem(f'sr{_r}', baseline=BICUBIC))
for _r in (4, 8, 16):
  register(Problem(f'sr_bicubic{_r}', baseline=BICUBIC))
for _name in ('deblur_uni', 'deblur_gauss', 'deblur_aniso'):
  register(Problem(_name, baseline=MEASUREMENT))
register(CircularBlur('deblur_motion', baseline=MEASUREMENT, tile_measurement=False))
register(CircularBlur('blur2d', baseline=MEASUREMENT, settings=('kernel',),
                      tile_measurement=False))
register(Problem('color'))
for _name in ('cs2', 'cs4'):
  register(CompressedSensing(_name, settings=('perm',), measurement=False,
                             measurement_refusal=_NOT_IMAGES))
register(SeparableBlur('blur', baseline=MEASUREMENT, settings=('kernel',)))
register(BlindBlur('blind_blur', baseline=MEASUREMENT, settings=('kernel', 'kernel_size'),
                   tileable=False, tile_measurement=False, default_eta=1.0, default_eta_b=0.7,
                   blind=True))

register(JPEG('jpeg', baseline=MEASUREMENT, settings=('jpeg_quality', 'jpeg_t_start'),
              methods=False, noise=False, codec=True, default_eta=1.0, default_eta_b=0.4,
              baseline_label='baseline (the JPEG decode)'))

NAMES = names()
