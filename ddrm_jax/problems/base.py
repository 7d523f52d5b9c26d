"""`Problem`, the base of every registered degradation, its `Setup` and the registry.

A problem knows the settings it uses (its side files: `kernel`, `mask`, `perm`; `kernel_size`),
how its operator is built for an image shape from them, its baseline (what the paper's tables
compare with), whether it runs in measurement mode and by tiles, and what it adds to a run's
outputs (blind deblurring's kernels; the crop of the border padding that a circular blur gets
in measurement mode). Nothing else branches on a degradation's name: adding a problem is one
`register(...)` plus its operator.

  problems.get('sr4').operator(config, side, (256, 256, 3))
"""

import dataclasses
from typing import Any


from ddrm_jax.errors import SettingError
from ddrm_jax.errors import one_line
from ddrm_jax.runner import outputs

# Baselines (metrics.baseline): bicubic upsampling of y, the blurry measurement itself, H^+ y.
BICUBIC, MEASUREMENT, PINV = 'bicubic', 'measurement', 'pinv'
BASELINE_NAMES = {BICUBIC: 'bicubic baseline', MEASUREMENT: 'baseline (the blurry image)',
                  PINV: 'baseline (H^+ y)'}
SIDE_FILE_SETTINGS = ('kernel', 'mask', 'perm', 'kernel_size', 'jpeg_quality', 'jpeg_t_start')

_REGISTRY = {}


@dataclasses.dataclass(frozen=True)
class Setup:
  """A problem made concrete for the network's image shape: the operator, what an input file
  must look like (`in_shape`), measurement mode's border padding (`padding`, `extend` fills it),
  y = H(input) for photos with holes (`apply_h`), blind deblurring's kernel size, and the
  problem's own outputs (`extras`, which hold blind deblurring's true kernel)."""
  op: Any
  in_shape: tuple
  apply_h: bool = False
  padding: Any = None
  extend: Any = None
  kernel_size: int = 0
  extras: outputs.Extras = dataclasses.field(default_factory=outputs.Extras)


class ProblemOutputs(outputs.Extras):
  """Outputs of circular and blind problems: restorations cropped back to the photo's size
  (`padding`), the estimated kernels (`kernels`) and, with `true_kernel`, their NCC."""

  def __init__(self, padding=None, kernels=False, true_kernel=None):
    self.padding, self.kernels, self.true_kernel = padding, kernels, true_kernel

  def adjust(self, res):
    if self.padding is not None:  # Back to the photo's own size.
      from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
      for k in ('y', 'degraded', 'samples', 'restored', 'std'):
        if k in res:
          res[k] = operators.crop_padding(res[k], self.padding)
    return res

  def paths(self, name):
    return {'kernel': f'kernels/{name}.npy', 'kernel_png': f'kernels/{name}.png'} if (
        self.kernels) else {}

  def metrics(self, res, j):
    if not self.kernels or self.true_kernel is None:
      return {}
    from ddrm_jax import blind  # pylint: disable=g-import-not-at-top
    return {'kernel_ncc': outputs.json_number(blind.kernel_ncc(res['kernel'][j],
                                                               self.true_kernel))}

  def write(self, full, paths, res, j):
    if 'kernel' in paths:
      outputs.write_kernel(full(paths['kernel']), full(paths['kernel_png']), res['kernel'][j])


