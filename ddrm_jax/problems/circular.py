"""Circular 2-D blurs (`operators.circular_blur`): blur2d (any kernel), deblur_motion (a seeded
camera shake), and blind_blur (the kernel estimated with the image, `blind.sample_blind`).

In measurement mode a real photo's borders are not circular: the operator is for the photo
padded by `operators.border_padding` (to sizes the network's down-sampling accepts), which
`Setup.extend` fills by `operators.reflect_extension`; the restorations are cropped back
(`ProblemOutputs`).
"""

import dataclasses

import numpy as np

from ddrm_jax import side_files
from ddrm_jax.errors import SettingError
from ddrm_jax.errors import one_line
from ddrm_jax.problems.base import Problem
from ddrm_jax.problems.base import ProblemOutputs
from ddrm_jax.problems.base import Setup


@dataclasses.dataclass(frozen=True)
class CircularBlur(Problem):
  """blur2d / deblur_motion."""

  def load_side(self, c):
    if not c.kernel:
      return {}
    k = side_files.load_kernel2d(c.kernel)
    return {'kernel': normalized(k, c, axes=(0, 1) if np.ndim(k) >= 2 else None)}

  def kernel(self, c, side, x_shape):
    """The blur kernel for images of x_shape."""
    from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
    from ddrm_jax.operators import registry  # pylint: disable=g-import-not-at-top
    if 'kernel' in side:
      return side['kernel']
    size = (registry.BLUR2D_DEFAULT_SIZE if self.name == 'blur2d' else
            registry.motion_kernel_size(x_shape))
    return operators.motion_kernel(registry.MOTION_SEED, size)

  def make(self, c, side, x_shape):
    from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
    return operators.circular_blur(self.kernel(c, side, x_shape), x_shape)

  def _what(self, c):
    return (f'§kernel {c.kernel}' if c.kernel else
            f'§kernel_size {c.kernel_size}' if c.kernel_size else f'§deg {self.name}')

  def setup(self, c, side, x_shape, model_config):
    try:
      return self._setup(c, side, x_shape, model_config)
    except SettingError:
      raise
    except ValueError as e:
      raise SettingError(f'{self._what(c)} for {x_shape[0]}x{x_shape[1]} images: '
                         f'{one_line(e)}') from None

  def _setup(self, c, side, x_shape, model_config, kernel=None, kernel_size=0, true_kernel=None):
    from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
    kernel = self.kernel(c, side, x_shape) if kernel is None else kernel
    op = operators.circular_blur(kernel, x_shape)  # Checks the kernel.
    if not c.measurement:
      return Setup(op=op, in_shape=tuple(x_shape), kernel_size=kernel_size,
                   extras=ProblemOutputs(kernels=self.blind, true_kernel=true_kernel))
    h, w, ch = x_shape
    mult = (getattr(model_config, 'ch_mult', None) or
            getattr(model_config, 'channel_mult', None) or (1,))
    padding = operators.border_padding(h, w, np.shape(kernel), 2**(len(mult) - 1))
    (top, bottom), (left, right) = padding
    op = operators.circular_blur(kernel, (h + top + bottom, w + left + right, ch))
    extend = _extension(kernel, padding)
    return Setup(op=op, in_shape=tuple(x_shape), padding=padding, extend=extend,
                 kernel_size=kernel_size,
                 extras=ProblemOutputs(padding=padding, kernels=self.blind,
                                       true_kernel=true_kernel))


def normalized(kernel, c, axes=None, what=None):
  """A kernel file's taps checked (`operators.base.check_kernel_values`) and, with
  kernel_normalize, divided by their sum (per channel for (kh, kw, C) kernels)."""
  from ddrm_jax.operators import base  # pylint: disable=g-import-not-at-top
  k = np.asarray(kernel, np.float64)
  try:
    base.check_kernel_values(k, normalize=c.kernel_normalize, signed=False, axes=axes)
  except ValueError as e:
    raise SettingError(f'§kernel {what or c.kernel}: {one_line(e)}'
                       + ('' if c.kernel_normalize else ' (or pass §kernel_normalize)')) from None
  return k / np.sum(k, axis=axes) if c.kernel_normalize else k


def _extension(kernel, padding):
  """A jitted `y -> the photo y padded by reflect_extension` (built once per run)."""
  import jax  # pylint: disable=g-import-not-at-top
  from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
  return jax.jit(lambda y: operators.reflect_extension(y, kernel, padding))


@dataclasses.dataclass(frozen=True)
class BlindBlur(CircularBlur):
  """blind_blur: the paper protocol blurs by `kernel` (default: deblur_motion's kernel of
  `kernel_size`), never shown to the restoration; the run estimates a kernel per image."""

  def _check(self, c):
    if c.kernel and c.measurement:
      raise SettingError(f'§deg {self.name} §measurement estimates the kernel: leave §kernel out '
                         '(or restore with §deg blur2d §kernel if you know it)')
    if c.classifier_ckpt:
      raise SettingError(f'§deg {self.name} does not take classifier guidance '
                         '(§classifier_ckpt)')

  def kernel_size(self, c, x_shape):
    from ddrm_jax import blind  # pylint: disable=g-import-not-at-top
    from ddrm_jax.operators import registry  # pylint: disable=g-import-not-at-top
    size = c.kernel_size if c.kernel_size is not None else registry.motion_kernel_size(x_shape)
    try:
      return blind.check_kernel_size(size, x_shape)
    except ValueError as e:
      raise SettingError(f'§kernel_size: {one_line(e)}') from None

  def setup(self, c, side, x_shape, model_config):
    from ddrm_jax import blind  # pylint: disable=g-import-not-at-top
    from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
    from ddrm_jax.operators import registry  # pylint: disable=g-import-not-at-top
    size = self.kernel_size(c, x_shape)
    if c.measurement:  # Unknown: the initial guess only fills the padded borders.
      kernel, truth = blind.gaussian_kernel2d(size), None
    else:
      kernel = (side['kernel'] if 'kernel' in side else
                operators.motion_kernel(registry.MOTION_SEED, size))
      truth = np.asarray(kernel, np.float64)
    try:
      return self._setup(c, side, x_shape, model_config, kernel=kernel, kernel_size=size,
                         true_kernel=truth)
    except SettingError:
      raise
    except ValueError as e:
      raise SettingError(f'{self._what(c)} for {x_shape[0]}x{x_shape[1]} images: '
                         f'{one_line(e)}') from None
