"""Problems with side files: inpainting (mask), compressed sensing (perm), separable blur by a
user's kernel (`blur`)."""

import dataclasses

from ddrm_jax import side_files
from ddrm_jax.errors import SettingError
from ddrm_jax.problems.base import Problem


@dataclasses.dataclass(frozen=True)
class Inpainting(Problem):
  """inp: the mask of `mask` (or a seeded random one in the paper protocol)."""

  def _check(self, c):
    if c.measurement and not c.mask:
      raise SettingError('§measurement §deg inp needs §mask (which pixels of the photo are '
                         'missing)')

  def load_side(self, c):
    return {'mask': side_files.load_mask(c.mask)} if c.mask else {}

  def make(self, c, side, x_shape):
    from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
    if 'mask' not in side:
      return operators.make(self.name, x_shape, key=c.seed)
    m = side['mask']
    if tuple(m.shape) != tuple(x_shape[:2]):
      raise SettingError(f'§mask {c.mask}: is {m.shape[0]}x{m.shape[1]}, the images are '
                         f'{x_shape[0]}x{x_shape[1]}')
    return operators.make(self.name, x_shape, mask=m)


@dataclasses.dataclass(frozen=True)
class CompressedSensing(Problem):
  """cs2/cs4: the permutation of `perm` (or a seeded one)."""

  def load_side(self, c):
    return {'perm': side_files.load_perm(c.perm)} if c.perm else {}

  def make(self, c, side, x_shape):
    from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
    if 'perm' in side:
      return operators.make(self.name, x_shape, perm=side['perm'])
    return operators.make(self.name, x_shape, key=c.seed)


@dataclasses.dataclass(frozen=True)
class SeparableBlur(Problem):
  """blur: a separable blur by the 1-D or (2, L) taps of `kernel` (required)."""

  def _check(self, c):
    if not c.kernel:
      raise SettingError(f'§deg {self.name} needs §kernel (a .npy of the blur taps)')

  def load_side(self, c):
    from ddrm_jax.problems import circular  # pylint: disable=g-import-not-at-top
    return {'kernel': tuple(circular.normalized(k, c) for k in side_files.load_kernel(c.kernel))}

  def make(self, c, side, x_shape):
    from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
    return operators.separable_blur(*side['kernel'], x_shape)
