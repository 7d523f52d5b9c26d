"""JPEG artifact correction (DDRM-JPEG, Kawar, Song, Ermon and Elad 2022): the degradation is a
JPEG codec `operators.jpeg.JPEGCodec` (y = D(E(x))), restored by `solvers.ddrm_jpeg`.

Paper protocol: clean images are encoded with the IJG tables of `jpeg_quality` and
`jpeg_subsampling`; the degraded input is also written as a real .jpg (Pillow, the same tables),
whose decoding is y. Measurement mode: the inputs are .jpg files; each file's own quantization
tables and chroma subsampling are read from it (`jpeg_files.read_jpeg_tables`), never guessed,
so files of one run may differ; files the codec cannot represent (PNG, progressive, arithmetic
coded, CMYK) are refused one by one.
"""

import dataclasses

import numpy as np

from ddrm_jax.errors import SettingError
from ddrm_jax.errors import one_line
from ddrm_jax.problems.base import Problem
from ddrm_jax.problems.base import Setup
from ddrm_jax.runner import outputs


class JPEGOutputs(outputs.Extras):
  """Paper protocol: the degraded input as a real .jpg (`degraded_jpeg`) beside its PNG."""

  def __init__(self, quality, subsampling):
    self.quality, self.subsampling = quality, subsampling

  def paths(self, name):
    return {'degraded_jpeg': f'degraded/{name}.jpg'}

  def write(self, full, paths, res, j):
    from ddrm_jax import jpeg_files  # pylint: disable=g-import-not-at-top
    jpeg_files.write_jpeg(full(paths['degraded_jpeg']), res['original'][j], self.quality,
                          self.subsampling)


@dataclasses.dataclass(frozen=True)
class JPEG(Problem):
  """jpeg: the codec of `jpeg_quality` / `jpeg_subsampling`, or of each .jpg file."""

  def _check(self, c):
    from ddrm_jax import jpeg_files  # pylint: disable=g-import-not-at-top
    if c.sigma_y not in (0, 0.0):
      raise SettingError(f'§deg {self.name}: the noise is the file\'s quantization; §sigma_y '
                         f'does not apply (leave it out), got {c.sigma_y}')
    if c.measurement and c.jpeg_quality is not None:
      raise SettingError(f'§measurement §deg {self.name} reads each file\'s own quantization '
                         'tables: leave §jpeg_quality out')
    if c.measurement and c.resize in ('resize', 'center_crop'):
      raise SettingError(f'§measurement §deg {self.name}: §resize={c.resize} would move the '
                         "file's 8x8 blocks; restore at its size (§resize=tile)")
    try:
      jpeg_files.check_subsampling(c.jpeg_subsampling)
      if not c.measurement:
        jpeg_files.check_quality(self.quality(c))
    except ValueError as e:
      raise SettingError(f'§deg {self.name}: {one_line(e)}') from None

  def quality(self, c):
    return DEFAULT_QUALITY if c.jpeg_quality is None else c.jpeg_quality

  def make(self, c, side, x_shape):
    from ddrm_jax.operators import jpeg  # pylint: disable=g-import-not-at-top
    del side
    return jpeg.jpeg_codec(x_shape, quality=self.quality(c), subsampling=c.jpeg_subsampling)

  def per_file(self, c):
    return bool(c.measurement)

  def read(self, c, path):
    """Measurement mode: the pixels on the file's stored grid (its blocks; no EXIF rotation)."""
    if not self.per_file(c):
      return super().read(c, path)
    from ddrm_jax import jpeg_files  # pylint: disable=g-import-not-at-top
    try:
      return jpeg_files.read_jpeg_pixels(path)
    except ValueError as e:
      raise SettingError(one_line(e)) from None

  def tile_extras(self, c):
    return outputs.Extras() if c.measurement else JPEGOutputs(self.quality(c),
                                                               c.jpeg_subsampling)

  def file_operator(self, c, side, path, x_shape):
    """(group key, codec) of input `path` restored at x_shape."""
    from ddrm_jax.operators import jpeg  # pylint: disable=g-import-not-at-top
    if not self.per_file(c):
      return x_shape, self.operator(c, side, x_shape)
    try:
      codec = jpeg.codec_from_file(path)
    except ValueError as e:
      raise SettingError(f'{one_line(e)} (§deg {self.name} §measurement reads the quantization '
                         'tables of each .jpg file)') from None
    if codec.image_shape[2] != x_shape[2]:
      raise SettingError(f'{path}: a {"grayscale" if codec.image_shape[2] == 1 else "colour"} '
                         f'JPEG; the network restores {x_shape[2]}-channel images')
    if tuple(codec.image_shape[:2]) != tuple(x_shape[:2]):
      raise SettingError(f'{path}: a {codec.image_shape[0]}x{codec.image_shape[1]} JPEG; the '
                         f'network restores {x_shape[0]}x{x_shape[1]} (use §resize=tile)')
    codec = jpeg.jpeg_codec(x_shape, tables=codec.tables, subsampling=codec.subsampling)
    key = (tuple(x_shape), codec.subsampling, np.asarray(codec.tables).tobytes())
    return key, codec

  def setup(self, c, side, x_shape, model_config):
    del model_config
    if self.per_file(c):  # One codec per file (`file_operator`).
      return Setup(op=None, in_shape=tuple(x_shape))
    return Setup(op=self.operator(c, side, x_shape), in_shape=tuple(x_shape),
                 extras=JPEGOutputs(self.quality(c), c.jpeg_subsampling))


DEFAULT_QUALITY = 10