@dataclasses.dataclass(frozen=True)
class Problem:
  """A degradation (see the module docstring). Subclasses override `operator` (and `setup`,
  `load_side`, `_check` where they need more than `operators.make`)."""
  name: str
  baseline: str = PINV
  settings: tuple = ()  # The settings of SIDE_FILE_SETTINGS it uses.
  measurement: bool = True  # Runs on real degraded photos.
  measurement_refusal: str = ''  # Why not, when it does not.
  tileable: bool = True  # Paper protocol by tiles.
  tile_measurement: bool = True  # Measurement mode by tiles.
  default_eta_b: float = 1.0
  blind: bool = False
  apply_h_in_measurement: bool = False  # Measurement mode reads photos of the image's size.
  methods: bool = True  # Restored by every method of ddrm_jax.solvers (an SVD operator).
  noise: bool = True  # sigma_y applies (not for JPEG: its noise is the quantization).
  codec: bool = False  # The operator is a codec (`solvers.ddrm_jpeg`), not an SVD.
  default_eta: float = 0.85
  baseline_label: str = ''  # The summary's name of the baseline (default: by its kind).

  @property
  def baseline_name(self):
    return self.baseline_label or BASELINE_NAMES[self.baseline]

  def check(self, c):
    """Checks the settings that concern this problem (no file read)."""
    for setting in SIDE_FILE_SETTINGS:
      if getattr(c, setting) is not None and setting not in self.settings:
        users = sorted((p.name for p in _REGISTRY.values() if setting in p.settings), key=len)
        listed = ', '.join(users[:-1]) + (' or ' if len(users) > 1 else '') + users[-1]
        raise SettingError(f'§{setting} is for §deg {listed}, not §deg {self.name}')
    if c.measurement and not self.measurement:
      raise SettingError(f'§measurement does not support §deg {self.name} '
                         f'({self.measurement_refusal})')
    if c.resize == 'tile' and (not self.tileable or (c.measurement and
                                                     not self.tile_measurement)):
      raise SettingError(f'§resize=tile does not support §deg {self.name}'
                         + (' with §measurement' if self.tileable else ''))
    self._check(c)

  def _check(self, c):
    del c

  def load_side(self, c):
    """The arrays of the side files it uses (read once per run): {setting: array}."""
    del c
    return {}

  def make(self, c, side, x_shape):
    """`operators.make` of this problem for images of x_shape."""
    from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
    del c, side
    return operators.make(self.name, x_shape)

  def operator(self, c, side, x_shape):
    """The operator for images of x_shape (H, W, C); a bad combination: SettingError."""
    try:
      return self.make(c, side, x_shape)
    except SettingError:
      raise
    except ValueError as e:
      files = [s for s in self.settings if s != 'kernel_size' and getattr(c, s)]
      what = f'§{files[0]} {getattr(c, files[0])}' if files else f'§deg {self.name}'
      raise SettingError(f'{what} for {x_shape[0]}x{x_shape[1]} images: {one_line(e)}') from None

  def read(self, c, path):
    """An input file as an image (H, W, C) in [-1, 1] (`io.read_image`: EXIF rotation applied)."""
    from ddrm_jax import io  # pylint: disable=g-import-not-at-top
    del c
    return io.read_image(path)

  def tile_extras(self, c):
    """The problem's own outputs when the run goes by tiles (no `Setup`)."""
    del c
    return outputs.Extras()

  def per_file(self, c):
    """Whether each input file has an operator of its own (`file_operator`)."""
    del c
    return False

  def file_operator(self, c, side, path, x_shape):
    """(group key, operator) of input `path` restored at x_shape: the images of one key share
    one compiled program."""
    del path
    return tuple(x_shape), self.operator(c, side, x_shape)

  def setup(self, c, side, x_shape, model_config):
    """The `Setup` at the network's image shape x_shape."""
    del model_config
    op = self.operator(c, side, x_shape)
    apply_h = bool(c.measurement and self.apply_h_in_measurement)
    in_shape = x_shape if (not c.measurement or apply_h) else tuple(op.y_shape)
    return Setup(op=op, in_shape=tuple(in_shape), apply_h=apply_h)


def register(problem):
  """Adds `problem` to the registry (its name must be new); returns it."""
  if problem.name in _REGISTRY:
    raise ValueError(f'problem {problem.name!r} is registered already')
  _REGISTRY[problem.name] = problem
  return problem


def get(name):
  """The registered problem `name`; SettingError naming the known ones otherwise."""
  if name not in _REGISTRY:
    raise SettingError(f'unknown §deg {name!r}; known: {", ".join(_REGISTRY)}')
  return _REGISTRY[name]


def names():
  return tuple(_REGISTRY)
